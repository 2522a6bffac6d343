//! `label-nodes`: which node runs which member, expressed as the member labels the stack's
//! placement constraints ask for ([`crate::placement::member_label_key`]).
//!
//! Planning is a pure function of the cluster, the nodes and the operator's explicit
//! assignments. A member keeps the node it is already labelled on while that node can run it
//! (its volume lives there); others go where the fewest members of their group already are
//! (then the fewest of the group in the same zone, then the fewest members of the other tier —
//! etcd members avoid database members' nodes and the other way round —, then the fewest
//! members at all), so a group shares a node only when there are fewer nodes than members, and
//! etcd shares a node with the database only when the nodes do not suffice for both (or a kept
//! label or a zone asks for it); each is said in a warning.
//! Applying the plan updates each node with its object version and retries on a conflict.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context};
use bollard::query_parameters::UpdateNodeOptions;

use crate::placement::{member_label_key, MEMBER_LABEL_VALUE};
use crate::spec::{Cluster, Service, ServiceKind};

use super::constraints::node_matches;
use super::engine::is_status;
use super::nodes::NodeView;
use super::{Engine, OpsError};

/// The prefix shared by every member label of `cluster` (`pgswarm.<cluster>.`).
pub fn cluster_label_prefix(cluster: &str) -> String {
    member_label_key(cluster, "")
}

/// Whether `key` is a member label of `cluster`.
pub fn is_cluster_label(cluster: &str, key: &str) -> bool {
    key.strip_prefix(&cluster_label_prefix(cluster))
        .is_some_and(|member| !member.is_empty() && !member.contains('.'))
}

/// The spread group of a service: members of one group should be on distinct nodes.
pub fn group_of(service: &Service) -> String {
    match service.kind {
        ServiceKind::Data { group: Some(g) } => format!("citus group {g}"),
        ServiceKind::Data { group: None } => "data".into(),
        ServiceKind::Etcd => "etcd".into(),
        ServiceKind::Router => "router".into(),
        ServiceKind::Pooler => "pooler".into(),
        ServiceKind::Backup => "backup repository".into(),
    }
}

/// The tier a member avoids sharing a node with: etcd members avoid database members and
/// database members avoid etcd members. When the etcd raft leader dies together with the
/// Patroni leader, the new raft leader restarts every lease at its full TTL, so failover takes
/// several seconds longer than when only the Patroni leader is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Database,
    Etcd,
    Other,
}

fn tier_of(service: &Service) -> Tier {
    match service.kind {
        ServiceKind::Data { .. } => Tier::Database,
        ServiceKind::Etcd => Tier::Etcd,
        _ => Tier::Other,
    }
}

fn tiers_clash(a: Tier, b: Tier) -> bool {
    matches!(
        (a, b),
        (Tier::Database, Tier::Etcd) | (Tier::Etcd, Tier::Database)
    )
}

/// Where one member goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub member: String,
    pub group: String,
    pub label: String,
    pub node_id: String,
    pub hostname: String,
    /// The node's zone, when the spec names a zone label and the node has it.
    pub zone: Option<String>,
    /// Already labelled there before this run.
    pub unchanged: bool,
}

/// Labels to add and remove on one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeChange {
    pub node_id: String,
    pub hostname: String,
    pub add: BTreeSet<String>,
    pub remove: BTreeSet<String>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub assignments: Vec<Assignment>,
    pub changes: Vec<NodeChange>,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }

    /// The plan as a table, one row per member, then the node changes.
    pub fn table(&self) -> String {
        let mut rows = vec![vec![
            "MEMBER".to_string(),
            "GROUP".into(),
            "NODE".into(),
            "ZONE".into(),
            "LABEL".into(),
            "CHANGE".into(),
        ]];
        for a in &self.assignments {
            rows.push(vec![
                a.member.clone(),
                a.group.clone(),
                a.hostname.clone(),
                a.zone.clone().unwrap_or_else(|| "-".into()),
                format!("{}={MEMBER_LABEL_VALUE}", a.label),
                if a.unchanged { "keep" } else { "add" }.into(),
            ]);
        }
        let mut out = super::progress::table(&rows);
        for c in &self.changes {
            for key in &c.remove {
                out.push_str(&format!(
                    "remove {key} from node {} (no member of this cluster runs there any more)\n",
                    c.hostname
                ));
            }
        }
        out
    }
}

