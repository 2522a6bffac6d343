//! Backups and WAL archiving with pgBackRest.
//!
//! Two sides, both TLS servers of pgBackRest (`pgbackrest server`), with one certificate of
//! the cluster for both ends (its CN is what each server admits, its names are the services):
//! - a data member archives its WAL to the repository asynchronously (a spool on its volume,
//!   so a slow repository delays archiving, never commits) and fetches WAL from it when it
//!   recovers; its own server lets the repository read its data directory for backups;
//! - the repository service holds the repository on its volume (encrypted with the passphrase
//!   secret), creates the stanza, takes the scheduled backups (from a streaming replica when
//!   there is one) and expires old ones.
//!
//! pgbackrest.conf is rendered into the run directory, mode 0600: it is the only place the
//! passphrase is written, never the environment or a command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pgswarm_contract::backup::{self, BackupSettings};
use pgswarm_contract::{Common, MemberEnv, Postgres, Role, Secret};
use tracing::{info, warn};

use crate::secrets::Secrets;
use crate::supervise::{self, ChildSpec};
use crate::templates;

/// The TLS files of pgBackRest, written from the secrets into the run directory (0600).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The folder of everything pgBackRest uses in the run directory.
pub fn dir(common: &Common) -> PathBuf {
    Path::new(&common.run_dir).join("pgbackrest")
}

/// Where pgbackrest.conf is rendered.
pub fn conf_path(common: &Common) -> PathBuf {
    dir(common).join("pgbackrest.conf")
}

/// Writes the CA, certificate and key from the secrets (PEM) into the run directory.
pub fn write_tls(common: &Common, secrets: &Secrets) -> anyhow::Result<TlsFiles> {
    let tls = TlsFiles {
        ca: dir(common).join("ca.crt"),
        cert: dir(common).join("tls.crt"),
        key: dir(common).join("tls.key"),
    };
    std::fs::create_dir_all(dir(common))
        .with_context(|| format!("creating {}", dir(common).display()))?;
    for (secret, path) in [
        (Secret::BackupTlsCa, &tls.ca),
        (Secret::BackupTlsCert, &tls.cert),
        (Secret::BackupTlsKey, &tls.key),
    ] {
        let mut pem = secrets.get(secret)?.expose().to_string();
        pem.push('\n');
        templates::write_private(path, pem.as_bytes())?;
    }
    Ok(tls)
}

