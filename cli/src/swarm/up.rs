//! `up` and `down`: one command from a machine with Docker to a healthy cluster, and back.
//!
//! `up` makes sure a swarm exists (a single-node swarm on loopback when there is none),
//! builds the image from the repository when it is missing, labels the nodes, creates the
//! secrets, deploys, waits until the cluster is healthy, checks that a write goes through the
//! pooler, and prints how to connect. `down` removes the stack and, only when asked, the
//! volumes (and with them the member labels) and the secrets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bollard::models::SwarmInitRequest;
use pgswarm_contract::{Role, Secret};

use crate::spec::{Cluster, PortMode};

use super::labels::{self, removal};
use super::progress::Progress;
use super::{deploy, nodes, secrets, switchover, Engine, OpsError};

/// The script that builds the image, relative to the repository root.
pub const BUILD_SCRIPT: &str = "scripts/build-image.sh";

/// The repository holding [`BUILD_SCRIPT`]: the current directory or one above it, else the
/// directory of this executable or one above it (`target/release/swarmctl`).
pub fn find_repository() -> Option<PathBuf> {
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            starts.push(dir.to_path_buf());
        }
    }
    starts.iter().find_map(|start| {
        start
            .ancestors()
            .find(|dir| dir.join(BUILD_SCRIPT).is_file() && dir.join("Dockerfile").is_file())
            .map(Path::to_path_buf)
    })
}

/// Makes this engine a swarm manager: an active swarm is used as it is; without one, a
/// single-node swarm is initialised on loopback. Returns true when it initialised one.
pub async fn ensure_swarm(engine: &Engine, progress: &mut Progress) -> anyhow::Result<bool> {
    let state = engine.swarm_state().await?;
    match state.state.as_str() {
        "active" if state.is_manager => Ok(false),
        "active" => Err(OpsError::NotManager.into()),
        "inactive" => {
            progress.say(
                "no swarm on this engine: initialising a single-node swarm on 127.0.0.1 \
                 (docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377)",
            );
            engine
                .docker
                .init_swarm(SwarmInitRequest {
                    listen_addr: Some("127.0.0.1:2377".into()),
                    advertise_addr: Some("127.0.0.1".into()),
                    ..Default::default()
                })
                .await
                .context("cannot initialise a swarm")?;
            Ok(true)
        }
        other => bail!(
            "the swarm state of this engine is `{other}` (see `docker info`); expected active \
             or inactive"
        ),
    }
}

/// Builds `image` with the repository's build script when it is missing, or always when
/// `rebuild`.
pub async fn ensure_image(
    engine: &Engine,
    image: &str,
    rebuild: bool,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let present = engine.has_image(image).await?;
    if present && !rebuild {
        return Ok(());
    }
    let Some(repo) = find_repository() else {
        bail!(
            "image {image} is not on this node, and no pgswarm repository (with {BUILD_SCRIPT}) \
             was found in the current directory, above it, or beside this swarmctl: run swarmctl \
             up from the repository, or build the image there with `{BUILD_SCRIPT} {image}`"
        );
    };
    progress.say(&format!(
        "image {image} is {}: building it with {}/{BUILD_SCRIPT} (a few minutes the first time)",
        if present {
            "asked to be rebuilt"
        } else {
            "missing"
        },
        repo.display()
    ));
    let status = tokio::process::Command::new(repo.join(BUILD_SCRIPT))
        .arg(image)
        .current_dir(&repo)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot run {}", repo.join(BUILD_SCRIPT).display()))?;
    if !status.success() {
        bail!("{BUILD_SCRIPT} {image} failed ({status}); its output is above");
    }
    if !engine.has_image(image).await? {
        bail!("{BUILD_SCRIPT} {image} succeeded, but the image is still missing");
    }
    progress.say(&format!("built image {image}"));
    Ok(())
}

