//! The real-swarm Citus scenario, apart from the other scenarios because
//! it needs an image built with the Citus extension (`--build-arg CITUS_VERSION=...`), and no
//! Citus package is reachable everywhere: it is ignored unless asked for, and fails (never
//! passes quietly) when asked for on an image without Citus. Run it with
//! `DOCKER_BUILD_ARGS="--build-arg CITUS_VERSION=13.2" tests/swarm/run.sh --ignored citus`.

use pgswarm_swarm_tests::citus::{self, CitusCluster, CITUS_DEPLOY_TIMEOUT};
use pgswarm_swarm_tests::image::ensure_image;
use pgswarm_swarm_tests::{deployment, init_logging};

/// Scenario 5: the Citus walkthrough on a coordinator group of three and two worker groups
/// of two, through a coordinator failover and a worker failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an image with the Citus extension (CITUS_VERSION build argument)"]
async fn citus_stack_runs_the_citus_walkthrough_walkthrough_through_failovers() -> anyhow::Result<()>
{
    init_logging();
    let image = ensure_image()?;
    anyhow::ensure!(
        citus::image_has_citus(&image)?,
        "image {image} has no Citus extension: build it with \
         DOCKER_BUILD_ARGS=\"--build-arg CITUS_VERSION=13.2\" scripts/build-image.sh {image}"
    );
    let name = deployment::unique_name("e2ecit");
    let spec = citus::spec(&name, &image)?;
    let cluster = CitusCluster::deploy(&name, &spec, CITUS_DEPLOY_TIMEOUT).await?;
    let report = citus::citus_walkthrough(&cluster).await?;
    eprintln!("{report}");
    Ok(())
}
