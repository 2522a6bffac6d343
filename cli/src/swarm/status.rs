//! `status`: each member as Docker sees it (task state, node, container health, from the API)
//! joined with how the database sees it (role, state, timeline, lag): Patroni's view from
//! `patronictl list` run inside a member container, or, for the replication topology, each
//! member's own answer over its local socket.
//!
//! Containers can be reached only on this node: a member running on another node shows its
//! task state and node, and its health as `remote`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Context};
use bollard::models::{HealthStatusEnum, Task, TaskState};
use bollard::query_parameters::ListTasksOptions;
use pgswarm_contract::{defaults, Role, Secret};
use serde::Serialize;
use serde_json::Value;

use crate::spec::{Cluster, Service, ServiceKind, Topology};

use super::engine::is_status;
use super::exec::exec;
use super::nodes::{hostname_of, NodeView};
use super::progress::table;
use super::{service_name, Engine};

/// Docker's view of one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub member: String,
    /// Tasks wanted and tasks running.
    pub replicas: u32,
    pub running: u32,
    /// State of the service's newest task (`running`, `starting`, `pending`, `failed`, ...),
    /// or `not deployed`.
    pub task_state: String,
    /// The task's error or status message, when it says something.
    pub task_message: String,
    /// Hostname of the node of the newest task.
    pub node: String,
    /// `healthy`, `starting`, `unhealthy`, `none` (no healthcheck), `remote` (on another node,
    /// not visible from here) or `-` (no container).
    pub health: String,
    /// What the last failed healthcheck printed, when the container is not healthy.
    #[serde(skip)]
    pub health_output: String,
    /// A running container of the service on this node.
    #[serde(skip)]
    pub container: Option<String>,
    /// The newest container of the service on this node, running or not (for its logs).
    #[serde(skip)]
    pub last_container: Option<String>,
}

impl ServiceView {
    /// Every task running and healthy (or running without a healthcheck, or on a node whose
    /// containers cannot be seen from here).
    pub fn is_ready(&self) -> bool {
        self.running >= self.replicas
            && self.replicas > 0
            && matches!(self.health.as_str(), "healthy" | "none" | "remote")
    }

    /// A short description of what it waits for.
    pub fn waiting_for(&self) -> String {
        let mut s = format!("task {}", self.task_state);
        if self.health != "-" {
            s.push_str(&format!(", health {}", self.health));
        }
        if self.replicas > 1 {
            s.push_str(&format!(", {}/{} running", self.running, self.replicas));
        }
        if !self.task_message.is_empty() && self.task_message != self.task_state {
            s.push_str(&format!(": {}", self.task_message));
        }
        s
    }

    /// [`Self::waiting_for`] with what the last failed healthcheck said, for a stuck member.
    pub fn why_stuck(&self) -> String {
        let mut s = self.waiting_for();
        if !self.health_output.is_empty() {
            s.push_str(&format!("; last healthcheck: {}", self.health_output));
        }
        s
    }
}

