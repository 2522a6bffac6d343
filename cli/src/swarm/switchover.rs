//! `switchover`: a planned change of the Patroni leader. Patroni's REST API does it (`POST
//! /switchover` with the REST credentials, sent by `patronictl` inside a member container, so
//! the password never leaves it); then this waits until Patroni lists the new leader running
//! and a write through the router's read-write port commits — the moment clients can write
//! again — and checks that the status agrees.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use pgswarm_contract::ctl::{self, PoolerReply, Request, Target, WriteCheckReply};

use crate::spec::{Cluster, Service, ServiceKind, Topology};

use super::exec::exec;
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

/// A pooler container paused for the switch.
struct PausedPooler {
    container: String,
    port: u16,
}

/// Pauses the pooler's containers on this node (`ctl pooler-pause`): running transactions
/// finish, new queries wait in PgBouncer. A pooler on another node cannot be reached from
/// here: it is named and left running.
async fn pause_poolers(
    engine: &Engine,
    cluster: &Cluster,
    views: &[ServiceView],
    max_pause: Duration,
    progress: &mut Progress,
) -> anyhow::Result<Vec<PausedPooler>> {
    let Some(pooler) = cluster.pooler() else {
        return Ok(Vec::new());
    };
    let pgswarm_contract::Role::Pooler { port, .. } = pooler.env.role else {
        return Ok(Vec::new());
    };
    let Some(container) = views
        .iter()
        .find(|v| v.member == pooler.name)
        .and_then(|v| v.container.clone())
    else {
        progress.say(&format!(
            "the pooler {} runs on no container of this node: it is not paused, so its clients              may see errors during the switch (run swarmctl on the pooler's node to avoid them)",
            pooler.name
        ));
        return Ok(Vec::new());
    };
    let request = Request::PoolerPause {
        port,
        wait_secs: 10,
        max_pause_secs: max_pause.as_secs().max(30),
    };
    let argv = request.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = exec(engine, &container, &argv).await?;
    let reply: PoolerReply = ctl::read_reply(out.exit_code, &out.stdout, &out.stderr)
        .with_context(|| {
            format!(
                "cannot pause the pooler {}; nothing was switched",
                pooler.name
            )
        })?;
    progress.say(&format!(
        "paused the pooler {} (running transactions finished after {} ms): its clients wait          instead of failing",
        pooler.name, reply.waited_ms
    ));
    Ok(vec![PausedPooler { container, port }])
}

