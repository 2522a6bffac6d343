//! From the spec as written ([`RawSpec`]) to a [`Cluster`]: applies defaults, checks every
//! rule, and expresses each service's share of the topology as the contract's `MemberEnv`.
//!
//! All problems are collected (not just the first), each with the field path it is about, so
//! one run of `swarmctl validate` shows everything to fix.

use super::diag::{FieldPath, Location, Problem, Rule, Severity, SpecError};
use super::locate::locate;
use super::model::*;
use super::raw::*;
use crate::keepalive;
use crate::placement::{self, Placement};
use pgswarm_contract::{
    defaults, Citus, Common, Endpoint, EtcdPeer, MemberEnv, PoolMode, Postgres, Role,
    SynchronousMode,
};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Most data members a spec may declare; far above any sensible cluster, low enough that a
/// typo like `members: 30000` is an error rather than a stack of 30000 services.
pub const MAX_DATA_MEMBERS: u64 = 128;
/// Most etcd members: etcd itself advises 3, 5 or 7.
pub const MAX_ETCD_MEMBERS: u64 = 9;
/// Swarm limits service names (`<stack>_<service>`) to 63 characters.
const MAX_SERVICE_NAME: usize = 63;
/// Longest cluster name, leaving room for member names and secret names.
const MAX_CLUSTER_NAME: usize = 30;
/// Ports Swarm itself uses on every node.
const SWARM_PORTS: [(u16, &str); 3] = [
    (2377, "cluster management"),
    (7946, "node communication"),
    (4789, "overlay network traffic"),
];
/// Name of the router service.
pub const ROUTER_SERVICE: &str = "router";
/// Name of the pooler service.
pub const POOLER_SERVICE: &str = "pooler";

/// PostgreSQL parameters pgswarm (or Patroni) sets itself, with the spec field to use instead.
const MANAGED_PARAMETERS: &[(&str, &str)] = &[
    (
        "port",
        "PostgreSQL listens on 5432 inside its container; to reach it on another port, \
         publish it with the member's `publish.port`",
    ),
    ("listen_addresses", "pgswarm listens on the overlay network"),
    (
        "data_directory",
        "the data directory is on the member's volume",
    ),
    ("hba_file", "pgswarm renders pg_hba.conf"),
    ("ident_file", "pgswarm renders the configuration"),
    ("config_file", "pgswarm renders the configuration"),
    (
        "unix_socket_directories",
        "pgswarm chooses the socket directory",
    ),
    (
        "primary_conninfo",
        "replicas are pointed at their primary by pgswarm",
    ),
    (
        "primary_slot_name",
        "replica slots are derived from member names",
    ),
];

/// Parameters managed by Patroni in the patroni and citus topologies.
const PATRONI_MANAGED_PARAMETERS: &[(&str, &str)] = &[(
    "synchronous_standby_names",
    "use `patroni.synchronous_mode` (Patroni manages the standby names)",
)];

struct Ctx<'t> {
    text: &'t str,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Ctx<'_> {
    fn report(&mut self, rule: Rule, path: &FieldPath, message: impl Into<String>) {
        let location: Option<Location> = locate(self.text, &path.0);
        let problem = Problem {
            rule,
            path: path.to_string(),
            location,
            message: message.into(),
        };
        match rule.severity() {
            Severity::Error => self.errors.push(problem),
            Severity::Warning => self.warnings.push(problem),
        }
    }
}

/// A member before its environment is built.
struct Draft {
    name: String,
    /// Where the member is declared (its list item, or the count it was generated from).
    path: FieldPath,
    /// Path of its name: the `name` field, or the count.
    name_path: FieldPath,
    placement: Option<RawPlacement>,
    resources: Option<RawResources>,
    publish: Option<RawPublish>,
    group: Option<u32>,
    /// The name is generated (from a count or a default), not written in the spec.
    generated: bool,
}

impl Draft {
    /// A member whose name the spec does not write (generated from a count or a default).
    fn generated(name: &str, path: FieldPath, group: Option<u32>) -> Draft {
        Draft {
            name: name.to_string(),
            name_path: path.clone(),
            path,
            placement: None,
            resources: None,
            publish: None,
            group,
            generated: true,
        }
    }
}

