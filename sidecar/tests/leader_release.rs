//! Host integration test of the release of a dead leader's key (`pgswarm_sidecar::liveness`):
//! 3 etcd members and 3 Patroni members in synchronous mode, started by the sidecar binary on
//! loopback with Debian's programs.
//!
//! What must never happen is asserted, never a time:
//! - a leader whose postmaster crashes (Patroni alive) is restarted in place, not replaced;
//! - a leader that is only paused (its packets unanswered, as in a partition) keeps its key;
//! - a key retaken while its old holder's connection closes is not deleted;
//! - when the leader's whole process tree is killed (a container's death), its key is released
//!   by the mechanism (not by the lease), a synchronous standby leads, no acknowledged commit
//!   is lost, and the restarted member rejoins as a replica: one primary only.

mod common;

use std::net::TcpListener as StdListener;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use pgswarm_contract::{Endpoint, EtcdPeer, MemberEnv, Postgres, Role, SynchronousMode};
use pgswarm_sidecar::http;
use pgswarm_sidecar::liveness::{self, Etcd, Keys};
use serde_json::Value;

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const NAMES: [&str; 3] = ["pg1", "pg2", "pg3"];
const TTL: u32 = 20;

fn free_port_on(hosts: &[&str], taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let first = StdListener::bind((hosts[0], 0)).expect("binding a loopback port");
        let port = first.local_addr().expect("local address").port();
        if taken.contains(&port) {
            continue;
        }
        let others: Vec<_> = hosts[1..]
            .iter()
            .map(|h| StdListener::bind((*h, port)))
            .collect();
        if others.iter().all(Result::is_ok) && StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on all of {hosts:?}");
}

struct Ports {
    pg: u16,
    rest: u16,
    etcd_client: Vec<u16>,
    etcd_peer: Vec<u16>,
}

impl Ports {
    fn pick() -> Self {
        let mut taken = Vec::new();
        let pg = free_port_on(&HOSTS, &taken);
        taken.push(pg);
        let rest = free_port_on(&HOSTS, &taken);
        taken.push(rest);
        let mut more = || loop {
            let p = free_port();
            if !taken.contains(&p) {
                taken.push(p);
                return p;
            }
        };
        let etcd_client = (0..3).map(|_| more()).collect();
        let etcd_peer = (0..3).map(|_| more()).collect();
        Ports {
            pg,
            rest,
            etcd_client,
            etcd_peer,
        }
    }

    fn etcd_endpoints(&self) -> Vec<Endpoint> {
        self.etcd_client
            .iter()
            .map(|p| Endpoint {
                host: "127.0.0.1".into(),
                port: *p,
            })
            .collect()
    }
}

fn etcd_env(dir: &TestDir, ports: &Ports, i: usize) -> MemberEnv {
    MemberEnv {
        common: dir.common("demo", &format!("etcd{}", i + 1)),
        role: Role::Etcd {
            initial_cluster: (0..3)
                .map(|j| EtcdPeer {
                    name: format!("etcd{}", j + 1),
                    peer_url: format!("http://127.0.0.1:{}", ports.etcd_peer[j]),
                })
                .collect(),
            client_port: ports.etcd_client[i],
            peer_port: ports.etcd_peer[i],
        },
    }
}

fn patroni_env(dir: &TestDir, ports: &Ports, i: usize) -> MemberEnv {
    MemberEnv {
        common: dir.common("demo", NAMES[i]),
        role: Role::Patroni {
            postgres: Postgres {
                port: ports.pg,
                listen_address: HOSTS[i].into(),
                connect_host: Some(HOSTS[i].into()),
                allowed_cidrs: vec!["127.0.0.0/8".into()],
                ..Postgres::default()
            },
            etcd_hosts: ports.etcd_endpoints(),
            rest_port: ports.rest,
            ttl: TTL,
            loop_wait: 2,
            retry_timeout: 5,
            maximum_lag_on_failover: 1_048_576,
            synchronous_mode: SynchronousMode::On,
            citus: None,
            handover: None,
        },
    }
}

