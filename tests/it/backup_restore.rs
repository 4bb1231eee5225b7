//! Snapshot and restore through the real binary.

use crate::common::*;
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

/// Issue 27, item 9: an `--include` that matches nothing is an error
/// (exit 2) naming the pattern, with the stored paths near it — also when
/// it is a prefix of a stored name (`etc/secret.ke`), which used to
/// restore the directory above it alone and exit 0, and when another
/// pattern matches.
#[test]
fn an_include_that_matches_nothing_is_an_error_naming_it() {
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    env.snapshot(&[&src]);
    let target = env.path("out");
    let t = target.to_str().unwrap();
    let etc = src.join("etc").display().to_string();
    let near = format!("{etc}/secret.ke");
    for includes in [vec![near.as_str()], vec![etc.as_str(), near.as_str()]] {
        let mut args = vec!["restore", "latest", "--target", t];
        for i in &includes {
            args.extend(["--include", i]);
        }
        let (code, err) = code_and_stderr(&env.run(&args));
        assert_eq!(code, 2, "{includes:?}: {err}");
        assert!(
            err.contains(&format!("--include {near} matches nothing")),
            "{err}"
        );
        assert!(err.contains("nothing was restored"), "{err}");
        assert!(
            err.contains(&format!("{}/secret.key", etc.trim_start_matches('/'))),
            "the hint names the stored path it may have meant: {err}"
        );
        assert!(!target.exists(), "nothing was restored");
    }
    // A whole name below matches; a leading or trailing / is optional.
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t,
        "--include",
        &format!("{}/secret.key/", etc.trim_start_matches('/')),
    ]);
    let r = restored(&target, &src);
    assert_eq!(std::fs::read(r.join("etc/secret.key")).unwrap(), b"k3y");
    assert!(!r.join("etc/app").exists());
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

// ---------------------------------------------------------------------------
// Issue 24: a restore never escapes its target, every saved snapshot
// restores, and an interrupted restore exposes nothing.

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory outside every restore target, with its mode and no entries.
fn outside(env: &Env) -> std::path::PathBuf {
    let o = env.path("outside");
    std::fs::create_dir(&o).unwrap();
    set_mode(&o, 0o750);
    o
}

fn assert_untouched(o: &std::path::Path) {
    assert_eq!(mode_of(o), 0o750, "the outside directory's mode changed");
    assert_eq!(
        std::fs::read_dir(o).unwrap().count(),
        0,
        "something was written outside the target, into {}",
        o.display()
    );
}

#[test]
fn restore_never_writes_through_a_symlink_planted_in_the_target() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a/x"), "from the snapshot").unwrap();
    set_mode(&src.join("a"), 0o777);
    let id = env.snapshot(&[&src]);
    let o = outside(&env);
    let target = env.path("out");
    let planted = restored(&target, &src).join("a");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&o, &planted).unwrap();

    env.ok(&[
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "always",
    ]);
    assert_untouched(&o);
    assert!(
        std::fs::symlink_metadata(&planted).unwrap().is_dir(),
        "the symlink was replaced by the snapshot's directory"
    );
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn restoring_a_symlink_and_then_a_directory_of_that_name_stays_in_the_target() {
    let env = Env::init();
    let o = outside(&env);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink(&o, src.join("a")).unwrap();
    let with_link = env.snapshot(&[&src]);
    std::fs::remove_file(src.join("a")).unwrap();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(src.join("a/x"), "x").unwrap();
    set_mode(&src.join("a"), 0o777);
    let with_dir = env.snapshot(&[&src]);

    let target = env.path("out");
    let t = target.to_str().unwrap();
    env.ok(&["restore", &with_link, "--target", t]);
    env.ok(&["restore", &with_dir, "--target", t, "--overwrite", "always"]);
    assert_untouched(&o);
    assert_same_tree(&src, &restored(&target, &src));
    // And back: the directory's place taken by the symlink again.
    let out = env.run(&[
        "restore",
        &with_link,
        "--target",
        t,
        "--overwrite",
        "always",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(
        code, 2,
        "a directory stands where the snapshot has a symlink: {err}"
    );
    assert!(
        err.contains("is a directory in the target") && err.contains("hint:"),
        "{err}"
    );
    assert_untouched(&o);
}

#[test]
fn a_directory_where_a_file_goes_stops_the_restore_before_anything_changes() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), "new a").unwrap();
    std::fs::write(src.join("b"), "new b").unwrap();
    let id = env.snapshot(&[&src]);
    let target = env.path("out");
    let r = restored(&target, &src);
    std::fs::create_dir_all(r.join("b")).unwrap();
    std::fs::write(r.join("a"), "old a").unwrap();

    let out = env.run(&[
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "if-changed",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/b is a directory in the target") && err.contains("nothing was restored"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("a")).unwrap(),
        "old a",
        "a file was replaced before the conflict was found"
    );
    let names: Vec<_> = std::fs::read_dir(&r)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only a and b: nothing staged is left: {names:?}"
    );
}

