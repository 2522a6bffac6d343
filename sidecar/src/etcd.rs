//! Mode `etcd`: one member of the etcd v3 cluster Patroni uses as its DCS.
//!
//! Everything is given on etcd's command line (no config file, no `ETCD_*` variables: the
//! child's environment is cleared), with flags that etcd 3.4 (Debian bookworm) and 3.5
//! (trixie) both accept. The member advertises itself by the host of its own entry in the
//! initial cluster (its service name on Swarm), so the peer and client addresses it announces
//! always agree with what the other members were told. A data directory that already holds a
//! member is started as it is: etcd then ignores the `--initial-*` flags. An empty data
//! directory while the cluster has formed already (a lost volume) rejoins it through the
//! healthy majority ([`rejoin`]).
//!
//! Patroni's etcd3 client talks to etcd's gRPC gateway (`/v3/...`), which both versions serve
//! on the client port by default (`--enable-grpc-gateway` defaults to true).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use pgswarm_contract::{defaults, env, Common, EtcdPeer, MemberEnv, Role};
use tracing::{info, warn};

use crate::supervise::{self, ChildSpec};
use crate::{http, ConfigError};

pub mod rejoin;

/// An error in the etcd part of the contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EtcdConfigError {
    #[error(
        "{member_var}={member:?} is not in {var} (members: {names}); every etcd member must be \
         listed there under its own name",
        member_var = env::MEMBER,
        var = env::ETCD_INITIAL_CLUSTER
    )]
    NotListed { member: String, names: String },
    #[error("{var} names member {0:?} twice", var = env::ETCD_INITIAL_CLUSTER)]
    Duplicate(String),
    #[error(
        "{var}: peer URL {url:?} of {name:?} is not of the form http://host:port",
        var = env::ETCD_INITIAL_CLUSTER
    )]
    BadUrl { name: String, url: String },
    #[error(
        "{var} gives this member's peer port as {listed}, but {port_var}={peer_port}: \
         make them agree",
        var = env::ETCD_INITIAL_CLUSTER,
        port_var = env::ETCD_PEER_PORT
    )]
    PeerPortMismatch { listed: u16, peer_port: u16 },
    #[error("the etcd client and peer ports must differ, both are {0}")]
    SamePorts(u16),
}

/// How to start this etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdPlan {
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    /// The host this member advertises (from its initial-cluster entry).
    pub advertise_host: String,
    /// Whether the data directory already holds a member (a restart, not a first start):
    /// its write-ahead log exists, the test etcd itself applies.
    pub existing_member: bool,
    /// The number of members of the initial cluster.
    pub cluster_size: usize,
    /// The members of the initial cluster (this one included).
    pub peers: Vec<EtcdPeer>,
    /// This member's peer URL.
    pub peer_url: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl EtcdPlan {
    /// Starts this member as a new member of the existing cluster whose members are
    /// `initial_cluster` (from [`rejoin::prepare`]).
    pub fn join_existing(&mut self, initial_cluster: &str) {
        for arg in &mut self.args {
            if arg.starts_with("--initial-cluster=") {
                *arg = format!("--initial-cluster={initial_cluster}");
            } else if arg.starts_with("--initial-cluster-state=") {
                *arg = "--initial-cluster-state=existing".to_string();
            }
        }
    }
}

/// Splits `http://host:port` into host and port.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.to_string(), port))
}

/// Whether `dir` holds a member's write-ahead log (`member/wal/*.wal`): what etcd itself
/// checks to tell a restart from a first start.
fn has_wal(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("member").join("wal"))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "wal"))
        })
        .unwrap_or(false)
}

