//! Application roles and databases declared in the spec, reconciled on the primary.
//!
//! Shape of a controller: observe the server (catalog queries), compare with the declared
//! [`Objects`], act with idempotent statements, and say one line per change. Planning is a
//! pure function of the two ([`plan_cluster`], [`plan_database`]) so it is tested without a
//! server; [`reconcile`] observes, plans and runs.
//!
//! Passwords never appear in SQL: a role's password is read from its secret file and sent
//! as a SCRAM-SHA-256 verifier computed here ([`scram`]), and an existing verifier is
//! checked against the file by recomputing it with its own salt, so an unchanged password
//! changes nothing.
//!
//! Also kept here: the pooler's lookup user (`pgswarm_auth`) and the SECURITY DEFINER
//! function PgBouncer's `auth_query` calls in every database, and the declared objects
//! themselves, stored in `pgswarm.objects` in database `postgres` so that every member that
//! becomes primary (they replicate it) keeps reconciling them ([`maintain`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use pgswarm_contract::objects::{self, DatabaseSpec, Ensure, Objects, AUTH_USER, SCHEMA};
use tokio_postgres::{Client, Config};
use tracing::{info, warn};

use crate::postgres::{quote_ident, quote_literal};

/// The maintenance database, where roles, databases and the stored spec are handled.
pub const MAINTENANCE_DB: &str = "postgres";
/// Databases outside the spec that get the lookup function: `postgres` (the default target)
/// and `template1` (so a database created later by hand inherits it).
pub const SYSTEM_DATABASES: [&str; 2] = ["postgres", "template1"];
/// Advisory lock key of a reconcile (`pgswarm` in ASCII).
const RECONCILE_LOCK: i64 = 0x0070_6773_7761_726d;
/// Connection limit of the lookup user: PgBouncer opens one connection per database.
const AUTH_CONNECTION_LIMIT: i32 = 50;

/// Body of `pgswarm.user_lookup(text)`: the SCRAM verifier of a role that may log in through
/// the pooler; never a superuser's, the replication user's or the lookup user's own.
pub const LOOKUP_BODY: &str = "SELECT rolname::text, rolpassword::text \
     FROM pg_catalog.pg_authid \
     WHERE rolname = i_username AND rolcanlogin AND NOT rolsuper AND NOT rolreplication \
     AND rolname <> 'pgswarm_auth'";

/// One statement to run and the line that says what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The database to run it in.
    pub database: String,
    pub sql: String,
    /// What changed, for the log (never a secret).
    pub change: String,
}

impl Action {
    fn new(database: &str, sql: String, change: String) -> Self {
        Action {
            database: database.to_string(),
            sql,
            change,
        }
    }
}

/// A role as the server has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedRole {
    pub login: bool,
    /// -1 is unlimited.
    pub connection_limit: i32,
    /// The stored SCRAM verifier (or another kind of password), if any.
    pub verifier: Option<String>,
    pub member_of: BTreeSet<String>,
}

/// A database as the server has it, seen from the maintenance database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDatabase {
    pub owner: String,
    /// PUBLIC may connect (PostgreSQL's default for a new database).
    pub public_connect: bool,
    /// Roles granted CONNECT explicitly (the database's ACL; the owner included).
    pub connect: BTreeSet<String>,
}

/// The server's roles and databases of interest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedCluster {
    pub roles: BTreeMap<String, ObservedRole>,
    pub databases: BTreeMap<String, ObservedDatabase>,
}

/// What one database holds, seen from inside it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedInDatabase {
    pub extensions: BTreeSet<String>,
    /// Roles the owner's default privileges give SELECT on new tables.
    pub default_readers: BTreeSet<String>,
    /// `pgswarm.user_lookup(text)` is there as pgswarm writes it, EXECUTE only for the
    /// lookup user.
    pub lookup_ok: bool,
}

/// A password read from a secret file.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Checks and wraps a password: printable ASCII (what SCRAM's SASLprep leaves as is),
    /// not empty.
    pub fn new(value: &str) -> Result<Password, String> {
        if value.is_empty() {
            return Err("the password is empty".into());
        }
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(
                "the password holds a character outside printable ASCII: use letters, digits \
                 and punctuation (swarmctl generates 32 letters and digits)"
                    .into(),
            );
        }
        Ok(Password(value.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// SCRAM-SHA-256 verifiers as PostgreSQL stores them
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, RFC 5802 / 7677).
pub mod scram {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    /// PostgreSQL's default iteration count.
    pub const ITERATIONS: u32 = 4096;

    fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// PBKDF2-HMAC-SHA-256 with one block (`Hi` of RFC 5802).
    fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut block = salt.to_vec();
        block.extend_from_slice(&[0, 0, 0, 1]);
        let mut u = hmac(password, &block);
        let mut out = u;
        for _ in 1..iterations {
            u = hmac(password, &u);
            for (o, b) in out.iter_mut().zip(u.iter()) {
                *o ^= b;
            }
        }
        out
    }

    /// The verifier of `password` with `salt` and `iterations`.
    pub fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let server_key = hmac(&salted, b"Server Key");
        format!(
            "SCRAM-SHA-256${iterations}:{}${}:{}",
            STANDARD.encode(salt),
            STANDARD.encode(stored_key),
            STANDARD.encode(server_key)
        )
    }

    /// A new verifier of `password` with a random 16-byte salt.
    pub fn verifier(password: &str) -> anyhow::Result<String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
        Ok(verifier_with(password, &salt, ITERATIONS))
    }

    /// Whether `stored` is a SCRAM verifier of `password` (recomputed with its own salt and
    /// iteration count). Anything else (an MD5 hash, garbage) does not match.
    pub fn matches(stored: &str, password: &str) -> bool {
        let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else {
            return false;
        };
        let Some((params, _keys)) = rest.split_once('$') else {
            return false;
        };
        let Some((iterations, salt)) = params.split_once(':') else {
            return false;
        };
        let (Ok(iterations), Ok(salt)) = (iterations.parse::<u32>(), STANDARD.decode(salt)) else {
            return false;
        };
        if iterations == 0 || iterations > 10_000_000 {
            return false;
        }
        verifier_with(password, &salt, iterations) == stored
    }
}

