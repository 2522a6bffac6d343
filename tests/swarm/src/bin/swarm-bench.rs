//! `swarm-bench`: what a failover and a switchover cost on a real swarm.
//!
//! Deploys the Patroni topology (synchronous mode by default), then repeats N times each:
//! a failover (`docker kill` of the leader's container) and a planned switchover
//! (`patronictl switchover`), both under a write every ~20 ms through the router. Prints
//! min / median / max of the write gap, client errors and lost acknowledged commits, and the
//! time from `docker stack deploy` to a healthy cluster. Not part of the test run:
//!
//!   cargo run --release -p pgswarm-swarm-tests --bin swarm-bench -- --trials 5

use anyhow::Result;
use clap::Parser;
use pgswarm_swarm_tests::image::ensure_image;
use pgswarm_swarm_tests::patroni::PatroniCluster;
use pgswarm_swarm_tests::scenarios::{self, DisruptionReport, DEPLOY_TIMEOUT};
use pgswarm_swarm_tests::swarm::Swarm;
use pgswarm_swarm_tests::{deployment, init_logging, specs};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Failover and switchover cost of a pgswarm Patroni stack on a real swarm")]
struct Args {
    /// Trials of each kind (failover, switchover).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Deployments to time (each one deploy, wait for health, teardown); trials run on the
    /// first.
    #[arg(long, default_value_t = 1)]
    deployments: usize,
    /// Run Patroni without synchronous mode.
    #[arg(long)]
    asynchronous: bool,
}

fn stats(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (values[0], median, values[n - 1])
}

fn summary(kind: &str, reports: &[DisruptionReport]) {
    let mut gaps: Vec<f64> = reports.iter().map(|r| r.write_gap.as_secs_f64()).collect();
    let mut errors: Vec<f64> = reports.iter().map(|r| r.client_errors as f64).collect();
    let mut lost: Vec<f64> = reports.iter().map(|r| r.lost as f64).collect();
    let mut leader: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.leader_after.map(|d| d.as_secs_f64()))
        .collect();
    let (g0, g1, g2) = stats(&mut gaps);
    let (e0, e1, e2) = stats(&mut errors);
    let (l0, l1, l2) = stats(&mut lost);
    let (n0, n1, n2) = stats(&mut leader);
    println!(
        "{kind} ({} trials)                 min      median   max",
        reports.len()
    );
    println!("  write gap (s)              {g0:<8.2} {g1:<8.2} {g2:<8.2}");
    println!("  client errors              {e0:<8.0} {e1:<8.1} {e2:<8.0}");
    println!("  lost acknowledged commits  {l0:<8.0} {l1:<8.1} {l2:<8.0}");
    println!("  new leader seen after (s)  {n0:<8.1} {n1:<8.1} {n2:<8.1}  (patronictl polled)");
    let moved = reports.iter().filter(|r| r.failed_over).count();
    println!(
        "  leadership moved in {moved} of {} trials (else the old leader kept its lock)",
        reports.len()
    );
}

async fn run(args: Args) -> Result<()> {
    let swarm = Swarm::ensure()?;
    let result = measure(args).await;
    swarm.leave_if_created()?;
    result
}

async fn measure(args: Args) -> Result<()> {
    let image = ensure_image()?;
    let synchronous = !args.asynchronous;
    let mut deploy_times = Vec::new();
    let mut failovers = Vec::new();
    let mut switchovers = Vec::new();
    for d in 0..args.deployments.max(1) {
        let name = deployment::unique_name("bench");
        let spec = specs::patroni(&name, &image, synchronous)?;
        let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
        println!(
            "deployment {}: healthy cluster {:.1} s after docker stack deploy",
            d + 1,
            cluster.ready_after.as_secs_f64()
        );
        deploy_times.push(cluster.ready_after.as_secs_f64());
        if d > 0 {
            continue;
        }
        for t in 0..args.trials {
            let report = scenarios::failover(&cluster, &format!("bench_failover_{t}")).await?;
            println!("trial {}: {report}", t + 1);
            for (error, n) in &report.errors {
                println!("    {n} x {error}");
            }
            failovers.push(report);
            let report = scenarios::switchover(&cluster, &format!("bench_switchover_{t}")).await?;
            println!("trial {}: {report}", t + 1);
            for (error, n) in &report.errors {
                println!("    {n} x {error}");
            }
            switchovers.push(report);
        }
    }
    println!();
    println!(
        "pgswarm swarm-bench: Patroni 3 members, etcd 3, HAProxy router, PgBouncer; \
         synchronous mode {}; writes every {} ms through the router",
        if synchronous { "on" } else { "off" },
        pgswarm_swarm_tests::probe::WRITE_INTERVAL.as_millis()
    );
    summary("failover: docker kill of the leader", &failovers);
    summary("switchover: patronictl switchover", &switchovers);
    let (d0, d1, d2) = stats(&mut deploy_times);
    println!(
        "deploy to healthy ({} deployments) (s)  min {d0:.1}  median {d1:.1}  max {d2:.1}",
        deploy_times.len()
    );
    Ok(())
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
