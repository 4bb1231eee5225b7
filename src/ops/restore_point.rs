//! Choosing a restore point: the newest snapshot at or before a time,
//! passing over the snapshots a failed restore test marked corrupted (the
//! caller says which it passed over).

use super::local_time;
use crate::error::{Error, Result};
use crate::repo::{Snapshot, SnapshotId};
use crate::repository::Repository;

/// A snapshot left out because a failed restore test marked it corrupted.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub id: SnapshotId,
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

/// Snapshots, oldest first.
type Points = Vec<(SnapshotId, Snapshot)>;

/// The snapshot chosen (or why none could be), and the corrupted ones
/// passed over.
pub type Choice = (Result<(SnapshotId, Snapshot)>, Vec<Skipped>);

/// The newest snapshot taken at or before `at` that has every one of
/// `sources`, passing over those marked corrupted unless `allow_corrupted`.
/// The corrupted ones passed over come back whether or not a snapshot was
/// found (when one was, only those newer than it), so the caller can say why.
pub fn snapshot_at(
    repo: &Repository,
    at: jiff::Timestamp,
    sources: &[String],
    allow_corrupted: bool,
) -> Result<Choice> {
    let (all, mut skipped) = candidates(repo, sources, allow_corrupted)?;
    skipped.retain(|s| s.time <= at);
    let chosen = newest_at(&all, at, "", "`cairn snapshots` lists the restore points");
    if let Ok((_, snap)) = &chosen {
        skipped.retain(|s| s.time > snap.time);
    }
    Ok((chosen, skipped))
}

/// `latest`: the newest snapshot that has every one of `sources`, passing
/// over those marked corrupted unless `allow_corrupted`; the ones passed
/// over come back as in [`snapshot_at`].
pub fn latest(repo: &Repository, sources: &[String], allow_corrupted: bool) -> Result<Choice> {
    let (all, mut skipped) = candidates(repo, sources, allow_corrupted)?;
    let chosen = match all.last() {
        Some(newest) => {
            skipped.retain(|s| s.time > newest.1.time);
            Ok(newest.clone())
        }
        None if skipped.is_empty() && sources.is_empty() => {
            Err(Error::failure("the repository has no snapshots")
                .with_hint("create one with `cairn snapshot`"))
        }
        None if skipped.is_empty() => Err(Error::failure(format!(
            "no snapshot has the source(s) {}",
            sources.join(", ")
        ))
        .with_hint("`cairn snapshots` lists the snapshots and their sources")),
        None => Err(Error::failure(format!(
            "no snapshot to restore: {} marked corrupted by a failed restore test{}",
            match skipped.len() {
                1 => "the only one is".to_string(),
                n => format!("all {n} are"),
            },
            if sources.is_empty() {
                String::new()
            } else {
                format!(" (of those with the source(s) {})", sources.join(", "))
            }
        ))
        .with_hint(
            "--force restores a corrupted snapshot anyway; `cairn snapshots` shows the proofs",
        )),
    };
    Ok((chosen, skipped))
}

/// The snapshots (oldest first) that have every one of `sources`, without
/// the corrupted ones unless `allow_corrupted`; and the corrupted ones
/// left out (those with the sources).
fn candidates(
    repo: &Repository,
    sources: &[String],
    allow_corrupted: bool,
) -> Result<(Points, Vec<Skipped>)> {
    let mut all = repo.snapshots()?;
    all.retain(|(_, s)| {
        sources
            .iter()
            .all(|n| s.sources.iter().any(|x| &x.name == n))
    });
    let mut skipped = Vec::new();
    if !allow_corrupted {
        skipped = drop_corrupted(repo, &mut all)?;
    }
    Ok((all, skipped))
}

/// Remove from `snaps` those a failed restore test marked corrupted, and
/// return them.
pub fn drop_corrupted(
    repo: &Repository,
    snaps: &mut Vec<(SnapshotId, Snapshot)>,
) -> Result<Vec<Skipped>> {
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
    points: &[(SnapshotId, Snapshot)],
    at: jiff::Timestamp,
    of: &str,
    empty_hint: &str,
) -> Result<(SnapshotId, Snapshot)> {
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
    pub(crate) fn snapshot_files(repo: &Repository, dir: &Path) -> SnapshotId {
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
            let stats = crate::restorer::restore_nodes(
                repo,
                &nodes,
                &target,
                crate::restorer::Overwrite::Never,
                true,
            )
            .unwrap();
            assert_eq!(stats.files, 1, "{name}");
        }
    }
}