/// The options every pgbackrest.conf shares: where pgBackRest keeps locks and logs, console
/// logging only (the container's log), and its own TLS server.
fn global(common: &Common, tls: &TlsFiles, address: &str, port: u16) -> Vec<(String, String)> {
    let d = dir(common);
    let mut out = vec![
        ("lock-path", d.join("lock").display().to_string()),
        ("log-path", d.join("log").display().to_string()),
        ("log-level-file", "off".into()),
        ("log-level-console", "info".into()),
        ("log-level-stderr", "off".into()),
        ("tls-server-address", address.into()),
        ("tls-server-port", port.to_string()),
        ("tls-server-ca-file", tls.ca.display().to_string()),
        ("tls-server-cert-file", tls.cert.display().to_string()),
        ("tls-server-key-file", tls.key.display().to_string()),
        (
            "tls-server-auth",
            format!(
                "{}={}",
                backup::tls_common_name(&common.cluster),
                backup::stanza(&common.cluster)
            ),
        ),
    ];
    out.push(("compress-type", "zst".into()));
    out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn text(global: Vec<(String, String)>, stanza: &str, section: Vec<(String, String)>) -> String {
    let mut out =
        String::from("# Rendered by pgswarm-sidecar; changes are overwritten.\n[global]\n");
    for (k, v) in global {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(&format!("\n[{stanza}]\n"));
    for (k, v) in section {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// pgbackrest.conf of a data member: the repository is remote (its TLS server), WAL is pushed
/// asynchronously from a spool on the member's volume.
pub fn member_conf(
    common: &Common,
    settings: &BackupSettings,
    postgres: &Postgres,
    tls: &TlsFiles,
    passphrase: Option<&str>,
) -> String {
    let address = match postgres.listen_address.as_str() {
        "0.0.0.0" | "" => "*",
        a => a,
    };
    let pg_port = postgres.port;
    let mut g = global(common, tls, address, settings.member_port);
    for (k, v) in [
        ("repo1-host", settings.repo_host.clone()),
        ("repo1-path", settings.repo_path.clone()),
        ("repo1-host-type", "tls".into()),
        ("repo1-host-port", settings.repo_port.to_string()),
        ("repo1-host-ca-file", tls.ca.display().to_string()),
        ("repo1-host-cert-file", tls.cert.display().to_string()),
        ("repo1-host-key-file", tls.key.display().to_string()),
        ("archive-async", "y".into()),
        (
            "spool-path",
            format!("{}/{}", common.data_root, backup::defaults::SPOOL_SUBDIR),
        ),
        ("process-max", "2".into()),
    ] {
        g.push((k.to_string(), v));
    }
    cipher(&mut g, passphrase);
    let section = vec![
        ("pg1-path".to_string(), common.pgdata()),
        ("pg1-port".to_string(), pg_port.to_string()),
        (
            "pg1-socket-path".to_string(),
            common.socket_dir().to_string(),
        ),
        ("pg1-user".to_string(), common.superuser.clone()),
    ];
    text(g, backup::stanza(&common.cluster), section)
}

/// pgbackrest.conf of the repository service: the repository on its volume, every data member
/// a `pgN-host` reached through its TLS server, retention and encryption.
pub fn repo_conf(
    common: &Common,
    settings: &BackupSettings,
    members: &MembersView<'_>,
    tls: &TlsFiles,
    passphrase: Option<&str>,
) -> String {
    // The members' own paths (the same in every member's container).
    let mut member = Common::new(&common.cluster, "member");
    member.data_root = members.data_root.to_string();
    member.run_dir = members.run_dir.to_string();
    let mut g = global(common, tls, "*", settings.repo_port);
    g.push(("repo1-path".into(), settings.repo_path.clone()));
    g.push((
        "repo1-retention-full".into(),
        settings.retention_full.to_string(),
    ));
    if let Some(diff) = settings.retention_diff {
        g.push(("repo1-retention-diff".into(), diff.to_string()));
    }
    cipher(&mut g, passphrase);
    g.push(("start-fast".into(), "y".into()));
    g.push(("process-max".into(), "2".into()));
    if members.hosts.len() > 1 {
        // Backups read a streaming replica's files, sparing the primary.
        g.push(("backup-standby".into(), "y".into()));
    }
    let mut section = Vec::new();
    for (i, m) in members.hosts.iter().enumerate() {
        let n = i + 1;
        for (k, v) in [
            ("host", m.clone()),
            ("host-type", "tls".into()),
            ("host-port", settings.member_port.to_string()),
            ("host-ca-file", tls.ca.display().to_string()),
            ("host-cert-file", tls.cert.display().to_string()),
            ("host-key-file", tls.key.display().to_string()),
            ("path", member.pgdata()),
            ("port", members.pg_port.to_string()),
            ("socket-path", member.socket_dir().to_string()),
            ("user", common.superuser.clone()),
        ] {
            section.push((format!("pg{n}-{k}"), v));
        }
    }
    text(g, backup::stanza(&common.cluster), section)
}

/// Encryption of the repository: pgBackRest encrypts on the client side, so every side holds
/// the passphrase (in its 0600 file only).
fn cipher(g: &mut Vec<(String, String)>, passphrase: Option<&str>) {
    if let Some(pass) = passphrase {
        g.push(("repo1-cipher-type".into(), backup::defaults::CIPHER.into()));
        g.push(("repo1-cipher-pass".into(), pass.to_string()));
    }
}

/// The passphrase secret, when the repository is encrypted.
fn passphrase(settings: &BackupSettings, secrets: &Secrets) -> anyhow::Result<Option<String>> {
    Ok(if settings.encrypt {
        Some(secrets.get(Secret::BackupPassphrase)?.expose().to_string())
    } else {
        None
    })
}

/// What the repository knows of the data members.
#[derive(Debug, Clone)]
pub struct MembersView<'a> {
    pub hosts: &'a [String],
    pub pg_port: u16,
    pub data_root: &'a str,
    pub run_dir: &'a str,
}

/// The `pgbackrest` command line with this member's configuration and stanza.
pub fn command(common: &Common, args: &[&str]) -> String {
    let mut out = format!(
        "pgbackrest --config={} --stanza={}",
        conf_path(common).display(),
        backup::stanza(&common.cluster)
    );
    for a in args {
        out.push(' ');
        out.push_str(a);
    }
    out
}

/// PostgreSQL's `archive_command`: push each WAL segment (asynchronously) to the repository.
pub fn archive_command(common: &Common) -> String {
    command(common, &["archive-push", "\"%p\""])
}

/// PostgreSQL's `restore_command`: fetch WAL from the repository during recovery.
pub fn restore_command(common: &Common) -> String {
    command(common, &["archive-get", "%f", "\"%p\""])
}

/// The PostgreSQL parameters continuous archiving needs (cluster-wide).
pub fn archive_parameters(common: &Common, settings: &BackupSettings) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("archive_mode".to_string(), "on".to_string()),
        ("archive_command".to_string(), archive_command(common)),
        (
            "archive_timeout".to_string(),
            format!("{}s", settings.archive_timeout_secs),
        ),
    ])
}

