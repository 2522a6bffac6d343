//! Mode `pooler`: PgBouncer in front of the router's read-write port.
//!
//! `pgbouncer.ini` comes from `pgbouncer.ini.hbs`; the auth file holds two users with their
//! passwords in plain text, mode 0600 in the run directory: the superuser (the admin console,
//! `swarmctl`'s checks) and `pgswarm_auth`, the least-privilege user PgBouncer's
//! `auth_query` runs as. Every other role is looked up on the server through the SECURITY
//! DEFINER function `pgswarm.user_lookup(text)` (see `objects`), which hands PgBouncer the
//! role's SCRAM verifier: the client's SCRAM keys then match the server's verifier, so
//! PgBouncer logs in to PostgreSQL as that role without ever knowing its password.
//! Plain text in the auth file because PgBouncer (1.18 and 1.24 alike) can log in to
//! PostgreSQL with SCRAM only when it knows the password, or when the client's SCRAM keys
//! match a verifier identical to the server's, which a verifier made here with its own salt
//! would not be.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use pgswarm_contract::objects::{PoolerDatabase, AUTH_QUERY, AUTH_USER};
use pgswarm_contract::{Common, Endpoint, MemberEnv, PoolMode, Role, Secret};
use serde::Serialize;
use tracing::{info, warn};

use crate::secrets::{SecretValue, Secrets};
use crate::supervise::{self, ChildSpec};
use crate::templates::{write_file, write_private, Templates};
use crate::{http, ConfigError};

/// Name of the template in `init-scripts/`.
pub const TEMPLATE: &str = "pgbouncer.ini.hbs";

/// An error in the pooler's part of the contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolerConfigError {
    #[error("{var}=0: the pool needs at least one server connection", var = pgswarm_contract::env::POOL_SIZE)]
    ZeroPoolSize,
    #[error(
        "{var}={max_client_conn} is below {pool_var}={pool_size}: allow at least as many \
         clients as server connections",
        var = pgswarm_contract::env::MAX_CLIENT_CONN,
        pool_var = pgswarm_contract::env::POOL_SIZE
    )]
    FewerClientsThanPool {
        max_client_conn: u32,
        pool_size: u32,
    },
    #[error(
        "{var}={host:?} is not a service name, host name or IPv4 address",
        var = pgswarm_contract::env::POOLER_TARGET_HOST
    )]
    BadHost { host: String },
    #[error("user name {0:?} cannot be written to PgBouncer's auth file (control character)")]
    BadUser(String),
    #[error("the superuser's password contains a control character, which PgBouncer's auth file cannot hold")]
    BadPassword,
    #[error(
        "{var} names database {0:?}, which is not a plain name (lowercase letters, digits, `_`)",
        var = pgswarm_contract::env::POOLER_DATABASES
    )]
    BadDatabase(String),
    #[error(
        "{var}: database {0:?} has pool_size 0; a pool needs at least one server connection",
        var = pgswarm_contract::env::POOLER_DATABASES
    )]
    ZeroDatabasePool(String),
}

/// One `[databases]` line with its own pool settings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DatabaseLine {
    pub name: String,
    pub pool_size: Option<u32>,
    pub pool_mode: Option<String>,
}

/// Everything `pgbouncer.ini.hbs` needs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolerConfig {
    pub cluster: String,
    pub target_host: String,
    pub target_port: u16,
    pub listen_addr: String,
    pub port: u16,
    pub run_dir: String,
    pub auth_file: String,
    pub superuser: String,
    /// The user `auth_query` runs as.
    pub auth_user: String,
    pub auth_query: String,
    /// Databases with their own pool settings, before the catch-all `*`.
    pub databases: Vec<DatabaseLine>,
    pub pool_mode: String,
    pub pool_size: u32,
    pub reserve_pool_size: u32,
    pub max_client_conn: u32,
    /// TLS settings, when the cluster uses TLS.
    pub tls: Option<PoolerTls>,
}

/// PgBouncer's TLS: it terminates the clients' TLS with the cluster's server certificate and
/// opens its own TLS connections to the router, which passes them through to PostgreSQL.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolerTls {
    /// `prefer` (TLS offered) or `require` (plaintext TCP refused; the socket is exempt).
    pub client_sslmode: String,
    /// `verify-ca`: PgBouncer connects to the router's current address, which no
    /// certificate names; the cluster CA must have signed the member's certificate.
    pub server_sslmode: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

impl PoolerConfig {
    /// The pooler's configuration from its contract; `None` when `role` is not a pooler.
    pub fn from_contract(common: &Common, role: &Role) -> Option<Result<Self, PoolerConfigError>> {
        let Role::Pooler {
            target,
            port,
            pool_mode,
            pool_size,
            max_client_conn,
            databases,
        } = role
        else {
            return None;
        };
        Some(Self::new(
            common,
            target,
            *port,
            *pool_mode,
            *pool_size,
            *max_client_conn,
            databases,
        ))
    }

