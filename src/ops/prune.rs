//! Prune: remove data no snapshot needs (the caller holds an exclusive lock).
//!
//! Order (crash-safe at every step): write repacked packs, write the new
//! index, delete the old index files, then delete packs. A crash before the
//! new index leaves only extra packs; after it, only extra files.

use crate::archiver::{PackBuilder, Sealer};
use crate::backend::FileRef;
use crate::error::{Error, Kind, Result};
use crate::repo::{
    split_pack, ChunkEntry, ChunkId, Compression, FileKind, FrameEntry, IndexFile, IndexId,
    PackEntry, PackId, ProofId, Snapshot, SnapshotId,
};
use crate::repository::{NodeScan, Repository};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub packs_kept: usize,
    pub packs_removed: usize,
    pub packs_repacked: usize,
    pub unreferenced_packs_removed: usize,
    /// Restore-test proofs of snapshots that no longer exist.
    pub proofs_removed: usize,
    /// Archived WAL files older than every kept base backup's start
    /// (spec/postgres.md "WAL retention"), removed or, with --dry-run, to remove.
    pub wal_files_removed: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal_removed: Vec<crate::source::pg::ExpiredWal>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// With --dry-run: plaintext bytes that repacking would copy.
    #[serde(skip_serializing_if = "is_zero")]
    pub repack_raw_bytes: u64,
    pub dry_run: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Gathers loose chunks into new frames of the configured size.
pub(crate) struct Reframer<'a> {
    sealer: Sealer<'a>,
    data: Vec<u8>,
    chunks: Vec<ChunkEntry>,
    frame_size: usize,
}

impl<'a> Reframer<'a> {
    pub(crate) fn new(repo: &'a Repository) -> Result<Self> {
        Ok(Reframer {
            sealer: Sealer::new(repo)?,
            data: Vec::new(),
            chunks: Vec::new(),
            frame_size: repo.config.frame_size as usize,
        })
    }

    pub(crate) fn add(
        &mut self,
        builder: &mut PackBuilder,
        id: ChunkId,
        data: &[u8],
    ) -> Result<()> {
        self.chunks.push(ChunkEntry {
            id,
            offset: self.data.len() as u32,
            length: data.len() as u32,
            base: None,
        });
        self.data.extend_from_slice(data);
        if self.data.len() >= self.frame_size {
            self.flush(builder)?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self, builder: &mut PackBuilder) -> Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let (ct, compression) = self.sealer.seal(&self.data)?;
        builder.add_frame(
            &ct,
            self.data.len() as u32,
            compression,
            std::mem::take(&mut self.chunks),
        )?;
        self.data.clear();
        Ok(())
    }
}

/// Every chunk any snapshot needs (node lists and file contents), and
/// every chunk of archived WAL except the WAL files named in `expiring`.
pub fn used_chunks(repo: &Repository, expiring: &HashSet<&str>) -> Result<HashSet<ChunkId>> {
    let mut used = HashSet::new();
    // Each distinct node-list chunk is read and parsed once: the chunks its
    // whole lines use go into `used` then, and nothing needs keeping.
    let mut scan = NodeScan::<()>::new(repo);
    for (name, _) in repo.backend.list(FileKind::Snapshot)? {
        let Some(id) = SnapshotId::parse(&name) else {
            continue;
        };
        let snap: Snapshot = repo.read_sealed(id).map_err(|e| {
            e.with_hint(format!(
                "prune cannot tell what this snapshot uses; `cairn forget {}` removes its file (restore from another snapshot), then run prune again",
                id.short()
            ))
        })?;
        for src in &snap.sources {
            used.extend(src.tree.iter().copied());
            let visit = scan.visit(&src.tree, |nodes| {
                for n in nodes {
                    used.extend(n.content);
                }
                Ok(())
            });
            let visit = visit.map_err(|e| {
                e.context(format!("snapshot {}: node list of source {}", id.short(), src.name)).with_hint(format!(
                    "prune cannot tell what this snapshot uses; if an index file is damaged, `cairn repair index` first; otherwise `cairn check`, then `cairn forget {}` if it is damaged",
                    id.short()
                ))
            })?;
            for n in visit.straddling {
                used.extend(n.content);
            }
        }
    }
    // Archived WAL is data too.
    for w in crate::source::pg::wal_entries(repo)? {
        if !expiring.contains(w.name.as_str()) {
            used.extend(w.content);
        }
    }
    Ok(used)
}

