//! `swarmctl`'s swarm operations against the real Docker daemon in swarm mode (one node
//! carrying several members): label-nodes, deploy --wait, status, switchover, doctor, up and
//! down, and the bad inputs each command must refuse clearly.
//!
//! The image is built once per run with `scripts/build-image.sh` under the tag the swarm
//! end-to-end suite uses (`PGSWARM_IMAGE`, default `pgswarm:e2e`), unless
//! `PGSWARM_SKIP_IMAGE_BUILD=1`. A swarm is initialised on loopback when the engine has none.
//! Every test names its cluster uniquely and removes its stack, volumes, secrets and node
//! labels when it ends, also when it fails (`PGSWARM_KEEP=1` keeps them for a post-mortem).
//! On a machine without Docker, `PGSWARM_SKIP_SWARM=1` (as `scripts/test.sh` documents)
//! leaves these tests out, saying so; otherwise a missing daemon fails them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

fn swarmctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmctl"));
    cmd.stdin(Stdio::null());
    cmd
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn image() -> String {
    std::env::var("PGSWARM_IMAGE").unwrap_or_else(|_| "pgswarm:e2e".to_string())
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `docker ARGS`; returns stdout, panicking with stderr on failure.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker command line runs");
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The swarm and the image, checked once. The swarm must exist already: `scripts/test.sh`
/// initialises one on loopback when the engine has none and leaves it again, so this test
/// never changes the engine's swarm state.
fn prerequisites() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        assert_eq!(
            state.trim(),
            "active",
            "this test needs a swarm: run it through scripts/test.sh (which initialises a \
             single-node swarm on loopback and leaves it again), or `docker swarm init` first"
        );
        if std::env::var("PGSWARM_SKIP_IMAGE_BUILD").as_deref() != Ok("1") {
            let status = Command::new(repo().join("scripts/build-image.sh"))
                .arg(image())
                .stdin(Stdio::null())
                .status()
                .expect("scripts/build-image.sh runs");
            assert!(
                status.success(),
                "scripts/build-image.sh {} failed",
                image()
            );
        }
        docker(&["image", "inspect", "--format", "{{.Id}}", &image()]);
    });
}

/// Heavy tests (whole clusters) one at a time: the machine has two cores.
fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Replaces `from` with `to` in `text`, insisting that `from` is there.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the spec has no {from:?}");
    text.replacen(from, to, 1)
}

/// A cluster spec written to a temporary file; removes everything of the cluster on drop.
struct TestCluster {
    name: String,
    spec: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    fn new(name: &str, text: &str) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = dir.path().join(format!("{name}.yml"));
        std::fs::write(&spec, text).expect("spec written");
        TestCluster {
            name: name.to_string(),
            spec,
            _dir: dir,
        }
    }

    /// `swarmctl ARGS -f SPEC` (`-f SPEC` before a `--`, whose rest belongs to psql).
    fn run(&self, args: &[&str]) -> Output {
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        swarmctl()
            .args(&args[..split])
            .arg("-f")
            .arg(&self.spec)
            .args(&args[split..])
            .output()
            .expect("swarmctl runs")
    }

    fn run_ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "swarmctl {} failed ({}):\n{stdout}\n{stderr}",
            args.join(" "),
            out.status
        );
        (stdout, stderr)
    }

    fn status_json(&self) -> Value {
        let (stdout, _) = self.run_ok(&["status", "--output", "json"]);
        serde_json::from_str(&stdout).expect("status --output json prints JSON")
    }

    fn node_labels(&self) -> Vec<String> {
        let json = docker(&[
            "node",
            "inspect",
            "self",
            "--format",
            "{{json .Spec.Labels}}",
        ]);
        let labels: serde_json::Map<String, Value> =
            serde_json::from_str(json.trim()).unwrap_or_default();
        let prefix = format!("pgswarm.{}.", self.name);
        labels
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::env::var("PGSWARM_KEEP").as_deref() == Ok("1") {
            eprintln!(
                "PGSWARM_KEEP=1: cluster {} kept; remove it with `swarmctl down -f {} --volumes \
                 --secrets`",
                self.name,
                self.spec.display()
            );
            return;
        }
        let _ = self.run(&["down", "--volumes", "--secrets"]);
        let _ = self.run(&["label-nodes", "--remove"]);
    }
}

/// Fails when a one-off task (service or container) of cluster `name` is left behind.
fn assert_no_job_left(name: &str) {
    let jobs = docker(&[
        "service",
        "ls",
        "--filter",
        "label=pgswarm.job",
        "--format",
        "{{.Name}}",
    ]);
    assert!(
        !jobs.lines().any(|l| l.starts_with(name)),
        "a one-off task was left behind: {jobs}"
    );
    let containers = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=pgswarm.job",
        "--filter",
        &format!("label=com.docker.stack.namespace={name}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(
        containers.trim().is_empty(),
        "a one-off task's container was left behind: {containers}"
    );
}

