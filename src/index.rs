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
use crate::repo::{
    ChunkId, Compression, FileKind, Id, IndexFile, IndexId, PackEntry, PackId, RepoId,
};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");
const FILES: TableDefinition<&str, u64> = TableDefinition::new("index_files");
/// `zstd-delta` frames only: pack id and frame offset (LE) → the frame's
/// bases, concatenated 32-byte ids in prefix order.
const FRAME_BASES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("frame_bases");

/// Where one chunk is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub frame_offset: u64,
    pub frame_length: u32,
    pub raw_length: u32,
    pub compression: Compression,
    pub offset: u32,
    pub length: u32,
    /// The chunk's base, in a `zstd-delta` frame.
    pub base: Option<ChunkId>,
}

const LOCATION_LEN: usize = 32 + 8 + 4 + 4 + 1 + 4 + 4;

impl Location {
    /// Fixed little-endian layout (57 bytes, 89 with a base); never
    /// native-width integers.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; LOCATION_LEN];
        b[..32].copy_from_slice(&self.pack.0);
        b[32..40].copy_from_slice(&self.frame_offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.frame_length.to_le_bytes());
        b[44..48].copy_from_slice(&self.raw_length.to_le_bytes());
        b[48] = match self.compression {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::ZstdDelta => 2,
        };
        b[49..53].copy_from_slice(&self.offset.to_le_bytes());
        b[53..57].copy_from_slice(&self.length.to_le_bytes());
        if let Some(base) = &self.base {
            b.extend_from_slice(&base.0);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Location> {
        let base = match b.len() {
            LOCATION_LEN => None,
            n if n == LOCATION_LEN + 32 => Some(ChunkId(b[LOCATION_LEN..].try_into().ok()?)),
            _ => return None,
        };
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        Some(Location {
            pack: PackId(b[..32].try_into().ok()?),
            frame_offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
            frame_length: u32_at(40),
            raw_length: u32_at(44),
            compression: match b[48] {
                0 => Compression::None,
                1 => Compression::Zstd,
                2 => Compression::ZstdDelta,
                _ => return None,
            },
            offset: u32_at(49),
            length: u32_at(53),
            base,
        })
    }

    /// The frame this chunk is in, as a key for caches and grouping.
    pub fn frame_key(&self) -> (PackId, u64) {
        (self.pack, self.frame_offset)
    }
}

/// All chunk locations of an index file, in file order.
pub fn locations(file: &IndexFile) -> impl Iterator<Item = (ChunkId, Location)> + '_ {
    file.packs.iter().flat_map(pack_locations)
}

/// The locations of the chunks of one pack, in pack order.
pub fn pack_locations(p: &PackEntry) -> impl Iterator<Item = (ChunkId, Location)> + '_ {
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
                    base: c.base,
                },
            )
        })
    })
}

/// redb's page cache for the index cache, by default: a backup's lookups
/// come in no particular order and touch pages all over the file.
pub const CACHE_MEMORY: usize = 64 << 20;

/// The page cache enough for lookups made in chunk-id order (a restore's,
/// `restorer::locate`): consecutive ones fall on the same few pages. With
/// [`CACHE_MEMORY`] a restore of 263,000 chunks kept every page it had read
/// (26 MB) to its end (issue 29).
pub const ORDERED_LOOKUP_MEMORY: usize = 8 << 20;

/// Where the index cache is and how much of it redb keeps in memory.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// The cache lives at `dir/<repo id>/index.redb`; a throwaway one
    /// without a `dir`.
    pub dir: Option<PathBuf>,
    /// redb's page cache, in bytes.
    pub memory: usize,
}

impl From<Option<PathBuf>> for CacheOptions {
    fn from(dir: Option<PathBuf>) -> CacheOptions {
        CacheOptions {
            dir,
            memory: CACHE_MEMORY,
        }
    }
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
    pub fn open(dir: Option<&Path>, repo_id: RepoId) -> Result<IndexCache> {
        Self::open_with(dir, repo_id, CACHE_MEMORY)
    }

