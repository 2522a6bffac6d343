//! `doctor`: everything that would stop a deploy of a spec on this swarm, checked without
//! changing anything — the swarm itself, this node's role, nodes, member labels, placement,
//! the image, the secrets, published ports taken by other stacks — and the ports nodes need
//! open between them, with what can be seen of them from this node. For a deployed cluster
//! it also asks every etcd member whether it runs and sees a leader, and says when etcd has
//! lost its quorum and what to do.

use std::collections::BTreeSet;

use anyhow::Context;
use bollard::query_parameters::ListServicesOptions;

use pgswarm_contract::ctl::{self, EtcdStatusReply, EtcdTarget, Request};
use pgswarm_contract::Role;

use crate::placement::MEMBER_LABEL_VALUE;
use crate::spec::Cluster;

use super::constraints::unplaceable;
use super::job;
use super::observe::docker_view;
use super::progress::table;
use super::{nodes, secrets, Engine, STACK_NAMESPACE_LABEL, SWARM_PORTS};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Not a problem for a deploy by swarmctl, but worth knowing.
    Warn,
    /// Would stop a deploy.
    Fail,
    /// Information only.
    Info,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Info => "info",
        }
    }
}

/// One finding.
#[derive(Debug, Clone)]
pub struct Check {
    pub verdict: Verdict,
    pub what: String,
    pub detail: String,
}

/// Every finding.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, verdict: Verdict, what: &str, detail: impl Into<String>) {
        self.checks.push(Check {
            verdict,
            what: what.to_string(),
            detail: detail.into(),
        });
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    pub fn render(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .checks
            .iter()
            .map(|c| {
                vec![
                    c.verdict.as_str().to_string(),
                    c.what.clone(),
                    c.detail.clone(),
                ]
            })
            .collect();
        table(&rows)
    }
}

/// Sockets this machine listens on, from `/proc/net/{tcp,tcp6,udp,udp6}`: (port, protocol).
fn local_listeners() -> BTreeSet<(u16, &'static str)> {
    let mut out = BTreeSet::new();
    for (file, proto, listen_state) in [
        ("/proc/net/tcp", "tcp", Some("0A")),
        ("/proc/net/tcp6", "tcp", Some("0A")),
        ("/proc/net/udp", "udp", None),
        ("/proc/net/udp6", "udp", None),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            if listen_state.is_some_and(|s| s != *state) {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                out.insert((port, proto));
            }
        }
    }
    out
}

