//! One-off tasks on the cluster's network, for when no member container runs on this node
//! (a manager that runs no member, a member on another machine): `docker exec` reaches only
//! local containers, and Patroni's REST API and the members are reachable only on the
//! overlay. A Swarm job (`ReplicatedJob`, one completion) is created from a data member's own
//! service — same image, environment, network and secrets — without its volumes, ports,
//! placement or health check; it runs one `pgswarm-sidecar ctl ...` command wherever Swarm
//! places it, its output is read with `docker service logs`, and the job is removed.
//! Credentials stay in the secret files, as with `docker exec`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bollard::models::{
    HealthConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicatedJob,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{InspectServiceOptions, ListTasksOptions};

use super::exec::ExecOutput;
use super::Engine;

/// Set (to anything), swarmctl reaches the cluster through one-off tasks even when a member
/// runs on this node, as a manager that runs none does: for checking that path anywhere.
pub const REMOTE_ENV: &str = "SWARMCTL_REMOTE";

/// Whether local containers may be used (`SWARMCTL_REMOTE` unset).
pub fn local_exec_allowed() -> bool {
    std::env::var_os(REMOTE_ENV).is_none()
}

/// Runs a `ctl` request in a local container when there is one (`container`), else in a
/// one-off task made from the first data member's service.
pub async fn run_ctl(
    engine: &Engine,
    cluster: &crate::spec::Cluster,
    container: Option<&str>,
    argv: &[&str],
) -> anyhow::Result<ExecOutput> {
    match container.filter(|_| local_exec_allowed()) {
        Some(container) => super::exec::exec(engine, container, argv).await,
        None => {
            let member = cluster
                .data_members()
                .next()
                .ok_or_else(|| anyhow!("cluster {} has no PostgreSQL member", cluster.name))?;
            run(
                engine,
                &super::service_name(&cluster.name, &member.name),
                argv,
            )
            .await
        }
    }
}

/// Label of a job service, so a leftover is recognisable.
pub const JOB_LABEL: &str = "pgswarm.job";

/// How long a job may take from creation to its end.
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// The job's service spec: `template`'s, running `argv` once, with no volume, port,
/// resource limit, health check or restart; placed on the node `node_id` when given (the node
/// swarmctl talks to, so that its container can be removed afterwards: Swarm leaves a
/// finished job's container behind even once the service is removed).
pub fn job_spec(
    template: &ServiceSpec,
    name: &str,
    argv: &[&str],
    node_id: Option<&str>,
) -> anyhow::Result<ServiceSpec> {
    let mut spec = template.clone();
    spec.name = Some(name.to_string());
    let mut labels = spec.labels.take().unwrap_or_default();
    labels.insert(JOB_LABEL.into(), "ctl".into());
    spec.labels = Some(labels);
    spec.mode = Some(ServiceSpecMode {
        replicated_job: Some(ServiceSpecModeReplicatedJob {
            max_concurrent: Some(1),
            total_completions: Some(1),
        }),
        ..Default::default()
    });
    spec.update_config = None;
    spec.rollback_config = None;
    spec.endpoint_spec = None;
    let task = spec
        .task_template
        .as_mut()
        .ok_or_else(|| anyhow!("the service {name} has no task template"))?;
    let container = task
        .container_spec
        .as_mut()
        .ok_or_else(|| anyhow!("the service {name} has no container spec"))?;
    let mut container_labels = container.labels.take().unwrap_or_default();
    container_labels.insert(JOB_LABEL.into(), "ctl".into());
    container.labels = Some(container_labels);
    container.command = Some(argv.iter().map(|s| s.to_string()).collect());
    container.args = None;
    container.mounts = None;
    container.hostname = None;
    container.health_check = Some(HealthConfig {
        test: Some(vec!["NONE".into()]),
        ..Default::default()
    });
    task.placement = node_id.map(|id| bollard::models::TaskSpecPlacement {
        constraints: Some(vec![format!("node.id=={id}")]),
        ..Default::default()
    });
    task.resources = None;
    task.restart_policy = Some(TaskSpecRestartPolicy {
        condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
        ..Default::default()
    });
    Ok(spec)
}

/// Runs `argv` in a one-off task made from the service `template` (a data member's Swarm
/// service name); returns what it printed and its exit code.
pub async fn run(engine: &Engine, template: &str, argv: &[&str]) -> anyhow::Result<ExecOutput> {
    run_job(engine, template, argv, false).await
}