/// Parses `--assign MEMBER=NODE` arguments.
pub fn parse_assignments(args: &[String]) -> Result<Vec<(String, String)>, OpsError> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(m, n)| (m.trim().to_string(), n.trim().to_string()))
                .filter(|(m, n)| !m.is_empty() && !n.is_empty())
                .ok_or_else(|| {
                    OpsError::BadAssignment(format!(
                        "--assign {a:?} is not MEMBER=NODE (e.g. --assign pg1=node-a)"
                    ))
                })
        })
        .collect()
}

/// Plans the member labels of `cluster` over `nodes`.
pub fn plan(
    cluster: &Cluster,
    nodes: &[NodeView],
    explicit: &[(String, String)],
) -> Result<Plan, OpsError> {
    let members: Vec<&Service> = cluster.labelled_members().collect();
    let names: Vec<&str> = members.iter().map(|s| s.name.as_str()).collect();
    let mut explicit_by_member: BTreeMap<&str, &NodeView> = BTreeMap::new();
    for (member, node) in explicit {
        if !names.contains(&member.as_str()) {
            return Err(OpsError::BadAssignment(format!(
                "--assign {member}={node}: cluster {} has no member {member:?} that is placed by \
                 node labels; its members are: {}",
                cluster.name,
                names.join(", ")
            )));
        }
        let found = nodes
            .iter()
            .find(|n| n.hostname == *node || n.id == *node)
            .ok_or_else(|| {
                OpsError::BadAssignment(format!(
                    "--assign {member}={node}: the swarm has no node {node:?} (by hostname or \
                     id); its nodes are: {}",
                    nodes
                        .iter()
                        .map(|n| n.hostname.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        explicit_by_member.insert(member.as_str(), found);
    }

    let mut warnings = Vec::new();
    let zone_of = |n: &NodeView| -> Option<String> {
        cluster
            .zone_label
            .as_ref()
            .and_then(|z| n.labels.get(z).cloned())
    };
    // Members placed so far: (node id, member, group, tier).
    let mut placed: Vec<(String, String, String, Tier)> = Vec::new();
    let mut assignments = Vec::new();
    let mut pending = Vec::new();

    for service in &members {
        let Some(label) = service.placement.member_label.clone() else {
            continue;
        };
        let group = group_of(service);
        let current: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| n.labels.get(&label).map(String::as_str) == Some(MEMBER_LABEL_VALUE))
            .collect();
        let chosen: Option<(&NodeView, bool)> =
            if let Some(node) = explicit_by_member.get(service.name.as_str()) {
                if let Some(reason) = node.unschedulable_reason() {
                    warnings.push(format!(
                        "{} is assigned to node {} as asked, but nothing will start there \
                         until it is ready and active ({reason})",
                        service.name, node.hostname
                    ));
                }
                let already = current.len() == 1 && current[0].id == node.id;
                Some((node, already))
            } else if current.len() == 1 && current[0].is_schedulable() {
                Some((current[0], true))
            } else {
                if let Some(old) = current.first() {
                    let why = old
                        .unschedulable_reason()
                        .unwrap_or_else(|| "it is labelled on several nodes".into());
                    warnings.push(format!(
                        "{} moves away from node {} ({why}); its volume stays on that node, \
                         so it starts on the new node from a fresh volume",
                        service.name, old.hostname
                    ));
                }
                None
            };
        match chosen {
            Some((node, unchanged)) => {
                placed.push((
                    node.id.clone(),
                    service.name.clone(),
                    group.clone(),
                    tier_of(service),
                ));
                assignments.push(Assignment {
                    member: service.name.clone(),
                    group,
                    label,
                    node_id: node.id.clone(),
                    hostname: node.hostname.clone(),
                    zone: zone_of(node),
                    unchanged,
                });
            }
            None => pending.push((*service, label, group)),
        }
    }

    for (service, label, group) in pending {
        let tier = tier_of(service);
        let mut own = service.placement.all_constraints();
        own.retain(|c| !c.contains(label.as_str()));
        let candidates: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| n.is_schedulable() && node_matches(&own, n))
            .collect();
        let score = |n: &NodeView| {
            let same_group_here = placed
                .iter()
                .filter(|(id, _, g, _)| *id == n.id && *g == group)
                .count();
            let zone = zone_of(n);
            let same_group_zone = match &zone {
                Some(z) => placed
                    .iter()
                    .filter(|(id, _, g, _)| {
                        *g == group
                            && nodes
                                .iter()
                                .find(|o| o.id == *id)
                                .and_then(zone_of)
                                .as_ref()
                                == Some(z)
                    })
                    .count(),
                None => 0,
            };
            let other_tier_here = placed
                .iter()
                .filter(|(id, _, _, t)| *id == n.id && tiers_clash(tier, *t))
                .count();
            let total_here = placed.iter().filter(|(id, _, _, _)| *id == n.id).count();
            (
                same_group_here,
                same_group_zone,
                other_tier_here,
                total_here,
                n.hostname.clone(),
            )
        };
        let Some(node) = candidates.iter().min_by_key(|n| score(n)) else {
            return Err(OpsError::Unsatisfiable(format!(
                "no ready, active node can run {} of cluster {}{}: bring a node back, make one \
                 active (`docker node update --availability active NODE`), or assign it \
                 explicitly with --assign {}=NODE",
                service.name,
                cluster.name,
                if own.is_empty() {
                    String::new()
                } else {
                    format!(" with the constraints {}", own.join(", "))
                },
                service.name
            )));
        };
        placed.push((
            node.id.clone(),
            service.name.clone(),
            group.clone(),
            tier_of(service),
        ));
        assignments.push(Assignment {
            member: service.name.clone(),
            group,
            label,
            node_id: node.id.clone(),
            hostname: node.hostname.clone(),
            zone: zone_of(node),
            unchanged: false,
        });
    }
    // Spec order in the table.
    assignments.sort_by_key(|a| names.iter().position(|n| *n == a.member));

    // Co-location: members of one group sharing a node.
    let mut by_group_node: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for a in &assignments {
        by_group_node
            .entry((a.group.clone(), a.hostname.clone()))
            .or_default()
            .push(a.member.clone());
    }
    let schedulable = nodes.iter().filter(|n| n.is_schedulable()).count();
    for ((group, host), members) in &by_group_node {
        if members.len() > 1 {
            warnings.push(format!(
                "{group}: {} share node {host} ({schedulable} schedulable node(s) for \
                 {} members): losing that node loses all of them; add nodes and run \
                 label-nodes again to spread them",
                members.join(", "),
                assignments.iter().filter(|a| a.group == *group).count()
            ));
        }
    }

    // etcd members on database members' nodes: the trade, and why it was made.
    let tier_of_member = |member: &str| {
        members
            .iter()
            .find(|s| s.name == member)
            .map_or(Tier::Other, |s| tier_of(s))
    };
    let database = assignments
        .iter()
        .filter(|a| tier_of_member(&a.member) == Tier::Database)
        .count();
    let etcd = assignments
        .iter()
        .filter(|a| tier_of_member(&a.member) == Tier::Etcd)
        .count();
    let too_few = schedulable < database + etcd;
    let mut shared = Vec::new();
    for a in assignments
        .iter()
        .filter(|a| tier_of_member(&a.member) == Tier::Etcd)
    {
        let with: Vec<&str> = assignments
            .iter()
            .filter(|b| b.node_id == a.node_id && tier_of_member(&b.member) == Tier::Database)
            .map(|b| b.member.as_str())
            .collect();
        if with.is_empty() {
            continue;
        }
        let why = if too_few {
            ""
        } else if explicit_by_member.contains_key(a.member.as_str()) {
            " (assigned there with --assign)"
        } else if a.unchanged {
            " (kept: it is labelled there and its volume lives there)"
        } else {
            " (to keep the etcd members on distinct nodes and apart across zones, on nodes \
             that match their constraints)"
        };
        shared.push(format!(
            "{} shares node {} with {}{why}",
            a.member,
            a.hostname,
            with.join(", ")
        ));
    }
    if !shared.is_empty() {
        let remedy = if too_few {
            format!(
                "there are {schedulable} schedulable node(s) for {database} database and {etcd} \
                 etcd members: with {} nodes, label-nodes keeps etcd off the database members' \
                 nodes",
                database + etcd
            )
        } else {
            "a member keeps its node; --assign MEMBER=NODE moves it".to_string()
        };
        warnings.push(format!(
            "etcd on database nodes: {}. When such a node dies, the etcd raft leader can go \
             down with the Patroni leader and every leader lease restarts at its full ttl, so \
             failover takes several seconds longer; {remedy}",
            shared.join("; ")
        ));
    }

    // Label changes per node.
    let mut changes = Vec::new();
    for node in nodes {
        let wanted: BTreeSet<String> = assignments
            .iter()
            .filter(|a| a.node_id == node.id)
            .map(|a| a.label.clone())
            .collect();
        let add: BTreeSet<String> = wanted
            .iter()
            .filter(|k| node.labels.get(*k).map(String::as_str) != Some(MEMBER_LABEL_VALUE))
            .cloned()
            .collect();
        let remove: BTreeSet<String> = node
            .labels
            .keys()
            .filter(|k| is_cluster_label(&cluster.name, k) && !wanted.contains(*k))
            .cloned()
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            changes.push(NodeChange {
                node_id: node.id.clone(),
                hostname: node.hostname.clone(),
                add,
                remove,
            });
        }
    }
    Ok(Plan {
        assignments,
        changes,
        warnings,
    })
}

/// The changes that remove every member label of `cluster` from `nodes`.
pub fn removal(cluster: &str, nodes: &[NodeView]) -> Vec<NodeChange> {
    nodes
        .iter()
        .filter_map(|n| {
            let remove: BTreeSet<String> = n
                .labels
                .keys()
                .filter(|k| is_cluster_label(cluster, k))
                .cloned()
                .collect();
            (!remove.is_empty()).then(|| NodeChange {
                node_id: n.id.clone(),
                hostname: n.hostname.clone(),
                add: BTreeSet::new(),
                remove,
            })
        })
        .collect()
}

/// How many times a node update is tried when another writer changed the node in between.
const UPDATE_ATTEMPTS: u32 = 6;

/// Applies one node's change: read the node, change its labels, update it with the version
/// read; on a version conflict read it again and retry.
pub async fn apply(engine: &Engine, change: &NodeChange) -> anyhow::Result<()> {
    for attempt in 1..=UPDATE_ATTEMPTS {
        let node = engine
            .docker
            .inspect_node(&change.node_id)
            .await
            .with_context(|| format!("cannot inspect node {}", change.hostname))?;
        let version = node
            .version
            .as_ref()
            .and_then(|v| v.index)
            .with_context(|| format!("node {} has no version", change.hostname))?;
        let mut spec = node.spec.clone().unwrap_or_default();
        let mut labels = spec.labels.take().unwrap_or_default();
        for key in &change.remove {
            labels.remove(key);
        }
        for key in &change.add {
            labels.insert(key.clone(), MEMBER_LABEL_VALUE.to_string());
        }
        spec.labels = Some(labels);
        let options = UpdateNodeOptions {
            version: i64::try_from(version).unwrap_or(i64::MAX),
        };
        match engine
            .docker
            .update_node(&change.node_id, spec, options)
            .await
        {
            Ok(()) => {
                tracing::debug!(node = %change.hostname, attempt, "node labels updated");
                return Ok(());
            }
            // 409: a conflict. Docker 20.10 reports swarmkit's "update out of sequence" (the
            // version was stale) as 500; both mean: read the node again and retry.
            Err(e) if (is_status(&e, 409) || is_status(&e, 500)) && attempt < UPDATE_ATTEMPTS => {
                tracing::debug!(node = %change.hostname, attempt, error = %e, "node changed meanwhile; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot update the labels of node {}", change.hostname)
                })
            }
        }
    }
    bail!(
        "node {} kept changing while its labels were updated ({UPDATE_ATTEMPTS} attempts); try again",
        change.hostname
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::constraints::tests::node;

    fn cluster(text: &str) -> Cluster {
        crate::spec::parse(text).expect("valid spec").cluster
    }

    #[test]
    fn one_node_takes_every_member_with_a_warning_per_group() {
        let c = cluster("name: demo\ntopology: patroni\n");
        let plan = plan(&c, &[node("vm", &[])], &[]).expect("plan");
        assert_eq!(plan.assignments.len(), 6);
        assert!(plan.assignments.iter().all(|a| a.hostname == "vm"));
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].add.len(), 6);
        assert!(plan
            .warnings
            .iter()
            .any(|w| w.starts_with("data: pg1, pg2, pg3 share")));
        assert!(plan.warnings.iter().any(|w| w.starts_with("etcd:")));
    }

    #[test]
    fn members_of_a_group_spread_over_nodes_and_zones() {
        let c = cluster("name: demo\ntopology: patroni\nplacement:\n  zone_label: zone\n");
        let nodes = vec![
            node("a1", &[("zone", "a")]),
            node("a2", &[("zone", "a")]),
            node("b1", &[("zone", "b")]),
        ];
        let plan = plan(&c, &nodes, &[]).expect("plan");
        let data: Vec<&Assignment> = plan
            .assignments
            .iter()
            .filter(|a| a.group == "data")
            .collect();
        let hosts: BTreeSet<&str> = data.iter().map(|a| a.hostname.as_str()).collect();
        assert_eq!(hosts.len(), 3, "{plan:?}");
        // The first two data members land in different zones.
        assert_ne!(data[0].zone, data[1].zone);
        // Three nodes for six members: only etcd sharing the database nodes is warned about.
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(
            plan.warnings[0].starts_with("etcd on database nodes"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn drained_nodes_are_skipped_and_a_second_run_is_a_noop() {
        let c = cluster("name: demo\ntopology: patroni\n");
        let mut drained = node("d", &[]);
        drained.availability = "drain".into();
        let mut nodes = vec![node("a", &[]), node("b", &[]), drained];
        let first = plan(&c, &nodes, &[]).expect("plan");
        assert!(first.assignments.iter().all(|a| a.hostname != "d"));
        for change in &first.changes {
            let n = nodes
                .iter_mut()
                .find(|n| n.id == change.node_id)
                .expect("node");
            for k in &change.add {
                n.labels.insert(k.clone(), "true".into());
            }
        }
        let second = plan(&c, &nodes, &[]).expect("plan");
        assert!(second.is_noop(), "{second:?}");
        assert!(second.assignments.iter().all(|a| a.unchanged));
    }

    #[test]
    fn explicit_assignments_win_and_stale_labels_are_removed() {
        let c = cluster("name: demo\ntopology: patroni\n");
        let nodes = vec![
            node(
                "a",
                &[
                    ("pgswarm.demo.pg1", "true"),
                    ("pgswarm.demo.old", "true"),
                    ("pgswarm.other.pg1", "true"),
                ],
            ),
            node("b", &[]),
        ];
        let plan = plan(&c, &nodes, &[("pg1".into(), "b".into())]).expect("plan");
        let pg1 = plan
            .assignments
            .iter()
            .find(|a| a.member == "pg1")
            .expect("pg1");
        assert_eq!(pg1.hostname, "b");
        let a = plan
            .changes
            .iter()
            .find(|c| c.hostname == "a")
            .expect("a changes");
        assert!(a.remove.contains("pgswarm.demo.pg1"));
        assert!(a.remove.contains("pgswarm.demo.old"));
        assert!(!a.remove.contains("pgswarm.other.pg1"));
    }

    #[test]
    fn unknown_members_and_nodes_are_named() {
        let c = cluster("name: demo\ntopology: patroni\n");
        let nodes = vec![node("a", &[])];
        let err = plan(&c, &nodes, &[("pg9".into(), "a".into())]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no member \"pg9\""), "{text}");
        assert!(text.contains("pg1, pg2, pg3"), "{text}");
        let err = plan(&c, &nodes, &[("pg1".into(), "zz".into())]).unwrap_err();
        assert!(err.to_string().contains("no node \"zz\""), "{err}");
        assert!(parse_assignments(&["pg1".into()]).is_err());
    }

    fn hosts_of<'a>(plan: &'a Plan, prefix: &str) -> BTreeSet<&'a str> {
        plan.assignments
            .iter()
            .filter(|a| a.member.starts_with(prefix))
            .map(|a| a.hostname.as_str())
            .collect()
    }

    fn labelled(nodes: &mut [NodeView], host: &str, member: &str) {
        let n = nodes.iter_mut().find(|n| n.hostname == host).expect("node");
        n.labels
            .insert(member_label_key("demo", member), "true".into());
    }

    #[test]
    fn six_nodes_keep_etcd_off_the_database_nodes() {
        let c = cluster("name: demo\ntopology: patroni\n");
        let nodes: Vec<NodeView> = ["n1", "n2", "n3", "n4", "n5", "n6"]
            .iter()
            .map(|h| node(h, &[]))
            .collect();
        let plan = plan(&c, &nodes, &[]).expect("plan");
        let data = hosts_of(&plan, "pg");
        let etcd = hosts_of(&plan, "etcd");
        assert_eq!(data.len(), 3, "{plan:?}");
        assert_eq!(etcd.len(), 3, "{plan:?}");
        assert!(data.is_disjoint(&etcd), "{plan:?}");
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn workers_avoid_etcd_nodes_rather_than_other_database_groups() {
        // Citus: the coordinator group and etcd already have their nodes; the workers go
        // next to the coordinators (another database group) rather than onto etcd's nodes,
        // although both are equally busy.
        let c = cluster(
            "name: demo\ntopology: citus\ncitus:\n  groups:\n    - {group: 0, members: [c1, c2, c3]}\n    - {group: 1, members: [w1a, w1b], synchronous_mode: on}\n",
        );
        let mut nodes: Vec<NodeView> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|h| node(h, &[]))
            .collect();
        let etcd: Vec<String> = c
            .labelled_members()
            .filter(|s| s.kind == ServiceKind::Etcd)
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(etcd.len(), 3, "{etcd:?}");
        for (member, host) in etcd.iter().zip(["a", "b", "c"]) {
            labelled(&mut nodes, host, member);
        }
        for (member, host) in [("c1", "d"), ("c2", "e"), ("c3", "f")] {
            labelled(&mut nodes, host, member);
        }
        let plan = plan(&c, &nodes, &[]).expect("plan");
        let workers = hosts_of(&plan, "w1");
        assert_eq!(workers.len(), 2, "{plan:?}");
        assert!(
            workers.iter().all(|h| ["d", "e", "f"].contains(h)),
            "{plan:?}"
        );
        assert!(
            !plan
                .warnings
                .iter()
                .any(|w| w.starts_with("etcd on database")),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn three_nodes_share_etcd_with_the_database_and_say_so() {
        let c = cluster("name: demo\ntopology: patroni\n");
        let nodes = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        let plan = plan(&c, &nodes, &[]).expect("plan");
        // Each group is still spread over the three nodes.
        assert_eq!(hosts_of(&plan, "pg").len(), 3, "{plan:?}");
        assert_eq!(hosts_of(&plan, "etcd").len(), 3, "{plan:?}");
        let warning = plan
            .warnings
            .iter()
            .find(|w| w.starts_with("etcd on database nodes"))
            .expect("a warning about etcd sharing the database nodes");
        for needle in [
            "etcd1 shares node",
            "raft leader",
            "full ttl",
            "3 schedulable node(s) for 3 database and 3 etcd members",
            "with 6 nodes",
        ] {
            assert!(warning.contains(needle), "{needle:?} in {warning}");
        }
        // No group shares a node with itself, so no co-location warning.
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    }

    #[test]
    fn a_labelled_etcd_member_keeps_its_database_node() {
        let c = cluster("name: demo\ntopology: patroni\n");
        let mut nodes: Vec<NodeView> = ["n1", "n2", "n3", "n4", "n5", "n6"]
            .iter()
            .map(|h| node(h, &[]))
            .collect();
        labelled(&mut nodes, "n1", "pg1");
        labelled(&mut nodes, "n1", "etcd1");
        let plan = plan(&c, &nodes, &[]).expect("plan");
        let etcd1 = plan
            .assignments
            .iter()
            .find(|a| a.member == "etcd1")
            .expect("etcd1");
        assert_eq!(etcd1.hostname, "n1");
        assert!(etcd1.unchanged);
        assert!(plan
            .changes
            .iter()
            .all(|c| c.remove.is_empty() && c.hostname != "n1"));
        // The others avoid each other's nodes.
        let data = hosts_of(&plan, "pg");
        let others: BTreeSet<&str> = plan
            .assignments
            .iter()
            .filter(|a| a.member.starts_with("etcd") && a.member != "etcd1")
            .map(|a| a.hostname.as_str())
            .collect();
        assert_eq!(data.len(), 3, "{plan:?}");
        assert_eq!(others.len(), 2, "{plan:?}");
        assert!(data.is_disjoint(&others), "{plan:?}");
        let warning = plan
            .warnings
            .iter()
            .find(|w| w.starts_with("etcd on database nodes"))
            .expect("warning");
        assert!(
            warning.contains("etcd1 shares node n1 with pg1 (kept"),
            "{warning}"
        );
        assert!(warning.contains("--assign MEMBER=NODE"), "{warning}");
    }

    #[test]
    fn zones_come_before_keeping_etcd_apart() {
        // Zone b has one node: its etcd member shares it with a database member rather than
        // put two etcd members in one zone (losing that zone would lose etcd's quorum).
        let c = cluster("name: demo\ntopology: patroni\nplacement:\n  zone_label: zone\n");
        let nodes = vec![
            node("a1", &[("zone", "a")]),
            node("a2", &[("zone", "a")]),
            node("a3", &[("zone", "a")]),
            node("b1", &[("zone", "b")]),
            node("c1", &[("zone", "c")]),
            node("c2", &[("zone", "c")]),
        ];
        let plan = plan(&c, &nodes, &[]).expect("plan");
        let zones = |prefix: &str| -> BTreeSet<Option<String>> {
            plan.assignments
                .iter()
                .filter(|a| a.member.starts_with(prefix))
                .map(|a| a.zone.clone())
                .collect()
        };
        assert_eq!(zones("pg").len(), 3, "{plan:?}");
        assert_eq!(zones("etcd").len(), 3, "{plan:?}");
        let data = hosts_of(&plan, "pg");
        let etcd = hosts_of(&plan, "etcd");
        assert_eq!(
            data.intersection(&etcd).copied().collect::<Vec<_>>(),
            vec!["b1"],
            "{plan:?}"
        );
        let warning = plan
            .warnings
            .iter()
            .find(|w| w.starts_with("etcd on database nodes"))
            .expect("warning");
        assert!(warning.contains("shares node b1"), "{warning}");
        assert!(warning.contains("apart across zones"), "{warning}");
    }

    #[test]
    fn cluster_labels_are_told_apart_from_other_clusters() {
        assert!(is_cluster_label("demo", "pgswarm.demo.pg1"));
        assert!(!is_cluster_label("demo", "pgswarm.demo2.pg1"));
        assert!(!is_cluster_label("demo", "pgswarm.demo."));
        assert!(member_label_key("demo", "pg1").starts_with(&cluster_label_prefix("demo")));
    }
}
