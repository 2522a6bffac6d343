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

/// TCP keepalive timing: the contract's (the sidecar uses the same values).
pub use pgswarm_contract::rules::keepalive;
