//! `swarmctl`: PostgreSQL clusters on Docker Swarm. A cluster spec in, a stack file out.
//!
//! Exit codes: 0 success, 1 invalid spec, 2 any other error (unreadable file, bad arguments).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use swarmctl::render;
use swarmctl::spec::{self, Cluster, SpecError, Topology, Validated};

/// Exit code of an invalid spec.
const EXIT_INVALID: u8 = 1;
/// Exit code of any other error.
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "swarmctl",
    version,
    about = "PostgreSQL clusters on Docker Swarm: a cluster spec in, a stack file out",
    after_help = "Exit codes: 0 success, 1 invalid spec, 2 any other error."
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
    },
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
        Err(Failure::Other(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
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
        Command::Generate { file, output } => {
            let (validated, source) = load(&file)?;
            print_warnings(&validated, &source);
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
    let secrets: Vec<String> = c.secrets().iter().map(|s| s.docker_name(&c.name)).collect();
    out.push_str(&format!("  secrets: {}\n", secrets.join(", ")));
    out
}
