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
pub mod archive;
pub mod data_check;
pub mod metrics;
pub mod notice;
pub mod observe;
mod outbox;
pub mod page;
pub mod run;
pub mod schedule;
pub mod status;

use crate::error::Result;
use crate::plan::Plan;
use crate::repo::{Snapshot, SnapshotId, SourceStatus::Complete};
use crate::repository::Repository;
use alerts::{Alert, AlertKind, Alerter};
use notice::{when, Details};
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
    /// When the runs started failing without saving a snapshot (since the
    /// daemon started); cleared by a run that saves one.
    failing_since: Mutex<Option<jiff::Timestamp>>,
    /// The repository's size and proofs as last read (`observe.rs`).
    seen: Mutex<observe::Seen>,
    /// Alerts no channel took, offered again at every check (`outbox.rs`).
    outbox: outbox::Outbox,
}

/// Why a run was started.
#[derive(Clone, Debug)]
pub enum Trigger {
    Schedule(String),
    Api,
}

/// The last scheduled or triggered restore test (kept across restarts).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LastProof {
    pub time: Option<jiff::Timestamp>,
    pub snapshot: Option<String>,
    /// passed | failed | skipped
    pub outcome: String,
    pub detail: String,
    pub skipped_in_a_row: u32,
    /// The data check that came with the test (`verify { read-data … }`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_check: Option<data_check::DataCheck>,
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
        let mut status = Status {
            plan: plan.file.display().to_string(),
            started: Some(crate::clock::now()),
            ..Default::default()
        };
        let names: Vec<String> = plan.sources.iter().map(|s| s.name.clone()).collect();
        status::load(&opts.state_dir).restore_into(&mut status, &names);
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
            failing_since: Mutex::new(None),
            outbox: outbox::Outbox::default(),
            seen: Mutex::new(observe::Seen::default()),
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
        let now = crate::clock::now();
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
                // What is decoded is read again from the packs as they are now.
                repo.forget_frames();
                return Ok(repo.clone());
            }
            tracing::warn!(
                repository = notice::redact_location(&repo.backend.location()).as_str(),
                "the repository is another one now; opening it again"
            );
        }
        *slot = None;
        let repo = Arc::new(self.opts.access.with_plan(&self.plan())?.open()?);
        self.with_status(|s| s.key_unlocks += 1);
        tracing::info!(
            repository = notice::redact_location(&repo.backend.location()).as_str(),
            key = repo.key_id.short().as_str(),
            "repository opened"
        );
        *slot = Some(repo.clone());
        Ok(repo)
    }

    /// The repository as last opened, without opening it.
    fn opened_repo(&self) -> Option<Arc<Repository>> {
        self.repo.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An alert body saying `what`, with the plan and the repository.
    fn details(&self, plan: &Plan, what: impl Into<String>) -> Details {
        let file = std::fs::canonicalize(&plan.file).unwrap_or_else(|_| plan.file.clone());
        Details {
            plan: Some(file.display().to_string()),
            repository: Some(notice::redact_location(&plan.repository.location)),
            ..Details::new(what)
        }
    }

    /// Send an alert through the plan's channels (rate-limited): subject
    /// `KIND TITLE: what`, body from `details`; failures to deliver are
    /// logged, never fatal.
    pub fn alert(&self, kind: AlertKind, key: &str, what: &str, details: Details) {
        let alert = Alert::new(kind, key, what, details.body());
        tracing::warn!(
            kind = kind.name(),
            key,
            subject = alert.subject.as_str(),
            "alert"
        );
        let a = self.alerter.read().unwrap_or_else(|e| e.into_inner());
        // Each channel's delivery is logged by the alerter (`alert sent`).
        let outcome = match a.send(&alert) {
            Ok(alerts::Delivery::Sent { .. }) => "sent".to_string(),
            Ok(alerts::Delivery::NoChannels) => "no channel configured".to_string(),
            // An identical alert went out less than repeat-every ago.
            Ok(alerts::Delivery::Suppressed { .. }) => return,
            Err(e) => {
                tracing::error!(
                    kind = kind.name(),
                    key,
                    error = e.to_string().as_str(),
                    "alert not delivered; it is sent again at the next check"
                );
                self.outbox.keep(alert.clone(), crate::clock::now());
                format!("not delivered: {e}")
            }
        };
        drop(a);
        // For the status page (`page.rs`), kept across restarts.
        self.with_status(|s| {
            s.record(status::Event {
                time: crate::clock::now(),
                kind: "alert".into(),
                what: kind.name().into(),
                sources: Vec::new(),
                detail: alert.subject.clone(),
                outcome,
            })
        });
        self.save_status();
    }

    /// Prove a random complete snapshot of the plan in the verification
    /// environment (`verify` node). `Ok(None)` when a run is going on.
    pub fn run_restore_test(&self, trigger: Trigger) -> Result<Option<LastProof>> {
        let Ok(_guard) = self.running.try_lock() else {
            tracing::warn!(
                trigger = trigger.to_string().as_str(),
                "restore test skipped this time: another run is going on"
            );
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
        // A snapshot is worth testing when one of its sources is complete;
        // only complete sources are tested (`prove`).
        let of_plan = run::plan_snapshots(&repo, &plan);
        let snaps: Vec<_> = of_plan
            .iter()
            .filter(|(_, s)| s.sources.iter().any(|x| x.status == Complete))
            .collect();
        let env = crate::prove::ScratchEnv {
            postgres: plan.verify.postgres_scratch.clone(),
            kafka: plan
                .verify
                .kafka_scratch
                .as_deref()
                .map(crate::source::kafka::KafkaOptions::new)
                .transpose()?,
            // Physical sources recover through `wal-fetch` with the plan's key.
            wal_fetch: self
                .opts
                .access
                .with_plan(&plan)
                .and_then(|a| a.wal_fetch_command())
                .ok(),
            ..Default::default()
        };
        let mut last = self.status().last_restore_test.unwrap_or_default();
        last.time = Some(crate::clock::now());
        // The stored data first (data_check.rs): a damaged snapshot is the
        // one to restore, so that the test proves the damage end to end.
        let nth = self.status().restore_tests.total();
        let corrupted: std::collections::HashSet<SnapshotId> = repo
            .proofs()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, p)| !p.passed)
            .map(|(id, _)| id)
            .collect();
        let data = match data_check::run(&repo, &plan, &of_plan, &corrupted, nth) {
            Ok(d) => d,
            Err(e) if e.kind() == crate::error::Kind::Interrupted => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the data check could not run; the restore test goes on");
                None
            }
        };
        let damaged = data
            .as_ref()
            .map(|f| f.damaged.as_slice())
            .unwrap_or_default();
        let suspects: Vec<_> = snaps
            .iter()
            .filter(|(id, _)| damaged.iter().any(|d| d.id == *id))
            .collect();
        let pick = match suspects.choose(&mut rand::rng()) {
            Some(s) => Some(**s),
            None => snaps.choose(&mut rand::rng()).copied(),
        };
        let mut outcome = match pick {
            None => crate::prove::Outcome::Skipped {
                reason: "the plan has no snapshot with a complete source yet".into(),
            },
            Some((id, snap)) => {
                last.snapshot = Some(id.short());
                tracing::info!(
                    trigger = trigger.to_string().as_str(),
                    snapshot = id.short().as_str(),
                    "restore test started"
                );
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
        last.data_check = None;
        let restore_failed = matches!(outcome, crate::prove::Outcome::Failed { .. });
        if let Some(found) = data {
            if !found.damaged.is_empty() {
                let tested = pick.map(|(id, _)| *id);
                self.data_damage(&repo, &found, tested, &mut last, &mut outcome);
            }
            if !found.summary.damaged_wal.is_empty() {
                let note = format!(
                    "archived WAL cannot be read back: {}; point-in-time recovery stops before it, take a physical snapshot now",
                    found.summary.damaged_wal.join(", ")
                );
                outcome.fail_with(&note);
            }
            if !found.packs.is_empty() {
                self.salvage(&repo, &found.packs, &mut outcome);
            }
            last.data_check = Some(found.summary);
        }
        let snap = last.snapshot.clone().unwrap_or_default();
        let snap_time = snaps
            .iter()
            .find(|(id, _)| id.short() == snap)
            .map(|(_, s)| s.time);
        match &outcome {
            crate::prove::Outcome::Passed => {
                tracing::info!(
                    snapshot = snap.as_str(),
                    outcome = "passed",
                    "restore test finished"
                );
                last.outcome = "passed".into();
                last.detail.clear();
                last.skipped_in_a_row = 0;
            }
            crate::prove::Outcome::Failed { detail } => {
                last.outcome = "failed".into();
                last.detail = detail.clone();
                last.skipped_in_a_row = 0;
                tracing::error!(
                    snapshot = snap.as_str(),
                    outcome = "failed",
                    error = detail.as_str(),
                    "restore test finished"
                );
                let what = match last
                    .data_check
                    .as_ref()
                    .filter(|d| d.damaged.len() > d.already_marked)
                {
                    Some(dc) => format!(
                        "The data check found {} newly damaged snapshot(s) ({}). Each is marked \
                         corrupted: `cairn snapshots` shows them, `restore --at` skips them and \
                         retention keeps a good one.",
                        dc.damaged.len() - dc.already_marked,
                        dc.damaged.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    // Only archived WAL is damaged: the tested snapshot passed.
                    None if !restore_failed
                        && last
                            .data_check
                            .as_ref()
                            .is_some_and(|d| !d.damaged_wal.is_empty()) =>
                    {
                        format!(
                            "The data check found archived WAL that cannot be read back ({}): \
                         point-in-time recovery stops before it. Take a physical snapshot now.",
                            last.data_check
                                .as_ref()
                                .map(|d| d.damaged_wal.join(", "))
                                .unwrap_or_default()
                        )
                    }
                    None => format!(
                        "The restore test of snapshot {snap} failed. The snapshot is marked \
                         corrupted: `cairn snapshots` shows it and `restore --at` skips it."
                    ),
                };
                let mut d = self.details(&plan, what);
                d.error = Some(detail.clone());
                d.snapshot = Some(match snap_time {
                    Some(t) => format!("{snap} (taken {t})"),
                    None => snap.clone(),
                });
                d.hints.push(AlertKind::RestoreTestFailed.hint().into());
                self.alert(AlertKind::RestoreTestFailed, &snap, &snap, d);
            }
            crate::prove::Outcome::Skipped { reason } => {
                last.outcome = "skipped".into();
                last.detail = reason.clone();
                last.skipped_in_a_row += 1;
                tracing::warn!(
                    outcome = "skipped",
                    in_a_row = last.skipped_in_a_row,
                    reason = reason.as_str(),
                    "restore test skipped"
                );
                if last.skipped_in_a_row >= plan.verify.skip_alert_after {
                    let n = last.skipped_in_a_row;
                    let mut d = self.details(
                        &plan,
                        format!("The restore test was skipped {n} time(s) in a row."),
                    );
                    d.error = Some(reason.clone());
                    d.hints.push(AlertKind::RestoreTestSkipped.hint().into());
                    self.alert(
                        AlertKind::RestoreTestSkipped,
                        "skipped",
                        &format!("{n} in a row"),
                        d,
                    );
                }
            }
        }
        self.restore_test_done(&plan, &repo, &mut last);
        Ok(last)
    }

    /// Forget what the plan's rules do not keep (its own snapshots only), then
    /// prune. Each removal is logged (`forgetting snapshot`, with its reason)
    /// inside a `retention` span that says `why` retention ran.
    pub fn apply_retention(&self, repo: &Repository, plan: &Plan, why: &str) -> Result<()> {
        let span = tracing::info_span!("retention", why);
        let applied = span.in_scope(|| crate::ops::retention::apply(repo, plan))?;
        tracing::info!(
            removed = applied.removed,
            why,
            rules = plan.retention.policy().to_string().as_str(),
            "retention applied"
        );
        if let Some(r) = &applied.pruned {
            log_prune(r, why);
            self.storage_changed();
        }
        let rules = retention_fingerprint(plan);
        if let Err(e) = status::update(&self.opts.state_dir, |p| p.retention = Some(rules)) {
            tracing::warn!(
                dir = self.opts.state_dir.display().to_string().as_str(),
                error = e.to_string().as_str(),
                "cannot save the daemon state"
            );
        }
        Ok(())
    }

    /// Missed backups and storage, from the repository's state.
    pub fn run_checks(&self) {
        let delivered = {
            let a = self.alerter.read().unwrap_or_else(|e| e.into_inner());
            self.outbox.retry(&a)
        };
        for subject in delivered {
            self.with_status(|s| {
                s.record(status::Event {
                    time: crate::clock::now(),
                    kind: "alert".into(),
                    what: "undelivered".into(),
                    sources: Vec::new(),
                    detail: subject,
                    outcome: "sent late".into(),
                })
            });
        }
        let plan = self.plan();
        let repo = match self.open_repo() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    error = e.to_string().as_str(),
                    "repository cannot be opened"
                );
                let mut d = self.details(&plan, "cairn cannot open the repository.");
                d.error = Some(e.to_string());
                d.hints.extend(e.hint().map(str::to_string));
                d.hints.push(
                    "check that the repository's storage is mounted or reachable and that \
                     the plan's password-file or identity opens it"
                        .into(),
                );
                self.alert(
                    AlertKind::BackupFailed,
                    "repository",
                    "repository cannot be opened",
                    d,
                );
                return;
            }
        };
        let snaps = repo.snapshots().unwrap_or_default();
        let mine: Vec<_> = snaps
            .iter()
            .filter(|(_, s)| plan.made(s))
            .cloned()
            .collect();
        self.check_missed(&plan, &mine);
        self.check_archives(&plan, &repo);
        let storage = self.storage_use(&plan, &repo, false);
        let percent = storage.as_ref().and_then(|st| st.percent);
        if let (Some(st), Some(percent)) = (&storage, percent) {
            if percent >= plan.alerts.storage_warning.0 {
                let mut d = self.details(
                    &plan,
                    format!(
                        "The repository's storage is {}; the warning threshold \
                         (storage-warning) is {}%.",
                        st.describe(),
                        plan.alerts.storage_warning.0
                    ),
                );
                d.hints.push(AlertKind::StorageHigh.hint().into());
                self.alert(
                    AlertKind::StorageHigh,
                    "storage",
                    &format!("{percent:.0}% full"),
                    d,
                );
            }
        }
        let critical = 100.0 - plan.retention.critical_free.0;
        let storage = match storage {
            Some(st)
                if percent.is_some_and(|p| p > critical)
                    && plan.retention.critical_free.0 > 0.0 =>
            {
                self.relieve_storage(&repo, &plan, st)
            }
            other => other,
        };
        self.observe(&plan, &repo, &snaps, storage);
    }

    /// Each source a schedule backs up whose last complete copy (or, with
    /// none, the daemon's start) is older than `missed-backup` is alerted
    /// (key: the source), however the plan's other sources fare.
    fn check_missed(&self, plan: &Plan, mine: &[(SnapshotId, Snapshot)]) {
        let started = self.status.lock().map(|s| s.started).ok().flatten();
        let now = crate::clock::now();
        // The shortest limit of the schedules that back the source up.
        let limit_of = |name: &String| {
            plan.schedules
                .iter()
                .filter(|s| s.sources.is_empty() || s.sources.contains(name))
                .map(|s| s.missed_backup.unwrap_or(plan.alerts.missed_backup))
                .min()
        };
        let status = self.status();
        for (src, limit) in plan
            .sources
            .iter()
            .filter_map(|s| limit_of(&s.name).map(|l| (s, l)))
        {
            let (last_ok, _) = run::source_history(mine, &src.name);
            let since = last_ok.or(started).unwrap_or(now);
            let age = (now - since).as_secs().max(0) as u64;
            if age <= limit.as_secs() {
                continue;
            }
            let age = humantime::format_duration(Duration::from_secs(age));
            let mut d = self.details(
                plan,
                format!(
                    "There has been no successful backup of source {} for {age} (the limit \
                     is missed-backup {}).",
                    src.name,
                    humantime::format_duration(limit)
                ),
            );
            d.source = Some(format!("{} ({})", src.name, src.settings.kind()));
            d.since = vec![("Last complete copy".into(), when(last_ok, now))];
            if last_ok.is_none() {
                d.since.push(("Daemon started".into(), when(started, now)));
            }
            d.error = status
                .sources
                .get(&src.name)
                .and_then(|st| st.last_error.clone());
            d.hints.push(AlertKind::MissedBackup.hint().into());
            self.alert(
                AlertKind::MissedBackup,
                &src.name,
                &format!("{}, none for {age}", src.name),
                d,
            );
        }
    }

    /// Each physical source's WAL archive: failing or lagging archiving is
    /// alerted (`wal-archive`, key: the source), and the status shows it.
    fn check_archives(&self, plan: &Plan, repo: &Repository) {
        let sources = archive::physical_sources(plan);
        if sources.is_empty() {
            return;
        }
        let newest = archive::repository_newest_wal(repo);
        let mut states = std::collections::BTreeMap::new();
        let mut alerts = Vec::new();
        for (name, url) in sources {
            let now = crate::clock::now();
            let (st, alert) = archive::judge(
                archive::server_archive(&url),
                newest.clone(),
                plan.alerts.archive_lag,
                now,
            );
            if let Some(e) = &st.error {
                tracing::warn!(
                    source = name.as_str(),
                    error = e.as_str(),
                    "cannot check the WAL archive"
                );
            }
            if let Some((what, sentence)) = alert {
                let mut d = self.details(plan, sentence);
                d.source = Some(format!("{name} (postgres, physical)"));
                if let Some(s) = &st.server {
                    d.since = vec![
                        (
                            "Last archived".into(),
                            format!(
                                "{} at {}",
                                s.last_archived_wal.as_deref().unwrap_or("none"),
                                when(s.last_archived_time, now)
                            ),
                        ),
                        ("archive_command".into(), s.archive_command.clone()),
                    ];
                }
                d.hints.push(AlertKind::WalArchive.hint().into());
                alerts.push((name.clone(), format!("{name}, {what}"), d));
            }
            states.insert(name, st);
        }
        // The status first: whoever reads the mail and then asks /status
        // sees what the mail says (a mail used to arrive before it).
        self.with_status(|s| s.archives = states);
        for (name, what, d) in alerts {
            self.alert(AlertKind::WalArchive, &name, &what, d);
        }
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
        let mut removed = Vec::new();
        let mut now_use = before.clone();
        let span = tracing::info_span!("retention", why = "storage critically low");
        let _in_span = span.enter();
        let result = crate::lock::with_lock(repo, true, "retention (storage critical)", || {
            let mine = crate::ops::retention::snapshots_of(repo, plan)?;
            let decision = crate::ops::retention::decide(repo, &mine, &minimum)?;
            let mut victims: Vec<_> = decision.removed().cloned().collect();
            victims.sort_by_key(|d| d.time); // oldest first
            for d in victims {
                if now_use.percent.is_none_or(|p| p <= critical) {
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
                if let Some(u) = self.storage_use(plan, repo, true) {
                    now_use = u;
                }
            }
            Ok(())
        });
        drop(_in_span);
        if let Err(e) = &result {
            tracing::error!(error = e.to_string().as_str(), "relieving storage failed");
        }
        let mut d = self.details(
            plan,
            format!(
                "The repository's storage was critically low: {:.1}% full (critical above \
                 {critical:.0}%, critical-free {}%). {} Now {:.1}% full.",
                before.percent.unwrap_or_default(),
                plan.retention.critical_free.0,
                if removed.is_empty() {
                    "Nothing could be removed: only the minimum the retention rules keep is left."
                        .to_string()
                } else {
                    format!("Removed, oldest first: {}.", removed.join(", "))
                },
                now_use.percent.unwrap_or_default(),
            ),
        );
        d.error = result.as_ref().err().map(ToString::to_string);
        d.hints.push(AlertKind::StorageCritical.hint().into());
        self.alert(
            AlertKind::StorageCritical,
            if removed.is_empty() {
                "critical-minimum"
            } else {
                "critical-removed"
            },
            &format!("{:.0}% used", before.percent.unwrap_or_default()),
            d,
        );
        Some(now_use)
    }

    /// Apply `plan`'s retention rules because they are new or changed, as
    /// a run of its own: it waits for a run going on, and the status (the
    /// API's 409, the page) shows it running meanwhile.
    fn retention_for_new_rules(&self, plan: &Plan) {
        let _run = self.running.lock().unwrap_or_else(|e| e.into_inner());
        self.with_status(|s| s.running = Some("retention (the rules changed)".into()));
        let applied = self
            .open_repo()
            .and_then(|r| self.apply_retention(&r, plan, "the rules changed"));
        self.with_status(|s| s.running = None);
        if let Err(e) = applied {
            tracing::error!(error = e.to_string().as_str(), "retention failed");
        }
    }

    /// The scheduler loop; returns when SIGTERM/SIGINT arrives.
    pub fn run_scheduler(self: &Arc<Self>) -> Result<()> {
        // Schedules count from here: a time that comes due during the
        // start-up retention and checks still runs (late) instead of being
        // skipped for the next one.
        let begun = crate::clock::now();
        let plan = self.plan();
        let persisted: Persisted = status::load(&self.opts.state_dir);
        if persisted.retention.as_deref() != Some(&retention_fingerprint(&plan)) {
            tracing::info!("retention rules are new or changed: applying them now");
            self.retention_for_new_rules(&plan);
        }
        self.run_checks();
        let mut next = self.next_runs(begun);
        let verify_next = |p: &Plan, after: jiff::Timestamp| {
            schedule::next_after(&p.verify.cron, &jiff::tz::TimeZone::system(), after)
                .map_err(|e| tracing::error!(error = e.to_string().as_str(), "verify schedule"))
                .ok()
        };
        let mut next_verify = verify_next(&plan, begun);
        self.with_status(|s| s.next_restore_test = next_verify);
        let mut next_check = std::time::Instant::now() + self.opts.check_every;
        loop {
            if crate::interrupt::check().is_err() {
                tracing::info!("stopping");
                return Ok(());
            }
            if self.reload.swap(false, Ordering::SeqCst) {
                let reloaded_at = crate::clock::now();
                match Plan::load(&self.opts.plan_file) {
                    Ok(p) => {
                        tracing::info!("plan reloaded");
                        let old = self.plan();
                        let changed = retention_fingerprint(&p) != retention_fingerprint(&old);
                        *self.alerter.write().unwrap_or_else(|e| e.into_inner()) =
                            new_alerter(&p, &self.opts);
                        *self.plan.write().unwrap_or_else(|e| e.into_inner()) = p.clone();
                        // The repository, password or identity may have changed.
                        *self.repo.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        if changed {
                            self.retention_for_new_rules(&p);
                        }
                        // A schedule the reload left as it was keeps its
                        // pending time, so a run that came due meanwhile
                        // (during the retention above, or before this loop
                        // noticed the signal) still runs; a new or changed
                        // one counts from the reload (issue 28, found by
                        // scripts/timelapse).
                        let fresh = self.next_runs(reloaded_at);
                        next = p
                            .schedules
                            .iter()
                            .zip(fresh)
                            .map(|(s, n)| {
                                old.schedules
                                    .iter()
                                    .position(|o| {
                                        o.name == s.name
                                            && o.cron == s.cron
                                            && o.timezone == s.timezone
                                    })
                                    .and_then(|i| next.get(i).copied().flatten())
                                    .or(n)
                            })
                            .collect();
                        self.publish_next(&next);
                        if p.verify.cron != old.verify.cron {
                            next_verify = verify_next(&p, reloaded_at);
                            self.with_status(|s| s.next_restore_test = next_verify);
                        }
                    }
                    Err(d) => tracing::error!(
                        problems = d.to_string().as_str(),
                        "the changed plan has problems; keeping the old one"
                    ),
                }
            }
            let now = crate::clock::now();
            let plan = self.plan();
            for (i, at) in next.clone().into_iter().enumerate() {
                if at.is_some_and(|t| t <= now) {
                    let s = &plan.schedules[i];
                    // A failed run is logged (`backup run failed`) and alerted by run_backup.
                    let _ = self.run_backup(Trigger::Schedule(s.name.clone()), &s.sources, &s.tags);
                    next[i] =
                        schedule::next_after(&s.cron, &s.time_zone(), crate::clock::now()).ok();
                    self.publish_next(&next);
                }
            }
            if next_verify.is_some_and(|t| t <= now) {
                if let Err(e) = self.run_restore_test(Trigger::Schedule("verify".into())) {
                    tracing::error!(error = e.to_string().as_str(), "restore test could not run");
                }
                next_verify = verify_next(&plan, crate::clock::now());
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
                        tracing::error!(
                            schedule = s.name.as_str(),
                            error = e.to_string().as_str(),
                            "schedule has no next run"
                        );
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

/// The `pruned` line after retention removed snapshots.
fn log_prune(r: &crate::ops::prune::PruneReport, why: &str) {
    tracing::info!(
        why,
        packs_removed = r.packs_removed,
        packs_repacked = r.packs_repacked,
        unreferenced_packs_removed = r.unreferenced_packs_removed,
        packs_kept = r.packs_kept,
        bytes_before = r.bytes_before,
        bytes_after = r.bytes_after,
        "pruned"
    );
}
