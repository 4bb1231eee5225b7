//! Reading the records of one archived WAL segment, far enough to find the
//! time of its last transaction commit or abort. Recovery to a time stops
//! at those records only (by the time in them), so the newest one in the
//! archive is as far as a point-in-time restore can go.
//!
//! PostgreSQL 15's layout (`access/xlog_internal.h`, `access/xlogrecord.h`,
//! `access/xact.h`), little-endian as the server writes it on x86 and ARM:
//!
//! ```text
//! page (xlp_xlog_blcksz, 8 KiB):  page header | record bytes …
//!   header: magic u16, info u16, tli u32, pageaddr u64, rem_len u32  (24 bytes, MAXALIGNed)
//!   first page of a segment: + sysid u64, seg_size u32, xlog_blcksz u32   (40 bytes)
//!   XLP_FIRST_IS_CONTRECORD: the page starts with rem_len bytes of a record begun earlier
//! record (MAXALIGNed, may cross pages and its own header may too):
//!   tot_len u32, xid u32, prev u64, info u8, rmid u8, pad u16, crc u32    (24 bytes)
//!   block headers … | XLR_BLOCK_ID_DATA_SHORT u8 len / _LONG u32 len | block data … | main data
//! commit / abort main data: xact_time i64 (µs since 2000-01-01 UTC), …
//! ```
//!
//! The scan ends where PostgreSQL's own reader would: a zero length, a
//! record whose CRC or back link is wrong, a page that is not the next one
//! of this segment, an XLOG_SWITCH record, or the segment's end. A record
//! that runs on into the next segment is not read (its main data is there).

use jiff::Timestamp;

/// What one scan of a segment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Records that start in this segment and were read whole.
    pub records: usize,
    /// The time of the last commit or abort record (COMMIT, ABORT,
    /// COMMIT PREPARED, ABORT PREPARED) among them.
    pub last_xact_time: Option<Timestamp>,
}

/// Why a segment could not be read as WAL at all.
#[derive(Debug, PartialEq, Eq)]
pub struct WalFormatError(pub String);

