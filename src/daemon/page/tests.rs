//! The page rendered from synthetic histories: bounded in size however
//! long the history, escaped, and saying what retention does next.

use super::cache::Cached;
use super::view::{self, Input};
use crate::daemon::status::{Event, ScheduleState, Status};
use crate::plan::Plan;
use crate::repo::{Proof, Snapshot, SnapshotId};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::collections::HashMap;

const DAY: i64 = 86_400;

fn plan(dir: &std::path::Path, body: &str) -> Plan {
    std::fs::write(dir.join("password"), "pw\n").unwrap();
    let file = dir.join("plan.kdl");
    std::fs::write(
        &file,
        format!(
            "name \"nightly-plan\"\nrepository \"{}\" {{\n    password-file \"password\"\n}}\n{body}",
            dir.join("repo").display()
        ),
    )
    .unwrap();
    Plan::load(&file).unwrap_or_else(|d| panic!("{d}"))
}

const SOURCES: &str = "source \"etc\" kind=\"files\" {\n    path \"/etc\"\n}\n\
source \"db\" kind=\"command\" {\n    command \"true\"\n}\n\
source \"www\" kind=\"files\" {\n    path \"/var/www\"\n}\n";

/// A snapshot of the plan at `t` with `sources` (name, failed?).
fn snap(t: Timestamp, tags: &[&str], sources: &[(&str, bool)], n: u64) -> Snapshot {
    serde_json::from_value(serde_json::json!({
        "version": 1, "time": t, "host": "backup-host", "username": "root",
        "paths": ["/etc"], "tags": tags, "plan": "nightly-plan", "program": "cairn",
        "summary": {"files": 10, "dirs": 2, "symlinks": 0, "bytes_read": 1000 + n,
            "bytes_added": 100 + (n % 17) * 1000, "chunks_total": 3, "chunks_new": 1,
            "duration_ms": 60_000 + (n % 7) * 1000},
        "sources": sources.iter().map(|(name, failed)| serde_json::json!({
            "name": name, "kind": "files",
            "status": if *failed { "failed" } else { "complete" },
            "errors": if *failed { vec![format!("{name} could not be read")] } else { vec![] },
            "tree": [], "size": if *failed { 0 } else { 1_000_000 + n * 10 },
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn id(n: u64) -> SnapshotId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[31] = 1;
    SnapshotId(b)
}

struct History {
    snaps: Vec<(SnapshotId, Cached)>,
    proofs: HashMap<SnapshotId, Proof>,
    status: Status,
    now: Timestamp,
}

/// `days` nightly runs of three sources ending today: every 30th night a
/// source fails, every 45th run saves nothing, a weekly proof (one failed).
fn history(days: u64) -> History {
    let now: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
    let mut snaps = Vec::new();
    let mut proofs = HashMap::new();
    let mut status = Status::default();
    for n in 0..days {
        let t = now - jiff::SignedDuration::from_secs((days - n) as i64 * DAY - 3600);
        if n % 45 == 44 {
            status.record(Event {
                time: t,
                kind: "run-failed".into(),
                what: "schedule nightly".into(),
                sources: vec!["etc".into(), "db".into(), "www".into()],
                detail: "the repository's storage is unreachable".into(),
                outcome: String::new(),
            });
            continue;
        }
        let s = snap(
            t,
            &["nightly"],
            &[("etc", false), ("db", n % 30 == 29), ("www", false)],
            n,
        );
        if n % 7 == 0 {
            proofs.insert(
                id(n),
                Proof {
                    version: 1,
                    snapshot: id(n),
                    time: t + jiff::SignedDuration::from_secs(3600),
                    passed: n != 7,
                    sources: vec!["etc".into(), "www".into()],
                    detail: if n == 7 {
                        "etc: 1 file differs".into()
                    } else {
                        String::new()
                    },
                    host: "backup-host".into(),
                },
            );
        }
        snaps.push((
            id(n),
            Cached {
                snapshot: s,
                physical: Vec::new(),
            },
        ));
    }
    for i in 0..30 {
        status.record(Event {
            time: now - jiff::SignedDuration::from_secs(i * DAY),
            kind: "alert".into(),
            what: "backup-failed".into(),
            sources: vec![],
            detail: "backup failed: db".into(),
            outcome: "sent".into(),
        });
    }
    status.schedules = vec![ScheduleState {
        name: "nightly".into(),
        cron: "0 1 * * *".into(),
        next_run: Some(now + jiff::SignedDuration::from_secs(14 * 3600)),
    }];
    History {
        snaps,
        proofs,
        status,
        now,
    }
}

fn render(plan: &Plan, h: &History) -> String {
    let v = view::build(Input {
        plan,
        status: h.status.clone(),
        snapshots: h.snaps.iter().map(|(id, c)| (*id, c)).collect(),
        proofs: h.proofs.clone(),
        damaged: vec![(id(999_999), "snapshots/… is damaged".into())],
        wal: Vec::new(),
        now: h.now,
        tz: TimeZone::UTC,
    });
    super::html::page(&v).into_string()
}

const RULES: &str = "retention {\n    keep-daily 7\n    keep-weekly 4\n    keep-monthly 12\n}\n";

#[test]
fn a_year_of_history_renders_within_a_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(dir.path(), &format!("{SOURCES}{RULES}"));
    let year = render(&p, &history(365));
    let three = render(&p, &history(3 * 365));
    if let Some(d) = std::env::var_os("CAIRN_PAGE_DUMP") {
        std::fs::write(std::path::Path::new(&d).join("year.html"), &year).unwrap();
        std::fs::write(std::path::Path::new(&d).join("three.html"), &three).unwrap();
    }
    // What a person sees of a year: the runs, a failed run, proofs, the calendar.
    assert!(year.contains("run run-failed"), "a run that saved nothing");
    assert!(year.contains("storage is unreachable"), "why it failed");
    assert!(year.contains("db could not be read"), "a failed source");
    assert!(year.contains("etc: 1 file differs"), "the failed proof");
    assert!(
        year.contains("class=\"day k-daily"),
        "daily keeps in the calendar"
    );
    assert!(
        year.contains("class=\"day k-monthly"),
        "monthly keeps in the calendar"
    );
    assert!(year.contains("backup failed: db"), "alerts");
    // Bounded: the page of a year is a few hundred KiB, and three years
    // draw no more than one (charts downsample, tables are cut).
    assert!(year.len() < 700 * 1024, "{} bytes for a year", year.len());
    assert!(
        three.len() < year.len() + year.len() / 5,
        "three years: {} bytes, one year: {}",
        three.len(),
        year.len()
    );
    assert!(three.matches("<circle").count() <= 3 * 3 * super::chart::MAX_POINTS);
    assert!(three.matches("class=\"run ").count() <= view::RUN_ROWS);
}

#[test]
fn text_from_snapshots_and_errors_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        "source \"etc\" kind=\"files\" {\n    path \"/etc\"\n}\n",
    );
    let evil = "<script>alert(1)</script>";
    let mut h = history(3);
    for (_, c) in &mut h.snaps {
        c.snapshot.tags = vec![evil.into()];
        c.snapshot.sources[0].status = crate::repo::SourceStatus::Failed;
        c.snapshot.sources[0].errors = vec![format!("\"/><img src=x onerror=alert(2)>{evil}")];
    }
    h.status.record(Event {
        time: h.now,
        kind: "alert".into(),
        what: "backup-failed".into(),
        sources: vec![],
        detail: evil.into(),
        outcome: evil.into(),
    });
    let out = render(&p, &h);
    assert!(!out.contains("<script"), "no script element gets through");
    assert!(!out.contains("<img"), "no element gets through");
    assert!(out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}

#[test]
fn retention_says_which_rule_keeps_each_snapshot_and_what_goes_next() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        "source \"etc\" kind=\"files\" {\n    path \"/etc\"\n}\nretention {\n    keep-last 3\n}\n",
    );
    let mut h = history(3);
    for (_, c) in &mut h.snaps {
        c.snapshot.sources.truncate(1);
    }
    let v = view::build(Input {
        plan: &p,
        status: h.status.clone(),
        snapshots: h.snaps.iter().map(|(id, c)| (*id, c)).collect(),
        proofs: HashMap::new(),
        damaged: Vec::new(),
        wal: Vec::new(),
        now: h.now,
        tz: TimeZone::UTC,
    });
    let r = &v.retention;
    assert_eq!(r.snapshots.len(), 3);
    assert!(r
        .snapshots
        .iter()
        .all(|k| k.keep && k.class == view::Class::Last));
    assert!(
        r.snapshots[0].reasons[0].starts_with("last 1/3"),
        "{:?}",
        r.snapshots[0].reasons
    );
    // The next run makes a fourth: the oldest goes, and only it.
    let going: Vec<_> = r.snapshots.iter().filter(|k| k.goes_next).collect();
    assert_eq!(going.len(), 1);
    assert_eq!(going[0].snapshot, id(0).short());
    let out = super::html::page(&v).into_string();
    assert!(out.contains("removed after the next run"));
}

#[test]
fn the_cache_reads_each_file_once_and_forgets_removed_ones() {
    use crate::backend::FileRef;
    use crate::repo::{FileKind, ProofId};
    let dir = tempfile::tempdir().unwrap();
    let repo = crate::repository::test_repo(dir.path());
    let now = Timestamp::now();
    let ids: Vec<SnapshotId> = (0..3)
        .map(|n| {
            repo.write_sealed(&snap(now, &["nightly"], &[("etc", false)], n))
                .unwrap()
        })
        .collect();
    let _: ProofId = repo
        .write_sealed(&Proof {
            version: 1,
            snapshot: ids[0],
            time: now,
            passed: false,
            sources: vec!["etc".into()],
            detail: "etc: 1 file differs".into(),
            host: "h".into(),
        })
        .unwrap();
    let mut cache = super::cache::RepoCache::default();
    cache.refresh(&repo, false).unwrap();
    assert_eq!(cache.snapshots().len(), 3);
    assert_eq!(cache.reads, 4, "three snapshots and a proof");
    assert!(!cache.newest_proofs()[&ids[0]].passed);
    // Nothing new: nothing read.
    cache.refresh(&repo, false).unwrap();
    assert_eq!(cache.reads, 4);
    // One new, one gone, one damaged: only the new and the damaged are read.
    let new: SnapshotId = repo
        .write_sealed(&snap(now, &[], &[("etc", false)], 9))
        .unwrap();
    repo.backend
        .remove(&FileRef::new(FileKind::Snapshot, ids[1].to_hex()))
        .unwrap();
    let bad = "ab".repeat(32);
    repo.backend
        .write(&FileRef::new(FileKind::Snapshot, &bad), b"not a snapshot")
        .unwrap();
    cache.refresh(&repo, false).unwrap();
    assert_eq!(cache.reads, 6);
    let listed: Vec<SnapshotId> = cache.snapshots().iter().map(|(id, _)| *id).collect();
    assert!(listed.contains(&new) && !listed.contains(&ids[1]));
    assert_eq!(listed.len(), 3);
    assert_eq!(cache.damaged().len(), 1, "{:?}", cache.damaged());
    cache.refresh(&repo, false).unwrap();
    assert_eq!(cache.reads, 6, "a damaged file is not read again");
    // Node lists and metadata are not kept.
    assert!(cache.snapshots().iter().all(|(_, c)| c
        .snapshot
        .sources
        .iter()
        .all(|r| r.tree.is_empty())));
}

#[test]
fn the_wal_window_and_storage_against_its_thresholds_are_shown() {
    use crate::daemon::archive::{ArchiveState, ServerArchive};
    use crate::daemon::status::StorageUse;
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        &format!("{SOURCES}alerts {{\n    storage-warning \"70%\"\n}}\n"),
    );
    let mut h = history(3);
    h.status.storage = Some(StorageUse {
        used_bytes: 4000,
        files: 12,
        measured_by: Some("quota".into()),
        total_bytes: Some(5000),
        percent: Some(80.0),
        ..Default::default()
    });
    let from: Timestamp = "2026-12-01T02:00:00Z".parse().unwrap();
    let to: Timestamp = "2026-12-07T11:58:00Z".parse().unwrap();
    let v = view::build(Input {
        plan: &p,
        status: h.status.clone(),
        snapshots: h.snaps.iter().map(|(id, c)| (*id, c)).collect(),
        proofs: HashMap::new(),
        damaged: Vec::new(),
        wal: vec![view::Wal {
            source: "pg".into(),
            archive: Some(ArchiveState {
                server: Some(ServerArchive {
                    last_archived_wal: Some("000000010000000000000042".into()),
                    ..Default::default()
                }),
                lag_seconds: Some(30),
                repository_newest_wal: Some("000000010000000000000041".into()),
                ..Default::default()
            }),
            window: Some((from, to)),
            gap: Some("000000010000000000000040".into()),
            approximate: false,
        }],
        now: h.now,
        tz: TimeZone::UTC,
    });
    let out = super::html::page(&v).into_string();
    assert!(
        out.contains("2026-12-01 02:00 to 2026-12-07 11:58"),
        "the window"
    );
    assert!(out.contains("000000010000000000000040</code> is missing"));
    assert!(
        out.contains("000000010000000000000042"),
        "the server's last archived"
    );
    assert!(out.contains("80.0% used · warning at 70% · critical above 95%"));
    assert!(
        out.contains("class=\"fill warning\""),
        "between the thresholds"
    );
}
