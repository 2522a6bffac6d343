//! The multi-node scenarios (tier 3) on the test bed of `scripts/testbed.sh` (3 nodes): one
//! Patroni cluster in synchronous mode, spread over the nodes, serves every scenario in turn.
//! They need the bed, so they are ignored by a plain `cargo test` (counted as ignored, with
//! the reason); `tests/swarm/run-multinode.sh` brings the bed up, runs them with `--ignored`
//! and takes the bed down again, also on failure.

use pgswarm_swarm_tests::image::ensure_image;
use pgswarm_swarm_tests::multinode::{reset_hosts, MultiNodeCluster, SCENARIOS};
use pgswarm_swarm_tests::testbed::Testbed;
use pgswarm_swarm_tests::{deployment, init_logging};

/// Scenarios 1–5: node power-off, partition, freeze, drain, loss of the router's node. Each
/// fails on a lost acknowledged commit (synchronous mode), a commit the cut-off primary
/// acknowledged that is gone after healing, a re-initialised member, or a cluster that does
/// not recover; times are reported, never asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the multi-node test bed: tests/swarm/run-multinode.sh (scripts/testbed.sh up 3)"]
async fn multinode_failures_lose_nothing() -> anyhow::Result<()> {
    init_logging();
    let bed = Testbed::open()?;
    anyhow::ensure!(
        bed.nodes.len() >= 3,
        "the multi-node scenarios need 3 nodes; the bed has {}",
        bed.nodes.len()
    );
    let image = ensure_image()?;
    let name = deployment::unique_name("e2emn");
    let mut cluster = MultiNodeCluster::deploy(bed.clone(), &name, &image).await?;
    eprintln!(
        "multi-node cluster ready {:.1} s after deploy",
        cluster.cluster.ready_after.as_secs_f64()
    );
    // `swarmctl status` from every node shows every member's role and lag.
    for line in cluster.status_everywhere().await? {
        eprintln!("{line}");
    }
    let only = std::env::var("PGSWARM_MULTINODE_SCENARIOS").ok();
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        if let Some(only) = &only {
            if !only.split(',').any(|s| s.trim() == scenario) {
                eprintln!("{scenario}: not run (PGSWARM_MULTINODE_SCENARIOS={only})");
                continue;
            }
        }
        match cluster.run(scenario).await {
            Ok(report) => eprintln!("{report}"),
            Err(e) => {
                eprintln!("{scenario}: FAILED: {e:#}");
                failures.push(format!("{scenario}: {e:#}"));
                reset_hosts(&bed);
            }
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} multi-node scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
