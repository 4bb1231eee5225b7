//! Content-defined chunking (FastCDC 2020) over large read buffers.
//!
//! The chunker's gear table is seeded from the repository's hash key, so chunk
//! boundaries — like chunk ids — reveal nothing to someone without the key.

use crate::repo::ChunkerParams;
use fastcdc::v2020::{FastCDC, Normalization};
use std::io::Read;

const READ_BUFFER: usize = 8 << 20;

/// Why chunking a stream stopped.
pub enum ChunkError<E> {
    /// Reading the source failed.
    Read(std::io::Error),
    /// The consumer of the chunks failed.
    Sink(E),
}

impl ChunkError<crate::error::Error> {
    /// As one error: the consumer's own, or a read failure described as
    /// `what` (e.g. "reading the output of pg_dump").
    pub fn into_error(self, what: impl std::fmt::Display) -> crate::error::Error {
        match self {
            ChunkError::Read(e) => crate::error::Error::io(what, e),
            ChunkError::Sink(e) => e,
        }
    }
}

/// Read from `source` until `buf` is full or the source ends (then set
/// `eof`); the number of bytes read.
fn fill(source: &mut impl Read, buf: &mut [u8], eof: &mut bool) -> std::io::Result<usize> {
    let mut len = 0;
    while !*eof && len < buf.len() {
        match source.read(&mut buf[len..]) {
            Ok(0) => *eof = true,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Split `source` into chunks, calling `sink` with each in order.
/// Returns the number of bytes read.
pub fn for_each_chunk<R: Read, E>(
    source: R,
    params: ChunkerParams,
    seed: u64,
    sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    for_each_chunk_with(&mut Vec::new(), source, params, seed, sink)
}

/// [`for_each_chunk`] with a caller-owned read buffer, reused across streams
/// (a backup of many small files should not allocate 8 MiB per file).
pub fn for_each_chunk_with<R: Read, E>(
    buf: &mut Vec<u8>,
    mut source: R,
    params: ChunkerParams,
    seed: u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    if buf.len() < READ_BUFFER {
        buf.resize(READ_BUFFER, 0);
    }
    let mut len = 0usize;
    let mut total = 0u64;
    let mut eof = false;
    while !eof || len > 0 {
        let n = fill(&mut source, &mut buf[len..], &mut eof).map_err(ChunkError::Read)?;
        len += n;
        total += n as u64;
        if len == 0 {
            break;
        }
        let cdc = FastCDC::with_level_and_seed(
            &buf[..len],
            params.min as usize,
            params.avg as usize,
            params.max as usize,
            Normalization::Level1,
            seed,
        );
        let mut consumed = 0usize;
        for c in cdc {
            let end = c.offset + c.length;
            // A chunk ending at the buffer's end may have been cut by the end
            // of the buffer, not by the content: keep it for the next round.
            if end == len && !eof {
                break;
            }
            sink(&buf[c.offset..end]).map_err(ChunkError::Sink)?;
            consumed = end;
        }
        if consumed == 0 && !eof {
            // Cannot happen with a buffer larger than the maximum chunk size.
            consumed = len.min(params.max as usize);
            sink(&buf[..consumed]).map_err(ChunkError::Sink)?;
        }
        buf.copy_within(consumed..len, 0);
        len -= consumed;
    }
    Ok(total)
}

/// How a stream is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// By content, with FastCDC at these sizes.
    Cdc(ChunkerParams),
    /// By the structure of a tar archive ([`for_each_tar_chunk_with`]).
    Tar,
    /// Every this many bytes from the stream's start (the last chunk
    /// shorter): for data written once and never shifted, such as WAL
    /// segments, where content-defined boundaries find nothing that fixed
    /// ones miss and cost a scan of every byte.
    Fixed(u32),
}

impl Chunking {
    /// The longest chunk this cuts.
    pub fn max(&self) -> usize {
        match self {
            Chunking::Cdc(p) => p.max as usize,
            Chunking::Tar => TAR_PIECE,
            Chunking::Fixed(n) => *n as usize,
        }
    }
}

/// Chunk sizes for streams stored as deltas against their previous version
/// (database dumps, large files that change): the repository's scaled up
/// to 64 KiB on average (eight times the default); a repository made with a
/// larger `--chunk-size` keeps its own. A changed chunk stored as a delta
/// costs about the same whatever its size, while every chunk costs ~150
/// bytes of pack header, index and node list (spec/postgres.md
/// "Second-day bytes", spec/repository.md §4 "Chunking").
pub fn delta_stream_params(repo: ChunkerParams) -> ChunkerParams {
    let factor = (65536 / repo.avg.max(1)).max(1);
    ChunkerParams {
        min: repo.min * factor,
        avg: repo.avg * factor,
        max: repo.max * factor,
    }
}

/// Split `source` as `chunking` says, with a caller-owned read buffer.
pub fn for_each_chunk_by<R: Read, E>(
    buf: &mut Vec<u8>,
    source: R,
    chunking: Chunking,
    seed: u64,
    sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    match chunking {
        Chunking::Cdc(params) => for_each_chunk_with(buf, source, params, seed, sink),
        Chunking::Tar => for_each_tar_chunk_with(buf, source, sink),
        Chunking::Fixed(n) => for_each_fixed_chunk_with(buf, source, n.max(1) as usize, sink),
    }
}

/// Split `source` every `size` bytes, with a caller-owned buffer of that
/// size; returns the number of bytes read.
fn for_each_fixed_chunk_with<R: Read, E>(
    buf: &mut Vec<u8>,
    mut source: R,
    size: usize,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    if buf.len() < size {
        buf.resize(size, 0);
    }
    let (mut total, mut eof) = (0u64, false);
    while !eof {
        let n = fill(&mut source, &mut buf[..size], &mut eof).map_err(ChunkError::Read)?;
        if n > 0 {
            sink(&buf[..n]).map_err(ChunkError::Sink)?;
        }
        total += n as u64;
    }
    Ok(total)
}

/// The largest chunk cut from a tar stream, and the size of the pieces its
/// larger members' data is cut into.
pub const TAR_PIECE: usize = 32 << 10;
/// The tar block: headers are one, data is padded to a multiple.
pub(crate) const TAR_BLOCK: usize = 512;
const BLOCK: usize = TAR_BLOCK;

/// The largest member data a tar header may claim (2^62 bytes): far above
/// any file, and padded to blocks it still fits a u64.
const MAX_MEMBER: u64 = 1 << 62;

/// `len` bytes of member data padded to whole tar blocks.
pub(crate) fn tar_padded(len: u64) -> u64 {
    len.div_ceil(TAR_BLOCK as u64) * TAR_BLOCK as u64
}

/// Split a tar stream (as `pg_basebackup -Ft` writes) into chunks by its
/// structure instead of by content: a member whose header and data fit in
/// [`TAR_PIECE`] is kept whole, and runs of such members are grouped up to
/// that size; a larger member's header is a chunk of its own and its data is
/// cut every [`TAR_PIECE`] bytes from the data's start, so an unchanged
/// 32 KiB extent of a relation file is the same chunk in every base backup.
/// What follows the end-of-archive marker, or anything that is not a valid
/// tar header, is cut every [`TAR_PIECE`] bytes. No byte is scanned for
/// boundaries, which a content-defined chunker must do: FastCDC was 17% of
/// a base backup's CPU. Returns the number of bytes read.
pub fn for_each_tar_chunk_with<R: Read, E>(
    buf: &mut Vec<u8>,
    mut source: R,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    if buf.len() < READ_BUFFER {
        buf.resize(READ_BUFFER, 0);
    }
    let mut cutter = TarCutter::Header;
    let (mut len, mut total, mut eof) = (0usize, 0u64, false);
    while !eof || len > 0 {
        let n = fill(&mut source, &mut buf[len..], &mut eof).map_err(ChunkError::Read)?;
        len += n;
        total += n as u64;
        let mut consumed = 0usize;
        while let Some(n) = cutter.next(&buf[consumed..len], eof) {
            sink(&buf[consumed..consumed + n]).map_err(ChunkError::Sink)?;
            consumed += n;
        }
        buf.copy_within(consumed..len, 0);
        len -= consumed;
    }
    Ok(total)
}

/// Where a [`for_each_tar_chunk_with`] is in the stream.
enum TarCutter {
    /// At a member's header.
    Header,
    /// In a large member's data: this many bytes (padding included) left.
    Data(u64),
    /// Past the end of the archive, or lost: fixed pieces.
    Opaque,
}

impl TarCutter {
    /// The length of the next chunk at the start of `rest`, or `None` when
    /// more bytes are needed (or, at `eof`, none are left).
    fn next(&mut self, rest: &[u8], eof: bool) -> Option<usize> {
        if rest.is_empty() {
            return None;
        }
        let whole_or_wait = |n: usize| match rest.len() >= n {
            true => Some(n),
            false if eof => Some(rest.len()),
            false => None,
        };
        match *self {
            TarCutter::Opaque => whole_or_wait(TAR_PIECE),
            TarCutter::Data(left) => {
                let n = whole_or_wait(left.min(TAR_PIECE as u64) as usize)?;
                *self = match left - n as u64 {
                    0 => TarCutter::Header,
                    more => TarCutter::Data(more),
                };
                Some(n)
            }
            TarCutter::Header => {
                // Members that fit in a piece, grouped until the next would not.
                let mut group = 0usize;
                loop {
                    let Some(header) = rest.get(group..group + BLOCK) else {
                        return eof.then_some(rest.len());
                    };
                    let Some(data) = tar_data_len(header) else {
                        // The end-of-archive marker, or not a header at all.
                        if group > 0 {
                            return Some(group);
                        }
                        *self = TarCutter::Opaque;
                        return self.next(rest, eof);
                    };
                    let member = tar_padded(data) + BLOCK as u64;
                    if member > TAR_PIECE as u64 {
                        if group > 0 {
                            return Some(group);
                        }
                        *self = TarCutter::Data(member - BLOCK as u64);
                        return Some(BLOCK);
                    }
                    let member = member as usize;
                    if group + member > TAR_PIECE {
                        return Some(group);
                    }
                    if rest.len() < group + member {
                        return eof.then_some(rest.len());
                    }
                    group += member;
                }
            }
        }
    }
}

/// The data length of the member whose header is `h`, or `None` when `h` is
/// not a valid ustar/GNU header (all zeros at the end of the archive, or a
/// wrong checksum).
pub(crate) fn tar_data_len(h: &[u8]) -> Option<u64> {
    let octal = |f: &[u8]| -> Option<u64> {
        let t = std::str::from_utf8(f).ok()?;
        let t = t.trim_matches(|c: char| c == '\0' || c == ' ');
        match t.is_empty() {
            true => Some(0),
            false => u64::from_str_radix(t, 8).ok(),
        }
    };
    let stored = octal(&h[148..156])?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                b' ' as u64
            } else {
                *b as u64
            }
        })
        .sum();
    if sum != stored || h.iter().all(|b| *b == 0) {
        return None;
    }
    // Directories, links and the like carry no data whatever their size says.
    if matches!(h[156], b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
        return Some(0);
    }
    let size = &h[124..136];
    let len = if size[0] & 0x80 != 0 {
        // GNU base-256: a big-endian number in the rest of the field.
        size[4..]
            .iter()
            .try_fold(0u64, |n, b| n.checked_mul(256).map(|n| n + *b as u64))
            .filter(|_| size[1..4].iter().all(|b| *b == 0))
    } else {
        octal(size)
    };
    // No member is larger than this; a larger size would overflow the
    // padding arithmetic of its readers (found by the fuzz target tar_cutter).
    len.filter(|n| *n <= MAX_MEMBER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::CHUNKER_DEFAULT;
    use proptest::prelude::*;

    fn chunks_of(data: &[u8], seed: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let r = for_each_chunk::<_, ()>(data, CHUNKER_DEFAULT, seed, |c| {
            out.push(c.to_vec());
            Ok(())
        });
        assert!(matches!(r, Ok(n) if n == data.len() as u64));
        out
    }

    /// A reader that returns at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(b.len()).min(self.0.len());
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn fixed_chunks_are_cut_every_n_bytes_whatever_the_reads() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
        for step in [1, 7, 4096, 1 << 20] {
            let mut out = Vec::new();
            let n = for_each_chunk_by::<_, ()>(
                &mut Vec::new(),
                Trickle(&data, step),
                Chunking::Fixed(10_000),
                0,
                |c| {
                    out.push(c.to_vec());
                    Ok(())
                },
            );
            assert!(matches!(n, Ok(100_003)));
            assert_eq!(out.len(), 11, "step {step}");
            assert!(out[..10].iter().all(|c| c.len() == 10_000));
            assert_eq!(out[10].len(), 3);
            assert_eq!(out.concat(), data);
        }
        // An empty stream has no chunk.
        let r = for_each_chunk_by::<_, ()>(&mut Vec::new(), &[][..], Chunking::Fixed(8), 0, |_| {
            panic!("no chunk expected")
        });
        assert!(matches!(r, Ok(0)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn chunks_concatenate_to_input_and_respect_bounds(seed in any::<u64>(), len in 0usize..600_000, fill in any::<u64>()) {
            let mut x = fill | 1;
            let data: Vec<u8> = (0..len).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x >> 24) as u8 }).collect();
            let chunks = chunks_of(&data, seed);
            prop_assert_eq!(chunks.concat(), data.clone());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.len() <= CHUNKER_DEFAULT.max as usize);
                if i + 1 < chunks.len() {
                    prop_assert!(c.len() >= CHUNKER_DEFAULT.min as usize);
                }
            }
            // Chunk boundaries do not depend on how the source delivers bytes.
            let mut trickled = Vec::new();
            let _ = for_each_chunk::<_, ()>(Trickle(&data, 7919), CHUNKER_DEFAULT, seed, |c| { trickled.push(c.to_vec()); Ok(()) });
            prop_assert_eq!(trickled, chunks);
        }
    }

    fn tar_chunks(data: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let r = for_each_tar_chunk_with::<_, ()>(&mut Vec::new(), Trickle(data, step), |c| {
            out.push(c.to_vec());
            Ok(())
        });
        assert!(matches!(r, Ok(n) if n == data.len() as u64));
        out
    }

    /// A tar like a base backup's: small files, a directory, a long name,
    /// and a relation file of `pages` 8 KiB pages, page `changed` edited,
    /// after a small file `grown` bytes longer.
    fn base_tar(pages: usize, changed: Option<usize>, mtime: u64, grown: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], mtime: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_mtime(mtime);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("PG_VERSION", b"15\n", 1);
        add("global/pg_control", &[7u8; 8192], 1);
        let long = format!("base/1/{}", "x".repeat(150));
        add(&long, &vec![3u8; 20_000 + grown], 1);
        let mut rel: Vec<u8> = (0..pages * 8192).map(|i| (i * 131 % 253) as u8).collect();
        if let Some(p) = changed {
            rel[p * 8192 + 100] ^= 0xff;
        }
        add("base/5/16384", &rel, mtime);
        add("base/5/16385", &[9u8; 5000], 1);
        let mut d = tar::Header::new_gnu();
        d.set_entry_type(tar::EntryType::Directory);
        d.set_size(0);
        d.set_mode(0o700);
        b.append_data(&mut d, "pg_wal/", &[][..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_streams_are_cut_by_member_and_by_32_kib_of_data() {
        let day1 = base_tar(100, None, 1, 0);
        let chunks = tar_chunks(&day1, 1 << 20);
        assert_eq!(chunks.concat(), day1);
        assert!(
            chunks.iter().all(|c| c.len() <= TAR_PIECE),
            "a chunk over 32 KiB"
        );
        // However the bytes arrive, the cuts are the same.
        assert_eq!(tar_chunks(&day1, 7919), chunks);
        // The 800 KiB relation file: its header alone, then 25 pieces.
        let rel = chunks.iter().position(|c| c.len() == BLOCK).unwrap();
        assert_eq!(
            chunks[rel + 1..rel + 26]
                .iter()
                .map(Vec::len)
                .sum::<usize>(),
            100 * 8192
        );
        // One page edited (and the file's mtime with it): its header and
        // the one 32 KiB piece that holds the page, nothing else.
        let old: std::collections::HashSet<_> = chunks.iter().collect();
        let new_in = |tar: &[u8]| -> Vec<usize> {
            let chunks = tar_chunks(tar, 4096);
            chunks
                .into_iter()
                .filter(|c| !old.contains(c))
                .map(|c| c.len())
                .collect()
        };
        assert_eq!(new_in(&base_tar(100, Some(42), 2, 0)).len(), 2);
        // A small file before it grew: only the group holding that file
        // changes, not the relation file's pieces, though all moved.
        assert_eq!(new_in(&base_tar(100, None, 1, 500)).len(), 1);
        // Not a tar: fixed pieces.
        let junk = vec![1u8; 200_000];
        let pieces = tar_chunks(&junk, 1000);
        let lens: Vec<usize> = pieces.iter().map(Vec::len).collect();
        assert_eq!(lens, [32768, 32768, 32768, 32768, 32768, 32768, 3392]);
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let mut x = 88172645463325252u64;
        let data: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut edited = data.clone();
        edited.splice(1_000_000..1_000_000, b"inserted".iter().copied());
        let a: std::collections::HashSet<_> = chunks_of(&data, 1).into_iter().collect();
        let b = chunks_of(&edited, 1);
        let new = b.iter().filter(|c| !a.contains(*c)).count();
        assert!(new <= 3, "{new} chunks changed for one small insertion");
    }
}
