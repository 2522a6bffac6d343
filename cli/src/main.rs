//! `swarmctl`: PostgreSQL clusters on Docker Swarm. A cluster spec in, a stack file out.
//!
//! Exit codes: 0 success, 1 invalid spec or failed checks (`doctor`), 2 any other error
//! (unreadable file, bad arguments, Docker unreachable, ...).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use swarmctl::render;
use swarmctl::spec::{self, Cluster, SpecError, Topology, Validated};
use swarmctl::swarm::{self, progress::Progress, Engine};

/// Exit code of an invalid spec, and of `doctor` when a check failed.
const EXIT_INVALID: u8 = 1;
/// Exit code of any other error.
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "swarmctl",
    version,
    about = "PostgreSQL clusters on Docker Swarm: a cluster spec in, a stack file out, and the \
             cluster operated through the Docker API",
    after_help = "Start here (a single-node swarm on this machine, the default Patroni cluster):\n  \
                  swarmctl up\n\n\
                  The Docker daemon is the local one, or DOCKER_HOST.\n\
                  Exit codes: 0 success, 1 invalid spec or failed checks (doctor), 2 any other error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a commented starter spec for a topology.
    #[command(after_help = "Example:\n  swarmctl init --topology patroni --name demo > demo.yml")]
    Init {
        /// replication (primary + replicas), patroni (automatic failover) or citus.
        #[arg(long, value_enum)]
        topology: TopologyArg,
        /// Cluster name: lowercase letters, digits and hyphens.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Check a spec; print what it describes, or every problem with its line and fix.
    #[command(after_help = "Example:\n  swarmctl validate -f demo.yml")]
    Validate {
        /// The spec file, or `-` for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Write the Swarm stack file of a spec (to standard output unless -o is given).
    #[command(
        after_help = "Example:\n  swarmctl generate -f demo.yml -o demo.stack.yml\n  docker stack deploy -c demo.stack.yml demo"
    )]
    Generate {
        /// The spec file, or `-` for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Where to write the stack file.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Also write a Prometheus scrape configuration for the cluster's metrics endpoints
        /// (Docker Swarm service discovery) to this file.
        #[arg(long = "prometheus", value_name = "FILE")]
        prometheus: Option<PathBuf>,
    },
    /// Put the node labels that pin each member to a node (spread over nodes and zones).
    #[command(
        after_help = "Members of one group go to distinct nodes (and zones, when the spec names a \
                      zone label); a member keeps the node it is labelled on. Labels of this \
                      cluster that no member needs any more are removed.\n\n\
                      Examples:\n  swarmctl label-nodes -f demo.yml --dry-run\n  \
                      swarmctl label-nodes -f demo.yml --assign pg1=node-a --assign pg2=node-b"
    )]
    LabelNodes {
        /// The spec file, or `-` for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Put MEMBER on NODE (hostname or node id); repeatable.
        #[arg(long = "assign", value_name = "MEMBER=NODE")]
        assign: Vec<String>,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove every label of this cluster from every node instead.
        #[arg(long, conflicts_with = "assign")]
        remove: bool,
    },
    /// Check the swarm, create missing secrets, deploy the stack; with --wait, until healthy.
    #[command(
        after_help = "Passwords are generated as Docker secrets and never printed; read one from \
                      inside a container, e.g.\n  \
                      docker exec $(docker ps -q -f label=com.docker.swarm.service.name=demo_pg1 \
                      | head -n1) cat /run/secrets/superuser_password\n\n\
                      Example:\n  swarmctl deploy -f demo.yml --wait"
    )]
    Deploy {
        /// The spec file, or `-` for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Wait until every service is healthy and replication streams.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// Apply the spec's roles and databases on the primary now, without a deploy (`deploy
    /// --wait` and `up` do it too). A changed role is altered in place: nothing restarts.
    #[command(
        after_help = "Prints one line per change; nothing when the cluster already matches.\n\n\
                      Example:\n  swarmctl apply-roles -f demo.yml"
    )]
    ApplyRoles {
        /// The spec file, or `-` for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Seconds to wait for the primary to answer.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Show each member: role, state, timeline, lag, node, task and health.
    #[command(after_help = "Examples:\n  swarmctl status -f demo.yml\n  \
                            swarmctl status -f demo.yml --output json")]
    Status {
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: OutputFormat,
        /// Show the status again every SECONDS (default 2) until Ctrl-C; with --output json,
        /// one JSON object per line.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Hand the Patroni leader over to another member (planned, no data loss).
    #[command(
        after_help = "Pauses every task of the pooler, asks Patroni to switch over, and resumes \
                      the pooler as soon as a write through the router's read-write port commits \
                      on the new leader: the pooler's clients wait instead of failing. Returns \
                      once Patroni lists the new leader.\n\nExamples:\n  swarmctl switchover -f demo.yml\n  \
                      swarmctl switchover -f demo.yml --to pg2"
    )]
    Switchover {
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// The member to become leader (default: a synchronous standby, else the streaming
        /// replica with the smallest lag).
        #[arg(long, value_name = "MEMBER")]
        to: Option<String>,
        /// Seconds to wait for the new leader.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Do not pause the pooler during the switch (by default PgBouncer holds its clients'
        /// queries while the leader changes, so they wait instead of failing).
        #[arg(long)]
        no_pause: bool,
    },
    /// Check everything that would stop a deploy of the spec on this swarm.
    #[command(
        after_help = "Exit codes: 0 every check passed, 1 a check failed, 2 the checks could not \
                      run.\n\nExample:\n  swarmctl doctor -f demo.yml"
    )]
    Doctor {
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// From a machine with Docker to a healthy cluster: swarm, image, labels, secrets, deploy.
    #[command(
        after_help = "Without -f it deploys the embedded default spec (`swarmctl init` shows the \
                      starters): a Patroni cluster named pgswarm with a router on 5000/5001 and \
                      a pooler on 6432. A missing swarm is created on 127.0.0.1 (single node); a \
                      missing image is built with scripts/build-image.sh from the repository.\n\n\
                      Examples:\n  swarmctl up\n  swarmctl up -f demo.yml --image pgswarm:dev"
    )]
    Up {
        /// Deploy this spec instead of the default one.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Use this image instead of the spec's.
        #[arg(long)]
        image: Option<String>,
        /// Build the image with scripts/build-image.sh even when it exists (after a change to
        /// the repository).
        #[arg(long)]
        build: bool,
        /// Seconds to wait until healthy.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// Remove what `up` (or `deploy`) created: the stack; volumes and secrets only when asked.
    #[command(
        after_help = "Volumes (the data) are kept unless --volumes is given; with them go the \
                      member labels.\n\nExamples:\n  swarmctl down\n  \
                      swarmctl down -f demo.yml --volumes --secrets"
    )]
    Down {
        /// The spec of the cluster (default: the one `up` deploys).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Also delete the members' volumes on this node (their data!) and the member labels.
        #[arg(long)]
        volumes: bool,
        /// Also delete the cluster's Docker secrets (its passwords).
        #[arg(long)]
        secrets: bool,
        /// Seconds to wait for the containers to stop.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Open psql on the leader (through the router's read-write port) or on a replica.
    #[command(
        after_help = "psql runs inside a container of the cluster on this node (the pooler or a \
                      member), which reads the superuser's password from its secret file: the \
                      password never reaches this machine. Arguments after -- go to psql; the \
                      exit code is psql's.\n\n\
                      Examples:\n  swarmctl psql\n  swarmctl psql --replica -- -c 'select 1'\n  \
                      swarmctl psql -f demo.yml --dbname app"
    )]
    Psql {
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Connect to a replica (the router's read-only port) instead of the leader.
        #[arg(long)]
        replica: bool,
        /// Database to connect to.
        #[arg(long, default_value = "postgres")]
        dbname: String,
        /// Arguments for psql.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print the connection URIs of a role: the router's ports and the pooler, and how to
    /// read the role's password (never the password itself).
    #[command(
        after_help = "The address is --host (default localhost: ports are published on the node                       that runs the router or pooler, or on every node through the routing                       mesh). The database defaults to the first declared database the role owns                       or reads.

Examples:
  swarmctl connect --role app
  swarmctl connect                       -f demo.yml --role app --host 10.0.0.5"
    )]
    Connect {
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// A declared login role (default: the superuser).
        #[arg(long)]
        role: Option<String>,
        /// The database (default: the role's own or one it reads, else postgres).
        #[arg(long)]
        dbname: Option<String>,
        /// The address clients use to reach the published ports.
        #[arg(long, default_value = "localhost")]
        host: String,
    },
    /// Show the logs of one service of the cluster (a member, etcd, router or pooler), from
    /// every task on any node.
    #[command(
        after_help = "Examples:\n  swarmctl logs pg1\n  swarmctl logs pg1 --follow --tail 50"
    )]
    Logs {
        /// The service: a member name or etcd1, router, pooler ...
        member: String,
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Keep printing new lines.
        #[arg(long)]
        follow: bool,
        /// Only the last N lines of each task.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Citus operations: scale-out by worker groups.
    #[command(subcommand)]
    Citus(CitusCommand),
    /// Backups with pgBackRest (the spec's `backup` section): take one now, list them.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Restore a Patroni cluster from a pgBackRest repository: to the latest archived WAL
    /// (default), a point in time or the end of a backup; into a new cluster, or in place.
    #[command(
        after_help = "Into a new cluster (--from-cluster OLD): the spec is the new cluster's (it \
                      needs a `backup` section, it archives into its own repository under its own \
                      stanza); OLD must be deployed, its repository running on this node. In place \
                      (no --from-cluster): the cluster's members are stopped, their volumes \
                      emptied, its state in etcd removed, and it is rebuilt from its own \
                      repository; it asks for the cluster's name unless --yes is given.\n\n\
                      Examples:\n  \
                      swarmctl restore -f new.yml --from-cluster demo --time '2026-12-03 18:05:00+00'\n  \
                      swarmctl restore -f demo.yml --yes\n  \
                      swarmctl restore -f demo.yml --label 20261203-180000F"
    )]
    Restore {
        /// The spec of the cluster restored (the new one with --from-cluster).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Restore to this moment: every transaction committed before it, none after
        /// (`YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]`, UTC when no zone is given).
        #[arg(long, conflicts_with = "label")]
        time: Option<String>,
        /// Restore to the end of this backup (`swarmctl backup list` shows the labels).
        #[arg(long)]
        label: Option<String>,
        /// Restore into the spec's new cluster from the repository of this deployed cluster.
        #[arg(long, value_name = "CLUSTER")]
        from_cluster: Option<String>,
        /// Confirm an in-place restore (it destroys the cluster's current data).
        #[arg(long)]
        yes: bool,
        /// Seconds to wait for the restored cluster to be healthy.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  swarmctl completions bash > /etc/bash_completion.d/swarmctl"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum CitusCommand {
    /// Deploy the worker groups added to the spec, wait until Patroni registers their
    /// primaries in pg_dist_node, then rebalance the shards, showing progress until done.
    #[command(
        after_help = "The image must have the Citus extension (the Dockerfile's CITUS_VERSION \
                      build argument); label the new members first (swarmctl label-nodes -f SPEC). \
                      SQL runs on the coordinator's primary, from a container of the cluster on \
                      this node.\n\n\
                      Example (group 3 added to demo.yml):\n  \
                      swarmctl citus add-group -f demo.yml --group 3"
    )]
    AddGroup {
        /// The spec file, or `-` for standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// A worker group to wait for; repeatable (default: every worker group of the spec).
        #[arg(long = "group", value_name = "N")]
        groups: Vec<u32>,
        /// Seconds to wait for the deployment and the registration (the rebalance itself is
        /// followed until it ends).
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// How Citus moves shards.
        #[arg(long, value_enum, default_value = "auto")]
        shard_transfer_mode: swarm::citus::ShardTransferMode,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take a backup now, in the repository service (from a streaming replica when there is
    /// one); run it on the node the repository runs on.
    #[command(after_help = "Examples:\n  swarmctl backup now\n  swarmctl backup now --type diff")]
    Now {
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// full, diff (changes since the last full) or incr (since the last backup).
        #[arg(long = "type", value_enum, default_value = "full")]
        kind: swarm::backup::BackupType,
    },
    /// List the backups of the repository: label, type, start, stop, size, WAL range.
    #[command(
        after_help = "Examples:\n  swarmctl backup list\n  swarmctl backup list --output json"
    )]
    List {
        /// The spec file, or `-` for standard input (default: the cluster of `swarmctl up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum TopologyArg {
    Replication,
    Patroni,
    Citus,
}