#[test]
fn long_names_repeated_and_nested_roots_and_dotdot_paths_restore() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("n".repeat(255)), "255 bytes of name").unwrap();
    std::fs::write(src.join("sub").join("m".repeat(241)), "241").unwrap();
    std::fs::write(src.join("sub/f"), "f").unwrap();
    let s = src.to_str().unwrap();
    let sub = src.join("sub");
    let dotdot = format!("{s}/sub/..");
    for args in [
        vec!["snapshot", s, sub.to_str().unwrap(), s],
        vec!["snapshot", &dotdot],
    ] {
        let mut a = args.clone();
        a.push("--json");
        let id: serde_json::Value = serde_json::from_str(&env.ok(&a)).unwrap();
        let id = id["id"].as_str().unwrap().to_string();
        let target = env.path(&format!("out-{}", &id[..8]));
        env.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
        assert_same_tree(&src, &restored(&target, &src));
    }
    let check = env.ok(&["check"]);
    assert!(check.contains("no errors"), "{check}");
}

#[test]
fn stdin_names_that_are_not_plain_file_names_are_refused_before_anything_runs() {
    let env = Env::init();
    let marker = env.path("ran");
    let touch = format!("touch {}", marker.display());
    for args in [
        vec!["snapshot", "--stdin-name", ".."],
        vec!["snapshot", "--stdin-name", "."],
        vec!["snapshot", "--stdin-name", "a/b"],
        vec![
            "snapshot",
            "--stdin-from-command",
            "--stdin-name",
            "../x",
            "--",
            "sh",
            "-c",
            &touch,
        ],
        vec![
            "snapshot",
            "--stdin-from-command",
            "--stdin-name",
            "..",
            "--",
            "sh",
            "-c",
            &touch,
        ],
    ] {
        let out = env.run(&args);
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("plain file name") && err.contains("hint:"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !marker.exists(),
        "the command ran although its name was refused"
    );
    assert!(env.snapshot_ids().is_empty());
}

#[test]
fn a_restore_killed_mid_way_exposes_nothing_and_the_next_one_cleans_up() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("private")).unwrap();
    for i in 0..4 {
        std::fs::write(
            src.join(format!("private/secret-{i}")),
            random_bytes(i, 16 << 20),
        )
        .unwrap();
        set_mode(&src.join(format!("private/secret-{i}")), 0o600);
    }
    set_mode(&src.join("private"), 0o700);
    let id = env.snapshot(&[&src]);
    let target = env.path("out");
    std::fs::create_dir(&target).unwrap();

    let mut child = env
        .cmd()
        .args(["restore", &id, "--target", target.to_str().unwrap()])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let staging = loop {
        let found = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".cairn-restore-")
            });
        if let Some(s) = found {
            break s;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended before its staging directory was seen"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no staging directory appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert_eq!(mode_of(&staging), 0o700, "the staging directory is private");
    for e in std::fs::read_dir(&staging).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            mode_of(&p) & 0o077,
            0,
            "{} is readable by others",
            p.display()
        );
    }
    let top: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        top,
        vec![staging.clone()],
        "nothing but the staging directory is in the target"
    );

    env.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert!(
        !staging.exists(),
        "the next restore removes what the killed one left"
    );
    assert_same_tree(&src, &restored(&target, &src));
    let top: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top.len(), 1, "only the restored tree: {top:?}");
}