/// The patroni example of `stacks/`, renamed, on free ports, with the test image.
fn patroni_example(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("stacks/patroni.spec.yml"))
        .expect("stacks/patroni.spec.yml");
    let text = replace(&text, "name: pg-ha", &format!("name: {name}"));
    let text = replace(&text, "rw_port: 5000", &format!("rw_port: {}", free_port()));
    let text = replace(&text, "ro_port: 5001", &format!("ro_port: {}", free_port()));
    let text = replace(&text, "port: 6432", &format!("port: {}", free_port()));
    format!("{text}\nimage: {}\n", image())
}

fn leaders(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["role"] == "leader")
        .map(|m| m["member"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
#[ignore = "needs Docker, a swarm and the image (scripts/test.sh runs it)"]
fn label_nodes_plans_applies_and_a_second_run_changes_nothing() {
    prerequisites();
    let name = unique_name("opslabel");
    let c = TestCluster::new(&name, &format!("name: {name}\ntopology: patroni\n"));

    let (plan, warnings) = c.run_ok(&["label-nodes", "--dry-run"]);
    for member in ["pg1", "pg2", "pg3", "etcd1", "etcd2", "etcd3"] {
        assert!(
            plan.contains(&format!("pgswarm.{name}.{member}=true")),
            "{plan}"
        );
    }
    assert!(plan.contains("dry run"), "{plan}");
    assert!(warnings.contains("share node"), "{warnings}");
    assert!(c.node_labels().is_empty(), "--dry-run changed labels");

    let (applied, _) = c.run_ok(&["label-nodes"]);
    assert!(
        applied.contains("updated the labels of 1 node(s)"),
        "{applied}"
    );
    assert_eq!(c.node_labels().len(), 6);

    let (second, _) = c.run_ok(&["label-nodes"]);
    assert!(second.contains("no change"), "{second}");
    assert!(!second.contains(" add\n"), "{second}");

    // A member that disappears from the spec loses its label.
    std::fs::write(
        &c.spec,
        format!("name: {name}\ntopology: patroni\nmembers: 2\n"),
    )
    .expect("spec rewritten");
    let (shrunk, _) = c.run_ok(&["label-nodes"]);
    assert!(
        shrunk.contains(&format!("remove pgswarm.{name}.pg3")),
        "{shrunk}"
    );
    assert!(!c.node_labels().contains(&format!("pgswarm.{name}.pg3")));

    let (removed, _) = c.run_ok(&["label-nodes", "--remove"]);
    assert!(removed.contains("updated the labels"), "{removed}");
    assert!(c.node_labels().is_empty());
}

#[test]
#[ignore = "needs Docker, a swarm and the image (scripts/test.sh runs it)"]
fn concurrent_label_nodes_keep_every_clusters_labels() {
    prerequisites();
    // Node updates are version-checked: a writer that lost the race reads the node again and
    // retries, so neither cluster's labels overwrite the other's.
    let clusters: Vec<TestCluster> = (0..4)
        .map(|_| {
            let name = unique_name("opsrace");
            TestCluster::new(&name, &format!("name: {name}\ntopology: patroni\n"))
        })
        .collect();
    let children: Vec<std::process::Child> = clusters
        .iter()
        .map(|c| {
            swarmctl()
                .arg("label-nodes")
                .arg("-f")
                .arg(&c.spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("swarmctl starts")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("swarmctl ends");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
    }
    for c in &clusters {
        assert_eq!(c.node_labels().len(), 6, "labels of {}", c.name);
    }
}

#[test]
#[ignore = "needs Docker, a swarm and the image (scripts/test.sh runs it)"]
fn bad_inputs_fail_with_a_clear_error() {
    prerequisites();
    let name = unique_name("opsbad");
    let c = TestCluster::new(
        &name,
        &format!("name: {name}\ntopology: patroni\nimage: {}\n", image()),
    );

    let out = c.run(&["label-nodes", "--assign", "pg9=whatever"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no member \"pg9\""), "{stderr}");
    assert!(stderr.contains("pg1, pg2, pg3"), "{stderr}");

    let out = swarmctl()
        .env("DOCKER_HOST", "unix:///nonexistent")
        .args(["status", "-f"])
        .arg(&c.spec)
        .output()
        .expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Docker daemon at unix:///nonexistent"),
        "{stderr}"
    );

    // Unlabelled members: the placement names the member, the constraint and the fix.
    let out = c.run(&["deploy"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pg1: no ready, active node satisfies the constraint `node.labels.pgswarm.{name}.pg1 == true`"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("swarmctl label-nodes"), "{stderr}");

    // A user label no node has.
    std::fs::write(
        &c.spec,
        format!(
            "name: {name}\ntopology: patroni\nimage: {}\nrouter:\n  placement:\n    labels: {{disk: unobtainium}}\n",
            image()
        ),
    )
    .expect("spec");
    c.run_ok(&["label-nodes"]);
    let out = c.run(&["deploy"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("router: no ready, active node satisfies the constraint `node.labels.disk == unobtainium`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("docker node update --label-add disk=unobtainium"),
        "{stderr}"
    );

    // A missing image.
    std::fs::write(
        &c.spec,
        format!("name: {name}\ntopology: patroni\nimage: pgswarm:no-such-tag\n"),
    )
    .expect("spec");
    let out = c.run(&["deploy"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("image pgswarm:no-such-tag is not on this node"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/build-image.sh"), "{stderr}");

    // doctor: failed checks exit 1 and name each.
    let out = c.run(&["doctor"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("FAIL  image"), "{stdout}");
    assert!(stdout.contains("port 2377/tcp"), "{stdout}");
    assert!(stdout.contains("port 4789/udp"), "{stdout}");
    // Nothing was deployed by the refused attempts.
    let services = docker(&[
        "service",
        "ls",
        "-q",
        "--filter",
        &format!("label=com.docker.stack.namespace={name}"),
    ]);
    assert!(services.trim().is_empty(), "{services}");
}

#[test]
#[ignore = "needs Docker, a swarm and the image (scripts/test.sh runs it)"]
fn patroni_example_deploys_healthy_and_switches_over() {
    prerequisites();
    let _heavy = heavy();
    let name = unique_name("opspat");
    let c = TestCluster::new(&name, &patroni_example(&name));
    c.run_ok(&["label-nodes"]);
    let (stdout, stderr) = c.run_ok(&["doctor"]);
    assert!(!stdout.contains("FAIL"), "{stdout}{stderr}");

    let (_, progress) = c.run_ok(&["deploy", "--wait", "--timeout", "420"]);
    assert!(
        progress.contains("created secrets (random passwords"),
        "{progress}"
    );
    assert!(
        progress.contains("every other member streaming"),
        "{progress}"
    );
    assert!(
        progress.contains(&format!("cluster {name} is ready")),
        "{progress}"
    );

    let status = c.status_json();
    let before = leaders(&status);
    assert_eq!(before.len(), 1, "exactly one leader: {status:#}");
    let replicas: Vec<String> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["kind"] == "postgres" && m["state"] == "streaming")
        .map(|m| m["member"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(replicas.len(), 2, "{status:#}");
    assert!(status["members"]
        .as_array()
        .expect("members")
        .iter()
        .all(|m| m["health"] == "healthy"));
    let (table, _) = c.run_ok(&["status"]);
    assert!(table.contains(&format!("leader: {}", before[0])), "{table}");

    // The example runs in synchronous mode: Patroni hands over only to the synchronous standby.
    let target = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["role"] == "sync standby")
        .and_then(|m| m["member"].as_str())
        .map(String::from)
        .unwrap_or_else(|| panic!("a sync standby in synchronous mode: {status:#}"));
    let target = &target;
    let (out, progress) = c.run_ok(&["switchover", "--to", target, "--timeout", "180"]);
    assert!(
        out.contains(&format!("leader: {} -> {target}", before[0])),
        "{out}{progress}"
    );
    let after = leaders(&c.status_json());
    assert_eq!(
        after,
        vec![target.clone()],
        "status agrees with the switchover"
    );

    // As from a manager that runs no member: Patroni asked from a one-off task on the
    // cluster's network gives every member's role, state and lag, and the task is removed.
    // (The old leader rejoins as a replica a little after the switchover: until it streams
    // it has no lag, so this asks again until every replica streams, for at most 3 minutes.)
    let remote_status = || {
        let out = swarmctl()
            .args(["status", "--output", "json", "-f"])
            .arg(&c.spec)
            .env("SWARMCTL_REMOTE", "1")
            .output()
            .expect("swarmctl runs");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        serde_json::from_str::<Value>(&stdout).expect("JSON")
    };
    let mut remote = remote_status();
    for _ in 0..36 {
        let streaming = remote["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["kind"] == "postgres" && m["state"] == "streaming")
            .count();
        if streaming == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
        remote = remote_status();
    }
    assert_eq!(leaders(&remote), vec![target.clone()], "{remote:#}");
    let postgres: Vec<&Value> = remote["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["kind"] == "postgres")
        .collect();
    assert_eq!(postgres.len(), 3, "{remote:#}");
    for m in &postgres {
        assert!(
            m["role"]
                .as_str()
                .is_some_and(|r| !r.is_empty() && r != "-"),
            "no role for {m}"
        );
        if m["role"] != "leader" {
            assert!(m["lag_mb"].is_number(), "no lag for a replica: {remote:#}");
        }
    }
    assert_no_job_left(&name);
    // Another switchover, the same way (patronictl and the write check in one-off tasks), to
    // the synchronous standby of now.
    // Right after a switchover Patroni names the synchronous standby a loop later: asked
    // again until it does.
    let mut standby = None;
    for _ in 0..60 {
        standby = c.status_json()["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["role"] == "sync standby")
            .and_then(|m| m["member"].as_str())
            .map(String::from);
        if standby.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let standby = standby.expect("a sync standby within 2 minutes of the switchover");
    let out = swarmctl()
        .args(["switchover", "--to", &standby, "--timeout", "240", "-f"])
        .arg(&c.spec)
        .env("SWARMCTL_REMOTE", "1")
        .output()
        .expect("swarmctl runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("leader: {target} -> {standby}")),
        "{stdout}{stderr}"
    );
    assert_eq!(leaders(&c.status_json()), vec![standby.clone()]);
    assert_no_job_left(&name);

    let out = c.run(&["switchover", "--to", &standby]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("is already the leader"), "{stderr}");
}

#[test]
#[ignore = "needs Docker, a swarm and the image (scripts/test.sh runs it)"]
fn up_then_down_leaves_no_service_behind() {
    prerequisites();
    let _heavy = heavy();
    let name = unique_name("opsup");
    // The embedded default spec, renamed and on free ports so it runs beside anything else.
    let text = swarmctl::spec::default_spec_text();
    let text = replace(text, "name: pgswarm", &format!("name: {name}"));
    let text = replace(&text, "rw_port: 5000", &format!("rw_port: {}", free_port()));
    let text = replace(&text, "ro_port: 5001", &format!("ro_port: {}", free_port()));
    let text = replace(&text, "port: 6432", &format!("port: {}", free_port()));
    let c = TestCluster::new(&name, &text);

    let (stdout, progress) = c.run_ok(&["up", "--image", &image(), "--timeout", "420"]);
    assert!(
        stdout.contains(&format!("cluster {name} is ready")),
        "{stdout}"
    );
    assert!(
        stdout.contains("cat /run/secrets/superuser_password"),
        "{stdout}"
    );
    assert!(progress.contains("committed (on server"), "{progress}");
    let status = c.status_json();
    assert_eq!(leaders(&status).len(), 1, "{status:#}");

    // psql on the leader and on a replica, from inside the cluster: no password on this side.
    let (out, _) = c.run_ok(&["psql", "--", "-At", "-c", "select 1, pg_is_in_recovery()"]);
    assert_eq!(out.trim(), "1|f", "psql on the leader");
    let (out, _) = c.run_ok(&[
        "psql",
        "--replica",
        "--",
        "-At",
        "-c",
        "select pg_is_in_recovery()",
    ]);
    assert_eq!(out.trim(), "t", "psql on a replica");
    let failed = c.run(&["psql", "--", "-c", "select no_such_column"]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "psql's own exit code comes back"
    );
    // The tasks' stdout and stderr stay apart, as in `docker service logs`.
    let (out, err) = c.run_ok(&["logs", "pg1", "--tail", "5"]);
    let logs = format!("{out}{err}");
    assert!(logs.contains(&format!("{name}_pg1.1.")), "{logs}");

    // status --watch: one JSON object per line, again and again, until stopped.
    let mut watch = swarmctl()
        .args(["status", "--watch", "1", "--output", "json", "-f"])
        .arg(&c.spec)
        .stdout(Stdio::piped())
        .spawn()
        .expect("swarmctl status --watch runs");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        watch.stdout.take().expect("stdout"),
    ));
    for _ in 0..2 {
        let line = lines.next().expect("a status line").expect("readable");
        let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
        assert_eq!(leaders(&v).len(), 1, "{v:#}");
    }
    watch.kill().expect("stops");
    let _ = watch.wait();

    let (stdout, _) = c.run_ok(&["down", "--volumes", "--secrets"]);
    assert!(stdout.contains("8 service(s)"), "{stdout}");
    let filter = format!("label=com.docker.stack.namespace={name}");
    assert!(docker(&["service", "ls", "-q", "--filter", &filter])
        .trim()
        .is_empty());
    assert!(docker(&["ps", "-aq", "--filter", &filter])
        .trim()
        .is_empty());
    assert!(docker(&["volume", "ls", "-q", "--filter", &filter])
        .trim()
        .is_empty());
    assert!(
        docker(&["secret", "ls", "-q", "--filter", &format!("name={name}_")])
            .trim()
            .is_empty()
    );
    assert!(c.node_labels().is_empty());
}
