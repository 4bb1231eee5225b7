//! The write pipeline: sources → chunks → frames → packs.
//!
//! The calling thread reads, chunks, hashes and deduplicates; worker threads
//! compress and encrypt frames (several new chunks together, so small chunks
//! still compress like large blocks); one writer thread assembles packs and
//! stores them. Nothing here writes an index or a snapshot: the caller does,
//! after every pack is stored, so a crash leaves only unreferenced packs.

use crate::backend::FileRef;
use crate::chunk::{self, ChunkError};
use crate::error::{Error, Result};
use crate::index::{IndexReader, Location};
use crate::interrupt;
use crate::progress::Progress;
use crate::repo::{
    prefix_bases, ChunkEntry, Compression, FileKind, FrameEntry, Id, Node, NodeKind, PackEntry,
    PackHeader, SourceRecord, SourceStatus, FORMAT_VERSION, PACK_MAGIC,
};
use crate::repository::Repository;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Counts kept while chunks flow through the packer.
#[derive(Clone, Debug, Default)]
pub struct PackerStats {
    pub chunks_total: u64,
    pub chunks_new: u64,
    pub bytes_new_raw: u64,
}

/// What the pipeline stored.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub packs: Vec<PackEntry>,
    /// Bytes of all pack files written.
    pub bytes: u64,
}

struct FrameJob {
    /// Frames are numbered in the order the packer sends them.
    seq: u64,
    data: Vec<u8>,
    chunks: Vec<ChunkEntry>,
}

struct SealedFrame {
    seq: u64,
    ciphertext: Vec<u8>,
    raw_length: u32,
    compression: Compression,
    chunks: Vec<ChunkEntry>,
}

/// The previous version of the stream being stored, whose chunks new
/// chunks are delta-compressed against (see [`Packer::set_base_stream`]).
struct BaseStream {
    ids: Vec<Id>,
    /// Where each chunk of `ids` is (its last place).
    pos: HashMap<Id, usize>,
    anchors: AnchorMap,
    /// The guess for a new chunk that shares no anchor: one past the base
    /// of the chunk before, or of the last chunk both streams share.
    cursor: usize,
}

const AMBIGUOUS: u32 = u32::MAX;

/// Gear hash table for [`anchors`]: fixed (splitmix64), since anchors are
/// only compared within one backup run and never stored.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Call `f` with the anchors of `data`: the gear hash (over about the last
/// 64 bytes) at the positions where its top 11 bits are zero, one every
/// ~2 KiB, decided by content like chunk boundaries. A changed chunk keeps
/// most anchors of the chunk it replaced, so anchors find that chunk even
/// where chunk boundaries moved, which counting chunks cannot: on the
/// pgbench day of spec/postgres.md, counting put the median delta frame
/// at 2.2 KB and left 144 of 827 frames without a usable base.
fn anchors(data: &[u8], mask: u64, mut f: impl FnMut(u64)) {
    let mut h: u64 = 0;
    for &byte in data {
        h = (h << 1).wrapping_add(GEAR[byte as usize]);
        if h & mask == 0 {
            f(h);
        }
    }
}

/// The top 11 bits: one anchor per ~2 KiB.
const ANCHOR_MASK: u64 = 0x7ff << 53;

/// The most anchors a base stream keeps (~40 MB of map): one per ~2 KiB
/// up to 4 GiB of dump, sparser beyond.
const ANCHOR_CAP: usize = 1 << 21;

/// Anchor → the chunk of the base stream it occurs in (AMBIGUOUS: in
/// several). Past `cap` entries only anchors with one more leading zero
/// bit are kept (about half), and so on, so memory stays bounded whatever
/// the size of the previous version.
struct AnchorMap {
    map: HashMap<u64, u32>,
    mask: u64,
    cap: usize,
}

impl AnchorMap {
    fn new(cap: usize) -> AnchorMap {
        AnchorMap {
            map: HashMap::new(),
            mask: ANCHOR_MASK,
            cap,
        }
    }

    /// Record the anchors of chunk number `chunk`.
    fn add(&mut self, chunk: u32, data: &[u8]) {
        let map = &mut self.map;
        anchors(data, self.mask, |a| {
            map.entry(a)
                .and_modify(|k| {
                    if *k != chunk {
                        *k = AMBIGUOUS
                    }
                })
                .or_insert(chunk);
        });
        while self.map.len() > self.cap {
            self.mask |= self.mask >> 1;
            let mask = self.mask;
            self.map.retain(|a, _| a & mask == 0);
        }
    }

    /// The chunk sharing the most anchors with `data`, if any.
    fn best(&self, data: &[u8]) -> Option<usize> {
        let mut votes: Vec<(u32, u32)> = Vec::new();
        anchors(data, self.mask, |a| {
            if let Some(&j) = self.map.get(&a) {
                if j != AMBIGUOUS {
                    match votes.iter_mut().find(|(k, _)| *k == j) {
                        Some(v) => v.1 += 1,
                        None => votes.push((j, 1)),
                    }
                }
            }
        });
        votes
            .iter()
            .max_by_key(|(j, n)| (*n, std::cmp::Reverse(*j)))
            .map(|(j, _)| *j as usize)
    }
}

/// Where the chunks this run stores are, published as each pack is written,
/// so a source can read back what it stored before the run's index is: the
/// Kafka check reads each partition back while the next one is consumed.
/// Only chunks stored while someone [`watch`](Self::watch)es are kept, and a
/// reader [`forget`](Self::forget)s them once read, so memory stays bounded.
#[derive(Default)]
pub struct StoredChunks {
    state: Mutex<WatchedChunks>,
    stored: Condvar,
    /// Frames in the packs written so far.
    frames: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct WatchedChunks {
    watching: bool,
    at: HashMap<Id, Location>,
}

impl StoredChunks {
    /// Start (or stop) keeping the locations of stored chunks.
    pub fn watch(&self, on: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.watching = on;
            if !on {
                s.at = HashMap::new();
            }
        }
    }

    /// A pack is written: its chunks can be read.
    fn add(&self, pack: &PackEntry) {
        if let Ok(mut s) = self.state.lock() {
            if s.watching {
                s.at.extend(crate::index::pack_locations(pack));
            }
            self.frames
                .fetch_add(pack.frames.len() as u64, Ordering::SeqCst);
            self.stored.notify_all();
        }
    }

    /// Whether the first `n` frames the packer sent are all in written
    /// packs (see [`Packer::flush_packs`]): a chunk not located by then
    /// never will be, as when it was stored before anyone watched, or was
    /// forgotten, and a later stream holds it again.
    pub fn all_written(&self, n: u64) -> bool {
        self.frames.load(Ordering::SeqCst) >= n
    }

    /// Drop the locations of `ids`.
    pub fn forget(&self, ids: &[Id]) {
        if let Ok(mut s) = self.state.lock() {
            for id in ids {
                s.at.remove(id);
            }
        }
    }

