//! A dead leader's key released at once, without ever releasing a live leader's.
//!
//! Patroni's leader key lives until its lease expires (ttl >= 20 s) when the leader is killed
//! rather than stopped. Every Patroni member's sidecar (PID 1 of its container) therefore
//! serves a *liveness port*: a TCP listener that accepts connections and holds them, and
//! publishes `host:port` in Patroni's member key (the tag [`TAG`]). Every other member's
//! sidecar keeps one connection open to the current leader's liveness port. When that
//! connection is closed *by the leader's kernel* (end of stream, a reset, or a refused
//! connect: nothing listens there any more), the leader's sidecar has exited, and since it is
//! PID 1 of its container, every process of that container (Patroni, every PostgreSQL
//! process) has been killed with it. The watcher then deletes the leader key in an etcd
//! transaction conditioned on the key still holding the same value *and* the same
//! `mod_revision` it read, so a key that was retaken meanwhile (by a new leader, or by the same
//! member's restarted task) is never removed. The deletion wakes every replica through its etcd
//! watch and Patroni elects the healthiest one as usual (in synchronous mode, only the
//! synchronous standby may be promoted, so no acknowledged commit is lost).
//!
//! A timeout is never taken as death: a silent peer may be paused or partitioned away, and only
//! the lease (ttl) may end its leadership then. On a clean stop the sidecar exits only after
//! Patroni has stopped, and Patroni deletes its own key first.

use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pgswarm_contract::Endpoint;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::http;

/// The Patroni tag under which a member publishes its liveness address (`host:port`).
pub const TAG: &str = "pgswarm_liveness";

/// The most connections the liveness port holds at once (one per other member is needed).
const MAX_HELD: usize = 256;
/// How long a connect to a leader's liveness port may take before it counts as "unknown".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the watcher checks that the leader key still names the leader it watches.
const RECHECK: Duration = Duration::from_millis(1000);
/// Timeout of one request to etcd.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the liveness port on `listener` forever: every accepted connection is held open
/// until the peer closes it. Nothing is ever sent; the connection's end is the message.
pub async fn serve(listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_HELD));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "liveness port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "liveness port: too many connections held, refusing one");
            continue;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 64];
            // Held until the peer closes or resets it.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

/// Where Patroni keeps this cluster's keys in etcd (its default namespace `/service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `/service/<scope>/` or, in Citus mode, `/service/<scope>/<group>/`.
    prefix: String,
}

impl Keys {
    pub fn new(scope: &str, citus_group: Option<u32>) -> Self {
        let prefix = match citus_group {
            Some(group) => format!("/service/{scope}/{group}/"),
            None => format!("/service/{scope}/"),
        };
        Keys { prefix }
    }

    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }
}

/// One key as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// etcd's JSON gateway (v3 API over plain HTTP), tried endpoint by endpoint. Names are
/// resolved on every request, so a replaced etcd task is found at its new address.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: Vec<Endpoint>,
}

fn int_field(v: &Value, name: &str) -> i64 {
    match v.get(name) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl Etcd {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Etcd { endpoints }
    }

    async fn call(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = body.to_string();
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            match http::post_json(&ep.host, ep.port, path, &body, ETCD_TIMEOUT).await {
                Ok((200, answer)) => {
                    return serde_json::from_str(&answer)
                        .with_context(|| format!("etcd {ep} answered {path} with {answer:?}"))
                }
                Ok((code, answer)) => errors.push(format!("{ep}: {code} {}", answer.trim())),
                Err(e) => errors.push(format!("{ep}: {e:#}")),
            }
        }
        bail!("no etcd endpoint answered {path}: {}", errors.join("; "))
    }

    /// The key `key`, or `None` when it does not exist.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<KeyValue>> {
        let answer = self
            .call("/v3/kv/range", &json!({ "key": B64.encode(key) }))
            .await?;
        let Some(kv) = answer
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        else {
            return Ok(None);
        };
        let value = kv.get("value").and_then(Value::as_str).unwrap_or_default();
        let value = B64
            .decode(value)
            .with_context(|| format!("etcd's value of {key} is not base64"))?;
        Ok(Some(KeyValue {
            value: String::from_utf8_lossy(&value).into_owned(),
            mod_revision: int_field(kv, "mod_revision"),
            lease: int_field(kv, "lease"),
        }))
    }

    /// Writes `key` (no lease). Used by tests to stand in for a leader.
    pub async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.call(
            "/v3/kv/put",
            &json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        )
        .await?;
        Ok(())
    }

    /// Deletes `key` only if it still holds `seen` (same value, same `mod_revision`): true
    /// when it was deleted, false when it had changed or was gone.
    pub async fn delete_if_unchanged(&self, key: &str, seen: &KeyValue) -> anyhow::Result<bool> {
        let k = B64.encode(key);
        let answer = self
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [
                        { "key": k, "target": "VALUE", "result": "EQUAL",
                          "value": B64.encode(&seen.value) },
                        { "key": k, "target": "MOD", "result": "EQUAL",
                          "mod_revision": seen.mod_revision.to_string() },
                    ],
                    "success": [ { "request_delete_range": { "key": k } } ],
                }),
            )
            .await?;
        // proto3 JSON leaves out a false `succeeded`.
        Ok(answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false))
    }
}

