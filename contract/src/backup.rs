//! The backup share of the contract: what a data member needs to archive its WAL to the
//! cluster's pgBackRest repository and restore from it. Present on a member only when the
//! spec has a `backup` section; the variable [`env::REPO_HOST`] turns it on.

use crate::ContractError;

/// Environment variables of the backup settings.
pub mod env {
    /// DNS name of the repository service (pgBackRest's TLS server); set = backups on.
    pub const REPO_HOST: &str = "PGSWARM_BACKUP_REPO_HOST";
    /// Port of the repository's TLS server.
    pub const REPO_PORT: &str = "PGSWARM_BACKUP_REPO_PORT";
    /// Path of the repository in the repository service (on its volume); members name it too.
    pub const REPO_PATH: &str = "PGSWARM_BACKUP_REPO_PATH";
    /// Port of the data members' pgBackRest TLS servers.
    pub const MEMBER_PORT: &str = "PGSWARM_BACKUP_MEMBER_PORT";
    /// PostgreSQL's `archive_timeout`, seconds.
    pub const ARCHIVE_TIMEOUT: &str = "PGSWARM_BACKUP_ARCHIVE_TIMEOUT";
    /// Full backups kept.
    pub const RETENTION_FULL: &str = "PGSWARM_BACKUP_RETENTION_FULL";
    /// Differential backups kept (unset: pgBackRest's default).
    pub const RETENTION_DIFF: &str = "PGSWARM_BACKUP_RETENTION_DIFF";
    /// `true` when the repository is encrypted (the passphrase is a secret file).
    pub const ENCRYPT: &str = "PGSWARM_BACKUP_ENCRYPT";
    /// Set by `swarmctl restore`: a member that bootstraps the cluster restores it from a
    /// repository instead of running initdb. `latest`, `time=<timestamp>` or `label=<label>`.
    pub const RESTORE_TARGET: &str = "PGSWARM_RESTORE_TARGET";
    /// With [`RESTORE_TARGET`]: the cluster whose repository is restored from, when it is not
    /// this cluster's own (restore into a new cluster). Its repository service is reached on
    /// its network, with its certificate and passphrase mounted as [`restore_secret`] files.
    pub const RESTORE_FROM: &str = "PGSWARM_RESTORE_FROM";
}

/// The file name (under /run/secrets) a restoring member finds the source cluster's backup
/// secret under, for a restore from another cluster's repository: `restore_<name>`.
pub fn restore_secret(secret: crate::Secret) -> String {
    format!("restore_{}", secret.file_name())
}

/// What a restore recovers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Every archived WAL segment: the end of the archive.
    Latest,
    /// A moment (PostgreSQL's timestamp syntax, `YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]`): every
    /// transaction committed before it, none after.
    Time(String),
    /// The end of one backup (the consistent point of that backup, no WAL replayed past it).
    Label(String),
}

impl RestoreTarget {
    /// The value of [`env::RESTORE_TARGET`].
    pub fn to_env_value(&self) -> String {
        match self {
            RestoreTarget::Latest => "latest".into(),
            RestoreTarget::Time(t) => format!("time={t}"),
            RestoreTarget::Label(l) => format!("label={l}"),
        }
    }

    /// Reads the value of [`env::RESTORE_TARGET`].
    pub fn parse(value: &str) -> Result<Self, ContractError> {
        let bad = || ContractError::Invalid {
            var: env::RESTORE_TARGET,
            value: value.into(),
            expected: "latest, time=YYYY-MM-DD HH:MM:SS[+TZ] or label=BACKUP_LABEL".into(),
        };
        if value == "latest" {
            return Ok(RestoreTarget::Latest);
        }
        let (kind, rest) = value.split_once('=').ok_or_else(bad)?;
        let rest = rest.trim();
        // Quotes would break the bootstrap command line and the recovery settings.
        if rest.is_empty() || rest.contains(['\'', '"', '\n', '\\']) {
            return Err(bad());
        }
        match kind {
            "time" => Ok(RestoreTarget::Time(rest.into())),
            "label" if !rest.contains(char::is_whitespace) => Ok(RestoreTarget::Label(rest.into())),
            _ => Err(bad()),
        }
    }
}

