//! Mode `router`: HAProxy in front of the Patroni members.
//!
//! The read-write port goes to the member whose Patroni REST API answers `/primary` with
//! 200, the read-only port to the members answering `/replica` (checked with OPTIONS, which
//! Patroni answers with the status line only), and the optional worker
//! port (Citus) to the worker groups' primaries. Members are addressed by service name and
//! resolved at run time only (`resolvers` from the container's resolv.conf, `init-addr
//! none`), so a member that is gone, not yet scheduled or on a lost node (whose name a libc
//! lookup may take 20 s to give up on) neither keeps HAProxy from opening its ports nor from
//! following the others. The configuration comes from `haproxy.cfg.hbs`.

use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use pgswarm_contract::{Common, MemberEnv, Role};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::supervise::{self, ChildSpec};
use crate::templates::{write_file, Templates};
use crate::{http, ConfigError};

/// Name of the template in `init-scripts/`.
pub const TEMPLATE: &str = "haproxy.cfg.hbs";

/// How long a soft stop waits for open sessions before closing them, seconds.
pub const HARD_STOP_AFTER_S: u32 = 10;

/// An error in the router's part of the contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouterConfigError {
    #[error("the router needs at least one member in {var}", var = pgswarm_contract::env::ROUTER_MEMBERS)]
    NoMembers,
    #[error(
        "{var} is set but {members} is empty: list the Citus worker members to balance over",
        var = pgswarm_contract::env::ROUTER_WORKER_PORT,
        members = pgswarm_contract::env::ROUTER_WORKER_MEMBERS
    )]
    NoWorkerMembers,
    #[error(
        "{list} lists {host:?}, which is not a service name, host name or IPv4 address",
        list = pgswarm_contract::env::ROUTER_MEMBERS
    )]
    BadHost { host: String },
    #[error("the router's ports must differ, but {what} both use {port}")]
    PortClash { what: String, port: u16 },
    #[error("{var}=0: the check interval must be at least 1 ms", var = pgswarm_contract::env::ROUTER_CHECK_INTERVAL_MS)]
    ZeroInterval,
    #[error("fall and rise must be at least 1 (got fall {fall}, rise {rise})")]
    ZeroCount { fall: u32, rise: u32 },
}

/// One server line: a member by host name.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Server {
    /// HAProxy's name for the server (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Service name or address.
    pub host: String,
}

/// The optional port over Citus worker primaries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WorkerListen {
    pub port: u16,
    pub members: Vec<Server>,
}

/// The most time between checks of a server that is down or failing.
pub const FAST_CHECK_INTERVAL_MS: u32 = 200;

/// Everything `haproxy.cfg.hbs` needs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouterConfig {
    pub cluster: String,
    pub members: Vec<Server>,
    pub worker: Option<WorkerListen>,
    pub pg_port: u16,
    pub rest_port: u16,
    pub rw_port: u16,
    pub ro_port: u16,
    pub check_interval_ms: u32,
    /// Interval of the checks of a server that is down or failing (`downinter`, `fastinter`):
    /// a replica promoted to leader is in the read-write backend within this time, and a
    /// failing leader out of it after `fall` of these; a healthy server is checked at the
    /// normal interval.
    pub fast_check_interval_ms: u32,
    pub check_timeout_ms: u32,
    pub fall: u32,
    pub rise: u32,
    /// The read-only port goes to the primary while no replica passes its check.
    pub ro_fallback: bool,
    pub maxconn: u32,
    pub hard_stop_after_s: u32,
    /// HAProxy's runtime API (a Unix socket in the run directory, the service user only).
    pub admin_socket: String,
    /// Port of HAProxy's built-in Prometheus exporter; `None` = monitoring off.
    pub metrics_port: Option<u16>,
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn servers(hosts: &[String]) -> Result<Vec<Server>, RouterConfigError> {
    hosts
        .iter()
        .map(|host| {
            if !valid_host(host) {
                return Err(RouterConfigError::BadHost { host: host.clone() });
            }
            Ok(Server {
                name: host.clone(),
                host: host.clone(),
            })
        })
        .collect()
}