    /// [`open`](Self::open) with `memory` bytes of page cache.
    pub fn open_with(dir: Option<&Path>, repo_id: RepoId, memory: usize) -> Result<IndexCache> {
        if let Some(dir) = dir {
            let d = dir.join(repo_id.to_hex());
            let path = d.join("index.redb");
            if std::fs::create_dir_all(&d).is_ok() {
                match Self::open_at(&path, memory) {
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
                        if let Ok(db) = Self::open_at(&path, memory) {
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
        let db = Self::open_at(&path, memory).map_err(|e| db_err("creating", &path, e))?;
        Ok(IndexCache {
            db,
            _temp: Some(temp),
            path,
        })
    }

    fn open_at(
        path: &Path,
        memory: usize,
    ) -> std::result::Result<redb::Database, redb::DatabaseError> {
        redb::Builder::new()
            .set_cache_size(memory)
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
                txn.delete_table(FRAME_BASES)
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
    pub fn add(&self, id: &IndexId, idx: &IndexFile) -> Result<()> {
        let path = &self.path;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("writing", path, e))?;
        insert_index(&txn, path, &id.to_hex(), idx)?;
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
        let bases = match txn.open_table(FRAME_BASES) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_err("reading", path, e)),
        };
        Ok(IndexReader {
            table,
            bases,
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
        // A chunk stored twice (concurrent writers, `repair index`) may have
        // a plain copy and a delta copy: keep the plain one, so that the
        // chunk can serve as a base (bases are never deltas).
        if loc.compression == Compression::ZstdDelta {
            let existing = chunks
                .get(&id.0[..])
                .map_err(|e| db_err("reading", path, e))?
                .and_then(|v| Location::decode(v.value()));
            if existing.is_some_and(|l| l.compression != Compression::ZstdDelta) {
                continue;
            }
        }
        chunks
            .insert(&id.0[..], &loc.encode()[..])
            .map_err(|e| db_err("writing", path, e))?;
    }
    let mut frame_bases = txn
        .open_table(FRAME_BASES)
        .map_err(|e| db_err("writing", path, e))?;
    for p in &idx.packs {
        for f in &p.frames {
            let bases = f.bases();
            if bases.is_empty() {
                continue;
            }
            let value: Vec<u8> = bases.iter().flat_map(|b| b.0).collect();
            frame_bases
                .insert(&frame_key_bytes(&p.id, f.offset)[..], &value[..])
                .map_err(|e| db_err("writing", path, e))?;
        }
    }
    files
        .insert(name, idx.packs.len() as u64)
        .map_err(|e| db_err("writing", path, e))?;
    Ok(())
}

fn frame_key_bytes(pack: &PackId, offset: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&pack.0);
    k[32..].copy_from_slice(&offset.to_le_bytes());
    k
}

pub struct IndexReader {
    table: Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
    bases: Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
    path: PathBuf,
}

impl IndexReader {
    /// The bases of the `zstd-delta` frame at `loc`, in prefix order
    /// (see [`crate::repo::FrameEntry::bases`]).
    pub fn frame_bases(&self, loc: &Location) -> Result<Vec<ChunkId>> {
        let missing = || {
            Error::integrity(format!(
                "the index cache has no bases for the delta frame at {} of pack {}",
                loc.frame_offset,
                loc.pack.short()
            ))
        };
        let t = self.bases.as_ref().ok_or_else(missing)?;
        let v = t
            .get(&frame_key_bytes(&loc.pack, loc.frame_offset)[..])
            .map_err(|e| db_err("reading", &self.path, e))?
            .ok_or_else(missing)?;
        Ok(v.value()
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok().map(ChunkId))
            .collect())
    }

    pub fn get(&self, id: &ChunkId) -> Result<Option<Location>> {
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
            0u8..3,
            any::<u32>(),
            any::<u32>(),
            any::<Option<[u8; 32]>>(),
        )
            .prop_map(|(p, fo, fl, rl, z, o, l, b)| Location {
                pack: PackId(p),
                frame_offset: fo,
                frame_length: fl,
                raw_length: rl,
                compression: match z {
                    0 => Compression::None,
                    1 => Compression::Zstd,
                    _ => Compression::ZstdDelta,
                },
                offset: o,
                length: l,
                base: b.map(ChunkId),
            })
    }

    /// A delta frame's bases come back in prefix order, and a chunk stored
    /// both plainly and in a delta frame is located at its plain copy,
    /// whichever index file the cache reads first.
    #[test]
    fn delta_frames_keep_their_bases_and_plain_copies_win() {
        let c = |id: u8, base: Option<u8>| ChunkEntry {
            id: ChunkId([id; 32]),
            offset: 0,
            length: 10,
            base: base.map(|b| ChunkId([b; 32])),
        };
        let frame = |compression, chunks| FrameEntry {
            offset: 0,
            length: 100,
            raw_length: 10,
            compression,
            chunks,
        };
        let delta = IndexFile {
            version: 1,
            packs: vec![PackEntry {
                id: PackId([1; 32]),
                size: 200,
                frames: vec![frame(
                    Compression::ZstdDelta,
                    vec![c(5, Some(8)), c(6, Some(7)), c(4, Some(8))],
                )],
            }],
        };
        let plain = IndexFile {
            version: 1,
            packs: vec![PackEntry {
                id: PackId([2; 32]),
                size: 200,
                frames: vec![frame(Compression::Zstd, vec![c(5, None)])],
            }],
        };
        for order in [[&delta, &plain], [&plain, &delta]] {
            let cache = IndexCache::open(None, RepoId::random()).unwrap();
            cache.add(&IndexId([0xa; 32]), order[0]).unwrap();
            cache.add(&IndexId([0xb; 32]), order[1]).unwrap();
            let r = cache.reader().unwrap();
            assert_eq!(
                r.get(&ChunkId([5; 32])).unwrap().unwrap().pack,
                PackId([2; 32])
            );
            let six = r.get(&ChunkId([6; 32])).unwrap().unwrap();
            assert_eq!(six.compression, Compression::ZstdDelta);
            assert_eq!(six.base, Some(ChunkId([7; 32])));
            assert_eq!(
                r.frame_bases(&six).unwrap(),
                vec![ChunkId([8; 32]), ChunkId([7; 32])]
            );
        }
    }

    proptest! {
        #[test]
        fn location_encoding_round_trips(loc in loc_strategy()) {
            prop_assert_eq!(Location::decode(&loc.encode()), Some(loc));
        }

        #[test]
        fn insert_then_lookup(ids in proptest::collection::hash_set(any::<[u8; 32]>(), 1..200), absent in any::<[u8; 32]>()) {
            let cache = IndexCache::open(None, RepoId::random()).unwrap();
            let chunks: Vec<ChunkEntry> = ids.iter().enumerate().map(|(i, id)| ChunkEntry { id: ChunkId(*id), offset: i as u32 * 10, length: 10, base: None }).collect();
            let idx = IndexFile { version: 1, packs: vec![PackEntry { id: PackId([7; 32]), size: 1000, frames: vec![FrameEntry { offset: 0, length: 500, raw_length: chunks.len() as u32 * 10, compression: Compression::Zstd, chunks: chunks.clone() }] }] };
            cache.add(&IndexId([0xc; 32]), &idx).unwrap();
            let r = cache.reader().unwrap();
            for c in &chunks {
                let loc = r.get(&c.id).unwrap().unwrap();
                prop_assert_eq!(loc.offset, c.offset);
                prop_assert_eq!(loc.pack, PackId([7; 32]));
            }
            if !ids.contains(&absent) {
                prop_assert!(r.get(&ChunkId(absent)).unwrap().is_none());
            }
        }
    }
}
