//! The `backup` section: the repository service (a Draft placed like a member), retention,
//! schedules, archive_timeout and encryption, and the backup settings every data member gets.

use super::*;
use pgswarm_contract::backup::{self, BackupSettings};
use pgswarm_contract::cron::Schedule;

/// Most backups of one kind pgBackRest keeps (its own limit).
const MAX_RETENTION: u64 = 9_999_999;
/// Longest archive_timeout accepted: beyond an hour a quiet cluster could lose more than an
/// hour of commits with its volumes.
const MAX_ARCHIVE_TIMEOUT: u64 = 3600;
/// PostgreSQL parameters archiving sets itself while backups are on.
const ARCHIVE_PARAMETERS: [&str; 4] = [
    "archive_mode",
    "archive_command",
    "archive_timeout",
    "restore_command",
];

/// The checked `backup` section, before the members are known.
pub(super) struct BackupPlan {
    pub draft: Draft,
    pub settings: BackupSettings,
    pub schedule_full: Option<Schedule>,
    pub schedule_diff: Option<Schedule>,
}

/// Checks the `backup` section; `None` when it is absent or disabled.
pub(super) fn check_backup(
    ctx: &mut Ctx,
    raw: &RawSpec,
    topology: Topology,
    root: &FieldPath,
) -> Option<BackupPlan> {
    let b = raw.backup.as_ref()?;
    if b.enabled == Some(false) {
        return None;
    }
    let path = root.key("backup");
    if topology != Topology::Patroni {
        ctx.report(
            Rule::Backup,
            &path,
            format!(
                "backups are supported with the `patroni` topology, not `{topology}`: remove the \
                 `backup` section or set `backup.enabled: false`"
            ),
        );
        return None;
    }
    let repo = b.repository.clone().unwrap_or_default();
    let rpath = path.key("repository");
    let name = repo
        .name
        .clone()
        .unwrap_or_else(|| backup::defaults::REPO_SERVICE.to_string());
    let draft = Draft {
        name: name.clone(),
        path: rpath.clone(),
        name_path: if repo.name.is_some() {
            rpath.key("name")
        } else {
            path.clone()
        },
        placement: repo.placement.clone(),
        resources: repo.resources.clone(),
        publish: None,
        group: None,
        generated: repo.name.is_none(),
    };
    let retention = b.retention.clone().unwrap_or_default();
    let mut count = |field: &str, value: Option<u64>, default: u64| -> u32 {
        let v = value.unwrap_or(default);
        if v == 0 || v > MAX_RETENTION {
            ctx.report(
                Rule::Backup,
                &path.key("retention").key(field),
                format!(
                    "backup.retention.{field} is {v}: keep from 1 to {MAX_RETENTION} backups \
                     (default full: {})",
                    backup::defaults::RETENTION_FULL
                ),
            );
        }
        v.clamp(1, MAX_RETENTION) as u32
    };
    let retention_full = count(
        "full",
        retention.full,
        backup::defaults::RETENTION_FULL.into(),
    );
    let retention_diff = retention.diff.map(|d| count("diff", Some(d), 1));
    let schedule = b.schedule.clone().unwrap_or_default();
    let mut parse = |field: &str, text: &Option<String>| -> Option<Schedule> {
        let text = text.as_ref()?;
        match Schedule::parse(text) {
            Ok(s) => Some(s),
            Err(e) => {
                ctx.report(
                    Rule::Backup,
                    &path.key("schedule").key(field),
                    e.to_string(),
                );
                None
            }
        }
    };
    let schedule_full = parse("full", &schedule.full);
    let schedule_diff = parse("diff", &schedule.diff);
    let timeout = b
        .archive_timeout
        .unwrap_or(backup::defaults::ARCHIVE_TIMEOUT_SECS.into());
    if timeout == 0 || timeout > MAX_ARCHIVE_TIMEOUT {
        ctx.report(
            Rule::Backup,
            &path.key("archive_timeout"),
            format!(
                "backup.archive_timeout is {timeout}: choose from 1 to {MAX_ARCHIVE_TIMEOUT} \
                 seconds (the most a quiet cluster can lose with all its volumes; default {})",
                backup::defaults::ARCHIVE_TIMEOUT_SECS
            ),
        );
    }
    if let Some(params) = raw.postgres.as_ref().map(|p| &p.parameters) {
        for name in params.keys() {
            if ARCHIVE_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
                ctx.report(
                    Rule::Backup,
                    &root.key("postgres").key("parameters").key(name),
                    format!(
                        "`{name}` is set by pgswarm while backups are on (WAL goes to the \
                         backup repository): remove it, or set `backup.enabled: false`"
                    ),
                );
            }
        }
    }
    let mut settings = BackupSettings::new(name);
    settings.archive_timeout_secs = timeout.clamp(1, MAX_ARCHIVE_TIMEOUT) as u32;
    settings.retention_full = retention_full;
    settings.retention_diff = retention_diff;
    settings.encrypt = b.encrypt != Some(false);
    Some(BackupPlan {
        draft,
        settings,
        schedule_full,
        schedule_diff,
    })
}

/// The repository service, backing up `members` (the data members' names).
pub(super) fn backup_service(
    ctx: &mut Ctx,
    shared: &Shared,
    plan: &BackupPlan,
    members: Vec<String>,
) -> Service {
    let mut common = shared.common(&plan.draft.name);
    common.backup = Some(plan.settings.clone());
    let resources = check_resources(
        ctx,
        plan.draft.resources.as_ref(),
        &plan.draft.path.key("resources"),
    );
    Service {
        name: plan.draft.name.clone(),
        kind: ServiceKind::Backup,
        env: MemberEnv {
            common,
            role: Role::Backup {
                members,
                pg_port: shared.postgres.port,
                member_data_root: defaults::DATA_ROOT.into(),
                member_run_dir: defaults::RUN_DIR.into(),
                schedule_full: plan.schedule_full.as_ref().map(|s| s.to_string()),
                schedule_diff: plan.schedule_diff.as_ref().map(|s| s.to_string()),
            },
        },
        placement: member_placement(ctx, shared, &plan.draft),
        ports: Vec::new(),
        resources,
        replicas: 1,
        volume: Some(volume_name(&plan.draft.name)),
        metrics: Vec::new(),
    }
}
