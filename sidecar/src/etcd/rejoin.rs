//! Rejoining an etcd cluster that already exists, for a member whose data directory is empty
//! (its volume was lost or replaced on another node).
//!
//! Such a member must not start as a member of the initial cluster: the others remember it
//! with a raft log it no longer has, and etcd would refuse it or crash. Instead it asks the
//! healthy majority to drop its stale entry and add it again (member remove + member add,
//! through etcd's JSON gateway), then starts with `--initial-cluster-state=existing` and
//! receives a snapshot from the leader. It changes the membership only while a majority of
//! the members answers healthy, and never removes an entry that a running member still
//! answers for; otherwise it says why and tries again.
//!
//! Whether the cluster exists is read from the other members' peer port (`GET /version`):
//! a member of a cluster that has formed reports its cluster version even without a quorum,
//! while the members of a cluster still forming report `not_decided`.

use std::time::Duration;

use anyhow::{bail, Context as _};
use pgswarm_contract::{Common, EtcdPeer};
use serde::Deserialize;
use tracing::{info, warn};

use super::{host_port, EtcdPlan};
use crate::http;

/// How long one request to another member may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long another member's peer port may take to say whether the cluster has formed.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one whole attempt (probes, membership change) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// One entry of etcd's member list, as its JSON gateway (`ID`, a uint64 written as a
/// string) or its peer port's `GET /members` (`id`, a number) returns it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    #[serde(rename = "ID", alias = "id", deserialize_with = "uint64")]
    pub id: u64,
    /// Empty for a member that was added but has never started.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    /// Empty for a member that has never started.
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
}

impl Member {
    fn is(&self, name: &str, peer_url: &str) -> bool {
        self.peer_urls.iter().any(|u| same_url(u, peer_url))
            || (!name.is_empty() && self.name == name)
    }
}

fn uint64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    match Id::deserialize(d)? {
        Id::Number(n) => Ok(n),
        Id::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Deserialize)]
struct MemberList {
    #[serde(default)]
    members: Vec<Member>,
}

/// What this member has to do to join the existing cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Listed, but never started (added earlier, or a late member of the initial cluster):
    /// start it as a member of the existing cluster.
    Start,
    /// Not listed (its stale entry was removed already): add it.
    Add,
    /// Listed as a member that has run, with the data this member no longer has: remove the
    /// entry, then add it again.
    Replace { id: u64 },
}