/// (leader name, replica names) once one member leads and the two others stream, as seen by
/// any member on `hosts`.
async fn settled(hosts: &[&str], rest_port: u16, replicas: usize) -> (String, Vec<String>) {
    eventually(
        &format!("one leader and {replicas} streaming replicas"),
        || async {
            let mut last = String::new();
            for host in hosts {
                let view =
                    match http::get(host, rest_port, "/cluster", Duration::from_secs(5)).await {
                        Ok((200, body)) => serde_json::from_str::<Value>(&body).unwrap_or_default(),
                        Ok((code, body)) => {
                            last = format!("{host}: {code} {body}");
                            continue;
                        }
                        Err(e) => {
                            last = format!("{e:#}");
                            continue;
                        }
                    };
                let members = view["members"].as_array().cloned().unwrap_or_default();
                let name = |m: &Value| m["name"].as_str().unwrap_or_default().to_string();
                let leaders: Vec<String> = members
                    .iter()
                    .filter(|m| m["role"] == "leader" && m["state"] == "running")
                    .map(name)
                    .collect();
                let streaming: Vec<String> = members
                    .iter()
                    .filter(|m| {
                        matches!(m["role"].as_str(), Some("replica" | "sync_standby"))
                            && matches!(m["state"].as_str(), Some("running" | "streaming"))
                    })
                    .map(name)
                    .collect();
                if leaders.len() == 1 && streaming.len() == replicas {
                    return Ok((leaders[0].clone(), streaming));
                }
                last = format!("from {host}: {view}");
            }
            Err(last)
        },
    )
    .await
}

/// The member Patroni's sync key names as `leader`'s synchronous standby, once it streams.
async fn sync_standby(hosts: &[&str], rest_port: u16, leader: &str) -> String {
    eventually(&format!("a synchronous standby of {leader}"), || async {
        let mut last = String::new();
        for host in hosts {
            let view = match http::get(host, rest_port, "/cluster", Duration::from_secs(5)).await {
                Ok((200, body)) => serde_json::from_str::<Value>(&body).unwrap_or_default(),
                Ok((code, body)) => {
                    last = format!("{host}: {code} {body}");
                    continue;
                }
                Err(e) => {
                    last = format!("{e:#}");
                    continue;
                }
            };
            let members = view["members"].as_array().cloned().unwrap_or_default();
            let leads = members
                .iter()
                .any(|m| m["name"] == leader && m["role"] == "leader");
            let standby = members.iter().find(|m| {
                m["role"] == "sync_standby"
                    && matches!(m["state"].as_str(), Some("running" | "streaming"))
            });
            match standby {
                Some(m) if leads => {
                    return Ok(m["name"].as_str().unwrap_or_default().to_string());
                }
                _ => last = format!("from {host}: {view}"),
            }
        }
        Err(last)
    })
    .await
}

/// Whether the member on `host` accepts writes (answers and is not in recovery).
async fn accepts_writes(host: &str, port: u16) -> bool {
    let Ok(client) = connect_member(host, port).await else {
        return false;
    };
    match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
        Ok(row) => !row.get::<_, bool>(0),
        Err(_) => false,
    }
}

/// Every process under `pid`, deepest first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for child in children_of(pid) {
        out.extend(descendants(child));
        out.push(child);
    }
    out
}

