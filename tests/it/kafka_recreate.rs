//! Kafka restores that replace topics which exist on the target
//! (`--recreate-topics`, a plan's `restore-existing-topics "recreate"`), and
//! their refusal while a consumer group with live members uses the topics:
//! issue 27, item 8. Against a real Kafka-protocol broker (Tansu), through
//! the real binary.

use crate::common::*;
use kafka::{Broker, TestRecord};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn rec(i: usize, partition: i32, what: &str) -> TestRecord {
    TestRecord {
        key: Some(format!("{what}-{partition}-{i}").into_bytes()),
        value: Some(format!("{what} record {i} of partition {partition}").into_bytes()),
        headers: vec![("n".to_string(), Some(i.to_string().into_bytes()))],
        timestamp: 1_700_000_000_000 + i as i64 * 1000,
    }
}

/// The snapshot's settings of `orders` (Tansu reports only the settings a
/// topic was created with, all as defaults: restores need `--all-configs`).
const SNAPSHOT_CONFIGS: [(&str, &str); 2] =
    [("cleanup.policy", "compact"), ("retention.ms", "86400000")];
/// The settings of the `orders` topic in the way of the restore.
const OTHER_CONFIGS: [(&str, &str); 2] = [("max.message.bytes", "5000"), ("retention.ms", "1000")];

/// `orders` with 3 partitions (20, 15 and no records) and two settings;
/// group `billing` at 10 on partition 0 and at the end of partition 1.
fn fill_orders(b: &Broker) -> BTreeMap<i32, Vec<TestRecord>> {
    b.create_topic("orders", 3, &SNAPSHOT_CONFIGS);
    let p = b.producer();
    let mut sent = BTreeMap::new();
    for (part, n) in [(0, 20), (1, 15), (2, 0)] {
        let recs: Vec<TestRecord> = (0..n).map(|i| rec(i, part, "snapshot")).collect();
        for r in &recs {
            b.produce(&p, "orders", part, r);
        }
        sent.insert(part, recs);
    }
    b.flush(&p);
    b.commit("billing", "orders", 0, 10);
    b.commit("billing", "orders", 1, 15);
    sent
}

/// A snapshot of [`fill_orders`] on a broker of its own (stopped after).
fn snapshot_of_orders(env: &Env) -> (String, BTreeMap<i32, Vec<TestRecord>>) {
    let src = Broker::start();
    let sent = fill_orders(&src);
    let snap = env.json(&["snapshot", "--kafka", &src.brokers()]);
    (snap["id"].as_str().unwrap().to_string(), sent)
}

/// What is in the way on the target: `orders` with one partition, other
/// records, other settings, and group `stale` at its end.
fn other_orders(b: &Broker) -> Vec<TestRecord> {
    b.create_topic("orders", 1, &OTHER_CONFIGS);
    let p = b.producer();
    let recs: Vec<TestRecord> = (0..7).map(|i| rec(i, 0, "other")).collect();
    for r in &recs {
        b.produce(&p, "orders", 0, r);
    }
    b.flush(&p);
    b.commit("stale", "orders", 0, 7);
    recs
}

fn partitions(b: &Broker, topic: &str) -> usize {
    let md = b
        .admin()
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0].partitions().len()
}

