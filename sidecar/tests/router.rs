//! The router (real HAProxy from Debian, run by the real sidecar) drops a former leader at once
//! when a new one comes up in the read-write backend.
//!
//! Two stand-in Patroni REST APIs on 127.0.0.2 and 127.0.0.3 answer HAProxy's `OPTIONS
//! /primary` checks. The router is configured with `fall 1000`, so HAProxy's own checks would
//! take 1000 failed checks (many minutes) to mark a server down: the only way the former
//! leader leaves the backend within the test is the sidecar's reaction to the new leader
//! coming up (`set server rw/… health down` on HAProxy's runtime API).

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, Sidecar, TestDir};
use pgswarm_contract::{MemberEnv, Role};
use pgswarm_sidecar::router::{self, servers_up};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PRIMARY: u8 = 0;
const REPLICA: u8 = 1;
/// Accepts the check and never answers, as the address of a killed container does not.
const SILENT: u8 = 2;

/// A stand-in for one member's Patroni REST API: `/primary` answered by `state`.
async fn rest_api(host: &'static str, port: u16, state: Arc<AtomicU8>) {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .expect("binding the REST stand-in");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let status = match state.load(Ordering::SeqCst) {
                PRIMARY => "200 OK",
                REPLICA => "503 Service Unavailable",
                _ => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
            };
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        });
    }
}

fn show_stat(socket: &str) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.write_all(b"show stat\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Waits (up to a generous limit, never asserting a time) until the servers up in `rw` are
/// exactly `expected`.
async fn wait_rw_up(socket: &str, expected: &[&str], router: &Sidecar) {
    let mut last = String::new();
    for _ in 0..600 {
        if let Some(stat) = show_stat(socket) {
            let up = servers_up(&stat).remove("rw").unwrap_or_default();
            if up == expected {
                return;
            }
            last = format!("{up:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "rw never had exactly {expected:?} up (last seen {last}); router log:\n{}",
        router.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_coming_up_drops_the_former_one_at_once() {
    let dir = TestDir::new();
    let rest_port = free_port();
    let mut common = dir.common("rt", "router");
    common.metrics_port = None;
    let member = MemberEnv {
        common,
        role: Role::Router {
            members: vec!["127.0.0.2".into(), "127.0.0.3".into()],
            worker_members: vec![],
            pg_port: free_port(),
            rest_port,
            rw_port: free_port(),
            ro_port: free_port(),
            worker_port: None,
            check_interval_ms: 1000,
            fall: 1000,
            rise: 1,
            ro_fallback: true,
        },
    };
    let first = Arc::new(AtomicU8::new(PRIMARY));
    let second = Arc::new(AtomicU8::new(REPLICA));
    tokio::spawn(rest_api("127.0.0.2", rest_port, first.clone()));
    tokio::spawn(rest_api("127.0.0.3", rest_port, second.clone()));
    let socket = router::admin_socket_path(&member.common)
        .display()
        .to_string();
    let mut sidecar = Sidecar::run(&dir, &member);

    wait_rw_up(&socket, &["127.0.0.2"], &sidecar).await;

    // The leader's container is killed (its address stops answering) and the replica is
    // promoted. HAProxy alone would keep the silent server up for 1000 failed checks.
    first.store(SILENT, Ordering::SeqCst);
    second.store(PRIMARY, Ordering::SeqCst);
    wait_rw_up(&socket, &["127.0.0.3"], &sidecar).await;
    let log = sidecar.log_text();
    assert!(
        log.contains("the former one is marked down at once"),
        "the former leader left the backend, but not through the sidecar:\n{log}"
    );

    // Marked down is not kept down: were the former leader the primary again, its next
    // check would bring it back (here it comes back as a replica and stays out).
    first.store(REPLICA, Ordering::SeqCst);
    wait_rw_up(&socket, &["127.0.0.3"], &sidecar).await;
    assert_eq!(sidecar.stop(), 0, "the router stops cleanly");
}