    fn new(
        common: &Common,
        target: &Endpoint,
        port: u16,
        pool_mode: PoolMode,
        pool_size: u32,
        max_client_conn: u32,
        databases: &[PoolerDatabase],
    ) -> Result<Self, PoolerConfigError> {
        if pool_size == 0 {
            return Err(PoolerConfigError::ZeroPoolSize);
        }
        if max_client_conn < pool_size {
            return Err(PoolerConfigError::FewerClientsThanPool {
                max_client_conn,
                pool_size,
            });
        }
        let host_ok = !target.host.is_empty()
            && target
                .host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !host_ok {
            return Err(PoolerConfigError::BadHost {
                host: target.host.clone(),
            });
        }
        let mut lines = Vec::new();
        for d in databases {
            if !pgswarm_contract::rules::is_identifier(&d.name) {
                return Err(PoolerConfigError::BadDatabase(d.name.clone()));
            }
            if d.pool_size == Some(0) {
                return Err(PoolerConfigError::ZeroDatabasePool(d.name.clone()));
            }
            lines.push(DatabaseLine {
                name: d.name.clone(),
                pool_size: d.pool_size,
                pool_mode: d.pool_mode.map(|m| PoolMode::from(m).as_str().to_string()),
            });
        }
        Ok(PoolerConfig {
            cluster: common.cluster.clone(),
            target_host: target.host.clone(),
            target_port: target.port,
            listen_addr: "*".into(),
            port,
            run_dir: common.run_dir.clone(),
            auth_file: auth_file_path(common).display().to_string(),
            superuser: common.superuser.clone(),
            auth_user: AUTH_USER.into(),
            auth_query: AUTH_QUERY.into(),
            databases: lines,
            pool_mode: pool_mode.as_str().into(),
            pool_size,
            reserve_pool_size: (pool_size / 4).max(1),
            max_client_conn,
            tls: common.tls.map(|tls| {
                let files = crate::tls::files(common);
                PoolerTls {
                    client_sslmode: match tls {
                        pgswarm_contract::Tls::On => "prefer",
                        pgswarm_contract::Tls::Require => "require",
                    }
                    .into(),
                    server_sslmode: "verify-ca".into(),
                    ca_file: files.ca.display().to_string(),
                    cert_file: files.cert.display().to_string(),
                    key_file: files.key.display().to_string(),
                }
            }),
        })
    }
}

/// Where pgbouncer.ini goes inside the run directory.
pub fn config_path(common: &Common) -> PathBuf {
    PathBuf::from(&common.run_dir).join("pgbouncer.ini")
}

/// Where the auth file goes inside the run directory.
pub fn auth_file_path(common: &Common) -> PathBuf {
    PathBuf::from(&common.run_dir).join("pgbouncer.users")
}

/// PgBouncer's auth file: `"user" "password"` lines, a `"` doubled inside a field.
pub fn auth_file(users: &[(&str, &str)]) -> Result<String, PoolerConfigError> {
    let mut out = String::new();
    for (user, password) in users {
        if user.chars().any(char::is_control) {
            return Err(PoolerConfigError::BadUser(user.to_string()));
        }
        if password.chars().any(char::is_control) {
            return Err(PoolerConfigError::BadPassword);
        }
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        out.push_str(&format!("{} {}\n", quote(user), quote(password)));
    }
    Ok(out)
}

/// Renders pgbouncer.ini.
pub fn render(templates: &Templates, config: &PoolerConfig) -> anyhow::Result<String> {
    templates.render(TEMPLATE, config)
}

/// Writes pgbouncer.ini and the auth file (0600), and returns the PgBouncer process to
/// supervise, in the foreground. SIGTERM becomes SIGINT, PgBouncer's safe shutdown (open
/// transactions finish) in both 1.18 and 1.24 (where SIGTERM itself means different things);
/// a second stop request kills it: it holds no data.
pub fn prepare(
    common: &Common,
    templates: &Templates,
    config: &PoolerConfig,
    superuser_password: &str,
    auth_password: &str,
) -> anyhow::Result<ChildSpec> {
    let users = auth_file(&[
        (&common.superuser, superuser_password),
        (AUTH_USER, auth_password),
    ])?;
    write_private(&auth_file_path(common), users.as_bytes())?;
    let path = config_path(common);
    write_file(&path, render(templates, config)?.as_bytes(), 0o640)?;
    info!(
        path = %path.display(),
        target = %format!("{}:{}", config.target_host, config.target_port),
        port = config.port,
        pool_mode = %config.pool_mode,
        "rendered pgbouncer.ini"
    );
    Ok(ChildSpec::new("pgbouncer", "pgbouncer")
        .arg(path)
        .forward(Signal::SIGTERM, Signal::SIGINT))
}

