//! `pgswarm-sidecar ctl ...`: small operations `swarmctl` runs inside a member's container
//! (through `docker exec`), so that credentials are read from the secret files right here and
//! never travel: not on a command line, not in an exec's environment, not to the operator's
//! machine.
//!
//! Each subcommand prints one JSON object on standard output and exits 0, or prints the error
//! on standard error and exits 1.

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
    }
}

async fn write_check(
    member: &MemberEnv,
    host: &str,
    port: u16,
    dbname: &str,
    connect_timeout: u64,
) -> anyhow::Result<serde_json::Value> {
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
    let what = format!("{host}:{port} as {}", common.superuser);
    let client = connect(&config, &what).await?;
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