/// Like [`run`], but the task keeps the service's volumes and placement: it runs on the node
/// that holds the member's volume, with the volume mounted (the service must have no running
/// task: a volume is never used by two tasks at once).
pub async fn run_with_volume(
    engine: &Engine,
    template: &str,
    argv: &[&str],
) -> anyhow::Result<ExecOutput> {
    run_job(engine, template, argv, true).await
}

/// `job_spec` that keeps the template's mounts and placement.
pub fn volume_job_spec(
    template: &ServiceSpec,
    name: &str,
    argv: &[&str],
) -> anyhow::Result<ServiceSpec> {
    let mut spec = job_spec(template, name, argv, None)?;
    let original = template.task_template.as_ref();
    if let Some(task) = spec.task_template.as_mut() {
        task.placement = original.and_then(|t| t.placement.clone());
        if let Some(c) = task.container_spec.as_mut() {
            c.mounts = original
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.mounts.clone());
        }
    }
    Ok(spec)
}

async fn run_job(
    engine: &Engine,
    template: &str,
    argv: &[&str],
    with_volume: bool,
) -> anyhow::Result<ExecOutput> {
    let service = engine
        .docker
        .inspect_service(template, None::<InspectServiceOptions>)
        .await
        .with_context(|| format!("cannot inspect the service {template}"))?;
    let spec = service
        .spec
        .ok_or_else(|| anyhow!("the service {template} has no spec"))?;
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0);
    let name = format!("{template}-ctl-{}-{unique}", std::process::id());
    // On this node when it can run tasks (it is a manager: commands run there), so the
    // finished container can be removed here; anywhere otherwise (a drained node).
    let state = engine.swarm_state().await?;
    let local = local_node_can_run_tasks(engine, &state.node_id).await;
    let spec = if with_volume {
        volume_job_spec(&spec, &name, argv)?
    } else {
        job_spec(&spec, &name, argv, local.then_some(state.node_id.as_str()))?
    };
    engine
        .docker
        .create_service(spec, None)
        .await
        .with_context(|| format!("cannot create the one-off task {name}"))?;
    let result = wait_and_read(engine, &name, argv).await;
    if let Err(e) = engine.docker.delete_service(&name).await {
        tracing::warn!(service = %name, error = %e, "cannot remove the one-off task's service");
    }
    remove_job_containers(engine, &format!("com.docker.swarm.service.name={name}")).await;
    result
}

/// Whether `task` is a one-off task that has ended. Swarm keeps such tasks listed after
/// their job's service is removed; they hold nothing.
pub fn is_finished_job(task: &bollard::models::Task) -> bool {
    let is_job = task
        .spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.labels.as_ref())
        .is_some_and(|l| l.contains_key(JOB_LABEL));
    let ended = matches!(
        task.status.as_ref().and_then(|s| s.state),
        Some(
            TaskState::COMPLETE
                | TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::SHUTDOWN
                | TaskState::ORPHANED
                | TaskState::REMOVE
        )
    );
    is_job && ended
}

/// Whether this node is active (not drained or paused), so a task may be placed on it.
async fn local_node_can_run_tasks(engine: &Engine, node_id: &str) -> bool {
    if node_id.is_empty() {
        return false;
    }
    match engine.docker.inspect_node(node_id).await {
        Ok(node) => {
            node.spec.and_then(|s| s.availability)
                == Some(bollard::models::NodeSpecAvailabilityEnum::ACTIVE)
        }
        Err(_) => false,
    }
}