/// Validates `raw` (parsed from `text`, used to locate problems).
pub fn validate(raw: RawSpec, text: &str) -> Result<Validated, SpecError> {
    let mut ctx = Ctx {
        text,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let cluster = build(&mut ctx, &raw);
    match cluster {
        Some(cluster) if ctx.errors.is_empty() => Ok(Validated {
            cluster,
            warnings: ctx.warnings,
        }),
        _ => Err(SpecError {
            errors: ctx.errors,
            warnings: ctx.warnings,
        }),
    }
}

/// What every service's environment is built from.
struct Shared {
    cluster: String,
    superuser: String,
    replication_user: String,
    log_json: bool,
    postgres: Postgres,
    timing: Timing,
    etcd_hosts: Vec<Endpoint>,
    zone: Option<String>,
}

impl Shared {
    fn common(&self, member: &str) -> Common {
        let mut c = Common::new(self.cluster.clone(), member);
        c.superuser = self.superuser.clone();
        c.replication_user = self.replication_user.clone();
        c.log_json = self.log_json;
        c
    }

    fn patroni_role(&self, sync: SyncMode, citus: Option<Citus>) -> Role {
        Role::Patroni {
            postgres: self.postgres.clone(),
            etcd_hosts: self.etcd_hosts.clone(),
            rest_port: defaults::REST_PORT,
            ttl: self.timing.ttl,
            loop_wait: self.timing.loop_wait,
            retry_timeout: self.timing.retry_timeout,
            maximum_lag_on_failover: self.timing.maximum_lag_on_failover,
            synchronous_mode: contract_sync(sync),
            citus,
        }
    }
}

/// The data members of a topology with their roles, and where the router sends traffic.
#[derive(Default)]
struct DataPlan {
    members: Vec<(Draft, Role)>,
    /// Behind the read-write and read-only ports.
    router_members: Vec<String>,
    /// Behind the Citus worker port.
    router_workers: Vec<String>,
}

fn build(ctx: &mut Ctx, raw: &RawSpec) -> Option<Cluster> {
    let root = FieldPath::root();
    let topology = Topology::parse(&raw.topology);

    // Checks that do not depend on the topology come first, so an unknown topology still
    // reports everything else.
    if let Err(why) = check_cluster_name(&raw.name) {
        ctx.report(Rule::ClusterName, &root.key("name"), why);
    }
    let image = raw
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    if let Err(why) = check_image(&image) {
        ctx.report(Rule::Image, &root.key("image"), why);
    }
    let postgres_raw = raw.postgres.as_ref();
    let parameters = check_parameters(ctx, postgres_raw, topology, &root);
    let pg_path = root.key("postgres");
    let superuser = check_role_name(
        ctx,
        postgres_raw.and_then(|p| p.superuser.as_deref()),
        defaults::SUPERUSER,
        &pg_path.key("superuser"),
    );
    let replication_user = check_role_name(
        ctx,
        postgres_raw.and_then(|p| p.replication_user.as_deref()),
        defaults::REPLICATION_USER,
        &pg_path.key("replication_user"),
    );
    let network = check_network(ctx, raw.network.as_ref(), &root);
    let volumes = check_volumes(ctx, raw.volumes.as_ref(), &root);
    let zone = raw.placement.as_ref().and_then(|p| p.zone_label.clone());
    if let Some(zone) = &zone {
        if !placement::is_valid_label_key(zone) {
            ctx.report(
                Rule::Placement,
                &root.key("placement").key("zone_label"),
                format!(
                    "`{zone}` is not a valid node label key: use letters, digits, `.`, `-` and `_` \
                     (for example `zone`)"
                ),
            );
        }
    }

    let Some(topology) = topology else {
        ctx.report(
            Rule::UnknownTopology,
            &root.key("topology"),
            format!(
                "unknown topology `{}`: use `replication` (primary and streaming replicas), \
                 `patroni` (automatic failover) or `citus` (Patroni in Citus mode)",
                raw.topology
            ),
        );
        return None;
    };
    check_sections(ctx, raw, topology, &root);

    let uses_patroni = topology != Topology::Replication;
    let timing = if uses_patroni {
        check_timing(ctx, raw.patroni.as_ref(), &root)
    } else {
        Timing::default()
    };
    let etcd = if uses_patroni {
        etcd_drafts(ctx, raw.etcd.as_ref(), &root)
    } else {
        Vec::new()
    };
    let shared = Shared {
        cluster: raw.name.clone(),
        superuser,
        replication_user,
        log_json: raw.log_format == Some(LogFormat::Json),
        postgres: Postgres {
            parameters: parameters.clone(),
            allowed_cidrs: network.subnet.iter().cloned().collect(),
            ..Postgres::default()
        },
        timing,
        etcd_hosts: etcd
            .iter()
            .map(|d| Endpoint {
                host: d.name.clone(),
                port: defaults::ETCD_CLIENT_PORT,
            })
            .collect(),
        zone,
    };

    let plan = match topology {
        Topology::Replication => plan_replication(ctx, &shared, raw, &root),
        Topology::Patroni => plan_patroni(ctx, &shared, raw, &root),
        Topology::Citus => plan_citus(ctx, &shared, raw, &root),
    };

    let router_enabled = uses_patroni && raw.router.as_ref().and_then(|r| r.enabled) != Some(false);
    let pooler_enabled = match topology {
        Topology::Replication => raw
            .pooler
            .as_ref()
            .is_some_and(|p| p.enabled != Some(false)),
        _ => raw.pooler.as_ref().and_then(|p| p.enabled) != Some(false),
    };
    let drafts: Vec<&Draft> = plan.members.iter().map(|(d, _)| d).chain(&etcd).collect();
    check_names(ctx, &raw.name, &drafts, router_enabled, pooler_enabled);

    let mut services: Vec<Service> = Vec::new();
    // Where each published port was chosen, by (service, port), to locate port problems.
    let mut port_paths: BTreeMap<(String, u16), FieldPath> = BTreeMap::new();
    let member_resources = check_resources(
        ctx,
        postgres_raw.and_then(|p| p.resources.as_ref()),
        &pg_path.key("resources"),
    );
    let primary = plan.members.first().map(|(d, _)| d.name.clone());
    for (draft, role) in plan.members {
        let resources = own_resources(ctx, &draft, &member_resources);
        let ports = data_member_ports(ctx, &draft);
        for p in &ports {
            port_paths.insert(
                (draft.name.clone(), p.port),
                draft.path.key("publish").key("port"),
            );
        }
        services.push(Service {
            name: draft.name.clone(),
            kind: ServiceKind::Data { group: draft.group },
            env: MemberEnv {
                common: shared.common(&draft.name),
                role,
            },
            placement: member_placement(ctx, &shared, &draft),
            ports,
            resources,
            replicas: 1,
            volume: Some(volume_name(&draft.name)),
        });
    }
    let etcd_resources = check_resources(
        ctx,
        raw.etcd.as_ref().and_then(|e| e.resources.as_ref()),
        &root.key("etcd").key("resources"),
    );
    let initial_cluster: Vec<EtcdPeer> = etcd
        .iter()
        .map(|d| EtcdPeer {
            name: d.name.clone(),
            peer_url: format!("http://{}:{}", d.name, defaults::ETCD_PEER_PORT),
        })
        .collect();
    for draft in &etcd {
        if draft.publish.is_some() {
            ctx.report(
                Rule::PublishMode,
                &draft.path.key("publish"),
                "etcd members publish no port: only Patroni and the router talk to etcd, over the \
                 overlay network; remove `publish`",
            );
        }
        services.push(Service {
            name: draft.name.clone(),
            kind: ServiceKind::Etcd,
            env: MemberEnv {
                common: shared.common(&draft.name),
                role: Role::Etcd {
                    initial_cluster: initial_cluster.clone(),
                    client_port: defaults::ETCD_CLIENT_PORT,
                    peer_port: defaults::ETCD_PEER_PORT,
                },
            },
            placement: member_placement(ctx, &shared, draft),
            ports: Vec::new(),
            resources: own_resources(ctx, draft, &etcd_resources),
            replicas: 1,
            volume: Some(volume_name(&draft.name)),
        });
    }
    let router = raw.router.clone().unwrap_or_default();
    let router_rw = router.rw_port.unwrap_or(defaults::ROUTER_RW_PORT);
    if router_enabled {
        let rpath = root.key("router");
        for (field, port) in [
            (
                "rw_port",
                Some(router.rw_port.unwrap_or(defaults::ROUTER_RW_PORT)),
            ),
            (
                "ro_port",
                Some(router.ro_port.unwrap_or(defaults::ROUTER_RO_PORT)),
            ),
            ("worker_port", router.worker_port),
        ] {
            let Some(port) = port else { continue };
            // Earlier fields win when two share a port, so the later one is reported.
            port_paths
                .entry((ROUTER_SERVICE.into(), port))
                .or_insert_with(|| rpath.key(field));
        }
        services.push(router_service(
            ctx,
            &shared,
            router,
            topology,
            plan.router_members,
            plan.router_workers,
            &root,
        ));
    }
    if pooler_enabled {
        if uses_patroni && !router_enabled {
            ctx.report(
                Rule::RouterRequired,
                &root.key("router").key("enabled"),
                "the pooler forwards to the router's read-write port, and the router is disabled: \
                 enable the router or set `pooler.enabled: false`",
            );
        }
        let target = if uses_patroni {
            Endpoint {
                host: ROUTER_SERVICE.into(),
                port: router_rw,
            }
        } else {
            Endpoint {
                host: primary.unwrap_or_default(),
                port: defaults::PG_PORT,
            }
        };
        let pooler = raw.pooler.clone().unwrap_or_default();
        port_paths.insert(
            (
                POOLER_SERVICE.into(),
                pooler.port.unwrap_or(defaults::POOLER_PORT),
            ),
            root.key("pooler").key("port"),
        );
        services.push(pooler_service(
            ctx,
            &shared,
            pooler,
            target,
            &parameters,
            &root,
        ));
    }

    check_ports(ctx, &services, &port_paths);

    Some(Cluster {
        name: raw.name.clone(),
        topology,
        image,
        services,
        network,
        volumes,
        zone_label: shared.zone.clone(),
    })
}

fn plan_replication(ctx: &mut Ctx, shared: &Shared, raw: &RawSpec, root: &FieldPath) -> DataPlan {
    let rep = raw.replication.as_ref();
    let path = root.key("replication");
    let primary = match rep.and_then(|r| r.primary.as_ref()) {
        Some(m) => draft_from(m, path.key("primary"), None),
        None => Draft::generated("primary", path.clone(), None),
    };
    let default_replicas = RawMembers::Count(1);
    let replicas_raw = rep
        .and_then(|r| r.replicas.as_ref())
        .unwrap_or(&default_replicas);
    let replicas_path = path.key("replicas");
    let replicas = expand(
        ctx,
        replicas_raw,
        &replicas_path,
        |i| format!("replica{i}"),
        None,
    );
    if replicas.is_empty() {
        ctx.report(
            Rule::NoReplicas,
            &replicas_path,
            "the primary has no replica: nothing to fail over to and no second copy of the \
             data; add at least one replica",
        );
    }
    let primary_endpoint = Endpoint {
        host: primary.name.clone(),
        port: defaults::PG_PORT,
    };
    let mut plan = DataPlan::default();
    let primary_role = Role::Primary {
        postgres: shared.postgres.clone(),
        replica_slots: replicas.iter().map(|r| slot_name(&r.name)).collect(),
        init_sql_dir: None,
    };
    plan.members.push((primary, primary_role));
    for r in replicas {
        let role = Role::Replica {
            postgres: shared.postgres.clone(),
            primary: primary_endpoint.clone(),
            slot: slot_name(&r.name),
        };
        plan.members.push((r, role));
    }
    plan
}

fn plan_patroni(ctx: &mut Ctx, shared: &Shared, raw: &RawSpec, root: &FieldPath) -> DataPlan {
    let path = root.key("members");
    let default_members = RawMembers::Count(3);
    let members_raw = raw.members.as_ref().unwrap_or(&default_members);
    let members = expand(ctx, members_raw, &path, |i| format!("pg{i}"), None);
    if members_raw.count() == 0 {
        ctx.report(
            Rule::MemberCount,
            &path,
            "a patroni cluster needs at least one member (3 recommended)",
        );
    }
    let sync = raw
        .patroni
        .as_ref()
        .and_then(|p| p.synchronous_mode)
        .unwrap_or(SyncMode::Off);
    let sync_path = root.key("patroni").key("synchronous_mode");
    check_group_size(ctx, members.len(), sync, &path, &sync_path, "the cluster");
    let mut plan = DataPlan::default();
    for m in members {
        plan.router_members.push(m.name.clone());
        plan.members.push((m, shared.patroni_role(sync, None)));
    }
    plan
}

fn plan_citus(ctx: &mut Ctx, shared: &Shared, raw: &RawSpec, root: &FieldPath) -> DataPlan {
    let citus_path = root.key("citus");
    let citus_raw = raw.citus.as_ref();
    let database = citus_raw
        .and_then(|c| c.database.clone())
        .unwrap_or_else(|| defaults::CITUS_DATABASE.to_string());
    if !is_identifier(&database) {
        ctx.report(
            Rule::CitusDatabase,
            &citus_path.key("database"),
            format!(
                "`{database}` is not a plain database name: use lowercase letters, digits and `_`, \
                 starting with a letter (for example `citus`)"
            ),
        );
    }
    let groups: &[RawCitusGroup] = citus_raw.map(|c| c.groups.as_slice()).unwrap_or(&[]);
    let groups_path = citus_path.key("groups");
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        if let Some(first) = seen.insert(g.group, i) {
            ctx.report(
                Rule::CitusDuplicateGroup,
                &groups_path.index(i).key("group"),
                format!(
                    "group {} is declared twice (also at citus.groups[{first}]): give each group \
                     its own number (0 for the coordinator, 1, 2, ... for workers)",
                    g.group
                ),
            );
        }
    }
    if !seen.contains_key(&0) {
        ctx.report(
            Rule::CitusCoordinator,
            &groups_path,
            "there is no coordinator group: add a group with `group: 0` (the coordinator, where \
             clients connect); worker groups are numbered from 1",
        );
    } else if seen.len() == 1 {
        ctx.report(
            Rule::NoWorkers,
            &groups_path,
            "there is no worker group: distributed tables will live on the coordinator only; add \
             groups `group: 1`, `group: 2`, ... to scale out",
        );
    }
    let cluster_sync = raw.patroni.as_ref().and_then(|p| p.synchronous_mode);
    let mut plan = DataPlan::default();
    let mut total: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let gpath = groups_path.index(i);
        let mpath = gpath.key("members");
        total = total.saturating_add(g.members.count());
        if total > MAX_DATA_MEMBERS {
            ctx.report(
                Rule::MemberCount,
                &mpath,
                format!("a cluster may have at most {MAX_DATA_MEMBERS} data members"),
            );
            break;
        }
        let prefix = if g.group == 0 {
            "coord".to_string()
        } else {
            format!("worker{}-", g.group)
        };
        let members = expand(
            ctx,
            &g.members,
            &mpath,
            |n| format!("{prefix}{n}"),
            Some(g.group),
        );
        let what = if g.group == 0 {
            "the coordinator group".to_string()
        } else {
            format!("worker group {}", g.group)
        };
        if members.is_empty() {
            ctx.report(
                Rule::CitusEmptyGroup,
                &mpath,
                format!(
                    "{what} has no members: give it at least 2 (3 to keep quorum commit safe), or \
                     remove the group"
                ),
            );
        }
        let (sync, sync_path) = match (g.synchronous_mode, cluster_sync) {
            (Some(s), _) => (s, gpath.key("synchronous_mode")),
            (None, Some(s)) => (s, root.key("patroni").key("synchronous_mode")),
            (None, None) => {
                // Patroni's Citus mode defaults to quorum commit; state it in the environment.
                let default = match members.len() {
                    0 | 1 => SyncMode::Off,
                    2 => {
                        ctx.report(
                            Rule::CitusSyncExplicit,
                            &mpath,
                            format!(
                                "{what} has 2 members and does not state `synchronous_mode`. \
                                 Patroni's Citus mode would use quorum commit, and then a leader \
                                 that dies before the other member is back in the quorum is not \
                                 replaced at all. Choose in the group: `synchronous_mode: on` \
                                 (no lost commits; writes go asynchronous while the standby is \
                                 down), `off` (asynchronous: a failover may lose the last \
                                 commits), `quorum` (accept the trade above), or give the group \
                                 3 members"
                            ),
                        );
                        SyncMode::Off
                    }
                    _ => SyncMode::Quorum,
                };
                (default, mpath.clone())
            }
        };
        check_group_size(ctx, members.len(), sync, &mpath, &sync_path, &what);
        let citus = Citus {
            group: g.group,
            database: database.clone(),
        };
        for m in members {
            if g.group == 0 {
                plan.router_members.push(m.name.clone());
            } else {
                plan.router_workers.push(m.name.clone());
            }
            plan.members
                .push((m, shared.patroni_role(sync, Some(citus.clone()))));
        }
    }
    plan
}

