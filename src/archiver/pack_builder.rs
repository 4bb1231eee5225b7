//! The pack writer: sealed frames into packs of the configured size, each
//! closed with its sealed header, handed to the uploaders (or written
//! directly).

use super::failure::Failure;
use crate::backend::FileRef;
use crate::error::{Error, Result};
use crate::repo::{
    ChunkEntry, Compression, FrameEntry, PackEntry, PackHeader, PackId, FORMAT_VERSION,
};
use crate::repository::Repository;
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};

/// What the pipeline stored.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub packs: Vec<PackEntry>,
    /// Bytes of all pack files written.
    pub bytes: u64,
}

/// A frame on its way from a sealer to the pack writer.
pub(super) struct SealedFrame {
    pub(super) seq: u64,
    pub(super) ciphertext: Vec<u8>,
    pub(super) raw_length: u32,
    pub(super) compression: Compression,
    pub(super) chunks: Vec<ChunkEntry>,
}

/// Assemble sealed frames into packs as they come; on a flush request
/// (frame number N, from [`Packer::flush_packs`](super::Packer::flush_packs)), close the pack once
/// frames 0..N are all in, whatever order the sealers finish them in.
pub(super) fn write_packs(
    repo: &Repository,
    frames: Receiver<SealedFrame>,
    requests: Receiver<u64>,
    uploads: Sender<Upload>,
    failed: &Failure,
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
                        failed.record(e);
                        ok = false;
                    }
                }
            }
        }
        if ok && flush_at.is_some_and(|n| arrived.all_below(n)) {
            flush_at = None;
            if let Err(e) = builder.flush() {
                failed.record(e);
                ok = false;
            }
        }
    }
    if ok && !abort.load(Ordering::SeqCst) {
        if let Err(e) = builder.flush() {
            failed.record(e);
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
pub(super) type Upload = (PackEntry, Vec<u8>);

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
            buf: Self::buffer(repo),
            entries: Vec::new(),
            uploads: None,
            stored: Stored::default(),
        }
    }

    /// An empty pack buffer: a pack's data, its header and the last frame
    /// that may pass the pack size fit in most cases.
    fn buffer(repo: &Repository) -> Vec<u8> {
        Vec::with_capacity(repo.config.pack_size as usize + (2 << 20))
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
        // Grown exactly, never doubled: a pack buffer that overflows its
        // capacity by a frame or a header must not become twice the pack
        // size (three of them are alive at once: one being built, two
        // being uploaded).
        self.buf.reserve_exact(ciphertext.len());
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
        let trailer = crate::repo::encode::pack_trailer(sealed.len());
        self.buf.reserve_exact(sealed.len() + trailer.len());
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&trailer);
        let id = PackId::of_bytes(&self.buf);
        let size = self.buf.len() as u64;
        match &self.uploads {
            Some(tx) => {
                let bytes = std::mem::replace(&mut self.buf, Self::buffer(self.repo));
                let entry = PackEntry {
                    id,
                    size,
                    frames: header.frames.clone(),
                };
                tx.send((entry, bytes))
                    .map_err(|_| Error::failure("the pack uploaders stopped"))?;
            }
            None => {
                self.repo.backend.write(&FileRef::of(id), &self.buf)?;
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
