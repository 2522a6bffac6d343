//! `swarm-bench`: what a failover and a switchover cost on a real swarm.
//!
//! Deploys the Patroni topology (synchronous mode by default), then repeats each chosen
//! scenario `--trials` times under a write every ~20 ms through the router, and prints per
//! scenario min / median / max of the write gap and of the client errors, and the lost
//! acknowledged commits (a table, or one JSON object with `--output json`). Not part of the
//! test run:
//!
//!   cargo run --release -p pgswarm-swarm-tests --bin swarm-bench -- \
//!       --scenario kill --scenario postmaster --scenario switchover --trials 5 --output json
//!
//! Scenarios on a single-node swarm: `kill` (`docker kill` of the leader's container; also
//! accepted as `failover`), `postmaster` (`kill -9` of the leader's postmaster),
//! `switchover` (`patronictl switchover`). With `--nodes 3`, on the bed of
//! `scripts/testbed.sh up 3` (the image put on it with `scripts/testbed.sh image TAG`):
//! `node-loss`, `partition`, `freeze`, `drain`, `router-node-loss` (see
//! `pgswarm_swarm_tests::multinode`); `acked_after_cut` counts the commits the cut-off primary
//! acknowledged after the cut.
//!
//! `--scenario backup` (alone, single-node): a full backup and a restore of a pgbench
//! database (`--scale 70`: ~1 GB) through pgswarm versus plain pgBackRest with the same
//! settings on the same data, and the ratio (see `pgswarm_swarm_tests::backup::bench`).

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use pgswarm_swarm_tests::backup::{self, BackupBench};
use pgswarm_swarm_tests::image::ensure_image;
use pgswarm_swarm_tests::patroni::PatroniCluster;
use pgswarm_swarm_tests::report::{BenchReport, ScenarioReport, Stats};
use pgswarm_swarm_tests::scenarios::{self, DisruptionReport, DEPLOY_TIMEOUT};
use pgswarm_swarm_tests::swarm::Swarm;
use pgswarm_swarm_tests::{deployment, init_logging, specs};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `docker kill` of the leader's container (`failover` is the former name).
    #[value(alias = "failover")]
    Kill,
    /// `kill -9` of the leader's postmaster, Patroni and its container alive.
    Postmaster,
    /// A planned switchover to another member.
    Switchover,
    /// `swarmctl switchover`, PgBouncer paused meanwhile, writes through the pooler.
    SwitchoverPooler,
    /// `docker service update --force` of the leader's service, writes through the pooler
    /// (the leader hands over before it stops).
    UpdatePooler,
    /// Multi-node: every process of the leader's node SIGKILLed, then the node restarted.
    NodeLoss,
    /// Multi-node: the leader's node cut off (processes alive), then reconnected.
    Partition,
    /// Multi-node: the leader's node frozen (cgroup freezer), then thawed.
    Freeze,
    /// Multi-node: the leader's node drained, then active again.
    Drain,
    /// Multi-node: the node of the router powered off, then restarted.
    RouterNodeLoss,
    /// Backup and restore through pgswarm versus plain pgBackRest (runs alone).
    Backup,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Postmaster => "postmaster",
            Scenario::Switchover => "switchover",
            Scenario::SwitchoverPooler => "switchover-pooler",
            Scenario::UpdatePooler => "update-pooler",
            Scenario::NodeLoss => "node-loss",
            Scenario::Partition => "partition",
            Scenario::Freeze => "freeze",
            Scenario::Drain => "drain",
            Scenario::RouterNodeLoss => "router-node-loss",
            Scenario::Backup => "backup",
        }
    }

    /// Whether the scenario needs a multi-node swarm.
    fn multinode(self) -> bool {
        pgswarm_swarm_tests::multinode::SCENARIOS.contains(&self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Parser)]
#[command(about = "Failover and switchover cost of a pgswarm Patroni stack on a real swarm")]
struct Args {
    /// Trials of each scenario.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// A scenario to run (repeatable); default: kill and switchover.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Nodes of the swarm (1: this engine's single-node swarm; more: the test bed of
    /// `scripts/testbed.sh up N`, which must be up with the image on it).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Deployments to time (each one deploy, wait for health, teardown); trials run on the
    /// first.
    #[arg(long, default_value_t = 1)]
    deployments: usize,
    /// Run Patroni without synchronous mode.
    #[arg(long)]
    asynchronous: bool,
    /// `text` (a table and progress lines) or `json` (one object on standard output;
    /// progress goes to standard error).
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// `--scenario backup`: pgbench's scale of the database backed up (70: ~1 GB; 10 for a
    /// quick run).
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u32).range(1..=10000))]
    scale: u32,
    /// Prefix of the clusters' (stacks') names, then the process id: another prefix keeps a
    /// run apart from others on the same swarm.
    #[arg(long, default_value = "bench", value_parser = prefix)]
    prefix: String,
}

/// A cluster name's prefix: a lowercase letter, then lowercase letters and digits.
fn prefix(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 12;
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a lowercase letter, then lowercase letters or digits, at most 12"
        ))
    }
}