/// A restore a bootstrapping member runs (see [`env::RESTORE_TARGET`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub target: RestoreTarget,
    /// The source cluster, when not this one.
    pub from_cluster: Option<String>,
}

/// Defaults of the backup settings.
pub mod defaults {
    /// pgBackRest's own default port for its TLS server.
    pub const REPO_PORT: u16 = 8432;
    /// Seconds after which a partly filled WAL segment is archived anyway.
    pub const ARCHIVE_TIMEOUT_SECS: u32 = 60;
    /// Full backups kept.
    pub const RETENTION_FULL: u32 = 2;
    /// Name of the repository service.
    pub const REPO_SERVICE: &str = "backup";
    /// Path of the repository on the repository service's volume (under its data root).
    pub const REPO_PATH: &str = "/var/lib/pgswarm/pgbackrest";
    /// Subdirectory of the data root for asynchronous archiving's spool, on data members.
    pub const SPOOL_SUBDIR: &str = "pgbackrest-spool";
    /// The cipher of an encrypted repository.
    pub const CIPHER: &str = "aes-256-cbc";
}

/// The common name of the cluster's pgBackRest certificate: the TLS servers admit clients
/// presenting it (`tls-server-auth`), so swarmctl issues it and the sidecar names it.
pub fn tls_common_name(cluster: &str) -> String {
    format!("pgswarm-{cluster}-backup")
}

/// The pgBackRest stanza of a cluster: its name.
pub fn stanza(cluster: &str) -> &str {
    cluster
}

/// What a data member knows about the cluster's backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSettings {
    /// The repository service's DNS name.
    pub repo_host: String,
    pub repo_port: u16,
    /// Where the repository is, in the repository service.
    pub repo_path: String,
    /// The data members' pgBackRest TLS servers listen on this port (on their address).
    pub member_port: u16,
    pub archive_timeout_secs: u32,
    pub retention_full: u32,
    pub retention_diff: Option<u32>,
    pub encrypt: bool,
    /// Set by `swarmctl restore`: what a bootstrapping member restores.
    pub restore: Option<Restore>,
}

impl BackupSettings {
    /// Settings with every default, for a repository at `repo_host`.
    pub fn new(repo_host: impl Into<String>) -> Self {
        BackupSettings {
            repo_host: repo_host.into(),
            repo_port: defaults::REPO_PORT,
            repo_path: defaults::REPO_PATH.into(),
            member_port: defaults::REPO_PORT,
            archive_timeout_secs: defaults::ARCHIVE_TIMEOUT_SECS,
            retention_full: defaults::RETENTION_FULL,
            retention_diff: None,
            encrypt: true,
            restore: None,
        }
    }

