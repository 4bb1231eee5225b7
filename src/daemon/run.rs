//! One backup run of the daemon: the run itself, its log lines (one per
//! source, one for the run), the alerts for what failed and the slow-run
//! check. The events and their fields are listed in `spec/logging.md`.

use super::alerts::AlertKind;
use super::notice::when;
use super::{Daemon, Trigger};
use crate::error::{Error, Result};
use crate::job::{JobReport, SourceReport};
use crate::plan::Plan;
use crate::repo::{Snapshot, SnapshotId, SourceStatus};
use crate::repository::Repository;
use std::sync::Arc;
use std::time::Instant;

/// Whether snapshot `s` was made by `plan` ([`Plan::made`]: its name or
/// its file, from any directory): the one test of which plan a snapshot
/// belongs to for the daemon's status and metrics.
pub fn of_plan(plan: &Plan, s: &Snapshot) -> bool {
    plan.made(s)
}

/// The plan's snapshots, oldest first (those [`of_plan`] accepts).
pub fn plan_snapshots(repo: &Repository, plan: &Plan) -> Vec<(SnapshotId, Snapshot)> {
    let mut all = repo.snapshots().unwrap_or_default();
    all.retain(|(_, s)| of_plan(plan, s));
    all
}

/// The newest snapshot in which source `name` is complete, and the oldest
/// later one in which it failed (when it has been failing since).
pub fn source_history(
    snaps: &[(SnapshotId, Snapshot)],
    name: &str,
) -> (Option<jiff::Timestamp>, Option<jiff::Timestamp>) {
    let status = |s: &Snapshot| {
        s.sources
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.status == SourceStatus::Complete)
    };
    let last_ok = snaps
        .iter()
        .filter(|(_, s)| status(s) == Some(true))
        .map(|(_, s)| s.time)
        .max();
    let failing_since = snaps
        .iter()
        .filter(|(_, s)| status(s) == Some(false) && last_ok.is_none_or(|t| s.time > t))
        .map(|(_, s)| s.time)
        .min();
    (last_ok, failing_since)
}

/// Median duration (seconds, as the snapshots record it) of the plan's
/// complete snapshots before `this` run's, up to ten; `None` below three.
pub fn recent_median(snaps: &[(SnapshotId, Snapshot)], this: &SnapshotId) -> Option<f64> {
    let mut d: Vec<f64> = snaps
        .iter()
        .rev()
        .filter(|(id, s)| id != this && s.is_complete())
        .take(10)
        .map(|(_, s)| s.summary.duration_ms as f64 / 1000.0)
        .collect();
    if d.len() < 3 {
        return None;
    }
    d.sort_by(|a, b| a.total_cmp(b));
    Some(d[d.len() / 2])
}

/// `db (postgres)`
fn source_label(r: &SourceReport) -> String {
    format!("{} ({})", r.name, r.kind)
}

/// The `source backed up` line of one source of a saved snapshot.
fn log_source(trigger: &str, snapshot: &str, r: &SourceReport) {
    let (source, kind) = (r.name.as_str(), r.kind.as_str());
    if r.ok {
        tracing::info!(
            trigger,
            snapshot,
            source,
            kind,
            outcome = "ok",
            bytes_read = r.bytes_read,
            bytes_added = r.bytes_new,
            duration_ms = r.duration_ms,
            "source backed up"
        );
    } else {
        tracing::warn!(
            trigger,
            snapshot,
            source,
            kind,
            outcome = "failed",
            bytes_read = r.bytes_read,
            bytes_added = r.bytes_new,
            duration_ms = r.duration_ms,
            error = r.error.as_deref().unwrap_or("unknown error"),
            "source backed up"
        );
    }
}

impl Daemon {
    /// An error when a name in `names` is not a source of the plan: the
    /// caller's mistake (a usage error naming the plan's sources).
    pub fn check_source_names(&self, names: &[String]) -> Result<()> {
        let plan = self.plan();
        let known = self.source_names();
        match names.iter().find(|n| plan.source(n).is_none()) {
            None => Ok(()),
            Some(n) => Err(Error::usage(format!("the plan has no source {n:?}"))
                .with_hint(format!("its sources are: {}", known.join(", ")))),
        }
    }

