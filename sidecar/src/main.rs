//! `pgswarm-sidecar`: reads the member's environment, then `run`s its mode as PID 1 (the
//! default) or checks its `health`. Errors print their whole cause chain; the exit code is
//! 2 for a bad configuration, 1 for other failures, and the child's own code otherwise.

mod ctl;

use std::path::Path;

use clap::{Parser, Subcommand};
use pgswarm_contract::MemberEnv;
use pgswarm_sidecar::secrets::Secrets;
use pgswarm_sidecar::templates::Templates;
use pgswarm_sidecar::{exit_code_for, health, logging, privileges, supervise, EXIT_CONFIG};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "pgswarm-sidecar",
    version,
    about = "Entrypoint of every pgswarm container: configures and supervises its process",
    long_about = "Entrypoint of every pgswarm container. The mode and its settings come from \
                  the PGSWARM_* environment (see the pgswarm-contract crate); passwords from \
                  secret files."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configure this member and run its process in the foreground (the default).
    Run,
    /// Exit 0 when this member is healthy (for Docker's HEALTHCHECK), 1 otherwise.
    Health,
    /// Operations `swarmctl` runs in this container (`docker exec`), with this member's
    /// credentials read from its secret files; prints one JSON object.
    #[command(subcommand)]
    Ctl(ctl::CtlCommand),
}

fn main() {
    let cli = Cli::parse();
    std::process::exit(real_main(cli.command.unwrap_or(Command::Run)));
}

fn real_main(command: Command) -> i32 {
    let member = match MemberEnv::from_process_env() {
        Ok(member) => member,
        Err(e) => {
            logging::init(false);
            error!("invalid environment: {e}");
            return EXIT_CONFIG;
        }
    };
    logging::init(member.common.log_json);
    let result = match command {
        Command::Run => run(member),
        Command::Health => health(member),
        Command::Ctl(command) => return ctl::run(&member, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            exit_code_for(&e)
        }
    }
}

/// A runtime on this thread only: children are forked from here, which keeps their
/// parent-death signal tied to the life of the whole sidecar (see `supervise`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(member: MemberEnv) -> anyhow::Result<i32> {
    info!(member = %member.common.member, cluster = %member.common.cluster, mode = %member.mode(), "starting");
    // Secrets first: their files may be readable by root only.
    let secrets = Secrets::load(&member.common, member.mode())?;
    let dirs = [
        Path::new(&member.common.data_root),
        Path::new(&member.common.run_dir),
    ];
    privileges::prepare_and_drop(&dirs)?;
    supervise::become_subreaper()?;
    let templates = Templates::from_process_env();
    runtime()?.block_on(async {
        supervise::install_signal_handlers()?;
        pgswarm_sidecar::run(member, secrets, templates).await
    })
}

fn health(member: MemberEnv) -> anyhow::Result<i32> {
    privileges::drop_if_root()?;
    let summary = runtime()?.block_on(health::check(&member))?;
    info!(mode = %member.mode(), "healthy: {summary}");
    Ok(0)
}
