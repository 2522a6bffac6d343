//! Host integration test of the `patroni` topology: 3 etcd members, 3 Patroni members, the
//! HAProxy router and the PgBouncer pooler, every one started by the sidecar binary from its
//! contract environment, with the real programs from Debian's packages on loopback.
//!
//! The Patroni members listen on distinct loopback addresses (127.0.0.2-4) with the same
//! ports, as Swarm members do on their own overlay addresses; the router's member list is
//! then the contract's plain host list. etcd members share 127.0.0.1 with distinct ports
//! (each member's ports are its own in the contract).

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use pgswarm_contract::{Endpoint, EtcdPeer, MemberEnv, PoolMode, Postgres, Role, SynchronousMode};
use pgswarm_sidecar::http;
use serde_json::Value;

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// A port free on every one of `hosts` (bound on the first, then tried on the others).
fn free_port_on(hosts: &[&str]) -> u16 {
    for _ in 0..200 {
        let first = TcpListener::bind((hosts[0], 0)).expect("binding a loopback port");
        let port = first.local_addr().expect("local address").port();
        let others: Vec<_> = hosts[1..]
            .iter()
            .map(|h| TcpListener::bind((*h, port)))
            .collect();
        if others.iter().all(Result::is_ok) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on all of {hosts:?}");
}

struct Ports {
    pg: u16,
    rest: u16,
    etcd_client: [u16; 3],
    etcd_peer: [u16; 3],
    rw: u16,
    ro: u16,
    pooler: u16,
}

impl Ports {
    fn pick() -> Self {
        let mut taken = Vec::new();
        let mut next = |f: &dyn Fn() -> u16| loop {
            let p = f();
            if !taken.contains(&p) {
                taken.push(p);
                return p;
            }
        };
        let pg = next(&|| free_port_on(&HOSTS));
        let rest = next(&|| free_port_on(&HOSTS));
        let etcd_client = [next(&free_port), next(&free_port), next(&free_port)];
        let etcd_peer = [next(&free_port), next(&free_port), next(&free_port)];
        Ports {
            pg,
            rest,
            etcd_client,
            etcd_peer,
            rw: next(&free_port),
            ro: next(&free_port),
            pooler: next(&free_port),
        }
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
        common: dir.common("demo", &format!("pg{}", i + 1)),
        role: Role::Patroni {
            postgres: Postgres {
                port: ports.pg,
                listen_address: HOSTS[i].into(),
                connect_host: Some(HOSTS[i].into()),
                allowed_cidrs: vec!["127.0.0.0/8".into()],
                ..Postgres::default()
            },
            etcd_hosts: ports
                .etcd_client
                .iter()
                .map(|p| Endpoint {
                    host: "127.0.0.1".into(),
                    port: *p,
                })
                .collect(),
            rest_port: ports.rest,
            ttl: 20,
            loop_wait: 2,
            retry_timeout: 5,
            maximum_lag_on_failover: 1_048_576,
            synchronous_mode: SynchronousMode::Off,
            citus: None,
            handover: None,
        },
    }
}

fn router_env(dir: &TestDir, ports: &Ports) -> MemberEnv {
    MemberEnv {
        common: dir.common("demo", "router"),
        role: Role::Router {
            members: HOSTS.iter().map(|h| h.to_string()).collect(),
            worker_members: vec![],
            pg_port: ports.pg,
            rest_port: ports.rest,
            rw_port: ports.rw,
            ro_port: ports.ro,
            worker_port: None,
            check_interval_ms: 500,
            fall: 2,
            rise: 1,
            ro_fallback: true,
        },
    }
}

fn pooler_env(dir: &TestDir, ports: &Ports) -> MemberEnv {
    MemberEnv {
        common: dir.common("demo", "pooler"),
        role: Role::Pooler {
            target: Endpoint {
                host: "127.0.0.1".into(),
                port: ports.rw,
            },
            port: ports.pooler,
            pool_mode: PoolMode::Transaction,
            pool_size: 5,
            max_client_conn: 50,
            databases: vec![],
        },
    }
}

/// Patroni's view of the cluster from the member on `host`.
async fn cluster_view(host: &str, rest_port: u16) -> Result<Value, String> {
    let (code, body) = http::get(host, rest_port, "/cluster", Duration::from_secs(5))
        .await
        .map_err(|e| format!("{e:#}"))?;
    if code != 200 {
        return Err(format!("GET /cluster on {host}: {code} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("/cluster is not JSON ({e}): {body}"))
}

/// (leader host, replica hosts) once the cluster has exactly one leader and `replicas`
/// running replicas, as seen from any of `hosts`.
async fn settled(hosts: &[&str], rest_port: u16, replicas: usize) -> (String, Vec<String>) {
    eventually(
        &format!("one leader and {replicas} replicas in Patroni's /cluster"),
        || async {
            let mut last = String::new();
            for host in hosts {
                let view = match cluster_view(host, rest_port).await {
                    Ok(v) => v,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let members = view["members"].as_array().cloned().unwrap_or_default();
                let host_of = |m: &Value| m["host"].as_str().unwrap_or_default().to_string();
                let leaders: Vec<String> = members
                    .iter()
                    .filter(|m| m["role"] == "leader" && m["state"] == "running")
                    .map(host_of)
                    .collect();
                let running: Vec<String> = members
                    .iter()
                    .filter(|m| {
                        m["role"] == "replica"
                            && matches!(m["state"].as_str(), Some("running" | "streaming"))
                    })
                    .map(host_of)
                    .collect();
                if leaders.len() == 1 && running.len() == replicas {
                    return Ok((leaders[0].clone(), running));
                }
                last = format!("from {host}: {view}");
            }
            Err(last)
        },
    )
    .await
}

/// One value of a simple-protocol query (what PgBouncer's transaction mode needs).
async fn simple_value(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let messages = client.simple_query(sql).await.map_err(|e| e.to_string())?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(String::from),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

/// The command line pid of the direct child of `sidecar` named `comm`.
fn child_named(sidecar: &Sidecar, comm: &str) -> Option<u32> {
    sidecar
        .children()
        .into_iter()
        .find(|pid| comm_of(*pid).as_deref() == Some(comm))
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn environ_of(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("reading /proc/<pid>/environ");
    String::from_utf8_lossy(&raw).replace('\0', "\n")
}

/// Runs `pgswarm-sidecar health` for `member`: (exit code, output).
fn health(dir: &TestDir, member: &MemberEnv) -> (i32, String) {
    let name = format!("{}-health", member.common.member);
    Sidecar::start(&name, &env_of(member), &["health"], dir.path()).finish(PATIENCE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_patroni_members_behind_router_and_pooler_fail_over_on_sigterm() {
    let dir = TestDir::new();
    let ports = Ports::pick();

    let etcd: Vec<MemberEnv> = (0..3).map(|i| etcd_env(&dir, &ports, i)).collect();
    let members: Vec<MemberEnv> = (0..3).map(|i| patroni_env(&dir, &ports, i)).collect();
    let _etcd: Vec<Sidecar> = etcd.iter().map(|m| Sidecar::run(&dir, m)).collect();
    let mut patroni: Vec<Sidecar> = members.iter().map(|m| Sidecar::run(&dir, m)).collect();
    let started = Instant::now();

    let (leader, replicas) = settled(&HOSTS, ports.rest, 2).await;
    // Figures for the report; nothing is asserted on durations.
    eprintln!(
        "figure: one leader and two running replicas {:.1} s after the sidecars started",
        started.elapsed().as_secs_f64()
    );
    let leader_index = HOSTS
        .iter()
        .position(|h| *h == leader)
        .expect("the leader is one of the members");

    // Two streaming replicas, seen from the leader's PostgreSQL.
    let primary = eventually("the leader's PostgreSQL", || {
        connect_member(&leader, ports.pg)
    })
    .await;
    eventually("two streaming replicas in pg_stat_replication", || async {
        let n: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} streaming"))
        }
    })
    .await;
    let in_recovery: bool = primary
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery on the leader")
        .get(0);
    assert!(!in_recovery, "the leader is a primary");
    for replica in &replicas {
        let client = eventually("a replica's PostgreSQL", || {
            connect_member(replica, ports.pg)
        })
        .await;
        let recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("pg_is_in_recovery on a replica")
            .get(0);
        assert!(recovery, "{replica} is a standby");
    }

    // Credentials: only in the 0600 patroni.yml, never in Patroni's (or PostgreSQL's) environment.
    for (member, sidecar) in members.iter().zip(&patroni) {
        let path = format!("{}/patroni.yml", member.common.run_dir);
        let mode = std::fs::metadata(&path)
            .expect("patroni.yml exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{path} mode {mode:o}");
        let text = std::fs::read_to_string(&path).expect("reading patroni.yml");
        assert!(text.contains("\"scope\": \"demo\""), "{text}");
        let pid = child_named(sidecar, "patroni").expect("Patroni runs under the sidecar");
        let mut pids = vec![pid];
        pids.extend(children_of(pid));
        for pid in pids {
            let environ = environ_of(pid);
            for secret in [SUPERUSER_PASSWORD, REPLICATION_PASSWORD, REST_PASSWORD] {
                assert!(
                    !environ.contains(secret),
                    "a password is in the environment of pid {pid} ({:?})",
                    comm_of(pid)
                );
            }
            assert!(!environ.contains("PGSWARM_"), "{environ}");
        }
        let log = sidecar.log_text();
        for secret in [SUPERUSER_PASSWORD, REPLICATION_PASSWORD, REST_PASSWORD] {
            assert!(
                !log.contains(secret),
                "a password is in the log of {}",
                sidecar.name
            );
        }
        assert!(
            log.contains("waiting for etcd to report a healthy cluster"),
            "{log}"
        );
    }

    // Router and pooler in front.
    let router = router_env(&dir, &ports);
    let pooler = pooler_env(&dir, &ports);
    let _router = Sidecar::run(&dir, &router);
    let _pooler = Sidecar::run(&dir, &pooler);

    let via_rw = eventually("the router's read-write port", || async {
        let c = connect(ports.rw, "postgres", SUPERUSER_PASSWORD).await?;
        let addr = simple_value(&c, "SELECT host(inet_server_addr())").await?;
        if addr == leader {
            Ok(c)
        } else {
            Err(format!(
                "read-write port reached {addr}, the leader is {leader}"
            ))
        }
    })
    .await;
    via_rw
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, via text); INSERT INTO items VALUES (1, 'router')")
        .await
        .expect("a write through the router's read-write port");

    let via_pooler = eventually("a query through the pooler", || async {
        let c = connect(ports.pooler, "postgres", SUPERUSER_PASSWORD).await?;
        simple_value(&c, "SELECT 1").await?;
        Ok(c)
    })
    .await;
    let users = format!("{}/pgbouncer.users", pooler.common.run_dir);
    let mode = std::fs::metadata(&users)
        .expect("PgBouncer's auth file exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{users} mode {mode:o}");
    let pooled_addr = simple_value(&via_pooler, "SELECT host(inet_server_addr())")
        .await
        .expect("server address through the pooler");
    assert_eq!(pooled_addr, leader, "the pooler reaches the leader");
    via_pooler
        .simple_query("INSERT INTO items VALUES (2, 'pooler')")
        .await
        .expect("a write through the pooler");
    let landed: i64 = primary
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("reading the rows on the leader")
        .get(0);
    assert_eq!(landed, 2, "both writes landed on the leader");

    eventually("the router's read-only port to reach a replica", || async {
        let c = connect(ports.ro, "postgres", SUPERUSER_PASSWORD).await?;
        let recovery = simple_value(&c, "SELECT pg_is_in_recovery()").await?;
        let addr = simple_value(&c, "SELECT host(inet_server_addr())").await?;
        if recovery == "t" && replicas.contains(&addr) {
            Ok(())
        } else {
            Err(format!(
                "read-only port reached {addr}, in recovery: {recovery}"
            ))
        }
    })
    .await;

    // The router's checks read only the status line (OPTIONS): Patroni logs no connection
    // reset for them.
    for sidecar in &patroni {
        let log = sidecar.log_text();
        assert!(
            !log.contains("Exception happened during processing of request"),
            "{}: {log}",
            sidecar.name
        );
    }

    // Health checks of every mode, through the binary.
    for member in [&etcd[0], &members[leader_index], &router, &pooler] {
        let (code, output) = health(&dir, member);
        assert_eq!(code, 0, "health of {}: {output}", member.common.member);
    }

    if let Some(rss) = rss_kib(patroni[leader_index].pid()) {
        eprintln!("figure: resident memory of the leader's sidecar (Patroni running): {rss} KiB");
    }

    // SIGTERM to the leader's sidecar: a clean exit, and another member takes over.
    let stop_sent = Instant::now();
    let code = patroni[leader_index].stop();
    assert_eq!(
        code,
        0,
        "the leader's sidecar exits cleanly:\n{}",
        patroni[leader_index].log_text()
    );
    let (code, _) = health(&dir, &members[leader_index]);
    assert_ne!(code, 0, "a stopped member is not healthy");
    let survivors: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != leader).collect();
    let (new_leader, _) = eventually("a new leader among the survivors", || async {
        for host in &survivors {
            let view = cluster_view(host, ports.rest).await?;
            let members = view["members"].as_array().cloned().unwrap_or_default();
            if let Some(m) = members
                .iter()
                .find(|m| m["role"] == "leader" && m["state"] == "running")
            {
                let h = m["host"].as_str().unwrap_or_default().to_string();
                if survivors.contains(&h.as_str()) {
                    return Ok((h, view));
                }
            }
        }
        Err("no leader among the survivors yet".to_string())
    })
    .await;
    assert_ne!(new_leader, leader);
    eprintln!(
        "figure: new leader {:.1} s after SIGTERM to the old leader's sidecar (ttl 20, loop_wait 2)",
        stop_sent.elapsed().as_secs_f64()
    );

    // The router follows: writes through it land on the new leader, with the old rows.
    eventually("the router to follow the new leader", || async {
        let c = connect(ports.rw, "postgres", SUPERUSER_PASSWORD).await?;
        let addr = simple_value(&c, "SELECT host(inet_server_addr())").await?;
        if addr != new_leader {
            return Err(format!("read-write port reached {addr}"));
        }
        c.simple_query("INSERT INTO items VALUES (3, 'after failover')")
            .await
            .map_err(|e| e.to_string())?;
        let n = simple_value(&c, "SELECT count(*) FROM items").await?;
        if n == "3" {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    })
    .await;
    eprintln!(
        "figure: a write through the router lands on the new leader {:.1} s after SIGTERM \
         (router checks every 500 ms, rise 1)",
        stop_sent.elapsed().as_secs_f64()
    );

    // With every replica gone, the read-only port answers from the primary (the router's
    // read-only fallback) instead of refusing.
    for (i, host) in HOSTS.iter().enumerate() {
        if *host != new_leader && patroni[i].code.is_none() {
            let code = patroni[i].stop();
            assert_eq!(code, 0, "{} stops cleanly", patroni[i].name);
        }
    }
    eventually("the read-only port to fall back to the primary", || async {
        let c = connect(ports.ro, "postgres", SUPERUSER_PASSWORD).await?;
        let recovery = simple_value(&c, "SELECT pg_is_in_recovery()").await?;
        let addr = simple_value(&c, "SELECT host(inet_server_addr())").await?;
        if recovery == "f" && addr == new_leader {
            Ok(())
        } else {
            Err(format!(
                "read-only port reached {addr}, in recovery: {recovery}"
            ))
        }
    })
    .await;

    for sidecar in patroni.iter_mut() {
        if sidecar.code.is_none() {
            let code = sidecar.stop();
            assert_eq!(
                code,
                0,
                "{} stops cleanly:\n{}",
                sidecar.name,
                sidecar.log_text()
            );
        }
    }
}
