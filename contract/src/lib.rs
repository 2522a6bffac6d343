//! The contract between `swarmctl` and `pgswarm-sidecar`.
//!
//! `swarmctl` decides the topology and writes each member's share of it into the stack file as
//! `PGSWARM_*` environment variables; the sidecar reads them back. Both sides go through the
//! typed [`MemberEnv`] defined here, so a variable name, a default port or a secret path exists
//! in exactly one place and can never drift between the two programs.
//!
//! Secrets never travel through this contract: only the *paths* of secret files do
//! (`PGSWARM_*_FILE`, defaulting to `/run/secrets/<name>`).

pub mod backup;
pub mod cron;
pub mod ctl;
pub mod objects;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Names of every environment variable of the contract.
pub mod env {
    /// Which process this container runs; see [`crate::Mode`].
    pub const MODE: &str = "PGSWARM_MODE";
    /// The cluster's name; Patroni's scope, etcd's cluster token.
    pub const CLUSTER: &str = "PGSWARM_CLUSTER";
    /// This member's name; also its Swarm service name, hence its stable DNS address.
    pub const MEMBER: &str = "PGSWARM_MEMBER";
    /// Root of the member's volume; data lives in subdirectories of it.
    pub const DATA_ROOT: &str = "PGSWARM_DATA_ROOT";
    /// Directory for rendered runtime files (patroni.yml, haproxy.cfg, ...).
    pub const RUN_DIR: &str = "PGSWARM_RUN_DIR";
    /// Directory of PostgreSQL binaries; found automatically when unset.
    pub const PG_BIN_DIR: &str = "PGSWARM_PG_BIN_DIR";
    /// Port PostgreSQL listens on.
    pub const PG_PORT: &str = "PGSWARM_PG_PORT";
    /// Address PostgreSQL (and Patroni's REST API) listen on.
    pub const LISTEN_ADDRESS: &str = "PGSWARM_LISTEN_ADDRESS";
    /// Host other members use to reach this one; defaults to the member name.
    pub const CONNECT_HOST: &str = "PGSWARM_CONNECT_HOST";
    /// PostgreSQL parameters as a JSON object of strings.
    pub const PG_PARAMETERS: &str = "PGSWARM_PG_PARAMETERS";
    /// Networks (CIDR, comma separated) allowed in pg_hba; detected from interfaces when unset.
    pub const ALLOWED_CIDRS: &str = "PGSWARM_ALLOWED_CIDRS";
    /// Folder of user SQL run once on first boot (replication primary).
    pub const INIT_SQL_DIR: &str = "PGSWARM_INIT_SQL_DIR";
    /// Folder whose files override the embedded templates of `init-scripts/`.
    pub const TEMPLATE_DIR: &str = "PGSWARM_TEMPLATE_DIR";
    /// Log format: `text` or `json`.
    pub const LOG_FORMAT: &str = "PGSWARM_LOG_FORMAT";

    /// Superuser name.
    pub const SUPERUSER: &str = "PGSWARM_SUPERUSER";
    /// Replication role name.
    pub const REPLICATION_USER: &str = "PGSWARM_REPLICATION_USER";
    /// Patroni REST API user name.
    pub const REST_USER: &str = "PGSWARM_REST_USER";
    /// Path of the superuser password file.
    pub const SUPERUSER_PASSWORD_FILE: &str = "PGSWARM_SUPERUSER_PASSWORD_FILE";
    /// Path of the replication password file.
    pub const REPLICATION_PASSWORD_FILE: &str = "PGSWARM_REPLICATION_PASSWORD_FILE";
    /// Path of the Patroni REST API password file.
    pub const REST_PASSWORD_FILE: &str = "PGSWARM_REST_PASSWORD_FILE";
    /// Path of the password file of the pooler's lookup user (`pgswarm_auth`).
    pub const POOLER_AUTH_PASSWORD_FILE: &str = "PGSWARM_POOLER_AUTH_PASSWORD_FILE";

    /// Replication primary: the replica slots to create (comma separated).
    pub const REPLICA_SLOTS: &str = "PGSWARM_REPLICA_SLOTS";
    /// Replication replica: host of the primary.
    pub const PRIMARY_HOST: &str = "PGSWARM_PRIMARY_HOST";
    /// Replication replica: port of the primary.
    pub const PRIMARY_PORT: &str = "PGSWARM_PRIMARY_PORT";
    /// Replication replica: the slot this replica streams from.
    pub const SLOT: &str = "PGSWARM_SLOT";
    /// Seconds to wait for a peer (primary, etcd) before giving up.
    pub const WAIT_TIMEOUT: &str = "PGSWARM_WAIT_TIMEOUT";

    /// Patroni, router: the etcd client endpoints, `host:port` comma separated.
    pub const ETCD_HOSTS: &str = "PGSWARM_ETCD_HOSTS";
    /// Where writes go (the router's read-write port, `host:port`): a leader that is asked to
    /// stop hands over first and waits until writes commit on the new leader there.
    pub const HANDOVER_WRITE: &str = "PGSWARM_HANDOVER_WRITE";
    /// The poolers (`host:port` of their service, comma-separated) a leader's handover holds.
    pub const HANDOVER_POOLERS: &str = "PGSWARM_HANDOVER_POOLERS";
    /// Patroni REST API port.
    pub const REST_PORT: &str = "PGSWARM_REST_PORT";
    /// Patroni leader lock TTL, seconds.
    pub const TTL: &str = "PGSWARM_TTL";
    /// Patroni loop wait, seconds.
    pub const LOOP_WAIT: &str = "PGSWARM_LOOP_WAIT";
    /// Patroni retry timeout, seconds.
    pub const RETRY_TIMEOUT: &str = "PGSWARM_RETRY_TIMEOUT";
    /// Patroni maximum lag on failover, bytes.
    pub const MAXIMUM_LAG_ON_FAILOVER: &str = "PGSWARM_MAXIMUM_LAG_ON_FAILOVER";
    /// Patroni synchronous mode: `off`, `on` or `quorum`.
    pub const SYNCHRONOUS_MODE: &str = "PGSWARM_SYNCHRONOUS_MODE";
    /// Citus group of this member (0 = coordinator); unset outside Citus.
    pub const CITUS_GROUP: &str = "PGSWARM_CITUS_GROUP";
    /// Citus database name.
    pub const CITUS_DATABASE: &str = "PGSWARM_CITUS_DATABASE";

    /// etcd: the initial cluster, `name=http://host:port` comma separated.
    pub const ETCD_INITIAL_CLUSTER: &str = "PGSWARM_ETCD_INITIAL_CLUSTER";
    /// etcd client port.
    pub const ETCD_CLIENT_PORT: &str = "PGSWARM_ETCD_CLIENT_PORT";
    /// etcd peer port.
    pub const ETCD_PEER_PORT: &str = "PGSWARM_ETCD_PEER_PORT";

    /// Router: the data members behind the read-write / read-only ports (comma separated hosts).
    pub const ROUTER_MEMBERS: &str = "PGSWARM_ROUTER_MEMBERS";
    /// Router: Citus worker members behind the optional worker port.
    pub const ROUTER_WORKER_MEMBERS: &str = "PGSWARM_ROUTER_WORKER_MEMBERS";
    /// Router read-write port.
    pub const ROUTER_RW_PORT: &str = "PGSWARM_ROUTER_RW_PORT";
    /// Router read-only port.
    pub const ROUTER_RO_PORT: &str = "PGSWARM_ROUTER_RO_PORT";
    /// Router port balanced over Citus worker primaries (optional).
    pub const ROUTER_WORKER_PORT: &str = "PGSWARM_ROUTER_WORKER_PORT";
    /// Router health check interval, milliseconds.
    pub const ROUTER_CHECK_INTERVAL_MS: &str = "PGSWARM_ROUTER_CHECK_INTERVAL_MS";
    /// Router checks failed before a server is marked down.
    pub const ROUTER_FALL: &str = "PGSWARM_ROUTER_FALL";
    /// Router checks passed before a server is marked up.
    pub const ROUTER_RISE: &str = "PGSWARM_ROUTER_RISE";
    /// `false` turns off the read-only port's fallback to the primary when no replica is up.
    pub const ROUTER_RO_FALLBACK: &str = "PGSWARM_ROUTER_RO_FALLBACK";

