//! Kafka snapshots and restores against a real Kafka-protocol broker (Tansu),
//! through the real binary.

use crate::common::*;
use kafka::{Broker, TestRecord};
use rdkafka::consumer::Consumer;
use std::collections::BTreeMap;

fn rec(i: usize, partition: i32) -> TestRecord {
    // Keyed and keyless records, headers (one with a null value), null values.
    let key = (i % 3 != 0).then(|| format!("key-{partition}-{i}").into_bytes());
    let value = (i % 7 != 5).then(|| {
        let mut v = format!("value {i} of partition {partition}: ").into_bytes();
        v.extend(random_bytes((i as u64) << 8 | partition as u64, i % 50));
        v
    });
    let headers = match i % 4 {
        0 => vec![],
        1 => vec![("trace".to_string(), Some(format!("t{i}").into_bytes()))],
        2 => vec![
            ("a".to_string(), Some(b"1".to_vec())),
            ("empty".to_string(), None),
        ],
        _ => vec![("bin".to_string(), Some(vec![0, 255, i as u8]))],
    };
    TestRecord {
        key,
        value,
        headers,
        timestamp: 1_700_000_000_000 + i as i64 * 1000,
    }
}

/// `orders` (3 partitions, with configs) and `events` (1 partition), filled.
fn fill(b: &Broker) -> BTreeMap<(String, i32), Vec<TestRecord>> {
    b.create_topic(
        "orders",
        3,
        &[
            ("retention.ms", "86400000"),
            ("cleanup.policy", "compact"),
            ("max.message.bytes", "2000000"),
        ],
    );
    b.create_topic("events", 1, &[]);
    let p = b.producer();
    let mut sent = BTreeMap::new();
    for (topic, partitions, n) in [("orders", 3, 40), ("events", 1, 12)] {
        for part in 0..partitions {
            let n = if part == 2 { 0 } else { n }; // orders/2 stays empty
            for i in 0..n {
                let r = rec(i, part);
                b.produce(&p, topic, part, &r);
                sent.entry((topic.to_string(), part))
                    .or_insert_with(Vec::new)
                    .push(r);
            }
        }
    }
    b.flush(&p);
    sent
}

