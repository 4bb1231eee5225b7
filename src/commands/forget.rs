//! `cairn forget`: remove snapshots, by keep rules or by id.
//!
//! Keep rules only see snapshots that can be read; naming ids is also the
//! way to remove a snapshot file too damaged to read (spec/repository.md
//! "Recovering from damaged files"). Data goes with `prune`.

use super::{local_time, matches_filter, open_repo, print_json};
use crate::cli::{ForgetArgs, GlobalArgs};
use crate::error::{Error, Result};
use crate::lock::with_lock;
use crate::repo::{Snapshot, SnapshotId};
use crate::repository::Repository;
use crate::retention::{self, CalendarDuration, Count, GroupBy, Policy, TagGroup};

/// A rule's value refused: exit 2 with the rule's flag, the reason and how
/// to write it.
fn usage(flag: &str, e: retention::ParseError) -> Error {
    Error::usage(format!("{flag}: {}", e.message)).with_hint(e.hint)
}

fn count(flag: &str, v: &Option<String>) -> Result<Option<Count>> {
    v.as_deref()
        .map(|s| Count::parse(s).map_err(|e| usage(flag, e)))
        .transpose()
        .map(Option::flatten)
}

fn duration(flag: &str, v: &Option<String>) -> Result<Option<CalendarDuration>> {
    v.as_deref()
        .map(|s| s.parse().map_err(|e| usage(flag, e)))
        .transpose()
}

fn policy(a: &ForgetArgs) -> Result<Policy> {
    Ok(Policy {
        keep_last: count("--keep-last", &a.keep_last)?,
        keep_hourly: count("--keep-hourly", &a.keep_hourly)?,
        keep_daily: count("--keep-daily", &a.keep_daily)?,
        keep_weekly: count("--keep-weekly", &a.keep_weekly)?,
        keep_monthly: count("--keep-monthly", &a.keep_monthly)?,
        keep_yearly: count("--keep-yearly", &a.keep_yearly)?,
        keep_within: duration("--keep-within", &a.keep_within)?,
        keep_within_hourly: duration("--keep-within-hourly", &a.keep_within_hourly)?,
        keep_within_daily: duration("--keep-within-daily", &a.keep_within_daily)?,
        keep_within_weekly: duration("--keep-within-weekly", &a.keep_within_weekly)?,
        keep_within_monthly: duration("--keep-within-monthly", &a.keep_within_monthly)?,
        keep_within_yearly: duration("--keep-within-yearly", &a.keep_within_yearly)?,
        keep_tags: a
            .keep_tag
            .iter()
            .map(|t| TagGroup::parse(t).map_err(|e| usage("--keep-tag", e)))
            .collect::<Result<_>>()?,
    })
}

/// One snapshot named on the command line, to be forgotten.
#[derive(Debug, serde::Serialize)]
struct Named {
    id: SnapshotId,
    /// `None` when the snapshot file is unreadable.
    time: Option<jiff::Timestamp>,
    damaged: bool,
}

/// The snapshot `spec` (an id or unique prefix) names, readable or not:
/// an unreadable snapshot file can only be removed by its name.
fn resolve(
    spec: &str,
    readable: &[(SnapshotId, Snapshot)],
    damaged: &[SnapshotId],
) -> Result<Named> {
    let lower = spec.to_ascii_lowercase();
    if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            Error::usage(format!("{spec:?} is not a snapshot id")).with_hint(
                "give a snapshot id or a unique prefix of one; `cairn snapshots` lists them",
            ),
        );
    }
    let mut found: Vec<Named> = readable
        .iter()
        .filter(|(id, _)| id.to_hex().starts_with(&lower))
        .map(|(id, s)| Named {
            id: *id,
            time: Some(s.time),
            damaged: false,
        })
        .collect();
    found.extend(
        damaged
            .iter()
            .filter(|id| id.to_hex().starts_with(&lower))
            .map(|id| Named {
                id: *id,
                time: None,
                damaged: true,
            }),
    );
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(
            Error::usage(format!("no snapshot matches {spec:?}")).with_hint(
                "`cairn snapshots` lists the snapshots; `cairn check` names unreadable ones",
            ),
        ),
        n => Err(Error::usage(format!("{n} snapshots match {spec:?}"))
            .with_hint("give more digits of the id")),
    }
}