    /// The plan's source names, in plan order.
    pub fn source_names(&self) -> Vec<String> {
        self.plan().sources.iter().map(|s| s.name.clone()).collect()
    }

    /// Run the backup of `sources` (all when empty) now, unless a run is
    /// going on (then `Ok(None)`). Unknown source names are refused first:
    /// not a run, not counted, no alert.
    pub fn run_backup(
        &self,
        trigger: Trigger,
        sources: &[String],
        tags: &[String],
    ) -> Result<Option<String>> {
        self.check_source_names(sources)?;
        let Ok(_guard) = self.running.try_lock() else {
            tracing::warn!(
                trigger = trigger.to_string().as_str(),
                "backup run skipped: another run is going on"
            );
            return Ok(None);
        };
        self.with_status(|s| s.running = Some(trigger.to_string()));
        let result = self.backup_locked(&trigger, sources, tags);
        self.with_status(|s| {
            s.running = None;
            s.runs += 1;
            if result.is_err() {
                s.failed_runs += 1;
            }
        });
        self.save_status();
        result.map(Some)
    }

    fn backup_locked(
        &self,
        trigger: &Trigger,
        names: &[String],
        tags: &[String],
    ) -> Result<String> {
        let plan = self.plan();
        let trig = trigger.to_string();
        let started = Instant::now();
        let chosen: Vec<&str> = plan
            .sources
            .iter()
            .filter(|x| names.is_empty() || names.contains(&x.name))
            .map(|x| x.name.as_str())
            .collect();
        tracing::info!(
            trigger = trig.as_str(),
            sources = chosen.join(",").as_str(),
            "backup run started"
        );
        let run = || -> Result<(Arc<Repository>, JobReport)> {
            let repo = self.open_repo()?;
            let sources = crate::plan::job_sources(&plan, names)?;
            let opts = crate::job::JobOptions {
                tags: tags.to_vec(),
                host: None,
                plan: Some(plan.identity()),
                quiet: true,
                parent: Default::default(),
            };
            let report = crate::job::run(&repo, &sources, &opts)?;
            Ok((repo, report))
        };
        let (repo, report) = match run() {
            Ok(r) => r,
            Err(e) => {
                self.run_failed(&plan, trigger, &chosen, &e, started);
                return Err(e);
            }
        };
        let id = report.id.short();
        for r in &report.sources {
            log_source(&trig, &id, r);
        }
        let s = &report.snapshot.summary;
        let complete = report.snapshot.is_complete();
        tracing::info!(
            trigger = trig.as_str(),
            snapshot = id.as_str(),
            outcome = if complete { "complete" } else { "incomplete" },
            sources = report.sources.len(),
            failed = report.sources.iter().filter(|r| !r.ok).count(),
            bytes_read = s.bytes_read,
            bytes_stored = s.bytes_added,
            duration_ms = s.duration_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "backup run finished"
        );
        let time = report.snapshot.time;
        self.with_status(|st| {
            st.last_snapshot = Some(id.clone());
            st.last_snapshot_time = Some(time);
            for r in &report.sources {
                let e = st.sources.entry(r.name.clone()).or_default();
                e.last_result = if r.ok { "ok" } else { "failed" }.into();
                e.last_run = Some(time);
                e.last_error = r.error.clone();
                e.bytes_read = Some(r.bytes_read);
                e.bytes_new = Some(r.bytes_new);
                e.duration_ms = Some(r.duration_ms);
                if r.ok {
                    // The snapshot's time, as the repository will tell it after a restart.
                    e.last_success = Some(time);
                    e.last_success_snapshot = Some(id.clone());
                }
            }
        });
        *self.failing_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let snaps = plan_snapshots(&repo, &plan);
        for r in report.sources.iter().filter(|r| !r.ok) {
            self.alert_source_failed(&plan, &report, r, &snaps);
        }
        self.check_slow(&plan, trigger, names, &report, &snaps);
        if let Err(e) = self.apply_retention(&repo, &plan, "after a backup run") {
            tracing::error!(error = e.to_string().as_str(), "retention failed");
            let mut d = self.details(
                &plan,
                "Applying the retention rules after a backup run failed; nothing more is \
                 removed until it works again.",
            );
            d.error = Some(e.to_string());
            d.hints.extend(e.hint().map(str::to_string));
            d.hints.push(
                "a lock left by a crashed process is listed by `cairn unlock --help`; \
                 `cairn check` finds damage"
                    .into(),
            );
            self.alert(AlertKind::BackupFailed, "retention", "retention", d);
        }
        self.after_run(&plan, &repo);
        if !complete {
            return Err(Error::new(
                crate::error::Kind::SourceUnreadable,
                format!("snapshot {id} is incomplete"),
            ));
        }
        Ok(id)
    }

