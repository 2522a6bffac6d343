//! PostgreSQL clients for the scenarios: tokio-postgres over the ports the test host publishes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, Config, NoTls};
use tracing::debug;

use crate::secrets::Password;

/// How to reach one endpoint (a member, the router, the pooler) from the test host.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub port: u16,
    pub user: String,
    pub password: Password,
    pub dbname: String,
}

impl Endpoint {
    pub fn new(port: u16, user: &str, password: Password) -> Endpoint {
        Endpoint {
            port,
            user: user.to_string(),
            password,
            dbname: "postgres".into(),
        }
    }

    fn config(&self, connect_timeout: Duration) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(&self.user)
            .password(self.password.expose())
            .dbname(&self.dbname)
            .application_name("pgswarm-e2e")
            .connect_timeout(connect_timeout);
        config
    }

    /// One connection attempt, bounded by `timeout` (the TCP connect and the handshake).
    pub async fn connect_once(&self, timeout: Duration) -> Result<Client> {
        let (client, connection) =
            tokio::time::timeout(timeout, self.config(timeout).connect(NoTls))
                .await
                .with_context(|| format!("connecting to 127.0.0.1:{} timed out", self.port))?
                .with_context(|| format!("cannot connect to 127.0.0.1:{}", self.port))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended");
            }
        });
        Ok(client)
    }

    /// Connects, retrying until `timeout`: for endpoints that are still starting.
    pub async fn connect(&self, timeout: Duration) -> Result<Client> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.connect_once(Duration::from_secs(3)).await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("still failing after {timeout:?}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// The answer of one check in [`wait_until`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Done,
    /// Not yet, with what was seen (shown while waiting and in the timeout error).
    Pending(String),
}

impl From<bool> for Check {
    fn from(done: bool) -> Check {
        if done {
            Check::Done
        } else {
            Check::Pending("condition not met yet".into())
        }
    }
}

/// Runs `check` until it is done, or fails naming `what` after `timeout`, with the last
/// state seen (or the last error).
pub async fn wait_until<F, Fut, C>(what: &str, timeout: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<C>>,
    C: Into<Check>,
{
    let started = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let last = match check().await.map(Into::into) {
            Ok(Check::Done) => return Ok(started.elapsed()),
            Ok(Check::Pending(seen)) => seen,
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > timeout {
            bail!("{what}: not true after {timeout:?} (last seen: {last})");
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            tracing::info!(waiting_for = what, elapsed = ?started.elapsed(), seen = %last, "waiting");
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
