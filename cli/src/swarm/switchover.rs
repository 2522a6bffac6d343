//! `switchover`: a planned change of the Patroni leader, with the pooler's clients held
//! instead of failing. One `ctl switchover` request, run inside a member's container (the
//! credentials never leave it) or a one-off task on the cluster's network, pauses every task
//! of the pooler over the network, asks the leader's Patroni to switch over (`POST
//! /switchover`), resumes the pooler as soon as a write through the router commits on another
//! server, and answers how long clients waited (see `pgswarm_sidecar::switchover`). Then this
//! checks that Patroni's listing agrees. Without `--to`, the candidate is a synchronous
//! standby, else the streaming replica with the smallest lag.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use pgswarm_contract::ctl::{
    self, Request, SwitchoverPlan, SwitchoverReply, Target, WriteCheckReply,
};

use crate::spec::{Cluster, Service, ServiceKind, Topology};
use pgswarm_contract::Endpoint;

use super::job;
use super::progress::Progress;
use super::status::{self, db_view, docker_view, ServiceView};
use super::{nodes, Engine};

/// What a switchover did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub old_leader: String,
    pub new_leader: String,
    /// Address of the server that took the write through the router.
    pub write_server: String,
    pub seconds: f64,
    /// How long the pooler held its clients' queries (paused), when it was paused.
    pub paused_seconds: Option<f64>,
}

/// Options of a switchover.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds to wait for the new leader and a write through it.
    pub timeout: Duration,
    /// Pause the pooler (PgBouncer) during the switch, so its clients wait instead of failing.
    pub pause_pooler: bool,
}

fn group_of(service: &Service) -> Option<u32> {
    match service.kind {
        ServiceKind::Data { group } => group,
        _ => None,
    }
}

/// How long one write check may take, a one-off task included.
const WRITE_CHECK_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `pgswarm-sidecar ctl write-check` through `host:port` from a local container that
/// holds the superuser secret; returns the server address that took the write.
pub async fn write_check(
    engine: &Engine,
    cluster: &Cluster,
    views: &[ServiceView],
    host: &str,
    port: u16,
) -> anyhow::Result<String> {
    // A local container holding the superuser secret, else a one-off task on the network.
    let container = status::superuser_container(cluster, views).ok();
    let argv = Request::WriteCheck(Target::new(host, port)).argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // A session the router hands to a member that is going away can stay open without an
    // answer: the check gives up after a while (nothing it wrote remains), and is tried again.
    let out = tokio::time::timeout(
        WRITE_CHECK_PATIENCE,
        job::run_ctl(engine, cluster, container.as_deref(), &argv),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "the write check through {host}:{port} got no answer within {} s",
            WRITE_CHECK_PATIENCE.as_secs()
        )
    })??;
    let reply: WriteCheckReply = ctl::read_reply(out.exit_code, &out.stdout, &out.stderr)
        .with_context(|| format!("the write check through {host}:{port}"))?;
    Ok(reply.server)
}

/// Where writes go: the router's read-write port, or the member itself without a router.
/// The router is addressed as `tasks.<router>`, its tasks' own addresses: the write then goes
/// through HAProxy without depending on the service's virtual IP (IPVS), which some kernels
/// lack.
pub fn write_target(cluster: &Cluster, member: &str) -> (String, u16) {
    match (cluster.router(), cluster.router_ports()) {
        (Some(router), Some((rw, _, _))) => (format!("tasks.{}", router.name), rw),
        _ => {
            let port = cluster
                .service(member)
                .and_then(|s| match &s.env.role {
                    pgswarm_contract::Role::Patroni { postgres, .. } => Some(postgres.port),
                    _ => None,
                })
                .unwrap_or(pgswarm_contract::defaults::PG_PORT);
            (member.to_string(), port)
        }
    }
}

