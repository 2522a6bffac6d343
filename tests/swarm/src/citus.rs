//! Scenario 5: Patroni in Citus mode on a swarm. A coordinator group of three and two worker
//! groups of two are deployed like any stack; then the Citus walkthrough: `pg_dist_node` lists the coordinator and both worker groups (registered by
//! Patroni), a distributed `users` table with 1000 rows spread over both worker groups, a
//! reference table readable on every group's primary; then the coordinator leader's container
//! is killed, and a worker group leader's: a replica takes over, `pg_dist_node` follows, and
//! the same queries succeed.
//!
//! Citus is not in Debian's archive: an image built without the Dockerfile's CITUS_VERSION
//! argument has no extension, so the scenario is ignored unless asked for (and then fails on
//! such an image, saying how to build one with the extension). What does not
//! need the extension (every member's Citus configuration, the router's targets) is checked
//! without Docker by swarmctl's `citus_config` tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgswarm_contract::ctl::{QueryReply, Request, Target};
use pgswarm_contract::{Mode, Role, Secret};
use serde_json::Value;
use tokio_postgres::Client;
use tracing::info;

use crate::deployment::Deployment;
use crate::docker::docker_async;
use crate::patroni::patroni_yml;
use crate::pg::{wait_until, Endpoint};
use crate::stack::{free_port, Stack};

/// Where Debian's PostgreSQL packages put extension control files.
pub const CITUS_CONTROL_GLOB: &str = "/usr/share/postgresql/*/extension/citus.control";
/// A Citus stack has seven PostgreSQL members: give it longer than the others.
pub const CITUS_DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
/// Deadline for the cluster to settle after a disruption.
pub const CITUS_RECOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// The distributed database of the spec.
pub const DATABASE: &str = "citus";
/// Rows of the walkthrough's `users` table.
pub const USERS: i64 = 1000;
/// Rows of the reference table.
const COUNTRIES: i64 = 3;

/// Whether `image` has the Citus extension: `docker run --rm --entrypoint sh IMAGE -c 'ls
/// <extension dir>/citus.control'`.
pub fn image_has_citus(image: &str) -> Result<bool> {
    let script = format!("ls {CITUS_CONTROL_GLOB}");
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            &script,
        ])
        .output()
        .context("cannot run `docker run` to look for the Citus extension")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(true),
        // ls: the pattern matched nothing.
        Some(1 | 2) if stderr.contains("No such file") => Ok(false),
        _ => bail!(
            "`docker run --entrypoint sh {image} -c '{script}'` failed ({}): {}",
            out.status,
            stderr.trim()
        ),
    }
}

/// The Citus walkthrough on a one-node test swarm: coordinator group 0 (coord1..3, quorum commit, Patroni's
/// Citus default), worker groups 1 and 2 of two members each with one synchronous standby;
/// the router's read-write and worker ports published on free host ports; no pooler (the patroni
/// scenario covers PgBouncer in front of the router).
pub fn spec(name: &str, image: &str) -> Result<String> {
    let (rw, ro, workers) = (free_port()?, free_port()?, free_port()?);
    Ok(format!(
        "name: {name}
topology: citus
image: {image}
citus:
  database: {DATABASE}
  groups:
    - group: 0
      members: [coord1, coord2, coord3]
    - group: 1
      members: [worker1a, worker1b]
      synchronous_mode: on
    - group: 2
      members: [worker2a, worker2b]
      synchronous_mode: on
patroni:
  ttl: 20
  loop_wait: 5
  retry_timeout: 3
etcd:
  members: 3
router:
  rw_port: {rw}
  ro_port: {ro}
  worker_port: {workers}
  publish: host
  check_interval_ms: 1000
  fall: 2
  rise: 1
pooler:
  enabled: false
"
    ))
}

