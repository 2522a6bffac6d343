//! Assembly: the services of a cluster (data members, etcd, router, pooler) with their
//! environments, from the checked sections and the topology's plan.

use super::*;

pub(super) fn build(ctx: &mut Ctx, raw: &RawSpec) -> Option<Cluster> {
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
    let (superuser, replication_user) = check_role_names(ctx, postgres_raw, &root);
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
    let backup = check_backup(ctx, raw, topology, &root);
    let tls = check_tls(ctx, raw, topology, &root);

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
    let drafts: Vec<&Draft> = plan
        .members
        .iter()
        .map(|(d, _)| d)
        .chain(&etcd)
        .chain(backup.as_ref().map(|b| &b.draft))
        .collect();
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
            metrics: Vec::new(),
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
            metrics: Vec::new(),
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

    if uses_patroni && router_enabled {
        add_handover(&mut services, router_rw);
    }

    if let Some(plan) = &backup {
        let members: Vec<String> = services
            .iter()
            .filter(|s| matches!(s.kind, ServiceKind::Data { .. }))
            .map(|s| s.name.clone())
            .collect();
        for service in services
            .iter_mut()
            .filter(|s| matches!(s.kind, ServiceKind::Data { .. }))
        {
            service.env.common.backup = Some(plan.settings.clone());
        }
        services.push(backup_service(ctx, &shared, plan, members));
    }
    check_ports(ctx, &services, &port_paths);
    let (objects, role_secrets, pooler_databases) = check_objects(
        ctx,
        raw,
        topology,
        &shared.superuser,
        &shared.replication_user,
        &root,
    );
    for service in &mut services {
        if let Role::Pooler { databases, .. } = &mut service.env.role {
            *databases = pooler_databases.clone();
        }
    }
    add_metrics(ctx, raw.monitoring.as_ref(), &mut services, &root);
    if let Some(tls) = &tls {
        // The PostgreSQL servers and the pooler; the router passes TLS through untouched.
        for service in services
            .iter_mut()
            .filter(|s| matches!(s.kind, ServiceKind::Data { .. } | ServiceKind::Pooler))
        {
            service.env.common.tls = Some(tls.mode);
        }
    }

    Some(Cluster {
        name: raw.name.clone(),
        topology,
        image,
        services,
        network,
        volumes,
        zone_label: shared.zone.clone(),
        objects,
        role_secrets,
        tls,
    })
}

/// A member's own resources, or the section's default (already checked).
pub(super) fn own_resources(ctx: &mut Ctx, draft: &Draft, default: &Resources) -> Resources {
    match &draft.resources {
        Some(own) => check_resources(ctx, Some(own), &draft.path.key("resources")),
        None => default.clone(),
    }
}

pub(super) fn data_member_ports(ctx: &mut Ctx, draft: &Draft) -> Vec<PublishedPort> {
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

pub(super) fn router_service(
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
                ro_fallback: r.read_only_fallback.unwrap_or(true),
            },
        },
        placement: stateless_placement(ctx, shared, r.placement.as_ref(), &path),
        ports: published(publish, named.iter().map(|(_, p)| *p)),
        resources: check_resources(ctx, r.resources.as_ref(), &path.key("resources")),
        replicas: replicas.max(1),
        volume: None,
        metrics: Vec::new(),
    }
}

pub(super) fn pooler_service(
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
                databases: Vec::new(),
            },
        },
        placement: stateless_placement(ctx, shared, p.placement.as_ref(), &path),
        ports: published(publish, [port]),
        resources: check_resources(ctx, p.resources.as_ref(), &path.key("resources")),
        replicas: replicas.max(1),
        volume: None,
        metrics: Vec::new(),
    }
}

