//! One PostgreSQL server of a member: its binaries, its data directory (initdb, state), the
//! configuration the sidecar owns (an included `pgswarm.conf`, `pg_hba.conf`,
//! `pg_ident.conf`), the supervised `postgres` child, local connections and role checks.
//!
//! Local connections go through the Unix socket in the run directory with peer
//! authentication: only the service's OS user gets in, mapped to the superuser, so the
//! sidecar needs no password locally. Remote clients and replicas use SCRAM from the allowed
//! networks only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use pgswarm_contract::{Common, MemberEnv, Mode, Postgres, Role};
use serde::Serialize;
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::secrets::SecretValue;
use crate::supervise::{self, ChildSpec};
use crate::templates::{self, Templates};
use crate::ConfigError;

/// Name of the settings file the sidecar renders into the data directory.
pub const SETTINGS_FILE: &str = "pgswarm.conf";
/// The line that makes postgresql.conf read [`SETTINGS_FILE`].
const INCLUDE_LINE: &str = "include 'pgswarm.conf'";

/// Finds PostgreSQL's binaries: `configured` (PGSWARM_PG_BIN_DIR) when set, else the highest
/// version under /usr/lib/postgresql/*/bin (Debian's layout).
pub fn find_bin_dir(configured: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = configured {
        let dir = PathBuf::from(dir);
        if !dir.join("postgres").is_file() {
            return Err(ConfigError(format!(
                "{}={} holds no `postgres` binary; point it at PostgreSQL's bin directory or unset it",
                pgswarm_contract::env::PG_BIN_DIR,
                dir.display()
            ))
            .into());
        }
        return Ok(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let version = entry.file_name().to_string_lossy().parse::<u32>();
            let bin = entry.path().join("bin");
            if let Ok(version) = version {
                if bin.join("postgres").is_file() {
                    found.push((version, bin));
                }
            }
        }
    }
    found.sort();
    found.pop().map(|(_, dir)| dir).ok_or_else(|| {
        ConfigError(format!(
            "no PostgreSQL found under /usr/lib/postgresql/*/bin; install PostgreSQL or set {}",
            pgswarm_contract::env::PG_BIN_DIR
        ))
        .into()
    })
}

/// What a data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataState {
    /// Missing or empty: safe to fill.
    Empty,
    /// A PostgreSQL data directory (PG_VERSION present).
    Cluster,
    /// Something else: never touched; the named entries are examples.
    Foreign(Vec<String>),
}

/// Looks at `dir` without changing anything.
pub fn data_state(dir: &Path) -> anyhow::Result<DataState> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataState::Empty),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        Ok(DataState::Empty)
    } else if names.iter().any(|n| n == "PG_VERSION") {
        Ok(DataState::Cluster)
    } else {
        names.sort();
        names.truncate(5);
        Ok(DataState::Foreign(names))
    }
}

/// A value quoted for postgresql.conf.
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// An SQL identifier, quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal (standard_conforming_strings, the default since 9.1).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A user name for pg_hba.conf / pg_ident.conf, quoted when it is not a plain word.
fn hba_quote(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A connection-string value (libpq keyword/value syntax), quoted.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Checks one `address/prefix` network of PGSWARM_ALLOWED_CIDRS.
fn check_cidr(cidr: &str) -> anyhow::Result<()> {
    let bad = || {
        ConfigError(format!(
            "{} holds {cidr:?}, which is not a network in CIDR notation (like 10.0.1.0/24)",
            pgswarm_contract::env::ALLOWED_CIDRS
        ))
    };
    let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad().into());
    }
    Ok(())
}

/// The networks allowed in pg_hba: the contract's, else those of this container's
/// non-loopback interfaces (the overlay networks it is attached to).
pub fn allowed_cidrs(pg: &Postgres) -> anyhow::Result<Vec<String>> {
    if !pg.allowed_cidrs.is_empty() {
        for cidr in &pg.allowed_cidrs {
            check_cidr(cidr)?;
        }
        return Ok(pg.allowed_cidrs.clone());
    }
    let detected = detect_cidrs()?;
    if detected.is_empty() {
        return Err(ConfigError(format!(
            "no network to allow in pg_hba: this container has no non-loopback interface; set {}",
            pgswarm_contract::env::ALLOWED_CIDRS
        ))
        .into());
    }
    info!(cidrs = ?detected, "allowing the networks of this container's interfaces");
    Ok(detected)
}