    /// A run that saved no snapshot: logged, recorded per source, alerted.
    fn run_failed(
        &self,
        plan: &Plan,
        trigger: &Trigger,
        chosen: &[&str],
        e: &Error,
        started: Instant,
    ) {
        let msg = e.to_string();
        let now = crate::clock::now();
        tracing::error!(
            trigger = trigger.to_string().as_str(),
            error = msg.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "backup run failed"
        );
        self.with_status(|s| {
            for n in chosen {
                let st = s.sources.entry(n.to_string()).or_default();
                st.last_result = "failed".into();
                st.last_run = Some(now);
                st.last_error = Some(msg.clone());
                (st.bytes_read, st.bytes_new, st.duration_ms) = (None, None, None);
            }
            s.record(super::status::Event {
                time: now,
                kind: "run-failed".into(),
                what: trigger.to_string(),
                sources: chosen.iter().map(|n| n.to_string()).collect(),
                detail: msg.clone(),
                outcome: String::new(),
            });
        });
        let since = *self
            .failing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(now);
        // The repository as opened before (opening it may be what failed).
        let last_ok = self
            .opened_repo()
            .map(|r| plan_snapshots(&r, plan))
            .and_then(|s| {
                s.iter()
                    .rev()
                    .find(|(_, s)| s.is_complete())
                    .map(|x| x.1.time)
            });
        let mut d = self.details(
            plan,
            format!("The backup run ({trigger}) failed; no snapshot was saved."),
        );
        d.error = Some(msg);
        d.source = Some(chosen.join(", "));
        d.since = vec![
            ("Last complete backup".into(), when(last_ok, now)),
            ("Failing since".into(), when(Some(since), now)),
        ];
        d.hints.extend(e.hint().map(str::to_string));
        d.hints.push(format!(
            "run it by hand to see every message: `cairn snapshot --plan {} -v`",
            d.plan.as_deref().unwrap_or_default()
        ));
        d.hints.push(AlertKind::BackupFailed.hint().into());
        self.alert(AlertKind::BackupFailed, "run", &trigger.to_string(), d);
    }

    /// A source that failed in a snapshot that was saved.
    fn alert_source_failed(
        &self,
        plan: &Plan,
        report: &JobReport,
        r: &SourceReport,
        snaps: &[(SnapshotId, Snapshot)],
    ) {
        let now = crate::clock::now();
        let (last_ok, failing_since) = source_history(snaps, &r.name);
        let id = report.id.short();
        let mut d = self.details(
            plan,
            format!(
                "The backup of source {} ({}) failed; snapshot {id} was saved without it.",
                r.name, r.kind
            ),
        );
        d.error = Some(r.error.clone().unwrap_or_else(|| "unknown error".into()));
        d.source = Some(source_label(r));
        d.snapshot = Some(format!("{id} (saved without this source)"));
        d.since = vec![
            ("Last success".into(), when(last_ok, now)),
            (
                "Failing since".into(),
                when(failing_since.or(Some(report.snapshot.time)), now),
            ),
        ];
        d.hints.push(format!(
            "run it by hand to see every message: `cairn snapshot --plan {} --source {} -v`",
            d.plan.as_deref().unwrap_or_default(),
            r.name
        ));
        d.hints.push(AlertKind::BackupFailed.hint().into());
        self.alert(AlertKind::BackupFailed, &r.name, &r.name, d);
    }

