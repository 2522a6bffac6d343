//! A spec `swarmctl validate` accepts can never produce a member that refuses to start.
//!
//! Generated specs vary what the validator allows (timings, parameters, role names, member
//! names and counts, topologies, synchronous modes, router and pooler ports). For every spec
//! it accepts, each service's environment is read back from the rendered stack file, decoded
//! with the contract (`MemberEnv::from_lookup`), and handed to the sidecar's own checks and
//! renderers for that mode: Patroni's configuration, the PostgreSQL settings, etcd's plan,
//! HAProxy's and PgBouncer's files. Each accepted spec is also held against Patroni's and
//! PostgreSQL's documented limits, so removing a rule from the contract (on both sides at once)
//! still fails here.

use std::collections::BTreeMap;

use pgswarm_contract::{MemberEnv, Role};
use pgswarm_sidecar::patroni::{self, HostFacts, PatroniCredentials, PatroniSpec, PatroniVersion};
use pgswarm_sidecar::postgres::Server;
use pgswarm_sidecar::router::{self, RouterConfig};
use pgswarm_sidecar::templates::Templates;
use pgswarm_sidecar::{etcd, pooler};
use proptest::prelude::*;
use serde_yaml::Value;
use swarmctl::{render, spec};

/// Patroni's documented minimums (its configuration validator), independent of `contract`.
const PATRONI_MIN_TTL: u32 = 20;
const PATRONI_MIN_LOOP_WAIT: u32 = 1;
const PATRONI_MIN_RETRY_TIMEOUT: u32 = 3;
/// Parameters the sidecar (or Patroni) must set itself on every member.
const SET_BY_THE_SIDECAR: &[&str] = &["cluster_name", "port", "listen_addresses"];

/// Every service's environment in the rendered stack file, by service name.
fn stack_environments(stack: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let doc: Value = serde_yaml::from_str(stack).expect("the stack is YAML");
    let mut out = BTreeMap::new();
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        return out;
    };
    for (name, service) in services {
        let mut env = BTreeMap::new();
        if let Some(map) = service.get("environment").and_then(Value::as_mapping) {
            for (k, v) in map {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?} is not a scalar"),
                };
                env.insert(k.as_str().expect("a variable name").to_string(), value);
            }
        }
        out.insert(name.as_str().expect("a service name").to_string(), env);
    }
    out
}

/// Runs the sidecar's checks and renderers of `member`'s mode; the error says which refused.
fn sidecar_accepts(member: &MemberEnv, bin_dir: &str) -> Result<(), String> {
    let templates = Templates::new(None);
    let common = &member.common;
    match &member.role {
        Role::Primary { .. } | Role::Replica { .. } => {
            pgswarm_sidecar::check_role_names(common).map_err(|e| e.to_string())?;
            let mut with_bin = member.clone();
            if let Role::Primary { postgres, .. } | Role::Replica { postgres, .. } =
                &mut with_bin.role
            {
                postgres.bin_dir = Some(bin_dir.to_string());
            }
            let server = Server::new(&with_bin, templates).map_err(|e| format!("{e:#}"))?;
            server.settings(&[]).map_err(|e| format!("{e:#}"))?;
        }
        Role::Patroni { .. } => {
            pgswarm_sidecar::check_role_names(common).map_err(|e| e.to_string())?;
            let spec = PatroniSpec::from_role(&member.role).ok_or("not a Patroni role")?;
            let host = HostFacts {
                bin_dir: bin_dir.to_string(),
                allowed_cidrs: vec!["10.0.0.0/24".into()],
                patroni_version: PatroniVersion::parse("patroni 4.0.7"),
                current_address: Some("10.0.0.7".into()),
                liveness_port: Some(8010),
            };
            let credentials = PatroniCredentials {
                superuser_password: "s".into(),
                replication_password: "r".into(),
                rest_password: "p".into(),
            };
            patroni::render(common, &spec, &host, &credentials).map_err(|e| e.to_string())?;
        }
        Role::Etcd { .. } => {
            etcd::plan(common, &member.role)
                .ok_or("not an etcd role")?
                .map_err(|e| e.to_string())?;
        }
        Role::Router { .. } => {
            let config = RouterConfig::from_contract(common, &member.role)
                .ok_or("not a router role")?
                .map_err(|e| e.to_string())?;
            router::render(&templates, &config).map_err(|e| format!("{e:#}"))?;
        }
        Role::Pooler { .. } => {
            let config = pooler::PoolerConfig::from_contract(common, &member.role)
                .ok_or("not a pooler role")?
                .map_err(|e| e.to_string())?;
            pooler::render(&templates, &config).map_err(|e| format!("{e:#}"))?;
        }
        Role::Backup {
            members,
            pg_port,
            member_data_root,
            member_run_dir,
            ..
        } => {
            let settings = common.backup.as_ref().ok_or("backup settings missing")?;
            let tls = pgswarm_sidecar::backup::TlsFiles {
                ca: "/ca".into(),
                cert: "/cert".into(),
                key: "/key".into(),
            };
            let view = pgswarm_sidecar::backup::MembersView {
                hosts: members,
                pg_port: *pg_port,
                data_root: member_data_root,
                run_dir: member_run_dir,
            };
            pgswarm_sidecar::backup::repo_conf(common, settings, &view, &tls, Some("p"));
        }
    }
    Ok(())
}