/// A member's own resources, or the section's default (already checked).
fn own_resources(ctx: &mut Ctx, draft: &Draft, default: &Resources) -> Resources {
    match &draft.resources {
        Some(own) => check_resources(ctx, Some(own), &draft.path.key("resources")),
        None => default.clone(),
    }
}

fn data_member_ports(ctx: &mut Ctx, draft: &Draft) -> Vec<PublishedPort> {
    let Some(p) = &draft.publish else {
        return Vec::new();
    };
    let why = match p.mode {
        Some(PublishMode::Ingress) => Some(
            "a data member cannot publish through the ingress mesh: its service uses DNS round \
             robin (endpoint_mode dnsrr) so peers reach it directly; use `mode: host`, or connect \
             through the router or pooler",
        ),
        Some(PublishMode::None) => Some("`mode: none` publishes nothing: remove `publish` instead"),
        Some(PublishMode::Host) | None => None,
    };
    if let Some(why) = why {
        ctx.report(
            Rule::PublishMode,
            &draft.path.key("publish").key("mode"),
            why,
        );
    }
    vec![PublishedPort {
        port: p.port,
        target: defaults::PG_PORT,
        mode: PortMode::Host,
    }]
}

fn router_service(
    ctx: &mut Ctx,
    shared: &Shared,
    r: RawRouter,
    topology: Topology,
    members: Vec<String>,
    workers: Vec<String>,
    root: &FieldPath,
) -> Service {
    let path = root.key("router");
    let rw = r.rw_port.unwrap_or(defaults::ROUTER_RW_PORT);
    let ro = r.ro_port.unwrap_or(defaults::ROUTER_RO_PORT);
    let worker = r.worker_port;
    if worker.is_some() && topology != Topology::Citus {
        ctx.report(
            Rule::TopologySection,
            &path.key("worker_port"),
            "`worker_port` balances over Citus worker groups and is used only with topology \
             citus; remove it",
        );
    }
    let mut named = vec![("rw_port", rw), ("ro_port", ro)];
    if let Some(w) = worker {
        named.push(("worker_port", w));
    }
    for (i, (field, port)) in named.iter().enumerate() {
        if let Some((other, _)) = named[..i].iter().find(|(_, p)| p == port) {
            ctx.report(
                Rule::RouterSettings,
                &path.key(field),
                format!(
                    "router.{field} and router.{other} are both {port}: the router needs a \
                     distinct port for each"
                ),
            );
        }
    }
    let replicas = r.replicas.unwrap_or(1);
    let check_interval_ms = r
        .check_interval_ms
        .unwrap_or(defaults::ROUTER_CHECK_INTERVAL_MS);
    let fall = r.fall.unwrap_or(defaults::ROUTER_FALL);
    let rise = r.rise.unwrap_or(defaults::ROUTER_RISE);
    for (field, value, min) in [
        ("replicas", replicas, 1),
        ("check_interval_ms", check_interval_ms, 100),
        ("fall", fall, 1),
        ("rise", rise, 1),
    ] {
        if value < min {
            ctx.report(
                Rule::RouterSettings,
                &path.key(field),
                format!("router.{field} is {value}; it must be at least {min}"),
            );
        }
    }
    let publish = r.publish.unwrap_or(PublishMode::Ingress);
    if publish == PublishMode::None {
        // Published ports are checked with all others; unpublished ones still need a number.
        for (field, port) in &named {
            if *port == 0 {
                ctx.report(
                    Rule::PortInvalid,
                    &path.key(field),
                    "the router cannot listen on port 0: choose a port from 1 to 65535",
                );
            }
        }
    }
    Service {
        name: ROUTER_SERVICE.into(),
        kind: ServiceKind::Router,
        env: MemberEnv {
            common: shared.common(ROUTER_SERVICE),
            role: Role::Router {
                members,
                worker_members: if worker.is_some() {
                    workers
                } else {
                    Vec::new()
                },
                pg_port: defaults::PG_PORT,
                rest_port: defaults::REST_PORT,
                rw_port: rw,
                ro_port: ro,
                worker_port: worker,
                check_interval_ms,
                fall,
                rise,
            },
        },
        placement: stateless_placement(ctx, shared, r.placement.as_ref(), &path),
        ports: published(publish, named.iter().map(|(_, p)| *p)),
        resources: check_resources(ctx, r.resources.as_ref(), &path.key("resources")),
        replicas: replicas.max(1),
        volume: None,
    }
}

