//! Loading one table's data from a custom-format dump with cairn's own
//! `COPY … FROM STDIN`, on several connections at once (spec/postgres.md,
//! "Streamed data"). pg_restore loads a table with one worker, so the
//! largest table bounds a restore; one backend's COPY is CPU-bound.
//!
//! The table's data block is read once, in order, and handed out in batches
//! of whole rows to whichever connection is free. Each connection's COPY
//! runs in a transaction, and the transactions commit only when every one
//! has loaded its share: a row the server refuses, a damaged chunk, an
//! interrupt or a panic rolls all of them back.

use super::archive::{copy_data_block, Toc};
use super::conn::{pg_err, Target};
use super::meta::DatabaseMeta;
use super::offsets::{Block, DataOffsets};
use crate::error::{Error, Result};
use crate::repo::Node;
use crate::repository::Repository;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Rows are handed out in batches of about this many bytes.
const BATCH: usize = 1 << 20;
/// At most this many connections load one table.
pub const MAX_CONNECTIONS: usize = 8;

/// A table's data block that cairn loads itself.
pub struct DirectCopy {
    pub block: Block,
    /// The archive's integer size, to read the block's framing.
    int_size: usize,
    /// The entry's COPY statement, as pg_dump wrote it.
    copy: String,
    /// The dump's client encoding and `standard_conforming_strings`.
    encoding: String,
    standard_strings: bool,
    pub schema: String,
    pub table: String,
}

impl DirectCopy {
    /// The largest data block of a dump of `size` bytes, when it is a
    /// table's uncompressed COPY text, the dump names its encoding, and the
    /// COPY statement reads the same in that encoding as in UTF-8 (the
    /// client library sends statements as UTF-8).
    pub fn of(toc: &Toc, offsets: &DataOffsets, size: u64) -> Option<DirectCopy> {
        let block = offsets.largest_block(size)?;
        let entry = toc.entry(block.dump_id)?;
        let copy = entry.copy.as_deref()?;
        let encoding = toc.encoding()?;
        let plain_copy = copy.starts_with("COPY ") && copy.trim_end().ends_with("FROM stdin;");
        // The TOC was decoded as UTF-8, replacing what was not.
        let same_text = copy.is_ascii() || (encoding == "UTF8" && !copy.contains('\u{FFFD}'));
        if entry.desc != "TABLE DATA" || toc.compressed || !plain_copy || !same_text {
            return None;
        }
        Some(DirectCopy {
            block,
            int_size: toc.int_size,
            copy: copy.to_string(),
            encoding: encoding.to_string(),
            standard_strings: toc.standard_strings().unwrap_or(true),
            schema: entry.namespace.clone(),
            table: entry.tag.clone(),
        })
    }

    /// `schema.table`, as reports show it.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The session pg_restore sets up (`_doSetFixedOutputState`), on top of
    /// cairn's own [`Target::connect`] settings (UTC, ISO dates), which
    /// do not change how COPY text is read.
    fn session(&self) -> String {
        format!(
            "SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0; \
             SELECT pg_catalog.set_config('transaction_timeout', '0', false) \
               WHERE current_setting('server_version_num')::int >= 170000; \
             SET client_encoding = '{}'; SET standard_conforming_strings = {}; \
             SELECT pg_catalog.set_config('search_path', '', false); \
             SET check_function_bodies = false; SET xmloption = content; \
             SET client_min_messages = warning; SET row_security = off;",
            self.encoding,
            if self.standard_strings { "on" } else { "off" }
        )
    }
}

/// Whether the load goes on; and how many connections are still loading.
struct Gate {
    abandoned: AtomicBool,
    loading: Mutex<usize>,
    all_in: Condvar,
    /// Decided once, when every connection is in: commit or roll back.
    commit: OnceLock<bool>,
}

impl Gate {
    /// For `connections` loading.
    fn new(connections: usize) -> Gate {
        Gate {
            abandoned: AtomicBool::new(false),
            loading: Mutex::new(connections),
            all_in: Condvar::new(),
            commit: OnceLock::new(),
        }
    }

    fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// One connection has sent all it will send.
    fn arrive(&self) {
        let mut n = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.all_in.notify_all();
    }

