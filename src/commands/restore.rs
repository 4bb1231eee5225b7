use super::{human_bytes, local_time, parse_time, print_json, restore_access};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::error::{Error, Result};
use crate::ops::restore_point::{latest, snapshot_at};
use crate::repo::{Snapshot, SnapshotId};
use crate::repository::Repository;
use crate::restorer;
use crate::source::{handling, pg, Handling};

fn restore_pitr(g: &GlobalArgs, a: &RestoreArgs, pgdata: &std::path::Path, at: &str) -> Result<()> {
    use crate::source::pg::RecoveryTarget;
    let at = match at {
        "latest" => RecoveryTarget::Latest,
        t => RecoveryTarget::Time(parse_time(t)?),
    };
    let source = a
        .source
        .first()
        .ok_or_else(|| Error::usage("--pgdata needs --source NAME"))?;
    let timeout = super::parse_duration("--recovery-timeout", &a.recovery_timeout)?;
    let repo = restore_access(g).open()?;
    let mut opts = crate::source::pg::PitrOptions::new(
        pgdata.to_path_buf(),
        at,
        super::access(g).wal_fetch_command()?,
    );
    opts.start_port = a.start_port;
    opts.timeout = timeout;
    opts.bases = crate::source::pg::Bases::Any {
        allow_corrupted: a.force,
    };
    let report = crate::source::pg::restore_pitr(&repo, source, &opts)?;
    for p in &report.passed_over {
        eprintln!("{p}");
    }
    if g.json {
        return print_json(&report);
    }
    let approx = if report.reachable_end_approximate {
        " (approximately)"
    } else {
        ""
    };
    let target = match (report.target, report.to_end) {
        (Some(t), false) => format!("recovery target {}", local_time(t)),
        (Some(t), true) => format!(
            "recovery to the end of the archived WAL ({}{approx}): no transaction after {} is archived",
            local_time(report.reachable_end),
            local_time(t)
        ),
        (None, _) if report.immediate => "recovery to the end of the base backup".to_string(),
        (None, _) => format!(
            "recovery to the end of the archived WAL ({}{approx})",
            local_time(report.reachable_end)
        ),
    };
    println!(
        "restored base backup {} (ended {}) into {}; {target}",
        report.snapshot.short(),
        local_time(report.base_stop_time),
        pgdata.display(),
    );
    match &report.reached {
        Some(r) if !r.is_empty() => {
            println!("recovery finished; last transaction replayed committed at {r}")
        }
        Some(_) => println!("recovery finished; no transaction was replayed after the base backup"),
        None => println!(
            "start the cluster to recover: pg_ctl -D {} start",
            pgdata.display()
        ),
    }
    Ok(())
}

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<()> {
    super::plan_excludes(
        "restore",
        a.plan.as_deref(),
        &[
            ("--target", a.target.is_some()),
            ("--to", a.to.is_some()),
            ("--to-brokers", a.to_brokers.is_some()),
            ("--pgdata", a.pgdata.is_some()),
            ("--include", !a.include.is_empty()),
            ("--source", !a.source.is_empty()),
        ],
    )?;
    a.to.as_deref().map(pg::Target::parse).transpose()?; // before anything is opened
    if let Some(plan) = &a.plan {
        return super::restore_plan::run(g, a, plan);
    }
    if let (Some(pgdata), Some(at)) = (&a.pgdata, &a.at) {
        return restore_pitr(g, a, pgdata, at);
    }
    let at = a.at.as_deref().map(parse_time).transpose()?;
    if a.snapshot.is_none() && at.is_none() {
        return Err(
            Error::usage("which snapshot? give an id, `latest`, or --at TIME")
                .with_hint("`cairn snapshots` lists the restore points"),
        );
    }
    let repo = restore_access(g).open()?;
    let (id, snap) = match (&a.snapshot, at) {
        (Some(s), _) if s == "latest" => {
            let (chosen, skipped) = latest(&repo, &a.source, a.force)?;
            for s in skipped {
                eprintln!("{s}");
            }
            chosen?
        }
        (Some(s), _) => repo.find_snapshot(s)?,
        (None, Some(t)) => {
            let (chosen, skipped) = snapshot_at(&repo, t, &a.source, a.force)?;
            for s in skipped {
                eprintln!("{s}");
            }
            chosen?
        }
        (None, None) => unreachable!("checked above"),
    };
    for name in &a.source {
        if !snap.sources.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = snap.sources.iter().map(|s| s.name.as_str()).collect();
            return Err(
                Error::usage(format!("snapshot {} has no source {name:?}", id.short()))
                    .with_hint(format!("its sources are: {}", names.join(", "))),
            );
        }
    }
    if let Some(url) = &a.to {
        return restore_postgres(g, a, &repo, id, &snap, url);
    }
    if let Some(brokers) = &a.to_brokers {
        return restore_kafka(g, a, &repo, id, &snap, brokers);
    }
    let target = a
        .target
        .as_ref()
        .ok_or_else(|| Error::usage("--target DIR is required"))?;
    let mut nodes = Vec::new();
    for s in snap
        .sources
        .iter()
        .filter(|s| a.source.is_empty() || a.source.contains(&s.name))
    {
        if handling(s) == Handling::Unknown {
            return Err(Error::failure(format!(
                "source {} of snapshot {} is of kind {:?}, which this cairn does not know",
                s.name,
                id.short(),
                s.kind.as_str()
            ))
            .with_hint(
                "restore it with the newer cairn that made it, or leave it out with --source",
            ));
        }
        // Straight into one list: a list per source copied into it held
        // both at once (56 MB at 200,000 files, the restore's peak; issue 29).
        repo.for_each_node(s, |n| nodes.push(n))?;
    }
    nodes.shrink_to_fit();
    let unmatched = restorer::unmatched_includes(&nodes, &a.include);
    if let Some(p) = unmatched.first() {
        let near = restorer::near_paths(&nodes, p, 5);
        let patterns: Vec<String> = unmatched.iter().map(|p| format!("--include {p}")).collect();
        return Err(Error::usage(format!(
            "{} {} nothing in snapshot {}; nothing was restored",
            patterns.join(", "),
            if unmatched.len() == 1 { "matches" } else { "match" },
            id.short()
        ))
        .with_hint(if near.is_empty() {
            "a pattern is a whole stored path or a directory above it (a leading / is optional); \
             `cairn snapshots --json` shows the paths each snapshot was made of"
                .to_string()
        } else {
            format!(
                "a pattern is a whole stored path or a directory above it; stored paths near {p}: {}",
                near.join(", ")
            )
        }));
    }
    let nodes = restorer::filter_nodes(nodes, &a.include);
    let started = std::time::Instant::now();
    let stats = restorer::restore_nodes(&repo, &nodes, target, a.overwrite, g.quiet)?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(snapshot = %id.short(), bytes = stats.bytes, seconds = secs, "restore finished");
    if g.json {
        print_json(&serde_json::json!({
            "snapshot": id, "time": snap.time, "target": target, "stats": stats,
            "duration_ms": (secs * 1000.0) as u64,
        }))
    } else {
        if !g.quiet {
            println!(
                "restored snapshot {} of {} to {}: {} files, {} dirs, {} symlinks, {} in {:.1}s{}",
                id.short(),
                local_time(snap.time),
                target.display(),
                stats.files,
                stats.dirs,
                stats.symlinks,
                human_bytes(stats.bytes),
                secs,
                restorer::existing_summary(&stats)
                    .map(|s| format!("; {s}"))
                    .unwrap_or_default()
            );
            if stats.kept > 0 {
                eprintln!(
                    "note: {} path(s) already in the target were kept as they are (--overwrite {}); \
                     -v lists them, --overwrite if-changed replaces those that differ",
                    stats.kept, stats.overwrite
                );
            }
        }
        Ok(())
    }
}