/// A snapshot written by a hostile or older writer, with a node path that
/// leaves the target: `check` names it, `restore` refuses it untouched.
#[test]
fn a_stored_path_that_leaves_the_target_is_found_by_check_and_refused_by_restore() {
    use cairn::repo::{Node, Snapshot, SnapshotId};
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "f").unwrap();
    let good = env.snapshot(&[&src]);

    // Write the same snapshot again with its node list renamed to `../escape`.
    let repo = cairn::Repository::open(
        cairn::backend::open(env.repo.to_str().unwrap()).unwrap(),
        &cairn::crypto::Secret::Password("correct horse".into()),
        Some(env.cache.clone()),
    )
    .unwrap();
    let (id, mut snap): (SnapshotId, Snapshot) = {
        let id = SnapshotId::parse(&good).unwrap();
        (id, repo.read_sealed(id).unwrap())
    };
    let mut nodes = repo.read_tree(&snap.sources[0]).unwrap();
    nodes.push(Node {
        path: "../escape".into(),
        ..nodes
            .iter()
            .find(|n| n.path.ends_with("/f"))
            .unwrap()
            .clone()
    });
    let mut list = Vec::new();
    for n in &nodes {
        serde_json::to_writer(&mut list, n).unwrap();
        list.push(b'\n');
    }
    let (tree, stored, _) = cairn::archiver::with_packer(&repo, |p| {
        Ok(
            p.add_stream(&list[..], &cairn::progress::Progress::hidden())
                .map_err(|e| e.into_error("node list"))?
                .0,
        )
    })
    .unwrap();
    repo.write_index(stored.packs).unwrap();
    snap.sources[0].tree = tree;
    snap.time += jiff::SignedDuration::from_secs(1);
    let hostile = repo.write_sealed::<SnapshotId>(&snap).unwrap();
    assert_ne!(hostile, id);
    drop(repo);

    let out = env.run(&["check"]);
    let (code, err) = code_and_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(code, 0, "check must fail: {stdout}{err}");
    assert!(
        format!("{stdout}{err}").contains("node list cannot be restored: \"../escape\""),
        "{stdout}{err}"
    );

    let target = env.path("out");
    let out = env.run(&[
        "restore",
        &hostile.to_hex(),
        "--target",
        target.to_str().unwrap(),
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("\"../escape\"") && err.contains("nothing was restored"),
        "{err}"
    );
    assert!(!env.path("escape").exists() && !target.join("../escape").exists());
    assert_eq!(
        std::fs::read_dir(&target).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing was written"
    );
    // The good snapshot still restores.
    env.ok(&["restore", &good, "--target", target.to_str().unwrap()]);
}

/// A file system mounted in the target gets its own staging directory, so
/// a file is staged on the disk it lands on and renamed, never copied
/// across (or staged on a small root file system).
#[test]
fn files_below_a_mount_point_in_the_target_are_staged_on_that_file_system() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("mnt/deep")).unwrap();
    for i in 0..4 {
        std::fs::write(
            src.join(format!("mnt/deep/big-{i}")),
            random_bytes(i + 10, 16 << 20),
        )
        .unwrap();
    }
    std::fs::write(src.join("small"), "on the target's own file system").unwrap();
    let id = env.snapshot(&[&src]);
    let target = env.path("out");
    let mnt = restored(&target, &src).join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=256m",
            "cairn-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mount failed");
    let _unmount = Unmount(mnt.clone());

    let mut child = env
        .cmd()
        .args(["restore", &id, "--target", target.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut staged_on_mount = false;
    while child.try_wait().unwrap().is_none() {
        staged_on_mount |= std::fs::read_dir(&mnt).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".cairn-restore-")
        });
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(child.wait().unwrap().success());
    assert!(
        staged_on_mount,
        "no staging directory appeared on the mounted file system"
    );
    assert_same_tree(&src, &restored(&target, &src));
}

/// A plan's `path "../data"` (relative to the plan's directory) used to be
/// stored as `…/plans/../data`, which restore refused.
#[test]
fn a_plan_path_with_dotdot_is_stored_where_it_is_and_restores() {
    let env = Env::init();
    let data = env.path("data");
    make_sample_tree(&data);
    std::fs::create_dir_all(env.path("plans")).unwrap();
    let plan = env.path("plans/plan.kdl");
    std::fs::write(
        &plan,
        format!(
            "repository \"{}\" {{\n    password-file \"{}\"\n    cache-dir \"{}\"\n}}\nsource \"cfg\" kind=\"files\" {{\n    path \"../data\"\n}}\n",
            env.repo.display(),
            env.password_file.display(),
            env.cache.display()
        ),
    )
    .unwrap();
    let out = env.run_plan(&["snapshot", "--plan", plan.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&data, &restored(&target, &data));
}