impl From<TopologyArg> for Topology {
    fn from(t: TopologyArg) -> Topology {
        match t {
            TopologyArg::Replication => Topology::Replication,
            TopologyArg::Patroni => Topology::Patroni,
            TopologyArg::Citus => Topology::Citus,
        }
    }
}

/// How a command ended, when not with success.
enum Failure {
    /// The spec is invalid; already described.
    Invalid(SpecError, String),
    /// `doctor` found a problem; already printed.
    ChecksFailed,
    /// A command run for the user (psql) ended with this code; it said why itself.
    Exit(i32),
    /// Anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(err, source)) => {
            eprintln!("{}", err.render(&source));
            eprintln!("{source}: {err}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(Failure::ChecksFailed) => ExitCode::from(EXIT_INVALID),
        Err(Failure::Exit(code)) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR)),
        Err(Failure::Other(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: writing to a closed pipe must be an error, not a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "swarmctl", &mut script);
            write_stdout(&String::from_utf8_lossy(&script))?;
        }
        Command::LabelNodes { .. }
        | Command::Deploy { .. }
        | Command::ApplyRoles { .. }
        | Command::Status { .. }
        | Command::Switchover { .. }
        | Command::Doctor { .. }
        | Command::Up { .. }
        | Command::Down { .. }
        | Command::Psql { .. }
        | Command::Logs { .. }
        | Command::Citus(_)
        | Command::Backup(_)
        | Command::Restore { .. } => {
            init_logging();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            return runtime.block_on(operate(command));
        }
        Command::Connect {
            file,
            role,
            dbname,
            host,
        } => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let text = swarm::access::connection_uris(
                &cluster,
                role.as_deref(),
                dbname.as_deref(),
                &host,
            )?;
            write_stdout(&text)?;
        }
        Command::Init { topology, name } => {
            let text = spec::starter_spec(topology.into(), &name).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write a starter spec named {name:?}: {}",
                    e.errors
                        .first()
                        .map(|p| p.message.clone())
                        .unwrap_or_default()
                )
            })?;
            write_stdout(&text)?;
        }
        Command::Validate { file } => {
            let (validated, source) = load(&file)?;
            print_warnings(&validated, &source);
            write_stdout(&summary(&validated.cluster))?;
        }
        Command::Generate {
            file,
            output,
            prometheus,
        } => {
            let (validated, source) = load(&file)?;
            print_warnings(&validated, &source);
            if let Some(path) = prometheus {
                let config = render::prometheus::prometheus_yaml(
                    &validated.cluster,
                    render::prometheus::DEFAULT_DOCKER_HOST,
                )
                .context("cannot serialize the Prometheus configuration")?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "cluster {} has monitoring turned off (monitoring.enabled: false): there \
                         is nothing to scrape; remove --prometheus or turn monitoring on",
                        validated.cluster.name
                    )
                })?;
                write_file(&path, &config)?;
                eprintln!(
                    "wrote the Prometheus scrape configuration of cluster {} to {}",
                    validated.cluster.name,
                    path.display()
                );
            }
            let yaml = render::stack_yaml(&validated.cluster)
                .context("cannot serialize the stack file")?;
            match output {
                None => write_stdout(&yaml)?,
                Some(path) => {
                    write_file(&path, &yaml)?;
                    eprintln!(
                        "wrote the stack of cluster {} to {}",
                        validated.cluster.name,
                        path.display()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Logs (`RUST_LOG`, default warnings only) on standard error, without colours when it is not
/// a terminal; progress lines are printed apart from logs.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A validated spec, its warnings printed.
fn load_cluster(file: &Path) -> Result<Cluster, Failure> {
    let (validated, source) = load(file)?;
    print_warnings(&validated, &source);
    Ok(validated.cluster)
}

/// The spec at `file`, or the embedded default one (the cluster `swarmctl up` deploys).
fn load_cluster_or_default(file: Option<&Path>) -> Result<Cluster, Failure> {
    match file {
        Some(f) => load_cluster(f),
        None => Ok(spec::default_cluster()
            .map_err(|e| anyhow::anyhow!("the embedded default spec is invalid: {e}"))?
            .cluster),
    }
}

/// The status as a table or JSON (`compact`: one line, for --watch).
fn status_text(
    status: &swarm::status::ClusterStatus,
    output: OutputFormat,
    compact: bool,
) -> anyhow::Result<String> {
    Ok(match output {
        OutputFormat::Table => swarm::status::render_table(status),
        OutputFormat::Json if compact => {
            let json = serde_json::to_string(status).context("cannot serialize the status")?;
            format!("{json}\n")
        }
        OutputFormat::Json => {
            let json =
                serde_json::to_string_pretty(status).context("cannot serialize the status")?;
            format!("{json}\n")
        }
    })
}

/// `status --watch`: the status every `seconds` until Ctrl-C. A failed read is shown and the
/// next one tried: a cluster being failed over is exactly what one watches.
async fn watch_status(
    engine: &Engine,
    cluster: &Cluster,
    output: OutputFormat,
    seconds: u64,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let clear = matches!(output, OutputFormat::Table) && std::io::stdout().is_terminal();
    let every = Duration::from_secs(seconds.max(1));
    loop {
        let text = match swarm::status::read(engine, cluster).await {
            Ok(status) => status_text(&status, output, true)?,
            Err(e) if matches!(output, OutputFormat::Json) => {
                format!("{}\n", serde_json::json!({ "error": format!("{e:#}") }))
            }
            Err(e) => format!("cannot read the status: {e:#}\n"),
        };
        let stamp = if matches!(output, OutputFormat::Table) {
            format!(
                "every {}s, Ctrl-C to stop; unix time {}\n",
                every.as_secs(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            )
        } else {
            String::new()
        };
        let screen = if clear { "\x1b[2J\x1b[H" } else { "" };
        write_stdout(&format!("{screen}{stamp}{text}"))?;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The commands that operate a swarm through the Docker API.
async fn operate(command: Command) -> Result<(), Failure> {
    let mut progress = Progress::new();
    match command {
        Command::LabelNodes {
            file,
            assign,
            dry_run,
            remove,
        } => {
            let cluster = load_cluster(&file)?;
            let explicit =
                swarm::labels::parse_assignments(&assign).map_err(anyhow::Error::from)?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            engine.require_manager().await?;
            let nodes = swarm::nodes::list(&engine).await?;
            let changes = if remove {
                let changes = swarm::labels::removal(&cluster.name, &nodes);
                for c in &changes {
                    for key in &c.remove {
                        println!("remove {key} from node {}", c.hostname);
                    }
                }
                changes
            } else {
                let plan = swarm::labels::plan(&cluster, &nodes, &explicit)
                    .map_err(anyhow::Error::from)?;
                for w in &plan.warnings {
                    eprintln!("warning: {w}");
                }
                write_stdout(&plan.table())?;
                plan.changes
            };
            if changes.is_empty() {
                println!(
                    "no change: the labels of cluster {} are in place",
                    cluster.name
                );
            } else if dry_run {
                println!(
                    "dry run: {} node(s) would change; nothing was changed",
                    changes.len()
                );
            } else {
                for change in &changes {
                    swarm::labels::apply(&engine, change).await?;
                }
                println!("updated the labels of {} node(s)", changes.len());
            }
        }
        Command::Deploy {
            file,
            wait,
            timeout,
        } => {
            let cluster = load_cluster(&file)?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            swarm::deploy::deploy(&engine, &cluster, &mut progress).await?;
            if wait {
                swarm::deploy::wait_ready(
                    &engine,
                    &cluster,
                    Duration::from_secs(timeout),
                    &mut progress,
                )
                .await?;
                progress.say(&format!("cluster {} is ready", cluster.name));
                swarm::objects::apply_and_report(
                    &engine,
                    &cluster,
                    Duration::from_secs(timeout),
                    &mut progress,
                )
                .await?;
            } else {
                progress.say(&format!(
                    "deployed; follow it with `swarmctl status -f {}`",
                    file.display()
                ));
                if !cluster.objects.is_empty() {
                    progress.say(
                        "the declared roles and databases are applied by `swarmctl deploy \
                         --wait`, once the cluster is ready",
                    );
                }
            }
        }
        Command::ApplyRoles { file, timeout } => {
            let cluster = load_cluster(&file)?;
            if !swarm::objects::supported(&cluster) {
                return Err(anyhow::anyhow!(
                    "cluster {} is a {} cluster: roles and databases are declared for the \
                     replication and patroni topologies only",
                    cluster.name,
                    cluster.topology
                )
                .into());
            }
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            swarm::objects::apply_and_report(
                &engine,
                &cluster,
                Duration::from_secs(timeout),
                &mut progress,
            )
            .await?;
        }
        Command::Status {
            file,
            output,
            watch,
        } => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            match watch {
                None => {
                    let status = swarm::status::read(&engine, &cluster).await?;
                    write_stdout(&status_text(&status, output, false)?)?;
                }
                Some(seconds) => watch_status(&engine, &cluster, output, seconds).await?,
            }
        }
        Command::Switchover {
            file,
            to,
            timeout,
            no_pause,
        } => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let options = swarm::switchover::Options {
                timeout: Duration::from_secs(timeout),
                pause_pooler: !no_pause,
            };
            let outcome = swarm::switchover::switchover(
                &engine,
                &cluster,
                to.as_deref(),
                &options,
                &mut progress,
            )
            .await?;
            let paused = outcome
                .paused_seconds
                .map(|s| format!("; pooler paused {s:.1} s"))
                .unwrap_or_default();
            println!(
                "leader: {} -> {} (writes through the router after {:.1} s{paused})",
                outcome.old_leader, outcome.new_leader, outcome.seconds
            );
        }
        Command::Psql {
            file,
            replica,
            dbname,
            args,
        } => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let code = swarm::access::psql(&engine, &cluster, replica, &dbname, &args).await?;
            if code != 0 {
                return Err(Failure::Exit(code));
            }
        }
        Command::Logs {
            member,
            file,
            follow,
            tail,
        } => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let code = swarm::access::logs(&engine, &cluster, &member, follow, tail).await?;
            if code != 0 {
                return Err(Failure::Exit(code));
            }
        }
        Command::Doctor { file } => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let report = swarm::doctor::run(&engine, &cluster).await?;
            write_stdout(&report.render())?;
            if report.failed() {
                eprintln!("doctor: a check failed (FAIL above): a deploy would not succeed");
                return Err(Failure::ChecksFailed);
            }
        }
        Command::Up {
            file,
            image,
            build,
            timeout,
        } => {
            let mut cluster = match file {
                Some(f) => load_cluster(&f)?,
                None => {
                    spec::default_cluster()
                        .map_err(|e| anyhow::anyhow!("the embedded default spec is invalid: {e}"))?
                        .cluster
                }
            };
            if let Some(image) = image {
                cluster = cluster
                    .with_image(image)
                    .map_err(|why| anyhow::anyhow!("--image: {why}"))?;
            }
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            swarm::up::up(
                &engine,
                &cluster,
                build,
                Duration::from_secs(timeout),
                &mut progress,
            )
            .await?;
        }
        Command::Down {
            file,
            volumes,
            secrets,
            timeout,
        } => {
            let cluster = match file {
                Some(f) => load_cluster(&f)?,
                None => {
                    spec::default_cluster()
                        .map_err(|e| anyhow::anyhow!("the embedded default spec is invalid: {e}"))?
                        .cluster
                }
            };
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let removed = swarm::up::down(
                &engine,
                &cluster,
                volumes,
                secrets,
                Duration::from_secs(timeout),
                &mut progress,
            )
            .await?;
            println!(
                "removed stack {}: {} service(s); volumes: {}; secrets: {}; member labels: {}",
                cluster.name,
                removed.services,
                if volumes {
                    removed.volumes.len().to_string()
                } else {
                    "kept (--volumes removes them)".into()
                },
                if secrets {
                    removed.secrets.len().to_string()
                } else {
                    "kept (--secrets removes them)".into()
                },
                if volumes {
                    removed.labels.to_string()
                } else {
                    "kept".into()
                },
            );
        }
        Command::Backup(BackupCommand::Now { file, kind }) => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            eprintln!(
                "backup: taking a {} backup of {} in its repository ...",
                kind.as_str(),
                cluster.name
            );
            let label = swarm::backup::now(&engine, &cluster, kind).await?;
            println!("backup {label} done");
        }
        Command::Backup(BackupCommand::List { file, output }) => {
            let cluster = load_cluster_or_default(file.as_deref())?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let entries = swarm::backup::list(&engine, &cluster).await?;
            match output {
                OutputFormat::Table => write_stdout(&swarm::backup::render_table(&entries))?,
                OutputFormat::Json => {
                    let mut text = serde_json::to_string_pretty(&entries)
                        .context("cannot write the backups as JSON")?;
                    text.push('\n');
                    write_stdout(&text)?;
                }
            }
        }
        Command::Restore {
            file,
            time,
            label,
            from_cluster,
            yes,
            timeout,
        } => {
            let cluster = load_cluster(&file)?;
            let target = match (time, label) {
                (Some(t), _) => pgswarm_contract::backup::RestoreTarget::Time(t),
                (None, Some(l)) => pgswarm_contract::backup::RestoreTarget::Label(l),
                (None, None) => pgswarm_contract::backup::RestoreTarget::Latest,
            };
            // The same check the members make on the value they receive.
            if pgswarm_contract::backup::RestoreTarget::parse(&target.to_env_value()).is_err() {
                return Err(anyhow::anyhow!(
                    "--time or --label {:?}: not usable (no quotes, backslashes or line breaks; \
                     a label has no spaces; `swarmctl backup list` shows the labels)",
                    target.to_env_value()
                )
                .into());
            }
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let options = swarm::restore::RestoreOptions {
                target,
                from_cluster,
                yes,
                timeout: Duration::from_secs(timeout),
            };
            swarm::restore::restore(&engine, &cluster, &options, &mut progress).await?;
        }
        Command::Citus(CitusCommand::AddGroup {
            file,
            groups,
            timeout,
            shard_transfer_mode,
        }) => {
            let cluster = load_cluster(&file)?;
            let engine = Engine::connect().await.map_err(anyhow::Error::from)?;
            let options = swarm::citus::AddGroupOptions {
                groups,
                timeout: Duration::from_secs(timeout),
                transfer_mode: shard_transfer_mode,
            };
            let outcome =
                swarm::citus::add_group(&engine, &cluster, &options, &mut progress).await?;
            for r in &outcome.registered {
                println!(
                    "group {}: primary {}:{} registered in pg_dist_node",
                    r.group, r.node, r.port
                );
            }
            match outcome.rebalance {
                swarm::citus::RebalanceOutcome::NothingToMove => {
                    println!("rebalance: nothing to move, the shards are balanced")
                }
                swarm::citus::RebalanceOutcome::Finished { job_id, tasks } => {
                    println!("rebalance job {job_id} finished ({tasks} tasks)")
                }
            }
        }
        Command::Init { .. }
        | Command::Connect { .. }
        | Command::Validate { .. }
        | Command::Generate { .. }
        | Command::Completions { .. } => {
            return Err(anyhow::anyhow!("not an operation on a swarm").into())
        }
    }
    Ok(())
}