    /// Pooler: host it forwards to (the router's service name).
    pub const POOLER_TARGET_HOST: &str = "PGSWARM_POOLER_TARGET_HOST";
    /// Pooler: port it forwards to (the router's read-write port).
    pub const POOLER_TARGET_PORT: &str = "PGSWARM_POOLER_TARGET_PORT";
    /// Pooler listen port.
    pub const POOLER_PORT: &str = "PGSWARM_POOLER_PORT";
    /// Pooler pool mode: `transaction`, `session` or `statement`.
    pub const POOL_MODE: &str = "PGSWARM_POOL_MODE";
    /// Pooler default pool size.
    pub const POOL_SIZE: &str = "PGSWARM_POOL_SIZE";
    /// Pooler max client connections.
    pub const MAX_CLIENT_CONN: &str = "PGSWARM_MAX_CLIENT_CONN";
    /// Pooler: per-database pool settings, a JSON list of `{name, pool_size, pool_mode}`.
    pub const POOLER_DATABASES: &str = "PGSWARM_POOLER_DATABASES";

    /// Port of this member's Prometheus metrics endpoint (data members: postgres_exporter;
    /// router: HAProxy's exporter; pooler: pgbouncer_exporter); unset = monitoring off.
    pub const METRICS_PORT: &str = "PGSWARM_METRICS_PORT";
    /// Path of the monitoring role's password file.
    pub const MONITOR_PASSWORD_FILE: &str = "PGSWARM_MONITOR_PASSWORD_FILE";

    /// Path of the backup repository's passphrase file.
    pub const BACKUP_PASSPHRASE_FILE: &str = "PGSWARM_BACKUP_PASSPHRASE_FILE";
    /// Path of the CA certificate of pgBackRest's TLS.
    pub const BACKUP_TLS_CA_FILE: &str = "PGSWARM_BACKUP_TLS_CA_FILE";
    /// Path of the certificate of pgBackRest's TLS.
    pub const BACKUP_TLS_CERT_FILE: &str = "PGSWARM_BACKUP_TLS_CERT_FILE";
    /// Path of the private key of pgBackRest's TLS.
    pub const BACKUP_TLS_KEY_FILE: &str = "PGSWARM_BACKUP_TLS_KEY_FILE";
    /// TLS for client and replication connections: `on` (offered, plaintext still admitted)
    /// or `require` (`hostssl` only for everything but the local socket); unset = off.
    pub const TLS: &str = "PGSWARM_TLS";
    /// Path of the cluster CA certificate (PEM) clients and members trust.
    pub const TLS_CA_FILE: &str = "PGSWARM_TLS_CA_FILE";
    /// Path of the server certificate (PEM) of PostgreSQL and PgBouncer.
    pub const TLS_CERT_FILE: &str = "PGSWARM_TLS_CERT_FILE";
    /// Path of the server certificate's private key (PEM).
    pub const TLS_KEY_FILE: &str = "PGSWARM_TLS_KEY_FILE";
    /// Backup repository: the data members backed up, comma separated.
    pub const BACKUP_MEMBERS: &str = "PGSWARM_BACKUP_MEMBERS";
    /// Backup repository: the data members' data root, when not the default.
    pub const BACKUP_MEMBER_DATA_ROOT: &str = "PGSWARM_BACKUP_MEMBER_DATA_ROOT";
    /// Backup repository: the data members' run directory (socket), when not the default.
    pub const BACKUP_MEMBER_RUN_DIR: &str = "PGSWARM_BACKUP_MEMBER_RUN_DIR";
    /// Backup repository: when full backups run (cron syntax).
    pub const BACKUP_SCHEDULE_FULL: &str = "PGSWARM_BACKUP_SCHEDULE_FULL";
    /// Backup repository: when differential backups run (cron syntax).
    pub const BACKUP_SCHEDULE_DIFF: &str = "PGSWARM_BACKUP_SCHEDULE_DIFF";
}

/// Defaults shared by the generator and the sidecar.
pub mod defaults {
    /// Where a member's named volume is mounted in the container.
    pub const DATA_ROOT: &str = "/var/lib/pgswarm";
    /// Where rendered runtime files go in the container.
    pub const RUN_DIR: &str = "/run/pgswarm";
    /// Where Docker mounts secrets.
    pub const SECRETS_DIR: &str = "/run/secrets";
    pub const PG_PORT: u16 = 5432;
    pub const REST_PORT: u16 = 8008;
    pub const ETCD_CLIENT_PORT: u16 = 2379;
    pub const ETCD_PEER_PORT: u16 = 2380;
    pub const ROUTER_RW_PORT: u16 = 5000;
    pub const ROUTER_RO_PORT: u16 = 5001;
    pub const POOLER_PORT: u16 = 6432;
    pub const SUPERUSER: &str = "postgres";
    pub const REPLICATION_USER: &str = "replicator";
    pub const REST_USER: &str = "patroni";
    pub const LISTEN_ADDRESS: &str = "0.0.0.0";
    pub const WAIT_TIMEOUT_SECS: u64 = 300;
    pub const TTL: u32 = 20;
    pub const LOOP_WAIT: u32 = 5;
    pub const RETRY_TIMEOUT: u32 = 5;
    pub const MAXIMUM_LAG_ON_FAILOVER: u64 = 1_048_576;
    pub const ROUTER_CHECK_INTERVAL_MS: u32 = 1000;
    pub const ROUTER_FALL: u32 = 2;
    pub const ROUTER_RISE: u32 = 1;
    pub const POOL_SIZE: u32 = 20;
    pub const MAX_CLIENT_CONN: u32 = 1000;
    pub const CITUS_DATABASE: &str = "citus";
    /// Subdirectory of the data root holding PostgreSQL's data directory.
    pub const PGDATA_SUBDIR: &str = "pgdata";
    /// Subdirectory of the data root holding etcd's data directory.
    pub const ETCD_SUBDIR: &str = "etcd";
    /// The least-privilege role the PostgreSQL exporter logs in as (member of `pg_monitor`).
    pub const MONITOR_USER: &str = "pgswarm_monitor";
    /// postgres_exporter's port on every data member (its upstream default).
    pub const POSTGRES_METRICS_PORT: u16 = 9187;
    /// pgbouncer_exporter's port on the pooler (its upstream default).
    pub const POOLER_METRICS_PORT: u16 = 9127;
    /// HAProxy's Prometheus frontend on the router (the port HAProxy's documentation uses).
    pub const ROUTER_METRICS_PORT: u16 = 8404;
    /// Path of every metrics endpoint (Patroni, etcd and the exporters all serve it).
    pub const METRICS_PATH: &str = "/metrics";
}

