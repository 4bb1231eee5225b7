//! A real Kafka-protocol broker (Tansu, in memory) for tests, on a free port,
//! plus small rdkafka clients to fill topics and read them back.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    PathBuf::from("tansu")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("cairn-kafka-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut b = Broker {
            port: free_port(),
            child: None,
            log: dir.path().join("broker.log"),
            _dir: dir,
        };
        b.restart();
        b
    }

    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(binary())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start tansu ({e}); run scripts/setup to install it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers())
            .set("log_level", "3");
        c
    }

    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.config().create().unwrap()
    }

    /// The topic's configuration entries that have a value, by name.
    pub fn configs(&self, topic: &str) -> BTreeMap<String, String> {
        let r = futures::executor::block_on(self.admin().describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
            &AdminOptions::new(),
        ))
        .unwrap();
        r.into_iter()
            .next()
            .unwrap()
            .unwrap()
            .entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect()
    }

    pub fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            t = t.set(k, v);
        }
        let r = futures::executor::block_on(self.admin().create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
        for x in r {
            x.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
        }
    }

    /// An idempotent producer that sends one record per batch, so consumers
    /// may start anywhere (Tansu cannot fetch from the middle of a batch).
    pub fn producer(&self) -> BaseProducer {
        self.config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()
            .unwrap()
    }

    pub fn produce(&self, p: &BaseProducer, topic: &str, partition: i32, rec: &TestRecord) {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_ref(),
            });
        }
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(partition)
            .timestamp(rec.timestamp);
        if !rec.headers.is_empty() {
            r = r.headers(headers);
        }
        if let Some(k) = &rec.key {
            r = r.key(k);
        }
        if let Some(v) = &rec.value {
            r = r.payload(v);
        }
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }

    pub fn flush(&self, p: &BaseProducer) {
        p.flush(Duration::from_secs(60)).unwrap();
    }

    pub fn consumer(&self, group: &str) -> BaseConsumer {
        self.config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap()
    }

    /// Every record of a topic, per partition, read from the log start.
    pub fn read_all(&self, topic: &str, partitions: i32) -> BTreeMap<i32, Vec<(i64, TestRecord)>> {
        let c = self.consumer("cairn-test-reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        drain(&c, partitions as usize)
    }

    /// Commit `offset` for `group` on one partition (as a stopped consumer would have).
    pub fn commit(&self, group: &str, topic: &str, partition: i32, offset: i64) {
        let c = self.consumer(group);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }

    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let c = self.consumer(group);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let r = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match r.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// What a consumer of `group` reads when it subscribes now: per partition.
    pub fn read_as_group(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> BTreeMap<i32, Vec<(i64, TestRecord)>> {
        let c = self.consumer(group);
        c.subscribe(&[topic]).unwrap();
        let out = drain(&c, partitions as usize);
        c.unsubscribe();
        out
    }
}

fn drain(c: &BaseConsumer, partitions: usize) -> BTreeMap<i32, Vec<(i64, TestRecord)>> {
    let mut out: BTreeMap<i32, Vec<(i64, TestRecord)>> = BTreeMap::new();
    let mut eof = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < partitions {
        assert!(
            Instant::now() < deadline,
            "reading timed out; eof on {eof:?}"
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("consume: {e}"),
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                            .collect()
                    })
                    .unwrap_or_default();
                out.entry(m.partition()).or_default().push((
                    m.offset(),
                    TestRecord {
                        key: m.key().map(|k| k.to_vec()),
                        value: m.payload().map(|v| v.to_vec()),
                        headers,
                        timestamp: m.timestamp().to_millis().unwrap_or(-1),
                    },
                ));
            }
        }
    }
    out
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
}