/// The database's view of one data member.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DbView {
    /// `leader`, `sync standby`, `quorum standby`, `replica`, `standby leader` (Patroni), or
    /// `primary` / `replica` (replication topology).
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`, ...
    pub state: String,
    pub timeline: Option<u64>,
    /// Replication lag in MB, as Patroni reports it (replicas only).
    pub lag_mb: Option<f64>,
    /// Citus group.
    pub group: Option<u32>,
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub member: String,
    /// `postgres`, `etcd`, `router`, `pooler`.
    pub kind: String,
    pub group: Option<u32>,
    pub role: String,
    pub state: String,
    pub timeline: Option<u64>,
    pub lag_mb: Option<f64>,
    pub node: String,
    pub task: String,
    pub health: String,
}

/// The whole cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub topology: String,
    pub members: Vec<MemberStatus>,
    /// Members that are the leader (primary) of their group.
    pub leaders: Vec<String>,
    /// Why the database's view could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_view_error: Option<String>,
}

/// Docker's view of every service of `cluster`.
pub async fn docker_view(
    engine: &Engine,
    cluster: &Cluster,
    nodes: &[NodeView],
) -> anyhow::Result<Vec<ServiceView>> {
    let mut out = Vec::new();
    for service in &cluster.services {
        out.push(service_view(engine, cluster, service, nodes).await?);
    }
    Ok(out)
}

/// Task timestamps as Docker writes them, made comparable (fraction padded to nanoseconds).
fn sortable_time(t: &Option<String>) -> String {
    let t = t.as_deref().unwrap_or("");
    match t.split_once('.') {
        Some((secs, frac)) => {
            let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
            format!("{secs}.{digits:0<9}")
        }
        None => t.trim_end_matches('Z').to_string(),
    }
}

fn task_state_name(state: Option<TaskState>) -> String {
    state.map_or_else(|| "unknown".to_string(), |s| s.to_string())
}

async fn service_view(
    engine: &Engine,
    cluster: &Cluster,
    service: &Service,
    nodes: &[NodeView],
) -> anyhow::Result<ServiceView> {
    let name = service_name(&cluster.name, &service.name);
    let mut view = ServiceView {
        member: service.name.clone(),
        replicas: service.replicas,
        running: 0,
        task_state: "not deployed".into(),
        task_message: String::new(),
        node: "-".into(),
        health: "-".into(),
        health_output: String::new(),
        container: None,
        last_container: None,
    };
    let tasks = match engine
        .docker
        .list_tasks(Some(ListTasksOptions {
            filters: Some(HashMap::from([("service".to_string(), vec![name.clone()])])),
        }))
        .await
    {
        Ok(tasks) => tasks,
        Err(e) if is_status(&e, 404) => return Ok(view),
        Err(e) => return Err(e).with_context(|| format!("cannot list the tasks of {name}")),
    };
    // The filter matches by name prefix too (`demo_pg1` also finds `demo_pg10`).
    let service_id = engine
        .docker
        .inspect_service(
            &name,
            None::<bollard::query_parameters::InspectServiceOptions>,
        )
        .await
        .ok()
        .and_then(|s| s.id);
    let Some(service_id) = service_id else {
        return Ok(view);
    };
    let mut tasks: Vec<Task> = tasks
        .into_iter()
        .filter(|t| t.service_id.as_deref() == Some(service_id.as_str()))
        .collect();
    view.running = tasks
        .iter()
        .filter(|t| {
            t.desired_state == Some(TaskState::RUNNING)
                && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
        })
        .count() as u32;
    // Newest first, tasks meant to run before the ones being shut down.
    tasks.sort_by_key(|t| {
        (
            t.desired_state != Some(TaskState::RUNNING),
            std::cmp::Reverse(sortable_time(&t.created_at)),
        )
    });
    let Some(task) = tasks.first() else {
        view.task_state = "no task".into();
        return Ok(view);
    };
    let status = task.status.clone().unwrap_or_default();
    view.task_state = task_state_name(status.state);
    view.task_message = status
        .err
        .filter(|e| !e.is_empty())
        .or(status.message)
        .unwrap_or_default();
    if let Some(node) = &task.node_id {
        view.node = hostname_of(nodes, node).to_string();
    }
    let container_id = status.container_status.and_then(|c| c.container_id);
    if let Some(id) = container_id.filter(|id| !id.is_empty()) {
        match engine
            .docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                view.last_container = Some(id.clone());
                if state.running == Some(true) {
                    view.container = Some(id);
                }
                let health = state.health.unwrap_or_default();
                let last_output = health
                    .log
                    .as_ref()
                    .and_then(|log| log.last())
                    .filter(|r| r.exit_code != Some(0))
                    .and_then(|r| r.output.clone())
                    .unwrap_or_default();
                // The sidecar's health output is a log line; its message is what matters.
                view.health_output = last_output
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| {
                        l.split_once(" ERROR ")
                            .map_or(l, |(_, m)| m)
                            .trim()
                            .chars()
                            .take(200)
                            .collect()
                    })
                    .unwrap_or_default();
                view.health = match health.status {
                    Some(HealthStatusEnum::HEALTHY) => "healthy",
                    Some(HealthStatusEnum::UNHEALTHY) => "unhealthy",
                    Some(HealthStatusEnum::STARTING) => "starting",
                    _ if view.container.is_some() => "none",
                    _ => "-",
                }
                .into();
            }
            Err(e) if is_status(&e, 404) => view.health = "remote".into(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect the container of {name}"))
            }
        }
    }
    if view.last_container.is_none() {
        // A container of an older task, for its logs.
        view.last_container = engine
            .service_containers(&name, true)
            .await?
            .into_iter()
            .find_map(|c| c.id);
    }
    Ok(view)
}

/// Where the sidecar renders patroni.yml inside a member (the contract's run directory).
pub fn patroni_yml(service: &Service) -> String {
    format!("{}/patroni.yml", service.env.common.run_dir)
}

/// Parses `patronictl list -f json` (Patroni 3 and 4).
pub fn parse_patronictl(json: &str) -> anyhow::Result<BTreeMap<String, DbView>> {
    let rows: Vec<Value> = serde_json::from_str(json.trim())
        .with_context(|| format!("patronictl list -f json printed no JSON list: {json}"))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let member = row
            .get("Member")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("a patronictl row has no Member: {row}"))?;
        let text = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let lag = row
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.contains("Lag")).map(|(_, v)| v))
            .and_then(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            });
        out.insert(
            member.to_string(),
            DbView {
                role: text("Role").to_lowercase(),
                state: text("State"),
                timeline: row.get("TL").and_then(Value::as_u64),
                lag_mb: lag,
                group: row
                    .get("Group")
                    .and_then(Value::as_u64)
                    .and_then(|g| u32::try_from(g).ok()),
            },
        );
    }
    Ok(out)
}

/// Patroni's view, from the first local running data member that answers.
pub async fn patroni_view(
    engine: &Engine,
    cluster: &Cluster,
    views: &[ServiceView],
) -> anyhow::Result<BTreeMap<String, DbView>> {
    let mut last = anyhow!(
        "no member of {} runs on this node, so Patroni cannot be asked from here; run swarmctl \
         on a node that runs one",
        cluster.name
    );
    for service in cluster.data_members() {
        let Some(container) = views
            .iter()
            .find(|v| v.member == service.name)
            .and_then(|v| v.container.clone())
        else {
            continue;
        };
        let yml = patroni_yml(service);
        match exec(
            engine,
            &container,
            &["patronictl", "-c", &yml, "list", "-f", "json"],
        )
        .await
        .and_then(|o| o.into_stdout("patronictl list"))
        {
            Ok(out) => return parse_patronictl(&out),
            Err(e) => last = e.context(format!("asking Patroni in {}", service.name)),
        }
    }
    Err(last)
}

/// The replication topology's view: each local member answers for itself over its socket.
pub async fn replication_view(
    engine: &Engine,
    cluster: &Cluster,
    views: &[ServiceView],
) -> anyhow::Result<BTreeMap<String, DbView>> {
    const SQL: &str = "SELECT pg_is_in_recovery(), (pg_control_checkpoint()).timeline_id, \
        coalesce((SELECT status FROM pg_stat_wal_receiver), ''), \
        CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0')::text \
        ELSE pg_current_wal_lsn()::text END";
    let mut rows: BTreeMap<String, (DbView, Option<u64>)> = BTreeMap::new();
    for service in cluster.data_members() {
        let Some(container) = views
            .iter()
            .find(|v| v.member == service.name)
            .and_then(|v| v.container.clone())
        else {
            continue;
        };
        let port = match &service.env.role {
            Role::Primary { postgres, .. } | Role::Replica { postgres, .. } => postgres.port,
            _ => defaults::PG_PORT,
        };
        let port = port.to_string();
        let out = exec(
            engine,
            &container,
            &[
                "psql",
                "-h",
                &service.env.common.run_dir,
                "-p",
                &port,
                "-U",
                &service.env.common.superuser,
                "-d",
                "postgres",
                "-AtX",
                "-F",
                "|",
                "-c",
                SQL,
            ],
        )
        .await
        .and_then(|o| o.into_stdout("psql"));
        let Ok(out) = out else { continue };
        let fields: Vec<&str> = out.trim().split('|').collect();
        if fields.len() != 4 {
            continue;
        }
        let in_recovery = fields[0] == "t";
        let view = DbView {
            role: if in_recovery { "replica" } else { "primary" }.into(),
            state: if in_recovery {
                if fields[2].is_empty() {
                    "not streaming".into()
                } else {
                    fields[2].to_string()
                }
            } else {
                "running".into()
            },
            timeline: fields[1].parse().ok(),
            lag_mb: None,
            group: None,
        };
        rows.insert(service.name.clone(), (view, parse_lsn(fields[3])));
    }
    let primary_lsn = rows
        .values()
        .find(|(v, _)| v.role == "primary")
        .and_then(|(_, lsn)| *lsn);
    Ok(rows
        .into_iter()
        .map(|(member, (mut view, lsn))| {
            if view.role == "replica" {
                if let (Some(p), Some(r)) = (primary_lsn, lsn) {
                    view.lag_mb = Some(p.saturating_sub(r) as f64 / 1_048_576.0);
                }
            }
            (member, view)
        })
        .collect())
}

/// An LSN (`16/B374D848`) as a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The database's view for the cluster's topology.
pub async fn db_view(
    engine: &Engine,
    cluster: &Cluster,
    views: &[ServiceView],
) -> anyhow::Result<BTreeMap<String, DbView>> {
    match cluster.topology {
        Topology::Patroni | Topology::Citus => patroni_view(engine, cluster, views).await,
        Topology::Replication => replication_view(engine, cluster, views).await,
    }
}

fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Data { .. } => "postgres",
        ServiceKind::Etcd => "etcd",
        ServiceKind::Router => "router",
        ServiceKind::Pooler => "pooler",
    }
}

/// Joins both views into rows, in stack order.
pub fn join(
    cluster: &Cluster,
    views: &[ServiceView],
    db: Result<&BTreeMap<String, DbView>, String>,
) -> ClusterStatus {
    let mut members = Vec::new();
    let mut leaders = Vec::new();
    for service in &cluster.services {
        let Some(view) = views.iter().find(|v| v.member == service.name) else {
            continue;
        };
        let row = db.as_ref().ok().and_then(|db| db.get(&service.name));
        let is_data = matches!(service.kind, ServiceKind::Data { .. });
        let group = match service.kind {
            ServiceKind::Data { group } => group,
            _ => None,
        };
        let (role, state) = match (is_data, row) {
            (true, Some(r)) => (r.role.clone(), r.state.clone()),
            (true, None) => ("unknown".to_string(), view.task_state.clone()),
            (false, _) => ("-".to_string(), view.task_state.clone()),
        };
        if is_data && matches!(role.as_str(), "leader" | "primary" | "standby leader") {
            leaders.push(service.name.clone());
        }
        members.push(MemberStatus {
            member: service.name.clone(),
            kind: kind_name(service.kind).into(),
            group: group.or(row.and_then(|r| r.group)),
            role,
            state,
            timeline: row.and_then(|r| r.timeline),
            lag_mb: row.and_then(|r| r.lag_mb),
            node: view.node.clone(),
            task: view.task_state.clone(),
            health: view.health.clone(),
        });
    }
    ClusterStatus {
        cluster: cluster.name.clone(),
        topology: cluster.topology.to_string(),
        members,
        leaders,
        database_view_error: db.err(),
    }
}

/// Reads the status of `cluster`.
pub async fn read(engine: &Engine, cluster: &Cluster) -> anyhow::Result<ClusterStatus> {
    // Only a manager can list nodes and tasks: say so plainly rather than relay a 503.
    engine.require_manager().await?;
    let nodes = super::nodes::list(engine).await?;
    let views = docker_view(engine, cluster, &nodes).await?;
    if views.iter().all(|v| v.task_state == "not deployed") {
        bail!(
            "cluster {} is not deployed on this swarm (no service {}_*): deploy it with \
             `swarmctl deploy -f SPEC`",
            cluster.name,
            cluster.name
        );
    }
    let db = db_view(engine, cluster, &views)
        .await
        .map_err(|e| format!("{e:#}"));
    Ok(join(cluster, &views, db.as_ref().map_err(Clone::clone)))
}

/// The status as a table (a GROUP column only for Citus).
pub fn render_table(status: &ClusterStatus) -> String {
    let citus = status.members.iter().any(|m| m.group.is_some());
    let mut header: Vec<String> = vec!["MEMBER".into(), "KIND".into()];
    if citus {
        header.push("GROUP".into());
    }
    for h in ["ROLE", "STATE", "TL", "LAG(MB)", "NODE", "TASK", "HEALTH"] {
        header.push(h.into());
    }
    let mut rows = vec![header];
    for m in &status.members {
        let mut row = vec![m.member.clone(), m.kind.clone()];
        if citus {
            row.push(m.group.map_or("-".into(), |g| g.to_string()));
        }
        row.extend([
            m.role.clone(),
            m.state.clone(),
            m.timeline.map_or("-".into(), |t| t.to_string()),
            m.lag_mb.map_or("-".into(), |l| format!("{l}")),
            m.node.clone(),
            m.task.clone(),
            m.health.clone(),
        ]);
        rows.push(row);
    }
    let mut out = format!(
        "cluster {} ({}), leader: {}\n",
        status.cluster,
        status.topology,
        if status.leaders.is_empty() {
            "none".to_string()
        } else {
            status.leaders.join(", ")
        }
    );
    out.push_str(&table(&rows));
    if let Some(e) = &status.database_view_error {
        out.push_str(&format!("database view unavailable: {e}\n"));
    }
    out
}

/// A running container on this node whose service mounts the superuser secret, so that a
/// command run in it (`pgswarm-sidecar ctl ...`) can read the password without it ever
/// leaving the container.
pub fn superuser_container(cluster: &Cluster, views: &[ServiceView]) -> anyhow::Result<String> {
    cluster
        .services
        .iter()
        .filter(|s| Secret::SuperuserPassword.needed_by(s.mode()))
        .find_map(|s| {
            views
                .iter()
                .find(|v| v.member == s.name)
                .and_then(|v| v.container.clone())
        })
        .ok_or_else(|| {
            anyhow!(
                "no container of cluster {} holding the superuser secret runs on this node: \
                 run swarmctl on a node that runs the pooler or a member",
                cluster.name
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patronictl_json_of_patroni_3_and_4_parses() {
        let json = r#"[{"Cluster": "demo", "Member": "pg1", "Host": "pg1:5432", "Role": "Leader", "State": "running", "TL": 2},
            {"Cluster": "demo", "Member": "pg2", "Host": "pg2:5432", "Role": "Sync Standby", "State": "streaming", "TL": 2, "Lag in MB": 0},
            {"Cluster": "demo", "Member": "pg3", "Host": "pg3:5432", "Role": "Replica", "State": "starting", "Lag in MB": "unknown"}]"#;
        let rows = parse_patronictl(json).expect("parses");
        assert_eq!(rows["pg1"].role, "leader");
        assert_eq!(rows["pg1"].timeline, Some(2));
        assert_eq!(rows["pg2"].role, "sync standby");
        assert_eq!(rows["pg2"].lag_mb, Some(0.0));
        assert_eq!(rows["pg3"].lag_mb, None);
        assert!(parse_patronictl("not json").is_err());
    }

    #[test]
    fn lsns_are_byte_positions() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("x"), None);
    }

    #[test]
    fn task_times_compare_across_fraction_lengths() {
        let a = sortable_time(&Some("2026-11-22T14:01:20.47568859Z".into()));
        let b = sortable_time(&Some("2026-11-22T14:01:20.5Z".into()));
        assert!(a < b);
    }
}
