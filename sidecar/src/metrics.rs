//! Metrics endpoints the sidecar runs beside its main process when the contract names a
//! metrics port: Debian's `prometheus-postgres-exporter` on data members (logged in as the
//! least-privilege monitoring role, its password passed by a 0600 file) and
//! `prometheus-pgbouncer-exporter` on the pooler (PgBouncer's console over the local socket,
//! which PgBouncer opens to its own OS user without a password). Each exporter is a
//! supervised child restarted after a pause when it exits; the main process never depends on
//! it. The monitoring role itself is created by whichever data member is the primary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;
use pgswarm_contract::{defaults, Common, MemberEnv, Role, Secret};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::postgres::{quote_ident, quote_literal, server_role, ServerRole};
use crate::secrets::{SecretValue, Secrets};
use crate::supervise::{self, ChildSpec};
use crate::templates::{self, Templates};

/// Debian's postgres_exporter.
pub const POSTGRES_EXPORTER: &str = "prometheus-postgres-exporter";
/// Debian's pgbouncer_exporter.
pub const PGBOUNCER_EXPORTER: &str = "prometheus-pgbouncer-exporter";
/// Pause before an exporter that exited is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(5);
/// Pause between attempts to create (or find) the monitoring role.
const ROLE_RETRY: Duration = Duration::from_secs(5);

/// The monitoring role's password file the exporter reads (mode 0600).
pub fn monitor_password_path(common: &Common) -> PathBuf {
    Path::new(&common.run_dir).join("monitor_password")
}

/// The exporter's extra queries, rendered from `init-scripts/`.
pub fn queries_path(common: &Common) -> PathBuf {
    Path::new(&common.run_dir).join("postgres_exporter.queries.yaml")
}

/// postgres_exporter's own configuration file (no auth modules: it scrapes its one server).
pub fn exporter_config_path(common: &Common) -> PathBuf {
    Path::new(&common.run_dir).join("postgres_exporter.yml")
}

/// The postgres_exporter child: connects to `127.0.0.1:pg_port` as the monitoring role, with
/// the password read from a file (no credential in its environment or arguments).
pub fn postgres_exporter(common: &Common, metrics_port: u16, pg_port: u16) -> ChildSpec {
    ChildSpec::new("postgres_exporter", POSTGRES_EXPORTER)
        .arg(format!("--web.listen-address=:{metrics_port}"))
        .arg(format!("--web.telemetry-path={}", defaults::METRICS_PATH))
        .arg(format!(
            "--config.file={}",
            exporter_config_path(common).display()
        ))
        .arg(format!(
            "--extend.query-path={}",
            queries_path(common).display()
        ))
        .arg("--collector.stat_checkpointer")
        .arg("--collector.stat_wal_receiver")
        .arg("--log.level=warn")
        .env("DATA_SOURCE_URI", exporter_uri(common, pg_port))
        .env("DATA_SOURCE_USER", defaults::MONITOR_USER)
        .env(
            "DATA_SOURCE_PASS_FILE",
            monitor_password_path(common).display().to_string(),
        )
        // SIGHUP reaches every child when the sidecar reloads its main process; the exporter
        // has nothing to reload and would exit on it.
        .forward(Signal::SIGHUP, Signal::SIGCONT)
}

/// postgres_exporter's data source (without the user and password, which come from their own
/// variables): loopback, over TLS checked against the cluster CA when the cluster uses TLS
/// (the server certificate names `127.0.0.1`), else plaintext.
pub fn exporter_uri(common: &Common, pg_port: u16) -> String {
    match common.tls {
        Some(_) => format!(
            "127.0.0.1:{pg_port}/postgres?sslmode=verify-full&sslrootcert={}",
            crate::tls::files(common).ca.display()
        ),
        None => format!("127.0.0.1:{pg_port}/postgres?sslmode=disable"),
    }
}