/// How the watch of a leader's liveness port ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEnd {
    /// The leader's kernel closed the connection or refused it: its sidecar is gone.
    Gone(&'static str),
    /// Nothing is known (a timeout, an unreachable address, another error): never acted on.
    Unknown(String),
    /// The caller's `until` future finished first (e.g. the leader key changed).
    Stopped,
}

/// Connects to `host:port` and waits until the peer's kernel ends the connection, or `until`
/// finishes. Only a refused connect, an end of stream or a reset count as [`PeerEnd::Gone`].
pub async fn watch_peer(host: &str, port: u16, until: impl Future<Output = ()>) -> PeerEnd {
    tokio::pin!(until);
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)));
    let mut stream = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                return PeerEnd::Gone("connection refused")
            }
            Ok(Err(e)) => return PeerEnd::Unknown(format!("connect: {e}")),
            Err(_) => return PeerEnd::Unknown("connect timed out".into()),
        },
        () = &mut until => return PeerEnd::Stopped,
    };
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => return PeerEnd::Gone("connection closed by the peer"),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return PeerEnd::Gone("connection reset by the peer")
                }
                Err(e) => return PeerEnd::Unknown(format!("read: {e}")),
            },
            () = &mut until => return PeerEnd::Stopped,
        }
    }
}

/// The liveness address a member publishes in its Patroni member key, if any.
pub fn liveness_address(member_json: &str) -> Option<(String, u16)> {
    let v: Value = serde_json::from_str(member_json).ok()?;
    let addr = v.get("tags")?.get(TAG)?.as_str()?;
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Watches the leader of this Patroni cluster and releases its key when its sidecar is gone.
/// `me` is this member's name (its own leadership is never watched). Runs forever.
pub async fn watch_leader(etcd: Etcd, keys: Keys, me: String) {
    let leader_key = keys.leader();
    let mut last_note = String::new();
    let mut note = |text: String| {
        if text != last_note {
            debug!("{text}");
            last_note = text;
        }
    };
    loop {
        let seen = match etcd.get(&leader_key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => {
                note("no leader key".into());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                note(format!("cannot read the leader key: {e:#}"));
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        if seen.value == me {
            note("this member leads".into());
            tokio::time::sleep(RECHECK).await;
            continue;
        }
        let address = match etcd.get(&keys.member(&seen.value)).await {
            Ok(Some(member)) => liveness_address(&member.value),
            Ok(None) => None,
            Err(e) => {
                note(format!("cannot read member {}: {e:#}", seen.value));
                None
            }
        };
        let Some((host, port)) = address else {
            note(format!(
                "leader {} publishes no liveness address: its death is left to the lease",
                seen.value
            ));
            tokio::time::sleep(RECHECK).await;
            continue;
        };
        info!(leader = %seen.value, liveness = %format!("{host}:{port}"), "watching the leader's sidecar");
        let changed = key_changes(&etcd, &leader_key, &seen);
        match watch_peer(&host, port, changed).await {
            PeerEnd::Stopped => {}
            PeerEnd::Unknown(why) => {
                note(format!(
                    "leader {}'s liveness port at {host}:{port}: {why} (nothing released)",
                    seen.value
                ));
                tokio::time::sleep(RECHECK).await;
            }
            PeerEnd::Gone(how) => {
                // The member key first: the leader key's deletion wakes every replica, which
                // reads the members at once for its leader race; a dead member still listed
                // there costs the race Patroni's 2 s request timeout (measured: the member key
                // removed 60 ms after the leader key was too late for the winner's read).
                forget_member(&etcd, &keys.member(&seen.value), &host, port).await;
                release(&etcd, &leader_key, &seen, how).await;
            }
        }
    }
}

/// Resolves once the leader key no longer holds `seen` (or cannot be read for a while: the
/// watch then starts over from a fresh read).
async fn key_changes(etcd: &Etcd, key: &str, seen: &KeyValue) {
    loop {
        tokio::time::sleep(RECHECK).await;
        match etcd.get(key).await {
            Ok(Some(kv)) if kv == *seen => continue,
            Ok(_) => return,
            Err(_) => continue,
        }
    }
}

/// Deletes the leader key if it still holds `seen`, retrying while etcd does not answer
/// (for up to a few seconds: past that the lease will have done it). True when this call
/// deleted it.
async fn release(etcd: &Etcd, key: &str, seen: &KeyValue, how: &str) -> bool {
    for _ in 0..10 {
        match etcd.delete_if_unchanged(key, seen).await {
            Ok(true) => {
                warn!(leader = %seen.value, mod_revision = seen.mod_revision, reason = how,
                    "the leader's sidecar is gone (its container has exited): released its leader key");
                return true;
            }
            Ok(false) => {
                info!(leader = %seen.value, reason = how,
                    "the leader's sidecar is gone, but the leader key changed meanwhile: left as is");
                return false;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot release the dead leader's key yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    false
}

/// Deletes the dead leader's member key too, if it still describes the incarnation whose
/// liveness port closed (`host:port`). Otherwise every replica's leader race would ask the
/// dead member's REST API first and wait Patroni's 2 s request timeout for an address that no
/// longer answers. A restarted task of the same member publishes another liveness address, so
/// its key is never removed; and a live member rewrites its key on its next loop anyway.
async fn forget_member(etcd: &Etcd, key: &str, host: &str, port: u16) {
    let current = match etcd.get(key).await {
        Ok(Some(kv)) => kv,
        Ok(None) => return,
        Err(e) => {
            debug!(error = %format!("{e:#}"), "cannot read the dead leader's member key");
            return;
        }
    };
    if liveness_address(&current.value) != Some((host.to_string(), port)) {
        return;
    }
    match etcd.delete_if_unchanged(key, &current).await {
        Ok(true) => info!(
            key,
            "removed the dead leader's member key from the leader race"
        ),
        Ok(false) => debug!(
            key,
            "the dead leader's member key changed meanwhile: left as is"
        ),
        Err(e) => debug!(error = %format!("{e:#}"), "cannot remove the dead leader's member key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_patronis_layout() {
        let keys = Keys::new("demo", None);
        assert_eq!(keys.leader(), "/service/demo/leader");
        assert_eq!(keys.member("pg1"), "/service/demo/members/pg1");
        let keys = Keys::new("demo", Some(2));
        assert_eq!(keys.leader(), "/service/demo/2/leader");
        assert_eq!(keys.member("pg1"), "/service/demo/2/members/pg1");
    }

    #[test]
    fn the_liveness_address_comes_from_the_member_tags() {
        let member = r#"{"conn_url": "postgres://10.0.1.5:5432/postgres",
            "tags": {"pgswarm_liveness": "10.0.1.5:40123"}}"#;
        assert_eq!(
            liveness_address(member),
            Some(("10.0.1.5".to_string(), 40123))
        );
        assert_eq!(liveness_address(r#"{"tags": {}}"#), None);
        assert_eq!(liveness_address("not json"), None);
        assert_eq!(
            liveness_address(r#"{"tags": {"pgswarm_liveness": "[::1]:7"}}"#),
            Some(("::1".to_string(), 7))
        );
    }

    #[tokio::test]
    async fn a_peer_that_closes_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(stream);
        });
        let end = watch_peer("127.0.0.1", port, std::future::pending()).await;
        assert!(matches!(end, PeerEnd::Gone(_)), "{end:?}");
    }

    #[tokio::test]
    async fn a_refused_connect_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let end = watch_peer("127.0.0.1", port, std::future::pending()).await;
        assert_eq!(end, PeerEnd::Gone("connection refused"));
    }

    #[tokio::test]
    async fn a_held_connection_is_watched_until_told_to_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener));
        let until = tokio::time::sleep(Duration::from_millis(500));
        let end = watch_peer("127.0.0.1", port, until).await;
        assert_eq!(end, PeerEnd::Stopped);
    }
}
