//! `pgswarm-sidecar ctl ...`: small operations `swarmctl` runs inside a member's container
//! (through `docker exec`), so that credentials are read from the secret files right here and
//! never travel: not on a command line, not in an exec's environment, not to the operator's
//! machine.
//!
//! `write-check` commits a throw-away write (switchover), `query` runs SQL and prints its rows
//! (Citus scale-out reads `pg_dist_node` and drives the rebalance with it), `psql` runs an
//! interactive psql (`swarmctl psql`). Each subcommand
//! prints one JSON object on standard output and exits 0, or prints the error on standard
//! error and exits 1.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use pgswarm_contract::{MemberEnv, Role, Secret};
use pgswarm_sidecar::postgres::connect;
use pgswarm_sidecar::secrets::read_secret;
use serde_json::json;
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

/// The statements of the write check, in one transaction: a temporary table dropped at
/// commit, so nothing remains, yet a standby or a read-only route refuses it.
const WRITE_CHECK_SQL: &str = "BEGIN; \
     CREATE TEMP TABLE pgswarm_write_check (at timestamptz) ON COMMIT DROP; \
     INSERT INTO pgswarm_write_check VALUES (now()); \
     SELECT coalesce(host(inet_server_addr()), 'local') AS server, \
            pg_is_in_recovery()::text AS in_recovery; \
     COMMIT";

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
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(dispatch(member, command)));
    match result {
        Ok(value) => {
            println!("{value}");
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn dispatch(member: &MemberEnv, command: CtlCommand) -> anyhow::Result<serde_json::Value> {
    match command {
        CtlCommand::WriteCheck {
            host,
            port,
            dbname,
            connect_timeout,
        } => write_check(member, &host, port, &dbname, connect_timeout).await,
        CtlCommand::Query {
            host,
            port,
            dbname,
            connect_timeout,
            sql,
        } => query(member, &host, port, &dbname, connect_timeout, &sql).await,
        CtlCommand::Psql { .. } => Err(anyhow!("psql is not a JSON operation")),
    }
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

/// A new directory only this user can enter, for a passfile that lives as long as one psql.
fn private_dir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for attempt in 0..16u32 {
        let dir = base.join(format!("pgswarm-psql-{}-{attempt}", std::process::id()));
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
async fn superuser_client(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    connect_timeout: u64,
) -> anyhow::Result<tokio_postgres::Client> {
    let common = &member.common;
    let password = read_secret(common, Secret::SuperuserPassword)?;
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
    connect(&config, &what).await
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
        None => format!("{e:#}"),
    }
}

/// The rows of `messages` as JSON: the columns of the first result with rows, and every row.
fn rows_json(messages: &[SimpleQueryMessage]) -> serde_json::Value {
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            if columns.is_empty() {
                columns = row.columns().iter().map(|c| c.name().to_string()).collect();
            }
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(String::from))
                    .collect(),
            );
        }
    }
    json!({ "columns": columns, "rows": rows })
}

async fn query(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    connect_timeout: u64,
    sql: &str,
) -> anyhow::Result<serde_json::Value> {
    let client = superuser_client(member, host, port, dbname, connect_timeout).await?;
    let messages = client.simple_query(sql).await.map_err(|e| {
        anyhow!(
            "the query on {host}:{port} (database {dbname}) failed: {}",
            describe_db_error(&e)
        )
    })?;
    Ok(rows_json(&messages))
}

async fn write_check(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    connect_timeout: u64,
) -> anyhow::Result<serde_json::Value> {
    let client = superuser_client(member, host, port, dbname, connect_timeout).await?;
    let messages = client
        .simple_query(WRITE_CHECK_SQL)
        .await
        .with_context(|| format!("the write through {host}:{port} failed"))?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the write check returned no row"))?;
    let server = row.get("server").unwrap_or("unknown");
    let in_recovery = row.get("in_recovery") == Some("true");
    Ok(json!({
        "host": host,
        "port": port,
        "server": server,
        "in_recovery": in_recovery,
    }))
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