/// A credential kept in a Docker secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Secret {
    /// Password of the PostgreSQL superuser.
    SuperuserPassword,
    /// Password of the replication role.
    ReplicationPassword,
    /// Password of Patroni's REST API (basic auth).
    RestPassword,
    /// Password of `pgswarm_auth`, the user PgBouncer's `auth_query` runs as.
    PoolerAuthPassword,
    /// Password of the monitoring role ([`defaults::MONITOR_USER`]) the PostgreSQL exporter uses.
    MonitorPassword,
    /// Passphrase of the encrypted pgBackRest repository (`repo1-cipher-pass`).
    BackupPassphrase,
    /// The CA certificate (PEM) pgBackRest's TLS peers trust.
    BackupTlsCa,
    /// The certificate (PEM) of the pgBackRest TLS servers and clients of the cluster: one
    /// certificate whose names are the repository and every data member.
    BackupTlsCert,
    /// Its private key (PEM).
    BackupTlsKey,
    /// The cluster CA certificate (PEM) of client and replication TLS.
    TlsCa,
    /// The server certificate (PEM) of PostgreSQL and PgBouncer: one certificate whose names
    /// are every data member, the router and the pooler (short and stack-prefixed).
    TlsCert,
    /// Its private key (PEM).
    TlsKey,
}

impl Secret {
    pub const ALL: [Secret; 12] = [
        Secret::SuperuserPassword,
        Secret::ReplicationPassword,
        Secret::RestPassword,
        Secret::PoolerAuthPassword,
        Secret::MonitorPassword,
        Secret::BackupPassphrase,
        Secret::BackupTlsCa,
        Secret::BackupTlsCert,
        Secret::BackupTlsKey,
        Secret::TlsCa,
        Secret::TlsCert,
        Secret::TlsKey,
    ];

    /// The secrets of client and replication TLS (a CA, a certificate and its key).
    pub const CLUSTER_TLS: [Secret; 3] = [Secret::TlsCa, Secret::TlsCert, Secret::TlsKey];

    /// Whether this secret is a certificate or a key (made by swarmctl as PEM, not a password).
    pub fn is_certificate(self) -> bool {
        Secret::BACKUP_TLS.contains(&self) || Secret::CLUSTER_TLS.contains(&self)
    }

    /// The secrets that are certificates or keys (generated together, not as passwords).
    pub const BACKUP_TLS: [Secret; 3] = [
        Secret::BackupTlsCa,
        Secret::BackupTlsCert,
        Secret::BackupTlsKey,
    ];

    /// File name inside the secrets directory (the `target` of the stack's secret mount).
    pub fn file_name(self) -> &'static str {
        match self {
            Secret::SuperuserPassword => "superuser_password",
            Secret::ReplicationPassword => "replication_password",
            Secret::RestPassword => "rest_password",
            Secret::PoolerAuthPassword => "pooler_auth_password",
            Secret::MonitorPassword => "monitor_password",
            Secret::BackupPassphrase => "backup_passphrase",
            Secret::BackupTlsCa => "backup_tls_ca",
            Secret::BackupTlsCert => "backup_tls_cert",
            Secret::BackupTlsKey => "backup_tls_key",
            Secret::TlsCa => "tls_ca",
            Secret::TlsCert => "tls_cert",
            Secret::TlsKey => "tls_key",
        }
    }

    /// The environment variable that may point at another path for this secret.
    pub fn env_var(self) -> &'static str {
        match self {
            Secret::SuperuserPassword => env::SUPERUSER_PASSWORD_FILE,
            Secret::ReplicationPassword => env::REPLICATION_PASSWORD_FILE,
            Secret::RestPassword => env::REST_PASSWORD_FILE,
            Secret::PoolerAuthPassword => env::POOLER_AUTH_PASSWORD_FILE,
            Secret::MonitorPassword => env::MONITOR_PASSWORD_FILE,
            Secret::BackupPassphrase => env::BACKUP_PASSPHRASE_FILE,
            Secret::BackupTlsCa => env::BACKUP_TLS_CA_FILE,
            Secret::BackupTlsCert => env::BACKUP_TLS_CERT_FILE,
            Secret::BackupTlsKey => env::BACKUP_TLS_KEY_FILE,
            Secret::TlsCa => env::TLS_CA_FILE,
            Secret::TlsCert => env::TLS_CERT_FILE,
            Secret::TlsKey => env::TLS_KEY_FILE,
        }
    }

    /// Name of the Docker secret holding it for `cluster` (`<cluster>_<file name>`).
    pub fn docker_name(self, cluster: &str) -> String {
        format!("{cluster}_{}", self.file_name())
    }

    /// Default path inside the container.
    pub fn default_path(self) -> String {
        format!("{}/{}", defaults::SECRETS_DIR, self.file_name())
    }

    /// Which modes need this secret, `metrics` telling whether the member runs its metrics
    /// endpoint. The router (HAProxy) checks members through Patroni's unauthenticated health
    /// endpoints and holds no credential; the pooler needs the superuser password (admin
    /// console, auth file) and the lookup user's password for PgBouncer's auth file (its
    /// exporter reads PgBouncer's console over the local socket, which PgBouncer admits
    /// without a password); the members that can lead create the lookup user with that
    /// password; data members with metrics need the monitoring role's password for their
    /// exporter.
    /// The backup and TLS secrets are never needed by this rule; see [`Common::needs`].
    pub fn needed_by(self, mode: Mode, metrics: bool) -> bool {
        match (self, mode) {
            (_, Mode::Etcd | Mode::Router | Mode::Backup) => false,
            (Secret::TlsCa | Secret::TlsCert | Secret::TlsKey, _) => false,
            (
                Secret::BackupPassphrase
                | Secret::BackupTlsCa
                | Secret::BackupTlsCert
                | Secret::BackupTlsKey,
                _,
            ) => false,
            (Secret::MonitorPassword, Mode::Primary | Mode::Replica | Mode::Patroni) => metrics,
            (Secret::MonitorPassword, _) => false,
            (Secret::SuperuserPassword, _) => true,
            (Secret::ReplicationPassword, Mode::Primary | Mode::Replica | Mode::Patroni) => true,
            (Secret::ReplicationPassword, _) => false,
            (Secret::RestPassword, Mode::Patroni) => true,
            (Secret::RestPassword, _) => false,
            (Secret::PoolerAuthPassword, Mode::Primary | Mode::Patroni | Mode::Pooler) => true,
            (Secret::PoolerAuthPassword, _) => false,
        }
    }
}

/// What one container of the stack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Streaming-replication primary (topology `replication`).
    Primary,
    /// Streaming-replication hot standby (topology `replication`).
    Replica,
    /// A Patroni-managed PostgreSQL member (topologies `patroni` and `citus`).
    Patroni,
    /// An etcd v3 member, Patroni's DCS.
    Etcd,
    /// HAProxy: read-write and read-only ports by Patroni health checks.
    Router,
    /// PgBouncer in front of the router.
    Pooler,
    /// The pgBackRest repository: its TLS server, the backup schedule and expiry.
    Backup,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Primary,
        Mode::Replica,
        Mode::Patroni,
        Mode::Etcd,
        Mode::Router,
        Mode::Pooler,
        Mode::Backup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Primary => "primary",
            Mode::Replica => "replica",
            Mode::Patroni => "patroni",
            Mode::Etcd => "etcd",
            Mode::Router => "router",
            Mode::Pooler => "pooler",
            Mode::Backup => "backup",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ContractError::Invalid {
                var: env::MODE,
                value: s.to_string(),
                expected: "one of primary, replica, patroni, etcd, router, pooler, backup".into(),
            })
    }
}

/// Patroni's synchronous replication setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynchronousMode {
    #[default]
    Off,
    On,
    Quorum,
}

impl SynchronousMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SynchronousMode::Off => "off",
            SynchronousMode::On => "on",
            SynchronousMode::Quorum => "quorum",
        }
    }
}

