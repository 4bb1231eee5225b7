//! Proven restores of Kafka sources (`cairn check --restore-test
//! --scratch-brokers …`): restore into a scratch broker under fresh topic
//! names, read every partition back, and compare its records with the
//! stored ones — count and a digest of what a consumer sees (key, value,
//! headers, timestamp; offsets differ by design).

use super::backup::consumer;
use super::client::KafkaOptions;
use super::restore::{restore_kafka, RestoreOptions};
use crate::error::{Error, Kind, Result};
use crate::repo::kafka::{encode_record, KafkaMeta, RecordReader, TimestampType};
use crate::repo::SourceRecord;
use crate::repository::Repository;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionCheck {
    pub topic: String,
    pub partition: i32,
    pub expected_records: u64,
    pub restored_records: u64,
    pub ok: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KafkaRestoreTest {
    pub source: String,
    /// Topic names used on the scratch broker: `<prefix><original name>`.
    pub prefix: String,
    pub partitions: Vec<PartitionCheck>,
}

impl KafkaRestoreTest {
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.ok)
    }
}

/// Digest of records as a consumer sees them (no offsets, no timestamp type).
#[derive(Default)]
struct Seen {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    count: u64,
}

impl Seen {
    fn add(
        &mut self,
        ts: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        h: &[(&str, Option<&[u8]>)],
    ) {
        encode_record(&mut self.buf, 0, ts, TimestampType::None, key, value, h);
        // Hash in large pieces: BLAKE3 uses SIMD across chunks only then.
        if self.buf.len() >= 1 << 16 {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
        self.count += 1;
    }

    fn digest(&mut self) -> blake3::Hash {
        self.hasher.update(&self.buf);
        self.buf.clear();
        self.hasher.finalize()
    }
}

pub fn restore_test(
    repo: &Repository,
    source: &SourceRecord,
    scratch: &KafkaOptions,
    snapshot_short: &str,
) -> Result<KafkaRestoreTest> {
    let meta: KafkaMeta = serde_json::from_value(source.metadata.clone())
        .map_err(|e| Error::integrity(format!("Kafka metadata of {:?}: {e}", source.name)))?;
    let prefix = format!(
        "cairn-test-{snapshot_short}-{}.",
        jiff::Timestamp::now().as_second()
    );
    let opts = RestoreOptions {
        topic_map: meta
            .topics
            .iter()
            .map(|t| (t.name.clone(), format!("{prefix}{}", t.name)))
            .collect(),
        ..Default::default()
    };
    restore_kafka(repo, source, scratch, &opts)
        .map_err(|e| e.context("restoring into the scratch broker"))?;
    let nodes = repo.read_tree(source)?;
    let reader = consumer(
        scratch,
        &format!("cairn-restore-test-{}", std::process::id()),
    )?;
    let mut result = KafkaRestoreTest {
        source: source.name.clone(),
        prefix: prefix.clone(),
        partitions: Vec::new(),
    };
    for t in &meta.topics {
        let target = format!("{prefix}{}", t.name);
        for p in &t.partitions {
            let mut want = Seen::default();
            if let Some(node) = p
                .node
                .as_ref()
                .and_then(|n| nodes.iter().find(|x| &x.path == n))
            {
                let mut r = RecordReader::new(repo.open_file(node)?);
                while let Some(rec) = r
                    .next_record()
                    .map_err(|e| Error::integrity(format!("{}/{}: {e}", t.name, p.id)))?
                {
                    let h: Vec<(&str, Option<&[u8]>)> = rec
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_deref()))
                        .collect();
                    let ts = if rec.timestamp_type == TimestampType::None {
                        -1
                    } else {
                        rec.timestamp
                    };
                    want.add(ts, rec.key.as_deref(), rec.value.as_deref(), &h);
                }
            }
            let mut got = read_back(&reader, &target, p.id, want.count)?;
            let ok = got.count == want.count && got.digest() == want.digest();
            result.partitions.push(PartitionCheck {
                topic: t.name.clone(),
                partition: p.id,
                expected_records: want.count,
                restored_records: got.count,
                ok,
            });
        }
    }
    Ok(result)
}

/// Consume a partition of the scratch broker from its start to its end.
fn read_back(
    c: &super::client::KafkaConsumer,
    topic: &str,
    partition: i32,
    expected: u64,
) -> Result<Seen> {
    let mut seen = Seen::default();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| Error::failure(format!("{topic}/{partition}: {e}")))?;
    c.assign(&tpl)
        .map_err(|e| Error::failure(format!("{topic}/{partition}: {e}")))?;
    let mut idle = Instant::now();
    loop {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                idle = Instant::now();
                let h: Vec<(&str, Option<&[u8]>)> = m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                    .unwrap_or_default();
                seen.add(
                    m.timestamp().to_millis().unwrap_or(-1),
                    m.key(),
                    m.payload(),
                    &h,
                );
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(_))) if seen.count >= expected => return Ok(seen),
            // Produced records may still be becoming visible: wait a little.
            Some(Err(KafkaError::PartitionEOF(_))) if idle.elapsed() > Duration::from_secs(10) => {
                return Ok(seen)
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                return Err(Error::failure(format!(
                    "reading back {topic}/{partition}: {e}"
                )))
            }
            None if idle.elapsed() > Duration::from_secs(60) => {
                return Err(Error::new(
                    Kind::Unavailable,
                    format!("reading back {topic}/{partition} from the scratch broker stalled"),
                ))
            }
            None => {}
        }
    }
}
