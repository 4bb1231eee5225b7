//! Replacing topics that exist on the target of a restore
//! (`--recreate-topics`): refuse while a consumer group with live members
//! uses them, then delete them and wait until the brokers no longer list
//! them, so that the restore can create them again with the snapshot's
//! partitions and settings (`spec/kafka.md`, "Restore", step 2).

use super::backup::consumer;
use super::client::{block_on, retry, KafkaOptions};
use crate::error::{Error, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::time::{Duration, Instant};

/// How long the brokers may keep listing a deleted topic (Kafka deletes
/// asynchronously) before the restore gives up; `--kafka-timeout` when longer.
pub const DELETE_WAIT: Duration = Duration::from_secs(60);

/// A topic of the target deleted to be created again from the snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct DeletedTopic {
    pub name: String,
    /// Its partition count on the target before it was deleted.
    pub partitions: usize,
}

/// A consumer group with live members that a recreation would pull the
/// ground from under.
#[derive(Clone, Debug, Serialize)]
pub struct LiveGroup {
    pub name: String,
    /// Member id, with client id and host when the broker reports them.
    pub members: Vec<String>,
    /// Topics it has committed offsets on, among those to be replaced.
    pub topics: Vec<String>,
    /// Whether the restore would commit its offsets from the snapshot.
    pub in_snapshot: bool,
}

/// The consumer groups with live members that have committed offsets on
/// any partition of `topics`, or whose offsets the restore is to commit
/// (`to_commit`, groups of the snapshot). Sorted by name.
pub fn live_groups(
    target: &KafkaOptions,
    topics: &[DeletedTopic],
    to_commit: &[&str],
) -> Result<Vec<LiveGroup>> {
    let probe = consumer(target, &format!("cairn-restore-{}", std::process::id()))?;
    let list = retry(target, "listing consumer groups", || {
        probe.fetch_group_list(None, target.timeout)
    })?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..t.partitions {
            tpl.add_partition(&t.name, p as i32);
        }
    }
    let mut live = Vec::new();
    for g in list.groups() {
        let consumers = g.protocol_type().is_empty() || g.protocol_type() == "consumer";
        if g.members().is_empty() || !consumers {
            continue;
        }
        let mut used: Vec<String> = Vec::new();
        if tpl.count() > 0 {
            let gc = consumer(target, g.name())?;
            let committed = retry(
                target,
                &format!("reading the offsets of group {:?}", g.name()),
                || gc.committed_offsets(tpl.clone(), target.timeout),
            )?;
            for e in committed.elements() {
                if matches!(e.offset(), Offset::Offset(_)) && !used.iter().any(|t| t == e.topic()) {
                    used.push(e.topic().to_string());
                }
            }
        }
        let in_snapshot = to_commit.contains(&g.name());
        if used.is_empty() && !in_snapshot {
            continue;
        }
        used.sort();
        let members = g
            .members()
            .iter()
            .map(|m| {
                let who: Vec<&str> = [m.client_id(), m.client_host()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect();
                if who.is_empty() {
                    m.id().to_string()
                } else {
                    format!("{} ({})", m.id(), who.join(" on "))
                }
            })
            .collect();
        live.push(LiveGroup {
            name: g.name().to_string(),
            members,
            topics: used,
            in_snapshot,
        });
    }
    live.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(live)
}

/// The refusal for [`live_groups`]' answer: every group, its members and why
/// it counts. Nothing has been deleted when this is returned.
pub fn refusal(target: &KafkaOptions, groups: &[LiveGroup]) -> Error {
    let listed: Vec<String> = groups
        .iter()
        .map(|g| {
            let mut why = Vec::new();
            if !g.topics.is_empty() {
                why.push(format!("committed offsets on {}", g.topics.join(", ")));
            }
            if g.in_snapshot {
                why.push("the restore commits its offsets from the snapshot".to_string());
            }
            format!(
                "{} ({} live member(s): {}; {})",
                g.name,
                g.members.len(),
                g.members.join(", "),
                why.join("; ")
            )
        })
        .collect();
    Error::failure(format!(
        "cannot recreate topics on {}: consumer group(s) with live members: {}; nothing was deleted",
        target.brokers,
        listed.join("; ")
    ))
    .with_hint(
        "stop those consumers (a member leaves when it closes, or when its session times out), then run the restore again",
    )
}

/// Delete `topics` and wait until the brokers list none of them. A topic
/// already gone counts as deleted.
pub fn delete_topics(
    admin: &AdminClient<DefaultClientContext>,
    target: &KafkaOptions,
    topics: &[DeletedTopic],
) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    let aopts = AdminOptions::new().operation_timeout(Some(target.timeout));
    let results = retry(target, "deleting topics", || {
        block_on(admin.delete_topics(&names, &aopts))
    })?;
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(t) | Err((t, RDKafkaErrorCode::UnknownTopicOrPartition)) => deleted.push(t),
            Err((t, code)) => failed.push(format!("{t}: {code}")),
        }
    }
    if !failed.is_empty() {
        let done = if deleted.is_empty() {
            "nothing was deleted".to_string()
        } else {
            format!("deleted, not created again yet: {}", deleted.join(", "))
        };
        return Err(Error::failure(format!(
            "could not delete topic(s) on {}: {}; {done}",
            target.brokers,
            failed.join("; ")
        ))
        .with_hint(
            "the brokers must allow deleting topics (delete.topic.enable) and the user needs DELETE on them; \
             running the same restore again creates the topics already deleted",
        ));
    }
    tracing::info!(topics = %names.join(","), "topics deleted");
    let wait = DELETE_WAIT.max(target.timeout);
    let deadline = Instant::now() + wait;
    loop {
        // Every topic, not the deleted ones by name: asking for a topic by
        // name may create it again on a broker with auto.create.topics.enable.
        let md = retry(target, "fetching cluster metadata", || {
            admin.inner().fetch_metadata(None, target.timeout)
        })?;
        let left: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| md.topics().iter().any(|t| t.name() == *n))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::failure(format!(
                "topic(s) {} were deleted, but {} still list them after {}; nothing was created",
                left.join(", "),
                target.brokers,
                humantime::format_duration(wait)
            ))
            .with_hint(
                "the brokers may still be deleting them: run the same restore again later \
                 (topics that are gone are then created, those still listed deleted again)",
            ));
        }
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}
