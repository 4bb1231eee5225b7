//! Reading a stored file's content chunk by chunk: [`FileReader`], and the
//! [`Repository`] methods that open one.

use super::{chunk_slice, FrameDecoder, Repository};
use crate::error::{Error, Result};
use crate::index::Location;
use crate::repo::{ChunkId, Node};
use std::collections::HashMap;
use std::sync::Arc;

impl Repository {
    /// Write a file node's content to `out`, chunk by chunk (each verified).
    pub fn copy_file(&self, node: &Node, out: &mut dyn std::io::Write) -> Result<()> {
        self.open_file(node)?.copy_to(&node.path, u64::MAX, out)
    }

    /// [`copy_file`](Self::copy_file) leaving out the bytes `skip` of the
    /// file; chunks that lie wholly in that range are not read at all.
    pub fn copy_file_except(
        &self,
        node: &Node,
        skip: std::ops::Range<u64>,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let mut r = self.open_file(node)?;
        r.copy_to(&node.path, skip.start, out)?;
        r.skip(skip.end.saturating_sub(skip.start))
            .map_err(|e| e.context(format!("reading {}", node.path)))?;
        r.copy_to(&node.path, u64::MAX, out)
    }

    /// A reader over a file node's content (chunks read and verified as it goes).
    pub fn open_file<'a>(&'a self, node: &Node) -> Result<FileReader<'a>> {
        self.file_reader(node, Locations::Index(Box::new(self.cache.reader()?)))
    }

    /// [`open_file`](Self::open_file) taking chunk locations from `located`
    /// (every chunk of the file must be in it) rather than from the index: a
    /// restore that verified its packs first already holds them, and a lookup
    /// per chunk in the index cache costs a tenth of a large restore's CPU.
    pub fn open_file_located<'a>(
        &'a self,
        node: &Node,
        located: Arc<HashMap<ChunkId, Location>>,
    ) -> Result<FileReader<'a>> {
        self.file_reader(node, Locations::Known(located))
    }

    /// [`open_file`](Self::open_file) taking each chunk's location from
    /// `lookup`, as the reader reaches it: a backup that reads back what it
    /// is storing finds chunks in packs the index does not list yet.
    pub fn open_file_with<'a>(&'a self, node: &Node, lookup: Lookup<'a>) -> Result<FileReader<'a>> {
        self.file_reader(node, Locations::Lookup(lookup))
    }

    fn file_reader<'a>(&'a self, node: &Node, locations: Locations<'a>) -> Result<FileReader<'a>> {
        Ok(FileReader {
            repo: self,
            locations,
            check_ids: true,
            ids: node.content.clone(),
            next: 0,
            decoder: FrameDecoder::new()?,
            pos: 0,
            end: 0,
        })
    }

    /// Call `f` with each chunk of `ids` (its number and plaintext) in
    /// order, NOT checked against its id: only for guesses that are
    /// checked later (the bases of delta compression, see
    /// [`crate::archiver::Packer::set_base_stream`]).
    pub fn for_each_chunk_unchecked(
        &self,
        ids: &[ChunkId],
        mut f: impl FnMut(usize, &[u8]),
    ) -> Result<()> {
        let node = Node::stream("", 0, ids.to_vec());
        let mut r = self.open_file(&node)?;
        r.check_ids = false;
        let mut i = 0;
        while r.advance()? {
            f(i, r.current());
            i += 1;
        }
        Ok(())
    }
}

/// Where a chunk is, for [`Repository::open_file_with`].
pub type Lookup<'a> = &'a dyn Fn(&ChunkId) -> Result<Location>;

/// Sequential reader over a stored file; see [`Repository::open_file`].
///
/// It keeps the frame of its current chunk itself (a file's chunks mostly
/// follow each other in one frame), so readers interleaved with others — a
/// Kafka restore reads many partitions at once — never decode a frame twice
/// because the shared cache evicted it, and bytes are copied once, from the
/// frame to the caller.
pub struct FileReader<'a> {
    repo: &'a Repository,
    locations: Locations<'a>,
    /// Check every chunk against its id (see [`FileReader::digest_checked_by_caller`]).
    check_ids: bool,
    ids: Vec<ChunkId>,
    next: usize,
    decoder: FrameDecoder,
    /// The unread part of the current chunk within the decoder's frame.
    pos: usize,
    end: usize,
}

