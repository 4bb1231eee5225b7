//! Kafka snapshots: cluster, topic and group metadata, then every selected
//! partition's records as one stored stream each.
//!
//! Order matters: consumer-group offsets are read *before* the watermarks, so
//! every committed offset falls inside the captured range. Each partition is
//! read from its log start up to the high watermark seen at the start — the
//! higher of ListOffsets' answer and the first Fetch response's, because some
//! brokers answer ListOffsets with a batch boundary (see `spec/kafka.md`).
//! Records are encoded in offset order and chunked like any stream, so a
//! second day's snapshot stores only what was appended.

use super::client::KafkaConsumer as BaseConsumer;
use super::client::{retry, KafkaOptions};
use crate::archiver::Packer;
use crate::error::{Error, Kind, Result};
use crate::progress::Progress;
use crate::repo::kafka::{
    encode_record, ConfigEntry, GroupMeta, GroupOffset, KafkaMeta, PartitionMeta, TimestampType,
    TopicMeta,
};
use crate::repo::{Node, SourceKind};
use crate::source::SourceOutcome;
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to back up.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Topic names or regular expressions (whole-name match); empty = all.
    pub topics: Vec<String>,
    /// Also topics whose name starts with `__` (Kafka's internal topics).
    pub include_internal: bool,
    /// Metadata and group offsets only.
    pub no_messages: bool,
}

/// How long reading a partition may make no progress before it fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn consumer(opts: &KafkaOptions, group: &str) -> Result<BaseConsumer> {
    let mut c = opts.config();
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("check.crcs", "true")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        // A backup reads a backlog up to a known end: a broker that holds
        // every fetch for its full wait (Tansu does, Kafka returns early
        // when data is there) would otherwise pace the backup at one
        // fetch per 500 ms.
        .set("fetch.wait.max.ms", "10");
    c.create_with_context(super::client::Quiet).map_err(|e| {
        Error::usage(format!("cannot configure a Kafka consumer: {e}")).with_hint(
            "check the properties given with --kafka-config (librdkafka names, key=value)",
        )
    })
}

pub fn admin(opts: &KafkaOptions) -> Result<AdminClient<DefaultClientContext>> {
    opts.config()
        .create()
        .map_err(|e| Error::usage(format!("cannot configure a Kafka admin client: {e}")))
}

fn config_source(s: &ConfigSource) -> &'static str {
    match s {
        ConfigSource::Unknown => "unknown",
        ConfigSource::DynamicTopic => "dynamic-topic",
        ConfigSource::DynamicBroker => "dynamic-broker",
        ConfigSource::DynamicDefaultBroker => "dynamic-default-broker",
        ConfigSource::StaticBroker => "static-broker",
        ConfigSource::Default => "default",
    }
}

/// The topics `patterns` select among `all` (sorted), or a usage error
/// naming a pattern that selects nothing.
pub fn select_topics(
    all: &[String],
    patterns: &[String],
    include_internal: bool,
) -> Result<Vec<String>> {
    let internal = |t: &str| t.starts_with("__");
    if patterns.is_empty() {
        let mut v: Vec<String> = all
            .iter()
            .filter(|t| include_internal || !internal(t))
            .cloned()
            .collect();
        v.sort();
        return Ok(v);
    }
    let mut chosen = std::collections::BTreeSet::new();
    for p in patterns {
        let re = regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
            Error::usage(format!(
                "--topic {p:?} is not a valid regular expression: {e}"
            ))
        })?;
        let before = chosen.len();
        for t in all {
            // A topic named literally is taken even when internal.
            if t == p || (re.is_match(t) && (include_internal || !internal(t))) {
                chosen.insert(t.clone());
            }
        }
        if chosen.len() == before && !all.iter().any(|t| t == p) {
            let mut names: Vec<&str> = all
                .iter()
                .filter(|t| !internal(t))
                .map(|s| s.as_str())
                .collect();
            names.sort();
            return Err(
                Error::usage(format!("--topic {p:?} matches no topic")).with_hint(format!(
                    "the cluster has: {}",
                    if names.is_empty() {
                        "no topics".to_string()
                    } else {
                        names.join(", ")
                    }
                )),
            );
        }
    }
    Ok(chosen.into_iter().collect())
}