/// One row of `patronictl list` in Citus mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub group: u32,
    pub name: String,
    /// `Leader`, `Sync Standby`, `Quorum Standby`, `Replica`, ...
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`, ...
    pub state: String,
}

impl GroupMember {
    pub fn is_leader(&self) -> bool {
        self.role == "Leader" && self.state == "running"
    }

    pub fn is_streaming_replica(&self) -> bool {
        self.role != "Leader" && self.state == "streaming"
    }
}

/// Parses `patronictl list -f json` of a Citus cluster (every group, with a `Group` column).
pub fn parse_citus_list(json: &str) -> Result<Vec<GroupMember>> {
    let rows: Vec<Value> =
        serde_json::from_str(json.trim()).context("patronictl list -f json is not a JSON list")?;
    rows.iter()
        .map(|row| {
            let text = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Ok(GroupMember {
                group: row
                    .get("Group")
                    .and_then(Value::as_u64)
                    .and_then(|g| u32::try_from(g).ok())
                    .ok_or_else(|| anyhow!("a row has no Citus group: {row}"))?,
                name: row
                    .get("Member")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("a row has no Member: {row}"))?
                    .to_string(),
                role: text("Role"),
                state: text("State"),
            })
        })
        .collect()
}

/// The running leader of each group, or why there is not exactly one in some group.
pub fn leaders_by_group(
    groups: &BTreeMap<u32, Vec<String>>,
    list: &[GroupMember],
) -> Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for group in groups.keys() {
        let leaders: Vec<&GroupMember> = list
            .iter()
            .filter(|m| m.group == *group && m.is_leader())
            .collect();
        match leaders.as_slice() {
            [one] => {
                out.insert(*group, one.name.clone());
            }
            _ => bail!("group {group}: expected one running leader, patronictl lists {list:?}"),
        }
    }
    Ok(out)
}

/// A deployed Citus cluster.
#[derive(Debug)]
pub struct CitusCluster {
    pub dep: Deployment,
    /// Group to its members (service keys), from the stack's contract.
    pub groups: BTreeMap<u32, Vec<String>>,
    /// The router's read-write port (coordinator primary), database `citus`.
    pub rw: Endpoint,
    /// The router's worker port (the worker groups' primaries), database `citus`.
    pub workers: Endpoint,
    pub pg_port: u16,
    pub ready_after: Duration,
}

impl CitusCluster {
    /// Deploys a Citus spec and waits until it is ready ([`Self::wait_ready`]).
    pub async fn deploy(name: &str, spec: &str, timeout: Duration) -> Result<CitusCluster> {
        let publish = |stack: &Stack| -> Result<Vec<(String, u16)>> {
            let router = stack.only_service(Mode::Router)?;
            let mut out = Vec::new();
            if let Role::Router {
                rw_port,
                worker_port: Some(worker_port),
                ..
            } = router.env.role
            {
                out.push((router.key.clone(), rw_port));
                out.push((router.key.clone(), worker_port));
            } else {
                bail!("the Citus spec's router has no worker port");
            }
            Ok(out)
        };
        let dep = Deployment::deploy(name, spec, &publish)?;
        let router = dep.stack.only_service(Mode::Router)?;
        let Role::Router {
            rw_port,
            worker_port: Some(worker_port),
            ..
        } = &router.env.role
        else {
            bail!("the router service has no worker port");
        };
        let mut groups: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut superuser = None;
        let mut pg_port = pgswarm_contract::defaults::PG_PORT;
        for service in dep.stack.services_in_mode(Mode::Patroni)? {
            let Role::Patroni {
                citus: Some(citus),
                postgres,
                ..
            } = &service.env.role
            else {
                bail!("member {} has no Citus group in its contract", service.key);
            };
            groups
                .entry(citus.group)
                .or_default()
                .push(service.key.clone());
            superuser = Some(service.env.common.superuser.clone());
            pg_port = postgres.port;
        }
        let user = superuser.ok_or_else(|| anyhow!("the stack has no Patroni member"))?;
        let password = dep.password(Secret::SuperuserPassword)?;
        let endpoint = |key: &str, target: u16| -> Result<Endpoint> {
            let mut e = Endpoint::new(dep.host_port(key, target)?, &user, password.clone());
            e.dbname = DATABASE.into();
            Ok(e)
        };
        let rw = endpoint(&router.key, *rw_port)?;
        let workers = endpoint(&router.key, *worker_port)?;
        let mut cluster = CitusCluster {
            dep,
            groups,
            rw,
            workers,
            pg_port,
            ready_after: Duration::ZERO,
        };
        let deadline = Instant::now() + timeout;
        cluster.dep.wait_healthy(timeout).await?;
        cluster
            .wait_ready(deadline.saturating_duration_since(Instant::now()))
            .await?;
        cluster.ready_after = cluster.dep.deployed_at.elapsed();
        info!(stack = %cluster.dep.name, ready_after = ?cluster.ready_after, "Citus cluster ready");
        Ok(cluster)
    }

    /// Every data member, in group order.
    pub fn members(&self) -> impl Iterator<Item = &String> {
        self.groups.values().flatten()
    }

    /// `patronictl list` (every group) from the first member other than `avoid` that answers.
    pub async fn list(&self, avoid: Option<&str>) -> Result<Vec<GroupMember>> {
        let mut last = anyhow!("no member to ask");
        for key in self.members().filter(|k| Some(k.as_str()) != avoid) {
            let Some(container) = self.dep.container(key).await? else {
                continue;
            };
            let yml = patroni_yml();
            match docker_async(&[
                "exec",
                &container,
                "patronictl",
                "-c",
                &yml,
                "list",
                "-f",
                "json",
            ])
            .await
            {
                Ok(out) => return parse_citus_list(&out),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The running leader of each group.
    pub async fn leaders(&self, avoid: Option<&str>) -> Result<BTreeMap<u32, String>> {
        leaders_by_group(&self.groups, &self.list(avoid).await?)
    }

    /// Every member listed; in each group one running leader and every other member streaming.
    pub async fn groups_settled(&self) -> Result<bool> {
        let list = self.list(None).await?;
        let all_listed = self.members().all(|m| list.iter().any(|r| &r.name == m));
        let settled = self.groups.iter().all(|(group, members)| {
            let rows: Vec<&GroupMember> = list.iter().filter(|r| r.group == *group).collect();
            rows.iter().filter(|r| r.is_leader()).count() == 1
                && rows.iter().filter(|r| r.is_streaming_replica()).count() + 1 == members.len()
        });
        Ok(all_listed && settled)
    }

    /// The primary of each group as `pg_dist_node` lists it (active primary rows).
    pub async fn pg_dist_primaries(client: &Client) -> Result<BTreeMap<u32, String>> {
        let rows = client
            .query(
                "SELECT groupid, nodename FROM pg_catalog.pg_dist_node \
                 WHERE noderole = 'primary' AND isactive ORDER BY groupid",
                &[],
            )
            .await
            .context("cannot read pg_dist_node on the coordinator")?;
        let mut out = BTreeMap::new();
        for row in rows {
            let group: i32 = row.get(0);
            let node: String = row.get(1);
            out.insert(u32::try_from(group).context("negative groupid")?, node);
        }
        Ok(out)
    }

    /// Waits until the groups are settled and `pg_dist_node`, read through the router's
    /// read-write port, names each group's Patroni leader as its primary.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        wait_until(
            "a leader and streaming replicas in every Citus group (patronictl list)",
            timeout,
            || self.groups_settled(),
        )
        .await?;
        let left = timeout.saturating_sub(started.elapsed());
        wait_until(
            "pg_dist_node naming every group's Patroni leader as its primary",
            left,
            || async {
                let leaders = self.leaders(None).await?;
                let client = self.rw.connect_once(Duration::from_secs(3)).await?;
                let registered = Self::pg_dist_primaries(&client).await?;
                Ok(registered == leaders)
            },
        )
        .await?;
        Ok(started.elapsed())
    }

    /// Rows of `sql` run on member `key` itself (`ctl query` on 127.0.0.1 inside its
    /// container, database `citus`), every value as text.
    pub async fn query_on_member(&self, key: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let argv = Request::Query {
            target: Target::new("127.0.0.1", self.pg_port).database(DATABASE),
            sql: sql.to_string(),
        }
        .argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.dep.exec(key, &argv).await?;
        let reply: QueryReply = serde_json::from_str(out.trim())
            .with_context(|| format!("{key}: `ctl query` printed no reply: {}", out.trim()))?;
        Ok(reply.rows)
    }
}

/// What the walkthrough's queries saw at one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryCheck {
    pub users: i64,
    /// Primary placements of `users`' shards by group.
    pub placements: BTreeMap<u32, i64>,
    /// Primary of each group in `pg_dist_node`.
    pub primaries: BTreeMap<u32, String>,
}

/// The walkthrough queries, through the router's read-write port: `count(*)` of `users` is
/// `expected_users`, the shards' primary placements are on both worker groups and only there
/// (counted through `pg_dist_placement`, since `citus_shards` lists secondaries too), and the
/// reference table answers on every group's primary.
pub async fn check_queries(
    cluster: &CitusCluster,
    client: &Client,
    expected_users: i64,
) -> Result<QueryCheck> {
    let users: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .context("SELECT count(*) FROM users failed")?
        .get(0);
    ensure!(
        users == expected_users,
        "users has {users} rows, expected {expected_users}"
    );
    let shards: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_dist_shard WHERE logicalrelid = 'users'::regclass",
            &[],
        )
        .await?
        .get(0);
    let rows = client
        .query(
            "SELECT n.groupid, count(*) \
             FROM pg_catalog.pg_dist_placement p \
             JOIN pg_catalog.pg_dist_shard s ON s.shardid = p.shardid \
             JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary' \
             WHERE s.logicalrelid = 'users'::regclass \
             GROUP BY n.groupid ORDER BY n.groupid",
            &[],
        )
        .await
        .context("cannot count the placements of users")?;
    let mut placements = BTreeMap::new();
    for row in rows {
        let group: i32 = row.get(0);
        let n: i64 = row.get(1);
        placements.insert(u32::try_from(group).context("negative groupid")?, n);
    }
    let worker_groups: BTreeSet<u32> = cluster.groups.keys().copied().filter(|g| *g != 0).collect();
    let placed: BTreeSet<u32> = placements.keys().copied().collect();
    ensure!(
        placed == worker_groups,
        "users' shards are placed on groups {placed:?}, expected exactly the worker groups \
         {worker_groups:?} (placements: {placements:?})"
    );
    ensure!(
        placements.values().sum::<i64>() == shards,
        "{shards} shards of users, but {placements:?} primary placements"
    );
    let primaries = CitusCluster::pg_dist_primaries(client).await?;
    for (group, primary) in &primaries {
        let rows = cluster
            .query_on_member(
                primary,
                "SELECT count(*) AS n, pg_is_in_recovery()::text AS in_recovery FROM countries",
            )
            .await
            .with_context(|| format!("reading the reference table on {primary} (group {group})"))?;
        let row = rows.first().ok_or_else(|| anyhow!("{primary}: no row"))?;
        let n: i64 = row
            .first()
            .cloned()
            .flatten()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("{primary}: count(*) unreadable: {row:?}"))?;
        ensure!(
            n == COUNTRIES,
            "the reference table has {n} rows on {primary} (group {group}), expected {COUNTRIES}"
        );
        ensure!(
            row.get(1).cloned().flatten().as_deref() == Some("false"),
            "{primary}, listed as group {group}'s primary in pg_dist_node, is in recovery"
        );
    }
    Ok(QueryCheck {
        users,
        placements,
        primaries,
    })
}

/// Where the router's worker port leads: not a standby, and a worker group.
async fn check_worker_port(cluster: &CitusCluster) -> Result<u32> {
    let client = cluster
        .workers
        .connect(Duration::from_secs(60))
        .await
        .context("connecting through the router's worker port")?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT groupid FROM pg_catalog.pg_dist_local_group)",
            &[],
        )
        .await
        .context("a query through the router's worker port failed")?;
    let (in_recovery, group): (bool, i32) = (row.get(0), row.get(1));
    ensure!(!in_recovery, "the router's worker port reached a standby");
    let group = u32::try_from(group).context("negative groupid")?;
    ensure!(
        group != 0 && cluster.groups.contains_key(&group),
        "the router's worker port reached group {group}, not a worker group"
    );
    Ok(group)
}

/// What a killed leader cost.
#[derive(Debug, Clone)]
pub struct FailoverReport {
    pub group: u32,
    pub old_leader: String,
    pub new_leader: String,
    /// From the kill to a new leader in patronictl.
    pub leader_after: Duration,
    /// From the kill to `pg_dist_node` naming the new leader.
    pub registered_after: Duration,
    /// From the kill to the walkthrough's queries succeeding through the router.
    pub queries_after: Duration,
    /// From the kill to every group settled again, the old leader streaming.
    pub settled_after: Duration,
}

impl fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group {} leader {} killed -> {}: new leader after {:.1} s, pg_dist_node after \
             {:.1} s, queries after {:.1} s, settled after {:.1} s",
            self.group,
            self.old_leader,
            self.new_leader,
            self.leader_after.as_secs_f64(),
            self.registered_after.as_secs_f64(),
            self.queries_after.as_secs_f64(),
            self.settled_after.as_secs_f64()
        )
    }
}

/// `docker kill` of group `group`'s leader, kept down until another member leads; waits until
/// `pg_dist_node` names the new leader and the queries succeed with `expected_users` rows
/// (after writing `new_rows` more through the router); then the killed member is started
/// again and must stream from a new container.
async fn kill_group_leader(
    cluster: &CitusCluster,
    group: u32,
    expected_users: i64,
    new_rows: std::ops::RangeInclusive<i64>,
) -> Result<FailoverReport> {
    let old_leader = cluster
        .leaders(None)
        .await?
        .remove(&group)
        .ok_or_else(|| anyhow!("group {group} has no leader"))?;
    let container = cluster
        .dep
        .container(&old_leader)
        .await?
        .ok_or_else(|| anyhow!("leader {old_leader} has no running container"))?;
    let service = cluster.dep.service_name(&old_leader);
    info!(group, member = %old_leader, container = %container, "docker kill of the group's leader");
    let killed_at = Instant::now();
    docker_async(&["kill", &container]).await?;
    // Swarm restarts a killed task within seconds, and a member back before its leader lock
    // expires takes the lock again: keep it down, as a dead host would be, until another
    // member leads.
    docker_async(&["service", "scale", "--detach", &format!("{service}=0")]).await?;

    let found = std::sync::Mutex::new(None::<String>);
    wait_until(
        &format!("a new leader in group {group} after the kill"),
        CITUS_RECOVERY_TIMEOUT,
        || async {
            let list = cluster.list(Some(&old_leader)).await?;
            let leader = list
                .iter()
                .find(|m| m.group == group && m.is_leader() && m.name != old_leader)
                .map(|m| m.name.clone());
            let done = leader.is_some();
            if let Ok(mut slot) = found.lock() {
                *slot = leader;
            }
            Ok(done)
        },
    )
    .await?;
    let leader_after = killed_at.elapsed();
    let new_leader = found
        .into_inner()
        .ok()
        .flatten()
        .ok_or_else(|| anyhow!("group {group}: the new leader was not recorded"))?;
    wait_until(
        &format!("pg_dist_node naming {new_leader} as group {group}'s primary"),
        CITUS_RECOVERY_TIMEOUT,
        || async {
            let client = cluster.rw.connect_once(Duration::from_secs(3)).await?;
            let primaries = CitusCluster::pg_dist_primaries(&client).await?;
            Ok(primaries.get(&group) == Some(&new_leader))
        },
    )
    .await?;
    let registered_after = killed_at.elapsed();
    let (first, last) = (*new_rows.start(), *new_rows.end());
    let expected = expected_users + (last - first + 1);
    wait_until(
        "a write and the walkthrough's queries through the router's read-write port",
        CITUS_RECOVERY_TIMEOUT,
        || async {
            let client = cluster.rw.connect_once(Duration::from_secs(3)).await?;
            client
                .execute(
                    "INSERT INTO users (id, name, email) \
                     SELECT i, 'user_' || i, 'user_' || i || '@example.com' \
                     FROM generate_series($1::bigint, $2::bigint) AS i \
                     ON CONFLICT (id) DO NOTHING",
                    &[&first, &last],
                )
                .await
                .context("writing through the router")?;
            check_queries(cluster, &client, expected).await?;
            Ok(true)
        },
    )
    .await?;
    let queries_after = killed_at.elapsed();
    docker_async(&["service", "scale", "--detach", &format!("{service}=1")]).await?;
    wait_until(
        &format!("{old_leader} back as a streaming replica in a new container"),
        CITUS_RECOVERY_TIMEOUT,
        || async {
            let current = cluster.dep.container(&old_leader).await?;
            let list = cluster.list(None).await?;
            Ok(current.is_some_and(|c| c != container)
                && list
                    .iter()
                    .any(|m| m.name == old_leader && m.is_streaming_replica()))
        },
    )
    .await?;
    cluster.wait_ready(CITUS_RECOVERY_TIMEOUT).await?;
    let report = FailoverReport {
        group,
        old_leader,
        new_leader,
        leader_after,
        registered_after,
        queries_after,
        settled_after: killed_at.elapsed(),
    };
    info!(%report, "Citus failover measured");
    Ok(report)
}

/// What the walkthrough saw.
#[derive(Debug, Clone)]
pub struct CitusReport {
    pub ready_after: Duration,
    pub initial: QueryCheck,
    pub worker_port_group: u32,
    pub coordinator_failover: FailoverReport,
    pub worker_failover: FailoverReport,
    pub last: QueryCheck,
}

impl fmt::Display for CitusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "citus: ready {:.1} s after deploy; pg_dist_node primaries {:?}; users {} rows, \
             shard placements by group {:?}; worker port -> group {}",
            self.ready_after.as_secs_f64(),
            self.initial.primaries,
            self.initial.users,
            self.initial.placements,
            self.worker_port_group
        )?;
        writeln!(f, "citus: coordinator: {}", self.coordinator_failover)?;
        writeln!(f, "citus: worker: {}", self.worker_failover)?;
        write!(
            f,
            "citus: afterwards users {} rows, primaries {:?}",
            self.last.users, self.last.primaries
        )
    }
}

/// The Citus walkthrough on a deployed cluster (see the module documentation).
pub async fn citus_walkthrough(cluster: &CitusCluster) -> Result<CitusReport> {
    cluster.wait_ready(CITUS_RECOVERY_TIMEOUT).await?;
    let leaders = cluster.leaders(None).await?;
    let client = cluster
        .rw
        .connect(Duration::from_secs(60))
        .await
        .context("connecting through the router's read-write port")?;
    let primaries = CitusCluster::pg_dist_primaries(&client).await?;
    ensure!(
        primaries.keys().copied().collect::<BTreeSet<u32>>() == BTreeSet::from([0, 1, 2]),
        "pg_dist_node lists primaries for groups {:?}, expected the coordinator group 0 and \
         worker groups 1 and 2",
        primaries.keys().collect::<Vec<_>>()
    );
    ensure!(
        primaries == leaders,
        "pg_dist_node lists {primaries:?}, Patroni's leaders are {leaders:?}"
    );

    // One statement per transaction, one at a time: Citus refuses some DDL (creating a
    // reference table) after a parallel multi-shard write in the same transaction.
    let insert_users = format!(
        "INSERT INTO users (id, name, email) \
         SELECT i, 'user_' || i, 'user_' || i || '@example.com' FROM generate_series(1, {USERS}) AS i"
    );
    for sql in [
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now())",
        "SELECT create_distributed_table('users', 'id')",
        insert_users.as_str(),
        "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL)",
        "SELECT create_reference_table('countries')",
        "INSERT INTO countries VALUES ('TR', 'Türkiye'), ('DE', 'Germany'), \
         ('US', 'United States')",
    ] {
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("the walkthrough's `{sql}` failed"))?;
    }
    let initial = check_queries(cluster, &client, USERS).await?;
    let worker_port_group = check_worker_port(cluster).await?;
    drop(client);

    let coordinator_failover = kill_group_leader(cluster, 0, USERS, 1001..=1010).await?;
    let worker_failover = kill_group_leader(cluster, 1, USERS + 10, 1011..=1020).await?;
    check_worker_port(cluster).await?;
    let client = cluster
        .rw
        .connect(Duration::from_secs(60))
        .await
        .context("connecting through the router's read-write port")?;
    let last = check_queries(cluster, &client, USERS + 20).await?;
    ensure!(
        last.primaries.get(&1) == Some(&worker_failover.new_leader)
            && last.primaries.get(&0) == Some(&coordinator_failover.new_leader),
        "pg_dist_node lists {:?} after both failovers",
        last.primaries
    );
    Ok(CitusReport {
        ready_after: cluster.ready_after,
        initial,
        worker_port_group,
        coordinator_failover,
        worker_failover,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"[
        {"Cluster": "demo", "Group": 0, "Member": "coord1", "Host": "coord1:5432", "Role": "Leader", "State": "running", "TL": 1},
        {"Cluster": "demo", "Group": 0, "Member": "coord2", "Host": "coord2:5432", "Role": "Quorum Standby", "State": "streaming", "TL": 1, "Lag in MB": 0},
        {"Cluster": "demo", "Group": 1, "Member": "worker1a", "Host": "worker1a:5432", "Role": "Sync Standby", "State": "streaming", "TL": 2, "Lag in MB": 0},
        {"Cluster": "demo", "Group": 1, "Member": "worker1b", "Host": "worker1b:5432", "Role": "Leader", "State": "running", "TL": 2}
    ]"#;

    #[test]
    fn citus_patronictl_rows_carry_their_group() {
        let list = parse_citus_list(LIST).expect("parses");
        assert_eq!(list.len(), 4);
        assert_eq!(list[2].group, 1);
        assert!(list[2].is_streaming_replica());
        assert!(list[3].is_leader());
        let groups = BTreeMap::from([
            (0, vec!["coord1".to_string(), "coord2".to_string()]),
            (1, vec!["worker1a".to_string(), "worker1b".to_string()]),
        ]);
        let leaders = leaders_by_group(&groups, &list).expect("one leader per group");
        assert_eq!(leaders[&0], "coord1");
        assert_eq!(leaders[&1], "worker1b");
        let missing = BTreeMap::from([(2, vec!["worker2a".to_string()])]);
        assert!(leaders_by_group(&missing, &list).is_err());
        assert!(parse_citus_list(r#"[{"Member": "pg1", "Role": "Leader"}]"#).is_err());
    }

    #[test]
    fn the_spec_names_three_groups_and_publishes_the_worker_port() {
        let text = spec("demo", "pgswarm:e2e").expect("spec");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        assert_eq!(doc["topology"].as_str(), Some("citus"));
        assert_eq!(doc["citus"]["groups"].as_sequence().map(Vec::len), Some(3));
        assert!(doc["router"]["worker_port"].as_u64().is_some());
    }
}