/// Where a [`FileReader`] finds its chunks.
enum Locations<'a> {
    Index(Box<crate::index::IndexReader>),
    /// Looked up already (by [`crate::restorer::verify_before_restore`]).
    Known(Arc<HashMap<ChunkId, Location>>),
    /// Looked up by the caller, chunk by chunk.
    Lookup(Lookup<'a>),
}

impl FileReader<'_> {
    /// Skip checking each chunk against its id, for a caller that compares
    /// a digest of the whole content with one taken when it was stored (the
    /// Kafka check after a backup): that comparison catches any byte the
    /// chunk check would, and hashing every byte twice halves its speed.
    /// The safety rests on that digest, which the caller must hold from
    /// before the data was stored (spec/repository.md §3, "Reading").
    pub fn digest_checked_by_caller(mut self) -> Self {
        self.check_ids = false;
        self
    }

    /// Read frames around the page cache: for packs just written around
    /// it and read once (the Kafka check after a backup).
    pub fn uncached(mut self) -> Self {
        self.decoder.uncached = true;
        self
    }

    /// Where chunk `id` is stored.
    fn locate(&self, id: &ChunkId) -> Result<Location> {
        match &self.locations {
            Locations::Known(m) => m.get(id).cloned().ok_or_else(|| {
                Error::integrity(format!(
                    "chunk {} is not among the chunks located before the restore",
                    id.short()
                ))
            }),
            Locations::Lookup(f) => f(id),
            Locations::Index(index) => index.get(id)?.ok_or_else(|| {
                Error::integrity(format!("chunk {} is not in the index", id.short()))
            }),
        }
    }

    /// Move `n` bytes on without returning them: chunks that lie wholly
    /// within them are neither read nor decoded. An error when the file
    /// ends first.
    pub fn skip(&mut self, mut n: u64) -> Result<()> {
        let here = (self.end - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
        self.pos += here;
        n -= here as u64;
        while n > 0 {
            let id = *self.ids.get(self.next).ok_or_else(|| {
                Error::integrity("the file ends before the bytes to skip".to_string())
            })?;
            let length = u64::from(self.locate(&id)?.length);
            if length <= n {
                self.next += 1;
                n -= length;
            } else {
                self.advance()?;
                // n < length: within the chunk just made current.
                self.pos += n as usize;
                n = 0;
            }
        }
        Ok(())
    }

    /// Write up to `limit` bytes (all that is left with `u64::MAX`) of file
    /// `path` to `out`, straight from the decoded frames.
    pub fn copy_to(
        &mut self,
        path: &str,
        mut limit: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        while limit > 0 {
            if self.pos == self.end
                && !self
                    .advance()
                    .map_err(|e| e.context(format!("reading {path}")))?
            {
                break;
            }
            let cur = self.current();
            let n = cur.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
            out.write_all(&cur[..n])
                .map_err(|e| Error::io(format!("writing {path}"), e))?;
            self.pos += n;
            limit -= n as u64;
        }
        Ok(())
    }

    /// Make the next chunk current; `false` at the end of the file.
    fn advance(&mut self) -> Result<bool> {
        let Some(id) = self.ids.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        let loc = self.locate(id)?;
        let frame = self.decoder.frame(self.repo, &loc)?;
        let data = chunk_slice(frame, &loc).ok_or_else(|| {
            Error::integrity(format!(
                "chunk {} lies outside its frame in pack {}",
                id.short(),
                loc.pack.short()
            ))
        })?;
        if self.check_ids && self.repo.key.chunk_id(data) != *id {
            return Err(Error::integrity(format!(
                "chunk {} in pack {} does not match its id",
                id.short(),
                loc.pack.short()
            )));
        }
        self.pos = loc.offset as usize;
        self.end = self.pos + data.len();
        Ok(true)
    }

    /// The unread part of the current chunk.
    fn current(&self) -> &[u8] {
        &self.decoder.frame[self.pos..self.end]
    }
}

impl std::io::Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let cur = std::io::BufRead::fill_buf(self)?;
        let n = out.len().min(cur.len());
        out[..n].copy_from_slice(&cur[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// The buffer is the current chunk, in its decoded frame.
impl std::io::BufRead for FileReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos == self.end {
            if !self.advance().map_err(std::io::Error::other)? {
                break;
            }
        }
        Ok(self.current())
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }
}
