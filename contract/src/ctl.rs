//! The `ctl` protocol: the day-2 channel between `swarmctl` and a member's sidecar
//! (`docker exec <container> pgswarm-sidecar ctl ...`). Requests produce their own argv, and
//! the sidecar parses the same argv back; replies are serde types printed as one JSON line
//! on standard output. A failure is a [`CtlError`] envelope on standard output (exit code 1)
//! with a [`ErrorKind`] and PostgreSQL's SQLSTATE, so callers decide on a retry by the kind,
//! never by the text of a message another process wrote.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The sidecar's program name inside every container.
pub const PROGRAM: &str = "pgswarm-sidecar";
/// Its subcommand for these operations.
pub const SUBCOMMAND: &str = "ctl";
/// Database a request connects to unless it names another.
pub const DEFAULT_DBNAME: &str = "postgres";
/// Seconds a request waits for its connection unless it says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;

/// Where a request connects, as the superuser (whose password the sidecar reads from its
/// secret file: it never travels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A router, the pooler, a member (service name) or 127.0.0.1.
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub connect_timeout_secs: u64,
}

impl Target {
    /// `host:port`, database `postgres`, the default connect timeout.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Target {
            host: host.into(),
            port,
            dbname: DEFAULT_DBNAME.into(),
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
        }
    }

    /// The same target in database `dbname`.
    pub fn database(mut self, dbname: impl Into<String>) -> Self {
        self.dbname = dbname.into();
        self
    }

    fn push_args(&self, argv: &mut Vec<String>) {
        argv.extend([
            "--host".into(),
            self.host.clone(),
            "--port".into(),
            self.port.to_string(),
            "--dbname".into(),
            self.dbname.clone(),
            "--connect-timeout".into(),
            self.connect_timeout_secs.to_string(),
        ]);
    }
}

/// A `ctl` request that answers with JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Commit a write that leaves nothing behind; answers [`WriteCheckReply`].
    WriteCheck(Target),
    /// Run SQL with the simple query protocol; answers [`QueryReply`].
    Query { target: Target, sql: String },
    /// Run patronictl with the member's configuration (rendered privately for this run when
    /// no member process wrote one, as in a one-off task); `args` are patronictl's, without
    /// `-c`. Not JSON: patronictl's own output and exit code.
    Patronictl { args: Vec<String> },
    /// Pause the PgBouncer of this container (its admin console on 127.0.0.1:`port`): running
    /// transactions finish, new ones wait in PgBouncer instead of failing. Waits at most
    /// `wait_secs` for the running ones (else it resumes and fails); the pooler resumes by
    /// itself `max_pause_secs` after the pause, should nobody resume it. Answers
    /// [`PoolerReply`].
    PoolerPause {
        port: u16,
        wait_secs: u64,
        max_pause_secs: u64,
    },
    /// Resume the PgBouncer of this container, its server connections opened anew (they may
    /// lead to a demoted primary). Answers [`PoolerReply`]; resuming a pooler that is not
    /// paused is not an error.
    PoolerResume { port: u16 },
    /// Store the declared roles and databases on the primary at `target` and reconcile them
    /// now; answers [`ApplyObjectsReply`]. Run in a data member, whose secret files hold the
    /// roles' passwords.
    ApplyObjects {
        target: Target,
        objects: crate::objects::Objects,
    },
    /// Ask every etcd member whether it runs (its peer port) and sees a leader (`/health` on
    /// its client port); answers [`EtcdStatusReply`]. Needs no secret: any container on the
    /// cluster's network can run it.
    EtcdStatus { members: Vec<EtcdTarget> },
    /// Switch the leader over with the pooler held: pause every task of each pooler over the
    /// network, ask the leader's Patroni to switch over, wait for a write through `write` that
    /// commits on another server, resume. Run in a container holding the superuser and REST
    /// secrets (a data member, or a one-off task made from one). Answers [`SwitchoverReply`].
    Switchover(SwitchoverPlan),
}

