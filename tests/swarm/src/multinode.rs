//! Scenarios that only a multi-node swarm has, on the test bed of `scripts/testbed.sh`: a node
//! powered off, cut off, frozen, drained, and the node of the router and the pooler lost.
//!
//! One Patroni cluster in synchronous mode (3 members and 3 etcd members spread over the nodes
//! by `swarmctl label-nodes`) serves every scenario. In each, one client writes through the
//! router and one through PgBouncer, recording every acknowledged commit; afterwards every
//! acknowledged commit must be on the leader, no member may have been re-initialised, and (for
//! a partition) every commit the cut-off primary acknowledged after the cut must be there too.
//! Durations are reported, never asserted.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgswarm_contract::{Mode, Role};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::docker::{docker_async, set_host_answers};
use crate::patroni::{describe, PatroniCluster};
use crate::pg::{wait_until, Check};
use crate::probe::{ProbeLog, WriteProbe};
use crate::scenarios::{
    ensure_not_reinitialised, identities, replaced_and_healthy, BASELINE, DEPLOY_TIMEOUT,
    RECOVERY_TIMEOUT,
};
use crate::testbed::{Node, Testbed};

/// How long a node stays down, cut off or frozen after a new leader is elected: long enough
/// for Swarm to mark it down (about 15 s of missed heartbeats) and reschedule what can move.
const OUTAGE_AFTER_FAILOVER: Duration = Duration::from_secs(20);

/// The names of the multi-node scenarios, as `swarm-bench --scenario` takes them.
pub const SCENARIOS: [&str; 5] = [
    "node-loss",
    "partition",
    "freeze",
    "drain",
    "router-node-loss",
];

/// What one multi-node scenario saw.
#[derive(Debug, Clone, Default)]
pub struct NodeScenarioReport {
    pub name: String,
    /// The node that was disrupted.
    pub node: String,
    pub old_leader: String,
    pub new_leader: String,
    /// Longest time without an acknowledged commit through the router, after the disruption.
    pub gap_router: Duration,
    /// The same through PgBouncer.
    pub gap_pooler: Duration,
    /// Failed attempts through the router and through PgBouncer after the disruption.
    pub errors_router: usize,
    pub errors_pooler: usize,
    /// Acknowledged commits through the router and PgBouncer.
    pub acknowledged: usize,
    /// Acknowledged commits (router, PgBouncer, direct) missing afterwards.
    pub lost: usize,
    /// Commits the cut-off primary acknowledged to a client connected to it after the cut.
    pub acked_after_cut: usize,
    /// When the cut-off primary answered its last commit attempt with an acknowledgement
    /// (seconds after the cut), if it did.
    pub last_isolated_ack_s: Option<f64>,
    /// Time from the disruption until a new leader is listed.
    pub leader_after: Option<Duration>,
    /// Time from the disruption until every member streams again.
    pub settled_after: Duration,
}

impl NodeScenarioReport {
    /// The larger of the two write gaps.
    pub fn gap(&self) -> Duration {
        self.gap_router.max(self.gap_pooler)
    }

    /// Client errors through the router and PgBouncer.
    pub fn errors(&self) -> usize {
        self.errors_router + self.errors_pooler
    }
}

impl fmt::Display for NodeScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {}: leader {} -> {}; write gap {:.2} s via router, {:.2} s via pooler; client \
             errors {} / {}; acknowledged {}; lost {}; acknowledged by the cut-off primary after \
             the cut {}{}; new leader after {}; settled after {:.1} s",
            self.name,
            self.node,
            self.old_leader,
            self.new_leader,
            self.gap_router.as_secs_f64(),
            self.gap_pooler.as_secs_f64(),
            self.errors_router,
            self.errors_pooler,
            self.acknowledged,
            self.lost,
            self.acked_after_cut,
            self.last_isolated_ack_s
                .map(|s| format!(" (last {s:.1} s after the cut)"))
                .unwrap_or_default(),
            self.leader_after
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            self.settled_after.as_secs_f64()
        )
    }
}