/// `used` plus the bases of every delta frame that holds a used chunk: a
/// delta frame is decoded whole, so it needs all of its bases while any of
/// its chunks is used. Bases are never in delta frames, so one pass does.
fn with_bases<'a>(
    mut used: HashSet<ChunkId>,
    packs: impl Iterator<Item = &'a PackEntry>,
) -> HashSet<ChunkId> {
    let mut bases = Vec::new();
    for f in packs.flat_map(|p| p.frames.iter()) {
        if f.compression == Compression::ZstdDelta && any_used(f, &used) {
            bases.extend(f.bases());
        }
    }
    used.extend(bases);
    used
}

/// Whether any chunk of frame `f` is `used`.
fn any_used(f: &FrameEntry, used: &HashSet<ChunkId>) -> bool {
    f.chunks.iter().any(|c| used.contains(&c.id))
}

#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Remove,
    Keep,
    Repack,
}

/// What prune does with pack `p`, given the `used` chunks (bases included).
fn fate(p: &PackEntry, used: &HashSet<ChunkId>) -> Fate {
    let raw_total: u64 = p.frames.iter().map(|f| f.raw_length as u64).sum();
    let raw_used: u64 = p
        .frames
        .iter()
        .flat_map(|f| f.chunks.iter())
        .filter(|c| used.contains(&c.id))
        .map(|c| c.length as u64)
        .sum();
    // A delta frame none of whose chunks is used keeps no bases alive (see
    // with_bases), so it must not stay listed: its chunks would look
    // stored, and a later backup would deduplicate against chunks that no
    // longer decode. Repacking drops it.
    let dead_delta = p
        .frames
        .iter()
        .any(|f| f.compression == Compression::ZstdDelta && !any_used(f, used));
    if raw_used == 0 {
        Fate::Remove
    } else if raw_total - raw_used <= raw_total / 10 && !dead_delta {
        // At most 10% unused: rewriting it would cost more than it frees.
        Fate::Keep
    } else {
        Fate::Repack
    }
}

