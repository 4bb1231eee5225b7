//! `/metrics`: the status in Prometheus's text exposition format (0.0.4).
//!
//! Rendered from the daemon's [`Status`] alone — nothing here reads the
//! repository, so a scrape costs no backend request (the status is kept up
//! to date by runs, restore tests and the periodic checks, `observe.rs`).
//! Counters are typed `counter` and end in `_total`; everything else is a
//! gauge. The series are listed in `spec/logging.md` ("Metrics").

use super::status::{SourceState, Status};

/// One family's samples: label pairs and the value.
type Rows = Vec<(Vec<(&'static str, String)>, f64)>;

#[derive(Clone, Copy)]
enum Type {
    Counter,
    Gauge,
}

#[derive(Default)]
struct Out(String);

impl Out {
    /// A family with its HELP and TYPE lines; left out when it has no sample.
    fn family(&mut self, name: &str, kind: Type, help: &str, rows: Rows) {
        use std::fmt::Write;
        if rows.is_empty() {
            return;
        }
        debug_assert_eq!(
            matches!(kind, Type::Counter),
            name.ends_with("_total"),
            "{name}: counters and only counters end in _total"
        );
        let t = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
        };
        let _ = write!(
            self.0,
            "# HELP {name} {}\n# TYPE {name} {t}\n",
            escape_help(help)
        );
        for (labels, v) in rows {
            self.0.push_str(name);
            if !labels.is_empty() {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(self.0, "{{{}}}", l.join(","));
            }
            let _ = writeln!(self.0, " {}", number(v));
        }
    }

    fn gauge(&mut self, name: &str, help: &str, rows: Rows) {
        self.family(name, Type::Gauge, help, rows)
    }

    fn counter(&mut self, name: &str, help: &str, rows: Rows) {
        self.family(name, Type::Counter, help, rows)
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A HELP text: backslash and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it (`+Inf`, `NaN`, decimals).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Unix time in seconds, with milliseconds.
fn seconds(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// One unlabelled sample.
fn one(v: f64) -> Rows {
    vec![(Vec::new(), v)]
}

/// One unlabelled sample when there is a value.
fn maybe(v: Option<f64>) -> Rows {
    v.map(one).unwrap_or_default()
}

/// Prometheus text exposition of the status.
pub fn metrics(s: &Status) -> String {
    let mut out = Out::default();
    let per_source = |f: &dyn Fn(&SourceState) -> Option<f64>| -> Rows {
        s.sources
            .iter()
            .filter_map(|(n, st)| f(st).map(|v| (vec![("source", n.clone())], v)))
            .collect()
    };
    out.gauge("cairn_up", "1 while the daemon runs.", one(1.0));
    out.gauge(
        "cairn_start_timestamp_seconds",
        "Unix time the daemon started.",
        maybe(s.started.map(seconds)),
    );
    out.gauge(
        "cairn_backup_success",
        "1 if the last backup of the source succeeded, 0 if it failed (absent while never backed up).",
        per_source(&|st| match st.last_result.as_str() {
            "ok" => Some(1.0),
            "failed" => Some(0.0),
            _ => None,
        }),
    );
    out.gauge(
        "cairn_last_success_timestamp_seconds",
        "Unix time of the newest snapshot of the plan in which the source is complete.",
        per_source(&|st| st.last_success.map(seconds)),
    );
    out.gauge(
        "cairn_last_backup_timestamp_seconds",
        "Unix time of the last backup of the source, successful or not.",
        per_source(&|st| st.last_run.map(seconds)),
    );
    out.gauge(
        "cairn_last_backup_duration_seconds",
        "Duration of the daemon's last backup of the source.",
        per_source(&|st| st.duration_ms.map(|d| d as f64 / 1000.0)),
    );
    out.gauge(
        "cairn_last_backup_read_bytes",
        "Bytes read from the source by the daemon's last backup of it.",
        per_source(&|st| st.bytes_read.map(|b| b as f64)),
    );
    out.gauge(
        "cairn_last_backup_new_bytes",
        "New (deduplicated, uncompressed) bytes the daemon's last backup of the source stored.",
        per_source(&|st| st.bytes_new.map(|b| b as f64)),
    );
    out.counter(
        "cairn_runs_total",
        "Backup runs of the daemon (kept across restarts in the state directory).",
        one(s.runs as f64),
    );
    out.counter(
        "cairn_failed_runs_total",
        "Backup runs of the daemon that failed (kept across restarts).",
        one(s.failed_runs as f64),
    );
    out.gauge(
        "cairn_snapshots",
        "Snapshots of the plan in the repository.",
        one(s.snapshots as f64),
    );
    out.gauge(
        "cairn_last_snapshot_timestamp_seconds",
        "Unix time of the plan's newest snapshot.",
        maybe(s.last_snapshot_time.map(seconds)),
    );
    out.counter(
        "cairn_key_unlocks_total",
        "Times this daemon unlocked the repository key (start-up and plan reloads).",
        one(s.key_unlocks as f64),
    );
    storage(&mut out, s);
    restore_tests(&mut out, s);
    wal_archives(&mut out, s);
    out.0
}

/// Each physical source's WAL archive as its server reports it.
fn wal_archives(out: &mut Out, s: &Status) {
    let per = |f: &dyn Fn(&super::archive::ArchiveState) -> Option<f64>| -> Rows {
        s.archives
            .iter()
            .filter_map(|(n, a)| f(a).map(|v| (vec![("source", n.clone())], v)))
            .collect()
    };
    out.gauge(
        "cairn_wal_archive_lag_seconds",
        "How long the oldest WAL file waiting for archive_command has waited (0: none waits).",
        per(&|a| a.lag_seconds.map(|l| l as f64)),
    );
    out.gauge(
        "cairn_wal_archive_ready_files",
        "WAL files waiting for archive_command (.ready files).",
        per(&|a| a.server.as_ref()?.ready_segments.map(|n| n as f64)),
    );
    out.gauge(
        "cairn_wal_archive_failing",
        "1 while the server's last archive_command attempt failed.",
        per(&|a| a.server.as_ref().map(|_| f64::from(u8::from(a.failing)))),
    );
    out.gauge(
        "cairn_wal_last_archived_timestamp_seconds",
        "Unix time the server last archived a WAL file (pg_stat_archiver).",
        per(&|a| a.server.as_ref()?.last_archived_time.map(seconds)),
    );
    out.counter(
        "cairn_wal_archive_failures_total",
        "Failed archive_command runs since the server's statistics were reset (pg_stat_archiver).",
        per(&|a| a.server.as_ref().map(|x| x.failed_count as f64)),
    );
}

fn storage(out: &mut Out, s: &Status) {
    let Some(st) = &s.storage else {
        return;
    };
    out.gauge(
        "cairn_storage_used_bytes",
        "The repository's own size: the sum of its files' sizes as the backend lists them.",
        one(st.used_bytes as f64),
    );
    out.gauge(
        "cairn_storage_files",
        "Files in the repository.",
        one(st.files as f64),
    );
    out.gauge(
        "cairn_storage_measured_timestamp_seconds",
        "Unix time the repository was last listed for its size.",
        maybe(st.measured_at.map(seconds)),
    );
    out.gauge(
        "cairn_storage_quota_bytes",
        "The plan's storage quota.",
        maybe(st.quota_bytes.map(|q| q as f64)),
    );
    if let Some(fs) = &st.filesystem {
        out.gauge(
            "cairn_filesystem_size_bytes",
            "Size of the filesystem that holds the (local) repository.",
            one(fs.total_bytes as f64),
        );
        out.gauge(
            "cairn_filesystem_free_bytes",
            "Space available to cairn on the filesystem that holds the (local) repository.",
            one(fs.free_bytes as f64),
        );
    }
    if let (Some(by), Some(p)) = (&st.measured_by, st.percent) {
        out.gauge(
            "cairn_storage_use_ratio",
            "How full the storage is, as the storage thresholds compare it (0 to 1).",
            vec![(vec![("measured_by", by.clone())], p / 100.0)],
        );
    }
}

fn restore_tests(out: &mut Out, s: &Status) {
    let last = s.last_restore_test.as_ref();
    out.gauge(
        "cairn_restore_test_last_timestamp_seconds",
        "Unix time of the last restore test (the daemon's, or a newer proof in the repository).",
        maybe(last.and_then(|l| l.time).map(seconds)),
    );
    out.gauge(
        "cairn_restore_test_last_outcome",
        "1 for the outcome of the last restore test, 0 for the others.",
        last.filter(|l| !l.outcome.is_empty())
            .map(|l| {
                ["passed", "failed", "skipped"]
                    .iter()
                    .map(|o| {
                        let v = if l.outcome == *o { 1.0 } else { 0.0 };
                        (vec![("outcome", o.to_string())], v)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    );
    out.gauge(
        "cairn_restore_test_skipped_in_a_row",
        "Restore tests skipped since the last one that ran.",
        maybe(last.map(|l| l.skipped_in_a_row as f64)),
    );
    out.gauge(
        "cairn_restore_test_last_success_timestamp_seconds",
        "Unix time of the newest passed proof of any of the plan's snapshots.",
        maybe(
            s.proofs
                .iter()
                .filter(|p| p.passed)
                .map(|p| p.time)
                .max()
                .map(seconds),
        ),
    );
    let c = &s.restore_tests;
    out.counter(
        "cairn_restore_tests_total",
        "Restore tests the daemon ran, by outcome (kept across restarts).",
        [
            ("passed", c.passed),
            ("failed", c.failed),
            ("skipped", c.skipped),
        ]
        .into_iter()
        .map(|(o, n)| (vec![("outcome", o.to_string())], n as f64))
        .collect(),
    );
    let per_snapshot = |f: &dyn Fn(&super::status::ProofState) -> f64| -> Rows {
        s.proofs
            .iter()
            .map(|p| (vec![("snapshot", p.snapshot.clone())], f(p)))
            .collect()
    };
    out.gauge(
        "cairn_proof_passed",
        "1 if the newest proof (restore test) of the snapshot passed, 0 if it failed.",
        per_snapshot(&|p| if p.passed { 1.0 } else { 0.0 }),
    );
    out.gauge(
        "cairn_proof_timestamp_seconds",
        "Unix time of the newest proof (restore test) of the snapshot.",
        per_snapshot(&|p| seconds(p.time)),
    );
}

#[cfg(test)]
mod tests {
    use super::super::status::{ProofState, StorageUse};
    use super::super::LastProof;
    use super::*;

    #[test]
    fn values_and_labels_are_spelled_as_the_format_wants() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1_733_577_600.5), "1733577600.5");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_sample_has_its_type_and_counters_end_in_total() {
        let t: jiff::Timestamp = "2026-11-24T02:00:03.114Z".parse().unwrap();
        let mut s = Status {
            started: Some(t),
            runs: 2,
            storage: Some(StorageUse {
                used_bytes: 10,
                measured_by: Some("quota".into()),
                percent: Some(50.0),
                ..Default::default()
            }),
            last_restore_test: Some(LastProof {
                time: Some(t),
                outcome: "passed".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.sources.insert(
            "we\"ird".into(),
            SourceState {
                last_result: "ok".into(),
                last_success: Some(t),
                ..Default::default()
            },
        );
        s.proofs.push(ProofState {
            snapshot: "3f9c0a12".into(),
            snapshot_time: t,
            time: t,
            passed: true,
            sources: vec![],
            detail: String::new(),
        });
        let text = metrics(&s);
        let mut typed = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                typed.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains_key(name), "no TYPE before {line}");
            }
        }
        assert!(text.contains("cairn_backup_success{source=\"we\\\"ird\"} 1\n"));
        assert!(
            text.contains(
                "cairn_last_success_timestamp_seconds{source=\"we\\\"ird\"} 1795485603.114\n"
            ),
            "{text}"
        );
        assert!(text.contains("cairn_restore_test_last_outcome{outcome=\"passed\"} 1\n"));
        assert!(text.contains("cairn_restore_test_last_outcome{outcome=\"failed\"} 0\n"));
        assert!(text.contains("cairn_proof_passed{snapshot=\"3f9c0a12\"} 1\n"));
        assert!(text.contains("cairn_storage_use_ratio{measured_by=\"quota\"} 0.5\n"));
        assert!(text.contains("# TYPE cairn_runs_total counter\ncairn_runs_total 2\n"));
        assert!(
            !text.contains("cairn_last_backup_duration_seconds"),
            "unknown: left out"
        );
    }
}
