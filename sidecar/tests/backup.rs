//! Host integration test of backups: one etcd member, one Patroni member with backups on and
//! the backup repository, each started by the sidecar binary from its contract environment,
//! with Debian's pgBackRest, PostgreSQL and Patroni on loopback.
//!
//! The member archives its WAL to the repository over pgBackRest's TLS (asynchronously), the
//! repository creates the stanza and takes a full backup through the member's own TLS server,
//! and a point-in-time restore through the repository gives exactly the rows committed before
//! the target time, none of those written after it, nor the DROP TABLE that followed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use pgswarm_contract::backup::BackupSettings;
use pgswarm_contract::{Endpoint, EtcdPeer, MemberEnv, Postgres, Role, Secret, SynchronousMode};

const MEMBER_HOST: &str = "127.0.0.2";
const REPO_HOST: &str = "127.0.0.1";

/// Runs `program args` as user postgres; panics with its output when it fails.
fn as_postgres(program: &str, args: &[&str]) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", program])
        .args(args)
        .output()
        .expect("running runuser");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {}: {text}", args.join(" "));
    text
}

/// A CA and one certificate for every pgBackRest peer of the test (names: the loopback
/// addresses, as DNS names since pgBackRest compares the host it dialled with the DNS names),
/// written as the secret files the sidecars read.
fn write_backup_secrets(dir: &TestDir) {
    let tmp = dir.path().join("pki");
    std::fs::create_dir(&tmp).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&tmp)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        &format!("/CN={}", pgswarm_contract::backup::tls_common_name("demo")),
    ]);
    std::fs::write(
        tmp.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:{REPO_HOST},DNS:{MEMBER_HOST},IP:{REPO_HOST},IP:{MEMBER_HOST}\n\
             extendedKeyUsage=serverAuth,clientAuth\n"
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    for (secret, value) in [
        (
            Secret::BackupTlsCa,
            std::fs::read_to_string(tmp.join("ca.crt")).unwrap(),
        ),
        (
            Secret::BackupTlsCert,
            std::fs::read_to_string(tmp.join("tls.crt")).unwrap(),
        ),
        (
            Secret::BackupTlsKey,
            std::fs::read_to_string(tmp.join("tls.key")).unwrap(),
        ),
        (
            Secret::BackupPassphrase,
            "backup-Pw-0123456789abcdef".to_string(),
        ),
    ] {
        let path = dir.secret_path(secret);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_backs_up_and_restores_to_a_point_in_time_over_tls() {
    for program in ["pgbackrest", "openssl", "runuser", "patroni", "etcd"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "needs {program} (scripts/install-host-deps.sh installs what the host tests use)"
        );
    }
    let dir = TestDir::new();
    write_backup_secrets(&dir);
    let pg_port = free_port();
    let rest_port = free_port();
    let etcd_client = free_port();
    let etcd_peer = free_port();
    let settings = BackupSettings {
        repo_port: free_port(),
        member_port: free_port(),
        archive_timeout_secs: 5,
        repo_path: dir
            .path()
            .join("backup/data/pgbackrest")
            .display()
            .to_string(),
        ..BackupSettings::new(REPO_HOST)
    };

    let etcd = MemberEnv {
        common: dir.common("demo", "etcd1"),
        role: Role::Etcd {
            initial_cluster: vec![EtcdPeer {
                name: "etcd1".into(),
                peer_url: format!("http://127.0.0.1:{etcd_peer}"),
            }],
            client_port: etcd_client,
            peer_port: etcd_peer,
        },
    };
    let mut member_common = dir.common("demo", "pg1");
    member_common.backup = Some(settings.clone());
    let member = MemberEnv {
        common: member_common,
        role: Role::Patroni {
            postgres: Postgres {
                port: pg_port,
                listen_address: MEMBER_HOST.into(),
                connect_host: Some(MEMBER_HOST.into()),
                allowed_cidrs: vec!["127.0.0.0/8".into()],
                ..Postgres::default()
            },
            etcd_hosts: vec![Endpoint {
                host: "127.0.0.1".into(),
                port: etcd_client,
            }],
            rest_port,
            ttl: 20,
            loop_wait: 2,
            retry_timeout: 5,
            maximum_lag_on_failover: 1_048_576,
            synchronous_mode: SynchronousMode::Off,
            citus: None,
            handover: None,
        },
    };
    let mut repo_common = dir.common("demo", "backup");
    repo_common.backup = Some(settings.clone());
    let repo = MemberEnv {
        common: repo_common,
        role: Role::Backup {
            members: vec![MEMBER_HOST.into()],
            pg_port,
            member_data_root: member.common.data_root.clone(),
            member_run_dir: member.common.run_dir.clone(),
            schedule_full: None,
            schedule_diff: None,
        },
    };
    // Nothing secret travels through the environment.
    for env in [env_of(&member), env_of(&repo)] {
        for value in env.values() {
            assert!(!value.contains("BEGIN"), "{value}");
            assert!(!value.contains("backup-Pw"), "{value}");
        }
    }

    let _etcd = Sidecar::run(&dir, &etcd);
    let pg1 = Sidecar::run(&dir, &member);
    let repo_sidecar = Sidecar::run(&dir, &repo);

    let client = eventually("the Patroni member to lead and accept writes", || async {
        let c = connect_member(MEMBER_HOST, pg_port).await?;
        c.batch_execute("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        let in_recovery: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if in_recovery {
            return Err("still in recovery".into());
        }
        Ok(c)
    })
    .await;
    let archive_mode: String = client
        .query_one("SHOW archive_mode", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(archive_mode, "on");
    eventually("the repository to create the stanza", || async {
        let log = repo_sidecar.log_text();
        if log.contains("stanza ready") {
            Ok(())
        } else {
            Err(format!(
                "repository log:\n{log}\nmember log:\n{}",
                pg1.log_text()
            ))
        }
    })
    .await;

    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
             INSERT INTO t (id) SELECT generate_series(1, 100)",
        )
        .await
        .unwrap();
    // Segments written before the stanza existed failed to archive, and PostgreSQL waits up
    // to a minute before it tries again unless a new segment wakes its archiver.
    eventually("archiving to work", || async {
        let row = client
            .query_one(
                "SELECT archived_count, failed_count, coalesce(last_failed_wal, '')                  FROM pg_stat_archiver, pg_switch_wal()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (archived, failed, failed_wal): (i64, i64, String) =
            (row.get(0), row.get(1), row.get(2));
        if archived > 0 {
            return Ok(());
        }
        let log = String::from_utf8_lossy(&std::fs::read(&pg1.log).unwrap_or_default())
            .to_string();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        Err(format!(
            "nothing archived yet, {failed} failures (last {failed_wal}); member log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    })
    .await;
    let repo_conf = pgswarm_sidecar::backup::conf_path(&repo.common);
    let repo_conf_arg = format!("--config={}", repo_conf.display());
    as_postgres(
        "pgbackrest",
        &[&repo_conf_arg, "--stanza=demo", "--type=full", "backup"],
    );
    client
        .batch_execute("INSERT INTO t (id) SELECT generate_series(101, 200)")
        .await
        .unwrap();
    // The target: a moment after the 200th row's commit, before anything later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target: String = client
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .batch_execute("INSERT INTO t (id) SELECT generate_series(201, 300)")
        .await
        .unwrap();
    client.batch_execute("DROP TABLE t").await.unwrap();
    let segment: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    eventually("the WAL with the DROP TABLE to be archived", || async {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), failed_count, \
                 coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let last: String = row.get(0);
        if last.as_str() >= segment.as_str() {
            Ok(())
        } else {
            let failed: i64 = row.get(1);
            let failed_wal: String = row.get(2);
            Err(format!(
                "last archived {last}, waiting for {segment}; {failed} failures (last {failed_wal})"
            ))
        }
    })
    .await;
    // The passphrase is written only into the 0600 configuration files.
    for conf in [
        repo_conf.clone(),
        pgswarm_sidecar::backup::conf_path(&member.common),
    ] {
        let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", conf.display());
    }
    let info = as_postgres("pgbackrest", &[&repo_conf_arg, "--stanza=demo", "info"]);
    assert!(info.contains("full backup"), "{info}");

    // Restore to the target into a new data directory, through the repository.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::set_permissions(&restored, std::fs::Permissions::from_mode(0o700)).unwrap();
    let chown = Command::new("chown")
        .args(["postgres:postgres", &restored.display().to_string()])
        .status()
        .unwrap();
    assert!(chown.success());
    let member_conf_arg = format!(
        "--config={}",
        pgswarm_sidecar::backup::conf_path(&member.common).display()
    );
    let pg1_path = format!("--pg1-path={}", restored.display());
    let target_arg = format!("--target={target}");
    as_postgres(
        "pgbackrest",
        &[
            &member_conf_arg,
            "--stanza=demo",
            &pg1_path,
            "--type=time",
            &target_arg,
            "--target-action=promote",
            "restore",
        ],
    );
    let bin = pgswarm_sidecar::postgres::find_bin_dir(None).unwrap();
    let restored_port = free_port();
    let socket_dir = dir.path().join("restored-socket");
    std::fs::create_dir(&socket_dir).unwrap();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let options = format!(
        "-p {restored_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
         -c archive_mode=off -c hba_file={}/pg_hba.conf",
        socket_dir.display(),
        restored.display()
    );
    let pg_ctl = bin.join("pg_ctl").display().to_string();
    let log = dir.path().join("restored.log").display().to_string();
    Command::new("touch").arg(&log).status().unwrap();
    Command::new("chown")
        .args(["postgres", &log])
        .status()
        .unwrap();
    as_postgres(
        &pg_ctl,
        &[
            "-D",
            &restored.display().to_string(),
            "-o",
            &options,
            "-l",
            &log,
            "start",
        ],
    );
    let restored_client = eventually("the restored server to finish recovery", || async {
        let c = connect(restored_port, "postgres", SUPERUSER_PASSWORD).await?;
        let in_recovery: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if in_recovery {
            return Err(format!(
                "still recovering; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        Ok(c)
    })
    .await;
    let row = restored_client
        .query_one("SELECT count(*), min(id), max(id) FROM t", &[])
        .await
        .unwrap();
    let (count, min, max): (i64, i32, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (count, min, max),
        (200, 1, 200),
        "exactly the rows committed before {target}"
    );
    drop(restored_client);
    as_postgres(
        &pg_ctl,
        &["-D", &restored.display().to_string(), "-m", "fast", "stop"],
    );
    let _ = Path::new(&log);
}
