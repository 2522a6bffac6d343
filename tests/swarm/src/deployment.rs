//! One deployed stack and everything created for it, removed again when it is dropped.
//!
//! [`Deployment::deploy`] goes the way a user does: `swarmctl generate` from a cluster spec,
//! node labels for the placement constraints, Docker secrets with random passwords, then
//! `docker stack deploy`. Every resource is recorded as soon as it exists, and `Drop` removes
//! them all — stack, then (once its tasks are gone) its volumes and networks, the secrets and
//! the node labels — also when a scenario fails or panics. `PGSWARM_KEEP=1` keeps everything
//! for a post-mortem and prints how to remove it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pgswarm_contract::{defaults, Mode, Secret};
use tracing::{info, warn};

use crate::docker::{
    docker, docker_all_output, docker_async, docker_each_node, docker_each_node_async,
    docker_with_stdin, lines, ps_all_nodes,
};
use crate::image::{ensure_image, swarmctl_path};
use crate::secrets::{Password, SecretSet};
use crate::stack::Stack;
use crate::swarm::Swarm;

/// Label Docker puts on every object of a stack.
const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// Label Docker puts on every task container of a service.
const SERVICE_LABEL: &str = "com.docker.swarm.service.name";

/// Failed tasks of one service after which waiting for its health is given up.
const CRASH_LOOP_TASKS: usize = 6;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A cluster (and stack) name unique to this process: `<prefix><pid>n<counter>`. Letters and
/// digits only, so it is valid as a cluster name, a stack namespace and in label keys.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}n{n}", std::process::id())
}

/// The process id in a name made by [`unique_name`] with one of the suite's prefixes
/// (`e2e<letters>` or `bench`), if it is such a name.
pub fn run_pid(name: &str) -> Option<u32> {
    let rest = match name.strip_prefix("e2e") {
        Some(rest) => rest.trim_start_matches(|c: char| c.is_ascii_lowercase()),
        None => name.strip_prefix("bench")?,
    };
    let (pid, counter) = rest.split_once('n')?;
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !numeric(pid) || !numeric(counter) {
        return None;
    }
    pid.parse().ok()
}

/// Removes what earlier runs of the suite left behind when they were killed before their
/// teardown could run (a CI timeout, Ctrl-C): stacks, volumes, secrets and node labels named
/// after a run whose process is gone. Runs that are still alive are left alone.
pub fn sweep_leftovers(node_id: &str) -> Result<()> {
    let mut names = std::collections::BTreeSet::new();
    names.extend(lines(&docker(&["stack", "ls", "--format", "{{.Name}}"])?));
    names.extend(lines(&docker(&[
        "volume",
        "ls",
        "--filter",
        &format!("label={NAMESPACE_LABEL}"),
        "--format",
        &format!("{{{{.Label \"{NAMESPACE_LABEL}\"}}}}"),
    ])?));
    let secrets = lines(&docker(&["secret", "ls", "--format", "{{.Name}}"])?);
    names.extend(
        secrets
            .iter()
            .filter_map(|s| s.split_once('_').map(|(n, _)| n.to_string())),
    );
    let json = docker(&[
        "node",
        "inspect",
        "--format",
        "{{json .Spec.Labels}}",
        node_id,
    ])?;
    let labels: BTreeMap<String, String> = serde_json::from_str(json.trim()).unwrap_or_default();
    names.extend(labels.keys().filter_map(|k| {
        k.strip_prefix("pgswarm.")
            .and_then(|rest| rest.split_once('.'))
            .map(|(n, _)| n.to_string())
    }));
    for name in names {
        let Some(pid) = run_pid(&name) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        warn!(stack = %name, pid, "removing what a run that is gone left behind");
        let leftover = Deployment {
            name: name.clone(),
            stack: Stack::parse("services: {}")?,
            ports: BTreeMap::new(),
            deployed_at: Instant::now(),
            secrets: SecretSet::default(),
            created_secrets: secrets
                .iter()
                .filter(|s| s.starts_with(&format!("{name}_")))
                .cloned()
                .collect(),
            added_labels: labels
                .keys()
                .filter(|k| k.starts_with(&format!("pgswarm.{name}.")))
                .map(|k| (node_id.to_string(), k.clone()))
                .collect(),
            node_id: node_id.to_string(),
            dir: std::env::temp_dir().join(format!("pgswarm-e2e-{name}")),
            stack_deployed: true,
            tls_ca: None,
        };
        drop(leftover);
    }
    Ok(())
}

