//! `pgswarm-sidecar ctl ...`: small operations `swarmctl` runs inside a member's container
//! (through `docker exec`), so that credentials are read from the secret files right here and
//! never travel: not on a command line, not in an exec's environment, not to the operator's
//! machine.
//!
//! `write-check` commits a throw-away write (switchover), `query` runs SQL and prints its rows
//! (Citus scale-out reads `pg_dist_node` and drives the rebalance with it), `psql` runs an
//! interactive psql (`swarmctl psql`). The requests and their replies are typed in the
//! contract ([`pgswarm_contract::ctl`]): each JSON subcommand prints its reply as one JSON line
//! on standard output and exits 0, or prints the error envelope (kind, message, SQLSTATE) on
//! standard output, the message on standard error, and exits 1.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use pgswarm_contract::ctl::{
    ApplyObjectsReply, CtlError, ErrorKind, EtcdStatusReply, EtcdTarget, PoolerReply, QueryReply,
    SwitchoverPlan, WriteCheckReply,
};
use pgswarm_contract::objects::Objects;
use pgswarm_contract::{MemberEnv, Role, Secret};
use pgswarm_sidecar::objects;
use pgswarm_sidecar::pooler;
use pgswarm_sidecar::secrets::read_secret;
use tokio_postgres::SimpleQueryMessage;

