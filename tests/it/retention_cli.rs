//! Retention and corruption marks through the real binary (issue 27):
//! restic's durations (`1m` is a month), refused minute forms, tag groups
//! and unlimited counts, the rule and counter per snapshot in `forget
//! --dry-run`, corrupted snapshots passed over by the rules and by
//! `restore latest`.
//!
//! Snapshots at chosen times are copies of one real snapshot, written
//! through the library with another time and tags (the CLI has no way to
//! back up in the past); a corruption mark is a failed proof, as a failed
//! restore test records it.

use crate::common::{code_and_stderr, Env};
use cairn::repo::{Proof, Snapshot, SnapshotId, FORMAT_VERSION};

fn open(env: &Env) -> cairn::Repository {
    cairn::Repository::open(
        cairn::backend::open(env.repo.to_str().unwrap()).unwrap(),
        &cairn::crypto::Secret::Password("correct horse".into()),
        Some(env.cache.clone()),
    )
    .unwrap()
}

/// A repository holding one snapshot per `(time, tags)`, in that order,
/// all of the same small directory; returns their ids.
fn history(env: &Env, snaps: &[(&str, &[&str])]) -> Vec<String> {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "content").unwrap();
    let original = env.snapshot(&[&src]);
    let repo = open(env);
    let base: Snapshot = repo
        .read_sealed(SnapshotId::parse(&original).unwrap())
        .unwrap();
    let ids = snaps
        .iter()
        .map(|(time, tags)| {
            let mut s = base.clone();
            s.time = time.parse().unwrap();
            s.tags = tags.iter().map(|t| t.to_string()).collect();
            repo.write_sealed::<SnapshotId>(&s).unwrap().to_hex()
        })
        .collect();
    drop(repo);
    env.ok(&["forget", &original]);
    ids
}

/// Mark `id` corrupted the way a failed restore test does.
fn mark_corrupted(env: &Env, id: &str, detail: &str) {
    let repo = open(env);
    repo.record_proof(&Proof {
        version: FORMAT_VERSION,
        snapshot: SnapshotId::parse(id).unwrap(),
        time: jiff::Timestamp::now(),
        passed: false,
        sources: vec!["files".into()],
        detail: detail.into(),
        host: "test".into(),
    })
    .unwrap();
}

/// `forget ARGS --dry-run --json`: every decision of the (single) group.
fn decisions(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["forget", "--dry-run"];
    a.extend_from_slice(args);
    let out = env.json(&a);
    let groups = out["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{out}");
    groups[0]["decisions"].as_array().unwrap().clone()
}

