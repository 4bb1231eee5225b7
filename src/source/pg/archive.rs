//! PostgreSQL custom-format archives (`pg_dump -Fc`), as far as cairn needs
//! them: finding where each item's data starts, and recording it in the
//! table of contents; and, while a dump streams into the repository, each
//! table's row count and content checksum taken from the rows themselves
//! ([`StreamScan`], [`RowHasher`]).
//!
//! pg_dump writes a custom archive to a pipe without data offsets: it cannot
//! seek back to fill them in, so every TOC entry says "position not set".
//! `pg_restore --jobs` then has each worker search the file for its item by
//! reading every block header from the start; COPY data is written as one
//! length-prefixed block per row, so for a 5-million-row table that is
//! 5 million `fseeko` calls per search (20% of pg_restore's CPU, and a
//! restore 1.5× slower than from a file pg_dump wrote itself). Once the dump
//! is spooled to a file, [`add_data_offsets`] reads it once, front to back,
//! and writes each data block's position into its TOC entry, as pg_dump does
//! when its output is seekable. The layout follows pg_dump's
//! `pg_backup_archiver.c` (`ReadHead`, `ReadToc`, `ReadOffset`) and
//! `pg_backup_custom.c` (data blocks), archive versions 1.12 to 1.16
//! (PostgreSQL 9.5 to 17).

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
const K_OFFSET_POS_NOT_SET: u8 = 1;
const K_OFFSET_POS_SET: u8 = 2;
/// `format` byte of a custom archive (`archCustom`).
const ARCH_CUSTOM: u8 = 1;

/// A reader that knows its position and reads the archive's integers.
struct Archive<R> {
    inner: R,
    pos: u64,
    int_size: usize,
}

impl<R: BufRead> Archive<R> {
    fn bytes(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(out)?;
        self.pos += out.len() as u64;
        Ok(())
    }