fn expected(c: &[(&str, &str)]) -> BTreeMap<String, String> {
    c.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn values(got: &BTreeMap<i32, Vec<(i64, TestRecord)>>, p: i32) -> Vec<TestRecord> {
    got.get(&p)
        .map(|v| v.iter().map(|(_, r)| r.clone()).collect())
        .unwrap_or_default()
}

/// `orders` on `b` is the snapshot's, and nothing else: partitions,
/// records, settings, and group offsets (billing translated, stale gone).
fn assert_is_snapshot(b: &Broker, sent: &BTreeMap<i32, Vec<TestRecord>>) {
    assert_eq!(partitions(b, "orders"), 3);
    let got = b.read_all("orders", 3);
    for (p, want) in sent {
        assert_eq!(&values(&got, *p), want, "orders/{p}");
    }
    assert_eq!(b.configs("orders"), expected(&SNAPSHOT_CONFIGS));
    assert_eq!(
        b.committed("billing", "orders", 3),
        [Some(10), Some(15), None]
    );
    // The deleted topic took the offsets committed on it along.
    assert_eq!(b.committed("stale", "orders", 3), [None, None, None]);
}

/// `orders` on `b` is still what [`other_orders`] made.
fn assert_untouched(b: &Broker, other: &[TestRecord]) {
    assert_eq!(partitions(b, "orders"), 1);
    assert_eq!(values(&b.read_all("orders", 1), 0), other);
    assert_eq!(b.configs("orders"), expected(&OTHER_CONFIGS));
    assert_eq!(b.committed("stale", "orders", 1), [Some(7)]);
}

/// A consumer of group `group` subscribed to `topic`, with a partition
/// assigned and offset 3 of partition 0 committed: a live member.
fn live_consumer(b: &Broker, group: &str, topic: &str) -> BaseConsumer {
    let c = b.consumer(group);
    c.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the consumer never joined");
        c.poll(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(3))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    c
}

/// The member ids of `group` as the broker reports them.
fn members(b: &Broker, group: &str) -> Vec<String> {
    let list = b
        .consumer("cairn-test-probe")
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .unwrap();
    let ids: Vec<String> = list
        .groups()
        .iter()
        .flat_map(|g| g.members().iter().map(|m| m.id().to_string()))
        .collect();
    assert!(!ids.is_empty(), "group {group} has no member");
    ids
}

#[test]
fn recreate_topics_leaves_exactly_the_snapshots_topic() {
    let env = Env::init();
    let (id, sent) = snapshot_of_orders(&env);
    let dst = Broker::start();
    other_orders(&dst);
    dst.create_topic("keep", 1, &[]);
    let p = dst.producer();
    dst.produce(&p, "keep", 0, &rec(0, 0, "keep"));
    dst.flush(&p);

    let out = env.json(&[
        "restore",
        &id,
        "--to-brokers",
        &dst.brokers(),
        "--recreate-topics",
        "--all-configs",
    ]);
    let report = &out["report"];
    assert_eq!(
        report["deleted"],
        serde_json::json!([{"name": "orders", "partitions": 1}])
    );
    let t = &report["topics"][0];
    assert_eq!(
        (&t["target"], &t["recreated"]),
        (&"orders".into(), &true.into())
    );
    assert_eq!((&t["created"], &t["records"]), (&true.into(), &35.into()));
    assert_is_snapshot(&dst, &sent);
    // A topic the snapshot does not have is left alone.
    assert_eq!(dst.read_all("keep", 1)[&0].len(), 1);

    // Again, as text: the restored topic is replaced, not added to.
    let text = env.ok(&[
        "restore",
        &id,
        "--to-brokers",
        &dst.brokers(),
        "--recreate-topics",
        "--all-configs",
    ]);
    assert!(
        text.contains("deleted topic orders (3 partition(s))"),
        "{text}"
    );
    assert!(
        text.contains("topic orders -> orders: 3 partition(s), 35 record(s), recreated with"),
        "{text}"
    );
    assert_is_snapshot(&dst, &sent);
    // billing resumes where it stopped in the snapshot.
    let billing = dst.read_as_group("billing", "orders", 3);
    assert_eq!(values(&billing, 0), sent[&0][10..].to_vec());
    assert!(values(&billing, 1).is_empty());
}

#[test]
fn recreate_topics_is_refused_while_a_group_on_them_has_live_members() {
    let env = Env::init();
    let (id, sent) = snapshot_of_orders(&env);
    let dst = Broker::start();
    let other = other_orders(&dst);
    let live = live_consumer(&dst, "reader", "orders");
    let ids = members(&dst, "reader");

    let args = [
        "restore",
        &id,
        "--to-brokers",
        &dst.brokers(),
        "--recreate-topics",
        "--all-configs",
    ];
    let (code, err) = code_and_stderr(&env.run(&args));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("reader (1 live member(s): ")
            && err.contains("committed offsets on orders")
            && err.contains("nothing was deleted"),
        "{err}"
    );
    for m in &ids {
        assert!(err.contains(m.as_str()), "member {m} not named: {err}");
    }
    assert_untouched(&dst, &other);
    assert_eq!(dst.committed("reader", "orders", 1), [Some(3)]);

    drop(live);

    // A live group of the snapshot counts too, wherever it reads: its
    // offsets could not be committed after the topic was replaced.
    dst.create_topic("elsewhere", 1, &[]);
    let live = live_consumer(&dst, "billing", "elsewhere");
    let (code, err) = code_and_stderr(&env.run(&args));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("billing (1 live member(s): ")
            && err.contains("the restore commits its offsets from the snapshot")
            && !err.contains("reader"),
        "{err}"
    );
    assert_untouched(&dst, &other);

    // Once the consumers are stopped, the same restore goes through.
    drop(live);
    env.ok(&args);
    assert_is_snapshot(&dst, &sent);
}