    /// The variables, in a stable order (defaults left out, except the host that turns it on).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![(env::REPO_HOST, self.repo_host.clone())];
        if self.repo_port != defaults::REPO_PORT {
            out.push((env::REPO_PORT, self.repo_port.to_string()));
        }
        if self.repo_path != defaults::REPO_PATH {
            out.push((env::REPO_PATH, self.repo_path.clone()));
        }
        if self.member_port != defaults::REPO_PORT {
            out.push((env::MEMBER_PORT, self.member_port.to_string()));
        }
        if self.archive_timeout_secs != defaults::ARCHIVE_TIMEOUT_SECS {
            out.push((env::ARCHIVE_TIMEOUT, self.archive_timeout_secs.to_string()));
        }
        if self.retention_full != defaults::RETENTION_FULL {
            out.push((env::RETENTION_FULL, self.retention_full.to_string()));
        }
        if let Some(diff) = self.retention_diff {
            out.push((env::RETENTION_DIFF, diff.to_string()));
        }
        if !self.encrypt {
            out.push((env::ENCRYPT, "false".into()));
        }
        if let Some(r) = &self.restore {
            out.push((env::RESTORE_TARGET, r.target.to_env_value()));
            if let Some(from) = &r.from_cluster {
                out.push((env::RESTORE_FROM, from.clone()));
            }
        }
        out
    }

    /// Reads the settings through `lookup`; `None` when backups are off.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ContractError> {
        let Some(repo_host) = lookup(env::REPO_HOST) else {
            return Ok(None);
        };
        fn number<T: std::str::FromStr>(
            lookup: &dyn Fn(&str) -> Option<String>,
            var: &'static str,
            expected: &str,
        ) -> Result<Option<T>, ContractError> {
            match lookup(var) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| ContractError::Invalid {
                    var,
                    value: v,
                    expected: expected.into(),
                }),
            }
        }
        let positive = |var: &'static str| -> Result<Option<u32>, ContractError> {
            let n: Option<u32> = number(lookup, var, "a whole number from 1")?;
            match n {
                Some(0) => Err(ContractError::Invalid {
                    var,
                    value: "0".into(),
                    expected: "a whole number from 1".into(),
                }),
                other => Ok(other),
            }
        };
        Ok(Some(BackupSettings {
            repo_host,
            repo_port: number(lookup, env::REPO_PORT, "a port number")?
                .unwrap_or(defaults::REPO_PORT),
            repo_path: lookup(env::REPO_PATH).unwrap_or(defaults::REPO_PATH.into()),
            member_port: number(lookup, env::MEMBER_PORT, "a port number")?
                .unwrap_or(defaults::REPO_PORT),
            archive_timeout_secs: positive(env::ARCHIVE_TIMEOUT)?
                .unwrap_or(defaults::ARCHIVE_TIMEOUT_SECS),
            retention_full: positive(env::RETENTION_FULL)?.unwrap_or(defaults::RETENTION_FULL),
            retention_diff: positive(env::RETENTION_DIFF)?,
            encrypt: match lookup(env::ENCRYPT).as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(ContractError::Invalid {
                        var: env::ENCRYPT,
                        value: other.into(),
                        expected: "true or false".into(),
                    })
                }
            },
            restore: match lookup(env::RESTORE_TARGET) {
                None => None,
                Some(v) => Some(Restore {
                    target: RestoreTarget::parse(&v)?,
                    from_cluster: lookup(env::RESTORE_FROM),
                }),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn lookup(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> =
            vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn round_trip() {
        let plain = BackupSettings::new("backup");
        assert_eq!(plain.to_env(), vec![(env::REPO_HOST, "backup".into())]);
        let custom = BackupSettings {
            repo_host: "repo".into(),
            repo_port: 9000,
            repo_path: "/data/repo".into(),
            member_port: 9001,
            archive_timeout_secs: 5,
            retention_full: 4,
            retention_diff: Some(6),
            encrypt: false,
            restore: Some(Restore {
                target: RestoreTarget::Time("2026-12-03 18:00:00+00".into()),
                from_cluster: Some("old".into()),
            }),
        };
        let latest = BackupSettings {
            restore: Some(Restore {
                target: RestoreTarget::Latest,
                from_cluster: None,
            }),
            ..BackupSettings::new("backup")
        };
        let label = BackupSettings {
            restore: Some(Restore {
                target: RestoreTarget::Label("20261203-141000F".into()),
                from_cluster: None,
            }),
            ..BackupSettings::new("backup")
        };
        for s in [plain, custom, latest, label] {
            let back = BackupSettings::from_lookup(&lookup(s.to_env())).unwrap();
            assert_eq!(back, Some(s));
        }
        assert_eq!(BackupSettings::from_lookup(&|_| None).unwrap(), None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            (env::ARCHIVE_TIMEOUT, "0"),
            (env::RETENTION_FULL, "two"),
            (env::ENCRYPT, "yes"),
            (env::REPO_PORT, "70000"),
            (env::RESTORE_TARGET, "yesterday"),
            (env::RESTORE_TARGET, "time=2026-12-03 18:00:00' ; drop"),
            (env::RESTORE_TARGET, "label=a b"),
            (env::RESTORE_TARGET, "time="),
        ] {
            let vars = vec![(env::REPO_HOST, "backup".to_string()), (var, value.into())];
            let err = BackupSettings::from_lookup(&lookup(vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var), "{err}");
        }
    }
}
