//! What the daemon knows and shows (`/status`, `/metrics`), and the little it
//! keeps across restarts (`state.json` in the state directory).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The last run of one source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceState {
    /// `ok` or `failed`.
    pub last_result: String,
    pub last_run: Option<jiff::Timestamp>,
    pub last_success: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub bytes_read: u64,
    /// New (deduplicated, uncompressed) bytes the last run stored for it.
    pub bytes_new: u64,
    pub duration_ms: u64,
    /// Seconds since the last success (filled in when shown).
    pub age_seconds: Option<i64>,
    /// The next scheduled run that includes this source.
    pub next_run: Option<jiff::Timestamp>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StorageUse {
    /// `filesystem` (local repository) or `quota` (object storage).
    pub measured_by: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub percent: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScheduleState {
    pub name: String,
    pub cron: String,
    pub next_run: Option<jiff::Timestamp>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub plan: String,
    pub started: Option<jiff::Timestamp>,
    /// What runs now (`schedule nightly`, `api`), if anything.
    pub running: Option<String>,
    pub runs: u64,
    pub failed_runs: u64,
    pub last_snapshot: Option<String>,
    pub last_snapshot_time: Option<jiff::Timestamp>,
    pub sources: BTreeMap<String, SourceState>,
    pub schedules: Vec<ScheduleState>,
    pub storage: Option<StorageUse>,
    pub snapshots: usize,
    pub next_restore_test: Option<jiff::Timestamp>,
    pub last_restore_test: Option<super::LastProof>,
    /// Times the repository key was unlocked (scrypt or identity): once at
    /// start-up and once per plan reload, never per request.
    pub key_unlocks: u64,
}

/// Kept across restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// Fingerprint of the retention rules last applied: a change is applied
    /// at start-up.
    pub retention: Option<String>,
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

/// Prometheus text exposition of the status.
pub fn metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let per_source = |f: &dyn Fn(&SourceState) -> Option<f64>| -> Vec<(String, f64)> {
        s.sources
            .iter()
            .filter_map(|(n, st)| {
                f(st).map(|v| (format!("{{source=\"{}\"}}", n.replace('"', "")), v))
            })
            .collect()
    };
    gauge(
        "cairn_up",
        "1 while the daemon runs.",
        vec![(String::new(), 1.0)],
    );
    gauge(
        "cairn_backup_success",
        "1 if the last backup of the source succeeded.",
        per_source(&|st| Some(if st.last_result == "ok" { 1.0 } else { 0.0 })),
    );
    gauge(
        "cairn_last_success_timestamp_seconds",
        "Unix time of the last successful backup of the source.",
        per_source(&|st| st.last_success.map(|t| t.as_second() as f64)),
    );
    gauge(
        "cairn_last_backup_duration_seconds",
        "Duration of the last backup of the source.",
        per_source(&|st| Some(st.duration_ms as f64 / 1000.0)),
    );
    gauge(
        "cairn_last_backup_read_bytes",
        "Bytes read from the source by its last backup.",
        per_source(&|st| Some(st.bytes_read as f64)),
    );
    gauge(
        "cairn_last_backup_new_bytes",
        "New (deduplicated, uncompressed) bytes the source's last backup stored.",
        per_source(&|st| Some(st.bytes_new as f64)),
    );
    gauge(
        "cairn_runs_total",
        "Backup runs since the daemon started.",
        vec![(String::new(), s.runs as f64)],
    );
    gauge(
        "cairn_failed_runs_total",
        "Backup runs that failed since the daemon started.",
        vec![(String::new(), s.failed_runs as f64)],
    );
    gauge(
        "cairn_snapshots",
        "Snapshots of this plan in the repository.",
        vec![(String::new(), s.snapshots as f64)],
    );
    gauge(
        "cairn_key_unlocks_total",
        "Times the repository key was unlocked (start-up and plan reloads).",
        vec![(String::new(), s.key_unlocks as f64)],
    );
    if let Some(st) = &s.storage {
        gauge(
            "cairn_storage_used_bytes",
            "Repository storage in use.",
            vec![(String::new(), st.used_bytes as f64)],
        );
        gauge(
            "cairn_storage_total_bytes",
            "Repository storage available in all (filesystem size or quota).",
            vec![(String::new(), st.total_bytes as f64)],
        );
    }
    out
}
