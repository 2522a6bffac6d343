//! Per-topology planning: the data members each topology declares (by count or by list),
//! with the role each one plays, and the group-size rules that go with them.

use super::*;

pub(super) fn plan_replication(
    ctx: &mut Ctx,
    shared: &Shared,
    raw: &RawSpec,
    root: &FieldPath,
) -> DataPlan {
    let rep = raw.replication.as_ref();
    let path = root.key("replication");
    let primary = match rep.and_then(|r| r.primary.as_ref()) {
        Some(m) => draft_from(m, path.key("primary"), None),
        None => Draft::generated("primary", path.clone(), None),
    };
    let default_replicas = RawMembers::Count(1);
    let replicas_raw = rep
        .and_then(|r| r.replicas.as_ref())
        .unwrap_or(&default_replicas);
    let replicas_path = path.key("replicas");
    let replicas = expand(
        ctx,
        replicas_raw,
        &replicas_path,
        |i| format!("replica{i}"),
        None,
    );
    if replicas.is_empty() {
        ctx.report(
            Rule::NoReplicas,
            &replicas_path,
            "the primary has no replica: nothing to fail over to and no second copy of the \
             data; add at least one replica",
        );
    }
    let primary_endpoint = Endpoint {
        host: primary.name.clone(),
        port: defaults::PG_PORT,
    };
    let mut plan = DataPlan::default();
    let primary_role = Role::Primary {
        postgres: shared.postgres.clone(),
        replica_slots: replicas.iter().map(|r| slot_name(&r.name)).collect(),
        init_sql_dir: None,
    };
    plan.members.push((primary, primary_role));
    for r in replicas {
        let role = Role::Replica {
            postgres: shared.postgres.clone(),
            primary: primary_endpoint.clone(),
            slot: slot_name(&r.name),
        };
        plan.members.push((r, role));
    }
    plan
}

pub(super) fn plan_patroni(
    ctx: &mut Ctx,
    shared: &Shared,
    raw: &RawSpec,
    root: &FieldPath,
) -> DataPlan {
    let path = root.key("members");
    let default_members = RawMembers::Count(3);
    let members_raw = raw.members.as_ref().unwrap_or(&default_members);
    let members = expand(ctx, members_raw, &path, |i| format!("pg{i}"), None);
    if members_raw.count() == 0 {
        ctx.report(
            Rule::MemberCount,
            &path,
            "a patroni cluster needs at least one member (3 recommended)",
        );
    }
    let sync = raw
        .patroni
        .as_ref()
        .and_then(|p| p.synchronous_mode)
        .unwrap_or(SyncMode::Off);
    let sync_path = root.key("patroni").key("synchronous_mode");
    check_group_size(ctx, members.len(), sync, &path, &sync_path, "the cluster");
    let mut plan = DataPlan::default();
    for m in members {
        plan.router_members.push(m.name.clone());
        plan.members.push((m, shared.patroni_role(sync, None)));
    }
    plan
}

pub(super) fn plan_citus(
    ctx: &mut Ctx,
    shared: &Shared,
    raw: &RawSpec,
    root: &FieldPath,
) -> DataPlan {
    let citus_path = root.key("citus");
    let citus_raw = raw.citus.as_ref();
    let database = citus_raw
        .and_then(|c| c.database.clone())
        .unwrap_or_else(|| defaults::CITUS_DATABASE.to_string());
    if !is_identifier(&database) {
        ctx.report(
            Rule::CitusDatabase,
            &citus_path.key("database"),
            format!(
                "`{database}` is not a plain database name: use lowercase letters, digits and `_`, \
                 starting with a letter (for example `citus`)"
            ),
        );
    }
    let groups: &[RawCitusGroup] = citus_raw.map(|c| c.groups.as_slice()).unwrap_or(&[]);
    let groups_path = citus_path.key("groups");
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        if let Some(first) = seen.insert(g.group, i) {
            ctx.report(
                Rule::CitusDuplicateGroup,
                &groups_path.index(i).key("group"),
                format!(
                    "group {} is declared twice (also at citus.groups[{first}]): give each group \
                     its own number (0 for the coordinator, 1, 2, ... for workers)",
                    g.group
                ),
            );
        }
    }
    if !seen.contains_key(&0) {
        ctx.report(
            Rule::CitusCoordinator,
            &groups_path,
            "there is no coordinator group: add a group with `group: 0` (the coordinator, where \
             clients connect); worker groups are numbered from 1",
        );
    } else if seen.len() == 1 {
        ctx.report(
            Rule::NoWorkers,
            &groups_path,
            "there is no worker group: distributed tables will live on the coordinator only; add \
             groups `group: 1`, `group: 2`, ... to scale out",
        );
    }
    let cluster_sync = raw.patroni.as_ref().and_then(|p| p.synchronous_mode);
    let mut plan = DataPlan::default();
    let mut total: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let gpath = groups_path.index(i);
        let mpath = gpath.key("members");
        total = total.saturating_add(g.members.count());
        if total > MAX_DATA_MEMBERS {
            ctx.report(
                Rule::MemberCount,
                &mpath,
                format!("a cluster may have at most {MAX_DATA_MEMBERS} data members"),
            );
            break;
        }
        let prefix = if g.group == 0 {
            "coord".to_string()
        } else {
            format!("worker{}-", g.group)
        };
        let members = expand(
            ctx,
            &g.members,
            &mpath,
            |n| format!("{prefix}{n}"),
            Some(g.group),
        );
        let what = if g.group == 0 {
            "the coordinator group".to_string()
        } else {
            format!("worker group {}", g.group)
        };
        if members.is_empty() {
            ctx.report(
                Rule::CitusEmptyGroup,
                &mpath,
                format!(
                    "{what} has no members: give it at least 2 (3 to keep quorum commit safe), or \
                     remove the group"
                ),
            );
        }
        let (sync, sync_path) = match (g.synchronous_mode, cluster_sync) {
            (Some(s), _) => (s, gpath.key("synchronous_mode")),
            (None, Some(s)) => (s, root.key("patroni").key("synchronous_mode")),
            (None, None) => {
                // Patroni's Citus mode defaults to quorum commit; state it in the environment.
                let default = match members.len() {
                    0 | 1 => SyncMode::Off,
                    2 => {
                        ctx.report(
                            Rule::CitusSyncExplicit,
                            &mpath,
                            format!(
                                "{what} has 2 members and does not state `synchronous_mode`. \
                                 Patroni's Citus mode would use quorum commit, and then a leader \
                                 that dies before the other member is back in the quorum is not \
                                 replaced at all. Choose in the group: `synchronous_mode: on` \
                                 (no lost commits; writes go asynchronous while the standby is \
                                 down), `off` (asynchronous: a failover may lose the last \
                                 commits), `quorum` (accept the trade above), or give the group \
                                 3 members"
                            ),
                        );
                        SyncMode::Off
                    }
                    _ => SyncMode::Quorum,
                };
                (default, mpath.clone())
            }
        };
        check_group_size(ctx, members.len(), sync, &mpath, &sync_path, &what);
        let citus = Citus {
            group: g.group,
            database: database.clone(),
        };
        for m in members {
            if g.group == 0 {
                plan.router_members.push(m.name.clone());
            } else {
                plan.router_workers.push(m.name.clone());
            }
            plan.members
                .push((m, shared.patroni_role(sync, Some(citus.clone()))));
        }
    }
    plan
}