fn config_of(member: &MemberEnv) -> anyhow::Result<PoolerConfig> {
    match PoolerConfig::from_contract(&member.common, &member.role) {
        None => bail!("mode {} is not a pooler", member.mode()),
        Some(config) => Ok(config.map_err(|e| ConfigError(e.to_string()))?),
    }
}

/// Runs PgBouncer to its end; returns its exit code.
pub async fn run(
    member: &MemberEnv,
    secrets: &Secrets,
    templates: &Templates,
) -> anyhow::Result<i32> {
    let mut config = config_of(member)?;
    let password = secrets.get(Secret::SuperuserPassword)?;
    let auth_password = secrets.get(Secret::PoolerAuthPassword)?;
    let router = config.target_host.clone();
    if let Some(address) = resolve(&router, config.target_port).await {
        info!(router = %router, %address, "PgBouncer connects to the router's current address");
        config.target_host = address;
    }
    let child = prepare(
        &member.common,
        templates,
        &config,
        password.expose(),
        auth_password.expose(),
    )
    .map_err(|e| match e.downcast::<PoolerConfigError>() {
        Ok(e) => ConfigError(e.to_string()).into(),
        Err(e) => e,
    })?;
    // A pause left by an earlier incarnation means nothing to this PgBouncer.
    let _ = std::fs::remove_file(pause_deadline_path(&member.common));
    tokio::spawn(pause_watchdog(
        member.common.clone(),
        config.port,
        password.clone(),
    ));
    tokio::spawn(follow_router(
        member.common.clone(),
        templates.clone(),
        config,
        router,
    ));
    supervise::supervise(child, std::future::pending()).await
}

/// How often the router's name is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(2);
/// How long one lookup of the router's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a router task may take to accept a connection before another one is chosen.
const ROUTER_PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// How long the router may stay out of reach before the pooler reports itself unhealthy.
/// Swarm replaces an unhealthy task, which helps only when the fault is the pooler's own (its
/// node's overlay, say); while the router itself is being rescheduled (after the loss of its
/// node Swarm takes up to a minute), a replaced pooler would reach it no sooner and its
/// clients would lose the pooler too.
pub const ROUTER_GRACE: Duration = Duration::from_secs(120);

/// The router's current address: the lowest of the addresses its name resolves to (one of
/// its tasks with `endpoint_mode: dnsrr`), so the choice is stable while they stay. `None`
/// when it does not resolve (yet).
async fn resolve(host: &str, port: u16) -> Option<String> {
    resolve_all(host, port).await.into_iter().next()
}

/// Every address of the router's tasks, lowest first (empty when the name does not resolve,
/// or is an address already).
async fn resolve_all(host: &str, port: u16) -> Vec<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Vec::new();
    }
    // `tasks.<service>` names the tasks themselves whatever the service's endpoint mode: with
    // a virtual IP (a router published through the routing mesh) the plain name answers the
    // VIP, which needs IPVS in the kernel and is not there on every host.
    for name in [format!("tasks.{host}"), host.to_string()] {
        // A name whose task sits on a lost node can keep a libc lookup waiting for 20 s.
        let Ok(Ok(found)) = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((name.as_str(), port)),
        )
        .await
        else {
            continue;
        };
        let mut addrs: Vec<std::net::IpAddr> = found.map(|a| a.ip()).collect();
        addrs.sort();
        addrs.dedup();
        if !addrs.is_empty() {
            return addrs.iter().map(ToString::to_string).collect();
        }
    }
    Vec::new()
}

/// Which of the router's addresses PgBouncer should use: with one task, that one; with
/// several (router replicas on different nodes), the current one while it accepts
/// connections, else the first that does. Swarm keeps a task of a lost node in the DNS answer
/// until it marks the node down (up to a minute), so the lowest address may be a dead one.
async fn choose_router(addrs: &[String], current: &str, port: u16) -> Option<String> {
    let answers = |a: String| async move {
        http::listening(&a, port, ROUTER_PROBE_TIMEOUT)
            .await
            .is_ok()
    };
    match addrs {
        [] => None,
        [only] => Some(only.clone()),
        _ => {
            if addrs.iter().any(|a| a == current) && answers(current.to_string()).await {
                return Some(current.to_string());
            }
            for a in addrs {
                if a != current && answers(a.clone()).await {
                    return Some(a.clone());
                }
            }
            // None answers: nothing better to go to.
            Some(current.to_string())
                .filter(|c| addrs.contains(c))
                .or(addrs.first().cloned())
        }
    }
}

