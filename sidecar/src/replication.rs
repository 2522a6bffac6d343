//! Topology `replication`: one streaming-replication primary and its hot-standby replicas.
//!
//! Primary: initdb on an empty data directory, the settings and pg_hba of [`Server`], then
//! postgres supervised; once it accepts connections, the replication role (REPLICATION,
//! LOGIN, NOSUPERUSER; its password sent as a SCRAM verifier, so no plain password reaches
//! the server or its log), one physical slot per declared replica, and the user's init SQL
//! exactly once (a marker in the data directory, written after success).
//!
//! Replica: waits for the primary and its slot; an empty data directory is cloned with
//! `pg_basebackup -X stream -S <slot> -R` into a staging directory beside it and renamed
//! into place when complete, so a copy killed midway is never started (the next start
//! removes it and clones again). A data directory with data is started as it is, never
//! wiped, after checking that its system identifier is the primary's. The replication
//! password reaches libpq only through a 0600 passfile.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use anyhow::{bail, Context as _};
use pgswarm_contract::{env, Endpoint, MemberEnv, Role, Secret};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::postgres::{
    self, conninfo_quote, data_state, quote_ident, quote_literal, DataState, Server,
};
use crate::secrets::{SecretValue, Secrets};
use crate::supervise::{self, Interrupted};
use crate::templates::{self, Templates};
use crate::ConfigError;

/// Marker file in the data directory: the init SQL ran to its end on this cluster.
pub const INIT_MARKER: &str = "pgswarm-init-sql.done";
/// The replication passfile, in the run directory.
const PASSFILE: &str = "replication.pgpass";

/// Runs the primary or replica of this member to its end; returns postgres' exit code.
pub async fn run(
    member: &MemberEnv,
    secrets: &Secrets,
    templates: Templates,
) -> anyhow::Result<i32> {
    let server = Server::new(member, templates)?;
    crate::check_role_names(&member.common)?;
    match &member.role {
        Role::Primary {
            replica_slots,
            init_sql_dir,
            ..
        } => {
            for slot in replica_slots {
                check_slot_name(slot, env::REPLICA_SLOTS)?;
            }
            crate::objects::spawn_for_member(&member.common, server.pg.port, secrets)?;
            run_primary(&server, secrets, replica_slots, init_sql_dir.as_deref()).await
        }
        Role::Replica { primary, slot, .. } => {
            check_slot_name(slot, env::SLOT)?;
            run_replica(&server, secrets, primary, slot).await
        }
        other => bail!(
            "mode {} is not part of the replication topology",
            other.mode()
        ),
    }
}

/// Slot names: lower-case letters, digits and underscores, at most 63 (PostgreSQL's rule).
fn check_slot_name(slot: &str, var: &str) -> anyhow::Result<()> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{var} holds slot name {slot:?}; a replication slot name is 1-63 lower-case letters, \
             digits or underscores"
        ))
        .into())
    }
}

fn refuse_foreign(pgdata: &Path, names: &[String]) -> anyhow::Error {
    ConfigError(format!(
        "{} holds files that are not a PostgreSQL data directory ({}...); refusing to touch \
         them. Move them away or give this member an empty volume",
        pgdata.display(),
        names.join(", ")
    ))
    .into()
}