fn connection_limit_text(limit: i32) -> String {
    if limit < 0 {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

/// The statements that bring the server's roles and databases (as seen from the
/// maintenance database) in line with `desired`, in the order they must run: the lookup
/// user, roles, memberships, databases and their CONNECT privileges, then what is declared
/// absent (databases before roles, since a role cannot be dropped while it owns one).
/// `passwords` holds the password of each login role whose secret was readable.
pub fn plan_cluster(
    desired: &Objects,
    observed: &ObservedCluster,
    passwords: &BTreeMap<String, Password>,
    auth_password: Option<&Password>,
) -> anyhow::Result<Vec<Action>> {
    let db = MAINTENANCE_DB;
    let mut out = Vec::new();
    let q = quote_ident;

    // The pooler's lookup user: no privilege but logging in and calling the function.
    let auth = observed.roles.get(AUTH_USER);
    match auth {
        None => {
            let mut sql = format!(
                "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                 NOINHERIT CONNECTION LIMIT {AUTH_CONNECTION_LIMIT}",
                q(AUTH_USER)
            );
            if let Some(p) = auth_password {
                sql.push_str(&format!(
                    " PASSWORD {}",
                    quote_literal(&scram::verifier(p.expose())?)
                ));
            }
            out.push(Action::new(
                db,
                sql,
                format!("created role {AUTH_USER} (the pooler's password lookup)"),
            ));
        }
        Some(role) => {
            if let Some(p) = auth_password {
                let same = role
                    .verifier
                    .as_deref()
                    .is_some_and(|v| scram::matches(v, p.expose()));
                if !same {
                    out.push(Action::new(
                        db,
                        format!(
                            "ALTER ROLE {} WITH LOGIN PASSWORD {}",
                            q(AUTH_USER),
                            quote_literal(&scram::verifier(p.expose())?)
                        ),
                        format!("set the password of role {AUTH_USER} from its secret"),
                    ));
                }
            }
        }
    }

    let present_roles: Vec<_> = desired
        .roles
        .iter()
        .filter(|r| r.ensure == Ensure::Present)
        .collect();
    for role in &present_roles {
        let limit = role.connection_limit.unwrap_or(-1);
        let login = if role.login { "LOGIN" } else { "NOLOGIN" };
        let password = passwords.get(&role.name).filter(|_| role.login);
        match observed.roles.get(&role.name) {
            None => {
                let mut sql = format!(
                    "CREATE ROLE {} WITH {login} NOSUPERUSER NOCREATEDB NOCREATEROLE \
                     NOREPLICATION CONNECTION LIMIT {limit}",
                    q(&role.name)
                );
                if let Some(p) = password {
                    sql.push_str(&format!(
                        " PASSWORD {}",
                        quote_literal(&scram::verifier(p.expose())?)
                    ));
                }
                out.push(Action::new(
                    db,
                    sql,
                    format!(
                        "created role {} ({}, connection limit {}{})",
                        role.name,
                        login.to_lowercase(),
                        connection_limit_text(limit),
                        if password.is_some() {
                            ", password from its secret"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Some(have) => {
                let mut changes = Vec::new();
                let mut clauses = Vec::new();
                if have.login != role.login {
                    clauses.push(login.to_string());
                    changes.push(format!(
                        "{} -> {}",
                        if have.login { "login" } else { "nologin" },
                        login.to_lowercase()
                    ));
                }
                if have.connection_limit != limit {
                    clauses.push(format!("CONNECTION LIMIT {limit}"));
                    changes.push(format!(
                        "connection limit {} -> {}",
                        connection_limit_text(have.connection_limit),
                        connection_limit_text(limit)
                    ));
                }
                if let Some(p) = password {
                    let same = have
                        .verifier
                        .as_deref()
                        .is_some_and(|v| scram::matches(v, p.expose()));
                    if !same {
                        clauses.push(format!(
                            "PASSWORD {}",
                            quote_literal(&scram::verifier(p.expose())?)
                        ));
                        changes.push("password set from its secret".into());
                    }
                }
                if !clauses.is_empty() {
                    out.push(Action::new(
                        db,
                        format!("ALTER ROLE {} WITH {}", q(&role.name), clauses.join(" ")),
                        format!("altered role {}: {}", role.name, changes.join(", ")),
                    ));
                }
            }
        }
    }
    for role in &present_roles {
        let have = observed
            .roles
            .get(&role.name)
            .map(|r| r.member_of.clone())
            .unwrap_or_default();
        let want: BTreeSet<String> = role.member_of.iter().cloned().collect();
        for group in want.difference(&have) {
            out.push(Action::new(
                db,
                format!("GRANT {} TO {}", q(group), q(&role.name)),
                format!("granted membership in {group} to role {}", role.name),
            ));
        }
        for group in have.difference(&want) {
            out.push(Action::new(
                db,
                format!("REVOKE {} FROM {}", q(group), q(&role.name)),
                format!("revoked membership in {group} from role {}", role.name),
            ));
        }
    }

    for database in desired
        .databases
        .iter()
        .filter(|d| d.ensure == Ensure::Present)
    {
        let name = &database.name;
        let have = observed.databases.get(name);
        match have {
            None => out.push(Action::new(
                db,
                format!("CREATE DATABASE {} OWNER {}", q(name), q(&database.owner)),
                format!("created database {name} (owner {})", database.owner),
            )),
            Some(have) if have.owner != database.owner => out.push(Action::new(
                db,
                format!("ALTER DATABASE {} OWNER TO {}", q(name), q(&database.owner)),
                format!(
                    "changed the owner of database {name}: {} -> {}",
                    have.owner, database.owner
                ),
            )),
            Some(_) => {}
        }
        if have.is_none_or(|h| h.public_connect) {
            out.push(Action::new(
                db,
                format!(
                    "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                    q(name)
                ),
                format!("revoked CONNECT on database {name} from PUBLIC"),
            ));
        }
        let mut connect: BTreeSet<&str> = database.readers.iter().map(String::as_str).collect();
        connect.insert(AUTH_USER);
        for grantee in connect {
            if grantee == database.owner {
                continue;
            }
            if !have.is_some_and(|h| h.connect.contains(grantee)) {
                out.push(Action::new(
                    db,
                    format!("GRANT CONNECT ON DATABASE {} TO {}", q(name), q(grantee)),
                    format!("granted CONNECT on database {name} to {grantee}"),
                ));
            }
        }
        // A declared role no longer among the readers loses its grant; grants to roles the
        // spec does not declare are someone else's and stay.
        if let Some(have) = have {
            for role in &present_roles {
                let r = role.name.as_str();
                if r != database.owner
                    && have.connect.contains(r)
                    && !database.readers.iter().any(|x| x == r)
                {
                    out.push(Action::new(
                        db,
                        format!("REVOKE CONNECT ON DATABASE {} FROM {}", q(name), q(r)),
                        format!("revoked CONNECT on database {name} from {r} (not a reader)"),
                    ));
                }
            }
        }
    }

    for database in desired
        .databases
        .iter()
        .filter(|d| d.ensure == Ensure::Absent)
    {
        if observed.databases.contains_key(&database.name) {
            out.push(Action::new(
                db,
                format!("DROP DATABASE {}", q(&database.name)),
                format!("dropped database {} (ensure: absent)", database.name),
            ));
        }
    }
    for role in desired.roles.iter().filter(|r| r.ensure == Ensure::Absent) {
        if observed.roles.contains_key(&role.name) {
            out.push(Action::new(
                db,
                format!("DROP ROLE {}", q(&role.name)),
                format!("dropped role {} (ensure: absent)", role.name),
            ));
        }
    }
    Ok(out)
}

/// The statements that create the lookup function in database `database`.
pub fn lookup_actions(database: &str) -> Action {
    let sql = format!(
        "BEGIN; \
         CREATE SCHEMA IF NOT EXISTS {schema}; \
         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
         GRANT USAGE ON SCHEMA {schema} TO {auth}; \
         CREATE OR REPLACE FUNCTION {schema}.user_lookup(i_username text, OUT uname text, \
           OUT phash text) RETURNS SETOF record LANGUAGE sql STABLE SECURITY DEFINER \
           SET search_path = pg_catalog, pg_temp AS $pgswarm${LOOKUP_BODY}$pgswarm$; \
         REVOKE ALL ON FUNCTION {schema}.user_lookup(text) FROM PUBLIC; \
         GRANT EXECUTE ON FUNCTION {schema}.user_lookup(text) TO {auth}; \
         COMMIT",
        schema = quote_ident(SCHEMA),
        auth = quote_ident(AUTH_USER),
    );
    Action::new(
        database,
        sql,
        format!(
            "installed the pooler's lookup function {SCHEMA}.user_lookup in database {database}"
        ),
    )
}

/// The statements that bring one declared, present database's content in line: the lookup
/// function, extensions, and the owner's default privileges for its readers.
pub fn plan_database(desired: &DatabaseSpec, observed: &ObservedInDatabase) -> Vec<Action> {
    let name = desired.name.as_str();
    let q = quote_ident;
    let mut out = Vec::new();
    if !observed.lookup_ok {
        out.push(lookup_actions(name));
    }
    for extension in &desired.extensions {
        if !observed.extensions.contains(extension) {
            out.push(Action::new(
                name,
                format!("CREATE EXTENSION IF NOT EXISTS {}", q(extension)),
                format!("created extension {extension} in database {name}"),
            ));
        }
    }
    let want: BTreeSet<String> = desired
        .readers
        .iter()
        .filter(|r| **r != desired.owner)
        .cloned()
        .collect();
    for reader in want.difference(&observed.default_readers) {
        out.push(Action::new(
            name,
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT SELECT ON TABLES TO {}",
                q(&desired.owner),
                q(reader)
            ),
            format!(
                "granted {reader} SELECT on the tables {} creates in database {name}",
                desired.owner
            ),
        ));
    }
    for reader in observed.default_readers.difference(&want) {
        out.push(Action::new(
            name,
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE SELECT ON TABLES FROM {}",
                q(&desired.owner),
                q(reader)
            ),
            format!(
                "revoked {reader}'s SELECT on the tables {} creates in database {name}",
                desired.owner
            ),
        ));
    }
    out
}

/// How the reconciler reaches the server: a connection configuration (the local socket or
/// TCP, as the superuser) whose database is set per statement.
#[derive(Clone)]
pub struct Connector {
    pub base: Config,
}

impl Connector {
    pub async fn connect(&self, database: &str) -> anyhow::Result<Client> {
        let mut config = self.base.clone();
        config.dbname(database);
        crate::postgres::connect(&config, &format!("database {database}")).await
    }
}

/// The outcome of one reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One line per change made.
    pub changes: Vec<String>,
    /// Statements that failed and declared objects that could not be handled.
    pub problems: Vec<String>,
}

async fn observe_cluster(client: &Client, desired: &Objects) -> anyhow::Result<ObservedCluster> {
    let mut role_names: Vec<String> = desired.roles.iter().map(|r| r.name.clone()).collect();
    role_names.push(AUTH_USER.to_string());
    for d in &desired.databases {
        role_names.extend(d.readers.iter().cloned());
    }
    let mut observed = ObservedCluster::default();
    for row in client
        .query(
            "SELECT rolname::text, rolcanlogin, rolconnlimit, rolpassword::text \
             FROM pg_catalog.pg_authid WHERE rolname = ANY($1)",
            &[&role_names],
        )
        .await
        .context("reading pg_authid")?
    {
        observed.roles.insert(
            row.get(0),
            ObservedRole {
                login: row.get(1),
                connection_limit: row.get(2),
                verifier: row.get(3),
                member_of: BTreeSet::new(),
            },
        );
    }
    for row in client
        .query(
            "SELECT r.rolname::text, g.rolname::text FROM pg_catalog.pg_auth_members m \
             JOIN pg_catalog.pg_roles r ON r.oid = m.member \
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid WHERE r.rolname = ANY($1)",
            &[&role_names],
        )
        .await
        .context("reading pg_auth_members")?
    {
        let member: String = row.get(0);
        if let Some(role) = observed.roles.get_mut(&member) {
            role.member_of.insert(row.get(1));
        }
    }
    let db_names: Vec<String> = desired.databases.iter().map(|d| d.name.clone()).collect();
    for row in client
        .query(
            "SELECT datname::text, pg_catalog.pg_get_userbyid(datdba)::text, \
                    has_database_privilege('public', oid, 'CONNECT') \
             FROM pg_catalog.pg_database WHERE datname = ANY($1)",
            &[&db_names],
        )
        .await
        .context("reading pg_database")?
    {
        observed.databases.insert(
            row.get(0),
            ObservedDatabase {
                owner: row.get(1),
                public_connect: row.get(2),
                connect: BTreeSet::new(),
            },
        );
    }
    for row in client
        .query(
            "SELECT d.datname::text, r.rolname::text FROM pg_catalog.pg_database d \
             CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a \
             JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
             WHERE d.datname = ANY($1) AND a.privilege_type = 'CONNECT'",
            &[&db_names],
        )
        .await
        .context("reading CONNECT privileges")?
    {
        let database: String = row.get(0);
        if let Some(d) = observed.databases.get_mut(&database) {
            d.connect.insert(row.get(1));
        }
    }
    Ok(observed)
}

async fn observe_database(client: &Client, owner: &str) -> anyhow::Result<ObservedInDatabase> {
    let extensions = client
        .query("SELECT extname::text FROM pg_catalog.pg_extension", &[])
        .await
        .context("reading pg_extension")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let default_readers = client
        .query(
            "SELECT g.rolname::text FROM pg_catalog.pg_default_acl d \
             CROSS JOIN LATERAL aclexplode(d.defaclacl) a \
             JOIN pg_catalog.pg_roles g ON g.oid = a.grantee \
             WHERE d.defaclrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1) \
               AND d.defaclobjtype = 'r' AND d.defaclnamespace = 0 \
               AND a.privilege_type = 'SELECT' AND g.rolname <> $1",
            &[&owner],
        )
        .await
        .context("reading pg_default_acl")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(ObservedInDatabase {
        extensions,
        default_readers,
        lookup_ok: lookup_ok(client).await?,
    })
}

async fn lookup_ok(client: &Client) -> anyhow::Result<bool> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT p.prosrc = $1 AND p.prosecdef \
                 AND has_function_privilege($2, p.oid, 'EXECUTE') \
                 AND NOT has_function_privilege('public', p.oid, 'EXECUTE') \
                 AND has_schema_privilege($2, n.oid, 'USAGE') \
               FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
               WHERE n.nspname = $3 AND p.proname = 'user_lookup' LIMIT 1), false)",
            &[&LOOKUP_BODY, &AUTH_USER, &SCHEMA],
        )
        .await
        .context("looking for the pooler's lookup function")?;
    Ok(row.get(0))
}

