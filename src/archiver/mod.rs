//! The write pipeline: sources → chunks → frames → packs.
//!
//! The calling thread reads, chunks, hashes and deduplicates; worker threads
//! compress and encrypt frames (several new chunks together, so small chunks
//! still compress like large blocks); one writer thread assembles packs and
//! stores them. Nothing here writes an index or a snapshot: the caller does,
//! after every pack is stored, so a crash leaves only unreferenced packs.
//!
//! - [`packer`]: the calling thread's side: chunks a stream, skips chunks
//!   the repository has, gathers new ones into frames.
//! - [`delta`]: which chunk of the previous version a new chunk is
//!   delta-compressed against (content anchors).
//! - [`sealer`]: the worker threads: compress (when it pays) and encrypt
//!   frames.
//! - [`pack_builder`]: the writer thread: frames into packs, packs to the
//!   backend.
//! - [`stored_chunks`]: where this run's chunks are as their packs are
//!   written (the Kafka source reads them back during the run).
//! - [`failure`]: the first error any of these threads hits, which stops
//!   the run.
//!
//! Sources (files, streams, commands, PostgreSQL, Kafka) live in
//! [`crate::source`]; they hand their streams to a [`Packer`] and their node
//! lists to [`store_nodes`].

mod delta;
mod failure;
mod pack_builder;
mod packer;
mod sealer;
mod stored_chunks;

pub use pack_builder::{PackBuilder, Stored};
pub use packer::{Packer, PackerStats};
pub use sealer::Sealer;
pub use stored_chunks::StoredChunks;

use crate::backend::FileRef;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{ChunkId, Node};
use crate::repository::Repository;
use crossbeam_channel::bounded;
use failure::Failure;
use pack_builder::{write_packs, SealedFrame, Upload};
use sealer::{seal_frames, FrameJob};
use std::sync::atomic::{AtomicBool, Ordering};

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
    let failed = Failure::default();
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
                    if let Err(e) = repo.backend.write(&FileRef::of(pack.id), &bytes) {
                        failed.record(e);
                        break; // the writer's next send fails and the run stops
                    }
                    published.add(&pack);
                }
            }));
        }
        drop(upload_rx);
        let (flush_tx, flush_rx) = crossbeam_channel::unbounded::<u64>();
        let writer = s.spawn(|| write_packs(repo, frame_rx, flush_rx, upload_tx, &failed, &abort));
        let index = repo.cache.reader()?;
        let mut packer = Packer::new(repo, index, job_tx, flush_tx, &failed, &stored_chunks);
        let out = f(&mut packer).and_then(|v| packer.flush_frame().map(|_| v));
        if out.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        let stats = packer.stats.clone();
        drop(packer); // closes the frame channel: the sealers finish
        let stored = writer
            .join()
            .map_err(|_| Error::failure("the pack writer panicked"))?;
        // Every pack must be stored before the caller writes an index.
        for u in uploaders {
            u.join()
                .map_err(|_| Error::failure("a pack uploader panicked"))?;
        }
        let value = out?;
        if let Some(e) = failed.take() {
            return Err(e);
        }
        Ok((value, stored, stats))
    })
}

/// Store a node list; returns the chunk ids of the stored list.
pub fn store_nodes(packer: &mut Packer, nodes: &[Node]) -> Result<Vec<ChunkId>> {
    // A snapshot that reports success must restore: a node list that could
    // not be restored safely is never stored.
    if let Some(p) = crate::repo::node_path::tree_problem(nodes) {
        return Err(Error::usage(format!("cannot store this source safely: {p}"))
            .with_hint("name files and streams with plain relative names (no `..`, `.`, empty or over-long parts); nothing was stored for it"));
    }
    packer
        .add_stream(
            crate::repo::encode::node_list_reader(nodes),
            &Progress::hidden(),
        )
        .map(|(ids, _)| ids)
        .map_err(|e| e.into_error("reading the node list"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkError;
    use crate::repo::FORMAT_VERSION;
    use proptest::prelude::*;
    use std::path::Path;

    pub(super) fn repo(dir: &Path) -> Repository {
        crate::repository::test_repo(dir)
    }

    pub(super) fn data(seed: u64, len: usize, text: bool) -> Vec<u8> {
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

    pub(super) fn rows(rows: impl Iterator<Item = (u64, i64)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (aid, balance) in rows {
            out.extend_from_slice(
                format!("{aid}\t{}\t{balance}\t{:84}\n", aid / 100_000 + 1, "").as_bytes(),
            );
        }
        out
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
            repo.cache.add(&crate::repo::IndexId::of_bytes(b"test"), &idx).unwrap();
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
