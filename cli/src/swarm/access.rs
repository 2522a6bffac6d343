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

/// The connection URIs of `role` (default: the superuser) for `swarmctl connect`: the router's
/// read-write and read-only ports and the pooler, where they are published, with `host` as
/// the address, and the command that prints the role's password (never the password itself).
/// The database is `dbname`, else the first declared database the role owns or reads, else
/// `postgres`.
pub fn connection_uris(
    cluster: &Cluster,
    role: Option<&str>,
    dbname: Option<&str>,
    host: &str,
) -> anyhow::Result<String> {
    use pgswarm_contract::objects::{role_password_path, Ensure};
    let first = cluster
        .data_members()
        .next()
        .ok_or_else(|| anyhow!("cluster {} has no PostgreSQL member", cluster.name))?;
    let superuser = first.env.common.superuser.clone();
    let user = role.unwrap_or(&superuser).to_string();
    let password_path = if user == superuser {
        pgswarm_contract::Secret::SuperuserPassword.default_path()
    } else {
        let logins: Vec<&str> = cluster
            .objects
            .roles
            .iter()
            .filter(|r| r.has_password())
            .map(|r| r.name.as_str())
            .collect();
        match cluster.objects.role(&user) {
            Some(r) if r.has_password() => role_password_path(&user),
            Some(r) if r.ensure == Ensure::Absent => {
                bail!("role {user} is declared with `ensure: absent`: it does not exist")
            }
            Some(_) => bail!("role {user} is a group role (login: false): it cannot connect"),
            None => bail!(
                "--role {user}: cluster {} declares no such role; its login roles are: {}{}",
                cluster.name,
                superuser,
                logins.iter().map(|r| format!(", {r}")).collect::<String>()
            ),
        }
    };
    let database = match dbname {
        Some(d) => d.to_string(),
        None => cluster
            .objects
            .databases
            .iter()
            .filter(|d| d.ensure == Ensure::Present)
            .find(|d| d.owner == user || d.readers.contains(&user))
            .map(|d| d.name.clone())
            .unwrap_or_else(|| "postgres".to_string()),
    };
    let published = |name: &str, target: u16| -> Option<u16> {
        cluster
            .service(name)
            .and_then(|s| s.ports.iter().find(|p| p.target == target).map(|p| p.port))
    };
    // With TLS: the client checks the server against the cluster CA, and the host name too
    // when the certificate names the host it connects by.
    let ca_file = format!("{}-ca.crt", cluster.name);
    let tls_query = cluster.tls.as_ref().map(|_| {
        let names = super::secrets::tls_names(cluster);
        let mode = if names.iter().any(|n| n == host) {
            "verify-full"
        } else {
            "verify-ca"
        };
        format!("?sslmode={mode}&sslrootcert={ca_file}")
    });
    let query = tls_query.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |what: &str, port: Option<u16>| match port {
        Some(p) => out.push_str(&format!(
            "{what:<22}postgresql://{user}@{host}:{p}/{database}{query}\n"
        )),
        None => out.push_str(&format!("{what:<22}(not published outside the swarm)\n")),
    };
    if let (Some(router), Some((rw, ro, _))) = (cluster.router(), cluster.router_ports()) {
        line("read-write (router):", published(&router.name, rw));
        line("read-only (router):", published(&router.name, ro));
    }
    if let Some(pooler) = cluster.pooler() {
        if let Role::Pooler { port, .. } = &pooler.env.role {
            line("pooled (PgBouncer):", published(&pooler.name, *port));
        }
    }
    if cluster.router().is_none() && cluster.pooler().is_none() {
        for s in cluster.data_members() {
            let port = match &s.env.role {
                Role::Primary { postgres, .. }
                | Role::Replica { postgres, .. }
                | Role::Patroni { postgres, .. } => Some(postgres.port),
                _ => None,
            };
            line(
                &format!("{}:", s.name),
                port.and_then(|p| published(&s.name, p)),
            );
        }
    }
    out.push_str(&format!(
        "password of {user} (a Docker secret; never printed by swarmctl):\n  docker exec \
         $(docker ps -q -f label={}={} | head -n1) cat {password_path}\n",
        super::SERVICE_NAME_LABEL,
        service_name(&cluster.name, &first.name),
    ));
    if let Some(query) = &tls_query {
        let command =
            super::secrets::read_command(cluster, pgswarm_contract::Secret::TlsCa, &first.name);
        out.push_str(&format!(
            "cluster CA ({}; TLS {}), saved where the URIs expect it:\n  {command} > {ca_file}\n",
            cluster.secret_docker_name(pgswarm_contract::Secret::TlsCa),
            cluster.tls.as_ref().map_or("on", |t| match t.mode {
                pgswarm_contract::Tls::On => "offered",
                pgswarm_contract::Tls::Require => "required",
            }),
        ));
        if query.contains("verify-ca") {
            out.push_str(&format!(
                "  (verify-ca: the certificate does not name `{host}`; inside the swarm connect by \
                 service name with sslmode=verify-full, or add `{host}` to tls.names)\n"
            ));
        }
    }
    Ok(out)
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

    #[test]
    fn connect_prints_a_declared_roles_uris_and_how_to_read_its_password() {
        let text = "name: demo\ntopology: patroni\nrouter: {}\npooler: {}\nroles:\n  - name: app\n  - name: readers\n    login: false\n  - name: report\ndatabases:\n  - name: appdb\n    owner: app\n    readers: [report]\n";
        let c = parse(text).expect("valid").cluster;
        let out = connection_uris(&c, Some("app"), None, "10.0.0.5").unwrap();
        assert!(
            out.contains("postgresql://app@10.0.0.5:5000/appdb"),
            "{out}"
        );
        assert!(
            out.contains("postgresql://app@10.0.0.5:5001/appdb"),
            "{out}"
        );
        assert!(
            out.contains("postgresql://app@10.0.0.5:6432/appdb"),
            "{out}"
        );
        assert!(out.contains("cat /run/secrets/role_app_password"), "{out}");
        // A reader gets the database it reads; the superuser the maintenance database.
        let out = connection_uris(&c, Some("report"), None, "h").unwrap();
        assert!(out.contains("postgresql://report@h:5000/appdb"), "{out}");
        let out = connection_uris(&c, None, None, "h").unwrap();
        assert!(
            out.contains("postgresql://postgres@h:5000/postgres"),
            "{out}"
        );
        assert!(out.contains("cat /run/secrets/superuser_password"), "{out}");
        // Unknown and group roles are refused, naming the login roles.
        let err = connection_uris(&c, Some("nobody"), None, "h")
            .unwrap_err()
            .to_string();
        assert!(err.contains("app") && err.contains("report"), "{err}");
        let err = connection_uris(&c, Some("readers"), None, "h")
            .unwrap_err()
            .to_string();
        assert!(err.contains("group role"), "{err}");
    }

    #[test]
    fn with_tls_connect_asks_for_verification_and_says_how_to_save_the_ca() {
        let text = "name: demo\ntopology: patroni\nroles:\n  - name: app\ndatabases:\n  - name: \
                    appdb\n    owner: app\ntls:\n  require: true\n  names: [db.example.com]\n";
        let c = parse(text).expect("valid").cluster;
        let out = connection_uris(&c, Some("app"), None, "db.example.com").unwrap();
        assert!(
            out.contains(
                "postgresql://app@db.example.com:5000/appdb?sslmode=verify-full&sslrootcert=demo-ca.crt"
            ),
            "{out}"
        );
        assert!(
            out.contains("cat /run/secrets/tls_ca > demo-ca.crt"),
            "{out}"
        );
        assert!(out.contains("demo_tls_ca; TLS required"), "{out}");
        // An address the certificate does not name: the CA is still checked.
        let out = connection_uris(&c, Some("app"), None, "10.0.0.5").unwrap();
        assert!(
            out.contains("?sslmode=verify-ca&sslrootcert=demo-ca.crt"),
            "{out}"
        );
        assert!(out.contains("does not name `10.0.0.5`"), "{out}");
        // Without TLS, plain URIs.
        let plain = parse("name: demo\ntopology: patroni\n")
            .expect("valid")
            .cluster;
        let out = connection_uris(&plain, None, None, "h").unwrap();
        assert!(
            !out.contains("sslmode") && !out.contains("cluster CA"),
            "{out}"
        );
    }
}