async fn run(args: Args) -> Result<()> {
    if args.scenarios.contains(&Scenario::Backup) {
        if args.scenarios.len() > 1 || args.nodes > 1 {
            bail!("--scenario backup runs alone, on a single-node swarm (--nodes 1)");
        }
        let swarm = Swarm::ensure()?;
        let result = measure_backup(&args).await;
        swarm.leave_if_created()?;
        let report = result?;
        match args.output {
            Output::Json => println!("{}", serde_json::to_string(&report)?),
            Output::Text => println!("{report}"),
        }
        return Ok(());
    }
    let (report, failures) = if args.nodes > 1 {
        measure_multinode(&args).await?
    } else {
        if let Some(s) = args.scenarios.iter().find(|s| s.multinode()) {
            bail!(
                "--scenario {} needs several nodes: bring the test bed up (scripts/testbed.sh up \
                 3; scripts/testbed.sh image TAG) and pass --nodes 3",
                s.name()
            );
        }
        let swarm = Swarm::ensure()?;
        let result = measure(&args).await;
        swarm.leave_if_created()?;
        (result?, Vec::new())
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&report)?),
        Output::Text => println!("{report}"),
    }
    if !failures.is_empty() {
        bail!(
            "{} trial(s) failed (the report covers the others):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// The multi-node scenarios on the test bed (`--nodes N`, N > 1).
async fn measure_multinode(args: &Args) -> Result<(BenchReport, Vec<String>)> {
    let bed = pgswarm_swarm_tests::testbed::Testbed::read()?;
    if bed.nodes.len() != args.nodes {
        bail!(
            "--nodes {}: the test bed that is up has {} nodes (scripts/testbed.sh down; \
             scripts/testbed.sh up {})",
            args.nodes,
            bed.nodes.len(),
            args.nodes
        );
    }
    let chosen: Vec<&str> = if args.scenarios.is_empty() {
        vec!["node-loss", "partition"]
    } else {
        args.scenarios.iter().map(|s| s.name()).collect()
    };
    if let Some(s) = args.scenarios.iter().find(|s| !s.multinode()) {
        bail!(
            "--scenario {} runs on a single-node swarm (--nodes 1); with --nodes {} choose from: \
             {}",
            s.name(),
            args.nodes,
            pgswarm_swarm_tests::multinode::SCENARIOS.join(", ")
        );
    }
    pgswarm_swarm_tests::multinode::bench(&chosen, args.trials, args.asynchronous).await
}

async fn trial(
    scenario: Scenario,
    cluster: &PatroniCluster,
    table: &str,
) -> Result<DisruptionReport> {
    match scenario {
        Scenario::Kill => scenarios::failover(cluster, table).await,
        Scenario::Postmaster => scenarios::postmaster_crash(cluster, table).await,
        Scenario::Switchover => scenarios::switchover(cluster, table).await,
        Scenario::SwitchoverPooler => scenarios::switchover_through_pooler(cluster, table).await,
        Scenario::UpdatePooler => scenarios::update_leader_through_pooler(cluster, table).await,
        other => bail!("--scenario {} needs --nodes 3", other.name()),
    }
}

/// `--scenario backup`: a two-member cluster with a repository service.
async fn measure_backup(args: &Args) -> Result<BackupBench> {
    let image = ensure_image()?;
    let name = deployment::unique_name(&args.prefix);
    let spec = format!(
        "{}backup:\n  archive_timeout: 10\n",
        specs::patroni(&name, &image, false)?
    )
    .replacen("members: 3\n", "members: 2\n", 1);
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    eprintln!(
        "healthy cluster {name} {:.1} s after docker stack deploy",
        cluster.ready_after.as_secs_f64()
    );
    backup::bench(&cluster, &image, args.scale).await
}

async fn measure(args: &Args) -> Result<BenchReport> {
    let image = ensure_image()?;
    let synchronous = !args.asynchronous;
    let chosen = if args.scenarios.is_empty() {
        vec![Scenario::Kill, Scenario::Switchover]
    } else {
        args.scenarios.clone()
    };
    let mut deploy_times = Vec::new();
    let mut results: Vec<(Scenario, Vec<DisruptionReport>)> =
        chosen.iter().map(|s| (*s, Vec::new())).collect();
    for d in 0..args.deployments.max(1) {
        let name = deployment::unique_name(&args.prefix);
        let spec = specs::patroni(&name, &image, synchronous)?;
        let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
        eprintln!(
            "deployment {}: healthy cluster {:.1} s after docker stack deploy",
            d + 1,
            cluster.ready_after.as_secs_f64()
        );
        deploy_times.push(cluster.ready_after.as_secs_f64());
        if d > 0 {
            continue;
        }
        for t in 0..args.trials {
            for (scenario, reports) in &mut results {
                let table = format!("bench_{}_{t}", scenario.name().replace('-', "_"));
                let report = trial(*scenario, &cluster, &table).await?;
                eprintln!("trial {}: {report}", t + 1);
                for (error, n) in &report.errors {
                    eprintln!("    {n} x {error}");
                }
                reports.push(report);
            }
        }
    }
    let deploy = Stats::of(deploy_times);
    eprintln!(
        "Patroni 3 members, etcd 3, HAProxy router, PgBouncer; synchronous mode {}; writes \
         every {} ms through the router; deploy to healthy (s) min {:.1} median {:.1} max {:.1}",
        if synchronous { "on" } else { "off" },
        pgswarm_swarm_tests::probe::WRITE_INTERVAL.as_millis(),
        deploy.min,
        deploy.median,
        deploy.max
    );
    Ok(BenchReport {
        nodes: args.nodes,
        scenarios: results
            .iter()
            .map(|(s, reports)| ScenarioReport::from_trials(s.name(), reports, 0))
            .collect(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarm-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