/// Keeps PgBouncer's target on the router's current address. PgBouncer caches a name's answer
/// for as long as the DNS TTL says (Docker answers 600 s), so after the router's task is
/// replaced it would keep connecting to the old address for minutes: the sidecar resolves the
/// name itself and, when the answer changes, rewrites pgbouncer.ini and reloads PgBouncer
/// (SIGHUP; its server connections to the old address are closed as they are released).
async fn follow_router(
    common: Common,
    templates: Templates,
    mut config: PoolerConfig,
    router: String,
) {
    loop {
        tokio::time::sleep(RESOLVE_EVERY).await;
        let addrs = resolve_all(&router, config.target_port).await;
        let Some(address) = choose_router(&addrs, &config.target_host, config.target_port).await
        else {
            continue;
        };
        if address == config.target_host {
            continue;
        }
        let previous = std::mem::replace(&mut config.target_host, address.clone());
        let text = match render(&templates, &config) {
            Ok(text) => text,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot render pgbouncer.ini");
                config.target_host = previous;
                continue;
            }
        };
        if let Err(e) = write_file(&config_path(&common), text.as_bytes(), 0o640) {
            warn!(error = %format!("{e:#}"), "cannot rewrite pgbouncer.ini");
            config.target_host = previous;
            continue;
        }
        info!(router = %router, from = %previous, to = %address,
            "the router moved: PgBouncer reloads with its new address");
        supervise::signal_child(Signal::SIGHUP);
    }
}

// ---------------------------------------------------------------------------------------------
// Pause and resume (a switchover through the pooler costs clients a wait, not an error)

/// Why a pause or resume failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// PgBouncer's admin console did not take the connection (nothing was done).
    #[error("cannot reach PgBouncer's admin console at {at}: {reason}")]
    Unreachable { at: String, reason: String },
    /// A command of the admin console failed.
    #[error("PgBouncer refused {command}: {reason}")]
    Command {
        command: &'static str,
        reason: String,
    },
    /// PAUSE did not complete in time: a transaction through the pooler is still open. The
    /// pooler was resumed again.
    #[error(
        "PgBouncer's PAUSE did not complete within {wait_secs} s: a transaction through the \
         pooler is still running (see SHOW SERVERS on the admin console); the pooler was resumed \
         and nothing else was done"
    )]
    PauseTimeout { wait_secs: u64 },
    /// The pause deadline file could not be written or removed.
    #[error("{0:#}")]
    File(anyhow::Error),
}

