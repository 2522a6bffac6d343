//! Application roles and databases declared in the spec, on a real swarm: `swarmctl
//! apply-roles` creates them on the leader; the application role logs in through PgBouncer
//! (auth_query) and through the router, works in its own database and is refused by one it
//! was not granted; a changed role is altered in place, nothing restarts.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tracing::info;

use crate::image::swarmctl_path;
use crate::patroni::PatroniCluster;
use crate::pg::Endpoint;

/// The roles and databases section appended to a Patroni spec; `limit` is the application
/// role's connection limit.
pub fn roles_section(limit: u32) -> String {
    format!(
        "roles:
  - name: app
    connection_limit: {limit}
  - name: other
databases:
  - name: appdb
    owner: app
    extensions: [pg_trgm]
    pool_size: 4
  - name: otherdb
    owner: other
"
    )
}

/// What the scenario saw.
#[derive(Debug)]
pub struct RolesReport {
    /// Lines `swarmctl apply-roles` printed the first time.
    pub first_apply: Vec<String>,
    /// Lines it printed after the connection limit changed.
    pub second_apply: Vec<String>,
}

/// Runs `swarmctl apply-roles -f SPEC`; its output lines.
fn apply_roles(spec: &std::path::Path) -> Result<Vec<String>> {
    let out = Command::new(swarmctl_path())
        .args(["apply-roles", "-f"])
        .arg(spec)
        .output()
        .with_context(|| format!("cannot run {}", swarmctl_path().display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("swarmctl apply-roles failed ({}):\n{text}", out.status);
    }
    Ok(text
        .lines()
        .filter(|l| l.contains("roles and databases"))
        .map(String::from)
        .collect())
}

/// `swarmctl generate -f SPEC` on standard output.
fn generate(spec: &std::path::Path) -> Result<String> {
    let out = Command::new(swarmctl_path())
        .args(["generate", "-f"])
        .arg(spec)
        .output()
        .with_context(|| format!("cannot run {}", swarmctl_path().display()))?;
    ensure!(
        out.status.success(),
        "swarmctl generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sqlstate(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code())
        .map(|c| c.code().to_string())
}

/// The scenario; `cluster` was deployed from a spec with [`roles_section`]`(5)`.
pub async fn application_roles(cluster: &PatroniCluster) -> Result<RolesReport> {
    let dep = &cluster.dep;
    let spec_path = dep.spec_path();
    let first_apply = apply_roles(&spec_path)?;
    info!(lines = ?first_apply, "apply-roles");
    ensure!(
        first_apply
            .iter()
            .any(|l| l.contains("created role app (login, connection limit 5")),
        "apply-roles did not create role app: {first_apply:?}"
    );
    let password = dep.secret_value(&format!("{}_role_app_password", dep.name))?;
    let as_app = |base: &Endpoint, dbname: &str| {
        let mut e = Endpoint::new(base.port, "app", password.clone()).on_hosts(base.hosts.clone());
        e.dbname = dbname.into();
        e
    };

    // Through PgBouncer: it looks the role up with auth_query.
    let pooled = as_app(&cluster.pooler, "appdb")
        .connect(Duration::from_secs(60))
        .await
        .context("app cannot log in through PgBouncer")?;
    pooled
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1)")
        .await
        .context("app cannot create a table in appdb through PgBouncer")?;
    // Through the router's read-write port, straight to the leader.
    let routed = as_app(&cluster.rw, "appdb")
        .connect(Duration::from_secs(30))
        .await
        .context("app cannot log in through the router")?;
    routed
        .batch_execute("INSERT INTO orders VALUES (2)")
        .await
        .context("app cannot write through the router")?;
    let n: i64 = routed
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    ensure!(n == 2, "expected 2 orders, found {n}");
    // Not into a database it was not granted, through either door.
    for (door, base) in [("router", &cluster.rw), ("pooler", &cluster.pooler)] {
        match as_app(base, "otherdb")
            .connect_once(Duration::from_secs(10))
            .await
        {
            Ok(_) => bail!("app connected to otherdb through the {door}; CONNECT was revoked"),
            Err(e) => ensure!(
                sqlstate(&e).as_deref() == Some("42501")
                    || format!("{e:#}").contains("permission denied for database"),
                "app's connection to otherdb through the {door} failed, but not for lack of \
                 privilege: {e:#}"
            ),
        }
    }
    drop(pooled);
    drop(routed);

    // Change the role in the spec and deploy again: the stack is the same, so nothing
    // restarts, and the role is altered in place.
    let su = cluster.rw.connect(Duration::from_secs(30)).await?;
    let started: std::time::SystemTime = su
        .query_one("SELECT pg_postmaster_start_time()", &[])
        .await?
        .get(0);
    let mut containers = Vec::new();
    for m in &cluster.members {
        containers.push(dep.container(m).await?);
    }
    let before = generate(&spec_path)?;
    let spec = std::fs::read_to_string(&spec_path)?;
    let changed = spec.replace("connection_limit: 5", "connection_limit: 7");
    ensure!(changed != spec, "the spec has no connection_limit: 5");
    std::fs::write(&spec_path, changed)?;
    ensure!(
        generate(&spec_path)? == before,
        "a changed role changed the stack file: the members would restart"
    );
    let stack_file = spec_path.with_file_name("stack.yml");
    crate::docker::docker(&[
        "stack",
        "deploy",
        "--resolve-image",
        "never",
        "-c",
        &stack_file.to_string_lossy(),
        &dep.name,
    ])?;
    let second_apply = apply_roles(&spec_path)?;
    ensure!(
        second_apply
            .iter()
            .any(|l| l.contains("altered role app: connection limit 5 -> 7")),
        "apply-roles did not alter role app: {second_apply:?}"
    );
    let limit: i32 = su
        .query_one(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'",
            &[],
        )
        .await?
        .get(0);
    ensure!(limit == 7, "app's connection limit is {limit}, not 7");
    let now: std::time::SystemTime = su
        .query_one("SELECT pg_postmaster_start_time()", &[])
        .await?
        .get(0);
    ensure!(now == started, "the leader's postmaster was restarted");
    for (m, before) in cluster.members.iter().zip(&containers) {
        let after = dep.container(m).await?;
        ensure!(
            &after == before,
            "member {m}'s container changed ({before:?} -> {after:?})"
        );
    }
    Ok(RolesReport {
        first_apply,
        second_apply,
    })
}
