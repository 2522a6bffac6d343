//! Docker's view of a cluster: each service's newest task, its node, and the health of its
//! container on this node.

use std::collections::HashMap;

use anyhow::{anyhow, Context};
use bollard::models::{HealthStatusEnum, Task, TaskState};
use bollard::query_parameters::ListTasksOptions;
use pgswarm_contract::Secret;
use serde::Serialize;

use crate::spec::{Cluster, Service};

use crate::swarm::engine::is_status;
use crate::swarm::nodes::{hostname_of, NodeView};
use crate::swarm::{service_name, Engine};

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

/// A running container on this node whose service mounts the superuser secret, so that a
/// command run in it (`pgswarm-sidecar ctl ...`) can read the password without it ever
/// leaving the container.
pub fn superuser_container(cluster: &Cluster, views: &[ServiceView]) -> anyhow::Result<String> {
    cluster
        .services
        .iter()
        .filter(|s| s.secrets().contains(&Secret::SuperuserPassword))
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
    fn task_times_compare_across_fraction_lengths() {
        let a = sortable_time(&Some("2026-11-22T14:01:20.47568859Z".into()));
        let b = sortable_time(&Some("2026-11-22T14:01:20.5Z".into()));
        assert!(a < b);
    }
}
