//! Kafka restores: topics recreated with their partitions and configuration,
//! records produced in their original order to their original partition by
//! an idempotent producer, and consumer-group offsets translated through the
//! source → target offset map (see [`super::offsets`]).

use super::backup::{admin, consumer};
use super::client::{block_on, retry, KafkaOptions};
use super::offsets::OffsetMap;
use super::recreate::{self, DeletedTopic};
use crate::error::{Error, Kind, Result};
use crate::repo::kafka::{KafkaMeta, RecordReader, TimestampType, TopicMeta};
use crate::repo::{Node, SourceRecord};
use crate::repository::Repository;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which recorded topic configuration entries a restore applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConfigChoice {
    /// Entries set on the topic itself (source `dynamic-topic`): the default.
    #[default]
    Explicit,
    /// Every entry that is neither read-only nor sensitive — for brokers that
    /// do not report where a value came from.
    All,
}

/// What a restore does with a snapshot's topic that already exists on the
/// target (under its target name).
///
/// Ordered from the mildest to the strongest: where two settings meet (a
/// plan's and the command line's), the stronger applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistingTopics {
    /// Refuse the restore, listing every such topic, before changing anything.
    #[default]
    Refuse,
    /// Add the records to it (`--force`).
    Append,
    /// Delete it and create it again from the snapshot
    /// (`--recreate-topics`), unless a consumer group with live members uses it.
    Recreate,
}

