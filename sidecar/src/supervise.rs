//! PID 1 duties: start child processes with a clean environment, forward signals to them,
//! reap every zombie (ours and orphans reparented to us) and report exit codes.
//!
//! Every child process of the sidecar must be started through this module ([`spawn`],
//! [`supervise`], [`run`], [`run_checked`]): a reaper thread collects *every* exited child
//! with `waitpid(-1)`, so a process started with `std::process::Command::output()` elsewhere
//! would have its status taken away from it.
//!
//! Signals: [`install_signal_handlers`] (called once by `main`) turns SIGTERM, SIGINT, SIGHUP
//! and SIGQUIT into messages; a supervised child gets each of them through its
//! [`ChildSpec`]'s mapping (for postgres: SIGTERM becomes SIGINT, the fast shutdown). A second
//! SIGTERM/SIGINT escalates to the child's escalation signal (SIGKILL unless the spec says
//! otherwise). Short commands ([`run`]) are stopped with SIGTERM when a termination signal arrives.
//!
//! Children get `PR_SET_PDEATHSIG = SIGKILL`: when the sidecar dies without a chance to stop
//! them (SIGKILL), they do not live on. The kernel ties this to the thread that forked, so the
//! sidecar spawns from a long-lived thread (it runs a current-thread runtime on `main`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, info, warn};

/// Variables a child inherits from the sidecar's own environment; nothing else passes.
/// No `PGSWARM_*` variable is here: the child gets what it needs through its own spec.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "TZ",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment variables that may hold credentials; refused in a [`ChildSpec`].
const FORBIDDEN_ENV: &[&str] = &["PGPASSWORD"];

/// What to start and how to treat it.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Short name for logs (`postgres`, `pg_basebackup`).
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The child's whole environment (the allow-list plus what the spec adds).
    pub env: BTreeMap<String, String>,
    pub current_dir: Option<PathBuf>,
    /// Signals translated on the way to the child (`SIGTERM -> SIGINT` for postgres).
    pub signal_map: Vec<(Signal, Signal)>,
    /// Sent on a second SIGTERM/SIGINT.
    pub escalation: Signal,
    /// A stop request waits while this says the child must not be interrupted.
    pub hold_stop: Option<HoldStop>,
}

/// How often a held stop request looks again at whether the child is still busy.
const HOLD_POLL: Duration = Duration::from_millis(100);

/// Whether a process named `comm` (as in `/proc/PID/comm`) runs below this one: a child,
/// grandchild… of the sidecar. Only descendants count, so another container's or another
/// test's process of that name on the same host is ignored.
pub fn descendant_running(comm: &str) -> bool {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .any(|pid| descends_from(pid, me))
}

