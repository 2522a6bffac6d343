//! Application roles and databases declared in the spec, as the leading member reconciles
//! them. `swarmctl` validates the spec's `roles` and `databases` into [`Objects`] and hands
//! them to the leader's sidecar (`pgswarm-sidecar ctl apply-objects`), which stores them in
//! the database and keeps the server in line with them. No password travels here: a role's
//! password is a Docker secret mounted on every data member at [`role_password_path`].

use serde::{Deserialize, Serialize};

use crate::{defaults, PoolMode};

/// The least-privilege role PgBouncer's `auth_query` runs as.
pub const AUTH_USER: &str = "pgswarm_auth";
/// Schema of pgswarm's own objects (the lookup function, the stored desired state).
pub const SCHEMA: &str = "pgswarm";
/// PgBouncer's `auth_query`: the SECURITY DEFINER lookup function of every database.
pub const AUTH_QUERY: &str = "SELECT uname, phash FROM pgswarm.user_lookup($1)";

/// Whether a declared object should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ensure {
    #[default]
    Present,
    Absent,
}

/// One application role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub name: String,
    /// `LOGIN` (an application user) or `NOLOGIN` (a group role).
    pub login: bool,
    /// `CONNECTION LIMIT`; `None` is unlimited (-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<i32>,
    /// Roles this one is a member of (declared roles or PostgreSQL's `pg_*` roles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
    #[serde(default)]
    pub ensure: Ensure,
}

impl RoleSpec {
    /// True when the role logs in and so has a password secret.
    pub fn has_password(&self) -> bool {
        self.login && self.ensure == Ensure::Present
    }
}

/// One application database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    pub name: String,
    /// A declared role or the superuser.
    pub owner: String,
    /// Extensions created in it (`CREATE EXTENSION IF NOT EXISTS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// Roles that may connect and read every table the owner creates (default privileges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
    #[serde(default)]
    pub ensure: Ensure,
}

/// Everything declared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objects {
    #[serde(default)]
    pub roles: Vec<RoleSpec>,
    #[serde(default)]
    pub databases: Vec<DatabaseSpec>,
}

impl Objects {
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.databases.is_empty()
    }

    /// The declared role named `name`.
    pub fn role(&self, name: &str) -> Option<&RoleSpec> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// Per-database pool settings of the pooler (`[databases]` of pgbouncer.ini).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolerDatabase {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolModeSetting>,
}

/// A pool mode as it travels in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolModeSetting {
    Transaction,
    Session,
    Statement,
}

impl From<PoolModeSetting> for PoolMode {
    fn from(m: PoolModeSetting) -> PoolMode {
        match m {
            PoolModeSetting::Transaction => PoolMode::Transaction,
            PoolModeSetting::Session => PoolMode::Session,
            PoolModeSetting::Statement => PoolMode::Statement,
        }
    }
}

/// File name (secret mount target) of role `role`'s password.
pub fn role_password_file(role: &str) -> String {
    format!("role_{role}_password")
}

/// Where a data member finds role `role`'s password.
pub fn role_password_path(role: &str) -> String {
    format!("{}/{}", defaults::SECRETS_DIR, role_password_file(role))
}

/// The Docker secret `swarmctl deploy` generates for role `role` of `cluster` when the spec
/// names none.
pub fn generated_role_secret(cluster: &str, role: &str) -> String {
    format!("{cluster}_{}", role_password_file(role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_through_json_with_defaults() {
        let json = r#"{"roles":[{"name":"app","login":true}],
                       "databases":[{"name":"appdb","owner":"app"}]}"#;
        let objects: Objects = serde_json::from_str(json).expect("parses");
        assert_eq!(objects.roles[0].ensure, Ensure::Present);
        assert!(objects.roles[0].has_password());
        let again: Objects =
            serde_json::from_str(&serde_json::to_string(&objects).unwrap()).unwrap();
        assert_eq!(again, objects);
    }

    #[test]
    fn secret_names_and_paths() {
        assert_eq!(role_password_file("app"), "role_app_password");
        assert_eq!(role_password_path("app"), "/run/secrets/role_app_password");
        assert_eq!(
            generated_role_secret("demo", "app"),
            "demo_role_app_password"
        );
    }
}
