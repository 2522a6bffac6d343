//! Making sure this Docker engine is a swarm manager, without disturbing a swarm that exists.
//!
//! An active swarm is used as it is (and never left). When the engine is not in a swarm, a
//! single-node swarm is initialised on loopback; [`Swarm::created`] says so, and only then may
//! the caller leave it again ([`Swarm::leave_if_created`]).

use anyhow::{bail, Result};
use tracing::info;

use crate::docker::docker;

/// The local swarm node.
#[derive(Debug, Clone)]
pub struct Swarm {
    /// ID of this node (a manager).
    pub node_id: String,
    /// True when this process initialised the swarm.
    pub created: bool,
}

impl Swarm {
    /// Uses the active swarm, or initialises a single-node one on 127.0.0.1.
    pub fn ensure() -> Result<Swarm> {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
        let created = match state.trim() {
            "active" => false,
            "inactive" => {
                info!("no swarm on this engine: initialising a single-node swarm on 127.0.0.1");
                docker(&[
                    "swarm",
                    "init",
                    "--advertise-addr",
                    "127.0.0.1",
                    "--listen-addr",
                    "127.0.0.1:2377",
                ])?;
                true
            }
            other => bail!(
                "the Docker engine's swarm state is `{other}`; the suite needs `active` or \
                 `inactive` (see `docker info`)"
            ),
        };
        let manager = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"])?;
        if manager.trim() != "true" {
            bail!(
                "this Docker engine is a swarm worker, not a manager: run the suite on a \
                 manager node"
            );
        }
        let node_id = docker(&["info", "--format", "{{.Swarm.NodeID}}"])?
            .trim()
            .to_string();
        Ok(Swarm { node_id, created })
    }

    /// Leaves the swarm, only when this process created it.
    pub fn leave_if_created(&self) -> Result<()> {
        if self.created {
            info!("leaving the single-node swarm this run initialised");
            docker(&["swarm", "leave", "--force"])?;
        }
        Ok(())
    }
}
