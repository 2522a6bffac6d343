//! Rules for one field or section at a time: names, image, timings, parameters, network,
//! volumes, resources, published ports and which sections a topology takes.

use super::*;
use pgswarm_contract::rules::{self, keepalive, RoleField, TimingField};

/// Swarm limits service names (`<stack>_<service>`) to 63 characters.
pub(super) const MAX_SERVICE_NAME: usize = 63;
/// Longest cluster name, leaving room for member names and secret names.
pub(super) const MAX_CLUSTER_NAME: usize = 30;
/// Patroni's timings, defaulted, checked with the contract's rules (the sidecar applies the
/// same ones, so a spec that passes here cannot make a member refuse to start).
pub(super) fn check_timing(ctx: &mut Ctx, raw: Option<&RawPatroni>, root: &FieldPath) -> Timing {
    let path = root.key("patroni");
    let t = Timing {
        ttl: raw.and_then(|p| p.ttl).unwrap_or(defaults::TTL),
        loop_wait: raw.and_then(|p| p.loop_wait).unwrap_or(defaults::LOOP_WAIT),
        retry_timeout: raw
            .and_then(|p| p.retry_timeout)
            .unwrap_or(defaults::RETRY_TIMEOUT),
        maximum_lag_on_failover: raw
            .and_then(|p| p.maximum_lag_on_failover)
            .unwrap_or(defaults::MAXIMUM_LAG_ON_FAILOVER),
    };
    for problem in rules::timing_problems(t.ttl, t.loop_wait, t.retry_timeout) {
        let at = match problem.field() {
            TimingField::Ttl => path.key("ttl"),
            TimingField::LoopWait => path.key("loop_wait"),
            TimingField::RetryTimeout => path.key("retry_timeout"),
            TimingField::Together => path.clone(),
        };
        ctx.report(Rule::PatroniTiming, &at, problem.to_string());
    }
    t
}

pub(super) fn check_names(
    ctx: &mut Ctx,
    cluster: &str,
    drafts: &[&Draft],
    router: bool,
    pooler: bool,
) {
    // Name to (what carries it, where the spec wrote it when it did).
    let mut seen: BTreeMap<&str, (String, Option<&FieldPath>)> = BTreeMap::new();
    if router {
        seen.insert(ROUTER_SERVICE, ("the router service".into(), None));
    }
    if pooler {
        seen.insert(POOLER_SERVICE, ("the pooler service".into(), None));
    }
    for d in drafts {
        if let Err(why) = check_member_name(&d.name) {
            ctx.report(Rule::MemberName, &d.name_path, why);
            continue;
        }
        if cluster.len() + 1 + d.name.len() > MAX_SERVICE_NAME {
            ctx.report(
                Rule::ServiceNameLength,
                &d.name_path,
                format!(
                    "service `{cluster}_{}` would be {} characters; Swarm allows {MAX_SERVICE_NAME}: \
                     shorten the cluster or member name",
                    d.name,
                    cluster.len() + 1 + d.name.len()
                ),
            );
        }
        let this = if d.generated {
            format!("the member generated from {}", d.path)
        } else {
            format!("the member declared at {}", d.path)
        };
        match seen.get(d.name.as_str()) {
            // A generated name clashing with one the user wrote: point at the written one.
            Some((_, Some(written))) if d.generated => {
                let msg = format!(
                    "`{}` is also the name of {this}: choose another name for this member",
                    d.name
                );
                let at = (*written).clone();
                ctx.report(Rule::DuplicateName, &at, msg);
            }
            Some((other, _)) => {
                let msg = format!(
                    "`{}` is already the name of {other}: every member needs a name of its own",
                    d.name
                );
                ctx.report(Rule::DuplicateName, &d.name_path, msg);
            }
            None => {
                let written = (!d.generated).then_some(&d.name_path);
                seen.insert(&d.name, (this, written));
            }
        }
    }
}

