//! `/status` and `/metrics` as a deployment sees them (issue 27, "Metrics
//! alarm falsely"): `cairn serve` at its default verbosity, restarted from
//! another directory; the text checked by Prometheus's own parser.

use crate::common::daemon::*;
use crate::common::*;
use std::path::{Path, PathBuf};

/// A plan with a files source `etc`, a command source `flaky` that fails
/// once `marker` is gone, a schedule that does not fire in a test,
/// retention that keeps every snapshot a test makes, and storage measured
/// against a quota the tests never approach (so however full this
/// machine's disk is, no snapshot is removed to make room).
fn plan_with_marker(env: &Env, marker: &Path) -> PathBuf {
    let files = env.path("etc");
    make_sample_tree(&files);
    std::fs::write(marker, "yes").unwrap();
    plan(
        env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"flaky\" kind=\"command\" {{\n    command \"cat\" \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nretention {{\n    keep-last 5\n}}\nalerts {{\n    quota \"1GiB\"\n}}\n",
            files.display(),
            marker.display()
        ),
    )
}

/// Bytes and number of the repository's files, as found on disk (leftovers
/// of interrupted writes in `tmp/` aside).
fn repository_files(repo: &Path) -> (u64, u64) {
    fn walk(dir: &Path, top: bool, acc: &mut (u64, u64)) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                if !(top && e.file_name() == "tmp") {
                    walk(&e.path(), false, acc);
                }
            } else {
                acc.0 += e.metadata().unwrap().len();
                acc.1 += 1;
            }
        }
    }
    let mut acc = (0, 0);
    walk(repo, true, &mut acc);
    acc
}

/// Unix seconds with milliseconds, as `/metrics` writes times.
fn seconds(rfc3339: &serde_json::Value) -> f64 {
    let t: jiff::Timestamp = rfc3339.as_str().unwrap().parse().unwrap();
    t.as_millisecond() as f64 / 1000.0
}

fn ok_run(d: &Served) -> String {
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["snapshot"].as_str().unwrap().to_string()
}

/// After a restart with a new state directory, from another directory, the
/// daemon knows from the repository alone each source's last success, the
/// proofs and the repository's size — not `cairn_backup_success 0` for a
/// source whose complete snapshot is minutes old.
#[test]
fn after_a_restart_status_and_metrics_come_from_the_repository() {
    let _serial = serial();
    let env = Env::init();
    let p = plan_with_marker(&env, &env.path("healthy"));
    let d = Served::start(&env, &p);
    let id = ok_run(&d);
    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["outcome"], "passed", "{r}");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");

    let snaps = env.json(&["snapshots"]);
    let snap = &snaps[0];
    assert_eq!(snap["short_id"], id.as_str());
    let proof_time = &snap["proof"]["time"];
    assert_eq!(snap["proof"]["passed"], true, "{snap}");
    let (bytes, files) = repository_files(&env.repo);

    let d = Served::start_from(&env, &p, &env.path("elsewhere"), &env.path("new-state"));
    let m = d.checked_metrics();
    for source in ["etc", "flaky"] {
        let l = format!("{{source=\"{source}\"}}");
        assert_eq!(m.get(&format!("cairn_backup_success{l}")), 1.0, "{source}");
        assert_eq!(
            m.get(&format!("cairn_last_success_timestamp_seconds{l}")),
            seconds(&snap["time"]),
            "{source}: the snapshot's time"
        );
    }
    assert_eq!(
        m.get("cairn_restore_test_last_timestamp_seconds"),
        seconds(proof_time)
    );
    assert_eq!(
        m.get("cairn_restore_test_last_outcome{outcome=\"passed\"}"),
        1.0
    );
    assert_eq!(
        m.get("cairn_restore_test_last_outcome{outcome=\"failed\"}"),
        0.0
    );
    assert_eq!(
        m.get("cairn_restore_test_last_success_timestamp_seconds"),
        seconds(proof_time)
    );
    assert_eq!(
        m.get(&format!("cairn_proof_passed{{snapshot=\"{id}\"}}")),
        1.0
    );
    assert_eq!(
        m.get(&format!(
            "cairn_proof_timestamp_seconds{{snapshot=\"{id}\"}}"
        )),
        seconds(proof_time)
    );
    assert_eq!(
        m.get("cairn_storage_used_bytes"),
        bytes as f64,
        "the repository's files"
    );
    assert_eq!(m.get("cairn_storage_files"), files as f64);
    assert_eq!(m.get("cairn_storage_quota_bytes"), (1u64 << 30) as f64);
    let ratio = m.get("cairn_storage_use_ratio{measured_by=\"quota\"}");
    assert!(
        (ratio - bytes as f64 / (1u64 << 30) as f64).abs() < 1e-12,
        "{ratio}"
    );
    let (free, size) = (
        m.get("cairn_filesystem_free_bytes"),
        m.get("cairn_filesystem_size_bytes"),
    );
    assert!(0.0 < free && free <= size, "{}", m.text);
    assert!(
        size > bytes as f64,
        "the filesystem is not the repository: {}",
        m.text
    );
    assert_eq!(m.get("cairn_snapshots"), 1.0);
    assert_eq!(
        m.get("cairn_last_snapshot_timestamp_seconds"),
        seconds(&snap["time"])
    );

    let s = d.status();
    let etc = &s["sources"]["etc"];
    assert_eq!(etc["last_result"], "ok", "{s}");
    assert_eq!(etc["last_success"], snap["time"], "{s}");
    assert_eq!(etc["last_success_snapshot"], id.as_str(), "{s}");
    assert_eq!(s["last_restore_test"]["outcome"], "passed", "{s}");
    assert_eq!(s["last_restore_test"]["time"], *proof_time, "{s}");
    assert_eq!(s["last_restore_test"]["snapshot"], id.as_str(), "{s}");
    assert_eq!(s["proofs"][0]["snapshot"], id.as_str(), "{s}");
    assert_eq!(s["proofs"][0]["passed"], true, "{s}");
    assert_eq!(s["proofs"][0]["snapshot_time"], snap["time"], "{s}");
    assert_eq!(s["storage"]["used_bytes"], bytes, "{s}");
    assert_eq!(s["storage"]["measured_by"], "quota", "{s}");
    assert_eq!(s["storage"]["quota_bytes"], 1u64 << 30, "{s}");
    assert!(s["storage"]["filesystem"]["free_bytes"].is_u64(), "{s}");
    assert_eq!(s["last_snapshot"], id.as_str(), "{s}");
    assert_eq!(s["snapshots"], 1, "{s}");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// What only the daemon saw — run and restore-test counts, a source's last
