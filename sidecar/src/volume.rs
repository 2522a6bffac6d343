//! One container per volume. When Swarm replaces a task whose node was cut off or frozen,
//! the node may run the old container and the new one side by side for a while: the new one
//! starts while the old one is still being stopped (its processes may even be in the middle
//! of a `pg_rewind`). Both mount the same named volume, and PostgreSQL's own `postmaster.pid`
//! check cannot see a postmaster in another container's PID namespace. So the sidecar takes
//! an exclusive `flock` on a file at the root of its volume before it touches anything there,
//! and holds it for its whole life; a second container of the same member waits until the
//! first has exited (the kernel drops the lock with its last open descriptor, whatever the
//! way it ended). The descriptor is close-on-exec: children never hold the lock.

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

/// The lock file, at the root of the volume (outside PostgreSQL's data directory).
pub const LOCK_FILE: &str = ".pgswarm-volume.lock";

/// How often a waiting sidecar tries the lock again.
const RETRY: Duration = Duration::from_millis(250);
/// How often the wait is reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

static HELD: OnceLock<Flock<File>> = OnceLock::new();

/// Takes the volume's lock for the rest of this process's life, waiting (without limit: two
/// containers on one data directory is what must never happen) while another process holds
/// it. A stop request ends the wait.
pub async fn lock(data_root: &Path) -> anyhow::Result<()> {
    if HELD.get().is_some() {
        return Ok(());
    }
    let path = data_root.join(LOCK_FILE);
    let started = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the volume lock {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if reported.is_some() {
                    info!(
                        waited_s = started.elapsed().as_secs(),
                        "the other container of this member has exited: going on"
                    );
                }
                let _ = HELD.set(lock);
                return Ok(());
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
                    warn!(
                        lock = %path.display(),
                        waited_s = started.elapsed().as_secs(),
                        "another container of this member still uses its volume (Swarm is \
                         stopping a replaced task): waiting for it to exit before touching \
                         the data"
                    );
                    reported = Some(Instant::now());
                }
            }
            Err((_, errno)) => {
                return Err(anyhow::Error::new(errno)
                    .context(format!("cannot lock the volume ({})", path.display())));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = crate::supervise::stopped() => {
                return Err(crate::supervise::Interrupted(
                    "waiting for the volume's other container to exit".into(),
                )
                .into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let open = || {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let first = Flock::lock(open(), FlockArg::LockExclusiveNonblock).unwrap();
        let refused = Flock::lock(open(), FlockArg::LockExclusiveNonblock);
        assert!(matches!(refused, Err((_, Errno::EWOULDBLOCK))));
        drop(first);
        assert!(Flock::lock(open(), FlockArg::LockExclusiveNonblock).is_ok());
    }

    #[tokio::test]
    async fn lock_waits_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        let holder = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = released.clone();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(holder);
        });
        lock(dir.path()).await.unwrap();
        assert!(
            released.load(std::sync::atomic::Ordering::SeqCst),
            "the lock was taken while another holder had it"
        );
        release.await.unwrap();
    }
}
