//! PostgreSQL custom-format archives (`pg_dump -Fc`), as far as cairn needs
//! them: finding where each item's data starts, and recording it in the
//! table of contents.
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
        let negative = self.byte()? != 0;
        let mut v: i64 = 0;
        for i in 0..self.int_size {
            let b = i64::from(self.byte()?);
            if i < 8 {
                v |= b << (8 * i);
            }
        }
        Ok(if negative { -v } else { v })
    }

    /// `ReadStr`: a length (`-1` = NULL), then that many bytes.
    fn string(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let n = self.int()?;
        if n < 0 {
            return Ok(None);
        }
        let mut s = vec![0u8; n as usize];
        self.bytes(&mut s)?;
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

    /// Length-prefixed chunks up to a zero length (`_skipData`).
    fn skip_chunks(&mut self) -> std::io::Result<()> {
        loop {
            match self.int()? {
                0 => return Ok(()),
                n if n < 0 => return Err(bad("negative data chunk length")),
                n => self.skip(n as u64)?,
            }
        }
    }

    fn at_end(&mut self) -> std::io::Result<bool> {
        Ok(self.inner.fill_buf()?.is_empty())
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
    let scan = scan(&mut reader)
        .map_err(|e| Error::io(format!("reading the archive {}", path.display()), e))?;
    let Some(Layout {
        fields,
        blocks,
        off_size,
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
        let mut field = vec![K_OFFSET_POS_SET];
        field.extend((0..off_size).map(|i| if i < 8 { (block >> (8 * i)) as u8 } else { 0 }));
        file.write_all_at(&field, f.at)
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
}

/// Read the archive to its end; `None` for one this module does not know.
fn scan<R: BufRead>(inner: &mut R) -> std::io::Result<Option<Layout>> {
    let mut a = Archive {
        inner,
        pos: 0,
        int_size: 4,
    };
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
    if minor >= 15 {
        a.byte()?; // compression algorithm
    } else {
        a.int()?; // compression level
    }
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
    let mut fields = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let dump_id = a.int()?;
        a.int()?; // had dumper
        a.string()?; // table oid
        a.string()?; // oid
        a.string()?; // tag
        a.string()?; // desc
        a.int()?; // section
        a.string()?; // defn
        a.string()?; // drop statement
        a.string()?; // copy statement
        a.string()?; // namespace
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
        let _flag = a.byte()?;
        a.skip(off_size as u64)?;
        fields.push(OffsetField { dump_id, at });
    }
    let mut blocks = HashMap::new();
    while !a.at_end()? {
        let at = a.pos;
        let kind = a.byte()?;
        let dump_id = a.int()?;
        match kind {
            BLK_DATA => a.skip_chunks()?,
            BLK_BLOBS => loop {
                match a.int()? {
                    0 => break,
                    _oid => a.skip_chunks()?,
                }
            },
            _ => return Err(bad("unknown data block type")),
        }
        if !fields.iter().any(|f| f.dump_id == dump_id) {
            return Err(bad("a data block names no TOC entry"));
        }
        blocks.insert(dump_id, at);
    }
    Ok(Some(Layout {
        fields,
        blocks,
        off_size,
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
            for s in [
                Some("0"),
                Some("0"),
                Some("t"),
                Some(if data { "TABLE DATA" } else { "TABLE" }),
            ] {
                w.string(s);
            }
            w.int(if data { 3 } else { 2 });
            for s in [
                Some(""),
                Some(""),
                None,
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
}
