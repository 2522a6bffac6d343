//! `swarmctl` as a library: the cluster spec (parse, validate), the stack file it renders to,
//! the node-label scheme that pins members to nodes, and the operations on a swarm through
//! the Docker Engine API.
//!
//! The binary in `main.rs` is a thin front door over these modules; other commands (labelling
//! nodes, deploying, status) reuse the validated [`spec::Cluster`] model rather than the YAML.

pub mod placement;
pub mod render;
pub mod spec;
pub mod swarm;

/// TCP keepalive timing used on every service (kernel sysctls) and in PostgreSQL's own
/// `tcp_keepalives_*` defaults. A dead peer is noticed after `IDLE + INTERVAL * COUNT` seconds
/// (390 s), and an idle connection sends a probe long before Swarm's IPVS drops it at 900 s.
pub mod keepalive {
    /// Seconds of idleness before the first probe.
    pub const IDLE_SECS: u32 = 300;
    /// Seconds between probes.
    pub const INTERVAL_SECS: u32 = 30;
    /// Unanswered probes before the connection is dropped.
    pub const COUNT: u32 = 3;
}
