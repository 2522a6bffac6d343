//! Host integration test of `pgswarm-sidecar ctl query`, the operation `swarmctl` runs inside
//! a container to query a cluster (Citus scale-out reads `pg_dist_node` and drives the
//! rebalance with it): a real PostgreSQL primary started by the sidecar on a loopback port,
//! and the sidecar binary run the way `docker exec` runs it, with the member's environment.

mod common;

use common::*;
use pgswarm_contract::ctl::{CtlError, ErrorKind, QueryReply, Request, Target};
use serde_json::Value;

/// The JSON object `ctl` printed (its last line that is one).
fn printed_json(output: &str) -> Option<Value> {
    output
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
}

#[tokio::test]
async fn ctl_query_prints_rows_and_reports_sql_errors_with_their_sqlstate() {
    let dir = TestDir::new();
    let port = free_port();
    let member = primary_env(&dir, "pg1", port, &[]);
    let _primary = Sidecar::run(&dir, &member);
    let client = superuser(port).await;
    client
        .batch_execute(
            "CREATE TABLE nodes (groupid int, nodename text, noderole text);
             INSERT INTO nodes VALUES (0, 'coord1', 'primary'), (1, 'worker1a', 'primary'),
                                      (1, NULL, 'secondary');",
        )
        .await
        .expect("creating the table");
    let env = env_of(&member);
    // The request as swarmctl builds it: the contract's argv, without the program name.
    let run = |name: &str, request: Request| {
        let argv = request.argv();
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        Sidecar::start(name, &env, &args, dir.path()).finish(PATIENCE)
    };
    let ctl = |name: &str, sql: &str| {
        run(
            name,
            Request::Query {
                target: Target::new("127.0.0.1", port),
                sql: sql.into(),
            },
        )
    };

    let (code, output) = ctl(
        "query-rows",
        "SELECT groupid, nodename, noderole FROM nodes ORDER BY groupid, noderole",
    );
    assert_eq!(code, 0, "{output}");
    let json = printed_json(&output).unwrap_or_else(|| panic!("no JSON printed: {output}"));
    let reply: QueryReply = serde_json::from_value(json.clone()).expect("a typed reply");
    assert_eq!(reply.get(2, "noderole"), Some("secondary"));
    assert_eq!(reply.get(2, "nodename"), None);
    assert_eq!(
        json["columns"],
        serde_json::json!(["groupid", "nodename", "noderole"])
    );
    assert_eq!(
        json["rows"],
        serde_json::json!([
            ["0", "coord1", "primary"],
            ["1", "worker1a", "primary"],
            ["1", null, "secondary"]
        ])
    );
    assert!(
        !output.contains(SUPERUSER_PASSWORD),
        "the password shows in the output: {output}"
    );

    // A statement without rows prints no rows; several statements run in order.
    let (code, output) = ctl(
        "query-write",
        "INSERT INTO nodes VALUES (2, 'worker2a', 'primary'); SELECT count(*) AS n FROM nodes",
    );
    assert_eq!(code, 0, "{output}");
    let json = printed_json(&output).unwrap_or_else(|| panic!("no JSON printed: {output}"));
    assert_eq!(json["rows"], serde_json::json!([["4"]]));

    let (code, output) = ctl("query-error", "SELECT * FROM pg_dist_node");
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("SQLSTATE 42P01") && output.contains("pg_dist_node"),
        "the error names PostgreSQL's code and the relation: {output}"
    );
    let err: CtlError = serde_json::from_value(
        printed_json(&output).unwrap_or_else(|| panic!("no error envelope: {output}")),
    )
    .expect("a typed error");
    assert_eq!(err.kind, ErrorKind::Statement);
    assert_eq!(err.sqlstate.as_deref(), Some("42P01"));
    assert!(!err.is_retryable());

    // Nothing listens on this port: the statement never ran, so it may be tried again.
    let (code, output) = run(
        "query-unreachable",
        Request::Query {
            target: Target::new("127.0.0.1", free_port()),
            sql: "SELECT 1".into(),
        },
    );
    assert_eq!(code, 1, "{output}");
    let err: CtlError = serde_json::from_value(
        printed_json(&output).unwrap_or_else(|| panic!("no error envelope: {output}")),
    )
    .expect("a typed error");
    assert_eq!(err.kind, ErrorKind::Unreachable, "{output}");
    assert!(err.is_retryable());
}

