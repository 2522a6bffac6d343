//! Commands run inside a member's container (`docker exec` through the API): `patronictl`
//! with the member's rendered configuration, and `pgswarm-sidecar ctl ...`, which reads the
//! member's secret files itself. No credential is ever passed in; only names and ports.

use anyhow::{bail, Context};
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use futures_util::StreamExt;

use super::Engine;

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// Stdout when the command succeeded, otherwise an error with what it printed.
    pub fn into_stdout(self, what: &str) -> anyhow::Result<String> {
        if self.success() {
            return Ok(self.stdout);
        }
        let detail = if self.stderr.trim().is_empty() {
            self.stdout.trim().to_string()
        } else {
            self.stderr.trim().to_string()
        };
        bail!("{what} exited with {}: {detail}", self.exit_code)
    }
}

/// Runs `cmd` in `container` as the image's user and collects its output.
pub async fn exec(engine: &Engine, container: &str, cmd: &[&str]) -> anyhow::Result<ExecOutput> {
    exec_as(engine, container, None, cmd).await
}

/// Runs `cmd` in `container` as `user` (the image's user when `None`).
pub async fn exec_as(
    engine: &Engine,
    container: &str,
    user: Option<&str>,
    cmd: &[&str],
) -> anyhow::Result<ExecOutput> {
    let short: String = container.chars().take(12).collect();
    let created = engine
        .docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                user: user.map(str::to_string),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot run `{}` in container {short}", cmd.join(" ")))?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    match engine
        .docker
        .start_exec(&created.id, None::<StartExecOptions>)
        .await
        .with_context(|| format!("cannot start `{}` in container {short}", cmd.join(" ")))?
    {
        StartExecResults::Attached { mut output, .. } => {
            while let Some(chunk) = output.next().await {
                match chunk.with_context(|| format!("reading the output of `{}`", cmd.join(" ")))? {
                    bollard::container::LogOutput::StdErr { message } => {
                        stderr.push_str(&String::from_utf8_lossy(&message))
                    }
                    other => stdout.push_str(&other.to_string()),
                }
            }
        }
        StartExecResults::Detached => bail!("the exec of `{}` was detached", cmd.join(" ")),
    }
    let inspect = engine
        .docker
        .inspect_exec(&created.id)
        .await
        .with_context(|| format!("cannot read the exit code of `{}`", cmd.join(" ")))?;
    Ok(ExecOutput {
        stdout,
        stderr,
        exit_code: inspect.exit_code.unwrap_or(-1),
    })
}
