//! Frames: reading, decrypting and decompressing the frames packs are made
//! of (a delta frame with its bases), a few recent ones kept, and chunks cut
//! from them, each checked against its id.

use super::Repository;
use crate::backend::FileRef;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::repo::{ChunkId, Compression, FrameEntry, PackId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

impl Repository {
    /// Read, decrypt and decompress one frame (cached: neighbouring chunks share frames).
    pub fn read_frame(&self, loc: &Location) -> Result<Arc<Vec<u8>>> {
        if let Some(f) = self
            .frames
            .lock()
            .ok()
            .and_then(|mut c| c.get(loc.frame_key()))
        {
            return Ok(f);
        }
        let frame = Arc::new(self.decode_frame(loc)?);
        if let Ok(mut c) = self.frames.lock() {
            c.put(loc.frame_key(), frame.clone());
        }
        Ok(frame)
    }

    /// A frame's ciphertext into `buf`: from the spool, else the backend
    /// (around the page cache when `uncached`, see
    /// [`crate::backend::Backend::read_range_uncached_into`]).
    fn frame_ciphertext(&self, loc: &Location, buf: &mut Vec<u8>, uncached: bool) -> Result<()> {
        self.read_pack_range(&loc.pack, loc.frame_offset, loc.frame_length, buf, uncached)
    }

    /// Every distinct frame of `locs`, decoded. Frames that lie close
    /// together in one pack are fetched with one ranged read, and the reads
    /// run concurrently: on object storage each read is a round trip, and a
    /// node list of 13,000 files spans a score of frames, which read one by
    /// one cost 17 round trips (0.8 s against s3s-fs) before a restore could
    /// start.
    fn decode_frames(&self, locs: &[Location]) -> Result<HashMap<FrameKey, Vec<u8>>> {
        /// Bytes between two frames read rather than spent on another request.
        const MAX_GAP: u64 = 1 << 20;
        /// The longest single read.
        const MAX_SPAN: u64 = 32 << 20;
        let mut frames: Vec<&Location> = locs.iter().collect();
        frames.sort_by_key(|l| l.frame_key());
        frames.dedup_by_key(|l| l.frame_key());
        let mut spans: Vec<Vec<&Location>> = Vec::new();
        for l in frames {
            if let Some(span) = spans.last_mut() {
                let (first, prev) = (span[0], span[span.len() - 1]);
                let end = prev.frame_offset + u64::from(prev.frame_length);
                if prev.pack == l.pack
                    && l.frame_offset >= end
                    && l.frame_offset - end <= MAX_GAP
                    && l.frame_offset + u64::from(l.frame_length) - first.frame_offset <= MAX_SPAN
                {
                    span.push(l);
                    continue;
                }
            }
            spans.push(vec![l]);
        }
        let readers = if self.backend.is_local() { 1 } else { 8 };
        let next = AtomicUsize::new(0);
        let decoded = Mutex::new(HashMap::new());
        let read_spans = || -> Result<()> {
            let mut buf = Vec::new();
            while let Some(span) = spans.get(next.fetch_add(1, Ordering::Relaxed)) {
                let (first, last) = (span[0], span[span.len() - 1]);
                let start = first.frame_offset;
                let length = last.frame_offset + u64::from(last.frame_length) - start;
                self.read_pack_range(&first.pack, start, length as u32, &mut buf, false)?;
                let file = FileRef::of(first.pack);
                for l in span {
                    let at = (l.frame_offset - start) as usize;
                    let ct = buf.get(at..at + l.frame_length as usize).ok_or_else(|| {
                        Error::integrity(format!(
                            "{} lies beyond the end of the file",
                            frame_name(&file, l.frame_offset)
                        ))
                    })?;
                    let frame = self.decode_located(ct, l)?;
                    decoded
                        .lock()
                        .map_err(|_| Error::failure("frame map lock poisoned"))?
                        .insert(l.frame_key(), frame);
                }
            }
            Ok(())
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..readers.min(spans.len()))
                .map(|_| s.spawn(read_spans))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| Error::failure("a frame reader panicked"))?
            })
        })?;
        decoded
            .into_inner()
            .map_err(|_| Error::failure("frame map lock poisoned"))
    }

    /// Decode a frame without caching.
    pub fn decode_frame(&self, loc: &Location) -> Result<Vec<u8>> {
        let mut ct = Vec::new();
        self.frame_ciphertext(loc, &mut ct, false)?;
        self.decode_located(&ct, loc)
    }

    /// Decrypt and decompress `ct`, the ciphertext of the frame at `loc`
    /// (a delta frame with its bases).
    pub fn decode_located(&self, ct: &[u8], loc: &Location) -> Result<Vec<u8>> {
        let mut d = FrameDecoder::new()?;
        d.decode_at(self, ct, loc)?;
        Ok(d.frame)
    }

    /// Decrypt and decompress `ct`, the ciphertext of frame `fr` of pack
    /// `file` as a pack header or index file lists it (a delta frame with
    /// its bases, from the index).
    pub fn decode_listed(&self, ct: &[u8], fr: &FrameEntry, file: &FileRef) -> Result<Vec<u8>> {
        let prefix = self.bases_plaintext(&fr.bases()).map_err(|e| {
            e.context(format!(
                "the bases of the delta frame at {} of {file}",
                fr.offset
            ))
        })?;
        decode_frame_bytes(
            &self.key,
            ct,
            fr.compression,
            fr.raw_length,
            &prefix,
            file,
            fr.offset,
        )
    }

    /// Decode frame `fr` out of `pack`, the whole bytes of pack `file`
    /// (check and repair read packs whole); a frame that lies beyond the
    /// end of the file is damage.
    pub fn decode_in_pack(&self, pack: &[u8], fr: &FrameEntry, file: &FileRef) -> Result<Vec<u8>> {
        let end = fr.offset as usize + fr.length as usize;
        match pack.get(fr.offset as usize..end) {
            Some(ct) => self.decode_listed(ct, fr, file),
            None => Err(Error::integrity(format!(
                "frame at {} of {file} lies beyond the end of the file",
                fr.offset
            ))),
        }
    }

    /// Chunk `c` of `plain`, its decoded frame, when it is there and
    /// matches its id.
    pub fn listed_chunk<'a>(
        &self,
        plain: &'a [u8],
        c: &crate::repo::ChunkEntry,
    ) -> Option<&'a [u8]> {
        let start = c.offset as usize;
        plain
            .get(start..start.checked_add(c.length as usize)?)
            .filter(|d| self.key.chunk_id(d) == c.id)
    }

    /// What the frame at `loc` was compressed against: nothing, or for a
    /// `zstd-delta` frame its bases' plaintexts (see [`Self::bases_plaintext`]).
    fn delta_prefix(&self, loc: &Location) -> Result<Vec<u8>> {
        if loc.compression != Compression::ZstdDelta {
            return Ok(Vec::new());
        }
        let reader = self.cache.reader()?;
        let bases = reader.frame_bases(loc)?;
        self.bases_in(&reader, &bases).map_err(|e| {
            e.context(format!(
                "the bases of the delta frame at {} of pack {}",
                loc.frame_offset,
                loc.pack.short()
            ))
        })
    }

    /// The plaintexts of `bases`, concatenated, each checked against its id.
    /// A base must lie in a frame that is not itself a delta (chains are one
    /// deep), so this never recurses further.
    pub fn bases_plaintext(&self, bases: &[ChunkId]) -> Result<Vec<u8>> {
        if bases.is_empty() {
            return Ok(Vec::new());
        }
        self.bases_in(&self.cache.reader()?, bases)
    }

    /// [`bases_plaintext`](Self::bases_plaintext), located with `reader`.
    fn bases_in(&self, reader: &crate::index::IndexReader, bases: &[ChunkId]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for b in bases {
            let loc = reader.get(b)?.ok_or_else(|| {
                Error::integrity(format!("base chunk {} is not in the index", b.short()))
                    .with_hint("run `cairn check --read-data` to see what is damaged")
            })?;
            if loc.compression == Compression::ZstdDelta {
                return Err(Error::integrity(format!(
                    "base chunk {} is itself stored as a delta",
                    b.short()
                )));
            }
            let frame = self.read_frame(&loc)?;
            out.extend_from_slice(self.checked_chunk(b, &loc, &frame)?);
        }
        Ok(out)
    }

    /// A chunk's plaintext, checked against its id.
    pub fn read_chunk(&self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        let frame = self.read_frame(loc)?;
        Ok(self.checked_chunk(id, loc, &frame)?.to_vec())
    }

    /// Chunk `id` cut from its decoded `frame`, checked against its id.
    fn checked_chunk<'f>(&self, id: &ChunkId, loc: &Location, frame: &'f [u8]) -> Result<&'f [u8]> {
        let data = chunk_slice(frame, loc).ok_or_else(|| {
            Error::integrity(format!(
                "chunk {} lies outside its frame in pack {}",
                id.short(),
                loc.pack.short()
            ))
        })?;
        if self.key.chunk_id(data) != *id {
            return Err(Error::integrity(format!(
                "chunk {} in pack {} does not match its id",
                id.short(),
                loc.pack.short()
            )));
        }
        Ok(data)
    }

    /// Concatenate the chunks of a stream (a node list: held in memory
    /// whole), each checked against its id.
    pub fn read_stream(&self, ids: &[ChunkId]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.for_each_listed_chunk(ids, |_, data| out.extend_from_slice(data))?;
        Ok(out)
    }

    /// Call `f` with each chunk of `ids` in order, each checked against its
    /// id; their frames are fetched together (see `decode_frames`).
    pub fn for_each_listed_chunk(
        &self,
        ids: &[ChunkId],
        mut f: impl FnMut(&ChunkId, &[u8]),
    ) -> Result<()> {
        let reader = self.cache.reader()?;
        let mut locs = Vec::with_capacity(ids.len());
        for id in ids {
            locs.push(reader.get(id)?.ok_or_else(|| {
                Error::integrity(format!("chunk {} is not in the index", id.short()))
                    .with_hint("run `cairn check` to see what is damaged")
            })?);
        }
        // Frames are decoded a window at a time: a stream of any length
        // (a node list of millions of files) holds at most ~16 MiB of
        // decoded frames, not all of them (issue 29: at 200,000 files the
        // parent's node list was 51 MB of a snapshot's peak).
        const WINDOW: u64 = 16 << 20;
        let mut start = 0;
        while start < locs.len() {
            let (mut end, mut bytes) = (start, 0u64);
            let mut frames_in = std::collections::HashSet::new();
            while end < locs.len() && (end == start || bytes < WINDOW) {
                if frames_in.insert(locs[end].frame_key()) {
                    bytes += u64::from(locs[end].raw_length);
                }
                end += 1;
            }
            let frames = self.decode_frames(&locs[start..end])?;
            for (id, loc) in ids[start..end].iter().zip(&locs[start..end]) {
                // decode_frames decoded every frame of the window or failed.
                let frame = frames.get(&loc.frame_key()).map_or(&[][..], Vec::as_slice);
                f(id, self.checked_chunk(id, loc, frame)?);
            }
            start = end;
        }
        Ok(())
    }
}

