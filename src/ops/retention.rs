//! Applying a plan's retention rules to the snapshots the plan made, per
//! source (`spec/retention.md`, "Snapshots with failed or incomplete
//! sources"): `forget --plan` and the daemon.

use jiff::tz::TimeZone;

use crate::error::{Error, Result};
use crate::ops::prune::{prune, PruneReport};
use crate::plan::Plan;
use crate::repo::{Snapshot, SnapshotId};
use crate::repository::Repository;
use crate::retention::{PlanDecision, PlanSnapshot, Policy};

/// What applying the rules did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Snapshots forgotten (each logged with its reason as it goes).
    pub removed: usize,
    /// The prune that followed, when anything was removed.
    pub pruned: Option<PruneReport>,
}

/// The repository's snapshots made with `plan` ([`Plan::made`]).
pub fn snapshots_of(repo: &Repository, plan: &Plan) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let mut snaps = repo.snapshots()?;
    snaps.retain(|(_, s)| plan.made(s));
    Ok(snaps)
}

/// Decide, per source, which of `snapshots` (a plan's) `policy` keeps, in
/// the system's time zone; corrupted snapshots are marked from the
/// repository's proofs.
pub fn decide(
    repo: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &Policy,
) -> Result<PlanDecision> {
    let candidates = crate::retention::candidates(repo, snapshots)?;
    let snaps: Vec<PlanSnapshot> = candidates
        .into_iter()
        .zip(snapshots)
        .map(|(candidate, (_, s))| PlanSnapshot::of(candidate, s))
        .collect();
    Ok(crate::retention::plan_by_source(
        policy,
        &snaps,
        &TimeZone::system(),
        crate::clock::now(),
    ))
}

/// Forget what `plan`'s rules keep for no source among its snapshots
/// (unless `dry_run`), each removal logged with its reasons. Refuses,
/// removing nothing, when the rules would keep no good copy of a source.
/// The caller holds the exclusive lock.
pub fn forget(repo: &Repository, plan: &Plan, dry_run: bool) -> Result<PlanDecision> {
    let policy = plan.retention.policy();
    let snaps = snapshots_of(repo, plan)?;
    let decision = decide(repo, &snaps, &policy)?;
    if !decision.keeps_nothing.is_empty() {
        return Err(Error::failure(format!(
            "refusing to apply the retention of plan {}: the rules ({policy}) keep no copy of source {}",
            plan.identity(),
            decision.keeps_nothing.join(", ")
        ))
        .with_hint("add a rule that keeps something to the plan's `retention` (e.g. keep-last 1)"));
    }
    for v in decision.removed() {
        crate::retention::remove_snapshot(repo, &v.id, v.time, &v.reasons.join("; "), dry_run)?;
    }
    Ok(decision)
}

/// Forget what `plan`'s rules do not keep among its own snapshots
/// ([`forget`]), then prune if anything went; under an exclusive lock.
pub fn apply(repo: &Repository, plan: &Plan) -> Result<Applied> {
    crate::lock::with_lock(repo, true, "retention", || {
        let removed = forget(repo, plan, false)?.removed().count();
        let pruned = match removed {
            0 => None,
            _ => Some(prune(repo, false)?),
        };
        Ok(Applied { removed, pruned })
    })
}