/// The file that holds the moment (Unix seconds) by which a pause ends at the latest: written
/// before PAUSE, removed by RESUME. The pooler's sidecar resumes PgBouncer itself once that
/// moment has passed, so a switchover interrupted half-way (its `swarmctl` killed) cannot leave
/// clients waiting forever.
pub fn pause_deadline_path(common: &Common) -> PathBuf {
    PathBuf::from(&common.run_dir).join("pooler-paused-until")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The pause deadline in Unix seconds, when a pause is recorded.
pub fn pause_deadline(common: &Common) -> Option<u64> {
    std::fs::read_to_string(pause_deadline_path(common))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// A connection to PgBouncer's admin console (database `pgbouncer`) on 127.0.0.1:`port`, as
/// `user` (one of its admin_users).
async fn admin_client(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, AdminError> {
    admin_client_at("127.0.0.1", None, port, user, password).await
}

/// A connection to the admin console of the PgBouncer at `host:port` (`addr`, when given, is
/// the address to connect to; `host` then names it for TLS and messages).
async fn admin_client_at(
    host: &str,
    addr: Option<std::net::IpAddr>,
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, AdminError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname("pgbouncer")
        .connect_timeout(Duration::from_secs(3));
    if let Some(addr) = addr {
        config.hostaddr(addr);
    }
    let at = match addr {
        Some(addr) => format!("{host} ({addr}):{port}"),
        None => format!("{host}:{port}"),
    };
    // The connect timeout covers TCP only: a console that accepts but never answers the
    // startup message must not hold a switchover either.
    match tokio::time::timeout(Duration::from_secs(5), crate::tls::connect(&config)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(AdminError::Unreachable {
            at,
            reason: describe(&e),
        }),
        Err(_) => Err(AdminError::Unreachable {
            at,
            reason: "no answer to the login within 5 s".into(),
        }),
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

async fn admin_command(
    client: &tokio_postgres::Client,
    command: &'static str,
) -> Result<(), AdminError> {
    client
        .simple_query(command)
        .await
        .map(|_| ())
        .map_err(|e| AdminError::Command {
            command,
            reason: describe(&e),
        })
}

/// Pauses PgBouncer: waits (at most `wait`) until every server connection is released —
/// running transactions finish — after which new queries wait in PgBouncer. Records the
/// deadline `max_pause` from now first. Returns how long PAUSE waited.
pub async fn pause(
    common: &Common,
    port: u16,
    password: &str,
    wait: Duration,
    max_pause: Duration,
) -> Result<Duration, AdminError> {
    let deadline = unix_now() + max_pause.as_secs().max(1);
    write_file(
        &pause_deadline_path(common),
        format!("{deadline}\n").as_bytes(),
        0o644,
    )
    .map_err(AdminError::File)?;
    let forget = || {
        let _ = std::fs::remove_file(pause_deadline_path(common));
    };
    let client = match admin_client(port, &common.superuser, password).await {
        Ok(client) => client,
        Err(e) => {
            forget();
            return Err(e);
        }
    };
    let started = std::time::Instant::now();
    match tokio::time::timeout(wait, admin_command(&client, "PAUSE")).await {
        Ok(Ok(())) => {
            info!(
                waited_ms = started.elapsed().as_millis() as u64,
                deadline_in_s = max_pause.as_secs(),
                "PgBouncer paused: new queries wait until it resumes"
            );
            Ok(started.elapsed())
        }
        Ok(Err(e)) => {
            // Refused (for one, already paused by a pause nobody resumed): resume, so no
            // client is left waiting, and say why.
            forget();
            let _ = resume_now(port, &common.superuser, password).await;
            Err(e)
        }
        Err(_) => {
            drop(client);
            let _ = resume_now(port, &common.superuser, password).await;
            forget();
            Err(AdminError::PauseTimeout {
                wait_secs: wait.as_secs(),
            })
        }
    }
}

/// RECONNECT (every server connection is closed once released, so the next ones go through
/// the router to whoever leads now), then RESUME.
async fn resume_now(port: u16, user: &str, password: &str) -> Result<(), AdminError> {
    let client = admin_client(port, user, password).await?;
    admin_command(&client, "RECONNECT").await?;
    admin_command(&client, "RESUME").await
}

/// Resumes PgBouncer after [`pause`]; returns whether a pause was recorded. Without one,
/// RESUME's refusal (nothing paused) is not an error.
pub async fn resume(common: &Common, port: u16, password: &str) -> Result<bool, AdminError> {
    let was_paused = pause_deadline_path(common).exists();
    match resume_now(port, &common.superuser, password).await {
        Ok(()) => {}
        Err(AdminError::Command {
            command: "RESUME", ..
        }) if !was_paused => {}
        Err(e) => return Err(e),
    }
    if was_paused {
        std::fs::remove_file(pause_deadline_path(common)).map_err(|e| {
            AdminError::File(anyhow::anyhow!("cannot remove the pause record: {e}"))
        })?;
        info!("PgBouncer resumed, its server connections opened anew");
    }
    Ok(was_paused)
}

/// One pooler task paused over the network by [`pause_tasks`]: the admin connection that
/// paused it stays open to resume it.
pub struct PausedTask {
    /// The pooler's service name (for TLS and messages), the task's address, the port.
    host: String,
    addr: std::net::IpAddr,
    port: u16,
    client: tokio_postgres::Client,
}

impl std::fmt::Display for PausedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", task_name(&self.host, self.addr, self.port))
    }
}

/// `host (addr):port`, how a pooler task is named in messages.
fn task_name(host: &str, addr: std::net::IpAddr, port: u16) -> String {
    format!("{host} ({addr}):{port}")
}

/// Every address `host` resolves to (all the tasks of a pooler service, through
/// `tasks.<service>` when that answers), within [`RESOLVE_TIMEOUT`] per name.
pub async fn task_addresses(host: &str, port: u16) -> Vec<std::net::IpAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return vec![ip];
    }
    resolve_all(host, port)
        .await
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Pauses every task of the pooler service `host` (its admin console on `port`, reached over
/// the cluster's network as `user`): each PAUSE waits (at most `wait`) for its running
/// transactions, after which new queries wait in PgBouncer. All or none: when one task cannot
/// be paused, those already paused are resumed and the error names the task. A task that
/// nobody resumes is resumed by its own sidecar after [`UNRECORDED_PAUSE_MAX`].
pub async fn pause_tasks(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    wait: Duration,
) -> Result<Vec<PausedTask>, AdminError> {
    let addrs = task_addresses(host, port).await;
    if addrs.is_empty() {
        return Err(AdminError::Unreachable {
            at: format!("{host}:{port}"),
            reason: format!("the name {host} (and tasks.{host}) resolves to no task"),
        });
    }
    // Log in to every task first: nothing is paused while one of them is out of reach.
    let mut clients = Vec::new();
    for addr in addrs {
        let client = admin_client_at(host, Some(addr), port, user, password).await?;
        clients.push(PausedTask {
            host: host.to_string(),
            addr,
            port,
            client,
        });
    }
    let pauses = clients.iter().map(|task| async move {
        match tokio::time::timeout(wait, admin_command(&task.client, "PAUSE")).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AdminError::PauseTimeout {
                wait_secs: wait.as_secs(),
            }),
        }
    });
    let results = futures_util::future::join_all(pauses).await;
    if let Some(pos) = results.iter().position(|r| r.is_err()) {
        // A PAUSE still waiting is cancelled with its connection: RESUME from a fresh one.
        let _ = resume_tasks(&clients, user, password).await;
        let e = results.into_iter().nth(pos).and_then(Result::err);
        return Err(match e {
            Some(AdminError::Command { command, reason }) => AdminError::Command {
                command,
                reason: format!("{} ({reason})", clients[pos]),
            },
            Some(e) => e,
            None => AdminError::PauseTimeout {
                wait_secs: wait.as_secs(),
            },
        });
    }
    Ok(clients)
}

/// Resumes what [`pause_tasks`] paused (RECONNECT, so the next server connections go to
/// whoever leads now, then RESUME), every task tried; the first failure is returned.
pub async fn resume_tasks(
    tasks: &[PausedTask],
    user: &str,
    password: &str,
) -> Result<(), AdminError> {
    let resumes = tasks.iter().map(|task| async move {
        let on = async {
            admin_command(&task.client, "RECONNECT").await?;
            admin_command(&task.client, "RESUME").await
        };
        match tokio::time::timeout(Duration::from_secs(3), on).await {
            Ok(Ok(())) => Ok(()),
            // The paused connection broke: resume from a new one.
            _ => {
                let client =
                    admin_client_at(&task.host, Some(task.addr), task.port, user, password).await?;
                admin_command(&client, "RECONNECT").await?;
                admin_command(&client, "RESUME").await
            }
        }
    });
    let results = futures_util::future::join_all(resumes).await;
    results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// How long a pause that no file records (made over the network by a switchover whose
/// process then vanished, or by hand on the admin console) may last before the pooler's
/// sidecar resumes it: longer than any switchover holds its clients.
pub const UNRECORDED_PAUSE_MAX: Duration = Duration::from_secs(60);

/// Whether PgBouncer's `SHOW STATE` says it is paused.
async fn is_paused(client: &tokio_postgres::Client) -> Result<bool, AdminError> {
    let messages = client
        .simple_query("SHOW STATE")
        .await
        .map_err(|e| AdminError::Command {
            command: "SHOW STATE",
            reason: describe(&e),
        })?;
    Ok(messages.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => {
            row.get(0) == Some("paused") && row.get(1) == Some("yes")
        }
        _ => false,
    }))
}

