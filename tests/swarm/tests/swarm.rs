//! The real-swarm end-to-end scenarios (tier 3). Each test deploys its own stack, named after
//! this process, and removes it (with its volumes, secrets and node labels) when it ends,
//! passing or failing. Run them one at a time: `tests/swarm/run.sh` does.

use pgswarm_swarm_tests::image::ensure_image;
use pgswarm_swarm_tests::patroni::PatroniCluster;
use pgswarm_swarm_tests::scenarios::{self, DEPLOY_TIMEOUT};
use pgswarm_swarm_tests::{deployment, init_logging, specs, Deployment};

/// Scenario 1: primary and replica deployed as a stack; the replica streams through
/// its slot, is read-only and serves the primary's rows; both export their metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_stack_streams_like_seed_003() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2erepl");
    let spec = specs::replication(&name, &image)?;
    let dep = Deployment::deploy(&name, &spec, &scenarios::replication_ports)?;
    let report = scenarios::replication(&dep).await?;
    eprintln!(
        "replication: slot {} active and streaming, replica read-only and serving the \
         primary's row; healthy {:.1} s after deploy",
        report.slot,
        report.ready_after.as_secs_f64()
    );
    let scrapes = pgswarm_swarm_tests::metrics::replication_metrics(&dep).await?;
    eprintln!("replication: both members' exporters answer ({scrapes:?} ms)");
    Ok(())
}

/// Scenario 2: one leader and streaming replicas; the router's read-write port and PgBouncer
/// reach the leader, the read-only port a replica. Then a `swarmctl switchover` under write
/// load through PgBouncer, and a forced update of the leader's service: no client error,
/// nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_stack_routes_writes_to_the_leader() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2epat");
    let spec = specs::patroni(&name, &image, true)?;
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    let report = scenarios::routing(&cluster).await?;
    eprintln!(
        "routing: leader {}; rw port -> {}; pooler -> {}; ro port -> {}; ready {:.1} s after \
         deploy",
        report.leader,
        report.rw_reached,
        report.pooler_reached,
        report.ro_reached,
        cluster.ready_after.as_secs_f64()
    );
    // The same deployment: `swarmctl switchover` pauses the pooler, so its clients see no error.
    let report = scenarios::switchover_through_pooler(&cluster, "pooler_switchover").await?;
    eprintln!("{report}");
    anyhow::ensure!(
        report.client_errors == 0,
        "clients of the paused pooler saw {} errors during the switchover: {:?}",
        report.client_errors,
        report.errors
    );
    // And a rolling update of the leader's service: its sidecar hands over (the pooler
    // paused) before the container stops, so the pooler's clients again see no error.
    let report = scenarios::update_leader_through_pooler(&cluster, "pooler_update").await?;
    eprintln!("{report}");
    anyhow::ensure!(
        report.client_errors == 0,
        "clients of the pooler saw {} errors while the leader's service was updated: {:?}",
        report.client_errors,
        report.errors
    );
    Ok(())
}

/// Scenario 2b: roles and databases declared in the spec. `swarmctl apply-roles` creates
/// them on the leader; the application role logs in through PgBouncer (auth_query) and the
/// router, creates a table in its database and is refused by one it was not granted; a
/// changed connection limit is applied without restarting any member. The cluster requires
/// TLS: the same over `sslmode=verify-full` by service name from inside the stack's network,
/// plaintext refused through the router and by a member, replicas streaming over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_roles_log_in_through_the_pooler_and_change_without_a_restart(
) -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2eroles");
    let spec = format!(
        "{}{}{}",
        specs::patroni(&name, &image, false)?,
        pgswarm_swarm_tests::roles::roles_section(5),
        pgswarm_swarm_tests::roles::TLS_SECTION
    );
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    let report = pgswarm_swarm_tests::roles::application_roles(&cluster).await?;
    eprintln!(
        "roles: first apply {:?}; after the change {:?}",
        report.first_apply, report.second_apply
    );
    let tls = pgswarm_swarm_tests::roles::tls_checks(&cluster).await?;
    eprintln!(
        "tls: verify-full through the pooler and the router, plaintext refused, {} replica(s) \
         streaming over TLS, {} exporter(s) up",
        tls.encrypted_replicas, tls.exporters
    );
    Ok(())
}