/// A port published on the test host for one service's target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    pub target: u16,
    pub published: u16,
}

/// A stack deployed on the swarm, with what was created for it.
#[derive(Debug)]
pub struct Deployment {
    /// Cluster name, also the stack name.
    pub name: String,
    pub stack: Stack,
    /// Host ports published for the test client, by service key.
    pub ports: BTreeMap<String, Vec<HostPort>>,
    /// When `docker stack deploy` was started.
    pub deployed_at: Instant,
    secrets: SecretSet,
    created_secrets: Vec<String>,
    /// (node id, label key) of every node label this deployment added.
    added_labels: Vec<(String, String)>,
    node_id: String,
    dir: PathBuf,
    stack_deployed: bool,
    /// The cluster CA (PEM) of client and replication TLS, when the spec turns TLS on: what a
    /// client trusts to connect with `sslmode=verify-full`.
    pub tls_ca: Option<String>,
}

/// What the test client needs published: (service key, target port) pairs, chosen from the
/// stack by the caller.
pub type PortRequest = dyn Fn(&Stack) -> Result<Vec<(String, u16)>>;

impl Deployment {
    /// Generates the stack for `spec` (a cluster spec in YAML, named `name`), labels the node,
    /// creates the secrets and deploys. Does not wait for health.
    pub fn deploy(name: &str, spec: &str, publish: &PortRequest) -> Result<Deployment> {
        let swarm = Swarm::ensure()?;
        sweep_leftovers(&swarm.node_id)?;
        ensure_image()?;
        let dir = std::env::temp_dir().join(format!("pgswarm-e2e-{name}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut deployment = Deployment {
            name: name.to_string(),
            stack: Stack::parse("services: {}")?,
            ports: BTreeMap::new(),
            deployed_at: Instant::now(),
            secrets: SecretSet::default(),
            created_secrets: Vec::new(),
            added_labels: Vec::new(),
            node_id: swarm.node_id,
            dir,
            stack_deployed: false,
            tls_ca: None,
        };
        deployment.setup(spec, publish)?;
        Ok(deployment)
    }

    fn setup(&mut self, spec: &str, publish: &PortRequest) -> Result<()> {
        let spec_path = self.dir.join("cluster.yml");
        std::fs::write(&spec_path, spec)
            .with_context(|| format!("cannot write {}", spec_path.display()))?;
        let generated = self.dir.join("stack.generated.yml");
        let output = Command::new(swarmctl_path())
            .arg("generate")
            .arg("-f")
            .arg(&spec_path)
            .arg("-o")
            .arg(&generated)
            .output()
            .with_context(|| format!("cannot run {}", swarmctl_path().display()))?;
        if !output.status.success() {
            bail!(
                "swarmctl generate -f {} failed ({}): {}",
                spec_path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let text = std::fs::read_to_string(&generated)
            .with_context(|| format!("cannot read {}", generated.display()))?;
        self.stack = Stack::parse(&text)?;
        for (key, target) in publish(&self.stack)? {
            let published = self.stack.publish_on_host(&key, target)?;
            self.ports
                .entry(key)
                .or_default()
                .push(HostPort { target, published });
        }
        let stack_path = self.dir.join("stack.yml");
        std::fs::write(&stack_path, self.stack.to_yaml()?)
            .with_context(|| format!("cannot write {}", stack_path.display()))?;

        self.label_node(&spec_path)?;
        self.create_secrets(spec)?;

        info!(stack = %self.name, file = %stack_path.display(), "docker stack deploy");
        self.deployed_at = Instant::now();
        self.stack_deployed = true;
        docker(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "--prune",
            "-c",
            &stack_path.to_string_lossy(),
            &self.name,
        ])?;
        Ok(())
    }

    /// Puts the labels the placement constraints need on the swarm's nodes: with
    /// `swarmctl label-nodes` (which spreads the members over the nodes there are), else on
    /// this node with `docker node update`. Labels the nodes already had are left alone at
    /// teardown.
    fn label_node(&mut self, spec_path: &std::path::Path) -> Result<()> {
        let wanted = self.stack.node_labels()?;
        let existing = self.node_label_keys()?;
        let via_swarmctl = Command::new(swarmctl_path())
            .args(["label-nodes", "-f"])
            .arg(spec_path)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        for (key, value) in &wanted {
            if !via_swarmctl {
                docker(&[
                    "node",
                    "update",
                    "--label-add",
                    &format!("{key}={value}"),
                    &self.node_id,
                ])?;
            }
        }
        let now = self.node_label_keys()?;
        for (key, _) in &wanted {
            if !now.iter().any(|(_, k)| k == key) {
                bail!("node label {key} is missing on every node after labelling the nodes");
            }
        }
        for label in now {
            if !existing.contains(&label) && wanted.iter().any(|(k, _)| *k == label.1) {
                self.added_labels.push(label);
            }
        }
        Ok(())
    }

    /// (node id, label key) of every label on every node of the swarm.
    fn node_label_keys(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for node in lines(&docker(&["node", "ls", "-q"])?) {
            let json = docker(&[
                "node",
                "inspect",
                "--format",
                "{{json .Spec.Labels}}",
                &node,
            ])?;
            let labels: BTreeMap<String, String> =
                serde_json::from_str(json.trim()).unwrap_or_default();
            out.extend(labels.into_keys().map(|k| (node.clone(), k)));
        }
        Ok(out)
    }

    /// The node each member label of this deployment is on: (label key, node id).
    pub fn label_nodes(&self) -> Vec<(String, String)> {
        self.added_labels
            .iter()
            .map(|(node, key)| (key.clone(), node.clone()))
            .collect()
    }

    fn create_secrets(&mut self, spec: &str) -> Result<()> {
        // The TLS secrets (pgBackRest's, and the cluster's client and replication TLS) are a
        // CA, a certificate and its key, made as swarmctl does.
        let mut certificates = BTreeMap::new();
        let wants = |secret: Secret| {
            self.stack
                .external_secrets()
                .iter()
                .any(|n| n == &secret.docker_name(&self.name))
        };
        let (backup, cluster_tls) = (wants(Secret::BackupTlsCa), wants(Secret::TlsCa));
        if backup || cluster_tls {
            let cluster = swarmctl::spec::parse(spec)
                .map_err(|e| anyhow!("{}", e.render("cluster.yml")))?
                .cluster;
            if backup {
                for (secret, pem) in swarmctl::swarm::secrets::backup_tls(&cluster)? {
                    certificates.insert(secret.docker_name(&self.name), pem);
                }
            }
            if cluster_tls {
                for (secret, pem) in swarmctl::swarm::secrets::cluster_tls(&cluster)? {
                    if secret == Secret::TlsCa {
                        self.tls_ca = Some(pem.clone());
                    }
                    certificates.insert(secret.docker_name(&self.name), pem);
                }
            }
        }
        for name in self.stack.external_secrets() {
            let label = format!("pgswarm.e2e={}", self.name);
            let create = |value: &[u8]| {
                docker_with_stdin(&["secret", "create", "--label", &label, &name, "-"], value)
            };
            if let Some(pem) = certificates.get(&name) {
                create(pem.as_bytes())?;
                self.created_secrets.push(name.clone());
                continue;
            }
            let password = Password::random()?;
            create(password.expose().as_bytes())?;
            self.created_secrets.push(name.clone());
            self.secrets.insert(name, password);
        }
        Ok(())
    }

    /// The password of a contract secret of this cluster.
    pub fn password(&self, secret: Secret) -> Result<Password> {
        let name = secret.docker_name(&self.name);
        self.secrets.get(&name).cloned().ok_or_else(|| {
            anyhow!(
                "the stack expects no secret {name}; secrets it expects: {:?}",
                self.secrets.names().collect::<Vec<_>>()
            )
        })
    }

    /// The value of the Docker secret `name` this deployment created.
    pub fn secret_value(&self, name: &str) -> Result<Password> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("this deployment created no secret {name}"))
    }

