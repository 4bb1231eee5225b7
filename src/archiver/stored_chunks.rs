//! Where the chunks a run stores are, as soon as their packs are written:
//! the Kafka source reads each partition back while the next one is
//! consumed, before the run's index exists.

use crate::error::{Error, Result};
use crate::index::{IndexReader, Location};
use crate::repo::{ChunkId, PackEntry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

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
    at: HashMap<ChunkId, Location>,
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
    pub(super) fn add(&self, pack: &PackEntry) {
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
    /// packs (see [`Packer::flush_packs`](super::Packer::flush_packs)): a chunk not located by then
    /// never will be, as when it was stored before anyone watched, or was
    /// forgotten, and a later stream holds it again.
    pub fn all_written(&self, n: u64) -> bool {
        self.frames.load(Ordering::SeqCst) >= n
    }

    /// Drop the locations of `ids`.
    pub fn forget(&self, ids: &[ChunkId]) {
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
        id: &ChunkId,
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
