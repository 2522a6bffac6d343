//! Host tests of the configuration side of the `patroni`, `etcd`, `router` and `pooler`
//! modes through the sidecar binary: bad inputs give a clear error and a non-zero exit, and a
//! Citus member renders Patroni's citus section (no Citus extension on this host, so no
//! running Citus cluster here; the patroni.yml it would run with is checked instead).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use pgswarm_contract::{
    Citus, Endpoint, EtcdPeer, MemberEnv, Postgres, Role, Secret, SynchronousMode,
};
use serde_json::Value;

/// Exit code of the sidecar for a configuration error.
const EXIT_CONFIG: i32 = 2;

fn patroni_member(dir: &TestDir, name: &str, etcd_port: u16) -> MemberEnv {
    let mut common = dir.common("demo", name);
    common.wait_timeout_secs = 3;
    MemberEnv {
        common,
        role: Role::Patroni {
            postgres: Postgres {
                port: free_port(),
                listen_address: "127.0.0.1".into(),
                connect_host: Some("127.0.0.1".into()),
                allowed_cidrs: vec!["127.0.0.1/32".into()],
                ..Postgres::default()
            },
            etcd_hosts: vec![Endpoint {
                host: "127.0.0.1".into(),
                port: etcd_port,
            }],
            rest_port: free_port(),
            ttl: 20,
            loop_wait: 5,
            retry_timeout: 5,
            maximum_lag_on_failover: 1_048_576,
            synchronous_mode: SynchronousMode::Off,
            citus: None,
            handover: None,
        },
    }
}

fn set_patroni(
    member: &mut MemberEnv,
    f: impl FnOnce(&mut u32, &mut SynchronousMode, &mut Option<Citus>),
) {
    if let Role::Patroni {
        ttl,
        synchronous_mode,
        citus,
        ..
    } = &mut member.role
    {
        f(ttl, synchronous_mode, citus);
    }
}

fn run_to_end(dir: &TestDir, member: &MemberEnv) -> (i32, String) {
    Sidecar::run(dir, member).finish(PATIENCE)
}

fn rendered(member: &MemberEnv) -> (u32, Value) {
    let path = format!("{}/patroni.yml", member.common.run_dir);
    let mode = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o777;
    let text = std::fs::read_to_string(&path).expect("reading patroni.yml");
    (
        mode,
        serde_json::from_str(&text).expect("patroni.yml parses"),
    )
}

#[test]
fn a_ttl_below_patronis_minimum_is_refused_by_name() {
    let dir = TestDir::new();
    let mut member = patroni_member(&dir, "pg1", free_port());
    set_patroni(&mut member, |ttl, _, _| *ttl = 10);
    let (code, log) = run_to_end(&dir, &member);
    assert_eq!(code, EXIT_CONFIG, "{log}");
    assert!(log.contains("PGSWARM_TTL=10"), "{log}");
    assert!(log.contains("20"), "{log}");
    assert!(
        !log.contains("waiting for etcd"),
        "fails before waiting: {log}"
    );
}

#[test]
fn the_timing_rule_names_all_three_settings() {
    let dir = TestDir::new();
    let mut member = patroni_member(&dir, "pg1", free_port());
    if let Role::Patroni {
        ttl,
        loop_wait,
        retry_timeout,
        ..
    } = &mut member.role
    {
        *ttl = 20;
        *loop_wait = 10;
        *retry_timeout = 10;
    }
    let (code, log) = run_to_end(&dir, &member);
    assert_eq!(code, EXIT_CONFIG, "{log}");
    for var in ["PGSWARM_TTL", "PGSWARM_LOOP_WAIT", "PGSWARM_RETRY_TIMEOUT"] {
        assert!(log.contains(var), "{var}: {log}");
    }
}

#[test]
fn a_missing_rest_password_file_is_named() {
    let dir = TestDir::new();
    let mut member = patroni_member(&dir, "pg1", free_port());
    let missing = dir.path().join("secrets/not-there");
    member
        .common
        .secret_files
        .insert(Secret::RestPassword, missing.display().to_string());
    let (code, log) = run_to_end(&dir, &member);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("rest_password"), "{log}");
    assert!(log.contains(&missing.display().to_string()), "{log}");
    assert!(
        !std::path::Path::new(&format!("{}/patroni.yml", member.common.run_dir)).exists(),
        "nothing rendered without the secret"
    );
}