/// The one source restored the way `want` says (`--source`, or the only one).
/// A snapshot whose sources need another way names that way.
fn one_source<'a>(
    snap: &'a Snapshot,
    id: SnapshotId,
    a: &RestoreArgs,
    want: Handling,
) -> Result<&'a crate::repo::SourceRecord> {
    let asked: Vec<_> = snap
        .sources
        .iter()
        .filter(|s| a.source.is_empty() || a.source.contains(&s.name))
        .collect();
    let found: Vec<_> = asked.iter().filter(|s| handling(s) == want).collect();
    match found.as_slice() {
        [one] => Ok(**one),
        [] => {
            let others: Vec<String> = asked
                .iter()
                .map(|s| {
                    let h = handling(s);
                    // A point-in-time restore picks its base backup by
                    // time and needs the source named.
                    let extra = match h {
                        Handling::PgPhysical => format!(
                            " --source {}, and no snapshot id: the base backup is chosen by the time",
                            s.name
                        ),
                        _ => String::new(),
                    };
                    format!(
                        "{} is a {} source (restore it with {}{extra})",
                        s.name,
                        h.label(),
                        h.restore_with()
                    )
                })
                .collect();
            Err(Error::usage(format!(
                "snapshot {} has no {} source to restore with {}",
                id.short(),
                want.label(),
                want.restore_with()
            ))
            .with_hint(if others.is_empty() {
                "`cairn snapshots --json` shows each snapshot's sources".to_string()
            } else {
                others.join("; ")
            }))
        }
        _ => Err(Error::usage(format!(
            "several {} sources: choose one with --source NAME",
            want.label()
        ))),
    }
}

