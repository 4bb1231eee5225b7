//! What the daemon knows and shows (`/status`; `/metrics` renders the same,
//! see `metrics.rs`), and what it keeps across restarts (`state.json` in the
//! state directory).
//!
//! Two sources make the status after a restart: the repository (each
//! source's last success, the proofs, the repository's size — see
//! `observe.rs`) and `state.json` (what only the daemon saw: run and
//! restore-test counts, runs that saved no snapshot, the last restore test
//! including skips). `state.json` is written with
//! [`crate::fsutil::write_atomic`] (fsynced, then renamed) after every run and
//! restore test.

use super::LastProof;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The last run of one source.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceState {
    /// `ok` or `failed`; empty while nothing is known (never backed up).
    pub last_result: String,
    /// When the last run that included the source started (its snapshot's
    /// time; the failure's time for a run that saved no snapshot).
    pub last_run: Option<jiff::Timestamp>,
    /// The time of the newest snapshot of the plan in which the source is
    /// complete (read from the repository).
    pub last_success: Option<jiff::Timestamp>,
    /// That snapshot (short id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Bytes read by the daemon's last run of the source (left out when
    /// the newest run is one the daemon did not make, e.g. by hand).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    /// New (deduplicated, uncompressed) bytes the last run stored for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_new: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Seconds since the last success (filled in when shown).
    #[serde(skip_deserializing)]
    pub age_seconds: Option<i64>,
    /// The next scheduled run that includes this source.
    #[serde(skip_deserializing)]
    pub next_run: Option<jiff::Timestamp>,
}

/// The filesystem holding a local repository.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Filesystem {
    pub total_bytes: u64,
    /// Space available to cairn (`statvfs`'s `f_bavail`).
    pub free_bytes: u64,
}

/// The repository's storage: its own size, and how full the storage that
/// holds it is.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StorageUse {
    /// The repository's own files: the sum of their sizes as the backend
    /// lists them (config, keys, packs, index, snapshots, proofs, WAL,
    /// locks; not leftovers of interrupted writes).
    pub used_bytes: u64,
    pub files: u64,
    /// When the repository was listed (after every run and prune, at most
    /// every `REFRESH_EVERY` otherwise; see `observe.rs`).
    pub measured_at: Option<jiff::Timestamp>,
    /// The plan's `quota`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// A local repository's filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
    /// What `percent` and the storage thresholds compare: `quota` (the
    /// repository against the quota) or `filesystem` (the filesystem's use,
    /// other files included). Left out for object storage without a quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_by: Option<String>,
    /// The quota or the filesystem's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

impl StorageUse {
    /// How full, in words: `82.0% full, measured by filesystem: 82000 of
    /// 100000 bytes in use, 18000 free; the repository takes 4000 bytes`.
    pub fn describe(&self) -> String {
        let percent = self.percent.unwrap_or_default();
        match (&self.filesystem, self.measured_by.as_deref()) {
            (Some(fs), Some("filesystem")) => format!(
                "{percent:.1}% full, measured by filesystem: {} of {} bytes in use, {} free; \
                 the repository takes {} bytes",
                fs.total_bytes.saturating_sub(fs.free_bytes),
                fs.total_bytes,
                fs.free_bytes,
                self.used_bytes
            ),
            (_, Some(by)) => format!(
                "{percent:.1}% full: {} of {} bytes, measured by {by}",
                self.used_bytes,
                self.total_bytes.unwrap_or_default()
            ),
            (_, None) => format!("{} bytes (no quota to compare with)", self.used_bytes),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScheduleState {
    pub name: String,
    pub cron: String,
    pub next_run: Option<jiff::Timestamp>,
}

/// Restore tests the daemon ran, by outcome (kept across restarts).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreTestCounts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl RestoreTestCounts {
    /// Every test so far, whatever its outcome.
    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped
    }

    pub fn count(&mut self, outcome: &str) {
        match outcome {
            "passed" => self.passed += 1,
            "failed" => self.failed += 1,
            "skipped" => self.skipped += 1,
            _ => {}
        }
    }
}

/// The newest proof (restore-test outcome, `proofs/` in the repository) of
/// one snapshot of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct ProofState {
    /// The snapshot (short id) and its time.
    pub snapshot: String,
    pub snapshot_time: jiff::Timestamp,
    /// When the proof was recorded.
    pub time: jiff::Timestamp,
    pub passed: bool,
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub plan: String,
    pub started: Option<jiff::Timestamp>,
    /// What runs now (`schedule nightly`, `api`), if anything.
    pub running: Option<String>,
    /// Backup runs, and those that failed (kept across restarts).
    pub runs: u64,
    pub failed_runs: u64,
    /// The plan's newest snapshot.
    pub last_snapshot: Option<String>,
    pub last_snapshot_time: Option<jiff::Timestamp>,
    pub sources: BTreeMap<String, SourceState>,
    pub schedules: Vec<ScheduleState>,
    pub storage: Option<StorageUse>,
    /// Snapshots of the plan in the repository.
    pub snapshots: usize,
    pub next_restore_test: Option<jiff::Timestamp>,
    /// The last restore test: the daemon's (a skip included), or a newer
    /// proof in the repository (e.g. `cairn check --restore-test`).
    pub last_restore_test: Option<LastProof>,
    pub restore_tests: RestoreTestCounts,
    /// The newest proof of each of the plan's snapshots that has one,
    /// oldest snapshot first.
    pub proofs: Vec<ProofState>,
    /// Times the repository key was unlocked (scrypt or identity): once at
    /// start-up and once per plan reload, never per request.
    pub key_unlocks: u64,
    /// The WAL archive of each physical PostgreSQL source (`archive.rs`).
    pub archives: BTreeMap<String, super::archive::ArchiveState>,
    /// What only the daemon saw, newest last: runs that saved no snapshot
    /// and alerts (kept across restarts, at most [`EVENTS_KEPT`]). Shown by
    /// the status page, not in `/status`.
    #[serde(skip)]
    pub events: std::collections::VecDeque<Event>,
}