    /// The host port published for `target` of service `key`.
    pub fn host_port(&self, key: &str, target: u16) -> Result<u16> {
        self.ports
            .get(key)
            .and_then(|ports| ports.iter().find(|p| p.target == target))
            .map(|p| p.published)
            .ok_or_else(|| anyhow!("port {target} of service {key} was not published"))
    }

    /// The cluster spec this deployment was generated from (for `swarmctl -f`).
    pub fn spec_path(&self) -> PathBuf {
        self.dir.join("cluster.yml")
    }

    /// Full Swarm service name of stack service `key`.
    pub fn service_name(&self, key: &str) -> String {
        format!("{}_{key}", self.name)
    }

    /// The running container of service `key`, if any (the newest when two overlap).
    /// On a multi-node swarm every node's engine is asked.
    pub async fn container(&self, key: &str) -> Result<Option<String>> {
        Ok(self.containers(key).await?.into_iter().next())
    }

    /// Every running container of `key` (one per task: a router may have several), on the
    /// nodes whose engines answer.
    pub async fn containers(&self, key: &str) -> Result<Vec<String>> {
        ps_all_nodes(&[
            "-q",
            "--filter",
            &format!("label={SERVICE_LABEL}={}", self.service_name(key)),
            "--filter",
            "status=running",
        ])
        .await
    }

