//! Shared by the integration tests: a generator of random valid cluster specs.
#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Distinct ports well away from the ports Swarm uses.
fn ports(n: usize) -> impl Strategy<Value = Vec<u16>> {
    prop::collection::btree_set(10000u16..60000, n).prop_map(|s| s.into_iter().collect())
}

fn publish_mode() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("ingress"), Just("host"), Just("none")]
}

fn resources() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        (
            1u32..8,
            prop::sample::select(vec!["512M", "1G", "2GiB", "1073741824"])
        )
            .prop_map(
                |(cpus, mem)| Some(json!({"limits": {"cpus": cpus, "memory": mem},
                                      "reservations": {"cpus": "0.5"}}))
            ),
    ]
}

fn placement() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        prop::sample::select(vec!["master", "worker", "db"])
            .prop_map(|v| Some(json!({"labels": {"purpose": v}}))),
        Just(Some(json!({"constraints": ["node.role == manager"]}))),
        Just(Some(
            json!({"labels": {"disk": "ssd"}, "constraints": ["node.platform.os == linux"]})
        )),
    ]
}

/// A member entry named `name`: sometimes just the name, sometimes a mapping.
fn member(name: String, port: Option<u16>) -> impl Strategy<Value = Value> {
    (any::<bool>(), placement(), resources()).prop_map(move |(short, placement, resources)| {
        if short && port.is_none() {
            return Value::String(name.clone());
        }
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        if let Some(p) = placement {
            m.insert("placement".into(), p);
        }
        if let Some(r) = resources {
            m.insert("resources".into(), r);
        }
        if let Some(port) = port {
            m.insert("publish".into(), json!({"port": port, "mode": "host"}));
        }
        Value::Object(m)
    })
}

/// Names `<prefix><n>` for n in `start..start+count`: distinct, and never a generated name.
fn names(prefix: &str, start: usize, count: usize) -> Vec<String> {
    (start..start + count)
        .map(|i| format!("{prefix}{i}"))
        .collect()
}

fn members_value(
    prefix: &'static str,
    start: usize,
    count: usize,
    host_ports: Vec<u16>,
) -> BoxedStrategy<Value> {
    let as_count = Just(json!(count)).boxed();
    let list = names(prefix, start, count)
        .into_iter()
        .enumerate()
        .map(|(i, n)| member(n, host_ports.get(i).copied()).boxed())
        .collect::<Vec<_>>()
        .prop_map(Value::Array)
        .boxed();
    if host_ports.is_empty() {
        prop_oneof![as_count, list].boxed()
    } else {
        list
    }
}

fn common(base: Map<String, Value>) -> impl Strategy<Value = Value> {
    (
        "[a-z][a-z0-9]{0,8}",
        any::<bool>(),
        prop::sample::select(vec![None, Some("10.42.0.0/24"), Some("172.30.0.0/16")]),
        prop::sample::select(vec![None, Some("zone")]),
        prop::sample::select(vec![None, Some("json"), Some("text")]),
        resources(),
    )
        .prop_map(move |(name, encrypted, subnet, zone, log, pg_resources)| {
            let mut spec = base.clone();
            spec.insert("name".into(), json!(name));
            let mut network = json!({"encrypted": encrypted});
            if let Some(s) = subnet {
                network["subnet"] = json!(s);
            }
            spec.insert("network".into(), network);
            if let Some(z) = zone {
                spec.insert("placement".into(), json!({"zone_label": z}));
            }
            if let Some(l) = log {
                spec.insert("log_format".into(), json!(l));
            }
            let mut pg = json!({"parameters": {"max_connections": 300, "shared_buffers": "128MB",
                                               "pg_stat_statements.max": 5000}});
            if let Some(r) = pg_resources {
                pg["resources"] = r;
            }
            spec.insert("postgres".into(), pg);
            Value::Object(spec)
        })
}

