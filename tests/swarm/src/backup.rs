//! Backups on a real swarm: the repository service creates the stanza, WAL is archived from
//! the leader, a full backup is taken in the repository (from a replica), and a point-in-time
//! restore through the repository into a scratch data directory in a member's container gives
//! exactly the rows committed before the target time: none written after it, no DROP TABLE.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::docker::docker_async;
use crate::Deployment;

const CONF: &str = "--config=/run/pgswarm/pgbackrest/pgbackrest.conf";
/// Where the restore goes, on the member's volume, removed afterwards.
const SCRATCH: &str = "/var/lib/pgswarm/pitr-check";
const SCRATCH_PORT: &str = "5499";

/// What the scenario measured.
#[derive(Debug)]
pub struct PitrReport {
    pub stanza_and_first_backup: Duration,
    pub backup_label: String,
    pub restore: Duration,
    pub rows_restored: i64,
}

/// One query on the scratch server restored in `key`'s container (its socket in /tmp).
async fn scratch_psql(dep: &Deployment, key: &str, sql: &str) -> Result<String> {
    exec(
        dep,
        key,
        &[
            "psql",
            "-h",
            "/tmp",
            "-p",
            SCRATCH_PORT,
            "-X",
            "-At",
            "-c",
            sql,
        ],
    )
    .await
}

async fn exec(dep: &Deployment, key: &str, args: &[&str]) -> Result<String> {
    let container = dep.wait_container(key, Duration::from_secs(60)).await?;
    let mut full = vec!["exec", container.as_str()];
    full.extend_from_slice(args);
    docker_async(&full).await
}

async fn sql(dep: &Deployment, key: &str, statement: &str) -> Result<String> {
    Ok(exec(
        dep,
        key,
        &[
            "psql",
            "-h",
            "/run/pgswarm",
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            statement,
        ],
    )
    .await?
    .trim()
    .to_string())
}

/// The PITR check on a deployed cluster with a `backup` section.
pub async fn pitr(dep: &Deployment, members: &[String]) -> Result<PitrReport> {
    let started = Instant::now();
    let stanza = format!("--stanza={}", dep.name);
    // The first backup succeeds once the stanza exists and WAL reaches the repository.
    let mut last = String::new();
    let label = loop {
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
            Ok(_) => {
                let info = exec(
                    dep,
                    "backup",
                    &["pgbackrest", CONF, &stanza, "info", "--output=json"],
                )
                .await?;
                let value: serde_json::Value = serde_json::from_str(&info)
                    .with_context(|| format!("pgbackrest info: {info}"))?;
                break value[0]["backup"]
                    .as_array()
                    .and_then(|b| b.last())
                    .and_then(|b| b["label"].as_str())
                    .unwrap_or_default()
                    .to_string();
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    let stanza_and_first_backup = started.elapsed();
    info!(label = %label, seconds = stanza_and_first_backup.as_secs_f64(), "first backup taken");
    let mut leader = None;
    for m in members {
        if sql(dep, m, "select pg_is_in_recovery()")
            .await
            .ok()
            .as_deref()
            == Some("f")
        {
            leader = Some(m.clone());
        }
    }
    let Some(leader) = leader else {
        bail!("no member is out of recovery");
    };
    sql(
        dep,
        &leader,
        "create table pitr (id int primary key); insert into pitr select generate_series(1, 200)",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let target = sql(dep, &leader, "select clock_timestamp()").await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sql(
        dep,
        &leader,
        "insert into pitr select generate_series(201, 300)",
    )
    .await?;
    sql(dep, &leader, "drop table pitr").await?;
    let segment = sql(dep, &leader, "select pg_walfile_name(pg_switch_wal())").await?;
    let wait = Instant::now();
    loop {
        let archived = sql(
            dep,
            &leader,
            "select coalesce(last_archived_wal, '') from pg_stat_archiver",
        )
        .await?;
        if archived >= segment {
            break;
        }
        if wait.elapsed() > Duration::from_secs(180) {
            bail!("{segment} not archived within 180 s (last archived: {archived})");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let restore_started = Instant::now();
    let target_arg = format!("--target={target}");
    let path = format!("--pg1-path={SCRATCH}");
    exec(
        dep,
        &leader,
        &[
            "pgbackrest",
            CONF,
            &stanza,
            &path,
            "--type=time",
            &target_arg,
            "--target-action=promote",
            "restore",
        ],
    )
    .await?;
    let options = format!(
        "-p {SCRATCH_PORT} -c archive_mode=off -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp"
    );
    let pg_ctl = "/usr/lib/postgresql/17/bin/pg_ctl";
    exec(
        dep,
        &leader,
        &[
            pg_ctl,
            "-D",
            SCRATCH,
            "-o",
            &options,
            "-l",
            "/tmp/pitr-check.log",
            "-w",
            "-t",
            "180",
            "start",
        ],
    )
    .await?;
    let counted = async {
        // Promotion follows the end of recovery; wait for it.
        for _ in 0..120 {
            let out = scratch_psql(dep, &leader, "select pg_is_in_recovery()").await;
            if out.as_deref().ok().map(str::trim) == Some("f") {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        scratch_psql(dep, &leader, "select count(*), min(id), max(id) from pitr").await
    }
    .await;
    let restore = restore_started.elapsed();
    let _ = exec(dep, &leader, &[pg_ctl, "-D", SCRATCH, "-m", "fast", "stop"]).await;
    let _ = exec(dep, &leader, &["rm", "-rf", SCRATCH]).await;
    let counted = counted?;
    let fields: Vec<&str> = counted.trim().split('|').collect();
    if fields != ["200", "1", "200"] {
        bail!(
            "restored to {target}: expected rows 1..200 (count, min, max = 200|1|200), got {}",
            counted.trim()
        );
    }
    Ok(PitrReport {
        stanza_and_first_backup,
        backup_label: label,
        restore,
        rows_restored: 200,
    })
}
