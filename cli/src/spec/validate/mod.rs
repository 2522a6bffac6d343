//! From the spec as written ([`RawSpec`]) to a [`Cluster`]: applies defaults, checks every
//! rule, and expresses each service's share of the topology as the contract's `MemberEnv`.
//!
//! All problems are collected (not just the first), each with the field path it is about, so
//! one run of `swarmctl validate` shows everything to fix.
//!
//! The work is split by job: [`rules`] checks one field or section at a time, [`plan`] turns
//! each topology's section into data members with their roles, [`placing`] decides where each
//! service may run, and [`assemble`] puts the services together into a [`Cluster`].

mod assemble;
mod backup;
mod objects;
mod placing;
mod plan;
mod rules;
mod tls;

use assemble::*;
use backup::*;
use objects::*;
use placing::*;
use plan::*;
use rules::*;
use tls::*;

pub(crate) use rules::check_image;

use super::diag::{FieldPath, Location, Problem, Rule, Severity, SpecError};
use super::locate::locate;
use super::model::*;
use super::raw::*;
use crate::placement::{self, Placement};
use pgswarm_contract::{
    defaults, Citus, Common, Endpoint, EtcdPeer, Handover, MemberEnv, PoolMode, Postgres, Role,
    SynchronousMode,
};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Most data members a spec may declare; far above any sensible cluster, low enough that a
/// typo like `members: 30000` is an error rather than a stack of 30000 services.
pub const MAX_DATA_MEMBERS: u64 = 128;
/// Most etcd members: etcd itself advises 3, 5 or 7.
pub const MAX_ETCD_MEMBERS: u64 = 9;
/// Name of the router service.
pub const ROUTER_SERVICE: &str = "router";
/// Name of the pooler service.
pub const POOLER_SERVICE: &str = "pooler";

struct Ctx<'t> {
    text: &'t str,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Ctx<'_> {
    fn report(&mut self, rule: Rule, path: &FieldPath, message: impl Into<String>) {
        let location: Option<Location> = locate(self.text, &path.0);
        let problem = Problem {
            rule,
            path: path.to_string(),
            location,
            message: message.into(),
        };
        match rule.severity() {
            Severity::Error => self.errors.push(problem),
            Severity::Warning => self.warnings.push(problem),
        }
    }
}

/// A member before its environment is built.
struct Draft {
    name: String,
    /// Where the member is declared (its list item, or the count it was generated from).
    path: FieldPath,
    /// Path of its name: the `name` field, or the count.
    name_path: FieldPath,
    placement: Option<RawPlacement>,
    resources: Option<RawResources>,
    publish: Option<RawPublish>,
    group: Option<u32>,
    /// The name is generated (from a count or a default), not written in the spec.
    generated: bool,
}

impl Draft {
    /// A member whose name the spec does not write (generated from a count or a default).
    fn generated(name: &str, path: FieldPath, group: Option<u32>) -> Draft {
        Draft {
            name: name.to_string(),
            name_path: path.clone(),
            path,
            placement: None,
            resources: None,
            publish: None,
            group,
            generated: true,
        }
    }
}

/// Validates `raw` (parsed from `text`, used to locate problems).
pub fn validate(raw: RawSpec, text: &str) -> Result<Validated, SpecError> {
    let mut ctx = Ctx {
        text,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let cluster = build(&mut ctx, &raw);
    match cluster {
        Some(cluster) if ctx.errors.is_empty() => Ok(Validated {
            cluster,
            warnings: ctx.warnings,
        }),
        _ => Err(SpecError {
            errors: ctx.errors,
            warnings: ctx.warnings,
        }),
    }
}

/// What every service's environment is built from.
struct Shared {
    cluster: String,
    superuser: String,
    replication_user: String,
    log_json: bool,
    postgres: Postgres,
    timing: Timing,
    etcd_hosts: Vec<Endpoint>,
    zone: Option<String>,
}

impl Shared {
    fn common(&self, member: &str) -> Common {
        let mut c = Common::new(self.cluster.clone(), member);
        c.superuser = self.superuser.clone();
        c.replication_user = self.replication_user.clone();
        c.log_json = self.log_json;
        c
    }

    fn patroni_role(&self, sync: SyncMode, citus: Option<Citus>) -> Role {
        Role::Patroni {
            postgres: self.postgres.clone(),
            etcd_hosts: self.etcd_hosts.clone(),
            rest_port: defaults::REST_PORT,
            ttl: self.timing.ttl,
            loop_wait: self.timing.loop_wait,
            retry_timeout: self.timing.retry_timeout,
            maximum_lag_on_failover: self.timing.maximum_lag_on_failover,
            synchronous_mode: contract_sync(sync),
            citus,
            // Set once the router and pooler are known (`assemble::add_handover`).
            handover: None,
        }
    }
}

/// The data members of a topology with their roles, and where the router sends traffic.
#[derive(Default)]
struct DataPlan {
    members: Vec<(Draft, Role)>,
    /// Behind the read-write and read-only ports.
    router_members: Vec<String>,
    /// Behind the Citus worker port.
    router_workers: Vec<String>,
}

/// Named volume of a member.
pub fn volume_name(member: &str) -> String {
    format!("{member}-data")
}

/// The replication slot of a replica: its name with `-` turned into `_` (slot names allow only
/// lowercase letters, digits and underscores).
pub fn slot_name(member: &str) -> String {
    member
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect()
}

struct Timing {
    ttl: u32,
    loop_wait: u32,
    retry_timeout: u32,
    maximum_lag_on_failover: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl: defaults::TTL,
            loop_wait: defaults::LOOP_WAIT,
            retry_timeout: defaults::RETRY_TIMEOUT,
            maximum_lag_on_failover: defaults::MAXIMUM_LAG_ON_FAILOVER,
        }
    }
}