    /// A run slower than the schedule's expected duration, or than
    /// `slow-factor` × the median of the plan's recent runs, is reported.
    /// Both sides are the snapshots' recorded duration (`summary.duration_ms`:
    /// reading the sources and storing their data), so opening the
    /// repository, waiting for it, and the final commit count on neither.
    fn check_slow(
        &self,
        plan: &Plan,
        trigger: &Trigger,
        names: &[String],
        report: &JobReport,
        snaps: &[(SnapshotId, Snapshot)],
    ) {
        // A triggered run is held to the schedules that cover the same sources.
        let expected = match trigger {
            Trigger::Schedule(n) => plan
                .schedules
                .iter()
                .find(|s| &s.name == n)
                .and_then(|s| s.expected_duration),
            Trigger::Api => plan
                .schedules
                .iter()
                .filter(|s| {
                    let covers = |n: &String| s.sources.is_empty() || s.sources.contains(n);
                    if names.is_empty() {
                        plan.sources.iter().all(|x| covers(&x.name))
                    } else {
                        names.iter().all(covers)
                    }
                })
                .filter_map(|s| s.expected_duration)
                .min(),
        };
        let (limit, how) = match expected {
            Some(d) => (
                d.as_secs_f64(),
                "the schedule's expected-duration".to_string(),
            ),
            None => match recent_median(snaps, &report.id) {
                Some(m) => (
                    m * plan.alerts.slow_factor,
                    format!(
                        "slow-factor {} times the median {m:.1} s of recent complete runs",
                        plan.alerts.slow_factor
                    ),
                ),
                None => return,
            },
        };
        let secs = report.snapshot.summary.duration_ms as f64 / 1000.0;
        if secs <= limit || limit <= 0.0 {
            return;
        }
        let id = report.id.short();
        let mut d = self.details(
            plan,
            format!(
                "The backup run ({trigger}) took {secs:.1} s, more than the expected \
                 {limit:.1} s ({how})."
            ),
        );
        d.snapshot = Some(id);
        d.source = Some(
            report
                .sources
                .iter()
                .map(|r| format!("{} {:.1} s", source_label(r), r.duration_ms as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(", "),
        );
        d.hints.push(AlertKind::SlowBackup.hint().into());
        self.alert(
            AlertKind::SlowBackup,
            &trigger.to_string(),
            &trigger.to_string(),
            d,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built from JSON, as stored: fields added later take their defaults.
    fn snap(t: &str, ok: bool, ms: u64) -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "version": 1, "time": t, "host": "h", "username": "u", "paths": [],
            "program": "", "summary": {"files": 0, "dirs": 0, "symlinks": 0,
                "bytes_read": 0, "bytes_added": 0, "chunks_total": 0, "chunks_new": 0,
                "duration_ms": ms},
            "sources": [{"name": "db", "kind": "postgres",
                "status": if ok { "complete" } else { "failed" }, "tree": [], "size": 0}],
        }))
        .unwrap()
    }

    fn id(n: u8) -> SnapshotId {
        SnapshotId([n; 32])
    }

    #[test]
    fn history_finds_the_last_success_and_the_first_failure_after_it() {
        let snaps = vec![
            (id(1), snap("2026-01-01T00:00:00Z", false, 1)),
            (id(2), snap("2026-01-02T00:00:00Z", true, 1)),
            (id(3), snap("2026-01-03T00:00:00Z", false, 1)),
            (id(4), snap("2026-01-04T00:00:00Z", false, 1)),
        ];
        let (ok, since) = source_history(&snaps, "db");
        assert_eq!(ok, Some("2026-01-02T00:00:00Z".parse().unwrap()));
        assert_eq!(since, Some("2026-01-03T00:00:00Z".parse().unwrap()));
        assert_eq!(source_history(&snaps[..1], "db").0, None);
        assert_eq!(source_history(&snaps, "other"), (None, None));
    }

    #[test]
    fn the_median_leaves_out_the_run_it_judges() {
        let snaps: Vec<_> = [1000, 2000, 3000, 60000]
            .iter()
            .enumerate()
            .map(|(i, ms)| (id(i as u8), snap("2026-01-01T00:00:00Z", true, *ms)))
            .collect();
        assert_eq!(recent_median(&snaps, &id(3)), Some(2.0));
        assert_eq!(recent_median(&snaps[..3], &id(2)), None);
    }
}
