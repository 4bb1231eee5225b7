//! Salvaging damaged packs (`cairn repair packs`, and the daemon after its
//! data check finds damage; spec/repository.md §8, "Damaged packs").
//!
//! A pack with a rotten byte is read back frame by frame: every chunk that
//! still decodes and matches its id is copied into a new pack, the chunks
//! that do not are dropped from the index, and the damaged pack goes.
//! Dropping them is what lets a repository heal. While the index lists a
//! damaged chunk, every backup deduplicates against it, so each new
//! snapshot of an unchanged file is as damaged as the old ones. Once the
//! index no longer lists it, the next backup that meets the same data
//! stores it again, and since chunks are named by their content, every
//! older snapshot that uses it restores again too.
//!
//! The order is prune's (crash-safe at each step): new packs, one new index
//! of everything that stays, the old index files removed, then the damaged
//! packs. A crash leaves extra packs or extra files, never a listed chunk
//! without data.

use crate::archiver::PackBuilder;
use crate::backend::FileRef;
use crate::error::{Error, Kind, Result};
use crate::repo::{ChunkId, FileKind, IndexFile, IndexId, PackEntry, PackId};
use crate::repository::Repository;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What a salvage did.
#[derive(Debug, Default, Serialize)]
pub struct PackRepair {
    /// Packs read to look for damage.
    pub packs_read: usize,
    /// Damaged packs, each replaced by what could be saved of it.
    pub damaged_packs: Vec<PackId>,
    /// Chunks of the damaged packs copied into new packs.
    pub chunks_saved: usize,
    /// Chunks that could not be read back: no longer in the index, so a
    /// backup that meets the same data stores it again.
    pub chunks_dropped: Vec<ChunkId>,
    pub new_packs: usize,
    /// Archived WAL files whose content lost a dropped chunk: they cannot be
    /// pushed again, so recovery stops before them until a new physical
    /// snapshot starts a range past them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal_lost: Vec<String>,
    /// Backup history files (`….backup`) whose content is lost, removed:
    /// recovery never reads them (spec/postgres.md, "The WAL archive").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backup_history_removed: Vec<String>,
}

/// One pack's chunks: those that read back whole (with their data) and
/// those that do not. `None` when the pack is whole.
fn salvage_one(repo: &Repository, entry: &PackEntry) -> Result<Option<Salvaged>> {
    let f = FileRef::of(entry.id);
    let bytes = match repo.backend.read(&f) {
        Ok(b) => b,
        Err(e) if matches!(e.kind(), Kind::Unavailable | Kind::Interrupted) => return Err(e),
        // A pack that is gone or cannot be read saves nothing.
        Err(e) => {
            tracing::warn!("{f}: {e}");
            Vec::new()
        }
    };
    let whole_file = PackId::of_bytes(&bytes) == entry.id;
    let mut out = Salvaged::default();
    for fr in &entry.frames {
        let plain = match repo.decode_in_pack(&bytes, fr, &f) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pack = %entry.id.short(), frame = fr.offset, error = %e, "frame unreadable: its chunks are dropped");
                out.dropped.extend(fr.chunks.iter().map(|c| c.id));
                continue;
            }
        };
        for c in &fr.chunks {
            match repo.listed_chunk(&plain, c) {
                Some(d) => out.saved.push((c.id, d.to_vec())),
                None => out.dropped.push(c.id),
            }
        }
    }
    if whole_file && out.dropped.is_empty() {
        return Ok(None);
    }
    // Damage must be in the stored bytes, not in one reading of them: a
    // storage that answers differently each time (flaky disk, network) is
    // no reason to drop anything.
    if !bytes.is_empty() {
        let again = repo.backend.read(&f)?;
        if again != bytes {
            return Err(Error::failure(format!(
                "two reads of {f} gave different bytes: the storage is unreliable; nothing was changed"
            ))
            .with_hint("check the disk or the connection to the storage, then run `cairn check --read-data` again"));
        }
    }
    Ok(Some(out))
}

#[derive(Default)]
struct Salvaged {
    saved: Vec<(ChunkId, Vec<u8>)>,
    dropped: Vec<ChunkId>,
}