impl FromStr for SynchronousMode {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" | "false" => Ok(SynchronousMode::Off),
            "on" | "true" => Ok(SynchronousMode::On),
            "quorum" => Ok(SynchronousMode::Quorum),
            other => Err(ContractError::Invalid {
                var: env::SYNCHRONOUS_MODE,
                value: other.to_string(),
                expected: "off, on or quorum".into(),
            }),
        }
    }
}

/// PgBouncer pool mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
    Statement,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
            PoolMode::Statement => "statement",
        }
    }
}

impl FromStr for PoolMode {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transaction" => Ok(PoolMode::Transaction),
            "session" => Ok(PoolMode::Session),
            "statement" => Ok(PoolMode::Statement),
            other => Err(ContractError::Invalid {
                var: env::POOL_MODE,
                value: other.to_string(),
                expected: "transaction, session or statement".into(),
            }),
        }
    }
}

/// An error reading the contract from an environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContractError {
    #[error(
        "{var} is not set; it is required in mode {mode} (the stack generated by swarmctl sets it)"
    )]
    Missing { var: &'static str, mode: String },
    #[error("{var}={value:?} is not valid: expected {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
}

/// A `host:port` endpoint.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Endpoint {
    fn parse(var: &'static str, s: &str) -> Result<Self, ContractError> {
        let invalid = || ContractError::Invalid {
            var,
            value: s.to_string(),
            expected: "host:port".into(),
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(invalid)?;
        let port = port.parse().map_err(|_| invalid())?;
        if host.is_empty() {
            return Err(invalid());
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

/// One etcd member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdPeer {
    pub name: String,
    pub peer_url: String,
}

/// Settings every mode shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    pub cluster: String,
    pub member: String,
    pub data_root: String,
    pub run_dir: String,
    pub log_json: bool,
    pub superuser: String,
    pub replication_user: String,
    pub rest_user: String,
    /// Secret file paths that differ from the default `/run/secrets/<name>`.
    pub secret_files: BTreeMap<Secret, String>,
    pub wait_timeout_secs: u64,
    /// Port of this member's metrics endpoint; `None` = monitoring off.
    pub metrics_port: Option<u16>,
    /// WAL archiving to and restoring from the cluster's pgBackRest repository (data members
    /// of a cluster with a `backup` section); `None` = no backups.
    pub backup: Option<backup::BackupSettings>,
    /// TLS for client and replication connections; `None` = off.
    pub tls: Option<Tls>,
}

/// How a cluster uses TLS for client and replication connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// PostgreSQL and PgBouncer offer TLS; plaintext TCP connections are still admitted.
    On,
    /// Only TLS over TCP (`hostssl`); plaintext is refused everywhere but the local socket.
    Require,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::On => "on",
            Tls::Require => "require",
        }
    }
}

impl FromStr for Tls {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Tls::On),
            "require" => Ok(Tls::Require),
            other => Err(ContractError::Invalid {
                var: env::TLS,
                value: other.to_string(),
                expected: "on or require".into(),
            }),
        }
    }
}

impl Common {
    pub fn new(cluster: impl Into<String>, member: impl Into<String>) -> Self {
        Common {
            cluster: cluster.into(),
            member: member.into(),
            data_root: defaults::DATA_ROOT.into(),
            run_dir: defaults::RUN_DIR.into(),
            log_json: false,
            superuser: defaults::SUPERUSER.into(),
            replication_user: defaults::REPLICATION_USER.into(),
            rest_user: defaults::REST_USER.into(),
            secret_files: BTreeMap::new(),
            wait_timeout_secs: defaults::WAIT_TIMEOUT_SECS,
            metrics_port: None,
            backup: None,
            tls: None,
        }
    }

    /// Whether a secret is needed by this member in `mode` (see [`Secret::needed_by`]).
    /// With backups on, Patroni members and the repository also need the TLS certificate,
    /// its key and CA, and the passphrase when the repository is encrypted (pgBackRest
    /// encrypts and decrypts on the client side: members read and write the repository's
    /// files through its server).
    /// With TLS on (the `patroni` topology), Patroni members and the pooler need the cluster
    /// CA, the server certificate and its key.
    pub fn needs(&self, secret: Secret, mode: Mode) -> bool {
        if Secret::CLUSTER_TLS.contains(&secret) {
            return self.tls.is_some() && matches!(mode, Mode::Patroni | Mode::Pooler);
        }
        let backup_mode = matches!(mode, Mode::Patroni | Mode::Backup);
        match (secret, &self.backup) {
            (Secret::BackupPassphrase, Some(b)) => backup_mode && b.encrypt,
            (Secret::BackupTlsCa | Secret::BackupTlsCert | Secret::BackupTlsKey, Some(_)) => {
                backup_mode
            }
            (
                Secret::BackupPassphrase
                | Secret::BackupTlsCa
                | Secret::BackupTlsCert
                | Secret::BackupTlsKey,
                None,
            ) => false,
            _ => secret.needed_by(mode, self.metrics_port.is_some()),
        }
    }

    /// Path of a secret's file.
    pub fn secret_path(&self, secret: Secret) -> String {
        self.secret_files
            .get(&secret)
            .cloned()
            .unwrap_or_else(|| secret.default_path())
    }

    /// PostgreSQL's data directory.
    pub fn pgdata(&self) -> String {
        format!("{}/{}", self.data_root, defaults::PGDATA_SUBDIR)
    }

    /// Where the sidecar renders patroni.yml (`patronictl -c` takes it too).
    pub fn patroni_config_path(&self) -> String {
        format!("{}/patroni.yml", self.run_dir)
    }

    /// Where Patroni keeps its password file.
    pub fn patroni_pgpass_path(&self) -> String {
        format!("{}/pgpass", self.run_dir)
    }

    /// The directory of PostgreSQL's Unix socket (`psql -h` takes it): the run directory, one
    /// per member, never shared with another server on the same host.
    pub fn socket_dir(&self) -> &str {
        &self.run_dir
    }
}

/// Settings of a PostgreSQL server (primary, replica, Patroni member).
#[derive(Debug, Clone, PartialEq)]
pub struct Postgres {
    pub port: u16,
    pub listen_address: String,
    /// How peers reach this member; the member (service) name by default.
    pub connect_host: Option<String>,
    pub bin_dir: Option<String>,
    pub parameters: BTreeMap<String, String>,
    /// Networks allowed in pg_hba; empty = detect from the container's interfaces.
    pub allowed_cidrs: Vec<String>,
}

impl Default for Postgres {
    fn default() -> Self {
        Postgres {
            port: defaults::PG_PORT,
            listen_address: defaults::LISTEN_ADDRESS.into(),
            connect_host: None,
            bin_dir: None,
            parameters: BTreeMap::new(),
            allowed_cidrs: Vec::new(),
        }
    }
}

/// What a Patroni leader does before it stops (a `docker service update`, a drain, a
/// `docker stop`): it hands the leader over to a replica through Patroni's switchover, with
/// the poolers paused, and waits until writes through `write` commit on the new leader, so
/// that clients of the pooler wait instead of failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The router's read-write port.
    pub write: Endpoint,
    /// The poolers' admin consoles (service name and port; every task is paused).
    pub poolers: Vec<Endpoint>,
}

/// Citus membership of a Patroni member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citus {
    pub group: u32,
    pub database: String,
}

