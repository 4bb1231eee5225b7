//! Rebuilding the index from the packs (`cairn repair index`).
//!
//! Every pack carries its own (encrypted) header listing its frames and
//! chunks, so a lost index file can be rebuilt from the packs themselves.
//! A damaged index file is rebuilt the same way and then removed: left in
//! place it would keep `check` and `prune` failing for good.

use crate::backend::FileRef;
use crate::error::{Kind, Result};
use crate::repo::{split_pack, FileKind, IndexFile, IndexId, PackEntry, PackHeader, PackId};
use crate::repository::Repository;
use serde::Serialize;
use std::collections::HashSet;

/// What a repair did.
#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub indexed_packs: usize,
    pub damaged_packs: Vec<PackId>,
    pub removed_index_files: Vec<String>,
}

/// Index every intact pack no readable index file lists, then remove the
/// damaged index files; under an exclusive lock.
pub fn repair_index(repo: &Repository) -> Result<RepairReport> {
    crate::lock::with_lock(repo, true, "repair index", || {
        let mut indexed = HashSet::new();
        let mut damaged_index = Vec::new();
        for (name, _) in repo.backend.list(FileKind::Index)? {
            let Some(id) = IndexId::parse(&name) else {
                continue;
            };
            match repo.read_sealed::<IndexFile>(id) {
                Ok(idx) => indexed.extend(idx.packs.iter().map(|p| p.id)),
                Err(e) if e.kind() == Kind::Integrity => {
                    tracing::warn!("{e}: its packs will be indexed again and it will be removed");
                    damaged_index.push(name);
                }
                Err(e) => tracing::warn!("{e}: its packs will be indexed again"),
            }
        }
        let mut packs = Vec::new();
        let mut skipped = Vec::new();
        for (name, size) in repo.backend.list(FileKind::Pack)? {
            let Some(id) = PackId::parse(&name) else {
                continue;
            };
            if indexed.contains(&id) {
                continue;
            }
            let f = FileRef::new(FileKind::Pack, name.clone());
            let bytes = repo.backend.read(&f)?;
            let header = if PackId::of_bytes(&bytes) != id {
                None
            } else {
                split_pack(&bytes).and_then(|(_, h)| repo.key.unseal::<PackHeader>(h, &f).ok())
            };
            match header {
                Some(h) => packs.push(PackEntry {
                    id,
                    size,
                    frames: h.frames,
                }),
                None => {
                    tracing::warn!("{f} is damaged; not indexed");
                    skipped.push(id);
                }
            }
        }
        let n = packs.len();
        if n > 0 {
            repo.write_index(packs)?;
        }
        // Every intact pack is indexed now: a damaged index file only keeps
        // check and prune failing, so it goes (after the new index is safe).
        for name in &damaged_index {
            tracing::info!(index = %name, "removing the damaged index file");
            repo.backend
                .remove(&FileRef::new(FileKind::Index, name.as_str()))?;
        }
        if n > 0 || !damaged_index.is_empty() {
            repo.cache.sync(repo.backend.as_ref(), &repo.key)?;
        }
        Ok(RepairReport {
            indexed_packs: n,
            damaged_packs: skipped,
            removed_index_files: damaged_index,
        })
    })
}
