//! The README's cluster spec reference stays true: its full examples are exactly what
//! `swarmctl init` prints, and it lists every validation rule.

mod common;

use swarmctl::spec::{self, Rule, Topology};

/// The "## Cluster spec reference" section of the README.
fn reference() -> String {
    let path = common::repo_root().join("README.md");
    let text = std::fs::read_to_string(&path).expect("README.md readable");
    let start = text
        .find("## Cluster spec reference")
        .expect("README.md has a `## Cluster spec reference` section");
    let rest = &text[start + 2..];
    let end = rest.find("\n## ").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}

fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + "```yaml\n".len()..];
        let Some(end) = body.find("```") else { break };
        blocks.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    blocks
}

#[test]
fn the_full_examples_are_the_init_starters() {
    let blocks = yaml_blocks(&reference());
    for topology in Topology::ALL {
        let starter = spec::starter_spec(topology, "demo").expect("starter");
        assert!(
            blocks.contains(&starter),
            "the README's {topology} example differs from `swarmctl init --topology {topology}`; \
             paste the current output into the README"
        );
    }
}

#[test]
fn every_rule_is_listed() {
    let text = reference();
    for rule in Rule::ALL {
        assert!(
            text.contains(&format!("`{}`", rule.id())),
            "rule `{}` is missing from the README's Rules list",
            rule.id()
        );
    }
}
