//! The inputs the fuzz targets found bugs with, each run as one case under
//! the same bounds (allocation, watchdog, no panic), so each fails again
//! if its bug comes back. The fix is named in each test.

use crate::harness::one_case;

fn run(target: &str, input: &[u8], parse: impl FnOnce(&[u8])) {
    let _one_at_a_time = crate::harness::serial();
    if let Err(e) = one_case(target, input, parse) {
        panic!("{e}");
    }
}

/// `repo::kafka::RecordReader::next_raw` allocated (and zeroed) a record's
/// length before reading it: 4 bytes claiming 4 GiB took 4 GiB.
#[test]
fn kafka_record_length_is_not_allocated_up_front() {
    let stream = [0xb9, 0x26, 0xb4, 0xf6, 1, 2, 3];
    run("kafka_records", &stream, |b| {
        let r = cairn::repo::kafka::RecordReader::new(b).next_record();
        assert!(r.is_err(), "a stream cut short is an error");
    });
}

/// `chunk::tar_data_len` believed any size, and padding a GNU base-256 size
/// near 2^64 to whole blocks overflowed (a panic in debug builds).
#[test]
fn tar_size_near_2_pow_64_is_not_a_header() {
    let mut h = crate::tar::header("base/1/1", 0, b'0');
    h[124] = 0x80;
    h[125..128].fill(0);
    h[128..136].fill(0xff);
    crate::tar::fix_checksum(&mut h);
    let mut stream = h.to_vec();
    stream.extend_from_slice(&[0; 1024]);
    run("tar_cutter", &stream, |b| {
        let mut total = 0;
        let n = cairn::chunk::for_each_tar_chunk_with::<_, ()>(&mut Vec::new(), b, |c| {
            total += c.len();
            Ok(())
        });
        assert_eq!(n.ok(), Some(b.len() as u64));
        assert_eq!(total, b.len());
    });
}

/// `read_toc` reserved room for up to 2^20 TOC entries (150 MB) because
/// the archive's count field said so: a 94-byte archive held 150 MB.
#[test]
fn pg_toc_count_is_not_reserved_up_front() {
    let mut archive = cairn::testing::fuzz::custom_archive(&[], &[]).0;
    // The entry count is the archive's last field here: 2^31 - 1 entries.
    let n = archive.len();
    archive[n - 5..].copy_from_slice(&[0, 0xff, 0xff, 0xff, 0x7f]);
    run("pg_archive_toc", &archive, |b| {
        assert!(cairn::testing::fuzz::read_table_of_contents(b).is_err());
    });
}

/// The replication client allocated (and zeroed) a message's length before
/// reading it: 5 bytes claiming a 1 GiB message took 1 GiB.
#[test]
fn replication_message_length_is_not_allocated_up_front() {
    let stream = [b'E', 0x40, 0, 0, 0];
    run("replication_copy_out", &stream, |b| {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let input = b.to_vec();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            let mut theirs = theirs;
            let _ = theirs.write_all(&input);
        });
        assert!(cairn::testing::fuzz::read_copy_out(ours, Vec::new()).is_err());
        let _ = server.join();
    });
}