impl RouterConfig {
    /// The router's configuration from its contract; `None` when `role` is not a router.
    pub fn from_contract(common: &Common, role: &Role) -> Option<Result<Self, RouterConfigError>> {
        let Role::Router {
            members,
            worker_members,
            pg_port,
            rest_port,
            rw_port,
            ro_port,
            worker_port,
            check_interval_ms,
            fall,
            rise,
            ro_fallback,
        } = role
        else {
            return None;
        };
        Some((|| {
            if members.is_empty() {
                return Err(RouterConfigError::NoMembers);
            }
            if *check_interval_ms == 0 {
                return Err(RouterConfigError::ZeroInterval);
            }
            if *fall == 0 || *rise == 0 {
                return Err(RouterConfigError::ZeroCount {
                    fall: *fall,
                    rise: *rise,
                });
            }
            let mut ports = vec![("read-write", *rw_port), ("read-only", *ro_port)];
            if let Some(port) = worker_port {
                ports.push(("worker", *port));
            }
            if let Some(port) = common.metrics_port {
                ports.push(("metrics", port));
            }
            for (i, (a, pa)) in ports.iter().enumerate() {
                if let Some((b, _)) = ports[i + 1..].iter().find(|(_, pb)| pb == pa) {
                    return Err(RouterConfigError::PortClash {
                        what: format!("the {a} and {b} ports"),
                        port: *pa,
                    });
                }
            }
            let worker = match worker_port {
                None => None,
                Some(port) => {
                    if worker_members.is_empty() {
                        return Err(RouterConfigError::NoWorkerMembers);
                    }
                    Some(WorkerListen {
                        port: *port,
                        members: servers(worker_members)?,
                    })
                }
            };
            Ok(RouterConfig {
                cluster: common.cluster.clone(),
                members: servers(members)?,
                worker,
                pg_port: *pg_port,
                rest_port: *rest_port,
                rw_port: *rw_port,
                ro_port: *ro_port,
                check_interval_ms: *check_interval_ms,
                // A check must end before the next one is due.
                fast_check_interval_ms: (*check_interval_ms).min(FAST_CHECK_INTERVAL_MS),
                check_timeout_ms: (*check_interval_ms).clamp(200, 2000),
                fall: *fall,
                rise: *rise,
                ro_fallback: *ro_fallback,
                maxconn: 4096,
                admin_socket: admin_socket_path(common).display().to_string(),
                hard_stop_after_s: HARD_STOP_AFTER_S,
                metrics_port: common.metrics_port,
            })
        })())
    }

    /// The ports a healthy router listens on.
    pub fn listen_ports(&self) -> Vec<u16> {
        let mut ports = vec![self.rw_port, self.ro_port];
        if let Some(w) = &self.worker {
            ports.push(w.port);
        }
        ports
    }
}

/// Where haproxy.cfg goes inside the run directory.
pub fn config_path(common: &Common) -> PathBuf {
    PathBuf::from(&common.run_dir).join("haproxy.cfg")
}

/// Where HAProxy's runtime API listens inside the run directory.
pub fn admin_socket_path(common: &Common) -> PathBuf {
    PathBuf::from(&common.run_dir).join("haproxy.sock")
}

/// Renders haproxy.cfg.
pub fn render(templates: &Templates, config: &RouterConfig) -> anyhow::Result<String> {
    templates.render(TEMPLATE, config)
}

