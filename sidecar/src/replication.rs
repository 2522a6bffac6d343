//! Topology `replication`: a streaming-replication primary and its hot-standby replicas.

use pgswarm_contract::MemberEnv;

use crate::secrets::Secrets;
use crate::templates::Templates;

/// Runs the primary or replica of this member to its end.
pub async fn run(
    member: &MemberEnv,
    _secrets: &Secrets,
    _templates: Templates,
) -> anyhow::Result<i32> {
    anyhow::bail!("mode {} is not implemented yet", member.mode())
}
