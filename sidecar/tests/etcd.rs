//! Host integration test of the `etcd` mode: a member started by the sidecar serves the v3
//! API through its gRPC gateway (what Patroni's etcd3 client uses), stops cleanly on SIGTERM
//! and, started again on the same volume, comes back with its data instead of bootstrapping
//! a new cluster. A member whose peers are not reachable yet is healthy as soon as it
//! accepts peer connections: on Swarm a task is found by name only once it is healthy, so
//! the members of a new cluster must be healthy before they have a quorum. A member of a
//! three-member cluster whose data directory is lost waits while the majority is absent, then
//! rejoins through it on its own and serves the cluster's data again.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use pgswarm_contract::{EtcdPeer, MemberEnv, Role};

/// The tests of this file run one at a time: each starts etcd on ports picked free
/// beforehand, and another test's connections could take such a port in between.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// POSTs `body` to etcd's gRPC gateway at `path`; the response body.
fn post(port: u16, path: &str, body: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {response}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{head}\n{body}"));
    }
    Ok(body.to_string())
}

#[test]
fn an_etcd_member_keeps_its_data_across_a_restart() {
    let _serial = serial();
    let dir = TestDir::new();
    let (client_port, peer_port) = (free_port(), free_port());
    let member = MemberEnv {
        common: dir.common("demo", "etcd1"),
        role: Role::Etcd {
            initial_cluster: vec![EtcdPeer {
                name: "etcd1".into(),
                peer_url: format!("http://127.0.0.1:{peer_port}"),
            }],
            client_port,
            peer_port,
        },
    };
    // "pgswarm" / "kept", base64 as the gateway wants them.
    let put = r#"{"key": "cGdzd2FybQ==", "value": "a2VwdA=="}"#;
    let range = r#"{"key": "cGdzd2FybQ=="}"#;

    let mut first = Sidecar::run(&dir, &member);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match post(client_port, "/v3/kv/put", put) {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "etcd never accepted a put: {e}\n{}",
                    first.log_text()
                );
                assert!(
                    first.wait_exit(Duration::from_millis(200)).is_none(),
                    "etcd exited:\n{}",
                    first.log_text()
                );
            }
        }
    }
    let (code, out) =
        Sidecar::start("etcd1-health", &env_of(&member), &["health"], dir.path()).finish(PATIENCE);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("has a leader"), "{out}");
    assert_eq!(first.stop(), 0, "a clean stop:\n{}", first.log_text());

    let second = Sidecar::run(&dir, &member);
    let deadline = std::time::Instant::now() + PATIENCE;
    let found = loop {
        match post(client_port, "/v3/kv/range", range) {
            Ok(body) => break body,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "etcd did not come back: {e}\n{}",
                second.log_text()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(found.contains("a2VwdA=="), "the key survived: {found}");
    assert!(
        second
            .log_text()
            .contains("restarting the existing etcd member from its data"),
        "{}",
        second.log_text()
    );
}

#[test]
fn an_etcd_member_is_healthy_before_its_cluster_has_a_quorum() {
    let _serial = serial();
    let dir = TestDir::new();
    let (client_port, peer_port) = (free_port(), free_port());
    // The two other members are never started: this member can never reach a quorum.
    let absent = [free_port(), free_port()];
    let member = MemberEnv {
        common: dir.common("demo", "etcd1"),
        role: Role::Etcd {
            initial_cluster: vec![
                EtcdPeer {
                    name: "etcd1".into(),
                    peer_url: format!("http://127.0.0.1:{peer_port}"),
                },
                EtcdPeer {
                    name: "etcd2".into(),
                    peer_url: format!("http://127.0.0.1:{}", absent[0]),
                },
                EtcdPeer {
                    name: "etcd3".into(),
                    peer_url: format!("http://127.0.0.1:{}", absent[1]),
                },
            ],
            client_port,
            peer_port,
        },
    };

    let (code, out) = Sidecar::start(
        "etcd1-health-before",
        &env_of(&member),
        &["health"],
        dir.path(),
    )
    .finish(PATIENCE);
    assert_ne!(code, 0, "healthy with no etcd running: {out}");
    assert!(
        out.contains("peer"),
        "the failure names the peer port: {out}"
    );

    let mut running = Sidecar::run(&dir, &member);
    let deadline = std::time::Instant::now() + PATIENCE;
    let out = loop {
        let (code, out) = Sidecar::start("etcd1-health", &env_of(&member), &["health"], dir.path())
            .finish(PATIENCE);
        if code == 0 {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the member never became healthy: {out}\n{}",
            running.log_text()
        );
        assert!(
            running.wait_exit(Duration::from_millis(500)).is_none(),
            "etcd exited:\n{}",
            running.log_text()
        );
    };
    assert!(!out.contains("has a leader"), "{out}");
    assert!(out.contains("accepting peers"), "{out}");

    // What `swarmctl doctor` asks: etcd1 runs without a leader, etcd2 does not answer.
    let member_arg = |name: &str, peer: u16| format!("{name}=127.0.0.1:{client_port}:{peer}");
    let etcd2 = format!("etcd2=127.0.0.1:{}:{}", free_port(), absent[0]);
    let (code, out) = Sidecar::start(
        "etcd-status",
        &env_of(&member),
        &[
            "ctl",
            "etcd-status",
            "--member",
            &member_arg("etcd1", peer_port),
            "--member",
            &etcd2,
        ],
        dir.path(),
    )
    .finish(PATIENCE);
    assert_eq!(code, 0, "{out}");
    let reply: pgswarm_contract::ctl::EtcdStatusReply = serde_json::from_str(
        out.lines()
            .find(|l| l.starts_with("{\"members\""))
            .unwrap_or_else(|| panic!("no reply in {out}")),
    )
    .expect("the etcd-status reply");
    assert_eq!(
        reply
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.running, m.has_leader))
            .collect::<Vec<_>>(),
        vec![("etcd1", true, false), ("etcd2", false, false)],
        "{out}"
    );
    assert!(!reply.has_quorum());
    assert!(
        post(client_port, "/v3/kv/range", r#"{"key": "cGdzd2FybQ=="}"#).is_err(),
        "a member without quorum serves no reads"
    );
    assert_eq!(running.stop(), 0, "a clean stop:\n{}", running.log_text());
}

