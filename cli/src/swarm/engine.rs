//! The connection to the Docker daemon (local socket or `DOCKER_HOST`, API version negotiated
//! with the daemon) and the questions every command asks it: is this a swarm manager, is the
//! image here, which containers run a service on this node, what did a container log last.

use std::collections::HashMap;

use anyhow::Context;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, LocalNodeState};
use bollard::query_parameters::{ListContainersOptions, LogsOptions};
use bollard::Docker;
use futures_util::StreamExt;

use super::{OpsError, SERVICE_NAME_LABEL};

/// The daemon, with the facts about this node that most commands need.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    /// Where the daemon was reached, for messages.
    pub endpoint: String,
}

/// This node's place in the swarm.
#[derive(Debug, Clone)]
pub struct SwarmState {
    /// `active`, `inactive`, `pending`, `error`, `locked`.
    pub state: String,
    pub is_manager: bool,
    pub node_id: String,
    /// The address this node advertises.
    pub node_addr: String,
}

impl SwarmState {
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }
}

/// Whether this machine's kernel has IPVS, which Swarm's service virtual IPs and its ingress
/// routing mesh need. `None` when the daemon is not local (the answer would be about the
/// wrong machine).
pub fn local_ipvs(engine: &Engine) -> Option<bool> {
    if !engine.endpoint.starts_with("unix://") {
        return None;
    }
    Some(
        std::path::Path::new("/sys/module/ip_vs").exists()
            || std::path::Path::new("/proc/net/ip_vs").exists(),
    )
}

/// What missing IPVS means for a cluster, for messages.
pub const NO_IPVS: &str = "this machine's kernel has no IPVS (no ip_vs module): Swarm's service \
     virtual IPs and its ingress routing mesh do not work here, so ports published through the \
     mesh do not answer and a service reaches the router or the pooler only through \
     tasks.<name> (`modprobe ip_vs`, or a kernel with IPVS, fixes it)";

/// True when `err` is the daemon answering with HTTP `status`.
pub fn is_status(err: &DockerError, status: u16) -> bool {
    matches!(err, DockerError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

impl Engine {
    /// Connects with the local defaults or `DOCKER_HOST`, and negotiates the API version (a
    /// daemon older than this client refuses requests made with a newer version).
    pub async fn connect() -> Result<Engine, OpsError> {
        let endpoint = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let unreachable = |source| OpsError::Unreachable {
            endpoint: endpoint.clone(),
            source,
        };
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        tracing::debug!(endpoint = %endpoint, version = ?docker.client_version(), "connected");
        Ok(Engine { docker, endpoint })
    }

    /// This node's swarm state.
    pub async fn swarm_state(&self) -> anyhow::Result<SwarmState> {
        let info = self
            .docker
            .info()
            .await
            .context("cannot read the Docker engine's info")?;
        let swarm = info.swarm.unwrap_or_default();
        let state = match swarm.local_node_state {
            Some(LocalNodeState::ACTIVE) => "active",
            Some(LocalNodeState::PENDING) => "pending",
            Some(LocalNodeState::ERROR) => "error",
            Some(LocalNodeState::LOCKED) => "locked",
            _ => "inactive",
        };
        Ok(SwarmState {
            state: state.to_string(),
            is_manager: swarm.control_available.unwrap_or(false),
            node_id: swarm.node_id.unwrap_or_default(),
            node_addr: swarm.node_addr.unwrap_or_default(),
        })
    }

    /// The swarm state, or the error saying why commands that change the swarm cannot run
    /// here: no swarm, or a worker node.
    pub async fn require_manager(&self) -> anyhow::Result<SwarmState> {
        let state = self.swarm_state().await?;
        if !state.is_active() {
            return Err(OpsError::NoSwarm { state: state.state }.into());
        }
        if !state.is_manager {
            return Err(OpsError::NotManager.into());
        }
        Ok(state)
    }

    /// Whether `image` is on this node.
    pub async fn has_image(&self, image: &str) -> anyhow::Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot inspect image {image}")),
        }
    }

    /// Containers of the Swarm service `service` on this node, running ones first, newest
    /// first within each kind.
    pub async fn service_containers(
        &self,
        service: &str,
        all: bool,
    ) -> anyhow::Result<Vec<ContainerSummary>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{SERVICE_NAME_LABEL}={service}")],
        )]);
        let mut containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .with_context(|| format!("cannot list the containers of service {service}"))?;
        containers.sort_by_key(|c| {
            let running = c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("running");
            (!running, std::cmp::Reverse(c.created.unwrap_or(0)))
        });
        Ok(containers)
    }

    /// The id of a running container of `service` on this node.
    pub async fn running_container(&self, service: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .service_containers(service, false)
            .await?
            .into_iter()
            .find_map(|c| c.id))
    }

    /// The last `lines` log lines of a container (stdout and stderr), or a note saying why
    /// there are none.
    pub async fn last_logs(&self, container: &str, lines: usize) -> String {
        let mut stream = self.docker.logs(
            container,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => text.push_str(&chunk.to_string()),
                Err(e) => {
                    text.push_str(&format!("(cannot read the logs: {e})"));
                    break;
                }
            }
        }
        if text.trim().is_empty() {
            "(no log lines)".to_string()
        } else {
            text
        }
    }
}