pub fn chunk_slice<'a>(frame: &'a [u8], loc: &Location) -> Option<&'a [u8]> {
    let start = loc.offset as usize;
    frame.get(start..start.checked_add(loc.length as usize)?)
}

/// Decrypt and decompress a frame's ciphertext; `prefix` is what a
/// `zstd-delta` frame was compressed against ([`Repository::delta_prefix`]).
pub fn decode_frame_bytes(
    key: &MasterKey,
    ct: &[u8],
    compression: Compression,
    raw_length: u32,
    prefix: &[u8],
    file: &FileRef,
    offset: u64,
) -> Result<Vec<u8>> {
    let mut d = FrameDecoder::new()?;
    d.decode(
        key,
        ct,
        compression,
        raw_length,
        prefix,
        &frame_name(file, offset),
    )?;
    Ok(d.frame)
}

fn frame_name(file: &FileRef, offset: u64) -> String {
    format!("frame at {offset} of {file}")
}

/// Decodes frames one after another into buffers it keeps, so a long
/// restore does not allocate (and fault in) fresh memory for every frame.
pub struct FrameDecoder {
    /// Read frames around the page cache.
    pub(super) uncached: bool,
    ciphertext: Vec<u8>,
    compressed: Vec<u8>,
    pub(super) frame: Vec<u8>,
    key: Option<FrameKey>,
    zstd: zstd::bulk::Decompressor<'static>,
}