/// The Patroni cluster of the multi-node scenarios: synchronous mode, spread over the bed.
pub struct MultiNodeCluster {
    pub bed: Testbed,
    pub cluster: PatroniCluster,
    table_counter: u32,
}

impl MultiNodeCluster {
    /// Deploys the cluster `name` with `image` on the bed and waits until it is ready; fails
    /// when the members or the etcd members do not end up on distinct nodes.
    pub async fn deploy(bed: Testbed, name: &str, image: &str) -> Result<MultiNodeCluster> {
        let spec = bed.patroni_spec(name, image, true)?;
        let cluster = PatroniCluster::deploy(name, &spec, DEPLOY_TIMEOUT).await?;
        let mc = MultiNodeCluster {
            bed,
            cluster,
            table_counter: 0,
        };
        mc.ensure_spread().await?;
        Ok(mc)
    }

    /// `swarmctl status --output json` run against every node of the bed (each a manager),
    /// and once more from the first with `SWARMCTL_REMOTE=1` (Patroni asked from a one-off
    /// task, as from a manager that runs no member): every database member must show a role,
    /// a state, a timeline, and a lag unless it leads, whichever node it runs on. Returns one
    /// line per run.
    pub async fn status_everywhere(&self) -> Result<Vec<String>> {
        let spec = self.cluster.dep.spec_path();
        let mut lines = Vec::new();
        let runs = self
            .bed
            .nodes
            .iter()
            .map(|n| (n, false))
            .chain(self.bed.nodes.first().map(|n| (n, true)));
        for (node, remote) in runs {
            let mut cmd = tokio::process::Command::new(crate::image::swarmctl_path());
            cmd.args(["status", "--output", "json", "-f"])
                .arg(&spec)
                .env("DOCKER_HOST", &node.host);
            if remote {
                cmd.env("SWARMCTL_REMOTE", "1");
            }
            let out = cmd.output().await.context("cannot run swarmctl status")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success(),
                "swarmctl status on {} failed ({}): {stdout}{}",
                node.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let status: serde_json::Value = serde_json::from_str(&stdout)
                .with_context(|| format!("swarmctl status on {} printed no JSON", node.name))?;
            let mut seen = Vec::new();
            for m in status["members"].as_array().into_iter().flatten() {
                if m["kind"] != "postgres" {
                    continue;
                }
                let name = m["member"].as_str().unwrap_or("?");
                let role = m["role"].as_str().unwrap_or("");
                ensure!(
                    !role.is_empty() && role != "-" && m["timeline"].is_number(),
                    "swarmctl status on {} shows no role or timeline for {name}: {status}",
                    node.name
                );
                ensure!(
                    role == "leader" || m["lag_mb"].is_number(),
                    "swarmctl status on {} shows no lag for the replica {name}: {status}",
                    node.name
                );
                seen.push(format!(
                    "{name} {role} on {} lag {}",
                    m["node"].as_str().unwrap_or("?"),
                    m["lag_mb"]
                ));
            }
            ensure!(
                seen.len() == self.cluster.members.len(),
                "swarmctl status on {} lists {} database members, not {}: {status}",
                node.name,
                seen.len(),
                self.cluster.members.len()
            );
            lines.push(format!(
                "status from {}{}: {}",
                node.name,
                if remote { " (one-off task)" } else { "" },
                seen.join(", ")
            ));
        }
        Ok(lines)
    }

    /// The node that runs the running container of service `key`.
    pub async fn node_of(&self, key: &str) -> Result<Node> {
        let container = self
            .cluster
            .dep
            .container(key)
            .await?
            .ok_or_else(|| anyhow!("service {key} has no running container"))?;
        self.bed.node_of_container(&container).cloned()
    }