/// Everything one container needs, by mode.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Primary {
        postgres: Postgres,
        replica_slots: Vec<String>,
        init_sql_dir: Option<String>,
    },
    Replica {
        postgres: Postgres,
        primary: Endpoint,
        slot: String,
    },
    Patroni {
        postgres: Postgres,
        etcd_hosts: Vec<Endpoint>,
        rest_port: u16,
        ttl: u32,
        loop_wait: u32,
        retry_timeout: u32,
        maximum_lag_on_failover: u64,
        synchronous_mode: SynchronousMode,
        citus: Option<Citus>,
        /// Hand over before stopping (none: stop as Patroni does, releasing the key).
        handover: Option<Handover>,
    },
    Etcd {
        initial_cluster: Vec<EtcdPeer>,
        client_port: u16,
        peer_port: u16,
    },
    Router {
        members: Vec<String>,
        worker_members: Vec<String>,
        pg_port: u16,
        rest_port: u16,
        rw_port: u16,
        ro_port: u16,
        worker_port: Option<u16>,
        check_interval_ms: u32,
        fall: u32,
        rise: u32,
        /// The read-only port falls back to the primary while no replica is healthy.
        ro_fallback: bool,
    },
    Pooler {
        target: Endpoint,
        port: u16,
        pool_mode: PoolMode,
        pool_size: u32,
        max_client_conn: u32,
        /// Per-database pool settings; every other database uses the defaults above.
        databases: Vec<objects::PoolerDatabase>,
    },
    /// The repository service; its settings (port, retention, encryption) are
    /// `common.backup`.
    Backup {
        /// The data members whose pgBackRest servers backups are taken through.
        members: Vec<String>,
        /// PostgreSQL's port on the members.
        pg_port: u16,
        /// The members' data root and run directory (their `PGSWARM_DATA_ROOT` and
        /// `PGSWARM_RUN_DIR`): where their data directory and socket are.
        member_data_root: String,
        member_run_dir: String,
        /// When full backups run (a [`cron::Schedule`] as written), if scheduled.
        schedule_full: Option<String>,
        /// When differential backups run, if scheduled.
        schedule_diff: Option<String>,
    },
}

impl Role {
    pub fn mode(&self) -> Mode {
        match self {
            Role::Primary { .. } => Mode::Primary,
            Role::Replica { .. } => Mode::Replica,
            Role::Patroni { .. } => Mode::Patroni,
            Role::Etcd { .. } => Mode::Etcd,
            Role::Router { .. } => Mode::Router,
            Role::Pooler { .. } => Mode::Pooler,
            Role::Backup { .. } => Mode::Backup,
        }
    }
}

