//! Host integration test of declared roles and databases: a replication primary and a
//! PgBouncer pooler, both started by the sidecar binary on loopback, and the declaration
//! applied through `pgswarm-sidecar ctl apply-objects` as `swarmctl` runs it in a container.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use pgswarm_contract::ctl::{ApplyObjectsReply, Request, Target};
use pgswarm_contract::objects::{DatabaseSpec, Ensure, Objects, RoleSpec};
use pgswarm_contract::{Endpoint, MemberEnv, PoolMode, Role};

const APP_PASSWORD: &str = "app-Pw'odd:chars-1234";
const REPORT_PASSWORD: &str = "report-Pw-5678";

fn role(name: &str, login: bool) -> RoleSpec {
    RoleSpec {
        name: name.into(),
        login,
        connection_limit: None,
        member_of: vec![],
        ensure: Ensure::Present,
    }
}

fn declared(app_limit: Option<i32>) -> Objects {
    Objects {
        roles: vec![
            RoleSpec {
                connection_limit: app_limit,
                member_of: vec!["team".into()],
                ..role("app", true)
            },
            role("team", false),
            role("report", true),
            role("other", true),
        ],
        databases: vec![
            DatabaseSpec {
                name: "appdb".into(),
                owner: "app".into(),
                extensions: vec!["pg_trgm".into()],
                readers: vec!["report".into()],
                ensure: Ensure::Present,
            },
            DatabaseSpec {
                name: "otherdb".into(),
                owner: "other".into(),
                extensions: vec![],
                readers: vec![],
                ensure: Ensure::Present,
            },
        ],
    }
}

/// Runs `ctl apply-objects` with the member's environment (as `docker exec` would).
fn apply(dir: &TestDir, member: &MemberEnv, port: u16, objects: &Objects) -> ApplyObjectsReply {
    let request = Request::ApplyObjects {
        target: Target::new("127.0.0.1", port),
        objects: objects.clone(),
    };
    let argv = request.argv();
    let out = std::process::Command::new(SIDECAR)
        .args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env_of(member))
        .output()
        .expect("running ctl apply-objects");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = dir;
    for secret in [APP_PASSWORD, REPORT_PASSWORD, SUPERUSER_PASSWORD] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a password in ctl's output"
        );
    }
    pgswarm_contract::ctl::read_reply(out.status.code().unwrap_or(-1) as i64, &stdout, &stderr)
        .unwrap_or_else(|e| panic!("apply-objects failed: {e}\n{stderr}"))
}

