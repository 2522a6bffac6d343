//! Host integration tests of the `replication` topology: real PostgreSQL from Debian's
//! packages, driven by the sidecar binary on loopback ports (primary, replica, slot).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use pgswarm_contract::Role;

/// Sets the init SQL folder of a primary.
fn with_init_sql(
    mut member: pgswarm_contract::MemberEnv,
    dir: &Path,
) -> pgswarm_contract::MemberEnv {
    if let Role::Primary { init_sql_dir, .. } = &mut member.role {
        *init_sql_dir = Some(dir.display().to_string());
    }
    member
}

async fn wait_streaming(
    primary: &tokio_postgres::Client,
    replica: &tokio_postgres::Client,
    slot: &str,
) {
    eventually("the replica to stream", || async {
        let row = primary
            .query_opt(
                "SELECT state FROM pg_stat_replication WHERE application_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| e.to_string())?;
        match row.map(|r| r.get::<_, String>(0)) {
            Some(state) if state == "streaming" => {}
            other => return Err(format!("pg_stat_replication state: {other:?}")),
        }
        let row = replica
            .query_opt("SELECT status, slot_name FROM pg_stat_wal_receiver", &[])
            .await
            .map_err(|e| e.to_string())?
            .ok_or("pg_stat_wal_receiver is empty")?;
        let (status, slot_name): (String, Option<String>) = (row.get(0), row.get(1));
        if status == "streaming" && slot_name.as_deref() == Some(slot) {
            Ok(())
        } else {
            Err(format!("wal receiver: {status} on slot {slot_name:?}"))
        }
    })
    .await
}

async fn replica_sees(replica: &tokio_postgres::Client, value: &str) {
    eventually(&format!("row {value:?} on the replica"), || async {
        let n: i64 = replica
            .query_one("SELECT count(*) FROM items WHERE name = $1", &[&value])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    })
    .await
}

fn health(dir: &TestDir, member: &pgswarm_contract::MemberEnv) -> (i32, String) {
    Sidecar::start(
        &format!("{}-health", member.common.member),
        &env_of(member),
        &["health"],
        dir.path(),
    )
    .finish(PATIENCE)
}

#[tokio::test]
async fn primary_and_replica_stream_and_survive_a_restart() {
    let dir = TestDir::new();
    let init_sql = dir.path().join("init-sql");
    std::fs::create_dir(&init_sql).unwrap();
    std::fs::write(init_sql.join("01-schema.sql"), "CREATE TABLE init_runs (at timestamptz DEFAULT now());\nCREATE TABLE items (name text PRIMARY KEY);").unwrap();
    std::fs::write(
        init_sql.join("02-data.sql"),
        "INSERT INTO init_runs DEFAULT VALUES;",
    )
    .unwrap();
    std::fs::write(init_sql.join("README.txt"), "not SQL: ignored").unwrap();
    let (p_port, r_port) = (free_port(), free_port());
    let primary_member = with_init_sql(primary_env(&dir, "pg1", p_port, &["pg2"]), &init_sql);
    let replica_member = replica_env(&dir, "pg2", r_port, p_port);

    // The replica starts first: it must wait for the primary, not fail.
    let mut replica = Sidecar::run(&dir, &replica_member);
    let mut primary = Sidecar::run(&dir, &primary_member);
    let p = superuser(p_port).await;
    let r = superuser(r_port).await;
    let primary_id = system_identifier(&p).await;
    assert_eq!(system_identifier(&r).await, primary_id);

    p.execute("INSERT INTO items VALUES ('written on the primary')", &[])
        .await
        .unwrap();
    replica_sees(&r, "written on the primary").await;
    let err = r
        .execute("INSERT INTO items VALUES ('on the replica')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err}"
    );
    let slot = p
        .query_one(
            "SELECT active, slot_type FROM pg_replication_slots WHERE slot_name = 'pg2'",
            &[],
        )
        .await
        .unwrap();
    assert!(slot.get::<_, bool>(0));
    assert_eq!(slot.get::<_, String>(1), "physical");
    wait_streaming(&p, &r, "pg2").await;

    // The replication role may replicate but is no superuser.
    let role = p
        .query_one(
            "SELECT rolreplication, rolsuper, rolcanlogin FROM pg_roles WHERE rolname = 'replicator'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            role.get::<_, bool>(0),
            role.get::<_, bool>(1),
            role.get::<_, bool>(2)
        ),
        (true, false, true)
    );
    // Checksums on, SCRAM only.
    let checksums: String = p
        .query_one("SHOW data_checksums", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(checksums, "on");
    let md5_or_trust: i64 = p
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method NOT IN ('scram-sha-256', 'peer')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(md5_or_trust, 0);

    assert_eq!(health(&dir, &primary_member).0, 0);
    assert_eq!(health(&dir, &replica_member).0, 0);
    // Each member's health check knows its role: the replica's settings against the
    // primary's socket would say "not in recovery".
    let mut crossed = replica_member.clone();
    crossed.common.run_dir = primary_member.common.run_dir.clone();
    if let Role::Replica { postgres, .. } = &mut crossed.role {
        postgres.port = p_port;
    }
    let (code, log) = health(&dir, &crossed);
    assert_ne!(code, 0);
    assert!(log.contains("not in recovery"), "{log}");

    drop((p, r));
    assert_eq!(replica.stop(), 0, "{}", replica.log_text());
    assert_eq!(primary.stop(), 0, "{}", primary.log_text());
    for member in [&primary, &replica] {
        let log = member.log_text();
        assert!(log.contains("forwarding signal"), "{log}");
        assert!(log.contains("database system is shut down"), "{log}");
    }
    let first_primary_log = primary.log_text();
    let first_replica_log = replica.log_text();
    assert!(first_primary_log.contains("initdb"));
    assert!(first_replica_log.contains("clone complete"));

    // Second start: nothing re-initialized, nothing lost, same cluster.
    let primary = Sidecar::run(&dir, &primary_member);
    let replica = Sidecar::run(&dir, &replica_member);
    let p = superuser(p_port).await;
    let r = superuser(r_port).await;
    assert_eq!(system_identifier(&p).await, primary_id);
    assert_eq!(system_identifier(&r).await, primary_id);
    replica_sees(&r, "written on the primary").await;
    let runs: i64 = p
        .query_one("SELECT count(*) FROM init_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "the init SQL must run exactly once");
    p.execute("INSERT INTO items VALUES ('after the restart')", &[])
        .await
        .unwrap();
    replica_sees(&r, "after the restart").await;
    wait_streaming(&p, &r, "pg2").await;
    let second_primary = primary.log_text()[first_primary_log.len()..].to_string();
    let second_replica = replica.log_text()[first_replica_log.len()..].to_string();
    assert!(!second_primary.contains("initdb"), "{second_primary}");
    assert!(
        !second_primary.contains("running init SQL"),
        "{second_primary}"
    );
    assert!(
        !second_replica.contains("pg_basebackup"),
        "{second_replica}"
    );
    assert!(
        second_replica.contains("starting the existing replica data"),
        "{second_replica}"
    );
}

#[tokio::test]
async fn no_password_in_child_environments_logs_or_readable_files() {
    let dir = TestDir::new();
    let (p_port, r_port) = (free_port(), free_port());
    let primary_member = primary_env(&dir, "pg1", p_port, &["pg2"]);
    let replica_member = replica_env(&dir, "pg2", r_port, p_port);
    let primary = Sidecar::run(&dir, &primary_member);
    let replica = Sidecar::run(&dir, &replica_member);
    let p = superuser(p_port).await;
    let r = superuser(r_port).await;
    wait_streaming(&p, &r, "pg2").await;

    let secrets = [SUPERUSER_PASSWORD, REPLICATION_PASSWORD];
    for sidecar in [&primary, &replica] {
        let children = sidecar.children();
        let postgres: Vec<u32> = children
            .iter()
            .copied()
            .filter(|pid| comm_of(*pid).as_deref() == Some("postgres"))
            .collect();
        assert_eq!(postgres.len(), 1, "{}: children {children:?}", sidecar.name);
        // The postmaster and every backend it forked (wal sender/receiver included).
        let mut pids = postgres.clone();
        pids.extend(children_of(postgres[0]));
        for pid in pids {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            let environ = String::from_utf8_lossy(&environ);
            for secret in secrets {
                assert!(!environ.contains(secret), "password in /proc/{pid}/environ");
            }
            assert!(!environ.contains("PGSWARM_"), "{environ}");
            assert!(!environ.contains("PGPASSWORD"), "{environ}");
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            let cmdline = String::from_utf8_lossy(&cmdline);
            for secret in secrets {
                assert!(!cmdline.contains(secret), "password in /proc/{pid}/cmdline");
            }
        }
    }
    // What holds a credential is private; nothing under the member folders is readable by
    // others except the socket.
    let replica_run = Path::new(&replica_member.common.run_dir);
    let passfile = replica_run.join("replication.pgpass");
    let mode = std::fs::metadata(&passfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for root in [&primary_member.common, &replica_member.common] {
        for top in [&root.data_root, &root.run_dir] {
            let mode = std::fs::metadata(top).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{top}");
        }
    }
    // initdb's password file is gone.
    assert!(!Path::new(&primary_member.common.run_dir)
        .join("initdb.pwfile")
        .exists());
    // The password never reached a log line or a world-readable conf.
    for sidecar in [&primary, &replica] {
        let log = sidecar.log_text();
        for secret in secrets {
            assert!(
                !log.contains(secret),
                "password in the log of {}",
                sidecar.name
            );
        }
    }
    let conf =
        std::fs::read_to_string(Path::new(&replica_member.common.pgdata()).join("pgswarm.conf"))
            .unwrap();
    assert!(conf.contains("passfile="), "{conf}");
    let auto_conf = std::fs::read_to_string(
        Path::new(&replica_member.common.pgdata()).join("postgresql.auto.conf"),
    )
    .unwrap();
    for text in [&conf, &auto_conf] {
        for secret in secrets {
            assert!(!text.contains(secret));
        }
    }
    // The sidecar stays small while its child runs (reported, not asserted).
    let rss = std::fs::read_to_string(format!("/proc/{}/status", replica.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!("replica sidecar {rss}");
}

#[tokio::test]
async fn an_interrupted_clone_is_never_taken_for_data_and_the_next_start_completes_it() {
    let dir = TestDir::new();
    let (p_port, r_port) = (free_port(), free_port());
    let primary_member = primary_env(&dir, "pg1", p_port, &["pg2"]);
    let replica_member = replica_env(&dir, "pg2", r_port, p_port);
    let _primary = Sidecar::run(&dir, &primary_member);
    let p = superuser(p_port).await;
    // Enough data that the clone takes a while (about 300 MB).
    p.batch_execute(
        "CREATE TABLE items (name text PRIMARY KEY);
         INSERT INTO items VALUES ('before the clone');
         CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS pad
           FROM generate_series(1, 300000) g;",
    )
    .await
    .unwrap();

    let pgdata = Path::new(&replica_member.common.pgdata()).to_path_buf();
    let staging = pgdata.with_file_name("pgdata.clone-tmp");
    let mut replica = Sidecar::run(&dir, &replica_member);
    // Kill the sidecar as soon as the copy has started writing files.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if staging.join("PG_VERSION").exists() || staging.join("base").exists() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the clone never started:\n{}",
            replica.log_text()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let basebackup: Vec<u32> = replica
        .children()
        .into_iter()
        .filter(|pid| comm_of(*pid).as_deref() == Some("pg_basebackup"))
        .collect();
    replica.signal(Signal::SIGKILL);
    assert_eq!(replica.wait_exit(PATIENCE), Some(128 + 9));
    assert!(
        !replica.log_text().contains("clone complete"),
        "the clone finished before it could be interrupted; the test needs more data"
    );
    // pg_basebackup died with it, and nothing looks like a data directory.
    for pid in basebackup {
        common_wait_gone(pid).await;
    }
    assert!(!pgdata.join("PG_VERSION").exists());
    assert!(
        staging.exists(),
        "the unfinished copy is where the next start expects it"
    );

    let replica = Sidecar::run(&dir, &replica_member);
    let r = superuser(r_port).await;
    replica_sees(&r, "before the clone").await;
    let n: i64 = r
        .query_one("SELECT count(*) FROM filler", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 300000);
    assert!(!staging.exists());
    let log = replica.log_text();
    assert!(log.contains("removing an unfinished copy"), "{log}");
    assert!(log.contains("clone complete"), "{log}");
}

async fn common_wait_gone(pid: u32) {
    eventually(&format!("process {pid} to end"), || async {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Ok(()),
            // A zombie already counts as gone: it holds no file open.
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                Ok(())
            }
            Ok(_) => Err("still running".to_string()),
        }
    })
    .await
}

#[tokio::test]
async fn bad_inputs_fail_with_a_clear_error_and_a_non_zero_exit() {
    let dir = TestDir::new();
    let quick = Duration::from_secs(60);

    // An unknown mode.
    let mut env = env_of(&primary_env(&dir, "m1", free_port(), &[]));
    env.insert("PGSWARM_MODE".into(), "bogus".into());
    let (code, log) = Sidecar::start("bogus", &env, &[], dir.path()).finish(quick);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("\"bogus\"") && log.contains("primary, replica"),
        "{log}"
    );

    // A missing secret file.
    let mut member = primary_env(&dir, "m2", free_port(), &[]);
    let missing = dir.path().join("secrets/nope");
    member.common.secret_files.insert(
        pgswarm_contract::Secret::SuperuserPassword,
        missing.display().to_string(),
    );
    let (code, log) =
        Sidecar::start("no-secret", &env_of(&member), &["run"], dir.path()).finish(quick);
    assert_eq!(code, 2, "{log}");
    for needle in [
        missing.to_str().unwrap(),
        "does not exist",
        "demo_superuser_password",
        "docker secret create",
    ] {
        assert!(log.contains(needle), "{needle} not in {log}");
    }

    // A primary that never answers.
    let mut member = replica_env(&dir, "m3", free_port(), free_port());
    member.common.wait_timeout_secs = 3;
    let (code, log) =
        Sidecar::start("unreachable", &env_of(&member), &["run"], dir.path()).finish(quick);
    assert_eq!(code, 1, "{log}");
    for needle in [
        "gave up waiting for the primary at 127.0.0.1:",
        "PGSWARM_WAIT_TIMEOUT=3",
        "s left",
    ] {
        assert!(log.contains(needle), "{needle} not in {log}");
    }
    assert!(!Path::new(&member.common.pgdata())
        .join("PG_VERSION")
        .exists());

    // A data directory holding something else is left alone.
    let mut member = primary_env(&dir, "m4", free_port(), &[]);
    let pgdata = Path::new(&member.common.pgdata()).to_path_buf();
    std::fs::create_dir_all(&pgdata).unwrap();
    std::fs::write(pgdata.join("notes.txt"), "mine").unwrap();
    std::fs::set_permissions(
        dir.path().join("m4"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    member.common.wait_timeout_secs = 30;
    let (code, log) =
        Sidecar::start("foreign", &env_of(&member), &["run"], dir.path()).finish(quick);
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("not a PostgreSQL data directory") && log.contains("notes.txt"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(pgdata.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[tokio::test]
async fn replica_data_of_another_cluster_is_refused_and_left_untouched() {
    let dir = TestDir::new();
    // "other" makes a cluster of its own, then stops: its data is a cluster, but not ours.
    let other_member = primary_env(&dir, "other", free_port(), &[]);
    let mut other = Sidecar::run(&dir, &other_member);
    superuser(match &other_member.role {
        Role::Primary { postgres, .. } => postgres.port,
        _ => unreachable!(),
    })
    .await;
    assert_eq!(other.stop(), 0);

    let p_port = free_port();
    let _primary = Sidecar::run(&dir, &primary_env(&dir, "pg1", p_port, &["pg2"]));
    superuser(p_port).await;
    // The replica's volume holds the other cluster's data.
    let mut member = replica_env(&dir, "pg2", free_port(), p_port);
    member.common.data_root = other_member.common.data_root.clone();
    let control = Path::new(&member.common.pgdata()).join("global/pg_control");
    let before = std::fs::read(&control).unwrap();
    let (code, log) =
        Sidecar::start("mismatch", &env_of(&member), &["run"], dir.path()).finish(PATIENCE);
    assert_ne!(code, 0, "{log}");
    for needle in [
        "belongs to another cluster",
        "system identifier",
        "Nothing was changed",
    ] {
        assert!(log.contains(needle), "{needle} not in {log}");
    }
    assert_eq!(std::fs::read(&control).unwrap(), before);
}
