//! A person's access to a running cluster: `swarmctl psql` (psql on the leader or a replica,
//! run inside a container of the cluster so the password never leaves it) and `swarmctl logs`
//! (a member's logs from every task, wherever Swarm runs it).
//!
//! Both hand the terminal to the Docker CLI (`docker exec -it`, `docker service logs`): an
//! interactive session needs a TTY, resizing and signals, which the CLI already does well.

use anyhow::{anyhow, bail, Context};
use pgswarm_contract::Role;
use std::io::IsTerminal;
use std::process::Command;

use super::status::{docker_view, superuser_container};
use super::{nodes, service_name, Engine};
use crate::spec::Cluster;

/// Where psql connects from inside the cluster: the router's read-write (or read-only) port,
/// or, without a router, the primary (or a replica) itself.
pub fn psql_target(cluster: &Cluster, replica: bool) -> anyhow::Result<(String, u16)> {
    if let (Some(router), Some((rw, ro, _))) = (cluster.router(), cluster.router_ports()) {
        return Ok((
            format!("tasks.{}", router.name),
            if replica { ro } else { rw },
        ));
    }
    let wanted = |role: &Role| match role {
        Role::Primary { postgres, .. } if !replica => Some(postgres.port),
        Role::Replica { postgres, .. } if replica => Some(postgres.port),
        _ => None,
    };
    cluster
        .data_members()
        .find_map(|s| wanted(&s.env.role).map(|port| (s.name.clone(), port)))
        .ok_or_else(|| {
            anyhow!(
                "cluster {} has no router and no {} to connect to",
                cluster.name,
                if replica { "replica" } else { "primary" }
            )
        })
}

/// The Docker CLI, or an error saying what it is needed for.
fn docker_cli(what: &str) -> anyhow::Result<Command> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("docker").is_file()))
        .unwrap_or(false);
    if !found {
        bail!("the docker command is not installed; {what} runs it (install Docker's CLI)");
    }
    Ok(Command::new("docker"))
}

/// Runs psql on the leader (or a replica) of `cluster`; returns psql's exit code.
pub async fn psql(
    engine: &Engine,
    cluster: &Cluster,
    replica: bool,
    dbname: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    engine.require_manager().await?;
    let (host, port) = psql_target(cluster, replica)?;
    let nodes = nodes::list(engine).await?;
    let views = docker_view(engine, cluster, &nodes).await?;
    let container = superuser_container(cluster, &views)?;
    let mut cmd = docker_cli("swarmctl psql")?;
    cmd.arg("exec").arg("-i");
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        cmd.arg("-t");
    }
    cmd.args([
        &container,
        "pgswarm-sidecar",
        "ctl",
        "psql",
        "--host",
        &host,
        "--port",
        &port.to_string(),
        "--dbname",
        dbname,
        "--",
    ])
    .args(args);
    let status = cmd.status().context("cannot run docker exec for psql")?;
    Ok(status.code().unwrap_or(1))
}

/// Prints the logs of `member`'s service (every task, on any node); returns the exit code of
/// `docker service logs`.
pub async fn logs(
    engine: &Engine,
    cluster: &Cluster,
    member: &str,
    follow: bool,
    tail: Option<usize>,
) -> anyhow::Result<i32> {
    if cluster.service(member).is_none() {
        let names: Vec<&str> = cluster.services.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "cluster {} has no member {member:?}; its services are: {}",
            cluster.name,
            names.join(", ")
        );
    }
    engine.require_manager().await?;
    let mut cmd = docker_cli("swarmctl logs")?;
    cmd.args(["service", "logs", "--timestamps"]);
    if follow {
        cmd.arg("--follow");
    }
    if let Some(n) = tail {
        cmd.args(["--tail", &n.to_string()]);
    }
    cmd.arg(service_name(&cluster.name, member));
    let status = cmd.status().context("cannot run docker service logs")?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse, Topology};

    fn cluster(topology: Topology) -> Cluster {
        let text = crate::spec::starter_spec(topology, "demo").expect("starter");
        parse(&text).expect("valid").cluster
    }

    #[test]
    fn psql_goes_through_the_router_when_there_is_one() {
        let c = cluster(Topology::Patroni);
        let (rw, ro, _) = c.router_ports().expect("router");
        assert_eq!(psql_target(&c, false).unwrap().1, rw);
        assert_eq!(psql_target(&c, true).unwrap().1, ro);
        assert!(psql_target(&c, false).unwrap().0.starts_with("tasks."));
    }

    #[test]
    fn psql_goes_to_the_primary_or_a_replica_without_a_router() {
        let c = cluster(Topology::Replication);
        let (primary, _) = psql_target(&c, false).unwrap();
        let (replica, _) = psql_target(&c, true).unwrap();
        assert_ne!(primary, replica);
        assert!(matches!(
            c.service(&primary).unwrap().env.role,
            Role::Primary { .. }
        ));
    }
}
