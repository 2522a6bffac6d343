//! "No swarm" is a bad input every swarm command must refuse clearly. The machine's own
//! daemon is in a swarm (other tests deploy on it), so this test starts a second, real Docker
//! daemon of its own on a private socket, which is in no swarm, points `DOCKER_HOST` at it and
//! checks each command's error and exit code. The daemon is stopped when the test ends.
//!
//! Needs root and `dockerd` (as CI has); `PGSWARM_SKIP_SWARM=1` leaves it out like the other
//! swarm tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// A Docker daemon started by this test, with its own data, exec root and socket.
struct PrivateDaemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl PrivateDaemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        // An empty configuration file: the machine's /etc/docker/daemon.json names the main
        // daemon's data root, which would clash with ours.
        std::fs::write(root.join("daemon.json"), "{}").expect("write daemon.json");
        let log = std::fs::File::create(root.join("dockerd.log")).expect("log file");
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", root.join("docker.sock").display()))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("dockerd starts (this test needs root and dockerd)");
        let daemon = PrivateDaemon { child, dir };
        daemon.wait_until_it_answers();
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn wait_until_it_answers(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let state = Command::new("docker")
                .env("DOCKER_HOST", self.docker_host())
                .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
                .output();
            if let Ok(out) = state {
                if out.status.success() {
                    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    assert_eq!(state, "inactive", "a new daemon is in no swarm");
                    return;
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("dockerd.log"))
                    .unwrap_or_default();
                panic!("the private dockerd did not answer within 120 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its own containerd and remove its socket.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec() -> PathBuf {
    common::repo_root().join("stacks/patroni.spec.yml")
}

fn swarmctl(daemon: &PrivateDaemon, args: &[&str], spec: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmctl"))
        .env("DOCKER_HOST", daemon.docker_host())
        .args(args)
        .arg("-f")
        .arg(spec)
        .output()
        .expect("swarmctl runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root and dockerd (scripts/test.sh runs it)"]
fn every_swarm_command_refuses_a_daemon_that_is_in_no_swarm() {
    let daemon = PrivateDaemon::start();
    let spec = spec();
    for command in [
        &["deploy"][..],
        &["label-nodes"],
        &["label-nodes", "--dry-run"],
        &["status"],
        &["switchover"],
    ] {
        let (code, stderr) = swarmctl(&daemon, command, &spec);
        assert_eq!(code, Some(2), "swarmctl {command:?}: {stderr}");
        assert!(
            stderr.contains("not part of a swarm") && stderr.contains("docker swarm init"),
            "swarmctl {command:?} must say there is no swarm and how to make one: {stderr}"
        );
    }
    // doctor reports it as a failed check (exit 1), not as an error.
    let out = Command::new(env!("CARGO_BIN_EXE_swarmctl"))
        .env("DOCKER_HOST", daemon.docker_host())
        .args(["doctor", "-f"])
        .arg(&spec)
        .output()
        .expect("swarmctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "doctor: {stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("not in a swarm")),
        "doctor names the missing swarm as a failed check: {stdout}"
    );
}
