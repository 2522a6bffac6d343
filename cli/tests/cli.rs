//! Black-box tests of the `swarmctl` binary: exit codes (0 ok, 1 invalid spec, 2 other
//! errors), messages, standard input and output files.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn swarmctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("swarmctl starts");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("stdin written");
    }
    child.wait_with_output().expect("swarmctl ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../stacks")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn validate_a_good_spec_exits_0_with_a_summary() {
    let out = swarmctl(&["validate", "-f", &example("patroni.spec.yml")], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("pg-ha: valid patroni cluster"), "{stdout}");
    assert!(stdout.contains("etcd: etcd1, etcd2, etcd3"), "{stdout}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn validate_a_bad_spec_exits_1_naming_field_line_and_fix() {
    let path = fixture("bad/etcd-count-even.yml");
    let out = swarmctl(&["validate", "-f", &path], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "error[etcd-count]: etcd.members: etcd needs an odd number of members (3 or 5), got 2"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("etcd-count-even.yml:4:12"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn generate_a_bad_spec_exits_1_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("stack.yml");
    let target_s = target.display().to_string();
    let out = swarmctl(
        &[
            "generate",
            "-f",
            &fixture("bad/unknown-topology.yml"),
            "-o",
            &target_s,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown topology `galera`"));
    assert!(!target.exists());
}

#[test]
fn an_unreadable_spec_exits_2() {
    let out = swarmctl(&["validate", "-f", "/nonexistent/spec.yml"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read the spec /nonexistent/spec.yml"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_2() {
    assert_eq!(swarmctl(&["frobnicate"], None).status.code(), Some(2));
    assert_eq!(
        swarmctl(&["init", "--topology", "galera"], None)
            .status
            .code(),
        Some(2)
    );
    let out = swarmctl(
        &["init", "--topology", "patroni", "--name", "Not_Valid"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a valid cluster name"));
}

#[test]
fn an_unwritable_output_exits_2() {
    let out = swarmctl(
        &[
            "generate",
            "-f",
            &example("patroni.spec.yml"),
            "-o",
            "/nonexistent/dir/stack.yml",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot write"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn generate_reads_stdin_and_writes_stdout() {
    let spec = std::fs::read_to_string(example("citus.spec.yml")).expect("example");
    let out = swarmctl(&["generate", "-f", "-"], Some(&spec));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(example("citus.stack.yml")).expect("stack");
    assert_eq!(text(&out.stdout), committed);
}

#[test]
fn generate_writes_the_output_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("stack.yml");
    let target_s = target.display().to_string();
    let out = swarmctl(
        &[
            "generate",
            "-f",
            &example("replication.spec.yml"),
            "-o",
            &target_s,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&target).expect("written");
    let committed = std::fs::read_to_string(example("replication.stack.yml")).expect("stack");
    assert_eq!(written, committed);
    // Only the stack file is left behind, no temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
}

#[test]
fn warnings_go_to_stderr_and_do_not_fail() {
    let out = swarmctl(&["generate", "-f", &fixture("warn/single-etcd.yml")], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("warning[single-etcd]"));
    assert!(text(&out.stdout).contains("services:"));
}

#[test]
fn init_prints_a_starter_that_validates_for_every_topology() {
    for topology in ["replication", "patroni", "citus"] {
        let out = swarmctl(&["init", "--topology", topology, "--name", "shop"], None);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let starter = text(&out.stdout);
        assert!(starter.contains("name: shop"));
        assert!(starter.contains(&format!("topology: {topology}")));
        assert!(
            starter
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
                > 5
        );
        let check = swarmctl(&["validate", "-f", "-"], Some(&starter));
        assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
        assert!(check.stderr.is_empty(), "{}", text(&check.stderr));
    }
}

#[test]
fn an_empty_stdin_is_an_invalid_spec() {
    let out = swarmctl(&["validate", "-f", "-"], Some(""));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the spec is empty"));
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let out = swarmctl(&["--help"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains(
        "Exit codes: 0 success, 1 invalid spec or failed checks (doctor), 2 any other error"
    ));
    let out = swarmctl(&["generate", "--help"], None);
    assert!(text(&out.stdout).contains("swarmctl generate -f demo.yml -o demo.stack.yml"));
}

#[test]
fn up_checks_an_image_override_with_the_specs_rule_before_touching_docker() {
    // Refused before any connection to a daemon: the validated cluster is not changed
    // behind its rules' back.
    let out = swarmctl(&["up", "--image", "Not An Image"], None);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("--image") && err.contains("spaces"), "{err}");
}