async fn run_primary(
    server: &Server,
    secrets: &Secrets,
    slots: &[String],
    init_sql_dir: Option<&str>,
) -> anyhow::Result<i32> {
    let pgdata = server.pgdata();
    server.remove_leftover(&server.staging_dir("initdb"))?;
    match data_state(&pgdata)? {
        DataState::Empty => {
            server
                .initdb(secrets.get(Secret::SuperuserPassword)?)
                .await?
        }
        DataState::Cluster => info!(pgdata = %pgdata.display(), "starting the existing cluster"),
        DataState::Foreign(names) => return Err(refuse_foreign(&pgdata, &names)),
    }
    let standby_signal = pgdata.join("standby.signal");
    if standby_signal.exists() {
        // A former replica whose member is now declared the primary: promotion by restart.
        warn!(pgdata = %pgdata.display(), "data directory is a standby's; promoting it (removing standby.signal)");
        std::fs::remove_file(&standby_signal)
            .with_context(|| format!("removing {}", standby_signal.display()))?;
        postgres::fsync_dir(&pgdata)?;
    }
    server.write_config(&[])?;

    let running = supervise::spawn(server.child())?;
    let handle = running.handle();
    let mut exited = pin!(running.wait(std::future::pending()));
    let setup = async {
        let client = server.wait_accepting().await?;
        setup_primary(server, &client, secrets, slots, init_sql_dir).await
    };
    tokio::select! {
        code = &mut exited => {
            let code = code?;
            if code == 0 {
                return Ok(0); // stopped on request before the setup finished
            }
            bail!("postgres exited with code {code} before it was ready; its log above says why");
        }
        result = setup => match result {
            Ok(()) => info!(slots = ?slots, "primary ready"),
            // Asked to stop midway: the failure is the stop's doing, postgres' code tells.
            Err(e) if e.is::<Interrupted>() || supervise::stop_requested() => {
                tracing::debug!(error = %format!("{e:#}"), "setup ended by the stop request");
                return exited.await;
            }
            Err(e) => {
                handle.request_stop();
                let code = exited.await?;
                return Err(e.context(format!(
                    "setting up the primary failed; postgres was stopped (exit code {code})"
                )));
            }
        }
    }
    exited.await
}

async fn setup_primary(
    server: &Server,
    client: &Client,
    secrets: &Secrets,
    slots: &[String],
    init_sql_dir: Option<&str>,
) -> anyhow::Result<()> {
    ensure_replication_role(
        client,
        &server.common.replication_user,
        secrets.get(Secret::ReplicationPassword)?,
    )
    .await?;
    ensure_slots(client, slots).await?;
    run_init_sql_once(server, client, init_sql_dir).await
}

/// Creates or updates the replication role. The password travels as a SCRAM-SHA-256
/// verifier computed here, so neither the wire nor the server log ever sees it in plain.
pub async fn ensure_replication_role(
    client: &Client,
    user: &str,
    password: &SecretValue,
) -> anyhow::Result<()> {
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .context("looking up the replication role")?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    let sql = format!(
        "{verb} ROLE {} WITH REPLICATION LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}",
        quote_ident(user),
        quote_literal(&verifier)
    );
    client
        .batch_execute(&sql)
        .await
        .with_context(|| format!("{verb} ROLE {user} (the replication role)"))?;
    info!(role = user, created = !exists, "replication role ready");
    Ok(())
}

/// Creates the missing physical slots (WAL reserved at once); leaves other slots alone.
pub async fn ensure_slots(client: &Client, slots: &[String]) -> anyhow::Result<()> {
    let rows = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )
        .await
        .context("listing replication slots")?;
    let existing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for slot in slots {
        if existing.contains(slot) {
            continue;
        }
        match client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[slot],
            )
            .await
        {
            Ok(_) => info!(slot = %slot, "created physical replication slot"),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating replication slot {slot}"));
            }
        }
    }
    for slot in existing.iter().filter(|s| !slots.contains(s)) {
        warn!(slot = %slot, "a physical slot no replica is declared for keeps WAL on the primary; drop it with pg_drop_replication_slot() if its replica is gone for good");
    }
    Ok(())
}

/// The init SQL: `*.sql` files of `dir` in name order, or the embedded default.
fn init_sql_files(server: &Server, dir: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(dir) = dir else {
        let sql = server.templates.render(
            "primary-init.sql.hbs",
            &serde_json::json!({
                "cluster": server.common.cluster,
                "cluster_literal": quote_literal(&format!("pgswarm cluster {}", server.common.cluster)),
            }),
        )?;
        return Ok(vec![("primary-init.sql.hbs".into(), sql)]);
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError(format!(
            "{}={dir}: cannot read the init SQL folder: {e}",
            env::INIT_SQL_DIR
        ))
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql") && p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("reading init SQL {}", p.display()))?;
            Ok((p.display().to_string(), text))
        })
        .collect()
}

