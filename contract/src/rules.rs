//! Rules both programs enforce: what `swarmctl validate` accepts must be exactly what the
//! sidecar starts. Each rule is one function here; the validator turns its error into a problem
//! located in the spec (field, line, fix), the sidecar into a configuration error naming the
//! environment variable. A rule that lived in only one of them let a valid spec crash-loop
//! every member.

use std::collections::BTreeMap;

/// Patroni refuses a leader lock TTL below this (seconds).
pub const MIN_TTL: u32 = 20;
/// Patroni's smallest `loop_wait` (seconds).
pub const MIN_LOOP_WAIT: u32 = 1;
/// Patroni's smallest `retry_timeout` (seconds): Patroni's own configuration validator and
/// its documentation give 3 as the minimum possible value.
pub const MIN_RETRY_TIMEOUT: u32 = 3;

/// The Patroni timing setting a [`TimingError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingField {
    Ttl,
    LoopWait,
    RetryTimeout,
    /// The three together (`loop_wait + 2 * retry_timeout <= ttl`).
    Together,
}

/// A Patroni timing that Patroni would refuse or silently change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error(
        "ttl is {ttl}; Patroni refuses a leader lock TTL below {MIN_TTL} seconds: set it to \
         {MIN_TTL} or more"
    )]
    TtlTooShort { ttl: u32 },
    #[error("loop_wait is {loop_wait}; Patroni's minimum is {MIN_LOOP_WAIT} second: set it to {MIN_LOOP_WAIT} or more")]
    LoopWaitTooShort { loop_wait: u32 },
    #[error(
        "retry_timeout is {retry_timeout}; Patroni's minimum is {MIN_RETRY_TIMEOUT} seconds: \
         set it to {MIN_RETRY_TIMEOUT} or more"
    )]
    RetryTimeoutTooShort { retry_timeout: u32 },
    #[error(
        "loop_wait + 2 * retry_timeout = {loop_wait} + 2 * {retry_timeout} = {needed} is more \
         than ttl = {ttl}: the leader could lose its lock while it is still retrying (Patroni 4 \
         would quietly lower loop_wait and retry_timeout); raise ttl to {needed} or more, or \
         lower loop_wait / retry_timeout (defaults: ttl 20, loop_wait 5, retry_timeout 5)"
    )]
    Budget {
        ttl: u32,
        loop_wait: u32,
        retry_timeout: u32,
        needed: u64,
    },
}

impl TimingError {
    /// The setting to change.
    pub fn field(&self) -> TimingField {
        match self {
            TimingError::TtlTooShort { .. } => TimingField::Ttl,
            TimingError::LoopWaitTooShort { .. } => TimingField::LoopWait,
            TimingError::RetryTimeoutTooShort { .. } => TimingField::RetryTimeout,
            TimingError::Budget { .. } => TimingField::Together,
        }
    }
}

/// Every timing rule `ttl`, `loop_wait` and `retry_timeout` break (empty when Patroni takes
/// them as they are). The budget rule is checked only when each value is acceptable alone.
pub fn timing_problems(ttl: u32, loop_wait: u32, retry_timeout: u32) -> Vec<TimingError> {
    let mut out = Vec::new();
    if ttl < MIN_TTL {
        out.push(TimingError::TtlTooShort { ttl });
    }
    if loop_wait < MIN_LOOP_WAIT {
        out.push(TimingError::LoopWaitTooShort { loop_wait });
    }
    if retry_timeout < MIN_RETRY_TIMEOUT {
        out.push(TimingError::RetryTimeoutTooShort { retry_timeout });
    }
    let needed = u64::from(loop_wait) + 2 * u64::from(retry_timeout);
    if out.is_empty() && needed > u64::from(ttl) {
        out.push(TimingError::Budget {
            ttl,
            loop_wait,
            retry_timeout,
            needed,
        });
    }
    out
}

/// The first timing rule broken, if any.
pub fn check_timing(ttl: u32, loop_wait: u32, retry_timeout: u32) -> Result<(), TimingError> {
    match timing_problems(ttl, loop_wait, retry_timeout)
        .into_iter()
        .next()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A PostgreSQL parameter pgswarm (or Patroni) sets itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedParameter {
    pub name: &'static str,
    /// Why, and what to use instead.
    pub why: &'static str,
    /// Managed only where Patroni runs (topologies patroni and citus).
    pub patroni_only: bool,
}

const fn managed(name: &'static str, why: &'static str) -> ManagedParameter {
    ManagedParameter {
        name,
        why,
        patroni_only: false,
    }
}

/// Every parameter pgswarm manages.
pub const MANAGED_PARAMETERS: &[ManagedParameter] = &[
    managed(
        "port",
        "PostgreSQL listens on 5432 inside its container; to reach it on another port, \
         publish it with the member's `publish.port`",
    ),
    managed("listen_addresses", "pgswarm listens on the overlay network"),
    managed(
        "data_directory",
        "the data directory is on the member's volume",
    ),
    managed("hba_file", "pgswarm renders pg_hba.conf"),
    managed("ident_file", "pgswarm renders the configuration"),
    managed("config_file", "pgswarm renders the configuration"),
    managed(
        "unix_socket_directories",
        "pgswarm chooses the socket directory",
    ),
    managed(
        "primary_conninfo",
        "replicas are pointed at their primary by pgswarm",
    ),
    managed(
        "primary_slot_name",
        "replica slots are derived from member names",
    ),
    managed(
        "cluster_name",
        "pgswarm sets it to the member's name (Patroni to the cluster's scope), so the \
         server's logs and process titles say where they come from",
    ),
    ManagedParameter {
        name: "synchronous_standby_names",
        why: "use `patroni.synchronous_mode` (Patroni manages the standby names)",
        patroni_only: true,
    },
];

/// A PostgreSQL parameter a member cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterError {
    #[error(
        "`{name}` is not a PostgreSQL parameter name: use lowercase letters, digits and `_` \
         (with one `.` for extension settings like `citus.shard_count`)"
    )]
    BadName { name: String },
    #[error("`{name}` is managed by pgswarm and cannot be set here: {why}")]
    Managed { name: String, why: &'static str },
    #[error("the value of `{name}` contains a control character (a line break?)")]
    ControlCharacter { name: String },
}

