//! PostgreSQL's formats: pg_dump's custom archive (table of contents, data
//! blocks, the whole archive as it streams into the repository), WAL
//! segments, and the replication protocol's CopyOut stream of a base
//! backup. Seeds come from cairn's own test writers
//! (`cairn::testing::fuzz`), which lay the bytes out as PostgreSQL does.

use crate::harness::fuzz;
use crate::mutate::inputs;
use cairn::testing::fuzz::{
    copy_data_block, custom_archive, read_copy_out, read_table_of_contents, SegmentWriter,
    StreamScan, Timestamp,
};

const ARCHIVE: &[&[u8]] = &[
    b"PGDMP",
    b"TABLE DATA",
    b"\x00\x00\x00\x00\x00",
    b"\x01\xff\xff\xff\x7f",
];

fn archives() -> Vec<Vec<u8>> {
    vec![
        custom_archive(&[(1, true), (2, false), (3, true)], &["1\ta\n", "2\t\\N\n"]).0,
        custom_archive(&[(7, true)], &["x\ty\n"; 20]).0,
        custom_archive(&[], &[]).0,
    ]
}

#[test]
fn pg_archive_stream() {
    fuzz(
        "pg_archive_stream",
        300,
        inputs(archives(), ARCHIVE, 4096),
        |bytes| {
            for hash_rows in [true, false] {
                let mut scan = StreamScan::start(hash_rows);
                // In uneven pieces, as a pipe delivers them.
                for piece in bytes.chunks(97) {
                    scan.feed(piece);
                }
                let _ = scan.finish();
            }
        },
    );
}

#[test]
fn pg_archive_toc() {
    fuzz(
        "pg_archive_toc",
        400,
        inputs(archives(), ARCHIVE, 4096),
        |bytes| {
            let _ = read_table_of_contents(bytes);
        },
    );
}

/// A `TABLE DATA` block of entry 1 with `rows`, as pg_dump writes it.
fn data_block(rows: &[&str]) -> Vec<u8> {
    let int = |out: &mut Vec<u8>, v: i64| {
        out.push(u8::from(v < 0));
        out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
    };
    let mut b = vec![1u8];
    int(&mut b, 1);
    for r in rows {
        int(&mut b, r.len() as i64);
        b.extend_from_slice(r.as_bytes());
    }
    int(&mut b, 0);
    b
}

#[test]
fn pg_copy_block() {
    let seeds = vec![data_block(&["1\ta\n", "2\tb\n"]), data_block(&[])];
    fuzz(
        "pg_copy_block",
        400,
        inputs(seeds, ARCHIVE, 2048),
        |bytes| {
            let mut total = 0usize;
            let _ = copy_data_block(bytes, 4, 1, |piece| {
                total += piece.len();
                Ok(())
            });
            assert!(total <= bytes.len(), "more COPY text than block bytes");
        },
    );
}

fn segments() -> Vec<Vec<u8>> {
    let commit =
        |secs: i64| SegmentWriter::xact_main(Timestamp::from_second(secs).expect("in range"));
    let mut w = SegmentWriter::new(1024, 0x0300_0000, 300);
    w.record(10, 0, 2, 700, &[1; 20]);
    w.record(1, 0x00, 0, 0, &commit(1_772_000_000));
    w.record(10, 0, 1, 300, &[2; 300]);
    let a = w.finish(8 * 1024);
    let mut w = SegmentWriter::new(8192, 0x0100_0000, 0);
    w.record(1, 0x20, 0, 0, &commit(1_700_000_000));
    let b = w.finish(3 * 8192);
    vec![a, b]
}

#[test]
fn wal_segment() {
    fuzz(
        "wal_segment",
        300,
        inputs(segments(), &[b"\x10\xd1", b"\x02\x00"], 4096),
        |bytes| {
            if let Ok(scan) = cairn::testing::scan_segment(bytes) {
                assert!(
                    scan.records <= bytes.len() / 24,
                    "more records than room for them"
                );
            }
        },
    );
}

/// A protocol message: tag, length (itself included), body.
fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

fn copy_data(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    let mut body = vec![kind];
    body.extend_from_slice(data);
    message(out, b'd', &body);
}

/// A base backup's CopyOut stream as PostgreSQL 15 sends it: base.tar in
/// CopyData messages, the manifest, CopyDone, the stop position.
fn copy_out(tar: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    copy_data(&mut out, b'n', b"base.tar\0\0");
    for p in tar.chunks(piece) {
        copy_data(&mut out, b'd', p);
    }
    copy_data(&mut out, b'p', &100u64.to_be_bytes());
    copy_data(&mut out, b'm', b"");
    copy_data(
        &mut out,
        b'd',
        b"{\"PostgreSQL-Backup-Manifest-Version\": 1}\n",
    );
    message(&mut out, b'c', b"");
    let mut row = 2u16.to_be_bytes().to_vec();
    for f in [&b"0/2000100"[..], b"1"] {
        row.extend_from_slice(&(f.len() as i32).to_be_bytes());
        row.extend_from_slice(f);
    }
    message(&mut out, b'D', &row);
    message(&mut out, b'C', b"SELECT\0");
    message(&mut out, b'Z', b"I");
    out
}

#[test]
fn replication_copy_out() {
    let tars = crate::tar::seeds();
    let seeds = vec![
        copy_out(&tars[0], 1000),
        copy_out(&tars[1], 8192),
        copy_out(&tars[2], 512),
    ];
    fuzz(
        "replication_copy_out",
        200,
        inputs(seeds, &[b"d\x00\x00\x00\x05", b"E"], 4096),
        |bytes| {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
            let input = bytes.to_vec();
            let server = std::thread::spawn(move || {
                use std::io::Write;
                let mut theirs = theirs;
                let _ = theirs.write_all(&input);
                // Closing ends the stream where the input ends.
            });
            let mut archive = Vec::new();
            let _ = read_copy_out(ours, &mut archive);
            let _ = server.join();
        },
    );
}