/// Renders and writes haproxy.cfg, and returns the HAProxy process to supervise: master-worker
/// in the foreground (`-W -db`); SIGTERM becomes a soft stop (SIGUSR1) bounded by
/// `hard-stop-after`, SIGHUP reloads.
pub fn prepare(
    common: &Common,
    templates: &Templates,
    config: &RouterConfig,
) -> anyhow::Result<ChildSpec> {
    let path = config_path(common);
    let text = render(templates, config)?;
    // No credential in it; readable by the service user only all the same.
    write_file(&path, text.as_bytes(), 0o640)?;
    info!(
        path = %path.display(),
        members = config.members.len(),
        rw_port = config.rw_port,
        ro_port = config.ro_port,
        "rendered haproxy.cfg"
    );
    Ok(ChildSpec::new("haproxy", "haproxy")
        .args(["-W", "-db", "-f"])
        .arg(path)
        .forward(Signal::SIGTERM, Signal::SIGUSR1)
        .forward(Signal::SIGINT, Signal::SIGUSR1)
        .escalate_with(Signal::SIGTERM))
}

fn config_of(member: &MemberEnv) -> anyhow::Result<RouterConfig> {
    match RouterConfig::from_contract(&member.common, &member.role) {
        None => bail!("mode {} is not a router", member.mode()),
        Some(config) => Ok(config.map_err(|e| ConfigError(e.to_string()))?),
    }
}

/// Runs HAProxy to its end; returns its exit code.
pub async fn run(member: &MemberEnv, templates: &Templates) -> anyhow::Result<i32> {
    let config = config_of(member)?;
    let child = prepare(&member.common, templates, &config)?;
    let mut backends = vec!["rw".to_string()];
    if config.ro_fallback {
        backends.push("ro_primary".into());
    }
    tokio::spawn(one_leader(
        config.admin_socket.clone(),
        backends,
        config.rest_port,
    ));
    supervise::supervise(child, std::future::pending()).await
}

// ---------------------------------------------------------------------------------------------
// One leader in the read-write backend, at once

/// How often the sidecar reads the servers' states from HAProxy's runtime API.
const STATE_EVERY: Duration = Duration::from_millis(100);

/// Keeps at most one server up in each of `backends` (those whose servers answer Patroni's
/// `/primary`): when a server comes up there while another one is up, the newcomer is the new
/// leader (Patroni answers `/primary` with 200 only on the member holding the leader key), and
/// the other is marked down at once through HAProxy's runtime API (`set server … health
/// down`), closing its sessions, instead of staying up until `fall` of its checks have failed
/// (seconds for a killed container whose address no longer answers). Marking a server down
/// is always safe: its next successful check brings it back. No server is ever forced up.
async fn one_leader(socket: String, backends: Vec<String>, rest_port: u16) {
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(STATE_EVERY).await;
        let stat = match admin_command(&socket, "show stat").await {
            Ok(stat) => stat,
            Err(e) => {
                let text = format!("{e:#}");
                if text != last_error {
                    debug!(error = %text, "cannot read HAProxy's server states yet");
                    last_error = text;
                }
                continue;
            }
        };
        let up = servers_up(&stat);
        for backend in &backends {
            let now_up = up.get(backend).cloned().unwrap_or_default();
            let (mut leader, mut stale) =
                stale_leader(current.get(backend).map(String::as_str), &now_up);
            // A newcomer is trusted only once Patroni says it leads: HAProxy also brings a
            // server up without any check when its name resolves again (a member's task
            // replaced), and that one may well be a replica.
            if let (Some(new), Some(old)) = (leader.clone(), stale.clone()) {
                let leads = matches!(
                    crate::http::get(&new, rest_port, "/primary", Duration::from_secs(1)).await,
                    Ok((200, _))
                );
                if !leads {
                    let command = format!("set server {backend}/{new} health down");
                    match admin_command(&socket, &command).await {
                        Ok(_) => info!(backend = %backend, server = %new, leader = %old,
                            "a server came up beside the leader without leading: marked down"),
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), %command, "cannot mark a server down")
                        }
                    }
                    leader = Some(old);
                    stale = None;
                }
            }
            if let Some(old) = stale {
                let command = format!("set server {backend}/{old} health down");
                match admin_command(&socket, &command).await {
                    Ok(_) => info!(backend = %backend, leader = ?leader, former = %old,
                        "a new leader is up: the former one is marked down at once"),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), %command, "cannot mark the former leader down")
                    }
                }
            }
            match leader {
                Some(l) => {
                    current.insert(backend.clone(), l);
                }
                None => {
                    current.remove(backend);
                }
            }
        }
    }
}