pub fn prune(repo: &Repository, dry_run: bool) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run,
        ..Default::default()
    };
    let expired = crate::source::pg::expired_wal(repo)?;
    let expiring: HashSet<&str> = expired.iter().map(|e| e.name.as_str()).collect();
    let used = used_chunks(repo, &expiring)?;
    report.wal_files_removed = expired.len();
    if dry_run {
        for e in &expired {
            tracing::info!(wal = %e.name, reason = %e.reason, "would remove archived WAL");
        }
    } else {
        // Before any pack goes: an entry never outlives its data.
        crate::source::pg::remove_expired_wal(repo, &expired)?;
    }
    report.wal_removed = expired;
    let mut packs: HashMap<PackId, PackEntry> = HashMap::new();
    let mut index_files = Vec::new();
    let mut damaged_index = Vec::new();
    for (name, _) in repo.backend.list(FileKind::Index)? {
        let Some(id) = IndexId::parse(&name) else {
            continue;
        };
        match repo.read_sealed::<IndexFile>(id) {
            Ok(idx) => {
                index_files.push(id);
                for p in idx.packs {
                    packs.insert(p.id, p);
                }
            }
            // What it listed is unknown, so every pack no readable index
            // lists is kept, and the file itself, for `repair index`.
            Err(e) if e.kind() == Kind::Integrity => {
                tracing::warn!("{e}; prune keeps it and every pack no other index file lists: run `cairn repair index`");
                damaged_index.push(id);
            }
            Err(e) => {
                return Err(e.with_hint("prune needs every index file; run `cairn check` first"))
            }
        }
    }
    let on_disk = super::packs_on_disk(repo)?;
    report.bytes_before = on_disk.values().sum();
    let used = with_bases(used, packs.values());

    let mut keep: Vec<PackEntry> = Vec::new();
    let mut repack: Vec<PackEntry> = Vec::new();
    let mut remove: Vec<PackId> = Vec::new();
    let mut ids: Vec<&PackId> = packs.keys().collect();
    ids.sort();
    for id in ids {
        let p = &packs[id];
        if !on_disk.contains_key(id) {
            tracing::warn!(pack = %id, "indexed pack is missing; dropping it from the index");
            continue;
        }
        match fate(p, &used) {
            Fate::Remove => {
                tracing::info!(pack = %id.short(), reason = "no snapshot uses it", "removing pack");
                remove.push(*id);
            }
            Fate::Keep => keep.push(p.clone()),
            Fate::Repack => repack.push(p.clone()),
        }
    }
    let unreferenced: Vec<PackId> = if damaged_index.is_empty() {
        on_disk
            .keys()
            .filter(|p| !packs.contains_key(*p))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    for p in &unreferenced {
        tracing::info!(pack = %p.short(), reason = "not in any index (left by an interrupted snapshot)", "removing pack");
    }
    report.packs_kept = keep.len();
    report.packs_removed = remove.len();
    report.packs_repacked = repack.len();
    report.unreferenced_packs_removed = unreferenced.len();
    let kept_bytes: u64 = keep.iter().map(|p| p.size).sum();
    if dry_run {
        let repack_used: u64 = repack
            .iter()
            .flat_map(|p| p.frames.iter())
            .flat_map(|f| f.chunks.iter())
            .filter(|c| used.contains(&c.id))
            .map(|c| c.length as u64)
            .sum();
        report.bytes_after = kept_bytes;
        report.repack_raw_bytes = repack_used;
        return Ok(report);
    }
    if remove.is_empty() && repack.is_empty() && unreferenced.is_empty() {
        repo.backend.remove_temporary()?;
        report.bytes_after = report.bytes_before;
        report.proofs_removed = remove_stale_proofs(repo, dry_run)?;
        return Ok(report);
    }

    // 1. Repack: frames still fully used are copied as they are (sealed);
    //    the used chunks of partly used frames are gathered into new frames.
    let mut builder = PackBuilder::new(repo);
    let mut reframer = Reframer::new(repo)?;
    let mut repacked: Vec<PackId> = Vec::new();
    for p in &repack {
        crate::interrupt::check()?;
        let f = FileRef::of(p.id);
        let bytes = repo.backend.read(&f)?;
        if PackId::of_bytes(&bytes) != p.id || split_pack(&bytes).is_none() {
            // Its damage is its own: kept as it is, and the rest is pruned.
            tracing::warn!("{f} is damaged; prune keeps it as it is: run `cairn check --read-data` to see what it affects");
            keep.push(p.clone());
            continue;
        }
        repacked.push(p.id);
        for fr in &p.frames {
            let n_used = fr.chunks.iter().filter(|c| used.contains(&c.id)).count();
            let ct = &bytes[fr.offset as usize..fr.offset as usize + fr.length as usize];
            if n_used == fr.chunks.len() {
                builder.add_frame(ct, fr.raw_length, fr.compression, fr.chunks.clone())?;
            } else if n_used > 0 {
                // Re-sealed without a prefix: the copy needs no base.
                let plain = repo.decode_listed(ct, fr, &f)?;
                for c in fr.chunks.iter().filter(|c| used.contains(&c.id)) {
                    let data = repo.listed_chunk(&plain, c).ok_or_else(|| {
                            Error::integrity(format!("{f}: chunk {} does not match its id; prune stopped before removing anything", c.id.short()))
                        })?;
                    reframer.add(&mut builder, c.id, data)?;
                }
            }
        }
        tracing::info!(pack = %p.id.short(), reason = "more than 10% unused: its used data was copied", "removing pack");
    }
    report.packs_kept = keep.len();
    report.packs_repacked = repacked.len();
    reframer.flush(&mut builder)?;
    builder.flush()?;
    let new_packs = builder.stored.packs;

    // 2. One new index for everything that stays; 3. drop the old ones.
    let mut all = keep;
    all.extend(new_packs);
    let bytes_after = all.iter().map(|p| p.size).sum();
    let (new_index, _) = repo.write_index(all)?;
    for old in index_files.iter().filter(|i| **i != new_index) {
        repo.backend.remove(&FileRef::of(*old))?;
    }
    // 4. Delete packs nothing refers to any more.
    for p in remove
        .iter()
        .chain(repacked.iter())
        .chain(unreferenced.iter())
    {
        repo.backend.remove(&FileRef::of(*p))?;
    }
    repo.backend.remove_temporary()?;
    repo.cache.sync(repo.backend.as_ref(), &repo.key)?;
    report.bytes_after = bytes_after;
    report.proofs_removed = remove_stale_proofs(repo, dry_run)?;
    Ok(report)
}

