//! Host integration test of `pgswarm-sidecar ctl query`, the operation `swarmctl` runs inside
//! a container to query a cluster (Citus scale-out reads `pg_dist_node` and drives the
//! rebalance with it): a real PostgreSQL primary started by the sidecar on a loopback port,
//! and the sidecar binary run the way `docker exec` runs it, with the member's environment.

mod common;

use common::*;
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
    let port_text = port.to_string();
    let ctl = |name: &str, sql: &str| {
        Sidecar::start(
            name,
            &env,
            &[
                "ctl",
                "query",
                "--host",
                "127.0.0.1",
                "--port",
                &port_text,
                "--sql",
                sql,
            ],
            dir.path(),
        )
        .finish(PATIENCE)
    };

    let (code, output) = ctl(
        "query-rows",
        "SELECT groupid, nodename, noderole FROM nodes ORDER BY groupid, noderole",
    );
    assert_eq!(code, 0, "{output}");
    let json = printed_json(&output).unwrap_or_else(|| panic!("no JSON printed: {output}"));
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
    assert!(printed_json(&output).is_none(), "{output}");
}