    fn byte(&mut self) -> std::io::Result<u8> {
        let mut b = [0u8];
        self.bytes(&mut b)?;
        Ok(b[0])
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, least significant first.
    fn int(&mut self) -> std::io::Result<i64> {
        let n = 1 + self.int_size;
        let buf = self.inner.fill_buf()?;
        if buf.len() >= n {
            // One per COPY row: read it from the buffer, not byte by byte.
            let v = int_value(&buf[..n]);
            self.inner.consume(n);
            self.pos += n as u64;
            return Ok(v);
        }
        // int_size is at most 16 (checked where the header is read).
        let mut bytes = [0u8; 17];
        self.bytes(&mut bytes[..n])?;
        Ok(int_value(&bytes[..n]))
    }

    /// `ReadStr`: a length (`-1` = NULL), then that many bytes.
    fn string(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let n = self.int()?;
        if n < 0 {
            return Ok(None);
        }
        // Not allocated up front: a damaged length must not ask for gigabytes.
        let mut s = Vec::new();
        let got = (&mut self.inner).take(n as u64).read_to_end(&mut s)?;
        self.pos += got as u64;
        if (got as u64) < n as u64 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Some(s))
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        self.pos += copied;
        if copied < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Length-prefixed chunks up to a zero length (`_skipData`), their
    /// bytes handed to `each` as they are read.
    fn chunks(
        &mut self,
        mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        loop {
            let mut left = match self.int()? {
                0 => return Ok(()),
                n if n < 0 => return Err(bad("negative data chunk length")),
                n => n as u64,
            };
            while left > 0 {
                let buf = self.inner.fill_buf()?;
                if buf.is_empty() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                each(&buf[..k])?;
                self.inner.consume(k);
                self.pos += k as u64;
                left -= k as u64;
            }
        }
    }

    fn at_end(&mut self) -> std::io::Result<bool> {
        Ok(self.inner.fill_buf()?.is_empty())
    }
}

/// The value of a `ReadInt` field (sign byte first).
fn int_value(bytes: &[u8]) -> i64 {
    let mut v: i64 = 0;
    for (i, &b) in bytes[1..].iter().enumerate().take(8) {
        v |= i64::from(b) << (8 * i);
    }
    if bytes[0] != 0 {
        -v
    } else {
        v
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Where one TOC entry's data offset is stored.
struct OffsetField {
    dump_id: i64,
    /// File position of the flag byte (the offset follows it).
    at: u64,
    /// The flag: whether the position was set when the archive was written.
    flag: u8,
}

/// Where a dump's data blocks are, found while it streamed into the
/// repository: enough to fill in its TOC's data offsets at restore without
/// reading the dump again (stored with the snapshot, see spec/postgres.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataOffsets {
    /// Bytes of an offset in this archive.
    pub size: usize,
    /// `[position of an entry's offset field, position of its data block,
    /// the entry's dump id]`.
    pub entries: Vec<[u64; 3]>,
}

impl DataOffsets {
    /// Where the first data block starts: the header and the table of
    /// contents end there. `None` when the archive holds no data blocks.
    pub fn data_start(&self) -> Option<u64> {
        self.entries.iter().map(|e| e[1]).min()
    }

    /// Every data block of an archive of `archive_size` bytes, in file
    /// order: each runs to the next, the last to the end of the archive.
    fn blocks(&self, archive_size: u64) -> Vec<Block> {
        let mut starts: Vec<(u64, u64)> = self.entries.iter().map(|e| (e[1], e[2])).collect();
        starts.sort_unstable();
        let ends: Vec<u64> = starts
            .iter()
            .skip(1)
            .map(|s| s.0)
            .chain([archive_size])
            .collect();
        starts
            .iter()
            .zip(ends)
            .map(|(&(start, dump_id), end)| Block {
                dump_id,
                start,
                end: end.max(start),
            })
            .collect()
    }

    /// The largest data block of an archive of `archive_size` bytes.
    pub fn largest_block(&self, archive_size: u64) -> Option<Block> {
        self.blocks(archive_size)
            .into_iter()
            .max_by_key(|b| (b.end - b.start, std::cmp::Reverse(b.start)))
    }

    /// The largest data block's share of all data bytes in an archive of
    /// `archive_size` bytes.
    pub fn largest_share(&self, archive_size: u64) -> Option<f64> {
        let first = self.data_start()?;
        let total = archive_size.checked_sub(first).filter(|&t| t > 0)?;
        let largest = self.largest_block(archive_size)?;
        Some((largest.end - largest.start) as f64 / total as f64)
    }

    /// The integer size of the custom archive whose first 11 bytes are
    /// `head` ("PGDMP", major, minor, revision, int size, offset size,
    /// format), when it has this archive's offset size.
    fn int_size_of(&self, head: &[u8]) -> Option<usize> {
        let int_size = usize::from(*head.get(8)?);
        (head.get(..5)? == b"PGDMP"
            && head.get(10) == Some(&ARCH_CUSTOM)
            && usize::from(head[9]) == self.size
            && (1..=8).contains(&int_size))
        .then_some(int_size)
    }
}

/// Where one data block of a dump lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub dump_id: u64,
    pub start: u64,
    /// The next block's start, or the end of the archive.
    pub end: u64,
}

/// Hand the COPY text of a `TABLE DATA` block to `each`, piece by piece:
/// `block` must start with the block's first byte and end with its last
/// (`int_size` from the archive's header). An error when it does not hold a
/// data block of entry `dump_id`, or ends early.
pub fn copy_data_block<R: BufRead>(
    block: R,
    int_size: usize,
    dump_id: u64,
    each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut a = Archive {
        inner: block,
        pos: 0,
        int_size,
    };
    let kind = a.byte()?;
    let id = a.int()?;
    if kind != BLK_DATA || u64::try_from(id).ok() != Some(dump_id) {
        return Err(bad("the block is not the table's data block"));
    }
    a.chunks(each)
}

/// Whether `header` (a block's first `2 + int size` bytes) starts a data
/// block of entry `dump_id`.
fn starts_block_of(header: &[u8], dump_id: u64) -> bool {
    matches!(header.first(), Some(&(BLK_DATA | BLK_BLOBS)))
        && u64::try_from(int_value(&header[1..])).ok() == Some(dump_id)
}

/// The length of the header and table of contents of the archive whose
/// first bytes are `head`, checked against `recorded`: the header must give
/// the recorded offset size, and a data block of the recorded entry must
/// start where the first block was recorded (`head` must reach a few bytes
/// past it). An error says what did not match.
pub fn table_of_contents_len(head: &[u8], recorded: &DataOffsets) -> Result<usize> {
    let mismatch = |what: &str| {
        Error::integrity(format!(
            "the dump's {what} does not match the recorded data offsets"
        ))
    };
    let &[_, block, dump_id] = recorded
        .entries
        .iter()
        .min_by_key(|e| e[1])
        .ok_or_else(|| mismatch("data"))?;
    let int_size = recorded
        .int_size_of(head)
        .ok_or_else(|| mismatch("header"))?;
    let start = usize::try_from(block).map_err(|_| mismatch("size"))?;
    let header = head
        .get(start..start + 2 + int_size)
        .ok_or_else(|| mismatch("size"))?;
    if !starts_block_of(header, dump_id) {
        return Err(mismatch("first data block"));
    }
    Ok(start)
}

/// Write `recorded` (taken while the dump streamed) into the TOC of the
/// spooled dump at `path`. The archive's header must give the recorded
/// offset size, every field must still say "position not set", and at every
/// block position must start a data block of the recorded entry; otherwise
/// nothing is written and the error says what did not match.
pub fn write_recorded_offsets(path: &Path, recorded: &DataOffsets) -> Result<Offsets> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let read = |at: u64, n: usize| {
        let mut b = vec![0u8; n];
        file.read_exact_at(&mut b, at)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok::<_, Error>(b)
    };
    let int_size = recorded.int_size_of(&read(0, 11)?).ok_or_else(|| {
        Error::integrity("the spooled dump's header does not match the recorded data offsets")
    })?;
    for &[at, block, dump_id] in &recorded.entries {
        let field = read(at, 1 + recorded.size)?;
        if field[0] != K_OFFSET_POS_NOT_SET || field[1..].iter().any(|&b| b != 0) {
            return Err(Error::integrity(format!(
                "the dump's TOC field at {at} is not an unset data offset"
            )));
        }
        if !starts_block_of(&read(block, 2 + int_size)?, dump_id) {
            return Err(Error::integrity(format!(
                "no data block of entry {dump_id} at {block} of the dump"
            )));
        }
    }
    for &[at, block, _] in &recorded.entries {
        file.write_all_at(&offset_field(block, recorded.size), at)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(Offsets {
        recorded: recorded.entries.len(),
        already: 0,
    })
}

/// A TOC offset field that says "position set" and points at `block`.
fn offset_field(block: u64, size: usize) -> Vec<u8> {
    let mut field = vec![K_OFFSET_POS_SET];
    field.extend((0..size).map(|i| if i < 8 { (block >> (8 * i)) as u8 } else { 0 }));
    field
}

/// What [`add_data_offsets`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// TOC entries that now point at their data.
    pub recorded: usize,
    /// Entries that already had one (the archive was written to a file).
    pub already: usize,
}