/// Runs the init SQL on the cluster's first boot; the marker is written only once every file
/// succeeded, so a failed or interrupted run is retried on the next start.
async fn run_init_sql_once(
    server: &Server,
    client: &Client,
    dir: Option<&str>,
) -> anyhow::Result<()> {
    let marker = server.pgdata().join(INIT_MARKER);
    if marker.exists() {
        return Ok(());
    }
    let files = init_sql_files(server, dir)?;
    let mut done = String::new();
    for (name, sql) in &files {
        info!(file = %name, "running init SQL");
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("init SQL {name} failed (it runs again on the next start)"))?;
        done.push_str(name);
        done.push('\n');
    }
    templates::write_file(&marker, done.as_bytes(), 0o600)?;
    postgres::fsync_dir(&server.pgdata())?;
    info!(
        files = files.len(),
        "init SQL done; it will not run again on this cluster"
    );
    Ok(())
}

/// What the primary told us when it was ready for this replica.
struct PrimaryInfo {
    system_identifier: u64,
}

/// Waits until the primary accepts the replication role and holds `slot`.
async fn wait_for_primary(
    server: &Server,
    primary: &Endpoint,
    slot: &str,
    password: &SecretValue,
) -> anyhow::Result<PrimaryInfo> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&primary.host)
        .port(primary.port)
        .user(&server.common.replication_user)
        .password(password.expose())
        .dbname("postgres")
        .application_name(&server.common.member)
        .connect_timeout(Duration::from_secs(5));
    let what = format!("the primary at {primary} with slot {slot}");
    crate::wait::wait_for(
        &what,
        Duration::from_secs(server.common.wait_timeout_secs),
        || async {
            let client = postgres::connect(&config, &format!("the primary at {primary}")).await?;
            let row = client
                .query_one(
                    "SELECT system_identifier, pg_is_in_recovery(), \
                     EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) \
                     FROM pg_control_system()",
                    &[&slot],
                )
                .await
                .context("asking the primary for its identity")?;
            let (id, recovery, has_slot): (i64, bool, bool) = (row.get(0), row.get(1), row.get(2));
            if recovery {
                bail!("{primary} is in recovery, not a primary");
            }
            if !has_slot {
                bail!(
                    "{primary} has no replication slot {slot} yet (the primary creates the slots \
                     listed in its {})",
                    env::REPLICA_SLOTS
                );
            }
            Ok(PrimaryInfo {
                system_identifier: id as u64,
            })
        },
    )
    .await
}