#[test]
fn snapshot_and_restore_into_a_fresh_broker() {
    let src = Broker::start();
    let sent = fill(&src);
    // billing has read 10 records of orders/0, nothing of orders/1, everything
    // of events/0; audit stopped in the middle of events.
    src.commit("billing", "orders", 0, 10);
    src.commit("billing", "orders", 1, 0);
    src.commit("billing", "events", 0, 12);
    src.commit("audit", "events", 0, 5);

    let env = Env::init();
    let snap = env.json(&["snapshot", "--kafka", &src.brokers()]);
    assert_eq!(snap["complete"], true);
    let id = snap["id"].as_str().unwrap().to_string();
    let manifest: serde_json::Value =
        serde_json::from_str(&env.ok(&["cat", "snapshot", &id])).unwrap();
    let meta = &manifest["sources"][0]["metadata"];
    assert_eq!(manifest["sources"][0]["kind"], "kafka");
    let topics: Vec<&str> = meta["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["events", "orders"]);
    let orders = &meta["topics"][1];
    let retention = orders["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .expect("retention.ms recorded");
    assert_eq!(retention["value"], "86400000");
    assert_eq!(orders["partitions"][0]["records"], 40);
    assert_eq!(orders["partitions"][2]["records"], 0);
    let groups: Vec<&str> = meta["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["audit", "billing"]);

    // Restore into a different, fresh broker process.
    drop(src);
    let dst = Broker::start();
    let out = env.json(&[
        "restore",
        &id,
        "--to-brokers",
        &dst.brokers(),
        "--all-configs",
    ]);
    let counts: Vec<(String, u64)> = out["report"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_string(),
                t["records"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("events".into(), 12), ("orders".into(), 80)]);

    // Records equal per partition, in order, with keys, headers, nulls, timestamps.
    for (topic, partitions) in [("orders", 3), ("events", 1)] {
        let got = dst.read_all(topic, partitions);
        for p in 0..partitions {
            let want = sent
                .get(&(topic.to_string(), p))
                .cloned()
                .unwrap_or_default();
            let have: Vec<TestRecord> = got
                .get(&p)
                .map(|v| v.iter().map(|(_, r)| r.clone()).collect())
                .unwrap_or_default();
            assert_eq!(have, want, "{topic}/{p}");
        }
    }
    // Configurations applied.
    let c = dst.configs("orders");
    assert_eq!(c.get("retention.ms").map(String::as_str), Some("86400000"));
    assert_eq!(c.get("cleanup.policy").map(String::as_str), Some("compact"));
    assert_eq!(
        c.get("max.message.bytes").map(String::as_str),
        Some("2000000")
    );

    // Each group resumes exactly where it stopped.
    let billing = dst.read_as_group("billing", "orders", 3);
    let values = |v: Option<&Vec<(i64, TestRecord)>>| -> Vec<TestRecord> {
        v.map(|v| v.iter().map(|(_, r)| r.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        values(billing.get(&0)),
        sent[&("orders".to_string(), 0)][10..].to_vec()
    );
    assert_eq!(
        values(billing.get(&1)),
        sent[&("orders".to_string(), 1)].clone()
    );
    assert!(values(billing.get(&2)).is_empty());
    let audit = dst.read_as_group("audit", "events", 1);
    assert_eq!(
        values(audit.get(&0)),
        sent[&("events".to_string(), 0)][5..].to_vec()
    );
    assert_eq!(dst.committed("billing", "events", 1), [Some(12)]);

    // A second restore into the same broker is refused and changes nothing.
    let r = env.run(&["restore", &id, "--to-brokers", &dst.brokers()]);
    let (code, err) = code_and_stderr(&r);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already exist") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(dst.read_all("events", 1)[&0].len(), 12);

    // A group with a live member on the target is not committed: exit 1, and
    // the report still lists the translated offsets.
    let live = dst.consumer("audit");
    live.subscribe(&["events"]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while live.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "consumer never joined"
        );
        live.poll(std::time::Duration::from_millis(100));
    }
    let out = env.run(&[
        "restore",
        &id,
        "--to-brokers",
        &dst.brokers(),
        "--json",
        "--topic-map",
        "events=events2",
        "--topic-map",
        "orders=orders2",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("audit") && err.contains("live members"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audit = report["report"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "audit")
        .unwrap();
    assert!(audit["refused"].as_str().unwrap().contains("live member"));
    assert_eq!(audit["committed"], false);
    assert_eq!(audit["offsets"][0]["target_offset"], 5);
    assert_eq!(dst.committed("audit", "events2", 1), [None]);
    assert_eq!(dst.committed("billing", "orders2", 3)[0], Some(10));
    drop(live);
}

#[test]
fn a_second_day_stores_only_the_new_records() {
    let b = Broker::start();
    b.create_topic("logs", 2, &[]);
    let p = b.producer();
    let seed = test_seed("second_day");
    let mk = |i: usize| TestRecord {
        key: Some(format!("k{i}").into_bytes()),
        value: Some(random_bytes(seed ^ i as u64, 1024)),
        headers: vec![],
        timestamp: 1_700_000_000_000 + i as i64,
    };
    for i in 0..3000 {
        b.produce(&p, "logs", (i % 2) as i32, &mk(i));
    }
    b.flush(&p);
    let env = Env::init();
    let first = env.json(&["snapshot", "--kafka", &b.brokers()]);
    for i in 3000..3030 {
        b.produce(&p, "logs", (i % 2) as i32, &mk(i));
    }
    b.flush(&p);
    let second = env.json(&["snapshot", "--kafka", &b.brokers()]);
    let (a1, a2) = (
        first["bytes_added"].as_u64().unwrap(),
        second["bytes_added"].as_u64().unwrap(),
    );
    // 1% more records: the new records plus at most a few chunks around the
    // old end of each partition and the metadata.
    assert!(a1 > 3000 * 1024, "first snapshot added {a1}");
    assert!(
        (a2 as f64) < 0.05 * a1 as f64,
        "second snapshot added {a2} bytes, first {a1}"
    );
}

#[test]
fn an_unreachable_broker_is_retried_with_growing_delays_then_exit_4() {
    let env = Env::init();
    let port = kafka::free_port(); // nothing listens there
    let out = env.run(&[
        "snapshot",
        "--kafka",
        &format!("127.0.0.1:{port}"),
        "--retry-delay",
        "200ms",
        "--kafka-timeout",
        "1s",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 4, "{err}");
    let delays: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("retrying in"))
        .map(|l| {
            let after = l.rsplit("retrying in ").next().unwrap();
            after.split_whitespace().next().unwrap()
        })
        .collect();
    assert_eq!(delays, ["200ms", "400ms", "800ms"], "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("4 times"), "{err}");
    assert!(env.snapshot_ids().is_empty());
}

#[test]
fn bad_kafka_parameters_are_usage_errors() {
    let b = Broker::start();
    b.create_topic("orders", 1, &[]);
    let env = Env::init();
    for (args, needle) in [
        (vec!["--kafka", "localhost"], "no valid port"),
        (
            vec!["--kafka", &b.brokers(), "--topic", "nope"],
            "matches no topic",
        ),
        (
            vec!["--kafka", &b.brokers(), "--retry-delay", "soon"],
            "--retry-delay",
        ),
    ] {
        let mut a = vec!["snapshot"];
        a.extend(args.iter().copied());
        let (code, err) = code_and_stderr(&env.run(&a));
        assert_eq!(code, 2, "{a:?}: {err}");
        assert!(err.contains(needle), "{a:?}: {err}");
    }
    assert!(env.snapshot_ids().is_empty());
}

#[test]
fn metadata_only_snapshot_recreates_topics_without_records() {
    let src = Broker::start();
    src.create_topic("orders", 2, &[]);
    let p = src.producer();
    src.produce(&p, "orders", 0, &rec(1, 0));
    src.flush(&p);
    let env = Env::init();
    let snap = env.json(&["snapshot", "--kafka", &src.brokers(), "--no-messages"]);
    let dst = Broker::start();
    let out = env.json(&[
        "restore",
        snap["id"].as_str().unwrap(),
        "--to-brokers",
        &dst.brokers(),
        "--topic-map",
        "orders=orders-copy",
    ]);
    assert_eq!(out["report"]["topics"][0]["target"], "orders-copy");
    assert_eq!(out["report"]["topics"][0]["records"], 0);
    let got = dst.read_all("orders-copy", 2);
    assert!(got.values().all(|v| v.is_empty()), "{got:?}");
}

#[test]
fn restore_test_proves_a_kafka_snapshot_and_fails_on_damage() {
    let src = Broker::start();
    let sent = fill(&src);
    src.commit("billing", "orders", 0, 10);
    let env = Env::init();
    env.ok(&["snapshot", "--kafka", &src.brokers()]);
    let scratch = Broker::start();
    let out = env.json(&[
        "check",
        "--restore-test",
        "--scratch-brokers",
        &scratch.brokers(),
    ]);
    let parts = out["kafka"][0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    assert!(parts.iter().all(|p| p["ok"] == true), "{out}");
    let prefix = out["kafka"][0]["prefix"].as_str().unwrap();
    let restored = scratch.read_all(&format!("{prefix}orders"), 3);
    assert_eq!(restored[&0].len(), sent[&("orders".to_string(), 0)].len());

    // Without a scratch broker there is nothing to test: a usage error.
    let (code, err) = code_and_stderr(&env.run(&["check", "--restore-test"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--scratch-brokers"), "{err}");

    // A damaged pack fails the test before anything is written.
    for p in pack_files(&env.repo) {
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let scratch2 = Broker::start();
    let (code, err) = code_and_stderr(&env.run(&[
        "check",
        "--restore-test",
        "--scratch-brokers",
        &scratch2.brokers(),
    ]));
    assert_eq!(code, 1, "{err}");
    let md = scratch2
        .admin()
        .inner()
        .fetch_metadata(None, std::time::Duration::from_secs(5))
        .unwrap();
    assert!(
        md.topics()
            .iter()
            .all(|t| !t.name().starts_with("cairn-test-")),
        "topics were created on a damaged snapshot"
    );
}