    /// Fails unless the database members, and the etcd members, each run on distinct nodes
    /// (as many as the bed has).
    async fn ensure_spread(&self) -> Result<()> {
        let etcd: Vec<String> = self
            .cluster
            .dep
            .stack
            .services_in_mode(Mode::Etcd)?
            .into_iter()
            .map(|s| s.key)
            .collect();
        for (what, keys) in [("database", &self.cluster.members), ("etcd", &etcd)] {
            let mut nodes = Vec::new();
            for key in keys.iter() {
                nodes.push((key.clone(), self.node_of(key).await?.name));
            }
            let distinct: BTreeSet<&String> = nodes.iter().map(|(_, n)| n).collect();
            let want = keys.len().min(self.bed.nodes.len());
            ensure!(
                distinct.len() == want,
                "the {what} members are not spread over the nodes: {nodes:?}"
            );
            info!(?nodes, "{what} members placed");
        }
        Ok(())
    }

    fn next_table(&mut self, prefix: &str) -> String {
        self.table_counter += 1;
        format!("{}_{}", prefix.replace('-', "_"), self.table_counter)
    }

    /// Runs the multi-node scenario `name` (one of [`SCENARIOS`]).
    pub async fn run(&mut self, name: &str) -> Result<NodeScenarioReport> {
        match name {
            "node-loss" => self.node_loss().await,
            "partition" => self.partition().await,
            "freeze" => self.freeze().await,
            "drain" => self.drain().await,
            "router-node-loss" => self.router_node_loss().await,
            other => bail!(
                "no multi-node scenario {other:?}; they are: {}",
                SCENARIOS.join(", ")
            ),
        }
    }

    /// Scenario 1: every process of the leader's node SIGKILLed at once, then the node
    /// started again: a new leader, nothing acknowledged lost, the old leader back as a
    /// replica with the same data.
    pub async fn node_loss(&mut self) -> Result<NodeScenarioReport> {
        let table = self.next_table("node_loss");
        let bed = self.bed.clone();
        self.disrupt_leader(
            "node-loss",
            &table,
            |node| {
                let bed = bed.clone();
                async move { bed.power_off(&node).await }
            },
            |node| {
                let bed = bed.clone();
                async move { bed.start(&node).await }
            },
        )
        .await
    }

    /// Scenario 3: every process of the leader's node frozen (like a hung VM), then thawed.
    pub async fn freeze(&mut self) -> Result<NodeScenarioReport> {
        let table = self.next_table("freeze");
        let bed = self.bed.clone();
        self.disrupt_leader(
            "freeze",
            &table,
            |node| {
                let bed = bed.clone();
                async move { bed.freeze(&node).await }
            },
            |node| {
                let bed = bed.clone();
                async move { bed.thaw(&node).await }
            },
        )
        .await
    }