/// Runs every check of `cluster` against the swarm.
pub async fn run(engine: &Engine, cluster: &Cluster) -> anyhow::Result<Report> {
    let mut report = Report::default();
    report.add(
        Verdict::Ok,
        "docker daemon",
        format!("reachable at {}", engine.endpoint),
    );
    let swarm = engine.swarm_state().await?;
    if !swarm.is_active() {
        report.add(
            Verdict::Fail,
            "swarm",
            format!(
                "this engine is not in a swarm (state {}): `docker swarm init`, or `swarmctl \
                 up` on a single machine",
                swarm.state
            ),
        );
        ports(&mut report, &swarm.node_addr, false);
        return Ok(report);
    }
    report.add(Verdict::Ok, "swarm", "active");
    if swarm.is_manager {
        report.add(Verdict::Ok, "this node", "a manager");
    } else {
        report.add(
            Verdict::Fail,
            "this node",
            "a worker: deploy from a manager node",
        );
        ports(&mut report, &swarm.node_addr, false);
        return Ok(report);
    }

    let nodes = nodes::list(engine).await?;
    let schedulable = nodes.iter().filter(|n| n.is_schedulable()).count();
    let unusable: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            n.unschedulable_reason()
                .map(|r| format!("{} ({r})", n.hostname))
        })
        .collect();
    report.add(
        if schedulable == 0 {
            Verdict::Fail
        } else {
            Verdict::Ok
        },
        "nodes",
        format!(
            "{} node(s), {schedulable} ready and active{}",
            nodes.len(),
            if unusable.is_empty() {
                String::new()
            } else {
                format!("; not usable: {}", unusable.join(", "))
            }
        ),
    );

    for member in cluster.labelled_members() {
        let Some(key) = &member.placement.member_label else {
            continue;
        };
        let on: Vec<&str> = nodes
            .iter()
            .filter(|n| n.labels.get(key).map(String::as_str) == Some(MEMBER_LABEL_VALUE))
            .map(|n| n.hostname.as_str())
            .collect();
        let what = format!("label {}", member.name);
        match on.as_slice() {
            [] => report.add(
                Verdict::Fail,
                &what,
                format!(
                    "no node has {key}={MEMBER_LABEL_VALUE}: run `swarmctl label-nodes -f SPEC`"
                ),
            ),
            [one] => report.add(Verdict::Ok, &what, format!("on node {one}")),
            many => report.add(
                Verdict::Fail,
                &what,
                format!(
                    "{key} is on {} nodes ({}): the member could start on either, away from \
                     its volume; run `swarmctl label-nodes -f SPEC` to keep one",
                    many.len(),
                    many.join(", ")
                ),
            ),
        }
    }
    let bad = unplaceable(cluster, &nodes);
    if bad.is_empty() {
        report.add(
            Verdict::Ok,
            "placement",
            format!("every service of {} fits a ready node", cluster.name),
        );
    }
    // A missing member label is reported above already.
    for u in bad.into_iter().filter(|u| {
        !cluster
            .service(&u.service)
            .and_then(|s| s.placement.member_label.as_ref())
            .is_some_and(|key| {
                u.constraint
                    .as_ref()
                    .is_some_and(|c| c.contains(key.as_str()))
            })
    }) {
        report.add(Verdict::Fail, "placement", u.message);
    }

    if engine.has_image(&cluster.image).await? {
        report.add(
            Verdict::Ok,
            "image",
            format!("{} is on this node", cluster.image),
        );
    } else {
        report.add(
            Verdict::Fail,
            "image",
            format!(
                "{0} is not on this node: `scripts/build-image.sh {0}` from the repository",
                cluster.image
            ),
        );
    }
    if nodes.len() > 1 {
        report.add(
            Verdict::Info,
            "image",
            "every node that runs a member needs the image too (this checks only this node)",
        );
    }

    let missing = secrets::missing(engine, cluster).await?;
    let names: Vec<String> = missing
        .iter()
        .map(|s| cluster.secret_docker_name(*s))
        .collect();
    if names.is_empty() {
        report.add(Verdict::Ok, "secrets", "all present");
    } else {
        report.add(
            Verdict::Warn,
            "secrets",
            format!(
                "missing: {} (`swarmctl deploy` creates them with random passwords; a plain \
                 `docker stack deploy` would fail)",
                names.join(", ")
            ),
        );
    }

    match super::engine::local_ipvs(engine) {
        Some(true) => report.add(
            Verdict::Ok,
            "ipvs",
            "service virtual IPs and the routing mesh work",
        ),
        Some(false) => report.add(Verdict::Warn, "ipvs", super::engine::NO_IPVS),
        None => {}
    }
    published_ports(engine, cluster, &mut report).await?;
    etcd_quorum(engine, cluster, &nodes, &mut report).await?;
    ports(&mut report, &swarm.node_addr, nodes.len() > 1);
    archiving(engine, cluster, &mut report).await;
    Ok(report)
}

/// How long asking the etcd members may take, a one-off task included.
const ETCD_STATUS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// The etcd members of `cluster` as `ctl etcd-status` wants them: each one's host from its
/// own entry in the initial cluster (its service name on the stack's network).
pub fn etcd_targets(cluster: &Cluster) -> Vec<EtcdTarget> {
    cluster
        .etcd_members()
        .filter_map(|s| {
            let Role::Etcd {
                initial_cluster,
                client_port,
                peer_port,
            } = &s.env.role
            else {
                return None;
            };
            let me = initial_cluster
                .iter()
                .find(|p| p.name == s.env.common.member)?;
            let host = me
                .peer_url
                .strip_prefix("http://")?
                .rsplit_once(':')?
                .0
                .to_string();
            Some(EtcdTarget {
                name: s.env.common.member.clone(),
                host,
                client_port: *client_port,
                peer_port: *peer_port,
            })
        })
        .collect()
}

