//! Waiting for a peer (the primary, etcd) with exponential backoff.
//!
//! Swarm ignores `depends_on`, so ordering is the sidecar's job: each attempt that fails is
//! logged with what is awaited, the error and the time left; past the deadline
//! (`PGSWARM_WAIT_TIMEOUT`) the wait fails with the last error. A stop request ends the wait.

use std::future::Future;
use std::time::{Duration, Instant};

use tracing::info;

use crate::supervise::{stop_requested, stopped, Interrupted};

/// First pause between attempts.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest pause between attempts.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Longest time one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "gave up waiting for {what} after {secs} s ({var}={secs}; raise it if the peer is just slow): \
     last error: {last}"
)]
pub struct WaitTimeout {
    pub what: String,
    pub secs: u64,
    pub var: &'static str,
    pub last: String,
}

/// Calls `attempt` until it succeeds, pausing 0.25 s, 0.5 s, 1 s ... (at most 10 s) between
/// tries, for at most `timeout` ([`Duration::MAX`]: until it succeeds or a stop request).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    wait_for_within(what, timeout, ATTEMPT_TIMEOUT, attempt).await
}

/// [`wait_for`] for attempts that may take up to `attempt_timeout` each (several requests in
/// a row, such as an etcd membership change).
pub async fn wait_for_within<T, F, Fut>(
    what: &str,
    timeout: Duration,
    attempt_timeout: Duration,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    // Far enough to be "never" when the timeout is unbounded.
    let deadline = start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600));
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u32;
    loop {
        if stop_requested() {
            return Err(Interrupted(format!("waiting for {what}")).into());
        }
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let result = match tokio::time::timeout(left.min(attempt_timeout), attempt()).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "no answer within {} s",
                left.min(attempt_timeout).as_secs_f32()
            )),
        };
        let error = match result {
            Ok(value) => {
                if attempts > 1 {
                    info!(
                        waiting_for = what,
                        waited_secs = start.elapsed().as_secs(),
                        "{what}: ready"
                    );
                }
                return Ok(value);
            }
            Err(e) => format!("{e:#}"),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitTimeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
                var: pgswarm_contract::env::WAIT_TIMEOUT,
                last: error,
            }
            .into());
        }
        let pause = delay.min(left);
        let left_text = if timeout == Duration::MAX {
            "no deadline".to_string()
        } else {
            format!("{} s left", left.as_secs())
        };
        info!(
            waiting_for = what,
            attempt = attempts,
            retry_in_ms = pause.as_millis() as u64,
            error = %error,
            "waiting for {what} ({left_text})"
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopped() => {}
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_until_success() {
        let calls = AtomicU32::new(0);
        let value = wait_for("a flaky peer", Duration::from_secs(30), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                anyhow::bail!("not yet")
            }
            Ok(7)
        })
        .await
        .unwrap();
        assert_eq!((value, calls.load(Ordering::SeqCst)), (7, 3));
    }

    #[tokio::test]
    async fn a_timeout_names_the_peer_the_variable_and_the_last_error() {
        let err = wait_for(
            "the primary at db:5432",
            Duration::from_millis(600),
            || async { Err::<(), _>(anyhow::anyhow!("connection refused")) },
        )
        .await
        .unwrap_err()
        .to_string();
        for needle in [
            "the primary at db:5432",
            "PGSWARM_WAIT_TIMEOUT",
            "connection refused",
        ] {
            assert!(err.contains(needle), "{needle} not in {err}");
        }
    }
}
