//! `deploy`: the checks that would otherwise fail late (swarm, manager, placement, image),
//! the missing secrets, the stack itself (`docker stack deploy`, the CLI being the one
//! implementation of the compose format), then waiting until every service is healthy and
//! replication streams — or saying which member is stuck, why, and what it logged last.
//! Also the removal of a stack (`down`), through the API.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::query_parameters::{
    ListNetworksOptions, ListServicesOptions, ListVolumesOptions, RemoveVolumeOptions,
};

use crate::render;
use pgswarm_contract::{Role, SynchronousMode};

use crate::spec::{Cluster, Service, ServiceKind, Topology};

use super::constraints::unplaceable;
use super::engine::is_status;
use super::observe::{db_view, docker_view, DbView, ServiceView};
use super::progress::Progress;
use super::{nodes, secrets, Engine, OpsError, STACK_NAMESPACE_LABEL};

/// Log lines shown for a stuck member.
const STUCK_LOG_LINES: usize = 20;

/// Checks everything `docker stack deploy` needs and that can be known beforehand.
pub async fn preflight(engine: &Engine, cluster: &Cluster) -> anyhow::Result<()> {
    engine.require_manager().await?;
    let nodes = nodes::list(engine).await?;
    let bad = unplaceable(cluster, &nodes);
    if !bad.is_empty() {
        let lines: Vec<String> = bad.iter().map(|u| format!("  {}", u.message)).collect();
        return Err(OpsError::Unsatisfiable(format!(
            "the placement of {} member(s) of cluster {} matches no ready node:\n{}",
            bad.len(),
            cluster.name,
            lines.join("\n")
        ))
        .into());
    }
    if !engine.has_image(&cluster.image).await? {
        return Err(OpsError::ImageMissing {
            image: cluster.image.clone(),
        }
        .into());
    }
    Ok(())
}

/// Runs `docker stack deploy` with the rendered stack of `cluster`.
pub async fn stack_deploy(cluster: &Cluster) -> anyhow::Result<()> {
    let yaml = render::stack_yaml(cluster).context("cannot serialize the stack file")?;
    stack_deploy_yaml(&cluster.name, &yaml).await
}

/// The services of stack `name`.
pub async fn stack_services(
    engine: &Engine,
    name: &str,
) -> anyhow::Result<Vec<bollard::models::Service>> {
    engine
        .docker
        .list_services(Some(ListServicesOptions {
            filters: Some(stack_filter(name)),
            ..Default::default()
        }))
        .await
        .context("cannot list services")
}