/// What [`Request::Switchover`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverPlan {
    /// The leader now: its member (and service) name, the host of its REST API and
    /// PostgreSQL unless `leader_host` says otherwise.
    pub leader: String,
    /// Where the leader's REST API and PostgreSQL answer, when not at its name (the leader's
    /// own sidecar, whose name Swarm stops resolving once its task is stopping: 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_host: Option<String>,
    /// The leader's addresses on the cluster's network (a write there is not on a new
    /// leader); empty: its name is resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leader_addresses: Vec<String>,
    /// The member to hand over to; none: Patroni picks the best one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Patroni's REST port on the members.
    pub rest_port: u16,
    /// PostgreSQL's port on the members (the leader is checkpointed there before the pause,
    /// so the checkpoint Patroni makes while demoting it is short).
    pub pg_port: u16,
    /// Where writes go: the router's read-write port (or the candidate without a router).
    pub write: crate::Endpoint,
    /// The poolers to hold meanwhile (service name and port; every task of each is paused).
    #[serde(default)]
    pub poolers: Vec<crate::Endpoint>,
    /// Seconds a pause waits for the running transactions before it gives up.
    pub pause_wait_secs: u64,
    /// Seconds the pooler is held at most: the clients are let go then even if no write has
    /// committed on a new leader yet (the request then fails).
    pub max_pause_secs: u64,
    /// Seconds to wait for Patroni and for the new leader.
    pub timeout_secs: u64,
}

/// What `switchover` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverReply {
    pub old_leader: String,
    /// Address of the server that took the first write.
    pub server: String,
    /// Milliseconds the pooler held its clients (none: no pooler was paused).
    pub paused_ms: Option<u64>,
    /// Pooler tasks paused.
    pub paused_tasks: usize,
    /// Milliseconds from the request to Patroni to the first write on the new leader.
    pub switched_ms: u64,
    /// Patroni's answer to the request.
    pub patroni: String,
}

/// One etcd member for [`Request::EtcdStatus`]: its name and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTarget {
    pub name: String,
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl EtcdTarget {
    /// `NAME=HOST:CLIENT_PORT:PEER_PORT`, the form of `--member`.
    pub fn to_arg(&self) -> String {
        format!(
            "{}={}:{}:{}",
            self.name, self.host, self.client_port, self.peer_port
        )
    }

    /// Reads [`Self::to_arg`]'s form.
    pub fn parse(arg: &str) -> Result<Self, String> {
        let bad = || format!("{arg:?} is not NAME=HOST:CLIENT_PORT:PEER_PORT");
        let (name, rest) = arg.split_once('=').ok_or_else(bad)?;
        let mut parts = rest.rsplitn(3, ':');
        let peer_port = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let client_port = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        Ok(EtcdTarget {
            name: name.to_string(),
            host: host.to_string(),
            client_port,
            peer_port,
        })
    }
}

/// What `etcd-status` answers: each member as the asking container sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdStatusReply {
    pub members: Vec<EtcdMemberStatus>,
}

/// One etcd member's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdMemberStatus {
    pub name: String,
    /// Its peer port answered: the etcd process runs.
    pub running: bool,
    /// Its client port's `/health` reported a leader: it is part of a quorum.
    pub has_leader: bool,
    /// What it answered, or why it did not.
    pub detail: String,
}

impl EtcdStatusReply {
    /// The members that see a leader.
    pub fn with_leader(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| m.has_leader)
            .map(|m| m.name.as_str())
            .collect()
    }

    /// Whether a majority of the members sees a leader.
    pub fn has_quorum(&self) -> bool {
        self.with_leader().len() > self.members.len() / 2
    }
}

impl Request {
    /// The subcommand's name.
    pub fn name(&self) -> &'static str {
        match self {
            Request::WriteCheck(_) => "write-check",
            Request::Query { .. } => "query",
            Request::PoolerPause { .. } => "pooler-pause",
            Request::PoolerResume { .. } => "pooler-resume",
            Request::Patronictl { .. } => "patronictl",
            Request::EtcdStatus { .. } => "etcd-status",
            Request::ApplyObjects { .. } => "apply-objects",
            Request::Switchover(_) => "switchover",
        }
    }

    /// The whole command line to run in a container.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![PROGRAM.to_string(), SUBCOMMAND.into(), self.name().into()];
        match self {
            Request::WriteCheck(target) => target.push_args(&mut argv),
            Request::Query { target, sql } => {
                target.push_args(&mut argv);
                argv.extend(["--sql".into(), sql.clone()]);
            }
            Request::PoolerPause {
                port,
                wait_secs,
                max_pause_secs,
            } => argv.extend([
                "--port".into(),
                port.to_string(),
                "--wait".into(),
                wait_secs.to_string(),
                "--max-pause".into(),
                max_pause_secs.to_string(),
            ]),
            Request::PoolerResume { port } => argv.extend(["--port".into(), port.to_string()]),
            Request::Patronictl { args } => {
                argv.push("--".into());
                argv.extend(args.iter().cloned());
            }
            Request::ApplyObjects { target, objects } => {
                target.push_args(&mut argv);
                let json = serde_json::to_string(objects).unwrap_or_default();
                argv.extend(["--objects".into(), json]);
            }
            Request::EtcdStatus { members } => {
                for m in members {
                    argv.extend(["--member".into(), m.to_arg()]);
                }
            }
            Request::Switchover(plan) => {
                let json = serde_json::to_string(plan).unwrap_or_default();
                argv.extend(["--plan".into(), json]);
            }
        }
        argv
    }
}

