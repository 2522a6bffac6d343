//! The Swarm stack file (compose format 3.8, as `docker stack deploy` reads it), rendered from a
//! validated [`Cluster`] through typed serde structures.
//!
//! Choices that hold for every stack live here: the healthcheck through
//! `pgswarm-sidecar health`, grace periods long enough for a clean shutdown, restart and update
//! policies suited to databases (one at a time, stop before start where a volume or a host
//! port is involved), TCP keepalives below the 900 s IPVS idle timeout, DNS round robin for
//! members (they address each other by service name) and for the router and pooler unless they
//! publish through the ingress mesh, and external Docker secrets only.

pub(crate) mod emit;

use crate::keepalive;
use crate::placement;
use crate::spec::{Cluster, PortMode, ResourceSet, Service, ServiceKind};
use pgswarm_contract::Secret;
use serde::Serialize;

pub mod prometheus;

/// Compose file format version; 3.8 is the first with everything used here.
pub const COMPOSE_VERSION: &str = "3.8";
/// Key of the overlay network in the stack (Docker names it `<stack>_net`).
pub const NETWORK: &str = "net";

/// Labels on services, containers and volumes, to find a cluster's objects.
pub mod labels {
    /// The cluster name.
    pub const CLUSTER: &str = "pgswarm.cluster";
    /// The member (service) name.
    pub const MEMBER: &str = "pgswarm.member";
    /// The sidecar mode (`patroni`, `etcd`, ...).
    pub const MODE: &str = "pgswarm.mode";
    /// The Citus group of a data member.
    pub const CITUS_GROUP: &str = "pgswarm.citus-group";

    /// `pgswarm.metrics.<endpoint>.port`: the container port of a metrics endpoint, for
    /// Prometheus's Swarm discovery (one label per endpoint, e.g. `pgswarm.metrics.postgres.port`).
    pub fn metrics_port(endpoint: &str) -> String {
        format!("pgswarm.metrics.{endpoint}.port")
    }

    /// `pgswarm.metrics.<endpoint>.path`: the HTTP path of a metrics endpoint.
    pub fn metrics_path(endpoint: &str) -> String {
        format!("pgswarm.metrics.{endpoint}.path")
    }
}