    /// Where chunk `id` is: in a pack this run has written, or else in
    /// `index`; waits while it is still on its way into a pack. `None`
    /// once `stop` is set while it is not written yet.
    pub fn locate(
        &self,
        id: &Id,
        index: &IndexReader,
        stop: &AtomicBool,
    ) -> Result<Option<Location>> {
        if let Some(l) = index.get(id)? {
            return Ok(Some(l));
        }
        let poisoned = || Error::failure("a pack writer panicked");
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(l) = state.at.get(id) {
                return Ok(Some(l.clone()));
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            // Setting `stop` does not signal: look again now and then.
            state = self
                .stored
                .wait_timeout(state, Duration::from_millis(20))
                .map_err(|_| poisoned())?
                .0;
        }
    }
}

/// Accepts chunks from the calling thread; see the module docs.
pub struct Packer<'a> {
    repo: &'a Repository,
    index: IndexReader,
    base_stream: Option<BaseStream>,
    /// Chunk sizes for the next streams, when not the repository's.
    chunking: Option<chunk::Chunking>,
    seen: HashSet<Id>,
    frame_data: Vec<u8>,
    frame_chunks: Vec<ChunkEntry>,
    jobs: Option<Sender<FrameJob>>,
    /// Frames sent to the sealers so far.
    frames_sent: u64,
    /// Asks the pack writer to close its pack (see [`Packer::flush_packs`]).
    flushes: Sender<u64>,
    failed: &'a Mutex<Option<Error>>,
    stored_chunks: &'a StoredChunks,
    read_buffer: Vec<u8>,
    seed: u64,
    pub stats: PackerStats,
}

impl<'a> Packer<'a> {
    /// The repository written to.
    pub fn repo(&self) -> &'a Repository {
        self.repo
    }

    /// Where this run's chunks are as their packs are written.
    pub fn stored_chunks(&self) -> &'a StoredChunks {
        self.stored_chunks
    }

    /// Store a chunk unless the repository (or this run) already has it.
    pub fn add_chunk(&mut self, data: &[u8]) -> Result<Id> {
        interrupt::check()?;
        let id = self.repo.key.chunk_id(data);
        self.stats.chunks_total += 1;
        if self.seen.contains(&id) || self.index.get(&id)?.is_some() {
            if let Some(b) = self.base_stream.as_mut() {
                if let Some(p) = b.pos.get(&id) {
                    b.cursor = p + 1;
                }
            }
            return Ok(id);
        }
        self.seen.insert(id);
        self.stats.chunks_new += 1;
        self.stats.bytes_new_raw += data.len() as u64;
        let base = self.next_base(data)?;
        self.frame_chunks.push(ChunkEntry {
            id,
            offset: self.frame_data.len() as u32,
            length: data.len() as u32,
            base,
        });
        self.frame_data.extend_from_slice(data);
        if self.frame_data.len() >= self.repo.config.frame_size as usize {
            self.flush_frame()?;
        }
        Ok(id)
    }

    /// Delta-compress the new chunks of the next streams against `ids`,
    /// the content of their previous version (the same database's dump in
    /// the previous snapshot), or stop doing so (`None`). The previous
    /// version is read once, here, for its anchors; each new chunk's base
    /// is then the old chunk it shares most anchors with. A wrong guess
    /// costs compression, never data.
    pub fn set_base_stream(&mut self, ids: Option<Vec<Id>>) {
        self.base_stream = ids.filter(|i| !i.is_empty()).map(|ids| {
            // Read the previous version once for its anchors. A chunk that
            // cannot be read stops the reading there, leaving out its
            // anchors and those of every chunk after it: the base of a new
            // chunk is a guess, and every base is checked against its id
            // when a frame is compressed against it.
            let mut anchor_map = AnchorMap::new(ANCHOR_CAP);
            let read = self
                .repo
                .for_each_chunk_unchecked(&ids, |j, data| anchor_map.add(j as u32, data));
            if let Err(e) = read {
                tracing::warn!(error = %e, "cannot read all of the previous version; delta compression will guess less well");
            }
            BaseStream {
                pos: ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
                ids,
                anchors: anchor_map,
                cursor: 0,
            }
        });
    }

    /// Cut the next streams as `chunking` says instead of with the
    /// repository's chunk sizes (`None`: the repository's again).
    pub fn set_chunking(&mut self, chunking: Option<chunk::Chunking>) {
        self.chunking = chunking;
    }

    /// The repository's chunk sizes.
    pub fn repo_chunker(&self) -> crate::repo::ChunkerParams {
        self.repo.config.chunker
    }

    /// How the next stream is cut.
    fn chunking(&self) -> chunk::Chunking {
        self.chunking
            .unwrap_or(chunk::Chunking::Cdc(self.repo.config.chunker))
    }

    /// The file contents of source `source_name` (of `kind`) in the newest
    /// snapshot that has it complete, by path: the previous version of the
    /// streams about to be stored, for [`set_base_stream`](Self::set_base_stream).
    /// Empty when there is none or it cannot be read (a warning says why:
    /// the backup then simply stores its new chunks without deltas).
    pub fn previous_version(&self, source_name: &str, kind: &str) -> HashMap<String, Vec<Id>> {
        let found = (|| -> Result<HashMap<String, Vec<Id>>> {
            let snaps = self.repo.snapshots()?;
            let Some(src) = snaps.iter().rev().find_map(|(_, s)| {
                s.sources.iter().find(|r| {
                    r.name == source_name && r.kind == kind && r.status == SourceStatus::Complete
                })
            }) else {
                return Ok(HashMap::new());
            };
            Ok(self
                .repo
                .read_tree(src)?
                .into_iter()
                .filter(|n| !n.content.is_empty())
                .map(|n| (n.path, n.content))
                .collect())
        })();
        found.unwrap_or_else(|e| {
            tracing::warn!(source = source_name, error = %e, "cannot read the previous snapshot of this source; storing without delta compression");
            HashMap::new()
        })
    }

    /// The base for the next new chunk `data`: the chunk of the base
    /// stream it shares the most anchors with (see [`anchors`]) or, with
    /// none in common, the one after the base chunk of the chunk before;
    /// when the chosen chunk is a delta itself, its own base (chains stay
    /// one deep).
    fn next_base(&mut self, data: &[u8]) -> Result<Option<Id>> {
        let Some(b) = self.base_stream.as_mut() else {
            return Ok(None);
        };
        let best = b.anchors.best(data);
        let chosen = match best {
            Some(j) => j,
            None if b.cursor < b.ids.len() => b.cursor,
            None => return Ok(None),
        };
        b.cursor = chosen + 1;
        let candidate = b.ids[chosen];
        let Some(loc) = self.index.get(&candidate)? else {
            return Ok(None);
        };
        if loc.compression != Compression::ZstdDelta {
            return Ok(Some(candidate));
        }
        let Some(base) = loc.base else {
            return Ok(None);
        };
        Ok(match self.index.get(&base)? {
            Some(l) if l.compression != Compression::ZstdDelta => Some(base),
            _ => None,
        })
    }

    /// Chunk and store a whole stream; returns its chunk ids and length.
    /// Read errors are returned as `ChunkError::Read`, so callers can tell an
    /// unreadable source from a failing repository.
    pub fn add_stream<R: Read>(
        &mut self,
        source: R,
        progress: &Progress,
    ) -> std::result::Result<(Vec<Id>, u64), ChunkError<Error>> {
        let mut ids = Vec::new();
        let (chunking, seed) = (self.chunking(), self.seed);
        let mut buf = std::mem::take(&mut self.read_buffer);
        let n = chunk::for_each_chunk_by(&mut buf, source, chunking, seed, |c| {
            ids.push(self.add_chunk(c)?);
            progress.inc(c.len() as u64);
            Ok(())
        });
        self.read_buffer = buf;
        Ok((ids, n?))
    }

    fn flush_frame(&mut self) -> Result<()> {
        if self.frame_chunks.is_empty() {
            return Ok(());
        }
        // Stop early when storing has failed (e.g. the object store is gone).
        if self.has_failed() {
            return Err(self.take_failure());
        }
        let cap = self.repo.config.frame_size as usize + self.chunking().max();
        let job = FrameJob {
            seq: self.frames_sent,
            data: std::mem::replace(&mut self.frame_data, Vec::with_capacity(cap)),
            chunks: std::mem::take(&mut self.frame_chunks),
        };
        let sent = self
            .jobs
            .as_ref()
            .map(|j| j.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(self.take_failure());
        }
        self.frames_sent += 1;
        Ok(())
    }

    /// Have everything added so far written without waiting for more data:
    /// the frame being filled goes to the sealers, and the pack writer
    /// closes its pack as soon as every frame sent until now is in it (frames
    /// sent after this call may be in it too). Returns at once with the
    /// number of frames sent, for [`StoredChunks::all_written`]. Each call
    /// can leave one pack smaller than the configured size.
    pub fn flush_packs(&mut self) -> Result<u64> {
        self.flush_frame()?;
        let n = self.frames_sent;
        self.flushes.send(n).map_err(|_| self.take_failure())?;
        Ok(n)
    }

    /// Whether storing has failed (the run then stops at the next frame).
    pub fn has_failed(&self) -> bool {
        self.failed.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    fn take_failure(&self) -> Error {
        self.failed
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or_else(|| Error::failure("the pack writer stopped"))
    }
}