fn pooler_service(
    ctx: &mut Ctx,
    shared: &Shared,
    p: RawPooler,
    target: Endpoint,
    parameters: &BTreeMap<String, String>,
    root: &FieldPath,
) -> Service {
    let path = root.key("pooler");
    let port = p.port.unwrap_or(defaults::POOLER_PORT);
    let pool_size = p.pool_size.unwrap_or(defaults::POOL_SIZE);
    let max_client_conn = p.max_client_conn.unwrap_or(defaults::MAX_CLIENT_CONN);
    let replicas = p.replicas.unwrap_or(1);
    for (field, value) in [
        ("pool_size", pool_size),
        ("max_client_conn", max_client_conn),
        ("replicas", replicas),
    ] {
        if value == 0 {
            ctx.report(
                Rule::PoolerSettings,
                &path.key(field),
                format!("pooler.{field} is 0; it must be at least 1"),
            );
        }
    }
    let max_connections = parameters
        .get("max_connections")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(100);
    if pool_size >= max_connections {
        ctx.report(
            Rule::PoolSize,
            &path.key("pool_size"),
            format!(
                "pool_size {pool_size} is not below PostgreSQL's max_connections \
                 ({max_connections}): PgBouncer would run into `too many connections`; lower it \
                 or raise postgres.parameters.max_connections"
            ),
        );
    }
    let publish = p.publish.unwrap_or(PublishMode::Ingress);
    if publish == PublishMode::None && port == 0 {
        ctx.report(
            Rule::PortInvalid,
            &path.key("port"),
            "the pooler cannot listen on port 0: choose a port from 1 to 65535",
        );
    }
    let pool_mode = match p.pool_mode {
        None | Some(PoolModeName::Transaction) => PoolMode::Transaction,
        Some(PoolModeName::Session) => PoolMode::Session,
        Some(PoolModeName::Statement) => PoolMode::Statement,
    };
    Service {
        name: POOLER_SERVICE.into(),
        kind: ServiceKind::Pooler,
        env: MemberEnv {
            common: shared.common(POOLER_SERVICE),
            role: Role::Pooler {
                target,
                port,
                pool_mode,
                pool_size,
                max_client_conn,
            },
        },
        placement: stateless_placement(ctx, shared, p.placement.as_ref(), &path),
        ports: published(publish, [port]),
        resources: check_resources(ctx, p.resources.as_ref(), &path.key("resources")),
        replicas: replicas.max(1),
        volume: None,
    }
}