/// For a deployed cluster with etcd: whether etcd has a quorum, asked from a container on
/// the cluster's network (a local one, else a one-off task, so a manager that runs no member
/// can tell too).
async fn etcd_quorum(
    engine: &Engine,
    cluster: &Cluster,
    nodes: &[nodes::NodeView],
    report: &mut Report,
) -> anyhow::Result<()> {
    let targets = etcd_targets(cluster);
    if targets.is_empty() {
        return Ok(());
    }
    let views = docker_view(engine, cluster, nodes).await?;
    if views.iter().all(|v| v.task_state == "not deployed") {
        report.add(
            Verdict::Info,
            "etcd quorum",
            format!("{} is not deployed: nothing to ask", cluster.name),
        );
        return Ok(());
    }
    let container = views.iter().find_map(|v| v.container.clone());
    let argv = Request::EtcdStatus {
        members: targets.clone(),
    }
    .argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let asked = tokio::time::timeout(
        ETCD_STATUS_PATIENCE,
        job::run_ctl(engine, cluster, container.as_deref(), &argv),
    )
    .await;
    let reply = match asked {
        Ok(Ok(out)) => ctl::read_reply::<EtcdStatusReply>(out.exit_code, &out.stdout, &out.stderr)
            .map_err(anyhow::Error::from),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "no answer within {} s",
            ETCD_STATUS_PATIENCE.as_secs()
        )),
    };
    match reply {
        Ok(reply) => {
            let (verdict, detail) = etcd_verdict(cluster, &reply);
            report.add(verdict, "etcd quorum", detail);
        }
        Err(e) => report.add(
            Verdict::Warn,
            "etcd quorum",
            format!("could not ask the etcd members: {e:#}"),
        ),
    }
    Ok(())
}

/// The verdict on etcd's answers, with which members answer, which do not, and what to do.
pub fn etcd_verdict(cluster: &Cluster, reply: &EtcdStatusReply) -> (Verdict, String) {
    let total = reply.members.len();
    let with_leader = reply.with_leader();
    let without_leader: Vec<&str> = reply
        .members
        .iter()
        .filter(|m| m.running && !m.has_leader)
        .map(|m| m.name.as_str())
        .collect();
    let down: Vec<String> = reply
        .members
        .iter()
        .filter(|m| !m.running && !m.has_leader)
        .map(|m| format!("{} ({})", m.name, m.detail))
        .collect();
    let absent: Vec<String> = reply
        .members
        .iter()
        .filter(|m| !m.has_leader)
        .map(|m| {
            format!(
                "`docker service ps {}`",
                super::service_name(&cluster.name, &m.name)
            )
        })
        .collect();
    let list = |names: &[&str]| {
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    if with_leader.len() == total {
        return (
            Verdict::Ok,
            format!("all {total} members see a leader ({})", list(&with_leader)),
        );
    }
    let not_answering = if down.is_empty() {
        "none".to_string()
    } else {
        down.join("; ")
    };
    if reply.has_quorum() {
        return (
            Verdict::Warn,
            format!(
                "quorum held by {} of {total} ({}); running without a leader: {}; not \
                 answering: {not_answering}. Patroni works, but one more lost member stops \
                 it: bring the others back ({}); a member that lost its volume rejoins by \
                 itself",
                with_leader.len(),
                list(&with_leader),
                list(&without_leader),
                absent.join(", ")
            ),
        );
    }
    (
        Verdict::Fail,
        format!(
            "etcd has lost its quorum: {} of {total} see a leader ({}), a majority ({}) must; \
             running without a leader: {}; not answering: {not_answering}. Patroni cannot \
             renew its leader lock: the primary steps down and writes stop. Bring members back \
             ({}: a node down, drained or without its member label); once a majority runs, \
             etcd elects a leader and members that lost their volume rejoin by themselves. If \
             a majority is lost for good, see \"etcd lost for good\" in the README",
            with_leader.len(),
            list(&with_leader),
            total / 2 + 1,
            list(&without_leader),
            absent.join(", ")
        ),
    )
}

/// With backups on and the cluster deployed: WAL archiving on each primary is not failing.
async fn archiving(engine: &Engine, cluster: &Cluster, report: &mut Report) {
    if super::backup::repository(cluster).is_err() {
        return;
    }
    let Ok(status) = super::status::read(engine, cluster).await else {
        return;
    };
    if status.archiver.is_empty() {
        report.add(
            Verdict::Warn,
            "WAL archiving",
            "no primary answered: cannot tell whether WAL reaches the backup repository",
        );
    }
    for a in &status.archiver {
        if a.stuck {
            report.add(
                Verdict::Fail,
                "WAL archiving",
                format!(
                    "failing on {}: the last attempt ({}, {} s ago) failed, {} failures in all; \
                     the repository may be unreachable, full or refusing the certificate \
                     (`swarmctl logs {}` shows pgBackRest's error)",
                    a.member,
                    a.last_failed_wal.as_deref().unwrap_or("?"),
                    a.last_failed_age_s.unwrap_or(0),
                    a.failed,
                    a.member
                ),
            );
        } else {
            report.add(
                Verdict::Ok,
                "WAL archiving",
                format!(
                    "{}: {} segments archived, last {}",
                    a.member,
                    a.archived,
                    a.last_archived_age_s
                        .map_or("never".into(), |s| format!("{s} s ago"))
                ),
            );
        }
    }
}

/// Published ports of `cluster` that a service of another stack already publishes.
async fn published_ports(
    engine: &Engine,
    cluster: &Cluster,
    report: &mut Report,
) -> anyhow::Result<()> {
    let services = engine
        .docker
        .list_services(None::<ListServicesOptions>)
        .await
        .context("cannot list services")?;
    let mut taken: Vec<(u16, String)> = Vec::new();
    for s in services {
        let stack = s
            .spec
            .as_ref()
            .and_then(|sp| sp.labels.as_ref())
            .and_then(|l| l.get(STACK_NAMESPACE_LABEL).cloned());
        if stack.as_deref() == Some(cluster.name.as_str()) {
            continue;
        }
        let name = s
            .spec
            .as_ref()
            .and_then(|sp| sp.name.clone())
            .unwrap_or_default();
        for p in s
            .endpoint
            .and_then(|e| e.ports)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.published_port)
        {
            if let Ok(port) = u16::try_from(p) {
                taken.push((port, name.clone()));
            }
        }
    }
    let mut clash = false;
    for service in &cluster.services {
        for p in &service.ports {
            if let Some((_, other)) = taken.iter().find(|(t, _)| *t == p.port) {
                clash = true;
                report.add(
                    Verdict::Fail,
                    "published port",
                    format!(
                        "{} publishes port {}, which service {other} already publishes; pick \
                         another port in the spec",
                        service.name, p.port
                    ),
                );
            }
        }
    }
    if !clash {
        report.add(
            Verdict::Ok,
            "published ports",
            "none taken by another service",
        );
    }
    Ok(())
}