/// Polls `check` every 200 ms until it returns `Some`, failing with `what` and the logs of
/// `members` after [`PATIENCE`] or when one of them exits.
fn poll<T>(what: &str, members: &mut [&mut Sidecar], mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        for m in members.iter_mut() {
            if let Some(code) = m.wait_exit(Duration::ZERO) {
                panic!(
                    "{} exited ({code}) while waiting for {what}:\n{}",
                    m.name,
                    m.log_text()
                );
            }
        }
        if std::time::Instant::now() > deadline {
            let logs = members
                .iter()
                .map(|m| format!("--- {}\n{}", m.name, m.log_text()))
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{what} did not happen:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_etcd_member_whose_data_is_lost_rejoins_through_the_majority() {
    let _serial = serial();
    let dir = TestDir::new();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let peers: Vec<EtcdPeer> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| EtcdPeer {
            name: format!("etcd{}", i + 1),
            peer_url: format!("http://127.0.0.1:{peer}"),
        })
        .collect();
    let members: Vec<MemberEnv> = ports
        .iter()
        .enumerate()
        .map(|(i, &(client_port, peer_port))| MemberEnv {
            common: dir.common("demo", &format!("etcd{}", i + 1)),
            role: Role::Etcd {
                initial_cluster: peers.clone(),
                client_port,
                peer_port,
            },
        })
        .collect();
    let client = |i: usize| ports[i].0;
    // "pgswarm" / "kept", base64 as the gateway wants them.
    let put = r#"{"key": "cGdzd2FybQ==", "value": "a2VwdA=="}"#;
    let range = r#"{"key": "cGdzd2FybQ=="}"#;

    let mut e1 = Sidecar::run(&dir, &members[0]);
    let mut e2 = Sidecar::run(&dir, &members[1]);
    let mut e3 = Sidecar::run(&dir, &members[2]);
    poll(
        "a put on the new cluster",
        &mut [&mut e1, &mut e2, &mut e3],
        || post(client(0), "/v3/kv/put", put).ok(),
    );
    poll(
        "etcd3 to serve the key",
        &mut [&mut e1, &mut e2, &mut e3],
        || {
            post(client(2), "/v3/kv/range", range)
                .ok()
                .filter(|b| b.contains("a2VwdA=="))
        },
    );

    // etcd3 loses its volume while etcd2 is down too: no majority to rejoin through.
    assert_eq!(e3.stop(), 0, "a clean stop:\n{}", e3.log_text());
    assert_eq!(e2.stop(), 0, "a clean stop:\n{}", e2.log_text());
    std::fs::remove_dir_all(dir.path().join("etcd3/data")).expect("removing etcd3's data");
    let mut e3 = Sidecar::run(&dir, &members[2]);
    let e3_log = e3.log.clone();
    poll(
        "etcd3 to say the majority is absent",
        &mut [&mut e1, &mut e3],
        || {
            std::fs::read_to_string(&e3_log)
                .unwrap_or_default()
                .contains("the cluster has no quorum")
                .then_some(())
        },
    );
    assert!(
        !e3.log_text().contains("removed this member's stale entry"),
        "no membership change without a majority:\n{}",
        e3.log_text()
    );

    // The majority is back: etcd3 replaces its stale entry and gets the data again.
    let mut e2 = Sidecar::run(&dir, &members[1]);
    poll(
        "etcd3 to rejoin and serve the key",
        &mut [&mut e1, &mut e2, &mut e3],
        || {
            post(client(2), "/v3/kv/range", range)
                .ok()
                .filter(|b| b.contains("a2VwdA=="))
        },
    );
    let log = e3.log_text();
    for needle in [
        "rejoining it through the healthy majority",
        "removed this member's stale entry",
        "added this member to the etcd cluster again",
        "starting as a new member of the existing etcd cluster",
    ] {
        assert!(log.contains(needle), "{needle:?} not in:\n{log}");
    }
    let list = post(client(0), "/v3/cluster/member/list", "{}").expect("member list");
    for name in ["etcd1", "etcd2", "etcd3"] {
        assert!(
            list.contains(&format!("\"name\":\"{name}\"")),
            "{name} is a started member: {list}"
        );
    }
    assert_eq!(list.matches("\"ID\"").count(), 3, "three members: {list}");

    // A restart of the rejoined member starts from its new data.
    assert_eq!(e3.stop(), 0, "a clean stop:\n{}", e3.log_text());
    let mut e3 = Sidecar::run(&dir, &members[2]);
    poll(
        "the rejoined etcd3 to come back",
        &mut [&mut e1, &mut e2, &mut e3],
        || {
            post(client(2), "/v3/kv/range", range)
                .ok()
                .filter(|b| b.contains("a2VwdA=="))
        },
    );
    for m in [&mut e1, &mut e2, &mut e3] {
        assert_eq!(m.stop(), 0, "a clean stop:\n{}", m.log_text());
    }
}
