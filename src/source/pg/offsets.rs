//! Data offsets in a custom archive's table of contents: where each item's
//! data starts ([`DataOffsets`], recorded with the snapshot), and writing
//! them into a dump spooled for `pg_restore --jobs`.
//!
//! pg_dump writes a custom archive to a pipe without data offsets: it cannot
//! seek back to fill them in, so every TOC entry says "position not set".
//! `pg_restore --jobs` then has each worker search the file for its item by
//! reading every block header from the start; COPY data is written as one
//! length-prefixed block per row, so for a 5-million-row table that is
//! 5 million `fseeko` calls per search (20% of pg_restore's CPU, and a
//! restore 1.5× slower than from a file pg_dump wrote itself). The offsets
//! found while the dump streamed are written into the spooled file
//! ([`write_recorded_offsets`]); failing that, [`add_data_offsets`] reads it
//! once, front to back, and writes each data block's position into its TOC
//! entry, as pg_dump does when its output is seekable.

use super::archive::{scan, starts_block_of, Layout, ARCH_CUSTOM};
use super::archive::{K_OFFSET_POS_NOT_SET, K_OFFSET_POS_SET};
use crate::error::{Error, Result};
pub use crate::repo::postgres::DataOffsets;
use std::io::{BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

impl DataOffsets {
    /// Where the first data block starts: the header and the table of
    /// contents end there. `None` when the archive holds no data blocks.
    pub fn data_start(&self) -> Option<u64> {
        self.entries.iter().map(|e| e[1]).min()
    }

    /// Every data block of an archive of `archive_size` bytes, in file
    /// order: each runs to the next, the last to the end of the archive.
    pub(super) fn blocks(&self, archive_size: u64) -> Vec<Block> {
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

#[cfg(test)]
mod tests {
    use super::super::archive::testing::archive;
    use super::super::archive::{BLK_DATA, K_OFFSET_POS_SET};
    use super::*;

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