fn published(mode: PublishMode, ports: impl IntoIterator<Item = u16>) -> Vec<PublishedPort> {
    let mode = match mode {
        PublishMode::None => return Vec::new(),
        PublishMode::Ingress => PortMode::Ingress,
        PublishMode::Host => PortMode::Host,
    };
    ports
        .into_iter()
        .map(|port| PublishedPort {
            port,
            target: port,
            mode,
        })
        .collect()
}

fn contract_sync(sync: SyncMode) -> SynchronousMode {
    match sync {
        SyncMode::Off => SynchronousMode::Off,
        SyncMode::On => SynchronousMode::On,
        SyncMode::Quorum => SynchronousMode::Quorum,
    }
}

/// Named volume of a member.
pub fn volume_name(member: &str) -> String {
    format!("{member}-data")
}

/// The replication slot of a replica: its name with `-` turned into `_` (slot names allow only
/// lowercase letters, digits and underscores).
pub fn slot_name(member: &str) -> String {
    member
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect()
}

struct Timing {
    ttl: u32,
    loop_wait: u32,
    retry_timeout: u32,
    maximum_lag_on_failover: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl: defaults::TTL,
            loop_wait: defaults::LOOP_WAIT,
            retry_timeout: defaults::RETRY_TIMEOUT,
            maximum_lag_on_failover: defaults::MAXIMUM_LAG_ON_FAILOVER,
        }
    }
}

fn check_timing(ctx: &mut Ctx, raw: Option<&RawPatroni>, root: &FieldPath) -> Timing {
    let path = root.key("patroni");
    let t = Timing {
        ttl: raw.and_then(|p| p.ttl).unwrap_or(defaults::TTL),
        loop_wait: raw.and_then(|p| p.loop_wait).unwrap_or(defaults::LOOP_WAIT),
        retry_timeout: raw
            .and_then(|p| p.retry_timeout)
            .unwrap_or(defaults::RETRY_TIMEOUT),
        maximum_lag_on_failover: raw
            .and_then(|p| p.maximum_lag_on_failover)
            .unwrap_or(defaults::MAXIMUM_LAG_ON_FAILOVER),
    };
    if t.ttl < 20 {
        ctx.report(
            Rule::PatroniTiming,
            &path.key("ttl"),
            format!(
                "ttl is {}; Patroni refuses a leader lock TTL below 20 seconds",
                t.ttl
            ),
        );
    }
    if t.loop_wait == 0 {
        ctx.report(
            Rule::PatroniTiming,
            &path.key("loop_wait"),
            "loop_wait must be at least 1 second",
        );
    }
    if t.retry_timeout == 0 {
        ctx.report(
            Rule::PatroniTiming,
            &path.key("retry_timeout"),
            "retry_timeout must be at least 1 second",
        );
    }
    let budget = u64::from(t.loop_wait) + 2 * u64::from(t.retry_timeout);
    if t.ttl >= 20 && budget > u64::from(t.ttl) {
        ctx.report(
            Rule::PatroniTiming,
            &path,
            format!(
                "loop_wait + 2 * retry_timeout = {budget} is more than ttl = {}: the leader could \
                 lose its lock while it is still retrying; raise ttl or lower loop_wait / \
                 retry_timeout (defaults: ttl 20, loop_wait 5, retry_timeout 5)",
                t.ttl
            ),
        );
    }
    t
}

/// Synchronous mode needs two members; quorum in a pair is risky; one member cannot fail over.
fn check_group_size(
    ctx: &mut Ctx,
    size: usize,
    sync: SyncMode,
    members_path: &FieldPath,
    sync_path: &FieldPath,
    what: &str,
) {
    if sync != SyncMode::Off && size < 2 && size > 0 {
        ctx.report(
            Rule::SyncMembers,
            sync_path,
            format!(
                "synchronous mode needs at least 2 data members and {what} has {size}: add \
                 members or set `synchronous_mode: off`"
            ),
        );
    }
    if sync == SyncMode::Quorum && size == 2 {
        ctx.report(
            Rule::QuorumTwoMembers,
            sync_path,
            format!(
                "quorum commit with 2 members in {what}: a leader that dies before the other \
                 member is back in the quorum is not replaced; `on` or 3 members avoid this"
            ),
        );
    }
    if size == 1 {
        ctx.report(
            Rule::SingleMember,
            members_path,
            format!("{what} has a single member: there is nothing to fail over to"),
        );
    }
}

fn draft_from(m: &RawMember, path: FieldPath, group: Option<u32>) -> Draft {
    Draft {
        name: m.name.clone(),
        name_path: path.key("name"),
        path,
        placement: m.placement.clone(),
        resources: m.resources.clone(),
        publish: m.publish.clone(),
        group,
        generated: false,
    }
}

