//! The multi-node test swarm of `scripts/testbed.sh`, as the scenarios see it: its nodes
//! (name, address, Docker socket) and the failures one node can have — power-off (every
//! process SIGKILLed at once), partition (its link cut, its processes alive), freeze (cgroup
//! freezer, like a hung VM) — each undone again (start, heal, thaw).
//!
//! [`Testbed::open`] reads the state the script records under `/run/pgswarm-testbed` and points
//! the suite at the bed: swarm-wide commands go to a manager that is up, container commands to
//! the node that runs the container, and clients try every node's address for ports published
//! in host mode.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use tracing::info;

use crate::docker::{self, docker_async};
use crate::image::repo_root;
use crate::pg;

/// Where `scripts/testbed.sh` records the bed.
pub const STATE_DIR: &str = "/run/pgswarm-testbed";

/// One node of the bed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `tbn1`, `tbn2`, ... (also its hostname in the swarm).
    pub name: String,
    /// Its address on the bridge.
    pub address: String,
    /// `unix://...` address of its Docker engine.
    pub host: String,
}

/// The bed that is up.
#[derive(Debug, Clone)]
pub struct Testbed {
    pub nodes: Vec<Node>,
    /// Whether the kernel carries encrypted overlay networks between nodes (IPsec ESP with
    /// AES-GCM); `scripts/testbed.sh up` finds out.
    pub encrypted_overlay: bool,
}

impl Testbed {
    /// The bed recorded by `scripts/testbed.sh up`, or why there is none.
    pub fn read() -> Result<Testbed> {
        let list = PathBuf::from(STATE_DIR).join("nodes");
        let text = std::fs::read_to_string(&list).with_context(|| {
            format!(
                "no multi-node test bed is up ({} is missing): run `scripts/testbed.sh up 3` \
                 and `scripts/testbed.sh image TAG` first",
                list.display()
            )
        })?;
        let mut nodes = Vec::new();
        for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let index: u32 = name
                .strip_prefix("tbn")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("{}: unexpected node name {name:?}", list.display()))?;
            nodes.push(Node {
                name: name.to_string(),
                address: format!("10.77.0.{}", 10 + index),
                host: format!("unix://{STATE_DIR}/{name}/docker.sock"),
            });
        }
        if nodes.is_empty() {
            bail!("{} lists no node", list.display());
        }
        let encrypted_overlay =
            std::fs::read_to_string(PathBuf::from(STATE_DIR).join("encrypted-overlay"))
                .map(|s| s.trim() == "yes")
                .unwrap_or(false);
        Ok(Testbed {
            nodes,
            encrypted_overlay,
        })
    }

    /// Reads the bed and points the suite (and the `swarmctl` it runs) at it.
    pub fn open() -> Result<Testbed> {
        let bed = Testbed::read()?;
        let manager = &bed.nodes[0];
        // `swarmctl` (run by the suite) reaches the swarm through DOCKER_HOST. Set before any
        // command runs; the suite's tests run one at a time.
        std::env::set_var("DOCKER_HOST", &manager.host);
        docker::set_node_hosts(bed.nodes.iter().map(|n| n.host.clone()).collect());
        docker::set_manager_host(&manager.host);
        pg::set_default_hosts(bed.nodes.iter().map(|n| n.address.clone()).collect());
        info!(nodes = bed.nodes.len(), manager = %manager.host, "using the multi-node test bed");
        Ok(bed)
    }

    /// The cluster spec of the multi-node scenarios: `specs::patroni`, with the overlay
    /// network unencrypted when this kernel cannot carry encrypted overlays between nodes.
    pub fn patroni_spec(&self, name: &str, image: &str, synchronous: bool) -> Result<String> {
        let mut spec = crate::specs::patroni(name, image, synchronous)?;
        // Two routers on two nodes, as the README advises on several nodes: the loss of one
        // router's node leaves the other serving while Swarm reschedules the lost one.
        if self.nodes.len() > 1 {
            spec = spec.replacen("router:\n", "router:\n  replicas: 2\n", 1);
        }
        if !self.encrypted_overlay {
            tracing::warn!(
                "this kernel has no IPsec ESP with AES-GCM: the overlay network of the test \
                 cluster is not encrypted"
            );
            spec.push_str("network:\n  encrypted: false\n");
        }
        Ok(spec)
    }

    /// The node whose engine runs container `id` (found before through the deployment).
    pub fn node_of_container(&self, id: &str) -> Result<&Node> {
        let host = docker::host_of_container(id)
            .ok_or_else(|| anyhow!("container {id} was not found on any node of the bed"))?;
        self.nodes
            .iter()
            .find(|n| n.host == host)
            .ok_or_else(|| anyhow!("container {id} runs on {host}, which is not a node of the bed"))
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("the bed has no node {name}"))
    }

    /// Sends swarm-wide commands to a manager other than `avoid` (before `avoid` goes down).
    pub fn use_manager_other_than(&self, avoid: &Node) -> Result<()> {
        let other = self
            .nodes
            .iter()
            .find(|n| n != &avoid)
            .ok_or_else(|| anyhow!("the bed has no node other than {}", avoid.name))?;
        docker::set_manager_host(&other.host);
        std::env::set_var("DOCKER_HOST", &other.host);
        Ok(())
    }

    /// The swarm node id of `node` (asked of the current manager).
    pub async fn node_id(&self, node: &Node) -> Result<String> {
        let out =
            docker_async(&["-H", &node.host, "info", "--format", "{{.Swarm.NodeID}}"]).await?;
        Ok(out.trim().to_string())
    }

    /// Runs `scripts/testbed.sh ACTION NODE`.
    pub async fn act(&self, action: &str, node: &Node) -> Result<()> {
        let script = repo_root().join("scripts/testbed.sh");
        info!(node = %node.name, action, "test bed");
        let output = tokio::process::Command::from({
            let mut cmd = Command::new(&script);
            cmd.args([action, &node.name]);
            cmd
        })
        .output()
        .await
        .with_context(|| format!("cannot run {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} {action} {} failed ({}): {}",
                script.display(),
                node.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Every process of `node` SIGKILLed at once (dockerd, containerd, shims, containers).
    pub async fn power_off(&self, node: &Node) -> Result<()> {
        docker::set_host_answers(&node.host, false);
        self.act("poweroff", node).await
    }

    /// Starts `node`'s engine again (after a power-off); Swarm restarts its tasks.
    pub async fn start(&self, node: &Node) -> Result<()> {
        self.act("start", node).await?;
        docker::set_host_answers(&node.host, true);
        Ok(())
    }

    /// Cuts `node`'s link: its processes keep running and reach no other node.
    pub async fn partition(&self, node: &Node) -> Result<()> {
        self.act("partition", node).await
    }

    /// Reconnects `node`.
    pub async fn heal(&self, node: &Node) -> Result<()> {
        self.act("heal", node).await
    }

    /// Stops every process of `node` (cgroup freezer).
    pub async fn freeze(&self, node: &Node) -> Result<()> {
        docker::set_host_answers(&node.host, false);
        self.act("freeze", node).await
    }

    /// Lets `node`'s processes run again.
    pub async fn thaw(&self, node: &Node) -> Result<()> {
        self.act("thaw", node).await?;
        docker::set_host_answers(&node.host, true);
        Ok(())
    }
}
