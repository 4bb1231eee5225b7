//! Kafka: topics with their configuration, partition watermarks, consumer
//! group offsets and records, backed up through librdkafka (bundled by the
//! `rdkafka` crate) and restored with exact offset translation.
//! The format is specified in `spec/kafka.md`.

pub mod backup;
pub mod client;
pub mod offsets;
pub mod prove;
pub mod recreate;
pub mod restore;

pub use backup::{archive_kafka, BackupOptions};
pub use client::{KafkaOptions, RetryPolicy};
pub use restore::{restore_kafka, ConfigChoice, ExistingTopics, RestoreOptions};

use crate::archiver::StoredChunks;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::repo::kafka::{KafkaMeta, PartitionMeta, RecordReader};
use crate::repo::{ChunkId, Node, SourceRecord};
use crate::repository::Repository;
use crate::source::command::Observed;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// After a backup: read every partition back from the repository and
/// compare its record count, offsets and digest with what was consumed,
/// but those `checked` already (by [`verify_while_reading`], given the node
/// path). Partitions are read back side by side, one thread per core:
/// decrypting, decompressing and hashing them is CPU work.
pub fn verify_stored(
    repo: &Repository,
    source: &SourceRecord,
    checked: impl Fn(&str) -> bool,
) -> Result<()> {
    let meta: KafkaMeta = serde_json::from_value(source.metadata.clone())
        .map_err(|e| Error::failure(format!("Kafka metadata of {:?}: {e}", source.name)))?;
    let nodes = repo.read_tree(source)?;
    let mut jobs = Vec::new();
    for t in &meta.topics {
        for p in &t.partitions {
            let Some(path) = p.node.as_ref().filter(|n| !checked(n)) else {
                continue;
            };
            let node = nodes.iter().find(|n| &n.path == path).ok_or_else(|| {
                Error::integrity(format!("{path} is missing from the stored node list"))
            })?;
            jobs.push((t.name.as_str(), p, node));
        }
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4)
        .min(jobs.len().max(1));
    let queue = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<u64> {
                    let mut checked = 0;
                    while !failed.load(Ordering::Relaxed) {
                        let Some((topic, p, node)) = queue.lock().ok().and_then(|mut q| q.next())
                        else {
                            break;
                        };
                        match verify_partition(repo, topic, p, node, None) {
                            Ok(n) => checked += n,
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(checked)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::failure("a verifying thread panicked")))
            })
            .collect::<Vec<Result<u64>>>()
    });
    let checked = counts.into_iter().sum::<Result<u64>>()?;
    if checked > 0 {
        tracing::info!(source = %source.name, records = checked, "records verified in the repository");
    }
    Ok(())
}

/// A partition just consumed, to be read back while the next is consumed.
pub struct Consumed {
    pub topic: String,
    pub partition: PartitionMeta,
    pub node: Node,
}