/// What `write-check` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteCheckReply {
    pub host: String,
    pub port: u16,
    /// Address of the server that took the write (`local` over a socket).
    pub server: String,
    pub in_recovery: bool,
}

/// What `query` answers: the columns of the first result with rows, and every row, each value
/// as text or null.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryReply {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryReply {
    /// The value of `column` in row `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(i)?.as_deref()
    }
}

/// What `pooler-pause` and `pooler-resume` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolerReply {
    /// Whether PgBouncer is paused now.
    pub paused: bool,
    /// Milliseconds the request waited: for running transactions to finish (pause), or for
    /// PgBouncer to answer (resume).
    pub waited_ms: u64,
    /// Resume: whether the pooler was paused when asked (false: there was nothing to resume).
    #[serde(default)]
    pub was_paused: bool,
}

/// What `apply-objects` answers: one line per change made (empty when the server already
/// matched the spec), and the problems that kept a declared object from being reconciled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyObjectsReply {
    pub changes: Vec<String>,
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Why a request failed, which decides whether it may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No connection was made (refused, no route, timeout, the server still starting): the
    /// statement did not run, so trying again is safe.
    Unreachable,
    /// The statement was sent and failed, or its outcome is unknown (the connection broke
    /// while it ran): it must not be run again blindly.
    Statement,
    /// The request itself was refused (bad arguments, a missing secret, authentication):
    /// trying again changes nothing.
    Refused,
}

/// The error envelope of a failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct CtlError {
    pub kind: ErrorKind,
    /// What failed, in words for an operator.
    pub message: String,
    /// PostgreSQL's SQLSTATE, when PostgreSQL answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

impl CtlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CtlError {
            kind,
            message: message.into(),
            sqlstate: None,
        }
    }

    /// Whether the request may be sent again without running anything twice.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Unreachable
    }
}

/// A reply is one JSON line; read through `docker service logs` (a one-off task) it has been
/// seen twice in one output, so when the whole text is not one value its last line is read.
fn parse_reply<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text).or_else(|whole| {
        match text.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(last) if last.trim() != text => serde_json::from_str(last.trim()),
            _ => Err(whole),
        }
    })
}