/// Resumes a pause that outlived its deadline (whoever paused is gone), checking every second;
/// a pause no file records (made over the network) is resumed once it has lasted
/// [`UNRECORDED_PAUSE_MAX`].
async fn pause_watchdog(common: Common, port: u16, password: SecretValue) {
    let mut console: Option<tokio_postgres::Client> = None;
    let mut unrecorded_since: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(deadline) = pause_deadline(&common) else {
            if console.as_ref().is_none_or(|c| c.is_closed()) {
                console = admin_client(port, &common.superuser, password.expose())
                    .await
                    .ok();
            }
            let Some(client) = &console else { continue };
            match is_paused(client).await {
                Ok(true) => {
                    let since = *unrecorded_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= UNRECORDED_PAUSE_MAX {
                        warn!(
                            paused_s = since.elapsed().as_secs(),
                            "PgBouncer has been paused for longer than any switchover holds it, \
                             and nobody resumed it: resuming now"
                        );
                        match resume_now(port, &common.superuser, password.expose()).await {
                            Ok(()) => unrecorded_since = None,
                            Err(e) => warn!(error = %e, "cannot resume PgBouncer; trying again"),
                        }
                    }
                }
                Ok(false) => unrecorded_since = None,
                Err(_) => console = None,
            }
            continue;
        };
        unrecorded_since = None;
        if unix_now() < deadline {
            continue;
        }
        warn!(
            "PgBouncer is still paused past the pause's deadline (the switchover that paused it \
             did not resume it): resuming now"
        );
        if let Err(e) = resume(&common, port, password.expose()).await {
            warn!(error = %e, "cannot resume PgBouncer; trying again in a second");
        }
    }
}