    /// Scenario 4: the leader's node drained (`docker node update --availability drain`),
    /// then made active again: the member stops cleanly (Patroni hands the leader key over),
    /// nothing is lost, and it comes back on the same node with its data.
    pub async fn drain(&mut self) -> Result<NodeScenarioReport> {
        let table = self.next_table("drain");
        let bed = self.bed.clone();
        let availability = |value: &'static str| {
            let bed = bed.clone();
            move |node: Node| {
                let bed = bed.clone();
                async move {
                    let id = bed.node_id(&node).await?;
                    docker_async(&["node", "update", "--availability", value, &id]).await?;
                    info!(node = %node.name, availability = value, "node availability");
                    Ok(())
                }
            }
        };
        self.disrupt_leader(
            "drain",
            &table,
            availability("drain"),
            availability("active"),
        )
        .await
    }

    /// Takes the leader's node out with `down`, waits for a new leader and for Swarm to notice,
    /// brings the node back with `up`, and checks everything that must never happen.
    async fn disrupt_leader<D, DF, U, UF>(
        &mut self,
        name: &str,
        table: &str,
        down: D,
        up: U,
    ) -> Result<NodeScenarioReport>
    where
        D: FnOnce(Node) -> DF,
        DF: std::future::Future<Output = Result<()>>,
        U: FnOnce(Node) -> UF,
        UF: std::future::Future<Output = Result<()>>,
    {
        let cluster = &self.cluster;
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        let before = identities(cluster).await?;
        let old_leader = cluster.leader().await?;
        let timeline_before = timeline_of(cluster, &old_leader).await?;
        let old_container = cluster
            .dep
            .container(&old_leader)
            .await?
            .ok_or_else(|| anyhow!("leader {old_leader} has no running container"))?;
        let node = self.node_of(&old_leader).await?;
        self.bed.use_manager_other_than(&node)?;
        let probes = Probes::start(cluster, table).await?;
        tokio::time::sleep(BASELINE).await;

        info!(scenario = name, node = %node.name, leader = %old_leader, "disrupting the leader's node");
        let at = Instant::now();
        let outcome = async {
            down(node.clone()).await?;
            let new_leader = wait_new_leader(cluster, &old_leader, timeline_before).await?;
            let leader_after = at.elapsed();
            tokio::time::sleep(OUTAGE_AFTER_FAILOVER).await;
            Ok::<_, anyhow::Error>((new_leader, leader_after))
        }
        .await;
        // The node comes back whatever happened, so the next scenario finds three nodes.
        let restored = up(node.clone()).await;
        let (new_leader, leader_after) = outcome?;
        restored?;
        wait_rejoined(cluster, &old_leader, &old_container).await?;
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        probes.wait_both_acked_since(at).await?;
        let settled_after = at.elapsed();
        let (router, pooler, missing, stopped) = probes.finish(cluster, table).await?;
        ensure_not_reinitialised(cluster, &before).await?;
        let report = NodeScenarioReport {
            name: name.to_string(),
            node: node.name.clone(),
            old_leader,
            new_leader,
            gap_router: gap_until_stop(&router, at, stopped),
            gap_pooler: gap_until_stop(&pooler, at, stopped),
            errors_router: router.errors_after(at),
            errors_pooler: pooler.errors_after(at),
            acknowledged: router.acks.len() + pooler.acks.len(),
            lost: missing.len(),
            acked_after_cut: 0,
            last_isolated_ack_s: None,
            leader_after: Some(leader_after),
            settled_after,
        };
        info!(%report, "multi-node scenario measured");
        ensure!(
            router.acks_after(at) > 0 && pooler.acks_after(at) > 0,
            "no write was acknowledged after the disruption (router {}, pooler {}): {report}",
            router.acks_after(at),
            pooler.acks_after(at)
        );
        ensure_nothing_lost(cluster, &missing, &report)?;
        Ok(report)
    }

    /// Scenario 2: the leader's node cut off (its link down, its processes alive). A client
    /// connected to the cut-off primary keeps trying to commit; every commit it gets
    /// acknowledged after the cut must be on the cluster once the node is back (synchronous
    /// mode: none may be lost); a new leader is elected on the majority side; healing brings
    /// the old leader back as a replica without re-initialising it.
    pub async fn partition(&mut self) -> Result<NodeScenarioReport> {
        let table = self.next_table("partition");
        let direct_table = format!("{table}_direct");
        let cluster = &self.cluster;
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        let before = identities(cluster).await?;
        let old_leader = cluster.leader().await?;
        let timeline_before = timeline_of(cluster, &old_leader).await?;
        let old_container = cluster
            .dep
            .container(&old_leader)
            .await?
            .ok_or_else(|| anyhow!("leader {old_leader} has no running container"))?;
        let node = self.node_of(&old_leader).await?;
        self.bed.use_manager_other_than(&node)?;
        let probes = Probes::start(cluster, &table).await?;
        let setup = cluster.rw.connect(Duration::from_secs(60)).await?;
        setup
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {direct_table} (id bigint PRIMARY KEY)"
            ))
            .await
            .with_context(|| format!("cannot create {direct_table}"))?;
        let direct = DirectClient::start(cluster, &old_leader, &old_container, &direct_table)?;
        tokio::time::sleep(BASELINE).await;

        info!(node = %node.name, leader = %old_leader, "cutting the leader's node off");
        let at = Instant::now();
        let outcome = async {
            self.bed.partition(&node).await?;
            let new_leader = wait_new_leader(cluster, &old_leader, timeline_before).await?;
            let leader_after = at.elapsed();
            tokio::time::sleep(OUTAGE_AFTER_FAILOVER).await;
            Ok::<_, anyhow::Error>((new_leader, leader_after))
        }
        .await;
        let direct_log = direct.stop().await;
        let healed = self.bed.heal(&node).await;
        let (new_leader, leader_after) = outcome?;
        healed?;
        wait_rejoined(cluster, &old_leader, &old_container).await?;
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        probes.wait_both_acked_since(at).await?;
        let settled_after = at.elapsed();
        let (router, pooler, mut missing, stopped) = probes.finish(cluster, &table).await?;
        // Every commit the cut-off primary acknowledged must have survived.
        let client = cluster.rw.connect(Duration::from_secs(60)).await?;
        let direct_missing = direct_log.missing(&client, &direct_table).await?;
        missing.extend(direct_missing.iter().copied());
        ensure_not_reinitialised(cluster, &before).await?;
        let after_cut: Vec<&crate::probe::Ack> =
            direct_log.acks.iter().filter(|a| a.at > at).collect();
        let report = NodeScenarioReport {
            name: "partition".into(),
            node: node.name.clone(),
            old_leader,
            new_leader,
            gap_router: gap_until_stop(&router, at, stopped),
            gap_pooler: gap_until_stop(&pooler, at, stopped),
            errors_router: router.errors_after(at),
            errors_pooler: pooler.errors_after(at),
            acknowledged: router.acks.len() + pooler.acks.len(),
            lost: missing.len(),
            acked_after_cut: after_cut.len(),
            last_isolated_ack_s: after_cut
                .last()
                .map(|a| a.at.duration_since(at).as_secs_f64()),
            leader_after: Some(leader_after),
            settled_after,
        };
        info!(%report, direct_errors = ?direct_log.error_summary(), "partition measured");
        ensure!(
            direct_log.acks.iter().any(|a| a.at < at),
            "the client connected to the leader {} had no commit acknowledged before the cut, so \
             the partition proved nothing: {report}",
            report.old_leader
        );
        ensure!(
            router.acks_after(at) > 0 && pooler.acks_after(at) > 0,
            "no write was acknowledged after the partition (router {}, pooler {}): {report}",
            router.acks_after(at),
            pooler.acks_after(at)
        );
        ensure_nothing_lost(cluster, &missing, &report)?;
        Ok(report)
    }

    /// Scenario 5: the node running the pooler and, when one is there, a router (the bed's
    /// cluster runs two routers on two nodes) powered off: Swarm reschedules them on live
    /// nodes, clients reconnect through the other router and the rescheduled pooler.
    pub async fn router_node_loss(&mut self) -> Result<NodeScenarioReport> {
        let table = self.next_table("router_node_loss");
        let cluster = &self.cluster;
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        let before = identities(cluster).await?;
        let router_key = cluster.dep.stack.only_service(Mode::Router)?.key;
        let pooler_key = cluster.dep.stack.only_service(Mode::Pooler)?.key;
        let node = self.node_of(&pooler_key).await?;
        let mut router_nodes = Vec::new();
        for container in cluster.dep.containers(&router_key).await? {
            router_nodes.push(self.bed.node_of_container(&container)?.name.clone());
        }
        let routers = router_nodes.len();
        let old_leader = cluster.leader().await?;
        let member_containers = {
            let mut out = Vec::new();
            for key in &cluster.members {
                if self.node_of(key).await?.name == node.name {
                    if let Some(c) = cluster.dep.container(key).await? {
                        out.push((key.clone(), c));
                    }
                }
            }
            out
        };
        self.bed.use_manager_other_than(&node)?;
        let probes = Probes::start(cluster, &table).await?;
        tokio::time::sleep(BASELINE).await;
        info!(node = %node.name, routers = ?router_nodes, pooler = %pooler_key,
              "powering off the pooler's node");
        let at = Instant::now();
        let outcome = async {
            self.bed.power_off(&node).await?;
            wait_until(
                &format!("{pooler_key} running on a node other than {}", node.name),
                RECOVERY_TIMEOUT,
                || async {
                    let now = self.node_of(&pooler_key).await;
                    Ok(match now {
                        Ok(n) if n.name != node.name => Check::Done,
                        Ok(n) => Check::Pending(format!("on {}", n.name)),
                        Err(e) => Check::Pending(format!("{e:#}")),
                    })
                },
            )
            .await?;
            // Swarm brings the routers back to their number on the live nodes.
            wait_until(
                &format!("{routers} {router_key} tasks running on live nodes"),
                RECOVERY_TIMEOUT,
                || async {
                    let running = cluster.dep.containers(&router_key).await?.len();
                    Ok(if running >= routers {
                        Check::Done
                    } else {
                        Check::Pending(format!("{running} running"))
                    })
                },
            )
            .await?;
            // Clients reconnect through the rescheduled router and pooler.
            wait_until(
                "writes acknowledged again through the router and the pooler",
                RECOVERY_TIMEOUT,
                || async {
                    Ok(probes.router_acked_since(at).await && probes.pooler_acked_since(at).await)
                },
            )
            .await?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        let restored = self.bed.start(&node).await;
        outcome?;
        restored?;
        for (key, container) in &member_containers {
            wait_rejoined(cluster, key, container).await?;
        }
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        let settled_after = at.elapsed();
        let new_leader = cluster.leader().await?;
        let (router, pooler, missing, stopped) = probes.finish(cluster, &table).await?;
        ensure_not_reinitialised(cluster, &before).await?;
        let report = NodeScenarioReport {
            name: "router-node-loss".into(),
            node: node.name.clone(),
            old_leader,
            new_leader,
            gap_router: gap_until_stop(&router, at, stopped),
            gap_pooler: gap_until_stop(&pooler, at, stopped),
            errors_router: router.errors_after(at),
            errors_pooler: pooler.errors_after(at),
            acknowledged: router.acks.len() + pooler.acks.len(),
            lost: missing.len(),
            acked_after_cut: 0,
            last_isolated_ack_s: None,
            leader_after: None,
            settled_after,
        };
        info!(%report, "router node loss measured");
        ensure_nothing_lost(cluster, &missing, &report)?;
        Ok(report)
    }
}