async fn connect_as(
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn write_role_secret(dir: &TestDir, role: &str, password: &str) {
    let path = dir
        .path()
        .join("secrets")
        .join(format!("role_{role}_password"));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn declared_roles_and_databases_are_reconciled_and_log_in_through_the_pooler() {
    let dir = TestDir::new();
    write_role_secret(&dir, "app", APP_PASSWORD);
    write_role_secret(&dir, "report", REPORT_PASSWORD);
    write_role_secret(&dir, "other", "other-Pw-9");
    let (pg_port, pooler_port) = (free_port(), free_port());
    let primary = primary_env(&dir, "pg1", pg_port, &[]);
    let mut server = Sidecar::run(&dir, &primary);
    let su = superuser(pg_port).await;

    // The primary creates the pooler's lookup user and function on its own.
    eventually("the lookup user and function", || async {
        let row = su
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolname = 'pgswarm_auth' \
                 AND to_regprocedure('pgswarm.user_lookup(text)') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        (row.get::<_, i64>(0) == 1)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let started: std::time::SystemTime = su
        .query_one("SELECT pg_postmaster_start_time()", &[])
        .await
        .unwrap()
        .get(0);

    let reply = apply(&dir, &primary, pg_port, &declared(Some(5)));
    assert!(reply.problems.is_empty(), "{:?}", reply.problems);
    for expected in [
        "created role app (login, connection limit 5, password from its secret)",
        "created role team (nologin, connection limit unlimited)",
        "granted membership in team to role app",
        "created database appdb (owner app)",
        "revoked CONNECT on database appdb from PUBLIC",
        "granted CONNECT on database appdb to report",
        "created extension pg_trgm in database appdb",
        "granted report SELECT on the tables app creates in database appdb",
    ] {
        assert!(
            reply.changes.iter().any(|c| c == expected),
            "{expected:?} not in {:#?}",
            reply.changes
        );
    }
    // Idempotent: the same declaration again changes nothing.
    let again = apply(&dir, &primary, pg_port, &declared(Some(5)));
    assert_eq!(again, ApplyObjectsReply::default());

    // The application role works in its database, and nowhere it was not granted.
    let app = connect_as(pg_port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("app logs in to appdb");
    app.batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("app creates a table in its database");
    let denied = connect_as(pg_port, "app", APP_PASSWORD, "otherdb")
        .await
        .expect_err("app may not connect to otherdb");
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{denied}"
    );
    let report = connect_as(pg_port, "report", REPORT_PASSWORD, "appdb")
        .await
        .expect("a reader connects");
    let n: i64 = report
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("a reader reads the owner's new tables")
        .get(0);
    assert_eq!(n, 1);
    // Nobody but the lookup user may call the lookup function.
    let err = app
        .query("SELECT * FROM pgswarm.user_lookup('app')", &[])
        .await
        .expect_err("app may not look up verifiers");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    let auth = connect_as(pg_port, "pgswarm_auth", POOLER_AUTH_PASSWORD, "appdb")
        .await
        .expect("the lookup user connects to a declared database");
    let rows = auth
        .query("SELECT uname FROM pgswarm.user_lookup('postgres')", &[])
        .await
        .unwrap();
    assert!(
        rows.is_empty(),
        "the superuser's verifier is never handed out"
    );
    let rows = auth
        .query("SELECT uname FROM pgswarm.user_lookup('app')", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);

    // Every declared role logs in through PgBouncer, which looks it up with auth_query.
    let pooler = MemberEnv {
        common: dir.common("demo", "pooler"),
        role: Role::Pooler {
            target: Endpoint {
                host: "127.0.0.1".into(),
                port: pg_port,
            },
            port: pooler_port,
            pool_mode: PoolMode::Transaction,
            pool_size: 5,
            max_client_conn: 50,
            databases: vec![],
        },
    };
    let _pooler = Sidecar::run(&dir, &pooler);
    let pooled = eventually("app through the pooler", || async {
        connect_as(pooler_port, "app", APP_PASSWORD, "appdb")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    pooled
        .simple_query("INSERT INTO orders VALUES (2)")
        .await
        .expect("a write through the pooler as app");
    let wrong = connect_as(pooler_port, "app", "wrong password", "appdb").await;
    assert!(wrong.is_err(), "a wrong password is refused by the pooler");
    let users = std::fs::read_to_string(format!("{}/pgbouncer.users", pooler.common.run_dir))
        .expect("auth file");
    assert!(
        !users.contains("\"app\""),
        "only the superuser and the lookup user: {users}"
    );

    // A changed role is altered in place: no restart of PostgreSQL.
    let reply = apply(&dir, &primary, pg_port, &declared(Some(9)));
    assert_eq!(
        reply.changes,
        ["altered role app: connection limit 5 -> 9"],
        "{reply:?}"
    );
    let limit: i32 = su
        .query_one(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(limit, 9);
    let now: std::time::SystemTime = su
        .query_one("SELECT pg_postmaster_start_time()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(now, started, "the postmaster was not restarted");

    // The stored declaration is what the primary keeps reconciling: a role altered by hand
    // is put back by the primary's own loop, with one log line.
    su.batch_execute("ALTER ROLE app CONNECTION LIMIT 1")
        .await
        .unwrap();
    eventually("the primary to put the connection limit back", || async {
        let limit: i32 = su
            .query_one(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        (limit == 9)
            .then_some(())
            .ok_or_else(|| format!("still {limit}"))
    })
    .await;
    assert!(server
        .log_text()
        .contains("altered role app: connection limit 1 -> 9"));

    // A reader taken off the list loses CONNECT and its SELECT on new tables.
    let mut fewer = declared(Some(9));
    fewer.databases[0].readers.clear();
    let reply = apply(&dir, &primary, pg_port, &fewer);
    assert_eq!(
        reply.changes,
        [
            "revoked CONNECT on database appdb from report (not a reader)",
            "revoked report's SELECT on the tables app creates in database appdb",
        ]
    );
    let refused = connect_as(pg_port, "report", REPORT_PASSWORD, "appdb").await;
    assert!(refused.is_err(), "report still connects to appdb");
    assert_eq!(
        apply(&dir, &primary, pg_port, &fewer),
        ApplyObjectsReply::default()
    );

    // ensure: absent drops, databases before roles.
    let mut gone = fewer.clone();
    gone.databases[1].ensure = Ensure::Absent;
    gone.roles[3].ensure = Ensure::Absent;
    let reply = apply(&dir, &primary, pg_port, &gone);
    assert_eq!(
        reply.changes,
        [
            "dropped database otherdb (ensure: absent)",
            "dropped role other (ensure: absent)"
        ]
    );
    drop(pooled);
    drop(app);
    drop(report);
    drop(auth);

    let log = server.log_text();
    for secret in [APP_PASSWORD, REPORT_PASSWORD, POOLER_AUTH_PASSWORD] {
        assert!(!log.contains(secret), "a password in the primary's log");
    }
    assert_eq!(server.stop(), 0);
}
