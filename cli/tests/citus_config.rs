//! The Citus topology from spec to running configuration, without Docker: each example spec is
//! rendered to a stack file, every service's environment is read back from that file through
//! the contract (as the container reads it), and the sidecar's own renderers turn it into the
//! member's patroni.yml and the router's haproxy.cfg. The checks are what Patroni's Citus mode
//! needs (ARCHITECTURE.md, "Patroni's Citus mode"): one scope, the right group and database on
//! every member, a synchronous mode written per group, replication over loopback in pg_hba,
//! fast basebackup checkpoints, the REST API reachable by every member with the same
//! credentials; and the router sending read-write traffic to the coordinator group only.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use pgswarm_contract::{defaults, MemberEnv, Role, Secret, SynchronousMode};
use pgswarm_sidecar::patroni::{self, HostFacts, PatroniCredentials, PatroniSpec, PatroniVersion};
use pgswarm_sidecar::router::{self, RouterConfig};
use pgswarm_sidecar::templates::Templates;
use serde_json::Value as Json;
use serde_yaml::Value;
use swarmctl::render::{self, labels};
use swarmctl::spec::{self, Topology};

/// What a Citus spec must turn into, written out by hand for each spec under test.
struct Expected {
    scope: &'static str,
    database: &'static str,
    /// Member name to its group.
    groups: BTreeMap<&'static str, u32>,
    /// Group to the synchronous mode its members must write.
    sync: BTreeMap<u32, SynchronousMode>,
    router_port: u16,
    worker_port: Option<u16>,
}

/// A service of the generated stack, with its environment decoded through the contract.
struct StackService {
    name: String,
    env: MemberEnv,
    /// (Docker secret, target file name) pairs it mounts.
    secrets: Vec<(String, String)>,
    /// The `pgswarm.citus-group` label, when present.
    group_label: Option<String>,
}

