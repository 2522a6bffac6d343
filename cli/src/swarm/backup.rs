//! `swarmctl backup now` and `swarmctl backup list`: pgBackRest run in the repository
//! service's container (as user postgres, with the configuration its sidecar rendered), the
//! only place a backup can run, since the repository is on that container's volume.

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

use crate::spec::{Cluster, ServiceKind};

use super::Engine;

/// Where the repository's sidecar renders pgbackrest.conf (the contract's run directory).
fn conf_path() -> String {
    format!(
        "{}/pgbackrest/pgbackrest.conf",
        pgswarm_contract::defaults::RUN_DIR
    )
}

/// The kinds of backup pgBackRest takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }
}

/// The repository service of `cluster`.
pub fn repository(cluster: &Cluster) -> anyhow::Result<&crate::spec::Service> {
    cluster
        .services
        .iter()
        .find(|s| s.kind == ServiceKind::Backup)
        .ok_or_else(|| {
            anyhow!(
                "cluster {} has no backups: add a `backup` section to its spec and deploy it",
                cluster.name
            )
        })
}

/// Runs `pgbackrest <args>` in the repository's container on this node.
async fn pgbackrest(engine: &Engine, cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let repo = repository(cluster)?;
    let service = super::service_name(&cluster.name, &repo.name);
    pgbackrest_in(
        engine,
        &service,
        pgswarm_contract::backup::stanza(&cluster.name),
        args,
    )
    .await
}

/// Runs `pgbackrest <args>` for `stanza` in the container of the repository service
/// `service` on this node.
pub async fn pgbackrest_in(
    engine: &Engine,
    service: &str,
    stanza: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let container = engine.running_container(service).await?.ok_or_else(|| {
        anyhow!(
            "no running container of {service} on this node: run swarmctl on the node the \
             repository runs on (`docker service ps {service}` shows it), where its volume is"
        )
    })?;
    let config = format!("--config={}", conf_path());
    let stanza = format!("--stanza={stanza}");
    let mut argv = vec!["pgbackrest", config.as_str(), stanza.as_str()];
    argv.extend_from_slice(args);
    super::exec::exec_as(engine, &container, Some("postgres"), &argv)
        .await?
        .into_stdout(&format!("pgbackrest {}", args.join(" ")))
}

/// Takes a backup now; returns the label of the newest backup afterwards.
pub async fn now(engine: &Engine, cluster: &Cluster, kind: BackupType) -> anyhow::Result<String> {
    let arg = format!("--type={}", kind.as_str());
    pgbackrest(engine, cluster, &["backup", &arg]).await?;
    let list = list(engine, cluster).await?;
    list.last()
        .map(|b| b.label.clone())
        .ok_or_else(|| anyhow!("pgbackrest reported success but lists no backup"))
}

/// One backup of the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupEntry {
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Start and stop, seconds since the epoch.
    pub start: i64,
    pub stop: i64,
    /// Size of the database at backup time, bytes.
    pub size: u64,
    /// Size of the backup in the repository (compressed), bytes.
    pub repository_size: u64,
    /// First and last WAL segment the backup needs.
    pub wal_start: String,
    pub wal_stop: String,
    /// The repository service it is in.
    pub repository: String,
}

/// The repository's backups, oldest first.
pub async fn list(engine: &Engine, cluster: &Cluster) -> anyhow::Result<Vec<BackupEntry>> {
    let json = pgbackrest(engine, cluster, &["info", "--output=json"]).await?;
    let repo = repository(cluster)?;
    parse_info(&json, &repo.name)
}

/// Reads `pgbackrest info --output=json`.
pub fn parse_info(json: &str, repository: &str) -> anyhow::Result<Vec<BackupEntry>> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("pgbackrest info printed something that is not JSON")?;
    let Some(stanzas) = value.as_array() else {
        bail!("pgbackrest info: expected a list of stanzas, got {value}");
    };
    let mut out = Vec::new();
    for stanza in stanzas {
        for b in stanza["backup"].as_array().into_iter().flatten() {
            out.push(BackupEntry {
                label: b["label"].as_str().unwrap_or_default().to_string(),
                kind: b["type"].as_str().unwrap_or_default().to_string(),
                start: b["timestamp"]["start"].as_i64().unwrap_or_default(),
                stop: b["timestamp"]["stop"].as_i64().unwrap_or_default(),
                size: b["info"]["size"].as_u64().unwrap_or_default(),
                repository_size: b["info"]["repository"]["delta"]
                    .as_u64()
                    .unwrap_or_default(),
                wal_start: b["archive"]["start"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                wal_stop: b["archive"]["stop"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                repository: repository.to_string(),
            });
        }
    }
    out.sort_by_key(|b| b.start);
    Ok(out)
}

/// `YYYY-MM-DD HH:MM:SS` UTC of seconds since the epoch.
pub fn utc(secs: i64) -> String {
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = pgswarm_contract::cron::civil_from_days(secs.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// The table `swarmctl backup list` prints.
pub fn render_table(entries: &[BackupEntry]) -> String {
    if entries.is_empty() {
        return "no backup yet (swarmctl backup now takes one)\n".into();
    }
    let mut rows = vec![[
        "LABEL".to_string(),
        "TYPE".into(),
        "START (UTC)".into(),
        "STOP (UTC)".into(),
        "SIZE".into(),
        "IN REPOSITORY".into(),
        "WAL".into(),
        "REPOSITORY".into(),
    ]];
    for b in entries {
        rows.push([
            b.label.clone(),
            b.kind.clone(),
            utc(b.start),
            utc(b.stop),
            human(b.size),
            human(b.repository_size),
            format!("{}..{}", b.wal_start, b.wal_stop),
            b.repository.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1",
      "max":"000000010000000000000007","min":"000000010000000000000001"}],
      "backup":[
       {"archive":{"start":"000000010000000000000006","stop":"000000010000000000000006"},
        "info":{"delta":1000,"repository":{"delta":300,"size":300},"size":1000},
        "label":"20261203-141000F_20261203-141500D","timestamp":{"start":1796307300,"stop":1796307310},
        "type":"diff"},
       {"archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"},
        "info":{"delta":23456789,"repository":{"delta":3456789,"size":3456789},"size":23456789},
        "label":"20261203-141000F","timestamp":{"start":1796307000,"stop":1796307012},
        "type":"full"}],
      "name":"demo","status":{"code":0,"message":"ok"}}]"#;

    #[test]
    fn info_is_read_oldest_first_and_rendered() {
        let entries = parse_info(INFO, "backup").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].label, "20261203-141000F");
        assert_eq!(entries[0].kind, "full");
        assert_eq!(entries[0].wal_start, "000000010000000000000003");
        assert_eq!(entries[0].size, 23_456_789);
        assert_eq!(entries[0].repository_size, 3_456_789);
        assert_eq!(entries[1].kind, "diff");
        let table = render_table(&entries);
        assert!(table.starts_with("LABEL"));
        assert!(table.contains("2026-12-03 14:10:00"), "{table}");
        assert!(table.contains("22.4 MiB"), "{table}");
        let json = serde_json::to_value(&entries).unwrap();
        assert_eq!(json[0]["type"], "full");
        assert_eq!(json[0]["repository"], "backup");
        assert!(parse_info("not json", "backup").is_err());
        assert_eq!(
            render_table(&[]),
            "no backup yet (swarmctl backup now takes one)\n"
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_305_500), "2026-12-03 13:45:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    }
}