fn restore_kafka(
    g: &GlobalArgs,
    a: &RestoreArgs,
    repo: &Repository,
    id: SnapshotId,
    snap: &Snapshot,
    brokers: &str,
) -> Result<()> {
    use crate::source::kafka;
    let source = one_source(snap, id, a, Handling::Kafka)?;
    let target = super::kafka_options(brokers, &a.kafka_conn)?;
    let mut topic_map = Vec::new();
    for m in &a.topic_map {
        match m.split_once('=') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                topic_map.push((from.to_string(), to.to_string()))
            }
            _ => {
                return Err(Error::usage(format!("--topic-map {m:?} is not OLD=NEW"))
                    .with_hint("e.g. --topic-map orders=orders-restored"))
            }
        }
    }
    let opts = kafka::RestoreOptions {
        topic_map,
        no_messages: a.no_messages,
        // --force also chooses corrupted snapshots; replacing topics wins
        // over adding to them.
        existing: if a.recreate_topics {
            kafka::ExistingTopics::Recreate
        } else if a.force {
            kafka::ExistingTopics::Append
        } else {
            kafka::ExistingTopics::Refuse
        },
        configs: if a.all_configs {
            kafka::ConfigChoice::All
        } else {
            kafka::ConfigChoice::Explicit
        },
    };
    let started = std::time::Instant::now();
    let report = kafka::restore_kafka(repo, source, &target, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    let records: u64 = report.topics.iter().map(|t| t.records).sum();
    tracing::info!(snapshot = %id.short(), records, seconds = secs, "kafka restore finished");
    if g.json {
        print_json(&serde_json::json!({
            "snapshot": id, "source": source.name, "brokers": target.brokers,
            "report": report, "duration_ms": (secs * 1000.0) as u64,
        }))?;
    } else if !g.quiet {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for d in &report.deleted {
            println!("deleted topic {} ({} partition(s))", d.name, d.partitions);
        }
        for t in &report.topics {
            println!(
                "topic {} -> {}: {} partition(s), {} record(s){}{}",
                t.source,
                t.target,
                t.partitions,
                t.records,
                match (t.recreated, t.created) {
                    (true, _) => ", recreated",
                    (false, true) => ", created",
                    (false, false) => ", existing",
                },
                if t.configs_applied.is_empty() {
                    String::new()
                } else {
                    format!(" with {}", t.configs_applied.join(", "))
                }
            );
        }
        for gr in &report.groups {
            match &gr.refused {
                Some(r) => println!("group {}: not committed: {r}", gr.name),
                None => println!(
                    "group {}: offsets committed on {} partition(s)",
                    gr.name,
                    gr.offsets.len()
                ),
            }
        }
        println!(
            "restored snapshot {} ({}) into {}: {} record(s) in {:.1}s",
            id.short(),
            local_time(snap.time),
            target.brokers,
            records,
            secs
        );
    }
    if let Some(e) = report.refused_groups() {
        return Err(e.with_hint("stop those consumers, then set the translated offsets listed by `--json` (groups[].offsets) with kafka-consumer-groups --reset-offsets"));
    }
    Ok(())
}

fn restore_postgres(
    g: &GlobalArgs,
    a: &RestoreArgs,
    repo: &Repository,
    id: SnapshotId,
    snap: &Snapshot,
    url: &str,
) -> Result<()> {
    let source = one_source(snap, id, a, Handling::PgLogical)?;
    let opts = pg::RestoreOptions {
        clean: a.clean,
        databases: a.database.clone(),
        jobs: a.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        spool_dir: a.spool_dir.clone(),
        globals: !a.no_globals,
        proof: if a.prove {
            pg::Proof::Checksums
        } else {
            pg::Proof::Counts
        },
    };
    let started = std::time::Instant::now();
    let report = pg::restore_logical(repo, source, url, &opts)?;
    let bad = report.mismatches();
    if g.json {
        print_json(&serde_json::json!({
            "snapshot": id, "source": source.name, "report": report,
            "duration_ms": started.elapsed().as_millis() as u64,
        }))?;
    } else {
        println!(
            "restored {} database(s) of snapshot {} ({}) in {:.1}s; {} relation(s) checked ({}), {} mismatch(es)",
            report.databases.len(),
            id.short(),
            local_time(snap.time),
            started.elapsed().as_secs_f64(),
            report.tables.len(),
            match opts.proof {
                pg::Proof::Counts => "row counts; --prove compares checksums too",
                pg::Proof::Checksums => "row counts and checksums",
            },
            bad.len()
        );
    }
    if !bad.is_empty() {
        let names: Vec<String> = bad
            .iter()
            .map(|t| format!("{}.{}.{}", t.database, t.schema, t.name))
            .collect();
        return Err(Error::integrity(format!(
            "the restored data differs from the backup in: {}",
            names.join(", ")
        )));
    }
    Ok(())
}