/// `paths` gives, per service name, the spec field that chose its ports.
pub(super) fn check_ports(
    ctx: &mut Ctx,
    services: &[Service],
    paths: &BTreeMap<(String, u16), FieldPath>,
) {
    let mut all: Vec<(&Service, PublishedPort)> = Vec::new();
    for s in services {
        for p in &s.ports {
            all.push((s, *p));
        }
    }
    for (i, (s, p)) in all.iter().enumerate() {
        let spath = paths
            .get(&(s.name.clone(), p.port))
            .cloned()
            .unwrap_or_default();
        if p.port == 0 {
            ctx.report(
                Rule::PortInvalid,
                &spath,
                format!("{} publishes port 0: choose a port from 1 to 65535", s.name),
            );
            continue;
        }
        if let Some(what) = rules::swarm_reserved_port(p.port) {
            ctx.report(
                Rule::PortInvalid,
                &spath,
                format!(
                    "{} publishes port {}, which Swarm itself uses for {what} on every node: \
                     choose another port",
                    s.name, p.port
                ),
            );
            continue;
        }
        for (other, q) in &all[..i] {
            if q.port != p.port || other.name == s.name {
                continue;
            }
            if p.mode == PortMode::Ingress || q.mode == PortMode::Ingress {
                ctx.report(
                    Rule::PortClash,
                    &spath,
                    format!(
                        "{} and {} both publish port {}{}: choose distinct ports",
                        other.name,
                        s.name,
                        p.port,
                        " (a port published through the ingress mesh is taken on every node)"
                    ),
                );
            } else if !s.placement.is_disjoint_from(&other.placement) {
                ctx.report(
                    Rule::HostPortShared,
                    &spath,
                    format!(
                        "{} and {} both publish port {} in host mode: they can never run on the \
                         same node, and Swarm will leave one pending if their placement allows \
                         only one node",
                        other.name, s.name, p.port
                    ),
                );
            }
        }
    }
}

pub(super) fn check_sections(ctx: &mut Ctx, raw: &RawSpec, topology: Topology, root: &FieldPath) {
    let present = [
        ("members", raw.members.is_some(), &[Topology::Patroni][..]),
        (
            "replication",
            raw.replication.is_some(),
            &[Topology::Replication][..],
        ),
        (
            "patroni",
            raw.patroni.is_some(),
            &[Topology::Patroni, Topology::Citus][..],
        ),
        ("citus", raw.citus.is_some(), &[Topology::Citus][..]),
        (
            "etcd",
            raw.etcd.is_some(),
            &[Topology::Patroni, Topology::Citus][..],
        ),
        (
            "router",
            raw.router.is_some(),
            &[Topology::Patroni, Topology::Citus][..],
        ),
        (
            "roles",
            raw.roles.is_some(),
            &[Topology::Replication, Topology::Patroni][..],
        ),
        (
            "databases",
            raw.databases.is_some(),
            &[Topology::Replication, Topology::Patroni][..],
        ),
    ];
    for (section, is_present, topologies) in present {
        if is_present && !topologies.contains(&topology) {
            let used = topologies
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" and ");
            let hint = match (section, topology) {
                ("members", Topology::Citus) => " (Citus members go in `citus.groups`)",
                ("members", Topology::Replication) => {
                    " (use `replication.primary` and `replication.replicas`)"
                }
                ("roles" | "databases", Topology::Citus) => {
                    " (Citus propagates roles from the coordinator and needs its extension in \
                     every database: create them with SQL on the coordinator)"
                }
                ("router", Topology::Replication) => {
                    " (the router follows Patroni's health checks; without Patroni, connect to \
                     the primary or use the pooler)"
                }
                _ => "",
            };
            ctx.report(
                Rule::TopologySection,
                &root.key(section),
                format!(
                    "`{section}` is used only with topology {used}, and this cluster is \
                     {topology}: remove it{hint}"
                ),
            );
        }
    }
}

pub(super) fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= MAX_CLUSTER_NAME && is_dns_label(name);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid cluster name: use 1 to {MAX_CLUSTER_NAME} lowercase letters, \
             digits and hyphens, starting with a letter and not ending with a hyphen (it names the \
             stack, the secrets and the node labels)"
        ))
    }
}

pub(super) fn check_member_name(name: &str) -> Result<(), String> {
    if is_dns_label(name) && name.len() <= MAX_SERVICE_NAME {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid member name: use lowercase letters, digits and hyphens, \
             starting with a letter and not ending with a hyphen (it becomes a Swarm service \
             name and the member's DNS name)"
        ))
    }
}