/// What Patroni and PostgreSQL themselves demand of an accepted spec's members.
fn meets_the_documented_limits(member: &MemberEnv) -> Result<(), String> {
    if member.common.superuser == member.common.replication_user {
        return Err("the superuser is also the replication user".into());
    }
    let postgres = match &member.role {
        Role::Patroni {
            postgres,
            ttl,
            loop_wait,
            retry_timeout,
            ..
        } => {
            if *ttl < PATRONI_MIN_TTL
                || *loop_wait < PATRONI_MIN_LOOP_WAIT
                || *retry_timeout < PATRONI_MIN_RETRY_TIMEOUT
                || u64::from(*loop_wait) + 2 * u64::from(*retry_timeout) > u64::from(*ttl)
            {
                return Err(format!(
                    "ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry_timeout} break \
                     Patroni's limits"
                ));
            }
            postgres
        }
        Role::Primary { postgres, .. } | Role::Replica { postgres, .. } => postgres,
        _ => return Ok(()),
    };
    for name in SET_BY_THE_SIDECAR {
        if postgres.parameters.contains_key(*name) {
            return Err(format!("`{name}` reached the member's parameters"));
        }
    }
    Ok(())
}

/// Everything about an accepted spec's services, or the first thing wrong.
fn check_accepted(text: &str, bin_dir: &str) -> Result<usize, String> {
    let validated = match spec::parse(text) {
        Ok(v) => v,
        Err(_) => return Ok(0),
    };
    let stack = render::stack_yaml(&validated.cluster).map_err(|e| e.to_string())?;
    let envs = stack_environments(&stack);
    if envs.len() != validated.cluster.services.len() {
        return Err(format!(
            "{} services in the stack, {} in the model",
            envs.len(),
            validated.cluster.services.len()
        ));
    }
    for (service, env) in &envs {
        let member = MemberEnv::from_lookup(|k| env.get(k).cloned())
            .map_err(|e| format!("{service}: the environment does not decode: {e}"))?;
        let model = validated
            .cluster
            .services
            .iter()
            .find(|s| &s.name == service)
            .ok_or_else(|| format!("{service} is not in the model"))?;
        if member != model.env {
            return Err(format!(
                "{service}: the decoded environment differs from the model"
            ));
        }
        sidecar_accepts(&member, bin_dir)
            .map_err(|e| format!("{service}: the sidecar refuses it: {e}"))?;
        meets_the_documented_limits(&member).map_err(|e| format!("{service}: {e}"))?;
    }
    Ok(envs.len())
}

fn timing() -> impl Strategy<Value = String> {
    (
        prop::option::of(0u32..=45),
        prop::option::of(0u32..=12),
        prop::option::of(0u32..=12),
        prop::sample::select(vec!["", "off", "on", "quorum"]),
    )
        .prop_map(|(ttl, loop_wait, retry, sync)| {
            let mut s = String::from("patroni:\n");
            for (k, v) in [
                ("ttl", ttl),
                ("loop_wait", loop_wait),
                ("retry_timeout", retry),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!("  {k}: {v}\n"));
                }
            }
            if !sync.is_empty() {
                s.push_str(&format!("  synchronous_mode: {sync}\n"));
            }
            s
        })
}

fn postgres() -> impl Strategy<Value = String> {
    let parameters = prop::sample::subsequence(
        vec![
            ("work_mem", "64MB"),
            ("shared_buffers", "256MB"),
            ("max_connections", "200"),
            ("cluster_name", "mine"),
            ("port", "5433"),
            ("listen_addresses", "'*'"),
            ("synchronous_standby_names", "'*'"),
            ("citus.shard_count", "32"),
            ("statement_timeout", "0"),
            ("tcp_keepalives_idle", "120"),
        ],
        0..=4,
    );
    (
        prop::sample::select(vec!["", "postgres", "admin", "replicator"]),
        prop::sample::select(vec!["", "replicator", "repl", "postgres"]),
        parameters,
    )
        .prop_map(|(su, repl, params)| {
            let mut s = String::from("postgres:\n");
            if !su.is_empty() {
                s.push_str(&format!("  superuser: {su}\n"));
            }
            if !repl.is_empty() {
                s.push_str(&format!("  replication_user: {repl}\n"));
            }
            if !params.is_empty() {
                s.push_str("  parameters:\n");
                for (k, v) in params {
                    s.push_str(&format!("    {k}: {v}\n"));
                }
            }
            s
        })
}

