//! `cairn restore --plan FILE [SNAPSHOT | --at TIME] [--dry-run]`: restore
//! everything a plan backs up, with its services stopped and started around
//! it (the work is in [`crate::orchestrate`]).

use std::path::{Path, PathBuf};

use super::{local_time, parse_time, print_json};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::error::{Error, Result};
use crate::orchestrate::{self, Options, Report, StepReport, StepStatus};
use crate::plan::Plan;
use crate::repo::{Snapshot, SnapshotId};

pub fn run(g: &GlobalArgs, a: &RestoreArgs, file: &Path) -> Result<()> {
    use crate::source::pg::RecoveryTarget;
    let plan = super::plan::load(file)?;
    // `--at latest`: the newest restore point, physical sources to the end
    // of the archived WAL.
    let pitr_at = match a.at.as_deref() {
        None => None,
        Some("latest") => Some(RecoveryTarget::Latest),
        Some(t) => Some(RecoveryTarget::Time(parse_time(t)?)),
    };
    let at = match pitr_at {
        Some(RecoveryTarget::Time(t)) => Some(t),
        Some(_) => Some(jiff::Timestamp::MAX),
        None => None,
    };
    let access = super::restore_access(g).with_plan(&plan)?;
    let repo = access.open()?;
    let mut points: Vec<(SnapshotId, Snapshot)> = repo.snapshots()?;
    points.retain(|(_, s)| plan.made(s));
    if !a.force {
        for skipped in crate::ops::restore_point::drop_corrupted(&repo, &mut points)? {
            eprintln!("{skipped}");
        }
    }
    let (id, snap) = match (&a.snapshot, at) {
        (None, None) => {
            print_points(g, &plan, &points)?;
            return Err(
                Error::usage("which restore point? none was given").with_hint(format!(
                    "pass a snapshot id (or `latest`) or --at TIME: `cairn restore --plan {} ID`",
                    file.display()
                )),
            );
        }
        (Some(s), _) if s == "latest" => points.last().cloned().ok_or_else(|| no_points(&plan))?,
        (Some(s), _) => repo.find_snapshot(s)?,
        (None, Some(_)) if points.is_empty() => return Err(no_points(&plan)),
        (None, Some(t)) => crate::ops::restore_point::newest_at(
            &points,
            t,
            &format!(" of plan {}", plan.file.display()),
            "",
        )?,
    };
    let target_root = match &a.target_root {
        Some(d) => std::path::absolute(d)
            .map_err(|e| Error::io(format!("resolving {}", d.display()), e))?,
        None => PathBuf::from("/"),
    };
    let opts = Options {
        dry_run: a.dry_run,
        force: a.force,
        recreate_topics: a.recreate_topics,
        all_configs: a.all_configs,
        target_root,
        overwrite: a.overwrite,
        quiet: g.quiet || g.json,
        at: pitr_at,
        bases: points.iter().map(|(id, _)| *id).collect(),
        wal_fetch: access.wal_fetch_command().ok(),
    };
    let orch = orchestrate::prepare(&plan, id, &snap, &opts)?;
    let show = !g.json && !g.quiet;
    if show {
        println!(
            "restore of snapshot {} ({}) with plan {}{}:",
            id.short(),
            local_time(snap.time),
            plan.file.display(),
            if a.dry_run {
                " — dry run, nothing is done"
            } else {
                ""
            }
        );
    }
    let report = if a.dry_run {
        orch.run(&repo, &mut |_| {})
    } else {
        crate::lock::with_lock(&repo, false, "restore --plan", || {
            Ok(orch.run(&repo, &mut |s| {
                if show {
                    print_step(s)
                }
            }))
        })?
    };
    if g.json {
        print_json(&report)?;
    } else if a.dry_run {
        for s in &report.steps {
            println!("{:>3}. {}", s.number, s.description);
        }
        print_skipped(&report, false);
    } else if report.ok {
        print_skipped(&report, false);
        if !g.quiet {
            println!(
                "restored snapshot {} with plan {} in {:.1}s: {} source(s) restored, {} service(s) started",
                id.short(),
                plan.file.display(),
                report.duration_ms as f64 / 1000.0,
                report
                    .sources
                    .iter()
                    .filter(|s| s.state == orchestrate::SourceState::Restored)
                    .count(),
                report.services.len()
            );
        }
    } else {
        print_failure(&report);
    }
    match report.error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn no_points(plan: &Plan) -> Error {
    Error::failure(format!(
        "the repository has no snapshot made with plan {}",
        plan.file.display()
    ))
    .with_hint(format!(
        "make one with `cairn snapshot --plan {}`, or give the id of another snapshot",
        plan.file.display()
    ))
}

/// The snapshots made with this plan: time, id, sources, complete or not.
fn print_points(g: &GlobalArgs, plan: &Plan, points: &[(SnapshotId, Snapshot)]) -> Result<()> {
    if g.json {
        let v: Vec<_> = points
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id, "short_id": id.short(), "time": s.time, "tags": s.tags,
                    "sources": s.sources.iter().map(|x| serde_json::json!({
                        "name": x.name, "kind": x.kind, "status": x.status,
                    })).collect::<Vec<_>>(),
                    "complete": s.is_complete(),
                })
            })
            .collect();
        return print_json(&v);
    }
    if points.is_empty() {
        println!("no snapshot was made with plan {} yet", plan.file.display());
        return Ok(());
    }
    println!("restore points of plan {}:", plan.file.display());
    println!("{:<19} {:<10} {:<10} sources", "TIME", "ID", "STATUS");
    for (id, s) in points {
        let sources: Vec<String> = s
            .sources
            .iter()
            .map(|x| match x.status {
                crate::repo::SourceStatus::Complete => x.name.clone(),
                crate::repo::SourceStatus::Incomplete => format!("{} (incomplete)", x.name),
                crate::repo::SourceStatus::Failed => format!("{} (failed)", x.name),
            })
            .collect();
        println!(
            "{:<19} {:<10} {:<10} {}",
            local_time(s.time),
            id.short(),
            if s.is_complete() {
                "complete"
            } else {
                "incomplete"
            },
            sources.join(", ")
        );
    }
    Ok(())
}