/// Back up a Kafka cluster as source `source_name`.
pub fn archive_kafka(
    packer: &mut Packer,
    source_name: &str,
    opts: &KafkaOptions,
    what: &BackupOptions,
    quiet: bool,
) -> Result<SourceOutcome> {
    let timeout = opts.timeout;
    let consumer = consumer(opts, &format!("cairn-backup-{}", std::process::id()))?;
    let md = retry(opts, "fetching cluster metadata", || {
        consumer.fetch_metadata(None, timeout)
    })?;
    let all: Vec<String> = md.topics().iter().map(|t| t.name().to_string()).collect();
    let selected = select_topics(&all, &what.topics, what.include_internal)?;
    let cluster_id = consumer.client().fetch_cluster_id(timeout);
    let mut meta = KafkaMeta {
        cluster_id,
        brokers: md.brokers().len(),
        messages: !what.no_messages,
        ..Default::default()
    };
    for name in &selected {
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .expect("selected from this list");
        if let Some(e) = t.error() {
            return Err(Error::failure(format!(
                "the brokers report topic {name:?} as unusable: {e:?}"
            )));
        }
        let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        partitions.sort();
        meta.topics.push(TopicMeta {
            name: name.clone(),
            replication_factor: t
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .max()
                .unwrap_or(1),
            configs: Vec::new(),
            partitions: partitions
                .into_iter()
                .map(|id| PartitionMeta {
                    id,
                    ..Default::default()
                })
                .collect(),
        });
    }
    read_configs(opts, &mut meta.topics)?;
    // Groups before watermarks: a commit made meanwhile is then still <= high.
    meta.groups = read_groups(opts, &consumer, &meta.topics)?;
    let wanted: Vec<(String, i32)> = meta
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.id)))
        .collect();
    let marks = side_by_side(&wanted, |(topic, id)| {
        retry(opts, &format!("reading offsets of {topic}/{id}"), || {
            consumer.fetch_watermarks(topic, *id, timeout)
        })
    });
    let mut marks = marks.into_iter();
    for t in &mut meta.topics {
        for p in &mut t.partitions {
            let (low, high) = marks.next().expect("one per partition")?;
            p.low = low;
            p.high = high;
            p.end = high;
        }
    }
    let (mut nodes, mut verified) = (Vec::new(), Vec::new());
    if !what.no_messages {
        let progress = Progress::bytes(0, quiet, "kafka");
        (nodes, verified) = read_and_check(packer, &mut meta.topics, |packer, t, p| {
            read_partition(packer, &consumer, opts, t, p, &progress)
        })?;
        progress.finish();
    }
    let meta = serde_json::to_value(&meta).map_err(|e| Error::failure(e.to_string()))?;
    let mut outcome = crate::source::stream::source_from_nodes(
        packer,
        source_name,
        SourceKind::Kafka,
        nodes,
        meta,
    )?;
    outcome.verified = verified;
    Ok(outcome)
}