/// Reads and validates the spec at `file` (`-` = standard input).
fn load(file: &Path) -> Result<(Validated, String), Failure> {
    let (text, source) = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the spec from standard input")?;
        (text, "<stdin>".to_string())
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the spec {}", file.display()))?;
        (text, file.display().to_string())
    };
    match spec::parse(&text) {
        Ok(v) => Ok((v, source)),
        Err(e) => Err(Failure::Invalid(e, source)),
    }
}

fn print_warnings(validated: &Validated, source: &str) {
    for w in &validated.warnings {
        eprintln!("{}", w.render(source));
    }
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

/// Writes `text` to `path` through a temporary file in the same directory, so a reader never
/// sees half a stack file.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, text).with_context(|| {
        format!(
            "cannot write {} (through the temporary file {})",
            path.display(),
            tmp.display()
        )
    })?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}", path.display())
    })
}

/// One paragraph saying what the spec describes.
fn summary(c: &Cluster) -> String {
    let names = |it: &mut dyn Iterator<Item = &spec::Service>| {
        it.map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    };
    let mut out = format!(
        "{}: valid {} cluster\n  data members: {}\n",
        c.name,
        c.topology,
        names(&mut c.data_members())
    );
    for (group, members) in c.citus_groups() {
        let what = if group == 0 {
            "coordinator group 0".to_string()
        } else {
            format!("worker group {group}")
        };
        out.push_str(&format!("  {what}: {}\n", members.join(", ")));
    }
    if c.etcd_members().next().is_some() {
        out.push_str(&format!("  etcd: {}\n", names(&mut c.etcd_members())));
    }
    if let Some((rw, ro, worker)) = c.router_ports() {
        out.push_str(&format!("  router: read-write {rw}, read-only {ro}"));
        if let Some(w) = worker {
            out.push_str(&format!(", workers {w}"));
        }
        out.push('\n');
    }
    if let Some(p) = c.pooler() {
        if let pgswarm_contract::Role::Pooler {
            port, pool_mode, ..
        } = &p.env.role
        {
            out.push_str(&format!(
                "  pooler: port {port}, {} pooling\n",
                pool_mode.as_str()
            ));
        }
    }
    let secrets: Vec<String> = c
        .secrets()
        .iter()
        .map(|s| c.secret_docker_name(*s))
        .collect();
    out.push_str(&format!("  secrets: {}\n", secrets.join(", ")));
    out
}
