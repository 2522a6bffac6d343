//! `citus add-group`: scale-out of a Citus cluster. After worker groups were added to the spec,
//! it checks that the image has the Citus extension, deploys the stack (new members, the
//! router's new worker list), waits until every group has a leader and streaming replicas,
//! then until Patroni registered each worker group's primary in `pg_dist_node` (Patroni does
//! that, never this code), and finally starts `citus_rebalance_start()` and follows
//! `citus_job_status()` until the job ends.
//!
//! SQL runs on the coordinator's primary, the group 0 leader Patroni lists, reached by its
//! service name and sent by `pgswarm-sidecar ctl query` inside a container of the cluster on
//! this node: the superuser's password is read from its secret file there and never leaves
//! the container.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use pgswarm_contract::ctl::{self, CtlError, QueryReply, Request, Target};
use pgswarm_contract::Role;
use serde_json::Value;

use crate::spec::{Cluster, ServiceKind, Topology};

use super::job;
use super::nodes::{self, NodeView};
use super::progress::Progress;
use super::status::{self, db_view, docker_view, ServiceView};
use super::{deploy, service_name, Engine};

/// Where Debian's PostgreSQL packages put extension control files (any major version).
pub const CITUS_CONTROL_GLOB: &str = "/usr/share/postgresql/*/extension/citus.control";

/// How often the registration and the rebalance are polled.
const POLL: Duration = Duration::from_secs(2);
/// How long queries may keep failing during the rebalance (a coordinator failover, say)
/// before giving up on following it.
const QUERY_OUTAGE: Duration = Duration::from_secs(120);
/// Log lines looked at, and shown, when a group was never registered.
const LOG_LINES_READ: usize = 400;
const LOG_LINES_SHOWN: usize = 15;

/// How shards are moved (`citus_rebalance_start`'s `shard_transfer_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ShardTransferMode {
    /// Logical replication where every table has a replica identity, else an error.
    #[default]
    Auto,
    /// Logical replication, also for tables without a replica identity (their updates and
    /// deletes fail during the move).
    ForceLogical,
    /// Writes to a shard are blocked while it is copied.
    BlockWrites,
}

impl ShardTransferMode {
    pub fn as_sql(self) -> &'static str {
        match self {
            ShardTransferMode::Auto => "auto",
            ShardTransferMode::ForceLogical => "force_logical",
            ShardTransferMode::BlockWrites => "block_writes",
        }
    }
}

/// What `add-group` was asked to do.
#[derive(Debug, Clone)]
pub struct AddGroupOptions {
    /// Worker groups to wait for; empty = every worker group of the spec.
    pub groups: Vec<u32>,
    /// Deadline for the deployment to be ready and the groups to be registered.
    pub timeout: Duration,
    pub transfer_mode: ShardTransferMode,
}

/// A worker group's primary as `pg_dist_node` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub group: u32,
    pub node: String,
    pub port: u16,
}

/// How the rebalance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceOutcome {
    /// Citus found the shards balanced already.
    NothingToMove,
    /// Job `job_id` finished with `tasks` tasks done.
    Finished { job_id: i64, tasks: u64 },
}

/// What `add-group` did.
#[derive(Debug, Clone)]
pub struct AddGroupOutcome {
    pub registered: Vec<Registration>,
    pub rebalance: RebalanceOutcome,
}

/// Problems an operator must act on.
#[derive(Debug, thiserror::Error)]
pub enum CitusError {
    #[error(
        "cluster {cluster} uses topology {topology}; `citus add-group` works on topology citus"
    )]
    NotCitus { cluster: String, topology: String },
    #[error(
        "--group {group}: the spec of cluster {cluster} has no worker group {group} (its worker \
         groups: {known}); add it under `citus.groups` first"
    )]
    UnknownGroup {
        group: u32,
        cluster: String,
        known: String,
    },
    #[error(
        "--group 0 is the coordinator, not a worker group: name the worker groups added to the \
         spec"
    )]
    Coordinator,
    #[error(
        "image {image} has no Citus extension ({CITUS_CONTROL_GLOB} is missing), and Patroni in \
         Citus mode cannot start PostgreSQL without it. Build an image with Citus from the \
         Citus project's Debian packages: \
         `DOCKER_BUILD_ARGS=\"--build-arg CITUS_VERSION=13.2\" scripts/build-image.sh {image}` \
         (the Dockerfile's CITUS_VERSION build argument), then run this again"
    )]
    NoExtension { image: String },
    #[error(
        "database {database} on the coordinator has no citus extension: Patroni creates it when \
         the coordinator group is first initialized; the coordinator's log (`docker service \
         logs {service}`) says why it did not"
    )]
    NotInDatabase { database: String, service: String },
}

