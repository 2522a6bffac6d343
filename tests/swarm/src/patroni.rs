//! A deployed Patroni cluster as the scenarios see it: the members by `patronictl list` run
//! inside a member container, and the router and pooler endpoints on the test host.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pgswarm_contract::ctl::{QueryReply, Request, Target};
use pgswarm_contract::{Mode, Role, Secret};
use serde_json::Value;
use tracing::info;

use crate::deployment::Deployment;
use crate::docker::docker_async;
use crate::pg::{wait_until, Check, Endpoint};

/// Where the sidecar renders patroni.yml inside a member (the contract's path, for a member
/// with the default run directory, as every generated stack has).
pub fn patroni_yml() -> String {
    pgswarm_contract::Common::new("", "").patroni_config_path()
}

/// One row of `patronictl list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub name: String,
    /// `Leader`, `Sync Standby`, `Quorum Standby`, `Replica`, ...
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`, ...
    pub state: String,
    pub timeline: Option<u64>,
}

impl MemberState {
    pub fn is_leader(&self) -> bool {
        self.role == "Leader" && self.state == "running"
    }

    pub fn is_streaming_replica(&self) -> bool {
        self.role != "Leader" && self.state == "streaming"
    }
}

/// Parses `patronictl list -f json`.
pub fn parse_list(json: &str) -> Result<Vec<MemberState>> {
    let rows: Vec<Value> =
        serde_json::from_str(json.trim()).context("patronictl list -f json is not a JSON list")?;
    rows.iter()
        .map(|row| {
            let text = |k: &str| row.get(k).and_then(Value::as_str).map(String::from);
            Ok(MemberState {
                name: text("Member").ok_or_else(|| anyhow!("a row has no Member: {row}"))?,
                role: text("Role").unwrap_or_default(),
                state: text("State").unwrap_or_default(),
                timeline: row.get("TL").and_then(Value::as_u64),
            })
        })
        .collect()
}

/// `patronictl list` in one line: `pg1 Leader running TL2, pg2 Replica streaming TL2`.
pub fn describe(list: &[MemberState]) -> String {
    if list.is_empty() {
        return "patronictl lists no member".into();
    }
    list.iter()
        .map(|m| {
            let tl = m.timeline.map(|t| format!(" TL{t}")).unwrap_or_default();
            format!("{} {} {}{tl}", m.name, m.role, m.state)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Patroni topology deployed for a scenario.
#[derive(Debug)]
pub struct PatroniCluster {
    pub dep: Deployment,
    /// Data member service keys.
    pub members: Vec<String>,
    /// Whether the stack runs Patroni in synchronous mode.
    pub synchronous: bool,
    /// Router read-write port, router read-only port and pooler, from the test host.
    pub rw: Endpoint,
    pub ro: Endpoint,
    pub pooler: Endpoint,
    /// Time from `docker stack deploy` to a ready cluster.
    pub ready_after: Duration,
}

impl PatroniCluster {
    /// Deploys a Patroni spec and waits (up to `timeout`) until every service is healthy, one
    /// leader and streaming replicas are listed, and a write through the router succeeds.
    pub async fn deploy(name: &str, spec: &str, timeout: Duration) -> Result<PatroniCluster> {
        let publish = |stack: &crate::stack::Stack| -> Result<Vec<(String, u16)>> {
            let router = stack.only_service(Mode::Router)?;
            let pooler = stack.only_service(Mode::Pooler)?;
            let mut out = Vec::new();
            if let Role::Router {
                rw_port, ro_port, ..
            } = router.env.role
            {
                out.push((router.key.clone(), rw_port));
                out.push((router.key.clone(), ro_port));
            }
            if let Role::Pooler { port, .. } = pooler.env.role {
                out.push((pooler.key.clone(), port));
            }
            Ok(out)
        };
        let dep = Deployment::deploy(name, spec, &publish)?;
        let router = dep.stack.only_service(Mode::Router)?;
        let pooler = dep.stack.only_service(Mode::Pooler)?;
        let (
            Role::Router {
                rw_port, ro_port, ..
            },
            Role::Pooler { port, .. },
        ) = (&router.env.role, &pooler.env.role)
        else {
            bail!("router or pooler service has an unexpected role");
        };
        let members = dep.data_members()?;
        let patroni = dep.stack.services_in_mode(Mode::Patroni)?;
        let first = patroni
            .first()
            .ok_or_else(|| anyhow!("the stack has no Patroni member"))?;
        let synchronous = matches!(
            first.env.role,
            Role::Patroni { synchronous_mode, .. }
                if synchronous_mode != pgswarm_contract::SynchronousMode::Off
        );
        let user = first.env.common.superuser.clone();
        let password = dep.password(Secret::SuperuserPassword)?;
        // With TLS on, the test client trusts the cluster CA only and checks the host name
        // (the server certificate names 127.0.0.1 too).
        let ca = dep
            .tls_ca
            .as_deref()
            .map(crate::pg::ClusterCa::from_pem)
            .transpose()?;
        let endpoint = |key: &str, target: u16| -> Result<Endpoint> {
            Ok(
                Endpoint::new(dep.host_port(key, target)?, &user, password.clone())
                    .with_tls(ca.clone()),
            )
        };
        let rw = endpoint(&router.key, *rw_port)?;
        let ro = endpoint(&router.key, *ro_port)?;
        let pooler = endpoint(&pooler.key, *port)?;
        let mut cluster = PatroniCluster {
            dep,
            members,
            synchronous,
            rw,
            ro,
            pooler,
            ready_after: Duration::ZERO,
        };
        let deadline = Instant::now() + timeout;
        cluster.dep.wait_healthy(timeout).await?;
        cluster
            .wait_ready(deadline.saturating_duration_since(Instant::now()))
            .await?;
        cluster.ready_after = cluster.dep.deployed_at.elapsed();
        info!(stack = %cluster.dep.name, ready_after = ?cluster.ready_after, "cluster ready");
        Ok(cluster)
    }

    /// `patronictl list` as seen from the first member (other than `avoid`) that answers.
    pub async fn list(&self, avoid: Option<&str>) -> Result<Vec<MemberState>> {
        let mut last = anyhow!("no member to ask");
        for key in self.members.iter().filter(|k| Some(k.as_str()) != avoid) {
            let Some(container) = self.dep.container(key).await? else {
                continue;
            };
            let yml = patroni_yml();
            match docker_async(&[
                "exec",
                &container,
                "patronictl",
                "-c",
                &yml,
                "list",
                "-f",
                "json",
            ])
            .await
            {
                Ok(out) => return parse_list(&out),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The current leader's member name.
    pub async fn leader(&self) -> Result<String> {
        let list = self.list(None).await?;
        let leaders: Vec<&MemberState> = list.iter().filter(|m| m.is_leader()).collect();
        match leaders.as_slice() {
            [one] => Ok(one.name.clone()),
            _ => bail!("expected one running leader, patronictl lists: {list:?}"),
        }
    }

    /// Done when every member is listed, one is the running leader, the others stream, one of
    /// them as sync standby in synchronous mode; else what patronictl shows.
    pub async fn is_ready(&self) -> Result<Check> {
        let list = self.list(None).await?;
        let leaders = list.iter().filter(|m| m.is_leader()).count();
        let streaming = list.iter().filter(|m| m.is_streaming_replica()).count();
        let sync_ok = !self.synchronous || list.iter().any(|m| m.role.contains("Sync"));
        let ready = list.len() == self.members.len()
            && leaders == 1
            && streaming + 1 == self.members.len()
            && sync_ok;
        Ok(if ready {
            Check::Done
        } else {
            Check::Pending(describe(&list))
        })
    }

    /// Waits until [`Self::is_ready`] and a write through the router's read-write port works.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        wait_until(
            "one Patroni leader and streaming replicas (patronictl list)",
            timeout,
            || self.is_ready(),
        )
        .await?;
        let left = timeout.saturating_sub(started.elapsed());
        wait_until(
            "a write through the router's read-write port",
            left,
            || async {
                let client = self.rw.connect_once(Duration::from_secs(3)).await?;
                client
                    .batch_execute(
                        "CREATE TEMP TABLE ready_probe (x int); INSERT INTO ready_probe VALUES (1)",
                    )
                    .await?;
                Ok(true)
            },
        )
        .await?;
        Ok(started.elapsed())
    }

    /// Runs `sql` on member `key`'s own PostgreSQL, from inside its container
    /// (`pgswarm-sidecar ctl query`, with the superuser password from the member's secret
    /// file); every value as text.
    pub async fn query_member(&self, key: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let service = self
            .dep
            .stack
            .services()?
            .into_iter()
            .find(|s| s.key == key)
            .ok_or_else(|| anyhow!("no member {key} in the stack"))?;
        let Role::Patroni { postgres, .. } = &service.env.role else {
            bail!("service {key} is not a Patroni member");
        };
        let argv = Request::Query {
            target: Target::new("127.0.0.1", postgres.port),
            sql: sql.to_string(),
        }
        .argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.dep.exec(key, &argv).await?;
        let reply: QueryReply = serde_json::from_str(out.trim())
            .with_context(|| format!("{key}: ctl query printed no reply: {}", out.trim()))?;
        Ok(reply.rows)
    }

    /// What member `key`'s own PostgreSQL says of itself: in recovery, and the status of its
    /// WAL receiver (`streaming` on a replica that follows the leader).
    pub async fn member_replication(&self, key: &str) -> Result<(bool, Option<String>)> {
        let rows = self
            .query_member(
                key,
                "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)",
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| anyhow!("{key}: no answer to pg_is_in_recovery()"))?;
        let in_recovery = matches!(row.first().and_then(|v| v.as_deref()), Some("t" | "true"));
        Ok((in_recovery, row.get(1).cloned().flatten()))
    }

    /// Done when member `key` answers, from its own container, as the read-write leader or
    /// as a replica that streams.
    pub async fn member_serves(&self, key: &str) -> Result<Check> {
        let (in_recovery, receiver) = self.member_replication(key).await?;
        Ok(
            if !in_recovery || receiver.as_deref() == Some("streaming") {
                Check::Done
            } else {
                Check::Pending(format!(
                    "{key}: in recovery, WAL receiver {}",
                    receiver.as_deref().unwrap_or("not running")
                ))
            },
        )
    }

    /// Addresses of a member container on its networks (what `inet_server_addr()` returns on
    /// a connection that reached it).
    pub async fn member_addresses(&self, key: &str) -> Result<Vec<String>> {
        let container = self
            .dep
            .container(key)
            .await?
            .ok_or_else(|| anyhow!("member {key} has no running container"))?;
        let out = docker_async(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &container,
        ])
        .await?;
        Ok(out.split_whitespace().map(String::from).collect())
    }

    /// The member whose container has `address`.
    pub async fn member_with_address(&self, address: &str) -> Result<String> {
        for key in &self.members {
            if self
                .member_addresses(key)
                .await?
                .iter()
                .any(|a| a == address)
            {
                return Ok(key.clone());
            }
        }
        bail!("no member container has address {address}")
    }
}