/// Operations run inside a container on behalf of `swarmctl`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Connect to HOST:PORT as the superuser (password from its secret file) and commit a
    /// write that leaves nothing behind; print the address of the server that took it.
    WriteCheck {
        /// Host to connect to: a router, the pooler or a member (service name).
        #[arg(long)]
        host: String,
        /// Port on that host.
        #[arg(long)]
        port: u16,
        /// Database to connect to.
        #[arg(long, default_value = "postgres")]
        dbname: String,
        /// Seconds to wait for the connection.
        #[arg(long, default_value_t = 5)]
        connect_timeout: u64,
    },
    /// Connect to HOST:PORT as the superuser (password from its secret file), run SQL with
    /// the simple query protocol and print the rows: `{"columns": [...], "rows": [[...]]}`,
    /// every value as text or null. Errors carry PostgreSQL's SQLSTATE, detail and hint.
    Query {
        /// Host to connect to: 127.0.0.1 for this member, a router or a member (service name).
        #[arg(long)]
        host: String,
        /// Port on that host.
        #[arg(long)]
        port: u16,
        /// Database to connect to.
        #[arg(long, default_value = "postgres")]
        dbname: String,
        /// Seconds to wait for the connection.
        #[arg(long, default_value_t = 5)]
        connect_timeout: u64,
        /// The SQL; several statements separated by `;` run in one implicit transaction
        /// unless they manage their own.
        #[arg(long)]
        sql: String,
    },
    /// Run patronictl with this member's configuration (a Patroni member's environment and
    /// secrets): where no member process rendered patroni.yml (a one-off task on the
    /// cluster's network), it is rendered into a private directory for this run only and
    /// removed afterwards. Output and exit code are patronictl's.
    Patronictl {
        /// patronictl's arguments (after `--`), without `-c`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Pause this container's PgBouncer (admin console on 127.0.0.1:PORT): running
    /// transactions finish, new queries wait in PgBouncer. Fails (and resumes) when running
    /// transactions do not finish within WAIT seconds; PgBouncer resumes by itself MAX_PAUSE
    /// seconds later should nobody resume it. Prints `{"paused": true, "waited_ms": N, ...}`.
    PoolerPause {
        /// PgBouncer's port in this container.
        #[arg(long)]
        port: u16,
        /// Seconds to wait for running transactions to finish.
        #[arg(long, default_value_t = 10)]
        wait: u64,
        /// Seconds after which the pooler resumes by itself.
        #[arg(long, default_value_t = 120)]
        max_pause: u64,
    },
    /// Resume this container's PgBouncer after pooler-pause, its server connections opened
    /// anew. Resuming a pooler that is not paused is not an error.
    PoolerResume {
        /// PgBouncer's port in this container.
        #[arg(long)]
        port: u16,
    },
    /// Store the declared roles and databases (JSON, as `swarmctl` validated them) on the
    /// primary at HOST:PORT and reconcile them now; print the changes made. Role passwords
    /// are read from this container's secret files, next to the superuser's.
    ApplyObjects {
        /// Host of the primary: 127.0.0.1 for this member.
        #[arg(long)]
        host: String,
        /// Port on that host.
        #[arg(long)]
        port: u16,
        /// Database to connect to (the maintenance database).
        #[arg(long, default_value = "postgres")]
        dbname: String,
        /// Seconds to wait for the connection.
        #[arg(long, default_value_t = 5)]
        connect_timeout: u64,
        /// The declared objects, as JSON (`pgswarm_contract::objects::Objects`).
        #[arg(long)]
        objects: String,
    },
    /// Ask each etcd member whether it runs (peer port) and sees a leader (`/health`); print
    /// `{"members": [{"name", "running", "has_leader", "detail"}]}`. Needs no secret.
    EtcdStatus {
        /// NAME=HOST:CLIENT_PORT:PEER_PORT, once per member.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Switch the Patroni leader over with the pooler held (see `pgswarm_sidecar::switchover`):
    /// PLAN is the JSON of `pgswarm_contract::ctl::SwitchoverPlan`. Needs the superuser and
    /// REST secrets (a data member's container). Prints a `SwitchoverReply`.
    Switchover {
        #[arg(long)]
        plan: String,
    },
    /// Run psql against HOST:PORT as the superuser, the password handed to psql through a
    /// passfile readable only by this user and removed when psql ends (never in an
    /// environment variable or on a command line). Standard input and output are psql's; the
    /// exit code is psql's.
    Psql {
        /// Host to connect to: a router, a member (service name) or 127.0.0.1.
        #[arg(long)]
        host: String,
        /// Port on that host.
        #[arg(long)]
        port: u16,
        /// Database to connect to.
        #[arg(long, default_value = "postgres")]
        dbname: String,
        /// Arguments for psql itself (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

use pgswarm_sidecar::switchover::WRITE_CHECK_SQL;

/// Runs `command`; returns the process exit code.
pub fn run(member: &MemberEnv, command: CtlCommand) -> i32 {
    if let CtlCommand::Psql {
        host,
        port,
        dbname,
        args,
    } = command
    {
        return match psql(member, &host, port, &dbname, &args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    }
    if let CtlCommand::Patronictl { args } = command {
        return match patronictl(member, &args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    }
    // The sidecar's TCP connections trust the cluster CA when the cluster uses TLS.
    if let Err(e) = pgswarm_sidecar::tls::install_from_file(&member.common) {
        let e = CtlError::new(ErrorKind::Refused, format!("{e:#}"));
        println!(
            "{}",
            serde_json::to_string(&e).unwrap_or_else(|_| "{}".into())
        );
        eprintln!("error: {e}");
        return 1;
    }
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(dispatch(member, command)),
        Err(e) => Err(CtlError::new(
            ErrorKind::Refused,
            format!("cannot start the runtime: {e}"),
        )),
    };
    match result {
        Ok(value) => {
            println!("{value}");
            0
        }
        Err(e) => {
            println!(
                "{}",
                serde_json::to_string(&e).unwrap_or_else(|_| "{}".into())
            );
            eprintln!("error: {e}");
            1
        }
    }
}

async fn dispatch(member: &MemberEnv, command: CtlCommand) -> Result<String, CtlError> {
    let json = |r: Result<String, serde_json::Error>| {
        r.map_err(|e| CtlError::new(ErrorKind::Refused, format!("cannot print the reply: {e}")))
    };
    match command {
        CtlCommand::WriteCheck {
            host,
            port,
            dbname,
            connect_timeout,
        } => {
            let reply = write_check(member, &host, port, &dbname, connect_timeout).await?;
            json(serde_json::to_string(&reply))
        }
        CtlCommand::Query {
            host,
            port,
            dbname,
            connect_timeout,
            sql,
        } => {
            let reply = query(member, &host, port, &dbname, connect_timeout, &sql).await?;
            json(serde_json::to_string(&reply))
        }
        CtlCommand::PoolerPause {
            port,
            wait,
            max_pause,
        } => {
            let password = superuser_password(member)?;
            let waited = pooler::pause(
                &member.common,
                port,
                password.expose(),
                Duration::from_secs(wait),
                Duration::from_secs(max_pause),
            )
            .await
            .map_err(admin_error)?;
            json(serde_json::to_string(&PoolerReply {
                paused: true,
                waited_ms: waited.as_millis() as u64,
                was_paused: false,
            }))
        }
        CtlCommand::Switchover { plan } => {
            let plan: SwitchoverPlan = serde_json::from_str(&plan)
                .map_err(|e| CtlError::new(ErrorKind::Refused, format!("--plan: {e}")))?;
            let superuser = superuser_password(member)?;
            let rest = read_secret(&member.common, Secret::RestPassword).map_err(|e| {
                CtlError::new(
                    ErrorKind::Refused,
                    format!("{e:#} (a switchover runs in a data member's container)"),
                )
            })?;
            let creds = pgswarm_sidecar::switchover::Credentials {
                superuser: &member.common.superuser,
                superuser_password: superuser.expose(),
                rest_user: &member.common.rest_user,
                rest_password: rest.expose(),
            };
            let reply = pgswarm_sidecar::switchover::run(&plan, &creds).await?;
            json(serde_json::to_string(&reply))
        }
        CtlCommand::EtcdStatus { members } => {
            let targets = members
                .iter()
                .map(|m| EtcdTarget::parse(m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CtlError::new(ErrorKind::Refused, format!("--member {e}")))?;
            let mut probes = tokio::task::JoinSet::new();
            for (i, target) in targets.into_iter().enumerate() {
                probes
                    .spawn(async move { (i, pgswarm_sidecar::etcd::member_status(&target).await) });
            }
            let mut answers = Vec::new();
            while let Some(done) = probes.join_next().await {
                let (i, status) = done.map_err(|e| {
                    CtlError::new(ErrorKind::Refused, format!("an etcd probe failed: {e}"))
                })?;
                answers.push((i, status));
            }
            answers.sort_by_key(|(i, _)| *i);
            json(serde_json::to_string(&EtcdStatusReply {
                members: answers.into_iter().map(|(_, s)| s).collect(),
            }))
        }
        CtlCommand::PoolerResume { port } => {
            let password = superuser_password(member)?;
            let started = std::time::Instant::now();
            let was_paused = pooler::resume(&member.common, port, password.expose())
                .await
                .map_err(admin_error)?;
            json(serde_json::to_string(&PoolerReply {
                paused: false,
                waited_ms: started.elapsed().as_millis() as u64,
                was_paused,
            }))
        }
        CtlCommand::ApplyObjects {
            host,
            port,
            dbname: _,
            connect_timeout,
            objects,
        } => {
            let objects: Objects = serde_json::from_str(&objects).map_err(|e| {
                CtlError::new(
                    ErrorKind::Refused,
                    format!("--objects is not the JSON this version reads: {e}"),
                )
            })?;
            let reply = apply_objects(member, &host, port, connect_timeout, &objects).await?;
            json(serde_json::to_string(&reply))
        }
        CtlCommand::Psql { .. } | CtlCommand::Patronictl { .. } => Err(CtlError::new(
            ErrorKind::Refused,
            "psql and patronictl are not JSON operations",
        )),
    }
}

fn superuser_password(
    member: &MemberEnv,
) -> Result<pgswarm_sidecar::secrets::SecretValue, CtlError> {
    read_secret(&member.common, Secret::SuperuserPassword)
        .map_err(|e| CtlError::new(ErrorKind::Refused, format!("{e:#}")))
}

/// The kind of a failed pause or resume: nothing done when the console was not reached.
fn admin_error(e: pooler::AdminError) -> CtlError {
    let kind = match &e {
        pooler::AdminError::Unreachable { .. } => ErrorKind::Unreachable,
        pooler::AdminError::File(_) => ErrorKind::Refused,
        pooler::AdminError::Command { .. } | pooler::AdminError::PauseTimeout { .. } => {
            ErrorKind::Statement
        }
    };
    CtlError::new(kind, e.to_string())
}

/// One line of a libpq password file; `:` and `\` in a field are escaped.
pub fn passfile_line(host: &str, port: u16, user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!("{}:{port}:*:{}:{}\n", esc(host), esc(user), esc(password))
}

/// Runs psql in the foreground with a private passfile; returns psql's exit code.
fn psql(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    let common = &member.common;
    let password = read_secret(common, Secret::SuperuserPassword)?;
    let configured = match &member.role {
        Role::Primary { postgres, .. }
        | Role::Replica { postgres, .. }
        | Role::Patroni { postgres, .. } => postgres.bin_dir.as_deref(),
        _ => None,
    };
    let bin_dir = pgswarm_sidecar::postgres::find_bin_dir(configured)?;
    let dir = private_dir()?;
    let passfile = dir.join("pgpass");
    let result = (|| {
        pgswarm_sidecar::templates::write_private(
            &passfile,
            passfile_line(host, port, &common.superuser, password.expose()).as_bytes(),
        )?;
        let status = std::process::Command::new(bin_dir.join("psql"))
            .args([
                "-h",
                host,
                "-p",
                &port.to_string(),
                "-U",
                &common.superuser,
                "-d",
                dbname,
            ])
            .args(args)
            .env_clear()
            .env("PGPASSFILE", &passfile)
            .env("PGAPPNAME", "swarmctl-psql")
            // With TLS on: encrypted, and the server must show a certificate the cluster CA
            // signed for the host asked for.
            .envs(
                common
                    .tls
                    .map(|_| {
                        [
                            ("PGSSLMODE", "verify-full".to_string()),
                            ("PGSSLROOTCERT", common.secret_path(Secret::TlsCa)),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .envs(
                [
                    "TERM", "LANG", "LC_ALL", "HOME", "PAGER", "COLUMNS", "LINES",
                ]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .status()
            .with_context(|| format!("cannot start {}", bin_dir.join("psql").display()))?;
        Ok::<i32, anyhow::Error>(status.code().unwrap_or(1))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs patronictl in the foreground with this member's patroni.yml, rendered into a private
/// directory when no member process wrote it here; returns patronictl's exit code.
fn patronictl(member: &MemberEnv, args: &[String]) -> anyhow::Result<i32> {
    let written = member.common.patroni_config_path();
    let (config, dir) = if std::path::Path::new(&written).is_file() {
        (std::path::PathBuf::from(written), None)
    } else {
        let secrets = pgswarm_sidecar::secrets::Secrets::load(&member.common, member.mode())?;
        let text = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?
            .block_on(pgswarm_sidecar::patroni::config_text(member, &secrets))?;
        let dir = private_dir()?;
        let path = dir.join("patroni.yml");
        if let Err(e) = pgswarm_sidecar::templates::write_private(&path, text.as_bytes()) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        (path, Some(dir))
    };
    let status = std::process::Command::new("patronictl")
        .arg("-c")
        .arg(&config)
        .args(args)
        .env_clear()
        .envs(
            ["PATH", "LANG", "LC_ALL", "HOME", "TERM"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .status()
        .context("cannot start patronictl");
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(status?.code().unwrap_or(1))
}

/// A new directory only this user can enter, for a passfile that lives as long as one psql.
fn private_dir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for attempt in 0..16u32 {
        let dir = base.join(format!("pgswarm-ctl-{}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", dir.display()));
            }
        }
    }
    Err(anyhow!(
        "cannot create a private directory under {}",
        base.display()
    ))
}

/// A superuser connection to `host:port`, the password read from its secret file here.
/// A failure to connect is `unreachable` (nothing ran) unless PostgreSQL itself refused the
/// session (authentication, an unknown database): that is `refused`, with its SQLSTATE.
async fn superuser_client(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    connect_timeout: u64,
) -> Result<tokio_postgres::Client, CtlError> {
    let common = &member.common;
    let password = read_secret(common, Secret::SuperuserPassword)
        .map_err(|e| CtlError::new(ErrorKind::Refused, format!("{e:#}")))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(&common.superuser)
        .password(password.expose())
        .dbname(dbname)
        .application_name("pgswarm-ctl")
        .connect_timeout(Duration::from_secs(connect_timeout));
    let what = format!("{host}:{port} (database {dbname}) as {}", common.superuser);
    // The connect timeout covers the TCP connection only: a router that accepts the connection
    // but has no server behind it never answers the startup message. Nothing has run then,
    // so this is `unreachable` (a retry is safe).
    let patience = Duration::from_secs(connect_timeout.max(1) + 2);
    let connected =
        match tokio::time::timeout(patience, pgswarm_sidecar::tls::connect(&config)).await {
            Ok(connected) => connected,
            Err(_) => {
                return Err(CtlError::new(
                    ErrorKind::Unreachable,
                    format!(
                        "connecting to {what}: no answer to the startup within {} s",
                        patience.as_secs()
                    ),
                ))
            }
        };
    match connected {
        Ok(client) => Ok(client),
        Err(e) => {
            let sqlstate = e.as_db_error().map(|db| db.code().code().to_string());
            // 57P03: the server is starting up or shutting down; it will answer soon.
            let kind = match sqlstate.as_deref() {
                None | Some("57P03") => ErrorKind::Unreachable,
                Some(_) => ErrorKind::Refused,
            };
            Err(CtlError {
                kind,
                message: format!("connecting to {what}: {}", describe_db_error(&e)),
                sqlstate,
            })
        }
    }
}

/// A statement that failed (or whose outcome is unknown: the connection broke while it ran).
fn statement_error(what: String, e: &tokio_postgres::Error) -> CtlError {
    CtlError {
        kind: ErrorKind::Statement,
        message: format!("{what}: {}", describe_db_error(e)),
        sqlstate: e.as_db_error().map(|db| db.code().code().to_string()),
    }
}

/// PostgreSQL's own words for a failed statement: message, SQLSTATE, detail and hint.
fn describe_db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// The rows of `messages`: the columns of the first result with rows, and every row.
fn rows_of(messages: &[SimpleQueryMessage]) -> QueryReply {
    let mut reply = QueryReply::default();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            if reply.columns.is_empty() {
                reply.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
            }
            reply.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(String::from))
                    .collect(),
            );
        }
    }
    reply
}

async fn query(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    connect_timeout: u64,
    sql: &str,
) -> Result<QueryReply, CtlError> {
    let client = superuser_client(member, host, port, dbname, connect_timeout).await?;
    let messages = client.simple_query(sql).await.map_err(|e| {
        statement_error(
            format!("the query on {host}:{port} (database {dbname}) failed"),
            &e,
        )
    })?;
    Ok(rows_of(&messages))
}

async fn apply_objects(
    member: &MemberEnv,
    host: &str,
    port: u16,
    connect_timeout: u64,
    objects: &Objects,
) -> Result<ApplyObjectsReply, CtlError> {
    let common = &member.common;
    // The same check as a plain query first, so an unreachable or refusing server gets the
    // usual error kinds.
    let client = superuser_client(member, host, port, "postgres", connect_timeout).await?;
    let in_recovery = client
        .simple_query("SELECT pg_is_in_recovery()::text")
        .await
        .map_err(|e| statement_error(format!("asking {host}:{port} for its role"), &e))?;
    if rows_of(&in_recovery)
        .rows
        .first()
        .and_then(|r| r[0].as_deref())
        != Some("false")
    {
        return Err(CtlError::new(
            ErrorKind::Unreachable,
            format!("{host}:{port} is a standby: roles and databases change on the primary"),
        ));
    }
    drop(client);
    let password = read_secret(common, Secret::SuperuserPassword)
        .map_err(|e| CtlError::new(ErrorKind::Refused, format!("{e:#}")))?;
    let mut base = tokio_postgres::Config::new();
    base.host(host)
        .port(port)
        .user(&common.superuser)
        .password(password.expose())
        .application_name("pgswarm-ctl")
        .connect_timeout(Duration::from_secs(connect_timeout));
    let connector = objects::Connector { base };
    let auth_password = read_secret(common, Secret::PoolerAuthPassword)
        .ok()
        .and_then(|p| objects::Password::new(p.expose()).ok());
    let available = pgswarm_sidecar::secrets::role_passwords(common);
    let failed = |e: anyhow::Error| CtlError::new(ErrorKind::Statement, format!("{e:#}"));
    objects::store(&connector, objects).await.map_err(failed)?;
    let outcome = objects::reconcile(&connector, objects, &available, auth_password.as_ref())
        .await
        .map_err(failed)?;
    Ok(ApplyObjectsReply {
        changes: outcome.changes,
        problems: outcome.problems,
    })
}

async fn write_check(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    connect_timeout: u64,
) -> Result<WriteCheckReply, CtlError> {
    let client = superuser_client(member, host, port, dbname, connect_timeout).await?;
    // A session a router hands to a member that is going away may never be answered: give up
    // after a while (the write leaves nothing behind either way).
    let patience = Duration::from_secs(connect_timeout.max(1) + 5);
    let messages = tokio::time::timeout(patience, client.simple_query(WRITE_CHECK_SQL))
        .await
        .map_err(|_| {
            CtlError::new(
                ErrorKind::Statement,
                format!(
                    "the write through {host}:{port} got no answer within {} s",
                    patience.as_secs()
                ),
            )
        })?
        .map_err(|e| statement_error(format!("the write through {host}:{port} failed"), &e))?;
    let reply = rows_of(&messages);
    if reply.rows.is_empty() {
        return Err(CtlError::new(
            ErrorKind::Statement,
            "the write check returned no row",
        ));
    }
    Ok(WriteCheckReply {
        host: host.to_string(),
        port,
        server: reply.get(0, "server").unwrap_or("unknown").to_string(),
        in_recovery: reply.get(0, "in_recovery") == Some("true"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_fields_are_escaped() {
        assert_eq!(
            passfile_line("pg1", 5432, "postgres", "a:b\\c"),
            "pg1:5432:*:postgres:a\\:b\\\\c\n"
        );
    }
}
