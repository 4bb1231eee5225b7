//! What the daemon shows about the repository, read from the repository so
//! that a restart loses none of it: each source's last success (the newest
//! snapshot of the plan in which the source is complete), the newest proof
//! of each of the plan's snapshots, and the repository's own size next to
//! the free space of its filesystem or its quota.
//!
//! Listing the backend and reading proofs cost requests (an object store
//! bills them), so both are cached: the repository is listed again after
//! every run and prune and otherwise at most every [`REFRESH_EVERY`], the
//! proofs after every restore test and at most as often. `/metrics` and
//! `/status` only render the daemon's status and read nothing.
//!
//! Which snapshots are the plan's is decided by [`super::run::of_plan`].

use super::run::of_plan;
use super::status::{self, Filesystem, ProofState, SourceState, StorageUse};
use super::{Daemon, LastProof};
use crate::backend::FileRef;
use crate::error::Result;
use crate::plan::Plan;
use crate::repo::{FileKind, Proof, RepoId, Snapshot, SnapshotId, SourceStatus};
use crate::repository::Repository;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a listing of the repository (its size) or of its proofs is
/// used before it is made again, when no run or prune came in between.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10 * 60);

/// One listing, of which repository and when.
struct Cached<T> {
    repo: RepoId,
    at: Instant,
    time: jiff::Timestamp,
    value: T,
}

impl<T> Cached<T> {
    fn new(repo: &Repository, value: T) -> Cached<T> {
        Cached {
            repo: repo.config.id,
            at: Instant::now(),
            time: crate::clock::now(),
            value,
        }
    }

    fn usable(&self, repo: &Repository) -> bool {
        self.repo == repo.config.id && self.at.elapsed() < REFRESH_EVERY
    }
}

/// What was last read from the repository.
#[derive(Default)]
pub struct Seen {
    /// Bytes and files.
    size: Option<Cached<(u64, u64)>>,
    proofs: Option<Cached<HashMap<SnapshotId, Proof>>>,
}

/// The repository's own files as the backend lists them, with the config:
/// (bytes, files). Leftovers of interrupted writes are not listed.
pub fn repository_size(repo: &Repository) -> Result<(u64, u64)> {
    let config = repo.backend.read(&FileRef::config())?.len() as u64;
    let (mut bytes, mut files) = (config, 1);
    for kind in [
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Lock,
        FileKind::Wal,
        FileKind::Proof,
    ] {
        for (_, size) in repo.backend.list(kind)? {
            bytes += size;
            files += 1;
        }
    }
    Ok((bytes, files))
}

/// Storage use from the repository's size (`bytes`, `files`, listed at
/// `time`): against the plan's quota when it has one, else against the
/// filesystem of a local repository.
pub fn storage_use(
    plan: &Plan,
    repo: &Repository,
    (bytes, files): (u64, u64),
    time: jiff::Timestamp,
) -> StorageUse {
    let filesystem = repo
        .backend
        .is_local()
        .then(|| rustix::fs::statvfs(repo.backend.location().as_str()).ok())
        .flatten()
        .map(|st| Filesystem {
            total_bytes: st.f_blocks * st.f_frsize,
            free_bytes: st.f_bavail * st.f_frsize,
        });
    let quota = plan.alerts.quota.map(|q| q.0);
    let (measured_by, total, used) = match (quota, &filesystem) {
        (Some(q), _) => (Some("quota"), Some(q), bytes),
        (None, Some(fs)) => (
            Some("filesystem"),
            Some(fs.total_bytes),
            fs.total_bytes.saturating_sub(fs.free_bytes),
        ),
        (None, None) => (None, None, bytes),
    };
    StorageUse {
        used_bytes: bytes,
        files,
        measured_at: Some(time),
        quota_bytes: quota,
        filesystem,
        measured_by: measured_by.map(str::to_string),
        total_bytes: total,
        percent: total.map(|t| 100.0 * used as f64 / t.max(1) as f64),
    }
}

/// Source `name`'s record in snapshot `s`.
fn record<'a>(s: &'a Snapshot, name: &str) -> Option<&'a crate::repo::SourceRecord> {
    s.sources.iter().find(|r| r.name == name)
}