/// The timeline of member `key` in `patronictl list`.
async fn timeline_of(cluster: &PatroniCluster, key: &str) -> Result<u64> {
    let list = cluster.list(None).await?;
    Ok(list
        .iter()
        .find(|m| m.name == *key)
        .and_then(|m| m.timeline)
        .unwrap_or_default())
}

/// Waits for a running leader other than `old` on a later timeline (asked of the members
/// other than `old`); returns its name.
async fn wait_new_leader(cluster: &PatroniCluster, old: &str, timeline: u64) -> Result<String> {
    let found = std::sync::Mutex::new(String::new());
    wait_until(
        &format!("a leader other than {old} on a timeline after {timeline}"),
        RECOVERY_TIMEOUT,
        || async {
            let list = cluster.list(Some(old)).await?;
            let leader = list.iter().find(|m| {
                m.is_leader() && m.name != old && m.timeline.unwrap_or_default() > timeline
            });
            Ok(match leader {
                Some(m) => {
                    if let Ok(mut name) = found.lock() {
                        name.clone_from(&m.name);
                    }
                    Check::Done
                }
                None => Check::Pending(describe(&list)),
            })
        },
    )
    .await?;
    Ok(found.into_inner().unwrap_or_default())
}

/// Waits until member `key` streams from the leader again, healthy, its own PostgreSQL in
/// recovery and receiving WAL (in `old_container`, or in a new one where Swarm replaced it).
async fn wait_rejoined(cluster: &PatroniCluster, key: &str, old_container: &str) -> Result<()> {
    wait_until(
        &format!("{key} back as a streaming replica"),
        RECOVERY_TIMEOUT,
        || async {
            let list = cluster.list(None).await?;
            let streaming = list
                .iter()
                .any(|m| m.name == key && m.is_streaming_replica());
            let container = cluster.dep.container(key).await?;
            let healthy = match container.as_deref() {
                Some(c) if c == old_container => cluster.dep.health(c).await? == "healthy",
                Some(_) => replaced_and_healthy(cluster, key, old_container).await?,
                None => false,
            };
            if !(streaming && healthy) {
                return Ok(Check::Pending(format!(
                    "{}; container healthy: {healthy}",
                    describe(&list)
                )));
            }
            cluster.member_serves(key).await
        },
    )
    .await?;
    Ok(())
}

