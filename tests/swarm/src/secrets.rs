//! Random cluster credentials, created as Docker secrets and kept only in memory.
//!
//! Values come from the kernel's random source and reach Docker through `docker secret
//! create NAME -` on standard input: never a command line, a file or a log line. `Debug`
//! prints names only.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use anyhow::{Context, Result};

/// A password: printed as `<redacted>`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// 32 hex digits (128 bits) from `/dev/urandom`.
    pub fn random() -> Result<Password> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("cannot read /dev/urandom")?;
        Ok(Password(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The value, for a client's connection settings or `docker secret create`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The Docker secrets of one deployment, by Docker secret name.
#[derive(Debug, Default)]
pub struct SecretSet {
    values: BTreeMap<String, Password>,
}

impl SecretSet {
    pub fn insert(&mut self, name: String, value: Password) {
        self.values.insert(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&Password> {
        self.values.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.values.keys()
    }
}