/// Removes this node's one-off task containers that carry the label `label` (`key=value`:
/// one job's service name, or a stack's namespace); Swarm leaves them behind when the job's
/// service is removed.
pub async fn remove_job_containers(engine: &Engine, label: &str) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![JOB_LABEL.to_string(), label.to_string()],
    )]);
    let Ok(containers) = engine
        .docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
    else {
        return;
    };
    for c in containers {
        if let Some(id) = c.id {
            let _ = engine
                .docker
                .remove_container(
                    &id,
                    Some(bollard::query_parameters::RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }
}

async fn wait_and_read(engine: &Engine, name: &str, argv: &[&str]) -> anyhow::Result<ExecOutput> {
    let started = Instant::now();
    let (exit_code, message) = loop {
        let tasks = engine
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(HashMap::from([(
                    "service".to_string(),
                    vec![name.to_string()],
                )])),
            }))
            .await
            .with_context(|| format!("cannot list the tasks of {name}"))?;
        let ended = tasks.iter().find_map(|t| {
            let status = t.status.as_ref()?;
            let code = status
                .container_status
                .as_ref()
                .and_then(|c| c.exit_code)
                .unwrap_or(-1);
            let text = status
                .err
                .clone()
                .or_else(|| status.message.clone())
                .unwrap_or_default();
            match status.state? {
                TaskState::COMPLETE => Some((0, text)),
                TaskState::FAILED => Some((if code == 0 { 1 } else { code }, text)),
                TaskState::REJECTED | TaskState::ORPHANED => Some((-1, text)),
                _ => None,
            }
        });
        if let Some(end) = ended {
            break end;
        }
        if started.elapsed() > JOB_TIMEOUT {
            bail!(
                "the one-off task {name} (`{}`) did not end within {} s; see `docker service ps \
                 {name} --no-trunc`",
                argv.join(" "),
                JOB_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if exit_code == -1 {
        bail!(
            "the one-off task {name} (`{}`) could not run: {message}",
            argv.join(" ")
        );
    }
    let out = tokio::process::Command::new("docker")
        .args(["service", "logs", "--raw", name])
        .output()
        .await
        .context("cannot run `docker service logs` (the Docker CLI is needed)")?;
    if !out.status.success() {
        bail!(
            "cannot read the output of the one-off task {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ExecOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{Mount, TaskSpec, TaskSpecContainerSpec};

    #[test]
    fn a_job_keeps_image_env_network_and_secrets_but_no_volume_port_or_placement() {
        let template = ServiceSpec {
            name: Some("demo_pg1".into()),
            labels: Some(HashMap::from([(
                "com.docker.stack.namespace".to_string(),
                "demo".to_string(),
            )])),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some("pgswarm:dev".into()),
                    env: Some(vec!["PGSWARM_MODE=patroni".into()]),
                    mounts: Some(vec![Mount::default()]),
                    hostname: Some("pg1".into()),
                    ..Default::default()
                }),
                placement: Some(Default::default()),
                resources: Some(bollard::models::TaskSpecResources {
                    limits: Some(Default::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            endpoint_spec: Some(Default::default()),
            ..Default::default()
        };
        let job = job_spec(
            &template,
            "demo_pg1-ctl-1",
            &["pgswarm-sidecar", "ctl"],
            Some("node1"),
        )
        .unwrap();
        assert_eq!(job.name.as_deref(), Some("demo_pg1-ctl-1"));
        let labels = job.labels.unwrap();
        assert_eq!(labels["com.docker.stack.namespace"], "demo");
        assert_eq!(labels[JOB_LABEL], "ctl");
        let task = job.task_template.unwrap();
        let c = task.container_spec.unwrap();
        assert_eq!(c.image.as_deref(), Some("pgswarm:dev"));
        assert_eq!(c.env.unwrap(), ["PGSWARM_MODE=patroni"]);
        assert_eq!(c.command.unwrap(), ["pgswarm-sidecar", "ctl"]);
        assert!(
            c.mounts.is_none(),
            "a one-off task must not mount the data volume"
        );
        assert!(task.resources.is_none());
        assert_eq!(
            task.placement.unwrap().constraints.unwrap(),
            ["node.id==node1"]
        );
        assert_eq!(c.labels.unwrap()[JOB_LABEL], "ctl");
        assert!(job.endpoint_spec.is_none());
        assert_eq!(
            job.mode.unwrap().replicated_job.unwrap().total_completions,
            Some(1)
        );
        assert_eq!(
            task.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        // A volume job keeps the volume and the member's placement (the node holding it).
        let mut pinned = template.clone();
        if let Some(t) = pinned.task_template.as_mut() {
            t.placement = Some(bollard::models::TaskSpecPlacement {
                constraints: Some(vec!["node.labels.pgswarm.demo.pg1 == true".into()]),
                ..Default::default()
            });
        }
        let wipe = volume_job_spec(&pinned, "demo_pg1-ctl-2", &["sh", "-c", "true"]).unwrap();
        let task = wipe.task_template.unwrap();
        assert_eq!(task.container_spec.unwrap().mounts.unwrap().len(), 1);
        assert_eq!(
            task.placement.unwrap().constraints.unwrap(),
            ["node.labels.pgswarm.demo.pg1 == true"]
        );
    }
}