/// Resumes what [`pause_poolers`] paused; every one is tried before an error is returned.
async fn resume_poolers(engine: &Engine, paused: &[PausedPooler]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for p in paused {
        let argv = Request::PoolerResume { port: p.port }.argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let result = match exec(engine, &p.container, &argv).await {
            Ok(out) => ctl::read_reply::<PoolerReply>(out.exit_code, &out.stdout, &out.stderr)
                .map(|_| ())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            failed.push(format!("{}: {e:#}", p.container));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "cannot resume the pooler ({}); it resumes by itself at the pause's deadline, or run              `pgswarm-sidecar ctl pooler-resume --port PORT` in its container",
            failed.join("; ")
        )
    }
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

/// The member patronictl reports having switched over to (`Successfully switched over to
/// "pg2"`), if it says so.
fn switched_to(output: &str) -> Option<String> {
    let line = output
        .lines()
        .find(|l| l.contains("Successfully switched over to"))?;
    let rest = line.split("Successfully switched over to").nth(1)?.trim();
    let name = rest.trim_matches(|c: char| c == '"' || c == '\'' || c.is_whitespace());
    (!name.is_empty()).then(|| name.to_string())
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
    // Ask from the leader's container when it runs here, else from any member of the group.
    let container = std::iter::once(leader.as_str())
        .chain(in_group.iter().map(|s| s.name.as_str()))
        .find_map(|m| {
            views
                .iter()
                .find(|v| v.member == m)
                .and_then(|v| v.container.clone())
        });
    let paused = if options.pause_pooler {
        pause_poolers(engine, cluster, &views, timeout, progress).await?
    } else {
        Vec::new()
    };
    let paused_at = Instant::now();
    let switched = switch(
        engine,
        cluster,
        &nodes,
        &in_group,
        &leader,
        target,
        group,
        container.as_deref(),
        timeout,
        progress,
    )
    .await;
    // Resumed whatever happened: a failed switch must not leave clients waiting.
    let resumed = resume_poolers(engine, &paused).await;
    let paused_seconds = (!paused.is_empty()).then(|| paused_at.elapsed().as_secs_f64());
    if let Some(seconds) = paused_seconds {
        if resumed.is_ok() {
            progress.say(&format!(
                "resumed the pooler: its clients waited at most {seconds:.1} s"
            ));
        }
    }
    let (host, port, server, started) = switched?;
    resumed?;
    let seconds = started.elapsed().as_secs_f64();
    let status = status::read(engine, cluster).await?;
    let new_leader = status
        .leaders
        .iter()
        .find(|l| in_group.iter().any(|s| &&s.name == l))
        .cloned()
        .ok_or_else(|| anyhow!("after the switchover, status lists no leader in this group"))?;
    if new_leader == leader {
        bail!("after the switchover, status still lists {leader} as the leader");
    }
    progress.say(&format!(
        "switchover done: leader {leader} -> {new_leader}; a write through {host}:{port} \
         committed (server {server}) {seconds:.1} s after the request"
    ));
    Ok(Outcome {
        old_leader: leader,
        new_leader,
        write_server: server,
        seconds,
        paused_seconds,
    })
}

/// Asks Patroni to switch over, then waits for the new leader and a committed write through
/// the router: (write host, port, server that took it, when the request was sent).
#[allow(clippy::too_many_arguments)]
async fn switch(
    engine: &Engine,
    cluster: &Cluster,
    nodes: &[nodes::NodeView],
    in_group: &[&Service],
    leader: &str,
    target: Option<&Service>,
    group: Option<u32>,
    container: Option<&str>,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<(String, u16, String, Instant)> {
    let mut args: Vec<String> = vec![
        "switchover".into(),
        "--leader".into(),
        leader.into(),
        "--force".into(),
    ];
    if let Some(t) = target {
        args.extend(["--candidate".into(), t.name.clone()]);
    }
    if let Some(g) = group {
        args.extend(["--group".into(), g.to_string()]);
    }
    // patronictl in a member's container with its patroni.yml, or from a one-off task made
    // from a member's service when none runs here.
    let yml = status::patroni_yml(in_group[0]);
    let argv: Vec<String> = match container.filter(|_| job::local_exec_allowed()) {
        Some(_) => ["patronictl".to_string(), "-c".into(), yml]
            .into_iter()
            .chain(args)
            .collect(),
        None => Request::Patronictl { args }.argv(),
    };
    let cmd: Vec<&str> = argv.iter().map(String::as_str).collect();
    progress.say(&format!(
        "switchover: asking Patroni to hand the leader over from {leader} to {}",
        target.map_or("the best replica", |t| t.name.as_str())
    ));
    let started = Instant::now();
    let out = job::run_ctl(engine, cluster, container, &cmd)
        .await?
        .into_stdout("patronictl switchover")?;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        tracing::debug!(output = %line, "patronictl switchover");
    }
    // patronictl reports a refused request (HTTP 412, 503 ...) on its output and exits 0.
    if let Some(line) = out
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("switchover failed"))
    {
        bail!("Patroni refused the switchover: {}", line.trim());
    }

    let deadline = started + timeout;
    // Patroni answers once the switch is done and names the new leader: no need to wait
    // for a listing then (every second counts while the pooler holds its clients).
    let announced = switched_to(&out).filter(|n| {
        n != leader && in_group.iter().any(|s| &s.name == n) && target.is_none_or(|t| &t.name == n)
    });
    let (host, port) = if let Some(n) = announced {
        progress.say(&format!("Patroni switched over to {n}"));
        write_target(cluster, &n)
    } else {
        loop {
            let views = docker_view(engine, cluster, nodes).await?;
            let now = db_view(engine, cluster, &views).await.ok();
            let new = now.as_ref().and_then(|db| {
                in_group
                    .iter()
                    .find(|s| {
                        db.get(&s.name)
                            .is_some_and(|r| r.role == "leader" && r.state == "running")
                    })
                    .map(|s| s.name.clone())
            });
            match new {
                Some(n) if n != leader && target.is_none_or(|t| t.name == n) => {
                    progress.say(&format!("Patroni lists {n} as the running leader"));
                    break write_target(cluster, &n);
                }
                _ => progress.update("waiting for Patroni to list the new leader"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "the switchover from {leader} was requested, but Patroni lists no new running \
                 leader after {} s; see `swarmctl status`",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut views = docker_view(engine, cluster, nodes).await?;
    let server = loop {
        match write_check(engine, cluster, &views, &host, port).await {
            Ok(server) => break server,
            Err(e) => {
                // A container the check ran in may have gone meanwhile.
                if let Ok(fresh) = docker_view(engine, cluster, nodes).await {
                    views = fresh;
                }
                if Instant::now() >= deadline {
                    return Err(e.context(format!(
                        "the new leader does not take writes through {host}:{port} after {} s",
                        timeout.as_secs()
                    )));
                }
                progress.update(&format!("waiting for a write through {host}:{port}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    Ok((host, port, server, started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_leader_is_read_from_patronictls_answer() {
        let out = "Current cluster topology\n+ Cluster: demo ...\n\
                   2026-12-03 14:11:21.12345 Successfully switched over to \"pg2\"\n\
                   + Cluster: demo ...\n";
        assert_eq!(switched_to(out), Some("pg2".to_string()));
        assert_eq!(switched_to("Switchover failed, details: 503, ..."), None);
        assert_eq!(switched_to(""), None);
    }
}
