//! Diagnostics of the spec: every rule has a stable id, every problem names the field it is
//! about, the line and column when known, and what to do about it.

use std::fmt;

/// Whether a problem stops generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The spec is invalid; nothing is generated.
    Error,
    /// The spec works but something deserves a look; printed, generation goes on.
    Warning,
}

macro_rules! rules {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $severity:ident; )*) => {
        /// Each validation rule, by stable id (the id appears in messages: `error[etcd-count]`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule {
            $( $(#[$doc])* $variant, )*
        }

        impl Rule {
            /// Every rule, for tests that check each has a fixture.
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];

            /// The stable id.
            pub fn id(self) -> &'static str {
                match self { $(Rule::$variant => $id,)* }
            }

            /// Error or warning.
            pub fn severity(self) -> Severity {
                match self { $(Rule::$variant => Severity::$severity,)* }
            }
        }
    };
}

rules! {
    /// Not YAML, a wrong type, a missing or unknown field.
    Yaml = "yaml", Error;
    /// The cluster name is not usable as a stack, secret and label name.
    ClusterName = "cluster-name", Error;
    /// `topology` is none of replication, patroni, citus.
    UnknownTopology = "unknown-topology", Error;
    /// A section that the chosen topology does not use.
    TopologySection = "topology-section", Error;
    /// A member name that is not a valid Swarm service name.
    MemberName = "member-name", Error;
    /// Two services with the same name (members, etcd, router, pooler).
    DuplicateName = "duplicate-name", Error;
    /// `<cluster>_<member>` longer than Swarm's 63 characters.
    ServiceNameLength = "service-name-length", Error;
    /// No data member at all.
    MemberCount = "member-count", Error;
    /// An even or zero number of etcd members.
    EtcdCount = "etcd-count", Error;
    /// Synchronous replication with fewer than two data members.
    SyncMembers = "sync-members", Error;
    /// Citus without a coordinator group (group 0).
    CitusCoordinator = "citus-coordinator", Error;
    /// A Citus group without members.
    CitusEmptyGroup = "citus-empty-group", Error;
    /// Two Citus groups with the same number.
    CitusDuplicateGroup = "citus-duplicate-group", Error;
    /// A 2-member Citus group that does not state its synchronous mode.
    CitusSyncExplicit = "citus-sync-explicit", Error;
    /// The Citus database name is not a plain identifier.
    CitusDatabase = "citus-database", Error;
    /// Two services publishing the same port where they would collide.
    PortClash = "port-clash", Error;
    /// Port 0, or a port Swarm itself needs.
    PortInvalid = "port-invalid", Error;
    /// Ingress publishing of a data member (it uses DNS round robin, not a VIP).
    PublishMode = "publish-mode", Error;
    /// A PostgreSQL parameter that is malformed or managed by pgswarm.
    PgParameter = "pg-parameter", Error;
    /// A PostgreSQL role name that is not a plain identifier.
    UserName = "user-name", Error;
    /// Patroni timing Patroni would refuse or that cannot work.
    PatroniTiming = "patroni-timing", Error;
    /// A malformed placement label, constraint or zone label.
    Placement = "placement", Error;
    /// Malformed resources.
    Resources = "resources", Error;
    /// The pooler (or worker port) needs the router and it is disabled.
    RouterRequired = "router-required", Error;
    /// Router settings out of range (same port twice, zero checks).
    RouterSettings = "router-settings", Error;
    /// Pooler settings out of range.
    PoolerSettings = "pooler-settings", Error;
    /// An empty or malformed image reference.
    Image = "image", Error;
    /// A malformed network subnet.
    Network = "network", Error;
    /// A malformed volume driver or option.
    Volume = "volume", Error;
    /// A declared role that is malformed, reserved, duplicated or refers to an unknown role.
    Roles = "roles", Error;
    /// A declared database that is malformed, reserved, duplicated or has an unknown owner
    /// or reader.
    Databases = "databases", Error;
    /// A `backup` section that is malformed: retention, schedule, archive_timeout, a
    /// PostgreSQL parameter archiving owns, or a topology without backups.
    Backup = "backup", Error;
    /// A `tls` section that is malformed: a topology without TLS, only some of your own
    /// certificate secrets, a bad secret name, or an `ssl` parameter TLS owns.
    Tls = "tls", Error;
    /// A Patroni cluster or Citus group of one member: no failover.
    SingleMember = "single-member", Warning;
    /// One etcd member: the DCS itself has no redundancy.
    SingleEtcd = "single-etcd", Warning;
    /// Quorum commit in a 2-member group: a dead leader may not be replaced.
    QuorumTwoMembers = "quorum-two-members", Warning;
    /// Two services publish one port in host mode: they can never share a node.
    HostPortShared = "host-port-shared", Warning;
    /// The pool is as large as PostgreSQL's max_connections.
    PoolSize = "pool-size", Warning;
    /// A Citus cluster with a coordinator only.
    NoWorkers = "no-workers", Warning;
    /// Traffic between nodes is not encrypted.
    Unencrypted = "unencrypted-network", Warning;
    /// A replication primary without replicas.
    NoReplicas = "no-replicas", Warning;
}

/// A line and column in the spec text (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub rule: Rule,
    /// Field path, e.g. `citus.groups[1].members`; empty for the document itself.
    pub path: String,
    pub location: Option<Location>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Problem {
    pub fn severity(&self) -> Severity {
        self.rule.severity()
    }

    /// The problem as printed, with `source` (a file name) in the location line.
    pub fn render(&self, source: &str) -> String {
        let kind = match self.severity() {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{kind}[{}]: ", self.rule.id());
        if !self.path.is_empty() {
            out.push_str(&self.path);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        if let Some(loc) = self.location {
            out.push_str(&format!("\n  --> {source}:{}:{}", loc.line, loc.column));
        }
        out
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("spec"))
    }
}

/// A spec that cannot be used, with every error found (and the warnings found on the way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster spec is invalid ({} error{})", .errors.len(), if .errors.len() == 1 { "" } else { "s" })]
pub struct SpecError {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl SpecError {
    /// All problems as printed, errors first, one per paragraph.
    pub fn render(&self, source: &str) -> String {
        self.errors
            .iter()
            .chain(&self.warnings)
            .map(|p| p.render(source))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One segment of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path inside the spec, e.g. `etcd.members` or `members[2].name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// This path followed by a mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        FieldPath(segs)
    }

    /// This path followed by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        FieldPath(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}