/// Bring one source's state up to date with the repository: its last
/// success always; its last result when the repository holds a newer run
/// than the daemon saw (one made by hand, or while the daemon was down).
fn source_from_repository(st: &mut SourceState, mine: &[&(SnapshotId, Snapshot)], name: &str) {
    let ok = mine
        .iter()
        .rev()
        .find(|(_, s)| record(s, name).is_some_and(|r| r.status == SourceStatus::Complete));
    let newest = mine
        .iter()
        .rev()
        .find_map(|(_, s)| record(s, name).map(|r| (s, r)));
    st.last_success = ok.map(|(_, s)| s.time);
    st.last_success_snapshot = ok.map(|(id, _)| id.short());
    if let Some((snap, r)) = newest {
        if st.last_run.is_none_or(|t| snap.time > t) {
            let complete = r.status == SourceStatus::Complete;
            st.last_result = if complete { "ok" } else { "failed" }.into();
            st.last_run = Some(snap.time);
            st.last_error = (!complete).then(|| {
                if r.errors.is_empty() {
                    format!("the source is {:?} in the snapshot", r.status)
                } else {
                    r.errors.join("; ")
                }
            });
            (st.bytes_read, st.bytes_new, st.duration_ms) = (None, None, None);
        }
    }
}

impl Daemon {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next storage measurement lists the repository again (after a
    /// prune).
    pub fn storage_changed(&self) {
        self.seen().size = None;
    }

    /// Storage use, the repository listed again when `fresh` or when the
    /// last listing is older than [`REFRESH_EVERY`]. `None` when the
    /// repository cannot be listed and was never measured.
    pub fn storage_use(&self, plan: &Plan, repo: &Repository, fresh: bool) -> Option<StorageUse> {
        let mut seen = self.seen();
        let usable = seen.size.as_ref().is_some_and(|c| c.usable(repo));
        if fresh || !usable {
            match repository_size(repo) {
                Ok(size) => seen.size = Some(Cached::new(repo, size)),
                Err(e) => tracing::warn!(
                    error = e.to_string().as_str(),
                    "cannot list the repository to measure its size"
                ),
            }
        }
        let c = seen.size.as_ref().filter(|c| c.repo == repo.config.id)?;
        Some(storage_use(plan, repo, c.value, c.time))
    }

    /// The newest proof of each snapshot, read again when `fresh` or older
    /// than [`REFRESH_EVERY`].
    fn proofs(&self, repo: &Repository, fresh: bool) -> HashMap<SnapshotId, Proof> {
        let mut seen = self.seen();
        let usable = seen.proofs.as_ref().is_some_and(|c| c.usable(repo));
        if fresh || !usable {
            match repo.proofs() {
                Ok(p) => seen.proofs = Some(Cached::new(repo, p)),
                Err(e) => tracing::warn!(
                    error = e.to_string().as_str(),
                    "cannot read the repository's proofs"
                ),
            }
        }
        seen.proofs
            .as_ref()
            .filter(|c| c.repo == repo.config.id)
            .map(|c| c.value.clone())
            .unwrap_or_default()
    }

    /// Bring the status up to date with the repository's snapshots `all`
    /// (every plan's; the plan's are picked by [`of_plan`]), its proofs, and
    /// `storage` when measured.
    pub fn observe(
        &self,
        plan: &Plan,
        repo: &Repository,
        all: &[(SnapshotId, Snapshot)],
        storage: Option<StorageUse>,
    ) {
        let mine: Vec<&(SnapshotId, Snapshot)> =
            all.iter().filter(|(_, s)| of_plan(plan, s)).collect();
        let proofs = self.proofs(repo, false);
        let proven: Vec<ProofState> = mine
            .iter()
            .filter_map(|(id, s)| {
                let p = proofs.get(id)?;
                Some(ProofState {
                    snapshot: id.short(),
                    snapshot_time: s.time,
                    time: p.time,
                    passed: p.passed,
                    sources: p.sources.clone(),
                    detail: p.detail.clone(),
                })
            })
            .collect();
        self.with_status(|st| {
            if storage.is_some() {
                st.storage = storage;
            }
            st.snapshots = mine.len();
            if let Some((id, s)) = mine.last() {
                st.last_snapshot = Some(id.short());
                st.last_snapshot_time = Some(s.time);
            }
            for src in &plan.sources {
                let e = st.sources.entry(src.name.clone()).or_default();
                source_from_repository(e, &mine, &src.name);
            }
            // A proof newer than the daemon's last test (one it has not
            // seen: made by hand, or before a restart) is the last test.
            if let Some(p) = proven.iter().max_by_key(|p| p.time) {
                let last = st.last_restore_test.as_ref().and_then(|l| l.time);
                if last.is_none_or(|t| p.time > t) {
                    st.last_restore_test = Some(LastProof {
                        time: Some(p.time),
                        snapshot: Some(p.snapshot.clone()),
                        outcome: if p.passed { "passed" } else { "failed" }.into(),
                        detail: p.detail.clone(),
                        skipped_in_a_row: 0,
                        data_check: None,
                    });
                }
            }
            st.proofs = proven;
        });
    }

    /// At start-up, before the API answers: the status from the repository
    /// (the caller opened it).
    pub fn observe_at_start(&self) {
        let plan = self.plan();
        let Some(repo) = self.opened_repo() else {
            return;
        };
        let storage = self.storage_use(&plan, &repo, true);
        match repo.snapshots() {
            Ok(all) => self.observe(&plan, &repo, &all, storage),
            Err(e) => tracing::warn!(
                error = e.to_string().as_str(),
                "cannot list the repository's snapshots"
            ),
        }
    }

    /// After a backup run, its retention and prune: the repository listed
    /// again.
    pub fn after_run(&self, plan: &Plan, repo: &Repository) {
        let storage = self.storage_use(plan, repo, true);
        match repo.snapshots() {
            Ok(all) => self.observe(plan, repo, &all, storage),
            Err(e) => tracing::warn!(
                error = e.to_string().as_str(),
                "cannot list the repository's snapshots"
            ),
        }
    }

    /// A restore test ended with `last`: counted, its time made the time of
    /// the proof it recorded (if it recorded one), the status brought up to
    /// date with the repository's proofs and size (a proof is a new file),
    /// and saved.
    pub fn restore_test_done(&self, plan: &Plan, repo: &Repository, last: &mut LastProof) {
        let proofs = self.proofs(repo, true);
        if last.outcome != "skipped" {
            // Every proof the test recorded: its own and those of the
            // snapshots its data check marked (newer than its start), so
            // that none of them passes for a newer test made elsewhere.
            let recorded = proofs
                .values()
                .map(|p| p.time)
                .filter(|t| last.time.is_none_or(|l| *t >= l))
                .max();
            if recorded.is_some() {
                last.time = recorded;
            }
        }
        self.with_status(|s| {
            s.last_restore_test = Some(last.clone());
            s.restore_tests.count(&last.outcome);
        });
        let storage = self.storage_use(plan, repo, true);
        if let Ok(all) = repo.snapshots() {
            self.observe(plan, repo, &all, storage);
        }
        self.save_status();
    }

    /// Write what is kept across restarts (`state.json`); a failure is
    /// logged, never fatal.
    pub fn save_status(&self) {
        let s = self.status();
        if let Err(e) = status::update(&self.opts.state_dir, |p| p.keep(&s)) {
            tracing::warn!(
                dir = self.opts.state_dir.display().to_string().as_str(),
                error = e.to_string().as_str(),
                "cannot save the daemon state"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(t: &str, ok: bool) -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "version": 1, "time": t, "host": "h", "username": "u", "paths": [],
            "program": "", "summary": {"files": 0, "dirs": 0, "symlinks": 0,
                "bytes_read": 0, "bytes_added": 0, "chunks_total": 0, "chunks_new": 0,
                "duration_ms": 1},
            "sources": [{"name": "db", "kind": "postgres",
                "status": if ok { "complete" } else { "failed" }, "tree": [], "size": 0,
                "errors": if ok { vec![] } else { vec!["boom"] }}],
        }))
        .unwrap()
    }