/// Health: PgBouncer accepts connections on its port, and the router it forwards to accepts
/// connections (a pooler that cannot reach the router serves nothing). The router's name is
/// resolved afresh here.
pub async fn health(member: &MemberEnv) -> anyhow::Result<String> {
    let config = config_of(member)?;
    // Docker gives the whole check 3 s: the steps end after 0.5 + 0.7 + 1.2 s at most, so
    // that an unreachable router is judged here, not by Docker's timeout.
    http::listening("127.0.0.1", config.port, Duration::from_millis(500)).await?;
    let addrs = tokio::time::timeout(
        Duration::from_millis(700),
        resolve_all(&config.target_host, config.target_port),
    )
    .await
    .unwrap_or_default();
    let candidates = if addrs.is_empty() {
        vec![config.target_host.clone()]
    } else {
        addrs
    };
    let reached = first_answering(&candidates, config.target_port, Duration::from_millis(1200))
        .await
        .with_context(|| {
            format!(
                "the pooler cannot reach the router {} at {}:{}",
                config.target_host,
                candidates.join(", "),
                config.target_port
            )
        });
    let since_path = router_unreachable_path(&member.common);
    match reached {
        Ok(router) => {
            let _ = std::fs::remove_file(&since_path);
            Ok(format!(
                "pooler listening on port {}, router {} ({router}:{}) reachable",
                config.port, config.target_host, config.target_port
            ))
        }
        Err(e) => {
            let now = unix_now();
            let since = match read_unix_time(&since_path) {
                Some(since) if since <= now => since,
                _ => {
                    // The first failed check: remembered for the next ones.
                    std::fs::write(&since_path, now.to_string())
                        .with_context(|| format!("cannot write {}", since_path.display()))?;
                    now
                }
            };
            router_grace_verdict(e, now - since)
        }
    }
}

