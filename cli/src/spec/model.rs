//! The validated cluster: every default applied, every name checked, and each service's share
//! of the topology already expressed as the contract's [`MemberEnv`]. Rendering a stack file,
//! labelling nodes and reading status all start from here, never from the YAML.

use crate::placement::Placement;
use pgswarm_contract::objects::Objects;
use pgswarm_contract::{MemberEnv, Mode, Role, Secret};
use std::collections::BTreeMap;
use std::fmt;

/// Default image of every service.
pub const DEFAULT_IMAGE: &str = "pgswarm:latest";

/// The three ways to run PostgreSQL that pgswarm knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topology {
    /// One primary and streaming hot standbys; promotion is manual.
    Replication,
    /// Patroni members with etcd, HAProxy and PgBouncer in front.
    Patroni,
    /// Patroni in Citus mode: a coordinator group and worker groups.
    Citus,
}

impl Topology {
    pub const ALL: [Topology; 3] = [Topology::Replication, Topology::Patroni, Topology::Citus];

    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Replication => "replication",
            Topology::Patroni => "patroni",
            Topology::Citus => "citus",
        }
    }

    /// The topology named `s`, if any.
    pub fn parse(s: &str) -> Option<Topology> {
        Topology::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a service is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// A PostgreSQL server (primary, replica, Patroni member); `group` is its Citus group.
    Data { group: Option<u32> },
    /// An etcd member.
    Etcd,
    /// The HAProxy router.
    Router,
    /// The PgBouncer pooler.
    Pooler,
    /// The pgBackRest repository (the `backup` section).
    Backup,
}

/// How a published port is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMode {
    /// Swarm's routing mesh: the port answers on every node.
    Ingress,
    /// Only on the node the task runs on.
    Host,
}

impl PortMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PortMode::Ingress => "ingress",
            PortMode::Host => "host",
        }
    }
}

/// A container port published on the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    /// Port on the nodes (or the routing mesh).
    pub port: u16,
    /// Port the container listens on.
    pub target: u16,
    pub mode: PortMode,
}

/// CPU and memory of one side (limits or reservations), as Docker understands them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSet {
    /// CPUs as a decimal string (`"0.5"`).
    pub cpus: Option<String>,
    /// Memory as written (`"512M"`) or bytes.
    pub memory: Option<String>,
}

impl ResourceSet {
    pub fn is_empty(&self) -> bool {
        self.cpus.is_none() && self.memory.is_none()
    }
}

/// Limits and reservations of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub limits: ResourceSet,
    pub reservations: ResourceSet,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.reservations.is_empty()
    }
}

/// A Prometheus metrics endpoint of a service, on the overlay network only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEndpoint {
    /// What serves it, also the scrape job's suffix: `postgres`, `patroni`, `etcd`,
    /// `haproxy` or `pgbouncer`.
    pub name: &'static str,
    /// Port in the container.
    pub port: u16,
    /// HTTP path.
    pub path: &'static str,
}

/// One Swarm service of the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Service name inside the stack; for members also the member name and DNS address.
    pub name: String,
    pub kind: ServiceKind,
    /// The container's whole environment, as the contract defines it.
    pub env: MemberEnv,
    pub placement: Placement,
    pub ports: Vec<PublishedPort>,
    pub resources: Resources,
    /// Tasks of the service: 1 for every member; the router and pooler may run more.
    pub replicas: u32,
    /// Name of the named volume mounted at the data root, for data and etcd members.
    pub volume: Option<String>,
    /// Its metrics endpoints; empty with monitoring off.
    pub metrics: Vec<MetricsEndpoint>,
}

impl Service {
    pub fn mode(&self) -> Mode {
        self.env.mode()
    }

    /// Docker secrets this service mounts.
    pub fn secrets(&self) -> Vec<Secret> {
        Secret::ALL
            .into_iter()
            .filter(|s| self.env.common.needs(*s, self.mode()))
            .collect()
    }

    /// True for data members and etcd members: stateful, one task, pinned.
    pub fn is_stateful(&self) -> bool {
        self.volume.is_some()
    }
}

/// The overlay network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub encrypted: bool,
    /// IPAM subnet, when the spec fixes one.
    pub subnet: Option<String>,
}

/// Options of every named volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeOptions {
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
}

/// The Docker secret holding a declared login role's password, mounted on every data member
/// at `/run/secrets/role_<name>_password`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSecret {
    pub role: String,
    /// The Docker secret's name.
    pub docker_name: String,
    /// `swarmctl deploy` creates it when missing (the spec named no `password_secret`).
    pub generated: bool,
}

