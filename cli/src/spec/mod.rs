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
    Cluster, MetricsEndpoint, Network, PortMode, PublishedPort, ResourceSet, Resources, Service,
    ServiceKind, Topology, Validated, VolumeOptions, DEFAULT_IMAGE,
};
pub use starter::{default_cluster, default_spec_text, starter_spec};
pub use validate::{
    slot_name, volume_name, MAX_DATA_MEMBERS, MAX_ETCD_MEMBERS, POOLER_SERVICE, ROUTER_SERVICE,
};

/// Deepest nesting of sequences and mappings a spec may have. A real spec nests five levels;
/// the limit refuses pathological documents at once instead of spending seconds on them.
pub const MAX_NESTING: usize = 64;

/// Parses and validates a spec. Never panics, whatever `text` holds.
pub fn parse(text: &str) -> Result<Validated, SpecError> {
    // Some Windows editors start a UTF-8 file with a byte-order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(location) = too_deep(text) {
        return Err(single(
            Rule::Yaml,
            Some(location),
            format!(
                "the spec nests sequences or mappings more than {MAX_NESTING} levels deep: a \
                 cluster spec needs only a few levels; check for unbalanced `[` or `{{`"
            ),
        ));
    }
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

/// Where flow or block nesting first goes deeper than [`MAX_NESTING`], found in one pass over
/// the text (quoted scalars and comments skipped) before any parser recurses into it.
fn too_deep(text: &str) -> Option<Location> {
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        // Block nesting takes at least one column per level (`- - - x` or indentation).
        if flow == 0 && indent > 2 * MAX_NESTING && !line.trim().is_empty() {
            return Some(Location {
                line: i + 1,
                column: indent + 1,
            });
        }
        let mut quote: Option<char> = None;
        for (col, c) in line.chars().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') if flow > 0 => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow > MAX_NESTING {
                        return Some(Location {
                            line: i + 1,
                            column: col + 1,
                        });
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
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
    fn a_leading_byte_order_mark_is_not_content() {
        let spec = "\u{feff}name: demo\ntopology: patroni\n";
        assert!(parse(spec).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_at_once() {
        let deep = format!("name: demo\ntopology: patroni\nx: {}", "[".repeat(30_000));
        let err = parse(&deep).unwrap_err();
        let text = err.render("s");
        assert!(text.contains("more than 64 levels"), "{text}");
        assert!(text.contains("s:3:"), "{text}");
        let deep_map = format!(
            "name: demo\ntopology: patroni\nx: {}1{}",
            "{a: ".repeat(70),
            "}".repeat(70)
        );
        assert!(parse(&deep_map).unwrap_err().render("s").contains("levels"));
        // Ten levels are fine as far as nesting goes (the field itself is unknown).
        let fine = format!("name: demo\nx: {}1{}", "[".repeat(10), "]".repeat(10));
        assert!(!parse(&fine).unwrap_err().render("s").contains("levels"));
    }

    #[test]
    fn internal_type_names_do_not_leak() {
        let err = parse("name: demo\ntopology: patroni\netcd: 3\n").unwrap_err();
        let text = err.render("s");
        assert!(!text.contains("Raw"), "{text}");
        assert!(text.contains("expected a mapping"), "{text}");
    }
}
