//! Bare rdkafka clients for `scripts/bench kafka`: the baselines cairn's Kafka
//! snapshot and restore are compared with, and the producer that fills the
//! source topic.
//!
//! ```text
//! kafka_baseline fill    BROKERS TOPIC PARTITIONS MESSAGES [START]
//! kafka_baseline produce BROKERS TOPIC PARTITIONS MESSAGES [START]
//! kafka_baseline consume BROKERS TOPIC PARTITIONS MESSAGES
//! kafka_baseline verify  BROKERS TOPIC PARTITIONS MESSAGES
//! ```
//!
//! `fill` and `produce` create TOPIC with PARTITIONS partitions unless it
//! exists, then send records START..START+MESSAGES (START defaults to 0) with
//! an idempotent producer: record `i` goes to partition `i % PARTITIONS` with
//! key `k<i>` and a deterministic 1 KiB value (pseudo-random characters from a
//! 64-letter alphabet, so zstd gets about 6/8 and no more). Both run the same
//! code; `fill` is the name used for loading the source, `produce` for the
//! timed baseline of a restore.
//!
//! `consume` assigns every partition from the beginning, reads until each
//! has reported end-of-partition, and discards the records (the baseline of a
//! snapshot). `verify` reads the same way and prints per-partition record
//! counts and a BLAKE3 digest of (key, value, timestamp) in offset order, for
//! comparing a restored topic with its source. Both fail when the topic holds
//! other than MESSAGES records.
//!
//! `KAFKA_BASELINE_CONFIG=key=value,key=value` adds librdkafka properties
//! (applied last), e.g. `fetch.wait.max.ms=10`.
//!
//! Each mode prints one JSON line: messages, bytes, seconds (producer or
//! consumer creation to the last delivery report or end-of-partition; topic
//! creation excluded) and messages_per_s.
//!
//! Client settings match cairn's own (`src/source/kafka/backup.rs` consumer,
//! `restore.rs` producer), so a ratio measures what cairn does on top of the
//! same librdkafka work.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const VALUE_LEN: usize = 1024;
/// A partition that yields nothing for this long fails the run.
const STALL: Duration = Duration::from_secs(60);

type Res<T> = Result<T, String>;

struct Args {
    mode: String,
    brokers: String,
    topic: String,
    partitions: i32,
    messages: u64,
    start: u64,
}

fn parse_args() -> Res<Args> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 5 || a.len() > 6 {
        return Err(
            "usage: kafka_baseline fill|produce|consume|verify BROKERS TOPIC PARTITIONS MESSAGES [START]"
                .into(),
        );
    }
    let num = |s: &str, what: &str| -> Res<u64> {
        s.parse()
            .map_err(|_| format!("{what} must be a non-negative integer, not {s:?}"))
    };
    let partitions = num(&a[3], "PARTITIONS")?;
    if partitions == 0 || partitions > i32::MAX as u64 {
        return Err("PARTITIONS must be at least 1".into());
    }
    Ok(Args {
        mode: a[0].clone(),
        brokers: a[1].clone(),
        topic: a[2].clone(),
        partitions: partitions as i32,
        messages: num(&a[4], "MESSAGES")?,
        start: a.get(5).map(|s| num(s, "START")).transpose()?.unwrap_or(0),
    })
}

fn config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "kafka-baseline")
        .set("log_level", "3");
    c
}

/// Extra librdkafka properties from `KAFKA_BASELINE_CONFIG` (`key=value`
/// pairs separated by commas), applied last: for trying other settings.
fn extra(c: &mut ClientConfig) -> Res<()> {
    let Ok(s) = std::env::var("KAFKA_BASELINE_CONFIG") else {
        return Ok(());
    };
    for kv in s.split(',').filter(|kv| !kv.trim().is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("KAFKA_BASELINE_CONFIG: expected key=value, not {kv:?}"))?;
        c.set(k.trim(), v.trim());
    }
    Ok(())
}

/// The value of record `i`: VALUE_LEN characters '0'..'o' from xorshift64*.
fn value(i: u64, out: &mut [u8; VALUE_LEN]) {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    if x == 0 {
        x = 1;
    }
    for w in out.chunks_exact_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let v = (r & 0x3F3F_3F3F_3F3F_3F3F) + 0x3030_3030_3030_3030;
        w.copy_from_slice(&v.to_le_bytes());
    }
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Res<()> {
    let admin: AdminClient<DefaultClientContext> = config(brokers)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let r = futures::executor::block_on(admin.create_topics([&t], &opts))
        .map_err(|e| format!("creating topic {topic}: {e}"))?;
    for x in r {
        match x {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("creating topic {t}: {e}")),
        }
    }
    Ok(())
}

/// Counts delivery reports; keeps the first few errors.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut v) = self.errors.lock() {
                    if v.len() < 5 {
                        v.push(format!("{}/{}: {e}", m.topic(), m.partition()));
                    }
                }
            }
        }
    }
}