/// Runs `actions` in order; a failed statement is a problem and the rest still run (they
/// are idempotent, and a later reconcile retries).
async fn run_actions(connector: &Connector, actions: Vec<Action>, outcome: &mut Outcome) {
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    for action in actions {
        if !clients.contains_key(&action.database) {
            match connector.connect(&action.database).await {
                Ok(c) => {
                    clients.insert(action.database.clone(), c);
                }
                Err(e) => {
                    outcome.problems.push(format!(
                        "cannot {}: {e:#}",
                        action.change.replacen("created", "create", 1)
                    ));
                    continue;
                }
            }
        }
        let Some(client) = clients.get(&action.database) else {
            continue;
        };
        match client.simple_query(&action.sql).await {
            Ok(_) => {
                info!(database = %action.database, "{}", action.change);
                outcome.changes.push(action.change);
            }
            Err(e) => {
                let _ = client.simple_query("ROLLBACK").await;
                let reason = match e.as_db_error() {
                    Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                    None => format!("{e}"),
                };
                outcome
                    .problems
                    .push(format!("failed to apply \"{}\": {reason}", action.change));
            }
        }
    }
}

/// The passwords of the declared login roles among `available` (role name to the content of
/// its secret file); a missing or unusable one is a problem (the role is still created,
/// without a password, so it cannot log in until its secret is mounted).
pub fn select_passwords(
    desired: &Objects,
    available: &BTreeMap<String, crate::secrets::SecretValue>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Password> {
    let mut out = BTreeMap::new();
    for role in desired.roles.iter().filter(|r| r.has_password()) {
        let file = objects::role_password_file(&role.name);
        match available.get(&role.name) {
            Some(value) => match Password::new(value.expose()) {
                Ok(p) => {
                    out.insert(role.name.clone(), p);
                }
                Err(e) => problems.push(format!(
                    "role {}: the password in its secret {file} is unusable: {e}",
                    role.name
                )),
            },
            None => problems.push(format!(
                "role {}: no readable secret file {file} in this member: it gets no password \
                 until the member runs with its secret mounted (`swarmctl deploy` mounts it \
                 on every data member)",
                role.name
            )),
        }
    }
    out
}

/// Observes, plans and applies `desired` on the primary `connector` reaches. `available`
/// holds the role password files' contents by role; `auth_password` is the lookup user's.
pub async fn reconcile(
    connector: &Connector,
    desired: &Objects,
    available: &BTreeMap<String, crate::secrets::SecretValue>,
    auth_password: Option<&Password>,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let passwords = select_passwords(desired, available, &mut outcome.problems);
    // One reconcile at a time (the primary's loop and `ctl apply-objects`): the lock lives
    // as long as this session, which lives to the end of this function.
    let lock = connector.connect(MAINTENANCE_DB).await?;
    lock.query_one("SELECT pg_advisory_lock($1)", &[&RECONCILE_LOCK])
        .await
        .context("taking the reconcile lock")?;
    if crate::postgres::server_role(&lock).await? != crate::postgres::ServerRole::Primary {
        anyhow::bail!("the server is a standby: roles and databases change on the primary");
    }
    let observed = observe_cluster(&lock, desired).await?;
    let actions = plan_cluster(desired, &observed, &passwords, auth_password)?;
    run_actions(connector, actions, &mut outcome).await;
    for database in SYSTEM_DATABASES {
        let ok = match connector.connect(database).await {
            Ok(client) => lookup_ok(&client).await?,
            Err(e) => {
                outcome
                    .problems
                    .push(format!("cannot check database {database}: {e:#}"));
                continue;
            }
        };
        if !ok {
            run_actions(connector, vec![lookup_actions(database)], &mut outcome).await;
        }
    }
    for database in desired
        .databases
        .iter()
        .filter(|d| d.ensure == Ensure::Present)
    {
        let observed = match connector.connect(&database.name).await {
            Ok(client) => observe_database(&client, &database.owner).await?,
            Err(e) => {
                outcome
                    .problems
                    .push(format!("cannot check database {}: {e:#}", database.name));
                continue;
            }
        };
        run_actions(connector, plan_database(database, &observed), &mut outcome).await;
    }
    drop(lock);
    Ok(outcome)
}

/// Stores `desired` as the declared objects (`pgswarm.objects` in database `postgres`), so
/// that whichever member leads keeps reconciling them.
pub async fn store(connector: &Connector, desired: &Objects) -> anyhow::Result<()> {
    let client = connector.connect(MAINTENANCE_DB).await?;
    let json = serde_json::to_string(desired)?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
             CREATE TABLE IF NOT EXISTS {schema}.objects (\
               id int PRIMARY KEY CHECK (id = 1), spec jsonb NOT NULL, \
               updated_at timestamptz NOT NULL DEFAULT now()); \
             REVOKE ALL ON {schema}.objects FROM PUBLIC",
            schema = quote_ident(SCHEMA)
        ))
        .await
        .context("creating pgswarm.objects")?;
    client
        .execute(
            "INSERT INTO pgswarm.objects (id, spec, updated_at) VALUES (1, $1::text::jsonb, now()) \
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = now() \
             WHERE pgswarm.objects.spec IS DISTINCT FROM excluded.spec",
            &[&json],
        )
        .await
        .context("storing the declared roles and databases")?;
    Ok(())
}

