//! Failing sources don't freeze the repository, and snapshots keep their
//! plan (issue 27, item 3), through the real binary: per-source retention
//! (`forget --plan` and the daemon), restore tests and missed-backup checks
//! that look at each source, and plans found from any directory or by name.
//!
//! Snapshots at chosen times and with chosen source statuses are copies of
//! a real snapshot of the plan, written through the library (the CLI cannot
//! back up in the past, and as root no file is unreadable).

use crate::common::daemon::{Served, TOKEN};
use crate::common::{code_and_stderr, make_sample_tree, Env};
use cairn::repo::{Snapshot, SnapshotId, SourceStatus};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn open(env: &Env) -> cairn::Repository {
    cairn::Repository::open(
        cairn::backend::open(env.repo.to_str().unwrap()).unwrap(),
        &cairn::crypto::Secret::Password("correct horse".into()),
        Some(env.cache.clone()),
    )
    .unwrap()
}

/// A plan file at `path`: this environment's repository (absolute paths,
/// so the file can move), then `body`.
fn plan_at(env: &Env, path: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = format!(
        "repository \"{}\" {{\n    password-file \"{}\"\n    cache-dir \"{}\"\n}}\n{body}",
        env.repo.display(),
        env.password_file.display(),
        env.cache.display()
    );
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// `cairn ARGS` (repository and key from the plan) run in directory `dir`.
fn run_in(env: &Env, dir: &Path, args: &[&str]) -> std::process::Output {
    env.plan_cmd().current_dir(dir).args(args).output().unwrap()
}

/// A files source `etc` and a command source `flaky` that works while the
/// file `marker` exists.
fn two_sources(env: &Env, marker: &Path, extra: &str) -> String {
    let etc = env.path("etc");
    make_sample_tree(&etc);
    std::fs::write(marker, "yes").unwrap();
    format!(
        "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"flaky\" kind=\"command\" {{\n    command \"cat\" \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\n{extra}",
        etc.display(),
        marker.display()
    )
}

/// The one snapshot of the repository, read through the library.
fn only_snapshot(env: &Env) -> (SnapshotId, Snapshot) {
    let mut all = open(env).snapshots().unwrap();
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// Copies of `base` at `time` with the given status per source (a failed
/// source stores nothing); returns the new ids in order.
fn copies(env: &Env, base: &Snapshot, items: &[(String, &[(&str, SourceStatus)])]) -> Vec<String> {
    let repo = open(env);
    items
        .iter()
        .map(|(time, statuses)| {
            let mut s = base.clone();
            s.time = time.parse().unwrap();
            for (name, status) in statuses.iter() {
                let r = s.sources.iter_mut().find(|r| r.name == *name).unwrap();
                r.status = *status;
                if *status == SourceStatus::Failed {
                    r.tree.clear();
                    r.size = 0;
                    r.errors = vec!["exit status: 1".into()];
                }
            }
            repo.write_sealed::<SnapshotId>(&s).unwrap().to_hex()
        })
        .collect()
}

/// Ten days of nightly snapshots of a plan whose `flaky` source failed
/// from day 4 on and whose `etc` source was incomplete from day 8 on;
/// returns the ids, day 1 first.
fn ten_bad_days(env: &Env, plan: &Path) -> Vec<String> {
    let out = env.run_plan(&["snapshot", "--plan", plan.to_str().unwrap()]);
    assert!(out.status.success(), "{}", code_and_stderr(&out).1);
    let (id, base) = only_snapshot(env);
    use SourceStatus::{Complete as C, Failed as F, Incomplete as I};
    let items: Vec<(String, &[(&str, SourceStatus)])> = (1..=10)
        .map(|day| {
            let st: &[(&str, SourceStatus)] = match day {
                1..=3 => &[("etc", C), ("flaky", C)],
                4..=7 => &[("etc", C), ("flaky", F)],
                _ => &[("etc", I), ("flaky", F)],
            };
            (format!("2026-03-{day:02}T02:00:00Z"), st)
        })
        .collect();
    let ids = copies(env, &base, &items);
    env.ok(&["forget", &id.to_hex()]);
    ids
}

/// `keep-daily 3` per source: `etc` keeps days 10, 9, 8 (incomplete, the
/// only copies of their days) and day 7, its newest complete copy;
/// `flaky` keeps its last three days, 3, 2, 1. Days 4–6 go, each with the
/// reason per source. Before, the rules saw only days 1–3 (complete) and
/// nothing newer was ever removed.
#[test]
fn a_failing_source_does_not_freeze_retention() {
    let env = Env::init();
    let marker = env.path("marker");
    let plan = plan_at(
        &env,
        &env.path("plan.kdl"),
        &two_sources(
            &env,
            &marker,
            "retention {\n    keep-daily 3\n    critical-free \"0%\"\n}\n",
        ),
    );
    let ids = ten_bad_days(&env, &plan);
    let p = plan.to_str().unwrap();
    let out = env.run_plan(&["forget", "--plan", p, "--dry-run", "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 10, "{v:#}");
    let by_day = |day: usize| &snaps[10 - day];
    let kept: Vec<usize> = (1..=10).filter(|d| by_day(*d)["keep"] == true).collect();
    assert_eq!(kept, [1, 2, 3, 7, 8, 9, 10], "{v:#}");
    for day in 1..=10 {
        assert_eq!(by_day(day)["id"], ids[day - 1]);
    }
    assert_eq!(
        by_day(10)["reasons"],
        serde_json::json!(["daily 1/3 (2026-03-10) for etc"])
    );
    assert_eq!(
        by_day(7)["reasons"],
        serde_json::json!(["newest complete copy of etc"])
    );
    assert_eq!(
        by_day(3)["reasons"],
        serde_json::json!(["daily 1/3 (2026-03-03) for flaky"])
    );
    assert_eq!(
        by_day(5)["reasons"],
        serde_json::json!(["daily 3/3 used for etc"])
    );
    assert_eq!(by_day(5)["sources"].as_array().unwrap().len(), 1);
    assert_eq!(by_day(5)["sources"][0]["source"], "etc");

    let text = env.run_plan(&["forget", "--plan", p, "--dry-run"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("keep-daily 3") && text.contains("would remove 3 snapshot(s)"),
        "{text}"
    );
    assert_eq!(env.snapshot_ids().len(), 10, "a dry run removes nothing");

    let out = env.run_plan(&["forget", "--plan", p]);
    assert_eq!(code_and_stderr(&out).0, 0, "{}", code_and_stderr(&out).1);
    let mut left = env.snapshot_ids();
    left.sort();
    let mut want: Vec<String> = [1, 2, 3, 7, 8, 9, 10]
        .iter()
        .map(|d| ids[d - 1].clone())
        .collect();
    want.sort();
    assert_eq!(left, want);
}

/// Wait (at most `secs`) for `needle` in the daemon's log.
fn wait_log(d: &Served, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = d.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The daemon applies the same per-source retention (at start-up, as its
/// rules are new to it), logging each removal with the source.
#[test]
fn the_daemon_applies_retention_per_source() {
    let env = Env::init();
    let marker = env.path("marker");
    let plan = plan_at(
        &env,
        &env.path("plan.kdl"),
        &two_sources(
            &env,
            &marker,
            "retention {\n    keep-daily 3\n    critical-free \"0%\"\n}\n",
        ),
    );
    let ids = ten_bad_days(&env, &plan);
    let d = Served::start(&env, &plan);
    wait_log(&d, "retention applied", 60);
    let (_, log) = d.stop();
    assert!(log.contains("daily 3/3 used for etc"), "{log}");
    let mut left = env.snapshot_ids();
    left.sort();
    let mut want: Vec<String> = [1, 2, 3, 7, 8, 9, 10]
        .iter()
        .map(|d| ids[d - 1].clone())
        .collect();
    want.sort();
    assert_eq!(left, want, "{log}");
}

/// A source whose last complete copy is older than `missed-backup` is
/// alerted by name while the other source, backed up a moment ago, is not.
#[test]
fn a_missed_backup_is_checked_per_source() {
    let env = Env::init();
    let marker = env.path("marker");
    let plan = plan_at(
        &env,
        &env.path("plan.kdl"),
        &two_sources(&env, &marker, "alerts {\n    missed-backup \"1h\"\n}\n"),
    );
    let p = plan.to_str().unwrap();
    let out = env.run_plan(&["snapshot", "--plan", p]);
    assert!(out.status.success(), "{}", code_and_stderr(&out).1);
    let (id, base) = only_snapshot(&env);
    let two_hours_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2)).to_string();
    copies(&env, &base, &[(two_hours_ago, &[][..])]);
    env.ok(&["forget", &id.to_hex()]);
    std::fs::remove_file(&marker).unwrap();
    let out = env.run_plan(&["snapshot", "--plan", p]);
    assert_eq!(code_and_stderr(&out).0, 3, "flaky fails: incomplete");

    let d = Served::start(&env, &plan);
    wait_log(&d, "missed backup: flaky, none for 2h", 60);
    // A second round of checks, to be sure etc is not alerted either.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, log) = d.stop();
    assert!(!log.contains("missed backup: etc"), "{log}");
}

/// A plan whose files source works and whose command source fails every
/// run has no complete snapshot: the scheduled restore test tests the
/// complete source instead of skipping the plan.
#[test]
fn restore_tests_take_snapshots_with_a_complete_source() {
    let env = Env::init();
    let etc = env.path("etc");
    make_sample_tree(&etc);
    let plan = plan_at(
        &env,
        &env.path("plan.kdl"),
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"broken\" kind=\"command\" {{\n    command \"false\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nverify {{\n    cron \"*/2 * * * * *\"\n}}\n",
            etc.display()
        ),
    );
    let out = env.run_plan(&["snapshot", "--plan", plan.to_str().unwrap()]);
    assert_eq!(code_and_stderr(&out).0, 3, "{}", code_and_stderr(&out).1);
    let d = Served::start(&env, &plan);
    wait_log(&d, "outcome=\"passed\"", 120);
    let (_, log) = d.stop();
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["complete"], false, "{snaps}");
    assert_eq!(snaps[0]["proof"]["passed"], true, "{snaps}\n{log}");
}

/// A plan run from directory A records its identity (the canonical path
/// of its file): from directory B, `restore --plan` lists its snapshot and
/// `forget --plan` decides over it. A snapshot of an older cairn, which
/// recorded the path as typed, is still found where that path resolves.
#[test]
fn snapshots_of_a_plan_are_found_from_another_directory() {
    let env = Env::init();
    let a = env.path("a");
    let b = env.path("b");
    std::fs::create_dir_all(&b).unwrap();
    let etc = env.path("etc");
    make_sample_tree(&etc);
    let plan = plan_at(
        &env,
        &a.join("plan.kdl"),
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\napi {{\n    listen \"127.0.0.1:8420\"\n    token \"tests\" hash=\"blake3:{}\"\n}}\n",
            etc.display(),
            blake3::hash(TOKEN.as_bytes()).to_hex()
        ),
    );
    let out = run_in(&env, &a, &["snapshot", "--plan", "plan.kdl"]);
    assert!(out.status.success(), "{}", code_and_stderr(&out).1);
    let canonical = std::fs::canonicalize(&plan).unwrap();

    let points = |dir: &Path, file: &str| -> Vec<serde_json::Value> {
        let out = run_in(&env, dir, &["restore", "--plan", file, "--json"]);
        assert_eq!(code_and_stderr(&out).0, 2, "{}", code_and_stderr(&out).1);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(points(&b, "../a/plan.kdl").len(), 1);
    let recorded = only_snapshot(&env).1.plan;
    assert_eq!(recorded.as_deref(), canonical.to_str());
    let out = run_in(&env, &b, &["restore", "--plan", "../a/plan.kdl"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("no snapshot was made"), "{text}");

    let out = run_in(
        &env,
        &b,
        &["forget", "--plan", "../a/plan.kdl", "--dry-run", "--json"],
    );
    assert_eq!(code_and_stderr(&out).0, 0, "{}", code_and_stderr(&out).1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["plan"], canonical.to_str().unwrap());
    // `snapshots --json` says which plan made each snapshot.
    let v = env.json(&["snapshots"]);
    assert_eq!(v[0]["plan"], canonical.to_str().unwrap(), "{v}");

    // The daemon, started in B with the plan's path from there, counts it.
    let d = Served::start_from(&env, Path::new("../a/plan.kdl"), &b, &env.path("state"));
    let status = d.status();
    assert_eq!(status["snapshots"], 1, "{status}");
    d.stop();

    // Recorded by an older cairn: `plan.kdl` as typed in directory A.
    let (_, base) = only_snapshot(&env);
    let mut old = base.clone();
    old.plan = Some("plan.kdl".into());
    old.time = "2026-01-01T02:00:00Z".parse().unwrap();
    open(&env).write_sealed::<SnapshotId>(&old).unwrap();
    assert_eq!(points(&a, "plan.kdl").len(), 2, "found where it resolves");
    assert_eq!(points(&b, "../a/plan.kdl").len(), 1);
}

/// A plan that declares `name` records it: moved to another file, the
/// plan still finds its snapshots.
#[test]
fn a_named_plan_keeps_its_snapshots_when_moved() {
    let env = Env::init();
    let etc = env.path("etc");
    make_sample_tree(&etc);
    let plan = plan_at(
        &env,
        &env.path("a/plan.kdl"),
        &format!(
            "name \"billing\"\nsource \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\n",
            etc.display()
        ),
    );
    let out = env.run_plan(&["snapshot", "--plan", plan.to_str().unwrap()]);
    assert!(out.status.success(), "{}", code_and_stderr(&out).1);
    assert_eq!(only_snapshot(&env).1.plan.as_deref(), Some("billing"));

    let moved = env.path("c/other.kdl");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&plan, &moved).unwrap();
    let out = env.run_plan(&["restore", "--plan", moved.to_str().unwrap(), "--json"]);
    assert_eq!(code_and_stderr(&out).0, 2, "{}", code_and_stderr(&out).1);
    let points: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(points.as_array().unwrap().len(), 1, "{points}");
    let out = env.run_plan(&[
        "forget",
        "--plan",
        moved.to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plan"], "billing");
    assert_eq!(v["snapshots"][0]["keep"], true, "{v}");

    // `plan check --json` shows the name; a bad name is a plan problem.
    let out = env.run_plan(&["plan", "check", moved.to_str().unwrap(), "--json"]);
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["name"], "billing");
    let bad = plan_at(&env, &env.path("bad.kdl"), "name \"a/b\"\n");
    let (code, err) = code_and_stderr(&env.run_plan(&["plan", "check", bad.to_str().unwrap()]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan name \"a/b\" is not allowed"), "{err}");
}