/// Record in the TOC of the custom archive at `path` the position of every
/// data block whose entry has none. The file is changed only after it was
/// read to its end and every block matched an entry; an archive of another
/// format or version is left as it is (`Ok` with nothing recorded).
pub fn add_data_offsets(path: &Path) -> Result<Offsets> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let scan = scan(&mut reader, false)
        .map_err(|e| Error::io(format!("reading the archive {}", path.display()), e))?;
    let Some(Layout {
        fields,
        blocks,
        off_size,
        ..
    }) = scan
    else {
        return Ok(Offsets::default());
    };
    let mut done = Offsets::default();
    for f in &fields {
        let mut current = vec![0u8; 1 + off_size];
        file.read_exact_at(&mut current, f.at)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if current[0] != K_OFFSET_POS_NOT_SET || current[1..].iter().any(|&b| b != 0) {
            done.already += usize::from(current[0] == K_OFFSET_POS_SET);
            continue;
        }
        let Some(&block) = blocks.get(&f.dump_id) else {
            continue;
        };
        file.write_all_at(&offset_field(block, off_size), f.at)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        done.recorded += 1;
    }
    Ok(done)
}

/// What a read of the whole archive found.
struct Layout {
    /// Every TOC entry's offset field.
    fields: Vec<OffsetField>,
    /// Each data block's position, by dump id.
    blocks: HashMap<i64, u64>,
    /// Bytes of an offset.
    off_size: usize,
    /// Rows of each `TABLE DATA` entry (only when asked for).
    tables: Vec<CopySum>,
}

/// Row count and checksum of one table's data as a dump holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySum {
    pub schema: String,
    pub table: String,
    /// The column list of the entry's COPY statement.
    pub columns: String,
    pub rows: i64,
    pub sum: u128,
}

/// The column names of a column list as [`copy_columns`] gives it
/// (`a, "B c", "x""y"`), unquoted; `None` if it is not such a list.
pub fn split_columns(list: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        let (name, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') if quoted[i + 1..].starts_with('"') => {
                        name.push('"');
                        chars.next();
                    }
                    (i, '"') => break i + 1,
                    (_, c) => name.push(c),
                }
            };
            (name, &quoted[end..])
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let name = rest[..end].trim();
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if !plain {
                return None;
            }
            (name.to_string(), &rest[end..])
        };
        names.push(name);
        rest = after.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(names)
}

/// The column list of a COPY statement as pg_dump writes it,
/// `COPY schema.table (a, "B c") FROM stdin;`: the text between the first
/// parenthesis outside double quotes and its match. A table without columns
/// has an empty list.
pub fn copy_columns(statement: &str) -> Option<String> {
    let mut quoted = false;
    let mut start = None;
    for (i, c) in statement.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted && start.is_none() => start = Some(i + 1),
            ')' if !quoted => return start.map(|s| statement[s..i].to_string()),
            _ => {}
        }
    }
    statement
        .trim_end()
        .ends_with("FROM stdin;")
        .then(String::new)
}

/// Counts the rows of COPY text (one row a line) and sums each row's
/// XXH3-128, so the sum does not depend on the rows' order. The same
/// hasher reads a dump's data at backup and `COPY … TO STDOUT` from a
/// restored table, so both sides hash the same bytes.
#[derive(Debug, Default)]
pub struct RowHasher {
    /// A row split across two `update` calls.
    carry: Vec<u8>,
    rows: i64,
    sum: u128,
    /// The end-of-data marker was read.
    ended: bool,
}

