//! The end-to-end scenarios, shared by the test suite and the benchmark. Each returns a report
//! of what it measured, and fails (with a precise message) on anything that is a correctness
//! problem: a wrong role, a lost acknowledged commit, a re-initialised member. Durations are
//! reported, never asserted.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgswarm_contract::{Mode, Role, Secret};
use tracing::info;

use crate::deployment::{DataIdentity, Deployment};
use crate::docker::docker_async;
use crate::patroni::{describe, patroni_yml, PatroniCluster};
use crate::pg::{wait_until, Check, Endpoint};
use crate::probe::{ProbeLog, WriteProbe};
use crate::stack::Stack;

/// Generous deadline for a stack to become healthy on a small machine.
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline for a cluster to settle after a disruption.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Writes recorded before a disruption, so the probe's baseline is visible.
pub const BASELINE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// 1. replication (primary and streaming replica)

/// What the replication scenario saw.
#[derive(Debug)]
pub struct ReplicationReport {
    pub slot: String,
    pub ready_after: Duration,
}

/// The ports the replication scenario connects to: each member's PostgreSQL port.
pub fn replication_ports(stack: &Stack) -> Result<Vec<(String, u16)>> {
    let mut out = Vec::new();
    for service in stack.services()? {
        match &service.env.role {
            Role::Primary { postgres, .. } | Role::Replica { postgres, .. } => {
                out.push((service.key.clone(), postgres.port));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The checks on a deployed replication stack: the replica's slot is active on the
/// primary, `pg_stat_replication` shows it streaming and `pg_stat_wal_receiver` agrees, the
/// replica is read-only, and a row written on the primary is read on the replica.
pub async fn replication(dep: &Deployment) -> Result<ReplicationReport> {
    let primary = dep.stack.only_service(Mode::Primary)?;
    let replica = dep.stack.only_service(Mode::Replica)?;
    let Role::Primary {
        postgres: primary_pg,
        replica_slots,
        ..
    } = &primary.env.role
    else {
        bail!("service {} is not a primary", primary.key);
    };
    let Role::Replica {
        postgres: replica_pg,
        slot,
        ..
    } = &replica.env.role
    else {
        bail!("service {} is not a replica", replica.key);
    };
    ensure!(
        replica_slots.contains(slot),
        "the primary creates slots {replica_slots:?} but the replica streams from {slot}"
    );
    let user = primary.env.common.superuser.clone();
    let password = dep.password(Secret::SuperuserPassword)?;
    let on_primary = Endpoint::new(
        dep.host_port(&primary.key, primary_pg.port)?,
        &user,
        password.clone(),
    );
    let on_replica = Endpoint::new(
        dep.host_port(&replica.key, replica_pg.port)?,
        &user,
        password,
    );

    let ready_after = dep.wait_healthy(DEPLOY_TIMEOUT).await?;
    let p = on_primary.connect(Duration::from_secs(120)).await?;
    let r = on_replica.connect(Duration::from_secs(120)).await?;

    wait_until(
        &format!("slot {slot} active on the primary (pg_replication_slots)"),
        Duration::from_secs(120),
        || async {
            let row = p
                .query_opt(
                    "SELECT active FROM pg_replication_slots \
                     WHERE slot_name = $1 AND slot_type = 'physical'",
                    &[slot],
                )
                .await?;
            Ok(row.map(|r| r.get::<_, bool>(0)).unwrap_or(false))
        },
    )
    .await?;
    wait_until(
        "a streaming standby in pg_stat_replication on the primary",
        Duration::from_secs(60),
        || async {
            let n: i64 = p
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await?
                .get(0);
            Ok(n == 1)
        },
    )
    .await?;
    let receiver = r
        .query_one("SELECT status, slot_name FROM pg_stat_wal_receiver", &[])
        .await
        .context("pg_stat_wal_receiver on the replica has no row: it is not receiving WAL")?;
    let (status, receiver_slot): (String, Option<String>) = (receiver.get(0), receiver.get(1));
    ensure!(
        status == "streaming",
        "pg_stat_wal_receiver on the replica says {status}, not streaming"
    );
    ensure!(
        receiver_slot.as_deref() == Some(slot.as_str()),
        "the replica streams through slot {receiver_slot:?}, expected {slot}"
    );
    let in_recovery: bool = r.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
    ensure!(in_recovery, "the replica is not in recovery");
    let primary_in_recovery: bool = p.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
    ensure!(!primary_in_recovery, "the primary is in recovery");

    p.batch_execute(
        "CREATE TABLE replication_check (id int PRIMARY KEY, note text NOT NULL);
         INSERT INTO replication_check VALUES (1, 'written on the primary');",
    )
    .await
    .context("cannot write on the primary")?;
    wait_until(
        "the primary's row readable on the replica",
        Duration::from_secs(60),
        || async {
            let row = r
                .query_opt("SELECT note FROM replication_check WHERE id = 1", &[])
                .await;
            Ok(matches!(row, Ok(Some(row)) if row.get::<_, String>(0) == "written on the primary"))
        },
    )
    .await?;

    let err = r
        .batch_execute("INSERT INTO replication_check VALUES (2, 'written on the replica')")
        .await
        .err()
        .ok_or_else(|| anyhow!("the replica accepted a write"))?;
    let code = err.code().map(|c| c.code().to_string());
    ensure!(
        code.as_deref() == Some("25006"),
        "a write on the replica failed, but not as read-only (SQLSTATE {code:?}): {err}"
    );
    Ok(ReplicationReport {
        slot: slot.clone(),
        ready_after,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. patroni: roles and routing

/// What the routing scenario saw.
#[derive(Debug)]
pub struct RoutingReport {
    pub leader: String,
    pub rw_reached: String,
    pub pooler_reached: String,
    pub ro_reached: String,
}

/// The member a connection reached, by the server address it saw and the containers' IPs.
async fn reached(cluster: &PatroniCluster, client: &tokio_postgres::Client) -> Result<String> {
    let addr: Option<String> = client
        .query_one("SELECT host(inet_server_addr())", &[])
        .await?
        .get(0);
    let addr = addr.ok_or_else(|| anyhow!("the connection has no server address"))?;
    cluster.member_with_address(&addr).await
}

/// One leader and streaming replicas (patronictl agrees); writes through the router's
/// read-write port and through PgBouncer land on the leader; the read-only port reaches a
/// replica.
pub async fn routing(cluster: &PatroniCluster) -> Result<RoutingReport> {
    let list = cluster.list(None).await?;
    let leaders: Vec<_> = list.iter().filter(|m| m.is_leader()).collect();
    ensure!(leaders.len() == 1, "expected one leader: {list:?}");
    let leader = leaders[0].name.clone();
    ensure!(
        list.iter().filter(|m| m.is_streaming_replica()).count() == cluster.members.len() - 1,
        "expected {} streaming replicas: {list:?}",
        cluster.members.len() - 1
    );
    if cluster.synchronous {
        ensure!(
            list.iter().any(|m| m.role == "Sync Standby"),
            "synchronous mode is on but no member is a sync standby: {list:?}"
        );
    }

    let rw = cluster.rw.connect(Duration::from_secs(30)).await?;
    rw.batch_execute(
        "CREATE TABLE IF NOT EXISTS routed (via text PRIMARY KEY, server inet);
         INSERT INTO routed VALUES ('router', inet_server_addr());",
    )
    .await
    .context("a write through the router's read-write port failed")?;
    let rw_reached = reached(cluster, &rw).await?;
    ensure!(
        rw_reached == leader,
        "the router's read-write port reached {rw_reached}, the leader is {leader}"
    );

    let pooled = cluster.pooler.connect(Duration::from_secs(30)).await?;
    pooled
        .batch_execute("INSERT INTO routed VALUES ('pooler', inet_server_addr())")
        .await
        .context("a write through PgBouncer failed")?;
    let pooler_reached = reached(cluster, &pooled).await?;
    ensure!(
        pooler_reached == leader,
        "PgBouncer reached {pooler_reached}, the leader is {leader}"
    );

    let ro = cluster.ro.connect(Duration::from_secs(30)).await?;
    let in_recovery: bool = ro
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(in_recovery, "the router's read-only port reached a primary");
    let ro_reached = reached(cluster, &ro).await?;
    ensure!(
        ro_reached != leader && cluster.members.contains(&ro_reached),
        "the read-only port reached {ro_reached}, expected a replica (leader: {leader})"
    );
    // The two routed writes are visible on the replica once replicated.
    wait_until(
        "the routed writes visible through the read-only port",
        Duration::from_secs(30),
        || async {
            let n: i64 = ro
                .query_one("SELECT count(*) FROM routed", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            Ok(n == 2)
        },
    )
    .await?;
    Ok(RoutingReport {
        leader,
        rw_reached,
        pooler_reached,
        ro_reached,
    })
}

// ---------------------------------------------------------------------------------------------
// Disruption under write load: failover, switchover, forced restarts

/// What a disruption under write load cost.
#[derive(Debug, Clone)]
pub struct DisruptionReport {
    pub what: String,
    pub old_leader: String,
    pub new_leader: String,
    /// Whether leadership moved to another member.
    pub failed_over: bool,
    /// Longest time without an acknowledged commit after the disruption started.
    pub write_gap: Duration,
    /// Failed client attempts after the disruption started.
    pub client_errors: usize,
    /// Acknowledged commits in the whole run.
    pub acknowledged: usize,
    /// Acknowledged commits missing afterwards.
    pub lost: usize,
    /// Time from the disruption to a new leader in patronictl, when measured.
    pub leader_after: Option<Duration>,
    /// Time from the disruption until every member streams again.
    pub settled_after: Duration,
    /// Distinct client errors with their counts.
    pub errors: Vec<(String, usize)>,
}

impl fmt::Display for DisruptionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: leader {} -> {}; write gap {:.2} s; client errors {}; acknowledged {}; lost {}; \
             new leader after {}; settled after {:.1} s",
            self.what,
            self.old_leader,
            self.new_leader,
            self.write_gap.as_secs_f64(),
            self.client_errors,
            self.acknowledged,
            self.lost,
            self.leader_after
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            self.settled_after.as_secs_f64()
        )
    }
}

/// Identity of every member's data, for comparing before and after a disruption.
pub async fn identities(cluster: &PatroniCluster) -> Result<BTreeMap<String, DataIdentity>> {
    let mut out = BTreeMap::new();
    for key in &cluster.members {
        out.insert(key.clone(), cluster.dep.data_identity(key).await?);
    }
    Ok(out)
}

/// Fails when a member's data directory was replaced or its system identifier changed.
pub async fn ensure_not_reinitialised(
    cluster: &PatroniCluster,
    before: &BTreeMap<String, DataIdentity>,
) -> Result<()> {
    for (key, was) in before {
        let now = cluster.dep.data_identity(key).await?;
        ensure!(
            now.system_identifier == was.system_identifier,
            "member {key} was re-initialised: system identifier {} became {}",
            was.system_identifier,
            now.system_identifier
        );
        ensure!(
            now.inode == was.inode,
            "member {key} was re-initialised: its data directory was replaced (inode {} \
             became {})",
            was.inode,
            now.inode
        );
    }
    Ok(())
}

/// True when member `key` runs in a container other than `old` that Docker reports healthy
/// (for a Patroni member: Patroni's REST API answers and PostgreSQL runs).
pub async fn replaced_and_healthy(cluster: &PatroniCluster, key: &str, old: &str) -> Result<bool> {
    match cluster.dep.container(key).await? {
        Some(current) if current != old => Ok(cluster.dep.health(&current).await? == "healthy"),
        _ => Ok(false),
    }
}

/// Stops the probe and counts acknowledged commits missing from `table` on the leader.
async fn finish_probe(
    cluster: &PatroniCluster,
    probe: WriteProbe,
    table: &str,
) -> Result<(ProbeLog, Vec<i64>)> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = probe.stop().await;
    let client = cluster.rw.connect(Duration::from_secs(60)).await?;
    let missing = log.missing(&client, table).await?;
    Ok((log, missing))
}

/// Scenario 3, failover: `docker kill` of the leader's container under write load.
///
/// Swarm restarts the killed container within seconds, so two outcomes are possible: a
/// replica takes over (the killed member then comes back as a streaming replica, rewound, not
/// re-initialised), or the killed member comes back while it still holds Patroni's leader lock
/// and leads again after crash recovery. The report says which ([`DisruptionReport::failed_over`]);
/// the caller decides whether the second is acceptable. Lost acknowledged commits are counted;
/// in synchronous mode any loss is an error, whatever the outcome.
pub async fn failover(cluster: &PatroniCluster, table: &str) -> Result<DisruptionReport> {
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let before = identities(cluster).await?;
    let list = cluster.list(None).await?;
    let old_leader = cluster.leader().await?;
    let timeline_before = list
        .iter()
        .find(|m| m.name == old_leader)
        .and_then(|m| m.timeline)
        .unwrap_or_default();
    let container = cluster
        .dep
        .container(&old_leader)
        .await?
        .ok_or_else(|| anyhow!("leader {old_leader} has no running container"))?;
    let probe = WriteProbe::start(cluster.rw.clone(), table).await?;
    tokio::time::sleep(BASELINE).await;

    info!(member = %old_leader, container = %container, timeline = timeline_before,
          "docker kill of the leader");
    let killed_at = Instant::now();
    docker_async(&["kill", &container]).await?;

    // A leader on a new timeline: another member, or the killed one promoted again.
    let found = std::sync::Mutex::new(String::new());
    wait_until(
        &format!("a leader on a timeline after {timeline_before} once {old_leader} was killed"),
        RECOVERY_TIMEOUT,
        || async {
            let list = cluster.list(Some(&old_leader)).await?;
            let leader = list
                .iter()
                .find(|m| m.is_leader() && m.timeline.unwrap_or_default() > timeline_before);
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
    let leader_after = killed_at.elapsed();
    let new_leader = found.into_inner().unwrap_or_default();
    let failed_over = new_leader != old_leader;
    if failed_over {
        wait_until(
            &format!("{old_leader} back as a streaming replica in a new container"),
            RECOVERY_TIMEOUT,
            || async {
                let list = cluster.list(None).await?;
                let streaming = list
                    .iter()
                    .any(|m| m.name == old_leader && m.is_streaming_replica());
                let healthy = replaced_and_healthy(cluster, &old_leader, &container).await?;
                if !(streaming && healthy) {
                    return Ok(Check::Pending(format!(
                        "{}; new container healthy: {healthy}",
                        describe(&list)
                    )));
                }
                // Its own PostgreSQL must agree: in recovery, receiving WAL.
                cluster.member_serves(&old_leader).await
            },
        )
        .await?;
    }
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let settled_after = killed_at.elapsed();
    let (log, missing) = finish_probe(cluster, probe, table).await?;
    ensure_not_reinitialised(cluster, &before).await?;
    // The killed member's data is still there: every commit acknowledged before the kill (and
    // not lost) is in its own copy of the table.
    wait_until(
        &format!("{old_leader} holding every commit acknowledged before the kill"),
        Duration::from_secs(60),
        || async {
            let rows = cluster
                .query_member(&old_leader, &format!("SELECT id FROM {table}"))
                .await?;
            let present = rows
                .iter()
                .filter_map(|r| r.first().cloned().flatten())
                .filter_map(|id| id.parse::<i64>().ok())
                .collect();
            // Commits lost on the leader (possible without synchronous mode) cannot be here.
            let absent: Vec<i64> = log
                .missing_from(&present, Some(killed_at))
                .into_iter()
                .filter(|id| !missing.contains(id))
                .collect();
            Ok(if absent.is_empty() {
                Check::Done
            } else {
                Check::Pending(format!("{} acknowledged ids absent", absent.len()))
            })
        },
    )
    .await?;
    ensure_single_primary(cluster).await?;
    ensure!(
        log.acks_after(killed_at) > 0,
        "no write was acknowledged through the router after the kill"
    );
    let report = DisruptionReport {
        what: if failed_over {
            "failover after docker kill of the leader".into()
        } else {
            "docker kill of the leader: it restarted and kept the lock".into()
        },
        old_leader,
        new_leader,
        failed_over,
        write_gap: log.gap_after(killed_at),
        client_errors: log.errors_after(killed_at),
        acknowledged: log.acks.len(),
        lost: missing.len(),
        leader_after: Some(leader_after),
        settled_after,
        errors: log.error_summary(),
    };
    info!(%report, "failover measured");
    if cluster.synchronous {
        ensure!(
            missing.is_empty(),
            "synchronous mode is on, yet {} acknowledged commits are missing after the \
             kill (first ids: {:?}); {report}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    Ok(report)
}

/// Fails when more than one member accepts writes (is not in recovery), or none does.
pub async fn ensure_single_primary(cluster: &PatroniCluster) -> Result<String> {
    let mut writable = Vec::new();
    for key in &cluster.members {
        let rows = cluster
            .query_member(key, "SELECT pg_is_in_recovery()")
            .await?;
        let in_recovery = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        if in_recovery == "f" || in_recovery == "false" {
            writable.push(key.clone());
        }
    }
    ensure!(
        writable.len() == 1,
        "{} members accept writes (not in recovery): {writable:?}",
        writable.len()
    );
    Ok(writable.remove(0))
}

/// Commits a throw-away write through `endpoint` (router or pooler), retrying until it works
/// or [`RECOVERY_TIMEOUT`] passes.
async fn write_through(endpoint: &Endpoint, what: &str) -> Result<()> {
    wait_until(
        &format!("a write through {what}"),
        RECOVERY_TIMEOUT,
        || async {
            let client = match endpoint.connect_once(Duration::from_secs(3)).await {
                Ok(c) => c,
                Err(e) => return Ok(Check::Pending(format!("{e:#}"))),
            };
            Ok(
                match client
                    .simple_query(
                        "BEGIN; CREATE TEMP TABLE pgswarm_probe (i int) ON COMMIT DROP; \
                     INSERT INTO pgswarm_probe VALUES (1); COMMIT",
                    )
                    .await
                {
                    Ok(_) => Check::Done,
                    Err(e) => Check::Pending(e.to_string()),
                },
            )
        },
    )
    .await?;
    Ok(())
}

/// Replaces one task of each kind (a replica, an etcd member, the router, the pooler) with
/// `docker service update --force`; after each, a write must go through the router and the
/// pooler. Then another etcd member loses its volume and must rejoin by itself
/// ([`etcd_volume_lost`]). Then `swarmctl switchover --to` every member in turn: each must be accepted (Patroni
/// refuses a candidate it cannot reach, e.g. at a replaced task's stale address). Returns the
/// replaced service keys.
pub async fn replaced_tasks(cluster: &PatroniCluster) -> Result<Vec<String>> {
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let leader = cluster.leader().await?;
    let replica = cluster
        .members
        .iter()
        .find(|m| **m != leader)
        .cloned()
        .ok_or_else(|| anyhow!("no replica"))?;
    let stack = &cluster.dep.stack;
    let etcd = stack
        .services()?
        .into_iter()
        .find(|s| s.env.mode() == Mode::Etcd)
        .map(|s| s.key)
        .ok_or_else(|| anyhow!("no etcd service in the stack"))?;
    let router = stack.only_service(Mode::Router)?.key.clone();
    let pooler = stack.only_service(Mode::Pooler)?.key.clone();
    let kinds = vec![replica, etcd.clone(), router, pooler];
    for key in &kinds {
        let container = cluster
            .dep
            .container(key)
            .await?
            .ok_or_else(|| anyhow!("{key} has no running container"))?;
        info!(service = %key, "docker service update --force");
        docker_async(&[
            "service",
            "update",
            "--force",
            "--detach",
            &cluster.dep.service_name(key),
        ])
        .await?;
        wait_until(
            &format!("{key} healthy in a new container"),
            RECOVERY_TIMEOUT,
            || async {
                Ok(if replaced_and_healthy(cluster, key, &container).await? {
                    Check::Done
                } else {
                    Check::Pending(format!("{key} not yet replaced and healthy"))
                })
            },
        )
        .await?;
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        write_through(&cluster.rw, &format!("the router after {key} was replaced")).await?;
        write_through(
            &cluster.pooler,
            &format!("the pooler after {key} was replaced"),
        )
        .await?;
    }
    // Another etcd member loses its volume: it must rejoin by itself, and the switchovers
    // below then run on the rebuilt etcd cluster.
    let lost = stack
        .services_in_mode(Mode::Etcd)?
        .into_iter()
        .map(|s| s.key)
        .rfind(|k| *k != etcd)
        .ok_or_else(|| anyhow!("the stack has a single etcd member"))?;
    etcd_volume_lost(cluster, &lost).await?;
    write_through(
        &cluster.rw,
        &format!("the router after {lost} lost its volume"),
    )
    .await?;
    write_through(
        &cluster.pooler,
        &format!("the pooler after {lost} lost its volume"),
    )
    .await?;
    let spec = cluster.dep.spec_path();
    for member in &cluster.members {
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        if cluster.leader().await? == *member {
            continue;
        }
        info!(to = %member, "swarmctl switchover");
        let out = tokio::process::Command::new(crate::image::swarmctl_path())
            .arg("switchover")
            .arg("-f")
            .arg(&spec)
            .arg("--to")
            .arg(member)
            .output()
            .await
            .context("cannot run swarmctl switchover")?;
        ensure!(
            out.status.success(),
            "swarmctl switchover --to {member} failed after the tasks were replaced ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        wait_until(&format!("{member} leading"), RECOVERY_TIMEOUT, || async {
            let list = cluster.list(None).await?;
            Ok(if list.iter().any(|m| m.is_leader() && m.name == *member) {
                Check::Done
            } else {
                Check::Pending(describe(&list))
            })
        })
        .await?;
        write_through(
            &cluster.pooler,
            &format!("the pooler with {member} leading"),
        )
        .await?;
    }
    ensure_single_primary(cluster).await?;
    Ok(kinds)
}

/// Run in a database member (which has python3 and reaches etcd by service name): prints
/// the names in the member list of the first etcd that answers, then `health=` and the
/// `/health` answer of etcd `argv[1]` (host:port); the other arguments are the members to ask.
const ETCD_MEMBERSHIP_PY: &str = r#"
import json, sys, urllib.request
names = None
for other in sys.argv[2:]:
    try:
        req = urllib.request.Request("http://%s/v3/cluster/member/list" % other, data=b"{}", method="POST")
        names = [m.get("name", "") for m in json.load(urllib.request.urlopen(req, timeout=5))["members"]]
        break
    except Exception as e:
        print("%s: %s" % (other, e))
print("members=" + ",".join(sorted(names or [])))
try:
    print("health=" + urllib.request.urlopen("http://%s/health" % sys.argv[1], timeout=5).read().decode())
except Exception as e:
    print("health=error %s" % e)
"#;

/// The volume of etcd member `key` is lost: its service is scaled to 0, its task containers
/// and its volume are removed, and it is scaled back to 1 on an empty volume. The member must
/// rejoin the etcd cluster by itself (listed under its name by another member, healthy, its
/// log saying it replaced its stale entry), and Patroni must keep a leader.
pub async fn etcd_volume_lost(cluster: &PatroniCluster, key: &str) -> Result<()> {
    let dep = &cluster.dep;
    let etcd: Vec<(String, String)> = dep
        .stack
        .services_in_mode(Mode::Etcd)?
        .into_iter()
        .filter_map(|s| match s.env.role {
            Role::Etcd { client_port, .. } => {
                Some((s.key.clone(), format!("{}:{client_port}", s.key)))
            }
            _ => None,
        })
        .collect();
    let (_, target) = etcd
        .iter()
        .find(|(k, _)| k == key)
        .cloned()
        .ok_or_else(|| anyhow!("{key} is not an etcd member of the stack"))?;
    let others: Vec<String> = etcd
        .iter()
        .filter(|(k, _)| k != key)
        .map(|(_, a)| a.clone())
        .collect();
    let container = dep
        .container(key)
        .await?
        .ok_or_else(|| anyhow!("{key} has no running container"))?;
    let volume = docker_async(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}}{{end}}{{end}}",
        &container,
    ])
    .await?
    .trim()
    .to_string();
    ensure!(!volume.is_empty(), "{key}'s container mounts no volume");
    let service = dep.service_name(key);
    info!(service = %service, volume = %volume, "scale to 0, remove the volume, scale to 1");
    docker_async(&["service", "scale", "--detach", &format!("{service}=0")]).await?;
    wait_until(
        &format!("{service}'s containers gone"),
        RECOVERY_TIMEOUT,
        || async {
            let left = crate::docker::ps_all_nodes(&[
                "-aq",
                "--filter",
                &format!("label=com.docker.swarm.service.name={service}"),
            ])
            .await?;
            if left.is_empty() {
                return Ok(Check::Done);
            }
            // Swarm keeps its exited task containers, which hold on to the volume.
            for id in &left {
                let _ = docker_async(&["rm", "-f", id]).await;
            }
            Ok(Check::Pending(format!("containers left: {left:?}")))
        },
    )
    .await?;
    // With the member gone, doctor (asking from a one-off task, as a manager that runs no
    // member does) names it and says the quorum holds without it — once the two left have
    // elected a leader, should the stopped one have led (etcd's election takes a moment,
    // during which a member answers /health without a leader).
    wait_until(
        &format!("doctor to report the quorum held without {key}"),
        RECOVERY_TIMEOUT,
        || async {
            let line = doctor_etcd_line(cluster, true).await?;
            Ok(
                if line.contains("warn")
                    && line.contains("quorum held by 2 of 3")
                    && line.contains(key)
                {
                    Check::Done
                } else {
                    Check::Pending(format!("doctor with {key} stopped: {line}"))
                },
            )
        },
    )
    .await?;
    crate::docker::docker_each_node_async(&["volume", "rm", "-f", &volume]).await?;
    let still = crate::docker::docker_each_node_async(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{volume}$"),
    ])
    .await?;
    ensure!(still.trim().is_empty(), "volume {volume} is still there");
    docker_async(&["service", "scale", "--detach", &format!("{service}=1")]).await?;
    let probe_member = cluster
        .members
        .first()
        .ok_or_else(|| anyhow!("no database member"))?;
    let my_name = key.to_string();
    wait_until(
        &format!("{key} back in the etcd cluster on an empty volume"),
        RECOVERY_TIMEOUT,
        || async {
            let mut args = vec!["python3", "-c", ETCD_MEMBERSHIP_PY, target.as_str()];
            args.extend(others.iter().map(String::as_str));
            let out = dep.exec(probe_member, &args).await?;
            let listed = out
                .lines()
                .find_map(|l| l.strip_prefix("members="))
                .is_some_and(|names| names.split(',').any(|n| n == my_name));
            let healthy = out
                .lines()
                .find_map(|l| l.strip_prefix("health="))
                .is_some_and(|h| h.contains("\"health\":\"true\""));
            Ok(if listed && healthy {
                Check::Done
            } else {
                Check::Pending(out.trim().replace('\n', "; "))
            })
        },
    )
    .await?;
    let new = dep
        .container(key)
        .await?
        .ok_or_else(|| anyhow!("{key} has no running container"))?;
    let logs = crate::docker::docker_all_output(&["logs", &new]).await;
    ensure!(
        logs.contains("removed this member's stale entry")
            && logs.contains("starting as a new member of the existing etcd cluster"),
        "{key} rejoined, but its log does not say it replaced its stale entry:\n{logs}"
    );
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let line = doctor_etcd_line(cluster, false).await?;
    ensure!(
        line.contains("all 3 members see a leader"),
        "doctor after {key} rejoined: {line}"
    );
    Ok(())
}

/// The `etcd quorum` line of `swarmctl doctor` (its other checks depend on the machine and
/// are not judged here); `remote`: asked through a one-off task (`SWARMCTL_REMOTE=1`).
async fn doctor_etcd_line(cluster: &PatroniCluster, remote: bool) -> Result<String> {
    let mut cmd = tokio::process::Command::new(crate::image::swarmctl_path());
    cmd.arg("doctor").arg("-f").arg(cluster.dep.spec_path());
    if remote {
        cmd.env("SWARMCTL_REMOTE", "1");
    }
    let out = cmd.output().await.context("cannot run swarmctl doctor")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("etcd quorum"))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "swarmctl doctor printed no etcd quorum line ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Where a member's data directory is inside its container (the image's default data root).
const MEMBER_PGDATA: &str = "/var/lib/pgswarm/pgdata";

/// `kill -9` of the leader's postmaster under write load, Patroni and the container alive.
/// The leader is expected to restart PostgreSQL in place (crash recovery) and keep its lock;
/// the report says whether leadership moved instead. Lost acknowledged commits are counted;
/// in synchronous mode any loss is an error.
pub async fn postmaster_crash(cluster: &PatroniCluster, table: &str) -> Result<DisruptionReport> {
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let before = identities(cluster).await?;
    let old_leader = cluster.leader().await?;
    let probe = WriteProbe::start(cluster.rw.clone(), table).await?;
    tokio::time::sleep(BASELINE).await;

    info!(member = %old_leader, "kill -9 of the leader's postmaster");
    let script = format!("kill -9 \"$(head -n 1 {MEMBER_PGDATA}/postmaster.pid)\"");
    let killed_at = Instant::now();
    cluster
        .dep
        .exec(&old_leader, &["sh", "-c", &script])
        .await?;
    let found = std::sync::Mutex::new(String::new());
    wait_until(
        &format!("a running leader after {old_leader}'s postmaster was killed"),
        RECOVERY_TIMEOUT,
        || async {
            let list = cluster.list(None).await?;
            Ok(
                match list.iter().find(|m| m.is_leader() && m.state == "running") {
                    Some(m) => {
                        if let Ok(mut name) = found.lock() {
                            name.clone_from(&m.name);
                        }
                        Check::Done
                    }
                    None => Check::Pending(describe(&list)),
                },
            )
        },
    )
    .await?;
    let leader_after = killed_at.elapsed();
    let new_leader = found.into_inner().unwrap_or_default();
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let settled_after = killed_at.elapsed();
    let (log, missing) = finish_probe(cluster, probe, table).await?;
    ensure_not_reinitialised(cluster, &before).await?;
    ensure_single_primary(cluster).await?;
    ensure!(
        log.acks_after(killed_at) > 0,
        "no write was acknowledged through the router after the postmaster was killed"
    );
    let failed_over = new_leader != old_leader;
    let report = DisruptionReport {
        what: if failed_over {
            "postmaster killed: failed over".into()
        } else {
            "postmaster killed: restarted in place".into()
        },
        old_leader,
        new_leader,
        failed_over,
        write_gap: log.gap_after(killed_at),
        client_errors: log.errors_after(killed_at),
        acknowledged: log.acks.len(),
        lost: missing.len(),
        leader_after: Some(leader_after),
        settled_after,
        errors: log.error_summary(),
    };
    info!(%report, "postmaster crash measured");
    if cluster.synchronous {
        ensure!(
            missing.is_empty(),
            "synchronous mode is on, yet {} acknowledged commits are missing after the \
             postmaster was killed (first ids: {:?}); {report}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    Ok(report)
}

/// Planned switchover (`patronictl switchover`) under write load, to a streaming replica.
pub async fn switchover(cluster: &PatroniCluster, table: &str) -> Result<DisruptionReport> {
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let before = identities(cluster).await?;
    let list = cluster.list(None).await?;
    let old_leader = cluster.leader().await?;
    let candidate = list
        .iter()
        .filter(|m| m.is_streaming_replica())
        .max_by_key(|m| m.role == "Sync Standby")
        .map(|m| m.name.clone())
        .ok_or_else(|| anyhow!("no streaming replica to switch over to: {list:?}"))?;
    let probe = WriteProbe::start(cluster.rw.clone(), table).await?;
    tokio::time::sleep(BASELINE).await;

    info!(from = %old_leader, to = %candidate, "patronictl switchover");
    let started = Instant::now();
    let yml = patroni_yml();
    cluster
        .dep
        .exec(
            &old_leader,
            &[
                "patronictl",
                "-c",
                &yml,
                "switchover",
                "--leader",
                &old_leader,
                "--candidate",
                &candidate,
                "--force",
            ],
        )
        .await?;
    wait_until(
        &format!("{candidate} leading after the switchover"),
        RECOVERY_TIMEOUT,
        || async {
            let list = cluster.list(None).await?;
            Ok(list.iter().any(|m| m.is_leader() && m.name == candidate))
        },
    )
    .await?;
    let leader_after = started.elapsed();
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let settled_after = started.elapsed();
    let (log, missing) = finish_probe(cluster, probe, table).await?;
    ensure_not_reinitialised(cluster, &before).await?;
    let report = DisruptionReport {
        what: "switchover (patronictl)".into(),
        failed_over: candidate != old_leader,
        old_leader,
        new_leader: candidate,
        write_gap: log.gap_after(started),
        client_errors: log.errors_after(started),
        acknowledged: log.acks.len(),
        lost: missing.len(),
        leader_after: Some(leader_after),
        settled_after,
        errors: log.error_summary(),
    };
    info!(%report, "switchover measured");
    ensure!(
        missing.is_empty(),
        "{} acknowledged commits are missing after a planned switchover (first ids: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(report)
}

/// `swarmctl switchover` (which pauses PgBouncer while the leader changes) under write load
/// through the pooler, to the synchronous standby: the pooler's clients wait, none fails, and
/// nothing acknowledged is lost. The write gap is how long they waited.
pub async fn switchover_through_pooler(
    cluster: &PatroniCluster,
    table: &str,
) -> Result<DisruptionReport> {
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let before = identities(cluster).await?;
    let list = cluster.list(None).await?;
    let old_leader = cluster.leader().await?;
    let candidate = list
        .iter()
        .filter(|m| m.is_streaming_replica())
        .max_by_key(|m| m.role == "Sync Standby")
        .map(|m| m.name.clone())
        .ok_or_else(|| anyhow!("no streaming replica to switch over to: {list:?}"))?;
    // A client of the pooler waits for its answer (up to 30 s) instead of giving up at 2 s:
    // what PgBouncer's pause is for.
    let probe =
        WriteProbe::start_patient(cluster.pooler.clone(), table, Duration::from_secs(30)).await?;
    tokio::time::sleep(BASELINE).await;

    info!(from = %old_leader, to = %candidate, "swarmctl switchover (pooler paused)");
    let started = Instant::now();
    let out = tokio::process::Command::new(crate::image::swarmctl_path())
        .arg("switchover")
        .arg("-f")
        .arg(cluster.dep.spec_path())
        .arg("--to")
        .arg(&candidate)
        .output()
        .await
        .context("cannot run swarmctl switchover")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "swarmctl switchover --to {candidate} failed ({}): {said}",
        out.status
    );
    ensure!(
        said.contains("paused the pooler"),
        "swarmctl switchover did not pause the pooler: {said}"
    );
    let leader_after = started.elapsed();
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let settled_after = started.elapsed();
    let (log, missing) = finish_probe(cluster, probe, table).await?;
    ensure_not_reinitialised(cluster, &before).await?;
    ensure_single_primary(cluster).await?;
    let report = DisruptionReport {
        what: "switchover through the paused pooler (swarmctl)".into(),
        failed_over: candidate != old_leader,
        old_leader,
        new_leader: candidate,
        write_gap: log.gap_after(started),
        client_errors: log.errors_after(started),
        acknowledged: log.acks.len(),
        lost: missing.len(),
        leader_after: Some(leader_after),
        settled_after,
        errors: log.error_summary(),
    };
    info!(%report, "switchover through the pooler measured");
    ensure!(
        missing.is_empty(),
        "{} acknowledged commits are missing after a switchover through the pooler (first ids: \
         {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(report)
}

/// `docker service update --force` of the leader's service (what a new image or a changed
/// setting does) under write load through the pooler: the leader's sidecar hands over to a
/// replica with the pooler paused before its container stops, so the pooler's clients wait
/// instead of failing; nothing acknowledged is lost, no data directory is wiped, never two
/// primaries. The write gap is how long they waited.
pub async fn update_leader_through_pooler(
    cluster: &PatroniCluster,
    table: &str,
) -> Result<DisruptionReport> {
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let before = identities(cluster).await?;
    let old_leader = cluster.leader().await?;
    let container = cluster
        .dep
        .container(&old_leader)
        .await?
        .ok_or_else(|| anyhow!("the leader {old_leader} has no running container"))?;
    let probe =
        WriteProbe::start_patient(cluster.pooler.clone(), table, Duration::from_secs(30)).await?;
    tokio::time::sleep(BASELINE).await;
    let service = cluster.dep.service_name(&old_leader);
    info!(leader = %old_leader, "docker service update --force of the leader (through the pooler)");
    let started = Instant::now();
    docker_async(&["service", "update", "--force", "--detach", &service]).await?;
    wait_until(
        &format!("{old_leader} healthy in a new container"),
        RECOVERY_TIMEOUT,
        || replaced_and_healthy(cluster, &old_leader, &container),
    )
    .await?;
    let leader_after = started.elapsed();
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let settled_after = started.elapsed();
    let new_leader = cluster.leader().await?;
    let (log, missing) = finish_probe(cluster, probe, table).await?;
    ensure_not_reinitialised(cluster, &before).await?;
    ensure_single_primary(cluster).await?;
    let report = DisruptionReport {
        what: "forced update of the leader's service, through the pooler".into(),
        failed_over: new_leader != old_leader,
        old_leader,
        new_leader,
        write_gap: log.gap_after(started),
        client_errors: log.errors_after(started),
        acknowledged: log.acks.len(),
        lost: missing.len(),
        leader_after: Some(leader_after),
        settled_after,
        errors: log.error_summary(),
    };
    info!(%report, "forced update of the leader through the pooler measured");
    ensure!(
        missing.is_empty(),
        "{} acknowledged commits are missing after a forced update of the leader (first ids: \
         {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(report)
}

/// Scenario 4, restart safety: `docker service update --force` on each data member in turn, under
/// write load. After each, the member is back (streaming or leading) in a new container with
/// the same data; nothing acknowledged is lost; writes go on through the router.
pub async fn forced_restarts(
    cluster: &PatroniCluster,
    table: &str,
) -> Result<Vec<DisruptionReport>> {
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;
    let before = identities(cluster).await?;
    let probe = WriteProbe::start(cluster.rw.clone(), table).await?;
    tokio::time::sleep(BASELINE).await;
    let mut windows = Vec::new();
    for key in &cluster.members {
        let old_leader = cluster.leader().await?;
        let container = cluster
            .dep
            .container(key)
            .await?
            .ok_or_else(|| anyhow!("member {key} has no running container"))?;
        let service = cluster.dep.service_name(key);
        info!(member = %key, leader = %old_leader, "docker service update --force");
        let started = Instant::now();
        docker_async(&["service", "update", "--force", "--detach", &service]).await?;
        wait_until(
            &format!("{key} healthy in a new container"),
            RECOVERY_TIMEOUT,
            || replaced_and_healthy(cluster, key, &container),
        )
        .await?;
        wait_until(
            &format!("{key} serving again (leader, or replica streaming)"),
            RECOVERY_TIMEOUT,
            || cluster.member_serves(key),
        )
        .await?;
        cluster.wait_ready(RECOVERY_TIMEOUT).await?;
        let new_leader = cluster.leader().await?;
        windows.push((
            key.clone(),
            old_leader,
            new_leader,
            started,
            started.elapsed(),
        ));
    }
    let (log, missing) = finish_probe(cluster, probe, table).await?;
    ensure_not_reinitialised(cluster, &before).await?;
    let mut reports = Vec::new();
    for (i, (key, old_leader, new_leader, started, settled_after)) in windows.iter().enumerate() {
        let until = windows.get(i + 1).map(|w| w.3);
        let in_window = |at: Instant| {
            at > *started
                && match until {
                    Some(u) => at <= u,
                    None => true,
                }
        };
        let gap = log
            .acks
            .windows(2)
            .filter(|w| in_window(w[1].at))
            .map(|w| w[1].at.duration_since(w[0].at))
            .max()
            .unwrap_or_default();
        reports.push(DisruptionReport {
            what: format!("forced restart of {key}"),
            old_leader: old_leader.clone(),
            new_leader: new_leader.clone(),
            failed_over: old_leader != new_leader,
            write_gap: gap,
            client_errors: log.errors.iter().filter(|(at, _)| in_window(*at)).count(),
            acknowledged: log.acks.len(),
            lost: missing.len(),
            leader_after: None,
            settled_after: *settled_after,
            errors: Vec::new(),
        });
    }
    for report in &reports {
        info!(%report, "forced restart measured");
    }
    let last_start = windows.last().map(|w| w.3).unwrap_or_else(Instant::now);
    ensure!(
        log.acks_after(last_start) > 0,
        "no write was acknowledged through the router after the last restart"
    );
    ensure!(
        missing.is_empty(),
        "{} acknowledged commits are missing after forced restarts (first ids: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(reports)
}
