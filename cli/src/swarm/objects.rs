//! The declared roles and databases, handed to the cluster once it is up: `swarmctl deploy
//! --wait` and `up` run `pgswarm-sidecar ctl apply-objects` in a data member (whose secret
//! files hold the roles' passwords) against the primary. The sidecar stores the declaration
//! in the database and reconciles it at once; every member that leads later keeps
//! reconciling it. Nothing about the roles is in a member's environment, so changing a role
//! and deploying again alters it without restarting PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::Context;
use pgswarm_contract::ctl::{self, ApplyObjectsReply, Request, Target};
use pgswarm_contract::Role;

use crate::spec::{Cluster, ServiceKind, Topology};

use super::exec::exec;
use super::observe::{db_view, docker_view};
use super::progress::Progress;
use super::{nodes, Engine};

/// Pause between attempts while the primary is not reachable yet.
const POLL: Duration = Duration::from_secs(2);

/// Whether `cluster` has a reconciler for roles and databases (not Citus).
pub fn supported(cluster: &Cluster) -> bool {
    cluster.topology != Topology::Citus
}

/// Applies the declared roles and databases of `cluster` on its primary, trying again until
/// `timeout` while the primary cannot be reached (a member restarting after a deploy).
pub async fn apply(
    engine: &Engine,
    cluster: &Cluster,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<ApplyObjectsReply> {
    let deadline = Instant::now() + timeout;
    let nodes = nodes::list(engine).await?;
    loop {
        let attempt = async {
            let views = docker_view(engine, cluster, &nodes).await?;
            let db = db_view(engine, cluster, &views).await?;
            let primary = cluster
                .data_members()
                .find(|s| {
                    db.get(&s.name)
                        .is_some_and(|v| v.role == "leader" || v.role == "primary")
                })
                .map(|s| s.name.clone())
                .context("no member is the primary yet")?;
            // A data member's container on this node, the primary's own first: every data
            // member mounts the roles' password secrets.
            let container = views
                .iter()
                .filter(|v| v.member == primary)
                .chain(views.iter().filter(|v| {
                    v.member != primary
                        && cluster
                            .service(&v.member)
                            .is_some_and(|s| matches!(s.kind, ServiceKind::Data { .. }))
                }))
                .find_map(|v| v.container.clone())
                .context(
                    "no data member runs on this node: run swarmctl on a node that holds one",
                )?;
            let port = cluster
                .service(&primary)
                .and_then(|s| match &s.env.role {
                    Role::Patroni { postgres, .. } | Role::Primary { postgres, .. } => {
                        Some(postgres.port)
                    }
                    _ => None,
                })
                .unwrap_or(pgswarm_contract::defaults::PG_PORT);
            let request = Request::ApplyObjects {
                target: Target::new(primary.clone(), port),
                objects: cluster.objects.clone(),
            };
            let argv = request.argv();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = exec(engine, &container, &argv).await?;
            anyhow::Ok(ctl::read_reply::<ApplyObjectsReply>(
                out.exit_code,
                &out.stdout,
                &out.stderr,
            ))
        };
        let error = match attempt.await {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) if !e.is_retryable() => {
                return Err(anyhow::Error::from(e)
                    .context("applying the declared roles and databases failed"));
            }
            Ok(Err(e)) => anyhow::Error::from(e),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(error.context(format!(
                "the declared roles and databases were not applied within {} s",
                timeout.as_secs()
            )));
        }
        progress.update(&format!(
            "waiting for the primary to apply roles and databases ({error:#})"
        ));
        tokio::time::sleep(POLL).await;
    }
}

/// [`apply`], then one progress line per change and per problem.
pub async fn apply_and_report(
    engine: &Engine,
    cluster: &Cluster,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    if !supported(cluster) {
        return Ok(());
    }
    let reply = match apply(engine, cluster, timeout, progress).await {
        Ok(reply) => reply,
        // Nothing declared: the step only clears an earlier declaration, and must not fail a
        // deploy (an image older than this swarmctl has no `ctl apply-objects`).
        Err(e) if cluster.objects.is_empty() => {
            progress.say(&format!(
                "note: the stored roles and databases were not cleared ({e:#})"
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if reply.changes.is_empty() && reply.problems.is_empty() && !cluster.objects.is_empty() {
        progress.say("roles and databases: already as declared");
    }
    for change in &reply.changes {
        progress.say(&format!("roles and databases: {change}"));
    }
    if !reply.problems.is_empty() {
        anyhow::bail!(
            "roles and databases: {} problem(s):\n  {}",
            reply.problems.len(),
            reply.problems.join("\n  ")
        );
    }
    Ok(())
}
