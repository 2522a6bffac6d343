//! Mode `patroni`: a Patroni-managed PostgreSQL member (topologies `patroni` and `citus`).
//!
//! The contract is turned into Patroni's configuration as typed data ([`PatroniYml`]), checked
//! against Patroni's own rules before anything starts (so a bad `ttl` is reported by name, not
//! by a Python traceback), written 0600 into the run directory, and Patroni is then run
//! supervised. Credentials live only in that file: Patroni's environment is cleared.
//!
//! Patroni versions: the host tests run Patroni 3.0.2 (Debian bookworm), the image ships 4.0.7
//! (trixie). The rendered file uses only settings both accept. Differences handled here:
//! `synchronous_mode: quorum` exists only from Patroni 4.0 (3.x would read it as "off" without
//! a word), so it is refused on older versions; in Citus mode Patroni 4.0 defaults to quorum
//! and 3.x to `on`, so the mode is always written explicitly.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use pgswarm_contract::rules::{self, keepalive, ParameterError, TimingError};
use pgswarm_contract::{
    env, Citus, Common, Endpoint, MemberEnv, Postgres, Role, Secret, SynchronousMode, Tls,
};
use serde::{Serialize, Serializer};
use tracing::{info, warn};

use crate::secrets::Secrets;
use crate::supervise::{self, ChildSpec};
use crate::{http, postgres, templates, ConfigError};

/// PostgreSQL parameters Patroni takes only from the cluster-wide (DCS) configuration: they
/// must be equal on every member, and a value in the local section is ignored. A contract
/// parameter with one of these names goes into `bootstrap.dcs`; every other one into the local
/// section, so a changed value takes effect on the next start of the member.
pub const DCS_ONLY_PARAMETERS: &[&str] = &[
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "track_commit_timestamp",
    "wal_keep_segments",
    "wal_keep_size",
    "wal_level",
    "wal_log_hints",
    "hot_standby",
];

/// An error turning the contract into a Patroni configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatroniConfigError {
    /// A timing Patroni would refuse (the rule is the contract's, shared with `swarmctl`).
    #[error("{vars}: {source}", vars = timing_vars(source))]
    Timing {
        #[from]
        source: TimingError,
    },
    #[error(
        "{var}=quorum needs Patroni 4.0 or newer, but this is Patroni {found} (it would read \
         \"quorum\" as \"off\" and replicate asynchronously); use {var}=on here, or the pgswarm \
         image, which ships Patroni 4",
        var = env::SYNCHRONOUS_MODE
    )]
    QuorumUnsupported { found: PatroniVersion },
    /// A PostgreSQL parameter pgswarm manages (the contract's rule, shared with `swarmctl`).
    #[error("{var}: {source}", var = env::PG_PARAMETERS)]
    Parameter {
        #[from]
        source: ParameterError,
    },
}

/// Patroni's timing settings, validated against Patroni's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Timing {
    /// Checks the contract's timing rules (Patroni's: ttl >= 20, loop_wait >= 1,
    /// retry_timeout >= 3, loop_wait + 2 x retry_timeout <= ttl). Patroni 4 silently lowers
    /// loop_wait and retry_timeout when the last rule is broken; we would rather say so.
    pub fn new(ttl: u32, loop_wait: u32, retry_timeout: u32) -> Result<Self, PatroniConfigError> {
        rules::check_timing(ttl, loop_wait, retry_timeout)?;
        Ok(Timing {
            ttl,
            loop_wait,
            retry_timeout,
        })
    }
}

/// The variables (with their values) a timing error is about.
fn timing_vars(e: &TimingError) -> String {
    match *e {
        TimingError::TtlTooShort { ttl } => format!("{}={ttl}", env::TTL),
        TimingError::LoopWaitTooShort { loop_wait } => format!("{}={loop_wait}", env::LOOP_WAIT),
        TimingError::RetryTimeoutTooShort { retry_timeout } => {
            format!("{}={retry_timeout}", env::RETRY_TIMEOUT)
        }
        TimingError::Budget {
            ttl,
            loop_wait,
            retry_timeout,
            ..
        } => format!(
            "{}={ttl}, {}={loop_wait}, {}={retry_timeout}",
            env::TTL,
            env::LOOP_WAIT,
            env::RETRY_TIMEOUT
        ),
    }
}

/// A Patroni release, as `patroni --version` prints it (`patroni 3.0.2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PatroniVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PatroniVersion {
    /// Parses the output of `patroni --version`.
    pub fn parse(output: &str) -> Option<Self> {
        let word = output
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
        let mut parts = word.split('.').map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u32>()
        });
        let major = parts.next()?.ok()?;
        let minor = parts.next().and_then(Result::ok).unwrap_or(0);
        let patch = parts.next().and_then(Result::ok).unwrap_or(0);
        Some(PatroniVersion {
            major,
            minor,
            patch,
        })
    }

    /// Whether `synchronous_mode: quorum` is understood (Patroni 4.0 and newer).
    pub fn supports_quorum(self) -> bool {
        self.major >= 4
    }
}

impl fmt::Display for PatroniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The passwords that go into patroni.yml (read from the secret files).
#[derive(Clone, PartialEq, Eq)]
pub struct PatroniCredentials {
    pub superuser_password: String,
    pub replication_password: String,
    pub rest_password: String,
}

impl PatroniCredentials {
    /// The three passwords patroni.yml holds, from a Patroni member's loaded secrets.
    pub fn from_secrets(secrets: &Secrets) -> anyhow::Result<Self> {
        Ok(PatroniCredentials {
            superuser_password: secrets.get(Secret::SuperuserPassword)?.expose().to_string(),
            replication_password: secrets
                .get(Secret::ReplicationPassword)?
                .expose()
                .to_string(),
            rest_password: secrets.get(Secret::RestPassword)?.expose().to_string(),
        })
    }
}

impl fmt::Debug for PatroniCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatroniCredentials { .. }")
    }
}

/// The Patroni part of the contract, borrowed from [`pgswarm_contract::Role::Patroni`].
#[derive(Debug, Clone, Copy)]
pub struct PatroniSpec<'a> {
    pub postgres: &'a Postgres,
    pub etcd_hosts: &'a [Endpoint],
    pub rest_port: u16,
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: SynchronousMode,
    pub citus: Option<&'a Citus>,
    /// Hand the leader over before stopping.
    pub handover: Option<&'a pgswarm_contract::Handover>,
}

/// Facts about this host the configuration depends on, found by the caller.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Directory of the PostgreSQL binaries (`pg_ctl`, `initdb`, ...).
    pub bin_dir: String,
    /// Networks allowed in pg_hba (the contract's list, or the detected container networks).
    pub allowed_cidrs: Vec<String>,
    /// The installed Patroni, when known.
    pub patroni_version: Option<PatroniVersion>,
    /// This container's current address on the network the cluster shares, found on every
    /// start; other members reach this one by it. `None` leaves the member name (or the
    /// contract's explicit connect host).
    pub current_address: Option<String>,
    /// The port of this sidecar's liveness listener (see [`crate::liveness`]), published in
    /// the member key so the other members notice at once when this container dies.
    pub liveness_port: Option<u16>,
}

