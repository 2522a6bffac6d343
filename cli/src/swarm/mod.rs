//! Operating a cluster through the Docker Engine API (bollard): labelling nodes, creating
//! secrets, deploying the stack, waiting until it is healthy, reading its status, switching
//! the Patroni leader over, and checking a swarm for everything that would stop a deploy.
//!
//! Everything starts from the validated [`crate::spec::Cluster`]; the names of what a cluster
//! owns on the swarm (stack, services, secrets, node labels, volumes) come from the same
//! definitions the stack renderer uses.

pub mod access;
pub mod backup;
pub mod certs;
pub mod citus;
pub mod constraints;
pub mod deploy;
pub mod doctor;
pub mod engine;
pub mod exec;
pub mod job;
pub mod labels;
pub mod nodes;
pub mod objects;
pub mod observe;
pub mod progress;
pub mod restore;
pub mod secrets;
pub mod status;
pub mod switchover;
pub mod up;

pub use engine::Engine;

/// Label Docker puts on every object of a stack (services, networks, volumes, containers).
pub const STACK_NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// Label Docker puts on every task container: the full service name.
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// Ports the nodes of a swarm need open between them: (port, protocol, what for).
pub use pgswarm_contract::rules::SWARM_RESERVED_PORTS as SWARM_PORTS;

/// The Swarm service name of stack service `member` of `cluster` (`<stack>_<member>`).
pub fn service_name(cluster: &str, member: &str) -> String {
    format!("{cluster}_{member}")
}

/// Errors an operator must act on, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(
        "cannot reach the Docker daemon at {endpoint} (is Docker installed and running, and may \
         this user use it? `docker info` tells; DOCKER_HOST selects another daemon)"
    )]
    Unreachable {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "this Docker engine is not part of a swarm (state: {state}): run `docker swarm init` \
         (or `swarmctl up` for a single-node swarm on this machine)"
    )]
    NoSwarm { state: String },
    #[error(
        "this Docker engine is a swarm worker, not a manager: run swarmctl on a manager node \
         (`docker node ls` there lists the managers)"
    )]
    NotManager,
    #[error(
        "image {image} is not on this node: build it with `scripts/build-image.sh {image}` \
         from the pgswarm repository (or `docker pull {image}` from a registry), or set \
         `image:` in the spec to an image the nodes have"
    )]
    ImageMissing { image: String },
    #[error("{0}")]
    Unsatisfiable(String),
    #[error("{0}")]
    BadAssignment(String),
}