/// Whether `pid`'s chain of parents reaches `ancestor`.
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    // A chain is short; the bound only guards against a loop read from a racing /proc.
    for _ in 0..64 {
        let Some(parent) = parent_of(current) else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// The parent pid from `/proc/PID/stat` (the field after the state, past the command name,
/// which may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A step of the child that a stop request must not cut in half (e.g. Patroni's `pg_rewind`,
/// which leaves a data directory that can neither start nor be rewound again when killed
/// midway). The first SIGTERM/SIGINT is passed on once `busy` says false, or after `max`; a
/// second one is passed on at once.
#[derive(Debug, Clone, Copy)]
pub struct HoldStop {
    /// What is waited for, for the log.
    pub what: &'static str,
    /// Whether the step is under way now.
    pub busy: fn() -> bool,
    /// The longest a stop waits (below the container's stop grace period).
    pub max: Duration,
}

impl ChildSpec {
    /// A spec whose environment is [`INHERITED_ENV`] taken from the sidecar's environment
    /// (HOME and USER of the service user when privileges were dropped).
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self::inheriting(name, program, |var| std::env::var(var).ok())
    }

    /// [`Self::new`] with the parent's environment read through `parent` (a name to its
    /// value), so the allow-list is testable without changing the process environment.
    pub fn inheriting(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        parent: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let mut env = BTreeMap::new();
        for var in INHERITED_ENV {
            if let Some(value) = parent(var) {
                env.insert((*var).to_string(), value);
            }
        }
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.to_string());
        if let Some(user) = crate::privileges::service_user() {
            env.insert("HOME".into(), user.home.display().to_string());
            env.insert("USER".into(), user.name.clone());
            env.insert("LOGNAME".into(), user.name.clone());
        }
        ChildSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env,
            current_dir: None,
            signal_map: Vec::new(),
            escalation: Signal::SIGKILL,
            hold_stop: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds a variable to the child's environment. Never use it for a credential: pass a
    /// 0600 file instead (a passfile, a rendered config).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Delivers `to` to the child when the sidecar receives `from`.
    pub fn forward(mut self, from: Signal, to: Signal) -> Self {
        self.signal_map.retain(|(f, _)| *f != from);
        self.signal_map.push((from, to));
        self
    }

    pub fn escalate_with(mut self, signal: Signal) -> Self {
        self.escalation = signal;
        self
    }

    /// Holds a stop request while `hold.busy` says the child is in a step that must not be
    /// interrupted; see [`HoldStop`].
    pub fn hold_stop(mut self, hold: HoldStop) -> Self {
        self.hold_stop = Some(hold);
        self
    }

    /// The signal the child gets for `received`.
    pub fn mapped(&self, received: Signal) -> Signal {
        self.signal_map
            .iter()
            .find(|(from, _)| *from == received)
            .map(|(_, to)| *to)
            .unwrap_or(received)
    }

    fn command_line(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }

    fn command(&self) -> anyhow::Result<Command> {
        if let Some(var) = FORBIDDEN_ENV.iter().find(|v| self.env.contains_key(**v)) {
            bail!(
                "refusing to start {}: {var} would put a credential in its environment",
                self.name
            );
        }
        if let Some(var) = self.env.keys().find(|k| k.starts_with("PGSWARM_")) {
            bail!(
                "refusing to start {}: the sidecar's own variable {var} must not reach a child",
                self.name
            );
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env_clear().envs(&self.env);
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// How a child ended: its exit code, or `128 + signal` when a signal killed it (the shell's
/// convention, which is also what Docker shows).
fn exit_code(status: WaitStatus) -> Option<(Pid, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, 128 + sig as i32)),
        _ => None,
    }
}

/// The process-wide reaper: a thread blocked in `waitpid(-1)` that hands each status to the
/// waiter registered for that pid and discards the rest (orphans).
struct Reaper {
    state: Mutex<ReaperState>,
    spawned: Condvar,
}

#[derive(Default)]
struct ReaperState {
    waiters: HashMap<i32, oneshot::Sender<i32>>,
    generation: u64,
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            state: Mutex::new(ReaperState::default()),
            spawned: Condvar::new(),
        }));
        let started = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper.run());
        if let Err(e) = started {
            // Without the thread no exit would ever be seen; there is nothing to fall back to.
            eprintln!("pgswarm-sidecar: cannot start the reaper thread: {e}");
            std::process::exit(1);
        }
        reaper
    })
}

