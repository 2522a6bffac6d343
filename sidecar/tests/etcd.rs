//! Host integration test of the `etcd` mode: a member started by the sidecar serves the v3
//! API through its gRPC gateway (what Patroni's etcd3 client uses), stops cleanly on SIGTERM
//! and, started again on the same volume, comes back with its data instead of bootstrapping
//! a new cluster. A member whose peers are not reachable yet is healthy as soon as it
//! accepts peer connections: on Swarm a task is found by name only once it is healthy, so
//! the members of a new cluster must be healthy before they have a quorum.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use pgswarm_contract::{EtcdPeer, MemberEnv, Role};

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
    assert!(
        post(client_port, "/v3/kv/range", r#"{"key": "cGdzd2FybQ=="}"#).is_err(),
        "a member without quorum serves no reads"
    );
    assert_eq!(running.stop(), 0, "a clean stop:\n{}", running.log_text());
}