/// Members from a count (names from `name_of(1..)`) or a list.
fn expand(
    ctx: &mut Ctx,
    raw: &RawMembers,
    path: &FieldPath,
    name_of: impl Fn(u64) -> String,
    group: Option<u32>,
) -> Vec<Draft> {
    match raw {
        RawMembers::Count(n) => {
            if *n > MAX_DATA_MEMBERS {
                ctx.report(
                    Rule::MemberCount,
                    path,
                    format!("{n} members is more than the {MAX_DATA_MEMBERS} a cluster may have"),
                );
                return Vec::new();
            }
            (1..=*n)
                .map(|i| Draft::generated(&name_of(i), path.clone(), group))
                .collect()
        }
        RawMembers::List(list) => {
            if list.len() as u64 > MAX_DATA_MEMBERS {
                ctx.report(
                    Rule::MemberCount,
                    path,
                    format!(
                        "{} members is more than the {MAX_DATA_MEMBERS} a cluster may have",
                        list.len()
                    ),
                );
                return Vec::new();
            }
            list.iter()
                .enumerate()
                .map(|(i, m)| draft_from(m, path.index(i), group))
                .collect()
        }
    }
}

fn etcd_drafts(ctx: &mut Ctx, raw: Option<&RawEtcd>, root: &FieldPath) -> Vec<Draft> {
    let path = root.key("etcd").key("members");
    let default = RawMembers::Count(3);
    let members = raw.and_then(|e| e.members.as_ref()).unwrap_or(&default);
    let count = match members {
        RawMembers::Count(n) => *n,
        RawMembers::List(l) => l.len() as u64,
    };
    if count == 0 || count % 2 == 0 {
        ctx.report(
            Rule::EtcdCount,
            &path,
            format!("etcd needs an odd number of members (3 or 5), got {count}"),
        );
    } else if count > MAX_ETCD_MEMBERS {
        ctx.report(
            Rule::EtcdCount,
            &path,
            format!(
                "{count} etcd members is more than {MAX_ETCD_MEMBERS}: every write waits for a \
                 majority of them; use 3 or 5"
            ),
        );
        return Vec::new();
    } else if count == 1 {
        ctx.report(
            Rule::SingleEtcd,
            &path,
            "a single etcd member: when it is down, Patroni cannot keep or take the leader lock \
             and the primary steps down; use 3 for a cluster that must survive a node",
        );
    }
    if count > MAX_ETCD_MEMBERS {
        return Vec::new();
    }
    expand(ctx, members, &path, |i| format!("etcd{i}"), None)
}

fn check_names(ctx: &mut Ctx, cluster: &str, drafts: &[&Draft], router: bool, pooler: bool) {
    // Name to (what carries it, where the spec wrote it when it did).
    let mut seen: BTreeMap<&str, (String, Option<&FieldPath>)> = BTreeMap::new();
    if router {
        seen.insert(ROUTER_SERVICE, ("the router service".into(), None));
    }
    if pooler {
        seen.insert(POOLER_SERVICE, ("the pooler service".into(), None));
    }
    for d in drafts {
        if let Err(why) = check_member_name(&d.name) {
            ctx.report(Rule::MemberName, &d.name_path, why);
            continue;
        }
        if cluster.len() + 1 + d.name.len() > MAX_SERVICE_NAME {
            ctx.report(
                Rule::ServiceNameLength,
                &d.name_path,
                format!(
                    "service `{cluster}_{}` would be {} characters; Swarm allows {MAX_SERVICE_NAME}: \
                     shorten the cluster or member name",
                    d.name,
                    cluster.len() + 1 + d.name.len()
                ),
            );
        }
        let this = if d.generated {
            format!("the member generated from {}", d.path)
        } else {
            format!("the member declared at {}", d.path)
        };
        match seen.get(d.name.as_str()) {
            // A generated name clashing with one the user wrote: point at the written one.
            Some((_, Some(written))) if d.generated => {
                let msg = format!(
                    "`{}` is also the name of {this}: choose another name for this member",
                    d.name
                );
                let at = (*written).clone();
                ctx.report(Rule::DuplicateName, &at, msg);
            }
            Some((other, _)) => {
                let msg = format!(
                    "`{}` is already the name of {other}: every member needs a name of its own",
                    d.name
                );
                ctx.report(Rule::DuplicateName, &d.name_path, msg);
            }
            None => {
                let written = (!d.generated).then_some(&d.name_path);
                seen.insert(&d.name, (this, written));
            }
        }
    }
}

/// A member is pinned by its generated label unless the spec names node labels for it.
fn member_placement(ctx: &mut Ctx, shared: &Shared, d: &Draft) -> Placement {
    let mut p = user_placement(ctx, d.placement.as_ref(), &d.path);
    if p.labels.is_empty() {
        p.member_label = Some(placement::member_label_key(&shared.cluster, &d.name));
    }
    p.spread = shared.zone.clone();
    p
}

/// The router and pooler run anywhere unless the spec pins them.
fn stateless_placement(
    ctx: &mut Ctx,
    shared: &Shared,
    raw: Option<&RawPlacement>,
    path: &FieldPath,
) -> Placement {
    let mut p = user_placement(ctx, raw, path);
    p.spread = shared.zone.clone();
    p
}

fn user_placement(ctx: &mut Ctx, raw: Option<&RawPlacement>, path: &FieldPath) -> Placement {
    let mut p = Placement::default();
    let Some(raw) = raw else { return p };
    let ppath = path.key("placement");
    for (key, Scalar(value)) in &raw.labels {
        let lpath = ppath.key("labels").key(key);
        if !placement::is_valid_label_key(key) {
            ctx.report(
                Rule::Placement,
                &lpath,
                format!(
                    "`{key}` is not a valid node label key: use letters, digits, `.`, `-` and `_`"
                ),
            );
        } else if !placement::is_valid_label_value(value) {
            ctx.report(
                Rule::Placement,
                &lpath,
                format!(
                    "`{value}` is not a usable label value: use letters, digits, `.`, `-`, `_`, \
                     `:` and `/`, no spaces"
                ),
            );
        }
        p.labels.push((key.clone(), value.clone()));
    }
    for (i, c) in raw.constraints.iter().enumerate() {
        if let Err(why) = placement::check_constraint(c) {
            ctx.report(
                Rule::Placement,
                &ppath.key("constraints").index(i),
                format!(
                    "`{c}` is not a Swarm placement constraint: {why}; write it as \
                     `node.labels.KEY == VALUE` or `node.role == manager`"
                ),
            );
        }
        p.constraints.push(c.trim().to_string());
    }
    p
}