/// Find the damaged packs among `suspects` (every indexed pack when
/// `None`) and replace each by what can be saved of it; under an exclusive
/// lock. With `dry_run`, only report.
pub fn repair_packs(
    repo: &Repository,
    suspects: Option<&[PackId]>,
    dry_run: bool,
) -> Result<PackRepair> {
    crate::lock::with_lock(repo, true, "repair packs", || {
        let mut report = PackRepair::default();
        let mut packs: HashMap<PackId, PackEntry> = HashMap::new();
        let mut index_files = Vec::new();
        for (name, _) in repo.backend.list(FileKind::Index)? {
            let Some(id) = IndexId::parse(&name) else {
                continue;
            };
            let idx = repo.read_sealed::<IndexFile>(id).map_err(|e| {
                e.with_hint("every index file must be readable first: run `cairn repair index`")
            })?;
            index_files.push(id);
            for p in idx.packs {
                packs.insert(p.id, p);
            }
        }
        let mut ids: Vec<PackId> = match suspects {
            Some(s) => s
                .iter()
                .filter(|p| {
                    let listed = packs.contains_key(p);
                    if !listed {
                        // Named, yet nothing to repair: not silently.
                        tracing::warn!(pack = %p.short(), "no index file lists this pack (a leftover of an interrupted snapshot): nothing in it is used; `cairn prune` removes it");
                    }
                    listed
                })
                .copied()
                .collect(),
            None => packs.keys().copied().collect(),
        };
        ids.sort();
        ids.dedup();
        let mut salvaged: Vec<(PackId, Salvaged)> = Vec::new();
        let mut read: HashSet<PackId> = HashSet::new();
        // A delta frame is as good as its bases: when a base is dropped,
        // the packs holding frames built on it are read too, until no
        // dropped chunk is anyone's base.
        while !ids.is_empty() {
            for id in &ids {
                crate::interrupt::check()?;
                read.insert(*id);
                report.packs_read += 1;
                if let Some(s) = salvage_one(repo, &packs[id])? {
                    salvaged.push((*id, s));
                }
            }
            let dropped: HashSet<ChunkId> = salvaged
                .iter()
                .flat_map(|(_, s)| s.dropped.iter().copied())
                .collect();
            ids = packs
                .values()
                .filter(|p| !read.contains(&p.id))
                .filter(|p| {
                    p.frames
                        .iter()
                        .any(|f| f.bases().iter().any(|b| dropped.contains(b)))
                })
                .map(|p| p.id)
                .collect();
            ids.sort();
        }
        if salvaged.is_empty() {
            // Nothing damaged now; a backup history file whose content an
            // earlier repair dropped still goes (`check` names it).
            if suspects.is_none() {
                drop_lost_backup_history(repo, &mut report, dry_run)?;
            }
            return Ok(report);
        }
        for (id, s) in &salvaged {
            report.damaged_packs.push(*id);
            report.chunks_saved += s.saved.len();
            report.chunks_dropped.extend(s.dropped.iter().copied());
            tracing::warn!(
                pack = %id.short(),
                saved = s.saved.len(),
                dropped = s.dropped.len(),
                dry_run,
                "damaged pack: its readable chunks are copied, the rest dropped from the index"
            );
        }
        let dropped: HashSet<ChunkId> = report.chunks_dropped.iter().copied().collect();
        let wal_files = crate::source::pg::list_wal(repo)?;
        let wal = crate::source::pg::damaged_wal(repo, &wal_files, |c| dropped.contains(c))?;
        report.wal_lost = wal.needed;
        for name in &report.wal_lost {
            tracing::error!(wal = %name, "archived WAL file lost to the damage: point-in-time recovery stops before it; take a physical snapshot now");
        }
        if dry_run {
            report.backup_history_removed = wal.backup_history.into_keys().collect();
            return Ok(report);
        }
        // 1. What could be read, into new packs (plain frames: no bases).
        let mut builder = PackBuilder::new(repo);
        let mut reframer = super::prune::Reframer::new(repo)?;
        for (_, s) in &salvaged {
            for (id, data) in &s.saved {
                reframer.add(&mut builder, *id, data)?;
            }
        }
        reframer.flush(&mut builder)?;
        builder.flush()?;
        let new_packs = builder.stored.packs;
        report.new_packs = new_packs.len();
        // 2. One index of everything that stays; 3. the old ones go.
        let mut all: Vec<PackEntry> = packs
            .into_values()
            .filter(|p| !salvaged.iter().any(|(id, _)| *id == p.id))
            .collect();
        all.extend(new_packs);
        let (new_index, _) = repo.write_index(all)?;
        for old in index_files.iter().filter(|i| **i != new_index) {
            repo.backend.remove(&FileRef::of(*old))?;
        }
        // 4. The damaged packs.
        for (id, _) in &salvaged {
            tracing::info!(pack = %id.short(), reason = "damaged; its readable chunks were copied", "removing pack");
            repo.backend.remove(&FileRef::of(*id))?;
        }
        repo.backend.remove_temporary()?;
        repo.cache.sync(repo.backend.as_ref(), &repo.key)?;
        drop_lost_backup_history(repo, &mut report, dry_run)?;
        Ok(report)
    })
}

/// Remove each backup history file whose content is not all in the index
/// (with `dry_run`, only name it): nothing can read it back, and recovery
/// never needs it, so keeping it would only leave `check` failing for good.
fn drop_lost_backup_history(
    repo: &Repository,
    report: &mut PackRepair,
    dry_run: bool,
) -> Result<()> {
    let files = crate::source::pg::list_wal(repo)?;
    let index = repo.cache.reader()?;
    // An index that cannot be read names nothing lost.
    let failed = std::cell::Cell::new(None);
    let unindexed = |c: &ChunkId| match index.get(c) {
        Ok(found) => found.is_none(),
        Err(e) => {
            failed.set(Some(e));
            false
        }
    };
    let lost = crate::source::pg::damaged_wal(repo, &files, unindexed)?.backup_history;
    if let Some(e) = failed.take() {
        return Err(e);
    }
    for (name, files) in lost {
        tracing::warn!(wal = %name, dry_run, reason = "its content was lost to damage; recovery never reads a backup history file", "removing archived WAL");
        if !dry_run {
            for f in &files {
                repo.backend
                    .remove(&FileRef::new(FileKind::Wal, f.as_str()))?;
            }
        }
        report.backup_history_removed.push(name);
    }
    Ok(())
}