/// Remove the restore-test proofs of snapshots that are gone: they say
/// nothing any more. Returns how many there were.
fn remove_stale_proofs(repo: &Repository, dry_run: bool) -> Result<usize> {
    let mut removed = 0;
    let live: HashSet<SnapshotId> = repo.snapshots()?.into_iter().map(|(id, _)| id).collect();
    for (name, _) in repo.backend.list(FileKind::Proof)? {
        let Some(id) = ProofId::parse(&name) else {
            continue;
        };
        let Ok(p) = repo.read_sealed::<crate::repo::Proof>(id) else {
            continue;
        };
        if !live.contains(&p.snapshot) {
            if !dry_run {
                repo.backend
                    .remove(&FileRef::new(FileKind::Proof, name.as_str()))?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(compression: Compression, chunks: &[(u8, u32, Option<u8>)]) -> FrameEntry {
        FrameEntry {
            offset: 0,
            length: 1,
            raw_length: chunks.iter().map(|c| c.1).sum(),
            compression,
            chunks: chunks
                .iter()
                .map(|&(id, length, base)| ChunkEntry {
                    id: ChunkId([id; 32]),
                    offset: 0,
                    length,
                    base: base.map(|b| ChunkId([b; 32])),
                })
                .collect(),
        }
    }

    /// A pack that is almost all used is kept, unless it holds a delta
    /// frame with no used chunk: that frame's bases are not kept alive, so
    /// the pack is repacked (which drops the frame). The bases of a used
    /// delta frame count as used, all of them.
    #[test]
    fn a_dead_delta_frame_is_never_kept() {
        let live = frame(Compression::Zstd, &[(1, 1000, None)]);
        let dead_delta = frame(Compression::ZstdDelta, &[(2, 50, Some(9))]);
        let dead_plain = frame(Compression::Zstd, &[(3, 50, None)]);
        let pack = |frames: Vec<FrameEntry>| PackEntry {
            id: PackId([0; 32]),
            size: 1,
            frames,
        };
        let used: HashSet<ChunkId> = [ChunkId([1; 32])].into();
        assert_eq!(
            fate(&pack(vec![live.clone(), dead_plain]), &used),
            Fate::Keep
        );
        assert_eq!(
            fate(&pack(vec![live.clone(), dead_delta.clone()]), &used),
            Fate::Repack
        );
        assert_eq!(fate(&pack(vec![dead_delta.clone()]), &used), Fate::Remove);

        let used_delta = frame(
            Compression::ZstdDelta,
            &[(4, 10, Some(7)), (5, 10, Some(8))],
        );
        let p = pack(vec![used_delta, dead_delta]);
        let used = with_bases([ChunkId([4; 32])].into(), std::iter::once(&p));
        assert!(used.contains(&ChunkId([7; 32])) && used.contains(&ChunkId([8; 32])));
        assert!(
            !used.contains(&ChunkId([9; 32])),
            "a dead delta frame keeps no base"
        );
    }
}