fn record_failure(failed: &Mutex<Option<Error>>, e: Error) {
    if let Ok(mut f) = failed.lock() {
        if f.is_none() {
            *f = Some(e);
        }
    }
}

/// Run `f` with a packer; when it returns, flush and store every pack.
pub fn with_packer<T>(
    repo: &Repository,
    f: impl FnOnce(&mut Packer) -> Result<T>,
) -> Result<(T, Stored, PackerStats)> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    let (job_tx, job_rx) = bounded::<FrameJob>(workers * 2);
    let (frame_tx, frame_rx) = bounded::<SealedFrame>(workers * 2);
    let failed = Mutex::new(None);
    let abort = AtomicBool::new(false);
    let stored_chunks = StoredChunks::default();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (rx, tx) = (job_rx.clone(), frame_tx.clone());
            let failed = &failed;
            s.spawn(move || seal_frames(repo, rx, tx, failed));
        }
        drop(frame_tx);
        drop(job_rx);
        // Finished packs are stored by two uploader threads, so assembling the
        // next pack overlaps with writing (and fsyncing, or uploading) the last.
        let (upload_tx, upload_rx) = bounded::<Upload>(0);
        let mut uploaders = Vec::new();
        for _ in 0..2 {
            let (rx, failed, published) = (upload_rx.clone(), &failed, &stored_chunks);
            uploaders.push(s.spawn(move || {
                for (pack, bytes) in rx {
                    if let Err(e) = repo
                        .backend
                        .write(&FileRef::new(FileKind::Pack, pack.id.to_hex()), &bytes)
                    {
                        record_failure(failed, e);
                        break; // the writer's next send fails and the run stops
                    }
                    published.add(&pack);
                }
            }));
        }
        drop(upload_rx);
        let (flush_tx, flush_rx) = crossbeam_channel::unbounded::<u64>();
        let writer = s.spawn(|| write_packs(repo, frame_rx, flush_rx, upload_tx, &failed, &abort));
        let mut packer = Packer {
            repo,
            index: match repo.cache.reader() {
                Ok(r) => r,
                Err(e) => return Err(e),
            },
            base_stream: None,
            chunking: None,
            seen: HashSet::new(),
            frame_data: Vec::new(),
            frame_chunks: Vec::new(),
            jobs: Some(job_tx),
            frames_sent: 0,
            flushes: flush_tx,
            failed: &failed,
            stored_chunks: &stored_chunks,
            read_buffer: Vec::new(),
            seed: repo.key.chunker_seed(),
            stats: PackerStats::default(),
        };
        let out = f(&mut packer).and_then(|v| packer.flush_frame().map(|_| v));
        if out.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        packer.jobs = None;
        let stats = packer.stats.clone();
        drop(packer);
        let stored = writer
            .join()
            .map_err(|_| Error::failure("the pack writer panicked"))?;
        // Every pack must be stored before the caller writes an index.
        for u in uploaders {
            u.join()
                .map_err(|_| Error::failure("a pack uploader panicked"))?;
        }
        let value = out?;
        if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        Ok((value, stored, stats))
    })
}

fn seal_frames(
    repo: &Repository,
    jobs: Receiver<FrameJob>,
    out: Sender<SealedFrame>,
    failed: &Mutex<Option<Error>>,
) {
    let mut sealer = match Sealer::new(repo) {
        Ok(s) => s,
        Err(e) => return record_failure(failed, e),
    };
    let mut warned = false;
    for mut job in jobs {
        let bases = prefix_bases(&job.chunks);
        let sealed = if bases.is_empty() {
            sealer.seal(&job.data)
        } else {
            match repo.bases_plaintext(&bases) {
                Ok(prefix) => sealer.seal_delta(&job.data, &prefix),
                Err(e) => {
                    // The new data is stored whole; `check` reports the damage.
                    if !warned {
                        tracing::warn!(error = %e, "a chunk of the previous version cannot be read; storing new chunks without delta compression");
                        warned = true;
                    }
                    sealer.seal(&job.data)
                }
            }
        };
        let (ciphertext, compression) = match sealed {
            Ok(c) => c,
            Err(e) => return record_failure(failed, e),
        };
        if compression != Compression::ZstdDelta {
            for c in &mut job.chunks {
                c.base = None;
            }
        }
        tracing::trace!(
            raw = job.data.len(),
            chunks = job.chunks.len(),
            bases = bases.len(),
            sealed = ciphertext.len(),
            ?compression,
            "sealed frame"
        );
        let sealed = SealedFrame {
            seq: job.seq,
            ciphertext,
            raw_length: job.data.len() as u32,
            compression,
            chunks: job.chunks,
        };
        if out.send(sealed).is_err() {
            return;
        }
    }
}

