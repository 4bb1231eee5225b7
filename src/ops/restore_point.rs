//! Choosing a restore point: the newest snapshot at or before a time,
//! passing over the snapshots a failed restore test marked corrupted (the
//! caller says which it passed over).

use super::local_time;
use crate::error::{Error, Result};
use crate::repo::{Id, Snapshot};
use crate::repository::Repository;

/// A snapshot left out because a failed restore test marked it corrupted.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub id: Id,
    pub time: jiff::Timestamp,
    /// What the failed restore test found.
    pub detail: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipping snapshot {}: marked corrupted by its restore test ({}); --force takes it",
            self.id.short(),
            self.detail
        )
    }
}

/// The snapshot chosen (or why none could be), and the corrupted ones
/// passed over.
pub type Choice = (Result<(Id, Snapshot)>, Vec<Skipped>);

/// The newest snapshot taken at or before `at` that has every one of
/// `sources`, passing over those marked corrupted unless `allow_corrupted`.
/// The corrupted ones at or before `at` that were passed over come back
/// whether or not a snapshot was found, so the caller can say why.
pub fn snapshot_at(
    repo: &Repository,
    at: jiff::Timestamp,
    sources: &[String],
    allow_corrupted: bool,
) -> Result<Choice> {
    let mut all = repo.snapshots()?;
    let mut skipped = Vec::new();
    if !allow_corrupted {
        skipped = drop_corrupted(repo, &mut all)?;
        skipped.retain(|s| s.time <= at);
    }
    all.retain(|(_, s)| {
        sources
            .iter()
            .all(|n| s.sources.iter().any(|x| &x.name == n))
    });
    let chosen = newest_at(&all, at, "", "`cairn snapshots` lists the restore points");
    Ok((chosen, skipped))
}

/// Remove from `snaps` those a failed restore test marked corrupted, and
/// return them.
pub fn drop_corrupted(repo: &Repository, snaps: &mut Vec<(Id, Snapshot)>) -> Result<Vec<Skipped>> {
    let proofs = repo.proofs()?;
    let mut skipped = Vec::new();
    snaps.retain(|(id, s)| match proofs.get(id) {
        Some(p) if !p.passed => {
            skipped.push(Skipped {
                id: *id,
                time: s.time,
                detail: p.detail.clone(),
            });
            false
        }
        _ => true,
    });
    Ok(skipped)
}

/// The newest of `points` (oldest first) taken at or before `at`; `of`
/// qualifies "snapshot" in the message, `empty_hint` helps when there is none.
pub fn newest_at(
    points: &[(Id, Snapshot)],
    at: jiff::Timestamp,
    of: &str,
    empty_hint: &str,
) -> Result<(Id, Snapshot)> {
    points
        .iter()
        .rev()
        .find(|(_, s)| s.time <= at)
        .cloned()
        .ok_or_else(|| {
            let msg = format!("no snapshot{of} was taken at or before {}", local_time(at));
            match points.first() {
                Some((_, s)) => Error::failure(msg)
                    .with_hint(format!("the oldest one is from {}", local_time(s.time))),
                None => Error::failure(msg).with_hint(empty_hint.to_string()),
            }
        })
}