impl RowHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        while let Some(i) = memchr::memchr(b'\n', data) {
            if self.carry.is_empty() {
                self.row(&data[..i]);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&data[..i]);
                self.row(&line);
                line.clear();
                self.carry = line;
            }
            data = &data[i + 1..];
        }
        self.carry.extend_from_slice(data);
    }

    fn row(&mut self, line: &[u8]) {
        // pg_dump ends a table's data with `\.` and blank lines; no row can
        // be `\.` (a backslash in a value is written `\\`).
        if line == b"\\." {
            self.ended = true;
        }
        if !self.ended {
            self.rows += 1;
            self.sum = self.sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(line));
        }
    }

    /// Row count and checksum (a last row without its newline counts).
    pub fn finish(mut self) -> (i64, u128) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.row(&line);
        }
        (self.rows, self.sum)
    }
}

/// The checksum as recorded: 32 hex digits.
pub fn sum_hex(sum: u128) -> String {
    format!("{sum:032x}")
}

/// Reads what a [`StreamScan`]'s sender hands over, as one byte stream.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.current = next;
                    self.at = 0;
                }
                Err(_) => break,
            }
        }
        Ok(&self.current[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
    }
}

/// A custom archive read while it streams past (into the repository):
/// [`StreamScan::feed`] hands it each piece, [`StreamScan::finish`] gives
/// each table's [`CopySum`]. The reading runs on a thread of its own; if
/// the stream is not an archive this module knows, or is cut short, the
/// result says so and the stream itself is not affected.
pub struct StreamScan {
    tx: Option<SyncSender<Vec<u8>>>,
    thread: std::thread::JoinHandle<std::io::Result<Option<Streamed>>>,
}

/// What [`StreamScan`] found in a dump.
#[derive(Debug)]
pub struct Streamed {
    pub tables: Vec<CopySum>,
    pub offsets: DataOffsets,
}

impl StreamScan {
    /// With `hash_rows` false only the data blocks are located: the caller
    /// sums every table in SQL (see `scan`).
    pub fn start(hash_rows: bool) -> StreamScan {
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let thread = std::thread::spawn(move || {
            let mut reader = ChannelReader {
                rx,
                current: Vec::new(),
                at: 0,
            };
            Ok(scan(&mut reader, hash_rows)?.map(|l| Streamed {
                offsets: DataOffsets {
                    size: l.off_size,
                    entries: l
                        .fields
                        .iter()
                        .filter(|f| f.flag == K_OFFSET_POS_NOT_SET)
                        .filter_map(|f| {
                            Some([
                                f.at,
                                *l.blocks.get(&f.dump_id)?,
                                u64::try_from(f.dump_id).ok()?,
                            ])
                        })
                        .collect(),
                },
                tables: l.tables,
            }))
        });
        StreamScan {
            tx: Some(tx),
            thread,
        }
    }

    /// The next bytes of the stream (ignored, and no longer copied, once
    /// the reader has stopped: an archive it does not know, or a failure).
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(tx) = &self.tx {
            if tx.send(bytes.to_vec()).is_err() {
                self.tx = None;
            }
        }
    }

    /// Every table's rows and where the data blocks are; `Ok(None)` for an
    /// archive of another format or version, `Err` for one that could not
    /// be read to its end.
    pub fn finish(mut self) -> std::io::Result<Option<Streamed>> {
        self.tx = None;
        self.thread
            .join()
            .map_err(|_| std::io::Error::other("the dump reader panicked"))?
    }
}

/// One entry of an archive's table of contents: the fields cairn uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    pub dump_id: i64,
    /// `TABLE DATA`, `ENCODING`, `TABLE`, …
    pub desc: String,
    pub tag: String,
    pub namespace: String,
    /// The SQL that creates the object (for `ENCODING`: its `SET`).
    pub defn: String,
    /// The COPY statement of a `TABLE DATA` entry.
    pub copy: Option<String>,
    /// File position of the flag byte of its data offset field.
    at: u64,
    /// That flag: whether the position was set when the archive was written.
    flag: u8,
}

/// An archive's header fields and table of contents.
#[derive(Clone, Debug)]
pub struct Toc {
    pub int_size: usize,
    off_size: usize,
    /// Whether the data blocks are compressed (then they are not COPY text).
    pub compressed: bool,
    pub entries: Vec<TocEntry>,
}

impl Toc {
    pub fn entry(&self, dump_id: u64) -> Option<&TocEntry> {
        let id = i64::try_from(dump_id).ok()?;
        self.entries.iter().find(|e| e.dump_id == id)
    }

    /// The dump's client encoding, from its `ENCODING` entry
    /// (`SET client_encoding = 'UTF8';`), when it names one plainly.
    pub fn encoding(&self) -> Option<&str> {
        let e = self.entries.iter().find(|e| e.desc == "ENCODING")?;
        let (_, rest) = e.defn.split_once('\'')?;
        let (name, _) = rest.split_once('\'')?;
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .then_some(name)
    }