/// The longest time without an acknowledged commit after `at`, counting the time from the last
/// acknowledgement to `stopped` (a client that never got through again).
fn gap_until_stop(log: &ProbeLog, at: Instant, stopped: Instant) -> Duration {
    let last = log.acks.last().map(|a| a.at).unwrap_or(at).max(at);
    log.gap_after(at)
        .max(stopped.saturating_duration_since(last))
}

fn ensure_nothing_lost(
    cluster: &PatroniCluster,
    missing: &[i64],
    report: &NodeScenarioReport,
) -> Result<()> {
    if cluster.synchronous {
        ensure!(
            missing.is_empty(),
            "synchronous mode is on, yet {} acknowledged commits are missing (first ids: {:?}); \
             {report}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    } else if !missing.is_empty() {
        warn!(
            lost = missing.len(),
            "asynchronous mode: acknowledged commits lost"
        );
    }
    Ok(())
}

/// One write probe through the router and one through PgBouncer.
struct Probes {
    router: WriteProbe,
    pooler: WriteProbe,
}

impl Probes {
    async fn start(cluster: &PatroniCluster, table: &str) -> Result<Probes> {
        let router = WriteProbe::start(cluster.rw.clone(), &format!("{table}_router")).await?;
        let pooler = WriteProbe::start(cluster.pooler.clone(), &format!("{table}_pooler")).await?;
        Ok(Probes { router, pooler })
    }

    async fn router_acked_since(&self, at: Instant) -> bool {
        self.router.last_ack().await.is_some_and(|t| t > at)
    }

    async fn pooler_acked_since(&self, at: Instant) -> bool {
        self.pooler.last_ack().await.is_some_and(|t| t > at)
    }

    /// Waits until both writers have had a commit acknowledged after `at`: the pooler may take
    /// longer than the cluster to come back (when its node was the one lost, Swarm reschedules
    /// it once it marks the node down), and stopping the writers before would count its
    /// recovery as missing.
    async fn wait_both_acked_since(&self, at: Instant) -> Result<()> {
        wait_until(
            "writes acknowledged again through the router and the pooler",
            RECOVERY_TIMEOUT,
            || async { Ok(self.router_acked_since(at).await && self.pooler_acked_since(at).await) },
        )
        .await?;
        Ok(())
    }

    /// Stops both and returns their logs, the acknowledged ids missing on the leader, and
    /// when they were stopped.
    async fn finish(
        self,
        cluster: &PatroniCluster,
        table: &str,
    ) -> Result<(ProbeLog, ProbeLog, Vec<i64>, Instant)> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped = Instant::now();
        let router = self.router.stop().await;
        let pooler = self.pooler.stop().await;
        let client = cluster.rw.connect(Duration::from_secs(60)).await?;
        let mut missing = router.missing(&client, &format!("{table}_router")).await?;
        missing.extend(pooler.missing(&client, &format!("{table}_pooler")).await?);
        Ok((router, pooler, missing, stopped))
    }
}