impl FrameDecoder {
    pub fn new() -> Result<FrameDecoder> {
        Ok(FrameDecoder {
            uncached: false,
            ciphertext: Vec::new(),
            compressed: Vec::new(),
            frame: Vec::new(),
            key: None,
            zstd: zstd::bulk::Decompressor::new()
                .map_err(|e| Error::failure(format!("creating a zstd decompressor: {e}")))?,
        })
    }

    /// The plaintext of the frame at `loc`; decoded unless it is the frame
    /// decoded last.
    pub fn frame(&mut self, repo: &Repository, loc: &Location) -> Result<&[u8]> {
        if self.key != Some(loc.frame_key()) {
            self.key = None;
            let mut ct = std::mem::take(&mut self.ciphertext);
            let decoded = repo
                .frame_ciphertext(loc, &mut ct, self.uncached)
                .and_then(|_| self.decode_at(repo, &ct, loc));
            self.ciphertext = ct;
            decoded?;
            self.key = Some(loc.frame_key());
        }
        Ok(&self.frame)
    }

    /// The plaintext of the frame at `loc`, whose ciphertext is `ct`.
    pub fn frame_of(&mut self, repo: &Repository, loc: &Location, ct: &[u8]) -> Result<&[u8]> {
        self.key = None;
        self.decode_at(repo, ct, loc)?;
        self.key = Some(loc.frame_key());
        Ok(&self.frame)
    }

