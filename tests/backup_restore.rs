//! Snapshot and restore through the real binary.

mod common;
use common::*;
use std::io::Write;
use std::process::Stdio;

#[test]
fn restore_is_identical_including_metadata_symlinks_and_empty_files() {
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    let id = env.snapshot(&[&src]);
    let target = env.path("out");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn second_snapshot_of_unchanged_data_adds_almost_nothing() {
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    let first = env.json(&["snapshot", src.to_str().unwrap()]);
    let second = env.json(&["snapshot", src.to_str().unwrap()]);
    let (a, b) = (
        first["bytes_added"].as_u64().unwrap(),
        second["bytes_added"].as_u64().unwrap(),
    );
    assert!(a > 3 << 20, "first snapshot stored only {a} bytes");
    // Only the node list's chunks may differ (directory mtimes can change); never content.
    assert!(
        b < 64 << 10,
        "second snapshot of the same data added {b} bytes"
    );
    assert_eq!(second["chunks_new"].as_u64(), Some(0));
}

#[test]
fn a_small_edit_adds_a_small_amount() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut data = noise(7, 8 << 20);
    std::fs::write(src.join("big"), &data).unwrap();
    env.snapshot(&[&src]);
    data[4 << 20] ^= 0xff;
    data.splice(6 << 20..6 << 20, b"inserted bytes".iter().copied());
    std::fs::write(src.join("big"), &data).unwrap();
    let second = env.json(&["snapshot", src.to_str().unwrap()]);
    let added = second["bytes_added"].as_u64().unwrap();
    assert!(
        added < 512 << 10,
        "two small edits in 8 MiB added {added} bytes"
    );
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(restored(&target, &src).join("big")).unwrap(),
        data
    );
}

#[test]
fn stdin_snapshot_round_trips_including_empty_input() {
    let env = Env::init();
    for (name, content) in [
        ("dump.sql", b"CREATE TABLE t (x int);\n".repeat(5000)),
        ("empty.txt", Vec::new()),
    ] {
        let mut child = env
            .cmd()
            .args(["snapshot", "--stdin-name", name, "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&content).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["bytes_read"].as_u64(), Some(content.len() as u64));
        let target = env.path(&format!("out-{name}"));
        env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        assert_eq!(std::fs::read(target.join(name)).unwrap(), content);
    }
}

#[test]
fn stdin_from_command_stores_its_output() {
    let env = Env::init();
    env.ok(&[
        "snapshot",
        "--stdin-name",
        "seq.txt",
        "--stdin-from-command",
        "--",
        "seq",
        "1",
        "100000",
    ]);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let expected: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        std::fs::read_to_string(target.join("seq.txt")).unwrap(),
        expected
    );
}

#[test]
fn failing_command_saves_no_snapshot() {
    let env = Env::init();
    let out = env.run(&[
        "snapshot",
        "--stdin-name",
        "x",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "echo partial output; echo 'pg_dump: connection refused' >&2; exit 3",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no snapshot was saved"), "{err}");
    assert!(
        err.contains("connection refused"),
        "stderr of the command is shown: {err}"
    );
    assert!(env.snapshot_ids().is_empty());
}

#[test]
fn restore_at_picks_the_newest_snapshot_at_or_before_the_time() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for gen in 0..3 {
        std::fs::write(src.join("gen"), format!("generation {gen}")).unwrap();
        env.snapshot(&[&src]);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let snaps = env.json(&["snapshots"]);
    let times: Vec<jiff::Timestamp> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["time"].as_str().unwrap().parse().unwrap())
        .collect();
    let cases = [
        (times[1], "generation 1"),
        (
            times[2] - jiff::SignedDuration::from_nanos(1),
            "generation 1",
        ),
        (
            times[0] + jiff::SignedDuration::from_millis(5),
            "generation 0",
        ),
        (
            times[2] + jiff::SignedDuration::from_hours(24),
            "generation 2",
        ),
    ];
    for (i, (at, expected)) in cases.iter().enumerate() {
        let target = env.path(&format!("out{i}"));
        env.ok(&[
            "restore",
            "--at",
            &at.to_string(),
            "--target",
            target.to_str().unwrap(),
        ]);
        let got = std::fs::read_to_string(restored(&target, &src).join("gen")).unwrap();
        assert_eq!(&got, expected, "--at {at}");
    }
    let out = env.run(&[
        "restore",
        "--at",
        &(times[0] - jiff::SignedDuration::from_secs(1)).to_string(),
        "--target",
        env.path("none").to_str().unwrap(),
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1);
    assert!(err.contains("no snapshot was taken at or before"), "{err}");
    assert!(
        !env.path("none").exists(),
        "nothing is written when no snapshot matches"
    );
}

#[test]
fn restore_include_restores_only_that_subtree() {
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    env.snapshot(&[&src]);
    let target = env.path("out");
    let inc = src.join("etc").display().to_string();
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        &inc,
    ]);
    let r = restored(&target, &src);
    assert_same_tree(&src.join("etc"), &r.join("etc"));
    assert!(!r.join("data.bin").exists());
}

#[test]
fn a_file_over_2_gib_round_trips() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = src.join("sparse.img");
    let f = std::fs::File::create(&big).unwrap();
    let size: u64 = (2u64 << 30) + 12345;
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"in the middle", 1 << 30).unwrap();
    f.write_all_at(b"end", size - 3).unwrap();
    drop(f);
    let snap = env.json(&["snapshot", src.to_str().unwrap()]);
    assert_eq!(snap["bytes_read"].as_u64(), Some(size));
    assert!(
        snap["bytes_added"].as_u64().unwrap() < 1 << 20,
        "zeros deduplicate"
    );
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let out = restored(&target, &src).join("sparse.img");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    assert!(files_equal(&big, &out));
}

#[test]
fn unreadable_source_data_saves_an_incomplete_snapshot_and_exits_3() {
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    // Reading /proc/self/mem at offset 0 fails with EIO, even for root.
    let out = env.run(&["snapshot", src.to_str().unwrap(), "/proc/self/mem"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("/proc/self/mem"), "{err}");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["complete"], false);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
}
