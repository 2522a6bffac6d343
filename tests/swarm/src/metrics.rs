//! The monitoring scenario: every metrics endpoint of a deployed Patroni cluster scraped from
//! inside the overlay network (a member's container, Python's urllib), the key series
//! checked against what the cluster is doing, a replica's lag seen to rise while its WAL
//! replay is paused, and the generated Prometheus configuration checked with `promtool` and
//! run: Prometheus itself, attached to the overlay network, must discover and scrape every task.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgswarm_contract::{defaults, Mode, Role};
use tracing::info;

use crate::docker::{docker, docker_async};
use crate::image::swarmctl_path;
use crate::patroni::PatroniCluster;
use crate::Deployment;

/// Python run inside a member: GETs each URL given and prints one JSON object per URL
/// (`url`, `ms`, `body` or `error`).
const SCRAPE_PY: &str = r#"
import json, sys, time, urllib.request
for url in sys.argv[1:]:
    started = time.monotonic()
    try:
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        print(json.dumps({"url": url, "ms": (time.monotonic() - started) * 1000, "body": body}))
    except Exception as e:
        print(json.dumps({"url": url, "error": str(e)}))
"#;

/// One endpoint's answer: its series (`name{labels}` to value) and how long it took.
#[derive(Debug, Default)]
pub struct Scrape {
    pub series: BTreeMap<String, f64>,
    pub millis: f64,
}

impl Scrape {
    /// Parses Prometheus's text format (comments skipped; a value is the last field).
    fn parse(body: &str, millis: f64) -> Scrape {
        let series = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        Scrape { series, millis }
    }

    /// Values of the series named `name` whose labels include every `key="value"` in `labels`.
    pub fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.series
            .iter()
            .filter(|(k, _)| {
                let base = k.split('{').next().unwrap_or(k);
                base == name
                    && labels
                        .iter()
                        .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
            })
            .map(|(_, v)| *v)
            .collect()
    }

    /// The one value of `name` with `labels`, or an error naming what is there.
    pub fn value(&self, what: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        match self.values(name, labels).as_slice() {
            [one] => Ok(*one),
            other => bail!(
                "{what}: expected one series {name} with {labels:?}, found {} ({:?})",
                other.len(),
                self.series
                    .keys()
                    .filter(|k| k.starts_with(name))
                    .take(10)
                    .collect::<Vec<_>>()
            ),
        }
    }
}

/// What the scenario measured.
#[derive(Debug)]
pub struct MetricsReport {
    pub leader: String,
    /// Endpoint URL to (series count, scrape milliseconds).
    pub endpoints: BTreeMap<String, (usize, f64)>,
    /// Resident memory of each exporter process, KiB, by service.
    pub exporter_rss_kib: BTreeMap<String, u64>,
    /// The paused replica and its replay lag on the leader, bytes, before and after.
    pub lag: (String, f64, f64),
    /// Clients PgBouncer's exporter reported waiting while the pool was exhausted.
    pub pooler_waiting: f64,
    /// Prometheus's targets: (job, member, health).
    pub prometheus_targets: Vec<(String, String, String)>,
}

impl fmt::Display for MetricsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "metrics: leader {}", self.leader)?;
        for (url, (n, ms)) in &self.endpoints {
            writeln!(f, "  {url}: {n} series in {ms:.0} ms")?;
        }
        for (service, kib) in &self.exporter_rss_kib {
            writeln!(
                f,
                "  exporter RSS on {service}: {:.1} MiB",
                *kib as f64 / 1024.0
            )?;
        }
        writeln!(
            f,
            "  replay lag of {} while its replay was paused: {} -> {} bytes",
            self.lag.0, self.lag.1, self.lag.2
        )?;
        writeln!(
            f,
            "  PgBouncer clients waiting while the pool of {POOL_SIZE} was exhausted: {}",
            self.pooler_waiting
        )?;
        for (job, member, health) in &self.prometheus_targets {
            writeln!(f, "  prometheus target {job} {member}: {health}")?;
        }
        Ok(())
    }
}