/// The zstd level for frames whose predecessor compressed extremely well.
const FAST_LEVEL: i32 = 1;

/// What the last frame a [`Sealer`] compressed was like, which decides how
/// it treats the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Between 3:2 and 8:1: the next frame at the repository's level.
    Normal,
    /// More than 8:1: mostly long repeats, which every level finds; the next
    /// frame at [`FAST_LEVEL`].
    Redundant,
    /// Less than 3:2: the next frame is probed (see [`Sealer::probe_is_poor`])
    /// and stored uncompressed when the probe compresses as little.
    Poor,
}

/// A probe takes this many evenly spaced slices of a frame ...
const PROBE_SLICES: usize = 4;
/// ... of this many bytes each, and compresses them together at [`FAST_LEVEL`].
const PROBE_SLICE: usize = 8 << 10;

/// Compresses (when it pays: at least 1/32 smaller) and encrypts frames.
///
/// Frames are compressed at the repository's level, with two exceptions
/// that depend on how the last frame this sealer compressed did (see
/// spec/repository.md "Compression"):
///
/// - After one that compressed more than 8:1, the next is compressed at
///   level 1. Such data is mostly long repeats, which every level finds: on a
///   PostgreSQL base backup (800 MiB of pgbench tables, ~20:1) level 1 for
///   every frame stored 37.2 MB where level 3 stored 38.0 MB, with ~10% less
///   CPU.
/// - After one that compressed less than 3:2 (random text, base64, media that
///   is compressed already), the next is first **probed**: four 8 KiB slices
///   spread over it are compressed together at level 1. When they too come
///   out under 3:2, the frame is stored uncompressed. Such data has no
///   repeated strings; what zstd gains on it comes from entropy-coding the
///   literals alone, at about 1.8 ns a byte to write and 0.8 to read back,
///   every time it is read. On 1 KiB records of random characters from 64 (the
///   Kafka benchmark's) that is 1.34:1 for a quarter of a backup's CPU and half
///   of the check that follows it (`perf`). A probe costs a sixteenth of
///   compressing the frame, and a frame of other data whose slices compress
///   is compressed whole.
pub struct Sealer<'a> {
    repo: &'a Repository,
    normal: zstd::bulk::Compressor<'static>,
    /// At FAST_LEVEL, or the repository's level when that is lower.
    fast: zstd::bulk::Compressor<'static>,
    last: Class,
    /// Where a probe's slices are gathered.
    sample: Vec<u8>,
}

impl<'a> Sealer<'a> {
    pub fn new(repo: &'a Repository) -> Result<Self> {
        let make = |level| {
            zstd::bulk::Compressor::new(level).map_err(|e| Error::failure(format!("zstd: {e}")))
        };
        let level = repo.config.zstd_level;
        Ok(Sealer {
            repo,
            normal: make(level)?,
            fast: make(level.min(FAST_LEVEL))?,
            last: Class::Normal,
            sample: Vec::new(),
        })
    }

    /// The zstd level the next frame will be compressed at, if it is.
    #[cfg(test)]
    fn next_level(&self) -> i32 {
        let level = self.repo.config.zstd_level;
        if self.last == Class::Redundant {
            level.min(FAST_LEVEL)
        } else {
            level
        }
    }

    /// The ciphertext of `data` and how its plaintext was compressed.
    pub fn seal(&mut self, data: &[u8]) -> Result<(Vec<u8>, Compression)> {
        let compressed = self.compress(data);
        self.seal_compressed(data, compressed)
    }

    /// `data` compressed as the last frame's ratio calls for; `None` when a
    /// probe says it would compress less than 3:2.
    fn compress(&mut self, data: &[u8]) -> Option<std::io::Result<Vec<u8>>> {
        if self.last == Class::Poor && self.probe_is_poor(data) {
            return None;
        }
        let compressor = match self.last {
            Class::Redundant => &mut self.fast,
            Class::Normal | Class::Poor => &mut self.normal,
        };
        let compressed = compressor.compress(data);
        let size = compressed.as_ref().map_or(data.len(), Vec::len);
        self.last = classify(size, data.len());
        Some(compressed)
    }

    /// Whether evenly spaced slices of `data`, compressed together at the
    /// fast level, come out under 3:2. Frames too small to sample are not.
    fn probe_is_poor(&mut self, data: &[u8]) -> bool {
        if data.len() < 2 * PROBE_SLICES * PROBE_SLICE {
            return false;
        }
        let step = data.len() / PROBE_SLICES;
        self.sample.clear();
        for i in 0..PROBE_SLICES {
            self.sample
                .extend_from_slice(&data[i * step..i * step + PROBE_SLICE]);
        }
        match self.fast.compress(&self.sample) {
            Ok(c) => classify(c.len(), self.sample.len()) == Class::Poor,
            Err(_) => false,
        }
    }

    /// Seal `data` as `compressed` when that pays (at least 1/32 smaller),
    /// else as it is.
    fn seal_compressed(
        &self,
        data: &[u8],
        compressed: Option<std::io::Result<Vec<u8>>>,
    ) -> Result<(Vec<u8>, Compression)> {
        match compressed {
            Some(Ok(c)) if c.len() < data.len() - data.len() / 32 => {
                Ok((self.repo.key.encrypt(&c)?, Compression::Zstd))
            }
            _ => Ok((self.repo.key.encrypt(data)?, Compression::None)),
        }
    }

    /// [`seal`](Self::seal) for a frame whose chunks have bases: compressed
    /// against `prefix` (the bases' plaintexts) when that is at least 1/32
    /// smaller than the plain seal, else sealed plainly (the caller then
    /// drops the bases).
    pub fn seal_delta(&mut self, data: &[u8], prefix: &[u8]) -> Result<(Vec<u8>, Compression)> {
        let level = self.repo.config.zstd_level;
        let delta = crate::repository::compress_with_prefix(data, prefix, level)
            .map_err(|e| Error::failure(format!("zstd: {e}")))?;
        let compressed = self.compress(data);
        let plain = match &compressed {
            Some(Ok(c)) => c.len().min(data.len()),
            _ => data.len(),
        };
        if delta.len() < plain - plain / 32 {
            return Ok((self.repo.key.encrypt(&delta)?, Compression::ZstdDelta));
        }
        self.seal_compressed(data, compressed)
    }
}

/// How a frame of `raw` bytes that compressed to `size` did.
fn classify(size: usize, raw: usize) -> Class {
    if size.saturating_mul(3) > raw.saturating_mul(2) {
        Class::Poor
    } else if size.saturating_mul(8) < raw {
        Class::Redundant
    } else {
        Class::Normal
    }
}