/// Backups and restores (issue 12's acceptance), on one cluster with a `backup` section:
/// - point in time: rows, a target time, more rows, DROP TABLE; `swarmctl restore
///   --from-cluster --time` into a new cluster has exactly the rows committed before the
///   target and the dropped table;
/// - the repository stopped for a while: writes go on, `swarmctl status` says archiving
///   fails, and archiving catches up once it is back;
/// - disaster: under write load every member is killed, the stack removed and the members'
///   volumes deleted; `swarmctl restore --yes` in place brings back every commit acknowledged
///   before the last archived segment, reports the window lost, and archives again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_restored_to_a_point_in_time_into_a_new_cluster_and_in_place_after_losing_every_volume(
) -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("rstbk");
    let spec = format!(
        "{}backup:\n  archive_timeout: 10\n",
        specs::patroni(&name, &image, false)?
    );
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    let report = pgswarm_swarm_tests::backup::pitr_into_new_cluster(&cluster, &image).await?;
    eprintln!(
        "restore, point in time: stanza and first full backup (from a standby) {:.1} s after \
         ready ({}); \
         swarmctl restore --from-cluster --time '{}' into a new cluster {:.1} s; {} rows, none \
         after the target, the dropped table back",
        report.stanza_and_first_backup.as_secs_f64(),
        report.backup_label,
        report.target,
        report.restore.as_secs_f64(),
        report.rows_restored
    );
    let report = pgswarm_swarm_tests::backup::repository_outage(&cluster).await?;
    eprintln!(
        "repository stopped: {} rows committed meanwhile, {} archive failures, swarmctl status: \
         {:?}; the segment archived {:.1} s after the repository was back ({:.1} s in all)",
        report.rows_written_meanwhile,
        report.archive_failures,
        report.status_line,
        report.caught_up_after.as_secs_f64(),
        report.outage.as_secs_f64()
    );
    let report = pgswarm_swarm_tests::backup::disaster_in_place(&cluster).await?;
    eprintln!(
        "restore, disaster: {} commits acknowledged, the {} before the archived WAL switch all \
         restored; lost: {} commits acknowledged after the last archived segment ({}), a \
         window of {:.1} s; swarmctl restore --yes in place {:.1} s; the restored leader \
         archived {} (new timeline)",
        report.acknowledged,
        report.acknowledged_before_archived,
        report.lost,
        report.last_archived_before,
        report.lost_window.as_secs_f64(),
        report.restore.as_secs_f64(),
        report.archived_after
    );
    Ok(())
}

/// Monitoring: every metrics endpoint answers on the overlay network with the key series
/// (pg_up, the leader's role, each replica's lag, Patroni's primary flag, HAProxy's server
/// states, etcd's leader, PgBouncer's pools), a replica's lag rises while its replay is
/// paused, PgBouncer reports waiting clients while its pool is exhausted, and the generated Prometheus configuration passes promtool and, run on the
/// overlay, discovers and scrapes every task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_of_a_patroni_stack_exports_metrics() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2emet");
    let spec = specs::patroni(&name, &image, false)?.replace(
        "  pool_mode: transaction\n",
        &format!(
            "  pool_mode: transaction\n  pool_size: {}\n",
            pgswarm_swarm_tests::metrics::POOL_SIZE
        ),
    );
    assert!(
        spec.contains("pool_size"),
        "the spec's pooler section changed: {spec}"
    );
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    let report = pgswarm_swarm_tests::metrics::metrics(&cluster).await?;
    eprintln!("{report}");
    Ok(())
}

/// Scenario 3: `docker kill` of the leader under write load, synchronous mode on: a new
/// leader, the old one back as a replica with its data, and no acknowledged commit lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_fails_over_without_losing_commits() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2efail");
    let spec = specs::patroni(&name, &image, true)?;
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    assert!(
        cluster.synchronous,
        "the failover stack must run synchronous mode"
    );
    let report = scenarios::failover(&cluster, "failover_probe").await?;
    eprintln!("{report}");
    assert_eq!(report.lost, 0, "acknowledged commits lost: {report}");
    assert!(
        report.failed_over,
        "no failover: the killed leader {} came back within the leader lock's TTL and took its \
         lock again, so no replica took over ({report})",
        report.old_leader
    );
    Ok(())
}

/// `kill -9` of the leader's postmaster under write load, synchronous mode on: Patroni
/// restarts it in place (woken at once by the sidecar), one primary, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_postmaster_is_restarted_in_place_without_losing_commits() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2epm");
    let spec = specs::patroni(&name, &image, true)?;
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    let report = scenarios::postmaster_crash(&cluster, "postmaster_probe").await?;
    eprintln!("{report}");
    assert_eq!(report.lost, 0, "acknowledged commits lost: {report}");
    assert!(
        !report.failed_over,
        "the crashed postmaster of {} was not restarted in place ({report})",
        report.old_leader
    );
    Ok(())
}

/// Each kind of task replaced (a replica, an etcd member, the router, the pooler): writes go
/// through the router and the pooler again; another etcd member loses its volume and rejoins
/// the etcd cluster by itself; and a switchover to every member is accepted.
/// Asynchronous mode, where every streaming replica is a valid switchover target (in
/// synchronous mode only the synchronous standby is, and swarmctl names it instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_replaced_task_is_followed() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2erepl");
    let spec = specs::patroni(&name, &image, false)?;
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    let replaced = scenarios::replaced_tasks(&cluster).await?;
    eprintln!(
        "replaced {replaced:?}; writes through router and pooler; an etcd member rejoined \
         after losing its volume; switchover to every member"
    );
    Ok(())
}

/// Scenario 4: `docker service update --force` on each data member in turn: writable apart
/// from a gap, nothing lost, no member re-initialised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_restarts_keep_every_member_and_every_commit() -> anyhow::Result<()> {
    init_logging();
    let image = ensure_image()?;
    let name = deployment::unique_name("e2erst");
    let spec = specs::patroni(&name, &image, true)?;
    let cluster = PatroniCluster::deploy(&name, &spec, DEPLOY_TIMEOUT).await?;
    let reports = scenarios::forced_restarts(&cluster, "restart_probe").await?;
    assert_eq!(reports.len(), cluster.members.len());
    for report in &reports {
        assert_eq!(report.lost, 0, "{report}");
        eprintln!("{report}");
    }
    Ok(())
}