pub(super) fn published(
    mode: PublishMode,
    ports: impl IntoIterator<Item = u16>,
) -> Vec<PublishedPort> {
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

/// Every Patroni member whose leader serves the router's read-write port (all of them, or
/// Citus's coordinator group) hands over before it stops: to writes through the router, with
/// the pooler paused when there is one. Citus workers do not: the worker port balances over
/// every group's primary, so a write there does not tell one group's new leader.
fn add_handover(services: &mut [Service], router_rw: u16) {
    let poolers: Vec<Endpoint> = services
        .iter()
        .filter_map(|s| match &s.env.role {
            Role::Pooler { port, .. } => Some(Endpoint {
                host: s.name.clone(),
                port: *port,
            }),
            _ => None,
        })
        .collect();
    for service in services.iter_mut() {
        if let Role::Patroni {
            citus, handover, ..
        } = &mut service.env.role
        {
            if citus.as_ref().is_none_or(|c| c.group == 0) {
                *handover = Some(Handover {
                    write: Endpoint {
                        host: format!("tasks.{ROUTER_SERVICE}"),
                        port: router_rw,
                    },
                    poolers: poolers.clone(),
                });
            }
        }
    }
}

pub(super) fn contract_sync(sync: SyncMode) -> SynchronousMode {
    match sync {
        SyncMode::Off => SynchronousMode::Off,
        SyncMode::On => SynchronousMode::On,
        SyncMode::Quorum => SynchronousMode::Quorum,
    }
}

/// The ports each service already uses in its container, with what for, so a metrics port
/// can be checked against them.
fn own_ports(service: &Service) -> Vec<(u16, &'static str)> {
    match &service.env.role {
        Role::Primary { postgres, .. } | Role::Replica { postgres, .. } => {
            vec![(postgres.port, "PostgreSQL")]
        }
        Role::Patroni {
            postgres,
            rest_port,
            ..
        } => vec![
            (postgres.port, "PostgreSQL"),
            (*rest_port, "Patroni's REST API"),
        ],
        Role::Etcd {
            client_port,
            peer_port,
            ..
        } => vec![(*client_port, "etcd clients"), (*peer_port, "etcd peers")],
        Role::Router {
            rw_port,
            ro_port,
            worker_port,
            ..
        } => {
            let mut out = vec![
                (*rw_port, "the read-write port"),
                (*ro_port, "the read-only port"),
            ];
            if let Some(w) = worker_port {
                out.push((*w, "the worker port"));
            }
            out
        }
        Role::Pooler { port, .. } => vec![(*port, "PgBouncer")],
        Role::Backup { .. } => service
            .env
            .common
            .backup
            .as_ref()
            .map(|b| vec![(b.repo_port, "pgBackRest's TLS server")])
            .unwrap_or_default(),
    }
}

/// Applies the `monitoring` section: each service's metrics endpoints (which become the
/// labels Prometheus's Swarm discovery reads) and, for the exporters the sidecar runs or
/// configures, the metrics port of its contract. Patroni and etcd serve `/metrics` on their
/// own ports. Nothing is published: the endpoints answer on the overlay network only.
pub(super) fn add_metrics(
    ctx: &mut Ctx,
    raw: Option<&RawMonitoring>,
    services: &mut [Service],
    root: &FieldPath,
) {
    let path = root.key("monitoring");
    let m = raw.cloned().unwrap_or_default();
    if m.enabled == Some(false) {
        return;
    }
    let postgres = m.postgres_port.unwrap_or(defaults::POSTGRES_METRICS_PORT);
    let router = m.router_port.unwrap_or(defaults::ROUTER_METRICS_PORT);
    let pooler = m.pooler_port.unwrap_or(defaults::POOLER_METRICS_PORT);
    for (field, port) in [
        ("postgres_port", postgres),
        ("router_port", router),
        ("pooler_port", pooler),
    ] {
        if port == 0 {
            ctx.report(
                Rule::PortInvalid,
                &path.key(field),
                format!("monitoring.{field} is 0: choose a port from 1 to 65535"),
            );
        } else if let Some(what) = pgswarm_contract::rules::swarm_reserved_port(port) {
            ctx.report(
                Rule::PortInvalid,
                &path.key(field),
                format!(
                    "monitoring.{field} is {port}, which Swarm itself uses for {what} on every \
                     node: choose another port (default {})",
                    match field {
                        "postgres_port" => defaults::POSTGRES_METRICS_PORT,
                        "router_port" => defaults::ROUTER_METRICS_PORT,
                        _ => defaults::POOLER_METRICS_PORT,
                    }
                ),
            );
        }
    }
    let endpoint = |name, port| MetricsEndpoint {
        name,
        port,
        path: defaults::METRICS_PATH,
    };
    let mut clashes: BTreeMap<&'static str, (String, u16, &'static str)> = BTreeMap::new();
    for service in services.iter_mut() {
        let (exporter, field) = match &service.env.role {
            Role::Primary { .. } | Role::Replica { .. } => {
                (Some(endpoint("postgres", postgres)), "postgres_port")
            }
            Role::Patroni { rest_port, .. } => {
                service.metrics.push(endpoint("patroni", *rest_port));
                (Some(endpoint("postgres", postgres)), "postgres_port")
            }
            Role::Etcd { client_port, .. } => {
                service.metrics.push(endpoint("etcd", *client_port));
                (None, "")
            }
            Role::Router { .. } => (Some(endpoint("haproxy", router)), "router_port"),
            Role::Pooler { .. } => (Some(endpoint("pgbouncer", pooler)), "pooler_port"),
            Role::Backup { .. } => (None, ""),
        };
        let Some(exporter) = exporter else { continue };
        if let Some((_, what)) = own_ports(service)
            .into_iter()
            .find(|(p, _)| *p == exporter.port)
        {
            clashes
                .entry(field)
                .or_insert((service.name.clone(), exporter.port, what));
        }
        service.env.common.metrics_port = Some(exporter.port);
        service.metrics.insert(0, exporter);
    }
    for (field, (service, port, what)) in clashes {
        ctx.report(
            Rule::PortClash,
            &path.key(field),
            format!(
                "monitoring.{field} is {port}, which {service} already uses for {what}: choose \
                 another port"
            ),
        );
    }
}