/// How many [`Event`]s the daemon keeps.
pub const EVENTS_KEPT: usize = 200;

/// Something that happened in the daemon and that the repository does not
/// record: a backup run that saved no snapshot, or an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time: jiff::Timestamp,
    /// `run-failed` or `alert`.
    pub kind: String,
    /// A failed run: its trigger; an alert: its kind (`backup-failed`).
    pub what: String,
    /// The sources it concerns (a failed run's), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// A failed run: the error; an alert: its subject.
    pub detail: String,
    /// An alert: `sent`, `not delivered: …` or `no channel configured`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
}

impl Status {
    /// Record `e`, dropping the oldest beyond [`EVENTS_KEPT`].
    pub fn record(&mut self, e: Event) {
        self.events.push_back(e);
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }
}

/// Kept across restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// Fingerprint of the retention rules last applied: a change is applied
    /// at start-up.
    pub retention: Option<String>,
    pub runs: u64,
    pub failed_runs: u64,
    pub sources: BTreeMap<String, SourceState>,
    pub last_restore_test: Option<LastProof>,
    pub restore_tests: RestoreTestCounts,
    /// The daemon's [`Event`]s, oldest first.
    pub events: Vec<Event>,
}

impl Persisted {
    /// Take what is kept from `s`.
    pub fn keep(&mut self, s: &Status) {
        self.runs = s.runs;
        self.failed_runs = s.failed_runs;
        self.sources = s.sources.clone();
        for st in self.sources.values_mut() {
            (st.age_seconds, st.next_run) = (None, None);
        }
        self.last_restore_test = s.last_restore_test.clone();
        self.restore_tests = s.restore_tests.clone();
        self.events = s.events.iter().cloned().collect();
    }

    /// Put what was kept into `s`, for the sources in `sources` only.
    pub fn restore_into(&self, s: &mut Status, sources: &[String]) {
        s.runs = self.runs;
        s.failed_runs = self.failed_runs;
        s.sources = self
            .sources
            .iter()
            .filter(|(n, _)| sources.contains(n))
            .map(|(n, st)| (n.clone(), st.clone()))
            .collect();
        s.last_restore_test = self.last_restore_test.clone();
        s.restore_tests = self.restore_tests.clone();
        s.events = self.events.iter().cloned().collect();
    }
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn load(dir: &Path) -> Persisted {
    std::fs::read(state_file(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save(dir: &Path, p: &Persisted) -> std::io::Result<()> {
    crate::fsutil::write_atomic(&state_file(dir), &serde_json::to_vec_pretty(p)?)
}

/// Read, change and write `state.json` again; one at a time, so two
/// changes never overwrite each other.
pub fn update(dir: &Path, f: impl FnOnce(&mut Persisted)) -> std::io::Result<()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = load(dir);
    f(&mut p);
    save(dir, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_state_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(state_file(dir.path()), r#"{"retention": "x"}"#).unwrap();
        let p = load(dir.path());
        assert_eq!(p.retention.as_deref(), Some("x"));
        assert_eq!(p.runs, 0);
    }

    #[test]
    fn what_is_kept_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Status {
            runs: 3,
            failed_runs: 1,
            ..Default::default()
        };
        s.sources.insert(
            "etc".into(),
            SourceState {
                last_result: "failed".into(),
                last_error: Some("boom".into()),
                bytes_read: Some(7),
                next_run: Some(jiff::Timestamp::UNIX_EPOCH),
                ..Default::default()
            },
        );
        s.sources.insert("gone".into(), SourceState::default());
        s.restore_tests.count("skipped");
        for i in 0..EVENTS_KEPT + 3 {
            s.record(Event {
                time: jiff::Timestamp::UNIX_EPOCH,
                kind: "alert".into(),
                what: format!("n{i}"),
                sources: vec![],
                detail: String::new(),
                outcome: "sent".into(),
            });
        }
        assert_eq!(s.events.len(), EVENTS_KEPT, "bounded");
        assert_eq!(s.events[0].what, "n3", "the oldest go first");
        update(dir.path(), |p| p.keep(&s)).unwrap();
        update(dir.path(), |p| p.retention = Some("r".into())).unwrap();
        let p = load(dir.path());
        assert_eq!(p.retention.as_deref(), Some("r"));
        let mut back = Status::default();
        p.restore_into(&mut back, &["etc".to_string()]);
        assert_eq!((back.runs, back.failed_runs), (3, 1));
        assert_eq!(back.restore_tests.skipped, 1);
        assert_eq!(back.events, s.events);
        assert_eq!(back.sources.len(), 1, "a source no longer in the plan goes");
        let etc = &back.sources["etc"];
        assert_eq!(etc.last_error.as_deref(), Some("boom"));
        assert_eq!(etc.bytes_read, Some(7));
        assert_eq!(etc.next_run, None, "computed, not kept");
    }
}
