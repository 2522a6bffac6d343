//! The `roles` and `databases` sections: names by the contract's rules, references between
//! them (owners, memberships, readers), password secrets, and per-database pool settings.

use super::*;
use pgswarm_contract::objects::{
    generated_role_secret, DatabaseSpec, Ensure, Objects, PoolModeSetting, PoolerDatabase, RoleSpec,
};
use pgswarm_contract::rules;
use std::collections::BTreeSet;

/// Docker's longest secret name.
const MAX_SECRET_NAME: usize = 64;

fn ensure_of(e: Option<RawEnsure>) -> Ensure {
    match e {
        Some(RawEnsure::Absent) => Ensure::Absent,
        Some(RawEnsure::Present) | None => Ensure::Present,
    }
}

/// A Docker secret name: letters, digits, `-`, `_`, `.`, starting with a letter or digit.
pub(super) fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An extension name as `CREATE EXTENSION` takes it unquoted or quoted: lowercase letters,
/// digits, `_` and `-` (`uuid-ossp`).
fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Checks `roles` and `databases`; returns what the leader reconciles, the role password
/// secrets to mount on the data members, and the pooler's per-database settings.
pub(super) fn check_objects(
    ctx: &mut Ctx,
    raw: &RawSpec,
    topology: Topology,
    superuser: &str,
    replication_user: &str,
    root: &FieldPath,
) -> (Objects, Vec<RoleSecret>, Vec<PoolerDatabase>) {
    let mut objects = Objects::default();
    let mut secrets = Vec::new();
    let mut pooler = Vec::new();
    if topology == Topology::Citus {
        // Reported by check_sections; Citus propagates roles itself and needs its extension in
        // every database, which this reconciler does not do.
        return (objects, secrets, pooler);
    }
    let roles_path = root.key("roles");
    let raw_roles = raw.roles.as_deref().unwrap_or_default();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, r) in raw_roles.iter().enumerate() {
        let path = roles_path.index(i);
        if let Some(why) = rules::declared_role_problem(&r.name, superuser, replication_user) {
            ctx.report(Rule::Roles, &path.key("name"), why);
        } else if !seen.insert(&r.name) {
            ctx.report(
                Rule::Roles,
                &path.key("name"),
                format!("role `{}` is declared twice: keep one entry", r.name),
            );
        }
    }
    let present: BTreeSet<&str> = raw_roles
        .iter()
        .filter(|r| ensure_of(r.ensure) == Ensure::Present)
        .map(|r| r.name.as_str())
        .collect();
    for (i, r) in raw_roles.iter().enumerate() {
        let path = roles_path.index(i);
        let login = r.login.unwrap_or(true);
        let ensure = ensure_of(r.ensure);
        let connection_limit = match r.connection_limit {
            None => None,
            Some(n) if (-1..=i64::from(i32::MAX)).contains(&n) => {
                Some(i32::try_from(n).unwrap_or(-1))
            }
            Some(n) => {
                ctx.report(
                    Rule::Roles,
                    &path.key("connection_limit"),
                    format!(
                        "connection_limit {n} is out of range: use a number of connections \
                         (0 or more), or -1 (or leave it out) for no limit"
                    ),
                );
                None
            }
        };
        for (j, group) in r.member_of.iter().enumerate() {
            let declared = present.contains(group.as_str());
            let predefined = group.starts_with("pg_") && rules::is_identifier(group);
            if group == &r.name {
                ctx.report(
                    Rule::Roles,
                    &path.key("member_of").index(j),
                    format!(
                        "role `{group}` cannot be a member of itself: remove it from member_of"
                    ),
                );
            } else if !declared && !predefined {
                ctx.report(
                    Rule::Roles,
                    &path.key("member_of").index(j),
                    format!(
                        "`{group}` is neither a role declared present under `roles` nor one of \
                         PostgreSQL's predefined `pg_*` roles: declare it (`login: false` for a \
                         group role) or remove it from member_of"
                    ),
                );
            }
        }
        if let Some(secret) = &r.password_secret {
            if !login {
                ctx.report(
                    Rule::Roles,
                    &path.key("password_secret"),
                    format!(
                        "role `{}` does not log in (`login: false`), so it has no password: \
                         remove password_secret",
                        r.name
                    ),
                );
            } else if !is_secret_name(secret) {
                ctx.report(
                    Rule::Roles,
                    &path.key("password_secret"),
                    format!(
                        "`{secret}` is not a Docker secret name: use letters, digits, `-`, `_` \
                         and `.` (at most {MAX_SECRET_NAME} characters)"
                    ),
                );
            }
        }
        if login && ensure == Ensure::Present {
            let (docker_name, generated) = match &r.password_secret {
                Some(s) => (s.clone(), false),
                None => (generated_role_secret(&raw.name, &r.name), true),
            };
            if generated && docker_name.len() > MAX_SECRET_NAME {
                ctx.report(
                    Rule::Roles,
                    &path.key("name"),
                    format!(
                        "the generated password secret `{docker_name}` would be longer than \
                         Docker's {MAX_SECRET_NAME} characters: shorten the role or cluster \
                         name, or name an existing secret in password_secret"
                    ),
                );
            }
            secrets.push(RoleSecret {
                role: r.name.clone(),
                docker_name,
                generated,
            });
        }
        objects.roles.push(RoleSpec {
            name: r.name.clone(),
            login,
            connection_limit: connection_limit.filter(|n| *n >= 0),
            member_of: r.member_of.clone(),
            ensure,
        });
    }

    let dbs_path = root.key("databases");
    let pooler_on = raw.pooler.as_ref().and_then(|p| p.enabled) != Some(false)
        && (topology != Topology::Replication || raw.pooler.is_some());
    let mut seen_db: BTreeSet<&str> = BTreeSet::new();
    for (i, d) in raw
        .databases
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let path = dbs_path.index(i);
        let ensure = ensure_of(d.ensure);
        if let Some(why) = rules::declared_database_problem(&d.name) {
            ctx.report(Rule::Databases, &path.key("name"), why);
        } else if !seen_db.insert(&d.name) {
            ctx.report(
                Rule::Databases,
                &path.key("name"),
                format!("database `{}` is declared twice: keep one entry", d.name),
            );
        }
        let owner = d.owner.clone().unwrap_or_else(|| superuser.to_string());
        if ensure == Ensure::Present && owner != superuser && !present.contains(owner.as_str()) {
            let absent = raw_roles.iter().any(|r| r.name == owner);
            ctx.report(
                Rule::Databases,
                &path.key("owner"),
                if absent {
                    format!(
                        "the owner `{owner}` is declared `ensure: absent`: a database needs an \
                         owner that exists; choose another owner or keep the role"
                    )
                } else {
                    format!(
                        "the owner `{owner}` is not a role declared under `roles`: declare it, or \
                         leave `owner` out for the superuser `{superuser}`"
                    )
                },
            );
        }
        for (j, reader) in d.readers.iter().enumerate() {
            if !present.contains(reader.as_str()) {
                ctx.report(
                    Rule::Databases,
                    &path.key("readers").index(j),
                    format!(
                        "reader `{reader}` is not a role declared present under `roles`: declare \
                         it or remove it from readers"
                    ),
                );
            }
        }
        for (j, extension) in d.extensions.iter().enumerate() {
            if !is_extension_name(extension) {
                ctx.report(
                    Rule::Databases,
                    &path.key("extensions").index(j),
                    format!(
                        "`{extension}` is not an extension name: use lowercase letters, digits, \
                         `_` and `-` (as in `pg_trgm` or `uuid-ossp`)"
                    ),
                );
            }
        }
        if d.pool_size == Some(0) {
            ctx.report(
                Rule::Databases,
                &path.key("pool_size"),
                "pool_size 0 leaves the database no server connection: use 1 or more, or leave \
                 it out for the pooler's pool_size",
            );
        }
        let pool_settings = d.pool_size.is_some() || d.pool_mode.is_some();
        if pool_settings && !pooler_on {
            let field = if d.pool_size.is_some() {
                "pool_size"
            } else {
                "pool_mode"
            };
            ctx.report(
                Rule::Databases,
                &path.key(field),
                "per-database pool settings need the pooler, which this cluster does not run: \
                 enable the `pooler` section or remove them",
            );
        }
        if pool_settings && ensure == Ensure::Present {
            pooler.push(PoolerDatabase {
                name: d.name.clone(),
                pool_size: d.pool_size,
                pool_mode: d.pool_mode.map(|m| match m {
                    PoolModeName::Transaction => PoolModeSetting::Transaction,
                    PoolModeName::Session => PoolModeSetting::Session,
                    PoolModeName::Statement => PoolModeSetting::Statement,
                }),
            });
        }
        objects.databases.push(DatabaseSpec {
            name: d.name.clone(),
            owner,
            extensions: d.extensions.clone(),
            readers: d.readers.clone(),
            ensure,
        });
    }
    (objects, secrets, pooler)
}

