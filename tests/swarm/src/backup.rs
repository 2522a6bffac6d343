//! Backups and restores on a real swarm, with `swarmctl restore`:
//! - the repository service creates the stanza, WAL is archived from the leader, a full
//!   backup is taken in the repository (from a replica);
//! - point in time: rows, a target time T, more rows, DROP TABLE; `swarmctl restore
//!   --from-cluster OLD --time T` into a new cluster gives exactly the rows committed before
//!   T, none after, and the dropped table;
//! - disaster: under write load, every member container killed, the stack removed and the
//!   members' volumes deleted; `swarmctl restore --yes` in place rebuilds the cluster from
//!   its repository with every commit acknowledged before the last archived segment, and the
//!   restored leader archives again (a new timeline in the same stanza).

use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context, Result};
use tracing::info;

use crate::docker::{docker, docker_async};
use crate::patroni::PatroniCluster;
use crate::probe::WriteProbe;
use crate::Deployment;

const CONF: &str = "--config=/run/pgswarm/pgbackrest/pgbackrest.conf";
/// psql as the superuser over the member's socket.
const PSQL: [&str; 7] = [
    "psql",
    "-h",
    "/run/pgswarm",
    "-X",
    "-At",
    "-v",
    "ON_ERROR_STOP=1",
];

/// What the point-in-time scenario measured.
#[derive(Debug)]
pub struct PitrReport {
    pub stanza_and_first_backup: Duration,
    pub backup_label: String,
    pub target: String,
    /// `swarmctl restore` into the new cluster, until it is ready.
    pub restore: Duration,
    pub rows_restored: i64,
}

/// What the disaster scenario measured.
#[derive(Debug)]
pub struct DisasterReport {
    pub acknowledged: usize,
    /// Acknowledged before the segment switch whose segment was archived: all restored.
    pub acknowledged_before_archived: usize,
    /// Acknowledged commits missing after the restore (all after the last archived segment).
    pub lost: usize,
    /// From the first lost commit to the last acknowledged one.
    pub lost_window: Duration,
    pub last_archived_before: String,
    /// `swarmctl restore --yes` until the cluster is ready.
    pub restore: Duration,
    /// The first segment the restored leader archived (a new timeline).
    pub archived_after: String,
}

async fn exec(dep: &Deployment, key: &str, args: &[&str]) -> Result<String> {
    let container = dep.wait_container(key, Duration::from_secs(60)).await?;
    let mut full = vec!["exec", container.as_str()];
    full.extend_from_slice(args);
    docker_async(&full).await
}

