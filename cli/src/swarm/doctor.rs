//! `doctor`: everything that would stop a deploy of a spec on this swarm, checked without
//! changing anything — the swarm itself, this node's role, nodes, member labels, placement,
//! the image, the secrets, published ports taken by other stacks — and the ports nodes need
//! open between them, with what can be seen of them from this node.

use std::collections::BTreeSet;

use anyhow::Context;
use bollard::query_parameters::ListServicesOptions;

use crate::placement::MEMBER_LABEL_VALUE;
use crate::spec::Cluster;

use super::constraints::unplaceable;
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
        .map(|s| s.docker_name(&cluster.name))
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
    ports(&mut report, &swarm.node_addr, nodes.len() > 1);
    archiving(engine, cluster, &mut report).await;
    Ok(report)
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