/// During a backup: read back and check each partition sent on
/// `partitions`, chunk by chunk as each is written into a pack (see
/// [`StoredChunks`]), while the backup goes on. Returns the node paths
/// checked. Once `stop` is set it stops waiting for chunks, leaving the
/// partition it is at and those after it to [`verify_stored`]. A mismatch is
/// an error, as there.
pub fn verify_while_reading(
    repo: &Repository,
    stored: &StoredChunks,
    partitions: crossbeam_channel::Receiver<Consumed>,
    stop: &AtomicBool,
) -> Result<Vec<String>> {
    let index = repo.cache.reader()?;
    let mut checked = Vec::new();
    for s in partitions {
        let gave_up = std::cell::Cell::new(false);
        let lookup = |id: &ChunkId| -> Result<Location> {
            match stored.locate(id, &index, stop)? {
                // A delta frame's base would need locating too; Kafka
                // streams have none, and verify_stored can read one.
                Some(l) if l.compression != crate::repo::Compression::ZstdDelta => Ok(l),
                _ => {
                    gave_up.set(true);
                    Err(Error::failure("stopped waiting for the chunk to be stored"))
                }
            }
        };
        match verify_partition(repo, &s.topic, &s.partition, &s.node, Some(&lookup)) {
            Ok(_) => {
                stored.forget(&s.node.content);
                checked.push(s.node.path);
            }
            Err(_) if gave_up.get() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(checked)
}

/// Read one stored partition back (its chunks located by `lookup`, or else
/// by the index); its record count when everything matches.
fn verify_partition(
    repo: &Repository,
    topic: &str,
    p: &PartitionMeta,
    node: &Node,
    lookup: Option<crate::repository::Lookup>,
) -> Result<u64> {
    let mut hasher = blake3::Hasher::new();
    let file = match lookup {
        Some(f) => repo.open_file_with(node, f)?,
        None => repo.open_file(node)?,
    };
    let hashed = Observed {
        inner: file.digest_checked_by_caller().uncached(),
        observe: |b: &[u8]| {
            hasher.update(b);
        },
    };
    // Records are read a few bytes at a time; hash in large pieces.
    let mut reader = RecordReader::new(std::io::BufReader::with_capacity(1 << 20, hashed));
    let (mut count, mut prev) = (0u64, None::<i64>);
    let fail = |what: String| {
        Error::integrity(format!(
            "{topic}/{} read back from the repository {what}",
            p.id
        ))
    };
    while let Some(raw) = reader.next_raw().map_err(|e| fail(e.to_string()))? {
        let offset = i64::from_le_bytes(
            raw.get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| fail("holds a truncated record".into()))?,
        );
        if prev.is_some_and(|q| offset <= q) || offset < p.low || offset >= p.end {
            return Err(fail(format!("has offset {offset} out of order or range")));
        }
        prev = Some(offset);
        count += 1;
    }
    drop(reader);
    let digest = hasher.finalize().to_hex().to_string();
    if count != p.records || digest != p.digest {
        return Err(fail(format!(
            "has {count} records (digest {}), but {} were consumed (digest {})",
            &digest[..16],
            p.records,
            &p.digest[..16.min(p.digest.len())]
        )));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::with_packer;
    use crate::repo::kafka::{encode_record, PartitionMeta, TimestampType, TopicMeta};
    use crate::repo::Node;
    use crate::source::stream::source_from_nodes;

    /// Store one partition of `n` records and a source whose metadata claims
    /// `claimed` records with the true digest.
    fn stored(repo: &Repository, n: i64, claimed: u64) -> SourceRecord {
        let mut bytes = Vec::new();
        for o in 0..n {
            encode_record(
                &mut bytes,
                o,
                o,
                TimestampType::CreateTime,
                None,
                Some(b"v"),
                &[],
            );
        }
        let digest = blake3::hash(&bytes).to_hex().to_string();
        let (outcome, stored, _) = with_packer(repo, |p| {
            let (ids, size) = p
                .add_stream(&bytes[..], &crate::progress::Progress::hidden())
                .map_err(|_| Error::failure("store"))?;
            let meta = KafkaMeta {
                messages: true,
                topics: vec![TopicMeta {
                    name: "t".into(),
                    partitions: vec![PartitionMeta {
                        end: n,
                        node: Some("kafka/t/0".into()),
                        records: claimed,
                        bytes: size,
                        digest,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            source_from_nodes(
                p,
                "kafka",
                crate::repo::SourceKind::Kafka,
                vec![Node::stream("kafka/t/0", size, ids)],
                serde_json::to_value(&meta).unwrap(),
            )
        })
        .unwrap();
        crate::job::commit_index(repo, stored.packs).unwrap();
        outcome.record
    }

    #[test]
    fn stored_records_are_checked_against_what_was_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repository::test_repo(dir.path());
        verify_stored(&repo, &stored(&repo, 100, 100), |_| false).unwrap();
        let e = verify_stored(&repo, &stored(&repo, 100, 99), |_| false).unwrap_err();
        assert_eq!(e.kind(), crate::error::Kind::Integrity);
        assert!(e.to_string().contains("has 100 records"), "{e}");
    }

    /// Records 0..n of one partition as the backup encodes them, and the
    /// partition as consumed, claiming `claimed` records.
    fn partition(n: i64, claimed: u64) -> (Vec<u8>, PartitionMeta) {
        let mut bytes = Vec::new();
        for o in 0..n {
            let value = format!("value {o} {}", "x".repeat((o % 97) as usize));
            encode_record(
                &mut bytes,
                o,
                o,
                TimestampType::CreateTime,
                None,
                Some(value.as_bytes()),
                &[],
            );
        }
        let p = PartitionMeta {
            end: n,
            node: Some("kafka/t/0".into()),
            records: claimed,
            bytes: bytes.len() as u64,
            digest: blake3::hash(&bytes).to_hex().to_string(),
            ..Default::default()
        };
        (bytes, p)
    }

    /// During a backup, a partition is checked once its packs are written:
    /// the checker waits for them, fails on a mismatch, and once told to
    /// stop leaves a partition whose packs are not written yet to the check
    /// before the snapshot is saved.
    #[test]
    fn partitions_are_checked_once_their_packs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repository::test_repo(dir.path());
        let hidden = crate::progress::Progress::hidden();
        // Random bytes, more than the frames and packs in flight can hold,
        // push everything stored before them into written packs.
        let filler: Vec<u8> = {
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            (0..3 * repo.config.pack_size as usize)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let check = |claimed: u64, flush: bool, stop: bool| {
            with_packer(&repo, |packer| {
                let (bytes, p) = partition(5000, claimed);
                let (ids, size) = packer
                    .add_stream(&bytes[..], &hidden)
                    .map_err(|_| Error::failure("store"))?;
                let stored = packer.stored_chunks();
                stored.watch(true);
                if flush {
                    packer
                        .add_stream(&filler[..], &hidden)
                        .map_err(|_| Error::failure("store"))?;
                }
                let (tx, rx) = crossbeam_channel::unbounded();
                tx.send(Consumed {
                    topic: "t".into(),
                    partition: p,
                    node: Node::stream("kafka/t/0", size, ids),
                })
                .unwrap();
                drop(tx);
                let stop = AtomicBool::new(stop);
                let checked = verify_while_reading(packer.repo(), stored, rx, &stop);
                stored.watch(false);
                checked
            })
            .map(|(checked, ..)| checked)
        };
        // The partition's packs are written only once the filler pushes
        // them out: the checker waits for that, then checks.
        assert_eq!(check(5000, true, false).unwrap(), vec!["kafka/t/0"]);
        let e = check(4999, true, false).unwrap_err();
        assert_eq!(e.kind(), crate::error::Kind::Integrity);
        assert!(e.to_string().contains("has 5000 records"), "{e}");
        // Told to stop, with the partition's packs unwritten: left alone.
        assert!(check(4999, false, true).unwrap().is_empty());
    }
}