/// One answer of `pgswarm-sidecar ctl query` (the contract's reply type).
pub type Rows = QueryReply;

/// Why a coordinator query failed, which decides whether it may be sent again.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    /// No request was sent (no local container holds the secret, the leader is not known
    /// yet): trying again runs nothing twice.
    #[error("{0:#}")]
    NotSent(anyhow::Error),
    /// The request may have run (the exec itself failed): not tried again.
    #[error("{0:#}")]
    Exec(anyhow::Error),
    /// The sidecar answered with its error envelope; its kind decides.
    #[error("{0}")]
    Ctl(#[from] CtlError),
}

impl QueryError {
    fn is_retryable(&self) -> bool {
        match self {
            QueryError::NotSent(_) => true,
            QueryError::Exec(_) => false,
            QueryError::Ctl(e) => e.is_retryable(),
        }
    }
}

/// The worker groups of `cluster` with their members.
fn worker_groups(cluster: &Cluster) -> BTreeMap<u32, Vec<String>> {
    cluster
        .citus_groups()
        .into_iter()
        .filter(|(g, _)| *g != 0)
        .map(|(g, members)| (g, members.into_iter().map(String::from).collect()))
        .collect()
}

/// The groups to wait for: the ones asked for (checked against the spec), or every worker
/// group.
pub fn groups_to_wait_for(cluster: &Cluster, asked: &[u32]) -> Result<Vec<u32>, CitusError> {
    let workers = worker_groups(cluster);
    if asked.is_empty() {
        return Ok(workers.into_keys().collect());
    }
    let mut out = BTreeSet::new();
    for &group in asked {
        if group == 0 {
            return Err(CitusError::Coordinator);
        }
        if !workers.contains_key(&group) {
            return Err(CitusError::UnknownGroup {
                group,
                cluster: cluster.name.clone(),
                known: workers
                    .keys()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        out.insert(group);
    }
    Ok(out.into_iter().collect())
}

/// The primary rows of `pg_dist_node` (columns groupid, nodename, nodeport, isactive) that
/// register a member of each of `groups`; and the groups without one.
pub fn registrations(
    cluster: &Cluster,
    groups: &[u32],
    rows: &Rows,
) -> (Vec<Registration>, Vec<u32>) {
    let workers = worker_groups(cluster);
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for &group in groups {
        let members = workers.get(&group).cloned().unwrap_or_default();
        let hit = (0..rows.rows.len()).find_map(|i| {
            let row_group: Option<u32> = rows.get(i, "groupid").and_then(|g| g.parse().ok());
            let node = rows.get(i, "nodename")?;
            let active = rows.get(i, "isactive") == Some("t");
            (row_group == Some(group) && active && members.iter().any(|m| m == node)).then(|| {
                Registration {
                    group,
                    node: node.to_string(),
                    port: rows
                        .get(i, "nodeport")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(pgswarm_contract::defaults::PG_PORT),
                }
            })
        });
        match hit {
            Some(r) => found.push(r),
            None => missing.push(group),
        }
    }
    (found, missing)
}

/// A Citus background job as `citus_job_status()` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub job_id: i64,
    /// `scheduled`, `running`, `finished`, `cancelling`, `cancelled`, `failing`, `failed`.
    pub state: String,
    /// Tasks by state (`done`, `running`, `runnable`, `blocked`, `error`, ...).
    pub counts: BTreeMap<String, u64>,
    /// `source -> target` of the moves running now.
    pub moving: Vec<String>,
    /// Messages of failed (or retried) tasks.
    pub errors: Vec<String>,
}

impl JobStatus {
    /// Reads the first row of `SELECT job_id, state, details FROM citus_job_status(...)`.
    pub fn parse(rows: &Rows) -> anyhow::Result<JobStatus> {
        let job_id = rows
            .get(0, "job_id")
            .and_then(|j| j.parse().ok())
            .ok_or_else(|| anyhow!("citus_job_status returned no job: {rows:?}"))?;
        let state = rows.get(0, "state").unwrap_or("unknown").to_string();
        let details: Value = rows
            .get(0, "details")
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let counts = details["task_state_counts"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let mut moving = Vec::new();
        let mut errors = Vec::new();
        for task in details["tasks"].as_array().into_iter().flatten() {
            let text = |k: &str| task[k].as_str().unwrap_or("").to_string();
            match task["state"].as_str() {
                Some("running") => {
                    let (source, target) = (
                        task["hosts"]["source"].as_str().unwrap_or("?"),
                        task["hosts"]["target"].as_str().unwrap_or("?"),
                    );
                    moving.push(format!("{source} -> {target}"));
                }
                Some(state) => {
                    let message = text("message");
                    if !message.trim().is_empty() {
                        errors.push(format!(
                            "task {} ({state}): {}: {}",
                            task["task_id"],
                            text("command"),
                            message.trim()
                        ));
                    }
                }
                None => {}
            }
        }
        Ok(JobStatus {
            job_id,
            state,
            counts,
            moving,
            errors,
        })
    }

    /// The job has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "finished" | "cancelled" | "failed")
    }

    /// One progress line.
    pub fn summary(&self) -> String {
        let total: u64 = self.counts.values().sum();
        let done = self.counts.get("done").copied().unwrap_or(0);
        let mut line = format!(
            "rebalance job {}: {}, {done}/{total} tasks done",
            self.job_id, self.state
        );
        let others: Vec<String> = self
            .counts
            .iter()
            .filter(|(k, n)| k.as_str() != "done" && **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        if !others.is_empty() {
            line.push_str(&format!(" ({})", others.join(", ")));
        }
        if !self.moving.is_empty() {
            line.push_str(&format!("; moving {}", self.moving.join(", ")));
        }
        line
    }
}

/// Whether `image` has the Citus extension: a throw-away container of the image (no network)
/// looks for its control file.
pub async fn image_has_citus(engine: &Engine, image: &str) -> anyhow::Result<bool> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["sh".into()]),
        cmd: Some(vec!["-c".into(), format!("ls {CITUS_CONTROL_GLOB}")]),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(
            "pgswarm.purpose".to_string(),
            "citus-extension-check".to_string(),
        )])),
        ..Default::default()
    };
    let created = engine
        .docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .with_context(|| format!("cannot create a container of image {image} to look for Citus"))?;
    let id = created.id;
    let result: anyhow::Result<Option<i64>> = async {
        engine
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .with_context(|| format!("cannot start a container of image {image}"))?;
        let mut waits = engine
            .docker
            .wait_container(&id, None::<WaitContainerOptions>);
        let mut code = None;
        while let Some(item) = waits.next().await {
            match item {
                Ok(r) => code = Some(r.status_code),
                Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => {
                    code = Some(c)
                }
                Err(e) => {
                    return Err(e).context("waiting for the extension check container");
                }
            }
        }
        Ok(code)
    }
    .await;
    if let Err(e) = engine
        .docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        tracing::warn!(container = %id, error = %e, "cannot remove the extension check container");
    }
    Ok(result? == Some(0))
}