/// Labels the nodes for `cluster` automatically; prints the plan when something changes.
pub async fn label(
    engine: &Engine,
    cluster: &Cluster,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let nodes = nodes::list(engine).await?;
    let plan = labels::plan(cluster, &nodes, &[])?;
    if plan.is_noop() {
        progress.say("node labels already in place");
        return Ok(());
    }
    for change in &plan.changes {
        labels::apply(engine, change).await?;
    }
    progress.say(&format!(
        "labelled node(s) {}",
        plan.changes
            .iter()
            .map(|c| c.hostname.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}

/// Everything `up` does, given the cluster to deploy.
pub async fn up(
    engine: &Engine,
    cluster: &Cluster,
    rebuild_image: bool,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    ensure_swarm(engine, progress).await?;
    ensure_image(engine, &cluster.image, rebuild_image, progress).await?;
    label(engine, cluster, progress).await?;
    deploy::deploy(engine, cluster, progress).await?;
    progress.say(&format!(
        "waiting until cluster {} is healthy (up to {} s)",
        cluster.name,
        timeout.as_secs()
    ));
    deploy::wait_ready(engine, cluster, timeout, progress).await?;
    super::objects::apply_and_report(engine, cluster, timeout, progress).await?;
    let (host, port) = match cluster.pooler() {
        Some(p) => match &p.env.role {
            // The pooler's tasks, not its virtual IP: see `switchover::write_target`.
            Role::Pooler { port, .. } => (format!("tasks.{}", p.name), *port),
            _ => unreachable_target(cluster),
        },
        None => unreachable_target(cluster),
    };
    let nodes = nodes::list(engine).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let server = loop {
        let views = super::observe::docker_view(engine, cluster, &nodes).await?;
        match switchover::write_check(engine, cluster, &views, &host, port).await {
            Ok(server) => break server,
            Err(e) if std::time::Instant::now() >= deadline => {
                let (rhost, rport) = unreachable_target(cluster);
                let router = switchover::write_check(engine, cluster, &views, &rhost, rport).await;
                let mut why = format!(
                    "cluster {} is healthy, but a write through {host}:{port} fails",
                    cluster.name
                );
                if router.is_ok() && rhost != host {
                    why.push_str(&format!(
                        "; a write through {rhost}:{rport} works, so the pooler does not reach \
                         the router"
                    ));
                    if super::engine::local_ipvs(engine) == Some(false) {
                        why.push_str(&format!(" ({})", super::engine::NO_IPVS));
                    }
                }
                return Err(e.context(why));
            }
            Err(_) => {
                progress.update(&format!("waiting for a write through {host}:{port}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    progress.say(&format!(
        "a write through {host}:{port} committed (on server {server})"
    ));
    let state = engine.swarm_state().await?;
    println!("{}", connection_help(cluster, &state.node_addr));
    if uses_mesh(cluster) && super::engine::local_ipvs(engine) == Some(false) {
        eprintln!("warning: {}", super::engine::NO_IPVS);
    }
    Ok(())
}

fn unreachable_target(cluster: &Cluster) -> (String, u16) {
    let leader = cluster
        .data_members()
        .next()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    switchover::write_target(cluster, &leader)
}

/// Whether a service of `cluster` publishes through the ingress routing mesh (which, like
/// service virtual IPs, needs IPVS).
fn uses_mesh(cluster: &Cluster) -> bool {
    cluster
        .services
        .iter()
        .any(|s| s.ports.iter().any(|p| p.mode == PortMode::Ingress))
}

/// How to connect to `cluster`, for the end of `up`.
pub fn connection_help(cluster: &Cluster, node_addr: &str) -> String {
    let host = if node_addr.is_empty() {
        "NODE"
    } else {
        node_addr
    };
    let superuser = cluster
        .data_members()
        .next()
        .map(|s| s.env.common.superuser.clone())
        .unwrap_or_else(|| pgswarm_contract::defaults::SUPERUSER.to_string());
    let mut out = format!("cluster {} is ready.\n", cluster.name);
    let published = |name: &str, target: u16| -> Option<u16> {
        cluster
            .service(name)
            .and_then(|s| s.ports.iter().find(|p| p.target == target).map(|p| p.port))
    };
    if let (Some(router), Some((rw, ro, _))) = (cluster.router(), cluster.router_ports()) {
        if let Some(p) = published(&router.name, rw) {
            out.push_str(&format!(
                "  read-write (router):  postgresql://{superuser}@{host}:{p}/postgres\n"
            ));
        }
        if let Some(p) = published(&router.name, ro) {
            out.push_str(&format!(
                "  read-only (router):   postgresql://{superuser}@{host}:{p}/postgres\n"
            ));
        }
    }
    if let Some(pooler) = cluster.pooler() {
        if let Role::Pooler { port, .. } = &pooler.env.role {
            if let Some(p) = published(&pooler.name, *port) {
                out.push_str(&format!(
                    "  pooled (PgBouncer):   postgresql://{superuser}@{host}:{p}/postgres\n"
                ));
            }
        }
    }
    let member = cluster
        .data_members()
        .next()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    out.push_str(if uses_mesh(cluster) {
        "  (published through the swarm's routing mesh: any node's address works)\n"
    } else {
        "  (published in host mode: the address of the node that runs the service)\n"
    });
    out.push_str(&format!(
        "password of {superuser} (a Docker secret, generated; never printed by swarmctl):\n  \
         {}\n\
         status:  swarmctl status{}\n\
         psql:    swarmctl psql{}\n\
         remove:  swarmctl down{}   (add --volumes to delete the data, --secrets the passwords)\n",
        secrets::read_command(cluster, Secret::SuperuserPassword, &member),
        spec_hint(cluster),
        spec_hint(cluster),
        spec_hint(cluster),
    ));
    if cluster.tls.is_some() {
        out.push_str(&format!(
            "TLS:     clients trust the cluster CA (add ?sslmode=verify-full&sslrootcert=FILE); \
             `swarmctl connect{} --role ROLE` prints the URIs and the command that saves it\n",
            spec_hint(cluster)
        ));
    }
    out
}

fn spec_hint(cluster: &Cluster) -> String {
    match crate::spec::default_cluster() {
        Ok(d) if d.cluster.name == cluster.name => String::new(),
        _ => " -f SPEC".to_string(),
    }
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub services: usize,
    pub volumes: Vec<String>,
    pub secrets: Vec<String>,
    pub labels: usize,
}

/// Removes the stack of `cluster`, then its volumes and member labels when `volumes`, and
/// its secrets when `secrets`.
pub async fn down(
    engine: &Engine,
    cluster: &Cluster,
    volumes: bool,
    remove_secrets: bool,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<Removed> {
    engine.require_manager().await?;
    let mut removed = Removed {
        services: deploy::remove_stack(engine, &cluster.name, timeout, progress).await?,
        ..Removed::default()
    };
    if volumes {
        removed.volumes = deploy::remove_volumes(engine, &cluster.name).await?;
        let nodes = nodes::list(engine).await?;
        for change in removal(&cluster.name, &nodes) {
            removed.labels += change.remove.len();
            labels::apply(engine, &change).await?;
        }
    }
    if remove_secrets {
        removed.secrets = secrets::remove(engine, cluster).await?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_help_names_every_address_and_how_to_read_the_password() {
        let c = crate::spec::default_cluster().expect("default").cluster;
        let text = connection_help(&c, "127.0.0.1");
        assert!(text.contains("127.0.0.1:5000"), "{text}");
        assert!(text.contains("127.0.0.1:5001"), "{text}");
        assert!(text.contains("127.0.0.1:6432"), "{text}");
        assert!(
            text.contains("cat /run/secrets/superuser_password"),
            "{text}"
        );
        assert!(text.contains("swarmctl down "), "{text}");
        // The default cluster publishes in host mode: it needs no IPVS.
        assert!(!uses_mesh(&c));
        assert!(text.contains("published in host mode"), "{text}");
        assert!(!text.contains("TLS:"), "{text}");
        let tls = crate::spec::parse("name: demo\ntopology: patroni\ntls: {}\n")
            .expect("valid")
            .cluster;
        let text = connection_help(&tls, "127.0.0.1");
        assert!(
            text.contains("swarmctl connect -f SPEC --role ROLE` prints the URIs"),
            "{text}"
        );
    }
}