fn network_v4(addr: Ipv4Addr, mask: Ipv4Addr) -> String {
    let prefix = u32::from(mask).count_ones();
    let net = Ipv4Addr::from(u32::from(addr) & u32::from(mask));
    format!("{net}/{prefix}")
}

fn network_v6(addr: Ipv6Addr, mask: Ipv6Addr) -> String {
    let prefix = u128::from(mask).count_ones();
    let net = Ipv6Addr::from(u128::from(addr) & u128::from(mask));
    format!("{net}/{prefix}")
}

/// The networks of this host's non-loopback interfaces (IPv6 link-local ones left out).
pub fn detect_cidrs() -> anyhow::Result<Vec<String>> {
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing network interfaces")? {
        if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let cidr = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            network_v4(a.ip(), m.ip())
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            if (a.ip().segments()[0] & 0xffc0) == 0xfe80 {
                continue;
            }
            network_v6(a.ip(), m.ip())
        } else {
            continue;
        };
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    Ok(out)
}

/// One `name = value` line of the settings file (value already quoted).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: String,
}

/// A PostgreSQL server of this member.
#[derive(Debug, Clone)]
pub struct Server {
    pub common: Common,
    pub pg: Postgres,
    pub mode: Mode,
    pub bin_dir: PathBuf,
    pub templates: Templates,
}

impl Server {
    /// The server of a primary, replica or Patroni member.
    pub fn new(member: &MemberEnv, templates: Templates) -> anyhow::Result<Self> {
        let pg = match &member.role {
            Role::Primary { postgres, .. }
            | Role::Replica { postgres, .. }
            | Role::Patroni { postgres, .. } => postgres.clone(),
            other => bail!("mode {} runs no PostgreSQL server", other.mode()),
        };
        Ok(Server {
            bin_dir: find_bin_dir(pg.bin_dir.as_deref())?,
            common: member.common.clone(),
            pg,
            mode: member.mode(),
            templates,
        })
    }

    pub fn pgdata(&self) -> PathBuf {
        PathBuf::from(self.common.pgdata())
    }

    pub fn data_root(&self) -> PathBuf {
        PathBuf::from(&self.common.data_root)
    }