/// The leader to remember for a backend and the server to mark down, from the leader
/// remembered before and the servers up now. With one server up, that one; when a server came
/// up beside the remembered leader, the newcomer, and the remembered one is stale; with none
/// up, the remembered one (so the next single newcomer is recognised); with several up and no
/// single newcomer beside the remembered leader (e.g. the router just started), nothing is
/// decided here and the checks settle it.
pub fn stale_leader(remembered: Option<&str>, up: &[String]) -> (Option<String>, Option<String>) {
    match up {
        [] => (remembered.map(str::to_string), None),
        [only] => (Some(only.clone()), None),
        _ => match remembered {
            Some(r) if up.iter().any(|u| u == r) => {
                let newcomers: Vec<&String> = up.iter().filter(|u| *u != r).collect();
                match newcomers.as_slice() {
                    [one] => (Some((*one).clone()), Some(r.to_string())),
                    _ => (Some(r.to_string()), None),
                }
            }
            _ => (remembered.map(str::to_string), None),
        },
    }
}

/// The servers up in each backend, from `show stat` (CSV with a `# pxname,svname,…` header):
/// a status of `UP` or `UP n/m` (up, with failing checks counted).
pub fn servers_up(stat: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = stat.lines();
    let Some(header) = lines.next() else {
        return out;
    };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let index = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(status)) = (index("pxname"), index("svname"), index("status"))
    else {
        return out;
    };
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(p), Some(n), Some(st)) = (fields.get(px), fields.get(sv), fields.get(status))
        else {
            continue;
        };
        if matches!(*n, "FRONTEND" | "BACKEND") {
            continue;
        }
        if *st == "UP" || st.starts_with("UP ") {
            out.entry(p.to_string()).or_default().push(n.to_string());
        }
    }
    out
}

/// One command on HAProxy's runtime API (one connection per command: HAProxy answers and
/// closes).
async fn admin_command(socket: &str, command: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let talk = async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to HAProxy's runtime API at {socket}"))?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, anyhow::Error>(answer)
    };
    tokio::time::timeout(Duration::from_secs(1), talk)
        .await
        .with_context(|| format!("HAProxy's runtime API did not answer `{command}` within 1 s"))?
}