/// Published ports: valid numbers, none Swarm needs, no two services on one ingress port.
/// `paths` gives, per service name, the spec field that chose its ports.
fn check_ports(ctx: &mut Ctx, services: &[Service], paths: &BTreeMap<(String, u16), FieldPath>) {
    let mut all: Vec<(&Service, PublishedPort)> = Vec::new();
    for s in services {
        for p in &s.ports {
            all.push((s, *p));
        }
    }
    for (i, (s, p)) in all.iter().enumerate() {
        let spath = paths
            .get(&(s.name.clone(), p.port))
            .cloned()
            .unwrap_or_default();
        if p.port == 0 {
            ctx.report(
                Rule::PortInvalid,
                &spath,
                format!("{} publishes port 0: choose a port from 1 to 65535", s.name),
            );
            continue;
        }
        if let Some((_, what)) = SWARM_PORTS.iter().find(|(port, _)| *port == p.port) {
            ctx.report(
                Rule::PortInvalid,
                &spath,
                format!(
                    "{} publishes port {}, which Swarm itself uses for {what} on every node: \
                     choose another port",
                    s.name, p.port
                ),
            );
            continue;
        }
        for (other, q) in &all[..i] {
            if q.port != p.port || other.name == s.name {
                continue;
            }
            if p.mode == PortMode::Ingress || q.mode == PortMode::Ingress {
                ctx.report(
                    Rule::PortClash,
                    &spath,
                    format!(
                        "{} and {} both publish port {}{}: choose distinct ports",
                        other.name,
                        s.name,
                        p.port,
                        " (a port published through the ingress mesh is taken on every node)"
                    ),
                );
            } else if !s.placement.is_disjoint_from(&other.placement) {
                ctx.report(
                    Rule::HostPortShared,
                    &spath,
                    format!(
                        "{} and {} both publish port {} in host mode: they can never run on the \
                         same node, and Swarm will leave one pending if their placement allows \
                         only one node",
                        other.name, s.name, p.port
                    ),
                );
            }
        }
    }
}

fn check_sections(ctx: &mut Ctx, raw: &RawSpec, topology: Topology, root: &FieldPath) {
    let present = [
        ("members", raw.members.is_some(), &[Topology::Patroni][..]),
        (
            "replication",
            raw.replication.is_some(),
            &[Topology::Replication][..],
        ),
        (
            "patroni",
            raw.patroni.is_some(),
            &[Topology::Patroni, Topology::Citus][..],
        ),
        ("citus", raw.citus.is_some(), &[Topology::Citus][..]),
        (
            "etcd",
            raw.etcd.is_some(),
            &[Topology::Patroni, Topology::Citus][..],
        ),
        (
            "router",
            raw.router.is_some(),
            &[Topology::Patroni, Topology::Citus][..],
        ),
    ];
    for (section, is_present, topologies) in present {
        if is_present && !topologies.contains(&topology) {
            let used = topologies
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" and ");
            let hint = match (section, topology) {
                ("members", Topology::Citus) => " (Citus members go in `citus.groups`)",
                ("members", Topology::Replication) => {
                    " (use `replication.primary` and `replication.replicas`)"
                }
                ("router", Topology::Replication) => {
                    " (the router follows Patroni's health checks; without Patroni, connect to \
                     the primary or use the pooler)"
                }
                _ => "",
            };
            ctx.report(
                Rule::TopologySection,
                &root.key(section),
                format!(
                    "`{section}` is used only with topology {used}, and this cluster is \
                     {topology}: remove it{hint}"
                ),
            );
        }
    }
}

fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= MAX_CLUSTER_NAME && is_dns_label(name);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid cluster name: use 1 to {MAX_CLUSTER_NAME} lowercase letters, \
             digits and hyphens, starting with a letter and not ending with a hyphen (it names the \
             stack, the secrets and the node labels)"
        ))
    }
}

fn check_member_name(name: &str) -> Result<(), String> {
    if is_dns_label(name) && name.len() <= MAX_SERVICE_NAME {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid member name: use lowercase letters, digits and hyphens, \
             starting with a letter and not ending with a hyphen (it becomes a Swarm service \
             name and the member's DNS name)"
        ))
    }
}

