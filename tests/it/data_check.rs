//! The data check of the daemon's restore tests (`verify { read-data … }`,
//! spec/plan.md "Restore tests"): damage in any kept snapshot is found at
//! the next test, not only when the random pick falls on it (issue 28: a
//! flipped byte went unnoticed for weeks in `scripts/timelapse`).

use crate::common::daemon::*;
use crate::common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn packs(env: &Env) -> BTreeSet<PathBuf> {
    pack_files(&env.repo).into_iter().collect()
}

#[test]
fn a_damaged_snapshot_the_random_pick_would_miss_is_found_marked_and_alerted() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let p = plan(
        &env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nretention {{\n    keep-last 10\n}}\nverify {{\n    cron \"0 4 1 1 *\"\n}}\n{}",
            data.display(),
            email(&smtp, "")
        ),
    );
    let d = Served::start(&env, &p);
    // Four snapshots: the first two hold file-0, the others files of
    // their own. The first run's packs serve the first two snapshots only.
    let mut ids = Vec::new();
    let mut first_packs = BTreeSet::new();
    for (i, files) in [&[0u8][..], &[0, 1], &[2], &[3]].iter().enumerate() {
        for old in std::fs::read_dir(&data).unwrap() {
            std::fs::remove_file(old.unwrap().path()).unwrap();
        }
        for f in *files {
            let bytes = random_bytes(0xDA7A + u64::from(*f), 1 << 20);
            std::fs::write(data.join(format!("file-{f}")), bytes).unwrap();
        }
        let before = packs(&env);
        let (code, body) = d.post_when_free("/backups?wait=true");
        assert_eq!(code, 200, "{body}");
        let r: serde_json::Value = serde_json::from_str(&body).unwrap();
        ids.push(r["snapshot"].as_str().unwrap().to_string());
        if i == 0 {
            first_packs = packs(&env).difference(&before).cloned().collect();
        }
    }
    // Damage file-0: the largest pack the first run wrote.
    let target = first_packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut b = std::fs::read(target).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    std::fs::write(target, b).unwrap();
    let stored = packs(&env).len();

    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut damaged_ids = [ids[0].as_str(), ids[1].as_str()];
    damaged_ids.sort();
    assert_eq!(r["outcome"], "failed", "{r}");
    assert!(
        damaged_ids.contains(&r["snapshot"].as_str().unwrap()),
        "a damaged snapshot is the one tested: {r}"
    );
    let dc = &r["data_check"];
    assert_eq!(dc["part"], "all", "{r}");
    assert_eq!(dc["packs_read"].as_u64().unwrap() as usize, stored, "{r}");
    let damaged: Vec<&str> = dc["damaged"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(damaged, damaged_ids, "{r}");
    for id in damaged_ids {
        assert!(
            dc["damaged"][id].as_str().unwrap().contains("file-0"),
            "{r}"
        );
    }
    // The damaged pack was replaced by what reads back of it.
    assert!(!target.exists(), "{r}");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("1 damaged pack(s) replaced"),
        "{r}"
    );
    let mail = smtp.wait_for("restore test", 30);
    assert!(
        mail.contains("data check found 2 newly damaged snapshot")
            && damaged_ids.iter().all(|id| mail.contains(id)),
        "{mail}"
    );
    // Both are marked: the tested one by its restore test, the other by
    // the data check.
    let snaps = env.json(&["snapshots"]);
    let mut corrupted: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["corrupted"] == true)
        .map(|s| s["short_id"].as_str().unwrap())
        .collect();
    corrupted.sort();
    assert_eq!(corrupted, damaged_ids, "{snaps}");

    // Known damage is reported, not counted as new: the next test does not
    // fail for it (the random pick may still fall on it).
    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["data_check"]["already_marked"], 2, "{r}");
    if !damaged_ids.contains(&r["snapshot"].as_str().unwrap()) {
        assert_eq!(r["outcome"], "passed", "{r}");
    }
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("snapshot marked corrupted by the data check") && log.contains("repair packs"),
        "{log}"
    );
}

#[test]
fn read_data_in_parts_reads_the_next_part_each_time_and_off_reads_none() {
    let _serial = serial();
    let env = Env::init();
    let data = env.path("data");
    make_sample_tree(&data);
    let body = |read: &str| {
        format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nverify {{\n    cron \"0 4 1 1 *\"\n    read-data \"{read}\"\n}}\n",
            data.display()
        )
    };
    let d = Served::start(&env, &plan(&env, &body("1/2")));
    let (code, body_) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body_}");
    let mut parts = Vec::new();
    let mut read = 0;
    for _ in 0..2 {
        let (code, body_) = d.post_when_free("/checks?wait=true");
        assert_eq!(code, 200, "{body_}");
        let r: serde_json::Value = serde_json::from_str(&body_).unwrap();
        assert_eq!(r["outcome"], "passed", "{r}");
        parts.push(r["data_check"]["part"].as_str().unwrap().to_string());
        read += r["data_check"]["packs_read"].as_u64().unwrap() as usize;
    }
    parts.sort();
    assert_eq!(parts, ["1/2", "2/2"]);
    assert_eq!(
        read,
        pack_files(&env.repo).len(),
        "two halves read every pack once"
    );
    d.stop();

    let d = Served::start(&env, &plan(&env, &body("off")));
    let (code, body_) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body_}");
    let r: serde_json::Value = serde_json::from_str(&body_).unwrap();
    assert_eq!(r["outcome"], "passed", "{r}");
    assert!(r.get("data_check").is_none(), "{r}");
}