/// `cairn forget ID...`: remove the named snapshots, including snapshot
/// files too damaged to read (which keep rules never see).
fn forget_named(g: &GlobalArgs, a: &ForgetArgs, repo: &Repository) -> Result<()> {
    let (readable, damaged) = repo.snapshots_and_damage()?;
    let damaged: Vec<SnapshotId> = damaged.into_iter().map(|(id, _)| id).collect();
    let mut named: Vec<Named> = Vec::new();
    for spec in &a.snapshots {
        let n = resolve(spec, &readable, &damaged)?;
        if !named.iter().any(|m| m.id == n.id) {
            named.push(n);
        }
    }
    for n in &named {
        let reason = if n.damaged {
            "named on the command line; its file is unreadable"
        } else {
            "named on the command line"
        };
        let time = n.time.unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        retention::remove_snapshot(repo, &n.id.to_hex(), time, reason, a.dry_run)?;
        if !g.json {
            println!(
                "  remove {} {}  {reason}",
                n.id.short(),
                n.time
                    .map(local_time)
                    .unwrap_or_else(|| "(unreadable snapshot file)".into()),
            );
        }
    }
    if g.json {
        print_json(&serde_json::json!({ "dry_run": a.dry_run, "removed": named }))?;
    } else {
        println!(
            "{} {} snapshot(s)",
            if a.dry_run { "would remove" } else { "removed" },
            named.len()
        );
    }
    if a.prune && !a.dry_run {
        super::prune::run_locked(g, repo, false)?;
    }
    Ok(())
}

pub fn run(g: &GlobalArgs, a: &ForgetArgs) -> Result<()> {
    let keep = [
        &a.keep_last,
        &a.keep_hourly,
        &a.keep_daily,
        &a.keep_weekly,
        &a.keep_monthly,
        &a.keep_yearly,
        &a.keep_within,
        &a.keep_within_hourly,
        &a.keep_within_daily,
        &a.keep_within_weekly,
        &a.keep_within_monthly,
        &a.keep_within_yearly,
    ];
    super::plan_excludes(
        "forget",
        a.plan.as_deref(),
        &[
            ("snapshot ids", !a.snapshots.is_empty()),
            (
                "--keep-* rules",
                keep.iter().any(|k| k.is_some()) || !a.keep_tag.is_empty(),
            ),
        ],
    )?;
    if let Some(file) = &a.plan {
        return super::forget_plan::run(g, a, file);
    }
    let policy = policy(a)?;
    if !a.snapshots.is_empty() {
        if !policy.is_empty() || !a.filter.host.is_empty() || !a.filter.tag.is_empty() {
            return Err(
                Error::usage("snapshot ids and keep rules (or filters) were both given")
                    .with_hint("forget named snapshots, or apply keep rules, in separate runs"),
            );
        }
        let repo = open_repo(g)?;
        return with_lock(&repo, true, "forget", || forget_named(g, a, &repo));
    }
    if policy.is_empty() {
        return Err(Error::usage("no keep rule given: refusing to forget every snapshot").with_hint(
            "give at least one of --keep-last/-hourly/-daily/-weekly/-monthly/-yearly, --keep-within[-hourly/-daily/-weekly/-monthly/-yearly], --keep-tag, or the ids of the snapshots to forget",
        ));
    }
    let group_by: GroupBy = a
        .group_by
        .parse()
        .map_err(|e: String| Error::usage(format!("--group-by: {e}")))?;
    let repo = open_repo(g)?;
    with_lock(&repo, true, "forget", || {
        let mut snaps = repo.snapshots()?;
        snaps.retain(|(_, s)| matches_filter(s, &a.filter));
        let groups = retention::forget(&repo, &snaps, &policy, group_by, a.dry_run)?;
        let removed: usize = groups.iter().map(|grp| grp.removed().count()).sum();
        if g.json {
            print_json(&serde_json::json!({
                "dry_run": a.dry_run,
                "policy": policy,
                "groups": groups,
            }))?;
        } else {
            println!("policy: {policy}");
            for grp in &groups {
                println!("group {}:", grp.key);
                for d in &grp.decisions {
                    super::print_verdict(d.keep, &d.id, d.time, &d.reasons);
                }
            }
            super::print_removed(a.dry_run, removed);
        }
        if a.prune && !a.dry_run {
            super::prune::run_locked(g, &repo, false)?;
        }
        Ok(())
    })
}