fn kept(decisions: &[serde_json::Value]) -> Vec<String> {
    decisions
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// One snapshot a day at 02:00 from `from` to `to`, no tags.
fn days(from: jiff::civil::Date, to: jiff::civil::Date) -> Vec<String> {
    let mut out = Vec::new();
    let mut d = from;
    while d <= to {
        out.push(format!("{d}T02:00:00Z"));
        d = d.tomorrow().unwrap();
    }
    out
}

/// `--keep-within 1m` is restic's one month, not one minute: from the
/// newest (Mar 15 02:00) back to Feb 15 02:00, exclusive — 28 daily
/// snapshots of 43.
#[test]
fn keep_within_1m_keeps_a_month() {
    let env = Env::init();
    let times = days(
        jiff::civil::date(2026, 2, 1),
        jiff::civil::date(2026, 3, 15),
    );
    let snaps: Vec<(&str, &[&str])> = times.iter().map(|t| (t.as_str(), &[][..])).collect();
    let ids = history(&env, &snaps);
    let d = decisions(&env, &["--keep-within", "1m"]);
    let k = kept(&d);
    assert_eq!(k.len(), 28, "{d:#?}");
    assert_eq!(k.last().unwrap(), &ids[15], "Feb 16 is the oldest kept");
    assert_eq!(d[0]["reasons"][0], "within 1m of newest");
    assert_eq!(d[0]["matches"][0]["rule"], "within");
    assert_eq!(d[0]["matches"][0]["within"], "1m");
    assert_eq!(
        d[28]["reasons"][0],
        "within 1m: not after 2026-02-15 02:00:00"
    );

    env.ok(&["forget", "--keep-within", "1m"]);
    assert_eq!(env.snapshot_ids().len(), 28);
}

/// Forms that read as minutes (or anything else restic would not accept)
/// are refused with exit 2 and the accepted syntax, on the command line
/// and in a plan.
#[test]
fn minute_forms_are_refused() {
    let env = Env::init();
    history(&env, &[("2026-03-01T02:00:00Z", &[])]);
    for (value, says) in [
        ("30min", "minutes or seconds"),
        ("90s", "minutes or seconds"),
        ("5M", "minutes or seconds"),
        ("1h30m", "no minutes"),
        ("1month", "write months as `m`"),
    ] {
        for flag in ["--keep-within", "--keep-within-daily"] {
            let (code, err) = code_and_stderr(&env.run(&["forget", flag, value]));
            assert_eq!(code, 2, "{flag} {value}: {err}");
            assert!(err.contains(flag) && err.contains(says), "{err}");
            assert!(
                err.contains("hint: retention durations are restic's")
                    && err.contains("m (calendar months)"),
                "{err}"
            );
        }
    }
    assert_eq!(env.snapshot_ids().len(), 1, "nothing was removed");

    let plan = env.write_plan(
        "source \"etc\" kind=\"files\" {\n    path \"/etc\"\n}\nretention {\n    keep-within \"90min\"\n    keep-within-weekly \"2h1m\"\n}\n",
    );
    let out = env.run_plan(&["plan", "check", plan.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`keep-within`: \"90min\" is not a retention duration")
            && err.contains(
                "`keep-within-weekly`: \"2h1m\" is not a retention duration: `m` after `h`"
            ),
        "{err}"
    );
}

/// A count that is neither a number nor `unlimited` is refused with exit 2.
#[test]
fn bad_counts_and_tag_groups_are_refused() {
    let env = Env::init();
    history(&env, &[("2026-03-01T02:00:00Z", &[])]);
    for args in [
        ["--keep-daily", "-2"],
        ["--keep-daily", "seven"],
        ["--keep-tag", "a,,b"],
    ] {
        let (code, err) = code_and_stderr(&env.run(&[&["forget"], &args[..]].concat()));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(args[0]) && err.contains("hint:"), "{err}");
    }
}

/// `--keep-tag a,b` keeps snapshots with both tags; repeating the flag
/// keeps snapshots matching either group; `unlimited` keeps every day and,
/// its count never used up, the oldest snapshot too; the dry run names the
/// rule and counter per snapshot.
#[test]
fn tag_groups_unlimited_counts_and_counters() {
    let env = Env::init();
    let ids = history(
        &env,
        &[
            ("2026-03-01T02:00:00Z", &["a"]),
            ("2026-03-01T03:00:00Z", &["a", "b"]),
            ("2026-03-02T02:00:00Z", &["c"]),
            ("2026-03-03T02:00:00Z", &["b"]),
            ("2026-03-03T03:00:00Z", &[]),
        ],
    );
    let d = decisions(&env, &["--keep-tag", "a,b"]);
    assert_eq!(kept(&d), [ids[1].clone()]);
    assert_eq!(d[3]["reasons"][0], "has tags a,b");
    assert_eq!(d[3]["matches"][0]["tags"], serde_json::json!(["a", "b"]));
    let d = decisions(&env, &["--keep-tag", "a,b", "--keep-tag", "c"]);
    assert_eq!(kept(&d), [ids[2].clone(), ids[1].clone()]);

    let d = decisions(&env, &["--keep-daily", "unlimited"]);
    assert_eq!(
        kept(&d),
        [
            ids[4].clone(),
            ids[2].clone(),
            ids[1].clone(),
            ids[0].clone()
        ]
    );
    assert_eq!(d[0]["reasons"][0], "daily 1/unlimited (2026-03-03)");
    assert_eq!(d[0]["matches"][0]["of"], "unlimited");
    assert_eq!(d[4]["reasons"][0], "oldest daily 4/unlimited (2026-03-01)");

    let out = env.ok(&[
        "forget",
        "--dry-run",
        "--keep-daily",
        "7",
        "--keep-last",
        "1",
    ]);
    assert!(out.contains("policy: keep-last 1, keep-daily 7"), "{out}");
    for line in [
        format!(
            "keep   {} 2026-03-03 03:00:00  last 1/1; daily 1/7 (2026-03-03)",
            &ids[4][..8]
        ),
        format!(
            "remove {} 2026-03-03 02:00:00  last 1/1 used; daily: 2026-03-03 already kept",
            &ids[3][..8]
        ),
        format!(
            "keep   {} 2026-03-01 03:00:00  daily 3/7 (2026-03-01)",
            &ids[1][..8]
        ),
        format!(
            "keep   {} 2026-03-01 02:00:00  oldest daily 4/7 (2026-03-01)",
            &ids[0][..8]
        ),
    ] {
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }
    assert!(out.contains("would remove 1 snapshot(s)"), "{out}");
}

