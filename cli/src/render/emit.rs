//! A small YAML writer for stack files that every Docker CLI reads the same way.
//!
//! serde_yaml quotes a string only when YAML 1.2 would read it as something else, so `off`,
//! `no` or `y` come out bare — and Docker CLIs built on a YAML 1.1 parser read those as
//! booleans (`PGSWARM_SYNCHRONOUS_MODE: off` would arrive as `false`). This writer leaves a
//! string bare only when it is plainly a string in both YAML versions, and quotes it otherwise.

use serde_yaml::Value;
use std::fmt::Write;

/// Words YAML 1.1 reads as booleans or null, in any case.
const YAML11_WORDS: &[&str] = &["y", "n", "yes", "no", "true", "false", "on", "off", "null"];

/// The value as block-style YAML, ending with a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Mapping(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Sequence(s) if !s.is_empty() => sequence(&mut out, s, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// True when `s` can be written bare and still reads as this string in YAML 1.1 and 1.2.
fn is_plain_safe(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '/' || first == '_')
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | ':' | ',' | '=')
        })
        && !s.ends_with(':')
        && !s.contains(": ")
        && !YAML11_WORDS.contains(&s.to_ascii_lowercase().as_str())
}

fn string(s: &str) -> String {
    if is_plain_safe(s) {
        return s.to_string();
    }
    // Single quotes need no escapes (only `'` doubled) and read the same in both versions.
    if s.chars().all(|c| matches!(c, ' '..='~')) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    // Otherwise double quotes with every character outside printable ASCII escaped: YAML
    // treats some non-ASCII characters (U+0085, U+2028) as line breaks inside quotes.
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// A scalar, or an empty collection, on one line.
fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Sequence(s) if s.is_empty() => "[]".into(),
        Value::Mapping(m) if m.is_empty() => "{}".into(),
        Value::Tagged(t) => inline(&t.value),
        // Non-empty collections are never inline; callers check with `is_block`.
        Value::Sequence(_) | Value::Mapping(_) => String::new(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(t) => is_block(&t.value),
        _ => false,
    }
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

fn mapping(out: &mut String, m: &serde_yaml::Mapping, indent: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first entry of a mapping inside a sequence item follows its "- " directly.
        if !(i == 0 && out.ends_with("- ")) {
            pad(out, indent);
        }
        let _ = write!(out, "{}:", inline(untag(k)));
        entry_value(out, v, indent);
    }
}

fn entry_value(out: &mut String, v: &Value, indent: usize) {
    let v = untag(v);
    if is_block(v) {
        out.push('\n');
        match v {
            Value::Mapping(m) => mapping(out, m, indent + 2),
            Value::Sequence(s) => sequence(out, s, indent + 2),
            _ => {}
        }
    } else {
        out.push(' ');
        out.push_str(&inline(v));
        out.push('\n');
    }
}

fn sequence(out: &mut String, s: &[Value], indent: usize) {
    for item in s {
        pad(out, indent);
        out.push_str("- ");
        match untag(item) {
            Value::Mapping(m) if !m.is_empty() => mapping(out, m, indent + 2),
            Value::Sequence(inner) if !inner.is_empty() => {
                out.push('\n');
                sequence(out, inner, indent + 2);
            }
            other => {
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn yaml11_booleans_and_numbers_are_quoted() {
        let v: Value = serde_yaml::from_str(
            "a: 'off'\nb: 'no'\nc: 'Y'\nd: '1:20'\ne: '010'\nf: pgswarm:latest\ng: '.inf'\nh: ''\n",
        )
        .expect("yaml");
        let text = to_yaml(&v);
        for quoted in [
            "a: 'off'",
            "b: 'no'",
            "c: 'Y'",
            "d: '1:20'",
            "e: '010'",
            "g: '.inf'",
            "h: ''",
        ] {
            assert!(text.contains(quoted), "{quoted} in\n{text}");
        }
        assert!(text.contains("f: pgswarm:latest"), "{text}");
    }

    #[test]
    fn nested_structures_round_trip() {
        let src = "services:\n  a:\n    list:\n    - x\n    - k: 1\n      m: [1, 2]\n      n: {}\n    - [a, [b]]\n    e: []\n    t: true\n    s: \"a: b # c\"\n";
        let v: Value = serde_yaml::from_str(src).expect("yaml");
        let text = to_yaml(&v);
        let back: Value = serde_yaml::from_str(&text).expect("re-parse");
        assert_eq!(back, v, "{text}");
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            ".*".prop_map(Value::String),
            "[a-z:, .#-]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Sequence),
                prop::collection::vec(("[a-zA-Z0-9 .:_-]{0,8}", inner), 0..5).prop_map(|entries| {
                    let mut m = serde_yaml::Mapping::new();
                    for (k, v) in entries {
                        m.insert(Value::String(k), v);
                    }
                    Value::Mapping(m)
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_round_trips(v in arb_value()) {
            let text = to_yaml(&v);
            let back: Value = serde_yaml::from_str(&text)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, v, "{}", text);
        }
    }
}
