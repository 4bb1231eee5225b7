//! `cairn repair index`: index packs that no index file lists.
//!
//! Every pack carries its own (encrypted) header listing its frames and
//! chunks, so a lost index file can be rebuilt from the packs themselves.
//! A damaged index file is rebuilt the same way and then removed: left in
//! place it would keep `check` and `prune` failing for good.

use super::{open_repo, print_json};
use crate::backend::FileRef;
use crate::cli::GlobalArgs;
use crate::error::{Kind, Result};
use crate::lock::with_lock;
use crate::repo::{split_pack, FileKind, IndexFile, IndexId, PackEntry, PackHeader, PackId};
use std::collections::HashSet;

pub fn index(g: &GlobalArgs) -> Result<()> {
    let repo = open_repo(g)?;
    with_lock(&repo, true, "repair index", || {
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
        if g.json {
            print_json(&serde_json::json!({
                "indexed_packs": n,
                "damaged_packs": skipped,
                "removed_index_files": damaged_index,
            }))
        } else {
            println!(
                "indexed {n} pack(s); {} damaged pack(s) skipped; {} damaged index file(s) removed",
                skipped.len(),
                damaged_index.len()
            );
            Ok(())
        }
    })
}
