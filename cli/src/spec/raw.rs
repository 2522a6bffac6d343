//! The cluster spec exactly as written: serde types that reject unknown fields and otherwise
//! keep every choice the user made (or did not make: `None` means "not stated"), so the
//! validation step can tell a default from an explicit setting.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The whole spec file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Cluster name: stack name, Patroni scope, prefix of secrets and node labels.
    pub name: String,
    /// `replication`, `patroni` or `citus`; checked by validation for a precise message.
    pub topology: String,
    /// Image every service runs.
    #[serde(default)]
    pub image: Option<String>,
    /// Log format of the sidecar: `text` or `json`.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// PostgreSQL settings shared by every data member.
    #[serde(default)]
    pub postgres: Option<RawPostgres>,
    /// Data members of the `patroni` topology: a count or a list.
    #[serde(default)]
    pub members: Option<RawMembers>,
    /// Primary and replicas of the `replication` topology.
    #[serde(default)]
    pub replication: Option<RawReplication>,
    /// Patroni settings (`patroni` and `citus`).
    #[serde(default)]
    pub patroni: Option<RawPatroni>,
    /// Citus groups (`citus`).
    #[serde(default)]
    pub citus: Option<RawCitus>,
    /// etcd, Patroni's DCS (`patroni` and `citus`).
    #[serde(default)]
    pub etcd: Option<RawEtcd>,
    /// HAProxy router (`patroni` and `citus`).
    #[serde(default)]
    pub router: Option<RawRouter>,
    /// PgBouncer pooler.
    #[serde(default)]
    pub pooler: Option<RawPooler>,
    /// The overlay network.
    #[serde(default)]
    pub network: Option<RawNetwork>,
    /// Options of the named volumes.
    #[serde(default)]
    pub volumes: Option<RawVolumes>,
    /// Cluster-wide placement settings.
    #[serde(default)]
    pub placement: Option<RawClusterPlacement>,
    /// Application roles, reconciled by the leading member.
    #[serde(default)]
    pub roles: Option<Vec<RawRole>>,
    /// Application databases, reconciled by the leading member.
    #[serde(default)]
    pub databases: Option<Vec<RawDatabase>>,
    /// Prometheus metrics endpoints (on by default).
    #[serde(default)]
    pub monitoring: Option<RawMonitoring>,
    /// Backups and continuous WAL archiving with pgBackRest (`patroni` topology).
    #[serde(default)]
    pub backup: Option<RawBackup>,
    /// TLS for client and replication connections (`patroni` topology; off when absent).
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// TLS for client and replication connections: PostgreSQL and PgBouncer get a server
/// certificate signed by the cluster's CA (generated as Docker secrets, or the user's own).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `false` turns TLS off (default true when the section is present).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `true`: only TLS over TCP (`hostssl`), plaintext refused (default false: offered).
    #[serde(default)]
    pub require: Option<bool>,
    /// Your own CA certificate (PEM), an existing Docker secret (with the two below).
    #[serde(default)]
    pub ca_secret: Option<String>,
    /// Your own server certificate (PEM), an existing Docker secret.
    #[serde(default)]
    pub cert_secret: Option<String>,
    /// Its private key (PEM), an existing Docker secret.
    #[serde(default)]
    pub key_secret: Option<String>,
    /// More names (DNS names or IP addresses) for the generated certificate: the addresses
    /// clients reach the published ports by, so they can use `sslmode=verify-full`.
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

/// Backups with pgBackRest: a repository service of the stack holds the backups and the
/// archived WAL on its own volume; every member archives WAL to it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    /// `false` turns backups and archiving off (default true when the section is present).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The repository service (pgBackRest's TLS server on its own volume).
    #[serde(default)]
    pub repository: Option<RawBackupRepository>,
    /// How many backups are kept.
    #[serde(default)]
    pub retention: Option<RawRetention>,
    /// When backups are taken (cron expressions: minute hour day-of-month month day-of-week).
    #[serde(default)]
    pub schedule: Option<RawSchedule>,
    /// Seconds after which a partly filled WAL segment is archived anyway: the most a
    /// quiet cluster can lose with all its volumes (default 60).
    #[serde(default)]
    pub archive_timeout: Option<u64>,
    /// Encrypt the repository with a generated passphrase secret (default true).
    #[serde(default)]
    pub encrypt: Option<bool>,
}

