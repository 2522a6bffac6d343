//! The swarm's nodes as plain data: what placement decisions and constraint checks need,
//! taken from the API once, so that planning is a pure function that tests can drive.

use std::collections::BTreeMap;

use anyhow::Context;
use bollard::models::{Node, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState};

use super::Engine;

/// One node of the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// `ready`, `down`, `disconnected`, `unknown`.
    pub state: String,
    /// Node labels (`docker node update --label-add`).
    pub labels: BTreeMap<String, String>,
    /// Engine labels (daemon configuration).
    pub engine_labels: BTreeMap<String, String>,
    pub os: String,
    pub arch: String,
    /// The address the node advertises.
    pub addr: String,
    /// Object version, for version-checked updates.
    pub version: u64,
}

impl NodeView {
    /// Ready and active: the scheduler places new tasks here.
    pub fn is_schedulable(&self) -> bool {
        self.state == "ready" && self.availability == "active"
    }

    /// Why the scheduler places nothing here, when it does not.
    pub fn unschedulable_reason(&self) -> Option<String> {
        if self.state != "ready" {
            Some(format!("node is {}", self.state))
        } else if self.availability != "active" {
            Some(format!("availability is {}", self.availability))
        } else {
            None
        }
    }

    pub fn from_api(node: &Node) -> NodeView {
        let spec = node.spec.clone().unwrap_or_default();
        let description = node.description.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let platform = description.platform.clone().unwrap_or_default();
        NodeView {
            id: node.id.clone().unwrap_or_default(),
            hostname: description.hostname.clone().unwrap_or_default(),
            role: match spec.role {
                Some(NodeSpecRoleEnum::MANAGER) => "manager",
                _ => "worker",
            }
            .to_string(),
            availability: match spec.availability {
                Some(NodeSpecAvailabilityEnum::ACTIVE) => "active",
                Some(NodeSpecAvailabilityEnum::PAUSE) => "pause",
                Some(NodeSpecAvailabilityEnum::DRAIN) => "drain",
                _ => "unknown",
            }
            .to_string(),
            state: match status.state {
                Some(NodeState::READY) => "ready",
                Some(NodeState::DOWN) => "down",
                Some(NodeState::DISCONNECTED) => "disconnected",
                _ => "unknown",
            }
            .to_string(),
            labels: spec.labels.unwrap_or_default().into_iter().collect(),
            engine_labels: description
                .engine
                .and_then(|e| e.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            os: platform.os.unwrap_or_default(),
            arch: platform.architecture.unwrap_or_default(),
            addr: status.addr.unwrap_or_default(),
            version: node.version.as_ref().and_then(|v| v.index).unwrap_or(0),
        }
    }
}

/// Every node of the swarm, sorted by hostname then id.
pub async fn list(engine: &Engine) -> anyhow::Result<Vec<NodeView>> {
    let nodes = engine
        .docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .context("cannot list the swarm's nodes")?;
    let mut views: Vec<NodeView> = nodes.iter().map(NodeView::from_api).collect();
    views.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
    Ok(views)
}

/// Hostname of node `id`, or the id when the node is unknown.
pub fn hostname_of<'a>(nodes: &'a [NodeView], id: &'a str) -> &'a str {
    nodes
        .iter()
        .find(|n| n.id == id)
        .map_or(id, |n| n.hostname.as_str())
}
