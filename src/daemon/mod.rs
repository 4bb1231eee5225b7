//! `cairn serve`: runs a plan unattended — schedules, retention after every
//! run, checks (missed backups, storage), alerts, and the HTTP API.
//!
//! One scheduler thread owns time: it sleeps until the next schedule or
//! check is due. Backup runs take the `running` lock, so a plan never runs
//! twice at once: a schedule that comes due while a run is going on is
//! skipped (and logged), an API trigger gets 409. Everything the daemon
//! knows about the repository it reads from the repository itself, so a
//! daemon that was down notices a missed backup right after it starts.
//!
//! The repository is opened once — its key unlocked once (scrypt takes a
//! second and much memory) — and shared by runs, checks and API requests;
//! each use re-syncs the index cache, which costs a listing when nothing
//! changed. A plan reload (SIGHUP) opens it again, so a changed repository,
//! password or identity file takes effect.

pub mod alerts;
pub mod api;
pub mod schedule;
pub mod status;

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::repository::Repository;
use alerts::{Alert, AlertKind, Alerter};
use status::{Persisted, ScheduleState, SourceState, Status, StorageUse};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How the daemon was started.
#[derive(Clone, Debug)]
pub struct Options {
    pub plan_file: PathBuf,
    /// Key and cache given on the command line (they win over the plan's).
    pub access: crate::ops::access::Access,
    /// Where the daemon keeps its small state (retention fingerprint, alert times).
    pub state_dir: PathBuf,
    /// How often missed-backup and storage checks run.
    pub check_every: Duration,
}

pub struct Daemon {
    pub opts: Options,
    pub plan: RwLock<Plan>,
    pub status: Mutex<Status>,
    running: Mutex<()>,
    alerter: RwLock<Alerter>,
    reload: Arc<AtomicBool>,
    /// The open repository, shared; `None` until first used and after a reload.
    repo: Mutex<Option<Arc<Repository>>>,
}

/// Why a run was started.
#[derive(Clone, Debug)]
pub enum Trigger {
    Schedule(String),
    Api,
}

/// The last scheduled or triggered restore test.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LastProof {
    pub time: Option<jiff::Timestamp>,
    pub snapshot: Option<String>,
    /// passed | failed | skipped
    pub outcome: String,
    pub detail: String,
    pub skipped_in_a_row: u32,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Schedule(n) => write!(f, "schedule {n}"),
            Trigger::Api => f.write_str("api"),
        }
    }
}

fn new_alerter(plan: &Plan, opts: &Options) -> Alerter {
    Alerter::new(
        &plan.alerts,
        crate::repository::host_name(),
        Some(opts.state_dir.join("alerts.json")),
    )
}

fn retention_fingerprint(plan: &Plan) -> String {
    serde_json::to_string(&plan.retention).unwrap_or_default()
}