fn print_step(s: &StepReport) {
    let secs = s.duration_ms.unwrap_or(0) as f64 / 1000.0;
    match s.status {
        StepStatus::Done => println!(
            "{:>3}. {} — done in {secs:.1}s{}",
            s.number,
            s.description,
            s.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        StepStatus::Failed => println!(
            "{:>3}. {} — FAILED after {secs:.1}s",
            s.number, s.description
        ),
        StepStatus::Planned | StepStatus::NotRun => {}
    }
}

fn print_skipped(r: &Report, to_stderr: bool) {
    for s in r
        .sources
        .iter()
        .filter(|s| s.state == orchestrate::SourceState::NotRestored && s.detail.is_some())
    {
        let line = format!(
            "not restored: source {} ({}): {}",
            s.name,
            s.kind,
            s.detail.as_deref().unwrap_or_default()
        );
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// The state everything was left in, on stderr (the error follows it).
fn print_failure(r: &Report) {
    if let Some(f) = &r.failure {
        if let Some(out) = f.output.as_deref().filter(|o| !o.trim().is_empty()) {
            eprintln!("output of the failing command (its end):");
            for l in out.lines() {
                eprintln!("  | {l}");
            }
        }
        let not_run: Vec<String> = r
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::NotRun)
            .map(|s| s.number.to_string())
            .collect();
        if !not_run.is_empty() {
            eprintln!("steps not run: {}", not_run.join(", "));
        }
    }
    let services: Vec<String> = r
        .services
        .iter()
        .map(|s| format!("{} {}", s.name, state_word(&s.state)))
        .collect();
    if !services.is_empty() {
        eprintln!("services: {}", services.join(", "));
    }
    let sources: Vec<String> = r
        .sources
        .iter()
        .map(|s| format!("{} {}", s.name, state_word(&s.state)))
        .collect();
    eprintln!("sources: {}", sources.join(", "));
    print_skipped(r, true);
}

fn state_word(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('-', " ")))
        .unwrap_or_default()
}