    /// Where the server's Unix socket lives (the run directory, private to the service user).
    pub fn socket_dir(&self) -> PathBuf {
        PathBuf::from(self.common.socket_dir())
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A spec for one of PostgreSQL's programs; LC_ALL=C keeps their output parseable.
    pub fn tool(&self, name: &str) -> ChildSpec {
        ChildSpec::new(name, self.bin(name)).env("LC_ALL", "C")
    }

    /// A sibling of the data directory on the same filesystem (for build-then-rename).
    pub fn staging_dir(&self, purpose: &str) -> PathBuf {
        self.data_root().join(format!(
            "{}.{purpose}-tmp",
            pgswarm_contract::defaults::PGDATA_SUBDIR
        ))
    }

    /// Removes a staging directory left by a run that was killed midway.
    pub fn remove_leftover(&self, dir: &Path) -> anyhow::Result<()> {
        if dir.exists() {
            warn!(dir = %dir.display(), "removing an unfinished copy left by an interrupted start");
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing unfinished copy {}", dir.display()))?;
        }
        Ok(())
    }

    /// Moves a finished data directory from `staging` into place and makes the move durable.
    pub fn promote_staging(&self, staging: &Path) -> anyhow::Result<()> {
        let pgdata = self.pgdata();
        if let Ok(DataState::Foreign(_) | DataState::Cluster) = data_state(&pgdata) {
            bail!(
                "{} filled up while a copy was being made; refusing to replace it",
                pgdata.display()
            );
        }
        // An empty directory (say, created by hand) is replaced by rename(2) itself.
        std::fs::rename(staging, &pgdata).with_context(|| {
            format!(
                "moving {} into place as {}",
                staging.display(),
                pgdata.display()
            )
        })?;
        fsync_dir(&self.data_root())?;
        Ok(())
    }

    /// Creates a new cluster (data checksums, SCRAM) in a staging directory, then moves it
    /// into place, so a run killed midway leaves nothing that looks like data.
    pub async fn initdb(&self, superuser_password: &SecretValue) -> anyhow::Result<()> {
        let staging = self.staging_dir("initdb");
        self.remove_leftover(&staging)?;
        let pwfile = self.socket_dir().join("initdb.pwfile");
        templates::write_private(&pwfile, superuser_password.expose().as_bytes())?;
        let _remove = RemoveOnDrop(pwfile.clone());
        info!(pgdata = %self.pgdata().display(), "initializing a new cluster (initdb)");
        let spec = self
            .tool("initdb")
            .arg("-D")
            .arg(&staging)
            .args([
                "--data-checksums",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--username={}", self.common.superuser))
            .arg(format!("--pwfile={}", pwfile.display()));
        if let Err(e) = supervise::run_checked(spec).await {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context("initdb failed"));
        }
        self.promote_staging(&staging)
    }

    /// The settings every server of ours gets, then `extra`, then the contract's parameters
    /// (later lines win in postgresql.conf).
    pub fn settings(&self, extra: &[(&str, String)]) -> anyhow::Result<Vec<Setting>> {
        let mut out: Vec<(String, String)> = vec![
            ("listen_addresses".into(), self.pg.listen_address.clone()),
            ("port".into(), self.pg.port.to_string()),
            (
                "unix_socket_directories".into(),
                self.socket_dir().display().to_string(),
            ),
            ("wal_level".into(), "replica".into()),
            ("max_wal_senders".into(), "10".into()),
            ("max_replication_slots".into(), "10".into()),
            ("hot_standby".into(), "on".into()),
            ("password_encryption".into(), "scram-sha-256".into()),
            ("cluster_name".into(), self.common.member.clone()),
        ];
        // Below Swarm's 900 s IPVS idle timeout, so idle sessions survive the VIP.
        out.extend(
            pgswarm_contract::rules::keepalive::postgres_parameters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        out.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        // The contract's rule, the same `swarmctl validate` applies.
        pgswarm_contract::rules::check_parameters(&self.pg.parameters, false)
            .map_err(|e| ConfigError(format!("{}: {e}", pgswarm_contract::env::PG_PARAMETERS)))?;
        for (name, value) in &self.pg.parameters {
            out.push((name.clone(), value.clone()));
        }
        Ok(out
            .into_iter()
            .map(|(name, value)| Setting {
                value: conf_quote(&value),
                name,
            })
            .collect())
    }

    /// Renders pgswarm.conf, pg_hba.conf and pg_ident.conf into the data directory and makes
    /// postgresql.conf include pgswarm.conf. Runs on every start, so a changed spec applies.
    pub fn write_config(&self, extra: &[(&str, String)]) -> anyhow::Result<()> {
        let pgdata = self.pgdata();
        let cidrs = allowed_cidrs(&self.pg)?;
        let os_user = crate::privileges::service_user()
            .map(|u| u.name.clone())
            .or_else(current_user_name)
            .unwrap_or_else(|| crate::privileges::SERVICE_USER.to_string());
        let base = serde_json::json!({
            "member": self.common.member,
            "cluster": self.common.cluster,
            "mode": self.mode.as_str(),
        });
        let with = |more: serde_json::Value| {
            let mut v = base.clone();
            if let (Some(v), Some(more)) = (v.as_object_mut(), more.as_object()) {
                v.extend(more.clone());
            }
            v
        };
        let conf = self.templates.render(
            "postgresql.pgswarm.conf.hbs",
            &with(serde_json::json!({ "settings": self.settings(extra)? })),
        )?;
        templates::write_file(&pgdata.join(SETTINGS_FILE), conf.as_bytes(), 0o600)?;
        let hba = self.templates.render(
            "pg_hba.conf.hbs",
            &with(serde_json::json!({
                "cidrs": cidrs,
                "replication_user": hba_quote(&self.common.replication_user),
                "monitor_user": self
                    .common
                    .metrics_port
                    .map(|_| hba_quote(pgswarm_contract::defaults::MONITOR_USER)),
            })),
        )?;
        templates::write_file(&pgdata.join("pg_hba.conf"), hba.as_bytes(), 0o600)?;
        let ident = self.templates.render(
            "pg_ident.conf.hbs",
            &with(serde_json::json!({
                "os_user": hba_quote(&os_user),
                "superuser": hba_quote(&self.common.superuser),
            })),
        )?;
        templates::write_file(&pgdata.join("pg_ident.conf"), ident.as_bytes(), 0o600)?;
        let main_conf = pgdata.join("postgresql.conf");
        let text = std::fs::read_to_string(&main_conf)
            .with_context(|| format!("reading {}", main_conf.display()))?;
        if !text.lines().any(|l| l.trim() == INCLUDE_LINE) {
            let text = format!(
                "{text}\n# Settings rendered by pgswarm-sidecar on every start.\n{INCLUDE_LINE}\n"
            );
            templates::write_file(&main_conf, text.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// `postgres -D <pgdata>` in the foreground, with SIGTERM turned into SIGINT (fast
    /// shutdown: clients disconnected, a clean checkpoint) and a second stop request into
    /// SIGQUIT (immediate shutdown).
    pub fn child(&self) -> ChildSpec {
        ChildSpec::new("postgres", self.bin("postgres"))
            .arg("-D")
            .arg(self.pgdata())
            .current_dir(self.pgdata())
            .forward(Signal::SIGTERM, Signal::SIGINT)
            .escalate_with(Signal::SIGQUIT)
    }

    /// Connection settings for the local socket as the superuser (peer authentication).
    pub fn local_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.pg.port)
            .user(&self.common.superuser)
            .dbname(dbname)
            .application_name("pgswarm-sidecar")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    pub async fn connect_local(&self, dbname: &str) -> anyhow::Result<Client> {
        let what = format!(
            "postgres on socket {}/.s.PGSQL.{}",
            self.socket_dir().display(),
            self.pg.port
        );
        connect(&self.local_config(dbname), &what).await
    }

    /// Waits until the local server accepts connections. No deadline: crash recovery of a
    /// large cluster may take long, and the caller also watches the postgres process itself.
    pub async fn wait_accepting(&self) -> anyhow::Result<Client> {
        let what = format!(
            "local postgres to accept connections (port {})",
            self.pg.port
        );
        crate::wait::wait_for(&what, Duration::MAX, || self.connect_local("postgres")).await
    }

    /// The system identifier written in the data directory's control file.
    pub async fn system_identifier_on_disk(&self) -> anyhow::Result<u64> {
        let out = supervise::run_checked(self.tool("pg_controldata").arg("-D").arg(self.pgdata()))
            .await?;
        parse_controldata_identifier(&out.stdout).with_context(|| {
            format!(
                "pg_controldata printed no system identifier for {}",
                self.pgdata().display()
            )
        })
    }
}

/// Connects and drives the connection in a task (over TLS when the cluster uses it, see
/// [`crate::tls::connect`]); errors name `what`.
pub async fn connect(config: &tokio_postgres::Config, what: &str) -> anyhow::Result<Client> {
    crate::tls::connect(config)
        .await
        .with_context(|| format!("connecting to {what}"))
}

fn parse_controldata_identifier(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The server's role as seen from SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    Primary,
    Standby,
}

/// Asks the server whether it is in recovery.
pub async fn server_role(client: &Client) -> anyhow::Result<ServerRole> {
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .context("asking pg_is_in_recovery()")?;
    Ok(if row.get::<_, bool>(0) {
        ServerRole::Standby
    } else {
        ServerRole::Primary
    })
}

fn current_user_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// A libpq password file (mode 0600) with one line for `host:port` and `user`.
pub fn write_passfile(
    path: &Path,
    host: &str,
    port: u16,
    user: &str,
    password: &SecretValue,
) -> anyhow::Result<()> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let line = format!(
        "{}:{port}:*:{}:{}\n",
        esc(host),
        esc(user),
        esc(password.expose())
    );
    templates::write_private(path, line.as_bytes())
}

/// fsyncs a directory, making renames inside it durable.
pub fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync of {}", dir.display()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(params: &[(&str, &str)], cidrs: &[&str]) -> Server {
        let mut pg = Postgres {
            port: 5433,
            ..Postgres::default()
        };
        pg.allowed_cidrs = cidrs.iter().map(|s| s.to_string()).collect();
        for (k, v) in params {
            pg.parameters.insert(k.to_string(), v.to_string());
        }
        Server {
            common: Common::new("demo", "pg1"),
            pg,
            mode: Mode::Primary,
            bin_dir: PathBuf::from("/nonexistent"),
            templates: Templates::default(),
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_quote(r"it's a\b"), r"'it''s a\\b'");
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("o'k"), "'o''k'");
        assert_eq!(hba_quote("replicator"), "replicator");
        assert_eq!(hba_quote("odd user"), "\"odd user\"");
        assert_eq!(conninfo_quote(r"a'b\c"), r"'a\'b\\c'");
    }

    #[test]
    fn contract_parameters_come_last_and_bad_names_are_refused() {
        let s = server(&[("max_connections", "200"), ("work_mem", "8MB")], &[]);
        let settings = s.settings(&[("primary_slot_name", "r1".into())]).unwrap();
        let names: Vec<_> = settings.iter().map(|s| s.name.as_str()).collect();
        let pos = |n: &str| names.iter().rposition(|x| *x == n).unwrap();
        assert!(pos("primary_slot_name") < pos("max_connections"));
        assert!(pos("work_mem") > pos("primary_slot_name"));
        assert_eq!(settings[pos("max_connections")].value, "'200'");
        // Parameters pgswarm manages are refused with the contract's rule, as swarmctl does.
        for managed in ["port", "cluster_name"] {
            let err = server(&[(managed, "x")], &[]).settings(&[]).unwrap_err();
            assert!(err.to_string().contains("managed by pgswarm"), "{err}");
        }
        let bad = server(&[("evil = 1\nx", "1")], &[]);
        let err = bad.settings(&[]).unwrap_err().to_string();
        assert!(err.contains("PGSWARM_PG_PARAMETERS"), "{err}");
    }

    #[test]
    fn config_files_render_with_scram_only_for_the_allowed_networks() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(&[], &["10.0.1.0/24", "127.0.0.1/32"]);
        s.common.data_root = dir.path().display().to_string();
        let pgdata = s.pgdata();
        std::fs::create_dir_all(&pgdata).unwrap();
        std::fs::write(pgdata.join("postgresql.conf"), "# initdb's\n").unwrap();
        s.write_config(&[]).unwrap();
        s.write_config(&[]).unwrap();
        let main = std::fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
        assert_eq!(main.matches(INCLUDE_LINE).count(), 1, "{main}");
        let hba = std::fs::read_to_string(pgdata.join("pg_hba.conf")).unwrap();
        let rules: Vec<Vec<&str>> = hba
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rules[0], ["local", "all", "all", "peer", "map=pgswarm"]);
        for cidr in ["10.0.1.0/24", "127.0.0.1/32"] {
            assert!(rules.contains(&vec!["host", "all", "all", cidr, "scram-sha-256"]));
            assert!(rules.contains(&vec![
                "host",
                "replication",
                "replicator",
                cidr,
                "scram-sha-256"
            ]));
        }
        assert_eq!(rules.len(), 5, "{hba}");
        assert!(!hba.contains("trust") && !hba.contains("0.0.0.0/0"));
        let conf = std::fs::read_to_string(pgdata.join(SETTINGS_FILE)).unwrap();
        for line in [
            "wal_level = 'replica'",
            "port = '5433'",
            "password_encryption = 'scram-sha-256'",
            "hot_standby = 'on'",
        ] {
            assert!(conf.contains(line), "{line} not in {conf}");
        }
    }

    #[test]
    fn cidrs_from_the_contract_are_checked_and_detection_finds_networks() {
        let err = allowed_cidrs(&server(&[], &["10.0.0.0/33"]).pg).unwrap_err();
        assert!(err.to_string().contains("PGSWARM_ALLOWED_CIDRS"), "{err}");
        assert!(allowed_cidrs(&server(&[], &["nonsense"]).pg).is_err());
        assert_eq!(
            network_v4(Ipv4Addr::new(10, 0, 1, 7), Ipv4Addr::new(255, 255, 255, 0)),
            "10.0.1.0/24"
        );
        for cidr in detect_cidrs().unwrap() {
            check_cidr(&cidr).unwrap();
            assert!(!cidr.starts_with("127."), "{cidr}");
        }
    }

    #[test]
    fn data_state_never_mistakes_other_content_for_a_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("pgdata");
        assert_eq!(data_state(&d).unwrap(), DataState::Empty);
        std::fs::create_dir(&d).unwrap();
        assert_eq!(data_state(&d).unwrap(), DataState::Empty);
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        assert_eq!(
            data_state(&d).unwrap(),
            DataState::Foreign(vec!["notes.txt".into()])
        );
        std::fs::write(d.join("PG_VERSION"), "15").unwrap();
        assert_eq!(data_state(&d).unwrap(), DataState::Cluster);
    }

    #[test]
    fn controldata_identifier_is_parsed() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7301234567890123456\n";
        assert_eq!(
            parse_controldata_identifier(text),
            Some(7301234567890123456)
        );
        assert_eq!(parse_controldata_identifier("nothing"), None);
    }

    #[test]
    fn passfile_escapes_separators_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        write_passfile(&path, "db", 5432, "rep", &SecretValue::new(r"a:b\c")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "db:5432:*:rep:a\\:b\\\\c\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
