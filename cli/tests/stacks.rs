//! Golden files: every example spec in `stacks/` and the stack file generated from it are
//! committed together; this test fails when a committed stack is stale.
//! Rewrite them with `PGSWARM_UPDATE_GOLDEN=1 cargo test -p swarmctl --test stacks`.

mod common;

use std::path::PathBuf;
use swarmctl::{render, spec};

fn example_specs() -> Vec<PathBuf> {
    let dir = common::repo_root().join("stacks");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".spec.yml"))
        .collect();
    specs.sort();
    specs
}

fn stack_path(spec: &std::path::Path) -> PathBuf {
    PathBuf::from(spec.to_string_lossy().replace(".spec.yml", ".stack.yml"))
}

#[test]
fn there_is_an_example_per_topology() {
    let names: Vec<String> = example_specs()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    for topology in spec::Topology::ALL {
        let file = format!("{topology}.spec.yml");
        assert!(names.contains(&file), "stacks/{file} is missing");
    }
}

#[test]
fn committed_stacks_are_current() {
    let update = std::env::var("PGSWARM_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for spec_path in example_specs() {
        let text = std::fs::read_to_string(&spec_path).expect("spec readable");
        let validated = spec::parse(&text).unwrap_or_else(|e| {
            panic!(
                "{} is invalid:\n{}",
                spec_path.display(),
                e.render(&spec_path.display().to_string())
            )
        });
        assert!(
            validated.warnings.is_empty(),
            "{}: examples should not warn: {:?}",
            spec_path.display(),
            validated.warnings
        );
        let generated = render::stack_yaml(&validated.cluster).expect("renders");
        let stack = stack_path(&spec_path);
        let committed = std::fs::read_to_string(&stack).unwrap_or_default();
        if committed != generated {
            if update {
                // Through a rename, so tests reading the stacks never see half a file.
                let tmp = stack.with_extension("yml.tmp");
                std::fs::write(&tmp, &generated).expect("write golden stack");
                std::fs::rename(&tmp, &stack).expect("replace golden stack");
            } else {
                stale.push(stack.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale stack files {stale:?}: run PGSWARM_UPDATE_GOLDEN=1 cargo test -p swarmctl --test stacks \
         and review the diff"
    );
}

#[test]
fn every_committed_stack_has_its_spec() {
    let dir = common::repo_root().join("stacks");
    for entry in std::fs::read_dir(&dir).expect("stacks/").flatten() {
        let path = entry.path();
        let name = path.to_string_lossy().to_string();
        if name.ends_with(".stack.yml") {
            let spec = PathBuf::from(name.replace(".stack.yml", ".spec.yml"));
            assert!(spec.exists(), "{} has no spec {}", name, spec.display());
        }
    }
}

/// What each example in `stacks/` is for, checked on the generated stacks themselves.
#[test]
fn examples_do_what_they_are_for() {
    let load = |name: &str| -> serde_yaml::Value {
        let path = common::repo_root().join("stacks").join(name);
        let text = std::fs::read_to_string(&path).expect("stack readable");
        serde_yaml::from_str(&text).expect("stack is YAML")
    };
    // Replication example: master and replica pinned by purpose labels, slot derived from the name.
    let rep = load("replication.stack.yml");
    let master = &rep["services"]["pg-master"];
    assert_eq!(
        master["deploy"]["placement"]["constraints"][0],
        "node.labels.purpose == master"
    );
    assert_eq!(master["environment"]["PGSWARM_REPLICA_SLOTS"], "pg_replica");
    let replica = &rep["services"]["pg-replica"];
    assert_eq!(
        replica["deploy"]["placement"]["constraints"][0],
        "node.labels.purpose == worker"
    );
    assert_eq!(replica["environment"]["PGSWARM_PRIMARY_HOST"], "pg-master");
    assert_eq!(replica["environment"]["PGSWARM_SLOT"], "pg_replica");

    // Patroni example: 3 members in synchronous mode, 3 etcd, transaction pooling.
    let ha = load("patroni.stack.yml");
    for pg in ["pg1", "pg2", "pg3"] {
        assert_eq!(
            ha["services"][pg]["environment"]["PGSWARM_SYNCHRONOUS_MODE"],
            "on"
        );
        assert_eq!(
            ha["services"][pg]["environment"]["PGSWARM_ETCD_HOSTS"],
            "etcd1:2379,etcd2:2379,etcd3:2379"
        );
    }
    assert_eq!(
        ha["services"]["pooler"]["environment"]["PGSWARM_POOL_MODE"],
        "transaction"
    );
    assert_eq!(
        ha["services"]["pooler"]["environment"]["PGSWARM_POOLER_TARGET_HOST"],
        "router"
    );
    assert_eq!(
        ha["services"]["router"]["environment"]["PGSWARM_ROUTER_MEMBERS"],
        "pg1,pg2,pg3"
    );

    // Citus example: coordinator group of 3 behind the router, two worker groups of 2.
    let citus = load("citus.stack.yml");
    let router = &citus["services"]["router"]["environment"];
    assert_eq!(router["PGSWARM_ROUTER_MEMBERS"], "coord1,coord2,coord3");
    assert_eq!(
        router["PGSWARM_ROUTER_WORKER_MEMBERS"],
        "worker1a,worker1b,worker2a,worker2b"
    );
    for (member, group) in [("coord1", "0"), ("worker1b", "1"), ("worker2a", "2")] {
        let env = &citus["services"][member]["environment"];
        assert_eq!(env["PGSWARM_CITUS_GROUP"], group, "{member}");
        assert_eq!(env["PGSWARM_CITUS_DATABASE"], "citus", "{member}");
        assert_eq!(env["PGSWARM_CLUSTER"], "citus-demo", "{member}");
    }
    assert_eq!(
        citus["services"]["coord2"]["environment"]["PGSWARM_SYNCHRONOUS_MODE"],
        "quorum"
    );
    assert_eq!(
        citus["services"]["worker2b"]["environment"]["PGSWARM_SYNCHRONOUS_MODE"],
        "on"
    );
}

/// No stack may carry a password: only secret references. Names alone prove nothing (a value
/// can hide under any name), so every service's environment must be exactly what the contract
/// encodes for that member (nothing else can ride along), and every secret variable must hold
/// a path under the secrets directory, never a value.
#[test]
fn committed_stacks_hold_no_password() {
    use pgswarm_contract::{defaults, MemberEnv, Secret};
    let dir = common::repo_root().join("stacks");
    for entry in std::fs::read_dir(&dir).expect("stacks/").flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".stack.yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let stack: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        let services = stack["services"].as_mapping().expect("services");
        for (name, service) in services {
            let mut env = std::collections::BTreeMap::new();
            if let Some(map) = service["environment"].as_mapping() {
                for (k, v) in map {
                    let value = match v {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .expect("a scalar")
                            .trim()
                            .into(),
                    };
                    env.insert(k.as_str().unwrap_or_default().to_string(), value);
                }
            }
            let member = MemberEnv::from_lookup(|k| env.get(k).cloned())
                .unwrap_or_else(|e| panic!("{}: {name:?}: {e}", path.display()));
            let encoded: std::collections::BTreeMap<String, String> =
                member.to_env().into_iter().collect();
            assert_eq!(
                encoded,
                env,
                "{}: {name:?} carries variables outside the contract",
                path.display()
            );
            for secret in Secret::ALL {
                if let Some(value) = env.get(secret.env_var()) {
                    assert!(
                        value.starts_with(&format!("{}/", defaults::SECRETS_DIR)),
                        "{}: {name:?}: {} is not a secret file path",
                        path.display(),
                        secret.env_var()
                    );
                }
            }
        }
        for (name, secret) in stack["secrets"].as_mapping().expect("secrets") {
            assert_eq!(secret["external"], true, "{}: {name:?}", path.display());
            assert!(secret.get("file").is_none());
        }
    }
}
