//! Reading PostgreSQL custom-format archives (`pg_dump -Fc`), as far as
//! cairn needs them: the header and table of contents, the data blocks (a
//! table's data is its COPY text, in length-prefixed chunks), and a read of
//! the whole archive front to back ([`scan`]) that finds where each block
//! starts and, if asked, counts and hashes each table's rows.
//!
//! The layout follows pg_dump's `pg_backup_archiver.c` (`ReadHead`,
//! `ReadToc`, `ReadOffset`) and `pg_backup_custom.c` (data blocks), archive
//! versions 1.12 to 1.16 (PostgreSQL 9.5 to 17).

use super::rows::{copy_columns, RowHasher};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{BufRead, Read};

pub(super) const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
pub(super) const K_OFFSET_POS_NOT_SET: u8 = 1;
pub(super) const K_OFFSET_POS_SET: u8 = 2;
/// `format` byte of a custom archive (`archCustom`).
pub(super) const ARCH_CUSTOM: u8 = 1;

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
pub(super) struct OffsetField {
    pub(super) dump_id: i64,
    /// File position of the flag byte (the offset follows it).
    pub(super) at: u64,
    /// The flag: whether the position was set when the archive was written.
    pub(super) flag: u8,
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
pub(super) fn starts_block_of(header: &[u8], dump_id: u64) -> bool {
    matches!(header.first(), Some(&(BLK_DATA | BLK_BLOBS)))
        && u64::try_from(int_value(&header[1..])).ok() == Some(dump_id)
}

/// What a read of the whole archive found.
pub(super) struct Layout {
    /// Every TOC entry's offset field.
    pub(super) fields: Vec<OffsetField>,
    /// Each data block's position, by dump id.
    pub(super) blocks: HashMap<i64, u64>,
    /// Bytes of an offset.
    pub(super) off_size: usize,
    /// Rows of each `TABLE DATA` entry (only when asked for).
    pub(super) tables: Vec<CopySum>,
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
    // Grown as entries are read: a damaged count must not reserve memory
    // for a million entries the archive's bytes cannot hold.
    let mut entries = Vec::with_capacity(count.min(1024) as usize);
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
pub(super) fn scan<R: BufRead>(inner: &mut R, hash_rows: bool) -> std::io::Result<Option<Layout>> {
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

/// Custom archives as pg_dump writes them, for the tests of the files
/// that read them (and the fuzz seeds, through `crate::testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use crate::source::pg::archive::{ARCH_CUSTOM, BLK_DATA, K_OFFSET_POS_NOT_SET};

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

    pub fn archive(entries: &[(i64, bool)], rows: &[&str]) -> (Vec<u8>, Vec<usize>) {
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
}
