//! Node labels that pin members to nodes.
//!
//! Swarm has no StatefulSet: a member keeps its identity and its volume by always running on
//! the same node, which a placement constraint on a node label achieves. Each member gets a
//! label of its own (`pgswarm.<cluster>.<member>=true`), so several members may share a node
//! in a test swarm and be kept apart in production, just by where the labels are put.
//! [`member_label_key`] is the one definition of that key; `label-nodes` uses it too.

/// Value the generated member label must have on the node that runs the member.
pub const MEMBER_LABEL_VALUE: &str = "true";

/// The node label key that pins `member` of `cluster`: `pgswarm.<cluster>.<member>`.
pub fn member_label_key(cluster: &str, member: &str) -> String {
    format!("pgswarm.{cluster}.{member}")
}

/// The placement constraint requiring node label `key` to equal `value`.
pub fn label_constraint(key: &str, value: &str) -> String {
    format!("node.labels.{key} == {value}")
}

/// The placement constraint of a member's generated label.
pub fn member_constraint(cluster: &str, member: &str) -> String {
    label_constraint(&member_label_key(cluster, member), MEMBER_LABEL_VALUE)
}

/// The spread preference target for a zone label key (`node.labels.<key>`).
pub fn spread_target(zone_label: &str) -> String {
    format!("node.labels.{zone_label}")
}

/// Whether `key` is usable as a node label key in a constraint: starts with a letter or digit,
/// then letters, digits, `.`, `-`, `_` (no spaces, no operators).
pub fn is_valid_label_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !key.ends_with('.')
        && !key.contains("..")
}

/// Whether `value` is usable as a label value in a constraint (no spaces, no operators).
pub fn is_valid_label_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'))
}

/// Where a member may run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// Key of the generated member label the node must carry (`== true`), when used.
    pub member_label: Option<String>,
    /// User node labels the node must carry, key to value (e.g. `purpose: master`).
    pub labels: Vec<(String, String)>,
    /// Further constraints as written in the spec (`node.role == manager`).
    pub constraints: Vec<String>,
    /// Zone label key to spread over, when given.
    pub spread: Option<String>,
}

impl Placement {
    /// Every placement constraint, in a stable order: generated label, user labels, raw ones.
    pub fn all_constraints(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(key) = &self.member_label {
            out.push(label_constraint(key, MEMBER_LABEL_VALUE));
        }
        out.extend(self.labels.iter().map(|(k, v)| label_constraint(k, v)));
        out.extend(self.constraints.iter().cloned());
        out
    }

    /// True when no node can satisfy both placements: both require the same node label key
    /// with different values (e.g. `purpose == master` and `purpose == worker`).
    pub fn is_disjoint_from(&self, other: &Placement) -> bool {
        self.labels
            .iter()
            .any(|(k, v)| other.labels.iter().any(|(ok, ov)| ok == k && ov != v))
    }
}

/// Parses a raw constraint as Swarm accepts it: `<field> == <value>` or `<field> != <value>`,
/// where field is `node.id`, `node.hostname`, `node.role`, `node.platform.os`,
/// `node.platform.arch`, `node.labels.<key>` or `engine.labels.<key>`.
/// Returns a description of what is wrong otherwise.
pub fn check_constraint(constraint: &str) -> Result<(), String> {
    let (field, value) = if let Some((f, v)) = constraint.split_once("==") {
        (f, v)
    } else if let Some((f, v)) = constraint.split_once("!=") {
        (f, v)
    } else {
        return Err("it has no `==` or `!=` (Swarm constraints support only these two)".into());
    };
    let field = field.trim();
    let value = value.trim();
    if value.is_empty() || value.contains("==") || value.contains("!=") {
        return Err("it needs exactly one value after the operator".into());
    }
    if value.chars().any(char::is_whitespace) {
        return Err(format!("the value `{value}` contains spaces"));
    }
    let known = [
        "node.id",
        "node.hostname",
        "node.role",
        "node.platform.os",
        "node.platform.arch",
    ];
    if known.contains(&field) {
        return Ok(());
    }
    for prefix in ["node.labels.", "engine.labels."] {
        if let Some(key) = field.strip_prefix(prefix) {
            return if is_valid_label_key(key) {
                Ok(())
            } else {
                Err(format!("`{key}` is not a valid label key"))
            };
        }
    }
    Err(format!(
        "`{field}` is not a constraint field Swarm knows (node.id, node.hostname, node.role, \
         node.platform.os, node.platform.arch, node.labels.<key>, engine.labels.<key>)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_label_is_cluster_and_member_scoped() {
        assert_eq!(member_label_key("demo", "pg1"), "pgswarm.demo.pg1");
        assert_eq!(
            member_constraint("demo", "pg1"),
            "node.labels.pgswarm.demo.pg1 == true"
        );
    }

    #[test]
    fn constraints_are_checked_like_swarm_does() {
        assert!(check_constraint("node.role == manager").is_ok());
        assert!(check_constraint("node.labels.purpose != worker").is_ok());
        assert!(check_constraint("engine.labels.disk==ssd").is_ok());
        assert!(check_constraint("node.labels.purpose = worker").is_err());
        assert!(check_constraint("node.cpu == 4").is_err());
        assert!(check_constraint("node.labels. == x").is_err());
        assert!(check_constraint("node.role == ").is_err());
        assert!(check_constraint("node.role == a == b").is_err());
    }

    #[test]
    fn label_values_that_differ_on_one_key_are_disjoint() {
        let master = Placement {
            labels: vec![("purpose".into(), "master".into())],
            ..Placement::default()
        };
        let worker = Placement {
            labels: vec![("purpose".into(), "worker".into())],
            ..Placement::default()
        };
        assert!(master.is_disjoint_from(&worker));
        assert!(!master.is_disjoint_from(&master));
        assert!(!master.is_disjoint_from(&Placement::default()));
    }
}