impl RoleSecret {
    /// File name inside the container's secrets directory.
    pub fn file_name(&self) -> String {
        pgswarm_contract::objects::role_password_file(&self.role)
    }
}

/// A validated cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub topology: Topology,
    pub image: String,
    /// Every service, in stack order: data members, etcd, router, pooler.
    pub services: Vec<Service>,
    pub network: Network,
    pub volumes: VolumeOptions,
    /// Node label whose values are zones, when given.
    pub zone_label: Option<String>,
    /// Declared application roles and databases (`roles`, `databases`).
    pub objects: Objects,
    /// The password secrets of the declared login roles, mounted on every data member.
    pub role_secrets: Vec<RoleSecret>,
    /// TLS for client and replication connections (the `tls` section); `None` = off.
    pub tls: Option<ClusterTls>,
}

/// The cluster's TLS: whether plaintext is still admitted, and whose certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    pub mode: pgswarm_contract::Tls,
    /// The user's own Docker secrets for the CA, the certificate and the key (in that
    /// order); `None` = swarmctl generates `<cluster>_tls_ca`, `_tls_cert`, `_tls_key`.
    pub own_secrets: Option<[String; 3]>,
    /// More names for the generated certificate (`tls.names`).
    pub names: Vec<String>,
}

impl ClusterTls {
    /// The Docker secret holding `secret` (one of [`Secret::CLUSTER_TLS`]), when the user
    /// gave their own.
    pub fn own_secret(&self, secret: Secret) -> Option<&str> {
        let own = self.own_secrets.as_ref()?;
        Secret::CLUSTER_TLS
            .iter()
            .position(|s| *s == secret)
            .map(|i| own[i].as_str())
    }
}

impl Cluster {
    /// The same cluster with another image (`swarmctl up --image`), checked by the rule the
    /// spec's `image` field goes through: a validated cluster is changed only through its rules.
    pub fn with_image(mut self, image: String) -> Result<Cluster, String> {
        super::validate::check_image(&image)?;
        self.image = image;
        Ok(self)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// PostgreSQL members, in spec order.
    pub fn data_members(&self) -> impl Iterator<Item = &Service> {
        self.services
            .iter()
            .filter(|s| matches!(s.kind, ServiceKind::Data { .. }))
    }

    /// etcd members.
    pub fn etcd_members(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().filter(|s| s.kind == ServiceKind::Etcd)
    }

    /// The router service, when the cluster has one.
    pub fn router(&self) -> Option<&Service> {
        self.services.iter().find(|s| s.kind == ServiceKind::Router)
    }

    /// The pooler service, when the cluster has one.
    pub fn pooler(&self) -> Option<&Service> {
        self.services.iter().find(|s| s.kind == ServiceKind::Pooler)
    }

    /// Citus groups (number to member names), empty outside Citus.
    pub fn citus_groups(&self) -> BTreeMap<u32, Vec<&str>> {
        let mut out: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for s in &self.services {
            if let ServiceKind::Data { group: Some(g) } = s.kind {
                out.entry(g).or_default().push(&s.name);
            }
        }
        out
    }

    /// The Docker secret that holds `secret` for this cluster: `<cluster>_<file name>`, or
    /// the user's own for the TLS certificates.
    pub fn secret_docker_name(&self, secret: Secret) -> String {
        self.tls
            .as_ref()
            .and_then(|t| t.own_secret(secret))
            .map(String::from)
            .unwrap_or_else(|| secret.docker_name(&self.name))
    }

    /// Whether swarmctl makes `secret` when it is missing (not the user's own certificate).
    pub fn generates(&self, secret: Secret) -> bool {
        self.tls
            .as_ref()
            .and_then(|t| t.own_secret(secret))
            .is_none()
    }

    /// Every Docker secret some service needs, in a stable order.
    pub fn secrets(&self) -> Vec<Secret> {
        Secret::ALL
            .into_iter()
            .filter(|secret| self.services.iter().any(|s| s.secrets().contains(secret)))
            .collect()
    }

    /// Services that are pinned with the generated member label (those `label-nodes` labels).
    pub fn labelled_members(&self) -> impl Iterator<Item = &Service> {
        self.services
            .iter()
            .filter(|s| s.placement.member_label.is_some())
    }

    /// Router ports `(read-write, read-only, worker)` when there is a router.
    pub fn router_ports(&self) -> Option<(u16, u16, Option<u16>)> {
        self.router().and_then(|r| match &r.env.role {
            Role::Router {
                rw_port,
                ro_port,
                worker_port,
                ..
            } => Some((*rw_port, *ro_port, *worker_port)),
            _ => None,
        })
    }
}

/// A cluster that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Validated {
    pub cluster: Cluster,
    pub warnings: Vec<super::Problem>,
}