#[test]
fn restore_plan_recreates_topics_when_the_plan_says_so() {
    let b = Broker::start();
    let sent = fill_orders(&b);
    let env = Env::init();
    let plan = env.write_plan(&format!(
        r#"source "events" kind="kafka" {{
    brokers "{}"
    topic "orders"
    restore-existing-topics "recreate"
    restore-all-configs #true
}}
"#,
        b.brokers()
    ));
    let plan = plan.to_str().unwrap();
    let out = env.run_plan(&["snapshot", "--plan", plan]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");

    // The topic is replaced by another one of the same name.
    let r = futures::executor::block_on(b.admin().delete_topics(
        &["orders"],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
    let other = other_orders(&b);

    let out = env.run_plan(&["restore", "--plan", plan, "latest", "--dry-run"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let steps = String::from_utf8_lossy(&out.stdout);
    assert!(
        steps.contains("deleting and recreating topics that exist")
            && steps.contains("with every recorded topic setting"),
        "{steps}"
    );
    // --force (append) does not weaken the plan's choice.
    let out = env.run_plan(&["restore", "--plan", plan, "latest", "--dry-run", "--force"]);
    let steps = String::from_utf8_lossy(&out.stdout);
    assert!(
        steps.contains("deleting and recreating topics that exist"),
        "{steps}"
    );

    let live = live_consumer(&b, "reader", "orders");
    let ids = members(&b, "reader");
    let out = env.run_plan(&["restore", "--plan", plan, "latest"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("reader (1 live member(s): ") && err.contains(ids[0].as_str()),
        "{err}"
    );
    assert_untouched(&b, &other);

    drop(live);
    let out = env.run_plan(&["restore", "--plan", plan, "latest", "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let source = &report["sources"][0];
    assert_eq!(source["state"], "restored", "{report}");
    assert!(
        source["detail"]
            .as_str()
            .unwrap()
            .ends_with("35 record(s); recreated orders"),
        "{report}"
    );
    assert_is_snapshot(&b, &sent);
}

/// `--force` and `--recreate-topics` with `--plan` apply to every Kafka
/// source, the stronger of the plan's choice and theirs winning, and
/// `--all-configs` turns on every recorded setting: as `--dry-run` shows.
#[test]
fn restore_plan_takes_the_command_lines_kafka_choices() {
    let b = Broker::start();
    fill_orders(&b);
    let env = Env::init();
    let plan = env.write_plan(&format!(
        "source \"events\" kind=\"kafka\" {{\n    brokers \"{}\"\n}}\n",
        b.brokers()
    ));
    let plan = plan.to_str().unwrap();
    let (code, err) = code_and_stderr(&env.run_plan(&["snapshot", "--plan", plan]));
    assert_eq!(code, 0, "{err}");
    let step = |extra: &[&str]| -> String {
        let mut args = vec!["restore", "--plan", plan, "latest", "--dry-run"];
        args.extend_from_slice(extra);
        let out = env.run_plan(&args);
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 0, "{extra:?}: {err}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.contains("restore source events (kafka)"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string()
    };
    let plain = step(&[]);
    assert!(plain.ends_with(", refusing topics that exist"), "{plain}");
    let force = step(&["--force"]);
    assert!(force.ends_with(", adding to topics that exist"), "{force}");
    let both = step(&["--force", "--recreate-topics", "--all-configs"]);
    assert!(
        both.contains(", deleting and recreating topics that exist")
            && both.ends_with(", with every recorded topic setting"),
        "{both}"
    );
}

/// `plan check` knows the two settings: their values, their defaults in
/// `--json`, and a wrong value with the ones allowed.
#[test]
fn plan_check_knows_the_kafka_restore_settings() {
    let env = Env::new();
    let source = |settings: &str| {
        env.write_plan(&format!(
            "source \"events\" kind=\"kafka\" {{\n    brokers \"kafka:9092\"\n{settings}}}\n"
        ))
    };
    let check = |plan: &std::path::Path| {
        let out = env.run_plan(&["plan", "check", plan.to_str().unwrap(), "--json"]);
        let (code, err) = code_and_stderr(&out);
        (code, err, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let kafka = |stdout: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(stdout).unwrap();
        v["sources"][0].clone()
    };

    let (code, err, out) = check(&source(""));
    assert_eq!(code, 0, "{err}");
    let s = kafka(&out);
    assert_eq!(s["restore-existing-topics"], "refuse", "{s}");
    assert_eq!(s["restore-all-configs"], false, "{s}");

    let (code, err, out) = check(&source(
        "    restore-existing-topics \"recreate\"\n    restore-all-configs #true\n",
    ));
    assert_eq!(code, 0, "{err}");
    let s = kafka(&out);
    assert_eq!(s["restore-existing-topics"], "recreate", "{s}");
    assert_eq!(s["restore-all-configs"], true, "{s}");

    let (code, err, _) = check(&source("    restore-existing-topics \"replace\"\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown `restore-existing-topics` value \"replace\"")
            && err.contains("\"recreate\""),
        "{err}"
    );
}
