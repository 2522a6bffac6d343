//! The `docker` command line, as the suite drives it.
//!
//! The suite runs the same commands an operator would (`docker stack deploy`, `docker kill`,
//! `docker service update --force`), so what it proves is what a user gets. Commands run either
//! blocking (setup and teardown, including from `Drop`) or async (during scenarios, so a
//! concurrent write probe keeps its pace).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

/// The Docker engines of every node of a multi-node test swarm (`docker -H` addresses), when
/// the suite runs on one (see [`crate::testbed`]); empty on a single-node swarm, where the
/// local engine (or `DOCKER_HOST`) is the only one.
static NODE_HOSTS: OnceLock<Vec<String>> = OnceLock::new();

/// Engine of each container found on a node by [`ps_all_nodes`]: a command that names one of
/// these containers (`docker exec ID`, `docker inspect ID`, `docker kill ID`) goes to the
/// engine that runs it. Container ids are unique across engines.
static CONTAINER_HOSTS: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();

/// Makes the suite talk to every node of a multi-node swarm: `hosts` are the `docker -H`
/// addresses of the nodes' engines (the first is the manager `DOCKER_HOST` points at).
pub fn set_node_hosts(hosts: Vec<String>) {
    let _ = NODE_HOSTS.set(hosts);
}

/// The engine that commands for the swarm (services, stacks, nodes, secrets) go to on a
/// multi-node swarm: a manager that is up. Scenarios that take a node down move it first.
static MANAGER_HOST: Mutex<Option<String>> = Mutex::new(None);

/// Sends swarm-wide commands to the manager at `host` from now on.
pub fn set_manager_host(host: &str) {
    if let Ok(mut m) = MANAGER_HOST.lock() {
        *m = Some(host.to_string());
    }
}

/// The manager swarm-wide commands go to (`None`: the default engine).
pub fn manager_host() -> Option<String> {
    MANAGER_HOST.lock().ok().and_then(|m| m.clone())
}

/// Engines of nodes that are down or frozen: not asked (a frozen engine never answers).
static SILENT_HOSTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Marks a node's engine as answering or not (powered off or frozen).
pub fn set_host_answers(host: &str, answers: bool) {
    if let Ok(mut silent) = SILENT_HOSTS.lock() {
        silent.retain(|h| h != host);
        if !answers {
            silent.push(host.to_string());
        }
    }
}

/// The `docker -H` addresses of the nodes whose engines answer, or `[None]` (the default
/// engine) on one node.
pub fn node_hosts() -> Vec<Option<String>> {
    let silent = SILENT_HOSTS.lock().map(|s| s.clone()).unwrap_or_default();
    match NODE_HOSTS.get() {
        Some(hosts) if !hosts.is_empty() => hosts
            .iter()
            .filter(|h| !silent.contains(h))
            .cloned()
            .map(Some)
            .collect(),
        _ => vec![None],
    }
}

fn container_hosts() -> &'static Mutex<BTreeMap<String, String>> {
    CONTAINER_HOSTS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The engine that runs container `id`, when it was found on another node.
pub fn host_of_container(id: &str) -> Option<String> {
    container_hosts().lock().ok()?.get(id).cloned()
}

/// Runs `docker ps ARGS` (with `-q`) on every node and returns the container ids, each
/// remembered with its node so later commands naming it reach the right engine.
pub async fn ps_all_nodes(args: &[&str]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for host in node_hosts() {
        let mut full: Vec<&str> = Vec::new();
        if let Some(h) = host.as_deref() {
            full.extend(["-H", h]);
        }
        full.push("ps");
        full.extend_from_slice(args);
        let out = match docker_async(&full).await {
            Ok(out) => out,
            // A node that is down or cut off answers nothing; the others still count.
            Err(e) if host.is_some() => {
                tracing::debug!(error = %format!("{e:#}"), "a node's engine did not answer");
                continue;
            }
            Err(e) => return Err(e),
        };
        for id in lines(&out) {
            if let (Some(h), Ok(mut map)) = (host.as_ref(), container_hosts().lock()) {
                map.insert(id.clone(), h.clone());
            }
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Runs `docker ARGS` on every node, blocking; returns (node, line) for every output line of
/// the nodes that answered (a node that is down is skipped).
pub fn docker_each_node(args: &[&str]) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for host in node_hosts() {
        let mut full: Vec<&str> = Vec::new();
        if let Some(h) = host.as_deref() {
            full.extend(["-H", h]);
        }
        full.extend_from_slice(args);
        if let Ok(text) = docker(&full) {
            out.extend(lines(&text).into_iter().map(|l| (host.clone(), l)));
        }
    }
    out
}

/// Runs `docker ARGS` on every node without blocking; returns the outputs of the nodes that
/// answered, one after the other (an error only when the single engine fails).
pub async fn docker_each_node_async(args: &[&str]) -> Result<String> {
    let mut text = String::new();
    for host in node_hosts() {
        let mut full: Vec<&str> = Vec::new();
        if let Some(h) = host.as_deref() {
            full.extend(["-H", h]);
        }
        full.extend_from_slice(args);
        match docker_async(&full).await {
            Ok(out) => text.push_str(&out),
            Err(e) if host.is_none() => return Err(e),
            Err(_) => {}
        }
    }
    Ok(text)
}

/// Longest a `docker` command may take on a multi-node swarm: a frozen node's engine accepts
/// connections and never answers.
const NODE_COMMAND_TIMEOUT_S: &str = "30";

fn command(args: &[&str]) -> Command {
    let mut cmd = if NODE_HOSTS.get().is_some_and(|h| !h.is_empty()) {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", NODE_COMMAND_TIMEOUT_S, "docker"]);
        cmd
    } else {
        Command::new("docker")
    };
    if args.first() != Some(&"-H") {
        if let Some(host) = args
            .iter()
            .find_map(|a| host_of_container(a))
            .or_else(manager_host)
        {
            cmd.args(["-H", &host]);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn check(args: &[&str], output: Output) -> Result<String> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    bail!(
        "`docker {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// Runs `docker ARGS`, blocking; returns stdout, or an error holding stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let output = command(args)
        .output()
        .with_context(|| format!("cannot run `docker {}`", args.join(" ")))?;
    check(args, output)
}

/// Runs `docker ARGS` without blocking the async runtime.
pub async fn docker_async(args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::from(command(args))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run `docker {}`", args.join(" ")))?;
    check(args, output)
}

/// Runs `docker ARGS` without blocking and returns stdout and stderr together, whatever the
/// exit status (for `docker service logs`, which keeps each line on the container's stream).
pub async fn docker_all_output(args: &[&str]) -> String {
    match tokio::process::Command::from(command(args)).output().await {
        Ok(output) => format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => format!("cannot run `docker {}`: {e}", args.join(" ")),
    }
}

/// Runs `docker ARGS` with `input` on its standard input (how secrets are created: the value
/// never appears on a command line or in a file).
pub fn docker_with_stdin(args: &[&str], input: &[u8]) -> Result<String> {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `docker {}`", args.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .with_context(|| format!("cannot write to `docker {}`", args.join(" ")))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("`docker {}` did not finish", args.join(" ")))?;
    check(args, output)
}

/// Non-empty lines of a command's output.
pub fn lines(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}