/// The pgbouncer_exporter child: PgBouncer's console (`pgbouncer` database, user `pgbouncer`)
/// over the Unix socket in the run directory.
pub fn pgbouncer_exporter(common: &Common, metrics_port: u16, pooler_port: u16) -> ChildSpec {
    ChildSpec::new("pgbouncer_exporter", PGBOUNCER_EXPORTER)
        .arg(format!("--web.listen-address=:{metrics_port}"))
        .arg(format!("--web.telemetry-path={}", defaults::METRICS_PATH))
        .arg(format!(
            "--pgBouncer.connectionString=host={} port={pooler_port} user=pgbouncer \
             dbname=pgbouncer sslmode=disable",
            common.run_dir
        ))
        .arg("--log.level=warn")
        .forward(Signal::SIGHUP, Signal::SIGCONT)
}

/// Writes the files postgres_exporter reads: the password file and the queries.
pub fn prepare_postgres_exporter(
    common: &Common,
    templates: &Templates,
    password: &SecretValue,
) -> anyhow::Result<()> {
    templates::write_private(&monitor_password_path(common), password.expose().as_bytes())?;
    let queries = templates.render("postgres_exporter.queries.yaml.hbs", &serde_json::json!({}))?;
    templates::write_private(&queries_path(common), queries.as_bytes())?;
    templates::write_private(&exporter_config_path(common), b"auth_modules: {}\n")
}

