//! A Prometheus scrape configuration for a cluster: one job per kind of metrics endpoint,
//! each finding its targets through Prometheus's Docker Swarm discovery (`dockerswarm_sd_configs`,
//! role `tasks`), so tasks are found wherever Swarm runs them. The stack's services carry the
//! labels read here (`pgswarm.metrics.<endpoint>.port` and `.path`); each job keeps the running
//! tasks of this stack that have its label, takes their address on the cluster's overlay
//! network, and the port from the label.
//!
//! Prometheus must reach the overlay network: run it as a service attached to
//! `<cluster>_net` (the network is attachable) with the Docker socket of a manager mounted.

use super::labels;
use crate::spec::Cluster;
use serde::Serialize;

/// Where Prometheus reads the Swarm API by default (a manager's Docker socket, mounted).
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The label `docker stack deploy` puts on every service of a stack.
const STACK_LABEL: &str = "com.docker.stack.namespace";

#[derive(Debug, Serialize)]
struct PrometheusConfig {
    global: Global,
    scrape_configs: Vec<ScrapeConfig>,
}

#[derive(Debug, Serialize)]
struct Global {
    scrape_interval: String,
    scrape_timeout: String,
}

#[derive(Debug, Serialize)]
struct ScrapeConfig {
    job_name: String,
    metrics_path: String,
    dockerswarm_sd_configs: Vec<SwarmSd>,
    relabel_configs: Vec<Relabel>,
}

#[derive(Debug, Serialize)]
struct SwarmSd {
    host: String,
    role: String,
    refresh_interval: String,
    filters: Vec<Filter>,
}

#[derive(Debug, Serialize)]
struct Filter {
    name: String,
    values: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct Relabel {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    source_labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    separator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replacement: Option<String>,
    action: String,
}

/// Prometheus's meta label for a Docker label: every character that is not a letter, digit
/// or `_` becomes `_`.
fn meta(prefix: &str, docker_label: &str) -> String {
    let name: String = docker_label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__meta_dockerswarm_{prefix}_label_{name}")
}

/// Escapes a literal for a Prometheus (RE2) regular expression.
fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The endpoint kinds of the cluster, in the order the services declare them.
fn endpoint_names(cluster: &Cluster) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for s in &cluster.services {
        for m in &s.metrics {
            if !names.contains(&m.name) {
                names.push(m.name);
            }
        }
    }
    names
}