    /// The running container of `key`, waiting for one up to `timeout`.
    pub async fn wait_container(&self, key: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.container(key).await? {
                return Ok(id);
            }
            if Instant::now() > deadline {
                bail!(
                    "service {} has no running container after {timeout:?}",
                    self.service_name(key)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Docker's health status of a container (`healthy`, `starting`, `unhealthy`, or `none`
    /// without a healthcheck).
    pub async fn health(&self, container: &str) -> Result<String> {
        let out = docker_async(&[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            container,
        ])
        .await?;
        Ok(out.trim().to_string())
    }

    /// `docker exec` in the running container of `key`; returns stdout.
    pub async fn exec(&self, key: &str, args: &[&str]) -> Result<String> {
        let container = self.wait_container(key, Duration::from_secs(60)).await?;
        let mut full = vec!["exec", container.as_str()];
        full.extend_from_slice(args);
        docker_async(&full).await
    }

    /// Waits until every service has a running container that Docker reports healthy (or
    /// running, for a service without a healthcheck), logging what it still waits for.
    /// On timeout, the error names the stuck services with their task states and last logs.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<Duration> {
        let keys: Vec<String> = self.stack.services()?.into_iter().map(|s| s.key).collect();
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut failed_tasks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        loop {
            let out = docker_each_node_async(&[
                "ps",
                "--filter",
                &format!("label={NAMESPACE_LABEL}={}", self.name),
                "--format",
                &format!("{{{{.Label \"{SERVICE_LABEL}\"}}}}|{{{{.Status}}}}"),
            ])
            .await?;
            let mut ready = Vec::new();
            for line in lines(&out) {
                if let Some((service, status)) = line.split_once('|') {
                    let healthy = status.contains("(healthy)")
                        || (status.starts_with("Up") && !status.contains('('));
                    if healthy {
                        ready.push(service.to_string());
                    }
                }
            }
            let pending: Vec<&String> = keys
                .iter()
                .filter(|k| !ready.contains(&self.service_name(k)))
                .collect();
            if pending.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let diagnosis = self.diagnose(&pending).await;
                bail!(
                    "stack {}: services not healthy after {timeout:?}: {pending:?}\n{diagnosis}",
                    self.name
                );
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                info!(stack = %self.name, waiting_for = ?pending, elapsed = ?started.elapsed(),
                      "waiting for services to be healthy");
                last_log = Instant::now();
                // A service whose tasks keep failing will not get healthy by waiting longer.
                for key in &pending {
                    let failed = docker_async(&[
                        "service",
                        "ps",
                        "-q",
                        "--filter",
                        "desired-state=shutdown",
                        &self.service_name(key),
                    ])
                    .await
                    .map(|o| lines(&o))
                    .unwrap_or_default();
                    let seen = failed_tasks.entry((*key).clone()).or_default();
                    seen.extend(failed);
                    if seen.len() >= CRASH_LOOP_TASKS {
                        let diagnosis = self.diagnose(&[*key]).await;
                        bail!(
                            "stack {}: service {key} is crash-looping ({} failed tasks)\n{diagnosis}",
                            self.name,
                            seen.len()
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Task states and the last log lines of `keys`, for an error message.
    pub async fn diagnose(&self, keys: &[&String]) -> String {
        let mut text = String::new();
        for key in keys {
            let service = self.service_name(key);
            let ps = docker_async(&[
                "service",
                "ps",
                "--no-trunc",
                "--format",
                "{{.Name}} {{.CurrentState}} {{.Error}}",
                &service,
            ])
            .await
            .unwrap_or_else(|e| format!("{e:#}"));
            let logs =
                docker_all_output(&["service", "logs", "--no-task-ids", "--tail", "30", &service])
                    .await;
            text.push_str(&format!(
                "--- {service}: tasks\n{ps}--- {service}: last log lines\n{logs}\n"
            ));
        }
        text
    }

    /// Keys of the data services (PostgreSQL members) of the stack.
    pub fn data_members(&self) -> Result<Vec<String>> {
        Ok(self
            .stack
            .services()?
            .into_iter()
            .filter(|s| matches!(s.mode(), Mode::Primary | Mode::Replica | Mode::Patroni))
            .map(|s| s.key)
            .collect())
    }

    /// PostgreSQL's data directory inside a member's container.
    pub fn pgdata(&self) -> String {
        format!("{}/{}", defaults::DATA_ROOT, defaults::PGDATA_SUBDIR)
    }

    /// The identity of a member's data: PostgreSQL's system identifier (from
    /// `pg_controldata`) and the inode of the data directory. A member re-initialised from
    /// scratch or cloned anew gets a new data directory, hence a new inode; `pg_rewind` and
    /// crash recovery keep it.
    pub async fn data_identity(&self, key: &str) -> Result<DataIdentity> {
        let pgdata = self.pgdata();
        let control = self.exec(key, &["pg_controldata", "-D", &pgdata]).await?;
        let system_identifier = control
            .lines()
            .find_map(|l| l.strip_prefix("Database system identifier:"))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow!("{key}: pg_controldata shows no system identifier"))?;
        let inode = self
            .exec(key, &["stat", "-c", "%i", &pgdata])
            .await?
            .trim()
            .parse()
            .with_context(|| format!("{key}: cannot read the inode of {pgdata}"))?;
        Ok(DataIdentity {
            system_identifier,
            inode,
        })
    }

    /// Removes everything this deployment created. Called by `Drop`; safe to call twice.
    fn teardown(&mut self) {
        if std::env::var("PGSWARM_KEEP").as_deref() == Ok("1") {
            warn!(
                stack = %self.name,
                "PGSWARM_KEEP=1: leaving the stack in place (the next run of the suite removes \
                 it); to remove it now: `docker stack rm {0}`, then `docker volume rm` its \
                 volumes, `docker secret rm {1}`, and `docker node update --label-rm` for {2:?}",
                self.name,
                self.created_secrets.join(" "),
                self.added_labels
            );
            return;
        }
        let filter = format!("label={NAMESPACE_LABEL}={}", self.name);
        if self.stack_deployed {
            info!(stack = %self.name, "removing the stack");
            if let Err(e) = docker(&["stack", "rm", &self.name]) {
                warn!(stack = %self.name, error = %format!("{e:#}"), "docker stack rm failed");
            }
            // Volumes and networks can go only once the stack's containers are gone.
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let containers = docker_each_node(&["ps", "-aq", "--filter", &filter]);
                let services = docker(&["service", "ls", "-q", "--filter", &filter])
                    .map(|o| lines(&o))
                    .unwrap_or_default();
                if containers.is_empty() && services.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    warn!(stack = %self.name, ?containers, ?services,
                          "stack tasks still present after 180 s; removing what can be removed");
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            self.stack_deployed = false;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Each node holds the volumes of the members that ran there.
            let volumes = docker_each_node(&["volume", "ls", "-q", "--filter", &filter]);
            let networks = docker(&["network", "ls", "-q", "--filter", &filter])
                .map(|o| lines(&o))
                .unwrap_or_default();
            for (host, volume) in &volumes {
                let mut args: Vec<&str> = Vec::new();
                if let Some(h) = host.as_deref() {
                    args.extend(["-H", h]);
                }
                args.extend(["volume", "rm", volume.as_str()]);
                let _ = docker(&args);
            }
            for network in &networks {
                let _ = docker(&["network", "rm", network]);
            }
            if volumes.is_empty() && networks.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                warn!(stack = %self.name, ?volumes, ?networks, "could not remove these");
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        for secret in std::mem::take(&mut self.created_secrets) {
            if let Err(e) = docker(&["secret", "rm", &secret]) {
                warn!(secret = %secret, error = %format!("{e:#}"), "docker secret rm failed");
            }
        }
        for (node, key) in std::mem::take(&mut self.added_labels) {
            if let Err(e) = docker(&["node", "update", "--label-rm", &key, &node]) {
                warn!(label = %key, error = %format!("{e:#}"), "removing a node label failed");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What identifies a member's data across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIdentity {
    pub system_identifier: String,
    pub inode: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_carry_the_process_id() {
        let name = unique_name("e2efail");
        assert_eq!(run_pid(&name), Some(std::process::id()));
        assert_eq!(run_pid("bench123n4"), Some(123));
        assert_eq!(run_pid("e2ecit77n0"), Some(77));
        for other in [
            "opsdemo",
            "e2e",
            "e2efailn1",
            "bench12",
            "bench12n",
            "prod1n2",
            "e2eX1n1",
        ] {
            assert_eq!(run_pid(other), None, "{other}");
        }
    }
}