/// Runs `spec` until the sidecar is asked to stop, starting it again after a pause whenever it
/// exits (a missing binary is reported once and not retried).
pub async fn keep_running(spec: ChildSpec) {
    let mut reported = false;
    loop {
        if supervise::stop_requested() {
            return;
        }
        let running = match supervise::spawn(spec.clone()) {
            Ok(running) => running,
            Err(e) => {
                if !reported {
                    warn!(child = %spec.name, error = %format!("{e:#}"), "cannot start the metrics exporter; this member serves no such metrics");
                    reported = true;
                }
                if !std::path::Path::new(&spec.program).is_absolute()
                    && which(&spec.program).is_none()
                {
                    return;
                }
                tokio::time::sleep(RESTART_PAUSE).await;
                continue;
            }
        };
        match running.wait(supervise::stopped()).await {
            _ if supervise::stop_requested() => return,
            Ok(code) => {
                warn!(child = %spec.name, code, "metrics exporter exited; starting it again in 5 s")
            }
            Err(e) => {
                warn!(child = %spec.name, error = %format!("{e:#}"), "lost the metrics exporter")
            }
        }
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}

/// The first file named `program` in the directories of PATH.
pub(crate) fn which(program: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Creates or updates the monitoring role on a primary: LOGIN, member of `pg_monitor`,
/// nothing else. The password travels as a SCRAM verifier, never in plain text.
pub async fn ensure_monitor_role(client: &Client, password: &SecretValue) -> anyhow::Result<()> {
    let user = defaults::MONITOR_USER;
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .context("looking up the monitoring role")?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    let sql = format!(
        "{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
         CONNECTION LIMIT 5 PASSWORD {pw}; GRANT pg_monitor TO {role}",
        role = quote_ident(user),
        pw = quote_literal(&verifier)
    );
    client
        .batch_execute(&sql)
        .await
        .with_context(|| format!("{verb} ROLE {user} (the monitoring role)"))?;
    info!(role = user, created = !exists, "monitoring role ready");
    Ok(())
}

/// Until it is done: on the primary, creates or updates the monitoring role; on a standby,
/// waits until the role has arrived through replication (a primary made it). `connect` opens
/// a superuser connection to the local server.
pub async fn monitor_role_task<F, Fut>(connect: F, password: SecretValue)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Client>>,
{
    let mut last_error = String::new();
    loop {
        if supervise::stop_requested() {
            return;
        }
        let attempt = async {
            let client = connect().await?;
            match server_role(&client).await? {
                ServerRole::Primary => ensure_monitor_role(&client, &password).await.map(|()| true),
                ServerRole::Standby => Ok(client
                    .query_opt(
                        "SELECT 1 FROM pg_roles WHERE rolname = $1",
                        &[&defaults::MONITOR_USER],
                    )
                    .await
                    .context("looking up the monitoring role")?
                    .is_some()),
            }
        };
        match attempt.await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                let text = format!("{e:#}");
                if text != last_error {
                    tracing::debug!(error = %text, "monitoring role not ready yet");
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(ROLE_RETRY).await;
    }
}

/// Starts this member's metrics endpoint when the contract names a metrics port: the
/// PostgreSQL exporter and the monitoring role's upkeep on data members, the PgBouncer
/// exporter on the pooler. The router's endpoint is part of haproxy.cfg; etcd and Patroni
/// serve their own.
pub fn start(member: &MemberEnv, secrets: &Secrets, templates: &Templates) -> anyhow::Result<()> {
    let common = &member.common;
    let Some(metrics_port) = common.metrics_port else {
        return Ok(());
    };
    match &member.role {
        Role::Primary { postgres, .. }
        | Role::Replica { postgres, .. }
        | Role::Patroni { postgres, .. } => {
            let password = secrets.get(Secret::MonitorPassword)?.clone();
            prepare_postgres_exporter(common, templates, &password)?;
            let superuser_password = secrets.get(Secret::SuperuserPassword)?.clone();
            let mut config = tokio_postgres::Config::new();
            config
                .port(postgres.port)
                .user(&common.superuser)
                .dbname("postgres")
                .application_name("pgswarm-sidecar")
                .connect_timeout(Duration::from_secs(5));
            if member.mode() == pgswarm_contract::Mode::Patroni {
                // Patroni's pg_hba admits passwords over loopback.
                config
                    .host("127.0.0.1")
                    .password(superuser_password.expose());
            } else {
                // The replication topology's pg_hba maps the OS user to the superuser on the socket.
                config.host_path(common.socket_dir());
            }
            tokio::spawn(monitor_role_task(
                move || {
                    let config = config.clone();
                    async move { crate::postgres::connect(&config, "the local server").await }
                },
                password,
            ));
            tokio::spawn(keep_running(postgres_exporter(
                common,
                metrics_port,
                postgres.port,
            )));
        }
        Role::Pooler { port, .. } => {
            tokio::spawn(keep_running(pgbouncer_exporter(
                common,
                metrics_port,
                *port,
            )));
        }
        Role::Router { .. } | Role::Etcd { .. } | Role::Backup { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exporter_gets_no_password_only_its_file() {
        let common = Common::new("demo", "pg1");
        let spec = postgres_exporter(&common, 9187, 5432);
        assert_eq!(
            spec.env.get("DATA_SOURCE_PASS_FILE").map(String::as_str),
            Some("/run/pgswarm/monitor_password")
        );
        assert_eq!(
            spec.env.get("DATA_SOURCE_USER").map(String::as_str),
            Some(defaults::MONITOR_USER)
        );
        assert!(!spec.env.contains_key("DATA_SOURCE_PASS"));
        assert!(!spec.env.contains_key("DATA_SOURCE_NAME"));
        assert!(spec.args.iter().any(|a| a == "--web.listen-address=:9187"));
    }

    #[test]
    fn the_pgbouncer_exporter_uses_the_local_socket() {
        let common = Common::new("demo", "pooler");
        let spec = pgbouncer_exporter(&common, 9127, 6432);
        let conn = spec
            .args
            .iter()
            .find_map(|a| a.to_str()?.strip_prefix("--pgBouncer.connectionString="))
            .expect("connection string");
        assert!(conn.contains("host=/run/pgswarm") && conn.contains("user=pgbouncer"));
        assert!(!conn.contains("password"));
    }

    #[test]
    fn the_queries_render_as_yaml() {
        let (text, _) = Templates::new(None)
            .source("postgres_exporter.queries.yaml.hbs")
            .expect("embedded");
        let queries: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        for name in ["pgswarm_instance", "pgswarm_replica", "pgswarm_slot"] {
            assert!(queries[name]["query"].is_string(), "{name}");
        }
    }
}