/// Lowercase DNS label starting with a letter: `[a-z]([a-z0-9-]*[a-z0-9])?`.
pub(super) fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z'))
        && !s.ends_with('-')
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// Plain lowercase SQL identifier (the contract's rule).
pub(super) fn is_identifier(s: &str) -> bool {
    rules::is_identifier(s)
}

pub(crate) fn check_image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("the image is empty: name an image, e.g. `pgswarm:latest`".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{image}` contains spaces: an image reference has none"
        ));
    }
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    let path = repo.split_once('/').map_or(repo, |(host, rest)| {
        if host.contains('.') || host.contains(':') || host == "localhost" {
            rest
        } else {
            repo
        }
    });
    if path.is_empty() || path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "`{image}` is not a valid image reference: repository names are lowercase"
        ));
    }
    Ok(())
}

/// The superuser and replication user, defaulted, checked with the contract's role-name rules
/// (the sidecar applies the same ones).
pub(super) fn check_role_names(
    ctx: &mut Ctx,
    raw: Option<&RawPostgres>,
    root: &FieldPath,
) -> (String, String) {
    let pg_path = root.key("postgres");
    let superuser = raw
        .and_then(|p| p.superuser.clone())
        .unwrap_or_else(|| defaults::SUPERUSER.to_string());
    let replication_user = raw
        .and_then(|p| p.replication_user.clone())
        .unwrap_or_else(|| defaults::REPLICATION_USER.to_string());
    for problem in rules::role_name_problems(&superuser, &replication_user) {
        let at = match problem.field() {
            RoleField::Superuser => pg_path.key("superuser"),
            RoleField::ReplicationUser => pg_path.key("replication_user"),
        };
        ctx.report(Rule::UserName, &at, problem.to_string());
    }
    (superuser, replication_user)
}

/// The parameters with pgswarm's defaults (TCP keepalives) under the user's, each checked with
/// the contract's parameter rules (the sidecar applies the same ones).
pub(super) fn check_parameters(
    ctx: &mut Ctx,
    raw: Option<&RawPostgres>,
    topology: Option<Topology>,
    root: &FieldPath,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = keepalive::postgres_parameters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let Some(raw) = raw else { return out };
    let ppath = root.key("postgres").key("parameters");
    let patroni = matches!(topology, Some(Topology::Patroni | Topology::Citus));
    for (name, Scalar(value)) in &raw.parameters {
        match rules::check_parameter(name, value, patroni) {
            Ok(()) => {
                out.insert(name.clone(), value.clone());
            }
            Err(e) => ctx.report(Rule::PgParameter, &ppath.key(name), e.to_string()),
        }
    }
    out
}

pub(super) fn check_network(ctx: &mut Ctx, raw: Option<&RawNetwork>, root: &FieldPath) -> Network {
    let path = root.key("network");
    let encrypted = raw.and_then(|n| n.encrypted).unwrap_or(true);
    if !encrypted {
        ctx.report(
            Rule::Unencrypted,
            &path.key("encrypted"),
            "the overlay network is not encrypted: replication and client traffic between nodes \
             is readable on the wire (fine on a single node or a trusted network)",
        );
    }
    let subnet = raw.and_then(|n| n.subnet.clone());
    if let Some(s) = &subnet {
        if let Err(why) = check_cidr(s) {
            ctx.report(
                Rule::Network,
                &path.key("subnet"),
                format!("`{s}` is not a usable subnet: {why}; write it like `10.20.0.0/24`"),
            );
        }
    }
    Network { encrypted, subnet }
}

pub(super) fn check_cidr(s: &str) -> Result<(), String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| "it has no `/prefix`".to_string())?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("`{prefix}` is not a prefix length"))?;
    let IpAddr::V4(v4) = addr else {
        return Err("it is an IPv6 subnet; the overlay network takes an IPv4 subnet".into());
    };
    let bits = u128::from(u32::from(v4)) << 96;
    if prefix > 32 || prefix == 0 {
        return Err("the prefix length must be from 1 to 32".into());
    }
    let host_bits = bits.checked_shl(u32::from(prefix)).unwrap_or(0);
    if host_bits != 0 {
        return Err("host bits are set (the address must be the network's first address)".into());
    }
    Ok(())
}

pub(super) fn check_volumes(
    ctx: &mut Ctx,
    raw: Option<&RawVolumes>,
    root: &FieldPath,
) -> VolumeOptions {
    let path = root.key("volumes");
    let Some(raw) = raw else {
        return VolumeOptions::default();
    };
    if let Some(driver) = &raw.driver {
        if driver.trim().is_empty() || driver.chars().any(char::is_whitespace) {
            ctx.report(
                Rule::Volume,
                &path.key("driver"),
                format!("`{driver}` is not a volume driver name (e.g. `local`)"),
            );
        }
    }
    let mut opts = BTreeMap::new();
    for (k, Scalar(v)) in &raw.driver_opts {
        if k.trim().is_empty() || v.chars().any(char::is_control) {
            ctx.report(
                Rule::Volume,
                &path.key("driver_opts").key(k),
                "a driver option needs a non-empty name and a single-line value",
            );
        }
        opts.insert(k.clone(), v.clone());
    }
    VolumeOptions {
        driver: raw.driver.clone(),
        driver_opts: opts,
    }
}

pub(super) fn check_resources(
    ctx: &mut Ctx,
    raw: Option<&RawResources>,
    path: &FieldPath,
) -> Resources {
    let Some(raw) = raw else {
        return Resources::default();
    };
    let mut set = |side: &str, raw: Option<&RawResourceSet>| -> ResourceSet {
        let Some(raw) = raw else {
            return ResourceSet::default();
        };
        let spath = path.key(side);
        let cpus = raw.cpus.as_ref().map(|Scalar(c)| {
            match c.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 && v <= 4096.0 => {}
                _ => ctx.report(
                    Rule::Resources,
                    &spath.key("cpus"),
                    format!("`{c}` is not a CPU count: write a positive number like `2` or `0.5`"),
                ),
            }
            c.trim().to_string()
        });
        let memory = raw.memory.as_ref().map(|Scalar(m)| {
            if !is_memory(m) {
                ctx.report(
                    Rule::Resources,
                    &spath.key("memory"),
                    format!(
                        "`{m}` is not an amount of memory: write bytes or a number with a unit, \
                         like `512M` or `4G`"
                    ),
                );
            }
            m.trim().to_string()
        });
        ResourceSet { cpus, memory }
    };
    Resources {
        limits: set("limits", raw.limits.as_ref()),
        reservations: set("reservations", raw.reservations.as_ref()),
    }
}

/// `512M`, `4G`, `1.5GiB`, `1073741824`: a positive number and a unit Docker understands.
pub(super) fn is_memory(s: &str) -> bool {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let units = [
        "", "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", "t", "tb", "tib",
    ];
    matches!(num.parse::<f64>(), Ok(v) if v.is_finite() && v > 0.0)
        && units.contains(&unit.trim().to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid_replication_slot_names() {
        assert_eq!(slot_name("pg-replica-1"), "pg_replica_1");
        assert_eq!(slot_name("db2"), "db2");
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(check_cidr("10.20.0.0/24").is_ok());
        assert!(check_cidr("fd00::/64").is_err());
        assert!(check_cidr("10.20.0.1/24").is_err());
        assert!(check_cidr("10.20.0.0/33").is_err());
        assert!(check_cidr("10.20.0.0").is_err());
        assert!(check_cidr("x/8").is_err());
        assert!(check_cidr("10.0.0.0/0").is_err());
        assert!(check_cidr("10.0.0.1/32").is_ok());
    }

    #[test]
    fn memory_amounts() {
        for ok in ["512M", "4G", "1.5GiB", "1073741824", "100mb"] {
            assert!(is_memory(ok), "{ok}");
        }
        for bad in ["", "M", "-1G", "4 potatoes", "0", "1e9"] {
            assert!(!is_memory(bad), "{bad}");
        }
    }

    #[test]
    fn images() {
        for ok in [
            "pgswarm:latest",
            "registry.example.com:5000/team/pgswarm:1.0",
            "localhost/pgswarm",
            "pgswarm@sha256:abc",
        ] {
            assert!(check_image(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "PgSwarm:latest", "pg swarm"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }
}
