//! The local index cache: chunk id → where the chunk is stored.
//!
//! The repository's `index/` files are authoritative; this redb database is a
//! per-client cache of their union, so lookups stay on disk and memory stays
//! flat however large the repository grows (restic and kopia load the whole
//! index into RAM). The cache remembers which index files it holds; when one
//! disappears (prune rewrote the index) it is rebuilt from scratch.

use crate::backend::{Backend, FileRef};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::repo::{Compression, FileKind, Id, IndexFile};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");
const FILES: TableDefinition<&str, u64> = TableDefinition::new("index_files");

/// Where one chunk is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub frame_offset: u64,
    pub frame_length: u32,
    pub raw_length: u32,
    pub compression: Compression,
    pub offset: u32,
    pub length: u32,
}

const LOCATION_LEN: usize = 32 + 8 + 4 + 4 + 1 + 4 + 4;

impl Location {
    /// Fixed little-endian layout (57 bytes); never native-width integers.
    pub fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut b = [0u8; LOCATION_LEN];
        b[..32].copy_from_slice(&self.pack.0);
        b[32..40].copy_from_slice(&self.frame_offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.frame_length.to_le_bytes());
        b[44..48].copy_from_slice(&self.raw_length.to_le_bytes());
        b[48] = match self.compression {
            Compression::None => 0,
            Compression::Zstd => 1,
        };
        b[49..53].copy_from_slice(&self.offset.to_le_bytes());
        b[53..57].copy_from_slice(&self.length.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Location> {
        if b.len() != LOCATION_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        Some(Location {
            pack: Id(b[..32].try_into().ok()?),
            frame_offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
            frame_length: u32_at(40),
            raw_length: u32_at(44),
            compression: match b[48] {
                0 => Compression::None,
                1 => Compression::Zstd,
                _ => return None,
            },
            offset: u32_at(49),
            length: u32_at(53),
        })
    }

    /// The frame this chunk is in, as a key for caches and grouping.
    pub fn frame_key(&self) -> (Id, u64) {
        (self.pack, self.frame_offset)
    }
}

/// All chunk locations of an index file, in file order.
pub fn locations(file: &IndexFile) -> impl Iterator<Item = (Id, Location)> + '_ {
    file.packs.iter().flat_map(|p| {
        p.frames.iter().flat_map(move |f| {
            f.chunks.iter().map(move |c| {
                (
                    c.id,
                    Location {
                        pack: p.id,
                        frame_offset: f.offset,
                        frame_length: f.length,
                        raw_length: f.raw_length,
                        compression: f.compression,
                        offset: c.offset,
                        length: c.length,
                    },
                )
            })
        })
    })
}

pub struct IndexCache {
    db: redb::Database,
    _temp: Option<tempfile::TempDir>,
    path: PathBuf,
}

fn db_err(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::failure(format!("index cache {}: {what}: {e}", path.display())).with_hint(
        "the cache is only a copy of the repository's index; delete it (or pass --no-cache) and retry",
    )
}

impl IndexCache {
    /// Open (or create) the cache at `dir/<repo id>/index.redb`; with no
    /// `dir`, or when the cache cannot be opened, use a throwaway one.
    pub fn open(dir: Option<&Path>, repo_id: Id) -> Result<IndexCache> {
        if let Some(dir) = dir {
            let d = dir.join(repo_id.to_hex());
            let path = d.join("index.redb");
            if std::fs::create_dir_all(&d).is_ok() {
                match Self::open_at(&path) {
                    Ok(db) => {
                        return Ok(IndexCache {
                            db,
                            _temp: None,
                            path,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(cache = %path.display(), error = %e, "index cache unusable, rebuilding it");
                        let _ = std::fs::remove_file(&path);
                        if let Ok(db) = Self::open_at(&path) {
                            return Ok(IndexCache {
                                db,
                                _temp: None,
                                path,
                            });
                        }
                    }
                }
            }
        }
        let temp =
            tempfile::tempdir().map_err(|e| Error::io("creating a temporary index cache", e))?;
        let path = temp.path().join("index.redb");
        let db = Self::open_at(&path).map_err(|e| db_err("creating", &path, e))?;
        Ok(IndexCache {
            db,
            _temp: Some(temp),
            path,
        })
    }

    fn open_at(path: &Path) -> std::result::Result<redb::Database, redb::DatabaseError> {
        redb::Builder::new()
            .set_cache_size(64 << 20)
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(path)
    }

    /// Bring the cache up to date with the repository's index files.
    /// Returns the number of index files read.
    pub fn sync(&self, backend: &dyn Backend, key: &MasterKey) -> Result<usize> {
        let in_repo: HashSet<String> = backend
            .list(FileKind::Index)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let cached = self.cached_files()?;
        let stale = cached.iter().any(|f| !in_repo.contains(f));
        let todo: Vec<&String> = in_repo
            .iter()
            .filter(|f| stale || !cached.contains(*f))
            .collect();
        if !stale && todo.is_empty() {
            return Ok(0);
        }
        let mut files = Vec::with_capacity(todo.len());
        for name in &todo {
            let f = FileRef::new(FileKind::Index, name.as_str());
            let bytes = backend.read(&f)?;
            let idx = if Id::of_bytes(&bytes).to_hex() != **name {
                Err(Error::integrity(format!(
                    "{f} is damaged: its content does not match its name"
                )))
            } else {
                key.unseal::<IndexFile>(&bytes, &f)
            };
            match idx {
                Ok(idx) => files.push((name.to_string(), idx)),
                // Left out of the cache; `check` reports it and what it affects.
                Err(e) => tracing::warn!("{e}; run `cairn check`"),
            }
        }
        let path = &self.path;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("writing", path, e))?;
        {
            if stale {
                txn.delete_table(CHUNKS)
                    .map_err(|e| db_err("clearing", path, e))?;
                txn.delete_table(FILES)
                    .map_err(|e| db_err("clearing", path, e))?;
            }
            for (name, idx) in &files {
                insert_index(&txn, path, name, idx)?;
            }
        }
        txn.commit().map_err(|e| db_err("committing", path, e))?;
        Ok(files.len())
    }

    /// Record an index file this process has just written.
    pub fn add(&self, name: &str, idx: &IndexFile) -> Result<()> {
        let path = &self.path;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("writing", path, e))?;
        insert_index(&txn, path, name, idx)?;
        txn.commit().map_err(|e| db_err("committing", path, e))
    }

