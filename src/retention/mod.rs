//! Retention: which snapshots `forget` (and the daemon) keep, and why.
//!
//! Deleting snapshots is the one operation in a backup tool that destroys
//! data on purpose, so the decision of *what* to delete is kept apart from
//! the code that touches the repository: [`plan`] is pure (no I/O, no
//! clock, no global time zone — the caller passes the zone and "now"),
//! takes [`Candidate`] snapshots and a [`Policy`], and returns for every
//! snapshot whether it is kept, by which rule and counter, or why no rule
//! keeps it. [`forget`] is the one place that applies a decision to a
//! repository.
//!
//! The rules are restic's `forget` (its `internal/data/snapshot_policy.go`,
//! restic ≥ 0.17); they, the syntax of durations, counts and tag groups,
//! how corrupted snapshots are treated and every intended difference from
//! restic are specified in `spec/retention.md`. In short:
//!
//! * snapshots are split into groups ([`GroupBy`]); each group is decided
//!   on its own, newest first;
//! * a count rule (`keep-last`, `keep-hourly` … `keep-yearly`, a number or
//!   `unlimited`) keeps the newest snapshot of each of the N newest periods
//!   that have snapshots (hour, day, ISO week, month, year in the given
//!   time zone), and the group's oldest snapshot too while its count is not
//!   used up;
//! * `keep-within D` keeps every snapshot taken after the newest one minus
//!   D (calendar arithmetic: `1m` is a month); `keep-within-<period> D`
//!   keeps the newest of each period among those, plus the oldest;
//! * within a period, a complete snapshot stands for it before an
//!   incomplete one;
//! * `keep-tag a,b` keeps snapshots having both tags; several groups: any;
//! * a snapshot whose newest restore test failed (corrupted) is set aside:
//!   no rule counts it, so a period keeps its newest *good* snapshot, and
//!   the corrupted one is kept and reported — only `forget ID` removes it;
//! * a plan's snapshots are decided per source ([`plan_by_source`]): the
//!   rules run over the snapshots that stored each source, a snapshot is
//!   kept when any source keeps it, and each source's newest complete copy
//!   is always kept — so a source that fails every night holds nothing up.

mod decide;
mod duration;
mod group;
mod policy;
mod sources;
#[cfg(test)]
mod tests;

pub use decide::{plan, Decision, GroupDecision, Match, REASON_NO_POLICY};
pub use duration::{CalendarDuration, ParseError, DURATION_HINT};
pub use group::{Candidate, GroupBy, GroupKey, GROUP_BY_WORDS};
pub use policy::{Count, Period, Policy, TagGroup, COUNT_HINT};
pub use sources::{
    plan_by_source, PlanDecision, PlanSnapshot, SourceVerdict, Verdict, NEWEST_COMPLETE,
    NEWEST_COMPLETE_REASON,
};

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::error::{Error, Result};
use crate::repo::{Snapshot, SnapshotId};
use crate::repository::Repository;

/// The candidates for `snapshots`, each marked corrupted when its newest
/// proof failed.
pub fn candidates(
    repo: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
) -> Result<Vec<Candidate>> {
    let proofs = repo.proofs()?;
    Ok(snapshots
        .iter()
        .map(|(id, s)| Candidate::of(*id, s, &proofs))
        .collect())
}

impl Candidate {
    /// Snapshot `id` as the rules see it, corrupted when its newest proof
    /// in `proofs` failed.
    pub fn of(
        id: SnapshotId,
        s: &Snapshot,
        proofs: &std::collections::HashMap<SnapshotId, crate::repo::Proof>,
    ) -> Candidate {
        Candidate {
            id: id.to_hex(),
            time: s.time,
            host: s.host.clone(),
            tags: s.tags.clone(),
            paths: s.paths.clone(),
            corrupted: proofs
                .get(&id)
                .filter(|p| !p.passed)
                .map(|p| p.detail.clone()),
            incomplete: !s.is_complete(),
        }
    }
}

impl PlanSnapshot {
    /// `candidate` with the status of each source `s` records.
    pub fn of(candidate: Candidate, s: &Snapshot) -> PlanSnapshot {
        PlanSnapshot {
            candidate,
            sources: s
                .sources
                .iter()
                .map(|r| (r.name.clone(), r.status))
                .collect(),
        }
    }
}

/// Apply `policy` to `snapshots` (already listed and selected by the
/// caller) in the system's time zone: decide, and remove what no rule keeps
/// (logged with its reasons) unless `dry_run`. Corrupted snapshots are
/// passed over by the rules and kept. Refuses, removing nothing, when the
/// rules would keep none of a group's good snapshots. The caller holds the
/// exclusive lock. Returns the decisions.
pub fn forget(
    repo: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    dry_run: bool,
) -> Result<Vec<GroupDecision>> {
    let candidates = candidates(repo, snapshots)?;
    let groups = plan(
        policy,
        group_by,
        &candidates,
        &TimeZone::system(),
        crate::clock::now(),
    );
    if let Some(g) = groups.iter().find(|g| g.keeps_no_good_snapshot()) {
        return Err(Error::failure(format!(
            "refusing to remove every snapshot of group {}: the rules ({policy}) keep none of its {}",
            g.key,
            g.decisions.len()
        ))
        .with_hint(
            "add a rule that keeps something (e.g. --keep-last 1); to remove snapshots on purpose, name them: `cairn forget ID...`",
        ));
    }
    for d in groups.iter().flat_map(|g| g.removed()) {
        remove_snapshot(repo, &d.id, d.time, &d.reasons.join("; "), dry_run)?;
    }
    Ok(groups)
}

/// Remove one snapshot file (unless `dry_run`), logging why: every
/// removal of a snapshot goes through here.
pub fn remove_snapshot(
    repo: &Repository,
    id_hex: &str,
    time: Timestamp,
    reason: &str,
    dry_run: bool,
) -> Result<()> {
    tracing::info!(snapshot = &id_hex[..8.min(id_hex.len())], %time, reason, dry_run, "forgetting snapshot");
    if dry_run {
        return Ok(());
    }
    repo.backend.remove(&crate::backend::FileRef::new(
        crate::repo::FileKind::Snapshot,
        id_hex,
    ))
}
