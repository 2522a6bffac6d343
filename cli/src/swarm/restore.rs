//! `swarmctl restore`: a Patroni cluster rebuilt from a pgBackRest repository, to the latest
//! archived WAL, a point in time or the end of one backup.
//!
//! The restore itself is Patroni's: the data members get the target in their environment
//! (`PGSWARM_RESTORE_TARGET`), and whichever member bootstraps the cluster runs pgBackRest's
//! restore instead of initdb, recovers and promotes at the target; the others clone it (see
//! the sidecar's `backup::restore_bootstrap`). A cluster bootstraps only with no initialize
//! key in etcd and an empty data directory, so swarmctl arranges both:
//! - into a new cluster (`--from-cluster OLD`): its stack does not exist yet; its members join
//!   OLD's network and mount OLD's backup certificate and passphrase to read OLD's repository,
//!   and archive into the new cluster's own repository (stanza = the new name), so the
//!   source's stanza is only ever read;
//! - in place: the members are stopped (replicas 0), their volumes emptied by one-off tasks on
//!   their nodes, the cluster's keys removed from etcd (`patronictl remove`), then started
//!   again. The restored leader archives into the same stanza on a new timeline.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bollard::query_parameters::InspectServiceOptions;
use pgswarm_contract::backup::{Restore, RestoreTarget};
use serde_yaml::Value;

use crate::spec::{Cluster, ServiceKind, Topology};

use super::backup::BackupEntry;
use super::engine::is_status;
use super::progress::Progress;
use super::{deploy, job, secrets, service_name, Engine};

/// Where the data members' volumes are mounted (what a wipe empties).
const DATA_ROOT: &str = pgswarm_contract::defaults::DATA_ROOT;

/// How `swarmctl restore` was asked to run.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target: RestoreTarget,
    /// Restore into the spec's (new) cluster from this cluster's repository; `None` = in place.
    pub from_cluster: Option<String>,
    /// The destruction of an in-place restore is confirmed.
    pub yes: bool,
    pub timeout: Duration,
}

/// A time target as PostgreSQL and pgBackRest read it, and its instant (seconds since the
/// epoch). Accepted: `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]|-HH[:MM]|Z]`; no zone = UTC, made
/// explicit so PostgreSQL and pgBackRest cannot read it in another zone.
pub fn parse_time(text: &str) -> anyhow::Result<(String, f64)> {
    let bad = |why: &str| {
        anyhow!(
            "--time {text:?}: {why}; expected YYYY-MM-DD HH:MM:SS[.ffffff][+TZ], for example \
             '2026-12-03 18:05:00+00'"
        )
    };
    let t = text.trim();
    let (date, rest) = t
        .split_once([' ', 'T'])
        .ok_or_else(|| bad("no time of day"))?;
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 || d[0].len() != 4 || d[1].len() != 2 || d[2].len() != 2 {
        return Err(bad("the date is not YYYY-MM-DD"));
    }
    let num = |s: &str| -> anyhow::Result<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a field is not a number"));
        }
        s.parse().map_err(|_| bad("a field is not a number"))
    };
    let (year, month, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad("no such date"));
    }
    // The zone: the first +, - or Z after the seconds.
    let zone_at = rest.find(['+', '-', 'Z']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (clock, ""),
    };
    let c: Vec<&str> = hms.split(':').collect();
    if c.len() != 3 || c.iter().any(|p| p.len() != 2) {
        return Err(bad("the time is not HH:MM:SS"));
    }
    let (h, m, s) = (num(c[0])?, num(c[1])?, num(c[2])?);
    if h > 23 || m > 59 || s > 60 {
        return Err(bad("no such time of day"));
    }
    let fraction = if frac.is_empty() {
        0.0
    } else {
        num(frac)?;
        format!("0.{frac}").parse::<f64>().unwrap_or(0.0)
    };
    let offset = match zone {
        "" | "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let body = &z[1..];
            let (zh, zm) = match body.split_once(':') {
                Some((a, b)) => (num(a)?, num(b)?),
                None if body.len() == 4 => (num(&body[..2])?, num(&body[2..])?),
                None => (num(body)?, 0),
            };
            if zh > 14 || zm > 59 {
                return Err(bad("no such time zone offset"));
            }
            sign * (zh * 3600 + zm * 60)
        }
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let epoch = days * 86_400 + h * 3600 + m * 60 + s - offset;
    let canonical = if zone.is_empty() {
        format!("{}+00", t)
    } else if zone == "Z" {
        format!("{}+00", &t[..t.len() - 1])
    } else {
        t.to_string()
    };
    Ok((canonical, epoch as f64 + fraction))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Checks that the repository's backups can reach `target`; says which backup it starts from.