/// Reads what a request printed: its reply when it exited 0, its error envelope otherwise
/// (or, from a sidecar too old to print one, an error of kind `refused` with what it said).
pub fn read_reply<T: DeserializeOwned>(
    exit_code: i64,
    stdout: &str,
    stderr: &str,
) -> Result<T, CtlError> {
    let line = stdout.trim();
    if exit_code == 0 {
        return parse_reply(line).map_err(|e| {
            CtlError::new(
                ErrorKind::Refused,
                format!("the reply is not what this version expects ({e}): {line}"),
            )
        });
    }
    match parse_reply::<CtlError>(line) {
        Ok(err) => Err(err),
        Err(_) => {
            let said = if stderr.trim().is_empty() {
                line
            } else {
                stderr.trim()
            };
            Err(CtlError::new(
                ErrorKind::Refused,
                format!("exited with {exit_code}: {said}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_produce_their_argv() {
        let q = Request::Query {
            target: Target::new("coord1", 5432).database("citus"),
            sql: "SELECT 1".into(),
        };
        assert_eq!(
            q.argv(),
            [
                "pgswarm-sidecar",
                "ctl",
                "query",
                "--host",
                "coord1",
                "--port",
                "5432",
                "--dbname",
                "citus",
                "--connect-timeout",
                "5",
                "--sql",
                "SELECT 1"
            ]
        );
        assert_eq!(
            Request::WriteCheck(Target::new("r", 1)).argv()[2],
            "write-check"
        );
        assert_eq!(
            Request::PoolerPause {
                port: 6432,
                wait_secs: 10,
                max_pause_secs: 60
            }
            .argv()[2..],
            [
                "pooler-pause",
                "--port",
                "6432",
                "--wait",
                "10",
                "--max-pause",
                "60"
            ]
        );
        assert_eq!(
            Request::PoolerResume { port: 6432 }.argv()[2..],
            ["pooler-resume", "--port", "6432"]
        );
    }

    #[test]
    fn etcd_targets_round_trip_through_their_argument() {
        let t = EtcdTarget {
            name: "etcd1".into(),
            host: "etcd1".into(),
            client_port: 2379,
            peer_port: 2380,
        };
        assert_eq!(t.to_arg(), "etcd1=etcd1:2379:2380");
        assert_eq!(EtcdTarget::parse(&t.to_arg()), Ok(t.clone()));
        let argv = Request::EtcdStatus {
            members: vec![t.clone()],
        }
        .argv();
        assert_eq!(
            &argv[1..],
            ["ctl", "etcd-status", "--member", "etcd1=etcd1:2379:2380"]
        );
        for bad in ["etcd1", "etcd1=etcd1:2379", "=h:1:2", "e=:1:2", "e=h:x:2"] {
            assert!(EtcdTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_switchover_plan_travels_as_json_in_its_argument() {
        let plan = SwitchoverPlan {
            leader: "pg1".into(),
            leader_host: None,
            leader_addresses: Vec::new(),
            candidate: Some("pg2".into()),
            rest_port: 8008,
            pg_port: 5432,
            write: crate::Endpoint {
                host: "tasks.router".into(),
                port: 5000,
            },
            poolers: vec![crate::Endpoint {
                host: "pooler".into(),
                port: 6432,
            }],
            pause_wait_secs: 10,
            max_pause_secs: 30,
            timeout_secs: 120,
        };
        let argv = Request::Switchover(plan.clone()).argv();
        assert_eq!(&argv[1..4], ["ctl", "switchover", "--plan"]);
        let back: SwitchoverPlan = serde_json::from_str(&argv[4]).expect("the plan's JSON");
        assert_eq!(back, plan);
        // Fields left out are omitted, and an unknown one is refused.
        assert!(!argv[4].contains("leader_host"));
        assert!(serde_json::from_str::<SwitchoverPlan>(
            &argv[4].replace("\"pg_port\"", "\"pgport\"")
        )
        .is_err());
    }

    #[test]
    fn a_quorum_is_a_majority_seeing_a_leader() {
        let member = |name: &str, has_leader: bool| EtcdMemberStatus {
            name: name.into(),
            running: true,
            has_leader,
            detail: String::new(),
        };
        let reply = |l: [bool; 3]| EtcdStatusReply {
            members: vec![member("a", l[0]), member("b", l[1]), member("c", l[2])],
        };
        assert!(reply([true, true, false]).has_quorum());
        assert!(!reply([true, false, false]).has_quorum());
        assert_eq!(reply([true, false, true]).with_leader(), vec!["a", "c"]);
    }

    #[test]
    fn replies_and_errors_round_trip() {
        let reply = QueryReply {
            columns: vec!["a".into()],
            rows: vec![vec![Some("1".into()), None]],
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(read_reply::<QueryReply>(0, &text, ""), Ok(reply.clone()));
        // Read twice from a one-off task's logs: still the one reply.
        let twice = format!("{text}\n{text}\n");
        assert_eq!(read_reply::<QueryReply>(0, &twice, ""), Ok(reply));
        let err = CtlError {
            kind: ErrorKind::Statement,
            message: "boom".into(),
            sqlstate: Some("XX000".into()),
        };
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(read_reply::<QueryReply>(1, &text, "error: boom"), Err(err));
        let old = read_reply::<QueryReply>(1, "", "error: something").unwrap_err();
        assert_eq!(old.kind, ErrorKind::Refused);
        assert!(!old.is_retryable());
    }
}