/// libpq connection string to the primary; the password comes from `passfile`.
fn primary_conninfo(server: &Server, primary: &Endpoint, passfile: &Path) -> String {
    [
        ("host", primary.host.clone()),
        ("port", primary.port.to_string()),
        ("user", server.common.replication_user.clone()),
        ("passfile", passfile.display().to_string()),
        ("application_name", server.common.member.clone()),
        (
            "keepalives_idle",
            pgswarm_contract::rules::keepalive::IDLE_SECS.to_string(),
        ),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", conninfo_quote(v)))
    .collect::<Vec<_>>()
    .join(" ")
}

async fn run_replica(
    server: &Server,
    secrets: &Secrets,
    primary: &Endpoint,
    slot: &str,
) -> anyhow::Result<i32> {
    let pgdata = server.pgdata();
    let password = secrets.get(Secret::ReplicationPassword)?;
    let passfile = server.socket_dir().join(PASSFILE);
    postgres::write_passfile(
        &passfile,
        &primary.host,
        primary.port,
        &server.common.replication_user,
        password,
    )?;
    let staging = server.staging_dir("clone");
    server.remove_leftover(&staging)?;
    let state = data_state(&pgdata)?;
    if let DataState::Foreign(names) = &state {
        return Err(refuse_foreign(&pgdata, names));
    }
    let info = wait_for_primary(server, primary, slot, password).await?;
    let conninfo = primary_conninfo(server, primary, &passfile);
    match state {
        DataState::Empty => clone_primary(server, &conninfo, slot, &staging).await?,
        DataState::Cluster => {
            let local = server.system_identifier_on_disk().await?;
            if local != info.system_identifier {
                return Err(ConfigError(format!(
                    "the data directory {} belongs to another cluster: its system identifier is \
                     {local}, the primary at {primary} has {}. Nothing was changed. If this \
                     replica should follow this primary, move the old data away (or give the \
                     member a new volume) and it is cloned again",
                    pgdata.display(),
                    info.system_identifier
                ))
                .into());
            }
            info!(pgdata = %pgdata.display(), system_identifier = local, "starting the existing replica data");
        }
        DataState::Foreign(_) => unreachable!("refused above"),
    }
    if !pgdata.join("standby.signal").exists() {
        warn!(pgdata = %pgdata.display(), "the data directory has no standby.signal (promoted earlier?); starting it as it is, not as a replica");
    }
    server.write_config(&[
        ("primary_conninfo", conninfo),
        ("primary_slot_name", slot.to_string()),
    ])?;
    supervise::supervise(server.child(), std::future::pending()).await
}

/// `pg_basebackup` into `staging`, then into place. The `-R` settings are moved out of
/// postgresql.auto.conf (which would override ours) into pgswarm.conf, rendered every start.
async fn clone_primary(
    server: &Server,
    conninfo: &str,
    slot: &str,
    staging: &Path,
) -> anyhow::Result<()> {
    info!(slot, staging = %staging.display(), "cloning the primary with pg_basebackup");
    let started = std::time::Instant::now();
    let spec = server
        .tool("pg_basebackup")
        .arg("-D")
        .arg(staging)
        .args(["-X", "stream", "-S", slot, "-R", "-c", "fast", "-w", "-d"])
        .arg(conninfo);
    if let Err(e) = supervise::run_checked(spec).await {
        if !e.is::<Interrupted>() {
            let _ = std::fs::remove_dir_all(staging);
        }
        return Err(e.context("cloning the primary failed"));
    }
    let auto_conf = staging.join("postgresql.auto.conf");
    if let Ok(text) = std::fs::read_to_string(&auto_conf) {
        let kept: String = text
            .lines()
            .filter(|l| {
                let key = l.split('=').next().unwrap_or_default().trim();
                key != "primary_conninfo" && key != "primary_slot_name"
            })
            .map(|l| format!("{l}\n"))
            .collect();
        templates::write_file(&auto_conf, kept.as_bytes(), 0o600)?;
    }
    server.promote_staging(staging)?;
    info!(
        secs = started.elapsed().as_secs_f32(),
        pgdata = %server.pgdata().display(),
        "clone complete"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres_rules() {
        check_slot_name("replica_1", env::SLOT).unwrap();
        for bad in ["", "Replica", "a-b", &"x".repeat(64)] {
            let err = check_slot_name(bad, env::SLOT).unwrap_err().to_string();
            assert!(err.contains("PGSWARM_SLOT"), "{err}");
        }
    }

    #[test]
    fn conninfo_names_a_passfile_and_holds_no_password() {
        let member = MemberEnv {
            common: pgswarm_contract::Common::new("demo", "pg2"),
            role: Role::Replica {
                postgres: pgswarm_contract::Postgres {
                    bin_dir: None,
                    ..Default::default()
                },
                primary: Endpoint {
                    host: "pg1".into(),
                    port: 5432,
                },
                slot: "pg2".into(),
            },
        };
        let Ok(server) = Server::new(&member, Templates::default()) else {
            panic!("PostgreSQL binaries are needed for this test");
        };
        let primary = Endpoint {
            host: "pg1".into(),
            port: 5432,
        };
        let info = primary_conninfo(
            &server,
            &primary,
            Path::new("/run/pgswarm/replication.pgpass"),
        );
        assert_eq!(
            info,
            "host='pg1' port='5432' user='replicator' passfile='/run/pgswarm/replication.pgpass' \
             application_name='pg2' keepalives_idle='60'"
        );
    }
}
