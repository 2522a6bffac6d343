//! Every validation rule has a fixture: a spec under `fixtures/bad/` (errors) or
//! `fixtures/warn/` (warnings) and, beside it, the lines the diagnostics must contain.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use swarmctl::spec::{self, Rule};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixture in {}", dir.display());
    out
}

/// Checks the rendered diagnostics of `path` against its `.expected` file; returns the rules hit.
fn check(path: &Path, expect_valid: bool) -> Vec<Rule> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).expect("fixture readable");
    let expected_path = path.with_extension("expected");
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|_| panic!("{name}: {} is missing", expected_path.display()));
    let (rendered, rules) = match spec::parse(&text) {
        Ok(v) => {
            assert!(expect_valid, "{name}: expected errors, the spec validated");
            let rendered: Vec<String> = v.warnings.iter().map(|w| w.render(&name)).collect();
            (
                rendered.join("\n"),
                v.warnings.iter().map(|w| w.rule).collect(),
            )
        }
        Err(e) => {
            assert!(
                !expect_valid,
                "{name}: expected only warnings, got:\n{}",
                e.render(&name)
            );
            let rules = e.errors.iter().chain(&e.warnings).map(|p| p.rule).collect();
            (e.render(&name), rules)
        }
    };
    let lines: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "{name}: the .expected file is empty");
    for line in lines {
        assert!(
            rendered.contains(line),
            "{name}: expected\n  {line}\nin\n{rendered}"
        );
    }
    rules
}

#[test]
fn every_bad_fixture_fails_with_its_message() {
    for path in fixtures("bad") {
        check(&path, false);
    }
}

#[test]
fn every_warning_fixture_validates_with_its_warning() {
    for path in fixtures("warn") {
        check(&path, true);
    }
}

#[test]
fn every_rule_has_a_fixture() {
    let mut hit = BTreeSet::new();
    for path in fixtures("bad") {
        hit.extend(check(&path, false));
    }
    for path in fixtures("warn") {
        hit.extend(check(&path, true));
    }
    let missing: Vec<&str> = Rule::ALL
        .iter()
        .filter(|r| !hit.contains(r))
        .map(|r| r.id())
        .collect();
    assert!(missing.is_empty(), "rules without a fixture: {missing:?}");
}