/// The repository service.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackupRepository {
    /// Service name (default `backup`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub placement: Option<RawPlacement>,
    #[serde(default)]
    pub resources: Option<RawResources>,
}

/// Backups kept by pgBackRest's expiry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Full backups kept (default 2).
    #[serde(default)]
    pub full: Option<u64>,
    /// Differential backups kept (default: pgBackRest's, as many as the full backups).
    #[serde(default)]
    pub diff: Option<u64>,
}

/// Backup schedule, run by the repository service.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// When full backups run, e.g. `0 3 * * 0` (default: none scheduled).
    #[serde(default)]
    pub full: Option<String>,
    /// When differential backups run, e.g. `0 3 * * 1-6`.
    #[serde(default)]
    pub diff: Option<String>,
}

/// One application role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub name: String,
    /// Whether it logs in (default true); a group role does not.
    #[serde(default)]
    pub login: Option<bool>,
    /// Most concurrent connections (default unlimited).
    #[serde(default)]
    pub connection_limit: Option<i64>,
    /// Roles it is a member of: declared roles or PostgreSQL's `pg_*` roles.
    #[serde(default)]
    pub member_of: Vec<String>,
    /// An existing Docker secret holding its password; generated when not given.
    #[serde(default)]
    pub password_secret: Option<String>,
    #[serde(default)]
    pub ensure: Option<RawEnsure>,
}

/// One application database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub name: String,
    /// A declared role or the superuser (default: the superuser).
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Roles that may connect and read every table the owner creates.
    #[serde(default)]
    pub readers: Vec<String>,
    /// Server connections per user of this database in the pooler.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// Pool mode of this database in the pooler.
    #[serde(default)]
    pub pool_mode: Option<PoolModeName>,
    #[serde(default)]
    pub ensure: Option<RawEnsure>,
}

/// `present` (the default) or `absent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawEnsure {
    Present,
    Absent,
}