/// The first of `hosts` that accepts a connection on `port` within `timeout` (all tried at
/// once).
async fn first_answering(hosts: &[String], port: u16, timeout: Duration) -> anyhow::Result<String> {
    let mut attempts = tokio::task::JoinSet::new();
    for host in hosts {
        let host = host.clone();
        attempts.spawn(async move { http::listening(&host, port, timeout).await.map(|()| host) });
    }
    let mut errors = Vec::new();
    while let Some(done) = attempts.join_next().await {
        match done {
            Ok(Ok(host)) => return Ok(host),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    bail!("{}", errors.join("; "))
}

/// Where the pooler's health check keeps the time (seconds since the epoch) of the first
/// failed attempt to reach the router, while it fails.
fn router_unreachable_path(common: &Common) -> PathBuf {
    PathBuf::from(&common.run_dir).join("router-unreachable-since")
}

fn read_unix_time(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Healthy while the router has been out of reach for less than [`ROUTER_GRACE`].
fn router_grace_verdict(error: anyhow::Error, unreachable_for_s: u64) -> anyhow::Result<String> {
    let grace = ROUTER_GRACE.as_secs();
    if unreachable_for_s < grace {
        Ok(format!(
            "pooler listening; {error:#} for {unreachable_for_s} s (tolerated for {grace} s: \
             the router may be being rescheduled, and a new pooler would not reach it sooner)"
        ))
    } else {
        Err(error.context(format!(
            "the router has been out of reach for {unreachable_for_s} s"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_task_is_named_by_service_address_and_port() {
        assert_eq!(
            task_name("pooler", "10.0.1.7".parse().unwrap(), 6432),
            "pooler (10.0.1.7):6432"
        );
    }

    fn role() -> Role {
        Role::Pooler {
            target: Endpoint {
                host: "demo_router".into(),
                port: 5000,
            },
            port: 6432,
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            max_client_conn: 1000,
            databases: vec![],
        }
    }

    fn common() -> Common {
        let mut c = Common::new("demo", "pooler");
        c.run_dir = "/run/pgswarm".into();
        c
    }

    fn setting<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with(';'))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim())
    }

    #[tokio::test]
    async fn the_pooler_moves_to_a_router_task_that_answers() {
        let live = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = live.local_addr().unwrap().port();
        // 127.0.0.1 has nothing on that port (refused at once), as a dead task's address.
        let dead = "127.0.0.1".to_string();
        let alive = "127.0.0.2".to_string();
        let both = vec![dead.clone(), alive.clone()];
        assert_eq!(choose_router(&both, &dead, port).await, Some(alive.clone()));
        assert_eq!(
            choose_router(&both, &alive, port).await,
            Some(alive.clone())
        );
        // One task: taken as it is (nothing to choose from).
        assert_eq!(
            choose_router(std::slice::from_ref(&dead), &alive, port).await,
            Some(dead.clone())
        );
        assert_eq!(choose_router(&[], &alive, port).await, None);
        drop(live);
        // None answers: the current one stays.
        assert_eq!(choose_router(&both, &alive, port).await, Some(alive));
    }

    #[test]
    fn an_unreachable_router_is_tolerated_for_a_grace_period_only() {
        let grace = ROUTER_GRACE.as_secs();
        let ok = router_grace_verdict(anyhow::anyhow!("cannot reach the router"), 0).unwrap();
        assert!(ok.contains("cannot reach the router for 0 s"), "{ok}");
        assert!(router_grace_verdict(anyhow::anyhow!("x"), grace - 1).is_ok());
        let err =
            router_grace_verdict(anyhow::anyhow!("cannot reach the router"), grace).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("out of reach for {grace} s")),
            "{text}"
        );
        assert!(text.contains("cannot reach the router"), "{text}");
    }

    #[test]
    fn forwards_every_database_to_the_router_in_transaction_mode() {
        let c = PoolerConfig::from_contract(&common(), &role())
            .unwrap()
            .unwrap();
        let text = render(&Templates::default(), &c).unwrap();
        assert_eq!(setting(&text, "*"), Some("host=demo_router port=5000"));
        assert_eq!(setting(&text, "listen_port"), Some("6432"));
        assert_eq!(setting(&text, "pool_mode"), Some("transaction"));
        assert_eq!(setting(&text, "default_pool_size"), Some("20"));
        assert_eq!(setting(&text, "max_client_conn"), Some("1000"));
        assert_eq!(setting(&text, "auth_type"), Some("scram-sha-256"));
        assert_eq!(
            setting(&text, "auth_file"),
            Some("/run/pgswarm/pgbouncer.users")
        );
        assert_eq!(setting(&text, "unix_socket_dir"), Some("/run/pgswarm"));
        assert_eq!(setting(&text, "server_check_query"), Some("select 1"));
        assert_eq!(setting(&text, "tcp_keepalive"), Some("1"));
        assert_eq!(setting(&text, "dns_max_ttl"), Some("5"));
        assert_eq!(setting(&text, "admin_users"), Some("postgres"));
        assert_eq!(setting(&text, "auth_user"), Some("pgswarm_auth"));
        assert_eq!(
            setting(&text, "auth_query"),
            Some("SELECT uname, phash FROM pgswarm.user_lookup($1)")
        );
    }

    #[test]
    fn databases_get_their_own_pool_settings_before_the_catch_all() {
        let mut r = role();
        if let Role::Pooler { databases, .. } = &mut r {
            *databases = vec![
                PoolerDatabase {
                    name: "appdb".into(),
                    pool_size: Some(5),
                    pool_mode: Some(pgswarm_contract::objects::PoolModeSetting::Session),
                },
                PoolerDatabase {
                    name: "other".into(),
                    pool_size: None,
                    pool_mode: None,
                },
            ];
        }
        let c = PoolerConfig::from_contract(&common(), &r).unwrap().unwrap();
        let text = render(&Templates::default(), &c).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "[databases]")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(
            lines,
            [
                "appdb = host=demo_router port=5000 pool_size=5 pool_mode=session",
                "other = host=demo_router port=5000",
                "* = host=demo_router port=5000",
            ]
        );
        if let Role::Pooler { databases, .. } = &mut r {
            databases[0].pool_size = Some(0);
        }
        let err = PoolerConfig::from_contract(&common(), &r)
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("appdb"), "{err}");
    }

    #[test]
    fn session_mode_and_sizes_follow_the_contract() {
        let mut r = role();
        if let Role::Pooler {
            pool_mode,
            pool_size,
            max_client_conn,
            ..
        } = &mut r
        {
            *pool_mode = PoolMode::Session;
            *pool_size = 600;
            *max_client_conn = 6000;
        }
        let c = PoolerConfig::from_contract(&common(), &r).unwrap().unwrap();
        let text = render(&Templates::default(), &c).unwrap();
        assert_eq!(setting(&text, "pool_mode"), Some("session"));
        assert_eq!(setting(&text, "default_pool_size"), Some("600"));
        assert_eq!(setting(&text, "max_client_conn"), Some("6000"));
    }

    #[test]
    fn auth_file_quotes_its_fields() {
        assert_eq!(
            auth_file(&[("postgres", "pa\"ss word"), ("pgswarm_auth", "x")]).unwrap(),
            "\"postgres\" \"pa\"\"ss word\"\n\"pgswarm_auth\" \"x\"\n"
        );
        assert_eq!(
            auth_file(&[("postgres", "a\nb")]),
            Err(PoolerConfigError::BadPassword)
        );
    }

    #[test]
    fn bad_pooler_contracts_are_named() {
        let mut r = role();
        if let Role::Pooler {
            max_client_conn, ..
        } = &mut r
        {
            *max_client_conn = 5;
        }
        let err = PoolerConfig::from_contract(&common(), &r)
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("PGSWARM_MAX_CLIENT_CONN=5"),
            "{err}"
        );
        let mut r = role();
        if let Role::Pooler { target, .. } = &mut r {
            target.host = "a b".into();
        }
        let err = PoolerConfig::from_contract(&common(), &r)
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("PGSWARM_POOLER_TARGET_HOST"),
            "{err}"
        );
    }
}
