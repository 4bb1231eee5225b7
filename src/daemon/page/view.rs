//! What the status page shows, as plain data: built from the plan, the
//! daemon's status and the cached repository files, with no I/O (the WAL
//! windows, which may read a segment, are worked out by the caller), so a
//! test can build it from a synthetic year. Everything a table lists is
//! bounded here; the charts bound their points themselves (`chart.rs`).

use super::cache::Cached;
use crate::daemon::status::{Event, SourceState, Status};
use crate::plan::Plan;
use crate::repo::{Proof, SnapshotId, SourceStatus};
use crate::retention::{plan_by_source, Candidate, PlanSnapshot, Verdict};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::collections::HashMap;

/// Rows of the runs table.
pub const RUN_ROWS: usize = 40;
/// Failures listed per source.
pub const FAILURE_ROWS: usize = 20;
/// Alerts listed.
pub const ALERT_ROWS: usize = 30;
/// Kept snapshots listed in the retention table.
pub const KEPT_ROWS: usize = 120;
/// Proofs listed.
pub const PROOF_ROWS: usize = 60;

/// One run of the plan: a snapshot, or a run that saved none.
#[derive(Clone, Debug)]
pub struct Run {
    pub time: Timestamp,
    /// The snapshot (short id); `None` for a run that saved none.
    pub snapshot: Option<String>,
    pub tags: Vec<String>,
    /// `complete`, `incomplete` or `failed`.
    pub outcome: &'static str,
    pub sources: Vec<(String, SourceStatus)>,
    pub size: u64,
    pub bytes_added: u64,
    pub duration_ms: u64,
    /// Why it failed (a run without snapshot, or its failed sources).
    pub error: Option<String>,
}

/// One point of a source's history: a snapshot that recorded it.
#[derive(Clone, Debug)]
pub struct Point {
    pub time: Timestamp,
    pub status: SourceStatus,
    /// The source's size in the snapshot.
    pub size: u64,
    /// The run's bytes added and duration (the snapshot records them per run).
    pub bytes_added: u64,
    pub duration_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub time: Timestamp,
    /// The snapshot saved without the source, or `None` (no snapshot).
    pub snapshot: Option<String>,
    pub error: String,
}

#[derive(Clone, Debug)]
pub struct SourceView {
    pub name: String,
    pub kind: String,
    pub state: SourceState,
    /// Oldest first, every snapshot that recorded the source.
    pub points: Vec<Point>,
    /// Newest first, at most [`FAILURE_ROWS`].
    pub failures: Vec<Failure>,
    pub failure_count: usize,
    /// Whether the plan's runs hold other sources too (then bytes added and
    /// duration are the whole run's).
    pub shared_runs: bool,
}

/// Which rule a kept snapshot is kept by, for the calendar's colours
/// (the longest-lived rule wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Not kept: goes at the next retention.
    Removed,
    Other,
    Last,
    Within,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Tags,
    Corrupted,
}

impl Class {
    pub fn of_rule(rule: &str) -> Class {
        match rule.trim_start_matches("within-") {
            "last" => Class::Last,
            "within" => Class::Within,
            "hourly" => Class::Hourly,
            "daily" => Class::Daily,
            "weekly" => Class::Weekly,
            "monthly" => Class::Monthly,
            "yearly" => Class::Yearly,
            "tags" => Class::Tags,
            _ => Class::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Removed => "removed",
            Class::Other => "newest complete",
            Class::Last => "last",
            Class::Within => "within",
            Class::Hourly => "hourly",
            Class::Daily => "daily",
            Class::Weekly => "weekly",
            Class::Monthly => "monthly",
            Class::Yearly => "yearly",
            Class::Tags => "tags",
            Class::Corrupted => "corrupted",
        }
    }
}