/// Metrics endpoints on the overlay network: the PostgreSQL exporter on every data member,
/// Patroni's and etcd's own `/metrics`, HAProxy's exporter, the PgBouncer exporter.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitoring {
    /// `false` turns every exporter off (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// postgres_exporter's port on every data member (default 9187).
    #[serde(default)]
    pub postgres_port: Option<u16>,
    /// HAProxy's Prometheus frontend on the router (default 8404).
    #[serde(default)]
    pub router_port: Option<u16>,
    /// pgbouncer_exporter's port on the pooler (default 9127).
    #[serde(default)]
    pub pooler_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// postgresql.conf parameters.
    #[serde(default)]
    pub parameters: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub superuser: Option<String>,
    #[serde(default)]
    pub replication_user: Option<String>,
    /// Default resources of every data member.
    #[serde(default)]
    pub resources: Option<RawResources>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    #[serde(default)]
    pub primary: Option<RawMember>,
    #[serde(default)]
    pub replicas: Option<RawMembers>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatroni {
    #[serde(default)]
    pub ttl: Option<u32>,
    #[serde(default)]
    pub loop_wait: Option<u32>,
    #[serde(default)]
    pub retry_timeout: Option<u32>,
    #[serde(default)]
    pub maximum_lag_on_failover: Option<u64>,
    #[serde(default)]
    pub synchronous_mode: Option<SyncMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCitus {
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub groups: Vec<RawCitusGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCitusGroup {
    /// 0 is the coordinator, 1.. are workers.
    pub group: u32,
    pub members: RawMembers,
    #[serde(default)]
    pub synchronous_mode: Option<SyncMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    #[serde(default)]
    pub members: Option<RawMembers>,
    #[serde(default)]
    pub resources: Option<RawResources>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub rw_port: Option<u16>,
    #[serde(default)]
    pub ro_port: Option<u16>,
    #[serde(default)]
    pub worker_port: Option<u16>,
    #[serde(default)]
    pub publish: Option<PublishMode>,
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub check_interval_ms: Option<u32>,
    #[serde(default)]
    pub fall: Option<u32>,
    #[serde(default)]
    pub rise: Option<u32>,
    /// The read-only port goes to the primary while no replica is healthy (default true).
    #[serde(default)]
    pub read_only_fallback: Option<bool>,
    #[serde(default)]
    pub placement: Option<RawPlacement>,
    #[serde(default)]
    pub resources: Option<RawResources>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPooler {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub publish: Option<PublishMode>,
    #[serde(default)]
    pub pool_mode: Option<PoolModeName>,
    #[serde(default)]
    pub pool_size: Option<u32>,
    #[serde(default)]
    pub max_client_conn: Option<u32>,
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub placement: Option<RawPlacement>,
    #[serde(default)]
    pub resources: Option<RawResources>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub subnet: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolumes {
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterPlacement {
    /// Node label naming each node's zone; members spread over its values.
    #[serde(default)]
    pub zone_label: Option<String>,
}

/// Where one service may run.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlacement {
    /// Node labels required (`key: value`); replaces the generated member label.
    #[serde(default)]
    pub labels: BTreeMap<String, Scalar>,
    /// Raw Swarm constraints (`node.role == manager`).
    #[serde(default)]
    pub constraints: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    #[serde(default)]
    pub limits: Option<RawResourceSet>,
    #[serde(default)]
    pub reservations: Option<RawResourceSet>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourceSet {
    /// CPUs, e.g. `2` or `0.5`.
    #[serde(default)]
    pub cpus: Option<Scalar>,
    /// Memory, e.g. `512M`, `4G`, or bytes.
    #[serde(default)]
    pub memory: Option<Scalar>,
}

/// A port a data member publishes on the nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    pub port: u16,
    #[serde(default)]
    pub mode: Option<PublishMode>,
}

/// How a service's ports are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Through Swarm's routing mesh, on every node.
    Ingress,
    /// Only on the node the task runs on.
    Host,
    /// Not published: reachable on the overlay network only.
    None,
}

/// PgBouncer pool mode as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolModeName {
    Transaction,
    Session,
    Statement,
}

/// Patroni synchronous mode as written: `off`, `on`, `quorum`, or a boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Off,
    On,
    Quorum,
}

impl<'de> Deserialize<'de> for SyncMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SyncMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`off`, `on` or `quorum`")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SyncMode, E> {
                Ok(if v { SyncMode::On } else { SyncMode::Off })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SyncMode, E> {
                match v {
                    "off" | "false" => Ok(SyncMode::Off),
                    "on" | "true" => Ok(SyncMode::On),
                    "quorum" => Ok(SyncMode::Quorum),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A scalar written as a string, number or boolean, kept as its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(if v { "on" } else { "off" }.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Members written either as a count (names generated) or as a list.
#[derive(Debug, Clone)]
pub enum RawMembers {
    Count(u64),
    List(Vec<RawMember>),
}

impl RawMembers {
    /// How many members this declares.
    pub fn count(&self) -> u64 {
        match self {
            RawMembers::Count(n) => *n,
            RawMembers::List(l) => l.len() as u64,
        }
    }
}

impl<'de> Deserialize<'de> for RawMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMembers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member count or a list of members")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawMembers, E> {
                Ok(RawMembers::Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawMembers, E> {
                u64::try_from(v)
                    .map(RawMembers::Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawMembers, A::Error> {
                let mut out = Vec::new();
                while let Some(member) = seq.next_element()? {
                    out.push(member);
                }
                Ok(RawMembers::List(out))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// One member: its name alone (`- pg1`) or a mapping with name and settings.
#[derive(Debug, Clone, Default)]
pub struct RawMember {
    pub name: String,
    pub placement: Option<RawPlacement>,
    pub resources: Option<RawResources>,
    pub publish: Option<RawPublish>,
}

/// The mapping form of [`RawMember`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemberFields {
    name: String,
    #[serde(default)]
    placement: Option<RawPlacement>,
    #[serde(default)]
    resources: Option<RawResources>,
    #[serde(default)]
    publish: Option<RawPublish>,
}

impl<'de> Deserialize<'de> for RawMember {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMember;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name or a mapping with `name` and settings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMember, E> {
                Ok(RawMember {
                    name: v.to_string(),
                    ..RawMember::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMember, A::Error> {
                let f = RawMemberFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawMember {
                    name: f.name,
                    placement: f.placement,
                    resources: f.resources,
                    publish: f.publish,
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}