/// The scrape configuration of `cluster`, reading the Swarm API at `docker_host`. `None` when
/// monitoring is off (no service has a metrics endpoint).
pub fn prometheus_yaml(
    cluster: &Cluster,
    docker_host: &str,
) -> Result<Option<String>, serde_yaml::Error> {
    let names = endpoint_names(cluster);
    if names.is_empty() {
        return Ok(None);
    }
    let network = format!("{}_{}", cluster.name, super::NETWORK);
    let stack_filter = format!("{STACK_LABEL}={}", cluster.name);
    let scrape_configs = names
        .into_iter()
        .map(|name| {
            let port_label = meta("service", &labels::metrics_port(name));
            let path_label = meta("service", &labels::metrics_path(name));
            ScrapeConfig {
                job_name: format!("{}-{name}", cluster.name),
                metrics_path: pgswarm_contract::defaults::METRICS_PATH.into(),
                dockerswarm_sd_configs: vec![SwarmSd {
                    host: docker_host.to_string(),
                    role: "tasks".into(),
                    refresh_interval: "15s".into(),
                    filters: vec![Filter {
                        name: "label".into(),
                        values: vec![stack_filter.clone()],
                    }],
                }],
                relabel_configs: vec![
                    // This stack's services only (the discovery filter asks Docker for the
                    // same; kept here so a copied job cannot pick up another stack).
                    Relabel {
                        source_labels: vec![meta("service", STACK_LABEL)],
                        regex: Some(regex_literal(&cluster.name)),
                        action: "keep".into(),
                        ..Relabel::default()
                    },
                    // Services with this endpoint.
                    Relabel {
                        source_labels: vec![port_label.clone()],
                        regex: Some("[0-9]+".into()),
                        action: "keep".into(),
                        ..Relabel::default()
                    },
                    // Tasks that should run (Swarm keeps finished ones in its task list).
                    Relabel {
                        source_labels: vec!["__meta_dockerswarm_task_desired_state".into()],
                        regex: Some("running".into()),
                        action: "keep".into(),
                        ..Relabel::default()
                    },
                    // The task's address on the cluster's overlay network, not the ingress one.
                    Relabel {
                        source_labels: vec!["__meta_dockerswarm_network_name".into()],
                        regex: Some(regex_literal(&network)),
                        action: "keep".into(),
                        ..Relabel::default()
                    },
                    // Address: the task's IP with the port from the service's label.
                    Relabel {
                        source_labels: vec!["__address__".into(), port_label],
                        separator: Some(";".into()),
                        regex: Some("(.+):[0-9]+;([0-9]+)".into()),
                        target_label: Some("__address__".into()),
                        replacement: Some("${1}:${2}".into()),
                        action: "replace".into(),
                    },
                    Relabel {
                        source_labels: vec![path_label],
                        regex: Some("(/.*)".into()),
                        target_label: Some("__metrics_path__".into()),
                        replacement: Some("${1}".into()),
                        action: "replace".into(),
                        ..Relabel::default()
                    },
                    // Readable target labels: the member (service) and the node it runs on.
                    Relabel {
                        source_labels: vec![meta("service", labels::MEMBER)],
                        target_label: Some("member".into()),
                        action: "replace".into(),
                        ..Relabel::default()
                    },
                    Relabel {
                        source_labels: vec!["__meta_dockerswarm_node_hostname".into()],
                        target_label: Some("node".into()),
                        action: "replace".into(),
                        ..Relabel::default()
                    },
                    Relabel {
                        source_labels: vec![meta("service", labels::CLUSTER)],
                        target_label: Some("cluster".into()),
                        action: "replace".into(),
                        ..Relabel::default()
                    },
                ],
            }
        })
        .collect();
    let config = PrometheusConfig {
        global: Global {
            scrape_interval: "15s".into(),
            scrape_timeout: "10s".into(),
        },
        scrape_configs,
    };
    let header = format!(
        "# Prometheus scrape configuration for pgswarm cluster {name}, generated by swarmctl.\n\
         # Targets are the stack's running tasks, found through the Swarm API ({docker_host});\n\
         # Prometheus must be attached to the overlay network {network} to reach them.\n",
        name = cluster.name,
    );
    Ok(Some(format!("{header}{}", serde_yaml::to_string(&config)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    fn config(text: &str) -> serde_yaml::Value {
        let cluster = spec::parse(text).expect("valid").cluster;
        let yaml = prometheus_yaml(&cluster, DEFAULT_DOCKER_HOST)
            .expect("serializes")
            .expect("monitoring is on");
        serde_yaml::from_str(&yaml).expect("yaml")
    }

    #[test]
    fn one_job_per_endpoint_kind_filtered_on_the_stack() {
        let c = config("name: demo\ntopology: patroni\n");
        let jobs: Vec<&str> = c["scrape_configs"]
            .as_sequence()
            .expect("jobs")
            .iter()
            .map(|j| j["job_name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            jobs,
            [
                "demo-postgres",
                "demo-patroni",
                "demo-etcd",
                "demo-haproxy",
                "demo-pgbouncer"
            ]
        );
        let job = &c["scrape_configs"][0];
        let sd = &job["dockerswarm_sd_configs"][0];
        assert_eq!(sd["role"], "tasks");
        assert_eq!(
            sd["filters"][0]["values"][0],
            "com.docker.stack.namespace=demo"
        );
        let relabel = serde_yaml::to_string(&job["relabel_configs"]).expect("yaml");
        assert!(
            relabel.contains("__meta_dockerswarm_service_label_pgswarm_metrics_postgres_port"),
            "{relabel}"
        );
        assert!(relabel.contains("demo_net"), "{relabel}");
    }

    #[test]
    fn no_configuration_when_monitoring_is_off() {
        let cluster = spec::parse("name: demo\ntopology: patroni\nmonitoring: {enabled: false}\n")
            .expect("valid")
            .cluster;
        assert!(prometheus_yaml(&cluster, DEFAULT_DOCKER_HOST)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn regex_literals_are_escaped() {
        assert_eq!(regex_literal("a.b-c_d"), "a\\.b-c_d");
    }
}
