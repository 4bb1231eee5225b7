//! Tar streams: the tar cutter that chunks a base backup
//! (`chunk::for_each_tar_chunk_with`) and the header reader it shares with
//! the replication client. Seeds are ustar archives written here, with
//! checksums; a mutation that changes a header is followed, in half the
//! cases, by fixing that header's checksum so the size field is believed.

use crate::harness::fuzz;
use crate::mutate::{apply, arbitrary};
use proptest::prelude::*;

/// A ustar header for a member `name` of `size` bytes (`kind` b'0' file, b'5' dir).
pub fn header(name: &str, size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    fix_checksum(&mut h);
    h
}

/// Recompute the checksum of the 512-byte header `h`.
pub fn fix_checksum(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// An archive of `members` (name, data), ended by two zero blocks.
pub fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend_from_slice(&header(name, data.len() as u64, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

pub fn seeds() -> Vec<Vec<u8>> {
    let big = vec![0x55u8; 70_000];
    vec![
        archive(&[("PG_VERSION", b"15\n"), ("global/pg_control", &[1; 8192])]),
        archive(&[
            ("base/1/1259", &big),
            ("backup_label", b"START WAL LOCATION"),
        ]),
        archive(&[]),
    ]
}

/// Mutations of a tar stream; in half the cases every header-aligned
/// block that looks like a header gets a correct checksum afterwards, so
/// extreme sizes (octal or GNU base-256) reach the code that uses them.
pub fn tar_inputs() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        prop::sample::select(seeds()),
        prop::collection::vec(crate::mutate::mutation_strategy(), 1..6),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(seed, ms, fix, base256)| {
            let mut b = apply(seed, &ms, &[b"ustar\0", b"77777777777\0"]);
            if base256 && b.len() >= 512 {
                // A GNU base-256 size in the first header: the largest there is.
                b[124] = 0x80;
                b[125..128].fill(0);
                b[128..136].fill(0xff);
            }
            if fix {
                let mut at = 0;
                while at + 512 <= b.len() {
                    if b[at + 257..at + 262] == *b"ustar" {
                        fix_checksum(&mut b[at..at + 512]);
                    }
                    at += 512;
                }
            }
            b
        });
    prop_oneof![1 => arbitrary(4096), 4 => mutated]
}

#[test]
fn tar_cutter() {
    fuzz("tar_cutter", 400, tar_inputs(), |bytes| {
        let mut buf = Vec::new();
        let mut total = 0usize;
        let read = cairn::chunk::for_each_tar_chunk_with::<_, ()>(&mut buf, bytes, |c| {
            assert!(!c.is_empty(), "the tar cutter handed over an empty chunk");
            total += c.len();
            Ok(())
        });
        // Every byte read is handed over exactly once.
        if let Ok(n) = read {
            assert_eq!(n as usize, bytes.len());
            assert_eq!(total, bytes.len(), "chunks do not add up to the stream");
        }
    });
}
