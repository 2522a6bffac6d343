//! The judge of a stack file is the Docker CLI: `docker stack config -c FILE` validates it
//! against the schema `docker stack deploy` uses, without a daemon. Every committed stack and
//! stacks from random valid specs must pass.

mod common;

use proptest::prelude::*;
use std::path::Path;
use std::process::Command;
use swarmctl::{render, spec};

/// Runs `docker stack config -c path`; the error carries Docker's own message.
fn docker_stack_config(path: &Path) -> Result<(), String> {
    let out = Command::new("docker")
        .args(["stack", "config", "-c"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run the Docker CLI (`docker`), which this test needs: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "docker stack config -c {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
#[ignore = "needs the Docker CLI (scripts/test.sh runs it)"]
fn every_committed_stack_passes_docker_stack_config() {
    let dir = common::repo_root().join("stacks");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("stacks/").flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with(".stack.yml") {
            if let Err(e) = docker_stack_config(&path) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected a stack per topology, found {checked}"
    );
}

/// The check itself must be able to fail: a stack with an unknown key is refused.
#[test]
#[ignore = "needs the Docker CLI (scripts/test.sh runs it)"]
fn docker_stack_config_refuses_a_broken_stack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.yml");
    std::fs::write(
        &path,
        "version: \"3.8\"\nservices:\n  a:\n    image: x\n    deploy: {replicas: one}\n",
    )
    .expect("write");
    let err = docker_stack_config(&path).expect_err("a broken stack must fail");
    assert!(err.contains("replicas"), "{err}");
}

proptest! {
    // Each case spawns the Docker CLI; a modest number keeps the test quick.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    #[ignore = "needs the Docker CLI (scripts/test.sh runs it)"]
    fn stacks_of_random_valid_specs_pass_docker_stack_config(text in common::valid_spec()) {
        let validated = spec::parse(&text)
            .map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render("spec"))))?;
        let yaml = render::stack_yaml(&validated.cluster)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("stack.yml");
        std::fs::write(&path, &yaml).map_err(|e| TestCaseError::fail(e.to_string()))?;
        docker_stack_config(&path).map_err(|e| TestCaseError::fail(format!("{e}\nspec:\n{text}")))?;
    }
}