/// Read every partition of `topics` with `read`, and on other threads read
/// each one back from the repository and check it as its packs are written
/// (the check after a backup, issue 4 §4, which costs decrypting and hashing
/// everything again: the CPU a consumer leaves idle while it waits for
/// fetches). When reading ends, the last pack is closed early so the check
/// can finish. Returns the partitions' nodes and the paths of those checked;
/// the others (storing failed, or their chunks were never published to the
/// checkers, see [`wait_for_checkers`]) are checked before the snapshot is
/// saved ([`super::verify_stored`]).
fn read_and_check(
    packer: &mut Packer,
    topics: &mut [TopicMeta],
    mut read: impl FnMut(&mut Packer, &str, &mut PartitionMeta) -> Result<Option<Node>>,
) -> Result<(Vec<Node>, Vec<String>)> {
    let mut nodes = Vec::new();
    let (repo, stored) = (packer.repo(), packer.stored_chunks());
    let stop = AtomicBool::new(false);
    stored.watch(true);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (read_all, checked) = std::thread::scope(|s| {
        // One checker per core (at most 4), each taking the next partition:
        // when reading ends, the partitions still being checked are
        // finished side by side.
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        let checkers: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, stop) = (rx.clone(), &stop);
                s.spawn(move || super::verify_while_reading(repo, stored, rx, stop))
            })
            .collect();
        drop(rx);
        let read_all = (|| {
            for t in topics.iter_mut() {
                let mut records = 0;
                for p in &mut t.partitions {
                    if let Some(node) = read(packer, &t.name, p)? {
                        let consumed = super::Consumed {
                            topic: t.name.clone(),
                            partition: p.clone(),
                            node: node.clone(),
                        };
                        // The checkers end early only on a mismatch, which they return.
                        let _ = tx.send(consumed);
                        nodes.push(node);
                    }
                    records += p.records;
                }
                tracing::info!(topic = %t.name, partitions = t.partitions.len(), records, "topic read");
            }
            Ok(())
        })();
        drop(tx);
        if read_all.is_ok() {
            wait_for_checkers(packer, &checkers, &stop);
        }
        stop.store(true, Ordering::SeqCst);
        let checked = checkers
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| Err(Error::failure("a checking thread panicked")))
            })
            .collect::<Result<Vec<Vec<String>>>>()
            .map(|v| v.concat());
        (read_all, checked)
    });
    stored.watch(false);
    read_all?;
    let checked = checked?;
    tracing::info!(
        partitions = checked.len(),
        "partitions read back from the repository and checked while the backup ran"
    );
    Ok((nodes, checked))
}

