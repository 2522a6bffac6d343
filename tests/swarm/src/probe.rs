//! A write probe: one client inserting a row through an endpoint every ~20 ms and recording
//! every acknowledged commit, for measuring write gaps and counting lost commits.
//!
//! Each attempt inserts a fresh id in autocommit mode; an id is *acknowledged* only when the
//! server answered the INSERT's commit. Anything else (connect error, statement error, no answer
//! within the statement deadline) counts as a client error, and the connection is dropped and
//! opened again. Afterwards, [`ProbeLog::missing`] compares the acknowledged ids with the rows
//! the table really holds: an acknowledged id that is not there is a lost commit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::pg::Endpoint;

/// Interval between two writes.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// How long one write may take before it counts as failed.
const STATEMENT_DEADLINE: Duration = Duration::from_secs(2);

/// An acknowledged commit.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: i64,
    pub at: Instant,
}

/// What the probe saw.
#[derive(Debug, Default)]
pub struct ProbeLog {
    pub acks: Vec<Ack>,
    /// Failed attempts: when, and the error.
    pub errors: Vec<(Instant, String)>,
}

impl ProbeLog {
    /// The longest time between two consecutive acknowledged commits.
    pub fn max_gap(&self) -> Duration {
        self.acks
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at))
            .max()
            .unwrap_or_default()
    }

    /// The longest gap that ends after `since` (the disruption caused by an event at `since`).
    pub fn gap_after(&self, since: Instant) -> Duration {
        self.acks
            .windows(2)
            .filter(|w| w[1].at > since)
            .map(|w| w[1].at.duration_since(w[0].at))
            .max()
            .unwrap_or_default()
    }

    /// Acknowledged commits after `since`.
    pub fn acks_after(&self, since: Instant) -> usize {
        self.acks.iter().filter(|a| a.at > since).count()
    }

    /// Client errors after `since`.
    pub fn errors_after(&self, since: Instant) -> usize {
        self.errors.iter().filter(|(at, _)| *at > since).count()
    }

    /// Acknowledged ids missing from `table`, read through `client` (which must reach the
    /// current primary).
    pub async fn missing(&self, client: &Client, table: &str) -> Result<Vec<i64>> {
        let rows = client
            .query(&format!("SELECT id FROM {table}"), &[])
            .await
            .with_context(|| format!("cannot read {table}"))?;
        let present: BTreeSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        Ok(self.missing_from(&present, None))
    }

    /// Acknowledged ids (those acknowledged before `before`, when given) not in `present`.
    pub fn missing_from(&self, present: &BTreeSet<i64>, before: Option<Instant>) -> Vec<i64> {
        self.acks
            .iter()
            .filter(|a| match before {
                Some(t) => a.at < t,
                None => true,
            })
            .map(|a| a.id)
            .filter(|id| !present.contains(id))
            .collect()
    }

    /// The distinct error messages with their counts, for a report.
    pub fn error_summary(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for (_, e) in &self.errors {
            match out.iter_mut().find(|(m, _)| m == e) {
                Some((_, n)) => *n += 1,
                None => out.push((e.clone(), 1)),
            }
        }
        out
    }
}

/// A running probe.
pub struct WriteProbe {
    stop: Arc<AtomicBool>,
    /// When the last commit was acknowledged, readable while the probe runs.
    last_ack: Arc<Mutex<Option<Instant>>>,
    task: JoinHandle<ProbeLog>,
}

impl WriteProbe {
    /// Creates `table` (id bigint primary key) through `endpoint` and starts writing to it;
    /// a write unanswered within 2 s counts as failed.
    pub async fn start(endpoint: Endpoint, table: &str) -> Result<WriteProbe> {
        Self::start_patient(endpoint, table, STATEMENT_DEADLINE).await
    }

    /// The same, a write failing only when unanswered within `deadline`: a client that waits
    /// (through a paused pooler) rather than giving up.
    pub async fn start_patient(
        endpoint: Endpoint,
        table: &str,
        deadline: Duration,
    ) -> Result<WriteProbe> {
        let client = endpoint.connect(Duration::from_secs(60)).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} \
                 (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ))
            .await
            .with_context(|| format!("cannot create {table}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let insert = format!("INSERT INTO {table} (id) VALUES ($1)");
        let last_ack = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run(
            endpoint,
            insert,
            Some(client),
            stop.clone(),
            last_ack.clone(),
            deadline,
        ));
        Ok(WriteProbe {
            stop,
            last_ack,
            task,
        })
    }

    /// When the last commit was acknowledged, if any was.
    pub async fn last_ack(&self) -> Option<Instant> {
        self.last_ack.lock().ok().and_then(|l| *l)
    }

    /// Stops writing and returns the log.
    pub async fn stop(self) -> ProbeLog {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

async fn run(
    endpoint: Endpoint,
    insert: String,
    mut client: Option<Client>,
    stop: Arc<AtomicBool>,
    last_ack: Arc<Mutex<Option<Instant>>>,
    deadline: Duration,
) -> ProbeLog {
    let mut log = ProbeLog::default();
    let mut ticker = tokio::time::interval(WRITE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_id: i64 = 1;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let c = match client.take() {
            Some(c) => c,
            None => match endpoint.connect_once(deadline).await {
                Ok(c) => c,
                Err(e) => {
                    log.errors.push((Instant::now(), short(&format!("{e:#}"))));
                    continue;
                }
            },
        };
        let id = next_id;
        next_id += 1;
        match tokio::time::timeout(deadline, c.execute(insert.as_str(), &[&id])).await {
            Ok(Ok(_)) => {
                let at = Instant::now();
                log.acks.push(Ack { id, at });
                if let Ok(mut last) = last_ack.lock() {
                    *last = Some(at);
                }
                client = Some(c);
            }
            Ok(Err(e)) => {
                let e = anyhow::Error::from(e);
                log.errors.push((Instant::now(), short(&format!("{e:#}"))));
            }
            Err(_) => log.errors.push((
                Instant::now(),
                format!("no answer within {} s", deadline.as_secs()),
            )),
        }
    }
    log
}

/// The first line of an error, without the volatile parts that make every message unique.
fn short(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.chars().take(160).collect()
}