fn produce(a: &Args) -> Res<serde_json::Value> {
    create_topic(&a.brokers, &a.topic, a.partitions)?;
    let mut cfg = config(&a.brokers);
    // As cairn's restore producer.
    cfg.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "100000")
        .set("batch.size", "4194304")
        .set("queue.buffering.max.kbytes", "65536")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.max.bytes", "100000000")
        .set("message.timeout.ms", "300000");
    extra(&mut cfg)?;
    let t0 = Instant::now();
    let p: BaseProducer<Deliveries> = cfg
        .create_with_context(Deliveries::default())
        .map_err(|e| format!("producer: {e}"))?;
    let mut v = [0u8; VALUE_LEN];
    let mut bytes = 0u64;
    for i in a.start..a.start + a.messages {
        value(i, &mut v);
        let key = format!("k{i}");
        bytes += (key.len() + VALUE_LEN) as u64;
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&a.topic)
            .partition((i % a.partitions as u64) as i32)
            .key(key.as_bytes())
            .payload(&v[..]);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(format!("send: {e}")),
            }
        }
        if i % 1024 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(600))
        .map_err(|e| format!("flush: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let ctx = p.context();
    let (ok, failed) = (
        ctx.ok.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
    );
    if failed > 0 || ok != a.messages {
        return Err(format!(
            "{ok} of {} records delivered, {failed} failed: {:?}",
            a.messages,
            ctx.errors.lock().map(|e| e.clone()).unwrap_or_default()
        ));
    }
    Ok(serde_json::json!({
        "mode": a.mode, "topic": a.topic, "partitions": a.partitions, "start": a.start,
        "messages": a.messages, "bytes": bytes, "seconds": secs,
        "messages_per_s": a.messages as f64 / secs,
    }))
}

/// Per-partition state while reading.
#[derive(Default)]
struct Part {
    records: u64,
    bytes: u64,
    last: Option<i64>,
    hasher: Option<blake3::Hasher>,
}

fn consume(a: &Args, digest: bool) -> Res<serde_json::Value> {
    let mut cfg = config(&a.brokers);
    // As cairn's snapshot consumer.
    cfg.set("group.id", format!("kafka-baseline-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("check.crcs", "true")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .set("fetch.wait.max.ms", "10");
    extra(&mut cfg)?;
    let t0 = Instant::now();
    let c: BaseConsumer = cfg.create().map_err(|e| format!("consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..a.partitions {
        tpl.add_partition_offset(&a.topic, p, Offset::Beginning)
            .map_err(|e| format!("{}/{p}: {e}", a.topic))?;
    }
    c.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let mut parts: BTreeMap<i32, Part> = (0..a.partitions)
        .map(|p| {
            (
                p,
                Part {
                    hasher: digest.then(blake3::Hasher::new),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut eof: HashSet<i32> = HashSet::new();
    let mut idle = Instant::now();
    while eof.len() < a.partitions as usize {
        match c.poll(Duration::from_millis(200)) {
            None if idle.elapsed() > STALL => {
                return Err(format!(
                    "no progress for {}s; end of partition seen on {eof:?}",
                    STALL.as_secs()
                ));
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(format!("consume: {e}")),
            Some(Ok(m)) => {
                idle = Instant::now();
                eof.remove(&m.partition());
                let part = parts
                    .get_mut(&m.partition())
                    .ok_or_else(|| format!("record from unknown partition {}", m.partition()))?;
                if part.last.is_some_and(|l| m.offset() <= l) {
                    return Err(format!(
                        "{}/{}: offset {} after {:?}",
                        a.topic,
                        m.partition(),
                        m.offset(),
                        part.last
                    ));
                }
                part.last = Some(m.offset());
                part.records += 1;
                let (k, v) = (m.key().unwrap_or(b""), m.payload().unwrap_or(b""));
                part.bytes += (k.len() + v.len()) as u64;
                if let Some(h) = &mut part.hasher {
                    let ts = m.timestamp().to_millis().unwrap_or(-1);
                    h.update(&(k.len() as u64).to_le_bytes());
                    h.update(k);
                    h.update(&(v.len() as u64).to_le_bytes());
                    h.update(v);
                    h.update(&ts.to_le_bytes());
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let records: u64 = parts.values().map(|p| p.records).sum();
    let bytes: u64 = parts.values().map(|p| p.bytes).sum();
    if records != a.messages {
        return Err(format!(
            "read {records} records from {}, expected {}",
            a.topic, a.messages
        ));
    }
    let mut out = serde_json::json!({
        "mode": a.mode, "topic": a.topic, "partitions": a.partitions,
        "messages": records, "bytes": bytes, "seconds": secs,
        "messages_per_s": records as f64 / secs,
    });
    if digest {
        out["per_partition"] = parts
            .iter()
            .map(|(id, p)| {
                serde_json::json!({
                    "partition": id, "records": p.records,
                    "digest": p.hasher.as_ref().map(|h| h.finalize().to_hex().to_string()),
                })
            })
            .collect();
    }
    Ok(out)
}

fn main() -> ExitCode {
    let r = parse_args().and_then(|a| match a.mode.as_str() {
        "fill" | "produce" => produce(&a),
        "consume" => consume(&a, false),
        "verify" => consume(&a, true),
        m => Err(format!(
            "unknown mode {m:?}: choose fill, produce, consume or verify"
        )),
    });
    match r {
        Ok(j) => {
            println!("{j}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kafka_baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