/// Lowercase DNS label starting with a letter: `[a-z]([a-z0-9-]*[a-z0-9])?`.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z'))
        && !s.ends_with('-')
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// Plain lowercase SQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes.
fn is_identifier(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && matches!(bytes.first(), Some(b'a'..=b'z' | b'_'))
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

fn check_image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("the image is empty: name an image, e.g. `pgswarm:latest`".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{image}` contains spaces: an image reference has none"
        ));
    }
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    let path = repo.split_once('/').map_or(repo, |(host, rest)| {
        if host.contains('.') || host.contains(':') || host == "localhost" {
            rest
        } else {
            repo
        }
    });
    if path.is_empty() || path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "`{image}` is not a valid image reference: repository names are lowercase"
        ));
    }
    Ok(())
}

fn check_role_name(ctx: &mut Ctx, name: Option<&str>, default: &str, path: &FieldPath) -> String {
    match name {
        None => default.to_string(),
        Some(n) => {
            if !is_identifier(n) {
                ctx.report(
                    Rule::UserName,
                    path,
                    format!(
                        "`{n}` is not a plain role name: use lowercase letters, digits and `_`, \
                         starting with a letter"
                    ),
                );
            }
            n.to_string()
        }
    }
}

/// The parameters with pgswarm's defaults (TCP keepalives) under the user's.
fn check_parameters(
    ctx: &mut Ctx,
    raw: Option<&RawPostgres>,
    topology: Option<Topology>,
    root: &FieldPath,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (
            "tcp_keepalives_idle".to_string(),
            keepalive::IDLE_SECS.to_string(),
        ),
        (
            "tcp_keepalives_interval".to_string(),
            keepalive::INTERVAL_SECS.to_string(),
        ),
        (
            "tcp_keepalives_count".to_string(),
            keepalive::COUNT.to_string(),
        ),
    ]);
    let Some(raw) = raw else { return out };
    let ppath = root.key("postgres").key("parameters");
    let topology_is_patroni = matches!(topology, Some(Topology::Patroni | Topology::Citus));
    for (name, Scalar(value)) in &raw.parameters {
        let path = ppath.key(name);
        if !is_parameter_name(name) {
            ctx.report(
                Rule::PgParameter,
                &path,
                format!(
                    "`{name}` is not a PostgreSQL parameter name: use lowercase letters, digits \
                     and `_` (with one `.` for extension settings like `citus.shard_count`)"
                ),
            );
            continue;
        }
        let managed = MANAGED_PARAMETERS
            .iter()
            .chain(if topology_is_patroni {
                PATRONI_MANAGED_PARAMETERS
            } else {
                &[]
            })
            .find(|(n, _)| *n == name);
        if let Some((_, why)) = managed {
            ctx.report(
                Rule::PgParameter,
                &path,
                format!("`{name}` is managed by pgswarm and cannot be set here: {why}"),
            );
            continue;
        }
        if value.chars().any(char::is_control) {
            ctx.report(
                Rule::PgParameter,
                &path,
                format!("the value of `{name}` contains a control character (a line break?)"),
            );
            continue;
        }
        out.insert(name.clone(), value.clone());
    }
    out
}

fn is_parameter_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let ok_part = |p: &str| is_identifier(p);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, _) => ok_part(a),
        (Some(a), Some(b), None) => ok_part(a) && ok_part(b),
        _ => false,
    }
}

fn check_network(ctx: &mut Ctx, raw: Option<&RawNetwork>, root: &FieldPath) -> Network {
    let path = root.key("network");
    let encrypted = raw.and_then(|n| n.encrypted).unwrap_or(true);
    if !encrypted {
        ctx.report(
            Rule::Unencrypted,
            &path.key("encrypted"),
            "the overlay network is not encrypted: replication and client traffic between nodes \
             is readable on the wire (fine on a single node or a trusted network)",
        );
    }
    let subnet = raw.and_then(|n| n.subnet.clone());
    if let Some(s) = &subnet {
        if let Err(why) = check_cidr(s) {
            ctx.report(
                Rule::Network,
                &path.key("subnet"),
                format!("`{s}` is not a usable subnet: {why}; write it like `10.20.0.0/24`"),
            );
        }
    }
    Network { encrypted, subnet }
}

fn check_cidr(s: &str) -> Result<(), String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| "it has no `/prefix`".to_string())?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("`{prefix}` is not a prefix length"))?;
    let IpAddr::V4(v4) = addr else {
        return Err("it is an IPv6 subnet; the overlay network takes an IPv4 subnet".into());
    };
    let bits = u128::from(u32::from(v4)) << 96;
    if prefix > 32 || prefix == 0 {
        return Err("the prefix length must be from 1 to 32".into());
    }
    let host_bits = bits.checked_shl(u32::from(prefix)).unwrap_or(0);
    if host_bits != 0 {
        return Err("host bits are set (the address must be the network's first address)".into());
    }
    Ok(())
}

fn check_volumes(ctx: &mut Ctx, raw: Option<&RawVolumes>, root: &FieldPath) -> VolumeOptions {
    let path = root.key("volumes");
    let Some(raw) = raw else {
        return VolumeOptions::default();
    };
    if let Some(driver) = &raw.driver {
        if driver.trim().is_empty() || driver.chars().any(char::is_whitespace) {
            ctx.report(
                Rule::Volume,
                &path.key("driver"),
                format!("`{driver}` is not a volume driver name (e.g. `local`)"),
            );
        }
    }
    let mut opts = BTreeMap::new();
    for (k, Scalar(v)) in &raw.driver_opts {
        if k.trim().is_empty() || v.chars().any(char::is_control) {
            ctx.report(
                Rule::Volume,
                &path.key("driver_opts").key(k),
                "a driver option needs a non-empty name and a single-line value",
            );
        }
        opts.insert(k.clone(), v.clone());
    }
    VolumeOptions {
        driver: raw.driver.clone(),
        driver_opts: opts,
    }
}

fn check_resources(ctx: &mut Ctx, raw: Option<&RawResources>, path: &FieldPath) -> Resources {
    let Some(raw) = raw else {
        return Resources::default();
    };
    let mut set = |side: &str, raw: Option<&RawResourceSet>| -> ResourceSet {
        let Some(raw) = raw else {
            return ResourceSet::default();
        };
        let spath = path.key(side);
        let cpus = raw.cpus.as_ref().map(|Scalar(c)| {
            match c.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 && v <= 4096.0 => {}
                _ => ctx.report(
                    Rule::Resources,
                    &spath.key("cpus"),
                    format!("`{c}` is not a CPU count: write a positive number like `2` or `0.5`"),
                ),
            }
            c.trim().to_string()
        });
        let memory = raw.memory.as_ref().map(|Scalar(m)| {
            if !is_memory(m) {
                ctx.report(
                    Rule::Resources,
                    &spath.key("memory"),
                    format!(
                        "`{m}` is not an amount of memory: write bytes or a number with a unit, \
                         like `512M` or `4G`"
                    ),
                );
            }
            m.trim().to_string()
        });
        ResourceSet { cpus, memory }
    };
    Resources {
        limits: set("limits", raw.limits.as_ref()),
        reservations: set("reservations", raw.reservations.as_ref()),
    }
}

/// `512M`, `4G`, `1.5GiB`, `1073741824`: a positive number and a unit Docker understands.
fn is_memory(s: &str) -> bool {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let units = [
        "", "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", "t", "tb", "tib",
    ];
    matches!(num.parse::<f64>(), Ok(v) if v.is_finite() && v > 0.0)
        && units.contains(&unit.trim().to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid_replication_slot_names() {
        assert_eq!(slot_name("pg-replica-1"), "pg_replica_1");
        assert_eq!(slot_name("db2"), "db2");
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(check_cidr("10.20.0.0/24").is_ok());
        assert!(check_cidr("fd00::/64").is_err());
        assert!(check_cidr("10.20.0.1/24").is_err());
        assert!(check_cidr("10.20.0.0/33").is_err());
        assert!(check_cidr("10.20.0.0").is_err());
        assert!(check_cidr("x/8").is_err());
        assert!(check_cidr("10.0.0.0/0").is_err());
        assert!(check_cidr("10.0.0.1/32").is_ok());
    }

    #[test]
    fn memory_amounts() {
        for ok in ["512M", "4G", "1.5GiB", "1073741824", "100mb"] {
            assert!(is_memory(ok), "{ok}");
        }
        for bad in ["", "M", "-1G", "4 potatoes", "0", "1e9"] {
            assert!(!is_memory(bad), "{bad}");
        }
    }

    #[test]
    fn images() {
        for ok in [
            "pgswarm:latest",
            "registry.example.com:5000/team/pgswarm:1.0",
            "localhost/pgswarm",
            "pgswarm@sha256:abc",
        ] {
            assert!(check_image(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "PgSwarm:latest", "pg swarm"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }
}
