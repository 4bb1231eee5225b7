//! `cairn check`: prove the repository is whole, and say exactly what is
//! not (the work is in [`crate::ops::check`]).

use super::{local_time, open_repo, print_json};
use crate::cli::{CheckArgs, GlobalArgs};
use crate::error::{Error, Result};
use crate::ops::check::{check, CheckReport};
use crate::repo::SnapshotId;
use crate::repository::Repository;
use crate::source::{handling, Handling};
use std::collections::BTreeSet;

fn restore_test(g: &GlobalArgs, a: &CheckArgs, repo: &Repository) -> Result<()> {
    let (id, snap) = repo.find_snapshot(a.snapshot.as_deref().unwrap_or("latest"))?;
    if let Some(n) = &a.source {
        let Some(s) = snap.sources.iter().find(|s| &s.name == n) else {
            let names: Vec<&str> = snap.sources.iter().map(|s| s.name.as_str()).collect();
            return Err(
                Error::usage(format!("snapshot {} has no source {n:?}", id.short()))
                    .with_hint(format!("its sources are: {}", names.join(", "))),
            );
        };
        if handling(s) == Handling::Kafka && a.scratch_brokers.is_none() {
            return Err(
                Error::usage("testing a Kafka source needs --scratch-brokers HOST:PORT")
                    .with_hint("give a broker whose topics may be created and left for inspection"),
            );
        }
    }
    // A restored physical cluster fetches WAL with a `cairn wal-fetch`
    // that opens the repository by itself: the key must be in a file.
    let wal_fetch = super::access(g).wal_fetch_command();
    let asked = |s: &&crate::repo::SourceRecord| a.source.as_ref().is_none_or(|n| &s.name == n);
    let testable = snap
        .sources
        .iter()
        .filter(asked)
        .any(|s| match handling(s) {
            Handling::PgLogical | Handling::Nodes => true,
            Handling::PgPhysical => wal_fetch.is_ok(),
            Handling::Kafka => a.scratch_brokers.is_some(),
            Handling::Unknown => false,
        });
    if !testable {
        if snap
            .sources
            .iter()
            .filter(asked)
            .any(|s| handling(s) == Handling::PgPhysical)
        {
            if let Err(e) = wal_fetch {
                return Err(e);
            }
        }
        return Err(Error::usage(format!(
            "snapshot {} has no file or PostgreSQL source to test{}",
            id.short(),
            if a.scratch_brokers.is_some() { " and no Kafka source" } else { "" }
        ))
        .with_hint("pick one with --snapshot ID; `cairn snapshots --json` shows the sources; Kafka sources need --scratch-brokers"));
    }
    let env = crate::prove::ScratchEnv {
        postgres: a.scratch_url.clone(),
        kafka: a
            .scratch_brokers
            .as_deref()
            .map(crate::source::kafka::KafkaOptions::new)
            .transpose()?,
        files_dir: a.scratch_dir.clone(),
        wal_fetch: wal_fetch.ok(),
        pitr_point: match a.restore_test_at.as_deref() {
            None => crate::source::pg::TestPoint::Random,
            Some("end") => crate::source::pg::TestPoint::End,
            Some(t) => crate::source::pg::TestPoint::At(super::parse_time(t)?),
        },
    };
    let report = crate::prove::prove(repo, id, &snap, a.source.as_deref(), &env)?;
    if g.json {
        print_json(&report)?;
    } else {
        for t in &report.postgres {
            for tc in &t.report.tables {
                println!(
                    "{} {}.{}.{} ({}): {} rows{}",
                    if tc.ok { "ok      " } else { "MISMATCH" },
                    tc.database,
                    tc.schema,
                    tc.name,
                    tc.kind,
                    tc.expected_rows,
                    match tc.actual_rows {
                        Some(r) if r != tc.expected_rows => format!(", restored {r}"),
                        None => ", missing after restore".into(),
                        _ => String::new(),
                    }
                );
            }
            for f in &t.amcheck {
                println!("pg_amcheck: {f}");
            }
            println!(
                "restore test of snapshot {} source {}: {}",
                id.short(),
                t.source,
                if t.ok() { "passed" } else { "FAILED" }
            );
        }
        for t in &report.physical {
            for f in &t.amcheck {
                println!("pg_amcheck: {f}");
            }
            for p in &t.problems {
                println!("PROBLEM  {p}");
            }
            let to = match t.target {
                Some(at) => local_time(at),
                None => "the end of the archived WAL".to_string(),
            };
            println!(
                "restore test of snapshot {} source {}: {} (recovered to {to}, in its range {} to {}{}; last transaction replayed {}; {})",
                id.short(),
                t.source,
                if t.ok() { "passed" } else { "FAILED" },
                local_time(t.from),
                local_time(t.to),
                if t.to_approximate { " (approximately)" } else { "" },
                if t.reached.is_empty() { "none after the base backup".to_string() } else { t.reached.clone() },
                if t.amcheck_ran { "pg_amcheck --all" } else { "pg_amcheck not installed" },
            );
        }
        for t in &report.kafka {
            for p in &t.partitions {
                println!(
                    "{} {}/{}: {} records{}",
                    if p.ok { "ok      " } else { "MISMATCH" },
                    p.topic,
                    p.partition,
                    p.expected_records,
                    if p.restored_records != p.expected_records {
                        format!(", restored {}", p.restored_records)
                    } else if !p.ok {
                        ", content differs".into()
                    } else {
                        String::new()
                    }
                );
            }
            println!(
                "restore test of snapshot {} source {}: {} (topics {}*)",
                id.short(),
                t.source,
                if t.ok() { "passed" } else { "FAILED" },
                t.prefix
            );
        }
        for t in &report.files {
            for d in &t.check.differences {
                println!("DIFFERS  {d}");
            }
            println!(
                "restore test of snapshot {} source {}: {} ({} files, {} dirs, {} symlinks, {} compared){}",
                id.short(),
                t.source,
                if t.check.ok() { "passed" } else { "FAILED" },
                t.check.files,
                t.check.dirs,
                t.check.symlinks,
                super::human_bytes(t.check.bytes),
                match t.check.different as usize {
                    0 => String::new(),
                    n if n > t.check.differences.len() => format!("; {n} differences, the first {} shown", t.check.differences.len()),
                    n => format!("; {n} difference(s)"),
                }
            );
        }
        for u in &report.untested {
            println!("not tested: {u}");
        }
    }
    match &report.outcome {
        crate::prove::Outcome::Passed => Ok(()),
        crate::prove::Outcome::Skipped { reason } => Err(Error::new(
            crate::error::Kind::Unavailable,
            format!("restore test of snapshot {} skipped: {reason}", id.short()),
        )
        .with_hint(
            "the snapshot was not judged; make the scratch environment reachable and test again",
        )),
        crate::prove::Outcome::Failed { detail } => Err(Error::integrity(format!(
            "restore test of snapshot {} failed: {detail}; the snapshot is marked corrupted",
            id.short()
        ))
        .with_hint("`cairn snapshots` shows it; `restore --at` skips it unless --force")),
    }
}

