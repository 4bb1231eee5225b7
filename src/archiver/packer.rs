//! The packer: the calling thread's side of the pipeline. It chunks
//! streams, skips chunks the repository (or this run) already has, picks
//! each new chunk's delta base and gathers new chunks into frames for the
//! sealers.

use super::delta::BaseStream;
use super::failure::Failure;
use super::sealer::FrameJob;
use super::stored_chunks::StoredChunks;
use crate::chunk::{self, ChunkError};
use crate::error::{Error, Result};
use crate::index::IndexReader;
use crate::interrupt;
use crate::progress::Progress;
use crate::repo::{ChunkEntry, ChunkId, SourceKind, SourceStatus};
use crate::repository::Repository;
use crossbeam_channel::Sender;
use std::collections::{HashMap, HashSet};
use std::io::Read;

/// Counts kept while chunks flow through the packer.
#[derive(Clone, Debug, Default)]
pub struct PackerStats {
    pub chunks_total: u64,
    pub chunks_new: u64,
    pub bytes_new_raw: u64,
}

/// Accepts chunks from the calling thread; see the module docs.
pub struct Packer<'a> {
    repo: &'a Repository,
    index: IndexReader,
    base_stream: Option<BaseStream>,
    /// Chunk sizes for the next streams, when not the repository's.
    chunking: Option<chunk::Chunking>,
    seen: HashSet<ChunkId>,
    frame_data: Vec<u8>,
    frame_chunks: Vec<ChunkEntry>,
    jobs: Option<Sender<FrameJob>>,
    /// Frames sent to the sealers so far.
    frames_sent: u64,
    /// Asks the pack writer to close its pack (see [`Packer::flush_packs`]).
    flushes: Sender<u64>,
    failed: &'a Failure,
    stored_chunks: &'a StoredChunks,
    read_buffer: Vec<u8>,
    seed: u64,
    pub stats: PackerStats,
}

impl<'a> Packer<'a> {
    /// A packer sending frames to `jobs` and flush requests to `flushes`
    /// (see [`with_packer`](super::with_packer), which runs the threads).
    pub(super) fn new(
        repo: &'a Repository,
        index: IndexReader,
        jobs: Sender<FrameJob>,
        flushes: Sender<u64>,
        failed: &'a Failure,
        stored_chunks: &'a StoredChunks,
    ) -> Self {
        Packer {
            repo,
            index,
            base_stream: None,
            chunking: None,
            seen: HashSet::new(),
            frame_data: Vec::new(),
            frame_chunks: Vec::new(),
            jobs: Some(jobs),
            frames_sent: 0,
            flushes,
            failed,
            stored_chunks,
            read_buffer: Vec::new(),
            seed: repo.key.chunker_seed(),
            stats: PackerStats::default(),
        }
    }

    /// The repository written to.
    pub fn repo(&self) -> &'a Repository {
        self.repo
    }

    /// Where this run's chunks are as their packs are written.
    pub fn stored_chunks(&self) -> &'a StoredChunks {
        self.stored_chunks
    }

    /// Whether the repository (or this run) holds chunk `id` already.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.seen.contains(id) || self.index.get(id)?.is_some())
    }

    /// Store a chunk unless the repository (or this run) already has it.
    pub fn add_chunk(&mut self, data: &[u8]) -> Result<ChunkId> {
        interrupt::check()?;
        let id = self.repo.key.chunk_id(data);
        self.stats.chunks_total += 1;
        if self.has_chunk(&id)? {
            if let Some(b) = self.base_stream.as_mut() {
                b.passed(&id);
            }
            return Ok(id);
        }
        self.seen.insert(id);
        self.stats.chunks_new += 1;
        self.stats.bytes_new_raw += data.len() as u64;
        let base = match self.base_stream.as_mut() {
            Some(b) => b.next_base(data, &self.index)?,
            None => None,
        };
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
    pub fn set_base_stream(&mut self, ids: Option<Vec<ChunkId>>) {
        self.base_stream = ids
            .filter(|i| !i.is_empty())
            .map(|ids| BaseStream::read(self.repo, ids));
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
    pub fn previous_version(
        &self,
        source_name: &str,
        kind: SourceKind,
    ) -> HashMap<String, Vec<ChunkId>> {
        let found = (|| -> Result<HashMap<String, Vec<ChunkId>>> {
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

    /// Chunk and store a whole stream; returns its chunk ids and length.
    /// Read errors are returned as `ChunkError::Read`, so callers can tell an
    /// unreadable source from a failing repository.
    pub fn add_stream<R: Read>(
        &mut self,
        source: R,
        progress: &Progress,
    ) -> std::result::Result<(Vec<ChunkId>, u64), ChunkError<Error>> {
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

    pub(super) fn flush_frame(&mut self) -> Result<()> {
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
        self.failed.is_set()
    }

    fn take_failure(&self) -> Error {
        self.failed
            .take()
            .unwrap_or_else(|| Error::failure("the pack writer stopped"))
    }
}
