//! Templates of `init-scripts/` (handlebars), embedded in the binary and overridable by a
//! file of the same name in the folder named by `PGSWARM_TEMPLATE_DIR`; and the writing of
//! rendered files (private ones mode 0600, always through a temporary file and a rename, so
//! a reader never sees half a file).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use handlebars::Handlebars;
use serde::Serialize;

/// The templates shipped in the binary: (file name in `init-scripts/`, content).
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "haproxy.cfg.hbs",
        include_str!("../../init-scripts/haproxy.cfg.hbs"),
    ),
    (
        "pgbouncer.ini.hbs",
        include_str!("../../init-scripts/pgbouncer.ini.hbs"),
    ),
    (
        "pg_hba.conf.hbs",
        include_str!("../../init-scripts/pg_hba.conf.hbs"),
    ),
    (
        "pg_ident.conf.hbs",
        include_str!("../../init-scripts/pg_ident.conf.hbs"),
    ),
    (
        "postgresql.pgswarm.conf.hbs",
        include_str!("../../init-scripts/postgresql.pgswarm.conf.hbs"),
    ),
    (
        "primary-init.sql.hbs",
        include_str!("../../init-scripts/primary-init.sql.hbs"),
    ),
    (
        "postgres_exporter.queries.yaml.hbs",
        include_str!("../../init-scripts/postgres_exporter.queries.yaml.hbs"),
    ),
];

/// Where templates come from: the embedded set, overridden file by file from a folder.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    override_dir: Option<PathBuf>,
}

impl Templates {
    pub fn new(override_dir: Option<PathBuf>) -> Self {
        Templates { override_dir }
    }

    /// Reads the override folder from `PGSWARM_TEMPLATE_DIR` (unset or empty: none).
    pub fn from_process_env() -> Self {
        let dir = std::env::var(pgswarm_contract::env::TEMPLATE_DIR)
            .ok()
            .filter(|d| !d.trim().is_empty())
            .map(PathBuf::from);
        Templates::new(dir)
    }

    /// The source of template `name` and where it came from (for error messages).
    pub fn source(&self, name: &str) -> anyhow::Result<(String, String)> {
        if let Some(dir) = &self.override_dir {
            let path = dir.join(name);
            if path.exists() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading template override {}", path.display()))?;
                return Ok((text, path.display().to_string()));
            }
        }
        EMBEDDED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| (text.to_string(), format!("embedded init-scripts/{name}")))
            .with_context(|| format!("no template named {name}"))
    }

    /// Renders template `name` with `data`. Strict: a variable the data lacks is an error.
    /// Nothing is HTML-escaped; values that need quoting are quoted by the caller for the
    /// target format.
    pub fn render(&self, name: &str, data: &impl Serialize) -> anyhow::Result<String> {
        let (text, origin) = self.source(name)?;
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_template_string(name, text)
            .with_context(|| format!("template {origin} does not parse"))?;
        hb.render(name, data)
            .with_context(|| format!("rendering template {origin}"))
    }
}

/// Writes `contents` to `path` with `mode`, through a temporary file in the same folder that
/// is fsynced and renamed over `path`.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Writes a file holding credentials: mode 0600, never readable by others, not even briefly.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_file(path, contents, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedded_templates_parse() {
        for (name, text) in EMBEDDED {
            let mut hb = Handlebars::new();
            hb.register_template_string(name, *text)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn an_override_file_wins_and_missing_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg_ident.conf.hbs"), "custom {{x}} <&>\n").unwrap();
        let t = Templates::new(Some(dir.path().to_path_buf()));
        assert_eq!(
            t.render("pg_ident.conf.hbs", &json!({"x": "'a'"})).unwrap(),
            "custom 'a' <&>\n"
        );
        let err = t.render("pg_ident.conf.hbs", &json!({})).unwrap_err();
        assert!(format!("{err:#}").contains("pg_ident.conf.hbs"), "{err:#}");
        // Files not overridden still come from the binary.
        assert!(t.source("pg_hba.conf.hbs").unwrap().1.contains("embedded"));
        assert!(t.source("nope.hbs").is_err());
    }

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.conf");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