/// `patroni.yml`, the subset of Patroni's settings pgswarm uses.
#[derive(Debug, Clone, Serialize)]
pub struct PatroniYml {
    /// The cluster; every member (and, in Citus mode, every group) shares it.
    pub scope: String,
    /// This member; its Swarm service name.
    pub name: String,
    pub log: Log,
    pub restapi: RestApi,
    pub etcd3: Etcd3,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub citus: Option<CitusSection>,
    pub bootstrap: Bootstrap,
    pub postgresql: PostgresqlSection,
    pub watchdog: Watchdog,
    /// Patroni tags; custom ones are published as they are in the member key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Patroni's own log settings.
#[derive(Debug, Clone, Serialize)]
pub struct Log {
    pub level: String,
}

/// The REST API: health endpoints for the router and Docker, and the control API.
#[derive(Debug, Clone, Serialize)]
pub struct RestApi {
    /// `address:port` the API listens on.
    pub listen: String,
    /// `host:port` other members and the router use.
    pub connect_address: String,
    /// Basic auth for the unsafe endpoints (switchover, restart, config).
    pub authentication: BasicAuth,
}

/// A user name and password pair for HTTP basic auth.
#[derive(Clone, Serialize)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BasicAuth {{ username: {:?}, .. }}", self.username)
    }
}

/// The DCS: etcd through its v3 API.
#[derive(Debug, Clone, Serialize)]
pub struct Etcd3 {
    /// `host:port` client endpoints.
    pub hosts: Vec<String>,
}

/// Patroni's Citus mode: this member belongs to group `group` of a Citus cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CitusSection {
    /// 0 for the coordinator, 1.. for workers.
    pub group: u32,
    /// The database Patroni creates the extension in.
    pub database: String,
}

/// Settings used once, when the cluster is first initialized.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub dcs: Dcs,
    /// `pgbackrest` when the cluster is restored from a repository (`swarmctl restore`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The restore a bootstrapping member runs instead of initdb.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbackrest: Option<crate::backup::RestoreBootstrap>,
    pub initdb: Vec<InitdbOption>,
}

/// The cluster-wide (dynamic) configuration written to the DCS at bootstrap.
#[derive(Debug, Clone, Serialize)]
pub struct Dcs {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: SyncModeValue,
    /// How long a primary that crashed (or whose container was killed and restarted) may take
    /// to come back in place before Patroni fails over; absent means Patroni's default (300 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_start_timeout: Option<u32>,
    /// Keep the primary running while the DCS is unreachable if every member still answers it.
    pub failsafe_mode: bool,
    pub postgresql: DcsPostgresql,
}

/// `synchronous_mode` as Patroni spells it: a boolean, or `quorum` (Patroni 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncModeValue(pub SynchronousMode);

impl Serialize for SyncModeValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            SynchronousMode::Off => s.serialize_bool(false),
            SynchronousMode::On => s.serialize_bool(true),
            SynchronousMode::Quorum => s.serialize_str("quorum"),
        }
    }
}

/// PostgreSQL settings shared by every member.
#[derive(Debug, Clone, Serialize)]
pub struct DcsPostgresql {
    pub use_pg_rewind: bool,
    pub use_slots: bool,
    pub parameters: BTreeMap<String, String>,
}

/// One `initdb` option: a flag (`data-checksums`) or a name and value (`encoding: UTF8`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum InitdbOption {
    Flag(String),
    Value(BTreeMap<String, String>),
}

impl InitdbOption {
    fn value(name: &str, value: &str) -> Self {
        InitdbOption::Value(BTreeMap::from([(name.to_string(), value.to_string())]))
    }
}

/// The member's local PostgreSQL settings.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresqlSection {
    /// `address:port` PostgreSQL listens on.
    pub listen: String,
    /// `host:port` other members use.
    pub connect_address: String,
    pub data_dir: String,
    pub bin_dir: String,
    /// Where Patroni writes the password file it uses for replication and pg_rewind.
    pub pgpass: String,
    pub authentication: Authentication,
    /// Options for `pg_basebackup` when a replica is cloned.
    pub basebackup: Vec<BTreeMap<String, String>>,
    pub pg_hba: Vec<String>,
    /// Parameters local to this member (they take effect on its next start).
    pub parameters: BTreeMap<String, String>,
    /// Recovery settings (`restore_command` from the backup repository), when backups are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_conf: Option<BTreeMap<String, String>>,
}

/// The roles Patroni logs in as.
#[derive(Debug, Clone, Serialize)]
pub struct Authentication {
    pub superuser: PgAuth,
    pub replication: PgAuth,
    /// pg_rewind runs as the superuser (Patroni's default when `rewind` is absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewind: Option<PgAuth>,
}

/// A PostgreSQL login of Patroni's: user, password and, with TLS on, how the server's
/// certificate is checked (libpq's `sslmode` and `sslrootcert`, which Patroni passes to
/// replication, pg_basebackup and pg_rewind connections).
#[derive(Clone, Serialize)]
pub struct PgAuth {
    pub username: String,
    pub password: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
}

impl fmt::Debug for PgAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PgAuth {{ username: {:?}, sslmode: {:?}, .. }}",
            self.username, self.sslmode
        )
    }
}

/// How Patroni's connections check the server with TLS on: `verify-ca` against the cluster
/// CA. Members reach each other by their current overlay address (see [`connect_host`]),
/// which no certificate can name; the CA still proves the peer is a member of this cluster.
pub const PATRONI_SSLMODE: &str = "verify-ca";

/// The watchdog: off, since containers have no /dev/watchdog (the leader lock fences instead).
#[derive(Debug, Clone, Serialize)]
pub struct Watchdog {
    pub mode: String,
}

/// Where patroni.yml goes inside the run directory (the contract's path).
pub fn config_path(common: &Common) -> String {
    common.patroni_config_path()
}

/// Where Patroni keeps its password file.
pub fn pgpass_path(common: &Common) -> String {
    common.patroni_pgpass_path()
}

/// The host other members reach this one by: the explicit connect host, else this
/// container's current address when known, else the member (service) name.
///
/// Not the name when the address is known: Patroni (with an etcd DCS) resolves names through
/// its own DNS cache, kept 600 s, so after Swarm replaces a member's task (new overlay IP) the
/// others would keep calling its old address for minutes. The address is found again on every
/// start and written into the member key, which every member reads each loop.
pub fn connect_host<'a>(
    common: &'a Common,
    postgres: &'a Postgres,
    host: &'a HostFacts,
) -> &'a str {
    postgres
        .connect_host
        .as_deref()
        .or(host.current_address.as_deref())
        .unwrap_or(&common.member)
}

/// pg_hba.conf lines: the postgres OS user over the local socket, Patroni's local replication
/// checks over loopback, and the allowed networks with scram-sha-256 only.
/// With TLS required, every TCP line is `hostssl`: a plaintext connection matches no line and
/// is refused, whoever asks (replication too); only the local socket stays without TLS.
pub fn pg_hba(common: &Common, allowed_cidrs: &[String]) -> Vec<String> {
    let repl = &common.replication_user;
    let host = match common.tls {
        Some(Tls::Require) => "hostssl",
        Some(Tls::On) | None => "host",
    };
    let mut lines = vec![
        "local all all peer".to_string(),
        format!("{host} all all 127.0.0.1/32 scram-sha-256"),
        format!("{host} all all ::1/128 scram-sha-256"),
        format!("{host} replication {repl} 127.0.0.1/32 scram-sha-256"),
        format!("{host} replication {repl} ::1/128 scram-sha-256"),
    ];
    for cidr in allowed_cidrs {
        lines.push(format!("{host} all all {cidr} scram-sha-256"));
        lines.push(format!("{host} replication {repl} {cidr} scram-sha-256"));
    }
    lines
}