fn members(prefix: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..=4).prop_map(|n| n.to_string()),
        prop::collection::btree_set("[a-z][a-z0-9-]{0,6}[a-z0-9]", 1..=3).prop_map(move |names| {
            let list: Vec<String> = names.into_iter().map(|n| format!("{prefix}{n}")).collect();
            format!("[{}]", list.join(", "))
        }),
    ]
}

fn topology_section() -> impl Strategy<Value = String> {
    prop_oneof![
        (members("r"), 0u32..=2).prop_map(|(replicas, etcd)| {
            let _ = etcd;
            format!("topology: replication\nreplication:\n  replicas: {replicas}\npooler:\n  enabled: true\n")
        }),
        (
            members("pg"),
            prop::sample::select(vec![1u32, 3, 5]),
            timing()
        )
            .prop_map(|(m, etcd, timing)| {
                format!("topology: patroni\nmembers: {m}\netcd:\n  members: {etcd}\n{timing}")
            }),
        (
            1u32..=2,
            prop::sample::select(vec!["on", "off", "quorum"]),
            2u32..=3,
            timing()
        )
            .prop_map(|(workers, sync, size, timing)| {
                let mut s = String::from(
                    "topology: citus\ncitus:\n  groups:\n    - group: 0\n      members: 3\n",
                );
                for g in 1..=workers {
                    s.push_str(&format!(
                        "    - group: {g}\n      members: {size}\n      synchronous_mode: {sync}\n"
                    ));
                }
                s.push_str(&timing);
                s
            }),
    ]
}

fn spec_text() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9]{0,8}",
        topology_section(),
        postgres(),
        prop::option::of(6400u16..6500),
    )
        .prop_map(|(name, topology, postgres, pooler_port)| {
            let mut s = format!("name: {name}\n{topology}{postgres}");
            if let Some(port) = pooler_port {
                if !s.contains("\npooler:") {
                    s.push_str(&format!("pooler:\n  port: {port}\n"));
                }
            }
            s
        })
}

fn fake_bin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("postgres"), "").expect("a stand-in postgres file");
    dir
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn every_accepted_spec_starts_every_member(text in spec_text()) {
        let bin = fake_bin_dir();
        let bin = bin.path().display().to_string();
        if let Err(why) = check_accepted(&text, &bin) {
            prop_assert!(false, "{}\n--- spec ---\n{}", why, text);
        }
    }
}

/// The generator reaches accepted specs of every topology (a generator that only produced
/// refused specs would make the property above vacuous).
#[test]
fn the_generator_reaches_accepted_specs_of_every_topology() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let bin = fake_bin_dir();
    let bin = bin.path().display().to_string();
    let mut runner = TestRunner::new(Config::default());
    let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..400 {
        let text = spec_text().new_tree(&mut runner).expect("a spec").current();
        if let Ok(v) = spec::parse(&text) {
            *accepted.entry(v.cluster.topology.to_string()).or_default() += 1;
        }
        check_accepted(&text, &bin).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
    for topology in ["replication", "patroni", "citus"] {
        assert!(
            accepted.get(topology).copied().unwrap_or(0) > 0,
            "no accepted {topology} spec among 400: {accepted:?}"
        );
    }
}

/// The two specs that used to pass `validate` and crash-loop every member.
#[test]
fn specs_every_member_would_refuse_are_refused_by_validate() {
    let base = "name: demo\ntopology: patroni\n";
    let err = spec::parse(&format!("{base}patroni:\n  retry_timeout: 2\n")).unwrap_err();
    let text = err.render("spec.yml");
    assert!(text.contains("patroni.retry_timeout"), "{text}");
    assert!(text.contains("set it to 3 or more"), "{text}");
    let err = spec::parse(&format!(
        "{base}postgres:\n  parameters:\n    cluster_name: mine\n"
    ))
    .unwrap_err();
    let text = err.render("spec.yml");
    assert!(text.contains("postgres.parameters.cluster_name"), "{text}");
    assert!(text.contains("managed by pgswarm"), "{text}");
    let err = spec::parse(&format!(
        "{base}postgres:\n  superuser: admin\n  replication_user: admin\n"
    ))
    .unwrap_err();
    assert!(err.render("s").contains("postgres.replication_user"));
}