fn stack_services(spec_text: &str) -> Vec<StackService> {
    let validated = spec::parse(spec_text).unwrap_or_else(|e| panic!("invalid spec: {e}"));
    let yaml = render::stack_yaml(&validated.cluster).expect("the stack renders");
    let stack: Value = serde_yaml::from_str(&yaml).expect("the stack is YAML");
    let services = stack["services"].as_mapping().expect("services");
    services
        .iter()
        .map(|(name, service)| {
            let name = name.as_str().expect("service name").to_string();
            let env: BTreeMap<String, String> = service["environment"]
                .as_mapping()
                .expect("environment mapping")
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .expect("scalar")
                            .trim()
                            .to_string(),
                    };
                    (k.as_str().expect("variable name").to_string(), value)
                })
                .collect();
            let env = MemberEnv::from_lookup(|k| env.get(k).cloned())
                .unwrap_or_else(|e| panic!("service {name}: the contract rejects its env: {e}"));
            let secrets = service
                .get("secrets")
                .and_then(Value::as_sequence)
                .map(|list| {
                    list.iter()
                        .map(|s| {
                            (
                                s["source"].as_str().expect("source").to_string(),
                                s["target"].as_str().expect("target").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let group_label = service["deploy"]["labels"]
                .get(labels::CITUS_GROUP)
                .and_then(Value::as_str)
                .map(String::from);
            StackService {
                name,
                env,
                secrets,
                group_label,
            }
        })
        .collect()
}

/// patroni.yml of a member, rendered by the sidecar from the member's contract, as JSON.
fn patroni_yml(service: &StackService) -> Json {
    let spec = PatroniSpec::from_role(&service.env.role).expect("a Patroni member");
    let host = HostFacts {
        bin_dir: "/usr/lib/postgresql/17/bin".into(),
        allowed_cidrs: if spec.postgres.allowed_cidrs.is_empty() {
            // What the sidecar detects from the container's interfaces on the overlay.
            vec!["10.0.9.0/24".into()]
        } else {
            spec.postgres.allowed_cidrs.clone()
        },
        patroni_version: PatroniVersion::parse("patroni 4.0.7"),
        current_address: None,
        liveness_port: None,
    };
    // Each member reads the same secret files (checked separately below); the values stand
    // for their contents.
    let credentials = PatroniCredentials {
        superuser_password: "superuser-secret".into(),
        replication_password: "replication-secret".into(),
        rest_password: "rest-secret".into(),
    };
    let config = patroni::render(&service.env.common, &spec, &host, &credentials)
        .unwrap_or_else(|e| panic!("{}: patroni.yml does not render: {e}", service.name));
    serde_json::from_str(&patroni::to_text(&config).expect("serializes")).expect("JSON")
}

/// The `server` lines of one `listen` section of haproxy.cfg: (name, host:port).
/// Whether `line` opens the proxy section `name` (`listen`, `frontend` or `backend`).
fn opens_section(line: &str, name: &str) -> bool {
    ["listen ", "frontend ", "backend "]
        .iter()
        .any(|kind| line.strip_prefix(kind).map(str::trim) == Some(name))
}

fn listen_servers(haproxy: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in haproxy.lines() {
        let trimmed = line.trim();
        if ["listen ", "frontend ", "backend "]
            .iter()
            .any(|kind| line.starts_with(kind))
        {
            inside = opens_section(line, section);
            continue;
        }
        if inside && !line.starts_with(' ') && !trimmed.is_empty() {
            inside = false;
        }
        if inside {
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            if words.first() == Some(&"server") && words.len() >= 3 {
                out.push((words[1].to_string(), words[2].to_string()));
            }
        }
    }
    out
}

fn listen_check(haproxy: &str, section: &str) -> Option<String> {
    let mut lines = haproxy.lines();
    lines.find(|l| opens_section(l, section))?;
    lines
        .take_while(|l| l.starts_with(' '))
        .find(|l| l.contains("http-check send"))
        .map(|l| l.trim().to_string())
}

fn check_citus_stack(spec_text: &str, expected: &Expected) {
    let services = stack_services(spec_text);
    let data: Vec<&StackService> = services
        .iter()
        .filter(|s| matches!(s.env.role, Role::Patroni { .. }))
        .collect();
    let names: BTreeSet<&str> = data.iter().map(|s| s.name.as_str()).collect();
    let wanted: BTreeSet<&str> = expected.groups.keys().copied().collect();
    assert_eq!(names, wanted, "the data members of the stack");

    let mut rest_users = BTreeSet::new();
    let mut superusers = BTreeSet::new();
    for member in &data {
        let name = member.name.as_str();
        let group = expected.groups[name];
        let y = patroni_yml(member);
        assert_eq!(
            y["scope"], expected.scope,
            "{name}: one scope for every group"
        );
        assert_eq!(y["name"], name, "{name}: Patroni's member name");
        assert_eq!(
            y["citus"]["group"].as_u64(),
            Some(u64::from(group)),
            "{name}: citus group"
        );
        assert_eq!(
            y["citus"]["database"], expected.database,
            "{name}: citus database"
        );
        assert_eq!(
            member.group_label.as_deref(),
            Some(group.to_string().as_str()),
            "{name}: the {} label",
            labels::CITUS_GROUP
        );
        // Written explicitly in every group: Patroni 4 would otherwise use quorum commit.
        let sync = &y["bootstrap"]["dcs"]["synchronous_mode"];
        let want = match expected.sync[&group] {
            SynchronousMode::Off => Json::Bool(false),
            SynchronousMode::On => Json::Bool(true),
            SynchronousMode::Quorum => Json::String("quorum".into()),
        };
        assert_eq!(sync, &want, "{name}: synchronous_mode of group {group}");
        assert_eq!(
            y["bootstrap"]["dcs"]["postgresql"]["parameters"]["wal_level"], "logical",
            "{name}: wal_level"
        );
        let hba: Vec<&str> = y["postgresql"]["pg_hba"]
            .as_array()
            .expect("pg_hba")
            .iter()
            .filter_map(Json::as_str)
            .collect();
        let repl = &member.env.common.replication_user;
        let loopback = format!("host replication {repl} 127.0.0.1/32 scram-sha-256");
        assert!(
            hba.contains(&loopback.as_str()),
            "{name}: pg_hba lacks `{loopback}` (Patroni's local replication checks): {hba:?}"
        );
        assert!(
            hba.iter().any(|l| l.starts_with("host all all 10.")),
            "{name}: pg_hba does not let the other members in: {hba:?}"
        );
        assert_eq!(
            y["postgresql"]["basebackup"][0]["checkpoint"], "fast",
            "{name}: basebackup checkpoint"
        );
        // What Patroni registers in pg_dist_node and what workers call on failover: the
        // member's service name, which every member resolves on the overlay network.
        assert_eq!(
            y["postgresql"]["connect_address"],
            format!("{name}:{}", defaults::PG_PORT),
            "{name}: PostgreSQL connect address"
        );
        assert_eq!(
            y["restapi"]["connect_address"],
            format!("{name}:{}", defaults::REST_PORT),
            "{name}: REST connect address"
        );
        assert!(
            y["restapi"]["listen"]
                .as_str()
                .is_some_and(|l| l.starts_with("0.0.0.0:")),
            "{name}: the REST API must listen on every interface: {}",
            y["restapi"]["listen"]
        );
        rest_users.insert(
            y["restapi"]["authentication"]["username"]
                .as_str()
                .expect("REST user")
                .to_string(),
        );
        superusers.insert(
            y["postgresql"]["authentication"]["superuser"]["username"]
                .as_str()
                .expect("superuser")
                .to_string(),
        );
        // The same credentials on every member: the same Docker secrets at the same paths.
        for secret in [Secret::SuperuserPassword, Secret::RestPassword] {
            let mount = (
                secret.docker_name(expected.scope),
                secret.file_name().to_string(),
            );
            assert!(
                member.secrets.contains(&mount),
                "{name}: does not mount {mount:?}: {:?}",
                member.secrets
            );
            assert_eq!(
                member.env.common.secret_path(secret),
                secret.default_path(),
                "{name}: reads {secret:?} from another path"
            );
        }
    }
    assert_eq!(
        rest_users.len(),
        1,
        "one REST user everywhere: {rest_users:?}"
    );
    assert_eq!(
        superusers.len(),
        1,
        "one superuser everywhere: {superusers:?}"
    );

    let router_service = services
        .iter()
        .find(|s| matches!(s.env.role, Role::Router { .. }))
        .expect("a router");
    let config = RouterConfig::from_contract(&router_service.env.common, &router_service.env.role)
        .expect("a router role")
        .expect("a valid router configuration");
    assert_eq!(config.rw_port, expected.router_port);
    let haproxy = router::render(&Templates::default(), &config).expect("haproxy.cfg renders");
    let coordinators: BTreeSet<String> = expected
        .groups
        .iter()
        .filter(|(_, g)| **g == 0)
        .map(|(m, _)| m.to_string())
        .collect();
    let workers: BTreeSet<String> = expected
        .groups
        .iter()
        .filter(|(_, g)| **g != 0)
        .map(|(m, _)| m.to_string())
        .collect();
    let hosts = |section: &str| -> BTreeSet<String> {
        listen_servers(&haproxy, section)
            .into_iter()
            .map(|(_, addr)| {
                let (host, port) = addr.rsplit_once(':').expect("host:port");
                assert_eq!(port, defaults::PG_PORT.to_string(), "{section}: {addr}");
                host.to_string()
            })
            .collect()
    };
    assert_eq!(
        hosts("rw"),
        coordinators,
        "read-write goes to the coordinator group only"
    );
    assert_eq!(
        listen_check(&haproxy, "rw").as_deref(),
        Some("http-check send meth OPTIONS uri /primary")
    );
    assert_eq!(
        hosts("ro_replicas"),
        coordinators,
        "read-only goes to the coordinator's replicas"
    );
    assert_eq!(
        listen_check(&haproxy, "ro_replicas").as_deref(),
        Some("http-check send meth OPTIONS uri /replica")
    );
    assert_eq!(
        hosts("ro_primary"),
        coordinators,
        "read-only falls back to the coordinator's primary"
    );
    assert_eq!(
        listen_check(&haproxy, "ro_primary").as_deref(),
        Some("http-check send meth OPTIONS uri /primary")
    );
    match expected.worker_port {
        Some(port) => {
            assert!(haproxy.contains(&format!("bind :{port}")), "{haproxy}");
            assert_eq!(hosts("workers"), workers, "the worker port: worker members");
            assert_eq!(
                listen_check(&haproxy, "workers").as_deref(),
                Some("http-check send meth OPTIONS uri /primary"),
                "the worker port goes to each worker group's primary"
            );
        }
        None => assert!(listen_servers(&haproxy, "workers").is_empty(), "{haproxy}"),
    }

    if let Some(pooler) = services
        .iter()
        .find(|s| matches!(s.env.role, Role::Pooler { .. }))
    {
        let Role::Pooler { target, .. } = &pooler.env.role else {
            unreachable!("filtered on the pooler role");
        };
        assert_eq!(
            target.host, router_service.name,
            "the pooler goes to the router"
        );
        assert_eq!(
            target.port, expected.router_port,
            "... to its read-write port"
        );
    }
}

fn groups(pairs: &[(&'static str, u32)]) -> BTreeMap<&'static str, u32> {
    pairs.iter().copied().collect()
}

#[test]
fn the_seed_000_example_configures_every_member_for_patronis_citus_mode() {
    let path = common::repo_root().join("stacks/citus.spec.yml");
    let text = std::fs::read_to_string(&path).expect("stacks/citus.spec.yml");
    check_citus_stack(
        &text,
        &Expected {
            scope: "citus-demo",
            database: "citus",
            groups: groups(&[
                ("coord1", 0),
                ("coord2", 0),
                ("coord3", 0),
                ("worker1a", 1),
                ("worker1b", 1),
                ("worker2a", 2),
                ("worker2b", 2),
            ]),
            sync: BTreeMap::from([
                (0, SynchronousMode::Quorum),
                (1, SynchronousMode::On),
                (2, SynchronousMode::On),
            ]),
            router_port: 5000,
            worker_port: Some(5002),
        },
    );
}

#[test]
fn the_citus_starter_configures_every_member_for_patronis_citus_mode() {
    let text = spec::starter_spec(Topology::Citus, "demo").expect("the starter is valid");
    check_citus_stack(
        &text,
        &Expected {
            scope: "demo",
            database: "citus",
            groups: groups(&[
                ("coord1", 0),
                ("coord2", 0),
                ("coord3", 0),
                ("worker1-1", 1),
                ("worker1-2", 1),
                ("worker2-1", 2),
                ("worker2-2", 2),
            ]),
            sync: BTreeMap::from([
                (0, SynchronousMode::Quorum),
                (1, SynchronousMode::On),
                (2, SynchronousMode::On),
            ]),
            router_port: 5000,
            worker_port: Some(5002),
        },
    );
}

/// Scale-out: a spec that gained worker groups (one of 3 members stating nothing, one stating
/// `off`), another database name, no worker port and another router port.
#[test]
fn added_worker_groups_join_the_same_scope_with_their_own_group_and_mode() {
    let text = "name: shop
topology: citus
citus:
  database: shop_dist
  groups:
    - group: 0
      members: 2
      synchronous_mode: on
    - group: 1
      members: [w1a, w1b]
      synchronous_mode: off
    - group: 2
      members: 3
    - group: 7
      members: [w7a, w7b]
      synchronous_mode: on
router:
  rw_port: 6000
  ro_port: 6001
";
    check_citus_stack(
        text,
        &Expected {
            scope: "shop",
            database: "shop_dist",
            groups: groups(&[
                ("coord1", 0),
                ("coord2", 0),
                ("w1a", 1),
                ("w1b", 1),
                ("worker2-1", 2),
                ("worker2-2", 2),
                ("worker2-3", 2),
                ("w7a", 7),
                ("w7b", 7),
            ]),
            sync: BTreeMap::from([
                (0, SynchronousMode::On),
                (1, SynchronousMode::Off),
                (2, SynchronousMode::Quorum),
                (7, SynchronousMode::On),
            ]),
            router_port: 6000,
            worker_port: None,
        },
    );
}
