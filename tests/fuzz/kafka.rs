//! Kafka records as a snapshot stores them (`repo::kafka`): a stream of
//! length-prefixed records read back on restore and by restore tests.

use crate::harness::fuzz;
use crate::mutate::inputs;
use cairn::repo::kafka::{encode_record, RecordReader, TimestampType};

fn streams() -> Vec<Vec<u8>> {
    let mut a = Vec::new();
    encode_record(
        &mut a,
        0,
        1_700_000_000_000,
        TimestampType::CreateTime,
        Some(&b"k"[..]),
        Some(&b"value"[..]),
        &[("h", Some(&b"v"[..])), ("n", None)],
    );
    encode_record(
        &mut a,
        1,
        1_700_000_000_001,
        TimestampType::LogAppendTime,
        None,
        None,
        &[],
    );
    let mut b = Vec::new();
    encode_record(
        &mut b,
        42,
        -1,
        TimestampType::None,
        Some(&[0u8; 300][..]),
        Some(&[1u8; 2000][..]),
        &[],
    );
    vec![a, b]
}

#[test]
fn kafka_records() {
    fuzz(
        "kafka_records",
        400,
        inputs(streams(), &[b"\xff\xff\xff\xff"], 4096),
        |bytes| {
            let mut reader = RecordReader::new(bytes);
            let mut n = 0usize;
            while let Ok(Some(_)) = reader.next_record() {
                n += 1;
                assert!(n <= bytes.len() / 4, "more records than length prefixes");
            }
        },
    );
}