/// Synchronous mode needs two members; quorum in a pair is risky; one member cannot fail over.
pub(super) fn check_group_size(
    ctx: &mut Ctx,
    size: usize,
    sync: SyncMode,
    members_path: &FieldPath,
    sync_path: &FieldPath,
    what: &str,
) {
    if sync != SyncMode::Off && size < 2 && size > 0 {
        ctx.report(
            Rule::SyncMembers,
            sync_path,
            format!(
                "synchronous mode needs at least 2 data members and {what} has {size}: add \
                 members or set `synchronous_mode: off`"
            ),
        );
    }
    if sync == SyncMode::Quorum && size == 2 {
        ctx.report(
            Rule::QuorumTwoMembers,
            sync_path,
            format!(
                "quorum commit with 2 members in {what}: a leader that dies before the other \
                 member is back in the quorum is not replaced; `on` or 3 members avoid this"
            ),
        );
    }
    if size == 1 {
        ctx.report(
            Rule::SingleMember,
            members_path,
            format!("{what} has a single member: there is nothing to fail over to"),
        );
    }
}

pub(super) fn draft_from(m: &RawMember, path: FieldPath, group: Option<u32>) -> Draft {
    Draft {
        name: m.name.clone(),
        name_path: path.key("name"),
        path,
        placement: m.placement.clone(),
        resources: m.resources.clone(),
        publish: m.publish.clone(),
        group,
        generated: false,
    }
}

/// Members from a count (names from `name_of(1..)`) or a list.
pub(super) fn expand(
    ctx: &mut Ctx,
    raw: &RawMembers,
    path: &FieldPath,
    name_of: impl Fn(u64) -> String,
    group: Option<u32>,
) -> Vec<Draft> {
    match raw {
        RawMembers::Count(n) => {
            if *n > MAX_DATA_MEMBERS {
                ctx.report(
                    Rule::MemberCount,
                    path,
                    format!("{n} members is more than the {MAX_DATA_MEMBERS} a cluster may have"),
                );
                return Vec::new();
            }
            (1..=*n)
                .map(|i| Draft::generated(&name_of(i), path.clone(), group))
                .collect()
        }
        RawMembers::List(list) => {
            if list.len() as u64 > MAX_DATA_MEMBERS {
                ctx.report(
                    Rule::MemberCount,
                    path,
                    format!(
                        "{} members is more than the {MAX_DATA_MEMBERS} a cluster may have",
                        list.len()
                    ),
                );
                return Vec::new();
            }
            list.iter()
                .enumerate()
                .map(|(i, m)| draft_from(m, path.index(i), group))
                .collect()
        }
    }
}

pub(super) fn etcd_drafts(ctx: &mut Ctx, raw: Option<&RawEtcd>, root: &FieldPath) -> Vec<Draft> {
    let path = root.key("etcd").key("members");
    let default = RawMembers::Count(3);
    let members = raw.and_then(|e| e.members.as_ref()).unwrap_or(&default);
    let count = match members {
        RawMembers::Count(n) => *n,
        RawMembers::List(l) => l.len() as u64,
    };
    if count == 0 || count % 2 == 0 {
        ctx.report(
            Rule::EtcdCount,
            &path,
            format!("etcd needs an odd number of members (3 or 5), got {count}"),
        );
    } else if count > MAX_ETCD_MEMBERS {
        ctx.report(
            Rule::EtcdCount,
            &path,
            format!(
                "{count} etcd members is more than {MAX_ETCD_MEMBERS}: every write waits for a \
                 majority of them; use 3 or 5"
            ),
        );
        return Vec::new();
    } else if count == 1 {
        ctx.report(
            Rule::SingleEtcd,
            &path,
            "a single etcd member: when it is down, Patroni cannot keep or take the leader lock \
             and the primary steps down; use 3 for a cluster that must survive a node",
        );
    }
    if count > MAX_ETCD_MEMBERS {
        return Vec::new();
    }
    expand(ctx, members, &path, |i| format!("etcd{i}"), None)
}