fn replication() -> BoxedStrategy<Value> {
    (0usize..4, any::<bool>(), ports(6))
        .prop_flat_map(|(replicas, publish, ports)| {
            let host_ports: Vec<u16> = if publish {
                ports[..replicas].to_vec()
            } else {
                vec![]
            };
            (
                member("main".to_string(), publish.then_some(ports[4])),
                members_value("rep", 1, replicas, host_ports),
                prop::option::of(publish_mode()),
                Just(ports[5]),
            )
        })
        .prop_flat_map(|(primary, replicas, pooler, pooler_port)| {
            let mut spec = Map::new();
            spec.insert("topology".into(), json!("replication"));
            spec.insert(
                "replication".into(),
                json!({"primary": primary, "replicas": replicas}),
            );
            if let Some(mode) = pooler {
                spec.insert(
                    "pooler".into(),
                    json!({"port": pooler_port, "publish": mode, "pool_mode": "session"}),
                );
            }
            common(spec)
        })
        .boxed()
}

fn router_and_pooler(spec: &mut Map<String, Value>, p: &[u16], modes: (&str, &str), citus: bool) {
    let mut router = json!({"rw_port": p[0], "ro_port": p[1], "publish": modes.0,
                            "check_interval_ms": 500, "fall": 3, "rise": 2});
    if citus {
        router["worker_port"] = json!(p[2]);
    }
    spec.insert("router".into(), router);
    spec.insert(
        "pooler".into(),
        json!({"port": p[3], "publish": modes.1, "pool_size": 50, "max_client_conn": 500,
               "pool_mode": "transaction"}),
    );
}

fn patroni() -> BoxedStrategy<Value> {
    (
        1usize..6,
        prop::sample::select(vec![1usize, 3, 5]),
        prop::sample::select(vec!["off", "on", "quorum"]),
        ports(4),
        (publish_mode(), publish_mode()),
        any::<bool>(),
    )
        .prop_flat_map(|(n, etcd, sync, p, modes, pooler)| {
            let sync = if n < 2 { "off" } else { sync };
            (
                members_value("pg", 1, n, vec![]),
                members_value("dcs", 1, etcd, vec![]),
                Just((sync, p, modes, pooler)),
            )
        })
        .prop_flat_map(|(members, etcd, (sync, p, modes, pooler))| {
            let mut spec = Map::new();
            spec.insert("topology".into(), json!("patroni"));
            spec.insert("members".into(), members);
            spec.insert("etcd".into(), json!({"members": etcd}));
            spec.insert(
                "patroni".into(),
                json!({"ttl": 30, "loop_wait": 5, "retry_timeout": 10, "synchronous_mode": sync}),
            );
            router_and_pooler(&mut spec, &p, modes, false);
            if !pooler {
                spec.insert("pooler".into(), json!({"enabled": false}));
            }
            common(spec)
        })
        .boxed()
}

fn citus() -> BoxedStrategy<Value> {
    (
        prop::collection::vec(
            (1usize..4, prop::sample::select(vec!["off", "on", "quorum"])),
            1..4,
        ),
        ports(4),
        (publish_mode(), publish_mode()),
    )
        .prop_flat_map(|(groups, p, modes)| {
            let mut start = 1;
            let group_values: Vec<BoxedStrategy<Value>> = groups
                .iter()
                .enumerate()
                .map(|(g, (size, sync))| {
                    let members = members_value("node", start, *size, vec![]);
                    start += size;
                    let sync = if *size < 2 { "off" } else { *sync };
                    members
                        .prop_map(
                            move |m| json!({"group": g, "members": m, "synchronous_mode": sync}),
                        )
                        .boxed()
                })
                .collect();
            (group_values, Just((p, modes)))
        })
        .prop_flat_map(|(groups, (p, modes))| {
            let mut spec = Map::new();
            spec.insert("topology".into(), json!("citus"));
            spec.insert("citus".into(), json!({"database": "app", "groups": groups}));
            spec.insert("etcd".into(), json!({"members": 3}));
            router_and_pooler(&mut spec, &p, modes, true);
            common(spec)
        })
        .boxed()
}

/// A random spec that must validate.
pub fn valid_spec() -> impl Strategy<Value = String> {
    prop_oneof![replication(), patroni(), citus()]
        .prop_map(|v| serde_yaml::to_string(&v).unwrap_or_default())
}