/// Switches the leader of the group of `to` (or of the only / coordinator group) over.
pub async fn switchover(
    engine: &Engine,
    cluster: &Cluster,
    to: Option<&str>,
    options: &Options,
    progress: &mut Progress,
) -> anyhow::Result<Outcome> {
    let timeout = options.timeout;
    if cluster.topology == Topology::Replication {
        bail!(
            "cluster {} uses the replication topology, which has no consensus to hand the \
             primary over safely; switchover needs topology patroni or citus",
            cluster.name
        );
    }
    engine.require_manager().await?;
    let target =
        match to {
            Some(name) => Some(cluster.data_members().find(|s| s.name == name).ok_or_else(
                || {
                    anyhow!(
                        "--to {name}: cluster {} has no PostgreSQL member {name:?}; its members \
                         are: {}",
                        cluster.name,
                        cluster
                            .data_members()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            )?),
            None => None,
        };
    let group = match (target, cluster.topology) {
        (Some(t), _) => group_of(t),
        (None, Topology::Citus) => Some(0),
        _ => None,
    };
    let nodes = nodes::list(engine).await?;
    let views = docker_view(engine, cluster, &nodes).await?;
    let db = db_view(engine, cluster, &views)
        .await
        .context("cannot read Patroni's view of the cluster")?;
    let in_group: Vec<&Service> = cluster
        .data_members()
        .filter(|s| group_of(s) == group)
        .collect();
    let leader = in_group
        .iter()
        .find(|s| db.get(&s.name).is_some_and(|r| r.role == "leader"))
        .map(|s| s.name.clone())
        .ok_or_else(|| {
            anyhow!(
                "Patroni lists no leader{} right now; see `swarmctl status`",
                group.map_or(String::new(), |g| format!(" in group {g}"))
            )
        })?;
    if let Some(t) = target {
        if t.name == leader {
            bail!("{} is already the leader: nothing to switch over", t.name);
        }
        let state = db
            .get(&t.name)
            .map(|r| r.state.as_str())
            .unwrap_or("absent");
        if state != "streaming" {
            bail!(
                "{} is not a streaming replica (state {state}): it cannot take over; pick a \
                 streaming member (see `swarmctl status`)",
                t.name
            );
        }
        // In synchronous mode Patroni hands over only to a synchronous standby.
        let synchronous = in_group.iter().any(|s| {
            matches!(
                s.env.role,
                pgswarm_contract::Role::Patroni { synchronous_mode, .. }
                    if synchronous_mode != pgswarm_contract::SynchronousMode::Off
            )
        });
        let sync: Vec<&str> = in_group
            .iter()
            .filter(|s| db.get(&s.name).is_some_and(|r| r.role.contains("standby")))
            .map(|s| s.name.as_str())
            .collect();
        if synchronous && sync.is_empty() {
            bail!(
                "synchronous mode is on, but Patroni lists no synchronous standby yet, so no \
                 member can take over without losing commits; try again once `swarmctl status` \
                 shows one"
            );
        }
        if synchronous && !sync.contains(&t.name.as_str()) {
            bail!(
                "{} is not a synchronous standby ({} is): in synchronous mode Patroni hands the \
                 leader over only to a synchronous standby; use --to {}",
                t.name,
                sync.join(", "),
                sync[0]
            );
        }
    }
    // Without --to, the best candidate: a synchronous standby, else the streaming replica
    // that has received the most WAL (the smallest lag).
    let candidate = match target {
        Some(t) => t.name.clone(),
        None => best_candidate(&in_group, &db, &leader).ok_or_else(|| {
            anyhow!(
                "no member can take over from {leader}: none is a streaming replica{}; see \
                 `swarmctl status`",
                group.map_or(String::new(), |g| format!(" in group {g}"))
            )
        })?,
    };
    // Run from the leader's container when it runs here, else from any member of the group,
    // else from a one-off task on the cluster's network.
    let container = std::iter::once(leader.as_str())
        .chain(in_group.iter().map(|s| s.name.as_str()))
        .find_map(|m| {
            views
                .iter()
                .find(|v| v.member == m)
                .and_then(|v| v.container.clone())
        });
    let (rest_port, pg_port) = in_group
        .iter()
        .find(|s| s.name == leader)
        .and_then(|s| match &s.env.role {
            pgswarm_contract::Role::Patroni {
                rest_port,
                postgres,
                ..
            } => Some((*rest_port, postgres.port)),
            _ => None,
        })
        .unwrap_or((
            pgswarm_contract::defaults::REST_PORT,
            pgswarm_contract::defaults::PG_PORT,
        ));
    // A Citus worker group's new leader is not behind the router's read-write port (the
    // coordinator is): its write goes to the candidate itself.
    let (host, port) = match group {
        Some(g) if g != 0 => (candidate.clone(), pg_port),
        _ => write_target(cluster, &candidate),
    };
    let poolers: Vec<Endpoint> = match (options.pause_pooler, cluster.pooler()) {
        (true, Some(pooler)) => match pooler.env.role {
            pgswarm_contract::Role::Pooler { port, .. } => vec![Endpoint {
                host: pooler.name.clone(),
                port,
            }],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let plan = SwitchoverPlan {
        leader: leader.clone(),
        leader_host: None,
        leader_addresses: Vec::new(),
        candidate: Some(candidate.clone()),
        rest_port,
        pg_port,
        write: Endpoint {
            host: host.clone(),
            port,
        },
        poolers,
        pause_wait_secs: PAUSE_WAIT.as_secs(),
        max_pause_secs: MAX_PAUSE.min(timeout).as_secs().max(1),
        timeout_secs: timeout.as_secs().max(1),
    };
    progress.say(&format!(
        "switchover: asking Patroni to hand the leader over from {leader} to {candidate}{}",
        if plan.poolers.is_empty() {
            String::new()
        } else {
            ", the pooler paused meanwhile (its clients wait instead of failing)".into()
        }
    ));
    let started = Instant::now();
    let argv = Request::Switchover(plan).argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = job::run_ctl(engine, cluster, container.as_deref(), &argv).await?;
    let reply: SwitchoverReply = ctl::read_reply(out.exit_code, &out.stdout, &out.stderr)
        .with_context(|| format!("the switchover from {leader} to {candidate}"))?;
    let paused_seconds = reply.paused_ms.map(|ms| ms as f64 / 1000.0);
    if let Some(seconds) = paused_seconds {
        progress.say(&format!(
            "paused the pooler ({} task{}) and resumed it once writes committed on the new \
             leader: its clients waited at most {seconds:.2} s",
            reply.paused_tasks,
            if reply.paused_tasks == 1 { "" } else { "s" }
        ));
    }
    tracing::debug!(patroni = %reply.patroni, "Patroni's answer to the switchover");
    // Patroni's view must agree: the candidate leads.
    let deadline = started + timeout;
    let new_leader = loop {
        let status = status::read(engine, cluster).await?;
        let now = status
            .leaders
            .iter()
            .find(|l| in_group.iter().any(|s| &&s.name == l))
            .cloned();
        match now {
            Some(n) if n != leader => break n,
            _ if Instant::now() >= deadline => bail!(
                "a write committed on {} after the switchover, but status still lists {} as \
                 the leader after {} s; see `swarmctl status`",
                reply.server,
                now.as_deref().unwrap_or("no member"),
                timeout.as_secs()
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let seconds = reply.switched_ms as f64 / 1000.0;
    progress.say(&format!(
        "switchover done: leader {leader} -> {new_leader}; a write through {host}:{port} \
         committed (server {}) {seconds:.2} s after the request",
        reply.server
    ));
    Ok(Outcome {
        old_leader: leader,
        new_leader,
        write_server: reply.server,
        seconds,
        paused_seconds,
    })
}

/// How long a pause waits for the pooler's running transactions.
const PAUSE_WAIT: Duration = Duration::from_secs(10);
/// How long the pooler holds its clients at most (then they are let go, the switch or not).
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The member to hand over to when none is named: a synchronous standby, else the streaming
/// replica with the smallest lag.
fn best_candidate(
    in_group: &[&Service],
    db: &std::collections::BTreeMap<String, status::DbView>,
    leader: &str,
) -> Option<String> {
    in_group
        .iter()
        .filter(|s| s.name != leader)
        .filter_map(|s| db.get(&s.name).map(|r| (s, r)))
        .filter(|(_, r)| r.state == "streaming")
        .min_by_key(|(_, r)| {
            let lag_kb = r
                .lag_mb
                .map_or(u64::MAX, |mb| (mb.max(0.0) * 1024.0) as u64);
            (!r.role.contains("standby"), lag_kb)
        })
        .map(|(s, _)| s.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn member(role: &str, state: &str, lag_mb: Option<f64>) -> status::DbView {
        status::DbView {
            role: role.into(),
            state: state.into(),
            lag_mb,
            ..Default::default()
        }
    }

    #[test]
    fn the_best_candidate_is_a_synchronous_standby_else_the_least_lagging_streaming_replica() {
        let cluster = crate::spec::parse("name: demo\ntopology: patroni\n")
            .expect("a valid spec")
            .cluster;
        let group: Vec<&Service> = cluster.data_members().collect();
        let names: Vec<String> = group.iter().map(|s| s.name.clone()).collect();
        let (leader, a, b) = (&names[0], &names[1], &names[2]);
        let db = |views: [(&String, status::DbView); 3]| -> BTreeMap<String, status::DbView> {
            views.into_iter().map(|(n, v)| (n.clone(), v)).collect()
        };
        // The synchronous standby wins over a replica with less lag.
        let view = db([
            (leader, member("leader", "running", None)),
            (a, member("replica", "streaming", Some(0.0))),
            (b, member("sync standby", "streaming", Some(2.0))),
        ]);
        assert_eq!(best_candidate(&group, &view, leader), Some(b.clone()));
        // Without one, the smallest lag; a replica that does not stream is never picked.
        let view = db([
            (leader, member("leader", "running", None)),
            (a, member("replica", "streaming", Some(3.0))),
            (b, member("replica", "streaming", Some(1.0))),
        ]);
        assert_eq!(best_candidate(&group, &view, leader), Some(b.clone()));
        let view = db([
            (leader, member("leader", "running", None)),
            (a, member("replica", "stopped", Some(0.0))),
            (b, member("replica", "starting", None)),
        ]);
        assert_eq!(best_candidate(&group, &view, leader), None);
    }
}