    /// Wait for every connection; then whether they all commit.
    fn decide(&self) -> bool {
        let mut n = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            n = self.all_in.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        drop(n);
        *self
            .commit
            .get_or_init(|| !self.abandoned() && crate::interrupt::check().is_ok())
    }
}

/// Held by a loader until it has sent its share: a loader that panics still
/// arrives, and abandons the load.
struct Arrival<'a> {
    gate: &'a Gate,
    arrived: bool,
}

impl Arrival<'_> {
    fn arrive(&mut self) {
        self.arrived = true;
        self.gate.arrive();
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        if !self.arrived {
            self.gate.abandon();
            self.gate.arrive();
        }
    }
}

/// Abandons the load when dropped while its thread panics.
struct AbandonOnPanic<'a>(&'a Gate);

impl Drop for AbandonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

/// Cut `batch` (whole COPY text lines) before the end-of-data line `\.`
/// that pg_dump writes after the rows; `true` when it was there. No row
/// can be that line: a backslash in a value is written `\\`.
fn cut_end_marker(batch: &mut Vec<u8>) -> bool {
    let at = if batch.starts_with(b"\\.\n") || batch.as_slice() == b"\\." {
        Some(0)
    } else {
        memchr::memmem::find(batch, b"\n\\.\n")
            .or_else(|| batch.ends_with(b"\n\\.").then(|| batch.len() - 3))
            .map(|i| i + 1)
    };
    match at {
        Some(i) => {
            batch.truncate(i);
            true
        }
        None => false,
    }
}

