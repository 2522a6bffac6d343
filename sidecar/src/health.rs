//! `pgswarm-sidecar health`: the container's HEALTHCHECK, one check per mode.
//!
//! Primary and replica: PostgreSQL accepts a connection on its local socket and is in the
//! expected role (a primary not in recovery, a replica in recovery). Patroni, etcd, router and
//! pooler and the backup repository: the `health` function of their modules.

use anyhow::bail;
use pgswarm_contract::{MemberEnv, Role};

use crate::postgres::{server_role, Server, ServerRole};
use crate::templates::Templates;

/// Checks this member; `Ok` carries a one-line summary for the health log.
pub async fn check(member: &MemberEnv) -> anyhow::Result<String> {
    match &member.role {
        Role::Primary { .. } => postgres_in_role(member, ServerRole::Primary).await,
        Role::Replica { .. } => postgres_in_role(member, ServerRole::Standby).await,
        Role::Patroni { .. } => crate::patroni::health(member).await,
        Role::Etcd { .. } => crate::etcd::health(member).await,
        Role::Router { .. } => crate::router::health(member).await,
        Role::Pooler { .. } => crate::pooler::health(member).await,
        Role::Backup { .. } => crate::backup::health(member).await,
    }
}

async fn postgres_in_role(member: &MemberEnv, expected: ServerRole) -> anyhow::Result<String> {
    let server = Server::new(member, Templates::default())?;
    let client = server.connect_local("postgres").await?;
    let role = server_role(&client).await?;
    match (expected, role) {
        (ServerRole::Primary, ServerRole::Primary) => Ok("primary accepting connections".into()),
        (ServerRole::Standby, ServerRole::Standby) => {
            Ok("replica accepting connections, in recovery".into())
        }
        (ServerRole::Primary, ServerRole::Standby) => {
            bail!("postgres is in recovery, but this member is the primary")
        }
        (ServerRole::Standby, ServerRole::Primary) => bail!(
            "postgres is not in recovery (promoted?), but this member is a replica; \
             change its mode to primary if the promotion was meant"
        ),
    }
}