/// Assemble sealed frames into packs as they come; on a flush request
/// (frame number N, from [`Packer::flush_packs`]), close the pack once
/// frames 0..N are all in, whatever order the sealers finish them in.
fn write_packs(
    repo: &Repository,
    frames: Receiver<SealedFrame>,
    requests: Receiver<u64>,
    uploads: Sender<Upload>,
    failed: &Mutex<Option<Error>>,
    abort: &AtomicBool,
) -> Stored {
    enum Event {
        Frame(SealedFrame),
        Flush(u64),
        NoMoreFlushes,
        Done,
    }
    let mut builder = PackBuilder::new(repo);
    builder.uploads = Some(uploads);
    let mut ok = true;
    let mut arrived = Arrived::default();
    let mut flush_at: Option<u64> = None;
    let mut requests = Some(requests);
    loop {
        let event = match &requests {
            Some(r) => crossbeam_channel::select! {
                recv(frames) -> f => f.map_or(Event::Done, Event::Frame),
                recv(r) -> n => n.map_or(Event::NoMoreFlushes, Event::Flush),
            },
            None => frames.recv().map_or(Event::Done, Event::Frame),
        };
        match event {
            Event::Done => break,
            Event::NoMoreFlushes => requests = None,
            Event::Flush(n) => flush_at = Some(n),
            Event::Frame(f) => {
                arrived.add(f.seq);
                // After a failure, drain so the sealers can finish.
                if ok {
                    let added =
                        builder.add_frame(&f.ciphertext, f.raw_length, f.compression, f.chunks);
                    if let Err(e) = added {
                        record_failure(failed, e);
                        ok = false;
                    }
                }
            }
        }
        if ok && flush_at.is_some_and(|n| arrived.all_below(n)) {
            flush_at = None;
            if let Err(e) = builder.flush() {
                record_failure(failed, e);
                ok = false;
            }
        }
    }
    if ok && !abort.load(Ordering::SeqCst) {
        if let Err(e) = builder.flush() {
            record_failure(failed, e);
        }
    }
    builder.stored
}

/// Which frame numbers the pack writer has received.
#[derive(Default)]
struct Arrived {
    /// Every frame below this has arrived.
    below: u64,
    /// Frames that arrived ahead of one still being sealed.
    ahead: std::collections::BTreeSet<u64>,
}

impl Arrived {
    fn add(&mut self, seq: u64) {
        self.ahead.insert(seq);
        while self.ahead.remove(&self.below) {
            self.below += 1;
        }
    }

    fn all_below(&self, n: u64) -> bool {
        self.below >= n
    }
}

/// A finished pack for an uploader: its entry and its bytes.
type Upload = (PackEntry, Vec<u8>);

/// Assembles sealed frames into packs of the configured size and stores them.
pub struct PackBuilder<'a> {
    repo: &'a Repository,
    buf: Vec<u8>,
    entries: Vec<FrameEntry>,
    /// When set, finished packs go to uploader threads instead of being
    /// written here (the caller joins them before writing any index).
    uploads: Option<Sender<Upload>>,
    pub stored: Stored,
}

impl<'a> PackBuilder<'a> {
    pub fn new(repo: &'a Repository) -> Self {
        PackBuilder {
            repo,
            buf: Vec::with_capacity(repo.config.pack_size as usize + (2 << 20)),
            entries: Vec::new(),
            uploads: None,
            stored: Stored::default(),
        }
    }

    pub fn repo(&self) -> &'a Repository {
        self.repo
    }

    /// Append one sealed frame; stores the pack when it is full.
    pub fn add_frame(
        &mut self,
        ciphertext: &[u8],
        raw_length: u32,
        compression: Compression,
        chunks: Vec<ChunkEntry>,
    ) -> Result<()> {
        self.entries.push(FrameEntry {
            offset: self.buf.len() as u64,
            length: ciphertext.len() as u32,
            raw_length,
            compression,
            chunks,
        });
        self.buf.extend_from_slice(ciphertext);
        if self.buf.len() >= self.repo.config.pack_size as usize {
            self.flush()?;
        }
        Ok(())
    }

    /// Store the pack being built, if it has any frame.
    pub fn flush(&mut self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let header = PackHeader {
            version: FORMAT_VERSION,
            frames: std::mem::take(&mut self.entries),
        };
        let sealed = self.repo.key.seal(&header)?;
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        let id = Id::of_bytes(&self.buf);
        let size = self.buf.len() as u64;
        match &self.uploads {
            Some(tx) => {
                let cap = self.buf.capacity();
                let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(cap));
                let entry = PackEntry {
                    id,
                    size,
                    frames: header.frames.clone(),
                };
                tx.send((entry, bytes))
                    .map_err(|_| Error::failure("the pack uploaders stopped"))?;
            }
            None => {
                self.repo
                    .backend
                    .write(&FileRef::new(FileKind::Pack, id.to_hex()), &self.buf)?;
                self.buf.clear();
            }
        }
        self.stored.bytes += size;
        self.stored.packs.push(PackEntry {
            id,
            size,
            frames: header.frames,
        });
        tracing::debug!(pack = %id.short(), bytes = size, "stored pack");
        Ok(())
    }
}

/// What archiving one source produced.
pub struct SourceOutcome {
    pub record: SourceRecord,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes_read: u64,
    /// Nodes the source has already read back from the repository and
    /// checked during the run (Kafka partitions), which the check before
    /// the snapshot is saved need not read again.
    pub verified: Vec<String>,
}

/// Store a node list; returns the chunk ids of the stored list.
pub fn store_nodes(packer: &mut Packer, nodes: &[Node]) -> Result<Vec<Id>> {
    // A snapshot that reports success must restore: a node list that could
    // not be restored safely is never stored.
    if let Some(p) = crate::repo::node_path::tree_problem(nodes) {
        return Err(Error::usage(format!("cannot store this source safely: {p}"))
            .with_hint("name files and streams with plain relative names (no `..`, `.`, empty or over-long parts); nothing was stored for it"));
    }
    let mut tree = Vec::new();
    for n in nodes {
        serde_json::to_writer(&mut tree, n).map_err(|e| Error::failure(e.to_string()))?;
        tree.push(b'\n');
    }
    packer
        .add_stream(&tree[..], &Progress::hidden())
        .map(|(ids, _)| ids)
        .map_err(|e| e.into_error("reading the node list"))
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

struct Entry {
    abs: PathBuf,
    rel: String,
    meta: std::fs::Metadata,
}

fn walk(path: &Path, out: &mut Vec<Entry>, errors: &mut Vec<String>) {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    let Some(rel) = path.to_str().map(|s| s.trim_start_matches('/').to_string()) else {
        errors.push(format!(
            "{}: file name is not UTF-8 (not supported yet)",
            path.display()
        ));
        return;
    };
    let is_dir = meta.is_dir();
    // `/` itself has no node: its contents land directly in the target.
    if !rel.is_empty() {
        out.push(Entry {
            abs: path.to_path_buf(),
            rel,
            meta,
        });
    }
    if !is_dir {
        return;
    }
    let mut children: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| match e {
                Ok(e) => Some(e.path()),
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    None
                }
            })
            .collect(),
        Err(e) => {
            errors.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    children.sort();
    for c in children {
        walk(&c, out, errors);
    }
}

