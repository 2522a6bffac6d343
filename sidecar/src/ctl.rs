//! `pgswarm-sidecar ctl ...`: small operations `swarmctl` runs inside a member's container
//! (through `docker exec`), so that credentials are read from the secret files right here and
//! never travel: not on a command line, not in an exec's environment, not to the operator's
//! machine.
//!
//! `write-check` commits a throw-away write (switchover), `query` runs SQL and prints its rows
//! (Citus scale-out reads `pg_dist_node` and drives the rebalance with it). Each subcommand
//! prints one JSON object on standard output and exits 0, or prints the error on standard
//! error and exits 1.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use pgswarm_contract::{MemberEnv, Secret};
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
    }
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
