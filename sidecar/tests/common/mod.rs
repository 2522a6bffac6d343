//! Shared helpers of the sidecar's host integration tests: a world-traversable test folder
//! with secret files, free loopback ports, the sidecar binary started as a guarded child
//! (stopped, then killed, when the guard drops, even on a panic), member environments built
//! through the contract, and polling with a generous deadline.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgswarm_contract::{Common, Endpoint, MemberEnv, Postgres, Role, Secret};

/// The sidecar binary under test.
pub const SIDECAR: &str = env!("CARGO_BIN_EXE_pgswarm-sidecar");

/// Deadline for anything a test waits for (startups, clones, replication).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Password values the tests use; checked to appear nowhere they must not.
pub const SUPERUSER_PASSWORD: &str = "su-Pw'\"with:odd\\chars-81723";
pub const REPLICATION_PASSWORD: &str = "repl-Pw'\"odd:chars\\-55109";
pub const REST_PASSWORD: &str = "rest-Pw-odd:chars-31337";
/// The pooler's lookup user's password (printable ASCII, as the reconciler requires).
pub const POOLER_AUTH_PASSWORD: &str = "auth-Pw'\"odd:chars-40404";

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A temporary folder the sidecar (which drops to user postgres) can traverse, holding the
/// secret files (root-owned, mode 0600, as Docker would mount them readable by root only).
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgswarm-test-")
            .tempdir()
            .expect("creating a temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 755 temp dir");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).expect("secrets dir");
        for (secret, value) in [
            (Secret::SuperuserPassword, SUPERUSER_PASSWORD),
            (Secret::ReplicationPassword, REPLICATION_PASSWORD),
            (Secret::RestPassword, REST_PASSWORD),
            (Secret::PoolerAuthPassword, POOLER_AUTH_PASSWORD),
        ] {
            let path = secrets.join(secret.file_name());
            std::fs::write(&path, format!("{value}\n")).expect("writing a secret");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod secret");
        }
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn secret_path(&self, secret: Secret) -> PathBuf {
        self.path().join("secrets").join(secret.file_name())
    }

    /// `Common` for member `name`: its data root and run dir under this folder, the secret
    /// files of this folder.
    pub fn common(&self, cluster: &str, name: &str) -> Common {
        let mut common = Common::new(cluster, name);
        common.data_root = self.path().join(name).join("data").display().to_string();
        common.run_dir = self.path().join(name).join("run").display().to_string();
        for secret in Secret::ALL {
            common
                .secret_files
                .insert(secret, self.secret_path(secret).display().to_string());
        }
        common
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

/// PostgreSQL settings for a member on 127.0.0.1:`port`, allowing loopback only.
pub fn loopback_postgres(port: u16) -> Postgres {
    Postgres {
        port,
        listen_address: "127.0.0.1".into(),
        connect_host: Some("127.0.0.1".into()),
        allowed_cidrs: vec!["127.0.0.1/32".into()],
        ..Postgres::default()
    }
}

/// A replication primary.
pub fn primary_env(dir: &TestDir, name: &str, port: u16, slots: &[&str]) -> MemberEnv {
    MemberEnv {
        common: dir.common("demo", name),
        role: Role::Primary {
            postgres: loopback_postgres(port),
            replica_slots: slots.iter().map(|s| s.to_string()).collect(),
            init_sql_dir: None,
        },
    }
}

/// A replication replica streaming from 127.0.0.1:`primary_port` through slot `name`.
pub fn replica_env(dir: &TestDir, name: &str, port: u16, primary_port: u16) -> MemberEnv {
    MemberEnv {
        common: dir.common("demo", name),
        role: Role::Replica {
            postgres: loopback_postgres(port),
            primary: Endpoint {
                host: "127.0.0.1".into(),
                port: primary_port,
            },
            slot: name.into(),
        },
    }
}

/// The environment a container would get: the contract's variables and nothing secret.
pub fn env_of(member: &MemberEnv) -> BTreeMap<String, String> {
    member.to_env().into_iter().collect()
}

/// A running sidecar; dropping it sends SIGTERM, waits a little, then SIGKILLs it.
pub struct Sidecar {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub code: Option<i32>,
}

impl Sidecar {
    /// Starts `pgswarm-sidecar <args>` with exactly `env` (plus PATH and LANG), its output
    /// going to `<log_dir>/<name>.log` (appended, so restarts keep the history).
    pub fn start(
        name: &str,
        env: &BTreeMap<String, String>,
        args: &[&str],
        log_dir: &Path,
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening the log file");
        let child = Command::new(SIDECAR)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("RUST_LOG", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("starting the sidecar");
        Sidecar {
            name: name.into(),
            child: Some(child),
            log,
            code: None,
        }
    }

    /// Starts a member with `run`.
    pub fn run(dir: &TestDir, member: &MemberEnv) -> Self {
        Self::start(&member.common.member, &env_of(member), &["run"], dir.path())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// The exit code, once it exited (`128 + signal` when killed), polling up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        if self.code.is_some() {
            return self.code;
        }
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(-1);
                self.code = Some(code);
                return self.code;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn stop(&mut self) -> i32 {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        match self.wait_exit(PATIENCE) {
            Some(code) => code,
            None => panic!(
                "{} did not stop on SIGTERM:\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    /// Runs to completion (for commands expected to exit on their own): (code, log).
    pub fn finish(mut self, limit: Duration) -> (i32, String) {
        match self.wait_exit(limit) {
            Some(code) => (code, self.log_text()),
            None => panic!(
                "{} did not exit within {limit:?}:\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    /// Direct child processes of the sidecar.
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.code.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(None) = child.try_wait() {
                    self.signal(nix::sys::signal::Signal::SIGTERM);
                    if self.wait_exit(Duration::from_secs(15)).is_none() {
                        if let Some(child) = self.child.as_mut() {
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                    }
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// Pids whose parent is `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if parent_of(child) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The parent pid of `pid`, from /proc/<pid>/stat.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The command name of `pid`.
pub fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Polls `check` until it returns `Some`, for at most [`PATIENCE`]; panics naming `what`
/// and the last error otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check().await {
            Ok(value) => return value,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}: {last}");
}

/// A client on 127.0.0.1:`port` as `user` with `password`.
pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The superuser on 127.0.0.1:`port`, waiting until it answers.
pub async fn superuser(port: u16) -> tokio_postgres::Client {
    eventually(&format!("postgres on port {port}"), || {
        connect(port, "postgres", SUPERUSER_PASSWORD)
    })
    .await
}

/// `pg_control_system()`'s system identifier.
pub async fn system_identifier(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .expect("pg_control_system()")
        .get(0)
}

/// A superuser client of the PostgreSQL member on `host:port` (Patroni host tests, members
/// on their own loopback addresses).
pub async fn connect_member(host: &str, port: u16) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}
