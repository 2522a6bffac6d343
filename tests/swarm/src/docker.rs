//! The `docker` command line, as the suite drives it.
//!
//! The suite runs the same commands an operator would (`docker stack deploy`, `docker kill`,
//! `docker service update --force`), so what it proves is what a user gets. Commands run either
//! blocking (setup and teardown, including from `Drop`) or async (during scenarios, so a
//! concurrent write probe keeps its pace).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
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
