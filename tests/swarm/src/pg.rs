//! PostgreSQL clients for the scenarios: tokio-postgres over the ports the test host publishes.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::debug;

use crate::secrets::Password;

/// Addresses on which host-mode published ports are reached: set once on a multi-node swarm
/// (every node's address), else `127.0.0.1`.
static DEFAULT_HOSTS: OnceLock<Vec<String>> = OnceLock::new();

/// Makes every [`Endpoint`] created from now on try `hosts` (a multi-node swarm's nodes).
pub fn set_default_hosts(hosts: Vec<String>) {
    let _ = DEFAULT_HOSTS.set(hosts);
}

fn default_hosts() -> Vec<String> {
    match DEFAULT_HOSTS.get() {
        Some(hosts) if !hosts.is_empty() => hosts.clone(),
        _ => vec!["127.0.0.1".into()],
    }
}

/// How to reach one endpoint (a member, the router, the pooler) from the test host.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Addresses that may publish the port: `127.0.0.1` on a one-node swarm; on a multi-node
    /// swarm every node's address, since a service published in host mode answers only on the
    /// node that runs it, and moves when that node dies.
    pub hosts: Vec<String>,
    pub port: u16,
    pub user: String,
    pub password: Password,
    pub dbname: String,
    /// TLS required and checked like libpq's `verify-full`: the server's certificate must be
    /// signed by this CA for the host connected to. `None`: plaintext.
    pub tls: Option<ClusterCa>,
}

/// A TLS connector that trusts one cluster CA only.
#[derive(Clone)]
pub struct ClusterCa(MakeRustlsConnect);

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCa")
    }
}

impl ClusterCa {
    /// From the CA certificate (PEM).
    pub fn from_pem(pem: &str) -> Result<ClusterCa> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| anyhow!("the CA is not PEM: {e}"))?)
                .map_err(|e| anyhow!("the CA is not a usable certificate: {e}"))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClusterCa(MakeRustlsConnect::new(config)))
    }
}

impl Endpoint {
    pub fn new(port: u16, user: &str, password: Password) -> Endpoint {
        Endpoint {
            hosts: default_hosts(),
            port,
            user: user.to_string(),
            password,
            dbname: "postgres".into(),
            tls: None,
        }
    }

    /// The same endpoint over TLS verified against `ca` (or plaintext with `None`).
    pub fn with_tls(mut self, ca: Option<ClusterCa>) -> Endpoint {
        self.tls = ca;
        self
    }

    /// The same endpoint, published on any of `hosts`.
    pub fn on_hosts(mut self, hosts: Vec<String>) -> Endpoint {
        if !hosts.is_empty() {
            self.hosts = hosts;
        }
        self
    }

    /// The same endpoint on one address only (e.g. a member's own node).
    pub fn on_host(self, host: &str) -> Endpoint {
        self.on_hosts(vec![host.to_string()])
    }

    fn config(&self, host: &str, connect_timeout: Duration) -> Config {
        let mut config = Config::new();
        config
            .host(host)
            .port(self.port)
            .user(&self.user)
            .password(self.password.expose())
            .dbname(&self.dbname)
            .application_name("pgswarm-e2e")
            .connect_timeout(connect_timeout);
        if self.tls.is_some() {
            config.ssl_mode(SslMode::Require);
        }
        config
    }

    /// One connection attempt, bounded by `timeout` (the TCP connect and the handshake); with
    /// several hosts, one attempt to each at once, and the first that answers wins.
    pub async fn connect_once(&self, timeout: Duration) -> Result<Client> {
        let mut attempts = tokio::task::JoinSet::new();
        for host in &self.hosts {
            let config = self.config(host, timeout);
            let (host, port) = (host.clone(), self.port);
            let tls = self.tls.clone();
            attempts.spawn(async move {
                let connected = async {
                    match tls {
                        Some(ClusterCa(tls)) => {
                            let (client, connection) = config.connect(tls).await?;
                            tokio::spawn(async move {
                                if let Err(e) = connection.await {
                                    debug!(error = %e, "connection ended");
                                }
                            });
                            Ok::<Client, tokio_postgres::Error>(client)
                        }
                        None => {
                            let (client, connection) = config.connect(NoTls).await?;
                            tokio::spawn(async move {
                                if let Err(e) = connection.await {
                                    debug!(error = %e, "connection ended");
                                }
                            });
                            Ok(client)
                        }
                    }
                };
                let client = tokio::time::timeout(timeout, connected)
                    .await
                    .with_context(|| format!("connecting to {host}:{port} timed out"))?
                    .with_context(|| format!("cannot connect to {host}:{port}"))?;
                Ok::<Client, anyhow::Error>(client)
            });
        }
        let mut last = anyhow::anyhow!("no address to connect to");
        while let Some(joined) = attempts.join_next().await {
            match joined {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last = e,
                Err(e) => last = anyhow::Error::from(e),
            }
        }
        Err(last)
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