/// When every partition has been read: have the last packs written now,
/// and wait for the checkers to read them back, unless storing fails
/// meanwhile. Once every pack is written, a chunk still missing never comes
/// (stored before the checkers watched, or checked and let go and then met
/// again, as in a mirrored topic): the checkers are then told to stop
/// waiting, and what they leave is checked before the manifest is written.
fn wait_for_checkers<T>(
    packer: &mut Packer,
    checkers: &[std::thread::ScopedJoinHandle<'_, T>],
    stop: &AtomicBool,
) {
    let sent = match packer.flush_packs() {
        Ok(sent) => sent,
        Err(e) => return tracing::debug!("cannot close the last pack early: {e}"),
    };
    while !checkers.iter().all(|c| c.is_finished()) && !packer.has_failed() {
        if packer.stored_chunks().all_written(sent) {
            stop.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `f` of every item, in order, run on up to [`SIDE_BY_SIDE`] threads at
/// once: for requests that each wait a round trip on the brokers.
fn side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut out = Vec::with_capacity(items.len());
    for batch in items.chunks(SIDE_BY_SIDE) {
        if batch.len() == 1 {
            out.push(f(&batch[0]));
            continue;
        }
        std::thread::scope(|s| {
            let running: Vec<_> = batch.iter().map(|i| s.spawn(|| f(i))).collect();
            out.extend(
                running
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            );
        });
    }
    out
}

/// How many broker requests [`side_by_side`] has in flight.
const SIDE_BY_SIDE: usize = 8;

fn read_configs(opts: &KafkaOptions, topics: &mut [TopicMeta]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin = admin(opts)?;
    let specs: Vec<ResourceSpecifier> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    let aopts = AdminOptions::new().request_timeout(Some(opts.timeout));
    let results = retry(opts, "reading topic configurations", || {
        super::client::block_on(admin.describe_configs(&specs, &aopts))
    })?;
    for (t, r) in topics.iter_mut().zip(results) {
        let res = r.map_err(|code| {
            Error::failure(format!(
                "reading the configuration of topic {:?}: {code}",
                t.name
            ))
        })?;
        t.configs = res
            .entries
            .iter()
            .map(|e| ConfigEntry {
                name: e.name.clone(),
                value: if e.is_sensitive {
                    None
                } else {
                    e.value.clone()
                },
                source: config_source(&e.source).to_string(),
                is_default: e.is_default,
                read_only: e.is_read_only,
                sensitive: e.is_sensitive,
            })
            .collect();
        t.configs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(())
}

fn read_groups(
    opts: &KafkaOptions,
    consumer: &BaseConsumer,
    topics: &[TopicMeta],
) -> Result<Vec<GroupMeta>> {
    let list = retry(opts, "listing consumer groups", || {
        consumer.fetch_group_list(None, opts.timeout)
    })?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in &t.partitions {
            tpl.add_partition(&t.name, p.id);
        }
    }
    let listed: Vec<_> = list
        .groups()
        .iter()
        .filter(|g| g.protocol_type().is_empty() || g.protocol_type() == "consumer")
        .collect();
    let names: Vec<&str> = listed.iter().map(|g| g.name()).collect();
    // A group's committed offsets are read by a consumer of that group,
    // each a client of its own (connection, coordinator look-up): side by
    // side they cost one such set-up, not one per group.
    let read = side_by_side(&names, |name| -> Result<Vec<GroupOffset>> {
        let mut offsets = Vec::new();
        if tpl.count() > 0 {
            let gc = self::consumer(opts, name)?;
            let committed = retry(
                opts,
                &format!("reading the offsets of group {name:?}"),
                || gc.committed_offsets(tpl.clone(), opts.timeout),
            )?;
            for e in committed.elements() {
                if let Offset::Offset(o) = e.offset() {
                    offsets.push(GroupOffset {
                        topic: e.topic().to_string(),
                        partition: e.partition(),
                        offset: o,
                        metadata: e.metadata().to_string(),
                    });
                }
            }
        }
        Ok(offsets)
    });
    let mut groups = Vec::new();
    for (g, offsets) in listed.into_iter().zip(read) {
        let mut offsets = offsets?;
        if offsets.is_empty() && !topics.is_empty() {
            continue; // the group consumes none of the selected topics
        }
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        groups.push(GroupMeta {
            name: g.name().to_string(),
            state: g.state().to_string(),
            protocol_type: g.protocol_type().to_string(),
            members: g.members().len(),
            offsets,
        });
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(groups)
}

/// The high watermark librdkafka learned from the latest Fetch response.
fn fetch_high_watermark(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut lo, mut hi) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`; the topic is a
    // valid C string for the call; lo and hi are valid out-pointers.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut lo,
            &mut hi,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0)
        .then_some(hi)
}

fn read_partition(
    packer: &mut Packer,
    consumer: &BaseConsumer,
    opts: &KafkaOptions,
    topic: &str,
    p: &mut PartitionMeta,
    progress: &Progress,
) -> Result<Option<Node>> {
    let path = format!("kafka/{topic}/{}", p.id);
    let mut reader = PartitionReader {
        consumer,
        topic,
        partition: p.id,
        end: p.high,
        end_checked: false,
        done: p.high <= p.low,
        records: 0,
        first: None,
        last: None,
    };
    if !reader.done {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p.id, Offset::Offset(p.low))
            .map_err(|e| Error::failure(format!("{topic}/{}: {e}", p.id)))?;
        retry(opts, &format!("assigning {topic}/{}", p.id), || {
            consumer.assign(&tpl)
        })?;
    }
    let mut chunks = RecordChunks::default();
    reader.read_into(&mut chunks, packer, progress)?;
    chunks.finish(packer, progress)?;
    let size = chunks.hasher.count();
    p.end = reader.end;
    p.records = reader.records;
    p.bytes = size;
    p.digest = chunks.hasher.finalize().to_hex().to_string();
    let content = chunks.ids;
    p.first_offset = reader.first;
    p.last_offset = reader.last;
    p.node = Some(path.clone());
    tracing::debug!(
        topic,
        partition = p.id,
        records = p.records,
        bytes = size,
        end = p.end,
        "partition read"
    );
    Ok(Some(Node::stream(path, size, content)))
}

/// A chunk ends before the first record whose offset lies in another block
/// of this many offsets than the record before it.
const OFFSETS_PER_CHUNK: i64 = 64;
/// A chunk longer than this is cut, mid-record if need be.
const MAX_CHUNK: usize = 1 << 20;

/// Cuts a partition's record stream into chunks at record boundaries chosen
/// by offset: a chunk ends where the records' offsets cross a multiple of
/// [`OFFSETS_PER_CHUNK`] (or at [`MAX_CHUNK`] bytes). Offsets never change
/// once written, so the boundaries of yesterday's records are today's too,
/// whatever was appended, compacted away or deleted below the log start,
/// and no content-defined chunker has to scan the bytes to find them.
#[derive(Default)]
struct RecordChunks {
    buf: Vec<u8>,
    block: Option<i64>,
    ids: Vec<crate::repo::ChunkId>,
    /// BLAKE3 of the whole stream, as stored (its `count()` is the length).
    hasher: blake3::Hasher,
}

impl RecordChunks {
    /// Append the record at `offset`, encoded by `encode`, storing the
    /// chunk it ends first.
    fn push(
        &mut self,
        packer: &mut Packer,
        progress: &Progress,
        offset: i64,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        let block = offset.div_euclid(OFFSETS_PER_CHUNK);
        if self.block.is_some_and(|b| b != block) {
            self.store(packer, progress, self.buf.len())?;
        }
        self.block = Some(block);
        encode(&mut self.buf);
        while self.buf.len() >= MAX_CHUNK {
            self.store(packer, progress, MAX_CHUNK)?;
        }
        Ok(())
    }

    /// Store the last chunk.
    fn finish(&mut self, packer: &mut Packer, progress: &Progress) -> Result<()> {
        self.store(packer, progress, self.buf.len())
    }

    /// Store the first `n` buffered bytes as a chunk.
    fn store(&mut self, packer: &mut Packer, progress: &Progress, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let chunk = &self.buf[..n];
        self.hasher.update(chunk);
        self.ids.push(packer.add_chunk(chunk)?);
        progress.inc(n as u64);
        self.buf.drain(..n);
        Ok(())
    }
}

/// Reads one assigned partition's records into [`RecordChunks`].
struct PartitionReader<'a> {
    consumer: &'a BaseConsumer,
    topic: &'a str,
    partition: i32,
    /// Stop before this offset.
    end: i64,
    end_checked: bool,
    done: bool,
    records: u64,
    first: Option<i64>,
    last: Option<i64>,
}

impl PartitionReader<'_> {
    /// Poll until the partition is done, storing its records in `chunks`.
    fn read_into(
        &mut self,
        chunks: &mut RecordChunks,
        packer: &mut Packer,
        progress: &Progress,
    ) -> Result<()> {
        let mut idle_since = Instant::now();
        // Reading the clock for every record costs 1% of a backup: note
        // progress, and restart the stall clock only when a poll is empty.
        let mut progressed = false;
        while !self.done {
            crate::interrupt::check()?;
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {
                    if std::mem::take(&mut progressed) {
                        idle_since = Instant::now();
                    }
                    if idle_since.elapsed() > STALL_TIMEOUT {
                        return Err(Error::new(
                            Kind::Unavailable,
                            format!(
                                "reading {}/{} made no progress for {}s (at offset {:?}, reading up to {})",
                                self.topic,
                                self.partition,
                                STALL_TIMEOUT.as_secs(),
                                self.last,
                                self.end
                            ),
                        )
                        .with_hint("check that the brokers are up and the partition has a leader"));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => self.done = true,
                Some(Err(e)) if super::client::is_transient(&e) => {
                    tracing::warn!(
                        topic = self.topic,
                        partition = self.partition,
                        "fetch failed: {e}; librdkafka retries"
                    );
                }
                Some(Err(e)) => {
                    return Err(Error::failure(format!(
                        "reading {}/{}: {e}",
                        self.topic, self.partition
                    )))
                }
                Some(Ok(m)) => {
                    progressed = true;
                    if m.topic() != self.topic || m.partition() != self.partition {
                        continue; // left over from a previous assignment
                    }
                    if !self.end_checked {
                        self.end_checked = true;
                        if let Some(h) =
                            fetch_high_watermark(self.consumer, self.topic, self.partition)
                        {
                            self.end = self.end.max(h);
                        }
                    }
                    let offset = m.offset();
                    if offset >= self.end {
                        self.done = true;
                        break;
                    }
                    let (ts, ty) = match m.timestamp() {
                        rdkafka::Timestamp::NotAvailable => (-1, TimestampType::None),
                        rdkafka::Timestamp::CreateTime(t) => (t, TimestampType::CreateTime),
                        rdkafka::Timestamp::LogAppendTime(t) => (t, TimestampType::LogAppendTime),
                    };
                    let headers: Vec<(&str, Option<&[u8]>)> = m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                        .unwrap_or_default();
                    chunks.push(packer, progress, offset, |buf| {
                        encode_record(buf, offset, ts, ty, m.key(), m.payload(), &headers)
                    })?;
                    self.records += 1;
                    self.first.get_or_insert(offset);
                    self.last = Some(offset);
                    if offset + 1 >= self.end {
                        self.done = true;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ChunkId;

    /// The chunk ids, length and digest of records `offsets` (value length
    /// `len(offset)`), cut by [`RecordChunks`].
    fn cut(
        repo: &crate::repository::Repository,
        offsets: impl Iterator<Item = i64>,
        len: impl Fn(i64) -> usize,
    ) -> (Vec<ChunkId>, u64, String, Vec<u8>) {
        let (mut stream, progress) = (Vec::new(), Progress::hidden());
        let (chunks, stored, _) = crate::archiver::with_packer(repo, |p| {
            let mut c = RecordChunks::default();
            for o in offsets {
                let value: Vec<u8> = (0..len(o)).map(|i| (o as usize * 7 + i) as u8).collect();
                let encode = |b: &mut Vec<u8>| {
                    encode_record(b, o, o, TimestampType::CreateTime, None, Some(&value), &[])
                };
                encode(&mut stream);
                c.push(p, &progress, o, encode)?;
            }
            c.finish(p, &progress)?;
            Ok(c)
        })
        .unwrap();
        crate::job::commit_index(repo, stored.packs).unwrap();
        let digest = chunks.hasher.finalize().to_hex().to_string();
        (chunks.ids, chunks.hasher.count(), digest, stream)
    }

    #[test]
    fn record_chunks_are_cut_by_offset_and_stay_put() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repository::test_repo(dir.path());
        let len = |o: i64| 100 + (o as usize % 7) * 50;
        let (day1, size, digest, stream) = cut(&repo, 0..1000, len);
        // The stream is stored whole, in order, and its digest is of all of it.
        assert_eq!(size, stream.len() as u64);
        assert_eq!(digest, blake3::hash(&stream).to_hex().to_string());
        assert_eq!(repo.read_stream(&day1).unwrap(), stream);
        // One chunk per block of offsets: 0..64, 64..128, …, 960..1000.
        assert_eq!(day1.len(), 16);
        // The log start moved past offset 100 and records were appended:
        // every chunk of a whole block both days hold is the same.
        let (day2, ..) = cut(&repo, 100..1500, len);
        let whole = |ids: &[ChunkId]| {
            ids.iter()
                .copied()
                .collect::<std::collections::HashSet<_>>()
        };
        let shared = whole(&day1).intersection(&whole(&day2)).count();
        assert_eq!(shared, 13, "blocks 128..960 are shared");
        // Compaction removed offsets 300..310: only the block holding them changes.
        let (compacted, ..) = cut(&repo, (0..1000).filter(|o| !(300..310).contains(o)), len);
        let changed: Vec<usize> = (0..16).filter(|&i| day1[i] != compacted[i]).collect();
        assert_eq!(changed, vec![4]);
        // A record longer than a chunk's limit is split, and reads back whole.
        let big = |o: i64| if o == 5 { 3 * MAX_CHUNK } else { 10 };
        let (ids, size, _, stream) = cut(&repo, 0..10, big);
        assert!(ids.len() >= 4, "{} chunks", ids.len());
        assert_eq!(size, stream.len() as u64);
        assert_eq!(repo.read_stream(&ids).unwrap(), stream);
    }

    /// Records 0..n of a small topic, cut and stored as a partition is.
    fn events(packer: &mut Packer, n: i64) -> Result<RecordChunks> {
        let progress = Progress::hidden();
        let mut c = RecordChunks::default();
        for o in 0..n {
            let value = format!("event {o}");
            c.push(packer, &progress, o, |b| {
                encode_record(
                    b,
                    o,
                    o,
                    TimestampType::CreateTime,
                    None,
                    Some(value.as_bytes()),
                    &[],
                )
            })?;
        }
        c.finish(packer, &progress)?;
        Ok(c)
    }

    /// A partition whose chunks the run stored before the check began (an
    /// earlier source of the same run backed up the same records) is never
    /// published to the checkers: once every pack is written they stop
    /// waiting for it, and it is left to the check before the manifest.
    #[test]
    fn a_partition_stored_earlier_in_the_run_does_not_stall_the_check() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let repo = crate::repository::test_repo(dir.path());
            let checked = crate::archiver::with_packer(&repo, |packer| {
                events(packer, 3000)?;
                let sent = packer.flush_packs()?;
                while !packer.stored_chunks().all_written(sent) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut topics = vec![TopicMeta {
                    name: "orders".into(),
                    partitions: vec![PartitionMeta::default()],
                    ..Default::default()
                }];
                read_and_check(packer, &mut topics, |packer, topic, p| {
                    let c = events(packer, 3000)?;
                    (p.records, p.end, p.high) = (3000, 3000, 3000);
                    p.digest = c.hasher.finalize().to_hex().to_string();
                    let path = format!("kafka/{topic}/{}", p.id);
                    p.node = Some(path.clone());
                    Ok(Some(Node::stream(path, c.hasher.count(), c.ids)))
                })
            })
            .map(|((_, checked), ..)| checked);
            let _ = done_tx.send(checked);
        });
        let checked = done_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the check waited for chunks that were never going to be published")
            .unwrap();
        assert!(checked.is_empty(), "{checked:?}");
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn topic_selection() {
        let all = names(&["orders", "orders.v2", "events", "__consumer_offsets"]);
        assert_eq!(
            select_topics(&all, &[], false).unwrap(),
            names(&["events", "orders", "orders.v2"])
        );
        assert_eq!(
            select_topics(&all, &names(&["orders.*"]), false).unwrap(),
            names(&["orders", "orders.v2"])
        );
        assert_eq!(
            select_topics(&all, &names(&["__consumer_offsets"]), false).unwrap(),
            names(&["__consumer_offsets"])
        );
        assert_eq!(select_topics(&all, &names(&[".*"]), true).unwrap().len(), 4);
        let e = select_topics(&all, &names(&["nope"]), false).unwrap_err();
        assert_eq!(e.kind(), Kind::Usage);
        assert!(e.hint().unwrap().contains("events, orders"));
        assert_eq!(
            select_topics(&all, &names(&["("]), false)
                .unwrap_err()
                .kind(),
            Kind::Usage
        );
    }
}