impl Daemon {
    /// The daemon of `plan` (loaded from `opts.plan_file`).
    pub fn new(opts: Options, plan: Plan) -> Result<Arc<Daemon>> {
        let alerter = new_alerter(&plan, &opts);
        let status = Status {
            plan: plan.file.display().to_string(),
            started: Some(jiff::Timestamp::now()),
            ..Default::default()
        };
        let reload = Arc::new(AtomicBool::new(false));
        let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone());
        Ok(Arc::new(Daemon {
            opts,
            plan: RwLock::new(plan),
            status: Mutex::new(status),
            running: Mutex::new(()),
            alerter: RwLock::new(alerter),
            reload,
            repo: Mutex::new(None),
        }))
    }

    fn plan(&self) -> Plan {
        self.plan.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self) -> Status {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = jiff::Timestamp::now();
        for st in s.sources.values_mut() {
            st.age_seconds = st.last_success.map(|t| (now - t).as_secs());
        }
        s
    }

    fn with_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The plan's repository, opened (key unlocked) on first use and then
    /// shared; its index cache is brought up to date on every call. Opened
    /// again when the config at its location is another repository's.
    pub fn open_repo(&self) -> Result<Arc<Repository>> {
        // Held while opening: concurrent callers wait for one unlock
        // instead of each running scrypt.
        let mut slot = self.repo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(repo) = slot.as_ref() {
            let config = Repository::read_config(repo.backend.as_ref())?;
            if config.id == repo.config.id {
                repo.cache.sync(repo.backend.as_ref(), &repo.key)?;
                return Ok(repo.clone());
            }
            tracing::warn!(
                "the repository at {} is another one now; opening it again",
                repo.backend.location()
            );
        }
        *slot = None;
        let repo = Arc::new(self.opts.access.with_plan(&self.plan())?.open()?);
        self.with_status(|s| s.key_unlocks += 1);
        tracing::debug!(key = %repo.key_id.short(), "repository opened, key unlocked");
        *slot = Some(repo.clone());
        Ok(repo)
    }

    /// Send an alert through the plan's channels (rate-limited); failures to
    /// deliver are logged, never fatal.
    pub fn alert(&self, kind: AlertKind, key: &str, subject: String, body: String) {
        tracing::warn!(kind = ?kind, key, "{subject}");
        let a = self.alerter.read().unwrap_or_else(|e| e.into_inner());
        let alert = Alert {
            kind,
            subject,
            body,
            key: key.to_string(),
        };
        match a.send(&alert) {
            Ok(d) => tracing::info!(kind = ?kind, key, delivery = ?d, "alert handled"),
            Err(e) => tracing::error!("alert not delivered: {e}"),
        }
    }

    /// Run the backup of `sources` (all when empty) now, unless a run is
    /// going on (then `Ok(None)`).
    pub fn run_backup(
        &self,
        trigger: Trigger,
        sources: &[String],
        tags: &[String],
    ) -> Result<Option<String>> {
        let Ok(_guard) = self.running.try_lock() else {
            tracing::warn!(%trigger, "a backup run is already going on; this one is skipped");
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
        result.map(Some)
    }

    fn backup_locked(
        &self,
        trigger: &Trigger,
        names: &[String],
        tags: &[String],
    ) -> Result<String> {
        let plan = self.plan();
        let started = std::time::Instant::now();
        tracing::info!(%trigger, "backup run started");
        let run = || -> Result<(Arc<Repository>, crate::job::JobReport)> {
            let repo = self.open_repo()?;
            let sources = crate::plan::job_sources(&plan, names)?;
            let opts = crate::job::JobOptions {
                tags: tags.to_vec(),
                host: None,
                plan: Some(plan.file.display().to_string()),
                quiet: true,
            };
            let report = crate::job::run(&repo, &sources, &opts)?;
            Ok((repo, report))
        };
        let (repo, report) = match run() {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                let now = jiff::Timestamp::now();
                self.with_status(|s| {
                    for n in plan
                        .sources
                        .iter()
                        .filter(|x| names.is_empty() || names.contains(&x.name))
                    {
                        let st = s.sources.entry(n.name.clone()).or_default();
                        st.last_result = "failed".into();
                        st.last_run = Some(now);
                        st.last_error = Some(msg.clone());
                    }
                });
                self.alert(
                    AlertKind::BackupFailed,
                    "run",
                    format!("backup failed ({trigger})"),
                    format!(
                        "The backup run ({trigger}) of plan {} failed:\n\n{msg}\n",
                        plan.file.display()
                    ),
                );
                return Err(e);
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let s = &report.snapshot.summary;
        tracing::info!(
            %trigger,
            snapshot = %report.id.short(),
            bytes_read = s.bytes_read,
            bytes_added = s.bytes_added,
            duration_ms = s.duration_ms,
            complete = report.snapshot.is_complete(),
            "backup run finished"
        );
        let now = jiff::Timestamp::now();
        self.with_status(|st| {
            st.last_snapshot = Some(report.id.short());
            st.last_snapshot_time = Some(report.snapshot.time);
            for r in &report.sources {
                let e = st.sources.entry(r.name.clone()).or_default();
                e.last_result = if r.ok { "ok" } else { "failed" }.into();
                e.last_run = Some(now);
                e.last_error = r.error.clone();
                e.bytes_read = r.bytes_read;
                e.bytes_new = r.bytes_new;
                e.duration_ms = r.duration_ms;
                if r.ok {
                    e.last_success = Some(now);
                }
            }
        });
        for r in report.sources.iter().filter(|r| !r.ok) {
            self.alert(
                AlertKind::BackupFailed,
                &r.name,
                format!("backup of source {} failed", r.name),
                format!(
                    "Snapshot {} was saved without source {} ({}):\n\n{}\n",
                    report.id.short(),
                    r.name,
                    r.kind,
                    r.error.as_deref().unwrap_or("unknown error")
                ),
            );
        }
        self.check_slow(&repo, &plan, trigger, names, secs);
        if let Err(e) = self.apply_retention(&repo, &plan, "after a backup run") {
            tracing::error!("retention failed: {e}");
            self.alert(
                AlertKind::BackupFailed,
                "retention",
                "retention could not be applied".into(),
                format!("Applying the retention rules failed:\n\n{e}\n"),
            );
        }
        if !report.snapshot.is_complete() {
            return Err(Error::new(
                crate::error::Kind::SourceUnreadable,
                format!("snapshot {} is incomplete", report.id.short()),
            ));
        }
        Ok(report.id.short())
    }

    /// A run slower than the schedule's expected duration, or than
    /// `slow-factor` × the median of the plan's recent runs, is reported.
    fn check_slow(
        &self,
        repo: &Repository,
        plan: &Plan,
        trigger: &Trigger,
        names: &[String],
        secs: f64,
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
        let limit = match expected {
            Some(d) => Some(d.as_secs_f64()),
            None => recent_median(repo, plan).map(|m| m * plan.alerts.slow_factor),
        };
        if let Some(limit) = limit {
            if secs > limit && limit > 0.0 {
                self.alert(
                    AlertKind::SlowBackup,
                    &trigger.to_string(),
                    format!("backup run took {secs:.1}s, more than the expected {limit:.1}s"),
                    format!(
                        "The backup run ({trigger}) of plan {} took {secs:.1} s; expected at most {limit:.1} s.\n",
                        plan.file.display()
                    ),
                );
            }
        }
    }

    /// Prove a random complete snapshot of the plan in the verification
    /// environment (`verify` node). `Ok(None)` when a run is going on.
    pub fn run_restore_test(&self, trigger: Trigger) -> Result<Option<LastProof>> {
        let Ok(_guard) = self.running.try_lock() else {
            tracing::warn!(%trigger, "a run is going on; the restore test is skipped this time");
            return Ok(None);
        };
        self.with_status(|s| s.running = Some(format!("restore test ({trigger})")));
        let r = self.restore_test_locked(&trigger);
        self.with_status(|s| s.running = None);
        r.map(Some)
    }

    fn restore_test_locked(&self, trigger: &Trigger) -> Result<LastProof> {
        use rand::seq::IndexedRandom;
        let plan = self.plan();
        let repo = self.open_repo()?;
        let file = plan.file.display().to_string();
        let snaps: Vec<_> = repo
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.plan.as_deref() == Some(&file) && s.is_complete())
            .collect();
        let env = crate::prove::ScratchEnv {
            postgres: plan.verify.postgres_scratch.clone(),
            kafka: plan
                .verify
                .kafka_scratch
                .as_deref()
                .map(crate::source::kafka::KafkaOptions::new)
                .transpose()?,
            ..Default::default()
        };
        let mut last = self.status().last_restore_test.unwrap_or_default();
        last.time = Some(jiff::Timestamp::now());
        let outcome = match snaps.choose(&mut rand::rng()) {
            None => crate::prove::Outcome::Skipped {
                reason: "the plan has no complete snapshot yet".into(),
            },
            Some((id, snap)) => {
                last.snapshot = Some(id.short());
                tracing::info!(%trigger, snapshot = %id.short(), "restore test started");
                let proved = crate::prove::prove(&repo, *id, snap, None, &env);
                // The repository outlives this test: no downloaded packs kept.
                repo.drop_spool();
                match proved {
                    Ok(r) => r.outcome,
                    Err(e) => crate::prove::Outcome::Failed {
                        detail: e.to_string(),
                    },
                }
            }
        };
        let snap = last.snapshot.clone().unwrap_or_default();
        match &outcome {
            crate::prove::Outcome::Passed => {
                tracing::info!(snapshot = %snap, "restore test passed");
                last.outcome = "passed".into();
                last.detail.clear();
                last.skipped_in_a_row = 0;
            }
            crate::prove::Outcome::Failed { detail } => {
                last.outcome = "failed".into();
                last.detail = detail.clone();
                last.skipped_in_a_row = 0;
                self.alert(
                    AlertKind::RestoreTestFailed,
                    &snap,
                    format!("restore test of snapshot {snap} failed"),
                    format!(
                        "The restore test of snapshot {snap} (plan {}) failed:\n\n{detail}\n\nThe snapshot is marked corrupted: `cairn snapshots` shows it and `restore --at` skips it.\n",
                        plan.file.display()
                    ),
                );
            }
            crate::prove::Outcome::Skipped { reason } => {
                last.outcome = "skipped".into();
                last.detail = reason.clone();
                last.skipped_in_a_row += 1;
                tracing::warn!(
                    in_a_row = last.skipped_in_a_row,
                    "restore test skipped: {reason}"
                );
                if last.skipped_in_a_row >= plan.verify.skip_alert_after {
                    self.alert(
                        AlertKind::RestoreTestSkipped,
                        "skipped",
                        format!("restore test skipped {} time(s) in a row", last.skipped_in_a_row),
                        format!(
                            "The restore test of plan {} was skipped {} time(s) in a row; the last reason:\n\n{reason}\n",
                            plan.file.display(),
                            last.skipped_in_a_row
                        ),
                    );
                }
            }
        }
        self.with_status(|s| s.last_restore_test = Some(last.clone()));
        Ok(last)
    }

    /// Forget what the plan's rules do not keep (its own snapshots only), then prune.
    pub fn apply_retention(&self, repo: &Repository, plan: &Plan, why: &str) -> Result<()> {
        let applied = crate::ops::retention::apply(repo, plan)?;
        tracing::info!(removed = applied.removed, why, "retention applied");
        if let Some(r) = &applied.pruned {
            tracing::info!(?r, "pruned");
        }
        let mut p = status::load(&self.opts.state_dir);
        p.retention = Some(retention_fingerprint(plan));
        if let Err(e) = status::save(&self.opts.state_dir, &p) {
            tracing::warn!(
                "cannot save the daemon state in {}: {e}",
                self.opts.state_dir.display()
            );
        }
        Ok(())
    }

    /// Missed backups and storage, from the repository's state.
    pub fn run_checks(&self) {
        let plan = self.plan();
        let repo = match self.open_repo() {
            Ok(r) => r,
            Err(e) => {
                self.alert(
                    AlertKind::BackupFailed,
                    "repository",
                    "the repository cannot be opened".into(),
                    format!(
                        "cairn cannot open the repository {}:\n\n{e}\n",
                        plan.repository.location
                    ),
                );
                return;
            }
        };
        let file = plan.file.display().to_string();
        let snaps = repo.snapshots().unwrap_or_default();
        let mine: Vec<_> = snaps
            .iter()
            .filter(|(_, s)| s.plan.as_deref() == Some(&file))
            .collect();
        let last_ok = mine
            .iter()
            .rev()
            .find(|(_, s)| s.is_complete())
            .map(|(_, s)| s.time);
        let started = self.status.lock().map(|s| s.started).ok().flatten();
        let now = jiff::Timestamp::now();
        let limit = plan.alerts.missed_backup;
        let since = last_ok.or(started).unwrap_or(now);
        let age = (now - since).as_secs().max(0) as u64;
        if age > limit.as_secs() {
            let what = match last_ok {
                Some(t) => format!("the last complete backup is from {t}"),
                None => "there is no complete backup of this plan".into(),
            };
            self.alert(
                AlertKind::MissedBackup,
                "missed",
                format!(
                    "no successful backup for {}",
                    humantime::format_duration(Duration::from_secs(age))
                ),
                format!(
                    "Plan {}: {what}, more than {} ago.\n",
                    plan.file.display(),
                    humantime::format_duration(limit)
                ),
            );
        }
        let storage = storage_use(&plan, &repo);
        if let Some(st) = &storage {
            if st.percent >= plan.alerts.storage_warning.0 {
                self.alert(
                    AlertKind::StorageHigh,
                    "storage",
                    format!("repository storage {:.0}% full", st.percent),
                    format!(
                        "The repository {} uses {} of {} bytes ({:.1}%, measured by {}); the warning threshold is {}%.\n",
                        plan.repository.location,
                        st.used_bytes,
                        st.total_bytes,
                        st.percent,
                        st.measured_by,
                        plan.alerts.storage_warning.0
                    ),
                );
            }
        }
        let critical = 100.0 - plan.retention.critical_free.0;
        let storage = match storage {
            Some(st) if st.percent > critical && plan.retention.critical_free.0 > 0.0 => {
                self.relieve_storage(&repo, &plan, st)
            }
            other => other,
        };
        self.with_status(|s| {
            s.storage = storage;
            s.snapshots = mine.len();
            if s.last_snapshot_time.is_none() {
                if let Some((id, sn)) = mine.last() {
                    s.last_snapshot = Some(id.short());
                    s.last_snapshot_time = Some(sn.time);
                }
            }
        });
    }

    /// Storage is critically low: remove the plan's oldest snapshots, one at
    /// a time (pruning after each), until use is below the threshold — but
    /// never the minimum the retention rules guarantee (the newest snapshot
    /// of every configured category, and tagged keeps). Alerts what was done.
    fn relieve_storage(
        &self,
        repo: &Repository,
        plan: &Plan,
        before: StorageUse,
    ) -> Option<StorageUse> {
        let Ok(_run) = self.running.try_lock() else {
            return Some(before);
        };
        let critical = 100.0 - plan.retention.critical_free.0;
        let minimum = plan.retention.policy().minimum();
        let file = plan.file.display().to_string();
        let mut removed = Vec::new();
        let mut now_use = before.clone();
        let result = crate::lock::with_lock(repo, true, "retention (storage critical)", || {
            let mut mine = repo.snapshots()?;
            mine.retain(|(_, s)| s.plan.as_deref() == Some(&file));
            let groups = crate::retention::forget(
                repo,
                &mine,
                &minimum,
                crate::retention::GroupBy::default(),
                true,
            )?;
            let mut victims: Vec<_> = groups.iter().flat_map(|g| g.removed()).cloned().collect();
            victims.sort_by_key(|d| d.time); // oldest first
            for d in victims {
                if now_use.percent <= critical {
                    break;
                }
                crate::retention::remove_snapshot(
                    repo,
                    &d.id,
                    d.time,
                    "storage critically low; oldest beyond the minimum",
                    false,
                )?;
                crate::ops::prune::prune(repo, false)?;
                removed.push(format!("{} ({})", &d.id[..8], d.time));
                if let Some(u) = storage_use(plan, repo) {
                    now_use = u;
                }
            }
            Ok(())
        });
        if let Err(e) = &result {
            tracing::error!("relieving storage failed: {e}");
        }
        self.alert(
            AlertKind::StorageCritical,
            if removed.is_empty() { "critical-minimum" } else { "critical-removed" },
            format!("repository storage critically low ({:.0}% used)", before.percent),
            format!(
                "The repository {} was {:.1}% full (critical above {critical:.0}%).\n\n{}\nNow {:.1}% full.{}\n",
                plan.repository.location,
                before.percent,
                if removed.is_empty() {
                    "Nothing could be removed: only the minimum the retention rules keep is left.".to_string()
                } else {
                    format!("Removed (oldest first): {}", removed.join(", "))
                },
                now_use.percent,
                match &result {
                    Err(e) => format!("\n\nError: {e}"),
                    Ok(()) => String::new(),
                }
            ),
        );
        Some(now_use)
    }

    /// The scheduler loop; returns when SIGTERM/SIGINT arrives.
    pub fn run_scheduler(self: &Arc<Self>) -> Result<()> {
        let plan = self.plan();
        let persisted: Persisted = status::load(&self.opts.state_dir);
        if persisted.retention.as_deref() != Some(&retention_fingerprint(&plan)) {
            tracing::info!("retention rules are new or changed: applying them now");
            let _run = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let applied = self
                .open_repo()
                .and_then(|r| self.apply_retention(&r, &plan, "the rules changed"));
            if let Err(e) = applied {
                tracing::error!("retention failed: {e}");
            }
        }
        self.run_checks();
        let mut next = self.next_runs(jiff::Timestamp::now());
        let verify_next = |p: &Plan| {
            schedule::next_after(
                &p.verify.cron,
                &jiff::tz::TimeZone::system(),
                jiff::Timestamp::now(),
            )
            .map_err(|e| tracing::error!("verify schedule: {e}"))
            .ok()
        };
        let mut next_verify = verify_next(&plan);
        self.with_status(|s| s.next_restore_test = next_verify);
        let mut next_check = std::time::Instant::now() + self.opts.check_every;
        loop {
            if crate::interrupt::check().is_err() {
                tracing::info!("stopping");
                return Ok(());
            }
            if self.reload.swap(false, Ordering::SeqCst) {
                match Plan::load(&self.opts.plan_file) {
                    Ok(p) => {
                        tracing::info!("plan reloaded");
                        let changed =
                            retention_fingerprint(&p) != retention_fingerprint(&self.plan());
                        *self.alerter.write().unwrap_or_else(|e| e.into_inner()) =
                            new_alerter(&p, &self.opts);
                        *self.plan.write().unwrap_or_else(|e| e.into_inner()) = p.clone();
                        // The repository, password or identity may have changed.
                        *self.repo.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        if changed {
                            let _run = self.running.lock().unwrap_or_else(|e| e.into_inner());
                            let applied = self
                                .open_repo()
                                .and_then(|r| self.apply_retention(&r, &p, "the rules changed"));
                            if let Err(e) = applied {
                                tracing::error!("retention failed: {e}");
                            }
                        }
                        next = self.next_runs(jiff::Timestamp::now());
                    }
                    Err(d) => {
                        tracing::error!("the changed plan has problems; keeping the old one:\n{d}")
                    }
                }
            }
            let now = jiff::Timestamp::now();
            let plan = self.plan();
            for (i, at) in next.clone().into_iter().enumerate() {
                if at.is_some_and(|t| t <= now) {
                    let s = &plan.schedules[i];
                    if let Err(e) =
                        self.run_backup(Trigger::Schedule(s.name.clone()), &s.sources, &s.tags)
                    {
                        tracing::error!(schedule = %s.name, "backup run failed: {e}");
                    }
                    next[i] =
                        schedule::next_after(&s.cron, &s.time_zone(), jiff::Timestamp::now()).ok();
                    self.publish_next(&next);
                }
            }
            if next_verify.is_some_and(|t| t <= now) {
                if let Err(e) = self.run_restore_test(Trigger::Schedule("verify".into())) {
                    tracing::error!("restore test could not run: {e}");
                }
                next_verify = verify_next(&plan);
                self.with_status(|s| s.next_restore_test = next_verify);
            }
            if std::time::Instant::now() >= next_check {
                self.run_checks();
                next_check = std::time::Instant::now() + self.opts.check_every;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn next_runs(&self, after: jiff::Timestamp) -> Vec<Option<jiff::Timestamp>> {
        let plan = self.plan();
        let next: Vec<_> = plan
            .schedules
            .iter()
            .map(
                |s| match schedule::next_after(&s.cron, &s.time_zone(), after) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::error!(schedule = %s.name, "{e}");
                        None
                    }
                },
            )
            .collect();
        self.publish_next(&next);
        next
    }

    fn publish_next(&self, next: &[Option<jiff::Timestamp>]) {
        let plan = self.plan();
        self.with_status(|st| {
            st.schedules = plan
                .schedules
                .iter()
                .zip(next)
                .map(|(s, n)| ScheduleState {
                    name: s.name.clone(),
                    cron: s.cron.clone(),
                    next_run: *n,
                })
                .collect();
            for src in &plan.sources {
                let n = plan
                    .schedules
                    .iter()
                    .zip(next)
                    .filter(|(s, _)| s.sources.is_empty() || s.sources.contains(&src.name))
                    .filter_map(|(_, n)| *n)
                    .min();
                st.sources
                    .entry(src.name.clone())
                    .or_insert_with(SourceState::default)
                    .next_run = n;
            }
        });
    }
}

/// Median duration (seconds) of the plan's previous complete snapshots (up to 10).
fn recent_median(repo: &Repository, plan: &Plan) -> Option<f64> {
    let file = plan.file.display().to_string();
    let mut d: Vec<f64> = repo
        .snapshots()
        .ok()?
        .into_iter()
        .rev()
        .filter(|(_, s)| s.plan.as_deref() == Some(&file) && s.is_complete())
        .skip(1) // the run just made
        .take(10)
        .map(|(_, s)| s.summary.duration_ms as f64 / 1000.0)
        .collect();
    if d.len() < 3 {
        return None;
    }
    d.sort_by(|a, b| a.total_cmp(b));
    Some(d[d.len() / 2])
}

/// Storage use: the filesystem of a local repository, or the plan's quota
/// for object storage (the sum of the repository's files).
pub fn storage_use(plan: &Plan, repo: &Repository) -> Option<StorageUse> {
    if let Some(q) = plan.alerts.quota {
        let mut used = 0u64;
        for k in [
            crate::repo::FileKind::Pack,
            crate::repo::FileKind::Index,
            crate::repo::FileKind::Snapshot,
            crate::repo::FileKind::Wal,
        ] {
            used += repo
                .backend
                .list(k)
                .ok()?
                .iter()
                .map(|(_, s)| *s)
                .sum::<u64>();
        }
        return Some(StorageUse {
            measured_by: "quota".into(),
            used_bytes: used,
            total_bytes: q.0,
            percent: 100.0 * used as f64 / q.0.max(1) as f64,
        });
    }
    if !repo.backend.is_local() {
        return None;
    }
    let st = rustix::fs::statvfs(plan.repository.location.as_str()).ok()?;
    let total = st.f_blocks * st.f_frsize;
    let avail = st.f_bavail * st.f_frsize;
    let used = total.saturating_sub(avail);
    Some(StorageUse {
        measured_by: "filesystem".into(),
        used_bytes: used,
        total_bytes: total,
        percent: 100.0 * used as f64 / total.max(1) as f64,
    })
}