/// Whether `name` may be set to `value` on a member (`patroni`: the member runs under Patroni).
pub fn check_parameter(name: &str, value: &str, patroni: bool) -> Result<(), ParameterError> {
    if !is_parameter_name(name) {
        return Err(ParameterError::BadName { name: name.into() });
    }
    if let Some(m) = MANAGED_PARAMETERS
        .iter()
        .find(|m| m.name == name && (patroni || !m.patroni_only))
    {
        return Err(ParameterError::Managed {
            name: name.into(),
            why: m.why,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(ParameterError::ControlCharacter { name: name.into() });
    }
    Ok(())
}

/// [`check_parameter`] over a member's parameters: the first refused.
pub fn check_parameters(
    parameters: &BTreeMap<String, String>,
    patroni: bool,
) -> Result<(), ParameterError> {
    parameters
        .iter()
        .try_for_each(|(n, v)| check_parameter(n, v, patroni))
}

/// `work_mem`, `citus.shard_count`: lowercase identifiers, at most one `.`.
pub fn is_parameter_name(name: &str) -> bool {
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, _) => is_identifier(a),
        (Some(a), Some(b), None) => is_identifier(a) && is_identifier(b),
        _ => false,
    }
}

/// Plain lowercase SQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes.
pub fn is_identifier(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && matches!(bytes.first(), Some(b'a'..=b'z' | b'_'))
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// Which role a [`RoleNameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleField {
    Superuser,
    ReplicationUser,
}

/// A database role name pgswarm cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleNameError {
    #[error(
        "`{name}` is not a plain role name: use lowercase letters, digits and `_`, starting \
         with a letter"
    )]
    NotPlain { field: RoleField, name: String },
    #[error(
        "the replication user and the superuser are both `{name}`: the replication role must \
         not be the superuser (it gets only the REPLICATION privilege); choose another name \
         for one of them"
    )]
    SameAsSuperuser { name: String },
}

impl RoleNameError {
    /// The role to rename.
    pub fn field(&self) -> RoleField {
        match self {
            RoleNameError::NotPlain { field, .. } => *field,
            RoleNameError::SameAsSuperuser { .. } => RoleField::ReplicationUser,
        }
    }
}

/// Every rule the superuser and replication user names break.
pub fn role_name_problems(superuser: &str, replication_user: &str) -> Vec<RoleNameError> {
    let mut out = Vec::new();
    for (field, name) in [
        (RoleField::Superuser, superuser),
        (RoleField::ReplicationUser, replication_user),
    ] {
        if !is_identifier(name) {
            out.push(RoleNameError::NotPlain {
                field,
                name: name.into(),
            });
        }
    }
    if superuser == replication_user {
        out.push(RoleNameError::SameAsSuperuser {
            name: superuser.into(),
        });
    }
    out
}