/// What to run next for the damage `report` found (spec/repository.md
/// "Recovering from damaged files").
fn recovery_hint(report: &CheckReport) -> String {
    let mut steps = Vec::new();
    let damaged_files: BTreeSet<SnapshotId> = report
        .damaged
        .iter()
        .filter(|d| d.path == "(snapshot file)")
        .map(|d| d.snapshot)
        .collect();
    if report.errors.iter().any(|e| e.starts_with("index ")) {
        steps.push("`cairn repair index` indexes the packs of damaged index files again and removes those files".to_string());
    }
    if !damaged_files.is_empty() {
        let ids: Vec<String> = damaged_files.iter().map(|i| i.short()).collect();
        steps.push(format!(
            "`cairn forget {}` removes the unreadable snapshot file(s)",
            ids.join(" ")
        ));
    }
    if report.wal_gaps > 0 {
        steps.push("WAL missing from the archive cannot be made again: if the server's pg_wal still holds it, `cairn wal-push` each file; take a physical snapshot now, so that times after the gap can be restored".to_string());
    }
    if !report.damaged_packs.is_empty() {
        steps.push("`cairn repair packs` replaces the damaged packs by what can be read back of them, so that the next backup stores the lost data again instead of reusing it".to_string());
    }
    if report.wal_gaps < report.errors.len() || !report.damaged.is_empty() {
        steps.push("restore from an undamaged snapshot; `cairn forget ID` the damaged ones and run `cairn prune`".to_string());
    }
    steps.join("; ")
}

pub fn run(g: &GlobalArgs, a: &CheckArgs) -> Result<()> {
    let repo = open_repo(g)?;
    if a.restore_test {
        return restore_test(g, a, &repo);
    }
    let report = check(&repo, a.read_data, a.read_data_subset.as_deref(), g.quiet)?;
    if g.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} snapshot(s), {} pack(s); read {} pack(s), {} bytes",
            report.snapshots, report.packs, report.packs_read, report.bytes_read
        );
        for e in &report.errors {
            println!("error: {e}");
        }
        for d in &report.damaged {
            println!(
                "damaged: snapshot {} ({}) source {}: {}",
                d.snapshot.short(),
                local_time(d.time),
                d.source,
                d.path
            );
        }
        if !report.unreferenced_packs.is_empty() {
            if report.damaged.is_empty() {
                println!(
                    "{} unreferenced pack(s), left by interrupted snapshots: `cairn prune` removes them",
                    report.unreferenced_packs.len()
                );
            } else {
                println!(
                    "{} unreferenced pack(s): if an index file was lost they may hold the damaged snapshots' data; `cairn repair index` indexes them again",
                    report.unreferenced_packs.len()
                );
            }
        }
        if report.ok() {
            println!("no errors found");
        }
    }
    if report.ok() {
        Ok(())
    } else {
        let snaps = report.damaged_snapshots();
        Err(Error::integrity(format!(
            "the repository is damaged: {} error(s), {} damaged file(s) in {} snapshot(s)",
            report.errors.len(),
            report.damaged.len(),
            snaps.len()
        ))
        .with_hint(recovery_hint(&report)))
    }
}