    /// `standard_conforming_strings` as the dump was written with it
    /// (its `STDSTRINGS` entry).
    pub fn standard_strings(&self) -> Option<bool> {
        let e = self.entries.iter().find(|e| e.desc == "STDSTRINGS")?;
        if e.defn.contains("'on'") {
            Some(true)
        } else if e.defn.contains("'off'") {
            Some(false)
        } else {
            None
        }
    }
}

/// The table of contents of the custom archive whose header and TOC are
/// `head` (see [`table_of_contents_len`]).
pub fn read_table_of_contents(head: &[u8]) -> Result<Toc> {
    let mut a = Archive {
        inner: head,
        pos: 0,
        int_size: 4,
    };
    read_toc(&mut a)
        .map_err(|e| Error::integrity(format!("reading the dump's table of contents: {e}")))?
        .ok_or_else(|| Error::integrity("the dump is not a custom archive this version reads"))
}

/// Read an archive's header and table of contents (`ReadHead`, `ReadToc`);
/// `None` for an archive of another format or version.
fn read_toc<R: BufRead>(a: &mut Archive<R>) -> std::io::Result<Option<Toc>> {
    let mut magic = [0u8; 5];
    a.bytes(&mut magic)?;
    if &magic != b"PGDMP" {
        return Ok(None);
    }
    let (major, minor) = (a.byte()?, a.byte()?);
    if major != 1 || !(12..=16).contains(&minor) {
        return Ok(None);
    }
    let _revision = a.byte()?;
    a.int_size = usize::from(a.byte()?);
    let off_size = usize::from(a.byte()?);
    if a.int_size == 0 || a.int_size > 16 || off_size == 0 || off_size > 16 {
        return Err(bad("implausible integer or offset size"));
    }
    if a.byte()? != ARCH_CUSTOM {
        return Ok(None);
    }
    let compressed = if minor >= 15 {
        a.byte()? != 0 // compression algorithm; 0 = none
    } else {
        a.int()? != 0 // compression level; 0 = none
    };
    for _ in 0..7 {
        a.int()?; // creation time: sec, min, hour, mday, mon, year, isdst
    }
    a.string()?; // database name
    a.string()?; // server version
    a.string()?; // pg_dump version

    let count = a.int()?;
    if count < 0 {
        return Err(bad("negative TOC entry count"));
    }
    let text = |s: Option<Vec<u8>>| String::from_utf8_lossy(&s.unwrap_or_default()).into_owned();
    let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let dump_id = a.int()?;
        a.int()?; // had dumper
        a.string()?; // table oid
        a.string()?; // oid
        let tag = text(a.string()?);
        let desc = text(a.string()?);
        a.int()?; // section
        let defn = text(a.string()?);
        a.string()?; // drop statement
        let copy = a.string()?.map(|c| text(Some(c)));
        let namespace = text(a.string()?);
        a.string()?; // tablespace
        if minor >= 14 {
            a.string()?; // table access method
        }
        if minor >= 16 {
            a.int()?; // relkind
        }
        a.string()?; // owner
        a.string()?; // "false" (WITH OIDS)
        while a.string()?.is_some() {} // dependencies, NULL-terminated
        let at = a.pos;
        let flag = a.byte()?;
        a.skip(off_size as u64)?;
        entries.push(TocEntry {
            dump_id,
            desc,
            tag,
            namespace,
            defn,
            copy,
            at,
            flag,
        });
    }
    Ok(Some(Toc {
        int_size: a.int_size,
        off_size,
        compressed,
        entries,
    }))
}

