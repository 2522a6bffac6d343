//! The database's view of a cluster: Patroni's (`patronictl list` run inside a member
//! container) or, for the replication topology, each member's own answer over its local socket.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};
use pgswarm_contract::ctl::{self, QueryReply, Request, Target};
use pgswarm_contract::{defaults, Role};
use serde::Serialize;
use serde_json::Value;

use crate::spec::{Cluster, Service, Topology};

use crate::swarm::exec::exec;
use crate::swarm::job;
use crate::swarm::Engine;

use super::ServiceView;

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

/// Activity figures of one data member, read from the member itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Activity {
    /// Client connections (`pg_stat_activity`, client backends).
    pub connections: u64,
    /// Whether the member is the primary (not in recovery).
    pub primary: bool,
    /// WAL segments archived and failed archiving attempts (`pg_stat_archiver`).
    pub archived: u64,
    pub archive_failed: u64,
    /// Seconds since the last segment was archived; `None` when none ever was.
    pub last_archived_age_s: Option<u64>,
    /// Seconds since the last failed attempt, and the segment it was for; `None` when none.
    pub last_failed_age_s: Option<u64>,
    pub last_failed_wal: Option<String>,
}

impl Activity {
    /// Archiving is failing: the last attempt failed (after the last success, or with none).
    pub fn archiving_stuck(&self) -> bool {
        match (self.last_failed_age_s, self.last_archived_age_s) {
            (Some(failed), Some(archived)) => failed < archived,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

const ACTIVITY_SQL: &str = "SELECT (SELECT count(*) FROM pg_stat_activity \
    WHERE backend_type = 'client backend'), pg_is_in_recovery(), archived_count, failed_count, \
    extract(epoch FROM now() - last_archived_time)::bigint, \
    extract(epoch FROM now() - last_failed_time)::bigint, last_failed_wal FROM pg_stat_archiver";

/// Parses one row of [`ACTIVITY_SQL`].
pub fn parse_activity(fields: &[Option<String>]) -> Option<Activity> {
    let (connections, in_recovery, archived, failed, age, failed_age, failed_wal) = match fields {
        [c, r, a, f, age] => (c, r, a, f, age, &None, &None),
        [c, r, a, f, age, fage, fwal] => (c, r, a, f, age, fage, fwal),
        _ => return None,
    };
    Some(Activity {
        connections: connections.as_deref()?.parse().ok()?,
        primary: matches!(in_recovery.as_deref(), Some("f" | "false")),
        archived: archived.as_deref()?.parse().ok()?,
        archive_failed: failed.as_deref()?.parse().ok()?,
        last_archived_age_s: age.as_deref().and_then(|a| a.parse().ok()),
        last_failed_age_s: failed_age.as_deref().and_then(|a| a.parse().ok()),
        last_failed_wal: failed_wal.clone(),
    })
}

/// Each reachable data member's activity: through `pgswarm-sidecar ctl query` (the member's
/// superuser password never leaves its container) for Patroni members, and over the local
/// socket with `psql` in the replication topology, whose pg_hba admits the superuser there.
/// Members that do not answer are left out.
pub async fn activity_view(
    engine: &Engine,
    cluster: &Cluster,
    views: &[ServiceView],
) -> BTreeMap<String, Activity> {
    let mut out = BTreeMap::new();
    for service in cluster.data_members() {
        let Some(container) = views
            .iter()
            .find(|v| v.member == service.name)
            .and_then(|v| v.container.clone())
        else {
            continue;
        };
        let row = match &service.env.role {
            Role::Patroni { postgres, .. } => {
                let request = Request::Query {
                    target: Target::new("127.0.0.1", postgres.port),
                    sql: ACTIVITY_SQL.to_string(),
                };
                let argv = request.argv();
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                match exec(engine, &container, &argv).await {
                    Ok(o) => ctl::read_reply::<QueryReply>(o.exit_code, &o.stdout, &o.stderr)
                        .ok()
                        .and_then(|r| r.rows.into_iter().next()),
                    Err(_) => None,
                }
            }
            Role::Primary { postgres, .. } | Role::Replica { postgres, .. } => {
                socket_psql(engine, &container, service, postgres.port, ACTIVITY_SQL)
                    .await
                    .ok()
                    .map(|text| {
                        text.trim()
                            .split('|')
                            .map(|f| (!f.is_empty()).then(|| f.to_string()))
                            .collect()
                    })
            }
            _ => None,
        };
        if let Some(activity) = row.as_deref().and_then(parse_activity) {
            out.insert(service.name.clone(), activity);
        }
    }
    out
}

/// Where the sidecar renders patroni.yml inside a member (the contract's run directory).
pub fn patroni_yml(service: &Service) -> String {
    service.env.common.patroni_config_path()
}

/// Parses `patronictl list -f json` (Patroni 3 and 4).
pub fn parse_patronictl(json: &str) -> anyhow::Result<BTreeMap<String, DbView>> {
    // The listing once arrived twice in one exec's output on the multi-node bed (the same
    // list, a newline between): every list in the output is read and the last one is used.
    let mut rows: Option<Vec<Value>> = None;
    for list in serde_json::Deserializer::from_str(json.trim()).into_iter::<Vec<Value>>() {
        rows =
            Some(list.with_context(|| {
                format!("patronictl list -f json printed no JSON list: {json}")
            })?);
    }
    let rows = rows.ok_or_else(|| anyhow!("patronictl list -f json printed nothing: {json:?}"))?;
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

/// Patroni's view, from the first local running data member that answers, else from a
/// one-off task on the cluster's network.
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
    // SWARMCTL_REMOTE=1: as from a node that runs no member (the one-off task below).
    let local = job::local_exec_allowed();
    for service in cluster.data_members().filter(|_| local) {
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
    // No member answers from this node: ask from a one-off task on the cluster's network,
    // made from a member's service (its configuration and secrets).
    let argv = ctl::Request::Patronictl {
        args: vec!["list".into(), "-f".into(), "json".into()],
    }
    .argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // One attempt: the members' services differ in name and data only.
    if let Some(service) = cluster.data_members().next() {
        let template = crate::swarm::service_name(&cluster.name, &service.name);
        match job::run(engine, &template, &argv)
            .await
            .and_then(|o| o.into_stdout("patronictl list"))
        {
            Ok(out) => return parse_patronictl(&out),
            Err(e) => {
                last = e.context(format!(
                    "no member of {} runs on this node, and asking Patroni from a one-off task \
                     made from {template} failed",
                    cluster.name
                ))
            }
        }
    }
    Err(last)
}

/// Runs `sql` with psql as the superuser over the member's own socket (the contract's socket
/// directory) inside `container`: unaligned, tuples only, fields separated by `|`.
async fn socket_psql(
    engine: &Engine,
    container: &str,
    service: &Service,
    port: u16,
    sql: &str,
) -> anyhow::Result<String> {
    let port = port.to_string();
    exec(
        engine,
        container,
        &[
            "psql",
            "-h",
            service.env.common.socket_dir(),
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
            sql,
        ],
    )
    .await
    .and_then(|o| o.into_stdout("psql"))
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
    // SWARMCTL_REMOTE=1: as from a node that runs no member (the one-off task below).
    let local = job::local_exec_allowed();
    for service in cluster.data_members().filter(|_| local) {
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
        let out = socket_psql(engine, &container, service, port, SQL).await;
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
        assert!(parse_patronictl("").is_err());
        // The same listing twice in one output: read once.
        let twice = format!("{json}\n{json}\n");
        assert_eq!(
            parse_patronictl(&twice).expect("parses twice").len(),
            rows.len()
        );
    }

    #[test]
    fn activity_rows_parse() {
        let row = |v: &[Option<&str>]| v.iter().map(|f| f.map(String::from)).collect::<Vec<_>>();
        let a = parse_activity(&row(&[Some("4"), Some("f"), Some("12"), Some("1"), None]))
            .expect("parses");
        assert_eq!(
            a,
            Activity {
                connections: 4,
                primary: true,
                archived: 12,
                archive_failed: 1,
                last_archived_age_s: None,
                last_failed_age_s: None,
                last_failed_wal: None,
            }
        );
        let stuck = parse_activity(&row(&[
            Some("1"),
            Some("f"),
            Some("5"),
            Some("3"),
            Some("120"),
            Some("4"),
            Some("000000010000000000000009"),
        ]))
        .expect("parses");
        assert!(stuck.archiving_stuck());
        assert_eq!(
            stuck.last_failed_wal.as_deref(),
            Some("000000010000000000000009")
        );
        let recovered = parse_activity(&row(&[
            Some("1"),
            Some("f"),
            Some("5"),
            Some("3"),
            Some("4"),
            Some("120"),
            Some("000000010000000000000009"),
        ]))
        .expect("parses");
        assert!(!recovered.archiving_stuck());
        assert!(
            parse_activity(&row(&[Some("x"), Some("t"), Some("0"), Some("0"), None])).is_none()
        );
        assert!(parse_activity(&row(&[Some("1")])).is_none());
    }

    #[test]
    fn lsns_are_byte_positions() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("x"), None);
    }
}
