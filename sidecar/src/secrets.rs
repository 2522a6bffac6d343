//! Secrets read from their files (`/run/secrets/<name>` or the path in `PGSWARM_*_FILE`).
//!
//! A value is held in a [`SecretValue`], whose `Debug` and `Display` print `***`, so a secret
//! cannot reach a log line by accident. Files are read before privileges are dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;

use pgswarm_contract::{Common, Mode, Secret};

/// A secret value. Use [`SecretValue::expose`] only where the value is consumed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }

    /// The plain value, for the one place that needs it (a 0600 file, a SCRAM verifier).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A secret that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name}: file {path} does not exist; {hint}")]
    Missing {
        name: &'static str,
        path: String,
        hint: String,
    },
    #[error("secret {name}: file {path} is empty; {hint}")]
    Empty {
        name: &'static str,
        path: String,
        hint: String,
    },
    #[error("secret {name}: cannot read file {path}: {source}; {hint}")]
    Unreadable {
        name: &'static str,
        path: String,
        hint: String,
        source: std::io::Error,
    },
    #[error("secret {name} was not loaded for mode {mode} (a bug: Secret::needed_by disagrees)")]
    NotLoaded { name: &'static str, mode: Mode },
}

fn hint(common: &Common, secret: Secret) -> String {
    let docker = secret.docker_name(&common.cluster);
    format!(
        "create the Docker secret {docker} (`swarmctl deploy` generates missing ones, or \
         `openssl rand -base64 24 | docker secret create {docker} -`) and mount it at {}, \
         or point {} at a file holding the password",
        secret.default_path(),
        secret.env_var()
    )
}

/// Reads one secret from its file, trimmed.
pub fn read_secret(common: &Common, secret: Secret) -> Result<SecretValue, SecretError> {
    let path = common.secret_path(secret);
    let name = secret.file_name();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value = text.trim();
            if value.is_empty() {
                Err(SecretError::Empty {
                    name,
                    path,
                    hint: hint(common, secret),
                })
            } else {
                Ok(SecretValue(value.to_string()))
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Err(SecretError::Missing {
            name,
            path,
            hint: hint(common, secret),
        }),
        Err(source) => Err(SecretError::Unreadable {
            name,
            path,
            hint: hint(common, secret),
            source,
        }),
    }
}

/// The directory of the role password files: the superuser's secret's (`/run/secrets`).
pub fn secrets_dir(common: &Common) -> std::path::PathBuf {
    let superuser = common.secret_path(Secret::SuperuserPassword);
    std::path::Path::new(&superuser)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| pgswarm_contract::defaults::SECRETS_DIR.into())
}

/// Every `role_<name>_password` file of the secrets directory, trimmed; files that cannot be
/// read or are empty are left out (the reconciler reports the role's password as missing).
pub fn role_passwords(common: &Common) -> BTreeMap<String, SecretValue> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(secrets_dir(common)) else {
        return out;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        let Some(role) = file
            .strip_prefix("role_")
            .and_then(|r| r.strip_suffix("_password"))
        else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            let value = text.trim();
            if !value.is_empty() {
                out.insert(role.to_string(), SecretValue(value.to_string()));
            }
        }
    }
    out
}

/// The secrets one mode needs ([`Secret::needed_by`]), read up front.
#[derive(Debug, Clone)]
pub struct Secrets {
    mode: Mode,
    values: BTreeMap<Secret, SecretValue>,
    /// Passwords of declared roles (`role_<name>_password` beside the superuser's secret),
    /// for the members that may lead; read here, before privileges are dropped.
    roles: BTreeMap<String, SecretValue>,
}

impl Secrets {
    pub fn load(common: &Common, mode: Mode) -> Result<Self, SecretError> {
        let mut values = BTreeMap::new();
        for secret in Secret::ALL {
            if common.needs(secret, mode) {
                values.insert(secret, read_secret(common, secret)?);
            }
        }
        let roles = match mode {
            Mode::Primary | Mode::Patroni => role_passwords(common),
            _ => BTreeMap::new(),
        };
        Ok(Secrets {
            mode,
            values,
            roles,
        })
    }

    /// For tests and callers that assemble secrets themselves.
    pub fn from_values(mode: Mode, values: BTreeMap<Secret, SecretValue>) -> Self {
        Secrets {
            mode,
            values,
            roles: BTreeMap::new(),
        }
    }

    /// The declared roles' passwords found at start, by role name.
    pub fn role_passwords(&self) -> &BTreeMap<String, SecretValue> {
        &self.roles
    }

    pub fn get(&self, secret: Secret) -> Result<&SecretValue, SecretError> {
        self.values.get(&secret).ok_or(SecretError::NotLoaded {
            name: secret.file_name(),
            mode: self.mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common_with(secret: Secret, path: &std::path::Path) -> Common {
        let mut common = Common::new("demo", "pg1");
        common
            .secret_files
            .insert(secret, path.display().to_string());
        common
    }

    #[test]
    fn values_are_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "  s3cret\n").unwrap();
        let value = read_secret(
            &common_with(Secret::SuperuserPassword, &path),
            Secret::SuperuserPassword,
        )
        .unwrap();
        assert_eq!(value.expose(), "s3cret");
        assert_eq!(format!("{value} {value:?}"), "*** ***");
    }

    #[test]
    fn missing_and_empty_files_name_the_file_the_secret_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let common = common_with(Secret::ReplicationPassword, &path);
        let err = read_secret(&common, Secret::ReplicationPassword)
            .unwrap_err()
            .to_string();
        for needle in [
            path.to_str().unwrap(),
            "does not exist",
            "demo_replication_password",
            "docker secret create",
            "PGSWARM_REPLICATION_PASSWORD_FILE",
        ] {
            assert!(err.contains(needle), "{needle} not in: {err}");
        }
        std::fs::write(&path, " \n").unwrap();
        let err = read_secret(&common, Secret::ReplicationPassword)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn load_reads_only_what_the_mode_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "x").unwrap();
        let mut common = common_with(Secret::SuperuserPassword, &path);
        common
            .secret_files
            .insert(Secret::ReplicationPassword, path.display().to_string());
        common
            .secret_files
            .insert(Secret::PoolerAuthPassword, path.display().to_string());
        let secrets = Secrets::load(&common, Mode::Primary).unwrap();
        assert!(secrets.get(Secret::ReplicationPassword).is_ok());
        assert!(secrets.get(Secret::RestPassword).is_err());
        // Etcd needs no secret at all, so missing files do not matter.
        assert!(Secrets::load(&Common::new("demo", "e1"), Mode::Etcd).is_ok());
    }
}