/// `ctl pooler-pause` / `pooler-resume` on a real PgBouncer in front of a real PostgreSQL: a
/// pause waits for the open transaction (and gives up, resuming, when it does not end), holds
/// new queries without failing them, and a resume releases them; a pause nobody resumes ends
/// by itself at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_pooler_pause_holds_queries_and_resume_releases_them() {
    use pgswarm_contract::ctl::PoolerReply;
    use pgswarm_contract::{Endpoint, MemberEnv, PoolMode, Role};
    use std::time::Duration;

    let dir = TestDir::new();
    let pg_port = free_port();
    let member = primary_env(&dir, "pg1", pg_port, &[]);
    let _primary = Sidecar::run(&dir, &member);
    let _ready = superuser(pg_port).await;
    let pool_port = free_port();
    let pooler = MemberEnv {
        common: dir.common("demo", "pooler"),
        role: Role::Pooler {
            target: Endpoint {
                host: "127.0.0.1".into(),
                port: pg_port,
            },
            port: pool_port,
            pool_mode: PoolMode::Transaction,
            pool_size: 5,
            max_client_conn: 50,
            databases: vec![],
        },
    };
    let pooler_process = Sidecar::run(&dir, &pooler);
    let env = env_of(&pooler);
    let run = |name: &str, request: Request| {
        let argv = request.argv();
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        Sidecar::start(name, &env, &args, dir.path()).finish(PATIENCE)
    };
    let through_pooler = || async {
        eventually("a connection through PgBouncer", || async {
            connect(pool_port, "postgres", SUPERUSER_PASSWORD).await
        })
        .await
    };
    let a = through_pooler().await;
    a.simple_query("SELECT 1")
        .await
        .expect("a query through PgBouncer");

    // An open transaction keeps PAUSE from completing: it gives up, resumes, and says why.
    let b = through_pooler().await;
    b.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let (code, output) = run(
        "pause-blocked",
        Request::PoolerPause {
            port: pool_port,
            wait_secs: 2,
            max_pause_secs: 60,
        },
    );
    assert_eq!(code, 1, "{output}");
    let err: CtlError = serde_json::from_value(
        printed_json(&output).unwrap_or_else(|| panic!("no error envelope: {output}")),
    )
    .expect("a typed error");
    assert_eq!(err.kind, ErrorKind::Statement, "{output}");
    assert!(err.message.contains("still running"), "{output}");
    // Not left paused: a query runs (if it were paused this would wait for the deadline).
    tokio::time::timeout(Duration::from_secs(30), a.simple_query("SELECT 1"))
        .await
        .expect("the pooler was left paused after a failed pause")
        .expect("a query after the failed pause");
    b.batch_execute("COMMIT").await.expect("commit");

    // A pause holds new queries; nothing fails; the resume releases them.
    let (code, output) = run(
        "pause",
        Request::PoolerPause {
            port: pool_port,
            wait_secs: 10,
            max_pause_secs: 120,
        },
    );
    assert_eq!(code, 0, "{output}");
    let reply: PoolerReply =
        serde_json::from_value(printed_json(&output).expect("a reply")).expect("typed");
    assert!(reply.paused);
    let held = tokio::spawn(async move {
        let result = a.simple_query("SELECT 1").await.map(|_| ());
        (a, result)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !held.is_finished(),
        "a query ran through a paused PgBouncer"
    );
    let (code, output) = run("resume", Request::PoolerResume { port: pool_port });
    assert_eq!(code, 0, "{output}");
    let reply: PoolerReply =
        serde_json::from_value(printed_json(&output).expect("a reply")).expect("typed");
    assert!(reply.was_paused && !reply.paused, "{output}");
    let (a, result) = held.await.expect("the held query's task");
    result.expect("the held query succeeds once resumed");

    // Resuming a pooler that is not paused is not an error.
    let (code, output) = run("resume-again", Request::PoolerResume { port: pool_port });
    assert_eq!(code, 0, "{output}");
    let reply: PoolerReply =
        serde_json::from_value(printed_json(&output).expect("a reply")).expect("typed");
    assert!(!reply.was_paused, "{output}");

    // A pause nobody resumes ends by itself at its deadline.
    let (code, output) = run(
        "pause-abandoned",
        Request::PoolerPause {
            port: pool_port,
            wait_secs: 10,
            max_pause_secs: 2,
        },
    );
    assert_eq!(code, 0, "{output}");
    a.simple_query("SELECT 1")
        .await
        .expect("a held query runs once the abandoned pause ends");
    assert!(
        pooler_process
            .log_text()
            .contains("still paused past the pause's deadline"),
        "{}",
        pooler_process.log_text()
    );
    assert!(
        !output.contains(SUPERUSER_PASSWORD),
        "the password shows in the output: {output}"
    );

    // Over the network, as `ctl switchover` pauses every task of a pooler: the admin console
    // reached at the task's address holds queries until the same connection resumes it.
    let tasks = pgswarm_sidecar::pooler::pause_tasks(
        "127.0.0.1",
        pool_port,
        "postgres",
        SUPERUSER_PASSWORD,
        Duration::from_secs(10),
    )
    .await
    .expect("a pause over the network");
    assert_eq!(tasks.len(), 1);
    let held = tokio::spawn(async move {
        let result = a.simple_query("SELECT 1").await.map(|_| ());
        (a, result)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !held.is_finished(),
        "a query ran through a PgBouncer paused over the network"
    );
    pgswarm_sidecar::pooler::resume_tasks(&tasks, "postgres", SUPERUSER_PASSWORD)
        .await
        .expect("a resume over the network");
    let (_a, result) = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held query still waits after the resume")
        .expect("the held query's task");
    result.expect("the held query succeeds once resumed");
    // A wrong password pauses nothing and says where it failed.
    let refused = pgswarm_sidecar::pooler::pause_tasks(
        "127.0.0.1",
        pool_port,
        "postgres",
        "not-the-password",
        Duration::from_secs(10),
    )
    .await
    .err()
    .expect("a pause with a wrong password is refused");
    assert!(refused.to_string().contains("127.0.0.1"), "{refused}");
}