/// Renders this member's patroni.yml from the contract.
pub fn render(
    common: &Common,
    spec: &PatroniSpec<'_>,
    host: &HostFacts,
    credentials: &PatroniCredentials,
) -> Result<PatroniYml, PatroniConfigError> {
    let timing = Timing::new(spec.ttl, spec.loop_wait, spec.retry_timeout)?;
    // An unknown version is given the benefit of the doubt: the image ships Patroni 4.
    if spec.synchronous_mode == SynchronousMode::Quorum {
        if let Some(found) = host.patroni_version.filter(|v| !v.supports_quorum()) {
            return Err(PatroniConfigError::QuorumUnsupported { found });
        }
    }
    let pg = spec.postgres;
    rules::check_parameters(&pg.parameters, true)?;
    let connect = connect_host(common, pg, host);
    let tags = host
        .liveness_port
        .map(|port| {
            (
                crate::liveness::TAG.to_string(),
                format!("{connect}:{port}"),
            )
        })
        .into_iter()
        .collect();

    // Cluster-wide parameters: what replication, pg_rewind and failover need.
    let mut dcs_parameters: BTreeMap<String, String> = [
        ("wal_level", "replica"),
        ("hot_standby", "on"),
        // pg_rewind needs hint bits in WAL; data checksums (initdb) imply it too, but an
        // existing volume may have been initialized without them.
        ("wal_log_hints", "on"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("wal_keep_size", "128MB"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if spec.citus.is_some() {
        // Patroni forces it in Citus mode (the coordinator uses logical replication to move
        // shards); say so in the file rather than leave a value Patroni overrides.
        dcs_parameters.insert("wal_level".into(), "logical".into());
    }
    // Member-local parameters.
    let mut local_parameters: BTreeMap<String, String> = [
        ("password_encryption", "scram-sha-256"),
        // After a crash PostgreSQL first syncs the whole data directory to disk; file by file
        // (`fsync`, the default) that took 0.4 s of a crashed primary's in-place restart on a
        // small database here, one `syncfs` of the volume's file system takes a few ms.
        ("recovery_init_sync_method", "syncfs"),
        // A replica whose primary went away tries to reconnect after this (default 5 s). A
        // primary restarted in place is back within a second; until its synchronous standby
        // has reconnected, its commits wait (measured: 1.1 s of a 1.6 s gap, until Patroni
        // dropped the standby for the time being). Retrying 4 times a second costs a failed
        // connection attempt and a log line each time while a primary is away.
        ("wal_retrieve_retry_interval", "250ms"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    // Below Swarm's 900 s IPVS idle timeout, so idle sessions through a VIP survive.
    .chain(
        keepalive::postgres_parameters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    )
    .collect();
    // The socket goes into the run directory: one per member, never shared with another
    // server on the same host that happens to use the same port.
    local_parameters.insert(
        "unix_socket_directories".into(),
        common.socket_dir().to_string(),
    );
    // Continuous archiving to the cluster's repository, when it has one.
    let recovery_conf = common.backup.as_ref().map(|settings| {
        dcs_parameters.extend(crate::backup::archive_parameters(common, settings));
        BTreeMap::from([(
            "restore_command".to_string(),
            crate::backup::restore_command(common),
        )])
    });
    // TLS: the server certificate and key copied from the secrets (see `crate::tls`).
    let tls_files = common.tls.map(|_| crate::tls::files(common));
    if let Some(files) = &tls_files {
        for (name, value) in [
            ("ssl", "on".to_string()),
            ("ssl_cert_file", files.cert.display().to_string()),
            ("ssl_key_file", files.key.display().to_string()),
            ("ssl_ca_file", files.ca.display().to_string()),
        ] {
            local_parameters.insert(name.to_string(), value);
        }
    }
    let restore = common
        .backup
        .as_ref()
        .and_then(|b| b.restore.as_ref())
        .map(|r| crate::backup::restore_bootstrap(common, r));
    for (name, value) in &pg.parameters {
        let lower = name.to_ascii_lowercase();
        if DCS_ONLY_PARAMETERS.contains(&lower.as_str()) {
            dcs_parameters.insert(lower, value.clone());
        } else {
            local_parameters.insert(name.clone(), value.clone());
        }
    }

    let user = |username: &str, password: &str| BasicAuth {
        username: username.to_string(),
        password: password.to_string(),
    };
    let pg_auth = |username: &str, password: &str| PgAuth {
        username: username.to_string(),
        password: password.to_string(),
        sslmode: tls_files.as_ref().map(|_| PATRONI_SSLMODE.to_string()),
        sslrootcert: tls_files.as_ref().map(|f| f.ca.display().to_string()),
    };

    Ok(PatroniYml {
        scope: common.cluster.clone(),
        name: common.member.clone(),
        log: Log {
            level: "INFO".into(),
        },
        restapi: RestApi {
            listen: format!("{}:{}", pg.listen_address, spec.rest_port),
            connect_address: format!("{connect}:{}", spec.rest_port),
            authentication: user(&common.rest_user, &credentials.rest_password),
        },
        etcd3: Etcd3 {
            hosts: spec.etcd_hosts.iter().map(ToString::to_string).collect(),
        },
        citus: spec.citus.map(|c| CitusSection {
            group: c.group,
            database: c.database.clone(),
        }),
        bootstrap: Bootstrap {
            dcs: Dcs {
                ttl: timing.ttl,
                loop_wait: timing.loop_wait,
                retry_timeout: timing.retry_timeout,
                maximum_lag_on_failover: spec.maximum_lag_on_failover,
                synchronous_mode: SyncModeValue(spec.synchronous_mode),
                primary_start_timeout: primary_start_timeout(spec.synchronous_mode, timing.ttl),
                failsafe_mode: true,
                postgresql: DcsPostgresql {
                    use_pg_rewind: true,
                    use_slots: true,
                    parameters: dcs_parameters,
                },
            },
            method: restore
                .as_ref()
                .map(|_| crate::backup::RESTORE_METHOD.to_string()),
            pgbackrest: restore,
            initdb: vec![
                InitdbOption::Flag("data-checksums".into()),
                InitdbOption::value("encoding", "UTF8"),
                InitdbOption::value("auth-local", "peer"),
                InitdbOption::value("auth-host", "scram-sha-256"),
            ],
        },
        postgresql: PostgresqlSection {
            listen: format!("{}:{}", pg.listen_address, pg.port),
            connect_address: format!("{connect}:{}", pg.port),
            data_dir: common.pgdata(),
            bin_dir: host.bin_dir.clone(),
            pgpass: pgpass_path(common),
            authentication: Authentication {
                superuser: pg_auth(&common.superuser, &credentials.superuser_password),
                replication: pg_auth(&common.replication_user, &credentials.replication_password),
                rewind: None,
            },
            basebackup: vec![BTreeMap::from([("checkpoint".into(), "fast".into())])],
            pg_hba: pg_hba(common, &host.allowed_cidrs),
            parameters: local_parameters,
            recovery_conf,
        },
        watchdog: Watchdog { mode: "off".into() },
        tags,
    })
}

/// `primary_start_timeout`: how long a primary whose PostgreSQL crashed (Patroni alive, the
/// lock held, the data directory intact) may take to come back in place before Patroni fails
/// over. Crash recovery takes well under a second, and [`watch_postmaster`] wakes Patroni at
/// once, so restarting in place is the fastest recovery and loses nothing.
///
/// - Synchronous mode on or quorum: the lock's ttl. A restart that does not succeed within it
///   gives way to a synchronous standby, which has every acknowledged commit.
/// - Off: Patroni's default (300 s). An asynchronous standby may lack the last acknowledged
///   commits; the crashed primary gets longer to come back with them.
///
/// A killed container is another case: its sidecar's liveness port closes and the other
/// members release its key at once (see [`crate::liveness`]).
fn primary_start_timeout(mode: SynchronousMode, ttl: u32) -> Option<u32> {
    match mode {
        SynchronousMode::On | SynchronousMode::Quorum => Some(ttl),
        SynchronousMode::Off => None,
    }
}

/// The text of patroni.yml. It is written in JSON syntax, which is YAML too: every string is
/// then double-quoted, so Patroni's YAML 1.1 parser cannot read a password such as `on` or
/// `no` as a boolean (a YAML 1.2 emitter leaves those unquoted).
pub fn to_text(config: &PatroniYml) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(config)?;
    text.push('\n');
    Ok(text)
}

impl<'a> PatroniSpec<'a> {
    /// The Patroni part of `role`; `None` when it is another mode.
    pub fn from_role(role: &'a Role) -> Option<Self> {
        let Role::Patroni {
            postgres,
            etcd_hosts,
            rest_port,
            ttl,
            loop_wait,
            retry_timeout,
            maximum_lag_on_failover,
            synchronous_mode,
            citus,
            handover,
        } = role
        else {
            return None;
        };
        Some(PatroniSpec {
            postgres,
            etcd_hosts,
            rest_port: *rest_port,
            ttl: *ttl,
            loop_wait: *loop_wait,
            retry_timeout: *retry_timeout,
            maximum_lag_on_failover: *maximum_lag_on_failover,
            synchronous_mode: *synchronous_mode,
            citus: citus.as_ref(),
            handover: handover.as_ref(),
        })
    }
}

/// The installed Patroni's version, from `patroni --version`; `None` (with a warning) when
/// it cannot be told.
pub async fn installed_version() -> Option<PatroniVersion> {
    match supervise::run(ChildSpec::new("patroni --version", "patroni").arg("--version")).await {
        Ok(out) if out.code == 0 => {
            let version = PatroniVersion::parse(&out.stdout);
            if version.is_none() {
                warn!(output = %out.stdout.trim(), "cannot read Patroni's version");
            }
            version
        }
        Ok(out) => {
            warn!(code = out.code, stderr = %out.stderr.trim(), "patroni --version failed");
            None
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "cannot run patroni --version");
            None
        }
    }
}

/// This container's address on the network that reaches `targets` (the etcd members, which
/// share the cluster's overlay network): the source address the kernel picks for them. A UDP
/// socket's connect only selects the route; nothing is sent.
pub async fn current_address(targets: &[Endpoint]) -> Option<String> {
    for target in targets {
        let Ok(addrs) = tokio::net::lookup_host((target.host.as_str(), target.port)).await else {
            continue;
        };
        for addr in addrs {
            let bind: std::net::SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(socket) = std::net::UdpSocket::bind(bind) else {
                continue;
            };
            if socket.connect(addr).is_err() {
                continue;
            }
            if let Ok(local) = socket.local_addr() {
                let ip = local.ip();
                if !ip.is_loopback() && !ip.is_unspecified() {
                    return Some(ip.to_string());
                }
            }
        }
    }
    None
}

/// Waits until one of the etcd endpoints answers `GET /health` with a healthy cluster.
async fn wait_for_etcd(common: &Common, hosts: &[Endpoint]) -> anyhow::Result<()> {
    let list = hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let what = format!("etcd (any of {list}) to report a healthy cluster");
    info!(etcd = %list, "waiting for etcd to report a healthy cluster before starting Patroni");
    crate::wait::wait_for(
        &what,
        Duration::from_secs(common.wait_timeout_secs),
        || async {
            let mut errors = Vec::new();
            for host in hosts {
                match http::get(&host.host, host.port, "/health", Duration::from_secs(3)).await {
                    Ok((200, body)) if body.contains("true") => return Ok(()),
                    Ok((code, body)) => errors.push(format!("{host}: {code} {}", body.trim())),
                    Err(e) => errors.push(format!("{host}: {e:#}")),
                }
            }
            bail!("{}", errors.join("; "))
        },
    )
    .await
}

/// Runs this Patroni member to its end: checks and renders patroni.yml (0600, in the run
/// directory), waits for etcd, then supervises Patroni. SIGTERM reaches Patroni as is: it
/// stops PostgreSQL and, when it leads, hands the leader key over before it exits.
/// This member's patroni.yml as text, rendered as `run` first renders it (before this
/// container's address and liveness port are known), for `patronictl` run where no member
/// process wrote one (`ctl patronictl` in a one-off task).
pub async fn config_text(member: &MemberEnv, secrets: &Secrets) -> anyhow::Result<String> {
    let common = &member.common;
    let Some(spec) = PatroniSpec::from_role(&member.role) else {
        bail!("mode {} is not a Patroni member", member.mode());
    };
    let bin_dir = postgres::find_bin_dir(spec.postgres.bin_dir.as_deref())?;
    // Patroni's version is not asked: that would start the process-wide child reaper, which
    // would then take patronictl's exit status from the caller (ECHILD); it only decides
    // whether quorum mode is refused, which the member itself has checked.
    let host = HostFacts {
        bin_dir: bin_dir.display().to_string(),
        allowed_cidrs: postgres::allowed_cidrs(spec.postgres)?,
        patroni_version: None,
        current_address: None,
        liveness_port: None,
    };
    let credentials = PatroniCredentials::from_secrets(secrets)?;
    let config =
        render(common, &spec, &host, &credentials).map_err(|e| ConfigError(e.to_string()))?;
    Ok(to_text(&config)?)
}

pub async fn run(member: &MemberEnv, secrets: &Secrets) -> anyhow::Result<i32> {
    let common = &member.common;
    let Some(spec) = PatroniSpec::from_role(&member.role) else {
        bail!("mode {} is not a Patroni member", member.mode());
    };
    // Rules that need nothing from the host first, so a bad value fails at once.
    Timing::new(spec.ttl, spec.loop_wait, spec.retry_timeout)
        .map_err(|e| ConfigError(e.to_string()))?;
    crate::check_role_names(common)?;
    let bin_dir = postgres::find_bin_dir(spec.postgres.bin_dir.as_deref())?;
    let mut host = HostFacts {
        bin_dir: bin_dir.display().to_string(),
        allowed_cidrs: postgres::allowed_cidrs(spec.postgres)?,
        patroni_version: installed_version().await,
        current_address: None,
        liveness_port: None,
    };
    let credentials = PatroniCredentials::from_secrets(secrets)?;
    // Rendered and written now, so a bad setting fails before the wait for etcd; written
    // again below with this container's current address once etcd answers.
    let path = config_path(common);
    let first =
        render(common, &spec, &host, &credentials).map_err(|e| ConfigError(e.to_string()))?;
    templates::write_private(Path::new(&path), to_text(&first)?.as_bytes())?;
    wait_for_etcd(common, spec.etcd_hosts).await?;
    if spec.postgres.connect_host.is_none() {
        host.current_address = current_address(spec.etcd_hosts).await;
        match &host.current_address {
            Some(address) => info!(%address, "other members reach this one at its current address"),
            None => warn!(
                member = %common.member,
                "cannot tell this container's address on the cluster's network: other members \
                 reach it by name (Patroni caches names for 600 s, a replaced task is then \
                 reached late)"
            ),
        }
    }
    // The liveness port lives as long as this process, which outlives Patroni.
    match tokio::net::TcpListener::bind((spec.postgres.listen_address.as_str(), 0)).await {
        Ok(listener) => {
            host.liveness_port = listener.local_addr().ok().map(|a| a.port());
            tokio::spawn(crate::liveness::serve(listener));
        }
        Err(e) => warn!(
            error = %e,
            "cannot open the liveness port: if this member's container dies while it leads, \
             the others wait for its leader lock to expire"
        ),
    }
    let config =
        render(common, &spec, &host, &credentials).map_err(|e| ConfigError(e.to_string()))?;
    templates::write_private(Path::new(&path), to_text(&config)?.as_bytes())?;
    info!(
        path = %path,
        scope = %config.scope,
        patroni = %host.patroni_version.map_or("unknown".into(), |v| v.to_string()),
        bin_dir = %host.bin_dir,
        citus_group = ?config.citus.as_ref().map(|c| c.group),
        connect_address = %config.postgresql.connect_address,
        liveness = ?config.tags.get(crate::liveness::TAG),
        "rendered patroni.yml"
    );
    // Patroni asks the other members for their state through a Python thread pool, whose
    // locks are POSIX semaphores in /dev/shm: without a writable /dev/shm it cannot pick a
    // new leader (Docker mounts one; a bare chroot may not).
    if nix::unistd::access("/dev/shm", nix::unistd::AccessFlags::W_OK).is_err() {
        warn!("/dev/shm is not writable: Patroni will fail when it has to elect a new leader; mount a tmpfs there");
    }
    tokio::spawn(crate::liveness::watch_leader(
        crate::liveness::Etcd::new(spec.etcd_hosts.to_vec()),
        crate::liveness::Keys::new(&common.cluster, spec.citus.map(|c| c.group)),
        common.member.clone(),
    ));
    tokio::spawn(watch_postmaster(
        common.pgdata(),
        http::local_host(&spec.postgres.listen_address).to_string(),
        spec.rest_port,
        common.rest_user.clone(),
        credentials.rest_password.clone(),
    ));
    // Citus propagates roles from the coordinator itself; declared roles are refused there.
    if spec.citus.is_none() {
        crate::objects::spawn_for_member(common, spec.postgres.port, secrets)?;
    }
    crate::backup::start_member(common, spec.postgres, secrets)?;
    if let Some(handover) = spec.handover {
        HANDOVER_PENDING.store(true, Ordering::SeqCst);
        tokio::spawn(hand_over_on_stop(
            common.clone(),
            http::local_host(&spec.postgres.listen_address).to_string(),
            host.current_address.clone(),
            spec.postgres.port,
            spec.rest_port,
            handover.clone(),
            credentials.clone(),
        ));
    }
    let child = patroni_child(common, &path).hold_stop(supervise::HoldStop {
        what: "pg_rewind or the leader's handover",
        busy: || {
            HANDOVER_PENDING.load(Ordering::SeqCst) || supervise::descendant_running("pg_rewind")
        },
        max: REWIND_STOP_WAIT,
    });
    supervise::supervise(child, std::future::pending()).await
}

/// Set while a stop request must wait for [`hand_over_on_stop`].
static HANDOVER_PENDING: AtomicBool = AtomicBool::new(false);

/// How long a leader's handover may hold its stop, at most (well below the members' stop
/// grace period of 60 s; Docker kills the container at its end).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// When the sidecar is asked to stop while this member leads, hands the leader over first:
/// Patroni's switchover to the best replica (Patroni picks it: a synchronous standby in
/// synchronous mode), with the pooler paused until writes through the router commit on the
/// new leader, so clients of the pooler wait instead of failing. Patroni is stopped only
/// then (the stop request is held meanwhile). When no replica can take over, Patroni
/// refuses at once, and the member stops as it would have (releasing the leader key).
async fn hand_over_on_stop(
    common: Common,
    local: String,
    address: Option<String>,
    pg_port: u16,
    rest_port: u16,
    handover: pgswarm_contract::Handover,
    credentials: PatroniCredentials,
) {
    /// Lets the held stop go however this ends.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            HANDOVER_PENDING.store(false, Ordering::SeqCst);
        }
    }
    let _done = Done;
    supervise::stopped().await;
    let leads = matches!(
        http::get(&local, rest_port, "/primary", Duration::from_secs(1)).await,
        Ok((200, _))
    );
    if !leads {
        return;
    }
    info!("asked to stop while leading: handing the leader over first");
    let plan = pgswarm_contract::ctl::SwitchoverPlan {
        leader: common.member.clone(),
        leader_host: Some(local.clone()),
        leader_addresses: address.into_iter().collect(),
        candidate: None,
        rest_port,
        pg_port,
        write: handover.write,
        poolers: handover.poolers,
        pause_wait_secs: 5,
        max_pause_secs: 10,
        timeout_secs: HANDOVER_TIMEOUT.as_secs(),
    };
    let creds = crate::switchover::Credentials {
        superuser: &common.superuser,
        superuser_password: &credentials.superuser_password,
        rest_user: &common.rest_user,
        rest_password: &credentials.rest_password,
    };
    match tokio::time::timeout(HANDOVER_TIMEOUT, crate::switchover::run(&plan, &creds)).await {
        Ok(Ok(reply)) => info!(
            server = %reply.server,
            paused_ms = ?reply.paused_ms,
            "handed the leader over before stopping"
        ),
        Ok(Err(e)) => warn!(error = %e, "cannot hand the leader over; stopping anyway (Patroni \
            releases the leader key as it stops)"),
        Err(_) => warn!(
            timeout_s = HANDOVER_TIMEOUT.as_secs(),
            "the handover did not finish in time; stopping anyway"
        ),
    }
}

/// How long a stop request waits for a `pg_rewind` under way: below the members' stop grace
/// period (60 s), after which Docker kills the container anyway.
const REWIND_STOP_WAIT: Duration = Duration::from_secs(45);

/// The launcher run in place of the `patroni` script; see the file's own comment.
const LAUNCHER: &str = include_str!("patroni_launch.py");

/// Patroni, through [`LAUNCHER`] written as `<run dir>/bin/patroni` with the interpreter of
/// the installed `patroni` script (its name stays `patroni` for `ps` and tests); the plain
/// script when that cannot be done.
fn patroni_child(common: &Common, config: &str) -> ChildSpec {
    let plain = ChildSpec::new("patroni", "patroni").arg(config);
    let Some(interpreter) =
        crate::metrics::which(Path::new("patroni")).and_then(|p| script_interpreter(&p))
    else {
        warn!("cannot tell the installed patroni's Python: starting it as is");
        return plain;
    };
    let dir = Path::new(&common.run_dir).join("bin");
    let launcher = dir.join("patroni");
    let text = format!("#!{interpreter}\n{LAUNCHER}");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&launcher, text))
        .and_then(|()| std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)));
    match written {
        Ok(()) => ChildSpec::new("patroni", launcher).arg(config),
        Err(e) => {
            warn!(error = %e, path = %launcher.display(), "cannot write Patroni's launcher: starting it as is");
            plain
        }
    }
}