/// One member's whole environment: what `swarmctl` writes and the sidecar reads.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberEnv {
    pub common: Common,
    pub role: Role,
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl MemberEnv {
    pub fn mode(&self) -> Mode {
        self.role.mode()
    }

    /// The environment variables, in a stable order. Contains no secret, only secret paths.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let c = &self.common;
        out.push((env::MODE, self.mode().to_string()));
        out.push((env::CLUSTER, c.cluster.clone()));
        out.push((env::MEMBER, c.member.clone()));
        if c.data_root != defaults::DATA_ROOT {
            out.push((env::DATA_ROOT, c.data_root.clone()));
        }
        if c.run_dir != defaults::RUN_DIR {
            out.push((env::RUN_DIR, c.run_dir.clone()));
        }
        if c.log_json {
            out.push((env::LOG_FORMAT, "json".into()));
        }
        if c.superuser != defaults::SUPERUSER {
            out.push((env::SUPERUSER, c.superuser.clone()));
        }
        if c.replication_user != defaults::REPLICATION_USER {
            out.push((env::REPLICATION_USER, c.replication_user.clone()));
        }
        if c.rest_user != defaults::REST_USER {
            out.push((env::REST_USER, c.rest_user.clone()));
        }
        for (secret, path) in &c.secret_files {
            out.push((secret.env_var(), path.clone()));
        }
        if c.wait_timeout_secs != defaults::WAIT_TIMEOUT_SECS {
            out.push((env::WAIT_TIMEOUT, c.wait_timeout_secs.to_string()));
        }
        if let Some(port) = c.metrics_port {
            out.push((env::METRICS_PORT, port.to_string()));
        }
        if let Some(b) = &c.backup {
            out.extend(b.to_env());
        }
        if let Some(tls) = c.tls {
            out.push((env::TLS, tls.as_str().into()));
        }
        let push_pg = |out: &mut Vec<(&'static str, String)>, pg: &Postgres| {
            if pg.port != defaults::PG_PORT {
                out.push((env::PG_PORT, pg.port.to_string()));
            }
            if pg.listen_address != defaults::LISTEN_ADDRESS {
                out.push((env::LISTEN_ADDRESS, pg.listen_address.clone()));
            }
            if let Some(host) = &pg.connect_host {
                out.push((env::CONNECT_HOST, host.clone()));
            }
            if let Some(dir) = &pg.bin_dir {
                out.push((env::PG_BIN_DIR, dir.clone()));
            }
            if !pg.parameters.is_empty() {
                let json = serde_json::to_string(&pg.parameters).unwrap_or_default();
                out.push((env::PG_PARAMETERS, json));
            }
            if !pg.allowed_cidrs.is_empty() {
                out.push((env::ALLOWED_CIDRS, join(&pg.allowed_cidrs)));
            }
        };
        match &self.role {
            Role::Primary {
                postgres,
                replica_slots,
                init_sql_dir,
            } => {
                push_pg(&mut out, postgres);
                out.push((env::REPLICA_SLOTS, join(replica_slots)));
                if let Some(dir) = init_sql_dir {
                    out.push((env::INIT_SQL_DIR, dir.clone()));
                }
            }
            Role::Replica {
                postgres,
                primary,
                slot,
            } => {
                push_pg(&mut out, postgres);
                out.push((env::PRIMARY_HOST, primary.host.clone()));
                out.push((env::PRIMARY_PORT, primary.port.to_string()));
                out.push((env::SLOT, slot.clone()));
            }
            Role::Patroni {
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
            } => {
                push_pg(&mut out, postgres);
                out.push((env::ETCD_HOSTS, join(etcd_hosts)));
                if let Some(h) = handover {
                    out.push((env::HANDOVER_WRITE, h.write.to_string()));
                    if !h.poolers.is_empty() {
                        out.push((env::HANDOVER_POOLERS, join(&h.poolers)));
                    }
                }
                out.push((env::REST_PORT, rest_port.to_string()));
                out.push((env::TTL, ttl.to_string()));
                out.push((env::LOOP_WAIT, loop_wait.to_string()));
                out.push((env::RETRY_TIMEOUT, retry_timeout.to_string()));
                out.push((
                    env::MAXIMUM_LAG_ON_FAILOVER,
                    maximum_lag_on_failover.to_string(),
                ));
                out.push((env::SYNCHRONOUS_MODE, synchronous_mode.as_str().into()));
                if let Some(citus) = citus {
                    out.push((env::CITUS_GROUP, citus.group.to_string()));
                    out.push((env::CITUS_DATABASE, citus.database.clone()));
                }
            }
            Role::Etcd {
                initial_cluster,
                client_port,
                peer_port,
            } => {
                let cluster = initial_cluster
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.peer_url))
                    .collect::<Vec<_>>()
                    .join(",");
                out.push((env::ETCD_INITIAL_CLUSTER, cluster));
                out.push((env::ETCD_CLIENT_PORT, client_port.to_string()));
                out.push((env::ETCD_PEER_PORT, peer_port.to_string()));
            }
            Role::Router {
                members,
                worker_members,
                pg_port,
                rest_port,
                rw_port,
                ro_port,
                worker_port,
                check_interval_ms,
                fall,
                rise,
                ro_fallback,
            } => {
                out.push((env::ROUTER_MEMBERS, join(members)));
                if !worker_members.is_empty() {
                    out.push((env::ROUTER_WORKER_MEMBERS, join(worker_members)));
                }
                out.push((env::PG_PORT, pg_port.to_string()));
                out.push((env::REST_PORT, rest_port.to_string()));
                out.push((env::ROUTER_RW_PORT, rw_port.to_string()));
                out.push((env::ROUTER_RO_PORT, ro_port.to_string()));
                if let Some(port) = worker_port {
                    out.push((env::ROUTER_WORKER_PORT, port.to_string()));
                }
                out.push((env::ROUTER_CHECK_INTERVAL_MS, check_interval_ms.to_string()));
                out.push((env::ROUTER_FALL, fall.to_string()));
                out.push((env::ROUTER_RISE, rise.to_string()));
                if !ro_fallback {
                    out.push((env::ROUTER_RO_FALLBACK, "false".into()));
                }
            }
            Role::Pooler {
                target,
                port,
                pool_mode,
                pool_size,
                max_client_conn,
                databases,
            } => {
                out.push((env::POOLER_TARGET_HOST, target.host.clone()));
                out.push((env::POOLER_TARGET_PORT, target.port.to_string()));
                out.push((env::POOLER_PORT, port.to_string()));
                out.push((env::POOL_MODE, pool_mode.as_str().into()));
                out.push((env::POOL_SIZE, pool_size.to_string()));
                out.push((env::MAX_CLIENT_CONN, max_client_conn.to_string()));
                if !databases.is_empty() {
                    let json = serde_json::to_string(databases).unwrap_or_default();
                    out.push((env::POOLER_DATABASES, json));
                }
            }
            // Written below: the repository's own variables.
            Role::Backup { .. } => {}
        }
        if let Role::Backup {
            members,
            pg_port,
            member_data_root,
            member_run_dir,
            schedule_full,
            schedule_diff,
        } = &self.role
        {
            out.push((env::BACKUP_MEMBERS, join(members)));
            if *pg_port != defaults::PG_PORT {
                out.push((env::PG_PORT, pg_port.to_string()));
            }
            if member_data_root != defaults::DATA_ROOT {
                out.push((env::BACKUP_MEMBER_DATA_ROOT, member_data_root.clone()));
            }
            if member_run_dir != defaults::RUN_DIR {
                out.push((env::BACKUP_MEMBER_RUN_DIR, member_run_dir.clone()));
            }
            if let Some(s) = schedule_full {
                out.push((env::BACKUP_SCHEDULE_FULL, s.clone()));
            }
            if let Some(s) = schedule_diff {
                out.push((env::BACKUP_SCHEDULE_DIFF, s.clone()));
            }
        }
        out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Reads the contract from the process environment.
    pub fn from_process_env() -> Result<Self, ContractError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the contract through `lookup` (a variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ContractError> {
        let r = Reader { lookup: &lookup };
        let mode: Mode = r
            .get(env::MODE)
            .ok_or(ContractError::Missing {
                var: env::MODE,
                mode: "any".into(),
            })?
            .parse()?;
        let r = Reader { lookup: &lookup };
        let m = mode.as_str();
        let mut secret_files = BTreeMap::new();
        for secret in Secret::ALL {
            if let Some(path) = r.get(secret.env_var()) {
                secret_files.insert(secret, path);
            }
        }
        let common = Common {
            cluster: r.required(env::CLUSTER, m)?,
            member: r.required(env::MEMBER, m)?,
            data_root: r.get(env::DATA_ROOT).unwrap_or(defaults::DATA_ROOT.into()),
            run_dir: r.get(env::RUN_DIR).unwrap_or(defaults::RUN_DIR.into()),
            log_json: match r.get(env::LOG_FORMAT).as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(ContractError::Invalid {
                        var: env::LOG_FORMAT,
                        value: other.into(),
                        expected: "text or json".into(),
                    })
                }
            },
            superuser: r.get(env::SUPERUSER).unwrap_or(defaults::SUPERUSER.into()),
            replication_user: r
                .get(env::REPLICATION_USER)
                .unwrap_or(defaults::REPLICATION_USER.into()),
            rest_user: r.get(env::REST_USER).unwrap_or(defaults::REST_USER.into()),
            secret_files,
            wait_timeout_secs: r.parsed(env::WAIT_TIMEOUT, defaults::WAIT_TIMEOUT_SECS)?,
            metrics_port: match r.get(env::METRICS_PORT) {
                None => None,
                Some(_) => Some(r.parsed(env::METRICS_PORT, 0)?),
            },
            backup: backup::BackupSettings::from_lookup(&lookup)?,
            tls: match r.get(env::TLS) {
                None => None,
                Some(s) => Some(s.parse()?),
            },
        };
        let postgres = || -> Result<Postgres, ContractError> {
            let parameters = match r.get(env::PG_PARAMETERS) {
                None => BTreeMap::new(),
                Some(json) => serde_json::from_str(&json).map_err(|e| ContractError::Invalid {
                    var: env::PG_PARAMETERS,
                    value: json.clone(),
                    expected: format!("a JSON object of strings ({e})"),
                })?,
            };
            Ok(Postgres {
                port: r.parsed(env::PG_PORT, defaults::PG_PORT)?,
                listen_address: r
                    .get(env::LISTEN_ADDRESS)
                    .unwrap_or(defaults::LISTEN_ADDRESS.into()),
                connect_host: r.get(env::CONNECT_HOST),
                bin_dir: r.get(env::PG_BIN_DIR),
                parameters,
                allowed_cidrs: r.list(env::ALLOWED_CIDRS),
            })
        };
        let role = match mode {
            Mode::Primary => Role::Primary {
                postgres: postgres()?,
                replica_slots: r.list(env::REPLICA_SLOTS),
                init_sql_dir: r.get(env::INIT_SQL_DIR),
            },
            Mode::Replica => Role::Replica {
                postgres: postgres()?,
                primary: Endpoint {
                    host: r.required(env::PRIMARY_HOST, m)?,
                    port: r.parsed(env::PRIMARY_PORT, defaults::PG_PORT)?,
                },
                slot: r.required(env::SLOT, m)?,
            },
            Mode::Patroni => {
                let etcd_hosts = r
                    .list(env::ETCD_HOSTS)
                    .iter()
                    .map(|s| Endpoint::parse(env::ETCD_HOSTS, s))
                    .collect::<Result<Vec<_>, _>>()?;
                if etcd_hosts.is_empty() {
                    return Err(ContractError::Missing {
                        var: env::ETCD_HOSTS,
                        mode: m.into(),
                    });
                }
                let citus = match r.get(env::CITUS_GROUP) {
                    None => None,
                    Some(_) => Some(Citus {
                        group: r.parsed(env::CITUS_GROUP, 0)?,
                        database: r
                            .get(env::CITUS_DATABASE)
                            .unwrap_or(defaults::CITUS_DATABASE.into()),
                    }),
                };
                let handover = match r.get(env::HANDOVER_WRITE) {
                    None => None,
                    Some(w) => Some(Handover {
                        write: Endpoint::parse(env::HANDOVER_WRITE, &w)?,
                        poolers: r
                            .list(env::HANDOVER_POOLERS)
                            .iter()
                            .map(|s| Endpoint::parse(env::HANDOVER_POOLERS, s))
                            .collect::<Result<Vec<_>, _>>()?,
                    }),
                };
                Role::Patroni {
                    handover,
                    postgres: postgres()?,
                    etcd_hosts,
                    rest_port: r.parsed(env::REST_PORT, defaults::REST_PORT)?,
                    ttl: r.parsed(env::TTL, defaults::TTL)?,
                    loop_wait: r.parsed(env::LOOP_WAIT, defaults::LOOP_WAIT)?,
                    retry_timeout: r.parsed(env::RETRY_TIMEOUT, defaults::RETRY_TIMEOUT)?,
                    maximum_lag_on_failover: r.parsed(
                        env::MAXIMUM_LAG_ON_FAILOVER,
                        defaults::MAXIMUM_LAG_ON_FAILOVER,
                    )?,
                    synchronous_mode: match r.get(env::SYNCHRONOUS_MODE) {
                        None => SynchronousMode::Off,
                        Some(s) => s.parse()?,
                    },
                    citus,
                }
            }
            Mode::Etcd => {
                let raw = r.required(env::ETCD_INITIAL_CLUSTER, m)?;
                let initial_cluster = raw
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|item| {
                        item.trim()
                            .split_once('=')
                            .map(|(name, url)| EtcdPeer {
                                name: name.to_string(),
                                peer_url: url.to_string(),
                            })
                            .ok_or_else(|| ContractError::Invalid {
                                var: env::ETCD_INITIAL_CLUSTER,
                                value: raw.clone(),
                                expected: "name=http://host:port, comma separated".into(),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Role::Etcd {
                    initial_cluster,
                    client_port: r.parsed(env::ETCD_CLIENT_PORT, defaults::ETCD_CLIENT_PORT)?,
                    peer_port: r.parsed(env::ETCD_PEER_PORT, defaults::ETCD_PEER_PORT)?,
                }
            }
            Mode::Router => {
                let members = r.list(env::ROUTER_MEMBERS);
                if members.is_empty() {
                    return Err(ContractError::Missing {
                        var: env::ROUTER_MEMBERS,
                        mode: m.into(),
                    });
                }
                Role::Router {
                    members,
                    worker_members: r.list(env::ROUTER_WORKER_MEMBERS),
                    pg_port: r.parsed(env::PG_PORT, defaults::PG_PORT)?,
                    rest_port: r.parsed(env::REST_PORT, defaults::REST_PORT)?,
                    rw_port: r.parsed(env::ROUTER_RW_PORT, defaults::ROUTER_RW_PORT)?,
                    ro_port: r.parsed(env::ROUTER_RO_PORT, defaults::ROUTER_RO_PORT)?,
                    worker_port: match r.get(env::ROUTER_WORKER_PORT) {
                        None => None,
                        Some(_) => Some(r.parsed(env::ROUTER_WORKER_PORT, 0)?),
                    },
                    check_interval_ms: r.parsed(
                        env::ROUTER_CHECK_INTERVAL_MS,
                        defaults::ROUTER_CHECK_INTERVAL_MS,
                    )?,
                    fall: r.parsed(env::ROUTER_FALL, defaults::ROUTER_FALL)?,
                    rise: r.parsed(env::ROUTER_RISE, defaults::ROUTER_RISE)?,
                    ro_fallback: r.parsed(env::ROUTER_RO_FALLBACK, true)?,
                }
            }
            Mode::Backup => {
                if common.backup.is_none() {
                    return Err(ContractError::Missing {
                        var: backup::env::REPO_HOST,
                        mode: m.into(),
                    });
                }
                Role::backup_from(&r)?
            }
            Mode::Pooler => Role::Pooler {
                target: Endpoint {
                    host: r.required(env::POOLER_TARGET_HOST, m)?,
                    port: r.parsed(env::POOLER_TARGET_PORT, defaults::ROUTER_RW_PORT)?,
                },
                port: r.parsed(env::POOLER_PORT, defaults::POOLER_PORT)?,
                pool_mode: match r.get(env::POOL_MODE) {
                    None => PoolMode::Transaction,
                    Some(s) => s.parse()?,
                },
                pool_size: r.parsed(env::POOL_SIZE, defaults::POOL_SIZE)?,
                max_client_conn: r.parsed(env::MAX_CLIENT_CONN, defaults::MAX_CLIENT_CONN)?,
                databases: match r.get(env::POOLER_DATABASES) {
                    None => Vec::new(),
                    Some(json) => {
                        serde_json::from_str(&json).map_err(|e| ContractError::Invalid {
                            var: env::POOLER_DATABASES,
                            value: json.clone(),
                            expected: format!(
                                "a JSON list of {{name, pool_size, pool_mode}} objects ({e})"
                            ),
                        })?
                    }
                },
            },
        };
        Ok(MemberEnv { common, role })
    }
}

impl Role {
    fn backup_from(r: &Reader<'_, impl Fn(&str) -> Option<String>>) -> Result<Role, ContractError> {
        let members = r.list(env::BACKUP_MEMBERS);
        if members.is_empty() {
            return Err(ContractError::Missing {
                var: env::BACKUP_MEMBERS,
                mode: Mode::Backup.to_string(),
            });
        }
        let schedule = |var: &'static str| -> Result<Option<String>, ContractError> {
            match r.get(var) {
                None => Ok(None),
                Some(text) => match cron::Schedule::parse(&text) {
                    Ok(s) => Ok(Some(s.as_str().to_string())),
                    Err(e) => Err(ContractError::Invalid {
                        var,
                        value: text,
                        expected: e.to_string(),
                    }),
                },
            }
        };
        Ok(Role::Backup {
            members,
            pg_port: r.parsed(env::PG_PORT, defaults::PG_PORT)?,
            member_data_root: r
                .get(env::BACKUP_MEMBER_DATA_ROOT)
                .unwrap_or(defaults::DATA_ROOT.into()),
            member_run_dir: r
                .get(env::BACKUP_MEMBER_RUN_DIR)
                .unwrap_or(defaults::RUN_DIR.into()),
            schedule_full: schedule(env::BACKUP_SCHEDULE_FULL)?,
            schedule_diff: schedule(env::BACKUP_SCHEDULE_DIFF)?,
        })
    }
}