impl Reaper {
    fn run(&self) {
        loop {
            let generation = self.lock().generation;
            // Peek first (WNOWAIT) and reap only with the table locked: a spawn in progress
            // holds the lock, and when its exec fails std reaps that child itself.
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(status) => {
                    let Some(pid) = status.pid() else {
                        continue;
                    };
                    let mut state = self.lock();
                    let reaped = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(status) => exit_code(status),
                        Err(_) => None, // already reaped by whoever spawned it
                    };
                    let Some((pid, code)) = reaped else {
                        continue;
                    };
                    let waiter = state.waiters.remove(&pid.as_raw());
                    drop(state);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(code);
                        }
                        None => debug!(pid = pid.as_raw(), code, "reaped an orphaned process"),
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    // No child at all: sleep until the next spawn (or a second, as a fallback).
                    let state = self.lock();
                    if state.generation == generation {
                        let _ = self.spawned.wait_timeout(state, Duration::from_secs(1));
                    }
                }
                Err(e) => {
                    eprintln!("pgswarm-sidecar: waitpid failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        // A poisoned lock only means a panic elsewhere; the table itself stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forks with the table locked, so the reaper cannot see the exit before the waiter is in.
    fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(std::process::Child, oneshot::Receiver<i32>)> {
        let mut state = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(child.id() as i32, tx);
        state.generation += 1;
        drop(state);
        self.spawned.notify_all();
        Ok((child, rx))
    }
}

/// Turns the sidecar's own signals into messages for supervised children.
struct SignalHub {
    inner: Mutex<HubState>,
    tx: broadcast::Sender<(u64, Signal)>,
    terminating: watch::Sender<bool>,
}

#[derive(Default)]
struct HubState {
    seq: u64,
}

fn hub() -> &'static SignalHub {
    static HUB: OnceLock<SignalHub> = OnceLock::new();
    HUB.get_or_init(|| SignalHub {
        inner: Mutex::new(HubState::default()),
        tx: broadcast::channel(16).0,
        terminating: watch::channel(false).0,
    })
}

impl SignalHub {
    fn publish(&self, signal: Signal) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.seq += 1;
        let _ = self.tx.send((state.seq, signal));
        if is_stop(signal) {
            self.terminating.send_replace(true);
        }
    }

    /// A receiver of every signal published from now on, and whether a stop was asked before.
    fn subscribe(&self) -> (broadcast::Receiver<(u64, Signal)>, bool) {
        let _state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (self.tx.subscribe(), *self.terminating.borrow())
    }
}

fn is_stop(signal: Signal) -> bool {
    matches!(signal, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
}

/// Listens for SIGTERM, SIGINT, SIGHUP and SIGQUIT for the rest of the process's life.
/// Call once, inside the runtime, before starting anything.
pub fn install_signal_handlers() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, sig) in [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
    ] {
        let mut stream = signal(kind).with_context(|| format!("installing a {sig} handler"))?;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                info!(signal = %sig, "received signal");
                hub().publish(sig);
            }
        });
    }
    Ok(())
}

/// Delivers `signal` to the supervised child as if the sidecar had received it (e.g. SIGHUP
/// to make it reload a configuration the sidecar rewrote).
pub fn signal_child(signal: Signal) {
    hub().publish(signal);
}

/// True once the sidecar was asked to stop (SIGTERM, SIGINT or SIGQUIT).
pub fn stop_requested() -> bool {
    *hub().terminating.borrow()
}

/// Resolves when the sidecar is asked to stop (at once when it already was).
pub async fn stopped() {
    let mut rx = hub().terminating.subscribe();
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The error returned by a step that a stop request interrupted.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by a stop request (SIGTERM/SIGINT) while {0}")]
pub struct Interrupted(pub String);

/// A started child; [`Running::wait`] supervises it to its end.
#[derive(Debug)]
pub struct Running {
    spec: ChildSpec,
    pid: Pid,
    exit: oneshot::Receiver<i32>,
    signals: broadcast::Receiver<(u64, Signal)>,
    stop_before_start: bool,
}

/// Signals a running child; stays valid after [`Running::wait`] took the child.
#[derive(Debug, Clone)]
pub struct ChildHandle {
    name: String,
    pid: Pid,
    stop: Signal,
}

impl ChildHandle {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Sends the child its mapped SIGTERM (postgres: fast shutdown).
    pub fn request_stop(&self) {
        send(&self.name, self.pid, self.stop);
    }
}

fn send(name: &str, pid: Pid, signal: Signal) {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            warn!(child = name, pid = pid.as_raw(), %signal, error = %e, "cannot signal child")
        }
    }
}

