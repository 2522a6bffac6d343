//! pgswarm-sidecar: the entrypoint of every pgswarm container.
//!
//! It reads one member's share of the topology from the `PGSWARM_*` contract and the Docker
//! secrets, renders the configuration, prepares the data directory, then starts and
//! supervises the real process as PID 1. `main` does the process-level work (privileges,
//! runtime, exit codes); [`run`] picks the mode.

pub mod backup;
pub mod etcd;
pub mod health;
pub mod http;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod objects;
pub mod patroni;
pub mod pooler;
pub mod postgres;
pub mod privileges;
pub mod replication;
pub mod router;
pub mod secrets;
pub mod supervise;
pub mod switchover;
pub mod templates;
pub mod tls;
pub mod volume;
pub mod wait;

use pgswarm_contract::{MemberEnv, Role};

use crate::secrets::Secrets;
use crate::templates::Templates;

/// Exit code for a bad configuration: environment, secrets, templates.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for any other failure of the sidecar itself.
pub const EXIT_FAILURE: i32 = 1;

/// A configuration problem the operator must fix (exit code [`EXIT_CONFIG`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The exit code for an error: [`EXIT_CONFIG`] when any cause is a configuration problem.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    let config = err.chain().any(|e| {
        e.is::<ConfigError>()
            || e.is::<pgswarm_contract::ContractError>()
            || e.is::<secrets::SecretError>()
            || e.is::<patroni::PatroniConfigError>()
    });
    if config {
        EXIT_CONFIG
    } else {
        EXIT_FAILURE
    }
}

/// The contract's role-name rules (the same `swarmctl validate` applies), as a configuration
/// error naming the variables.
pub fn check_role_names(common: &pgswarm_contract::Common) -> Result<(), ConfigError> {
    pgswarm_contract::rules::check_role_names(&common.superuser, &common.replication_user).map_err(
        |e| {
            ConfigError(format!(
                "{} / {}: {e}",
                pgswarm_contract::env::SUPERUSER,
                pgswarm_contract::env::REPLICATION_USER
            ))
        },
    )
}

/// Runs this member's mode to its end; returns the child's exit code.
pub async fn run(member: MemberEnv, secrets: Secrets, templates: Templates) -> anyhow::Result<i32> {
    // Modes that keep state on a named volume: never two containers of one member on it.
    if matches!(
        member.role,
        Role::Primary { .. }
            | Role::Replica { .. }
            | Role::Patroni { .. }
            | Role::Etcd { .. }
            | Role::Backup { .. }
    ) {
        volume::lock(std::path::Path::new(&member.common.data_root)).await?;
    }
    // With TLS on: the certificate files PostgreSQL, PgBouncer and the exporter read, and the
    // sidecar's own TCP connections trust the cluster CA.
    if let Some(files) = tls::write_files(&member.common, &secrets)? {
        tracing::info!(
            cert = %files.cert.display(),
            tls = ?member.common.tls,
            "TLS on: certificate, key and CA written"
        );
    }
    tls::install_from_secrets(&member.common, &secrets)?;
    metrics::start(&member, &secrets, &templates)?;
    match &member.role {
        Role::Primary { .. } | Role::Replica { .. } => {
            replication::run(&member, &secrets, templates).await
        }
        Role::Patroni { .. } => patroni::run(&member, &secrets).await,
        Role::Etcd { .. } => etcd::run(&member).await,
        Role::Router { .. } => router::run(&member, &templates).await,
        Role::Pooler { .. } => pooler::run(&member, &secrets, &templates).await,
        Role::Backup { .. } => backup::run(&member, &secrets).await,
    }
}