struct Reader<'a, F: Fn(&str) -> Option<String>> {
    lookup: &'a F,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, var: &'static str, mode: &str) -> Result<String, ContractError> {
        self.get(var).ok_or(ContractError::Missing {
            var,
            mode: mode.to_string(),
        })
    }

    fn list(&self, var: &str) -> Vec<String> {
        self.get(var)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn parsed<T: FromStr>(&self, var: &'static str, default: T) -> Result<T, ContractError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ContractError::Invalid {
                var,
                value: v.clone(),
                expected: format!("a number ({})", std::any::type_name::<T>()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn round_trip(member: &MemberEnv) -> MemberEnv {
        let vars: HashMap<String, String> = member.to_env().into_iter().collect();
        MemberEnv::from_lookup(|k| vars.get(k).cloned()).expect("round trip")
    }

    fn patroni() -> MemberEnv {
        let mut postgres = Postgres::default();
        postgres
            .parameters
            .insert("shared_preload_libraries".into(), "a,b".into());
        postgres.allowed_cidrs = vec!["10.0.0.0/24".into()];
        MemberEnv {
            common: Common::new("demo", "pg1"),
            role: Role::Patroni {
                postgres,
                etcd_hosts: vec![Endpoint {
                    host: "etcd1".into(),
                    port: 2379,
                }],
                rest_port: 8008,
                ttl: 20,
                loop_wait: 5,
                retry_timeout: 5,
                maximum_lag_on_failover: 1024,
                synchronous_mode: SynchronousMode::On,
                citus: Some(Citus {
                    group: 2,
                    database: "citus".into(),
                }),
                handover: Some(Handover {
                    write: Endpoint {
                        host: "tasks.router".into(),
                        port: 5000,
                    },
                    poolers: vec![Endpoint {
                        host: "pooler".into(),
                        port: 6432,
                    }],
                }),
            },
        }
    }

    #[test]
    fn every_role_round_trips_through_the_environment() {
        let mut common = Common::new("demo", "m");
        common.data_root = "/tmp/x".into();
        common
            .secret_files
            .insert(Secret::SuperuserPassword, "/s/p".into());
        common.metrics_port = Some(9187);
        common.backup = Some(backup::BackupSettings {
            archive_timeout_secs: 30,
            ..backup::BackupSettings::new("backup")
        });
        let roles = vec![
            Role::Primary {
                postgres: Postgres::default(),
                replica_slots: vec!["r1".into(), "r2".into()],
                init_sql_dir: Some("/init".into()),
            },
            Role::Replica {
                postgres: Postgres::default(),
                primary: Endpoint {
                    host: "p".into(),
                    port: 5433,
                },
                slot: "r1".into(),
            },
            patroni().role,
            Role::Etcd {
                initial_cluster: vec![EtcdPeer {
                    name: "etcd1".into(),
                    peer_url: "http://etcd1:2380".into(),
                }],
                client_port: 2379,
                peer_port: 2380,
            },
            Role::Router {
                members: vec!["pg1".into(), "pg2".into()],
                worker_members: vec!["w1".into()],
                pg_port: 5432,
                rest_port: 8008,
                rw_port: 5000,
                ro_port: 5001,
                worker_port: Some(5002),
                check_interval_ms: 1000,
                fall: 2,
                rise: 1,
                ro_fallback: false,
            },
            Role::Pooler {
                target: Endpoint {
                    host: "router".into(),
                    port: 5000,
                },
                port: 6432,
                pool_mode: PoolMode::Session,
                pool_size: 7,
                max_client_conn: 70,
                databases: vec![objects::PoolerDatabase {
                    name: "appdb".into(),
                    pool_size: Some(3),
                    pool_mode: Some(objects::PoolModeSetting::Session),
                }],
            },
            Role::Backup {
                members: vec!["pg1".into(), "pg2".into()],
                pg_port: 5433,
                member_data_root: "/data".into(),
                member_run_dir: defaults::RUN_DIR.into(),
                schedule_full: Some("0 3 * * 0".into()),
                schedule_diff: None,
            },
        ];
        for role in roles {
            let member = MemberEnv {
                common: common.clone(),
                role,
            };
            assert_eq!(round_trip(&member), member);
        }
    }

    #[test]
    fn backup_secrets_follow_the_backup_settings() {
        let mut common = Common::new("demo", "m");
        let tls = [
            Secret::BackupTlsCa,
            Secret::BackupTlsCert,
            Secret::BackupTlsKey,
        ];
        for mode in Mode::ALL {
            for s in tls.iter().chain([&Secret::BackupPassphrase]) {
                assert!(!common.needs(*s, mode), "{mode} {s:?} without backups");
            }
        }
        common.backup = Some(backup::BackupSettings::new("backup"));
        for mode in Mode::ALL {
            let uses = matches!(mode, Mode::Patroni | Mode::Backup);
            for s in tls.iter().chain([&Secret::BackupPassphrase]) {
                assert_eq!(common.needs(*s, mode), uses, "{mode} {s:?}");
            }
        }
        // The repository holds no database credential.
        assert!(!common.needs(Secret::SuperuserPassword, Mode::Backup));
        common.backup = Some(backup::BackupSettings {
            encrypt: false,
            ..backup::BackupSettings::new("backup")
        });
        assert!(!common.needs(Secret::BackupPassphrase, Mode::Backup));
        assert!(!common.needs(Secret::BackupPassphrase, Mode::Patroni));
        assert!(common.needs(Secret::BackupTlsKey, Mode::Patroni));
    }

    #[test]
    fn tls_secrets_go_to_the_servers_and_the_pooler_and_the_setting_round_trips() {
        let mut common = Common::new("demo", "m");
        for mode in Mode::ALL {
            for s in Secret::CLUSTER_TLS {
                assert!(!common.needs(s, mode), "{mode} {s:?} without TLS");
            }
        }
        for tls in [Tls::On, Tls::Require] {
            common.tls = Some(tls);
            for mode in Mode::ALL {
                let uses = matches!(mode, Mode::Patroni | Mode::Pooler);
                for s in Secret::CLUSTER_TLS {
                    assert_eq!(common.needs(s, mode), uses, "{mode} {s:?}");
                }
            }
            let member = MemberEnv {
                common: common.clone(),
                role: Role::Pooler {
                    target: Endpoint {
                        host: "demo_router".into(),
                        port: 5000,
                    },
                    port: 6432,
                    pool_mode: PoolMode::Transaction,
                    pool_size: 20,
                    max_client_conn: 100,
                    databases: Vec::new(),
                },
            };
            let env: BTreeMap<String, String> = member.to_env().into_iter().collect();
            assert_eq!(env.get(env::TLS).map(String::as_str), Some(tls.as_str()));
            let back = MemberEnv::from_lookup(|k| env.get(k).cloned()).unwrap();
            assert_eq!(back, member);
        }
        let bad = MemberEnv::from_lookup(|k| match k {
            env::MODE => Some("pooler".into()),
            env::CLUSTER | env::MEMBER | env::POOLER_TARGET_HOST => Some("x".into()),
            env::TLS => Some("yes".into()),
            _ => None,
        });
        assert!(matches!(
            bad,
            Err(ContractError::Invalid { var: env::TLS, .. })
        ));
    }

    #[test]
    fn each_mode_gets_only_the_secrets_it_uses() {
        let needs = |mode| {
            Secret::ALL
                .into_iter()
                .filter(|s| s.needed_by(mode, false))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            needs(Mode::Patroni),
            vec![
                Secret::SuperuserPassword,
                Secret::ReplicationPassword,
                Secret::RestPassword,
                Secret::PoolerAuthPassword
            ]
        );
        assert_eq!(
            needs(Mode::Primary),
            vec![
                Secret::SuperuserPassword,
                Secret::ReplicationPassword,
                Secret::PoolerAuthPassword
            ]
        );
        assert_eq!(
            needs(Mode::Replica),
            vec![Secret::SuperuserPassword, Secret::ReplicationPassword]
        );
        assert_eq!(
            needs(Mode::Pooler),
            vec![Secret::SuperuserPassword, Secret::PoolerAuthPassword]
        );
        assert!(needs(Mode::Router).is_empty());
        assert!(needs(Mode::Etcd).is_empty());
        // With metrics on, only data members add the monitoring role's password.
        for mode in Mode::ALL {
            let data = matches!(mode, Mode::Primary | Mode::Replica | Mode::Patroni);
            assert_eq!(
                Secret::MonitorPassword.needed_by(mode, true),
                data,
                "{mode}"
            );
            assert!(!Secret::MonitorPassword.needed_by(mode, false), "{mode}");
        }
    }

    #[test]
    fn no_secret_value_is_part_of_the_environment() {
        let env = patroni().to_env();
        assert!(env.iter().all(|(k, _)| !k.ends_with("PASSWORD")));
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        let err = MemberEnv::from_lookup(|_| None).unwrap_err();
        assert!(err.to_string().contains("PGSWARM_MODE"));
        let err = MemberEnv::from_lookup(|k| (k == env::MODE).then(|| "bogus".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus") && err.contains("primary"), "{err}");
        let vars: HashMap<&str, &str> = [
            (env::MODE, "replica"),
            (env::CLUSTER, "c"),
            (env::MEMBER, "m"),
        ]
        .into();
        let err = MemberEnv::from_lookup(|k| vars.get(k).map(|s| s.to_string())).unwrap_err();
        assert_eq!(
            err,
            ContractError::Missing {
                var: env::PRIMARY_HOST,
                mode: "replica".into()
            }
        );
    }
}
