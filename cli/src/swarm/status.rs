//! `status`: each member as Docker sees it (task state, node, container health) joined with
//! how the database sees it (role, state, timeline, lag), both read by [`super::observe`].

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Serialize;

use crate::spec::{Cluster, ServiceKind};

use super::progress::table;
use super::Engine;

// The observation layer used to live here; other commands still name it through `status`.
pub use super::observe::{
    activity_view, db_view, docker_view, parse_lsn, parse_patronictl, patroni_view, patroni_yml,
    replication_view, superuser_container, Activity, DbView, ServiceView,
};

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
    /// Client connections to the member's PostgreSQL, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
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
    /// WAL archiving as the primary (of each group) reports it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub archiver: Vec<ArchiverStatus>,
    /// Why the database's view could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_view_error: Option<String>,
}

/// `pg_stat_archiver` of a primary.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiverStatus {
    pub member: String,
    pub archived: u64,
    pub failed: u64,
    /// Seconds since the last segment was archived; `None` when none ever was.
    pub last_archived_age_s: Option<u64>,
    /// The last attempt failed (after the last success, or none ever succeeded).
    pub stuck: bool,
    /// The segment of the last failed attempt, and how long ago it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failed_age_s: Option<u64>,
}

fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Data { .. } => "postgres",
        ServiceKind::Etcd => "etcd",
        ServiceKind::Router => "router",
        ServiceKind::Pooler => "pooler",
        ServiceKind::Backup => "backup",
    }
}

/// Joins both views into rows, in stack order.
pub fn join(
    cluster: &Cluster,
    views: &[ServiceView],
    db: Result<&BTreeMap<String, DbView>, String>,
    activity: &BTreeMap<String, Activity>,
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
            connections: activity.get(&service.name).map(|a| a.connections),
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
        archiver: activity
            .iter()
            .filter(|(_, a)| a.primary)
            .map(|(member, a)| ArchiverStatus {
                member: member.clone(),
                archived: a.archived,
                failed: a.archive_failed,
                last_archived_age_s: a.last_archived_age_s,
                stuck: a.archiving_stuck(),
                last_failed_wal: a.last_failed_wal.clone(),
                last_failed_age_s: a.last_failed_age_s,
            })
            .collect(),
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
    let activity = activity_view(engine, cluster, &views).await;
    Ok(join(
        cluster,
        &views,
        db.as_ref().map_err(Clone::clone),
        &activity,
    ))
}

/// The status as a table (a GROUP column only for Citus).
pub fn render_table(status: &ClusterStatus) -> String {
    let citus = status.members.iter().any(|m| m.group.is_some());
    let mut header: Vec<String> = vec!["MEMBER".into(), "KIND".into()];
    if citus {
        header.push("GROUP".into());
    }
    for h in [
        "ROLE", "STATE", "TL", "LAG(MB)", "CONN", "NODE", "TASK", "HEALTH",
    ] {
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
            m.connections.map_or("-".into(), |c| c.to_string()),
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
    for a in &status.archiver {
        out.push_str(&format!(
            "archiver on {}: {} segments archived, {} failed, last {}\n",
            a.member,
            a.archived,
            a.failed,
            a.last_archived_age_s
                .map_or("never".into(), |s| format!("{s} s ago"))
        ));
        if a.stuck {
            out.push_str(&format!(
                "  ARCHIVING FAILING: the last attempt ({}, {} s ago) failed; the WAL piles up in \
                 pg_wal until it succeeds (swarmctl logs {} shows pgBackRest's error)\n",
                a.last_failed_wal.as_deref().unwrap_or("?"),
                a.last_failed_age_s.unwrap_or(0),
                a.member
            ));
        }
    }
    if let Some(e) = &status.database_view_error {
        out.push_str(&format!("database view unavailable: {e}\n"));
    }
    out
}
