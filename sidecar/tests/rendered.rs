//! Golden files: the configuration the sidecar renders for members of each of its process
//! modes (patroni.yml plain and Citus, haproxy.cfg, pgbouncer.ini, etcd's command line) is
//! committed in `tests/golden/`; this test fails when one is stale, so every change to what the
//! programs get is seen in review.
//!
//! The goldens are chained to the CLI's: each member's environment is read from a stack file
//! `swarmctl generate` wrote (`stacks/*.stack.yml`, kept current by swarmctl's own golden
//! test) and decoded with the contract, exactly as the sidecar does in the container. A change
//! on either side of the contract shows up here.
//! Rewrite them with `PGSWARM_UPDATE_GOLDEN=1 cargo test -p pgswarm-sidecar --test rendered`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pgswarm_contract::MemberEnv;
use pgswarm_sidecar::patroni::{self, HostFacts, PatroniCredentials, PatroniSpec, PatroniVersion};
use pgswarm_sidecar::templates::Templates;
use pgswarm_sidecar::{etcd, pooler, router};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The environment of `service` in the committed stack `stack` (e.g. `patroni`), decoded.
fn member_of(stack: &str, service: &str) -> MemberEnv {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../stacks")
        .join(format!("{stack}.stack.yml"));
    let text = std::fs::read_to_string(&path).expect("a committed stack");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let env: BTreeMap<String, String> = doc["services"][service]["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{service} in {}", path.display()))
        .iter()
        .map(|(k, v)| {
            let value = match v {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .expect("a scalar")
                    .trim()
                    .into(),
            };
            (k.as_str().expect("a name").to_string(), value)
        })
        .collect();
    MemberEnv::from_lookup(|k| env.get(k).cloned()).expect("the environment decodes")
}

fn patroni_yml(member: &MemberEnv) -> String {
    let credentials = PatroniCredentials {
        superuser_password: "<superuser password>".into(),
        replication_password: "<replication password>".into(),
        rest_password: "<rest password>".into(),
    };
    let host = HostFacts {
        bin_dir: "/usr/lib/postgresql/17/bin".into(),
        allowed_cidrs: vec!["10.0.1.0/24".into()],
        patroni_version: Some(PatroniVersion {
            major: 4,
            minor: 0,
            patch: 7,
        }),
        current_address: Some("10.0.1.5".into()),
        liveness_port: Some(40123),
    };
    let spec = PatroniSpec::from_role(&member.role).expect("a Patroni member");
    patroni::to_text(&patroni::render(&member.common, &spec, &host, &credentials).expect("renders"))
        .expect("serializes")
}

fn rendered() -> Vec<(&'static str, String)> {
    let patroni_yml_text = patroni_yml(&member_of("patroni", "pg1"));
    let citus_yml = patroni_yml(&member_of("citus", "worker1a"));

    let router = member_of("citus", "router");
    let router_config = router::RouterConfig::from_contract(&router.common, &router.role)
        .expect("a router")
        .expect("valid");
    let haproxy = router::render(&Templates::default(), &router_config).expect("renders");

    let pgbouncer_of = |stack: &str| {
        let pooler = member_of(stack, "pooler");
        let pooler_config = pooler::PoolerConfig::from_contract(&pooler.common, &pooler.role)
            .expect("a pooler")
            .expect("valid");
        pooler::render(&Templates::default(), &pooler_config).expect("renders")
    };
    let pgbouncer = pgbouncer_of("patroni");
    // TLS required: ssl parameters, hostssl lines, verify-ca logins; PgBouncer's TLS.
    let patroni_tls_yml = patroni_yml(&member_of("patroni-tls", "pg1"));
    let pgbouncer_tls = pgbouncer_of("patroni-tls");

    let etcd = member_of("patroni", "etcd1");
    let plan = etcd::plan(&etcd.common, &etcd.role)
        .expect("an etcd member")
        .expect("valid");
    let etcd_args = plan.args.join("\n") + "\n";

    vec![
        ("patroni.yml", patroni_yml_text),
        ("patroni-citus-worker.yml", citus_yml),
        ("haproxy.cfg", haproxy),
        ("pgbouncer.ini", pgbouncer),
        ("patroni-tls.yml", patroni_tls_yml),
        ("pgbouncer-tls.ini", pgbouncer_tls),
        ("etcd.args", etcd_args),
    ]
}

#[test]
fn committed_configurations_are_current() {
    let update = std::env::var("PGSWARM_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let dir = golden_dir();
    let mut stale = Vec::new();
    for (name, text) in rendered() {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != text {
            if update {
                std::fs::create_dir_all(&dir).expect("creating tests/golden");
                std::fs::write(&path, &text).expect("writing a golden file");
            } else {
                stale.push(name);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale golden files in {}: {stale:?}; review the change and rewrite them with \
         PGSWARM_UPDATE_GOLDEN=1 cargo test -p pgswarm-sidecar --test rendered",
        dir.display()
    );
}
