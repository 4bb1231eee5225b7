//! Archived WAL whose stored bytes rot: a lost segment cuts the ranges
//! that cross it, a lost backup history file cuts none (issues 26 and 28).

use crate::common::*;
use crate::postgres_pitr::{
    commit_time, current_wal_file, files_under, json, marked_base_backup, switch_and_wait, time_of,
    PgEnv,
};

/// Issue 26: a segment lost from the archive is a `check` error naming it
/// and the snapshot whose range it cuts; `snapshots` ends the range at the
/// last transaction before it; `restore --at` past that end is refused
/// before anything is written; `--at latest` recovers to it; and a
/// recovery that fails after unpacking (a segment's data lost) leaves the
/// target directory as it was and names the end it could have reached.
/// Issue 28 (found by scripts/timelapse): a rotten byte in the pack of an
/// archived WAL segment was invisible. `check --read-data` named the pack
/// but no segment, `repair packs` dropped the chunk, and afterwards `check`
/// was clean and `snapshots` advertised a range no recovery could reach.
/// Now the segment is named before and after the repair, and its loss cuts
/// the range like a missing segment does.
#[test]
fn a_damaged_wal_segment_is_named_and_after_repair_packs_cuts_the_range() {
    let pg = PgEnv::new();
    let (_cluster, mut c) = marked_base_backup(&pg);
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    let t2 = commit_time(&mut c, 2);
    switch_and_wait(&mut c);
    c.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    let seg3 = current_wal_file(&mut c);
    let before = files_under(&pg.env.repo.join("data"));
    switch_and_wait(&mut c);
    let seg3_packs: Vec<_> = files_under(&pg.env.repo.join("data"))
        .difference(&before)
        .cloned()
        .collect();
    c.batch_execute("INSERT INTO markers VALUES (4)").unwrap();
    switch_and_wait(&mut c);
    pg.ok(&["check", "--read-data"]);
    assert_eq!(seg3_packs.len(), 1, "{seg3_packs:?}");
    let pack = &seg3_packs[0];
    let mut bytes = std::fs::read(pack).unwrap();
    bytes[40] ^= 1;
    std::fs::write(pack, bytes).unwrap();

    let out = pg.run(&["check", "--read-data", "--json"]);
    let (code, err) = code_and_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(stdout.starts_with('{'), "{stdout}{err}");
    let report = json(&stdout);
    assert_eq!(report["damaged_wal"], serde_json::json!([seg3]), "{report}");

    let r = json(&pg.ok(&["repair", "packs", "--json"]));
    assert_eq!(r["wal_lost"], serde_json::json!([seg3]), "{r}");
    // Without reading data: the segment is a gap that cuts the range.
    let out = pg.run(&["check"]);
    let (code, err) = code_and_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&seg3) && l.contains("missing from the WAL archive")),
        "{stdout}"
    );
    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    assert_eq!(time_of(&snaps[0]["restorable"]["to"]), t2, "{snaps}");
    assert_eq!(snaps[0]["restorable"]["gap"], seg3.as_str(), "{snaps}");
}

/// Issue 28 (found by `scripts/timelapse --days 400 --seed 1`): a rotten
/// byte in the pack of a backup history file (`….backup`) was named as
/// damaged WAL, so the daemon failed every later weekly restore test and
/// `check` failed for good, though recovery never reads that file. Now it
/// cuts no range, `check` names it and says what to do, and `repair packs`
/// removes it, after which `check` is clean.
#[test]
fn a_damaged_backup_history_file_cuts_no_range_and_repair_packs_removes_it() {
    let pg = PgEnv::new();
    let (_cluster, mut c) = marked_base_backup(&pg);
    // Archived in order: once the next segment is, the history file is too.
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    switch_and_wait(&mut c);
    let wal_dir = pg.env.repo.join("wal");
    let names = || -> Vec<String> {
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let real = names()
        .iter()
        .find_map(|n| n.find(".backup").map(|i| n[..i + 7].to_string()))
        .expect("the base backup's history file is archived");
    // A second history file, as a second base backup would archive, in a
    // pack of its own: the first one's text with its label changed.
    let fetched = pg.env.dir.path().join("fetched");
    pg.ok(&["wal-fetch", &real, fetched.to_str().unwrap()]);
    let mut text = std::fs::read(&fetched).unwrap();
    text.extend_from_slice(b"LABEL: the second one\n");
    let name = format!("{}.000000F0.backup", &real[..24]);
    let second = pg.env.dir.path().join(&name);
    std::fs::write(&second, text).unwrap();
    let before = files_under(&pg.env.repo.join("data"));
    pg.ok(&["wal-push", second.to_str().unwrap()]);
    let packs: Vec<_> = files_under(&pg.env.repo.join("data"))
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    pg.ok(&["check", "--read-data"]);
    let range = |pg: &PgEnv| json(&pg.ok(&["snapshots", "--json"]))[0]["restorable"].clone();
    let whole = range(&pg);
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&packs[0], bytes).unwrap();

    let out = pg.run(&["check", "--read-data", "--json"]);
    let (code, err) = code_and_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code, 1, "{stdout}{err}");
    let report = json(&stdout);
    assert!(report["damaged_wal"].is_null(), "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains(&format!(
            "backup history file {name}: its content is damaged"
        ))),
        "{report}"
    );
    assert_eq!(range(&pg), whole, "a lost history file cuts no range");

    let r = json(&pg.ok(&["repair", "packs", "--json"]));
    assert!(r["wal_lost"].is_null(), "{r}");
    assert_eq!(
        r["backup_history_removed"],
        serde_json::json!([name]),
        "{r}"
    );
    assert!(
        !names().iter().any(|n| n.starts_with(&name)),
        "{:?}",
        names()
    );
    assert!(
        names().iter().any(|n| n.starts_with(&real)),
        "the other one stays"
    );
    pg.ok(&["check", "--read-data"]);
    assert_eq!(range(&pg), whole);
}