/// Starts `spec` with its stdout and stderr going to the sidecar's (the container log).
pub fn spawn(spec: ChildSpec) -> anyhow::Result<Running> {
    spawn_with(spec, Stdio::inherit(), Stdio::inherit()).map(|(running, _)| running)
}

fn spawn_with(
    spec: ChildSpec,
    stdout: Stdio,
    stderr: Stdio,
) -> anyhow::Result<(Running, std::process::Child)> {
    let mut cmd = spec.command()?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let (signals, stop_before_start) = hub().subscribe();
    let (child, exit) = reaper()
        .spawn(&mut cmd)
        .with_context(|| format!("cannot start {} ({})", spec.name, spec.program.display()))?;
    let pid = Pid::from_raw(child.id() as i32);
    info!(child = %spec.name, pid = pid.as_raw(), command = %spec.command_line(), "started");
    Ok((
        Running {
            spec,
            pid,
            exit,
            signals,
            stop_before_start,
        },
        child,
    ))
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn handle(&self) -> ChildHandle {
        ChildHandle {
            name: self.spec.name.clone(),
            pid: self.pid,
            stop: self.spec.mapped(Signal::SIGTERM),
        }
    }

    /// Supervises the child until it exits and returns its exit code (`128 + signal` when a
    /// signal killed it). The sidecar's signals are forwarded through the spec's mapping;
    /// `shutdown` resolving counts as a SIGTERM. A second stop request escalates.
    pub async fn wait(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<i32> {
        let mut stops = 0u32;
        if self.stop_before_start {
            self.forward(Signal::SIGTERM, &mut stops);
        }
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown = Some(shutdown);
        let mut signals_open = true;
        // A stop request held back while the child is in a step that must not be cut.
        let mut held: Option<(Signal, Instant)> = None;
        loop {
            tokio::select! {
                code = &mut self.exit => {
                    let code = code.map_err(|_| anyhow!("lost track of {}", self.spec.name))?;
                    info!(child = %self.spec.name, pid = self.pid.as_raw(), code, "exited");
                    return Ok(code);
                }
                msg = self.signals.recv(), if signals_open => match msg {
                    Ok((_, signal)) => self.forward_or_hold(signal, &mut stops, &mut held),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => signals_open = false,
                },
                () = async { if let Some(s) = shutdown.as_mut() { s.await } }, if shutdown.is_some() => {
                    shutdown = None;
                    self.forward_or_hold(Signal::SIGTERM, &mut stops, &mut held);
                }
                () = tokio::time::sleep(HOLD_POLL), if held.is_some() => {
                    if let (Some((signal, since)), Some(hold)) = (held, self.spec.hold_stop) {
                        if !(hold.busy)() || since.elapsed() >= hold.max {
                            held = None;
                            self.forward(signal, &mut stops);
                        }
                    }
                }
            }
        }
    }

    /// Forwards `received`, except a first stop request while the spec's [`HoldStop`] says
    /// the child is busy: that one waits in `held`. A stop arriving while one is held sends
    /// the held one at once.
    fn forward_or_hold(
        &self,
        received: Signal,
        stops: &mut u32,
        held: &mut Option<(Signal, Instant)>,
    ) {
        let stop = matches!(received, Signal::SIGTERM | Signal::SIGINT);
        if stop {
            if let Some((first, _)) = held.take() {
                warn!(child = %self.spec.name, "second stop request: not waiting any longer");
                self.forward(first, stops);
                return;
            }
            if let Some(hold) = self.spec.hold_stop {
                if *stops == 0 && (hold.busy)() {
                    warn!(
                        child = %self.spec.name,
                        waiting_for = hold.what,
                        max_s = hold.max.as_secs(),
                        "stop requested while {}: stopping once it has finished",
                        hold.what
                    );
                    *held = Some((received, Instant::now()));
                    return;
                }
            }
        }
        self.forward(received, stops);
    }

    fn forward(&self, received: Signal, stops: &mut u32) {
        let name = &self.spec.name;
        if matches!(received, Signal::SIGTERM | Signal::SIGINT) {
            *stops += 1;
            if *stops > 1 {
                let signal = self.spec.escalation;
                warn!(child = %name, %signal, "second stop request: escalating");
                send(name, self.pid, signal);
                return;
            }
        }
        let signal = self.spec.mapped(received);
        info!(child = %name, %received, forwarded = %signal, "forwarding signal");
        send(name, self.pid, signal);
    }
}

/// Starts `spec` and supervises it to its end; see [`Running::wait`].
pub async fn supervise(spec: ChildSpec, shutdown: impl Future<Output = ()>) -> anyhow::Result<i32> {
    spawn(spec)?.wait(shutdown).await
}

/// What a short command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a short command to completion with its output captured. A stop request sends it
/// SIGTERM and returns [`Interrupted`].
pub async fn run(spec: ChildSpec) -> anyhow::Result<Output> {
    let name = spec.name.clone();
    let (running, mut child) = spawn_with(spec, Stdio::piped(), Stdio::piped())?;
    let stdout = read_in_thread(child.stdout.take());
    let stderr = read_in_thread(child.stderr.take());
    let pid = running.pid;
    let mut exit = running.exit;
    let code = tokio::select! {
        code = &mut exit => code.map_err(|_| anyhow!("lost track of {name}"))?,
        () = stopped() => {
            send(&name, pid, Signal::SIGTERM);
            let _ = exit.await;
            return Err(Interrupted(format!("running {name}")).into());
        }
    };
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    debug!(child = %name, code, "finished");
    Ok(Output {
        code,
        stdout,
        stderr,
    })
}

/// Like [`run`], but a non-zero exit is an error quoting the end of the command's stderr.
pub async fn run_checked(spec: ChildSpec) -> anyhow::Result<Output> {
    let name = spec.name.clone();
    let line = spec.command_line();
    let out = run(spec).await?;
    if out.code != 0 {
        bail!(
            "{name} failed with exit code {} ({line}): {}",
            out.code,
            tail(&out.stderr, 2000).trim()
        );
    }
    Ok(out)
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn read_in_thread(pipe: Option<impl Read + Send + 'static>) -> oneshot::Receiver<String> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Makes the sidecar adopt orphaned descendants when it is not PID 1 (on a host, in tests),
/// so it reaps them exactly as it would in a container.
pub fn become_subreaper() -> anyhow::Result<()> {
    if std::process::id() != 1 {
        nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ChildSpec {
        ChildSpec::new("sh", "/bin/sh").arg("-c").arg(script)
    }

    #[tokio::test]
    async fn exit_codes_are_returned_and_signals_become_128_plus() {
        let code = supervise(sh("exit 7"), std::future::pending())
            .await
            .unwrap();
        assert_eq!(code, 7);
        let code = supervise(sh("kill -KILL $$"), std::future::pending())
            .await
            .unwrap();
        assert_eq!(code, 128 + 9);
    }

    static BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    fn busy() -> bool {
        BUSY.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_stop_waits_while_the_child_is_busy() {
        // The child exits 42 on SIGTERM when the step is over (the file exists), 13 if the
        // signal came while it was still under way.
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("trap-installed");
        let released = dir.path().join("released");
        let script = format!(
            "trap 'if [ -e \'{r}\' ]; then exit 42; else exit 13; fi' TERM; : > '{}'; \
             while :; do sleep 0.05; done",
            ready.display(),
            r = released.display()
        );
        let spec = sh(&script).hold_stop(HoldStop {
            what: "a test step",
            busy,
            max: Duration::from_secs(600),
        });
        let trap_installed = async move {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            std::fs::write(&released, b"").unwrap();
            BUSY.store(false, std::sync::atomic::Ordering::SeqCst);
        });
        let code = supervise(spec, trap_installed).await.unwrap();
        release.await.unwrap();
        assert_eq!(
            code, 42,
            "the stop was passed on while the step was under way"
        );
    }

    #[test]
    fn only_descendants_count_as_running() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let found = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            descendant_running("sleep")
        });
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found, "a child `sleep` was not seen");
        assert!(!descendant_running("no-such-comm"));
        // PID 1 (init, or the container's entrypoint) is nobody's descendant here.
        assert!(!descends_from(1, std::process::id()));
    }

    #[tokio::test]
    async fn shutdown_is_forwarded_through_the_mapping() {
        // The child exits 42 only when it receives SIGINT; SIGTERM would kill it (143).
        // Shutdown is requested only once the child has installed its trap (it says so by
        // creating a file), so a loaded machine cannot make the signal arrive first.
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("trap-installed");
        let script = format!(
            "trap 'exit 42' INT; : > '{}'; while :; do sleep 0.05; done",
            ready.display()
        );
        let spec = sh(&script).forward(Signal::SIGTERM, Signal::SIGINT);
        let trap_installed = async move {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let code = supervise(spec, trap_installed).await.unwrap();
        assert_eq!(code, 42);
    }

    #[tokio::test]
    async fn the_environment_is_cleared_to_the_allow_list() {
        // A parent environment holding a credential, given as a parameter: changing the
        // process environment would race every other test reading it.
        let parent = |var: &str| match var {
            "PGSWARM_TEST_LEAK" => Some("secret-value".to_string()),
            "PGSWARM_SUPERUSER_PASSWORD_FILE" => Some("/run/secrets/x".to_string()),
            other => std::env::var(other).ok(),
        };
        let out = run(ChildSpec::inheriting("env", "/usr/bin/env", parent).env("EXTRA", "1"))
            .await
            .unwrap();
        assert_eq!(out.code, 0);
        assert!(!out.stdout.contains("PGSWARM_TEST_LEAK"), "{}", out.stdout);
        assert!(!out.stdout.contains("secret-value"));
        assert!(out.stdout.contains("EXTRA=1"));
        for line in out.stdout.lines() {
            let key = line.split('=').next().unwrap_or_default();
            assert!(key == "EXTRA" || INHERITED_ENV.contains(&key), "{line}");
        }
        let err = run(ChildSpec::new("env", "/usr/bin/env").env("PGPASSWORD", "x"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("PGPASSWORD"), "{err}");
    }

    #[tokio::test]
    async fn run_captures_output_and_run_checked_reports_stderr() {
        let out = run(sh("echo out; echo err >&2; exit 3")).await.unwrap();
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (3, "out\n", "err\n")
        );
        let err = run_checked(sh("echo broken thing >&2; exit 1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken thing") && err.contains("exit code 1"),
            "{err}"
        );
        let err = run(ChildSpec::new("nope", "/nonexistent/binary"))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/binary"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn orphans_are_reaped() {
        become_subreaper().unwrap();
        // The shell exits at once; its background sleep is reparented to this process. It
        // sleeps far longer than the test runs, and is killed below once its parent is
        // checked, so a slow machine cannot let it exit (and vanish) too early.
        let out = run(sh("sleep 600 >/dev/null 2>&1 & echo $!"))
            .await
            .unwrap();
        let orphan: i32 = out.stdout.trim().parse().unwrap();
        let stat = format!("/proc/{orphan}/stat");
        // Adopted by us (not by init), so only our reaper can collect it.
        let fields = std::fs::read_to_string(&stat).unwrap();
        let ppid: u32 = fields
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap();
        assert_eq!(ppid, std::process::id());
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(orphan), Signal::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match std::fs::read_to_string(&stat) {
                Err(_) => break, // reaped: the pid is gone
                Ok(s) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "orphan not reaped: {s}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn tail_cuts_on_a_char_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("aéé", 2), "é");
    }
}
