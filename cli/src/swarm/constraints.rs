//! Placement constraints evaluated the way Swarm's scheduler does (`==` and `!=` on node
//! id, hostname, role, platform, node labels and engine labels), so that `deploy` and
//! `doctor` can say which member could not be scheduled, and why, before anything starts.

use crate::spec::{Cluster, Service};

use super::nodes::NodeView;

/// One parsed constraint: `field op value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub field: String,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    /// Parses `node.labels.x == y` (as validated by [`crate::placement::check_constraint`]).
    pub fn parse(text: &str) -> Option<Constraint> {
        let (field, value, equal) = if let Some((f, v)) = text.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = text.split_once("!=") {
            (f, v, false)
        } else {
            return None;
        };
        Some(Constraint {
            field: field.trim().to_string(),
            equal,
            value: value.trim().to_string(),
        })
    }

    /// Whether `node` satisfies this constraint. A label the node lacks is unequal to any
    /// value (Swarm's rule). Node labels and hostnames compare exactly; role, OS and
    /// architecture case-insensitively, as Swarm does.
    pub fn matches(&self, node: &NodeView) -> bool {
        let actual: Option<&str> = match self.field.as_str() {
            "node.id" => Some(&node.id),
            "node.hostname" => Some(&node.hostname),
            "node.role" => Some(&node.role),
            "node.platform.os" => Some(&node.os),
            "node.platform.arch" => Some(&node.arch),
            f => {
                if let Some(key) = f.strip_prefix("node.labels.") {
                    node.labels.get(key).map(String::as_str)
                } else if let Some(key) = f.strip_prefix("engine.labels.") {
                    node.engine_labels.get(key).map(String::as_str)
                } else {
                    None
                }
            }
        };
        let case_insensitive = matches!(
            self.field.as_str(),
            "node.role" | "node.platform.os" | "node.platform.arch"
        );
        let same = match actual {
            Some(a) if case_insensitive => a.eq_ignore_ascii_case(&self.value),
            Some(a) => a == self.value,
            None => false,
        };
        same == self.equal
    }
}

/// Whether `node` satisfies every constraint in `constraints`.
pub fn node_matches(constraints: &[String], node: &NodeView) -> bool {
    constraints
        .iter()
        .all(|c| Constraint::parse(c).is_none_or(|c| c.matches(node)))
}

/// A service whose placement no ready, active node satisfies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    pub service: String,
    /// The first constraint no schedulable node satisfies, when one alone is to blame.
    pub constraint: Option<String>,
    pub message: String,
}

/// Every service of `cluster` that no schedulable node can run, each with the constraint at
/// fault and the fix.
pub fn unplaceable(cluster: &Cluster, nodes: &[NodeView]) -> Vec<Unplaceable> {
    let schedulable: Vec<&NodeView> = nodes.iter().filter(|n| n.is_schedulable()).collect();
    cluster
        .services
        .iter()
        .filter_map(|s| check_service(cluster, s, &schedulable, nodes))
        .collect()
}

fn check_service(
    cluster: &Cluster,
    service: &Service,
    schedulable: &[&NodeView],
    all: &[NodeView],
) -> Option<Unplaceable> {
    let constraints = service.placement.all_constraints();
    if schedulable.iter().any(|n| node_matches(&constraints, n)) {
        return None;
    }
    if schedulable.is_empty() {
        return Some(Unplaceable {
            service: service.name.clone(),
            constraint: None,
            message: format!(
                "{}: no node is ready and active ({}); bring a node back or `docker node \
                 update --availability active NODE`",
                service.name,
                describe_nodes(all)
            ),
        });
    }
    let culprit = constraints
        .iter()
        .find(|c| !schedulable.iter().any(|n| node_matches(&[(*c).clone()], n)))
        .cloned();
    let fix = match (&culprit, &service.placement.member_label) {
        (Some(c), Some(key)) if c.contains(key.as_str()) => format!(
            "run `swarmctl label-nodes -f SPEC` (cluster {}) to put the member labels on nodes",
            cluster.name
        ),
        (Some(c), _) if c.starts_with("node.labels.") => {
            let label = c
                .trim_start_matches("node.labels.")
                .replace(" == ", "=")
                .replace("==", "=");
            format!("label a node: `docker node update --label-add {label} NODE`")
        }
        _ => "change the placement in the spec, or add a node that satisfies it".to_string(),
    };
    let what = match &culprit {
        Some(c) => format!("no ready, active node satisfies the constraint `{c}`"),
        None => format!(
            "no single ready, active node satisfies all of its constraints ({})",
            constraints.join(", ")
        ),
    };
    Some(Unplaceable {
        service: service.name.clone(),
        constraint: culprit,
        message: format!("{}: {what}; {fix}", service.name),
    })
}

fn describe_nodes(nodes: &[NodeView]) -> String {
    if nodes.is_empty() {
        return "the swarm lists no node".into();
    }
    nodes
        .iter()
        .map(|n| {
            format!(
                "{}: {}",
                n.hostname,
                n.unschedulable_reason().unwrap_or_else(|| "ok".into())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub fn node(hostname: &str, labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            id: format!("id-{hostname}"),
            hostname: hostname.into(),
            role: "manager".into(),
            availability: "active".into(),
            state: "ready".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            engine_labels: BTreeMap::new(),
            os: "linux".into(),
            arch: "x86_64".into(),
            addr: "127.0.0.1".into(),
            version: 1,
        }
    }

    #[test]
    fn constraints_follow_swarm_rules() {
        let n = node("a", &[("purpose", "master")]);
        let c = |s: &str| Constraint::parse(s).expect("parses");
        assert!(c("node.labels.purpose == master").matches(&n));
        assert!(!c("node.labels.purpose != master").matches(&n));
        assert!(!c("node.labels.zone == x").matches(&n));
        assert!(c("node.labels.zone != x").matches(&n));
        assert!(c("node.role == Manager").matches(&n));
        assert!(c("node.hostname==a").matches(&n));
        assert!(!c("node.hostname == A").matches(&n));
    }

    #[test]
    fn an_unlabelled_swarm_names_the_member_constraint_and_label_nodes() {
        let cluster = crate::spec::parse("name: demo\ntopology: patroni\n")
            .expect("valid")
            .cluster;
        let nodes = vec![node("vm", &[])];
        let bad = unplaceable(&cluster, &nodes);
        let pg1 = bad.iter().find(|u| u.service == "pg1").expect("pg1 listed");
        assert_eq!(
            pg1.constraint.as_deref(),
            Some("node.labels.pgswarm.demo.pg1 == true")
        );
        assert!(
            pg1.message.contains("swarmctl label-nodes"),
            "{}",
            pg1.message
        );
        assert!(bad.iter().all(|u| u.service != "router"));
    }

    #[test]
    fn drained_nodes_do_not_count() {
        let cluster = crate::spec::parse("name: demo\ntopology: patroni\n")
            .expect("valid")
            .cluster;
        let mut n = node("vm", &[]);
        n.availability = "drain".into();
        let bad = unplaceable(&cluster, &[n]);
        let router = bad.iter().find(|u| u.service == "router").expect("router");
        assert!(
            router.message.contains("availability is drain"),
            "{}",
            router.message
        );
    }
}