/// The first role-name rule broken, if any.
pub fn check_role_names(superuser: &str, replication_user: &str) -> Result<(), RoleNameError> {
    match role_name_problems(superuser, replication_user)
        .into_iter()
        .next()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Why `name` cannot be a role declared in the spec's `roles`, if it cannot: it must be a
/// plain identifier and not one pgswarm or PostgreSQL keeps for itself (the superuser, the
/// replication user, the pooler's lookup user, `public`, the `pg_` prefix).
pub fn declared_role_problem(
    name: &str,
    superuser: &str,
    replication_user: &str,
) -> Option<String> {
    if !is_identifier(name) {
        return Some(format!(
            "`{name}` is not a plain role name: use lowercase letters, digits and `_`, starting \
             with a letter (at most 63 characters)"
        ));
    }
    if name == superuser {
        return Some(format!(
            "`{name}` is the superuser, which pgswarm manages itself: declare another role"
        ));
    }
    if name == replication_user {
        return Some(format!(
            "`{name}` is the replication user, which pgswarm manages itself: declare another role"
        ));
    }
    if name == crate::objects::AUTH_USER || name == crate::objects::SCHEMA {
        return Some(format!(
            "`{name}` is kept for the pooler's password lookup: choose another name"
        ));
    }
    if name == "public" || name.starts_with("pg_") {
        return Some(format!(
            "`{name}` is reserved by PostgreSQL (`public` and names starting with `pg_`): \
             choose another name"
        ));
    }
    None
}

/// Why `name` cannot be a database declared in the spec's `databases`, if it cannot.
pub fn declared_database_problem(name: &str) -> Option<String> {
    if !is_identifier(name) {
        return Some(format!(
            "`{name}` is not a plain database name: use lowercase letters, digits and `_`, \
             starting with a letter (at most 63 characters)"
        ));
    }
    if matches!(name, "postgres" | "template0" | "template1") {
        return Some(format!(
            "`{name}` is one of PostgreSQL's own databases, which pgswarm does not manage: \
             declare an application database with another name"
        ));
    }
    None
}

/// TCP keepalive timing for every service (kernel sysctls), PostgreSQL's `tcp_keepalives_*`
/// and the replicas' connection to their primary. Swarm's IPVS drops a connection idle for
/// 900 s, so the first probe must come well before that; a peer that vanished without a reset
/// (a partitioned or powered-off node) is noticed after `IDLE + INTERVAL * COUNT` = 120 s, so
/// pooled server connections and sessions to a dead primary do not linger for many minutes.
/// A probe per idle minute per connection costs nothing measurable.
pub mod keepalive {
    /// Seconds of idleness before the first probe.
    pub const IDLE_SECS: u32 = 60;
    /// Seconds between probes.
    pub const INTERVAL_SECS: u32 = 10;
    /// Unanswered probes before the connection is dropped.
    pub const COUNT: u32 = 6;
    // A dead peer is dropped before IPVS would drop the idle connection.
    const _: () = assert!(IDLE_SECS + INTERVAL_SECS * COUNT < 900);

    /// PostgreSQL's parameters for these values.
    pub fn postgres_parameters() -> [(&'static str, String); 3] {
        [
            ("tcp_keepalives_idle", IDLE_SECS.to_string()),
            ("tcp_keepalives_interval", INTERVAL_SECS.to_string()),
            ("tcp_keepalives_count", COUNT.to_string()),
        ]
    }
}

/// Ports Swarm itself uses on every node, so no service may publish them:
/// (port, protocol, what for).
pub const SWARM_RESERVED_PORTS: [(u16, &str, &str); 4] = [
    (2377, "tcp", "cluster management (to managers)"),
    (7946, "tcp", "node communication"),
    (7946, "udp", "node communication"),
    (4789, "udp", "overlay network traffic (VXLAN)"),
];

/// What Swarm uses `port` for, when it is one of its own.
pub fn swarm_reserved_port(port: u16) -> Option<&'static str> {
    SWARM_RESERVED_PORTS
        .iter()
        .find(|(p, _, _)| *p == port)
        .map(|(_, _, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_minimums_are_patronis() {
        assert!(check_timing(20, 5, 5).is_ok());
        assert!(check_timing(20, 1, 3).is_ok());
        assert_eq!(
            check_timing(20, 5, 2),
            Err(TimingError::RetryTimeoutTooShort { retry_timeout: 2 })
        );
        assert_eq!(
            check_timing(19, 5, 5).unwrap_err().field(),
            TimingField::Ttl
        );
        assert_eq!(
            check_timing(20, 0, 5).unwrap_err().field(),
            TimingField::LoopWait
        );
        assert_eq!(
            check_timing(20, 10, 6).unwrap_err().field(),
            TimingField::Together
        );
        assert_eq!(timing_problems(0, 0, 0).len(), 3);
        assert!(check_timing(u32::MAX, u32::MAX, u32::MAX).is_err());
    }

    #[test]
    fn managed_parameters_are_refused_where_they_are_managed() {
        for name in ["cluster_name", "port", "listen_addresses"] {
            assert!(matches!(
                check_parameter(name, "x", false),
                Err(ParameterError::Managed { .. })
            ));
        }
        assert!(check_parameter("synchronous_standby_names", "*", false).is_ok());
        assert!(check_parameter("synchronous_standby_names", "*", true).is_err());
        assert!(check_parameter("work_mem", "64MB", true).is_ok());
        assert!(check_parameter("citus.shard_count", "32", true).is_ok());
        assert!(check_parameter("Work_Mem", "1", true).is_err());
        assert!(check_parameter("a.b.c", "1", true).is_err());
        assert!(check_parameter("work_mem", "1\n", true).is_err());
    }

    #[test]
    fn role_names() {
        assert!(check_role_names("postgres", "replicator").is_ok());
        assert_eq!(
            check_role_names("postgres", "postgres")
                .unwrap_err()
                .field(),
            RoleField::ReplicationUser
        );
        assert_eq!(
            check_role_names("Admin", "replicator").unwrap_err().field(),
            RoleField::Superuser
        );
    }

    #[test]
    fn swarm_ports() {
        assert!(swarm_reserved_port(4789).is_some());
        assert!(swarm_reserved_port(5432).is_none());
    }
}
