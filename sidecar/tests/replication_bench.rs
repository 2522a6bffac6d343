//! Figures for the replication topology, printed as a report, never asserted on:
//! the sidecar's resident memory while its child runs, and the time to clone a replica of a
//! ~1 GB database through the sidecar against plain `pg_basebackup` on the same data.
//!
//! Run: `cargo test -p pgswarm-sidecar --release --test replication_bench -- --ignored --nocapture`

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn plain_basebackup(dir: &TestDir, port: u16, target: &Path) -> Duration {
    let passfile = dir.path().join("bench.pgpass");
    let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{port}:*:replicator:{}\n",
            escape(REPLICATION_PASSWORD)
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let bin = pgswarm_sidecar::postgres::find_bin_dir(None).unwrap();
    let started = Instant::now();
    let status = std::process::Command::new(bin.join("pg_basebackup"))
        .arg("-D")
        .arg(target)
        .args(["-X", "stream", "-R", "-c", "fast", "-w", "-d"])
        .arg(format!(
            "host=127.0.0.1 port={port} user=replicator passfile={}",
            passfile.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed()
}

async fn sidecar_clone(dir: &TestDir, name: &str, primary_port: u16) -> (Duration, u64) {
    let port = free_port();
    let member = replica_env(dir, name, port, primary_port);
    let started = Instant::now();
    let replica = Sidecar::run(dir, &member);
    let elapsed = eventually("the clone", || async {
        if replica.log_text().contains("clone complete") {
            Ok(started.elapsed())
        } else {
            Err("cloning".to_string())
        }
    })
    .await;
    let log = replica.log_text();
    let inner = log
        .lines()
        .find(|l| l.contains("clone complete"))
        .and_then(|l| l.split("secs=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    eprintln!("{name}: sidecar start to clone complete {elapsed:?}, of which pg_basebackup + rename {inner} s");
    superuser(port).await;
    // Let allocations settle once postgres runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(replica.pid());
    drop(replica);
    std::fs::remove_dir_all(dir.path().join(name)).unwrap();
    (elapsed, rss)
}

#[tokio::test]
#[ignore = "a benchmark: loads ~1 GB; run explicitly"]
async fn clone_time_and_sidecar_memory() {
    let dir = TestDir::new();
    let p_port = free_port();
    let primary = Sidecar::run(
        &dir,
        &primary_env(&dir, "pg1", p_port, &["r1", "r2", "r3", "r4"]),
    );
    let p = superuser(p_port).await;
    p.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS pad
           FROM generate_series(1, 1000000) g;
         CHECKPOINT;",
    )
    .await
    .unwrap();
    let size: String = p
        .query_one(
            "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let primary_rss = rss_kib(primary.pid());

    let mut plain = Vec::new();
    let mut through = Vec::new();
    let mut rss = Vec::new();
    for (i, name) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
        // Alternate the order, and flush the previous copy's dirty pages first, so neither
        // side pays for the other's writes.
        let target = dir.path().join(format!("plain{i}"));
        let sync = || {
            let _ = std::process::Command::new("sync").status();
        };
        if i % 2 == 1 {
            sync();
            let (t, r) = sidecar_clone(&dir, name, p_port).await;
            through.push(t);
            rss.push(r);
        }
        sync();
        plain.push(plain_basebackup(&dir, p_port, &target));
        std::fs::remove_dir_all(&target).unwrap();
        if i % 2 == 0 {
            sync();
            let (t, r) = sidecar_clone(&dir, name, p_port).await;
            through.push(t);
            rss.push(r);
        }
    }
    eprintln!("==== replication figures ====");
    eprintln!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    eprintln!("database size (all databases): {size}");
    eprintln!(
        "sidecar VmRSS with postgres running: primary {primary_rss} KiB, replicas {rss:?} KiB"
    );
    eprintln!("plain pg_basebackup:          {:?}", plain);
    eprintln!(
        "clone through the sidecar:    {:?} (sidecar start to clone complete)",
        through
    );
}
