//! Specs shipped in the binary: the commented starters `swarmctl init` prints, and the default
//! cluster `swarmctl up` deploys.

use super::{parse, SpecError, Topology, Validated};

const REPLICATION: &str = include_str!("starters/replication.yml");
const PATRONI: &str = include_str!("starters/patroni.yml");
const CITUS: &str = include_str!("starters/citus.yml");
const DEFAULT: &str = include_str!("starters/default.yml");

/// The placeholder for the cluster name in the starters.
const NAME_PLACEHOLDER: &str = "__NAME__";

/// A commented starter spec for `topology`, named `name`. Fails (with the usual cluster-name
/// error) when `name` is not a valid cluster name; the result always validates.
pub fn starter_spec(topology: Topology, name: &str) -> Result<String, SpecError> {
    let template = match topology {
        Topology::Replication => REPLICATION,
        Topology::Patroni => PATRONI,
        Topology::Citus => CITUS,
    };
    let text = template.replace(NAME_PLACEHOLDER, name);
    parse(&text)?;
    Ok(text)
}

/// The text of the default spec (a Patroni cluster for a single-node swarm: 3 members, 3 etcd,
/// router on 5000/5001 and pooler on 6432, published in host mode so that it works without
/// IPVS, which the ingress mesh and service virtual IPs need).
pub fn default_spec_text() -> &'static str {
    DEFAULT
}

/// The default spec, validated.
pub fn default_cluster() -> Result<Validated, SpecError> {
    parse(DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_starter_validates_without_warnings() {
        for topology in Topology::ALL {
            let text = starter_spec(topology, "demo").expect("starter is valid");
            let validated = parse(&text).expect("valid");
            assert!(
                validated.warnings.is_empty(),
                "{topology}: {:?}",
                validated.warnings
            );
            assert_eq!(validated.cluster.topology, topology);
            assert_eq!(validated.cluster.name, "demo");
        }
    }

    #[test]
    fn a_bad_name_is_refused_with_the_cluster_name_rule() {
        let err = starter_spec(Topology::Patroni, "Bad_Name").unwrap_err();
        assert_eq!(err.errors[0].rule, super::super::Rule::ClusterName);
    }

    #[test]
    fn the_default_cluster_is_the_documented_one() {
        let v = default_cluster().expect("default spec is valid");
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        let c = v.cluster;
        assert_eq!(c.topology, Topology::Patroni);
        assert_eq!(c.data_members().count(), 3);
        assert_eq!(c.etcd_members().count(), 3);
        assert_eq!(c.router_ports(), Some((5000, 5001, None)));
        let pooler = c.pooler().expect("pooler");
        assert_eq!(pooler.ports[0].port, 6432);
    }
}
