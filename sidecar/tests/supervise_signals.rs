//! Signal handling of `supervise` with real signals sent to this test process (its own
//! binary, since a stop request is process-wide): forwarding through the mapping, and
//! escalation on a second stop request.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgswarm_sidecar::supervise::{self, ChildSpec};

fn raise(signal: Signal) {
    kill(Pid::this(), signal).expect("signalling this process");
}

#[tokio::test]
async fn signals_are_forwarded_and_a_second_stop_escalates() {
    supervise::install_signal_handlers().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hup");

    // SIGHUP is forwarded as it is (postgres reloads on it); the child notes it and goes on.
    let script = format!(
        "trap 'touch {}' HUP; trap '' INT TERM; while :; do sleep 0.05; done",
        marker.display()
    );
    let spec = ChildSpec::new("stubborn", "/bin/sh")
        .arg("-c")
        .arg(script)
        .forward(Signal::SIGTERM, Signal::SIGINT);
    let running = supervise::spawn(spec).unwrap();
    let child = tokio::spawn(running.wait(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    raise(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP never reached the child"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!supervise::stop_requested());

    // The first SIGTERM arrives as SIGINT, which this child ignores: it keeps running.
    raise(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(supervise::stop_requested());
    assert!(
        !child.is_finished(),
        "one stop request must not kill the child"
    );
    // The second one escalates to SIGKILL.
    raise(Signal::SIGTERM);
    let code = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("the child ends after the second stop request")
        .unwrap()
        .unwrap();
    assert_eq!(code, 128 + 9);

    // After a stop request, a short command is not even left running.
    let err = supervise::run(ChildSpec::new("sleep", "/bin/sleep").arg("30"))
        .await
        .unwrap_err();
    assert!(err.is::<supervise::Interrupted>(), "{err:#}");
}
