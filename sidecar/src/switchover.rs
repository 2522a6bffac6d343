//! A switchover that clients of the pooler see as a short wait, run from one container on the
//! cluster's network (`ctl switchover`), so that no step waits for a `docker exec` round trip:
//!
//! 1. every task of the pooler is paused over the network (PgBouncer's PAUSE: running
//!    transactions finish, new queries wait in PgBouncer);
//! 2. the leader's Patroni is asked to switch over (`POST /switchover`, the REST credentials
//!    read from this container's secret file);
//! 3. meanwhile, every [`POLL_EVERY`], a write is tried through the router's read-write port:
//!    the first one that commits on a server other than the former leader ends the wait;
//! 4. the pooler is resumed (RECONNECT, RESUME): the queued queries go to the new leader.
//!
//! Patroni itself decides and performs the switch (demote, release the leader key, the
//! candidate promotes), so this cannot make two primaries; the pause only holds clients.
//! Patroni's own answer comes after a poll of its own (one-second steps): it is awaited after
//! the pooler is resumed, and reported.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use pgswarm_contract::ctl::{CtlError, ErrorKind, SwitchoverPlan, SwitchoverReply};
use pgswarm_contract::Endpoint;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::http;
use crate::pooler;

/// How often a write through the router is tried while the leader changes.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// How long one such write may take, its connection included.
const ATTEMPT_PATIENCE: Duration = Duration::from_secs(2);

/// The statements of a write check, in one transaction: a temporary table dropped at commit,
/// so nothing remains, yet a standby or a read-only route refuses it.
pub const WRITE_CHECK_SQL: &str = "BEGIN; \
     CREATE TEMP TABLE pgswarm_write_check (at timestamptz) ON COMMIT DROP; \
     INSERT INTO pgswarm_write_check VALUES (now()); \
     SELECT coalesce(host(inet_server_addr()), 'local') AS server, \
            pg_is_in_recovery()::text AS in_recovery; \
     COMMIT";

/// The credentials a switchover needs, read by the caller from its secret files.
pub struct Credentials<'a> {
    pub superuser: &'a str,
    pub superuser_password: &'a str,
    pub rest_user: &'a str,
    pub rest_password: &'a str,
}

fn refused(message: String) -> CtlError {
    CtlError::new(ErrorKind::Refused, message)
}

fn statement(message: String) -> CtlError {
    CtlError::new(ErrorKind::Statement, message)
}

/// A connection to PostgreSQL at `host:port` as `user`, in the maintenance database.
fn config(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    connect_timeout: Duration,
) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .application_name("pgswarm-switchover")
        .connect_timeout(connect_timeout);
    config
}

/// One write through `host:port`: the address of the server that committed it.
pub async fn write_once(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    patience: Duration,
) -> anyhow::Result<IpAddr> {
    let config = config(host, port, user, password, patience);
    let attempt = async {
        let client = crate::tls::connect(&config).await?;
        let messages = client.simple_query(WRITE_CHECK_SQL).await?;
        let server = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get("server").map(str::to_string),
            _ => None,
        });
        Ok::<_, tokio_postgres::Error>(server)
    };
    let server = tokio::time::timeout(patience, attempt)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} ms", patience.as_millis()))??
        .ok_or_else(|| anyhow::anyhow!("the write check returned no row"))?;
    server
        .parse()
        .map_err(|_| anyhow::anyhow!("the write was taken by {server:?}, not a TCP server"))
}

