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