/// The interpreter named by a script's `#!` line: an absolute path, or `env NAME` resolved
/// through PATH.
fn script_interpreter(script: &Path) -> Option<String> {
    let text = std::fs::read(script).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?;
    interpreter_of(line, |name| {
        crate::metrics::which(Path::new(name)).map(|p| p.display().to_string())
    })
}

/// The interpreter in a `#!` line's text (after `#!`).
fn interpreter_of(line: &str, resolve: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut words = line.split_whitespace();
    let program = words.next()?;
    if program.ends_with("/env") {
        return resolve(words.next()?);
    }
    program.starts_with('/').then(|| program.to_string())
}

/// How often the postmaster is looked at.
const POSTMASTER_POLL: Duration = Duration::from_millis(100);

/// The pid in `postmaster.pid` (its first line), if the file is there.
fn postmaster_pid(pgdata: &str) -> Option<i32> {
    let text = std::fs::read_to_string(format!("{pgdata}/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether process `pid` is gone (no such process, or a zombie not yet reaped).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => matches!(
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
    }
}

/// Wakes Patroni's HA loop at once when the postmaster dies (its pid gone while
/// `postmaster.pid` still names it: a clean stop removes the file). Patroni would otherwise
/// notice only on its next loop (up to `loop_wait` seconds later); woken, a leader that still
/// holds its lock restarts PostgreSQL in place right away (crash recovery takes well under a
/// second). The wake-up is Patroni's own: `PATCH /config` with a change that changes nothing
/// (an empty `postgresql` section merged into the existing one) writes nothing and wakes the
/// loop.
async fn watch_postmaster(
    pgdata: String,
    rest_host: String,
    rest_port: u16,
    rest_user: String,
    rest_password: String,
) {
    let mut watched: Option<i32> = None;
    loop {
        tokio::time::sleep(POSTMASTER_POLL).await;
        let Some(pid) = postmaster_pid(&pgdata) else {
            watched = None;
            continue;
        };
        if !process_gone(pid) {
            watched = Some(pid);
            continue;
        }
        if watched != Some(pid) {
            // Already gone when first seen (a stale file from before this start): Patroni
            // handles it; only a death seen happening is reported.
            continue;
        }
        watched = None;
        warn!(pid, "the postmaster died: waking Patroni to handle it now");
        // Patroni counts an unreaped (zombie) postmaster as running: wake it once the process
        // is gone for good, and once more a second later if it has not started a new one.
        for _ in 0..200 {
            if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wake_patroni(&rest_host, rest_port, &rest_user, &rest_password).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if postmaster_pid(&pgdata) == Some(pid) {
            wake_patroni(&rest_host, rest_port, &rest_user, &rest_password).await;
        }
    }
}

/// Wakes Patroni's HA loop: `PATCH /config` with a change that changes nothing.
async fn wake_patroni(rest_host: &str, rest_port: u16, rest_user: &str, rest_password: &str) {
    let answer = http::send_json(
        "PATCH",
        rest_host,
        rest_port,
        "/config",
        Some((rest_user, rest_password)),
        r#"{"postgresql": {}}"#,
        Duration::from_secs(3),
    )
    .await;
    match answer {
        Ok((200, _)) => info!("Patroni woken after the postmaster's death"),
        Ok((code, body)) => warn!(code, body = %body.trim(), "Patroni did not take the wake-up"),
        Err(e) => warn!(error = %format!("{e:#}"), "cannot wake Patroni"),
    }
}

/// Health: Patroni's HA loop is alive (`GET /liveness` answers 200). Not `/health`, which
/// fails whenever PostgreSQL is not running: Swarm replaces a task that turns unhealthy, and
/// a replica still cloning its data, or a PostgreSQL that Patroni is restarting, must not be
/// killed for it. The summary adds the role and state Patroni reports (`GET /patroni`).
pub async fn health(member: &MemberEnv) -> anyhow::Result<String> {
    let Some(spec) = PatroniSpec::from_role(&member.role) else {
        bail!("mode {} is not a Patroni member", member.mode());
    };
    let host = http::local_host(&spec.postgres.listen_address);
    let timeout = Duration::from_secs(5);
    let (code, _) = http::get(host, spec.rest_port, "/liveness", timeout).await?;
    if code != 200 {
        bail!("Patroni's REST API answers GET /liveness with {code}: its HA loop is stuck");
    }
    let state = match http::get(host, spec.rest_port, "/patroni", timeout).await {
        Ok((_, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .map(|v| {
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
                format!("role {}, PostgreSQL {}", field("role"), field("state"))
            })
            .unwrap_or_else(|| "state unknown".into()),
        Err(e) => format!("state unknown ({e:#})"),
    };
    Ok(format!("Patroni alive: {state}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> Common {
        let mut c = Common::new("demo", "pg1");
        c.run_dir = "/run/pgswarm".into();
        c
    }

    fn etcd() -> Vec<Endpoint> {
        ["etcd1", "etcd2", "etcd3"]
            .iter()
            .map(|h| Endpoint {
                host: h.to_string(),
                port: 2379,
            })
            .collect()
    }

    fn credentials() -> PatroniCredentials {
        PatroniCredentials {
            superuser_password: "su-secret".into(),
            replication_password: "repl-secret".into(),
            rest_password: "rest-secret".into(),
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            bin_dir: "/usr/lib/postgresql/17/bin".into(),
            allowed_cidrs: vec!["10.0.1.0/24".into()],
            patroni_version: Some(PatroniVersion {
                major: 4,
                minor: 0,
                patch: 7,
            }),
            current_address: None,
            liveness_port: None,
        }
    }

    fn spec<'a>(pg: &'a Postgres, etcd: &'a [Endpoint]) -> PatroniSpec<'a> {
        PatroniSpec {
            postgres: pg,
            etcd_hosts: etcd,
            rest_port: 8008,
            ttl: 20,
            loop_wait: 5,
            retry_timeout: 5,
            maximum_lag_on_failover: 1_048_576,
            synchronous_mode: SynchronousMode::Off,
            citus: None,
            handover: None,
        }
    }

    fn yaml_of(config: &PatroniYml) -> serde_json::Value {
        serde_json::from_str(&to_text(config).expect("render")).expect("parse back")
    }

    #[test]
    fn renders_the_members_identity_addresses_and_dcs() {
        let pg = Postgres::default();
        let etcd = etcd();
        let config = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap();
        let y = yaml_of(&config);
        assert_eq!(y["scope"].as_str(), Some("demo"));
        assert_eq!(y["name"].as_str(), Some("pg1"));
        assert_eq!(y["restapi"]["listen"].as_str(), Some("0.0.0.0:8008"));
        assert_eq!(y["restapi"]["connect_address"].as_str(), Some("pg1:8008"));
        assert_eq!(
            y["restapi"]["authentication"]["username"].as_str(),
            Some("patroni")
        );
        assert_eq!(
            y["restapi"]["authentication"]["password"].as_str(),
            Some("rest-secret")
        );
        let hosts: Vec<&str> = y["etcd3"]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h.as_str())
            .collect();
        assert_eq!(hosts, ["etcd1:2379", "etcd2:2379", "etcd3:2379"]);
        assert!(y.get("citus").is_none());
        let dcs = &y["bootstrap"]["dcs"];
        assert_eq!(dcs["ttl"].as_u64(), Some(20));
        assert_eq!(dcs["loop_wait"].as_u64(), Some(5));
        assert_eq!(dcs["retry_timeout"].as_u64(), Some(5));
        assert_eq!(dcs["maximum_lag_on_failover"].as_u64(), Some(1_048_576));
        assert_eq!(dcs["synchronous_mode"].as_bool(), Some(false));
        assert_eq!(dcs["failsafe_mode"].as_bool(), Some(true));
        assert_eq!(dcs["postgresql"]["use_pg_rewind"].as_bool(), Some(true));
        assert_eq!(dcs["postgresql"]["use_slots"].as_bool(), Some(true));
        assert_eq!(
            dcs["postgresql"]["parameters"]["wal_level"].as_str(),
            Some("replica")
        );
        assert_eq!(
            dcs["postgresql"]["parameters"]["wal_log_hints"].as_str(),
            Some("on")
        );
        let p = &y["postgresql"];
        assert_eq!(p["listen"].as_str(), Some("0.0.0.0:5432"));
        assert_eq!(p["connect_address"].as_str(), Some("pg1:5432"));
        assert_eq!(p["data_dir"].as_str(), Some("/var/lib/pgswarm/pgdata"));
        assert_eq!(p["bin_dir"].as_str(), Some("/usr/lib/postgresql/17/bin"));
        assert_eq!(p["pgpass"].as_str(), Some("/run/pgswarm/pgpass"));
        assert_eq!(
            p["authentication"]["superuser"]["username"].as_str(),
            Some("postgres")
        );
        assert_eq!(
            p["authentication"]["replication"]["password"].as_str(),
            Some("repl-secret")
        );
        assert_eq!(p["basebackup"][0]["checkpoint"].as_str(), Some("fast"));
        assert_eq!(
            p["parameters"]["unix_socket_directories"].as_str(),
            Some("/run/pgswarm")
        );
        assert_eq!(p["parameters"]["tcp_keepalives_idle"].as_str(), Some("60"));
        assert_eq!(y["watchdog"]["mode"].as_str(), Some("off"));
    }

    #[test]
    fn initdb_asks_for_checksums_utf8_and_scram() {
        let pg = Postgres::default();
        let etcd = etcd();
        let config = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap();
        let text = to_text(&config).unwrap();
        let y = yaml_of(&config);
        let initdb = y["bootstrap"]["initdb"].as_array().unwrap();
        assert_eq!(initdb[0].as_str(), Some("data-checksums"));
        assert_eq!(initdb[1]["encoding"].as_str(), Some("UTF8"));
        assert_eq!(initdb[3]["auth-host"].as_str(), Some("scram-sha-256"));
        assert!(text.contains("\"data-checksums\""), "{text}");
    }

    #[test]
    fn connect_host_overrides_the_member_name() {
        let pg = Postgres {
            port: 15432,
            listen_address: "127.0.0.1".into(),
            connect_host: Some("127.0.0.1".into()),
            ..Postgres::default()
        };
        let etcd = etcd();
        let mut s = spec(&pg, &etcd);
        s.rest_port = 18008;
        let config = render(&common(), &s, &host(), &credentials()).unwrap();
        assert_eq!(config.restapi.listen, "127.0.0.1:18008");
        assert_eq!(config.restapi.connect_address, "127.0.0.1:18008");
        assert_eq!(config.postgresql.listen, "127.0.0.1:15432");
        assert_eq!(config.postgresql.connect_address, "127.0.0.1:15432");
    }

    #[test]
    fn the_current_address_is_advertised_with_the_liveness_tag() {
        let pg = Postgres::default();
        let etcd = etcd();
        let mut h = host();
        h.current_address = Some("10.0.1.7".into());
        h.liveness_port = Some(40001);
        let config = render(&common(), &spec(&pg, &etcd), &h, &credentials()).unwrap();
        assert_eq!(config.restapi.connect_address, "10.0.1.7:8008");
        assert_eq!(config.postgresql.connect_address, "10.0.1.7:5432");
        assert_eq!(
            config.tags.get(crate::liveness::TAG).map(String::as_str),
            Some("10.0.1.7:40001")
        );
        // An explicit connect host still wins.
        let pg = Postgres {
            connect_host: Some("db.example".into()),
            ..Postgres::default()
        };
        let config = render(&common(), &spec(&pg, &etcd), &h, &credentials()).unwrap();
        assert_eq!(config.postgresql.connect_address, "db.example:5432");
        // Without a liveness port no tag is written.
        let config = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap();
        assert!(config.tags.is_empty());
        assert!(yaml_of(&config).get("tags").is_none());
    }

    #[test]
    fn pg_hba_allows_only_scram_from_the_networks_and_local_replication_checks() {
        let pg = Postgres::default();
        let etcd = etcd();
        let config = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap();
        let hba = &config.postgresql.pg_hba;
        assert!(hba.contains(&"host replication replicator 127.0.0.1/32 scram-sha-256".into()));
        assert!(hba.contains(&"host all all 10.0.1.0/24 scram-sha-256".into()));
        assert!(hba.contains(&"host replication replicator 10.0.1.0/24 scram-sha-256".into()));
        for line in hba.iter().filter(|l| l.starts_with("host")) {
            assert!(line.ends_with("scram-sha-256"), "{line}");
            assert!(!line.contains("0.0.0.0/0"), "{line}");
        }
        assert!(!hba.iter().any(|l| l.contains("trust")), "{hba:?}");
    }

    #[test]
    fn tls_turns_ssl_on_checks_peers_against_the_ca_and_required_means_hostssl_only() {
        let pg = Postgres::default();
        let etcd = etcd();
        let off = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap();
        assert!(!off.postgresql.parameters.contains_key("ssl"));
        assert!(off.postgresql.authentication.replication.sslmode.is_none());
        for (tls, keyword) in [(Tls::On, "host "), (Tls::Require, "hostssl ")] {
            let mut c = common();
            c.tls = Some(tls);
            let config = render(&c, &spec(&pg, &etcd), &host(), &credentials()).unwrap();
            let p = &config.postgresql.parameters;
            let files = crate::tls::files(&c);
            assert_eq!(p["ssl"], "on");
            assert_eq!(p["ssl_key_file"], files.key.display().to_string());
            assert_eq!(p["ssl_cert_file"], files.cert.display().to_string());
            assert_eq!(p["ssl_ca_file"], files.ca.display().to_string());
            let auth = &config.postgresql.authentication;
            for login in [&auth.superuser, &auth.replication] {
                assert_eq!(login.sslmode.as_deref(), Some(PATRONI_SSLMODE));
                assert_eq!(
                    login.sslrootcert.as_deref(),
                    Some(files.ca.display().to_string().as_str())
                );
            }
            let hba = &config.postgresql.pg_hba;
            assert_eq!(hba[0], "local all all peer");
            for line in &hba[1..] {
                assert!(line.starts_with(keyword), "{tls:?}: {line}");
            }
            let text = to_text(&config).unwrap();
            assert!(text.contains("\"sslmode\": \"verify-ca\""), "{text}");
        }
    }

    #[test]
    fn contract_parameters_are_split_between_dcs_and_local() {
        let mut pg = Postgres::default();
        pg.parameters.insert("max_connections".into(), "500".into());
        pg.parameters.insert("work_mem".into(), "8MB".into());
        pg.parameters.insert("wal_level".into(), "logical".into());
        let etcd = etcd();
        let config = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap();
        let dcs = &config.bootstrap.dcs.postgresql.parameters;
        let local = &config.postgresql.parameters;
        assert_eq!(dcs.get("max_connections").map(String::as_str), Some("500"));
        assert_eq!(dcs.get("wal_level").map(String::as_str), Some("logical"));
        assert_eq!(local.get("work_mem").map(String::as_str), Some("8MB"));
        assert!(!local.contains_key("max_connections"));
    }

    #[test]
    fn parameters_patroni_owns_are_refused_by_name() {
        let mut pg = Postgres::default();
        pg.parameters.insert("port".into(), "6000".into());
        let etcd = etcd();
        let err = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`port`") && text.contains(env::PG_PARAMETERS),
            "{text}"
        );
    }

    #[test]
    fn citus_members_get_group_and_database() {
        let pg = Postgres::default();
        let etcd = etcd();
        for group in [0, 2] {
            let citus = Citus {
                group,
                database: "citus".into(),
            };
            let mut s = spec(&pg, &etcd);
            s.citus = Some(&citus);
            let config = render(&common(), &s, &host(), &credentials()).unwrap();
            let y = yaml_of(&config);
            assert_eq!(y["citus"]["group"].as_u64(), Some(u64::from(group)));
            assert_eq!(y["citus"]["database"].as_str(), Some("citus"));
            assert_eq!(
                y["bootstrap"]["dcs"]["postgresql"]["parameters"]["wal_level"].as_str(),
                Some("logical")
            );
            assert_eq!(
                y["scope"].as_str(),
                Some("demo"),
                "same scope in every group"
            );
            // Written explicitly, so Patroni's Citus default (quorum in 4.0) does not apply.
            assert_eq!(
                y["bootstrap"]["dcs"]["synchronous_mode"].as_bool(),
                Some(false)
            );
        }
    }

    #[test]
    fn synchronous_modes_are_spelled_as_patroni_expects() {
        let pg = Postgres::default();
        let etcd = etcd();
        let mut s = spec(&pg, &etcd);
        s.synchronous_mode = SynchronousMode::On;
        let y = yaml_of(&render(&common(), &s, &host(), &credentials()).unwrap());
        assert_eq!(
            y["bootstrap"]["dcs"]["synchronous_mode"].as_bool(),
            Some(true)
        );
        s.synchronous_mode = SynchronousMode::Quorum;
        let y = yaml_of(&render(&common(), &s, &host(), &credentials()).unwrap());
        assert_eq!(
            y["bootstrap"]["dcs"]["synchronous_mode"].as_str(),
            Some("quorum")
        );
    }

    #[test]
    fn a_crashed_primary_restarts_in_place_within_the_ttl_in_synchronous_modes() {
        let pg = Postgres::default();
        let etcd = etcd();
        let mut s = spec(&pg, &etcd);
        for (mode, expected) in [
            (SynchronousMode::On, Some(20)),
            (SynchronousMode::Quorum, Some(20)),
            (SynchronousMode::Off, None),
        ] {
            s.synchronous_mode = mode;
            let y = yaml_of(&render(&common(), &s, &host(), &credentials()).unwrap());
            let dcs = &y["bootstrap"]["dcs"];
            assert_eq!(
                dcs["primary_start_timeout"].as_u64(),
                expected,
                "synchronous mode {mode:?}"
            );
            if expected.is_none() {
                // Absent, so Patroni's default (restart in place) applies.
                assert!(dcs.get("primary_start_timeout").is_none(), "{mode:?}");
            }
        }
    }

    #[test]
    fn quorum_is_refused_on_patroni_3() {
        let pg = Postgres::default();
        let etcd = etcd();
        let mut s = spec(&pg, &etcd);
        s.synchronous_mode = SynchronousMode::Quorum;
        let mut h = host();
        h.patroni_version = PatroniVersion::parse("patroni 3.0.2");
        let err = render(&common(), &s, &h, &credentials()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("PGSWARM_SYNCHRONOUS_MODE") && text.contains("3.0.2"),
            "{text}"
        );
    }

    #[test]
    fn timing_follows_the_contracts_rules() {
        assert!(Timing::new(20, 5, 5).is_ok());
        assert!(Timing::new(30, 10, 10).is_ok());
        let err = Timing::new(10, 5, 5).unwrap_err();
        assert!(
            err.to_string().starts_with("PGSWARM_TTL=10: ttl is 10"),
            "{err}"
        );
        let err = Timing::new(20, 10, 10).unwrap_err();
        assert!(
            err.to_string().contains("= 30 is more than ttl = 20"),
            "{err}"
        );
        let err = Timing::new(20, 5, 2).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("PGSWARM_RETRY_TIMEOUT=2: retry_timeout is 2"),
            "{err}"
        );
        assert!(Timing::new(20, 0, 5)
            .unwrap_err()
            .to_string()
            .starts_with("PGSWARM_LOOP_WAIT"));
    }

    #[test]
    fn versions_parse_from_patroni_output() {
        let v = PatroniVersion::parse("patroni 3.0.2\n").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (3, 0, 2));
        assert!(!v.supports_quorum());
        let v = PatroniVersion::parse("patroni 4.0.7").unwrap();
        assert!(v.supports_quorum());
        assert_eq!(v.to_string(), "4.0.7");
        assert!(PatroniVersion::parse("nothing here").is_none());
    }

    #[test]
    fn yaml_1_1_keywords_stay_strings() {
        let pg = Postgres::default();
        let etcd = etcd();
        let mut creds = credentials();
        creds.superuser_password = "on".into();
        creds.replication_password = "no".into();
        let config = render(&common(), &spec(&pg, &etcd), &host(), &creds).unwrap();
        let text = to_text(&config).unwrap();
        assert!(text.contains("\"password\": \"on\""), "{text}");
        assert!(text.contains("\"password\": \"no\""), "{text}");
        assert!(text.contains("\"hot_standby\": \"on\""), "{text}");
    }

    #[test]
    fn the_interpreter_comes_from_the_shebang() {
        let resolve = |name: &str| Some(format!("/opt/bin/{name}"));
        assert_eq!(
            interpreter_of(" /usr/bin/python3", resolve).as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(
            interpreter_of("/usr/bin/python3 -s", resolve).as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(
            interpreter_of("/usr/bin/env python3", resolve).as_deref(),
            Some("/opt/bin/python3")
        );
        assert_eq!(interpreter_of("python3", resolve), None);
        assert_eq!(interpreter_of("", resolve), None);
    }

    #[test]
    fn the_launcher_runs_patroni_only_as_a_script() {
        // Fork-server children import the main script again: it must do nothing then.
        assert!(LAUNCHER.contains("if __name__ == \"__main__\":"));
        assert!(LAUNCHER.contains("from patroni.__main__ import main"));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let pg = Postgres::default();
        let etcd = etcd();
        let config = render(&common(), &spec(&pg, &etcd), &host(), &credentials()).unwrap();
        let debug = format!("{config:?} {:?}", credentials());
        assert!(!debug.contains("secret"), "{debug}");
    }
}