/// The ports nodes need between them, with what this node listens on.
fn ports(report: &mut Report, node_addr: &str, multi_node: bool) {
    let listening = local_listeners();
    for (port, proto, what) in SWARM_PORTS {
        let here = if listening.contains(&(port, proto)) {
            "listening here"
        } else if port == 4789 || (port == 7946 && !multi_node) {
            "not listening here (opened when needed)"
        } else {
            "not listening here"
        };
        report.add(
            Verdict::Info,
            &format!("port {port}/{proto}"),
            format!("{what}: must be open between nodes; {here}"),
        );
    }
    if node_addr.starts_with("127.") {
        report.add(
            Verdict::Info,
            "advertise address",
            format!(
                "{node_addr}: a loopback address, so no other node can join this swarm \
                 (fine for one machine)"
            ),
        );
    }
    report.add(
        Verdict::Info,
        "encrypted overlay",
        "needs IP protocol 50 (ESP) between nodes as well",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse, Topology};
    use pgswarm_contract::ctl::EtcdMemberStatus;

    fn cluster() -> Cluster {
        let text = crate::spec::starter_spec(Topology::Patroni, "demo").expect("starter");
        parse(&text).expect("valid").cluster
    }

    fn reply(states: [(bool, bool); 3]) -> EtcdStatusReply {
        EtcdStatusReply {
            members: states
                .iter()
                .enumerate()
                .map(|(i, &(running, has_leader))| EtcdMemberStatus {
                    name: format!("etcd{}", i + 1),
                    running,
                    has_leader,
                    detail: if running {
                        "peer port: ok".into()
                    } else {
                        "peer port: nothing listening".into()
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn etcd_targets_come_from_each_members_own_entry() {
        let targets = etcd_targets(&cluster());
        assert_eq!(targets.len(), 3);
        assert_eq!(targets[0].to_arg(), "etcd1=etcd1:2379:2380");
    }

    #[test]
    fn a_lost_quorum_fails_and_names_who_answers_and_what_to_do() {
        let c = cluster();
        let (v, text) = etcd_verdict(&c, &reply([(true, true); 3]));
        assert_eq!(v, Verdict::Ok, "{text}");

        let (v, text) = etcd_verdict(&c, &reply([(true, true), (true, true), (false, false)]));
        assert_eq!(v, Verdict::Warn, "{text}");
        assert!(text.contains("docker service ps demo_etcd3"), "{text}");

        let (v, text) = etcd_verdict(&c, &reply([(true, false), (false, false), (false, false)]));
        assert_eq!(v, Verdict::Fail, "{text}");
        for needle in [
            "lost its quorum",
            "running without a leader: etcd1",
            "etcd2 (peer port: nothing listening)",
            "docker service ps demo_etcd2",
            "etcd lost for good",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }
}
