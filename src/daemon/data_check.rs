//! The data check that comes with every restore test (`verify { read-data
//! … }`, spec/plan.md "Restore tests").
//!
//! A restore test proves one random snapshot. A byte that rots in a pack
//! damages the snapshots that use its chunks, and one random pick among
//! fifty finds it only by luck (found by `scripts/timelapse`: three flips
//! in 400 days went unnoticed past a week). So each test first reads the
//! stored data back, as `cairn check --read-data` does — every pack, or
//! the next part of them — and every damaged snapshot of the plan is marked
//! corrupted (a failed proof), so retention stops counting it and keeps a
//! good one, `restore --at` passes it over, and the alert names it.

use crate::error::Result;
use crate::ops::check::{check, CheckReport};
use crate::plan::{Plan, ReadData};
use crate::repo::{Proof, Snapshot, SnapshotId, FORMAT_VERSION};
use crate::repository::Repository;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What one data check read and found (in `/status`, `last_restore_test`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DataCheck {
    /// `all`, or the part of the packs read: `2/4`.
    pub part: String,
    pub packs_read: usize,
    pub bytes_read: u64,
    /// Each damaged snapshot of the plan (short id) with what is damaged,
    /// those marked corrupted before included.
    pub damaged: BTreeMap<String, String>,
    /// How many of `damaged` were marked corrupted already (known damage:
    /// it fails no further test and alerts no one again).
    pub already_marked: usize,
    /// Archived WAL files whose content is damaged or not indexed: each
    /// fails the test (and alerts) while it is there, since no snapshot
    /// can be marked for it and recovery stops before it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_wal: Vec<String>,
    /// Problems found that no snapshot of the plan depends on (a damaged
    /// frame no snapshot uses, another plan's snapshot): logged, and named
    /// by `cairn check --read-data`.
    pub other_problems: usize,
}

/// What one data check found.
pub struct Found {
    pub summary: DataCheck,
    /// The damaged snapshots of the plan not marked corrupted before.
    pub damaged: Vec<Damaged>,
    /// The packs read with damage, for [`crate::ops::repair_packs`].
    pub packs: Vec<crate::repo::PackId>,
}

/// A damaged snapshot: the sources concerned and what is damaged.
pub struct Damaged {
    pub id: SnapshotId,
    pub sources: Vec<String>,
    pub detail: String,
}

/// Read the part of the stored data that the `nth` restore test reads
/// (`None` with `read-data "off"`), and map what is damaged to the plan's
/// snapshots, `snaps` (`corrupted`: those whose newest proof failed).
pub fn run(
    repo: &Repository,
    plan: &Plan,
    snaps: &[(SnapshotId, Snapshot)],
    corrupted: &HashSet<SnapshotId>,
    nth: u64,
) -> Result<Option<Found>> {
    let part = match plan.verify.read_data {
        ReadData::Off => return Ok(None),
        ReadData::All => None,
        ReadData::Parts(n) => Some(format!("{}/{n}", nth % u64::from(n) + 1)),
    };
    let report = check(repo, part.is_none(), part.as_deref(), true)?;
    let (mut summary, mut damaged) =
        summarize(&report, snaps, part.unwrap_or_else(|| "all".into()));
    damaged.retain(|d| !corrupted.contains(&d.id));
    summary.already_marked = summary.damaged.len() - damaged.len();
    tracing::info!(
        part = summary.part.as_str(),
        packs_read = summary.packs_read,
        bytes_read = summary.bytes_read,
        damaged_snapshots = summary.damaged.len(),
        newly_damaged = damaged.len(),
        other_problems = summary.other_problems,
        "data check finished"
    );
    if summary.other_problems > 0 {
        tracing::warn!(
            problems = summary.other_problems,
            first = report.errors.first().map(String::as_str).unwrap_or(""),
            "the data check found problems no snapshot of the plan depends on: `cairn check --read-data` names them"
        );
    }
    Ok(Some(Found {
        summary,
        damaged,
        packs: report.damaged_packs,
    }))
}

/// The check's damage grouped by the plan's snapshots.
fn summarize(
    report: &CheckReport,
    snaps: &[(SnapshotId, Snapshot)],
    part: String,
) -> (DataCheck, Vec<Damaged>) {
    let ours: HashMap<SnapshotId, &Snapshot> = snaps.iter().map(|(i, s)| (*i, s)).collect();
    let mut by_snapshot: BTreeMap<SnapshotId, Vec<(&str, &str)>> = BTreeMap::new();
    let mut others = 0;
    for d in &report.damaged {
        if ours.contains_key(&d.snapshot) {
            by_snapshot
                .entry(d.snapshot)
                .or_default()
                .push((d.source.as_str(), d.path.as_str()));
        } else {
            others += 1;
        }
    }
    let mut damaged = Vec::new();
    for (id, paths) in by_snapshot {
        let mut sources: Vec<String> = paths.iter().map(|(s, _)| s.to_string()).collect();
        sources.sort();
        sources.dedup();
        let shown: Vec<String> = paths
            .iter()
            .take(3)
            .map(|(s, p)| format!("{s}: {p}"))
            .collect();
        let more = match paths.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        damaged.push(Damaged {
            id,
            sources,
            detail: format!(
                "the data check found {} damaged file(s): {}{more}",
                paths.len(),
                shown.join(", ")
            ),
        });
    }
    let summary = DataCheck {
        part,
        packs_read: report.packs_read,
        bytes_read: report.bytes_read,
        damaged: damaged
            .iter()
            .map(|d| (d.id.short(), d.detail.clone()))
            .collect(),
        already_marked: 0,
        damaged_wal: report.damaged_wal.clone(),
        // Errors that put no snapshot of the plan at risk.
        other_problems: if damaged.is_empty() {
            (report.errors.len() + others).saturating_sub(report.damaged_wal.len())
        } else {
            others
        },
    };
    (summary, damaged)
}

/// Mark each damaged snapshot corrupted: a failed proof, unless its newest
/// proof already failed (`proofs`: the newest of each snapshot, the
/// restore test's own included). Returns how many were newly marked.
pub fn mark(
    repo: &Repository,
    damaged: &[Damaged],
    proofs: &HashMap<SnapshotId, Proof>,
) -> Result<usize> {
    let mut marked = 0;
    for d in damaged {
        if proofs.get(&d.id).is_some_and(|p| !p.passed) {
            continue;
        }
        repo.record_proof(&Proof {
            version: FORMAT_VERSION,
            snapshot: d.id,
            time: crate::clock::now(),
            passed: false,
            sources: d.sources.clone(),
            detail: d.detail.clone(),
            host: crate::repository::host_name(),
        })?;
        tracing::warn!(snapshot = %d.id.short(), detail = %d.detail, "snapshot marked corrupted by the data check");
        marked += 1;
    }
    Ok(marked)
}

/// What the daemon's restore test does with what a data check found.
impl super::Daemon {
    /// What the data check found damaged: each snapshot marked corrupted,
    /// and the test's outcome failed, naming them (a tested snapshot that
    /// restored may still hold damage in a source the test does not read).
    pub(super) fn data_damage(
        &self,
        repo: &Repository,
        found: &Found,
        tested: Option<SnapshotId>,
        last: &mut super::LastProof,
        outcome: &mut crate::prove::Outcome,
    ) {
        let (damaged, summary) = (&found.damaged, &found.summary);
        // The newest proofs include the test's own, just recorded.
        if let Err(e) = repo.proofs().and_then(|p| mark(repo, damaged, &p)) {
            tracing::error!(error = %e, "the damaged snapshots could not be marked corrupted");
        }
        let listing: Vec<String> = damaged
            .iter()
            .map(|d| format!("{}: {}", d.id.short(), d.detail))
            .collect();
        let note = format!(
            "data check (packs {}, {} read): {} damaged snapshot(s), each marked corrupted: {}",
            summary.part,
            summary.packs_read,
            damaged.len(),
            listing.join("; ")
        );
        outcome.fail_with(&note);
        if !tested.is_some_and(|t| damaged.iter().any(|d| d.id == t)) {
            last.snapshot = Some(damaged[0].id.short());
        }
    }

    /// Replace the damaged packs the data check read by what can be read
    /// back of them (`ops::repair_packs`), so that backups stop
    /// deduplicating against chunks that no longer decode; said in the
    /// outcome's detail.
    pub(super) fn salvage(
        &self,
        repo: &Repository,
        packs: &[crate::repo::PackId],
        outcome: &mut crate::prove::Outcome,
    ) {
        let done = match crate::ops::repair_packs::repair_packs(repo, Some(packs), false) {
            Ok(r) if r.damaged_packs.is_empty() => return,
            Ok(r) => format!(
                "{} damaged pack(s) replaced by what could be read back ({} chunk(s) saved, {} \
                 dropped from the index: the next backup of the same data stores them again)",
                r.damaged_packs.len(),
                r.chunks_saved,
                r.chunks_dropped.len()
            ),
            Err(e) => {
                tracing::error!(error = %e, "the damaged packs could not be repaired");
                format!("the damaged packs could not be repaired: {e}")
            }
        };
        tracing::warn!(result = done.as_str(), "repair packs");
        // Added to a failed outcome (which alerts); a test that passed (the
        // damage touched nothing the plan keeps) stays passed, the repair
        // logged above.
        if let crate::prove::Outcome::Failed { .. } = outcome {
            outcome.fail_with(&done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::check::Damage;

    fn snap() -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "version": 1, "time": "2026-01-01T02:00:00Z", "host": "h", "username": "u",
            "paths": [], "program": "", "summary": {"files": 0, "dirs": 0, "symlinks": 0,
            "bytes_read": 0, "bytes_added": 0, "chunks_total": 0, "chunks_new": 0,
            "duration_ms": 1}, "sources": []
        }))
        .unwrap()
    }

    fn damage(n: u8, source: &str, path: &str) -> Damage {
        Damage {
            snapshot: SnapshotId([n; 32]),
            time: jiff::Timestamp::UNIX_EPOCH,
            source: source.into(),
            path: path.into(),
        }
    }

    #[test]
    fn damage_is_grouped_by_the_plans_snapshots_and_the_rest_is_counted() {
        let snaps = vec![(SnapshotId([1; 32]), snap()), (SnapshotId([2; 32]), snap())];
        let report = CheckReport {
            damaged: vec![
                damage(1, "etc", "/etc/a"),
                damage(1, "etc", "/etc/b"),
                damage(1, "db", "toc.dat"),
                damage(1, "etc", "/etc/c"),
                damage(9, "other", "/x"),
            ],
            errors: vec!["pack …: frame unreadable".into()],
            ..Default::default()
        };
        let (summary, damaged) = summarize(&report, &snaps, "2/4".into());
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].id, SnapshotId([1; 32]));
        assert_eq!(damaged[0].sources, ["db", "etc"]);
        assert!(
            damaged[0].detail.contains("4 damaged file(s)")
                && damaged[0].detail.ends_with("and 1 more"),
            "{}",
            damaged[0].detail
        );
        assert_eq!(summary.part, "2/4");
        assert_eq!(summary.other_problems, 1);

        let clean = CheckReport {
            errors: vec!["pack …: frame unreadable".into()],
            ..Default::default()
        };
        let (summary, damaged) = summarize(&clean, &snaps, "all".into());
        assert!(damaged.is_empty() && summary.damaged.is_empty());
        assert_eq!(summary.other_problems, 1);
    }
}