/// One snapshot of the plan as retention sees it.
#[derive(Clone, Debug)]
pub struct Kept {
    pub snapshot: String,
    pub time: Timestamp,
    pub keep: bool,
    pub class: Class,
    pub reasons: Vec<String>,
    /// Kept now, but not after the next scheduled run (if it succeeds).
    pub goes_next: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Retention {
    pub rules: String,
    /// The next scheduled run, which the "goes next" column looks at.
    pub next_run: Option<Timestamp>,
    /// Every snapshot of the plan, newest first.
    pub snapshots: Vec<Kept>,
    /// Sources of which the rules keep no good copy (retention refuses).
    pub keeps_nothing: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ProofRow {
    pub snapshot: String,
    pub snapshot_time: Timestamp,
    pub proof: Proof,
}

/// A physical PostgreSQL source's WAL archive and restorable window.
#[derive(Clone, Debug, Default)]
pub struct Wal {
    pub source: String,
    pub archive: Option<crate::daemon::archive::ArchiveState>,
    /// From the oldest base backup's end to how far the newest reaches.
    pub window: Option<(Timestamp, Timestamp)>,
    /// The first missing segment that cuts the newest base backup's reach.
    pub gap: Option<String>,
    pub approximate: bool,
}

pub struct View {
    pub plan: String,
    pub host: String,
    pub now: Timestamp,
    pub tz: TimeZone,
    pub status: Status,
    pub storage_warning: f64,
    /// Use above which storage is critical (100 − `critical-free`).
    pub storage_critical: f64,
    pub sources: Vec<SourceView>,
    /// Newest first, at most [`RUN_ROWS`]; `run_count` in all.
    pub runs: Vec<Run>,
    pub run_count: usize,
    /// Newest first, at most [`ALERT_ROWS`].
    pub alerts: Vec<Event>,
    pub retention: Retention,
    /// Newest snapshot first, at most [`PROOF_ROWS`].
    pub proofs: Vec<ProofRow>,
    pub never_proven: usize,
    /// Snapshots whose newest proof failed: (short id, time, what failed).
    pub corrupted: Vec<(String, Timestamp, String)>,
    /// Snapshot files that cannot be read: (short id, why).
    pub damaged: Vec<(String, String)>,
    pub wal: Vec<Wal>,
}

/// Everything the view is made from.
pub struct Input<'a> {
    pub plan: &'a Plan,
    pub status: Status,
    /// Every cached snapshot, oldest first (the plan's are picked here).
    pub snapshots: Vec<(SnapshotId, &'a Cached)>,
    pub proofs: HashMap<SnapshotId, Proof>,
    pub damaged: Vec<(SnapshotId, String)>,
    pub wal: Vec<Wal>,
    pub now: Timestamp,
    pub tz: TimeZone,
}

fn record_error(errors: &[String], status: SourceStatus) -> String {
    if errors.is_empty() {
        format!("the source is {status:?} in the snapshot").to_lowercase()
    } else {
        errors.join("; ")
    }
}

pub fn build(input: Input<'_>) -> View {
    let Input {
        plan,
        status,
        snapshots,
        proofs,
        damaged,
        wal,
        now,
        tz,
    } = input;
    let mine: Vec<(SnapshotId, &Cached)> = snapshots
        .into_iter()
        .filter(|(_, c)| plan.made(&c.snapshot))
        .collect();
    let failed_runs: Vec<&Event> = status
        .events
        .iter()
        .filter(|e| e.kind == "run-failed")
        .collect();

    // Runs: the snapshots and the runs that saved none, newest first.
    let mut runs: Vec<Run> = mine
        .iter()
        .map(|(id, c)| {
            let s = &c.snapshot;
            let bad: Vec<String> = s
                .sources
                .iter()
                .filter(|r| r.status != SourceStatus::Complete)
                .map(|r| format!("{}: {}", r.name, record_error(&r.errors, r.status)))
                .collect();
            Run {
                time: s.time,
                snapshot: Some(id.short()),
                tags: s.tags.clone(),
                outcome: if s.is_complete() {
                    "complete"
                } else {
                    "incomplete"
                },
                sources: s
                    .sources
                    .iter()
                    .map(|r| (r.name.clone(), r.status))
                    .collect(),
                size: s.size(),
                bytes_added: s.summary.bytes_added,
                duration_ms: s.summary.duration_ms,
                error: (!bad.is_empty()).then(|| bad.join("; ")),
            }
        })
        .collect();
    runs.extend(failed_runs.iter().map(|e| {
        Run {
            time: e.time,
            snapshot: None,
            tags: Vec::new(),
            outcome: "failed",
            sources: e
                .sources
                .iter()
                .map(|n| (n.clone(), SourceStatus::Failed))
                .collect(),
            size: 0,
            bytes_added: 0,
            duration_ms: 0,
            error: Some(format!("{} (trigger: {})", e.detail, e.what)),
        }
    }));
    runs.sort_by_key(|r| std::cmp::Reverse(r.time));
    let run_count = runs.len();
    runs.truncate(RUN_ROWS);

    let several = mine.iter().any(|(_, c)| c.snapshot.sources.len() > 1);
    let sources = plan
        .sources
        .iter()
        .map(|src| {
            let name = &src.name;
            let mut points = Vec::new();
            let mut failures = Vec::new();
            for (id, c) in &mine {
                let s = &c.snapshot;
                let Some(r) = s.sources.iter().find(|r| &r.name == name) else {
                    continue;
                };
                points.push(Point {
                    time: s.time,
                    status: r.status,
                    size: r.size,
                    bytes_added: s.summary.bytes_added,
                    duration_ms: s.summary.duration_ms,
                });
                if r.status != SourceStatus::Complete {
                    failures.push(Failure {
                        time: s.time,
                        snapshot: Some(id.short()),
                        error: record_error(&r.errors, r.status),
                    });
                }
            }
            failures.extend(
                failed_runs
                    .iter()
                    .filter(|e| e.sources.is_empty() || e.sources.contains(name))
                    .map(|e| Failure {
                        time: e.time,
                        snapshot: None,
                        error: e.detail.clone(),
                    }),
            );
            failures.sort_by_key(|f| std::cmp::Reverse(f.time));
            let failure_count = failures.len();
            failures.truncate(FAILURE_ROWS);
            SourceView {
                name: name.clone(),
                kind: src.settings.kind().to_string(),
                state: status.sources.get(name).cloned().unwrap_or_default(),
                points,
                failures,
                failure_count,
                shared_runs: several,
            }
        })
        .collect();

    let alerts: Vec<Event> = status
        .events
        .iter()
        .rev()
        .filter(|e| e.kind == "alert")
        .take(ALERT_ROWS)
        .cloned()
        .collect();

    let retention = retention(plan, &status, &mine, &proofs, now, &tz);

    let mut proof_rows: Vec<ProofRow> = mine
        .iter()
        .rev()
        .filter_map(|(id, c)| {
            Some(ProofRow {
                snapshot: id.short(),
                snapshot_time: c.snapshot.time,
                proof: proofs.get(id)?.clone(),
            })
        })
        .collect();
    let never_proven = mine
        .iter()
        .filter(|(id, _)| !proofs.contains_key(id))
        .count();
    let corrupted = proof_rows
        .iter()
        .filter(|p| !p.proof.passed)
        .map(|p| (p.snapshot.clone(), p.snapshot_time, p.proof.detail.clone()))
        .collect();
    proof_rows.truncate(PROOF_ROWS);

    View {
        plan: plan.identity(),
        host: crate::repository::host_name(),
        now,
        storage_warning: plan.alerts.storage_warning.0,
        storage_critical: 100.0 - plan.retention.critical_free.0,
        sources,
        runs,
        run_count,
        alerts,
        retention,
        proofs: proof_rows,
        never_proven,
        corrupted,
        damaged: damaged.into_iter().map(|(id, e)| (id.short(), e)).collect(),
        wal,
        tz,
        status,
    }
}

/// The plan's retention decision now, and which kept snapshots the next
/// scheduled run (taken to succeed, with every source) would let go.
fn retention(
    plan: &Plan,
    status: &Status,
    mine: &[(SnapshotId, &Cached)],
    proofs: &HashMap<SnapshotId, Proof>,
    now: Timestamp,
    tz: &TimeZone,
) -> Retention {
    let policy = plan.retention.policy();
    let snaps: Vec<PlanSnapshot> = mine
        .iter()
        .map(|(id, c)| {
            let s = &c.snapshot;
            PlanSnapshot::of(Candidate::of(*id, s, proofs), s)
        })
        .collect();
    let decision = plan_by_source(&policy, &snaps, tz, now);
    // The next run: the schedule due first, with its tags.
    let next = status
        .schedules
        .iter()
        .filter_map(|s| s.next_run.map(|t| (t, &s.name)))
        .min();
    let goes: std::collections::HashSet<String> = match next {
        Some((at, name)) if !snaps.is_empty() => {
            let tags = plan
                .schedules
                .iter()
                .find(|s| &s.name == name)
                .map(|s| s.tags.clone())
                .unwrap_or_default();
            let newest = &snaps[snaps.len() - 1].candidate;
            let mut with_next = snaps.clone();
            with_next.push(PlanSnapshot {
                candidate: Candidate {
                    id: "next".into(),
                    time: at,
                    tags,
                    corrupted: None,
                    incomplete: false,
                    ..newest.clone()
                },
                sources: plan
                    .sources
                    .iter()
                    .map(|s| (s.name.clone(), SourceStatus::Complete))
                    .collect(),
            });
            plan_by_source(&policy, &with_next, tz, at)
                .removed()
                .map(|v| v.id.clone())
                .collect()
        }
        _ => Default::default(),
    };
    let kept = |v: &Verdict| {
        let class = if v.corrupted.is_some() {
            Class::Corrupted
        } else if !v.keep {
            Class::Removed
        } else {
            v.sources
                .iter()
                .filter(|s| s.keep)
                .flat_map(|s| s.matches.iter().map(|m| Class::of_rule(&m.rule)))
                .max()
                .unwrap_or(Class::Other)
        };
        Kept {
            snapshot: v.id.chars().take(8).collect(),
            time: v.time,
            keep: v.keep,
            class,
            reasons: v.reasons.clone(),
            goes_next: v.keep && goes.contains(&v.id),
        }
    };
    Retention {
        rules: policy.to_string(),
        next_run: next.map(|(t, _)| t),
        snapshots: decision.snapshots.iter().map(kept).collect(),
        keeps_nothing: decision.keeps_nothing,
    }
}