    fn cached_files(&self) -> Result<HashSet<String>> {
        let path = &self.path;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| db_err("reading", path, e))?;
        let table = match txn.open_table(FILES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashSet::new()),
            Err(e) => return Err(db_err("reading", path, e)),
        };
        let mut out = HashSet::new();
        for row in table.iter().map_err(|e| db_err("reading", path, e))? {
            let (k, _) = row.map_err(|e| db_err("reading", path, e))?;
            out.insert(k.value().to_string());
        }
        Ok(out)
    }

    /// A consistent read view for many lookups.
    pub fn reader(&self) -> Result<IndexReader> {
        let path = &self.path;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| db_err("reading", path, e))?;
        let table = match txn.open_table(CHUNKS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_err("reading", path, e)),
        };
        Ok(IndexReader {
            table,
            path: self.path.clone(),
        })
    }
}

/// Add one index file's chunk locations, and its name, in a write transaction.
fn insert_index(
    txn: &redb::WriteTransaction,
    path: &Path,
    name: &str,
    idx: &IndexFile,
) -> Result<()> {
    let mut chunks = txn
        .open_table(CHUNKS)
        .map_err(|e| db_err("writing", path, e))?;
    let mut files = txn
        .open_table(FILES)
        .map_err(|e| db_err("writing", path, e))?;
    let mut rows: Vec<_> = locations(idx).collect();
    rows.sort_unstable_by_key(|(id, _)| id.0);
    for (id, loc) in rows {
        chunks
            .insert(&id.0[..], &loc.encode()[..])
            .map_err(|e| db_err("writing", path, e))?;
    }
    files
        .insert(name, idx.packs.len() as u64)
        .map_err(|e| db_err("writing", path, e))?;
    Ok(())
}

pub struct IndexReader {
    table: Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
    path: PathBuf,
}

impl IndexReader {
    pub fn get(&self, id: &Id) -> Result<Option<Location>> {
        let Some(t) = &self.table else {
            return Ok(None);
        };
        match t
            .get(&id.0[..])
            .map_err(|e| db_err("reading", &self.path, e))?
        {
            Some(v) => Ok(Location::decode(v.value())),
            None => Ok(None),
        }
    }

    pub fn len(&self) -> Result<u64> {
        match &self.table {
            Some(t) => t.len().map_err(|e| db_err("reading", &self.path, e)),
            None => Ok(0),
        }
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{ChunkEntry, FrameEntry, PackEntry};
    use proptest::prelude::*;

    fn loc_strategy() -> impl Strategy<Value = Location> {
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(p, fo, fl, rl, z, o, l)| Location {
                pack: Id(p),
                frame_offset: fo,
                frame_length: fl,
                raw_length: rl,
                compression: if z {
                    Compression::Zstd
                } else {
                    Compression::None
                },
                offset: o,
                length: l,
            })
    }

    proptest! {
        #[test]
        fn location_encoding_round_trips(loc in loc_strategy()) {
            prop_assert_eq!(Location::decode(&loc.encode()), Some(loc));
        }

        #[test]
        fn insert_then_lookup(ids in proptest::collection::hash_set(any::<[u8; 32]>(), 1..200), absent in any::<[u8; 32]>()) {
            let cache = IndexCache::open(None, Id::random()).unwrap();
            let chunks: Vec<ChunkEntry> = ids.iter().enumerate().map(|(i, id)| ChunkEntry { id: Id(*id), offset: i as u32 * 10, length: 10 }).collect();
            let idx = IndexFile { version: 1, packs: vec![PackEntry { id: Id([7; 32]), size: 1000, frames: vec![FrameEntry { offset: 0, length: 500, raw_length: chunks.len() as u32 * 10, compression: Compression::Zstd, chunks: chunks.clone() }] }] };
            cache.add("x", &idx).unwrap();
            let r = cache.reader().unwrap();
            for c in &chunks {
                let loc = r.get(&c.id).unwrap().unwrap();
                prop_assert_eq!(loc.offset, c.offset);
                prop_assert_eq!(loc.pack, Id([7; 32]));
            }
            if !ids.contains(&absent) {
                prop_assert!(r.get(&Id(absent)).unwrap().is_none());
            }
        }
    }
}