/// A corrupted snapshot is never the one kept for its day: the day keeps
/// its newest good snapshot, the corrupted one is kept and says why.
#[test]
fn corrupted_snapshot_is_not_kept_for_its_day() {
    let env = Env::init();
    let ids = history(
        &env,
        &[
            ("2026-03-13T08:00:00Z", &[]),
            ("2026-03-14T08:00:00Z", &[]),
            ("2026-03-14T20:00:00Z", &[]),
        ],
    );
    mark_corrupted(&env, &ids[2], "table t: checksum differs");
    let d = decisions(&env, &["--keep-daily", "1"]);
    assert_eq!(d[0]["id"], ids[2].as_str());
    assert_eq!(d[0]["keep"], true);
    assert_eq!(d[0]["corrupted"], "table t: checksum differs");
    assert_eq!(d[0]["matches"], serde_json::json!([]));
    assert!(
        d[0]["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("corrupted (its restore test failed: table t: checksum differs)"),
        "{d:#?}"
    );
    assert_eq!(d[1]["id"], ids[1].as_str());
    assert_eq!(
        d[1]["reasons"],
        serde_json::json!(["daily 1/1 (2026-03-14)"])
    );
    assert_eq!(d[2]["keep"], false);

    env.ok(&["forget", "--keep-daily", "1"]);
    let mut left = env.snapshot_ids();
    left.sort();
    let mut expected = vec![ids[1].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(left, expected);
}

/// `restore latest` passes over a corrupted newest snapshot (saying so on
/// stderr) unless `--force`; with nothing but corrupted snapshots it fails.
#[test]
fn restore_latest_skips_a_corrupted_snapshot() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "good").unwrap();
    let good = env.snapshot(&[&src]);
    std::fs::write(src.join("f"), "bad").unwrap();
    let bad = env.snapshot(&[&src]);
    mark_corrupted(&env, &bad, "files: content differs");

    let restored = |target: &std::path::Path| {
        std::fs::read_to_string(crate::common::restored(target, &src).join("f")).unwrap()
    };
    let target = env.path("t1");
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "skipping snapshot {}: marked corrupted by its restore test (files: content differs); --force takes it",
            &bad[..8]
        )),
        "{err}"
    );
    assert_eq!(restored(&target), "good");

    let target = env.path("t2");
    let out = env.run(&[
        "restore",
        "latest",
        "--force",
        "--target",
        target.to_str().unwrap(),
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("skipping"), "{err}");
    assert_eq!(restored(&target), "bad");

    mark_corrupted(&env, &good, "files: content differs");
    let target = env.path("t3");
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no snapshot to restore: all 2 are marked corrupted")
            && err.contains("hint: --force"),
        "{err}"
    );
}

/// The plan's retention node takes the same rules: `unlimited`/-1 counts,
/// `keep-within-<period>`, tag groups; `plan check --json` shows them.
#[test]
fn plan_retention_takes_the_new_rules() {
    let env = Env::init();
    let plan = env.write_plan(
        "source \"etc\" kind=\"files\" {\n    path \"/etc\"\n}\nretention {\n    keep-daily \"unlimited\"\n    keep-weekly -1\n    keep-within \"1y2m\"\n    keep-within-daily \"2w\"\n    keep-tag \"a,b\" \"c\"\n    keep-tag \"\"\n}\n",
    );
    let out = env
        .plan_cmd()
        .args(["plan", "check", plan.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &p["retention"];
    assert_eq!(r["keep-daily"], "unlimited");
    assert_eq!(r["keep-weekly"], "unlimited");
    assert_eq!(r["keep-within"], "1y2m");
    assert_eq!(r["keep-within-daily"], "14d");
    assert_eq!(r["keep-within-hourly"], serde_json::Value::Null);
    assert_eq!(r["keep-tags"], serde_json::json!([["a", "b"], ["c"], []]));
}