/// Runs SQL on the coordinator's primary from a container of the cluster on this node.
struct Coordinator<'a> {
    engine: &'a Engine,
    cluster: &'a Cluster,
    nodes: Vec<NodeView>,
    database: String,
}

impl Coordinator<'_> {
    /// A running container on this node that holds the superuser secret (none: the query
    /// runs in a one-off task on the cluster's network), and where the coordinator's primary
    /// is reached from it.
    async fn route(&self) -> anyhow::Result<(Option<String>, String, u16)> {
        let views = docker_view(self.engine, self.cluster, &self.nodes).await?;
        let container = status::superuser_container(self.cluster, &views).ok();
        // The leader by its service name (DNS round robin to its one task), not the router:
        // nothing between, and no dependence on the router's virtual IP.
        let leader = coordinator_leader(self.engine, self.cluster, &views).await?;
        let port = self
            .cluster
            .service(&leader)
            .and_then(|s| match &s.env.role {
                Role::Patroni { postgres, .. } => Some(postgres.port),
                _ => None,
            })
            .unwrap_or(pgswarm_contract::defaults::PG_PORT);
        Ok((container, leader, port))
    }

    async fn query(&self, sql: &str) -> Result<Rows, QueryError> {
        let (container, host, port) = self.route().await.map_err(QueryError::NotSent)?;
        let request = Request::Query {
            target: Target::new(host, port).database(&self.database),
            sql: sql.to_string(),
        };
        let argv = request.argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = job::run_ctl(self.engine, self.cluster, container.as_deref(), &argv)
            .await
            .map_err(QueryError::Exec)?;
        Ok(ctl::read_reply(out.exit_code, &out.stdout, &out.stderr)?)
    }

    /// [`Self::query`], tried again until `deadline` while the coordinator cannot be reached
    /// (a coordinator failover, a member still starting after a deploy). With
    /// `only_unreached`, an error of the statement itself is not tried again, so a statement
    /// with effects never runs twice. The decision is taken on the error's kind.
    async fn query_until(
        &self,
        sql: &str,
        deadline: Instant,
        only_unreached: bool,
        progress: &mut Progress,
    ) -> anyhow::Result<Rows> {
        loop {
            match self.query(sql).await {
                Ok(rows) => return Ok(rows),
                Err(e) => {
                    if Instant::now() >= deadline || (only_unreached && !e.is_retryable()) {
                        return Err(e.into());
                    }
                    progress.update(&format!(
                        "waiting for the coordinator's primary to answer ({e})"
                    ));
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

/// The coordinator group's leader as Patroni lists it.
async fn coordinator_leader(
    engine: &Engine,
    cluster: &Cluster,
    views: &[ServiceView],
) -> anyhow::Result<String> {
    let db = db_view(engine, cluster, views).await?;
    cluster
        .data_members()
        .filter(|s| s.kind == ServiceKind::Data { group: Some(0) })
        .find(|s| db.get(&s.name).is_some_and(|r| r.role == "leader"))
        .map(|s| s.name.clone())
        .ok_or_else(|| anyhow!("Patroni lists no leader in the coordinator group (group 0)"))
}

fn citus_database(cluster: &Cluster) -> String {
    cluster
        .data_members()
        .find_map(|s| match &s.env.role {
            Role::Patroni {
                citus: Some(citus), ..
            } => Some(citus.database.clone()),
            _ => None,
        })
        .unwrap_or_else(|| pgswarm_contract::defaults::CITUS_DATABASE.to_string())
}

/// Lines of a Patroni log that say something about Citus or an error, the last `n` of them.
pub fn citus_log_excerpt(log: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = log
        .lines()
        .filter(|l| {
            let lower = l.to_lowercase();
            ["citus", "pg_dist_node", "error", "exception", "fatal"]
                .iter()
                .any(|w| lower.contains(w))
        })
        .map(|l| l.trim_end().to_string())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Scales a Citus cluster out: see the module documentation.
pub async fn add_group(
    engine: &Engine,
    cluster: &Cluster,
    options: &AddGroupOptions,
    progress: &mut Progress,
) -> anyhow::Result<AddGroupOutcome> {
    if cluster.topology != Topology::Citus {
        return Err(CitusError::NotCitus {
            cluster: cluster.name.clone(),
            topology: cluster.topology.to_string(),
        }
        .into());
    }
    let groups = groups_to_wait_for(cluster, &options.groups)?;
    if groups.is_empty() {
        bail!(
            "the spec of cluster {} has no worker group: add groups 1, 2, ... under \
             `citus.groups`, then run this again",
            cluster.name
        );
    }
    let deadline = Instant::now() + options.timeout;
    engine.require_manager().await?;
    if !engine.has_image(&cluster.image).await? {
        return Err(super::OpsError::ImageMissing {
            image: cluster.image.clone(),
        }
        .into());
    }
    progress.say(&format!(
        "checking that image {} has the Citus extension",
        cluster.image
    ));
    if !image_has_citus(engine, &cluster.image).await? {
        return Err(CitusError::NoExtension {
            image: cluster.image.clone(),
        }
        .into());
    }
    deploy::deploy(engine, cluster, progress).await?;
    deploy::wait_ready(
        engine,
        cluster,
        deadline.saturating_duration_since(Instant::now()),
        progress,
    )
    .await?;

    let coordinator = Coordinator {
        engine,
        cluster,
        nodes: nodes::list(engine).await?,
        database: citus_database(cluster),
    };
    let extension = coordinator
        .query_until(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus'",
            deadline,
            false,
            progress,
        )
        .await?;
    let Some(version) = extension.get(0, "extversion").map(String::from) else {
        let coordinator_member = cluster
            .citus_groups()
            .get(&0)
            .and_then(|m| m.first().map(|s| s.to_string()))
            .unwrap_or_default();
        return Err(CitusError::NotInDatabase {
            database: coordinator.database.clone(),
            service: service_name(&cluster.name, &coordinator_member),
        }
        .into());
    };
    progress.say(&format!(
        "Citus {version} in database {} on the coordinator",
        coordinator.database
    ));

    let registered = wait_registered(&coordinator, &groups, deadline, progress).await?;
    for r in &registered {
        progress.say(&format!(
            "group {}: primary {}:{} registered in pg_dist_node",
            r.group, r.node, r.port
        ));
    }
    let rebalance = rebalance(&coordinator, options.transfer_mode, progress).await?;
    Ok(AddGroupOutcome {
        registered,
        rebalance,
    })
}

const PG_DIST_NODE_SQL: &str = "SELECT groupid, nodename, nodeport, isactive \
     FROM pg_catalog.pg_dist_node WHERE noderole = 'primary' ORDER BY groupid";

async fn wait_registered(
    coordinator: &Coordinator<'_>,
    groups: &[u32],
    deadline: Instant,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Registration>> {
    loop {
        let (last, missing) = match coordinator.query(PG_DIST_NODE_SQL).await {
            Ok(rows) => {
                let (found, missing) = registrations(coordinator.cluster, groups, &rows);
                if missing.is_empty() {
                    return Ok(found);
                }
                (String::new(), missing)
            }
            Err(e) => (format!("{e:#}"), groups.to_vec()),
        };
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "{}",
                not_registered_report(coordinator, &missing, &last).await
            ));
        }
        let waiting = missing
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        progress.update(&format!(
            "waiting for Patroni to register the primary of group(s) {waiting} in pg_dist_node"
        ));
        tokio::time::sleep(POLL).await;
    }
}

/// Why groups are not registered: their members' state and what Patroni logged, on the
/// coordinator leader (which registers workers) and in each missing group.
async fn not_registered_report(
    coordinator: &Coordinator<'_>,
    missing: &[u32],
    last_error: &str,
) -> String {
    let engine = coordinator.engine;
    let cluster = coordinator.cluster;
    let workers = worker_groups(cluster);
    let mut out = String::new();
    let names: Vec<String> = missing.iter().map(|g| format!("group {g}")).collect();
    out.push_str(&format!(
        "Patroni did not register the primary of {} in pg_dist_node in time",
        names.join(", ")
    ));
    if !last_error.is_empty() {
        out.push_str(&format!(" (last query error: {last_error})"));
    }
    out.push('\n');
    let views = docker_view(engine, cluster, &coordinator.nodes)
        .await
        .unwrap_or_default();
    let db = db_view(engine, cluster, &views).await.unwrap_or_default();
    let mut members: Vec<String> = cluster
        .citus_groups()
        .get(&0)
        .map(|m| m.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    for g in missing {
        let in_group = workers.get(g).cloned().unwrap_or_default();
        let states: Vec<String> = in_group
            .iter()
            .map(|m| match db.get(m) {
                Some(r) => format!("{m} {} {}", r.role, r.state),
                None => format!("{m} not listed by Patroni"),
            })
            .collect();
        out.push_str(&format!("  group {g}: {}\n", states.join(", ")));
        members.extend(in_group);
    }
    for member in members {
        let view = views.iter().find(|v| v.member == member);
        let Some(container) = view.and_then(|v| v.container.clone()) else {
            out.push_str(&format!(
                "  (no container of {member} on this node: `docker service logs {}`)\n",
                service_name(&cluster.name, &member)
            ));
            continue;
        };
        let log = engine.last_logs(&container, LOG_LINES_READ).await;
        let excerpt = citus_log_excerpt(&log, LOG_LINES_SHOWN);
        if excerpt.is_empty() {
            out.push_str(&format!("  {member}: no Citus or error lines in its log\n"));
        } else {
            out.push_str(&format!(
                "  --- {member}: Citus and error lines of its log\n"
            ));
            for line in excerpt {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

const JOB_STATUS_SQL: &str = "SELECT job_id, state, details FROM pg_catalog.citus_job_status";

async fn rebalance(
    coordinator: &Coordinator<'_>,
    mode: ShardTransferMode,
    progress: &mut Progress,
) -> anyhow::Result<RebalanceOutcome> {
    // A rebalance already under way (started by hand, or by a run interrupted before) is
    // followed rather than refused.
    let deadline = Instant::now() + QUERY_OUTAGE;
    let latest = coordinator
        .query_until(
            "SELECT job_id, state, details FROM pg_catalog.citus_rebalance_status()",
            deadline,
            false,
            progress,
        )
        .await?;
    let running = match JobStatus::parse(&latest) {
        Ok(job) if !job.is_terminal() => Some(job.job_id),
        _ => None,
    };
    let job_id = match running {
        Some(id) => {
            progress.say(&format!("following rebalance job {id}, already under way"));
            id
        }
        None => {
            let sql = format!(
                "SELECT pg_catalog.citus_rebalance_start(shard_transfer_mode => '{}') AS job_id",
                mode.as_sql()
            );
            let started = coordinator
                .query_until(&sql, deadline, true, progress)
                .await
                .context("citus_rebalance_start() failed")?;
            match started.get(0, "job_id").and_then(|j| j.parse::<i64>().ok()) {
                None => {
                    progress.say("rebalance: the shards are balanced already, nothing to move");
                    return Ok(RebalanceOutcome::NothingToMove);
                }
                Some(id) => {
                    progress.say(&format!(
                        "rebalance job {id} started (shard_transfer_mode {})",
                        mode.as_sql()
                    ));
                    id
                }
            }
        }
    };
    let mut failing_since: Option<Instant> = None;
    loop {
        match coordinator
            .query(&format!("{JOB_STATUS_SQL}({job_id})"))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|rows| JobStatus::parse(&rows))
        {
            Ok(job) => {
                failing_since = None;
                progress.update(&job.summary());
                match job.state.as_str() {
                    "finished" => {
                        return Ok(RebalanceOutcome::Finished {
                            job_id,
                            tasks: job.counts.values().sum(),
                        })
                    }
                    "failed" | "cancelled" => {
                        let why = if job.errors.is_empty() {
                            String::new()
                        } else {
                            format!(":\n  {}", job.errors.join("\n  "))
                        };
                        bail!(
                            "rebalance job {job_id} ended {}{why}\nSee `SELECT * FROM \
                             citus_job_status({job_id})` on the coordinator; fix the cause and \
                             run this again (it starts a new rebalance)",
                            job.state
                        );
                    }
                    _ => {}
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > QUERY_OUTAGE {
                    return Err(e.context(format!(
                        "cannot follow rebalance job {job_id} for {} s; it goes on in the \
                         background: see `SELECT * FROM citus_rebalance_status()` on the \
                         coordinator",
                        QUERY_OUTAGE.as_secs()
                    )));
                }
                progress.update(&format!(
                    "rebalance job {job_id}: status unavailable ({e:#})"
                ));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        crate::spec::parse(
            "name: demo
topology: citus
citus:
  groups:
    - {group: 0, members: 3}
    - {group: 1, members: [w1a, w1b], synchronous_mode: on}
    - {group: 3, members: [w3a, w3b], synchronous_mode: on}
",
        )
        .expect("valid")
        .cluster
    }

    fn rows(columns: &[&str], rows: &[&[Option<&str>]]) -> Rows {
        Rows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| c.map(String::from)).collect())
                .collect(),
        }
    }

    #[test]
    fn groups_default_to_every_worker_group_and_are_checked() {
        let c = cluster();
        assert_eq!(groups_to_wait_for(&c, &[]).expect("ok"), vec![1, 3]);
        assert_eq!(groups_to_wait_for(&c, &[3, 3]).expect("ok"), vec![3]);
        let err = groups_to_wait_for(&c, &[2]).unwrap_err().to_string();
        assert!(
            err.contains("no worker group 2") && err.contains("1, 3"),
            "{err}"
        );
        assert!(matches!(
            groups_to_wait_for(&c, &[0]),
            Err(CitusError::Coordinator)
        ));
    }

    #[test]
    fn a_group_counts_as_registered_when_an_active_primary_row_names_one_of_its_members() {
        let c = cluster();
        let cols = ["groupid", "nodename", "nodeport", "isactive"];
        let r = rows(
            &cols,
            &[
                &[Some("0"), Some("coord1"), Some("5432"), Some("t")],
                &[Some("1"), Some("w1b"), Some("5432"), Some("t")],
                // A stale name (a demoted primary) or another group's member does not count.
                &[Some("3"), Some("w1a"), Some("5432"), Some("t")],
            ],
        );
        let (found, missing) = registrations(&c, &[1, 3], &r);
        assert_eq!(
            found,
            vec![Registration {
                group: 1,
                node: "w1b".into(),
                port: 5432
            }]
        );
        assert_eq!(missing, vec![3]);
        let r = rows(&cols, &[&[Some("3"), Some("w3a"), Some("5432"), Some("f")]]);
        assert_eq!(registrations(&c, &[3], &r).1, vec![3], "inactive");
        let r = rows(&cols, &[&[Some("3"), Some("w3a"), Some("5432"), Some("t")]]);
        assert!(registrations(&c, &[3], &r).1.is_empty());
    }

    #[test]
    fn job_status_reads_counts_moves_and_errors() {
        let details = r#"{"task_state_counts": {"done": 3, "running": 1, "blocked": 4},
            "tasks": [{"state": "running", "task_id": 9, "hosts": {"source": "w1a:5432", "target": "w3a:5432"},
                       "command": "SELECT citus_move_shard_placement(102008,2,5,'auto')", "message": ""},
                      {"state": "runnable", "task_id": 10, "retried": 1,
                       "command": "SELECT citus_move_shard_placement(102010,2,5,'auto')",
                       "message": "could not connect to w3a"}]}"#;
        let r = rows(
            &["job_id", "state", "details"],
            &[&[Some("7"), Some("running"), Some(details)]],
        );
        let job = JobStatus::parse(&r).expect("parses");
        assert_eq!(job.job_id, 7);
        assert!(!job.is_terminal());
        assert_eq!(
            job.summary(),
            "rebalance job 7: running, 3/8 tasks done (4 blocked, 1 running); moving w1a:5432 -> w3a:5432"
        );
        assert_eq!(job.errors.len(), 1);
        assert!(job.errors[0].contains("could not connect to w3a"));
        let r = rows(
            &["job_id", "state", "details"],
            &[&[Some("7"), Some("finished"), Some("{}")]],
        );
        assert!(JobStatus::parse(&r).expect("parses").is_terminal());
        assert!(JobStatus::parse(&Rows::default()).is_err());
    }

    #[test]
    fn the_log_excerpt_keeps_citus_and_error_lines() {
        let log = "2026 INFO: no action. I am (coord1), the leader with the lock\n\
                   2026 INFO: citus_add_node failed\n\
                   2026 ERROR: Exception when working with pg_dist_node: x\n\
                   2026 INFO: no action\n";
        let excerpt = citus_log_excerpt(log, 1);
        assert_eq!(
            excerpt,
            vec!["2026 ERROR: Exception when working with pg_dist_node: x"]
        );
        assert_eq!(citus_log_excerpt(log, 10).len(), 2);
    }

    #[test]
    fn only_requests_that_ran_nothing_are_retried() {
        use pgswarm_contract::ctl::ErrorKind;
        let ctl_error = |kind| {
            QueryError::Ctl(CtlError {
                kind,
                message: "whatever the sidecar said".into(),
                sqlstate: None,
            })
        };
        assert!(ctl_error(ErrorKind::Unreachable).is_retryable());
        assert!(!ctl_error(ErrorKind::Statement).is_retryable());
        assert!(!ctl_error(ErrorKind::Refused).is_retryable());
        assert!(QueryError::NotSent(anyhow!("no container")).is_retryable());
        assert!(!QueryError::Exec(anyhow!("exec broke")).is_retryable());
    }

    #[test]
    fn transfer_modes_are_citus_names() {
        assert_eq!(ShardTransferMode::default().as_sql(), "auto");
        assert_eq!(ShardTransferMode::BlockWrites.as_sql(), "block_writes");
        assert_eq!(ShardTransferMode::ForceLogical.as_sql(), "force_logical");
    }
}
