//! The cluster spec: the YAML a user writes to describe a cluster, and the validated model it
//! becomes.
//!
//! Parsing has two steps, so each error can say precisely what is wrong: serde types that
//! reject unknown fields ([`raw`]), then validation rules that apply defaults and check the
//! whole ([`validate`]), producing a [`Cluster`] or every [`Problem`] found, each naming the
//! field, its line and column, and the fix.

mod diag;
mod locate;
mod model;
pub mod raw;
mod starter;
mod validate;

pub use diag::{FieldPath, Location, Problem, Rule, Seg, Severity, SpecError};
pub use model::{
    Cluster, Network, PortMode, PublishedPort, ResourceSet, Resources, Service, ServiceKind,
    Topology, Validated, VolumeOptions, DEFAULT_IMAGE,
};
pub use starter::{default_cluster, default_spec_text, starter_spec};
pub use validate::{
    slot_name, volume_name, MAX_DATA_MEMBERS, MAX_ETCD_MEMBERS, POOLER_SERVICE, ROUTER_SERVICE,
};

/// Parses and validates a spec. Never panics, whatever `text` holds.
pub fn parse(text: &str) -> Result<Validated, SpecError> {
    let is_empty = text.trim().is_empty()
        || matches!(
            serde_yaml::from_str::<serde_yaml::Value>(text),
            Ok(serde_yaml::Value::Null)
        );
    if is_empty {
        return Err(single(
            Rule::Yaml,
            None,
            "the spec is empty: start from `swarmctl init --topology patroni`".into(),
        ));
    }
    let raw: raw::RawSpec = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => return Err(yaml_error(&err)),
    };
    validate::validate(raw, text)
}

fn single(rule: Rule, location: Option<Location>, message: String) -> SpecError {
    SpecError {
        errors: vec![Problem {
            rule,
            path: String::new(),
            location,
            message,
        }],
        warnings: Vec::new(),
    }
}

/// A serde_yaml error as a problem: its message without the position suffix (the position goes
/// into the location), with internal type names replaced by what the user wrote.
fn yaml_error(err: &serde_yaml::Error) -> SpecError {
    let location = err.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    let mut message = err.to_string();
    if let Some(l) = err.location() {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(pos) = message.rfind(&suffix) {
            message.replace_range(pos..pos + suffix.len(), "");
        }
    }
    // "expected struct RawEtcd" means "expected a mapping" to anyone reading a spec.
    while let Some(start) = message.find("struct Raw") {
        let name_start = start + "struct ".len();
        let end = message[name_start..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(message.len(), |i| name_start + i);
        message.replace_range(start..end, "a mapping");
    }
    if message.contains("unknown field") {
        message.push_str(" (check the spelling, or the section the field belongs to)");
    }
    single(Rule::Yaml, location, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_name_the_field_and_line() {
        let err = parse("name: demo\ntopology: patroni\netcd:\n  memberz: 3\n").unwrap_err();
        let text = err.render("spec.yml");
        assert!(
            text.contains("error[yaml]: etcd: unknown field `memberz`"),
            "{text}"
        );
        assert!(text.contains("--> spec.yml:4:3"), "{text}");
    }

    #[test]
    fn internal_type_names_do_not_leak() {
        let err = parse("name: demo\ntopology: patroni\netcd: 3\n").unwrap_err();
        let text = err.render("s");
        assert!(!text.contains("Raw"), "{text}");
        assert!(text.contains("expected a mapping"), "{text}");
    }
}