impl std::fmt::Display for WalFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Page magic numbers of the versions whose record layout this reads:
/// 15 (0xD110), and 16 (0xD113) and 17 (0xD116), which changed nothing this
/// reader looks at (only 15 is tested here).
const PAGE_MAGICS: [u16; 3] = [0xD110, 0xD113, 0xD116];
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`.
const CRC_OFFSET: usize = 20;

const RM_XLOG_ID: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;
const RM_XACT_ID: u8 = 1;
const XLOG_XACT_OPMASK: u8 = 0x70;
/// COMMIT, ABORT, COMMIT_PREPARED, ABORT_PREPARED: the records recovery
/// compares with `recovery_target_time`.
const XACT_ENDS: [u8; 4] = [0x00, 0x20, 0x30, 0x40];

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00 UTC.
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// CRC-32C (Castagnoli) of `first` then `then`, as PostgreSQL's
/// `COMP_CRC32C` over a record (its body, then its header up to the CRC).
fn crc32c_of(first: &[u8], then: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(first), then)
}

/// The segment's record bytes with the page headers taken out, and where
/// each byte was (its LSN), so back links can be checked.
struct RecordStream {
    bytes: Vec<u8>,
    /// LSN of the segment's first byte.
    start_lsn: u64,
    block_size: usize,
    /// Stream offset of the first record that begins in this segment.
    first_record: usize,
}

impl RecordStream {
    fn read(segment: &[u8]) -> Result<RecordStream, WalFormatError> {
        let bad = |what: &str| WalFormatError(what.to_string());
        let magic = u16_at(segment, 0).ok_or_else(|| bad("shorter than a page header"))?;
        if !PAGE_MAGICS.contains(&magic) {
            return Err(WalFormatError(format!(
                "page magic {magic:#06x} is not one of PostgreSQL 15 to 17"
            )));
        }
        let info = u16_at(segment, 2).unwrap_or(0);
        if info & XLP_LONG_HEADER == 0 {
            return Err(bad("the first page has no long header"));
        }
        let start_lsn = u64_at(segment, 8).ok_or_else(|| bad("truncated page header"))?;
        let rem_len = u32_at(segment, 16).unwrap_or(0) as usize;
        let block_size = u32_at(segment, 36).ok_or_else(|| bad("truncated long header"))? as usize;
        if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
            return Err(WalFormatError(format!(
                "WAL block size {block_size} is not a power of two from 1 KiB to 64 KiB"
            )));
        }
        let mut bytes = Vec::with_capacity(segment.len());
        for (i, page) in segment.chunks(block_size).enumerate() {
            let addr = u64_at(page, 8);
            let expected = start_lsn + (i * block_size) as u64;
            if page.len() < block_size
                || u16_at(page, 0).is_none_or(|m| m != magic)
                || addr != Some(expected)
            {
                break; // not written as part of this segment: the WAL ends here
            }
            let header = if i == 0 { LONG_HEADER } else { SHORT_HEADER };
            bytes.extend_from_slice(&page[header..]);
        }
        let first_record = if info & XLP_FIRST_IS_CONTRECORD != 0 {
            maxalign(rem_len)
        } else {
            0
        };
        Ok(RecordStream {
            bytes,
            start_lsn,
            block_size,
            first_record,
        })
    }

    /// The LSN of stream offset `at`.
    fn lsn(&self, at: usize) -> u64 {
        let first = self.block_size - LONG_HEADER;
        let other = self.block_size - SHORT_HEADER;
        let page_offset = if at < first {
            LONG_HEADER + at
        } else {
            let k = (at - first) / other;
            (k + 1) * self.block_size + SHORT_HEADER + (at - first) % other
        };
        self.start_lsn + page_offset as u64
    }
}

/// One whole record: its header fields and bytes (header included).
struct Record<'a> {
    bytes: &'a [u8],
    prev: u64,
    info: u8,
    rmid: u8,
}

impl<'a> Record<'a> {
    /// The record at `at`, if a whole and intact one is there.
    fn at(stream: &'a [u8], at: usize) -> Option<Record<'a>> {
        let tot_len = u32_at(stream, at)? as usize;
        if tot_len < RECORD_HEADER {
            return None; // 0: the end of the WAL written
        }
        let bytes = stream.get(at..at.checked_add(tot_len)?)?;
        let stored = u32_at(bytes, CRC_OFFSET)?;
        let crc = crc32c_of(&bytes[RECORD_HEADER..], &bytes[..CRC_OFFSET]);
        (crc == stored).then(|| Record {
            bytes,
            prev: u64_at(bytes, 8).unwrap_or(0),
            info: bytes[16],
            rmid: bytes[17],
        })
    }

    /// The main data: the record's last bytes, as long as the data header
    /// that ends its block headers says (`DecodeXLogRecord`).
    fn main_data(&self) -> Option<&'a [u8]> {
        const DATA_SHORT: u8 = 255;
        const DATA_LONG: u8 = 254;
        const ORIGIN: u8 = 253;
        const TOPLEVEL_XID: u8 = 252;
        const MAX_BLOCK_ID: u8 = 32;
        const HAS_IMAGE: u8 = 0x10;
        const SAME_REL: u8 = 0x80;
        const IMAGE_HAS_HOLE: u8 = 0x01;
        const IMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;
        let b = self.bytes;
        let mut at = RECORD_HEADER;
        // Bytes of block data (images and data) after the headers.
        let mut data_total = 0usize;
        while b.len() - at.min(b.len()) > data_total {
            let id = *b.get(at)?;
            at += 1;
            match id {
                DATA_SHORT => {
                    let len = *b.get(at)? as usize;
                    return b.get(b.len().checked_sub(len)?..);
                }
                DATA_LONG => {
                    let len = u32_at(b, at)? as usize;
                    return b.get(b.len().checked_sub(len)?..);
                }
                ORIGIN => at += 2,
                TOPLEVEL_XID => at += 4,
                0..=MAX_BLOCK_ID => {
                    let fork_flags = *b.get(at)?;
                    data_total += u16_at(b, at + 1)? as usize;
                    at += 3;
                    if fork_flags & HAS_IMAGE != 0 {
                        data_total += u16_at(b, at)? as usize;
                        let image_info = *b.get(at + 4)?;
                        at += 5;
                        if image_info & IMAGE_COMPRESSED != 0 && image_info & IMAGE_HAS_HOLE != 0 {
                            at += 2;
                        }
                    }
                    if fork_flags & SAME_REL == 0 {
                        at += 12; // RelFileNode
                    }
                    at += 4; // BlockNumber
                }
                _ => return None,
            }
        }
        None
    }

    /// The commit or abort time, if this is a transaction's end.
    fn xact_time(&self) -> Option<Timestamp> {
        if self.rmid != RM_XACT_ID || !XACT_ENDS.contains(&(self.info & XLOG_XACT_OPMASK)) {
            return None;
        }
        let micros = i64::from_le_bytes(self.main_data()?.get(..8)?.try_into().ok()?);
        Timestamp::from_microsecond(
            micros.checked_add(PG_EPOCH_UNIX_SECONDS.checked_mul(1_000_000)?)?,
        )
        .ok()
    }

    fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.info & 0xF0 == XLOG_SWITCH
    }
}

/// Read the records of one WAL segment (the whole file as archived).
pub fn scan_segment(segment: &[u8]) -> Result<SegmentScan, WalFormatError> {
    let stream = RecordStream::read(segment)?;
    let mut scan = SegmentScan {
        records: 0,
        last_xact_time: None,
    };
    let mut at = stream.first_record;
    let mut prev_lsn: Option<u64> = None;
    while let Some(record) = Record::at(&stream.bytes, at) {
        let lsn = stream.lsn(at);
        if prev_lsn.is_some_and(|p| p != record.prev) {
            break; // an old record left in a recycled file
        }
        scan.records += 1;
        if let Some(t) = record.xact_time() {
            scan.last_xact_time = Some(t);
        }
        if record.is_switch() {
            break;
        }
        prev_lsn = Some(lsn);
        at += maxalign(record.bytes.len());
    }
    Ok(scan)
}

/// Synthetic segments, for the tests here and the fuzz seeds (through
/// `crate::testing`).
#[cfg(any(test, feature = "testing"))]
pub mod writer {
    use super::*;

    /// Writes a synthetic segment the way PostgreSQL lays one out: page
    /// headers every `block` bytes, records MAXALIGNed, crossing pages.
    pub struct SegmentWriter {
        pub block: usize,
        pub start_lsn: u64,
        pub out: Vec<u8>,
        /// LSN of the last record written.
        pub prev: u64,
        /// Records written.
        pub count: usize,
    }

    impl SegmentWriter {
        pub fn new(block: usize, start_lsn: u64, contrecord: usize) -> SegmentWriter {
            let mut w = SegmentWriter {
                block,
                start_lsn,
                out: Vec::new(),
                prev: start_lsn - 0x100,
                count: 0,
            };
            w.page_header(contrecord);
            w.out
                .extend(std::iter::repeat_n(0xEE, maxalign(contrecord)));
            w
        }

        fn lsn(&self) -> u64 {
            self.start_lsn + self.out.len() as u64
        }

        pub fn page_header(&mut self, rem_len: usize) {
            let first = self.out.is_empty();
            let mut info = if rem_len > 0 {
                XLP_FIRST_IS_CONTRECORD
            } else {
                0
            };
            if first {
                info |= XLP_LONG_HEADER;
            }
            let addr = self.lsn();
            self.out.extend(0xD110u16.to_le_bytes());
            self.out.extend(info.to_le_bytes());
            self.out.extend(1u32.to_le_bytes());
            self.out.extend(addr.to_le_bytes());
            self.out.extend((rem_len as u32).to_le_bytes());
            self.out.extend([0; 4]);
            if first {
                self.out.extend(7u64.to_le_bytes());
                self.out.extend(0u32.to_le_bytes());
                self.out.extend((self.block as u32).to_le_bytes());
            }
        }

        /// Write `bytes`, putting page headers in where pages begin.
        pub fn put(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                if self.out.len() % self.block == 0 {
                    self.page_header(bytes.len());
                }
                let room = self.block - self.out.len() % self.block;
                let n = room.min(bytes.len());
                self.out.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
            }
        }

        /// A record of `rmid`/`info` with `blocks` block references
        /// (each with `block_data` bytes) and `main` data.
        pub fn record(
            &mut self,
            rmid: u8,
            info: u8,
            blocks: usize,
            block_data: usize,
            main: &[u8],
        ) {
            if self.out.len() % self.block == 0 {
                self.page_header(0);
            }
            let mut body = Vec::new();
            for i in 0..blocks {
                body.push(i as u8);
                body.push(0x20 | if i > 0 { 0x80 } else { 0 });
                body.extend((block_data as u16).to_le_bytes());
                if i == 0 {
                    body.extend([0; 12]);
                }
                body.extend(5u32.to_le_bytes());
            }
            body.push(253); // an origin, to be skipped
            body.extend(3u16.to_le_bytes());
            if main.len() < 256 {
                body.push(255);
                body.push(main.len() as u8);
            } else {
                body.push(254);
                body.extend((main.len() as u32).to_le_bytes());
            }
            body.extend(std::iter::repeat_n(0xAB, blocks * block_data));
            body.extend_from_slice(main);
            let tot_len = (RECORD_HEADER + body.len()) as u32;
            let mut header = Vec::new();
            header.extend(tot_len.to_le_bytes());
            header.extend(42u32.to_le_bytes());
            header.extend(self.prev.to_le_bytes());
            header.push(info);
            header.push(rmid);
            header.extend([0; 2]);
            let crc = crc32c_of(&body, &header);
            header.extend(crc.to_le_bytes());
            self.prev = self.lsn();
            self.count += 1;
            header.extend(body);
            self.put(&header);
            let pad = maxalign(self.out.len()) - self.out.len();
            self.out.extend(std::iter::repeat_n(0, pad));
        }

        /// Main data of a commit or abort at `t`.
        pub fn xact_main(t: Timestamp) -> Vec<u8> {
            let micros = t.as_microsecond() - PG_EPOCH_UNIX_SECONDS * 1_000_000;
            let mut m = micros.to_le_bytes().to_vec();
            m.extend(0u32.to_le_bytes()); // xinfo
            m
        }

        /// Zero pages (with their headers) to `size` bytes.
        pub fn finish(mut self, size: usize) -> Vec<u8> {
            while self.out.len() < size {
                if self.out.len() % self.block == 0 {
                    self.page_header(0);
                }
                self.out.push(0);
            }
            self.out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::SegmentWriter;
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_last_commit_or_abort_is_found_across_pages() {
        let mut w = SegmentWriter::new(1024, 0x0300_0000, 300);
        w.record(10, 0, 2, 700, &[1; 20]); // a heap record crossing a page
        let main = SegmentWriter::xact_main(t("2026-03-01T10:00:00.123456Z"));
        w.record(RM_XACT_ID, 0x00, 0, 0, &main); // COMMIT
        w.record(
            RM_XACT_ID,
            0x10,
            0,
            0,
            &SegmentWriter::xact_main(t("2030-01-01T00:00:00Z")),
        ); // PREPARE: not an end
        w.record(10, 0, 1, 900, &[2; 300]); // long main data
                                            // An ABORT whose header begins 8 bytes before a page ends: a
                                            // filler record (29 bytes + its main data) ends where it must.
        loop {
            let room = 1016 - w.out.len() % 1024;
            if (32..=29 + 255).contains(&room) {
                w.record(10, 0, 0, 0, &vec![3; room - 29]);
                break;
            }
            w.record(10, 0, 0, 0, &[3; 200]);
        }
        assert_eq!(w.out.len() % 1024, 1016);
        let main = SegmentWriter::xact_main(t("2026-03-01T10:00:01Z"));
        w.record(RM_XACT_ID, 0x20, 0, 0, &main);
        w.record(RM_XACT_ID, 0x50, 0, 0, &[0; 8]); // ASSIGNMENT
        let written = w.count;
        let scan = scan_segment(&w.finish(16 * 1024)).unwrap();
        assert_eq!(scan.last_xact_time, Some(t("2026-03-01T10:00:01Z")));
        assert_eq!(scan.records, written);
    }

    #[test]
    fn the_scan_stops_at_a_switch_a_bad_crc_or_a_broken_back_link() {
        let commit = |s| SegmentWriter::xact_main(t(s));
        // Switch: what follows is not read.
        let mut w = SegmentWriter::new(1024, 0x0100_0000, 0);
        w.record(RM_XACT_ID, 0x30, 0, 0, &commit("2026-01-01T00:00:00Z")); // COMMIT PREPARED
        w.record(RM_XLOG_ID, XLOG_SWITCH, 0, 0, &[]);
        w.record(RM_XACT_ID, 0x00, 0, 0, &commit("2026-01-02T00:00:00Z"));
        let scan = scan_segment(&w.finish(4096)).unwrap();
        assert_eq!(scan.records, 2);
        assert_eq!(scan.last_xact_time, Some(t("2026-01-01T00:00:00Z")));

        // A damaged record ends the WAL.
        let mut w = SegmentWriter::new(1024, 0x0100_0000, 0);
        w.record(RM_XACT_ID, 0x40, 0, 0, &commit("2026-01-01T00:00:00Z")); // ABORT PREPARED
        let at = w.out.len();
        w.record(RM_XACT_ID, 0x00, 0, 0, &commit("2026-01-02T00:00:00Z"));
        let mut seg = w.finish(4096);
        seg[at + 30] ^= 1;
        let scan = scan_segment(&seg).unwrap();
        assert_eq!(
            (scan.records, scan.last_xact_time),
            (1, Some(t("2026-01-01T00:00:00Z")))
        );

        // A record whose back link is not the record before it.
        let mut w = SegmentWriter::new(1024, 0x0100_0000, 0);
        w.record(RM_XACT_ID, 0x00, 0, 0, &commit("2026-01-01T00:00:00Z"));
        w.prev = 0x1234;
        w.record(RM_XACT_ID, 0x00, 0, 0, &commit("2026-01-02T00:00:00Z"));
        let scan = scan_segment(&w.finish(4096)).unwrap();
        assert_eq!(scan.records, 1);
    }

    #[test]
    fn a_record_begun_in_the_previous_segment_is_skipped() {
        // 1500 bytes of continuation: past the first page.
        let mut w = SegmentWriter::new(1024, 0x0200_0000, 0);
        w.out.clear();
        w.page_header(1500);
        let mut cont = vec![0x77u8; 1500];
        cont[0..4].copy_from_slice(&9999u32.to_le_bytes());
        // The continuation goes through the page headers like record bytes.
        let first_room = 1024 - LONG_HEADER;
        w.out.extend_from_slice(&cont[..first_room]);
        w.put(&cont[first_room..]);
        let pad = maxalign(w.out.len()) - w.out.len();
        w.out.extend(std::iter::repeat_n(0, pad));
        w.record(
            RM_XACT_ID,
            0x00,
            0,
            0,
            &SegmentWriter::xact_main(t("2026-02-02T02:02:02Z")),
        );
        let scan = scan_segment(&w.finish(8192)).unwrap();
        assert_eq!(scan.records, 1);
        assert_eq!(scan.last_xact_time, Some(t("2026-02-02T02:02:02Z")));
    }

    #[test]
    fn what_is_not_wal_is_an_error() {
        assert!(scan_segment(&[0; 100]).is_err());
        assert!(scan_segment(&[]).is_err());
        let mut seg = SegmentWriter::new(1024, 0x0100_0000, 0).finish(2048);
        seg[0] = 0x0D; // 0xD10D: PostgreSQL 14
        assert!(scan_segment(&seg).unwrap_err().0.contains("0xd10d"));
    }

    proptest::proptest! {
        /// A push reads whatever file it is given: damaged or foreign
        /// bytes are an error or a shorter scan, never a panic.
        #[test]
        fn damaged_segments_never_panic(
            flips in proptest::collection::vec((0usize..8192, proptest::prelude::any::<u8>()), 0..40),
            cut in 0usize..8192,
        ) {
            let mut w = SegmentWriter::new(1024, 0x0100_0000, 100);
            for i in 0..12 {
                w.record(RM_XACT_ID, 0x00, i % 3, 150, &SegmentWriter::xact_main(t("2026-01-01T00:00:00Z")));
            }
            let mut seg = w.finish(8192);
            for (at, b) in flips {
                seg[at] = b;
            }
            let _ = scan_segment(&seg);
            let _ = scan_segment(&seg[..cut]);
        }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c_of(b"1234", b"56789"), 0xE306_9283);
    }
}