pub fn check_target(
    target: &RestoreTarget,
    backups: &[BackupEntry],
    now: f64,
    repository: &str,
) -> anyhow::Result<String> {
    let Some(newest) = backups.last() else {
        bail!(
            "the repository of {repository} holds no backup: nothing to restore from \
             (`swarmctl backup now` takes one)"
        );
    };
    match target {
        RestoreTarget::Latest => Ok(format!(
            "backup {} and every WAL segment archived after it",
            newest.label
        )),
        RestoreTarget::Label(label) => match backups.iter().find(|b| &b.label == label) {
            Some(b) => Ok(format!(
                "backup {} (ends {} UTC)",
                b.label,
                super::backup::utc(b.stop)
            )),
            None => bail!(
                "no backup labelled {label} in the repository of {repository}; it holds: {} \
                 (`swarmctl backup list` shows them)",
                backups
                    .iter()
                    .map(|b| b.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        RestoreTarget::Time(text) => {
            let (_, at) = parse_time(text)?;
            if at > now {
                bail!("--time {text} is in the future: nothing has been archived for it yet");
            }
            // pgBackRest starts from the newest backup that ended before the target.
            match backups.iter().rev().find(|b| (b.stop as f64) < at) {
                Some(b) => Ok(format!(
                    "backup {} (ends {} UTC), then WAL up to {text}",
                    b.label,
                    super::backup::utc(b.stop)
                )),
                None => bail!(
                    "--time {text} is before the end of the oldest backup ({}, ends {} UTC): no \
                     backup of {repository} covers it",
                    backups[0].label,
                    super::backup::utc(backups[0].stop)
                ),
            }
        }
    }
}

/// Runs `swarmctl restore`.
pub async fn restore(
    engine: &Engine,
    cluster: &Cluster,
    options: &RestoreOptions,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    if cluster.topology != Topology::Patroni {
        bail!(
            "restore works on Patroni clusters with a `backup` section; {} is a {} cluster",
            cluster.name,
            cluster.topology
        );
    }
    let repo = super::backup::repository(cluster)?;
    engine.require_manager().await?;
    let target = match &options.target {
        RestoreTarget::Time(t) => RestoreTarget::Time(parse_time(t)?.0),
        other => other.clone(),
    };
    match &options.from_cluster {
        Some(from) => into_new_cluster(engine, cluster, from, &target, options, progress).await,
        None => {
            let _ = repo;
            in_place(engine, cluster, &target, options, progress).await
        }
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The backups of the repository service `repo_service` (stanza `stanza`), read in its
/// container on this node.
async fn backups_of(
    engine: &Engine,
    repo_service: &str,
    stanza: &str,
) -> anyhow::Result<Vec<BackupEntry>> {
    let json =
        super::backup::pgbackrest_in(engine, repo_service, stanza, &["info", "--output=json"])
            .await
            .with_context(|| format!("cannot read the repository {repo_service}"))?;
    super::backup::parse_info(&json, repo_service)
}

/// The cluster as deployed for the restore: every data member restores `target` (from
/// `from_cluster`'s repository when given) should it bootstrap, with `replicas` tasks.
fn restoring(
    cluster: &Cluster,
    target: &RestoreTarget,
    from_cluster: Option<&str>,
    replicas: u32,
) -> Cluster {
    let mut c = cluster.clone();
    for s in c.services.iter_mut() {
        if matches!(s.kind, ServiceKind::Data { .. }) {
            if let Some(b) = s.env.common.backup.as_mut() {
                b.restore = Some(Restore {
                    target: target.clone(),
                    from_cluster: from_cluster.map(str::to_string),
                });
            }
            s.replicas = replicas;
        }
    }
    c
}

/// The source's backup secrets a restoring member mounts (Docker secret names of
/// `from_cluster`), the passphrase only when the source has one.
async fn source_secrets(
    engine: &Engine,
    from_cluster: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    use pgswarm_contract::Secret;
    let existing = secrets::existing(engine).await?;
    let mut out = Vec::new();
    for s in [
        Secret::BackupTlsCa,
        Secret::BackupTlsCert,
        Secret::BackupTlsKey,
        Secret::BackupPassphrase,
    ] {
        let name = s.docker_name(from_cluster);
        if existing.contains(&name) {
            out.push((name, pgswarm_contract::backup::restore_secret(s)));
        } else if s != Secret::BackupPassphrase {
            bail!(
                "the Docker secret {name} does not exist: cluster {from_cluster} has no backup \
                 certificate on this swarm (is it deployed with a `backup` section?)"
            );
        }
    }
    Ok(out)
}

/// The stack of the new cluster with its data members mounting the source's backup secrets
/// under `restore_*` names.
pub fn source_attached_stack(
    cluster: &Cluster,
    from_cluster: &str,
    mounts: &[(String, String)],
) -> anyhow::Result<String> {
    let mut value = serde_yaml::to_value(crate::render::render_stack(cluster))
        .context("cannot serialize the stack file")?;
    let root = value
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("the stack is not a mapping"))?;
    if root.get("secrets").is_none() {
        root.insert("secrets".into(), Value::Mapping(Default::default()));
    }
    for (name, _) in mounts {
        let mut ext = serde_yaml::Mapping::new();
        ext.insert("external".into(), Value::Bool(true));
        root.get_mut("secrets")
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| anyhow!("the stack's secrets are not a mapping"))?
            .insert(name.as_str().into(), Value::Mapping(ext));
    }
    let services = root
        .get_mut("services")
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| anyhow!("the stack has no services"))?;
    for s in cluster
        .services
        .iter()
        .filter(|s| matches!(s.kind, ServiceKind::Data { .. }))
    {
        let svc = services
            .get_mut(s.name.as_str())
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| anyhow!("service {} missing from the stack", s.name))?;
        if svc.get("secrets").is_none() {
            svc.insert("secrets".into(), Value::Sequence(Vec::new()));
        }
        if let Some(list) = svc.get_mut("secrets").and_then(Value::as_sequence_mut) {
            for (name, target) in mounts {
                let mut m = serde_yaml::Mapping::new();
                m.insert("source".into(), name.as_str().into());
                m.insert("target".into(), target.as_str().into());
                list.push(Value::Mapping(m));
            }
        }
    }
    Ok(format!(
        "# pgswarm stack of cluster `{}`, restoring from cluster `{from_cluster}` (swarmctl \
         restore).\n{}",
        cluster.name,
        crate::render::emit::to_yaml(&value)
    ))
}

/// Attaches the Swarm service `service` to the network `network_id` (or detaches it), and
/// waits until a task of it runs with that change. The source's repository joins the new
/// cluster's network under its full service name only: the new members reach it as
/// `<source>_backup`, while the short names (`backup`, `etcd1`, `pg1`) keep meaning the new
/// cluster's own services — sharing the source's network instead would let those names
/// resolve to the source's services.
async fn set_network(
    engine: &Engine,
    service: &str,
    network_id: &str,
    attached: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let current = engine
        .docker
        .inspect_service(service, None::<InspectServiceOptions>)
        .await
        .with_context(|| format!("cannot inspect {service}"))?;
    let mut spec = current
        .spec
        .ok_or_else(|| anyhow!("the service {service} has no spec"))?;
    let version = current
        .version
        .and_then(|v| v.index)
        .ok_or_else(|| anyhow!("the service {service} has no version"))?;
    let task = spec
        .task_template
        .as_mut()
        .ok_or_else(|| anyhow!("the service {service} has no task template"))?;
    let mut networks = task.networks.take().unwrap_or_default();
    let has =
        |n: &bollard::models::NetworkAttachmentConfig| n.target.as_deref() == Some(network_id);
    if networks.iter().any(has) == attached {
        task.networks = Some(networks);
        return Ok(());
    }
    if attached {
        networks.push(bollard::models::NetworkAttachmentConfig {
            target: Some(network_id.to_string()),
            ..Default::default()
        });
    } else {
        networks.retain(|n| !has(n));
    }
    task.networks = Some(networks);
    task.force_update = Some(task.force_update.unwrap_or(0) + 1);
    engine
        .docker
        .update_service(
            service,
            spec,
            bollard::query_parameters::UpdateServiceOptions {
                version: version as i32,
                ..Default::default()
            },
            None,
        )
        .await
        .with_context(|| format!("cannot update the networks of {service}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let tasks = engine
            .docker
            .list_tasks(Some(bollard::query_parameters::ListTasksOptions {
                filters: Some(std::collections::HashMap::from([(
                    "service".to_string(),
                    vec![service.to_string()],
                )])),
            }))
            .await
            .with_context(|| format!("cannot list the tasks of {service}"))?;
        let done = tasks.iter().any(|t| {
            let running = t.status.as_ref().and_then(|s| s.state)
                == Some(bollard::models::TaskState::RUNNING);
            let on = t
                .spec
                .as_ref()
                .and_then(|s| s.networks.as_ref())
                .is_some_and(|n| n.iter().any(has));
            running && on == attached
        });
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{service} did not run again {} the network within {} s",
                if attached { "on" } else { "without" },
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn into_new_cluster(
    engine: &Engine,
    cluster: &Cluster,
    from: &str,
    target: &RestoreTarget,
    options: &RestoreOptions,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    if from == cluster.name {
        bail!(
            "--from-cluster {from} is the spec's own cluster: leave --from-cluster out to \
             restore it in place"
        );
    }
    if !deploy::stack_services(engine, &cluster.name)
        .await?
        .is_empty()
    {
        bail!(
            "cluster {} is deployed already: a restore into a new cluster creates it (choose \
             another name in the spec, or `swarmctl down -f SPEC --volumes` first)",
            cluster.name
        );
    }
    let source_repo = service_name(from, pgswarm_contract::backup::defaults::REPO_SERVICE);
    progress.say(&format!("reading the backups of {from} in {source_repo}"));
    let backups = backups_of(engine, &source_repo, pgswarm_contract::backup::stanza(from)).await?;
    let plan = check_target(target, &backups, now_secs(), from)?;
    progress.say(&format!(
        "restoring {} from {from}'s repository to {}: {plan}",
        cluster.name,
        describe(target)
    ));
    let mounts = source_secrets(engine, from).await?;
    deploy::preflight(engine, cluster).await?;
    let created = secrets::create_missing(engine, cluster).await?;
    if !created.is_empty() {
        progress.say(&format!(
            "created secrets (random passwords, generated certificates): {}",
            created.join(", ")
        ));
    }
    // First without members: the stack's network, for the source's repository to join.
    let yaml = source_attached_stack(&restoring(cluster, target, Some(from), 0), from, &mounts)?;
    progress.say(&format!(
        "docker stack deploy {} (members not started yet)",
        cluster.name
    ));
    deploy::stack_deploy_yaml(&cluster.name, &yaml).await?;
    let network = service_name(&cluster.name, crate::render::NETWORK);
    let network_id = engine
        .docker
        .inspect_network(
            &network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .with_context(|| format!("cannot inspect the network {network}"))?
        .id
        .ok_or_else(|| anyhow!("the network {network} has no id"))?;
    progress.say(&format!(
        "attaching {source_repo} to {network} (a restart of {from}'s repository; its archiving \
         waits meanwhile)"
    ));
    set_network(
        engine,
        &source_repo,
        &network_id,
        true,
        Duration::from_secs(120),
    )
    .await?;
    let result = async {
        let yaml =
            source_attached_stack(&restoring(cluster, target, Some(from), 1), from, &mounts)?;
        progress.say(&format!(
            "starting the members of {}: the first to bootstrap restores from {source_repo}, \
             the others clone it; they archive into {}'s own repository",
            cluster.name, cluster.name
        ));
        deploy::stack_deploy_yaml(&cluster.name, &yaml).await?;
        progress.say("waiting for the leader to restore and promote, then for the replicas");
        deploy::wait_ready(engine, cluster, options.timeout, progress).await?;
        anyhow::Ok(())
    }
    .await;
    progress.say(&format!("detaching {source_repo} from {network}"));
    let detached = set_network(
        engine,
        &source_repo,
        &network_id,
        false,
        Duration::from_secs(120),
    )
    .await;
    result?;
    detached?;
    progress.say(&format!(
        "cluster {} restored from {from} ({}); its members mount {from}'s backup secrets until \
         the next `swarmctl deploy -f SPEC`",
        cluster.name,
        describe(target)
    ));
    Ok(())
}

fn describe(target: &RestoreTarget) -> String {
    match target {
        RestoreTarget::Latest => "the latest archived WAL".into(),
        RestoreTarget::Time(t) => format!("time {t}"),
        RestoreTarget::Label(l) => format!("the end of backup {l}"),
    }
}

/// Asks the operator to type the cluster's name, unless `--yes`.
fn confirm(cluster: &Cluster, yes: bool) -> anyhow::Result<()> {
    let volumes: Vec<String> = cluster
        .data_members()
        .filter_map(|s| s.volume.as_ref().map(|v| service_name(&cluster.name, v)))
        .collect();
    let what = format!(
        "restore in place DESTROYS the current data of cluster {}: the volumes {} are emptied \
         and its state in etcd is removed, then it is rebuilt from its repository",
        cluster.name,
        volumes.join(", ")
    );
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what}; pass --yes to confirm");
    }
    eprint!(
        "{what}.\nType the cluster's name ({}) to go on: ",
        cluster.name
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the confirmation")?;
    if line.trim() != cluster.name {
        bail!("not confirmed: nothing was changed");
    }
    Ok(())
}

/// Sets the number of tasks of a service; `false` when it does not exist.
async fn scale(engine: &Engine, service: &str, replicas: u64) -> anyhow::Result<bool> {
    let current = match engine
        .docker
        .inspect_service(service, None::<InspectServiceOptions>)
        .await
    {
        Ok(s) => s,
        Err(e) if is_status(&e, 404) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {service}")),
    };
    let mut spec = current
        .spec
        .ok_or_else(|| anyhow!("the service {service} has no spec"))?;
    let version = current
        .version
        .and_then(|v| v.index)
        .ok_or_else(|| anyhow!("the service {service} has no version"))?;
    if let Some(mode) = spec.mode.as_mut() {
        if let Some(r) = mode.replicated.as_mut() {
            r.replicas = Some(replicas as i64);
        }
    }
    engine
        .docker
        .update_service(
            service,
            spec,
            bollard::query_parameters::UpdateServiceOptions {
                version: version as i32,
                ..Default::default()
            },
            None,
        )
        .await
        .with_context(|| format!("cannot scale {service} to {replicas}"))?;
    Ok(true)
}

/// Waits until no container of `service` runs on this node (other nodes: its tasks).
async fn wait_stopped(engine: &Engine, service: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let tasks = engine
            .docker
            .list_tasks(Some(bollard::query_parameters::ListTasksOptions {
                filters: Some(std::collections::HashMap::from([(
                    "service".to_string(),
                    vec![service.to_string()],
                )])),
            }))
            .await
            .with_context(|| format!("cannot list the tasks of {service}"))?;
        let running = tasks.iter().any(|t| {
            matches!(
                t.status.as_ref().and_then(|s| s.state),
                Some(
                    bollard::models::TaskState::RUNNING
                        | bollard::models::TaskState::STARTING
                        | bollard::models::TaskState::PREPARING
                        | bollard::models::TaskState::ASSIGNED
                        | bollard::models::TaskState::ACCEPTED
                        | bollard::models::TaskState::PENDING
                        | bollard::models::TaskState::READY
                )
            )
        });
        let containers = engine.service_containers(service, false).await?;
        if !running && containers.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{service} still runs {} s after it was scaled to 0",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn in_place(
    engine: &Engine,
    cluster: &Cluster,
    target: &RestoreTarget,
    options: &RestoreOptions,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let repo = super::backup::repository(cluster)?;
    let repo_service = service_name(&cluster.name, &repo.name);
    let stanza = pgswarm_contract::backup::stanza(&cluster.name);
    // Checked before anything is stopped when the repository runs; after the stack is back
    // otherwise (a stack removed in a disaster).
    let mut checked = false;
    if engine.running_container(&repo_service).await?.is_some() {
        let backups = backups_of(engine, &repo_service, stanza).await?;
        let plan = check_target(target, &backups, now_secs(), &cluster.name)?;
        progress.say(&format!(
            "restoring {} to {}: {plan}",
            cluster.name,
            describe(target)
        ));
        checked = true;
    }
    if !checked {
        // The stack is gone (a disaster) or was never deployed: only the repository's volume
        // on this node can tell the two apart, and swarmctl reads the repository here anyway.
        let volume = repo
            .volume
            .as_ref()
            .map(|v| service_name(&cluster.name, v))
            .ok_or_else(|| anyhow!("the repository service {repo_service} has no volume"))?;
        match engine.docker.inspect_volume(&volume).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => bail!(
                "no running {repo_service} and no volume {volume} on this node: there is no \
                 repository of {} here to restore from (run swarmctl on the node that holds \
                 the repository's volume)",
                cluster.name
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot inspect the volume {volume}")),
        }
    }
    confirm(cluster, options.yes)?;
    deploy::preflight(engine, cluster).await?;
    let members: Vec<String> = cluster.data_members().map(|s| s.name.clone()).collect();
    progress.say(&format!("stopping the members {}", members.join(", ")));
    let mut scaled = Vec::new();
    for m in &members {
        let service = service_name(&cluster.name, m);
        if scale(engine, &service, 0).await? {
            scaled.push(service);
        }
    }
    for service in &scaled {
        wait_stopped(engine, service, Duration::from_secs(120)).await?;
    }
    // The whole stack as it should be, members still at 0: etcd and the repository come back
    // when a disaster removed them, and the members' services exist for the wipe.
    let created = secrets::create_missing(engine, cluster).await?;
    if !created.is_empty() {
        progress.say(&format!("created missing secrets: {}", created.join(", ")));
    }
    deploy::stack_deploy(&restoring(cluster, target, None, 0)).await?;
    if !checked {
        progress.say(&format!("waiting for the repository {repo_service}"));
        let backups = wait_for(Duration::from_secs(180), || async {
            match engine.running_container(&repo_service).await? {
                Some(_) => backups_of(engine, &repo_service, stanza).await,
                None => bail!("no running container of {repo_service} on this node"),
            }
        })
        .await?;
        match check_target(target, &backups, now_secs(), &cluster.name) {
            Ok(plan) => progress.say(&format!(
                "restoring {} to {}: {plan}",
                cluster.name,
                describe(target)
            )),
            Err(e) => {
                return Err(e.context(
                    "nothing was wiped; the members are stopped (`swarmctl deploy -f SPEC` \
                     starts them again)",
                ))
            }
        }
    }
    for s in cluster.data_members() {
        progress.say(&format!("emptying the volume of {}", s.name));
        let out = job::run_with_volume(
            engine,
            &service_name(&cluster.name, &s.name),
            &[
                "sh",
                "-c",
                &format!("find {DATA_ROOT} -mindepth 1 -delete && ls -A {DATA_ROOT} | wc -l"),
            ],
        )
        .await?;
        let left = out.stdout.trim().to_string();
        if !out.success() || left != "0" {
            bail!(
                "could not empty the volume of {}: {} {}",
                s.name,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
    }
    progress.say(&format!(
        "removing the state of {} from etcd (patronictl remove)",
        cluster.name
    ));
    let name = &cluster.name;
    let script = format!(
        "printf '%s\\nYes I am aware\\n' {name} | pgswarm-sidecar ctl patronictl -- remove {name}"
    );
    wait_for(Duration::from_secs(120), || async {
        let out = job::run(
            engine,
            &service_name(&cluster.name, &members[0]),
            &["sh", "-c", &script],
        )
        .await?;
        if out.success() {
            Ok(())
        } else {
            bail!(
                "patronictl remove: {} {}",
                out.stdout.trim(),
                out.stderr.trim()
            )
        }
    })
    .await?;
    progress.say(&format!(
        "starting the members: the first to bootstrap restores {}, the others clone it",
        describe(target)
    ));
    deploy::stack_deploy(&restoring(cluster, target, None, 1)).await?;
    deploy::wait_ready(engine, cluster, options.timeout, progress).await?;
    progress.say(&format!(
        "cluster {} restored in place ({}); a new timeline archives into the same stanza — \
         take a full backup (`swarmctl backup now`)",
        cluster.name,
        describe(target)
    ));
    Ok(())
}

/// Retries `f` every 5 s until it succeeds or `timeout` passes (then its last error).
async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(e) => tracing::info!(error = %format!("{e:#}"), "retrying"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(label: &str, stop: i64) -> BackupEntry {
        BackupEntry {
            label: label.into(),
            kind: "full".into(),
            start: stop - 10,
            stop,
            size: 1,
            repository_size: 1,
            wal_start: String::new(),
            wal_stop: String::new(),
            repository: "backup".into(),
        }
    }

    #[test]
    fn an_in_place_restore_needs_a_confirmation() {
        let cluster = crate::spec::parse("name: demo\ntopology: patroni\nbackup: {}\n")
            .expect("valid")
            .cluster;
        assert!(confirm(&cluster, true).is_ok());
        if !std::io::stdin().is_terminal() {
            let err = confirm(&cluster, false).unwrap_err().to_string();
            assert!(
                err.contains("DESTROYS") && err.contains("demo_pg1-data"),
                "{err}"
            );
            assert!(err.ends_with("pass --yes to confirm"), "{err}");
        }
    }

    #[test]
    fn times_are_read_with_their_zone() {
        let (text, at) = parse_time("2026-12-03 13:45:00").unwrap();
        assert_eq!(text, "2026-12-03 13:45:00+00");
        assert_eq!(at, 1_796_305_500.0);
        assert_eq!(
            parse_time("2026-12-03 14:45:00+01").unwrap().1,
            1_796_305_500.0
        );
        assert_eq!(
            parse_time("2026-12-03 13:15:00-00:30").unwrap().1,
            1_796_305_500.0
        );
        assert_eq!(
            parse_time("2026-12-03 13:45:00Z").unwrap().0,
            "2026-12-03 13:45:00+00"
        );
        let (_, frac) = parse_time("2026-12-03 13:45:00.25+00").unwrap();
        assert_eq!(frac, 1_796_305_500.25);
        for bad in [
            "yesterday",
            "2026-12-03",
            "2026-13-03 10:00:00",
            "2026-12-03 25:00:00",
            "2026-12-03 10:00",
        ] {
            let err = parse_time(bad).unwrap_err().to_string();
            assert!(err.contains("expected YYYY-MM-DD"), "{bad}: {err}");
        }
    }

    #[test]
    fn targets_are_checked_against_the_backups() {
        let backups = vec![
            entry("20261203-134500F", 1_796_305_500),
            entry("20261203-140000F", 1_796_306_400),
        ];
        let now = 1_796_310_000.0;
        assert!(check_target(&RestoreTarget::Latest, &backups, now, "demo")
            .unwrap()
            .contains("20261203-140000F"));
        let err = check_target(&RestoreTarget::Latest, &[], now, "demo")
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no backup"), "{err}");
        let err = check_target(&RestoreTarget::Label("nope".into()), &backups, now, "demo")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no backup labelled nope") && err.contains("20261203-134500F"),
            "{err}"
        );
        // Between the two backups: the first one, then WAL.
        let plan = check_target(
            &RestoreTarget::Time("2026-12-03 13:50:00+00".into()),
            &backups,
            now,
            "demo",
        )
        .unwrap();
        assert!(plan.contains("20261203-134500F"), "{plan}");
        let err = check_target(
            &RestoreTarget::Time("2026-12-03 13:40:00+00".into()),
            &backups,
            now,
            "demo",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("before the end of the oldest backup"), "{err}");
        let err = check_target(
            &RestoreTarget::Time("2027-01-01 00:00:00+00".into()),
            &backups,
            now,
            "demo",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("in the future"), "{err}");
    }

    #[test]
    fn a_new_cluster_mounts_the_source_backup_secrets_and_stays_on_its_own_network() {
        let cluster = crate::spec::parse("name: new\ntopology: patroni\nbackup: {}\n")
            .expect("valid")
            .cluster;
        let restoring = restoring(&cluster, &RestoreTarget::Latest, Some("old"), 1);
        let mounts = vec![(
            "old_backup_tls_ca".to_string(),
            "restore_backup_tls_ca".to_string(),
        )];
        let yaml = source_attached_stack(&restoring, "old", &mounts).unwrap();
        let v: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["secrets"]["old_backup_tls_ca"]["external"], true);
        let pg1 = &v["services"]["pg1"];
        assert_eq!(pg1["environment"]["PGSWARM_RESTORE_TARGET"], "latest");
        assert_eq!(pg1["environment"]["PGSWARM_RESTORE_FROM"], "old");
        assert_eq!(pg1["networks"].as_sequence().unwrap().len(), 1);
        assert!(pg1["secrets"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|s| s["target"] == "restore_backup_tls_ca"));
        let repo = &v["services"]["backup"];
        assert!(repo["environment"].get("PGSWARM_RESTORE_TARGET").is_none());
    }
}