#[test]
fn a_citus_member_renders_its_group_then_waits_for_etcd_and_gives_up_naming_it() {
    let dir = TestDir::new();
    let etcd_port = free_port(); // nothing listens there
    let mut member = patroni_member(&dir, "worker1a", etcd_port);
    set_patroni(&mut member, |_, sync, citus| {
        *sync = SynchronousMode::On;
        *citus = Some(Citus {
            group: 1,
            database: "citus".into(),
        });
    });
    let (code, log) = run_to_end(&dir, &member);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("waiting for etcd"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{etcd_port}")), "{log}");
    assert!(log.contains("PGSWARM_WAIT_TIMEOUT"), "{log}");

    let (mode, y) = rendered(&member);
    assert_eq!(mode, 0o600);
    assert_eq!(y["scope"], "demo");
    assert_eq!(y["name"], "worker1a");
    assert_eq!(y["citus"]["group"], 1);
    assert_eq!(y["citus"]["database"], "citus");
    assert_eq!(y["bootstrap"]["dcs"]["synchronous_mode"], true);
    // Synchronous: a crashed primary restarts in place, or fails over after the ttl.
    assert_eq!(
        y["bootstrap"]["dcs"]["primary_start_timeout"],
        y["bootstrap"]["dcs"]["ttl"]
    );
    assert_eq!(y["restapi"]["authentication"]["password"], REST_PASSWORD);
    assert_eq!(
        y["postgresql"]["authentication"]["superuser"]["password"],
        SUPERUSER_PASSWORD
    );
    assert!(
        !log.contains(SUPERUSER_PASSWORD) && !log.contains(REST_PASSWORD),
        "no password in the log"
    );
}

/// Patroni 3.x reads `synchronous_mode: quorum` as off; the sidecar refuses it there and
/// writes it for Patroni 4.
#[test]
fn quorum_mode_follows_the_installed_patroni() {
    let version = std::process::Command::new("patroni")
        .arg("--version")
        .output()
        .expect("patroni --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let major: u32 = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {version:?}"));
    let dir = TestDir::new();
    let mut member = patroni_member(&dir, "pg1", free_port());
    set_patroni(&mut member, |_, sync, _| *sync = SynchronousMode::Quorum);
    let (code, log) = run_to_end(&dir, &member);
    assert_ne!(code, 0, "{log}");
    if major < 4 {
        assert_eq!(code, EXIT_CONFIG, "{log}");
        assert!(log.contains("PGSWARM_SYNCHRONOUS_MODE=quorum"), "{log}");
        assert!(log.contains("Patroni 4.0"), "{log}");
    } else {
        let (_, y) = rendered(&member);
        assert_eq!(y["bootstrap"]["dcs"]["synchronous_mode"], "quorum");
    }
}

#[test]
fn an_etcd_member_missing_from_the_initial_cluster_is_named() {
    let dir = TestDir::new();
    let member = MemberEnv {
        common: dir.common("demo", "etcd9"),
        role: Role::Etcd {
            initial_cluster: vec![EtcdPeer {
                name: "etcd1".into(),
                peer_url: "http://127.0.0.1:2380".into(),
            }],
            client_port: free_port(),
            peer_port: 2380,
        },
    };
    let (code, log) = run_to_end(&dir, &member);
    assert_eq!(code, EXIT_CONFIG, "{log}");
    assert!(
        log.contains("etcd9") && log.contains("PGSWARM_ETCD_INITIAL_CLUSTER"),
        "{log}"
    );
}

#[test]
fn a_router_with_clashing_ports_is_refused() {
    let dir = TestDir::new();
    let port = free_port();
    let member = MemberEnv {
        common: dir.common("demo", "router"),
        role: Role::Router {
            members: vec!["127.0.0.1".into()],
            worker_members: vec![],
            pg_port: 5432,
            rest_port: 8008,
            rw_port: port,
            ro_port: port,
            worker_port: None,
            check_interval_ms: 1000,
            fall: 2,
            rise: 1,
            ro_fallback: true,
        },
    };
    let (code, log) = run_to_end(&dir, &member);
    assert_eq!(code, EXIT_CONFIG, "{log}");
    assert!(log.contains(&port.to_string()), "{log}");
}

/// A router whose members do not answer yet still starts and listens (servers down, not a
/// failed start), and stops cleanly on SIGTERM.
#[test]
fn a_router_starts_while_its_members_are_away() {
    let dir = TestDir::new();
    let (rw, ro) = (free_port(), free_port());
    let member = MemberEnv {
        common: dir.common("demo", "router"),
        role: Role::Router {
            members: vec!["127.0.0.2".into(), "127.0.0.3".into()],
            worker_members: vec![],
            pg_port: free_port(),
            rest_port: free_port(),
            rw_port: rw,
            ro_port: ro,
            worker_port: None,
            check_interval_ms: 1000,
            fall: 2,
            rise: 1,
            ro_fallback: true,
        },
    };
    let mut router = Sidecar::run(&dir, &member);
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", rw)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", ro)).is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "router never listened:\n{}",
            router.log_text()
        );
        assert!(
            router.wait_exit(Duration::from_millis(200)).is_none(),
            "router exited:\n{}",
            router.log_text()
        );
    }
    let (code, out) =
        Sidecar::start("router-health", &env_of(&member), &["health"], dir.path()).finish(PATIENCE);
    assert_eq!(code, 0, "{out}");
    let cfg = std::fs::read_to_string(format!("{}/haproxy.cfg", member.common.run_dir))
        .expect("haproxy.cfg");
    assert!(cfg.contains("server 127.0.0.2 127.0.0.2:"), "{cfg}");
    assert_eq!(router.stop(), 0, "{}", router.log_text());
}
