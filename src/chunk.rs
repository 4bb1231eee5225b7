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
        while !eof && len < buf.len() {
            match source.read(&mut buf[len..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    len += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ChunkError::Read(e)),
            }
        }
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