    /// Decode `ct`, the ciphertext of the frame at `loc`, into `self.frame`
    /// (a delta frame with its bases).
    fn decode_at(&mut self, repo: &Repository, ct: &[u8], loc: &Location) -> Result<()> {
        let file = FileRef::of(loc.pack);
        let what = frame_name(&file, loc.frame_offset);
        let prefix = repo.delta_prefix(loc)?;
        self.decode(
            &repo.key,
            ct,
            loc.compression,
            loc.raw_length,
            &prefix,
            &what,
        )
    }

    /// Decrypt and decompress `ct` into `self.frame`.
    fn decode(
        &mut self,
        key: &MasterKey,
        ct: &[u8],
        compression: Compression,
        raw_length: u32,
        prefix: &[u8],
        what: &str,
    ) -> Result<()> {
        key.decrypt_into(ct, &what, &mut self.compressed)?;
        match compression {
            Compression::None => std::mem::swap(&mut self.compressed, &mut self.frame),
            Compression::Zstd => {
                self.frame.clear();
                self.frame.reserve(raw_length as usize);
                self.zstd
                    .decompress_to_buffer(&self.compressed[..], &mut self.frame)
                    .map_err(|e| Error::integrity(format!("{what} does not decompress: {e}")))?;
            }
            Compression::ZstdDelta => {
                self.frame.clear();
                self.frame.reserve(raw_length as usize);
                decompress_with_prefix(&self.compressed, prefix, &mut self.frame)
                    .map_err(|e| Error::integrity(format!("{what} does not decompress: {e}")))?;
            }
        }
        if self.frame.len() != raw_length as usize {
            return Err(Error::integrity(format!(
                "{what} has {} bytes, the index says {raw_length}",
                self.frame.len()
            )));
        }
        Ok(())
    }
}

/// zstd-decompress `compressed`, made by [`compress_with_prefix`] against
/// the same `prefix`, into `out` (whose capacity bounds the output).
pub fn decompress_with_prefix(
    compressed: &[u8],
    prefix: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let mut dctx = zstd::zstd_safe::DCtx::create();
    dctx.ref_prefix(prefix)
        .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())?;
    dctx.decompress(out, compressed)
        .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())?;
    Ok(())
}

/// zstd-compress `data` at `level` with `prefix` as raw content it may
/// refer back to (zstd's `--patch-from`): on pgbench's scattered updates
/// each row that left its place cost about 20 bytes of delta. The window covers the
/// prefix and the data, so every byte of the prefix can be referred to.
pub fn compress_with_prefix(
    data: &[u8],
    prefix: &[u8],
    level: i32,
) -> std::result::Result<Vec<u8>, String> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let err = |c| zstd::zstd_safe::get_error_name(c).to_string();
    let mut cctx = CCtx::create();
    let span = (prefix.len() + data.len()).max(1 << 10);
    let window_log = (usize::BITS - (span - 1).leading_zeros()).clamp(10, 27);
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log))
        .map_err(err)?;
    // Long-distance matching finds the long runs shared with the prefix
    // that the regular match finder, which keeps only the nearest earlier
    // occurrence of a short hash, misses in self-similar data (rows that
    // differ only in their numbers): on pgbench rows it made the deltas
    // several times smaller (`changed_chunks_are_stored_as_deltas_one_deep`).
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(err)?;
    cctx.ref_prefix(prefix).map_err(err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(err)?;
    Ok(out)
}

type FrameKey = (PackId, u64);

/// A few recently decoded frames.
#[derive(Default)]
pub(super) struct FrameCache {
    entries: Vec<(FrameKey, Arc<Vec<u8>>)>,
}

impl FrameCache {
    const CAPACITY: usize = 8;
    fn get(&mut self, key: FrameKey) -> Option<Arc<Vec<u8>>> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        let e = self.entries.remove(i);
        let v = e.1.clone();
        self.entries.push(e);
        Some(v)
    }
    fn put(&mut self, key: FrameKey, v: Arc<Vec<u8>>) {
        if self.entries.len() >= Self::CAPACITY {
            self.entries.remove(0);
        }
        self.entries.push((key, v));
    }
}