/// A map that keeps insertion order when serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<V> OrderedMap<V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        self.0.push((key.into(), value));
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The whole stack file.
#[derive(Debug, Clone, Serialize)]
pub struct StackFile {
    pub version: String,
    pub services: OrderedMap<ComposeService>,
    pub networks: OrderedMap<ComposeNetwork>,
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub volumes: OrderedMap<ComposeVolume>,
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub secrets: OrderedMap<ComposeSecret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeService {
    pub image: String,
    pub environment: OrderedMap<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretMount>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    pub networks: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    pub healthcheck: Healthcheck,
    pub stop_grace_period: String,
    pub sysctls: OrderedMap<String>,
    pub labels: OrderedMap<String>,
    pub deploy: Deploy,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretMount {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeMount {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Port {
    pub target: u16,
    pub published: u16,
    pub protocol: String,
    pub mode: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: String,
    pub timeout: String,
    pub retries: u32,
    pub start_period: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deploy {
    pub replicas: u32,
    pub endpoint_mode: String,
    pub labels: OrderedMap<String>,
    #[serde(skip_serializing_if = "PlacementSpec::is_empty")]
    pub placement: PlacementSpec,
    #[serde(skip_serializing_if = "ComposeResources::is_empty")]
    pub resources: ComposeResources,
    pub restart_policy: RestartPolicy,
    pub update_config: UpdateConfig,
    pub rollback_config: UpdateConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacementSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<Spread>,
    /// 1 for a service of several replicas: on one node they would share its fate (and a port
    /// published in host mode can be bound once per node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
}

impl PlacementSpec {
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
            && self.preferences.is_empty()
            && self.max_replicas_per_node.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub spread: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ComposeResources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceValues>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceValues>,
}

impl ComposeResources {
    pub fn is_empty(&self) -> bool {
        self.limits.is_none() && self.reservations.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceValues {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartPolicy {
    pub condition: String,
    pub delay: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdateConfig {
    pub parallelism: u32,
    pub delay: String,
    pub order: String,
    pub failure_action: String,
    pub monitor: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeNetwork {
    pub driver: String,
    pub attachable: bool,
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub driver_opts: OrderedMap<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    pub labels: OrderedMap<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ipam {
    pub config: Vec<IpamConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IpamConfig {
    pub subnet: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeVolume {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub driver_opts: OrderedMap<String>,
    pub labels: OrderedMap<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeSecret {
    pub external: bool,
}

/// Timing of a kind of service.
struct Timing {
    interval: &'static str,
    timeout: &'static str,
    retries: u32,
    /// Failed checks during this time do not count: a replica's first clone takes a while.
    start_period: &'static str,
    /// Long enough for a clean fast shutdown, so Patroni hands over the leader key instead of
    /// leaving it to expire.
    stop_grace_period: &'static str,
}

fn timing(kind: ServiceKind) -> Timing {
    match kind {
        ServiceKind::Data { .. } => Timing {
            interval: "10s",
            timeout: "5s",
            retries: 3,
            start_period: "120s",
            stop_grace_period: "60s",
        },
        ServiceKind::Etcd => Timing {
            interval: "10s",
            timeout: "5s",
            retries: 3,
            start_period: "60s",
            stop_grace_period: "30s",
        },
        ServiceKind::Router | ServiceKind::Pooler | ServiceKind::Backup => Timing {
            interval: "5s",
            timeout: "3s",
            retries: 3,
            start_period: "30s",
            stop_grace_period: "30s",
        },
    }
}

/// Renders the stack of `cluster`.
pub fn render_stack(cluster: &Cluster) -> StackFile {
    let mut services = OrderedMap::default();
    let mut volumes = OrderedMap::default();
    for service in &cluster.services {
        services.insert(service.name.clone(), compose_service(cluster, service));
        if let Some(volume) = &service.volume {
            volumes.insert(
                volume.clone(),
                ComposeVolume {
                    driver: cluster.volumes.driver.clone(),
                    driver_opts: OrderedMap(
                        cluster
                            .volumes
                            .driver_opts
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    labels: OrderedMap(vec![
                        (labels::CLUSTER.into(), cluster.name.clone()),
                        (labels::MEMBER.into(), service.name.clone()),
                    ]),
                },
            );
        }
    }
    let mut driver_opts = OrderedMap::default();
    if cluster.network.encrypted {
        driver_opts.insert("encrypted", "true".to_string());
    }
    let network = ComposeNetwork {
        driver: "overlay".into(),
        attachable: true,
        driver_opts,
        ipam: cluster.network.subnet.as_ref().map(|subnet| Ipam {
            config: vec![IpamConfig {
                subnet: subnet.clone(),
            }],
        }),
        labels: OrderedMap(vec![(labels::CLUSTER.into(), cluster.name.clone())]),
    };
    let mut secrets = OrderedMap::default();
    for secret in cluster.secrets() {
        secrets.insert(
            cluster.secret_docker_name(secret),
            ComposeSecret { external: true },
        );
    }
    for secret in &cluster.role_secrets {
        secrets.insert(secret.docker_name.clone(), ComposeSecret { external: true });
    }
    StackFile {
        version: COMPOSE_VERSION.into(),
        services,
        networks: OrderedMap(vec![(NETWORK.into(), network)]),
        volumes,
        secrets,
    }
}

/// How a service's name resolves. Members are addressed by service name and must resolve to
/// the task itself: always DNS round robin. The router and pooler use DNS round robin too,
/// unless they publish a port through the ingress routing mesh, which needs a virtual IP
/// (Swarm refuses `dnsrr` with ingress-published ports). A VIP is an IPVS load balancer:
/// it does not work on kernels without IPVS ("No route to host" from the pooler to the
/// router) and drops idle TCP connections after 900 s, so it is used only when asked for.
fn endpoint_mode(service: &Service) -> &'static str {
    if !service.is_stateful() && service.ports.iter().any(|p| p.mode == PortMode::Ingress) {
        "vip"
    } else {
        "dnsrr"
    }
}

fn compose_service(cluster: &Cluster, service: &Service) -> ComposeService {
    let t = timing(service.kind);
    let mut service_labels = OrderedMap(vec![
        (labels::CLUSTER.to_string(), cluster.name.clone()),
        (labels::MEMBER.to_string(), service.name.clone()),
        (labels::MODE.to_string(), service.mode().to_string()),
    ]);
    if let ServiceKind::Data { group: Some(g) } = service.kind {
        service_labels.insert(labels::CITUS_GROUP, g.to_string());
    }
    for m in &service.metrics {
        service_labels.insert(labels::metrics_port(m.name), m.port.to_string());
        service_labels.insert(labels::metrics_path(m.name), m.path.to_string());
    }
    // A volume must never be used by two tasks at once, and a host port cannot be bound twice
    // on one node: stop the old task first. Stateless services behind the mesh start first.
    let stop_first =
        service.is_stateful() || service.ports.iter().any(|p| p.mode == PortMode::Host);
    let order = if stop_first {
        "stop-first"
    } else {
        "start-first"
    };
    let update = UpdateConfig {
        parallelism: 1,
        delay: "10s".into(),
        order: order.into(),
        failure_action: "pause".into(),
        monitor: "60s".into(),
    };
    ComposeService {
        image: cluster.image.clone(),
        environment: OrderedMap(service.env.to_env()),
        secrets: service
            .secrets()
            .into_iter()
            .map(|s| SecretMount {
                source: cluster.secret_docker_name(s),
                target: s.file_name().into(),
            })
            // Every data member may lead, and the leader sets the roles' passwords.
            .chain(
                cluster
                    .role_secrets
                    .iter()
                    .filter(|_| matches!(service.kind, ServiceKind::Data { .. }))
                    .map(|r| SecretMount {
                        source: r.docker_name.clone(),
                        target: r.file_name(),
                    }),
            )
            .collect(),
        volumes: service
            .volume
            .iter()
            .map(|v| VolumeMount {
                kind: "volume".into(),
                source: v.clone(),
                target: pgswarm_contract::defaults::DATA_ROOT.into(),
            })
            .collect(),
        networks: vec![NETWORK.into()],
        ports: service
            .ports
            .iter()
            .map(|p| Port {
                target: p.target,
                published: p.port,
                protocol: "tcp".into(),
                mode: p.mode.as_str().into(),
            })
            .collect(),
        healthcheck: Healthcheck {
            test: ["CMD", "pgswarm-sidecar", "health"]
                .map(String::from)
                .to_vec(),
            interval: t.interval.into(),
            timeout: t.timeout.into(),
            retries: t.retries,
            start_period: t.start_period.into(),
        },
        stop_grace_period: t.stop_grace_period.into(),
        sysctls: OrderedMap(vec![
            (
                "net.ipv4.tcp_keepalive_time".into(),
                keepalive::IDLE_SECS.to_string(),
            ),
            (
                "net.ipv4.tcp_keepalive_intvl".into(),
                keepalive::INTERVAL_SECS.to_string(),
            ),
            (
                "net.ipv4.tcp_keepalive_probes".into(),
                keepalive::COUNT.to_string(),
            ),
        ]),
        labels: service_labels.clone(),
        deploy: Deploy {
            replicas: service.replicas,
            endpoint_mode: endpoint_mode(service).into(),
            labels: service_labels,
            placement: PlacementSpec {
                constraints: service.placement.all_constraints(),
                preferences: service
                    .placement
                    .spread
                    .iter()
                    .map(|zone| Spread {
                        spread: placement::spread_target(zone),
                    })
                    .collect(),
                max_replicas_per_node: (service.replicas > 1).then_some(1),
            },
            resources: ComposeResources {
                limits: resource_values(&service.resources.limits),
                reservations: resource_values(&service.resources.reservations),
            },
            restart_policy: RestartPolicy {
                condition: "any".into(),
                delay: "5s".into(),
            },
            update_config: update.clone(),
            rollback_config: update,
        },
    }
}

fn resource_values(set: &ResourceSet) -> Option<ResourceValues> {
    (!set.is_empty()).then(|| ResourceValues {
        cpus: set.cpus.clone(),
        memory: set.memory.clone(),
    })
}

/// The stack file as YAML, with a header saying what it needs before deployment.
pub fn stack_yaml(cluster: &Cluster) -> Result<String, serde_yaml::Error> {
    let value = serde_yaml::to_value(render_stack(cluster))?;
    Ok(format!("{}{}", header(cluster), emit::to_yaml(&value)))
}

fn header(cluster: &Cluster) -> String {
    let name = &cluster.name;
    let mut h = format!(
        "# pgswarm stack of cluster `{name}` (topology {}), generated by `swarmctl generate`.\n\
         # Regenerate it from the spec rather than editing it.\n#\n\
         # Deploy: docker stack deploy -c THIS_FILE {name}   (or: swarmctl deploy -f SPEC)\n",
        cluster.topology
    );
    let secrets = cluster.secrets();
    if !secrets.is_empty() {
        h.push_str("# It needs these Docker secrets (swarmctl deploy creates missing ones):\n");
        for s in secrets.iter().filter(|s| Secret::BACKUP_TLS.contains(s)) {
            h.push_str(&format!(
                "#   {} (pgBackRest's TLS: a CA, one certificate and its key, made together by \
                 swarmctl deploy)\n",
                s.docker_name(name)
            ));
        }
        for s in secrets.iter().filter(|s| Secret::CLUSTER_TLS.contains(s)) {
            if cluster.generates(*s) {
                h.push_str(&format!(
                    "#   {} (client and replication TLS: the cluster CA, the server certificate \
                     and its key, made together by swarmctl deploy)\n",
                    s.docker_name(name)
                ));
            } else {
                h.push_str(&format!(
                    "#   {} (client and replication TLS: yours, it must exist)\n",
                    cluster.secret_docker_name(*s)
                ));
            }
        }
        for s in secrets.iter().filter(|s| !s.is_certificate()) {
            h.push_str(&format!(
                "#   tr -dc A-Za-z0-9 </dev/urandom | head -c 32 | docker secret create {} -\n",
                s.docker_name(name)
            ));
        }
        for r in cluster.role_secrets.iter().filter(|r| r.generated) {
            h.push_str(&format!(
                "#   tr -dc A-Za-z0-9 </dev/urandom | head -c 32 | docker secret create {} -\n",
                r.docker_name
            ));
        }
        for r in cluster.role_secrets.iter().filter(|r| !r.generated) {
            h.push_str(&format!(
                "#   {} (role {}'s password: yours, it must exist)\n",
                r.docker_name, r.role
            ));
        }
    }
    let labelled: Vec<String> = cluster
        .labelled_members()
        .filter_map(|s| s.placement.member_label.clone())
        .collect();
    let user_labels: Vec<String> = {
        let mut v: Vec<String> = cluster
            .services
            .iter()
            .flat_map(|s| s.placement.labels.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    if !labelled.is_empty() || !user_labels.is_empty() {
        h.push_str("# and node labels placing the members (swarmctl label-nodes sets them):\n");
        for key in labelled {
            h.push_str(&format!(
                "#   docker node update --label-add {key}={} NODE\n",
                placement::MEMBER_LABEL_VALUE
            ));
        }
        for label in user_labels {
            h.push_str(&format!(
                "#   docker node update --label-add {label} NODE\n"
            ));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    fn stack(text: &str) -> serde_yaml::Value {
        let v = spec::parse(text).expect("valid spec");
        let yaml = stack_yaml(&v.cluster).expect("renders");
        serde_yaml::from_str(&yaml).expect("stack is YAML")
    }

    #[test]
    fn members_use_dnsrr_volumes_and_stop_first() {
        let s = stack("name: demo\ntopology: patroni\n");
        let pg1 = &s["services"]["pg1"];
        assert_eq!(pg1["deploy"]["endpoint_mode"], "dnsrr");
        assert_eq!(pg1["deploy"]["replicas"], 1);
        assert_eq!(pg1["deploy"]["update_config"]["order"], "stop-first");
        assert_eq!(pg1["volumes"][0]["source"], "pg1-data");
        assert_eq!(pg1["volumes"][0]["target"], "/var/lib/pgswarm");
        assert_eq!(
            pg1["deploy"]["placement"]["constraints"][0],
            "node.labels.pgswarm.demo.pg1 == true"
        );
        let router = &s["services"]["router"];
        // Published through the ingress mesh by default, which needs a VIP.
        assert_eq!(router["ports"][0]["mode"], "ingress");
        assert_eq!(router["deploy"]["endpoint_mode"], "vip");
        assert_eq!(router["deploy"]["update_config"]["order"], "start-first");
        assert!(router.get("volumes").is_none());
        assert!(router["deploy"]["placement"].get("constraints").is_none());
    }

    #[test]
    fn router_and_pooler_use_dnsrr_unless_published_through_the_mesh() {
        for (publish, expected) in [("host", "dnsrr"), ("none", "dnsrr"), ("ingress", "vip")] {
            let s = stack(&format!(
                "name: demo\ntopology: patroni\nrouter:\n  publish: {publish}\n\
                 pooler:\n  publish: {publish}\n"
            ));
            for name in ["router", "pooler"] {
                let service = &s["services"][name];
                assert_eq!(
                    service["deploy"]["endpoint_mode"], expected,
                    "{name} published {publish}"
                );
                if let Some(ports) = service["ports"].as_sequence() {
                    assert!(
                        ports.iter().all(|p| p["mode"] == publish),
                        "{name}: {ports:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn several_routers_never_share_a_node() {
        let s = stack("name: demo\ntopology: patroni\nrouter:\n  replicas: 2\n");
        let router = &s["services"]["router"]["deploy"];
        assert_eq!(router["replicas"], 2);
        assert_eq!(router["placement"]["max_replicas_per_node"], 1);
        let pooler = &s["services"]["pooler"]["deploy"];
        assert!(pooler["placement"]["max_replicas_per_node"].is_null());
    }

    #[test]
    fn a_member_published_elsewhere_still_targets_postgres_port() {
        let s = stack(
            "name: demo\ntopology: replication\nreplication:\n  primary:\n    name: db\n    \
             publish: {port: 15432}\n",
        );
        let port = &s["services"]["db"]["ports"][0];
        assert_eq!(port["published"], 15432);
        assert_eq!(port["target"], 5432);
        assert_eq!(port["mode"], "host");
    }

    #[test]
    fn secrets_are_external_and_mounted_by_need() {
        let s = stack("name: demo\ntopology: patroni\n");
        for name in [
            "demo_superuser_password",
            "demo_replication_password",
            "demo_rest_password",
        ] {
            assert_eq!(s["secrets"][name]["external"], true, "{name}");
        }
        assert!(s["services"]["etcd1"].get("secrets").is_none());
        let pooler_secrets = s["services"]["pooler"]["secrets"]
            .as_sequence()
            .expect("pooler secrets");
        assert_eq!(pooler_secrets.len(), 2);
        assert_eq!(pooler_secrets[0]["target"], "superuser_password");
        assert_eq!(pooler_secrets[1]["target"], "pooler_auth_password");
    }

    #[test]
    fn role_password_secrets_are_mounted_on_data_members_only() {
        let s = stack(
            "name: demo\ntopology: patroni\nroles:\n  - name: app\n  - name: ops\n    \
             password_secret: my_ops_pw\n  - name: team\n    login: false\n\
             databases:\n  - name: appdb\n    owner: app\n    pool_size: 4\n",
        );
        assert_eq!(s["secrets"]["demo_role_app_password"]["external"], true);
        assert_eq!(s["secrets"]["my_ops_pw"]["external"], true);
        let mounts = s["services"]["pg1"]["secrets"].as_sequence().unwrap();
        let targets: Vec<&str> = mounts
            .iter()
            .map(|m| m["target"].as_str().unwrap())
            .collect();
        assert!(targets.contains(&"role_app_password"), "{targets:?}");
        assert!(targets.contains(&"role_ops_password"), "{targets:?}");
        assert_eq!(targets.iter().filter(|t| t.starts_with("role_")).count(), 2);
        let pooler = s["services"]["pooler"]["secrets"].as_sequence().unwrap();
        assert!(pooler
            .iter()
            .all(|m| !m["target"].as_str().unwrap().starts_with("role_")));
        let env = &s["services"]["pooler"]["environment"];
        assert_eq!(
            env["PGSWARM_POOLER_DATABASES"],
            r#"[{"name":"appdb","pool_size":4}]"#
        );
        // Nothing about the roles travels in a data member's environment: changing one
        // does not restart PostgreSQL.
        let member_env = serde_yaml::to_string(&s["services"]["pg1"]["environment"]).unwrap();
        assert!(!member_env.contains("app"), "{member_env}");
    }

    #[test]
    fn network_is_encrypted_and_attachable_unless_turned_off() {
        let s = stack("name: demo\ntopology: patroni\nnetwork: {subnet: 10.9.0.0/24}\n");
        let net = &s["networks"]["net"];
        assert_eq!(net["driver"], "overlay");
        assert_eq!(net["attachable"], true);
        assert_eq!(net["driver_opts"]["encrypted"], "true");
        assert_eq!(net["ipam"]["config"][0]["subnet"], "10.9.0.0/24");
        assert_eq!(
            s["services"]["pg1"]["environment"]["PGSWARM_ALLOWED_CIDRS"],
            "10.9.0.0/24"
        );
        let s = stack("name: demo\ntopology: patroni\nnetwork: {encrypted: false}\n");
        assert!(s["networks"]["net"].get("driver_opts").is_none());
        assert!(s["services"]["pg1"]["environment"]
            .get("PGSWARM_ALLOWED_CIDRS")
            .is_none());
    }

    #[test]
    fn keepalives_are_below_the_ipvs_idle_timeout() {
        let s = stack("name: demo\ntopology: replication\n");
        let primary = &s["services"]["primary"];
        let time: u32 = primary["sysctls"]["net.ipv4.tcp_keepalive_time"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("keepalive time");
        assert!(time < 900);
        assert_eq!(time, keepalive::IDLE_SECS);
        // The value PostgreSQL gets is the one the member's environment carries (it overrides
        // the sidecar's own default), so it is checked there, decoded as the sidecar does.
        let params: std::collections::BTreeMap<String, String> = serde_json::from_str(
            primary["environment"]["PGSWARM_PG_PARAMETERS"]
                .as_str()
                .expect("parameters"),
        )
        .expect("a JSON object");
        let idle: u32 = params["tcp_keepalives_idle"].parse().expect("a number");
        let interval: u32 = params["tcp_keepalives_interval"].parse().expect("a number");
        let count: u32 = params["tcp_keepalives_count"].parse().expect("a number");
        assert!(idle + interval * count < 900, "{params:?}");
    }
}