/// Moves aside what an aborted first start left (a `member` folder without a write-ahead
/// log, such as the backend etcd creates before it refuses to bootstrap a member the
/// cluster already knows), so the next start begins clean. Kept, not deleted.
fn set_aside_aborted_start(dir: &Path) -> anyhow::Result<()> {
    let member = dir.join("member");
    if !member.exists() {
        return Ok(());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let aside = dir.join(format!("member.aborted-{stamp}"));
    std::fs::rename(&member, &aside)
        .with_context(|| format!("moving {} aside to {}", member.display(), aside.display()))?;
    warn!(
        from = %member.display(),
        to = %aside.display(),
        "the data directory holds a member folder without a write-ahead log (an aborted \
         first start); moved it aside"
    );
    Ok(())
}

/// Where etcd keeps its data: `<data root>/etcd`.
pub fn data_dir(common: &Common) -> PathBuf {
    Path::new(&common.data_root).join(defaults::ETCD_SUBDIR)
}

/// Plans this member's start from the contract. `None` when `role` is not an etcd member.
pub fn plan(common: &Common, role: &Role) -> Option<Result<EtcdPlan, EtcdConfigError>> {
    let Role::Etcd {
        initial_cluster,
        client_port,
        peer_port,
    } = role
    else {
        return None;
    };
    Some(plan_member(
        common,
        initial_cluster,
        *client_port,
        *peer_port,
    ))
}

fn plan_member(
    common: &Common,
    initial_cluster: &[EtcdPeer],
    client_port: u16,
    peer_port: u16,
) -> Result<EtcdPlan, EtcdConfigError> {
    if client_port == peer_port {
        return Err(EtcdConfigError::SamePorts(client_port));
    }
    for (i, peer) in initial_cluster.iter().enumerate() {
        if initial_cluster[..i].iter().any(|p| p.name == peer.name) {
            return Err(EtcdConfigError::Duplicate(peer.name.clone()));
        }
        if host_port(&peer.peer_url).is_none() {
            return Err(EtcdConfigError::BadUrl {
                name: peer.name.clone(),
                url: peer.peer_url.clone(),
            });
        }
    }
    let me = initial_cluster
        .iter()
        .find(|p| p.name == common.member)
        .ok_or_else(|| EtcdConfigError::NotListed {
            member: common.member.clone(),
            names: initial_cluster
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let (host, listed_port) = host_port(&me.peer_url).ok_or_else(|| EtcdConfigError::BadUrl {
        name: me.name.clone(),
        url: me.peer_url.clone(),
    })?;
    if listed_port != peer_port {
        return Err(EtcdConfigError::PeerPortMismatch {
            listed: listed_port,
            peer_port,
        });
    }
    let dir = data_dir(common);
    let existing_member = has_wal(&dir);
    let cluster = initial_cluster
        .iter()
        .map(|p| format!("{}={}", p.name, p.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let args = vec![
        format!("--name={}", common.member),
        format!("--data-dir={}", dir.display()),
        format!("--listen-client-urls=http://0.0.0.0:{client_port}"),
        format!("--advertise-client-urls=http://{host}:{client_port}"),
        format!("--listen-peer-urls=http://0.0.0.0:{peer_port}"),
        format!("--initial-advertise-peer-urls={}", me.peer_url),
        format!("--initial-cluster={cluster}"),
        format!("--initial-cluster-token={}", common.cluster),
        "--initial-cluster-state=new".to_string(),
        // Patroni rewrites its keys every loop: keep one hour of history, not all of it.
        "--auto-compaction-mode=periodic".to_string(),
        "--auto-compaction-retention=1".to_string(),
        "--logger=zap".to_string(),
        "--log-outputs=stderr".to_string(),
    ];
    Ok(EtcdPlan {
        data_dir: dir,
        args,
        advertise_host: host,
        existing_member,
        cluster_size: initial_cluster.len(),
        peers: initial_cluster.to_vec(),
        peer_url: me.peer_url.clone(),
        client_port,
        peer_port,
    })
}

/// The etcd process to supervise. SIGTERM stops it cleanly (it leaves the cluster's quorum
/// as a stopped member, not a removed one).
pub fn child_spec(plan: &EtcdPlan) -> ChildSpec {
    ChildSpec::new("etcd", "etcd").args(plan.args.iter())
}

/// Runs this etcd member to its end; returns etcd's exit code.
pub async fn run(member: &MemberEnv) -> anyhow::Result<i32> {
    let Some(plan) = plan(&member.common, &member.role) else {
        bail!("mode {} is not an etcd member", member.mode());
    };
    let mut plan = plan.map_err(|e| ConfigError(e.to_string()))?;
    if plan.cluster_size % 2 == 0 {
        warn!(
            members = plan.cluster_size,
            "an even number of etcd members tolerates no more failures than one member fewer; \
             use 3 or 5"
        );
    }
    // etcd wants its data directory private.
    std::fs::create_dir_all(&plan.data_dir)
        .with_context(|| format!("creating {}", plan.data_dir.display()))?;
    std::fs::set_permissions(&plan.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", plan.data_dir.display()))?;
    if !plan.existing_member {
        set_aside_aborted_start(&plan.data_dir)?;
    }
    if plan.existing_member {
        info!(data_dir = %plan.data_dir.display(), "restarting the existing etcd member from its data");
    } else if let Some(initial_cluster) = rejoin::prepare(&plan, &member.common).await? {
        plan.join_existing(&initial_cluster);
        info!(
            data_dir = %plan.data_dir.display(),
            initial_cluster = %initial_cluster,
            "starting as a new member of the existing etcd cluster"
        );
    } else {
        info!(
            data_dir = %plan.data_dir.display(),
            members = plan.cluster_size,
            advertise = %plan.advertise_host,
            "starting a new etcd member of the initial cluster"
        );
    }
    let code = supervise::supervise(child_spec(&plan), std::future::pending()).await?;
    // etcd stops cleanly on SIGTERM and then re-raises it on itself, so a clean stop ends
    // as "killed by SIGTERM" (143): report it as the clean exit it is.
    if code == 128 + Signal::SIGTERM as i32 && supervise::stop_requested() {
        info!("etcd stopped on request");
        return Ok(0);
    }
    Ok(code)
}

/// Health: the etcd process runs (this sidecar is PID 1 and ends with it) and its PEER port
/// accepts TCP connections, which etcd opens before it has joined a quorum. The client port
/// (`GET /version`) only answers once the member has joined a cluster with a leader, and on
/// Swarm a task's name is published in DNS only after its healthcheck passes: a check on the
/// client port would keep every member out of DNS, so the members could never find each
/// other and the cluster would never form. The summary says whether the cluster has a leader
/// (`GET /health` on the client port) but never fails on it: Swarm would replace a member of
/// a cluster without quorum, which cannot bring the quorum back and only delays it.
pub async fn health(member: &MemberEnv) -> anyhow::Result<String> {
    let Role::Etcd {
        client_port,
        peer_port,
        ..
    } = &member.role
    else {
        bail!("mode {} is not an etcd member", member.mode());
    };
    http::listening("127.0.0.1", *peer_port, Duration::from_secs(5))
        .await
        .context("etcd does not accept peer connections")?;
    let quorum = match http::get("127.0.0.1", *client_port, "/health", Duration::from_secs(2)).await
    {
        Ok((200, body)) if body.contains("true") => "the cluster has a leader",
        Ok(_) => "the cluster has no leader (quorum lost or not formed yet)",
        Err(_) => "not serving clients yet (no quorum formed or joined yet)",
    };
    Ok(format!(
        "etcd accepting peers on port {peer_port}; {quorum}"
    ))
}

/// What etcd member `target` answers from here: whether its peer port answers (the process
/// runs; with the cluster version it reports) and whether its client port's `/health`
/// reports a leader. For `swarmctl doctor`, which must tell a lost quorum from a slow member.
pub async fn member_status(
    target: &pgswarm_contract::ctl::EtcdTarget,
) -> pgswarm_contract::ctl::EtcdMemberStatus {
    const PROBE: Duration = Duration::from_secs(3);
    // etcd binds its peer port before it serves it (and its client port before it has a
    // quorum): an accepted connection means the process runs, as for the healthcheck.
    let (listening, peer, health) = tokio::join!(
        http::listening(&target.host, target.peer_port, PROBE),
        http::get(&target.host, target.peer_port, "/version", PROBE),
        http::get(&target.host, target.client_port, "/health", PROBE)
    );
    let mut detail = Vec::new();
    let running = match (&listening, &peer) {
        (_, Ok((code, body))) => {
            detail.push(format!("peer port: {code} {}", body.trim()));
            true
        }
        (Ok(()), Err(_)) => {
            detail.push("peer port: accepts connections, no answer yet".to_string());
            true
        }
        (Err(e), _) => {
            detail.push(format!("peer port: {e:#}"));
            false
        }
    };
    let has_leader = match &health {
        Ok((200, body)) if body.contains("true") => {
            detail.push("health: has a leader".to_string());
            true
        }
        Ok((code, body)) => {
            detail.push(format!("health: {code} {} (no leader)", body.trim()));
            false
        }
        Err(e) => {
            detail.push(format!("health: {e:#}"));
            false
        }
    };
    pgswarm_contract::ctl::EtcdMemberStatus {
        name: target.name.clone(),
        running,
        has_leader,
        detail: detail.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Vec<EtcdPeer> {
        (1..=3)
            .map(|i| EtcdPeer {
                name: format!("etcd{i}"),
                peer_url: format!("http://demo_etcd{i}:2380"),
            })
            .collect()
    }

    fn common(member: &str) -> Common {
        let mut c = Common::new("demo", member);
        c.data_root = "/nonexistent/pgswarm".into();
        c
    }

    fn arg<'a>(plan: &'a EtcdPlan, flag: &str) -> Option<&'a str> {
        plan.args
            .iter()
            .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
    }

    #[test]
    fn command_line_names_and_advertises_the_member() {
        let plan = plan_member(&common("etcd2"), &cluster(), 2379, 2380).unwrap();
        assert_eq!(arg(&plan, "name"), Some("etcd2"));
        assert_eq!(arg(&plan, "data-dir"), Some("/nonexistent/pgswarm/etcd"));
        assert_eq!(
            arg(&plan, "listen-client-urls"),
            Some("http://0.0.0.0:2379")
        );
        assert_eq!(
            arg(&plan, "advertise-client-urls"),
            Some("http://demo_etcd2:2379")
        );
        assert_eq!(arg(&plan, "listen-peer-urls"), Some("http://0.0.0.0:2380"));
        assert_eq!(
            arg(&plan, "initial-advertise-peer-urls"),
            Some("http://demo_etcd2:2380")
        );
        assert_eq!(
            arg(&plan, "initial-cluster"),
            Some(
                "etcd1=http://demo_etcd1:2380,etcd2=http://demo_etcd2:2380,\
                 etcd3=http://demo_etcd3:2380"
            )
        );
        assert_eq!(arg(&plan, "initial-cluster-token"), Some("demo"));
        assert_eq!(arg(&plan, "initial-cluster-state"), Some("new"));
        assert!(!plan.existing_member);
        assert_eq!(plan.cluster_size, 3);
    }

    #[test]
    fn an_existing_member_directory_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = common("etcd1");
        c.data_root = dir.path().display().to_string();
        // A member folder without a write-ahead log is an aborted start, not a member.
        std::fs::create_dir_all(dir.path().join("etcd/member/wal")).unwrap();
        std::fs::write(dir.path().join("etcd/member/snap.db"), "").unwrap();
        assert!(
            !plan_member(&c, &cluster(), 2379, 2380)
                .unwrap()
                .existing_member
        );
        set_aside_aborted_start(&dir.path().join("etcd")).unwrap();
        assert!(!dir.path().join("etcd/member").exists());
        std::fs::create_dir_all(dir.path().join("etcd/member/wal")).unwrap();
        std::fs::write(
            dir.path()
                .join("etcd/member/wal/0000000000000000-0000000000000000.wal"),
            "",
        )
        .unwrap();
        let plan = plan_member(&c, &cluster(), 2379, 2380).unwrap();
        assert!(plan.existing_member);
    }

    #[test]
    fn bad_etcd_contracts_are_named() {
        let err = plan_member(&common("etcd9"), &cluster(), 2379, 2380).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("etcd9") && text.contains("etcd1, etcd2, etcd3"),
            "{text}"
        );
        let err = plan_member(&common("etcd1"), &cluster(), 2379, 2390).unwrap_err();
        assert_eq!(
            err,
            EtcdConfigError::PeerPortMismatch {
                listed: 2380,
                peer_port: 2390
            }
        );
        let mut bad = cluster();
        bad[1].peer_url = "etcd2:2380".into();
        let err = plan_member(&common("etcd1"), &bad, 2379, 2380).unwrap_err();
        assert!(err.to_string().contains("http://host:port"), "{err}");
        let mut dup = cluster();
        dup[2].name = "etcd1".into();
        assert_eq!(
            plan_member(&common("etcd1"), &dup, 2379, 2380).unwrap_err(),
            EtcdConfigError::Duplicate("etcd1".into())
        );
    }
}