/// Runs `docker stack deploy` of the stack file `yaml` as stack `name`.
pub async fn stack_deploy_yaml(name: &str, yaml: &str) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("swarmctl-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file: PathBuf = dir.join("stack.yml");
    std::fs::write(&file, yaml).with_context(|| format!("cannot write {}", file.display()))?;
    let output = tokio::process::Command::new("docker")
        .args(["stack", "deploy", "--resolve-image", "never", "-c"])
        .arg(&file)
        .arg(name)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.context(
        "cannot run the docker command line (`docker stack deploy` deploys the stack): \
         install the Docker CLI",
    )?;
    if !output.status.success() {
        bail!(
            "docker stack deploy of {} failed ({}): {}",
            name,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Deploys `cluster`: checks, secrets, stack.
pub async fn deploy(
    engine: &Engine,
    cluster: &Cluster,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    preflight(engine, cluster).await?;
    let created = secrets::create_missing(engine, cluster).await?;
    if !created.is_empty() {
        // Passwords and the passphrase are random; the TLS secrets are a generated CA,
        // certificate and key.
        progress.say(&format!(
            "created secrets (random passwords, generated certificates): {}",
            created.join(", ")
        ));
    }
    progress.say(&format!(
        "docker stack deploy {} ({} services, image {})",
        cluster.name,
        cluster.services.len(),
        cluster.image
    ));
    stack_deploy(cluster).await
}

/// Where a cluster stands while it comes up.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub ready: bool,
    /// One line for the progress output.
    pub summary: String,
    /// Members not ready yet, with what they wait for.
    pub pending: Vec<(String, String)>,
    pub views: Vec<ServiceView>,
}

/// Checks the replication state from the database's view: for Patroni one running leader
/// per group and every other member streaming; for the replication topology a primary and
/// streaming replicas. Returns the members not there yet, with their state.
pub fn replication_pending(
    cluster: &Cluster,
    db: &BTreeMap<String, DbView>,
) -> Vec<(String, String)> {
    let mut pending = Vec::new();
    let mut leaders: BTreeMap<Option<u32>, Vec<&str>> = BTreeMap::new();
    for member in cluster.data_members() {
        let group = match member.kind {
            ServiceKind::Data { group } => group,
            _ => None,
        };
        let Some(row) = db.get(&member.name) else {
            pending.push((member.name.clone(), "not listed yet".to_string()));
            continue;
        };
        let leads = matches!(row.role.as_str(), "leader" | "primary");
        if leads {
            leaders.entry(group).or_default().push(&member.name);
            if row.state != "running" {
                pending.push((member.name.clone(), format!("{} {}", row.role, row.state)));
            }
        } else if row.state != "streaming" {
            pending.push((member.name.clone(), format!("{} {}", row.role, row.state)));
        }
    }
    let groups: Vec<Option<u32>> = match cluster.topology {
        Topology::Citus => cluster.citus_groups().into_keys().map(Some).collect(),
        _ => vec![None],
    };
    for g in &groups {
        // In synchronous mode a group of two or more is ready once a standby is synchronous:
        // before that, commits wait (mode on) and a switchover has no candidate.
        let members: Vec<&Service> = cluster
            .data_members()
            .filter(|s| matches!(s.kind, ServiceKind::Data { group } if group == *g))
            .collect();
        let synchronous = members.iter().any(|s| {
            matches!(
                s.env.role,
                Role::Patroni { synchronous_mode, .. } if synchronous_mode != SynchronousMode::Off
            )
        });
        let has_sync = members
            .iter()
            .any(|s| db.get(&s.name).is_some_and(|r| r.role.contains("standby")));
        if synchronous && members.len() > 1 && !has_sync {
            let what = g.map_or(String::new(), |g| format!(" in group {g}"));
            pending.push((
                format!("synchronous standby{what}"),
                "none assigned yet".to_string(),
            ));
        }
    }
    for g in groups {
        let l = leaders.get(&g).map(Vec::len).unwrap_or(0);
        if l != 1 {
            let what = g.map_or(String::new(), |g| format!(" in group {g}"));
            pending.push((
                format!("leader{what}"),
                format!("{l} leaders{what} (one expected)"),
            ));
        }
    }
    pending
}

/// Looks at the cluster once.
pub async fn readiness(engine: &Engine, cluster: &Cluster) -> anyhow::Result<Readiness> {
    let nodes = nodes::list(engine).await?;
    let views = docker_view(engine, cluster, &nodes).await?;
    let mut pending: Vec<(String, String)> = views
        .iter()
        .filter(|v| !v.is_ready())
        .map(|v| (v.member.clone(), v.waiting_for()))
        .collect();
    let healthy = views.len() - pending.len();
    let mut summary = format!("{healthy}/{} services healthy", views.len());
    if pending.is_empty() {
        match db_view(engine, cluster, &views).await {
            Ok(db) => {
                let waiting = replication_pending(cluster, &db);
                if waiting.is_empty() {
                    let leaders: Vec<&String> = db
                        .iter()
                        .filter(|(_, r)| matches!(r.role.as_str(), "leader" | "primary"))
                        .map(|(m, _)| m)
                        .collect();
                    summary.push_str(&format!(
                        "; leader {}, every other member streaming",
                        leaders
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                } else {
                    summary.push_str("; replication: waiting for ");
                    summary.push_str(&describe(&waiting));
                }
                pending = waiting;
            }
            Err(e) => {
                summary.push_str(&format!("; replication state unknown: {e:#}"));
                pending.push(("replication".into(), format!("{e:#}")));
            }
        }
    } else {
        summary.push_str("; waiting for ");
        summary.push_str(&describe(&pending));
    }
    Ok(Readiness {
        ready: pending.is_empty(),
        summary,
        pending,
        views,
    })
}

fn describe(pending: &[(String, String)]) -> String {
    pending
        .iter()
        .map(|(m, why)| format!("{m} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until [`readiness`] says ready, printing each change; on timeout, the error names
/// the members that are stuck, why, and their last log lines.
pub async fn wait_ready(
    engine: &Engine,
    cluster: &Cluster,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = readiness(engine, cluster).await?;
        progress.update(&r.summary);
        if r.ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "cluster {} is not ready after {} s:\n{}",
                cluster.name,
                timeout.as_secs(),
                stuck_report(engine, &cluster.name, &r).await
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// For each pending member: why, and its last log lines (from a container on this node).
pub async fn stuck_report(engine: &Engine, stack: &str, r: &Readiness) -> String {
    let mut out = String::new();
    for (member, why) in &r.pending {
        let view = r.views.iter().find(|v| &v.member == member);
        let why = match view {
            Some(v) if !v.is_ready() => v.why_stuck(),
            _ => why.clone(),
        };
        out.push_str(&format!("  {member}: {why}\n"));
        match view.and_then(|v| v.container.clone().or_else(|| v.last_container.clone())) {
            Some(container) => {
                out.push_str(&format!("  --- last log lines of {member}:\n"));
                for line in engine.last_logs(&container, STUCK_LOG_LINES).await.lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            None if view.is_some() => {
                out.push_str(&format!(
                    "  (no container of {member} on this node; `docker service logs \
                     {stack}_{member}` shows its logs)\n"
                ));
            }
            None => {}
        }
    }
    out
}

/// Filters for objects of stack `name`.
fn stack_filter(name: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("{STACK_NAMESPACE_LABEL}={name}")],
    )])
}

/// Removes the services and networks of stack `name` and waits (up to `timeout`) until
/// their containers are gone; returns the number of services removed.
pub async fn remove_stack(
    engine: &Engine,
    name: &str,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<usize> {
    let services = engine
        .docker
        .list_services(Some(ListServicesOptions {
            filters: Some(stack_filter(name)),
            ..Default::default()
        }))
        .await
        .context("cannot list services")?;
    for s in &services {
        if let Some(id) = &s.id {
            match engine.docker.delete_service(id).await {
                Ok(()) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(e).context("cannot remove a service"),
            }
        }
    }
    if !services.is_empty() {
        progress.say(&format!(
            "removed {} services of stack {name}; waiting for their containers to stop",
            services.len()
        ));
    }
    let deadline = Instant::now() + timeout;
    loop {
        // Finished one-off task containers stay until removed (see `job`).
        super::job::remove_job_containers(engine, &format!("com.docker.stack.namespace={name}"))
            .await;
        let containers = engine
            .docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(stack_filter(name)),
                ..Default::default()
            }))
            .await
            .context("cannot list containers")?;
        let tasks = engine
            .docker
            .list_tasks(Some(bollard::query_parameters::ListTasksOptions {
                filters: Some(stack_filter(name)),
            }))
            .await
            .map(|tasks| {
                tasks
                    .iter()
                    .filter(|t| !super::job::is_finished_job(t))
                    .count()
            })
            .unwrap_or(0);
        if containers.is_empty() && tasks == 0 {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "stack {name}: {} containers still present after {} s",
                containers.len(),
                timeout.as_secs()
            );
        }
        progress.update(&format!(
            "stack {name}: {} containers left",
            containers.len()
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let networks = engine
        .docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(stack_filter(name)),
        }))
        .await
        .context("cannot list networks")?;
    for n in networks {
        if let Some(id) = n.id {
            match engine.docker.remove_network(&id).await {
                Ok(()) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(e).context("cannot remove the stack's network"),
            }
        }
    }
    Ok(services.len())
}

/// Removes the volumes of stack `name` on this node; returns their names.
pub async fn remove_volumes(engine: &Engine, name: &str) -> anyhow::Result<Vec<String>> {
    let volumes = engine
        .docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(stack_filter(name)),
        }))
        .await
        .context("cannot list volumes")?
        .volumes
        .unwrap_or_default();
    let mut removed = Vec::new();
    for v in volumes {
        engine
            .docker
            .remove_volume(&v.name, None::<RemoveVolumeOptions>)
            .await
            .with_context(|| format!("cannot remove volume {}", v.name))?;
        removed.push(v.name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(role: &str, state: &str) -> DbView {
        DbView {
            role: role.into(),
            state: state.into(),
            ..DbView::default()
        }
    }

    #[test]
    fn patroni_is_ready_with_one_leader_and_streaming_replicas() {
        let c = crate::spec::parse("name: demo\ntopology: patroni\n")
            .expect("valid")
            .cluster;
        let mut db = BTreeMap::from([
            ("pg1".to_string(), row("leader", "running")),
            ("pg2".to_string(), row("replica", "streaming")),
            ("pg3".to_string(), row("sync standby", "streaming")),
        ]);
        assert!(replication_pending(&c, &db).is_empty());
        // Synchronous mode waits for a synchronous standby.
        let sync =
            crate::spec::parse("name: demo\ntopology: patroni\npatroni:\n  synchronous_mode: on\n")
                .expect("valid")
                .cluster;
        db.insert("pg3".into(), row("replica", "streaming"));
        let p = replication_pending(&sync, &db);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].0.starts_with("synchronous standby"));
        assert!(replication_pending(&c, &db).is_empty());
        db.insert("pg3".into(), row("replica", "starting"));
        let p = replication_pending(&c, &db);
        assert_eq!(p, vec![("pg3".to_string(), "replica starting".to_string())]);
        db.remove("pg1");
        let p = replication_pending(&c, &db);
        assert!(p.iter().any(|(m, _)| m == "pg1"));
        assert!(p
            .iter()
            .any(|(m, why)| m == "leader" && why.contains("0 leaders")));
    }
}