#[cfg(test)]
mod tests {
    use crate::spec::{self, Rule};
    use pgswarm_contract::objects::{Ensure, PoolModeSetting};

    #[test]
    fn roles_and_databases_become_the_declaration_secrets_and_pool_lines() {
        let v = spec::parse(
            "name: demo\ntopology: patroni\nroles:\n  - name: app\n    connection_limit: 3\n    \
             member_of: [team, pg_read_all_data]\n  - name: team\n    login: false\n  - name: \
             ops\n    password_secret: ops_pw\n  - name: gone\n    ensure: absent\n\
             databases:\n  - name: appdb\n    owner: app\n    readers: [ops]\n    \
             pool_mode: session\n  - name: plain\n",
        )
        .expect("valid");
        let c = &v.cluster;
        let names: Vec<&str> = c.objects.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["app", "team", "ops", "gone"]);
        assert_eq!(c.objects.roles[0].connection_limit, Some(3));
        assert!(!c.objects.roles[1].login);
        assert_eq!(c.objects.roles[3].ensure, Ensure::Absent);
        assert_eq!(c.objects.databases[1].owner, "postgres");
        let secrets: Vec<(&str, &str, bool)> = c
            .role_secrets
            .iter()
            .map(|s| (s.role.as_str(), s.docker_name.as_str(), s.generated))
            .collect();
        assert_eq!(
            secrets,
            [
                ("app", "demo_role_app_password", true),
                ("ops", "ops_pw", false)
            ]
        );
        let pooler = c.pooler().expect("pooler");
        match &pooler.env.role {
            pgswarm_contract::Role::Pooler { databases, .. } => {
                assert_eq!(databases.len(), 1);
                assert_eq!(databases[0].name, "appdb");
                assert_eq!(databases[0].pool_mode, Some(PoolModeSetting::Session));
            }
            other => panic!("not a pooler: {other:?}"),
        }
    }

    #[test]
    fn duplicates_long_secret_names_and_bad_secret_names_are_refused() {
        let long = "r".repeat(50);
        let e = spec::parse(&format!(
            "name: demo\ntopology: patroni\nroles:\n  - name: app\n  - name: app\n  - name: \
             {long}\n  - name: x\n    password_secret: 'bad name'\ndatabases:\n  - name: d\n  \
             - name: d\n"
        ))
        .unwrap_err();
        let messages: Vec<String> = e
            .errors
            .iter()
            .filter(|p| p.rule == Rule::Roles || p.rule == Rule::Databases)
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        let all = messages.join("\n");
        assert!(
            all.contains("roles[1].name: role `app` is declared twice"),
            "{all}"
        );
        assert!(all.contains("longer than Docker's 64 characters"), "{all}");
        assert!(
            all.contains("roles[3].password_secret: `bad name` is not a Docker secret name"),
            "{all}"
        );
        assert!(
            all.contains("databases[1].name: database `d` is declared twice"),
            "{all}"
        );
    }
}