/// The trees to walk for `paths` (absolute): each without `.` and `..`
/// components (a `..` is resolved on the file system, as reading it would,
/// so `plans/../data` is stored as where it really is), each once, and none
/// below another (`D` already holds `D/sub`), so no path is stored twice.
fn roots(paths: &[PathBuf]) -> Vec<PathBuf> {
    use std::path::Component;
    let mut out: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            let clean: PathBuf = p.components().filter(|c| *c != Component::CurDir).collect();
            if !clean.components().any(|c| c == Component::ParentDir) {
                return clean;
            }
            // Resolve the parent, keep the last component as it is (a
            // symlink is stored as a symlink, not as what it points to).
            let resolved = match (clean.parent(), clean.file_name()) {
                (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|d| d.join(name)),
                _ => std::fs::canonicalize(&clean),
            };
            resolved.unwrap_or(clean)
        })
        .collect();
    out.sort();
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::with_capacity(out.len());
    for p in out {
        // Sorted, so an ancestor comes before everything below it.
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    kept
}

/// Back up files, directories and symlinks below `paths` (absolute).
pub fn archive_files(
    packer: &mut Packer,
    name: &str,
    paths: &[PathBuf],
    quiet: bool,
) -> Result<SourceOutcome> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for p in roots(paths) {
        walk(&p, &mut entries, &mut errors);
    }
    let total: u64 = entries
        .iter()
        .filter(|e| e.meta.is_file())
        .map(|e| e.meta.len())
        .sum();
    let progress = Progress::bytes(total, quiet, "snapshot");
    let mut nodes = Vec::with_capacity(entries.len());
    let (mut files, mut dirs, mut symlinks, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for e in entries {
        let m = &e.meta;
        let mut node = Node {
            path: e.rel,
            kind: NodeKind::File,
            mode: m.mode() & 0o7777,
            mtime_ns: mtime_ns(m),
            uid: m.uid(),
            gid: m.gid(),
            size: 0,
            content: Vec::new(),
            target: None,
        };
        let ft = m.file_type();
        if ft.is_dir() {
            node.kind = NodeKind::Dir;
            dirs += 1;
        } else if ft.is_symlink() {
            match std::fs::read_link(&e.abs) {
                Ok(t) => match t.to_str() {
                    Some(t) => node.target = Some(t.to_string()),
                    None => {
                        errors.push(format!("{}: link target is not UTF-8", e.abs.display()));
                        continue;
                    }
                },
                Err(err) => {
                    errors.push(format!("{}: {err}", e.abs.display()));
                    continue;
                }
            }
            node.kind = NodeKind::Symlink;
            symlinks += 1;
        } else if ft.is_file() {
            let file = match std::fs::File::open(&e.abs) {
                Ok(f) => f,
                Err(err) => {
                    errors.push(format!("{}: {err}", e.abs.display()));
                    continue;
                }
            };
            match packer.add_stream(file, &progress) {
                Ok((ids, n)) => {
                    node.content = ids;
                    node.size = n;
                    bytes += n;
                    files += 1;
                }
                Err(ChunkError::Read(err)) => {
                    errors.push(format!("{}: {err}", e.abs.display()));
                    continue;
                }
                Err(ChunkError::Sink(err)) => {
                    progress.finish();
                    return Err(err);
                }
            }
        } else {
            tracing::warn!(path = %e.abs.display(), "skipping special file (device, socket or fifo)");
            continue;
        }
        nodes.push(node);
    }
    progress.finish();
    for e in &errors {
        tracing::warn!("unreadable: {e}");
    }
    let tree = store_nodes(packer, &nodes)?;
    Ok(SourceOutcome {
        record: SourceRecord {
            name: name.to_string(),
            kind: "files".into(),
            status: if errors.is_empty() {
                SourceStatus::Complete
            } else {
                SourceStatus::Incomplete
            },
            errors,
            tree,
            size: bytes,
            metadata: serde_json::Value::Null,
        },
        files,
        dirs,
        symlinks,
        bytes_read: bytes,
        verified: Vec::new(),
    })
}

/// What a child process wrote to its standard output, stored as chunks.
pub struct CommandOutput {
    pub content: Vec<Id>,
    pub size: u64,
    pub stderr: String,
}

/// Last lines of a program's error output, for messages.
pub fn tail_lines(text: &str, n: usize) -> String {
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(n)..].join(" | ")
}

/// Grow a pipe a tool writes into to 1 MiB (Linux's default limit for
/// unprivileged processes) from 64 KiB, so that the tool and cairn wake
/// each other a sixteenth as often; where that is refused, it stays as is.
fn grow_pipe(pipe: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ on a descriptor this process owns; a failure
    // leaves the pipe unchanged.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pipe;
}

/// Run `cmd`, chunk and store its standard output as it is produced. Fails
/// when it cannot start, when storing fails (the child is killed), or when it
/// exits non-zero — then with the last lines of its standard error.
pub fn store_command_output(
    packer: &mut Packer,
    cmd: &mut std::process::Command,
    what: &str,
    progress: &Progress,
) -> Result<CommandOutput> {
    store_command_output_observed(packer, cmd, what, progress, |_| {})
}

/// [`store_command_output`], handing each piece of the output to `observe`
/// as it goes into the repository.
pub fn store_command_output_observed(
    packer: &mut Packer,
    cmd: &mut std::process::Command,
    what: &str,
    progress: &Progress,
    observe: impl FnMut(&[u8]),
) -> Result<CommandOutput> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::failure("no stdout"))?;
    grow_pipe(&stdout);
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::failure("no stderr"))?;
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let stored = packer.add_stream(
        Observed {
            inner: stdout,
            observe,
        },
        progress,
    );
    if stored.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("waiting for {what}"), e))?;
    let stderr = err_reader.join().unwrap_or_default();
    let (content, size) =
        stored.map_err(|e| e.into_error(format!("reading the output of {what}")))?;
    if !status.success() {
        return Err(Error::failure(format!(
            "{what} failed ({status}): {}",
            tail_lines(&stderr, 5)
        )));
    }
    Ok(CommandOutput {
        content,
        size,
        stderr,
    })
}

/// A reader that shows what it reads to a closure.
pub(crate) struct Observed<R, F> {
    pub(crate) inner: R,
    pub(crate) observe: F,
}

impl<R: Read, F: FnMut(&[u8])> Read for Observed<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.observe)(&buf[..n]);
        Ok(n)
    }
}

/// A source of one stored stream, as file `file_name`.
pub fn stream_source(
    packer: &mut Packer,
    source_name: &str,
    kind: &str,
    file_name: &str,
    content: Vec<Id>,
    size: u64,
) -> Result<SourceOutcome> {
    let node = Node {
        path: file_name.to_string(),
        kind: NodeKind::File,
        mode: 0o644,
        mtime_ns: jiff::Timestamp::now().as_nanosecond() as i64,
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        size,
        content,
        target: None,
    };
    source_from_nodes(
        packer,
        source_name,
        kind,
        vec![node],
        serde_json::Value::Null,
    )
}