/// The declared objects stored on the server (empty when none were ever applied).
pub async fn stored(connector: &Connector) -> anyhow::Result<Objects> {
    let client = connector.connect(MAINTENANCE_DB).await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('pgswarm.objects') IS NOT NULL", &[])
        .await
        .context("looking for pgswarm.objects")?
        .get(0);
    if !exists {
        return Ok(Objects::default());
    }
    let text: Option<String> = client
        .query_opt("SELECT spec::text FROM pgswarm.objects WHERE id = 1", &[])
        .await
        .context("reading pgswarm.objects")?
        .map(|row| row.get(0));
    match text {
        None => Ok(Objects::default()),
        Some(text) => serde_json::from_str(&text)
            .context("pgswarm.objects holds a spec this version cannot read"),
    }
}

/// How often the primary checks its roles and databases.
pub const MAINTAIN_INTERVAL: Duration = Duration::from_secs(30);
/// Failed rounds in a row before a failure is logged as a warning.
const FAILURES_BEFORE_WARNING: u32 = 6;
/// How soon a failed or not-yet-possible check (the server starting, a standby) is retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the lookup user and the stored declared objects in line while this member is the
/// primary: on start (as soon as the server answers) and every [`MAINTAIN_INTERVAL`]. Logs
/// one line per change, and a problem once (again only when the problems change).
pub async fn maintain(
    connector: Connector,
    available: BTreeMap<String, crate::secrets::SecretValue>,
    auth_password: Option<Password>,
) {
    let mut last_problems: Vec<String> = Vec::new();
    // A failure is said once it lasts (the server starting up fails a round or two), and
    // again only when it changes.
    let mut failures = 0u32;
    let mut last_error = String::new();
    loop {
        let wait = match maintain_once(&connector, &available, auth_password.as_ref()).await {
            Ok(Some(outcome)) => {
                failures = 0;
                last_error.clear();
                if outcome.problems != last_problems {
                    for p in &outcome.problems {
                        warn!("roles and databases: {p}");
                    }
                    last_problems = outcome.problems;
                }
                MAINTAIN_INTERVAL
            }
            Ok(None) => {
                failures = 0;
                RETRY_INTERVAL
            }
            Err(e) => {
                failures += 1;
                let error = format!("{e:#}");
                if failures >= FAILURES_BEFORE_WARNING && error != last_error {
                    warn!(error = %error, "roles and databases not checked; trying again");
                    last_error = error;
                } else {
                    tracing::debug!(error = %error, "roles and databases not checked");
                }
                RETRY_INTERVAL
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Starts [`maintain`] for a data member that can become primary: over the local socket as
/// the superuser (peer authentication), with the role passwords and the lookup user's
/// password read at start.
pub fn spawn_for_member(
    common: &pgswarm_contract::Common,
    port: u16,
    secrets: &crate::secrets::Secrets,
) -> anyhow::Result<()> {
    use pgswarm_contract::Secret;
    let mut base = Config::new();
    base.host_path(common.socket_dir())
        .port(port)
        .user(&common.superuser)
        .application_name("pgswarm-objects")
        .connect_timeout(Duration::from_secs(5));
    let auth_password =
        Password::new(secrets.get(Secret::PoolerAuthPassword)?.expose()).map_err(|e| {
            crate::ConfigError(format!(
                "the secret {} is unusable: {e}",
                Secret::PoolerAuthPassword.file_name()
            ))
        })?;
    tokio::spawn(maintain(
        Connector { base },
        secrets.role_passwords().clone(),
        Some(auth_password),
    ));
    Ok(())
}

/// One round of [`maintain`]: `None` when this server is not the primary.
async fn maintain_once(
    connector: &Connector,
    available: &BTreeMap<String, crate::secrets::SecretValue>,
    auth_password: Option<&Password>,
) -> anyhow::Result<Option<Outcome>> {
    {
        let client = connector.connect(MAINTENANCE_DB).await?;
        if crate::postgres::server_role(&client).await? != crate::postgres::ServerRole::Primary {
            return Ok(None);
        }
    }
    let desired = stored(connector).await?;
    reconcile(connector, &desired, available, auth_password)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgswarm_contract::objects::RoleSpec;

    fn role(name: &str) -> RoleSpec {
        RoleSpec {
            name: name.into(),
            login: true,
            connection_limit: None,
            member_of: vec![],
            ensure: Ensure::Present,
        }
    }

    fn database(name: &str, owner: &str) -> DatabaseSpec {
        DatabaseSpec {
            name: name.into(),
            owner: owner.into(),
            extensions: vec![],
            readers: vec![],
            ensure: Ensure::Present,
        }
    }

    fn pw(s: &str) -> Password {
        Password::new(s).unwrap()
    }

    /// The cluster as it is once `desired` was applied with `passwords`.
    fn converged(desired: &Objects, passwords: &BTreeMap<String, Password>) -> ObservedCluster {
        let mut observed = ObservedCluster::default();
        observed.roles.insert(
            AUTH_USER.into(),
            ObservedRole {
                login: true,
                connection_limit: AUTH_CONNECTION_LIMIT,
                verifier: Some(scram::verifier("auth").unwrap()),
                member_of: BTreeSet::new(),
            },
        );
        for r in desired.roles.iter().filter(|r| r.ensure == Ensure::Present) {
            observed.roles.insert(
                r.name.clone(),
                ObservedRole {
                    login: r.login,
                    connection_limit: r.connection_limit.unwrap_or(-1),
                    verifier: passwords
                        .get(&r.name)
                        .map(|p| scram::verifier(p.expose()).unwrap()),
                    member_of: r.member_of.iter().cloned().collect(),
                },
            );
        }
        for d in desired
            .databases
            .iter()
            .filter(|d| d.ensure == Ensure::Present)
        {
            let mut connect: BTreeSet<String> = d.readers.iter().cloned().collect();
            connect.insert(AUTH_USER.into());
            connect.insert(d.owner.clone());
            observed.databases.insert(
                d.name.clone(),
                ObservedDatabase {
                    owner: d.owner.clone(),
                    public_connect: false,
                    connect,
                },
            );
        }
        observed
    }

    #[test]
    fn scram_verifiers_match_postgres_protocols_and_their_own_password_only() {
        // The verifier of the same password and salt as the postgres-protocol crate computes
        // it (its test vector), so PostgreSQL accepts ours.
        let theirs = postgres_protocol::password::scram_sha_256(b"secret-Pw1");
        assert!(scram::matches(&theirs, "secret-Pw1"));
        assert!(!scram::matches(&theirs, "secret-Pw2"));
        let ours = scram::verifier("x").unwrap();
        assert!(scram::matches(&ours, "x"));
        assert!(!scram::matches("md5abcdef", "x"));
        assert!(!scram::matches("SCRAM-SHA-256$0:AAAA$x:y", "x"));
        assert_ne!(
            scram::verifier("x").unwrap(),
            ours,
            "a fresh salt each time"
        );
    }

    #[test]
    fn a_new_role_and_database_are_created_with_no_password_in_the_sql() {
        let desired = Objects {
            roles: vec![RoleSpec {
                connection_limit: Some(5),
                member_of: vec!["readers".into()],
                ..role("app")
            }],
            databases: vec![DatabaseSpec {
                readers: vec!["report".into()],
                extensions: vec!["pg_trgm".into()],
                ..database("appdb", "app")
            }],
        };
        let passwords = BTreeMap::from([("app".to_string(), pw("SuperSecret123"))]);
        let actions = plan_cluster(
            &desired,
            &ObservedCluster::default(),
            &passwords,
            Some(&pw("auth")),
        )
        .unwrap();
        let sql: Vec<&str> = actions.iter().map(|a| a.sql.as_str()).collect();
        assert!(sql[0].starts_with("CREATE ROLE \"pgswarm_auth\" WITH LOGIN"));
        assert!(sql[1].starts_with(
            "CREATE ROLE \"app\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             CONNECTION LIMIT 5 PASSWORD 'SCRAM-SHA-256$4096:"
        ));
        assert_eq!(sql[2], "GRANT \"readers\" TO \"app\"");
        assert_eq!(sql[3], "CREATE DATABASE \"appdb\" OWNER \"app\"");
        assert_eq!(
            sql[4],
            "REVOKE CONNECT, TEMPORARY ON DATABASE \"appdb\" FROM PUBLIC"
        );
        assert_eq!(
            sql[5],
            "GRANT CONNECT ON DATABASE \"appdb\" TO \"pgswarm_auth\""
        );
        assert_eq!(sql[6], "GRANT CONNECT ON DATABASE \"appdb\" TO \"report\"");
        assert_eq!(actions.len(), 7);
        for a in &actions {
            assert!(!a.sql.contains("SuperSecret123") && !a.change.contains("SuperSecret123"));
            assert!(!a.change.contains("SCRAM"), "{}", a.change);
        }
        assert_eq!(
            actions[1].change,
            "created role app (login, connection limit 5, password from its secret)"
        );
    }

    #[test]
    fn nothing_is_planned_once_the_server_matches() {
        let desired = Objects {
            roles: vec![
                RoleSpec {
                    connection_limit: Some(5),
                    member_of: vec!["team".into()],
                    ..role("app")
                },
                RoleSpec {
                    login: false,
                    ..role("team")
                },
            ],
            databases: vec![DatabaseSpec {
                readers: vec!["team".into()],
                ..database("appdb", "app")
            }],
        };
        let passwords = BTreeMap::from([("app".to_string(), pw("pw-1"))]);
        let observed = converged(&desired, &passwords);
        let actions = plan_cluster(&desired, &observed, &passwords, Some(&pw("auth"))).unwrap();
        assert_eq!(actions, vec![], "{actions:#?}");
        let inside = ObservedInDatabase {
            extensions: BTreeSet::new(),
            default_readers: BTreeSet::from(["team".to_string()]),
            lookup_ok: true,
        };
        assert_eq!(plan_database(&desired.databases[0], &inside), vec![]);
    }

    #[test]
    fn changes_alter_in_place_and_say_what_changed() {
        let before = Objects {
            roles: vec![RoleSpec {
                connection_limit: Some(5),
                member_of: vec!["old".into()],
                ..role("app")
            }],
            databases: vec![database("appdb", "app")],
        };
        let passwords = BTreeMap::from([("app".to_string(), pw("pw-1"))]);
        let observed = converged(&before, &passwords);
        let after = Objects {
            roles: vec![RoleSpec {
                connection_limit: Some(7),
                member_of: vec!["new".into()],
                ..role("app")
            }],
            databases: vec![database("appdb", "app")],
        };
        // A reader dropped from the list loses CONNECT; an undeclared grantee keeps it.
        let mut observed = observed;
        let appdb = observed.databases.get_mut("appdb").unwrap();
        appdb.connect.insert("someone".into());
        let mut with_reader = after.clone();
        with_reader.roles.push(role("report"));
        let mut observed_reader = observed.clone();
        observed_reader
            .databases
            .get_mut("appdb")
            .unwrap()
            .connect
            .insert("report".into());
        observed_reader.roles.insert(
            "report".into(),
            ObservedRole {
                login: true,
                connection_limit: -1,
                verifier: None,
                member_of: BTreeSet::new(),
            },
        );
        let revokes: Vec<String> =
            plan_cluster(&with_reader, &observed_reader, &BTreeMap::new(), None)
                .unwrap()
                .into_iter()
                .filter(|a| a.sql.starts_with("REVOKE CONNECT"))
                .map(|a| a.sql)
                .collect();
        assert_eq!(
            revokes,
            ["REVOKE CONNECT ON DATABASE \"appdb\" FROM \"report\""]
        );
        let new_passwords = BTreeMap::from([("app".to_string(), pw("pw-2"))]);
        let actions = plan_cluster(&after, &observed, &new_passwords, Some(&pw("auth"))).unwrap();
        let changes: Vec<&str> = actions.iter().map(|a| a.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "altered role app: connection limit 5 -> 7, password set from its secret",
                "granted membership in new to role app",
                "revoked membership in old from role app",
            ]
        );
        assert!(actions[0]
            .sql
            .starts_with("ALTER ROLE \"app\" WITH CONNECTION LIMIT 7 PASSWORD 'SCRAM-SHA-256$"));
    }

    #[test]
    fn absent_objects_are_dropped_only_when_they_exist_databases_first() {
        let present = Objects {
            roles: vec![role("old")],
            databases: vec![database("olddb", "old")],
        };
        let observed = converged(&present, &BTreeMap::new());
        let absent = Objects {
            roles: vec![RoleSpec {
                ensure: Ensure::Absent,
                ..role("old")
            }],
            databases: vec![DatabaseSpec {
                ensure: Ensure::Absent,
                ..database("olddb", "old")
            }],
        };
        let actions = plan_cluster(&absent, &observed, &BTreeMap::new(), None).unwrap();
        let sql: Vec<&str> = actions.iter().map(|a| a.sql.as_str()).collect();
        assert_eq!(sql, ["DROP DATABASE \"olddb\"", "DROP ROLE \"old\""]);
        let gone = plan_cluster(
            &absent,
            &converged(&Objects::default(), &BTreeMap::new()),
            &BTreeMap::new(),
            None,
        )
        .unwrap();
        assert_eq!(gone, vec![]);
    }

    #[test]
    fn a_database_gets_its_lookup_function_extensions_and_default_privileges() {
        let desired = DatabaseSpec {
            extensions: vec!["pg_trgm".into(), "plpgsql".into()],
            readers: vec!["report".into()],
            ..database("appdb", "app")
        };
        let observed = ObservedInDatabase {
            extensions: BTreeSet::from(["plpgsql".to_string()]),
            default_readers: BTreeSet::from(["gone".to_string()]),
            lookup_ok: false,
        };
        let actions = plan_database(&desired, &observed);
        let sql: Vec<&str> = actions.iter().map(|a| a.sql.as_str()).collect();
        assert!(sql[0].contains("SECURITY DEFINER SET search_path = pg_catalog, pg_temp"));
        assert!(sql[0].contains("REVOKE ALL ON FUNCTION \"pgswarm\".user_lookup(text) FROM PUBLIC"));
        assert_eq!(sql[1], "CREATE EXTENSION IF NOT EXISTS \"pg_trgm\"");
        assert_eq!(
            sql[2],
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"app\" GRANT SELECT ON TABLES TO \"report\""
        );
        assert_eq!(
            sql[3],
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"app\" REVOKE SELECT ON TABLES FROM \"gone\""
        );
    }

    #[test]
    fn passwords_must_be_printable_ascii_and_are_not_printed() {
        assert!(Password::new("").is_err());
        assert!(Password::new("a\tb").is_err());
        assert!(Password::new("pässword").is_err());
        assert_eq!(format!("{:?}", pw("abc")), "Password(<redacted>)");
    }
}