/// failure and the sizes of its last run — is in `/status` and `/metrics`
/// again after a restart (the state directory's `state.json`); counters
/// are typed as counters; the repository's size follows each run.
#[test]
fn status_survives_a_restart_and_counters_are_counters() {
    let _serial = serial();
    let env = Env::init();
    let marker = env.path("healthy");
    let p = plan_with_marker(&env, &marker);
    let d = Served::start(&env, &p);
    let first = ok_run(&d);
    std::fs::remove_file(&marker).unwrap();
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 500, "an incomplete run is an error: {body}");
    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    // The storage was measured again after the runs (not at start-up only).
    let m = d.checked_metrics();
    assert_eq!(
        m.get("cairn_storage_used_bytes"),
        repository_files(&env.repo).0 as f64
    );
    let before = d.status();
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");

    let d = Served::start_from(&env, &p, &env.path("elsewhere"), &env.path("state"));
    let after = d.status();
    for key in ["runs", "failed_runs", "restore_tests", "last_restore_test"] {
        assert_eq!(before[key], after[key], "{key}: {before}\n{after}");
    }
    for source in ["etc", "flaky"] {
        for key in [
            "last_result",
            "last_run",
            "last_success",
            "last_error",
            "bytes_read",
            "bytes_new",
            "duration_ms",
        ] {
            let (b, a) = (
                &before["sources"][source][key],
                &after["sources"][source][key],
            );
            assert_eq!(b, a, "{source}.{key}: {before}\n{after}");
        }
    }
    assert_eq!(after["runs"], 2, "{after}");
    assert_eq!(after["failed_runs"], 1, "{after}");
    assert_eq!(after["restore_tests"]["passed"], 1, "{after}");
    let flaky = &after["sources"]["flaky"];
    assert_eq!(flaky["last_result"], "failed", "{after}");
    assert!(flaky["last_error"].is_string(), "{after}");
    let snaps = env.json(&["snapshots"]);
    let first_snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["short_id"] == first.as_str())
        .unwrap_or_else(|| panic!("{first} not in {snaps}"));
    assert_eq!(flaky["last_success"], first_snap["time"], "{after}");
    assert!(after["sources"]["etc"]["bytes_read"].as_u64().unwrap() > 0);

    let m = d.checked_metrics();
    assert!(
        m.text.contains("# TYPE cairn_runs_total counter\n"),
        "{}",
        m.text
    );
    assert_eq!(m.get("cairn_runs_total"), 2.0);
    assert_eq!(m.get("cairn_failed_runs_total"), 1.0);
    assert_eq!(m.get("cairn_restore_tests_total{outcome=\"passed\"}"), 1.0);
    assert_eq!(m.get("cairn_restore_tests_total{outcome=\"skipped\"}"), 0.0);
    assert_eq!(m.get("cairn_backup_success{source=\"etc\"}"), 1.0);
    assert_eq!(m.get("cairn_backup_success{source=\"flaky\"}"), 0.0);
    assert_eq!(
        m.get("cairn_last_success_timestamp_seconds{source=\"flaky\"}"),
        seconds(&first_snap["time"])
    );
    assert!(m.has("cairn_last_backup_read_bytes{source=\"etc\"}"));
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["runs"], 2, "{state}");
}