/// Scrapes `urls` from inside `key`'s container.
async fn scrape(
    dep: &Deployment,
    key: &str,
    urls: &[String],
) -> Result<Vec<(String, Result<Scrape>)>> {
    let mut args = vec!["python3", "-c", SCRAPE_PY];
    args.extend(urls.iter().map(String::as_str));
    let out = dep.exec(key, &args).await?;
    let mut result = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("scraper printed {line}"))?;
        let url = v["url"].as_str().unwrap_or_default().to_string();
        let scrape = match (v["body"].as_str(), v["error"].as_str()) {
            (Some(body), _) => Ok(Scrape::parse(body, v["ms"].as_f64().unwrap_or_default())),
            (None, Some(e)) => Err(anyhow!("{url}: {e}")),
            _ => Err(anyhow!("{url}: no answer")),
        };
        result.push((url, scrape));
    }
    Ok(result)
}

/// Scrapes `urls` until every one answers with `must_have` in its body (the exporters start
/// beside their services, and the monitoring role appears once the leader made it).
async fn scrape_all(
    dep: &Deployment,
    from: &str,
    urls: &[(String, &'static str)],
    timeout: Duration,
) -> Result<BTreeMap<String, Scrape>> {
    let deadline = Instant::now() + timeout;
    loop {
        let list: Vec<String> = urls.iter().map(|(u, _)| u.clone()).collect();
        let answers = scrape(dep, from, &list).await?;
        let mut missing = Vec::new();
        let mut out = BTreeMap::new();
        for ((url, must_have), (_, answer)) in urls.iter().zip(answers) {
            match answer {
                Ok(s) if s.series.keys().any(|k| k.starts_with(must_have)) => {
                    out.insert(url.clone(), s);
                }
                Ok(_) => missing.push(format!("{url}: no {must_have} series yet")),
                Err(e) => missing.push(format!("{e:#}")),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("metrics endpoints not answering after {timeout:?}: {missing:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn metrics_port(cluster: &PatroniCluster, mode: Mode) -> Result<Vec<(String, u16)>> {
    Ok(cluster
        .dep
        .stack
        .services_in_mode(mode)?
        .into_iter()
        .filter_map(|s| {
            let port = match (&s.env.role, s.env.common.metrics_port) {
                (Role::Etcd { client_port, .. }, _) => Some(*client_port),
                (_, port) => port,
            };
            port.map(|p| (s.key.clone(), p))
        })
        .collect())
}

/// Runs the scenario on a deployed Patroni cluster (asynchronous mode: pausing a replica's
/// replay must not hold up commits).
pub async fn metrics(cluster: &PatroniCluster) -> Result<MetricsReport> {
    let leader = cluster.leader().await?;
    let replicas: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| **m != leader)
        .cloned()
        .collect();
    ensure!(!replicas.is_empty(), "the scenario needs a replica");
    let rest_port = match &cluster.dep.stack.services_in_mode(Mode::Patroni)?[0]
        .env
        .role
    {
        Role::Patroni { rest_port, .. } => *rest_port,
        _ => defaults::REST_PORT,
    };
    let mut urls: Vec<(String, &'static str)> = Vec::new();
    let pg = metrics_port(cluster, Mode::Patroni)?;
    ensure!(
        pg.len() == cluster.members.len(),
        "every data member must have a metrics port: {pg:?}"
    );
    for (key, port) in &pg {
        urls.push((
            format!("http://{key}:{port}/metrics"),
            "pgswarm_instance_is_primary",
        ));
        urls.push((
            format!("http://{key}:{rest_port}/metrics"),
            "patroni_primary",
        ));
    }
    for (key, port) in metrics_port(cluster, Mode::Etcd)? {
        urls.push((
            format!("http://{key}:{port}/metrics"),
            "etcd_server_has_leader",
        ));
    }
    for (key, port) in metrics_port(cluster, Mode::Router)? {
        urls.push((
            format!("http://{key}:{port}/metrics"),
            "haproxy_server_status",
        ));
    }
    for (key, port) in metrics_port(cluster, Mode::Pooler)? {
        urls.push((format!("http://{key}:{port}/metrics"), "pgbouncer_up"));
    }
    let scrapes = scrape_all(&cluster.dep, &leader, &urls, Duration::from_secs(90)).await?;
    let get = |key: &str, port: u16| -> Result<&Scrape> {
        let url = format!("http://{key}:{port}/metrics");
        scrapes
            .get(&url)
            .ok_or_else(|| anyhow!("{url} was not scraped"))
    };

    for (key, port) in &pg {
        let s = get(key, *port)?;
        ensure!(s.value(key, "pg_up", &[])? == 1.0, "{key}: pg_up is not 1");
        let primary = s.value(key, "pgswarm_instance_is_primary", &[])?;
        let expected = if *key == leader { 1.0 } else { 0.0 };
        ensure!(
            primary == expected,
            "{key}: pgswarm_instance_is_primary is {primary}, the leader is {leader}"
        );
        let p = get(key, rest_port)?.value(key, "patroni_primary", &[("name", key)])?;
        ensure!(
            p == expected,
            "{key}: patroni_primary is {p}, the leader is {leader}"
        );
    }
    let leader_pg = get(&leader, pg[0].1)?;
    for r in &replicas {
        leader_pg.value(
            &leader,
            "pgswarm_replica_replay_lag_bytes",
            &[("replica", r)],
        )?;
        leader_pg.value(
            &leader,
            "pgswarm_replica_replay_lag_seconds",
            &[("replica", r)],
        )?;
        leader_pg.value(&leader, "pgswarm_slot_retained_wal_bytes", &[("slot", r)])?;
    }
    for name in [
        "pg_stat_database_xact_commit",
        "pg_stat_database_xact_rollback",
        "pg_stat_database_deadlocks",
        "pg_database_size_bytes",
        "pg_stat_activity_count",
        "pg_stat_archiver_archived_count",
        "pg_stat_archiver_failed_count",
        "pg_stat_checkpointer_num_timed_total",
        "pgswarm_wal_bytes",
    ] {
        ensure!(
            !leader_pg.values(name, &[]).is_empty(),
            "{leader}: no {name} series"
        );
    }
    for (key, port) in metrics_port(cluster, Mode::Etcd)? {
        let v = get(&key, port)?.value(&key, "etcd_server_has_leader", &[])?;
        ensure!(v == 1.0, "{key}: etcd_server_has_leader is {v}");
    }
    for (key, port) in metrics_port(cluster, Mode::Router)? {
        let s = get(&key, port)?;
        let up = s.value(
            &key,
            "haproxy_server_status",
            &[("proxy", "rw"), ("server", &leader), ("state", "UP")],
        )?;
        ensure!(
            up == 1.0,
            "{key}: the leader {leader} is not UP behind the read-write port"
        );
        s.value(
            &key,
            "haproxy_server_current_sessions",
            &[("proxy", "rw"), ("server", &leader)],
        )?;
    }
    for (key, port) in metrics_port(cluster, Mode::Pooler)? {
        let s = get(&key, port)?;
        ensure!(
            s.value(&key, "pgbouncer_up", &[])? == 1.0,
            "{key}: pgbouncer_up is not 1"
        );
        ensure!(
            !s.values("pgbouncer_pools_client_waiting_connections", &[])
                .is_empty(),
            "{key}: no pgbouncer_pools_client_waiting_connections series"
        );
    }

    // A replica's lag rises while its WAL replay is paused and writes go on. Patroni resumes
    // a paused replay in its next loop (it takes any pause for PostgreSQL 14+'s pause on a
    // parameter change), so each attempt pauses, writes and scrapes at once.
    let paused = replicas[0].clone();
    let lag_url = vec![(
        format!("http://{leader}:{}/metrics", pg[0].1),
        "pgswarm_replica_replay_lag_bytes",
    )];
    let lag_of = |s: &BTreeMap<String, Scrape>| -> Result<f64> {
        s.values()
            .next()
            .ok_or_else(|| anyhow!("no scrape"))?
            .value(
                &leader,
                "pgswarm_replica_replay_lag_bytes",
                &[("replica", &paused)],
            )
    };
    let before =
        lag_of(&scrape_all(&cluster.dep, &leader, &lag_url, Duration::from_secs(30)).await?)?;
    let rw = cluster.rw.connect(Duration::from_secs(30)).await?;
    rw.batch_execute("CREATE TABLE IF NOT EXISTS metrics_lag (n int, pad text)")
        .await
        .context("creating a table through the router")?;
    let result = async {
        let mut seen = Vec::new();
        for _ in 0..10 {
            cluster
                .query_member(&paused, "SELECT pg_wal_replay_pause()")
                .await?;
            rw.batch_execute(
                "INSERT INTO metrics_lag SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
            )
            .await
            .context("writing through the router")?;
            let after = lag_of(
                &scrape_all(&cluster.dep, &leader, &lag_url, Duration::from_secs(30)).await?,
            )?;
            if after > before + 1_000_000.0 {
                return Ok(after);
            }
            seen.push(after);
        }
        bail!("{paused}'s replay lag did not rise while its replay was paused: {before} -> {seen:?} bytes")
    }
    .await;
    cluster
        .query_member(&paused, "SELECT pg_wal_replay_resume()")
        .await
        .ok();
    let after = result?;

    let waiting = pooler_waiting(cluster).await?;
    status_figures(cluster, &leader)?;

    let mut endpoints = BTreeMap::new();
    for (url, s) in &scrapes {
        endpoints.insert(url.clone(), (s.series.len(), s.millis));
    }
    let mut exporter_rss_kib = BTreeMap::new();
    for (key, _) in pg
        .iter()
        .cloned()
        .chain(metrics_port(cluster, Mode::Pooler)?)
    {
        let ps = cluster.dep.exec(&key, &["ps", "-eo", "rss=,args="]).await?;
        let rss: u64 = ps
            .lines()
            .filter(|l| l.contains("prometheus-"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        ensure!(rss > 0, "{key}: no exporter process in `ps`: {ps}");
        exporter_rss_kib.insert(key, rss);
    }
    let prometheus_targets = prometheus(cluster).await?;
    Ok(MetricsReport {
        leader,
        endpoints,
        exporter_rss_kib,
        lag: (paused, before, after),
        pooler_waiting: waiting,
        prometheus_targets,
    })
}

/// Clients held by PgBouncer while every server connection of the pool is busy: more
/// sessions each run a long statement than the pool (`pooler.pool_size`, small in this
/// scenario's spec) has connections. Returns the waiting clients the exporter reported.
async fn pooler_waiting(cluster: &PatroniCluster) -> Result<f64> {
    let Some((key, port)) = metrics_port(cluster, Mode::Pooler)?.into_iter().next() else {
        bail!("the stack has no pooler with metrics");
    };
    let leader = cluster.leader().await?;
    let url = vec![(format!("http://{key}:{port}/metrics"), "pgbouncer_up")];
    let mut clients = Vec::new();
    for _ in 0..POOL_SIZE + 3 {
        clients.push(cluster.pooler.connect(Duration::from_secs(30)).await?);
    }
    let sleepers: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { c.simple_query("SELECT pg_sleep(8)").await.map(|_| c) }))
        .collect();
    // PgBouncer hands out its reserve pool after reserve_pool_timeout (3 s): look before.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scraped = scrape_all(&cluster.dep, &leader, &url, Duration::from_secs(10)).await?;
    let s = scraped
        .values()
        .next()
        .ok_or_else(|| anyhow!("no scrape of {key}"))?;
    let waiting: f64 = s
        .values("pgbouncer_pools_client_waiting_connections", &[])
        .iter()
        .sum();
    let active: f64 = s
        .values("pgbouncer_pools_server_active_connections", &[])
        .iter()
        .sum();
    for sleeper in sleepers {
        sleeper
            .await
            .context("a pooled session's task")?
            .context("a pooled session's statement")?;
    }
    ensure!(
        waiting >= 1.0,
        "{} sessions ran a statement through a pool of {POOL_SIZE}, yet the exporter reports \
         {waiting} waiting clients ({active} active server connections)",
        POOL_SIZE + 3
    );
    Ok(waiting)
}

/// The pool size of the scenario's spec: small, so a few sessions exhaust it.
pub const POOL_SIZE: usize = 2;

/// `swarmctl status --output json` shows each data member's connections and the leader's WAL
/// archiver without Prometheus.
fn status_figures(cluster: &PatroniCluster, leader: &str) -> Result<()> {
    let out = Command::new(swarmctl_path())
        .args(["status", "--output", "json", "-f"])
        .arg(cluster.dep.spec_path())
        .output()
        .context("running swarmctl status")?;
    ensure!(
        out.status.success(),
        "swarmctl status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "swarmctl status printed {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    for member in &cluster.members {
        let row = status["members"]
            .as_array()
            .and_then(|m| m.iter().find(|r| r["member"] == member.as_str()))
            .ok_or_else(|| anyhow!("swarmctl status lists no {member}: {status}"))?;
        ensure!(
            row["connections"].as_u64().is_some_and(|c| c >= 1),
            "swarmctl status shows no connections for {member}: {row}"
        );
    }
    ensure!(
        status["archiver"][0]["member"] == leader,
        "swarmctl status shows no archiver figures for the leader {leader}: {status}"
    );
    Ok(())
}

/// Every Patroni member's postgres_exporter answers `pg_up 1` (with TLS required, its
/// loopback connection must go over TLS checked against the cluster CA). Returns how many.
pub async fn postgres_exporters_up(dep: &Deployment) -> Result<usize> {
    let members = dep.stack.services_in_mode(Mode::Patroni)?;
    let mut urls = Vec::new();
    for s in &members {
        let port = s
            .env
            .common
            .metrics_port
            .ok_or_else(|| anyhow!("{} has no metrics port", s.key))?;
        urls.push((
            format!("http://{}:{port}/metrics", s.key),
            "pgswarm_instance_is_primary",
        ));
    }
    let from = &members
        .first()
        .ok_or_else(|| anyhow!("the stack has no Patroni member"))?
        .key;
    let scrapes = scrape_all(dep, from, &urls, Duration::from_secs(90)).await?;
    for ((url, _), s) in urls.iter().zip(&members) {
        let scrape = scrapes
            .get(url)
            .ok_or_else(|| anyhow!("{url} was not scraped"))?;
        ensure!(
            scrape.value(&s.key, "pg_up", &[])? == 1.0,
            "{}: pg_up is not 1",
            s.key
        );
    }
    Ok(members.len())
}

/// The replication topology's exporters: each member answers `pg_up 1` and its role, and the
/// primary reports the replica's lag and its slot's retained WAL. Returns the members' scrape
/// times in milliseconds.
pub async fn replication_metrics(dep: &Deployment) -> Result<BTreeMap<String, f64>> {
    let primary = dep.stack.only_service(Mode::Primary)?;
    let replica = dep.stack.only_service(Mode::Replica)?;
    let mut urls = Vec::new();
    for s in [&primary, &replica] {
        let port = s
            .env
            .common
            .metrics_port
            .ok_or_else(|| anyhow!("{} has no metrics port", s.key))?;
        urls.push((
            format!("http://{}:{port}/metrics", s.key),
            "pgswarm_instance_is_primary",
        ));
    }
    let scrapes = scrape_all(dep, &primary.key, &urls, Duration::from_secs(90)).await?;
    let mut millis = BTreeMap::new();
    for ((url, _), (s, expected)) in urls.iter().zip([(&primary, 1.0), (&replica, 0.0)]) {
        let scrape = scrapes
            .get(url)
            .ok_or_else(|| anyhow!("{url} was not scraped"))?;
        ensure!(
            scrape.value(&s.key, "pg_up", &[])? == 1.0,
            "{}: pg_up is not 1",
            s.key
        );
        let role = scrape.value(&s.key, "pgswarm_instance_is_primary", &[])?;
        ensure!(
            role == expected,
            "{}: pgswarm_instance_is_primary is {role}",
            s.key
        );
        millis.insert(s.key.clone(), scrape.millis);
    }
    let on_primary = scrapes
        .get(&urls[0].0)
        .ok_or_else(|| anyhow!("no scrape of the primary"))?;
    on_primary.value(
        &primary.key,
        "pgswarm_replica_replay_lag_bytes",
        &[("replica", &replica.key)],
    )?;
    ensure!(
        !on_primary
            .values("pgswarm_slot_retained_wal_bytes", &[])
            .is_empty(),
        "{}: no pgswarm_slot_retained_wal_bytes series",
        primary.key
    );
    Ok(millis)
}

/// Removes the Prometheus container when the scenario ends, also on failure, so the stack's
/// network can be removed.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// Generates the Prometheus configuration with `swarmctl generate --prometheus`, checks it with
/// `promtool check config`, then runs Prometheus (Debian's binary from this host, in a container
/// of the image attached to the stack's overlay network, with the Docker socket mounted) and
/// waits until it lists one healthy target per endpoint of every task.
async fn prometheus(cluster: &PatroniCluster) -> Result<Vec<(String, String, String)>> {
    let dir = cluster
        .dep
        .spec_path()
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let config = dir.join("prometheus.yml");
    let out = Command::new(swarmctl_path())
        .arg("generate")
        .arg("-f")
        .arg(cluster.dep.spec_path())
        .arg("-o")
        .arg(dir.join("stack.again.yml"))
        .arg("--prometheus")
        .arg(&config)
        .output()
        .context("running swarmctl generate --prometheus")?;
    ensure!(
        out.status.success(),
        "swarmctl generate --prometheus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .context("cannot run promtool: install Debian's prometheus package (scripts/install-host-deps.sh does)")?;
    ensure!(
        check.status.success(),
        "promtool check config {} failed: {}{}",
        config.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let binary = which("prometheus")
        .ok_or_else(|| anyhow!("no prometheus binary: install Debian's prometheus package (scripts/install-host-deps.sh does)"))?;
    let name = format!("{}-prometheus", cluster.dep.name);
    let _ = docker(&["rm", "-f", &name]);
    let image = crate::image::ensure_image()?;
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &format!("{}_net", cluster.dep.name),
        "--user",
        "root",
        "-v",
        &format!("{}:/usr/local/bin/prometheus:ro", binary.display()),
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{}:/etc/prometheus.yml:ro", config.display()),
        "--entrypoint",
        "prometheus",
        &image,
        "--config.file=/etc/prometheus.yml",
        "--storage.tsdb.path=/tmp/prometheus",
        "--web.listen-address=127.0.0.1:9090",
    ])?;
    let _guard = Container(name.clone());
    let expected = cluster.dep.stack.metrics_endpoint_count()?;
    ensure!(expected > 0, "the stack declares no metrics endpoint");
    let query = r#"
import json, urllib.request
t = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets", timeout=5))
for x in t["data"]["activeTargets"]:
    print(x["labels"]["job"], x["labels"].get("member", "?"), x["health"])
"#;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let targets: Vec<(String, String, String)> =
            docker_async(&["exec", &name, "python3", "-c", query])
                .await
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    Some((
                        it.next()?.to_string(),
                        it.next()?.to_string(),
                        it.next()?.to_string(),
                    ))
                })
                .collect();
        let up = targets.iter().filter(|t| t.2 == "up").count();
        if targets.len() == expected && up == expected {
            info!(
                targets = up,
                "Prometheus discovered and scraped every endpoint"
            );
            return Ok(targets);
        }
        if Instant::now() > deadline {
            let logs = crate::docker::docker_all_output(&["logs", "--tail", "20", &name]).await;
            bail!("Prometheus lists {} targets ({up} up), expected {expected} up: {targets:?}\n{logs}", targets.len());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
