//! Application roles and databases declared in the spec, on a real swarm: `swarmctl
//! apply-roles` creates them on the leader; the application role logs in through PgBouncer
//! (auth_query) and through the router, works in its own database and is refused by one it
//! was not granted; a changed role is altered in place, nothing restarts. With the spec's
//! `tls: {require: true}` ([`TLS_SECTION`]) all of that goes over TLS checked against the
//! cluster CA, and [`tls_checks`] proves `sslmode=verify-full` by service name from inside the
//! stack's network and that plaintext is refused through the router and by a member.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tracing::info;

use crate::image::{image_tag, swarmctl_path};
use crate::patroni::PatroniCluster;
use crate::pg::Endpoint;
use pgswarm_contract::{Mode, Role};

/// The `tls` section the roles scenario deploys with: TLS required for every TCP connection.
pub const TLS_SECTION: &str = "tls:\n  require: true\n";

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
        let mut e = Endpoint::new(base.port, "app", password.clone())
            .on_hosts(base.hosts.clone())
            .with_tls(base.tls.clone());
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

/// What psql in a one-off container printed, and whether it succeeded.
#[derive(Debug)]
pub struct PsqlRun {
    pub ok: bool,
    pub output: String,
}

/// Runs psql in a one-off container of the image on the stack's (attachable) network, as a
/// client there would: `conninfo` names the service it connects to; the password and the CA
/// (PEM) come on standard input, never on a command line, in the environment or in `docker
/// inspect`. The CA lands in `/tmp/ca.crt` (for `sslrootcert`).
pub fn psql_in_network(
    network: &str,
    conninfo: &str,
    password: &str,
    ca_pem: &str,
    sql: &str,
) -> Result<PsqlRun> {
    use std::io::Write;
    let script = format!(
        "IFS= read -r pw; cat > /tmp/ca.crt; umask 077; printf '*:*:*:*:%s\\n' \"$pw\" > \
         /tmp/pgpass; PGPASSFILE=/tmp/pgpass PGCONNECT_TIMEOUT=10 psql -w -X -A -t -v \
         ON_ERROR_STOP=1 '{conninfo}' -c \"$1\""
    );
    let mut child = Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            network,
            "--entrypoint",
            "sh",
            &image_tag(),
            "-c",
            &script,
            "psql-in-network",
            sql,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run `docker run` for psql")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{password}\n{ca_pem}\n").as_bytes())?;
    }
    let out = child.wait_with_output().context("`docker run` for psql")?;
    Ok(PsqlRun {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// What the TLS checks saw.
#[derive(Debug)]
pub struct TlsReport {
    /// Replicas streaming over TLS (from the leader's `pg_stat_replication`).
    pub encrypted_replicas: i64,
    /// Members whose postgres_exporter answered `pg_up 1`.
    pub exporters: usize,
}

/// TLS required (the spec's [`TLS_SECTION`]): from a one-off container on the stack's network
/// trusting only the cluster CA, role `app` logs in with `sslmode=verify-full` by the pooler's
/// and the router's service names, creates a table in its database through each, and is
/// refused by `otherdb`; a plaintext connection (`sslmode=disable`) is refused through the
/// router and directly by a member, for `app` and for the replication user; every replica
/// streams over TLS; `swarmctl psql` connects with verify-full, `swarmctl status` reads every
/// member; and every member's metrics exporter still reaches its server.
pub async fn tls_checks(cluster: &PatroniCluster) -> Result<TlsReport> {
    let dep = &cluster.dep;
    let ca = dep
        .tls_ca
        .clone()
        .context("the deployment made no cluster CA: the spec needs the tls section")?;
    let network = format!("{}_{}", dep.name, swarmctl::render::NETWORK);
    let password = dep.secret_value(&format!("{}_role_app_password", dep.name))?;
    let router = dep.stack.only_service(Mode::Router)?;
    let pooler = dep.stack.only_service(Mode::Pooler)?;
    let (Role::Router { rw_port, .. }, Role::Pooler { port, .. }) =
        (&router.env.role, &pooler.env.role)
    else {
        bail!("router or pooler service has an unexpected role");
    };
    let member = cluster
        .members
        .first()
        .context("the cluster has no member")?
        .clone();
    let pg_port = pgswarm_contract::defaults::PG_PORT;
    let conninfo = |host: &str, port: u16, db: &str, user: &str, sslmode: &str| {
        format!(
            "host={host} port={port} dbname={db} user={user} sslmode={sslmode} \
             sslrootcert=/tmp/ca.crt"
        )
    };
    let run = |conninfo: String, sql: &str| {
        psql_in_network(&network, &conninfo, password.expose(), &ca, sql)
    };
    let ssl_sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // verify-full by service name: the pooler terminates TLS with the cluster certificate and
    // reaches PostgreSQL over TLS of its own (the server session shows ssl = t).
    for (door, host, port, table) in [
        ("pooler", pooler.key.as_str(), *port, "tls_pooled"),
        ("router", router.key.as_str(), *rw_port, "tls_routed"),
    ] {
        let sql = format!(
            "CREATE TABLE {table} (id int PRIMARY KEY); INSERT INTO {table} VALUES (1); {ssl_sql}"
        );
        let r = run(conninfo(host, port, "appdb", "app", "verify-full"), &sql)?;
        info!(door, output = %r.output.trim(), "app over TLS, verify-full");
        ensure!(
            r.ok && r.output.lines().any(|l| l.trim() == "t"),
            "app through the {door} ({host}:{port}) with sslmode=verify-full: {}",
            r.output.trim()
        );
        let r = run(
            conninfo(host, port, "otherdb", "app", "verify-full"),
            "SELECT 1",
        )?;
        ensure!(
            !r.ok && r.output.contains("permission denied for database"),
            "app reached otherdb through the {door} over TLS, or failed for another reason: {}",
            r.output.trim()
        );
    }
    // Plaintext is refused by pg_hba (hostssl only): through the router and by a member, for
    // the application and for replication.
    for (what, conninfo) in [
        (
            "app through the router",
            conninfo(&router.key, *rw_port, "appdb", "app", "disable"),
        ),
        (
            "app directly to a member",
            conninfo(&member, pg_port, "appdb", "app", "disable"),
        ),
        (
            "the replication user directly to a member",
            format!(
                "{} replication=true",
                conninfo(&member, pg_port, "postgres", "replicator", "disable")
            ),
        ),
    ] {
        let r = run(conninfo, "SELECT 1")?;
        info!(what, output = %r.output.trim(), "plaintext");
        ensure!(
            !r.ok && r.output.contains("no encryption"),
            "a plaintext connection of {what} was not refused by pg_hba: {}",
            r.output.trim()
        );
    }
    // The same from the test host through the published port, with tokio-postgres.
    let mut plain = cluster.rw.clone().with_tls(None);
    plain.dbname = "postgres".into();
    match plain.connect_once(Duration::from_secs(10)).await {
        Ok(_) => bail!("a plaintext connection through the router's published port was admitted"),
        Err(e) => ensure!(
            format!("{e:#}").contains("no encryption"),
            "the plaintext connection failed, but not for want of TLS: {e:#}"
        ),
    }
    // `swarmctl psql` (psql inside a member, through the router by its `tasks.` name) runs
    // with sslmode=verify-full against the cluster CA.
    let out = Command::new(swarmctl_path())
        .args(["psql", "-f"])
        .arg(dep.spec_path())
        .args(["--", "-A", "-t", "-c", ssl_sql])
        .output()
        .with_context(|| format!("cannot run {}", swarmctl_path().display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && text.lines().any(|l| l.trim() == "t"),
        "swarmctl psql over TLS ({}): {text}",
        out.status
    );
    // `swarmctl status` asks each member for its connections over loopback TCP (the sidecar's
    // ctl, TLS checked against the CA): every PostgreSQL member answers.
    let out = Command::new(swarmctl_path())
        .args(["status", "--output", "json", "-f"])
        .arg(dep.spec_path())
        .output()
        .with_context(|| format!("cannot run {}", swarmctl_path().display()))?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "swarmctl status --output json printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let postgres: Vec<&serde_json::Value> = status["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["kind"] == "postgres").collect())
        .unwrap_or_default();
    ensure!(
        postgres.len() == cluster.members.len()
            && postgres.iter().all(|m| m["connections"].is_u64()),
        "swarmctl status did not read every member's connections over TLS: {status}"
    );
    // A switchover (swarmctl's write check goes through the pooler's `tasks.` name over TLS):
    // the former leader follows the new one as a replica, and every replica streams over
    // TLS (Patroni's replication login: verify-ca with the cluster CA).
    let leader = cluster.leader().await?;
    let to = cluster
        .members
        .iter()
        .find(|m| **m != leader)
        .context("the cluster has one member: nothing to switch over to")?
        .clone();
    let out = Command::new(swarmctl_path())
        .args(["switchover", "-f"])
        .arg(dep.spec_path())
        .args(["--to", &to])
        .output()
        .with_context(|| format!("cannot run {}", swarmctl_path().display()))?;
    ensure!(
        out.status.success(),
        "swarmctl switchover --to {to} with TLS required ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = cluster.members.len() as i64 - 1;
    let replicas_sql = "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s \
                        USING (pid) WHERE s.ssl AND r.state = 'streaming'";
    crate::pg::wait_until(
        &format!("{expected} replicas streaming over TLS from {to}"),
        Duration::from_secs(120),
        || async {
            let su = cluster.rw.connect(Duration::from_secs(10)).await?;
            let leading: bool = su
                .query_one("SELECT NOT pg_is_in_recovery()", &[])
                .await?
                .get(0);
            let n: i64 = su.query_one(replicas_sql, &[]).await?.get(0);
            Ok::<_, anyhow::Error>(crate::pg::Check::from(leading && n == expected))
        },
    )
    .await?;
    ensure!(
        cluster.leader().await? == to,
        "{to} does not lead after the switchover"
    );
    let encrypted_replicas: i64 = cluster
        .rw
        .connect(Duration::from_secs(10))
        .await?
        .query_one(replicas_sql, &[])
        .await?
        .get(0);
    // postgres_exporter reaches its member over loopback with TLS checked against the CA.
    let exporters = crate::metrics::postgres_exporters_up(dep).await?;
    Ok(TlsReport {
        encrypted_replicas,
        exporters,
    })
}