/// `pgbackrest server` with this member's configuration.
pub fn server(common: &Common) -> ChildSpec {
    ChildSpec::new("pgbackrest server", "pgbackrest")
        .arg(format!("--config={}", conf_path(common).display()))
        .arg("server")
}

/// Creates the folders pgBackRest writes to (run directory and volume), as this user.
fn make_dirs(common: &Common, repo: Option<&BackupSettings>) -> anyhow::Result<()> {
    let d = dir(common);
    let mut dirs = vec![d.join("lock"), d.join("log")];
    if let Some(settings) = repo {
        dirs.push(PathBuf::from(&settings.repo_path));
    } else {
        dirs.push(Path::new(&common.data_root).join(backup::defaults::SPOOL_SUBDIR));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Where a restore from another cluster's repository finds its pgbackrest.conf.
pub fn restore_conf_path(common: &Common) -> PathBuf {
    dir(common).join("restore.conf")
}

/// The repository a restore reads and the stanza in it: this cluster's own, or the source
/// cluster's (its repository service on its network, `restore.conf`).
pub fn restore_source(common: &Common, restore: &backup::Restore) -> (PathBuf, String) {
    match &restore.from_cluster {
        None => (
            conf_path(common),
            backup::stanza(&common.cluster).to_string(),
        ),
        Some(from) => (restore_conf_path(common), backup::stanza(from).to_string()),
    }
}

/// The host name of a cluster's repository service, seen from another stack on its network:
/// the full Swarm service name.
pub fn source_repo_host(from_cluster: &str) -> String {
    format!("{from_cluster}_{}", backup::defaults::REPO_SERVICE)
}

/// Patroni's custom bootstrap that restores the cluster from a repository instead of
/// running initdb: pgBackRest restores the backup the target needs into the (empty) data
/// directory, then PostgreSQL recovers with the recovery settings Patroni writes (WAL from
/// the same repository) and promotes at the target. Patroni waits for the promotion before
/// it calls the cluster bootstrapped; the other members then clone the new leader as usual.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreBootstrap {
    pub command: String,
    /// pgBackRest's own recovery settings are replaced by `recovery_conf` (Patroni writes
    /// them where it manages them, so no copy of the target lingers in postgresql.auto.conf
    /// for the replicas cloned later).
    pub keep_existing_recovery_conf: bool,
    /// The command takes no `--scope`/`--datadir` from Patroni: it knows both.
    pub no_params: bool,
    pub recovery_conf: BTreeMap<String, String>,
}

/// Patroni's name of the bootstrap method.
pub const RESTORE_METHOD: &str = "pgbackrest";

/// The custom bootstrap for `restore` on this member.
pub fn restore_bootstrap(common: &Common, restore: &backup::Restore) -> RestoreBootstrap {
    let (conf, stanza) = restore_source(common, restore);
    let base = format!("pgbackrest --config={} --stanza={stanza}", conf.display());
    let mut recovery = BTreeMap::from([(
        "restore_command".to_string(),
        format!("{base} archive-get %f \"%p\""),
    )]);
    // pgBackRest picks the backup from the target (the newest that ends before a time).
    let selection = match &restore.target {
        backup::RestoreTarget::Latest => String::new(),
        backup::RestoreTarget::Time(t) => {
            recovery.insert("recovery_target_time".into(), t.clone());
            recovery.insert("recovery_target_action".into(), "promote".into());
            recovery.insert("recovery_target_timeline".into(), "latest".into());
            format!(" --type=time '--target={t}'")
        }
        backup::RestoreTarget::Label(l) => {
            recovery.insert("recovery_target".into(), "immediate".into());
            recovery.insert("recovery_target_action".into(), "promote".into());
            format!(" --type=immediate --set={l}")
        }
    };
    RestoreBootstrap {
        command: format!("{base} --pg1-path={}{selection} restore", common.pgdata()),
        keep_existing_recovery_conf: false,
        no_params: true,
        recovery_conf: recovery,
    }
}

/// pgbackrest.conf for a restore from another cluster's repository: that repository
/// service (its full name, on its network), that cluster's certificate and passphrase.
pub fn source_conf(
    common: &Common,
    settings: &BackupSettings,
    postgres: &Postgres,
    from_cluster: &str,
    tls: &TlsFiles,
    passphrase: Option<&str>,
) -> String {
    let d = dir(common);
    let mut g: Vec<(String, String)> = [
        ("lock-path", d.join("lock").display().to_string()),
        ("log-path", d.join("log").display().to_string()),
        ("log-level-file", "off".into()),
        ("log-level-console", "info".into()),
        ("log-level-stderr", "off".into()),
        ("repo1-host", source_repo_host(from_cluster)),
        ("repo1-path", settings.repo_path.clone()),
        ("repo1-host-type", "tls".into()),
        ("repo1-host-port", backup::defaults::REPO_PORT.to_string()),
        ("repo1-host-ca-file", tls.ca.display().to_string()),
        ("repo1-host-cert-file", tls.cert.display().to_string()),
        ("repo1-host-key-file", tls.key.display().to_string()),
        ("process-max", "2".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    cipher(&mut g, passphrase);
    let section = vec![
        ("pg1-path".to_string(), common.pgdata()),
        ("pg1-port".to_string(), postgres.port.to_string()),
        (
            "pg1-socket-path".to_string(),
            common.socket_dir().to_string(),
        ),
        ("pg1-user".to_string(), common.superuser.clone()),
    ];
    text(g, backup::stanza(from_cluster), section)
}

/// Writes what a restore from another cluster's repository needs: that cluster's TLS files
/// and passphrase (mounted as `restore_*` secrets) and `restore.conf`.
fn write_source(
    common: &Common,
    settings: &BackupSettings,
    postgres: &Postgres,
    from_cluster: &str,
) -> anyhow::Result<()> {
    let secret_path = |s: Secret| Path::new(SECRETS_DIR).join(backup::restore_secret(s));
    let tls = TlsFiles {
        ca: dir(common).join("restore-ca.crt"),
        cert: dir(common).join("restore-tls.crt"),
        key: dir(common).join("restore-tls.key"),
    };
    for (secret, path) in [
        (Secret::BackupTlsCa, &tls.ca),
        (Secret::BackupTlsCert, &tls.cert),
        (Secret::BackupTlsKey, &tls.key),
    ] {
        let from = secret_path(secret);
        let mut pem = std::fs::read_to_string(&from).with_context(|| {
            format!(
                "restoring from cluster {from_cluster}: cannot read {} (its backup \
                 certificate, mounted by swarmctl restore)",
                from.display()
            )
        })?;
        pem = pem.trim().to_string();
        pem.push('\n');
        templates::write_private(path, pem.as_bytes())?;
    }
    let pass_file = secret_path(Secret::BackupPassphrase);
    let pass = match std::fs::read_to_string(&pass_file) {
        Ok(p) => Some(p.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", pass_file.display())),
    };
    let conf = source_conf(
        common,
        settings,
        postgres,
        from_cluster,
        &tls,
        pass.as_deref(),
    );
    templates::write_private(&restore_conf_path(common), conf.as_bytes())?;
    Ok(())
}

/// Where Docker mounts secrets.
const SECRETS_DIR: &str = "/run/secrets";

/// On a data member with backups: renders pgbackrest.conf and the TLS files, and keeps this
/// member's pgBackRest server running (the repository reads backups through it).
pub fn start_member(common: &Common, postgres: &Postgres, secrets: &Secrets) -> anyhow::Result<()> {
    let Some(settings) = &common.backup else {
        return Ok(());
    };
    let tls = write_tls(common, secrets)?;
    make_dirs(common, None)?;
    let pass = passphrase(settings, secrets)?;
    let conf = member_conf(common, settings, postgres, &tls, pass.as_deref());
    templates::write_private(&conf_path(common), conf.as_bytes())?;
    info!(repository = %settings.repo_host, path = %conf_path(common).display(), "rendered pgbackrest.conf; WAL is archived to the repository");
    if let Some(restore) = &settings.restore {
        if let Some(from) = &restore.from_cluster {
            write_source(common, settings, postgres, from)?;
        }
        // pgBackRest restores into an existing directory; Patroni counts an empty one as
        // empty, so a member that bootstraps still does.
        let pgdata = PathBuf::from(common.pgdata());
        if !pgdata.exists() {
            std::fs::create_dir_all(&pgdata)
                .with_context(|| format!("creating {}", pgdata.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 0700 {}", pgdata.display()))?;
        }
        info!(target = %restore.target.to_env_value(), from = ?restore.from_cluster, "should this member bootstrap the cluster, it restores it from the repository");
    }
    tokio::spawn(crate::metrics::keep_running(server(common)));
    Ok(())
}

/// How often the repository retries creating the stanza until it exists.
const STANZA_RETRY: Duration = Duration::from_secs(10);

/// The repository service: renders its configuration, runs its TLS server, creates the
/// stanza once the members answer, then runs the backup schedule.
pub async fn run(member: &MemberEnv, secrets: &Secrets) -> anyhow::Result<i32> {
    let common = &member.common;
    let Role::Backup {
        members,
        pg_port,
        member_data_root,
        member_run_dir,
        schedule_full,
        schedule_diff,
    } = &member.role
    else {
        anyhow::bail!("mode {} is not the backup repository", member.mode());
    };
    let Some(settings) = &common.backup else {
        anyhow::bail!(
            "{} is not set: the backup repository needs its settings",
            backup::env::REPO_HOST
        );
    };
    let schedules = [("full", schedule_full), ("diff", schedule_diff)]
        .into_iter()
        .filter_map(|(kind, s)| s.as_ref().map(|s| (kind, s)))
        .map(|(kind, s)| {
            pgswarm_contract::cron::Schedule::parse(s)
                .map(|s| (kind, s))
                .map_err(|e| crate::ConfigError(format!("backup schedule {kind}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tls = write_tls(common, secrets)?;
    make_dirs(common, Some(settings))?;
    let pass = passphrase(settings, secrets)?;
    let view = MembersView {
        hosts: members,
        pg_port: *pg_port,
        data_root: member_data_root,
        run_dir: member_run_dir,
    };
    let conf = repo_conf(common, settings, &view, &tls, pass.as_deref());
    templates::write_private(&conf_path(common), conf.as_bytes())?;
    info!(path = %conf_path(common).display(), members = ?members, encrypted = settings.encrypt, "rendered the repository's pgbackrest.conf");
    tokio::spawn(stanza_then_schedule(common.clone(), schedules));
    supervise::supervise(server(common), std::future::pending()).await
}

/// Runs `pgbackrest` with this configuration and `args`; the error carries its output.
pub async fn pgbackrest(common: &Common, args: &[&str]) -> anyhow::Result<String> {
    let spec = ChildSpec::new(format!("pgbackrest {}", args.join(" ")), "pgbackrest")
        .arg(format!("--config={}", conf_path(common).display()))
        .arg(format!("--stanza={}", backup::stanza(&common.cluster)))
        .args(args);
    let out = supervise::run(spec).await?;
    if out.code != 0 {
        anyhow::bail!(
            "pgbackrest {} exited with {}: {}{}",
            args.join(" "),
            out.code,
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

async fn stanza_then_schedule(
    common: Common,
    schedules: Vec<(&'static str, pgswarm_contract::cron::Schedule)>,
) {
    let mut last_error = String::new();
    loop {
        if supervise::stop_requested() {
            return;
        }
        match pgbackrest(&common, &["stanza-create"]).await {
            Ok(_) => {
                info!(stanza = %backup::stanza(&common.cluster), "stanza ready");
                break;
            }
            Err(e) => {
                let text = format!("{e:#}");
                if text != last_error {
                    warn!(error = %text, "cannot create the stanza yet (retrying every 10 s)");
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(STANZA_RETRY).await;
    }
    if schedules.is_empty() {
        return;
    }
    let mut last_minute = None;
    loop {
        if supervise::stop_requested() {
            return;
        }
        let now = time_parts(std::time::SystemTime::now());
        if last_minute != Some(now.minute_stamp) {
            last_minute = Some(now.minute_stamp);
            // A full backup wins over a differential due at the same minute.
            if let Some((kind, _)) = schedules
                .iter()
                .find(|(_, s)| s.matches(now.minute, now.hour, now.day, now.month, now.weekday))
            {
                let arg = format!("--type={kind}");
                info!(kind, "scheduled backup starting");
                match pgbackrest(&common, &["backup", &arg]).await {
                    Ok(_) => info!(kind, "scheduled backup done"),
                    Err(e) => warn!(kind, error = %format!("{e:#}"), "scheduled backup failed"),
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
}

/// A UTC time split as cron reads it.
#[derive(Debug, PartialEq, Eq)]
struct TimeParts {
    minute_stamp: u64,
    minute: u32,
    hour: u32,
    day: u32,
    month: u32,
    weekday: u32,
}

fn time_parts(t: std::time::SystemTime) -> TimeParts {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (_, month, day) = pgswarm_contract::cron::civil_from_days(days);
    TimeParts {
        minute_stamp: secs / 60,
        minute: ((rem / 60) % 60) as u32,
        hour: (rem / 3600) as u32,
        day,
        month,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 4).rem_euclid(7)) as u32,
    }
}

/// The repository's health: its TLS server answers.
pub async fn health(member: &MemberEnv) -> anyhow::Result<String> {
    let spec = ChildSpec::new("pgbackrest server-ping", "pgbackrest")
        .arg(format!("--config={}", conf_path(&member.common).display()))
        .args(["server-ping", "127.0.0.1"]);
    let out = supervise::run(spec).await?;
    if out.code != 0 {
        anyhow::bail!(
            "the repository's pgBackRest server does not answer: {}{}",
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    Ok("pgBackRest server answers".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            ca: "/run/pgswarm/pgbackrest/ca.crt".into(),
            cert: "/run/pgswarm/pgbackrest/tls.crt".into(),
            key: "/run/pgswarm/pgbackrest/tls.key".into(),
        }
    }

    #[test]
    fn member_conf_points_at_the_repository_over_tls() {
        let common = Common::new("demo", "pg1");
        let conf = member_conf(
            &common,
            &BackupSettings::new("backup"),
            &Postgres::default(),
            &tls(),
            None,
        );
        for line in [
            "repo1-host=backup",
            "repo1-host-type=tls",
            "repo1-host-port=8432",
            "archive-async=y",
            "tls-server-auth=pgswarm-demo-backup=demo",
            "[demo]",
            "pg1-path=/var/lib/pgswarm/pgdata",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing:\n{conf}");
        }
        assert!(!conf.contains("cipher"), "not encrypted");
    }

    #[test]
    fn repo_conf_lists_every_member_and_the_passphrase_only_there() {
        let common = Common::new("demo", "backup");
        let members = vec!["pg1".to_string(), "pg2".to_string()];
        let view = |hosts| MembersView {
            hosts,
            pg_port: 5432,
            data_root: pgswarm_contract::defaults::DATA_ROOT,
            run_dir: pgswarm_contract::defaults::RUN_DIR,
        };
        let conf = repo_conf(
            &common,
            &BackupSettings::new("backup"),
            &view(&members),
            &tls(),
            Some("s3cret"),
        );
        for line in [
            "pg1-host=pg1",
            "pg2-host=pg2",
            "pg2-host-type=tls",
            "backup-standby=y",
            "repo1-cipher-pass=s3cret",
            "repo1-retention-full=2",
            "pg2-path=/var/lib/pgswarm/pgdata",
            "pg2-socket-path=/run/pgswarm",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing:\n{conf}");
        }
        let single = repo_conf(
            &common,
            &BackupSettings::new("backup"),
            &view(&members[..1]),
            &tls(),
            None,
        );
        assert!(!single.contains("backup-standby"));
        assert!(!single.contains("cipher"));
    }

    #[test]
    fn a_restore_bootstraps_through_pgbackrest_and_promotes_at_the_target() {
        let common = Common::new("new", "pg1");
        let restore = |target, from: Option<&str>| backup::Restore {
            target,
            from_cluster: from.map(str::to_string),
        };
        let b = restore_bootstrap(
            &common,
            &restore(
                backup::RestoreTarget::Time("2026-12-03 18:00:00+00".into()),
                Some("old"),
            ),
        );
        assert_eq!(
            b.command,
            "pgbackrest --config=/run/pgswarm/pgbackrest/restore.conf --stanza=old \
             --pg1-path=/var/lib/pgswarm/pgdata --type=time '--target=2026-12-03 18:00:00+00' \
             restore"
        );
        assert_eq!(
            b.recovery_conf["recovery_target_time"],
            "2026-12-03 18:00:00+00"
        );
        assert_eq!(b.recovery_conf["recovery_target_action"], "promote");
        assert_eq!(
            b.recovery_conf["restore_command"],
            "pgbackrest --config=/run/pgswarm/pgbackrest/restore.conf --stanza=old archive-get \
             %f \"%p\""
        );
        assert!(!b.keep_existing_recovery_conf && b.no_params);
        let latest = restore_bootstrap(&common, &restore(backup::RestoreTarget::Latest, None));
        assert!(latest
            .command
            .contains("pgbackrest.conf --stanza=new --pg1-path"));
        assert!(
            latest.command.ends_with("/pgdata restore"),
            "{}",
            latest.command
        );
        assert_eq!(
            latest.recovery_conf.len(),
            1,
            "no target: the end of the archive"
        );
        let label = restore_bootstrap(
            &common,
            &restore(
                backup::RestoreTarget::Label("20261203-141000F".into()),
                None,
            ),
        );
        assert!(label
            .command
            .contains("--type=immediate --set=20261203-141000F restore"));
        assert_eq!(label.recovery_conf["recovery_target"], "immediate");
        let conf = source_conf(
            &common,
            &BackupSettings::new("backup"),
            &Postgres::default(),
            "old",
            &tls(),
            Some("pw"),
        );
        for line in ["repo1-host=old_backup", "[old]", "repo1-cipher-pass=pw"] {
            assert!(conf.lines().any(|l| l == line), "{line} missing:\n{conf}");
        }
    }

    #[test]
    fn archive_parameters() {
        let common = Common::new("demo", "pg1");
        let p = super::archive_parameters(&common, &BackupSettings::new("backup"));
        assert_eq!(p["archive_mode"], "on");
        assert_eq!(p["archive_timeout"], "60s");
        assert_eq!(
            p["archive_command"],
            "pgbackrest --config=/run/pgswarm/pgbackrest/pgbackrest.conf --stanza=demo \
             archive-push \"%p\""
        );
    }

    #[test]
    fn civil_time() {
        // 2026-12-03 13:45 UTC, a Thursday.
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_305_500);
        let p = time_parts(t);
        assert_eq!(
            (p.month, p.day, p.hour, p.minute, p.weekday),
            (12, 3, 13, 45, 4)
        );
        let epoch = time_parts(std::time::UNIX_EPOCH);
        assert_eq!((epoch.month, epoch.day, epoch.weekday), (1, 1, 4));
    }
}