impl ExistingTopics {
    /// The plan's spelling of each choice.
    pub const NAMES: [(&'static str, ExistingTopics); 3] = [
        ("refuse", ExistingTopics::Refuse),
        ("append", ExistingTopics::Append),
        ("recreate", ExistingTopics::Recreate),
    ];
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Rename topics: `(source name, target name)`.
    pub topic_map: Vec<(String, String)>,
    /// Create topics and nothing else (no records, no group offsets).
    pub no_messages: bool,
    /// What to do with topics that already exist on the target.
    pub existing: ExistingTopics,
    pub configs: ConfigChoice,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TopicReport {
    pub source: String,
    pub target: String,
    pub partitions: usize,
    pub created: bool,
    /// It existed on the target and was deleted, then created (`created` too).
    pub recreated: bool,
    pub configs_applied: Vec<String>,
    pub records: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TranslatedOffset {
    pub topic: String,
    pub partition: i32,
    pub source_offset: i64,
    pub target_offset: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupReport {
    pub name: String,
    /// Whether `offsets` were committed on the target.
    pub committed: bool,
    pub offsets: Vec<TranslatedOffset>,
    /// Why the group's offsets were not committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// Topics deleted on the target to be created again (`--recreate-topics`).
    pub deleted: Vec<DeletedTopic>,
    pub topics: Vec<TopicReport>,
    pub groups: Vec<GroupReport>,
    pub warnings: Vec<String>,
}

impl RestoreReport {
    /// An error naming the groups whose offsets were not committed because
    /// they have live members on the target (callers add their own hint).
    pub fn refused_groups(&self) -> Option<Error> {
        let refused: Vec<&str> = self
            .groups
            .iter()
            .filter(|g| g.refused.is_some())
            .map(|g| g.name.as_str())
            .collect();
        (!refused.is_empty()).then(|| {
            Error::failure(format!(
                "the offsets of group(s) {} were not committed: they have live members on the target",
                refused.join(", ")
            ))
        })
    }
}

/// Where every stored chunk of the restore is, found while verifying its packs.
type Located = Arc<HashMap<crate::repo::ChunkId, crate::index::Location>>;

/// topic → partition → (source offset, target offset) of delivered records.
type Delivered = HashMap<String, HashMap<i32, Vec<(i64, i64)>>>;

/// Collects delivery reports: the offset each record got on the target.
#[derive(Default)]
struct Deliveries {
    map: Mutex<Delivered>,
    errors: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, source_offset: usize) {
        match r {
            Ok(m) => {
                if let Ok(mut map) = self.map.lock() {
                    let per_topic = match map.get_mut(m.topic()) {
                        Some(t) => t,
                        None => map.entry(m.topic().to_string()).or_default(),
                    };
                    per_topic
                        .entry(m.partition())
                        .or_default()
                        .push((source_offset as i64, m.offset()));
                }
            }
            Err((e, m)) => {
                if let Ok(mut errs) = self.errors.lock() {
                    errs.push(describe_failed(e, m, source_offset));
                }
            }
        }
    }
}

fn describe_failed(e: &KafkaError, m: &BorrowedMessage<'_>, source_offset: usize) -> String {
    format!(
        "{}/{} (source offset {source_offset}): {e}",
        m.topic(),
        m.partition()
    )
}

fn target_name<'a>(opts: &'a RestoreOptions, source: &'a str) -> &'a str {
    opts.topic_map
        .iter()
        .find(|(s, _)| s == source)
        .map(|(_, t)| t.as_str())
        .unwrap_or(source)
}

fn configs_to_apply(t: &TopicMeta, choice: ConfigChoice) -> Vec<(String, String)> {
    t.configs
        .iter()
        .filter(|c| match choice {
            ConfigChoice::Explicit => c.is_topic_override(),
            ConfigChoice::All => !c.read_only && !c.sensitive,
        })
        .filter_map(|c| Some((c.name.clone(), c.value.clone()?)))
        .collect()
}

/// Restore Kafka source `source` of a snapshot into the brokers of `target`.
pub fn restore_kafka(
    repo: &Repository,
    source: &SourceRecord,
    target: &KafkaOptions,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let meta: KafkaMeta = serde_json::from_value(source.metadata.clone()).map_err(|e| {
        Error::integrity(format!(
            "source {:?} has no readable Kafka metadata: {e}",
            source.name
        ))
    })?;
    for (from, _) in &opts.topic_map {
        if !meta.topics.iter().any(|t| &t.name == from) {
            let names: Vec<&str> = meta.topics.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::usage(format!(
                "--topic-map names {from:?}, which is not in the snapshot"
            ))
            .with_hint(format!("its topics are: {}", names.join(", "))));
        }
    }
    let with_messages = meta.messages && !opts.no_messages;
    // The clients connect (and the producer obtains its idempotent producer
    // id) in the background while the packs are verified: that changes
    // nothing on the target, and it took 0.3 s of the restore when it
    // waited for the verification.
    let admin = admin(target)?;
    let producer = with_messages.then(|| producer(target)).transpose()?;
    // Verify every blob this restore needs before touching the target.
    let (nodes, located): (HashMap<String, Node>, Located) = if with_messages {
        let nodes = repo.read_tree(source)?;
        let (located, _) = crate::restorer::verify_before_restore(repo, &nodes)?;
        (
            nodes.into_iter().map(|n| (n.path.clone(), n)).collect(),
            Arc::new(located),
        )
    } else {
        Default::default()
    };
    let mut report = RestoreReport::default();
    let md = retry(target, "fetching cluster metadata", || {
        admin.inner().fetch_metadata(None, target.timeout)
    })?;
    let brokers = md.brokers().len().max(1);
    let existing: HashMap<String, usize> = md
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    // Refuse before changing anything.
    let mut conflicts = Vec::new();
    for t in &meta.topics {
        let name = target_name(opts, &t.name);
        let Some(&n) = existing.get(name) else {
            continue;
        };
        match opts.existing {
            ExistingTopics::Refuse => conflicts.push(name.to_string()),
            ExistingTopics::Append if n < t.partitions.len() => {
                return Err(Error::failure(format!(
                    "topic {name:?} exists on the target with {n} partition(s), the snapshot has {}",
                    t.partitions.len()
                ))
                .with_hint("restore into a new topic with --topic-map old=new, or replace it with --recreate-topics"))
            }
            ExistingTopics::Append => {}
            ExistingTopics::Recreate => report.deleted.push(DeletedTopic {
                name: name.to_string(),
                partitions: n,
            }),
        }
    }
    if !conflicts.is_empty() {
        return Err(Error::failure(format!(
            "topic(s) already exist on {}: {}; nothing was changed",
            target.brokers,
            conflicts.join(", ")
        ))
        .with_hint("give --force to add the records to the existing topics, --recreate-topics to delete and create them again, or rename with --topic-map old=new"));
    }
    if !report.deleted.is_empty() {
        // Groups whose offsets the restore commits count too: their commit
        // would be refused after the topics were replaced.
        let to_commit: Vec<&str> = if with_messages {
            meta.groups.iter().map(|g| g.name.as_str()).collect()
        } else {
            Vec::new()
        };
        let live = recreate::live_groups(target, &report.deleted, &to_commit)?;
        if !live.is_empty() {
            return Err(recreate::refusal(target, &live));
        }
        recreate::delete_topics(&admin, target, &report.deleted)?;
    }
    let existing: HashMap<String, usize> = existing
        .into_iter()
        .filter(|(name, _)| !report.deleted.iter().any(|d| &d.name == name))
        .collect();
    create_topics(&admin, target, &meta, opts, brokers, &existing, &mut report)?;
    if let Some(p) = producer.as_ref() {
        refresh_recreated(p, target, &report)?;
    }
    if let Some(producer) = producer {
        let maps = produce(
            repo,
            producer,
            target,
            &meta,
            opts,
            &nodes,
            &located,
            &mut report,
        )?;
        commit_groups(target, &meta, opts, &maps, &mut report)?;
    } else if !meta.groups.is_empty() {
        report
            .warnings
            .push("no records were restored, so consumer-group offsets were not committed".into());
    }
    Ok(report)
}

fn create_topics(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    target: &KafkaOptions,
    meta: &KafkaMeta,
    opts: &RestoreOptions,
    brokers: usize,
    existing: &HashMap<String, usize>,
    report: &mut RestoreReport,
) -> Result<()> {
    let mut new = Vec::new();
    let mut configs = Vec::new();
    for t in &meta.topics {
        let name = target_name(opts, &t.name);
        let cfg = configs_to_apply(t, opts.configs);
        report.topics.push(TopicReport {
            source: t.name.clone(),
            target: name.to_string(),
            partitions: t.partitions.len(),
            created: !existing.contains_key(name),
            recreated: report.deleted.iter().any(|d| d.name == name),
            configs_applied: cfg.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            records: 0,
        });
        configs.push(cfg);
    }
    for (i, t) in meta.topics.iter().enumerate() {
        let name = target_name(opts, &t.name);
        if existing.contains_key(name) {
            continue;
        }
        let mut rf = t.replication_factor.max(1);
        if rf > brokers {
            let w = format!(
                "topic {name:?}: replication factor {rf} lowered to {brokers}, the number of brokers on the target"
            );
            tracing::warn!("{w}");
            report.warnings.push(w);
            rf = brokers;
        }
        let mut nt = NewTopic::new(
            name,
            t.partitions.len() as i32,
            TopicReplication::Fixed(rf as i32),
        );
        for (k, v) in &configs[i] {
            nt = nt.set(k, v);
        }
        new.push(nt);
    }
    if new.is_empty() {
        return Ok(());
    }
    let aopts = AdminOptions::new().operation_timeout(Some(target.timeout));
    // Kafka deletes topics asynchronously: a topic just deleted can be
    // refused as existing for a while after the brokers stopped listing it.
    let wait = recreate::DELETE_WAIT.max(target.timeout);
    let deadline = std::time::Instant::now() + wait;
    let mut pending: Vec<&NewTopic<'_>> = new.iter().collect();
    while !pending.is_empty() {
        let results = retry(target, "creating topics", || {
            block_on(admin.create_topics(pending.iter().copied(), &aopts))
        })?;
        let mut again = Vec::new();
        let mut failed = Vec::new();
        for (t, code) in results.into_iter().filter_map(|r| r.err()) {
            let deleted = report.deleted.iter().any(|d| d.name == t);
            if deleted
                && code == RDKafkaErrorCode::TopicAlreadyExists
                && std::time::Instant::now() < deadline
            {
                again.push(t);
            } else {
                failed.push(format!("{t}: {code}"));
            }
        }
        if !failed.is_empty() {
            let gone: Vec<&str> = report.deleted.iter().map(|d| d.name.as_str()).collect();
            let mut e = Error::failure(format!(
                "could not create topic(s) on {}: {}",
                target.brokers,
                failed.join("; ")
            ));
            if !gone.is_empty() {
                e = e.with_hint(format!(
                    "deleted before: {}; running the same restore again creates them",
                    gone.join(", ")
                ));
            }
            return Err(e);
        }
        pending.retain(|nt| again.iter().any(|t| t == nt.name));
        if !pending.is_empty() {
            crate::interrupt::check()?;
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // Wait until every partition of the new topics has a leader.
    let deadline = std::time::Instant::now() + target.timeout.max(Duration::from_secs(30));
    for nt in &new {
        loop {
            let md = retry(target, "fetching topic metadata", || {
                admin.inner().fetch_metadata(Some(nt.name), target.timeout)
            })?;
            let ready = md.topics().first().is_some_and(|t| {
                t.error().is_none()
                    && t.partitions().len() as i32 == nt.num_partitions
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            });
            if ready {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::new(
                    Kind::Unavailable,
                    format!("topic {:?} has no leader for every partition yet", nt.name),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    tracing::info!(topics = new.len(), "topics created");
    Ok(())
}

/// Make the producer learn the partitions of the topics it saw before they
/// were deleted and created again: it kept their old metadata and failed
/// with "Local: Unknown partition". (A new producer would request its
/// idempotent producer id again: producing 35 records took 1.1 s instead
/// of 0.11 s on Tansu.)
fn refresh_recreated(
    producer: &BaseProducer<Deliveries>,
    target: &KafkaOptions,
    report: &RestoreReport,
) -> Result<()> {
    let deadline = std::time::Instant::now() + target.timeout.max(Duration::from_secs(30));
    for t in report.topics.iter().filter(|t| t.recreated) {
        loop {
            let md = retry(target, "fetching topic metadata", || {
                producer
                    .client()
                    .fetch_metadata(Some(&t.target), target.timeout)
            })?;
            let seen = md.topics().first().map_or(0, |m| {
                let ready = m.error().is_none() && m.partitions().iter().all(|p| p.leader() >= 0);
                if ready {
                    m.partitions().len()
                } else {
                    0
                }
            });
            if seen == t.partitions {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::new(
                    Kind::Unavailable,
                    format!(
                        "topic {:?} was created again with {} partition(s), but the producer's metadata from {} still shows {seen} with a leader after {}",
                        t.target, t.partitions, target.brokers,
                        humantime::format_duration(target.timeout.max(Duration::from_secs(30)))
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Offsets at which some group resumes, per (source topic, partition).
fn resume_points(meta: &KafkaMeta) -> HashMap<(String, i32), Vec<i64>> {
    let mut m: HashMap<(String, i32), Vec<i64>> = HashMap::new();
    for g in &meta.groups {
        for o in &g.offsets {
            m.entry((o.topic.clone(), o.partition))
                .or_default()
                .push(o.offset);
        }
    }
    for v in m.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    m
}

type Maps = HashMap<(String, i32), (OffsetMap, i64)>;

/// Partitions produced at once: records are sent round-robin, [`TURN`] at a
/// time from each, so the producer always has batches for several
/// partitions in flight (one partition after another leaves the broker
/// waiting on a single partition's batches).
const LANES: usize = 16;
/// Records sent from one partition before the next partition's turn.
const TURN: usize = 256;
/// librdkafka's largest batch (`batch.size`).
const BATCH_BYTES: usize = 4 << 20;

/// A partition to produce: topic index, topic, partition id, stored stream.
type Waiting<'a> = (usize, &'a TopicMeta, i32, &'a Node);

/// One partition being produced.
struct Lane<'a> {
    /// Index of the topic in the snapshot (and in the report).
    topic: usize,
    source: &'a str,
    target: &'a str,
    partition: i32,
    reader: RecordReader<crate::repository::FileReader<'a>>,
    /// Source offsets where a consumer group resumes, ascending.
    points: &'a [i64],
    next_point: usize,
    count: u64,
}

/// What the producing threads share.
struct Work<'a> {
    repo: &'a Repository,
    located: Located,
    producer: &'a BaseProducer<Deliveries>,
    opts: &'a RestoreOptions,
    points: &'a HashMap<(String, i32), Vec<i64>>,
    waiting: Mutex<std::vec::IntoIter<Waiting<'a>>>,
    /// (topic index, source topic, partition, records sent) per finished partition.
    finished: Mutex<Vec<(usize, &'a str, i32, u64)>>,
    failed: std::sync::atomic::AtomicBool,
}

impl<'a> Work<'a> {
    /// Produce partitions from the queue, `lanes` at a time, until it is
    /// empty or a thread failed (that thread returns the error).
    fn run(&self, lanes: usize) -> Result<()> {
        let r = self.run_lanes(lanes);
        if r.is_err() {
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn run_lanes(&self, max: usize) -> Result<()> {
        let mut lanes: Vec<Lane<'a>> = Vec::new();
        loop {
            if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            while lanes.len() < max {
                let next = self.waiting.lock().ok().and_then(|mut w| w.next());
                let Some((ti, t, partition, node)) = next else {
                    break;
                };
                lanes.push(Lane {
                    topic: ti,
                    source: &t.name,
                    target: target_name(self.opts, &t.name),
                    partition,
                    reader: RecordReader::new(
                        self.repo.open_file_located(node, self.located.clone())?,
                    ),
                    points: self
                        .points
                        .get(&(t.name.clone(), partition))
                        .map_or(&[], Vec::as_slice),
                    next_point: 0,
                    count: 0,
                });
            }
            if lanes.is_empty() {
                return Ok(());
            }
            let mut i = 0;
            while i < lanes.len() {
                if self.turn(&mut lanes[i])? {
                    let lane = lanes.swap_remove(i);
                    if let Ok(mut f) = self.finished.lock() {
                        f.push((lane.topic, lane.source, lane.partition, lane.count));
                    }
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Send up to [`TURN`] records of a partition; `true` when it is done.
    fn turn(&self, lane: &mut Lane<'a>) -> Result<bool> {
        for _ in 0..TURN {
            let Some(r) = lane.reader.next_ref().map_err(|e| {
                Error::integrity(format!("{}/{}: {e}", lane.source, lane.partition))
            })?
            else {
                return Ok(true);
            };
            crate::interrupt::check()?;
            // Start a new batch where a group resumes: a consumer's first
            // fetch then begins at a batch boundary.
            let pts = lane.points;
            if lane.next_point < pts.len() && pts[lane.next_point] <= r.offset {
                while lane.next_point < pts.len() && pts[lane.next_point] <= r.offset {
                    lane.next_point += 1;
                }
                wait_delivered(self.producer, lane.target, lane.partition, lane.count)?;
            }
            send(self.producer, lane.target, lane.partition, &r)?;
            lane.count += 1;
        }
        self.producer.poll(Duration::ZERO);
        Ok(false)
    }
}

/// Wait until the first `sent` records of a partition are acknowledged (or
/// one record failed), so the next one starts a new batch.
fn wait_delivered(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: i32,
    sent: u64,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let ctx = producer.context();
        let acked = ctx
            .map
            .lock()
            .ok()
            .and_then(|m| m.get(topic).and_then(|t| t.get(&partition)).map(Vec::len))
            .unwrap_or(0) as u64;
        let failed = ctx.errors.lock().map(|e| !e.is_empty()).unwrap_or(true);
        if acked >= sent || failed {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::new(
                Kind::Unavailable,
                format!("{topic}/{partition}: {acked} of {sent} records acknowledged after 300 s"),
            ));
        }
        crate::interrupt::check()?;
        producer.poll(Duration::from_millis(10));
    }
}

/// Hand one record to the producer, waiting while its queue is full.
fn send(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: i32,
    r: &crate::repo::kafka::RecordRef<'_>,
) -> Result<()> {
    let mut rec: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(topic, r.offset as usize).partition(partition);
    if r.timestamp_type != TimestampType::None && r.timestamp >= 0 {
        rec = rec.timestamp(r.timestamp);
    }
    // Most records have no headers: allocate librdkafka's list only when needed.
    if !r.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: *v });
        }
        rec = rec.headers(headers);
    }
    if let Some(k) = r.key {
        rec = rec.key(k);
    }
    if let Some(v) = r.value {
        rec = rec.payload(v);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => {
                return Err(Error::failure(format!(
                    "producing to {topic}/{partition}: {e}"
                )))
            }
        }
    }
}

/// The idempotent producer a restore sends records with.
fn producer(target: &KafkaOptions) -> Result<BaseProducer<Deliveries>> {
    let mut cfg = target.config();
    cfg.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "100000")
        .set("batch.size", BATCH_BYTES.to_string())
        // One full batch per lane waiting: more only adds memory (a 256 MiB
        // queue took the restore's peak RSS to 350-480 MiB, 64 MiB to
        // 200-225 MiB) and page faults, for no measurable speed.
        .set(
            "queue.buffering.max.kbytes",
            (LANES * BATCH_BYTES / 1024).to_string(),
        )
        .set("queue.buffering.max.messages", "1000000")
        .set("message.max.bytes", "100000000")
        .set("message.timeout.ms", "300000");
    cfg.create_with_context(Deliveries::default())
        .map_err(|e| Error::usage(format!("cannot configure a Kafka producer: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn produce(
    repo: &Repository,
    producer: BaseProducer<Deliveries>,
    target: &KafkaOptions,
    meta: &KafkaMeta,
    opts: &RestoreOptions,
    nodes: &HashMap<String, Node>,
    located: &Located,
    report: &mut RestoreReport,
) -> Result<Maps> {
    let points = resume_points(meta);
    let started = std::time::Instant::now();
    // Partitions waiting for a lane, in snapshot order.
    let waiting: Vec<Waiting<'_>> = meta
        .topics
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.partitions.iter().filter_map(move |p| {
                let node = p.node.as_ref().and_then(|n| nodes.get(n))?;
                Some((ti, t, p.id, node))
            })
        })
        .collect();
    let work = Work {
        repo,
        located: located.clone(),
        producer: &producer,
        opts,
        points: &points,
        waiting: Mutex::new(waiting.into_iter()),
        finished: Mutex::new(Vec::new()),
        failed: std::sync::atomic::AtomicBool::new(false),
    };
    // Reading records back (decrypt, decompress, verify, parse) costs about
    // as much as producing them: workers share it.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| work.run(LANES.div_ceil(workers))))
            .collect();
        // Join every thread before looking at the outcomes.
        let outcomes: Vec<Result<()>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::failure("a producer thread panicked")))
            })
            .collect();
        outcomes.into_iter().collect::<Result<()>>()
    })?;
    let mut expected: HashMap<(String, i32), u64> = HashMap::new();
    for (ti, source, partition, count) in work.finished.into_inner().unwrap_or_default() {
        expected.insert((source.to_string(), partition), count);
        report.topics[ti].records += count;
    }
    producer.flush(Duration::from_secs(300)).map_err(|e| {
        Error::new(
            Kind::Unavailable,
            format!("producing to {} did not finish: {e}", target.brokers),
        )
    })?;
    let ctx = producer.context();
    let errors = std::mem::take(&mut *ctx.errors.lock().unwrap_or_else(|e| e.into_inner()));
    if !errors.is_empty() {
        return Err(Error::failure(format!(
            "{} record(s) were not accepted by {}, e.g. {}",
            errors.len(),
            target.brokers,
            errors[0]
        )));
    }
    let mut delivered = std::mem::take(&mut *ctx.map.lock().unwrap_or_else(|e| e.into_inner()));
    let total: u64 = expected.values().sum();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        records = total,
        seconds = secs,
        per_second = (total as f64 / secs.max(1e-9)) as u64,
        "records produced"
    );
    // Offset maps (and the partition's end on the target) are needed only
    // where a consumer group has a committed offset to translate.
    let wanted: std::collections::HashSet<(&str, i32)> = meta
        .groups
        .iter()
        .flat_map(|g| g.offsets.iter().map(|o| (o.topic.as_str(), o.partition)))
        .collect();
    let consumer = if wanted.is_empty() {
        None
    } else {
        Some(consumer(
            target,
            &format!("cairn-restore-{}", std::process::id()),
        )?)
    };
    let mut maps = Maps::new();
    for t in &meta.topics {
        let name = target_name(opts, &t.name);
        let mut per_topic = delivered.remove(name).unwrap_or_default();
        for p in &t.partitions {
            let pairs = per_topic.remove(&p.id).unwrap_or_default();
            let want = expected.get(&(t.name.clone(), p.id)).copied().unwrap_or(0);
            if pairs.len() as u64 != want {
                return Err(Error::failure(format!(
                    "{name}/{}: {} of {want} records were acknowledged",
                    p.id,
                    pairs.len()
                )));
            }
            let Some(consumer) = consumer
                .as_ref()
                .filter(|_| wanted.contains(&(t.name.as_str(), p.id)))
            else {
                continue;
            };
            let map = OffsetMap::new(pairs);
            let (_, high) = retry(
                target,
                &format!("reading offsets of {name}/{}", p.id),
                || consumer.fetch_watermarks(name, p.id, target.timeout),
            )?;
            let end = map.next_target().unwrap_or(high).max(high);
            maps.insert((t.name.clone(), p.id), (map, end));
        }
    }
    Ok(maps)
}

fn commit_groups(
    target: &KafkaOptions,
    meta: &KafkaMeta,
    opts: &RestoreOptions,
    maps: &Maps,
    report: &mut RestoreReport,
) -> Result<()> {
    if meta.groups.is_empty() {
        return Ok(());
    }
    let probe = consumer(target, &format!("cairn-restore-{}", std::process::id()))?;
    for g in &meta.groups {
        let mut gr = GroupReport {
            name: g.name.clone(),
            ..Default::default()
        };
        let mut tpl = TopicPartitionList::new();
        let mut by_topic: BTreeMap<(String, i32), (i64, i64, &str)> = BTreeMap::new();
        for o in &g.offsets {
            let Some((map, end)) = maps.get(&(o.topic.clone(), o.partition)) else {
                continue;
            };
            let t = map.translate(o.offset, *end);
            let name = target_name(opts, &o.topic).to_string();
            by_topic.insert((name, o.partition), (o.offset, t, &o.metadata));
        }
        for ((topic, partition), (src, tgt, md)) in &by_topic {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*tgt))
                .map_err(|e| Error::failure(format!("{topic}/{partition}: {e}")))?;
            if !md.is_empty() {
                if let Some(mut e) = tpl.find_partition(topic, *partition) {
                    e.set_metadata(*md);
                }
            }
            gr.offsets.push(TranslatedOffset {
                topic: topic.clone(),
                partition: *partition,
                source_offset: *src,
                target_offset: *tgt,
            });
        }
        let live = retry(target, &format!("describing group {:?}", g.name), || {
            probe.fetch_group_list(Some(&g.name), target.timeout)
        })?
        .groups()
        .iter()
        .find(|x| x.name() == g.name)
        .map(|x| x.members().len())
        .unwrap_or(0);
        if live > 0 {
            gr.refused = Some(format!("the group has {live} live member(s) on the target"));
        } else if tpl.count() > 0 {
            let gc = consumer(target, &g.name)?;
            retry(
                target,
                &format!("committing offsets of group {:?}", g.name),
                || gc.commit(&tpl, CommitMode::Sync),
            )?;
            gr.committed = true;
            tracing::info!(group = %g.name, partitions = tpl.count(), "group offsets committed");
        }
        report.groups.push(gr);
    }
    Ok(())
}