/// The step for member `name` advertising `peer_url`, given the cluster's member list.
pub fn step(members: &[Member], name: &str, peer_url: &str) -> Step {
    let mine = members.iter().find(|m| m.is(name, peer_url));
    match mine {
        None => Step::Add,
        Some(m) if m.name.is_empty() => Step::Start,
        Some(m) => Step::Replace { id: m.id },
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The smallest majority of `members` members.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

/// `--initial-cluster` for joining a cluster whose members are `members` (this member
/// included): every member's name and peer URLs. A member without a name (never started)
/// takes its name from the contract's list, or its ID.
pub fn initial_cluster(
    members: &[Member],
    contract: &[EtcdPeer],
    me: &str,
    my_url: &str,
) -> String {
    let mut entries = Vec::new();
    for m in members {
        let name = if m.peer_urls.iter().any(|u| same_url(u, my_url)) {
            me.to_string()
        } else if !m.name.is_empty() {
            m.name.clone()
        } else {
            contract
                .iter()
                .find(|p| m.peer_urls.iter().any(|u| same_url(u, &p.peer_url)))
                .map(|p| p.name.clone())
                .unwrap_or_else(|| format!("{:x}", m.id))
        };
        for url in &m.peer_urls {
            entries.push(format!("{name}={url}"));
        }
    }
    entries.join(",")
}

/// What one peer port said about the cluster.
enum Witness {
    /// It reports a formed cluster.
    Formed(String),
    /// It answered: a cluster still forming, or not an etcd at all.
    NotFormed,
    /// It accepted the connection but did not answer in time (etcd binds its peer port
    /// before it serves it), so it may yet report a formed cluster.
    Silent,
    /// Nothing to ask: not resolvable, nothing listening.
    Absent,
}

/// Rounds of asking while a peer port stays silent.
const WITNESS_ROUNDS: usize = 3;

/// The name of another member that reports a formed cluster on its peer port, if any does.
/// A peer that accepts connections without answering is asked again (up to
/// [`WITNESS_ROUNDS`] rounds): a slow answer must not be taken for "no cluster", which would
/// start this member as one of a new cluster, something etcd then refuses.
async fn formed_cluster_witness(others: &[EtcdPeer]) -> Option<String> {
    for round in 1..=WITNESS_ROUNDS {
        let mut probes = tokio::task::JoinSet::new();
        for peer in others {
            let Some((host, port)) = host_port(&peer.peer_url) else {
                continue;
            };
            let name = peer.name.clone();
            probes.spawn(async move {
                let answer = http::get(&host, port, "/version", WITNESS_TIMEOUT).await;
                match answer {
                    Ok((200, body))
                        if body.contains("etcdcluster") && !body.contains("not_decided") =>
                    {
                        Witness::Formed(name)
                    }
                    Ok(_) => Witness::NotFormed,
                    Err(e) if format!("{e:#}").contains("no answer from") => Witness::Silent,
                    Err(_) => Witness::Absent,
                }
            });
        }
        let mut silent = false;
        while let Some(done) = probes.join_next().await {
            match done {
                Ok(Witness::Formed(name)) => return Some(name),
                Ok(Witness::Silent) => silent = true,
                _ => {}
            }
        }
        if !silent {
            return None;
        }
        warn!(
            round,
            "an etcd peer accepts connections but does not answer yet; asking again whether \
             the cluster has formed"
        );
    }
    None
}

/// The cluster's members as the other members' peer ports list them (served with or
/// without a quorum): the first answer.
async fn peers_view(others: &[EtcdPeer]) -> anyhow::Result<Vec<Member>> {
    let mut errors = Vec::new();
    for peer in others {
        let Some((host, port)) = host_port(&peer.peer_url) else {
            continue;
        };
        match http::get(&host, port, "/members", REQUEST_TIMEOUT).await {
            Ok((200, body)) => match serde_json::from_str::<Vec<Member>>(&body) {
                Ok(members) => return Ok(members),
                Err(e) => errors.push(format!("{}: {e}: {}", peer.name, body.trim())),
            },
            Ok((code, body)) => errors.push(format!("{}: {code} {}", peer.name, body.trim())),
            Err(e) => errors.push(format!("{}: {e:#}", peer.name)),
        }
    }
    bail!(
        "no other etcd member lists the cluster's members on its peer port ({})",
        errors.join("; ")
    )
}

/// The members other than `me` whose client URL answers `GET /health` with a leader, as
/// (name, host, port), and a description of each one that does not.
async fn healthy_members(
    members: &[Member],
    me: &str,
    my_url: &str,
) -> (Vec<(String, String, u16)>, Vec<String>) {
    let mut probes = tokio::task::JoinSet::new();
    let mut absent = Vec::new();
    for m in members.iter().filter(|m| !m.is(me, my_url)) {
        let name = if m.name.is_empty() {
            format!("{:x} (never started)", m.id)
        } else {
            m.name.clone()
        };
        let Some((host, port)) = m.client_urls.iter().find_map(|u| host_port(u)) else {
            absent.push(format!("{name}: no client URL"));
            continue;
        };
        probes.spawn(async move {
            let answer = http::get(&host, port, "/health", REQUEST_TIMEOUT).await;
            (name, host, port, answer)
        });
    }
    let mut healthy = Vec::new();
    while let Some(done) = probes.join_next().await {
        let Ok((name, host, port, answer)) = done else {
            continue;
        };
        match answer {
            Ok((200, body)) if body.contains("true") => healthy.push((name, host, port)),
            Ok((code, body)) => absent.push(format!("{name}: {code} {}", body.trim())),
            Err(e) => absent.push(format!("{name}: {e:#}")),
        }
    }
    healthy.sort();
    absent.sort();
    (healthy, absent)
}

/// POSTs `body` to etcd's JSON gateway on `host`; the body of a 200 answer.
async fn gateway(host: &str, port: u16, path: &str, body: &str) -> anyhow::Result<String> {
    let (code, answer) = http::post_json(host, port, path, body, REQUEST_TIMEOUT).await?;
    if code != 200 {
        bail!("POST {path} on {host}:{port}: {code} {}", answer.trim());
    }
    Ok(answer)
}

async fn member_list(host: &str, port: u16) -> anyhow::Result<Vec<Member>> {
    let body = gateway(host, port, "/v3/cluster/member/list", "{}").await?;
    let list: MemberList = serde_json::from_str(&body)
        .with_context(|| format!("reading the member list from {host}:{port}: {body}"))?;
    Ok(list.members)
}

/// When this member's data directory is empty and its cluster has already formed: joins it
/// (replacing the stale entry when there is one) and returns the `--initial-cluster` to
/// start with, with `--initial-cluster-state=existing`. `None`: no other member reports a
/// formed cluster, so this is the initial cluster's first start.
pub async fn prepare(plan: &EtcdPlan, common: &Common) -> anyhow::Result<Option<String>> {
    let others: Vec<EtcdPeer> = plan
        .peers
        .iter()
        .filter(|p| p.name != common.member)
        .cloned()
        .collect();
    if others.is_empty() {
        return Ok(None);
    }
    let Some(witness) = formed_cluster_witness(&others).await else {
        return Ok(None);
    };
    info!(
        member = %common.member,
        witness = %witness,
        "the data directory is empty but the etcd cluster has formed already ({witness} \
         reports it): rejoining it through the healthy majority"
    );
    let what = format!(
        "a majority of the etcd cluster to let {} rejoin it",
        common.member
    );
    crate::wait::wait_for_within(
        &what,
        Duration::from_secs(common.wait_timeout_secs),
        ATTEMPT_TIMEOUT,
        || rejoin_once(plan, common, &others),
    )
    .await
    .map(Some)
}

/// One attempt at rejoining; an error says what is missing and is retried.
async fn rejoin_once(
    plan: &EtcdPlan,
    common: &Common,
    others: &[EtcdPeer],
) -> anyhow::Result<String> {
    let me = common.member.as_str();
    let view = peers_view(others).await?;
    let (healthy, absent) = healthy_members(&view, me, &plan.peer_url).await;
    let Some((via, host, port)) = healthy.first() else {
        bail!(
            "no other etcd member answers with a healthy cluster ({}); the cluster has no \
             quorum, and {me} changes the membership only through a healthy majority: bring \
             the other etcd members back",
            absent.join("; ")
        );
    };
    let via = Gateway {
        name: via,
        host,
        port: *port,
    };
    let members = member_list(host, *port).await?;
    let step = step(&members, me, &plan.peer_url);
    let size = match step {
        Step::Add => members.len() + 1,
        Step::Start | Step::Replace { .. } => members.len(),
    };
    if healthy.len() < majority(size) {
        bail!(
            "only {} of the {size} etcd members answer healthy ({}; not: {}); a majority ({}) \
             must, before {me} changes the membership: bring the other etcd members back",
            healthy.len(),
            healthy
                .iter()
                .map(|(n, _, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            absent.join("; "),
            majority(size)
        );
    }
    match step {
        Step::Start => {
            info!(member = me, via = %via.name, "listed as a member that has never started: joining");
        }
        Step::Replace { id } => {
            // Another task answering as this member (an old task still running on another
            // node) holds the data: its entry must stay.
            if let Ok((code, body)) = http::get(
                &plan.advertise_host,
                plan.peer_port,
                "/version",
                REQUEST_TIMEOUT,
            )
            .await
            {
                bail!(
                    "another etcd process answers as {me} at {}:{} ({code} {}); its member \
                     entry is not removed while it runs: stop that task (docker service ps \
                     shows where it runs)",
                    plan.advertise_host,
                    plan.peer_port,
                    body.trim()
                );
            }
            gateway(
                via.host,
                via.port,
                "/v3/cluster/member/remove",
                &format!("{{\"ID\": \"{id}\"}}"),
            )
            .await
            .with_context(|| {
                format!(
                    "removing the stale entry {id:x} of {me} through {}",
                    via.name
                )
            })?;
            info!(member = me, via = %via.name, old_id = %format!("{id:x}"), "removed this member's stale entry (its data is gone)");
            add(plan, me, &via).await?;
        }
        Step::Add => add(plan, me, &via).await?,
    }
    let members = member_list(via.host, via.port).await?;
    Ok(initial_cluster(&members, &plan.peers, me, &plan.peer_url))
}

/// The healthy member that membership changes go through.
struct Gateway<'a> {
    name: &'a str,
    host: &'a str,
    port: u16,
}

async fn add(plan: &EtcdPlan, me: &str, via: &Gateway<'_>) -> anyhow::Result<()> {
    let body = serde_json::json!({ "peerURLs": [plan.peer_url] }).to_string();
    gateway(via.host, via.port, "/v3/cluster/member/add", &body)
        .await
        .with_context(|| format!("adding {me} ({}) through {}", plan.peer_url, via.name))?;
    info!(member = me, via = %via.name, peer_url = %plan.peer_url, "added this member to the etcd cluster again");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<Member> {
        serde_json::from_str::<MemberList>(
            r#"{"header": {"cluster_id": "1"}, "members": [
                {"ID": "10", "name": "etcd1", "peerURLs": ["http://demo_etcd1:2380"],
                 "clientURLs": ["http://demo_etcd1:2379"]},
                {"ID": "11", "name": "etcd2", "peerURLs": ["http://demo_etcd2:2380"]},
                {"ID": 12, "peerURLs": ["http://demo_etcd3:2380"]}]}"#,
        )
        .unwrap()
        .members
    }

    fn contract() -> Vec<EtcdPeer> {
        (1..=3)
            .map(|i| EtcdPeer {
                name: format!("etcd{i}"),
                peer_url: format!("http://demo_etcd{i}:2380"),
            })
            .collect()
    }

    #[test]
    fn the_member_list_reads_string_and_number_ids() {
        let m = members();
        assert_eq!(m.iter().map(|m| m.id).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(m[2].name, "");
    }

    #[test]
    fn the_peer_ports_member_list_is_read_too() {
        let m: Vec<Member> = serde_json::from_str(
            r#"[{"id":8645782499530242234,"peerURLs":["http://127.0.0.1:23801"],"name":"a",
                 "clientURLs":["http://127.0.0.1:23791"]}]"#,
        )
        .unwrap();
        assert_eq!(m[0].id, 8645782499530242234);
        assert_eq!(m[0].client_urls, vec!["http://127.0.0.1:23791".to_string()]);
    }

    #[test]
    fn the_step_follows_the_members_entry() {
        let m = members();
        assert_eq!(
            step(&m, "etcd2", "http://demo_etcd2:2380"),
            Step::Replace { id: 11 }
        );
        assert_eq!(step(&m, "etcd3", "http://demo_etcd3:2380/"), Step::Start);
        assert_eq!(step(&m[..2], "etcd3", "http://demo_etcd3:2380"), Step::Add);
        // Found by name even when its address changed.
        assert_eq!(
            step(&m, "etcd1", "http://elsewhere:2380"),
            Step::Replace { id: 10 }
        );
    }

    #[test]
    fn a_majority_is_more_than_half() {
        assert_eq!([1, 2, 3, 4, 5].map(majority), [1, 2, 2, 3, 3]);
    }

    #[test]
    fn the_initial_cluster_names_every_member() {
        assert_eq!(
            initial_cluster(&members(), &contract(), "etcd2", "http://demo_etcd2:2380"),
            "etcd1=http://demo_etcd1:2380,etcd2=http://demo_etcd2:2380,\
             etcd3=http://demo_etcd3:2380"
        );
        let mut stranger = members();
        stranger[2].peer_urls = vec!["http://other:2380".into()];
        assert!(
            initial_cluster(&stranger, &contract(), "etcd2", "http://demo_etcd2:2380")
                .ends_with(",c=http://other:2380")
        );
    }
}
