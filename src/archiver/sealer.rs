//! The sealers: worker threads that compress frames (when it pays, at a
//! level chosen by how the last frame did) and encrypt them.

use super::failure::Failure;
use super::pack_builder::SealedFrame;
use crate::error::{Error, Result};
use crate::repo::{prefix_bases, ChunkEntry, Compression};
use crate::repository::Repository;
use crossbeam_channel::{Receiver, Sender};

/// Frame data on its way from the packer to a sealer.
pub(super) struct FrameJob {
    /// Frames are numbered in the order the packer sends them.
    pub(super) seq: u64,
    pub(super) data: Vec<u8>,
    pub(super) chunks: Vec<ChunkEntry>,
}

pub(super) fn seal_frames(
    repo: &Repository,
    jobs: Receiver<FrameJob>,
    out: Sender<SealedFrame>,
    failed: &Failure,
) {
    let mut sealer = match Sealer::new(repo) {
        Ok(s) => s,
        Err(e) => return failed.record(e),
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
            Err(e) => return failed.record(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::tests::{data, repo, rows};
    use crate::backend::FileRef;
    use crate::repo::FileKind;

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
}