fn signal_pid(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

fn index_of(name: &str) -> usize {
    NAMES
        .iter()
        .position(|n| *n == name)
        .expect("a member name")
}

const RELEASED: &str = "released its leader key";
/// What a watcher logs when it removed the dead leader's member key after its leader key.
const FORGOTTEN: &str = "removed the dead leader's member key from the leader race";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaders_key_is_released_at_once_and_a_live_ones_never() {
    let dir = TestDir::new();
    let ports = Ports::pick();
    let etcd_envs: Vec<MemberEnv> = (0..3).map(|i| etcd_env(&dir, &ports, i)).collect();
    let _etcd: Vec<Sidecar> = etcd_envs.iter().map(|m| Sidecar::run(&dir, m)).collect();
    let envs: Vec<MemberEnv> = (0..3).map(|i| patroni_env(&dir, &ports, i)).collect();
    let mut members: Vec<Sidecar> = envs.iter().map(|m| Sidecar::run(&dir, m)).collect();
    let etcd = Etcd::new(ports.etcd_endpoints());
    let keys = Keys::new("demo", None);

    let (leader, _) = settled(&HOSTS, ports.rest, 2).await;
    let li = index_of(&leader);

    // Every member publishes its liveness address.
    for (i, name) in NAMES.iter().enumerate() {
        let member = eventually(&format!("{name}'s member key"), || async {
            etcd.get(&keys.member(name))
                .await
                .map_err(|e| format!("{e:#}"))?
                .ok_or_else(|| "absent".to_string())
        })
        .await;
        let (host, _) = liveness::liveness_address(&member.value)
            .unwrap_or_else(|| panic!("{name} publishes no liveness address: {}", member.value));
        assert_eq!(host, HOSTS[i]);
    }
    // The replicas watch the leader's sidecar.
    for (i, m) in members.iter().enumerate().filter(|(i, _)| *i != li) {
        eventually(&format!("{} to watch the leader", NAMES[i]), || async {
            if m.log_text().contains("watching the leader's sidecar") {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await;
    }

    // 0. The leader's postmaster crashes, Patroni alive: woken at once by the sidecar, it
    //    restarts PostgreSQL in place (the lock kept, nothing to fail over).
    let pid_file = format!("{}/postmaster.pid", envs[li].common.pgdata());
    let postmaster: i32 = std::fs::read_to_string(&pid_file)
        .expect("the leader's postmaster.pid")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid in postmaster.pid");
    signal_pid(postmaster as u32, Signal::SIGKILL);
    eventually("the leader's sidecar to wake Patroni", || async {
        if members[li]
            .log_text()
            .contains("Patroni woken after the postmaster's death")
        {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let (after_crash, _) = settled(&HOSTS, ports.rest, 2).await;
    assert_eq!(
        after_crash, leader,
        "a crashed postmaster was not restarted in place"
    );

    // 1. A paused leader (no packet answered, nothing closed) keeps its key: only its lease
    //    may end its leadership. Paused for well under the ttl.
    let held = etcd
        .get(&keys.leader())
        .await
        .expect("etcd")
        .expect("a leader key");
    assert_eq!(held.value, leader);
    let tree: Vec<u32> = std::iter::once(members[li].pid())
        .chain(descendants(members[li].pid()))
        .collect();
    for pid in &tree {
        signal_pid(*pid, Signal::SIGSTOP);
    }
    tokio::time::sleep(Duration::from_secs(u64::from(TTL) / 3)).await;
    let during = etcd.get(&keys.leader()).await.expect("etcd");
    for pid in &tree {
        signal_pid(*pid, Signal::SIGCONT);
    }
    assert_eq!(
        during.as_ref(),
        Some(&held),
        "the key of a paused (live) leader was changed"
    );
    for m in &members {
        assert!(
            !m.log_text().contains(RELEASED),
            "a live leader's key was released:\n{}",
            m.log_text()
        );
    }
    let (leader_again, _) = settled(&HOSTS, ports.rest, 2).await;
    assert_eq!(leader_again, leader, "the paused leader lost its lock");

    // 2. A key retaken while its old holder's connection closes is never deleted: a stand-in
    //    leader in another scope, watched by a watcher of this process.
    let race = Keys::new("race", None);
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let fake_port = fake.local_addr().expect("addr").port();
    let tags = format!(
        "{{\"tags\": {{\"{}\": \"127.0.0.1:{fake_port}\"}}}}",
        liveness::TAG
    );
    etcd.put(&race.member("ghost"), &tags).await.expect("put");
    etcd.put(&race.leader(), "ghost").await.expect("put");
    let watcher = tokio::spawn(liveness::watch_leader(
        etcd.clone(),
        race.clone(),
        "observer".into(),
    ));
    let (held_conn, _) = tokio::time::timeout(Duration::from_secs(30), fake.accept())
        .await
        .expect("the watcher connects to the stand-in's liveness port")
        .expect("accept");
    // The member's next incarnation (a live liveness port) retakes the key (same value, new
    // mod_revision) while the old incarnation's connection closes.
    let reborn = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let reborn_port = reborn.local_addr().expect("addr").port();
    let tags = format!(
        "{{\"tags\": {{\"{}\": \"127.0.0.1:{reborn_port}\"}}}}",
        liveness::TAG
    );
    let before = etcd.get(&race.leader()).await.expect("etcd").expect("key");
    etcd.put(&race.member("ghost"), &tags).await.expect("put");
    etcd.put(&race.leader(), "ghost").await.expect("put");
    drop(held_conn);
    drop(fake);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = etcd.get(&race.leader()).await.expect("etcd");
    let after = after.expect("the retaken key was deleted");
    assert!(after.mod_revision > before.mod_revision);
    // The stale view can never delete it either.
    assert!(!etcd
        .delete_if_unchanged(&race.leader(), &before)
        .await
        .expect("txn"));
    // The current view can (what the watcher does for a dead holder).
    assert!(etcd
        .delete_if_unchanged(&race.leader(), &after)
        .await
        .expect("txn"));
    assert!(etcd.get(&race.leader()).await.expect("etcd").is_none());
    watcher.abort();
    drop(reborn);

    // 3. The leader's container dies: its whole process tree killed at once.
    //    In synchronous mode Patroni lets only the standby named in its sync key take over (a
    //    leader with no synchronous standby may hold commits no replica has, so nobody is
    //    promoted): the kill comes once the sync key names a streaming standby, and the
    //    commits below are checked to have been acknowledged by it.
    let (leader, _) = settled(&HOSTS, ports.rest, 2).await;
    let li = index_of(&leader);
    let standby = sync_standby(&HOSTS, ports.rest, &leader).await;
    let writer = eventually("a connection to the leader", || async {
        let client = connect_member(HOSTS[li], ports.pg).await?;
        match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) if !row.get::<_, bool>(0) => Ok(client),
            Ok(_) => Err(format!("{leader} is in recovery")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    writer
        .batch_execute("CREATE TABLE acked (n int primary key)")
        .await
        .expect("create");
    let mut acked = Vec::new();
    for n in 0..200 {
        writer
            .execute("INSERT INTO acked VALUES ($1)", &[&n])
            .await
            .expect("insert on the leader");
        acked.push(n);
    }
    // The standby that acknowledged them is still the synchronous one (had Patroni changed
    // it meanwhile, the acknowledgements would not be on the member allowed to lead).
    let sync_now: i64 = writer
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 \
             AND sync_state IN ('sync', 'quorum')",
            &[&standby],
        )
        .await
        .expect("pg_stat_replication")
        .get(0);
    assert_eq!(
        sync_now, 1,
        "{standby} stopped being the synchronous standby"
    );
    drop(writer);
    assert_eq!(sync_standby(&HOSTS, ports.rest, &leader).await, standby);
    let tree: Vec<u32> = descendants(members[li].pid())
        .into_iter()
        .chain(std::iter::once(members[li].pid()))
        .collect();
    for pid in &tree {
        signal_pid(*pid, Signal::SIGSTOP);
    }
    for pid in &tree {
        signal_pid(*pid, Signal::SIGKILL);
    }
    members[li]
        .wait_exit(PATIENCE)
        .expect("the killed sidecar is reaped");
    let others: Vec<&str> = (0..3).filter(|i| *i != li).map(|i| HOSTS[i]).collect();
    let (new_leader, _) = settled(&others, ports.rest, 1).await;
    assert_ne!(new_leader, leader);
    let released = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .any(|(_, m)| m.log_text().contains(RELEASED));
    assert!(
        released,
        "no member released the dead leader's key (the lease expired instead)"
    );
    // Its member key went with it, so the leader race did not wait on its REST API.
    let forgotten = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .any(|(_, m)| m.log_text().contains(FORGOTTEN));
    assert!(
        forgotten,
        "the dead leader's member key was left in the race"
    );
    let ni = index_of(&new_leader);
    let client = connect_member(HOSTS[ni], ports.pg)
        .await
        .expect("new leader");
    let count: i64 = client
        .query_one("SELECT count(*) FROM acked", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        count,
        acked.len() as i64,
        "acknowledged commits lost in synchronous mode"
    );

    // 4. The killed member comes back (as Swarm restarts its task): one primary only.
    members[li] = Sidecar::run(&dir, &envs[li]);
    let (final_leader, _) = settled(&HOSTS, ports.rest, 2).await;
    let mut writable = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        if accepts_writes(host, ports.pg).await {
            writable.push(NAMES[i]);
        }
    }
    assert_eq!(
        writable,
        vec![final_leader.as_str()],
        "members accepting writes"
    );
}
