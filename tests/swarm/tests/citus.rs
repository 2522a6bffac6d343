//! The real-swarm Citus scenario (seeds 000 and 002), apart from the other scenarios because
//! it needs an image built with the Citus extension (`--build-arg CITUS_VERSION=...`); with
//! any other image it prints `skipped: citus extension not available in the image` and passes.
//! Run it through `tests/swarm/run.sh citus` (with
//! `DOCKER_BUILD_ARGS="--build-arg CITUS_VERSION=13.2"` to build such an image).

use pgswarm_swarm_tests::citus::{self, CitusCluster, CITUS_DEPLOY_TIMEOUT};
use pgswarm_swarm_tests::image::ensure_image;
use pgswarm_swarm_tests::{deployment, init_logging};

/// Scenario 5: the seed 000 walkthrough on a coordinator group of three and two worker groups
/// of two, through a coordinator failover and a worker failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citus_stack_runs_the_seed_000_walkthrough_through_failovers() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    if !citus::image_has_citus(&image)? {
        println!("{}", citus::SKIPPED);
        return Ok(());
    }
    let name = deployment::unique_name("e2ecit");
    let spec = citus::spec(&name, &image)?;
    let cluster = CitusCluster::deploy(&name, &spec, CITUS_DEPLOY_TIMEOUT).await?;
    let report = citus::seed_000(&cluster).await?;
    eprintln!("{report}");
    Ok(())
}