/// Runs `swarmctl` with `args`; its progress lines are shown; fails with its output.
async fn swarmctl(args: &[&str]) -> Result<String> {
    info!(args = ?args, "swarmctl");
    let out = tokio::process::Command::new(crate::image::swarmctl_path())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run swarmctl")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    if !out.status.success() {
        bail!(
            "swarmctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running container of Swarm service `service`.
async fn service_container(service: &str) -> Result<String> {
    let ids = docker_async(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ])
    .await?;
    Ok(ids
        .lines()
        .next()
        .ok_or_else(|| anyhow!("no running container of {service}"))?
        .to_string())
}

/// One statement through psql in the running container of Swarm service `service`.
async fn service_sql(service: &str, statement: &str) -> Result<String> {
    let id = service_container(service).await?;
    let mut args = vec!["exec", id.as_str()];
    args.extend_from_slice(&PSQL);
    args.extend(["-c", statement]);
    Ok(docker_async(&args).await?.trim().to_string())
}

/// The member of `cluster` (Swarm services `<cluster>_<member>`) out of recovery.
async fn leader_service(cluster: &str, members: &[String]) -> Result<String> {
    for _ in 0..60 {
        for m in members {
            let service = format!("{cluster}_{m}");
            if service_sql(&service, "select pg_is_in_recovery()")
                .await
                .ok()
                .as_deref()
                == Some("f")
            {
                return Ok(service);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("no member of {cluster} is out of recovery")
}

/// Switches WAL on `service` and waits until the segment it closed is archived; returns it.
async fn switch_and_wait_archived(service: &str) -> Result<String> {
    let segment = service_sql(service, "select pg_walfile_name(pg_switch_wal())").await?;
    let wait = Instant::now();
    loop {
        let archived = service_sql(
            service,
            "select coalesce(last_archived_wal, '') from pg_stat_archiver",
        )
        .await?;
        // Same timeline: names compare in order; a later timeline's names sort after.
        if archived >= segment {
            return Ok(segment);
        }
        if wait.elapsed() > Duration::from_secs(180) {
            bail!("{segment} not archived within 180 s (last archived: {archived})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first full backup, once the stanza exists and WAL reaches the repository: its label and
/// what pgBackRest printed.
async fn first_backup(dep: &Deployment) -> Result<(String, String)> {
    let started = Instant::now();
    let stanza = format!("--stanza={}", dep.name);
    let mut last = String::new();
    loop {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("no backup within 300 s: {last}");
        }
        match exec(
            dep,
            "backup",
            &["pgbackrest", CONF, &stanza, "--type=full", "backup"],
        )
        .await
        {
            Ok(printed) => {
                let info = exec(
                    dep,
                    "backup",
                    &["pgbackrest", CONF, &stanza, "info", "--output=json"],
                )
                .await?;
                let value: serde_json::Value = serde_json::from_str(&info)
                    .with_context(|| format!("pgbackrest info: {info}"))?;
                let label = value[0]["backup"]
                    .as_array()
                    .and_then(|b| b.last())
                    .and_then(|b| b["label"].as_str())
                    .unwrap_or_default()
                    .to_string();
                return Ok((label, printed));
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// A cluster `swarmctl restore` creates; removed (stack, volumes, secrets, labels) when
/// dropped, with `swarmctl down`.
struct RestoredCluster {
    spec: std::path::PathBuf,
}

impl Drop for RestoredCluster {
    fn drop(&mut self) {
        if std::env::var_os("PGSWARM_KEEP").is_some() {
            return;
        }
        let out = std::process::Command::new(crate::image::swarmctl_path())
            .args(["down", "--volumes", "--secrets", "-f"])
            .arg(&self.spec)
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                tracing::warn!(error = %String::from_utf8_lossy(&o.stderr), "swarmctl down of the restored cluster failed");
            }
        }
        let _ = std::fs::remove_file(&self.spec);
    }
}

/// Point in time into a new cluster: a full backup taken from a standby; rows 1..200, T, rows
/// 201..300, DROP TABLE; `swarmctl restore -f NEW --from-cluster OLD --time T`: the new
/// cluster has table pitr with exactly rows 1..200.
pub async fn pitr_into_new_cluster(cluster: &PatroniCluster, image: &str) -> Result<PitrReport> {
    let dep = &cluster.dep;
    let started = Instant::now();
    let (label, printed) = first_backup(dep).await?;
    let stanza_and_first_backup = started.elapsed();
    // With replicas, the repository copies a standby's files (backup-standby): the restore
    // below starts from a backup taken from a replica.
    if !printed.contains("on the standby") {
        bail!("the backup was not taken from a standby; pgBackRest printed:\n{printed}");
    }
    info!(label = %label, seconds = stanza_and_first_backup.as_secs_f64(), "first backup taken");
    let leader = leader_service(&dep.name, &cluster.members).await?;
    service_sql(
        &leader,
        "create table pitr (id int primary key); insert into pitr select generate_series(1, 200)",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let target = service_sql(&leader, "select clock_timestamp()").await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    service_sql(&leader, "insert into pitr select generate_series(201, 300)").await?;
    service_sql(&leader, "drop table pitr").await?;
    switch_and_wait_archived(&leader).await?;

    // The new cluster: two members, its own repository.
    let new_name = format!("{}n", dep.name);
    let spec = format!(
        "{}backup:\n  archive_timeout: 10\n",
        crate::specs::patroni(&new_name, image, false)?
    )
    .replacen("members: 3\n", "members: 2\n", 1);
    let spec_path = std::env::temp_dir().join(format!("pgswarm-e2e-{new_name}.yml"));
    std::fs::write(&spec_path, spec).context("cannot write the new cluster's spec")?;
    let restored = RestoredCluster { spec: spec_path };
    let spec_arg = restored.spec.to_string_lossy().to_string();
    swarmctl(&["label-nodes", "-f", &spec_arg]).await?;
    let restore_started = Instant::now();
    swarmctl(&[
        "restore",
        "-f",
        &spec_arg,
        "--from-cluster",
        &dep.name,
        "--time",
        &target,
        "--timeout",
        "600",
    ])
    .await?;
    let restore = restore_started.elapsed();
    let members = vec!["pg1".to_string(), "pg2".to_string()];
    let new_leader = leader_service(&new_name, &members).await?;
    let counted = service_sql(&new_leader, "select count(*), min(id), max(id) from pitr").await?;
    let fields: Vec<&str> = counted.split('|').collect();
    if fields != ["200", "1", "200"] {
        bail!(
            "restored to {target}: expected rows 1..200 (count, min, max = 200|1|200), got {counted}"
        );
    }
    // The new cluster archives into its own repository, under its own stanza.
    let segment = switch_and_wait_archived(&new_leader).await?;
    info!(segment = %segment, "the restored cluster archives into its own repository");
    drop(restored);
    Ok(PitrReport {
        stanza_and_first_backup,
        backup_label: label,
        target,
        restore,
        rows_restored: 200,
    })
}

/// Disaster: writes through the router; a WAL switch whose segment is archived (every commit
/// acknowledged before it must survive); more writes; every member killed, the stack removed,
/// the members' volumes deleted; `swarmctl restore --yes` in place (latest).
pub async fn disaster_in_place(cluster: &PatroniCluster) -> Result<DisasterReport> {
    let dep = &cluster.dep;
    let probe = WriteProbe::start(cluster.rw.clone(), "disaster").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = leader_service(&dep.name, &cluster.members).await?;
    // Every commit acknowledged before the switch is in the closed segment or an earlier one.
    let switched_at = Instant::now();
    switch_and_wait_archived(&leader).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last_archived_before = service_sql(
        &leader,
        "select coalesce(last_archived_wal, '') from pg_stat_archiver",
    )
    .await?;
    // The disaster: every member killed at once, then the stack and the members' volumes gone.
    for m in &cluster.members {
        for c in dep.containers(m).await? {
            let _ = docker_async(&["kill", &c]).await;
        }
    }
    let log = probe.stop().await;
    docker_async(&["stack", "rm", &dep.name]).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.stack.namespace={}", dep.name),
        ])?;
        if left.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the stack's containers are still there 120 s after docker stack rm");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for m in &cluster.members {
        let volume = format!("{}_{m}-data", dep.name);
        docker_async(&["volume", "rm", &volume])
            .await
            .with_context(|| format!("removing {volume}"))?;
    }
    info!("every member's volume removed; restoring in place");
    let restore_started = Instant::now();
    let spec = dep.spec_path().to_string_lossy().to_string();
    swarmctl(&["restore", "-f", &spec, "--yes", "--timeout", "600"]).await?;
    let restore = restore_started.elapsed();
    let leader = leader_service(&dep.name, &cluster.members).await?;
    let ids = service_sql(&leader, "select id from disaster").await?;
    let present: BTreeSet<i64> = ids.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost_before = log.missing_from(&present, Some(switched_at));
    if !lost_before.is_empty() {
        bail!(
            "{} commits acknowledged before the archived WAL switch are missing after the \
             restore (first: {:?})",
            lost_before.len(),
            &lost_before[..lost_before.len().min(10)]
        );
    }
    let lost_ids: BTreeSet<i64> = log.missing_from(&present, None).into_iter().collect();
    let first_lost = log
        .acks
        .iter()
        .find(|a| lost_ids.contains(&a.id))
        .map(|a| a.at);
    let last_ack = log.acks.last().map(|a| a.at);
    let lost_window = match (first_lost, last_ack) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => Duration::ZERO,
    };
    // The restored leader archives again, into the same stanza (a new timeline).
    let archived_after = switch_and_wait_archived(&leader).await?;
    Ok(DisasterReport {
        acknowledged: log.acks.len(),
        acknowledged_before_archived: log.acks.iter().filter(|a| a.at < switched_at).count(),
        lost: lost_ids.len(),
        lost_window,
        last_archived_before,
        restore,
        archived_after,
    })
}

/// What the repository outage showed.
#[derive(Debug)]
pub struct OutageReport {
    /// From stopping the repository until the segment switched during the outage was archived.
    pub outage: Duration,
    pub rows_written_meanwhile: i64,
    pub archive_failures: i64,
    /// What `swarmctl status` said meanwhile (the line naming the archiver's failure).
    pub status_line: String,
    /// From starting the repository again until that segment was archived.
    pub caught_up_after: Duration,
}

/// The repository stopped for a while: writes go on, archiving fails (and `swarmctl status`
/// says so), then catches up once the repository is back.
pub async fn repository_outage(cluster: &PatroniCluster) -> Result<OutageReport> {
    let dep = &cluster.dep;
    let leader = leader_service(&dep.name, &cluster.members).await?;
    let repo = format!("{}_backup", dep.name);
    let failures = |text: String| text.trim().parse::<i64>().unwrap_or(0);
    let failed_before =
        failures(service_sql(&leader, "select failed_count from pg_stat_archiver").await?);
    let started = Instant::now();
    docker_async(&["service", "scale", "-d", &format!("{repo}=0")]).await?;
    loop {
        let left = docker_async(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={repo}"),
        ])
        .await?;
        if left.trim().is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{repo} still runs 60 s after it was scaled to 0");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    service_sql(
        &leader,
        "create table outage (id int primary key); insert into outage select generate_series(1, 100)",
    )
    .await?;
    let segment = service_sql(&leader, "select pg_walfile_name(pg_switch_wal())").await?;
    let spec = dep.spec_path().to_string_lossy().to_string();
    let mut status_line = String::new();
    let mut failed = failed_before;
    let wait = Instant::now();
    while failed <= failed_before || status_line.is_empty() {
        if wait.elapsed() > Duration::from_secs(120) {
            bail!(
                "while the repository was stopped: {} archive failures, swarmctl status said \
                 nothing about it within 120 s",
                failed - failed_before
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        failed = failures(service_sql(&leader, "select failed_count from pg_stat_archiver").await?);
        if let Ok(out) = swarmctl(&["status", "-f", &spec]).await {
            if let Some(line) = out.lines().find(|l| l.contains("ARCHIVING FAILING")) {
                status_line = line.trim().to_string();
            }
        }
    }
    // Writes went on meanwhile.
    let rows = failures(service_sql(&leader, "select count(*) from outage").await?);
    let back = Instant::now();
    docker_async(&["service", "scale", "-d", &format!("{repo}=1")]).await?;
    loop {
        let archived = service_sql(
            &leader,
            "select coalesce(last_archived_wal, '') from pg_stat_archiver",
        )
        .await?;
        if archived >= segment {
            break;
        }
        if back.elapsed() > Duration::from_secs(240) {
            bail!("{segment} not archived within 240 s of the repository's return ({archived})");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(OutageReport {
        outage: started.elapsed(),
        rows_written_meanwhile: rows,
        archive_failures: failed - failed_before,
        status_line,
        caught_up_after: back.elapsed(),
    })
}

/// One duration through pgswarm and through plain pgBackRest, in seconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Compared {
    pub pgswarm: f64,
    pub plain: f64,
    /// pgswarm / plain.
    pub ratio: f64,
}

impl Compared {
    fn of(pgswarm: Duration, plain: Duration) -> Compared {
        let (a, b) = (pgswarm.as_secs_f64(), plain.as_secs_f64());
        Compared {
            pgswarm: a,
            plain: b,
            ratio: if b > 0.0 { a / b } else { f64::NAN },
        }
    }
}

/// What the backup benchmark measured (`swarm-bench --scenario backup`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupBench {
    /// pgbench's scale (100 000 rows of pgbench_accounts each).
    pub scale: u32,
    /// `pg_database_size` of the filled database, MiB.
    pub data_mb: f64,
    /// `pgbench -i` on the leader, seconds.
    pub load_s: f64,
    /// `swarmctl backup now --type full` (the repository service reads a streaming replica's
    /// files over TLS) versus `pgbackrest backup --type=full` in the leader's container into a
    /// local repository on its volume.
    pub backup_s: Compared,
    /// Size of each full backup in its repository (compressed, encrypted), MiB.
    pub backup_size_mb: BackupSizes,
    /// `swarmctl restore --from-cluster` into a new two-member cluster until it is healthy
    /// (deploy, restore, WAL replay, the replica cloned) versus `pgbackrest restore` of the
    /// plain backup into an empty directory (files only).
    pub restore_s: Compared,
    /// The settings both paths share.
    pub settings: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSizes {
    pub pgswarm: f64,
    pub plain: f64,
}

impl std::fmt::Display for BackupBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "backup and restore of a pgbench database (scale {}, {:.0} MiB, loaded in {:.1} s); \
             {}",
            self.scale, self.data_mb, self.load_s, self.settings
        )?;
        writeln!(
            f,
            "{:<18} {:>10} {:>10} {:>8}",
            "", "pgswarm", "plain", "ratio"
        )?;
        for (what, c) in [
            ("backup (s)", &self.backup_s),
            ("restore (s)", &self.restore_s),
        ] {
            writeln!(
                f,
                "{what:<18} {:>10.1} {:>10.1} {:>8.2}",
                c.pgswarm, c.plain, c.ratio
            )?;
        }
        write!(
            f,
            "{:<18} {:>10.1} {:>10.1}",
            "backup size (MiB)", self.backup_size_mb.pgswarm, self.backup_size_mb.plain
        )
    }
}

/// Where the plain pgBackRest run keeps its configuration, repository and restored copy: on
/// the leader's volume, removed afterwards.
const PLAIN_DIR: &str = "/var/lib/pgswarm/bench-plain";
/// The plain run's configuration (pgBackRest refuses on its command line an option the
/// command does not take, and ignores it in a configuration file): pgswarm's settings
/// (zstd at its default level, process-max 2, aes-256-cbc), a local repository, no archive
/// check (that repository gets no WAL).
/// `[global]` comes last: the generated passphrase is appended to it.
const PLAIN_CONF: &str = "[plain]
pg1-path=/var/lib/pgswarm/pgdata
pg1-socket-path=/run/pgswarm

[global]
repo1-path=/var/lib/pgswarm/bench-plain/repo
repo1-cipher-type=aes-256-cbc
compress-type=zst
process-max=2
start-fast=y
archive-check=n
lock-path=/var/lib/pgswarm/bench-plain/lock
log-path=/var/lib/pgswarm/bench-plain/log
log-level-file=off
log-level-console=off
log-level-stderr=warn
";

/// The size in the repository of the newest backup that `pgbackrest info --output=json`
/// printed, MiB.
fn newest_backup_size(info: &str) -> Result<f64> {
    let value: serde_json::Value =
        serde_json::from_str(info).with_context(|| format!("pgbackrest info: {info}"))?;
    value[0]["backup"]
        .as_array()
        .and_then(|b| b.last())
        .and_then(|b| b["info"]["repository"]["delta"].as_f64())
        .map(|bytes| bytes / 1_048_576.0)
        .ok_or_else(|| anyhow!("no backup in pgbackrest info: {info}"))
}

/// Runs pgBackRest in `container` with the plain configuration and `args`.
async fn plain_pgbackrest(container: &str, args: &[&str]) -> Result<String> {
    let config = format!("--config={PLAIN_DIR}/pgbackrest.conf");
    let mut full = vec!["exec", container, "pgbackrest", &config, "--stanza=plain"];
    full.extend_from_slice(args);
    docker_async(&full).await
}

/// Waits until every replica of the leader `service` has replayed what the leader wrote.
async fn wait_replicas_caught_up(service: &str) -> Result<()> {
    let wait = Instant::now();
    loop {
        let behind = service_sql(
            service,
            "select count(*) from pg_stat_replication where replay_lsn is null or replay_lsn < \
             pg_current_wal_lsn()",
        )
        .await?;
        if behind == "0" {
            return Ok(());
        }
        if wait.elapsed() > Duration::from_secs(900) {
            bail!("{behind} replica(s) still behind the leader after 900 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The backup benchmark on `cluster` (two members and a `backup` section): fills the
/// database with `pgbench -i -s SCALE`, times a full backup through pgswarm (`swarmctl backup
/// now`) and a plain `pgbackrest backup` of the same data with the same settings (zstd at its
/// default level 3, process-max 2, aes-256-cbc) into a local repository, then a restore of
/// each: `swarmctl restore --from-cluster` into a new cluster until it is healthy, and plain
/// `pgbackrest restore` into an empty directory. The restored cluster must hold every row.
pub async fn bench(cluster: &PatroniCluster, image: &str, scale: u32) -> Result<BackupBench> {
    let dep = &cluster.dep;
    // The stanza exists once a first (small) backup goes through.
    first_backup(dep).await?;
    let leader = leader_service(&dep.name, &cluster.members).await?;
    let container = service_container(&leader).await?;
    eprintln!("loading pgbench scale {scale} on {leader}");
    let started = Instant::now();
    let pgbench = format!(
        "exec \"$(ls /usr/lib/postgresql/*/bin/pgbench | tail -n 1)\" -i -q -s {scale} -h \
         /run/pgswarm postgres"
    );
    docker_async(&["exec", &container, "sh", "-c", &pgbench]).await?;
    let load = started.elapsed();
    let data_mb: f64 = service_sql(
        &leader,
        "select pg_database_size(current_database()) / 1048576.0",
    )
    .await?
    .parse()
    .context("pg_database_size")?;
    eprintln!(
        "{data_mb:.0} MiB loaded in {:.1} s; waiting for the archive and the replica",
        load.as_secs_f64()
    );
    // Neither backup should pay for archiving or replaying what the load wrote.
    switch_and_wait_archived(&leader).await?;
    wait_replicas_caught_up(&leader).await?;

    let spec = dep.spec_path().to_string_lossy().to_string();
    let started = Instant::now();
    swarmctl(&["backup", "now", "-f", &spec, "--type", "full"]).await?;
    let pgswarm_backup = started.elapsed();
    let stanza = format!("--stanza={}", dep.name);
    let info = exec(
        dep,
        "backup",
        &["pgbackrest", CONF, &stanza, "info", "--output=json"],
    )
    .await?;
    let pgswarm_size = newest_backup_size(&info)?;
    eprintln!(
        "swarmctl backup now --type full: {:.1} s",
        pgswarm_backup.as_secs_f64()
    );

    let plain = plain_backup_and_restore(&container).await;
    // The plain repository and the restored copy go whatever happened.
    let cleanup = docker_async(&["exec", &container, "rm", "-rf", PLAIN_DIR]).await;
    let (plain_backup, plain_size, plain_restore) = plain?;
    cleanup.context("removing the plain repository")?;

    // Everything the load wrote is archived: the latest restore has every row.
    switch_and_wait_archived(&leader).await?;
    let new_name = format!("{}r", dep.name);
    let new_spec = format!(
        "{}backup:\n  archive_timeout: 10\n",
        crate::specs::patroni(&new_name, image, false)?
    )
    .replacen("members: 3\n", "members: 2\n", 1);
    let spec_path = std::env::temp_dir().join(format!("pgswarm-bench-{new_name}.yml"));
    std::fs::write(&spec_path, new_spec).context("cannot write the new cluster's spec")?;
    let restored = RestoredCluster { spec: spec_path };
    let spec_arg = restored.spec.to_string_lossy().to_string();
    swarmctl(&["label-nodes", "-f", &spec_arg]).await?;
    let started = Instant::now();
    swarmctl(&[
        "restore",
        "-f",
        &spec_arg,
        "--from-cluster",
        &dep.name,
        "--timeout",
        "1800",
    ])
    .await?;
    let pgswarm_restore = started.elapsed();
    eprintln!(
        "swarmctl restore into a new cluster: {:.1} s",
        pgswarm_restore.as_secs_f64()
    );
    let members = vec!["pg1".to_string(), "pg2".to_string()];
    let new_leader = leader_service(&new_name, &members).await?;
    let rows = service_sql(&new_leader, "select count(*) from pgbench_accounts").await?;
    let expected = u64::from(scale) * 100_000;
    if rows != expected.to_string() {
        bail!("the restored cluster has {rows} rows in pgbench_accounts, expected {expected}");
    }
    drop(restored);
    Ok(BackupBench {
        scale,
        data_mb,
        load_s: load.as_secs_f64(),
        backup_s: Compared::of(pgswarm_backup, plain_backup),
        backup_size_mb: BackupSizes {
            pgswarm: pgswarm_size,
            plain: plain_size,
        },
        restore_s: Compared::of(pgswarm_restore, plain_restore),
        settings: "both: zstd level 3 (pgBackRest's default), process-max 2, aes-256-cbc; \
                   pgswarm reads the replica over TLS, plain pgBackRest the leader's files \
                   locally"
            .to_string(),
    })
}

/// The plain pgBackRest run in the leader's container: a stanza in a repository on its volume
/// (a generated passphrase in its 0600 configuration file), a timed full backup, its size, and
/// a timed restore into an empty directory.
async fn plain_backup_and_restore(container: &str) -> Result<(Duration, f64, Duration)> {
    let setup = format!(
        "set -e; umask 077; rm -rf {PLAIN_DIR}; mkdir -p {PLAIN_DIR}; \
         printf '%s\\n' \"$1\" > {PLAIN_DIR}/pgbackrest.conf; \
         printf 'repo1-cipher-pass=%s\\n' \"$(head -c 48 /dev/urandom | base64 | tr -d '\\n')\" \
         >> {PLAIN_DIR}/pgbackrest.conf"
    );
    docker_async(&["exec", container, "sh", "-c", &setup, "sh", PLAIN_CONF]).await?;
    plain_pgbackrest(container, &["stanza-create"]).await?;
    let started = Instant::now();
    plain_pgbackrest(container, &["--type=full", "backup"]).await?;
    let backup = started.elapsed();
    eprintln!("plain pgbackrest backup: {:.1} s", backup.as_secs_f64());
    let size = newest_backup_size(&plain_pgbackrest(container, &["info", "--output=json"]).await?)?;
    let target = format!("--pg1-path={PLAIN_DIR}/restore");
    let started = Instant::now();
    plain_pgbackrest(container, &[&target, "restore"]).await?;
    let restore = started.elapsed();
    eprintln!("plain pgbackrest restore: {:.1} s", restore.as_secs_f64());
    Ok((backup, size, restore))
}