/// Load data block `c` of `dump` into its table on `jobs` connections
/// (at most [`MAX_CONNECTIONS`]); the rows the servers say they copied.
///
/// The rows are read once, in order, and handed out in batches of whole
/// rows (a COPY text row ends at a newline byte; one inside a value is
/// written `\n`); the end-of-data line is not sent, CopyDone ends each COPY.
/// The server answers a refused row only when its COPY ends, so the batches
/// are all sent first; then every transaction is rolled back.
pub fn copy_table_data(
    repo: &Repository,
    target: &Target,
    d: &DatabaseMeta,
    dump: &Node,
    c: &DirectCopy,
    jobs: usize,
) -> Result<i64> {
    let session = c.session();
    let mut clients = Vec::new();
    for _ in 0..jobs.clamp(1, MAX_CONNECTIONS) {
        let mut client = target.connect(&d.name)?;
        client
            .batch_execute(&session)
            .map_err(|e| pg_err(target, &d.name, e))?;
        clients.push(client);
    }
    let mut data = repo.open_file(dump)?;
    data.skip(c.block.start)
        .map_err(|e| e.context(format!("reading {}", dump.path)))?;
    let gate = &Gate::new(clients.len());
    let (batches, queue) = crossbeam_channel::bounded::<Vec<u8>>(2 * clients.len());
    std::thread::scope(|s| {
        let _abandon = AbandonOnPanic(gate);
        let loaders: Vec<_> = clients
            .into_iter()
            .map(|client| {
                let queue = queue.clone();
                s.spawn(move || load_share(client, queue, gate, target, &d.name, c))
            })
            .collect();
        drop(queue);
        let read = send_rows(&mut data, c, gate, &batches);
        if read.is_err() {
            gate.abandon();
        }
        drop(batches);
        let mut rows = 0u64;
        let mut failed = None;
        for loader in loaders {
            let loaded = loader
                .join()
                .unwrap_or_else(|_| Err(Error::failure("a COPY connection panicked")));
            match loaded {
                Ok(n) => rows += n.unwrap_or(0),
                // A connection's own error explains a stop best.
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if gate.commit.get() == Some(&true) {
            return i64::try_from(rows)
                .map_err(|_| Error::failure("the server reported an impossible row count"));
        }
        crate::interrupt::check()?;
        read.map_err(|e| {
            Error::integrity(format!(
                "reading the data of {} from {}: {e}",
                c.name(),
                dump.path
            ))
        })?;
        Err(Error::failure(format!(
            "loading {} was abandoned",
            c.name()
        )))
    })
}

/// One connection's part of [`copy_table_data`]: COPY the batches it takes
/// from `queue` inside a transaction, then commit or roll back as `gate`
/// decides once every connection is in. `None` when rolled back.
fn load_share(
    mut client: postgres::Client,
    queue: crossbeam_channel::Receiver<Vec<u8>>,
    gate: &Gate,
    target: &Target,
    db: &str,
    c: &DirectCopy,
) -> Result<Option<u64>> {
    let mut arrival = Arrival {
        gate,
        arrived: false,
    };
    let loaded = (|| {
        client
            .batch_execute("BEGIN READ WRITE")
            .map_err(|e| pg_err(target, db, e))?;
        let mut copy = client
            .copy_in(c.copy.as_str())
            .map_err(|e| pg_err(target, db, e))?;
        for batch in queue {
            copy.write_all(&batch)
                .map_err(|e| copy_failed(target, db, c, e))?;
        }
        if gate.abandoned() {
            // Dropped unfinished, the COPY is aborted.
            return Ok(None);
        }
        copy.finish().map(Some).map_err(|e| pg_err(target, db, e))
    })();
    if loaded.is_err() {
        gate.abandon();
    }
    arrival.arrive();
    let commit = gate.decide();
    match loaded {
        Ok(Some(rows)) if commit => {
            client
                .batch_execute("COMMIT")
                .map_err(|e| pg_err(target, db, e))?;
            Ok(Some(rows))
        }
        Ok(_) => {
            // Rolled back when the connection closes, too.
            let _ = client.batch_execute("ROLLBACK");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A failed write to a COPY: it carries the server's error, which is what
/// to report.
fn copy_failed(target: &Target, db: &str, c: &DirectCopy, e: std::io::Error) -> Error {
    match e.into_inner().map(|i| i.downcast::<postgres::Error>()) {
        Some(Ok(pg)) => pg_err(target, db, *pg),
        Some(Err(other)) => Error::failure(format!("loading {}: {other}", c.name())),
        None => Error::failure(format!("loading {}", c.name())),
    }
}

/// Read block `c` from `data` (positioned at its start) and send its rows
/// to `batches`, up to the end-of-data line.
fn send_rows(
    data: &mut crate::repository::FileReader<'_>,
    c: &DirectCopy,
    gate: &Gate,
    batches: &crossbeam_channel::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    let stopped = || std::io::Error::other("stopped");
    let mut batch = Vec::with_capacity(BATCH * 2);
    // Where the batch's last newline is (searched for in each piece only).
    let mut last_newline = None;
    let mut ended = false;
    copy_data_block(
        std::io::Read::take(data, c.block.end - c.block.start),
        c.int_size,
        c.block.dump_id,
        |piece| {
            if ended {
                return Ok(());
            }
            if let Some(i) = memchr::memrchr(b'\n', piece) {
                last_newline = Some(batch.len() + i);
            }
            batch.extend_from_slice(piece);
            if batch.len() < BATCH {
                return Ok(());
            }
            if gate.abandoned() || crate::interrupt::check().is_err() {
                return Err(stopped());
            }
            let Some(end) = last_newline.take() else {
                return Ok(()); // one row longer than a batch
            };
            let mut next = Vec::with_capacity(BATCH * 2);
            next.extend_from_slice(&batch[end + 1..]);
            batch.truncate(end + 1);
            ended = cut_end_marker(&mut batch);
            if ended {
                next.clear();
            }
            batches
                .send(std::mem::replace(&mut batch, next))
                .map_err(|_| stopped())
        },
    )?;
    if !ended {
        cut_end_marker(&mut batch);
    }
    if !batch.is_empty() {
        batches.send(batch).map_err(|_| stopped())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_data_line_and_what_follows_are_cut() {
        let cut = |s: &str| {
            let mut b = s.as_bytes().to_vec();
            let found = cut_end_marker(&mut b);
            (String::from_utf8(b).unwrap(), found)
        };
        assert_eq!(cut("1\ta\n2\tb\n\\.\n\n\n"), ("1\ta\n2\tb\n".into(), true));
        assert_eq!(cut("\\.\n\n"), (String::new(), true));
        assert_eq!(cut("1\n\\."), ("1\n".into(), true));
        // A value holding a backslash and a dot is written `\\.`: a row.
        assert_eq!(cut("1\n\\\\.\n2\n"), ("1\n\\\\.\n2\n".into(), false));
        // Empty lines are rows (an empty string in a one-column table).
        assert_eq!(cut("\n\n"), ("\n\n".into(), false));
    }
}