/// A complete source made of stored streams (`nodes`), with its metadata.
pub fn source_from_nodes(
    packer: &mut Packer,
    source_name: &str,
    kind: &str,
    nodes: Vec<Node>,
    metadata: serde_json::Value,
) -> Result<SourceOutcome> {
    let size: u64 = nodes.iter().map(|n| n.size).sum();
    let tree = store_nodes(packer, &nodes)?;
    Ok(SourceOutcome {
        record: SourceRecord {
            name: source_name.to_string(),
            kind: kind.to_string(),
            status: SourceStatus::Complete,
            errors: Vec::new(),
            tree,
            size,
            metadata,
        },
        files: nodes.len() as u64,
        dirs: 0,
        symlinks: 0,
        bytes_read: size,
        verified: Vec::new(),
    })
}

/// Back up one stream (standard input) as file `name`.
pub fn archive_stream<R: Read>(
    packer: &mut Packer,
    source_name: &str,
    kind: &str,
    file_name: &str,
    reader: R,
    quiet: bool,
) -> Result<SourceOutcome> {
    let progress = Progress::bytes(0, quiet, "snapshot");
    let (ids, n) = packer
        .add_stream(reader, &progress)
        .map_err(|e| e.into_error(format!("reading {kind} for {file_name:?}")))?;
    progress.finish();
    stream_source(packer, source_name, kind, file_name, ids, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Issue 24: `..`, repeated and nested roots would store paths that
    /// cannot be restored.
    #[test]
    fn roots_are_resolved_once_and_never_nested() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(d.join("plans")).unwrap();
        std::fs::create_dir_all(d.join("data/sub")).unwrap();
        let p = |s: &str| d.join(s);
        assert_eq!(roots(&[p("plans/../data")]), vec![p("data")]);
        assert_eq!(
            roots(&[p("data"), p("data/sub"), p("data")]),
            vec![p("data")]
        );
        assert_eq!(
            roots(&[p("data/./sub"), p("plans")]),
            vec![p("data/sub"), p("plans")]
        );
        assert_eq!(roots(&[p("data/sub/..")]), vec![p("data")]);
        assert_eq!(
            roots(&[PathBuf::from("/"), p("data")]),
            vec![PathBuf::from("/")]
        );
    }

    /// A tool's output pipe holds 1 MiB after growing (Linux).
    #[cfg(target_os = "linux")]
    #[test]
    fn tool_pipes_grow_to_a_mebibyte() {
        use std::os::fd::AsRawFd;
        let (reader, writer) = std::io::pipe().unwrap();
        // SAFETY: F_GETPIPE_SZ on a pipe this test owns.
        let size =
            |fd: &std::io::PipeReader| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(size(&reader), 64 << 10, "a new pipe is 64 KiB");
        grow_pipe(&writer);
        assert_eq!(size(&reader), 1 << 20);
    }

    fn repo(dir: &Path) -> Repository {
        crate::repository::test_repo(dir)
    }

    fn data(seed: u64, len: usize, text: bool) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if text {
                    b"abcdefgh \n"[(x % 10) as usize].wrapping_add((i % 3) as u8)
                } else {
                    x as u8
                }
            })
            .collect()
    }

    /// Frames after one that compressed poorly are probed, and stored as
    /// they are when the probe compresses as poorly; frames after one that
    /// compressed extremely well are compressed at the fast level; all
    /// decode to their input.
    #[test]
    fn sealer_stores_poor_data_raw_after_a_probe_and_speeds_up_on_redundant_data() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        assert_eq!(repo.config.zstd_level, 3);
        // 64 symbols at random: 6 bits of 8, about 1.33:1 at any level.
        let random_text: Vec<u8> = data(7, 512 * 1024, false)
            .into_iter()
            .map(|b| b'0' + (b & 0x3f))
            .collect();
        let text = data(9, 512 * 1024, true);
        // A quarter of random bytes, then table rows: the probe's first
        // slice sees the one, the others the rows.
        let mut mixed = data(13, 128 * 1024, false);
        mixed.extend_from_slice(&rows((0..5000).map(|i| (i, i as i64 * 7)))[..384 * 1024]);
        let mut sealer = Sealer::new(&repo).unwrap();
        let mut seen = Vec::new();
        for frame in [
            &text,
            &random_text,
            &random_text,
            &random_text,
            &text,
            &random_text,
            &mixed,
        ] {
            let level = sealer.next_level();
            let (ct, compression) = sealer.seal(frame).unwrap();
            seen.push((level, compression));
            let f = FileRef::new(FileKind::Pack, "test".to_string());
            let plain = crate::repository::decode_frame_bytes(
                &repo.key,
                &ct,
                compression,
                frame.len() as u32,
                &[],
                &f,
                0,
            )
            .unwrap();
            assert!(plain == *frame);
        }
        use Compression::{None as Raw, Zstd};
        assert_eq!(
            seen,
            vec![
                (3, Zstd), // text
                (3, Zstd), // the first random text is compressed (1.33:1) ...
                (3, Raw),  // ... the next ones are probed and stored as they are
                (3, Raw),
                (3, Zstd), // text is probed, found to compress, and compressed
                (3, Zstd),
                (3, Zstd), // poor data, then rows in the same frame: compressed
            ]
        );
        // Rows that are mostly blanks (far over 8:1) send the next frame to
        // the fast level, and text after it back to the repository's.
        let blank_rows = rows((0..5000).map(|i| (i, 0)));
        let (ct, _) = sealer.seal(&blank_rows).unwrap();
        assert!(
            ct.len() * 8 < blank_rows.len(),
            "{} of {}",
            ct.len(),
            blank_rows.len()
        );
        assert_eq!(sealer.next_level(), FAST_LEVEL);
        sealer.seal(&text).unwrap();
        assert_eq!(sealer.next_level(), 3);
        // Random bytes: compressing does not pay, so they are stored as they
        // are, and so is the next such frame, without compressing it.
        for _ in 0..2 {
            let (_, compression) = sealer.seal(&data(11, 512 * 1024, false)).unwrap();
            assert_eq!(compression, Raw);
        }
        assert_eq!(sealer.last, Class::Poor);
    }

    fn rows(rows: impl Iterator<Item = (u64, i64)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (aid, balance) in rows {
            out.extend_from_slice(
                format!("{aid}\t{}\t{balance}\t{:84}\n", aid / 100_000 + 1, "").as_bytes(),
            );
        }
        out
    }

    /// Store `data` with `base` as its previous version; returns the ids
    /// and what was stored (also added to the index cache).
    fn store_with_base(repo: &Repository, data: &[u8], base: Option<Vec<Id>>) -> (Vec<Id>, Stored) {
        let (ids, stored, _) = with_packer(repo, |p| {
            p.set_base_stream(base);
            match p.add_stream(data, &Progress::hidden()) {
                Ok((ids, _)) => Ok(ids),
                Err(ChunkError::Sink(e)) => Err(e),
                Err(ChunkError::Read(e)) => Err(Error::io("read", e)),
            }
        })
        .unwrap();
        let idx = crate::repo::IndexFile {
            version: FORMAT_VERSION,
            packs: stored.packs.clone(),
        };
        repo.cache.add(&Id::random().to_hex(), &idx).unwrap();
        (ids, stored)
    }

    /// A day of scattered updates (each updated row leaves its place and
    /// goes to the end, as in a full heap): the changed chunks are stored as
    /// deltas against the chunks they replace, a fraction of their plain
    /// size; a third version's deltas are against the first version's
    /// chunks (chains stay one deep); every version reads back exactly.
    #[test]
    fn changed_chunks_are_stored_as_deltas_one_deep() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let n = 40_000u64;
        let v1 = rows((1..=n).map(|a| (a, 0)));
        let moved = |step: u64, day: i64| {
            let mut r: Vec<(u64, i64)> =
                (1..=n).filter(|a| a % step != 0).map(|a| (a, 0)).collect();
            r.extend((1..=n).filter(|a| a % step == 0).map(|a| (a, day * 7)));
            rows(r.into_iter())
        };
        let v2 = moved(97, 1);
        let v3 = moved(89, 2);
        let (ids1, s1) = store_with_base(&repo, &v1, None);
        assert!(s1
            .packs
            .iter()
            .flat_map(|p| &p.frames)
            .all(|f| f.compression != Compression::ZstdDelta));
        // The same day stored without a base, in a repository of its own.
        let plain_dir = tempfile::tempdir().unwrap();
        let plain_repo = super::tests::repo(plain_dir.path());
        store_with_base(&plain_repo, &v1, None);
        let (_, plain2) = store_with_base(&plain_repo, &v2, None);

        let (ids2, s2) = store_with_base(&repo, &v2, Some(ids1.clone()));
        let frames2: Vec<&FrameEntry> = s2.packs.iter().flat_map(|p| &p.frames).collect();
        assert!(frames2
            .iter()
            .any(|f| f.compression == Compression::ZstdDelta));
        let frame_bytes = |s: &Stored| -> u64 {
            s.packs
                .iter()
                .flat_map(|p| &p.frames)
                .map(|f| u64::from(f.length))
                .sum()
        };
        assert!(
            frame_bytes(&s2) * 4 < frame_bytes(&plain2),
            "frames with deltas {} bytes, without {} (packs {} and {}; {} chunks)",
            frame_bytes(&s2),
            frame_bytes(&plain2),
            s2.bytes,
            plain2.bytes,
            ids1.len()
        );
        assert_eq!(repo.read_stream(&ids2).unwrap(), v2);

        let (ids3, s3) = store_with_base(&repo, &v3, Some(ids2.clone()));
        let bases3: Vec<Id> = s3
            .packs
            .iter()
            .flat_map(|p| &p.frames)
            .flat_map(|f| f.bases())
            .collect();
        assert!(!bases3.is_empty());
        let first: HashSet<Id> = ids1.iter().copied().collect();
        assert!(
            bases3.iter().any(|b| first.contains(b)),
            "day 3 is based on day 1 where day 2 is a delta"
        );
        let index = repo.cache.reader().unwrap();
        for b in &bases3 {
            let loc = index.get(b).unwrap().expect("a base is indexed");
            assert_ne!(
                loc.compression,
                Compression::ZstdDelta,
                "a base is itself a delta"
            );
        }
        assert_eq!(repo.read_stream(&ids3).unwrap(), v3);
        assert_eq!(repo.read_stream(&ids1).unwrap(), v1);
    }

    /// The anchor map stays under its cap by keeping sparser anchors, and
    /// still finds each chunk from its own content.
    #[test]
    fn anchor_maps_stay_bounded_and_find_their_chunks() {
        let chunks: Vec<Vec<u8>> = (0..16)
            .map(|i| data(201 + 2 * i, 64 << 10, false))
            .collect();
        let mut full = AnchorMap::new(usize::MAX);
        let mut capped = AnchorMap::new(100);
        for (j, c) in chunks.iter().enumerate() {
            full.add(j as u32, c);
            capped.add(j as u32, c);
        }
        assert!(full.map.len() > 400, "{} anchors in 1 MiB", full.map.len());
        assert!(capped.map.len() <= 100);
        assert!(capped.mask.count_ones() > ANCHOR_MASK.count_ones());
        for (j, c) in chunks.iter().enumerate() {
            assert_eq!(full.best(c), Some(j));
            // Sparser anchors may miss a chunk, never name another one.
            assert!(capped.best(c).is_none_or(|b| b == j));
        }
        assert_eq!(full.best(&data(999, 64 << 10, false)), None);
    }

    /// A base stream that shares nothing with the data gives no delta frames.
    #[test]
    fn an_unrelated_base_stream_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let other = data(5, 1 << 20, false);
        let (base, _) = store_with_base(&repo, &other, None);
        let text = data(6, 1 << 20, true);
        let (ids, stored) = store_with_base(&repo, &text, Some(base));
        for f in stored.packs.iter().flat_map(|p| &p.frames) {
            assert_ne!(f.compression, Compression::ZstdDelta);
            assert!(f.chunks.iter().all(|c| c.base.is_none()));
        }
        assert_eq!(repo.read_stream(&ids).unwrap(), text);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// chunk → frame → pack → index → read gives back every stream exactly,
        /// and storing the same streams again adds nothing.
        #[test]
        fn chunk_pack_read_round_trip(streams in proptest::collection::vec((any::<u64>(), 0usize..1_500_000, any::<bool>()), 1..4)) {
            let dir = tempfile::tempdir().unwrap();
            let repo = repo(dir.path());
            let inputs: Vec<Vec<u8>> = streams.iter().map(|(s, l, t)| data(*s, *l, *t)).collect();
            let (ids, stored, stats) = with_packer(&repo, |p| {
                inputs.iter().map(|d| match p.add_stream(&d[..], &Progress::hidden()) {
                    Ok((ids, _)) => Ok(ids),
                    Err(ChunkError::Sink(e)) => Err(e),
                    Err(ChunkError::Read(e)) => Err(Error::io("read", e)),
                }).collect::<Result<Vec<_>>>()
            }).unwrap();
            prop_assert_eq!(stats.bytes_new_raw <= inputs.iter().map(|d| d.len() as u64).sum::<u64>(), true);
            let idx = crate::repo::IndexFile { version: FORMAT_VERSION, packs: stored.packs };
            repo.cache.add("test", &idx).unwrap();
            for (d, ids) in inputs.iter().zip(&ids) {
                prop_assert_eq!(&repo.read_stream(ids).unwrap(), d);
            }
            // Everything is known now: a second pass stores nothing.
            let (_, again, stats2) = with_packer(&repo, |p| {
                for d in &inputs {
                    let _ = p.add_stream(&d[..], &Progress::hidden());
                }
                Ok(())
            }).unwrap();
            prop_assert_eq!(stats2.chunks_new, 0);
            prop_assert!(again.packs.is_empty());
        }
    }
}