/// A client of one member's own PostgreSQL, from inside its container (`docker exec` through
/// the member's node's engine, which a partition does not cut): one INSERT after another,
/// each in its own connection, recording every acknowledged one.
struct DirectClient {
    stop: Arc<AtomicBool>,
    task: JoinHandle<ProbeLog>,
}

/// How long one direct commit may take before it counts as failed (a commit waiting for a
/// synchronous standby that is cut off never returns).
const DIRECT_DEADLINE: Duration = Duration::from_secs(5);

impl DirectClient {
    fn start(
        cluster: &PatroniCluster,
        key: &str,
        container: &str,
        table: &str,
    ) -> Result<DirectClient> {
        let service = cluster
            .dep
            .stack
            .services()?
            .into_iter()
            .find(|s| s.key == key)
            .ok_or_else(|| anyhow!("no member {key} in the stack"))?;
        let Role::Patroni { postgres, .. } = &service.env.role else {
            bail!("service {key} is not a Patroni member");
        };
        let port = postgres.port.to_string();
        let container = container.to_string();
        let table = table.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut log = ProbeLog::default();
            let mut id: i64 = 0;
            while !flag.load(Ordering::Relaxed) {
                id += 1;
                let sql = format!("INSERT INTO {table} (id) VALUES ({id})");
                let args = [
                    "exec",
                    &container,
                    "pgswarm-sidecar",
                    "ctl",
                    "query",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--sql",
                    &sql,
                ];
                let attempt = docker_async(&args);
                match tokio::time::timeout(DIRECT_DEADLINE, attempt).await {
                    Ok(Ok(_)) => log.acks.push(crate::probe::Ack {
                        id,
                        at: Instant::now(),
                    }),
                    Ok(Err(e)) => {
                        let text = format!("{e:#}");
                        let line = text.lines().last().unwrap_or_default();
                        log.errors
                            .push((Instant::now(), line.chars().take(160).collect()));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => log
                        .errors
                        .push((Instant::now(), "no answer within 5 s".into())),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            log
        });
        Ok(DirectClient { stop, task })
    }

    async fn stop(self) -> ProbeLog {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Marks every node's engine as answering again (after a run that failed halfway).
pub fn reset_hosts(bed: &Testbed) {
    for node in &bed.nodes {
        set_host_answers(&node.host, true);
    }
}

/// `swarm-bench --nodes N`: deploys the multi-node cluster on the bed (synchronous mode unless
/// `asynchronous`) and runs each scenario of `names` `trials` times; one report entry per
/// scenario, over the trials that completed, and the failed trials with their errors (a
/// failed trial does not stop the others). In asynchronous mode lost commits are reported,
/// not treated as failures.
pub async fn bench(
    names: &[&str],
    trials: usize,
    asynchronous: bool,
) -> Result<(crate::report::BenchReport, Vec<String>)> {
    let bed = Testbed::open()?;
    let image = crate::image::ensure_image()?;
    let name = crate::deployment::unique_name("bench");
    let spec = bed.patroni_spec(&name, &image, !asynchronous)?;
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    eprintln!(
        "{} nodes: healthy cluster {:.1} s after docker stack deploy",
        bed.nodes.len(),
        cluster.ready_after.as_secs_f64()
    );
    let nodes = bed.nodes.len();
    let mut mc = MultiNodeCluster {
        bed,
        cluster,
        table_counter: 0,
    };
    mc.ensure_spread().await?;
    let mut results: Vec<(&str, Vec<NodeScenarioReport>)> =
        names.iter().map(|n| (*n, Vec::new())).collect();
    let mut failures = Vec::new();
    for t in 0..trials {
        for (scenario, reports) in &mut results {
            match mc.run(scenario).await {
                Ok(report) => {
                    eprintln!("trial {}: {report}", t + 1);
                    reports.push(report);
                }
                Err(e) => {
                    eprintln!("trial {}: {scenario} FAILED: {e:#}", t + 1);
                    failures.push(format!("trial {} of {scenario}: {e:#}", t + 1));
                    reset_hosts(&mc.bed);
                }
            }
        }
    }
    let entry = |name: &str, reports: &[NodeScenarioReport]| crate::report::ScenarioReport {
        name: name.to_string(),
        trials: reports.len(),
        gap_s: crate::report::Stats::of(reports.iter().map(|r| r.gap().as_secs_f64())),
        errors: crate::report::Stats::of(reports.iter().map(|r| r.errors() as f64)),
        lost: reports.iter().map(|r| r.lost).sum(),
        acked_after_cut: reports.iter().map(|r| r.acked_after_cut).sum(),
    };
    Ok((
        crate::report::BenchReport {
            nodes,
            scenarios: results.iter().map(|(n, r)| entry(n, r)).collect(),
        },
        failures,
    ))
}