/// `CHECKPOINT` on `host:port` as the superuser.
async fn checkpoint(
    host: &str,
    port: u16,
    creds: &Credentials<'_>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let config = config(
        host,
        port,
        creds.superuser,
        creds.superuser_password,
        Duration::from_secs(3),
    );
    tokio::time::timeout(timeout, async {
        let client = crate::tls::connect(&config).await?;
        client.simple_query("CHECKPOINT").await?;
        Ok::<_, tokio_postgres::Error>(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {} s", timeout.as_secs()))??;
    Ok(())
}

/// What Patroni answered to `POST /switchover`.
type PatroniAnswer = anyhow::Result<(u16, String)>;

/// Runs the switchover `plan`; see the module's text.
pub async fn run(
    plan: &SwitchoverPlan,
    creds: &Credentials<'_>,
) -> Result<SwitchoverReply, CtlError> {
    let timeout = Duration::from_secs(plan.timeout_secs.max(1));
    let leader_host = plan.leader_host.as_deref().unwrap_or(&plan.leader);
    let old: Vec<IpAddr> = if plan.leader_addresses.is_empty() {
        pooler::task_addresses(&plan.leader, plan.pg_port).await
    } else {
        plan.leader_addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    };
    if old.is_empty() {
        return Err(CtlError::new(
            ErrorKind::Unreachable,
            format!(
                "the leader {} does not resolve on the cluster's network: is its task running? \
                 nothing was paused or switched",
                plan.leader
            ),
        ));
    }
    // 0. A checkpoint now, while clients still run: Patroni's demote starts with one, and
    // with the pooler paused it would hold them for as long as the dirty buffers take.
    let started = Instant::now();
    match checkpoint(leader_host, plan.pg_port, creds, timeout).await {
        Ok(()) => info!(
            ms = started.elapsed().as_millis() as u64,
            leader = %plan.leader,
            "checkpointed the leader before the pause"
        ),
        Err(e) => warn!(error = %format!("{e:#}"), leader = %plan.leader,
            "cannot checkpoint the leader before the pause; Patroni's own checkpoint will be longer"),
    }

    // 1. Pause the pooler.
    let mut paused = Vec::new();
    for p in &plan.poolers {
        match pooler::pause_tasks(
            &p.host,
            p.port,
            creds.superuser,
            creds.superuser_password,
            Duration::from_secs(plan.pause_wait_secs),
        )
        .await
        {
            Ok(tasks) => paused.push((p, tasks)),
            Err(e) => {
                let kind = match e {
                    pooler::AdminError::Unreachable { .. } => ErrorKind::Unreachable,
                    _ => ErrorKind::Statement,
                };
                let mut message = format!(
                    "cannot pause the pooler {}: {e}; nothing was switched",
                    p.host
                );
                if let Err(r) = resume_all(&paused, creds).await {
                    message.push_str(&format!("; {r}"));
                }
                return Err(CtlError::new(kind, message));
            }
        }
    }
    let paused_tasks: usize = paused.iter().map(|(_, t)| t.len()).sum();
    let paused_at = Instant::now();
    if paused_tasks > 0 {
        info!(tasks = paused_tasks, "pooler paused for the switchover");
    }
    let mut patroni: JoinSet<PatroniAnswer> = JoinSet::new();

    // 2. Ask Patroni.
    let body = match &plan.candidate {
        Some(c) => serde_json::json!({"leader": plan.leader, "candidate": c}),
        None => serde_json::json!({"leader": plan.leader}),
    }
    .to_string();
    {
        let (host, port) = (leader_host.to_string(), plan.rest_port);
        let (user, password) = (creds.rest_user.to_string(), creds.rest_password.to_string());
        let body = body.clone();
        patroni.spawn(async move {
            http::send_json(
                "POST",
                &host,
                port,
                "/switchover",
                Some((&user, &password)),
                &body,
                timeout,
            )
            .await
        });
    }

    // 3. Wait for a write through the router on another server.
    let pause_cap = Duration::from_secs(plan.max_pause_secs.max(1)).min(timeout);
    let mut attempts: JoinSet<anyhow::Result<IpAddr>> = JoinSet::new();
    let mut tick = tokio::time::interval(POLL_EVERY);
    let mut answer: Option<PatroniAnswer> = None;
    let mut last_error = String::from("no write tried yet");
    let outcome: Result<IpAddr, CtlError> = loop {
        tokio::select! {
            _ = tick.tick() => {
                if paused_at.elapsed() >= pause_cap {
                    break Err(statement(format!(
                        "no write committed on a new leader through {}:{} within {} s (last: \
                         {last_error}); Patroni: {}",
                        plan.write.host, plan.write.port, pause_cap.as_secs(),
                        describe(answer.as_ref())
                    )));
                }
                if attempts.len() < 20 {
                    let (host, port) = (plan.write.host.clone(), plan.write.port);
                    let (user, password) =
                        (creds.superuser.to_string(), creds.superuser_password.to_string());
                    attempts.spawn(async move {
                        write_once(&host, port, &user, &password, ATTEMPT_PATIENCE).await
                    });
                }
            }
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(server)) if !old.contains(&server) => break Ok(server),
                Ok(Ok(_)) => last_error = format!("the write went to the former leader {}", plan.leader),
                Ok(Err(e)) => last_error = format!("{e:#}"),
                Err(e) => last_error = format!("{e}"),
            },
            Some(done) = patroni.join_next(), if answer.is_none() => {
                let a = done.unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
                let refused_now = match &a {
                    Ok((code, _)) => !(200..300).contains(code),
                    Err(_) => true,
                };
                if refused_now {
                    break Err(refused(format!(
                        "Patroni refused the switchover from {}: {}",
                        plan.leader,
                        describe(Some(&a))
                    )));
                }
                answer = Some(a);
            }
        }
    };
    attempts.abort_all();

    // 4. Resume, whatever happened.
    let resumed = resume_all(&paused, creds).await;
    let paused_ms = (paused_tasks > 0).then(|| paused_at.elapsed().as_millis() as u64);
    let server = outcome?;
    resumed.map_err(|e| {
        statement(format!(
            "the leader changed (a write committed on {server}), but {e}; the pooler's sidecar \
             resumes it by itself within {} s",
            pooler::UNRECORDED_PAUSE_MAX.as_secs()
        ))
    })?;
    let switched_ms = paused_at.elapsed().as_millis() as u64;
    if let Some(ms) = paused_ms {
        info!(paused_ms = ms, server = %server, "pooler resumed: writes commit on the new leader");
    }
    // Patroni's own answer, for the record.
    let answer = match answer {
        Some(a) => a,
        None => match tokio::time::timeout(timeout, patroni.join_next()).await {
            Ok(Some(done)) => done.unwrap_or_else(|e| Err(anyhow::anyhow!("{e}"))),
            _ => Err(anyhow::anyhow!("no answer within {} s", timeout.as_secs())),
        },
    };
    Ok(SwitchoverReply {
        old_leader: plan.leader.clone(),
        server: server.to_string(),
        paused_ms,
        paused_tasks,
        switched_ms,
        patroni: describe(Some(&answer)),
    })
}

/// Resumes every paused pooler task (each one tried); the failures, named.
async fn resume_all(
    paused: &[(&Endpoint, Vec<pooler::PausedTask>)],
    creds: &Credentials<'_>,
) -> Result<(), String> {
    let mut failed = Vec::new();
    for (p, tasks) in paused {
        if let Err(e) = pooler::resume_tasks(tasks, creds.superuser, creds.superuser_password).await
        {
            warn!(pooler = %p.host, error = %e, "cannot resume the pooler");
            failed.push(format!("cannot resume the pooler {}: {e}", p.host));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

fn describe(answer: Option<&PatroniAnswer>) -> String {
    match answer {
        None => "no answer yet".into(),
        Some(Ok((code, body))) => format!("HTTP {code}: {}", body.trim()),
        Some(Err(e)) => format!("{e:#}"),
    }
}
