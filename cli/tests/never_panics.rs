//! Whatever it is given, parsing and validating a spec returns a result and never panics; a
//! spec that validates always renders to a stack that is YAML again.

mod common;

use proptest::prelude::*;
use serde_yaml::Value;
use swarmctl::{render, spec};

/// Parses, validates and, when valid, renders; fails the case on anything odd.
fn exercise(text: &str) -> Result<(), TestCaseError> {
    match spec::parse(text) {
        Ok(v) => {
            let yaml = render::stack_yaml(&v.cluster)
                .map_err(|e| TestCaseError::fail(format!("render failed: {e}\n{text}")))?;
            serde_yaml::from_str::<Value>(&yaml)
                .map_err(|e| TestCaseError::fail(format!("stack is not YAML: {e}\n{yaml}")))?;
        }
        Err(e) => {
            prop_assert!(
                !e.errors.is_empty(),
                "an error without problems for\n{}",
                text
            );
            for p in &e.errors {
                prop_assert!(!p.message.is_empty());
            }
            let _ = e.render("spec");
        }
    }
    Ok(())
}

/// Words that steer random documents into the spec's own fields.
const KEYS: &[&str] = &[
    "name",
    "topology",
    "image",
    "log_format",
    "postgres",
    "parameters",
    "superuser",
    "replication_user",
    "resources",
    "limits",
    "reservations",
    "cpus",
    "memory",
    "members",
    "replication",
    "primary",
    "replicas",
    "patroni",
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "synchronous_mode",
    "citus",
    "database",
    "groups",
    "group",
    "etcd",
    "router",
    "enabled",
    "rw_port",
    "ro_port",
    "worker_port",
    "publish",
    "port",
    "mode",
    "check_interval_ms",
    "fall",
    "rise",
    "pooler",
    "pool_mode",
    "pool_size",
    "max_client_conn",
    "network",
    "encrypted",
    "subnet",
    "volumes",
    "driver",
    "driver_opts",
    "placement",
    "zone_label",
    "labels",
    "constraints",
];

const SCALARS: &[&str] = &[
    "patroni",
    "citus",
    "replication",
    "on",
    "off",
    "quorum",
    "host",
    "ingress",
    "none",
    "transaction",
    "pg1",
    "router",
    "etcd1",
    "10.0.0.0/8",
    "512M",
    "node.role == manager",
    "",
    "-",
    "Ünïcödé",
    "a b",
    "demo",
];

fn arb_yaml() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        (0u64..70000).prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        prop::sample::select(SCALARS).prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Sequence),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(KEYS).prop_map(|k| Value::String(k.to_string())),
                        inner.clone(),
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|entries| Value::Mapping(entries.into_iter().collect())),
        ]
    })
}

/// Replaces the node reached by following `choices` (child indexes, modulo) with `new`.
fn mutate(value: &mut Value, choices: &[usize], new: Value) {
    match (choices.split_first(), value) {
        (Some((&c, rest)), Value::Mapping(m)) if !m.is_empty() => {
            let i = c % m.len();
            if let Some((_, v)) = m.iter_mut().nth(i) {
                mutate(v, rest, new);
            }
        }
        (Some((&c, rest)), Value::Sequence(s)) if !s.is_empty() => {
            let i = c % s.len();
            mutate(&mut s[i], rest, new);
        }
        (_, v) => *v = new,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        exercise(&text)?;
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        exercise(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn arbitrary_yaml_never_panics(value in arb_yaml()) {
        let text = serde_yaml::to_string(&value).unwrap_or_default();
        exercise(&text)?;
    }

    #[test]
    fn mutated_valid_specs_never_panic(
        text in common::valid_spec(),
        choices in prop::collection::vec(any::<usize>(), 0..6),
        new in arb_yaml(),
    ) {
        let mut value: Value = serde_yaml::from_str(&text)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        mutate(&mut value, &choices, new);
        let text = serde_yaml::to_string(&value).unwrap_or_default();
        exercise(&text)?;
    }

    #[test]
    fn random_valid_specs_validate_and_render(text in common::valid_spec()) {
        let v = spec::parse(&text)
            .map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render("spec"))))?;
        let c = &v.cluster;
        // Every member is one task with its own volume and a placement; names are unique.
        let mut names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        prop_assert_eq!(before, names.len());
        for s in c.data_members().chain(c.etcd_members()) {
            prop_assert_eq!(s.replicas, 1);
            prop_assert!(s.volume.is_some());
            prop_assert!(!s.placement.all_constraints().is_empty());
        }
        exercise(&text)?;
    }
}

#[test]
fn hostile_documents_are_errors_not_panics() {
    let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n\
                  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e]\n\
                  g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nname: x\ntopology: patroni\n";
    for text in [
        nested.as_str(),
        laughs,
        "---\nname: a\n---\nname: b\n",
        "name: demo\ntopology: patroni\nmembers: 18446744073709551615\n",
        "name: demo\ntopology: citus\ncitus:\n  groups:\n    - {group: 4294967295, members: 3}\n",
        "!!binary aGVsbG8=",
        "name: demo\ntopology: patroni\npostgres: {parameters: {a: [1]}}\n",
        "name: demo\ntopology: patroni\n<<: {image: x}\n",
        "\u{feff}name: demo\ntopology: patroni\n",
    ] {
        let result = spec::parse(text);
        if let Err(e) = &result {
            assert!(!e.errors.is_empty());
        }
    }
}
