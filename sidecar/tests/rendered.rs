//! Golden files: the configuration the sidecar renders for a Swarm-like member of each of its
//! process modes (patroni.yml plain and Citus, haproxy.cfg, pgbouncer.ini, etcd's command
//! line) is committed in `tests/golden/`; this test fails when one is stale, so every change
//! to what the programs get is seen in review.
//! Rewrite them with `PGSWARM_UPDATE_GOLDEN=1 cargo test -p pgswarm-sidecar --test rendered`.

use std::path::PathBuf;

use pgswarm_contract::{
    Citus, Common, Endpoint, EtcdPeer, PoolMode, Postgres, Role, SynchronousMode,
};
use pgswarm_sidecar::patroni::{self, HostFacts, PatroniCredentials, PatroniSpec, PatroniVersion};
use pgswarm_sidecar::templates::Templates;
use pgswarm_sidecar::{etcd, pooler, router};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn rendered() -> Vec<(&'static str, String)> {
    let etcd_hosts: Vec<Endpoint> = (1..=3)
        .map(|i| Endpoint {
            host: format!("demo_etcd{i}"),
            port: 2379,
        })
        .collect();
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
    let mut postgres = Postgres::default();
    postgres
        .parameters
        .insert("max_connections".into(), "500".into());
    postgres
        .parameters
        .insert("shared_buffers".into(), "256MB".into());
    let mut spec = PatroniSpec {
        postgres: &postgres,
        etcd_hosts: &etcd_hosts,
        rest_port: 8008,
        ttl: 20,
        loop_wait: 5,
        retry_timeout: 5,
        maximum_lag_on_failover: 1_048_576,
        synchronous_mode: SynchronousMode::On,
        citus: None,
    };
    let patroni_yml = patroni::to_text(
        &patroni::render(&Common::new("demo", "demo_pg1"), &spec, &host, &credentials)
            .expect("renders"),
    )
    .expect("serializes");
    let citus = Citus {
        group: 1,
        database: "citus".into(),
    };
    spec.citus = Some(&citus);
    spec.synchronous_mode = SynchronousMode::Quorum;
    let citus_yml = patroni::to_text(
        &patroni::render(&Common::new("demo", "demo_w1a"), &spec, &host, &credentials)
            .expect("renders"),
    )
    .expect("serializes");

    let router_role = Role::Router {
        members: vec!["demo_c1".into(), "demo_c2".into(), "demo_c3".into()],
        worker_members: vec!["demo_w1a".into(), "demo_w1b".into(), "demo_w2a".into()],
        pg_port: 5432,
        rest_port: 8008,
        rw_port: 5000,
        ro_port: 5001,
        worker_port: Some(5002),
        check_interval_ms: 1000,
        fall: 2,
        rise: 1,
        ro_fallback: true,
    };
    let router_config =
        router::RouterConfig::from_contract(&Common::new("demo", "demo_router"), &router_role)
            .expect("a router")
            .expect("valid");
    let haproxy = router::render(&Templates::default(), &router_config).expect("renders");

    let pooler_role = Role::Pooler {
        target: Endpoint {
            host: "demo_router".into(),
            port: 5000,
        },
        port: 6432,
        pool_mode: PoolMode::Transaction,
        pool_size: 20,
        max_client_conn: 1000,
    };
    let pooler_config =
        pooler::PoolerConfig::from_contract(&Common::new("demo", "demo_pooler"), &pooler_role)
            .expect("a pooler")
            .expect("valid");
    let pgbouncer = pooler::render(&Templates::default(), &pooler_config).expect("renders");

    let etcd_role = Role::Etcd {
        initial_cluster: (1..=3)
            .map(|i| EtcdPeer {
                name: format!("demo_etcd{i}"),
                peer_url: format!("http://demo_etcd{i}:2380"),
            })
            .collect(),
        client_port: 2379,
        peer_port: 2380,
    };
    let plan = etcd::plan(&Common::new("demo", "demo_etcd1"), &etcd_role)
        .expect("an etcd member")
        .expect("valid");
    let etcd_args = plan.args.join("\n") + "\n";

    vec![
        ("patroni.yml", patroni_yml),
        ("patroni-citus-worker.yml", citus_yml),
        ("haproxy.cfg", haproxy),
        ("pgbouncer.ini", pgbouncer),
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
