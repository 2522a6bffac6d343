//! Running as the service user.
//!
//! In the image the container already runs as `postgres`. Started as root (a host, a test,
//! an image run with `--user root`), the sidecar prepares its directories for that user,
//! then drops to it for good (setgroups, setgid, setuid) before it starts anything:
//! PostgreSQL refuses to run as root, and nothing else needs to. Secrets are read before.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context as _};
use nix::unistd::{chown, geteuid, setgid, setgroups, setuid, Gid, Uid, User};
use tracing::info;

/// The account every process of the image runs as.
pub const SERVICE_USER: &str = "postgres";

/// The user children run as, once known.
#[derive(Debug, Clone)]
pub struct ServiceUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

static SERVICE: OnceLock<ServiceUser> = OnceLock::new();

/// The user the sidecar dropped to, if it did.
pub fn service_user() -> Option<&'static ServiceUser> {
    SERVICE.get()
}

/// Creates `dirs` (mode 0700) and, when running as root, gives them to [`SERVICE_USER`] and
/// becomes that user. Directories that exist keep their content; only their owner (when
/// root) and mode change. Call before any thread is started.
pub fn prepare_and_drop(dirs: &[&Path]) -> anyhow::Result<()> {
    let root = geteuid().is_root();
    let user = if root {
        let user = User::from_name(SERVICE_USER)
            .with_context(|| format!("looking up user {SERVICE_USER}"))?
            .with_context(|| {
                format!("running as root, but there is no user {SERVICE_USER} to run as; create it (the PostgreSQL packages do)")
            })?;
        Some(user)
    } else {
        None
    };
    for dir in dirs {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
        if let Some(user) = &user {
            chown(*dir, Some(user.uid), Some(user.gid))
                .with_context(|| format!("giving {} to user {}", dir.display(), user.name))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
    }
    if let Some(user) = user {
        drop_to(&user)?;
    }
    Ok(())
}

/// Becomes `user` when root; no-op otherwise. For the `health` subcommand, which needs the
/// service user's peer authentication but creates nothing.
pub fn drop_if_root() -> anyhow::Result<()> {
    if !geteuid().is_root() {
        return Ok(());
    }
    let user = User::from_name(SERVICE_USER)
        .with_context(|| format!("looking up user {SERVICE_USER}"))?
        .with_context(|| format!("running as root, but there is no user {SERVICE_USER}"))?;
    drop_to(&user)
}

fn drop_to(user: &User) -> anyhow::Result<()> {
    setgroups(&[user.gid]).context("setgroups")?;
    setgid(user.gid).context("setgid")?;
    setuid(user.uid).context("setuid")?;
    if geteuid().is_root() || setuid(Uid::from_raw(0)).is_ok() {
        bail!("dropping root privileges to {} failed", user.name);
    }
    info!(user = %user.name, uid = user.uid.as_raw(), "dropped root privileges");
    let _ = SERVICE.set(ServiceUser {
        name: user.name.clone(),
        uid: user.uid,
        gid: user.gid,
        home: user.dir.clone(),
    });
    Ok(())
}