/// Health: every port of the router accepts connections.
pub async fn health(member: &MemberEnv) -> anyhow::Result<String> {
    let config = config_of(member)?;
    let ports = config.listen_ports();
    for port in &ports {
        http::listening("127.0.0.1", *port, Duration::from_secs(5)).await?;
    }
    Ok(format!("router listening on ports {ports:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role() -> Role {
        Role::Router {
            members: vec!["pg1".into(), "pg2".into(), "pg3".into()],
            worker_members: vec![],
            pg_port: 5432,
            rest_port: 8008,
            rw_port: 5000,
            ro_port: 5001,
            worker_port: None,
            check_interval_ms: 1000,
            fall: 2,
            rise: 1,
            ro_fallback: true,
        }
    }

    fn config(role: &Role) -> RouterConfig {
        RouterConfig::from_contract(&Common::new("demo", "router"), role)
            .expect("a router role")
            .expect("valid")
    }

    /// The proxy section `header` (`listen rw`, `backend ro_replicas` ...) up to the next one.
    fn section<'a>(text: &'a str, header: &str) -> &'a str {
        let start = text
            .find(&format!("\n{header}\n"))
            .unwrap_or_else(|| panic!("no {header} in\n{text}"));
        let rest = &text[start + 1..];
        let end = ["\nlisten ", "\nfrontend ", "\nbackend "]
            .iter()
            .filter_map(|h| rest[1..].find(h).map(|e| e + 1))
            .min()
            .unwrap_or(rest.len());
        &rest[..end]
    }

    #[test]
    fn read_write_goes_to_primary_and_read_only_to_replicas() {
        let text = render(&Templates::default(), &config(&role())).unwrap();
        let rw = section(&text, "listen rw");
        assert!(rw.contains("bind :5000"), "{rw}");
        assert!(
            rw.contains("http-check send meth OPTIONS uri /primary"),
            "{rw}"
        );
        assert!(rw.contains("http-check expect status 200"), "{rw}");
        for m in ["pg1", "pg2", "pg3"] {
            assert!(
                rw.contains(&format!("server {m} {m}:5432 check port 8008")),
                "{rw}"
            );
        }
        let front = section(&text, "frontend ro");
        assert!(front.contains("bind :5001"), "{front}");
        assert!(
            front.contains("use_backend ro_replicas if { nbsrv(ro_replicas) gt 0 }"),
            "{front}"
        );
        assert!(front.contains("default_backend ro_primary"), "{front}");
        let ro = section(&text, "backend ro_replicas");
        assert!(ro.contains("uri /replica"), "{ro}");
        assert!(ro.contains("server pg2 pg2:5432 check port 8008"), "{ro}");
        let fallback = section(&text, "backend ro_primary");
        assert!(fallback.contains("uri /primary"), "{fallback}");
        assert!(
            fallback.contains("server pg2 pg2:5432 check port 8008"),
            "{fallback}"
        );
        assert!(!text.contains("listen workers"), "{text}");
    }

    #[test]
    fn read_only_fallback_can_be_turned_off() {
        let mut r = role();
        if let Role::Router { ro_fallback, .. } = &mut r {
            *ro_fallback = false;
        }
        let text = render(&Templates::default(), &config(&r)).unwrap();
        let ro = section(&text, "listen ro");
        assert!(ro.contains("bind :5001"), "{ro}");
        assert!(ro.contains("uri /replica"), "{ro}");
        assert!(!text.contains("ro_primary"), "{text}");
    }

    #[test]
    fn servers_resolve_at_run_time_and_drop_sessions_when_down() {
        let text = render(&Templates::default(), &config(&role())).unwrap();
        assert!(
            text.contains("resolvers swarm\n    parse-resolv-conf"),
            "{text}"
        );
        let default_server = text
            .lines()
            .find(|l| l.trim_start().starts_with("default-server"))
            .expect("default-server line");
        for word in [
            "inter 1000ms",
            "fastinter 200ms",
            "downinter 200ms",
            "fall 2",
            "rise 1",
            "on-marked-down shutdown-sessions",
            "resolvers swarm",
            "init-addr none",
        ] {
            assert!(default_server.contains(word), "{word} in {default_server}");
        }
        for word in ["option tcpka", "option clitcpka", "option srvtcpka"] {
            assert!(text.contains(word), "{word}");
        }
    }

    #[test]
    fn a_server_coming_up_beside_the_leader_makes_the_leader_stale() {
        let up = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let some = |n: &str| Some(n.to_string());
        // The usual state: one leader.
        assert_eq!(stale_leader(None, &up(&["pg1"])), (some("pg1"), None));
        assert_eq!(
            stale_leader(Some("pg1"), &up(&["pg1"])),
            (some("pg1"), None)
        );
        // pg2 promoted while pg1 still passes its last check: pg1 goes down at once.
        assert_eq!(
            stale_leader(Some("pg1"), &up(&["pg1", "pg2"])),
            (some("pg2"), some("pg1"))
        );
        // Nobody up: the former leader is remembered.
        assert_eq!(stale_leader(Some("pg1"), &[]), (some("pg1"), None));
        // Several up with nothing remembered (a fresh router), or two newcomers: the checks
        // decide, nothing is forced.
        assert_eq!(stale_leader(None, &up(&["pg1", "pg2"])), (None, None));
        assert_eq!(
            stale_leader(Some("pg1"), &up(&["pg1", "pg2", "pg3"])),
            (some("pg1"), None)
        );
        assert_eq!(
            stale_leader(Some("pg3"), &up(&["pg1", "pg2"])),
            (some("pg3"), None)
        );
    }

    #[test]
    fn server_states_come_from_show_stat() {
        let stat = "# pxname,svname,qcur,status,weight\n\
                    rw,FRONTEND,0,OPEN,\n\
                    rw,pg1,0,UP,1\n\
                    rw,pg2,0,DOWN,1\n\
                    rw,pg3,0,UP 1/2,1\n\
                    rw,BACKEND,0,UP,2\n\
                    ro_replicas,pg2,0,DOWN 1/2,1\n\
                    ro_primary,pg1,0,MAINT,1\n";
        let up = servers_up(stat);
        assert_eq!(
            up.get("rw"),
            Some(&vec!["pg1".to_string(), "pg3".to_string()])
        );
        assert_eq!(up.get("ro_replicas"), None);
        assert_eq!(up.get("ro_primary"), None);
        assert!(servers_up("").is_empty());
    }

    #[test]
    fn check_settings_come_from_the_contract() {
        let mut r = role();
        if let Role::Router {
            check_interval_ms,
            fall,
            rise,
            ..
        } = &mut r
        {
            *check_interval_ms = 3000;
            *fall = 3;
            *rise = 2;
        }
        let text = render(&Templates::default(), &config(&r)).unwrap();
        assert!(text.contains("inter 3000ms"), "{text}");
        assert!(text.contains("fall 3 rise 2"), "{text}");
        assert!(text.contains("timeout check 2000ms"), "{text}");
    }

    #[test]
    fn worker_port_balances_over_worker_primaries() {
        let mut r = role();
        if let Role::Router {
            worker_members,
            worker_port,
            ..
        } = &mut r
        {
            *worker_members = vec!["w1a".into(), "w2a".into()];
            *worker_port = Some(5002);
        }
        let c = config(&r);
        assert_eq!(c.listen_ports(), vec![5000, 5001, 5002]);
        let text = render(&Templates::default(), &c).unwrap();
        let workers = section(&text, "listen workers");
        assert!(workers.contains("bind :5002"), "{workers}");
        assert!(workers.contains("uri /primary"), "{workers}");
        assert!(
            workers.contains("server w1a w1a:5432 check port 8008"),
            "{workers}"
        );
        // The coordinator members stay on the read-write port, the workers only here.
        assert!(!section(&text, "listen rw").contains("w1a"));
    }

    #[test]
    fn bad_router_contracts_are_named() {
        let mut r = role();
        if let Role::Router { ro_port, .. } = &mut r {
            *ro_port = 5000;
        }
        let err = RouterConfig::from_contract(&Common::new("demo", "router"), &r)
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("5000"), "{err}");

        let mut r = role();
        if let Role::Router { worker_port, .. } = &mut r {
            *worker_port = Some(5002);
        }
        let err = RouterConfig::from_contract(&Common::new("demo", "router"), &r)
            .unwrap()
            .unwrap_err();
        assert_eq!(err, RouterConfigError::NoWorkerMembers);
        assert!(err.to_string().contains("PGSWARM_ROUTER_WORKER_MEMBERS"));

        let mut r = role();
        if let Role::Router { members, .. } = &mut r {
            members.push("bad host;".into());
        }
        let err = RouterConfig::from_contract(&Common::new("demo", "router"), &r)
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("bad host;"), "{err}");
    }

    #[test]
    fn addresses_are_kept_as_given() {
        let s = servers(&["127.0.0.2".into(), "demo_pg1".into()]).unwrap();
        assert_eq!(s[0].host, "127.0.0.2");
        assert_eq!(s[1].name, "demo_pg1");
        assert!(servers(&["::1".into()]).is_err());
    }
}
