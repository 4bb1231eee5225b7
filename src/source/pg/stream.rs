//! A dump read while it streams into the repository ([`StreamScan`]): each
//! table's row count and checksum, taken from the rows themselves, and
//! where the data blocks are ([`DataOffsets`]), so that neither the backup
//! nor a restore has to read the dump again for them.

use super::archive::{scan, CopySum, K_OFFSET_POS_NOT_SET};
use super::offsets::DataOffsets;
use std::io::{BufRead, Read};
use std::sync::mpsc::{Receiver, SyncSender};

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

#[cfg(test)]
mod tests {
    use super::super::archive::testing::archive;
    use super::super::archive::{copy_data_block, read_table_of_contents, CopySum, BLK_DATA};
    use super::super::offsets::{
        add_data_offsets, table_of_contents_len, write_recorded_offsets, DataOffsets,
    };
    use super::*;

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
}