/// Read the archive to its end; `None` for one this module does not know.
/// With `hash_rows`, each `TABLE DATA` entry's rows are counted and hashed.
fn scan<R: BufRead>(inner: &mut R, hash_rows: bool) -> std::io::Result<Option<Layout>> {
    let mut a = Archive {
        inner,
        pos: 0,
        int_size: 4,
    };
    let Some(toc) = read_toc(&mut a)? else {
        return Ok(None);
    };
    if toc.compressed && hash_rows {
        // The data is compressed: its blocks are not COPY text.
        return Ok(None);
    }
    let off_size = toc.off_size;
    let mut fields = Vec::with_capacity(toc.entries.len());
    let mut table_entries: HashMap<i64, (String, String, String)> = HashMap::new();
    for e in toc.entries {
        fields.push(OffsetField {
            dump_id: e.dump_id,
            at: e.at,
            flag: e.flag,
        });
        if hash_rows && e.desc == "TABLE DATA" {
            // An entry whose COPY statement gives no column list is not
            // summed here: its table is then summed in SQL.
            if let Some(columns) = e.copy.as_deref().and_then(copy_columns) {
                table_entries.insert(e.dump_id, (e.namespace, e.tag, columns));
            }
        }
    }
    let entry_ids: std::collections::HashSet<i64> = fields.iter().map(|f| f.dump_id).collect();
    let mut blocks = HashMap::new();
    let mut tables = Vec::new();
    while !a.at_end()? {
        let at = a.pos;
        let kind = a.byte()?;
        let dump_id = a.int()?;
        match kind {
            BLK_DATA => match table_entries.remove(&dump_id) {
                Some((schema, table, columns)) => {
                    let mut rows = RowHasher::default();
                    a.chunks(|b| {
                        rows.update(b);
                        Ok(())
                    })?;
                    let (rows, sum) = rows.finish();
                    tables.push(CopySum {
                        schema,
                        table,
                        columns,
                        rows,
                        sum,
                    });
                }
                None => a.chunks(|_| Ok(()))?,
            },
            BLK_BLOBS => loop {
                match a.int()? {
                    0 => break,
                    _oid => a.chunks(|_| Ok(()))?,
                }
            },
            _ => return Err(bad("unknown data block type")),
        }
        if !entry_ids.contains(&dump_id) {
            return Err(bad("a data block names no TOC entry"));
        }
        blocks.insert(dump_id, at);
    }
    Ok(Some(Layout {
        fields,
        blocks,
        off_size,
        tables,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal custom archive as pg_dump 15 writes it to a pipe.
    struct Writer(Vec<u8>);

    impl Writer {
        fn int(&mut self, v: i64) {
            self.0.push(u8::from(v < 0));
            self.0
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn string(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.0.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    fn archive(entries: &[(i64, bool)], rows: &[&str]) -> (Vec<u8>, Vec<usize>) {
        let mut w = Writer(b"PGDMP".to_vec());
        w.0.extend_from_slice(&[1, 14, 0, 4, 8, ARCH_CUSTOM]);
        w.int(0);
        for v in [1, 2, 3, 4, 5, 125, 0] {
            w.int(v);
        }
        for s in ["app", "15.8", "15.8"] {
            w.string(Some(s));
        }
        w.int(entries.len() as i64);
        let mut fields = Vec::new();
        for &(id, data) in entries {
            w.int(id);
            w.int(i64::from(data));
            let tag = format!("t{id}");
            for s in [
                Some("0"),
                Some("0"),
                Some(tag.as_str()),
                Some(if data { "TABLE DATA" } else { "TABLE" }),
            ] {
                w.string(s);
            }
            w.int(if data { 3 } else { 2 });
            let copy = format!("COPY public.{tag} (a, \"b (x)\") FROM stdin;\n");
            for s in [
                Some(""),
                Some(""),
                data.then_some(copy.as_str()),
                Some("public"),
                Some(""),
                Some("heap"),
                Some("me"),
                Some("false"),
            ] {
                w.string(s);
            }
            w.string(Some("7"));
            w.string(None);
            fields.push(w.0.len());
            w.0.push(if data { K_OFFSET_POS_NOT_SET } else { 3 });
            w.0.extend_from_slice(&[0; 8]);
        }
        for &(id, data) in entries {
            if data {
                w.0.push(BLK_DATA);
                w.int(id);
                for r in rows {
                    w.int(r.len() as i64);
                    w.0.extend_from_slice(r.as_bytes());
                }
                w.int(0);
            }
        }
        (w.0, fields)
    }

    #[test]
    fn offsets_of_data_blocks_are_recorded_in_the_toc() {
        let (bytes, fields) = archive(&[(7, false), (8, true), (9, true)], &["1\ta\n", "2\tb\n"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump");
        std::fs::write(&path, &bytes).unwrap();
        let done = add_data_offsets(&path).unwrap();
        assert_eq!(
            done,
            Offsets {
                recorded: 2,
                already: 0
            }
        );
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), bytes.len());
        // The entry without data is untouched; the others point at blocks
        // that start with their block type and dump id.
        assert_eq!(after[fields[0]], 3);
        for (i, id) in [(1, 8u8), (2, 9u8)] {
            assert_eq!(after[fields[i]], K_OFFSET_POS_SET);
            let at = u64::from_le_bytes(after[fields[i] + 1..fields[i] + 9].try_into().unwrap())
                as usize;
            assert_eq!(&after[at..at + 6], &[BLK_DATA, 0, id, 0, 0, 0]);
        }
        // A second pass finds them set and changes nothing.
        assert_eq!(
            add_data_offsets(&path).unwrap(),
            Offsets {
                recorded: 0,
                already: 2
            }
        );
        assert_eq!(std::fs::read(&path).unwrap(), after);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_left_unchanged() {
        let (bytes, _) = archive(&[(8, true)], &["1\ta\n"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(add_data_offsets(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), &bytes[..bytes.len() - 3]);
        std::fs::write(&path, b"--\n-- PostgreSQL database dump\n").unwrap();
        assert_eq!(add_data_offsets(&path).unwrap(), Offsets::default());
    }

    fn xxh(line: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(line.as_bytes())
    }

    #[test]
    fn a_streamed_archive_gives_each_tables_rows_count_and_sum() {
        // pg_dump ends each table's data with a `\.` block and blank lines.
        let rows = ["1\ta\n", "2\t\\N\n", "\\.\n\n\n"];
        let (bytes, _) = archive(&[(7, false), (8, true), (9, true)], &rows);
        let mut scan = StreamScan::start(true);
        // Pieces of 3 bytes: integers and rows split across them.
        for piece in bytes.chunks(3) {
            scan.feed(piece);
        }
        let streamed = scan.finish().unwrap().unwrap();
        let tables = streamed.tables;
        let sum = xxh("1\ta").wrapping_add(xxh("2\t\\N"));
        for (t, name) in tables.iter().zip(["t8", "t9"]) {
            assert_eq!(
                t,
                &CopySum {
                    schema: "public".into(),
                    table: name.into(),
                    columns: "a, \"b (x)\"".into(),
                    rows: 2,
                    sum,
                }
            );
        }
        assert_eq!(tables.len(), 2);

        // The offsets found in the stream are those a read of the file
        // records, and give the same file.
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        assert_eq!(streamed.offsets.entries.len(), 2);
        assert_eq!(
            write_recorded_offsets(&a, &streamed.offsets)
                .unwrap()
                .recorded,
            2
        );
        assert_eq!(add_data_offsets(&b).unwrap().recorded, 2);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // Applied twice, or to another file, they are refused and change nothing.
        assert!(write_recorded_offsets(&a, &streamed.offsets).is_err());
        let (other, _) = archive(&[(8, true)], &["1\ta\n"]);
        std::fs::write(&b, &other).unwrap();
        assert!(write_recorded_offsets(&b, &streamed.offsets).is_err());
        assert_eq!(std::fs::read(&b).unwrap(), other);
    }

    #[test]
    fn a_stream_cut_short_or_foreign_is_reported_not_summed() {
        let (bytes, _) = archive(&[(8, true)], &["1\ta\n"]);
        let mut scan = StreamScan::start(true);
        scan.feed(&bytes[..bytes.len() - 3]);
        assert!(scan.finish().is_err());
        let mut scan = StreamScan::start(true);
        scan.feed(b"--\n-- PostgreSQL database dump\n");
        assert!(scan.finish().unwrap().is_none());
    }

    #[test]
    fn row_sums_ignore_order_and_how_the_text_is_split() {
        let mut a = RowHasher::default();
        a.update(b"x\t1\ny\t2\ny\t2\n");
        let mut b = RowHasher::default();
        for piece in [&b"y\t"[..], b"2\ny", b"\t2", b"\nx\t1\n"] {
            b.update(piece);
        }
        let (ra, sa) = a.finish();
        assert_eq!((ra, sa), b.finish());
        // Duplicates count: a repeated row does not cancel out.
        assert_eq!(ra, 3);
        assert_eq!(
            sa,
            xxh("x\t1")
                .wrapping_add(xxh("y\t2"))
                .wrapping_add(xxh("y\t2"))
        );
        let mut c = RowHasher::default();
        c.update(b"x\t1\ny\t2\n");
        assert_ne!(c.finish().1, sa);
    }

    #[test]
    fn the_column_list_is_read_from_pg_dumps_copy_statement() {
        assert_eq!(
            copy_columns("COPY public.t (a, \"b (x)\", c) FROM stdin;\n").as_deref(),
            Some("a, \"b (x)\", c")
        );
        assert_eq!(
            copy_columns("COPY \"we(ird\".\"t)\" (x) FROM stdin;\n").as_deref(),
            Some("x")
        );
        assert_eq!(
            copy_columns("COPY public.empty  FROM stdin;\n").as_deref(),
            Some("")
        );
        assert_eq!(copy_columns("SELECT 1"), None);
    }

    #[test]
    fn recorded_offsets_must_name_the_blocks_they_point_at() {
        let (bytes, _) = archive(&[(8, true), (9, true)], &["1\ta\n"]);
        let mut scan = StreamScan::start(true);
        scan.feed(&bytes);
        let mut offsets = scan.finish().unwrap().unwrap().offsets;
        assert_eq!(offsets.entries.len(), 2);
        // Swapped: each field would point at the other entry's data.
        let (b0, b1) = (offsets.entries[0][1], offsets.entries[1][1]);
        offsets.entries[0][1] = b1;
        offsets.entries[1][1] = b0;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump");
        std::fs::write(&path, &bytes).unwrap();
        assert!(write_recorded_offsets(&path, &offsets).is_err());
        offsets.entries[0][1] = b0;
        offsets.entries[1][1] = b1;
        offsets.size = 4;
        assert!(write_recorded_offsets(&path, &offsets).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn the_table_of_contents_ends_at_the_recorded_first_block() {
        let (bytes, _) = archive(&[(7, false), (8, true), (9, true)], &["1\ta\n"]);
        let mut scan = StreamScan::start(true);
        scan.feed(&bytes);
        let mut offsets = scan.finish().unwrap().unwrap().offsets;
        let start = offsets.data_start().unwrap() as usize;
        assert_eq!(table_of_contents_len(&bytes, &offsets).unwrap(), start);
        // A block of entry 8 starts there, and the TOC reaches up to it.
        assert_eq!(bytes[start], BLK_DATA);
        assert!(table_of_contents_len(&bytes[..start + 3], &offsets).is_err());
        // Offsets of another dump: the block there is not the one recorded.
        offsets.entries.iter_mut().for_each(|e| e[2] += 1);
        assert!(table_of_contents_len(&bytes, &offsets).is_err());
        offsets.entries.iter_mut().for_each(|e| e[2] -= 1);
        offsets.size = 4;
        assert!(table_of_contents_len(&bytes, &offsets).is_err());
        assert!(table_of_contents_len(&bytes, &DataOffsets::default()).is_err());
    }

    #[test]
    fn an_empty_table_has_no_rows_and_a_compressed_archive_no_sums() {
        let (bytes, _) = archive(&[(8, true)], &["\\.\n\n\n"]);
        let mut scan = StreamScan::start(true);
        scan.feed(&bytes);
        let tables = scan.finish().unwrap().unwrap().tables;
        assert_eq!((tables[0].rows, tables[0].sum), (0, 0));
        // Compression level 6 (archive 1.14): the blocks are not COPY text.
        let (mut bytes, _) = archive(&[(8, true)], &["1\ta\n"]);
        bytes[12] = 6;
        let mut scan = StreamScan::start(true);
        scan.feed(&bytes);
        assert!(scan.finish().unwrap().is_none());
    }

    #[test]
    fn column_lists_split_into_names() {
        assert_eq!(
            split_columns("a, \"B c\", \"x\"\"y\", d_1").unwrap(),
            ["a", "B c", "x\"y", "d_1"]
        );
        assert_eq!(split_columns("").unwrap(), Vec::<String>::new());
        assert_eq!(split_columns("a) TO PROGRAM 'x' --"), None);
        assert_eq!(split_columns("\"open"), None);
    }

    #[test]
    fn the_table_of_contents_and_a_tables_copy_text_are_read() {
        let rows = ["1\tx\n", "2\ty\n", "\\.\n\n\n"];
        let (a, _) = archive(&[(7, false), (8, true), (9, true)], &rows);
        let mut scan = StreamScan::start(false);
        scan.feed(&a);
        let offsets = scan.finish().unwrap().unwrap().offsets;
        let start = offsets.data_start().unwrap() as usize;
        let toc = read_table_of_contents(&a[..start]).unwrap();
        assert_eq!(toc.entries.len(), 3);
        assert!(!toc.compressed);
        let e = toc.entry(8).unwrap();
        assert_eq!((e.desc.as_str(), e.tag.as_str()), ("TABLE DATA", "t8"));
        assert_eq!(e.namespace, "public");
        assert_eq!(
            e.copy.as_deref(),
            Some("COPY public.t8 (a, \"b (x)\") FROM stdin;\n")
        );
        assert_eq!(toc.entry(7).unwrap().copy, None);
        // The block of entry 8 runs up to the block of entry 9.
        let b = offsets.blocks(a.len() as u64)[0];
        assert_eq!(b.dump_id, 8);
        let block = &a[b.start as usize..b.end as usize];
        let mut text = Vec::new();
        copy_data_block(block, toc.int_size, 8, |p| {
            text.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
        assert_eq!(text, rows.concat().as_bytes());
        // Another entry's id, or a block cut short, is an error.
        let ignore = |_: &[u8]| Ok(());
        assert!(copy_data_block(block, toc.int_size, 9, ignore).is_err());
        assert!(copy_data_block(&block[..block.len() - 3], toc.int_size, 8, ignore).is_err());
        // Bytes that are not an archive are refused, not misread.
        assert!(read_table_of_contents(b"PGDMQ and more").is_err());
    }

    #[test]
    fn largest_block_share_and_where_data_starts() {
        // Blocks at 100, 200 and 1000 of a 1100-byte archive: 100, 800, 100.
        let o = DataOffsets {
            size: 8,
            entries: vec![[40, 1000, 3], [20, 100, 1], [30, 200, 2]],
        };
        assert_eq!(o.data_start(), Some(100));
        assert_eq!(o.largest_share(1100), Some(0.8));
        assert_eq!(
            o.largest_block(1100),
            Some(Block {
                dump_id: 2,
                start: 200,
                end: 1000
            })
        );
        // No data blocks, or an archive size that cannot hold them.
        assert_eq!(DataOffsets::default().data_start(), None);
        assert_eq!(DataOffsets::default().largest_share(10), None);
        assert_eq!(o.largest_share(100), None);
    }
}
