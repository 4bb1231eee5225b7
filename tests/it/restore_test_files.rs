//! Restore tests of file sources (`check --restore-test`): configuration
//! files are proven like databases — restored into a scratch directory and
//! compared, file by file, with the snapshot's record; a failure marks the
//! snapshot corrupted.

use crate::common::*;

#[test]
fn a_files_snapshot_is_restore_tested_and_its_proof_recorded() {
    let env = Env::init();
    let data = env.path("data");
    make_sample_tree(&data);
    let id = env.snapshot(&[&data]);
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let (code, report, err) = run_json(
        &env,
        &[
            "check",
            "--restore-test",
            "--scratch-dir",
            scratch.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["outcome"], "passed", "{report}");
    let files = &report["files"][0];
    // make_sample_tree: 5 files, 2 symlinks, 4 directories with `data`.
    assert_eq!(files["files"], 5, "{report}");
    assert_eq!(files["dirs"], 4, "{report}");
    assert_eq!(files["symlinks"], 2, "{report}");
    assert_eq!(files["different"], 0, "{report}");
    assert!(files["bytes"].as_u64().unwrap() > 3 << 20, "{report}");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "the scratch directory is removed after the test"
    );
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["id"].as_str().unwrap(), id, "{snaps}");
    assert_eq!(snaps[0]["proof"]["passed"], true, "{snaps}");
    assert_eq!(snaps[0]["corrupted"], false, "{snaps}");
}

#[test]
fn a_damaged_files_snapshot_fails_its_restore_test_and_is_marked() {
    let env = Env::init();
    let data = env.path("data");
    make_sample_tree(&data);
    env.snapshot(&[&data]);
    // Flip a byte in the middle of the pack: inside a frame of data.bin.
    let pack = pack_files(&env.repo).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();

    let (code, report, err) = run_json(&env, &["check", "--restore-test"]);
    assert_eq!(code, 1, "{err}\n{report}");
    assert_eq!(report["outcome"], "failed", "{report}");
    assert!(
        report["detail"].as_str().unwrap().starts_with("files:"),
        "{report}"
    );
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["corrupted"], true, "{snaps}");
    assert_eq!(snaps[0]["proof"]["passed"], false, "{snaps}");
}
