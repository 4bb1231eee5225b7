//! Applying a plan's retention rules to the snapshots the plan made.

use crate::error::Result;
use crate::ops::prune::{prune, PruneReport};
use crate::plan::Plan;
use crate::repository::Repository;

/// What applying the rules did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Snapshots forgotten (each logged with its reason as it goes).
    pub removed: usize,
    /// The prune that followed, when anything was removed.
    pub pruned: Option<PruneReport>,
}

/// Forget what `plan`'s rules do not keep among its own snapshots, then
/// prune if anything went; under an exclusive lock. The rules decide over
/// complete snapshots only (a partial one must never take the place of a
/// complete one); an incomplete snapshot goes once a newer complete one
/// exists.
pub fn apply(repo: &Repository, plan: &Plan) -> Result<Applied> {
    let file = plan.file.display().to_string();
    let policy = plan.retention.policy();
    crate::lock::with_lock(repo, true, "retention", || {
        let (complete, partial): (Vec<_>, Vec<_>) = repo
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.plan.as_deref() == Some(&file))
            .partition(|(_, s)| s.is_complete());
        let groups = crate::retention::forget(
            repo,
            &complete,
            &policy,
            crate::retention::GroupBy::default(),
            false,
        )?;
        let mut removed = groups.iter().flat_map(|g| g.removed()).count();
        let newest_complete = complete.iter().map(|(_, s)| s.time).max();
        for (id, s) in partial {
            if newest_complete.is_some_and(|t| s.time < t) {
                crate::retention::remove_snapshot(
                    repo,
                    &id.to_hex(),
                    s.time,
                    "incomplete, and a newer complete snapshot exists",
                    false,
                )?;
                removed += 1;
            }
        }
        let pruned = match removed {
            0 => None,
            _ => Some(prune(repo, false)?),
        };
        Ok(Applied { removed, pruned })
    })
}