    #[test]
    fn the_last_success_is_the_newest_complete_snapshot_and_a_newer_failure_shows() {
        let snaps = [
            (SnapshotId([1; 32]), snap("2026-01-01T00:00:00Z", true)),
            (SnapshotId([2; 32]), snap("2026-01-02T00:00:00Z", true)),
            (SnapshotId([3; 32]), snap("2026-01-03T00:00:00Z", false)),
        ];
        let mine: Vec<_> = snaps.iter().collect();
        let mut st = SourceState::default();
        source_from_repository(&mut st, &mine, "db");
        assert_eq!(
            st.last_success,
            Some("2026-01-02T00:00:00Z".parse().unwrap())
        );
        assert_eq!(st.last_success_snapshot, Some(SnapshotId([2; 32]).short()));
        assert_eq!(st.last_result, "failed");
        assert_eq!(st.last_error.as_deref(), Some("boom"));

        // What the daemon saw later (a run that saved nothing) stays.
        let mut st = SourceState {
            last_result: "failed".into(),
            last_run: Some("2026-01-04T00:00:00Z".parse().unwrap()),
            last_error: Some("repository unreachable".into()),
            bytes_read: Some(5),
            ..Default::default()
        };
        source_from_repository(&mut st, &mine[..2], "db");
        assert_eq!(st.last_error.as_deref(), Some("repository unreachable"));
        assert_eq!(st.bytes_read, Some(5));
        assert_eq!(
            st.last_success,
            Some("2026-01-02T00:00:00Z".parse().unwrap())
        );

        let mut st = SourceState::default();
        source_from_repository(&mut st, &mine, "other");
        assert_eq!((st.last_success, st.last_result.as_str()), (None, ""));
    }
}
