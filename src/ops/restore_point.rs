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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::job::{self, JobOptions, NamedSource, SourceSpec};
    use std::path::Path;

    /// Another handle on the repository `test_repo` made under `dir`, with
    /// an index cache of its own (`cache-NAME`), as another process has.
    pub(crate) fn another_handle(dir: &Path, name: &str) -> Repository {
        Repository::open(
            Box::new(crate::backend::LocalBackend::new(dir.join("repo"))),
            &crate::crypto::Secret::Password("pw".into()),
            Some(dir.join(format!("cache-{name}"))),
        )
        .unwrap()
    }

    /// A snapshot of a small file tree under `dir`, taken through `repo`.
    pub(crate) fn snapshot_files(repo: &Repository, dir: &Path) -> Id {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("a.txt"), b"read order\n".repeat(1000)).unwrap();
        let sources = [NamedSource {
            name: "files".into(),
            spec: SourceSpec::Files(vec![data]),
        }];
        let opts = JobOptions {
            quiet: true,
            ..Default::default()
        };
        job::run(repo, &sources, &opts).unwrap().id
    }

    /// Read order (spec/repository.md §3): a snapshot that another process
    /// finished after this one opened the repository, and so after it had
    /// loaded the index, is restorable, chosen by id or by time: choosing
    /// it brings the index up to date after the snapshot was read.
    #[test]
    fn a_snapshot_finished_after_open_restores() {
        let dir = tempfile::tempdir().unwrap();
        let by_id = crate::repository::test_repo(dir.path());
        let by_time = another_handle(dir.path(), "by-time");
        let writer = another_handle(dir.path(), "writer");
        let id = snapshot_files(&writer, dir.path());

        let chosen_by_id = by_id.find_snapshot("latest").unwrap();
        let (chosen_by_time, skipped) =
            snapshot_at(&by_time, jiff::Timestamp::now(), &[], false).unwrap();
        assert!(skipped.is_empty());
        for (repo, (found, snap), name) in [
            (&by_id, chosen_by_id, "by-id"),
            (&by_time, chosen_by_time.unwrap(), "by-time"),
        ] {
            assert_eq!(found, id);
            let nodes = repo.read_tree(&snap.sources[0]).unwrap();
            let target = dir.path().join(format!("target-{name}"));
            let stats = crate::restorer::restore_nodes(repo, &nodes, &target, true).unwrap();
            assert_eq!(stats.files, 1, "{name}");
        }
    }
}
