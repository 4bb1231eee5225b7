//! A file restore into a target that already holds files follows
//! `--overwrite never|if-changed|always|if-newer` (restic ≥ 0.17's
//! choices; cairn's default is `never`) and says what it replaced, left
//! unchanged and kept (issue 27, item 9).

use crate::common::*;
use std::path::{Path, PathBuf};

fn set_mtime(p: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn link_of(p: &Path) -> PathBuf {
    std::fs::read_link(p).unwrap()
}

/// A snapshot of `src/`: `a`, `b`, `same` ("same"), `touched`
/// ("snapshot!", time 1_700_000_000), `new`, and `link -> a`; and a target
/// that already holds, where it restores: `a` (other content, older), `b`
/// (other content, newer), `same` (equal content, another time),
/// `touched` (other content of the same size, the same time) and `link ->
/// elsewhere`. Returns the target and the directory the tree lands in.
fn snapshot_and_a_used_target(env: &Env) -> (PathBuf, PathBuf) {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for (name, text) in [
        ("a", "new a"),
        ("b", "new b"),
        ("same", "same"),
        ("new", "new"),
    ] {
        std::fs::write(src.join(name), text).unwrap();
        set_mtime(&src.join(name), 1_800_000_000);
    }
    std::fs::write(src.join("touched"), "snapshot!").unwrap();
    set_mtime(&src.join("touched"), 1_700_000_000);
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    env.snapshot(&[&src]);

    let target = env.path("out");
    let r = restored(&target, &src);
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(r.join("a"), "old a, longer").unwrap();
    set_mtime(&r.join("a"), 1_000_000_000);
    std::fs::write(r.join("b"), "local b").unwrap();
    set_mtime(&r.join("b"), 1_900_000_000);
    std::fs::write(r.join("same"), "same").unwrap();
    set_mtime(&r.join("same"), 1_000_000_000);
    std::fs::write(r.join("touched"), "by hand!!").unwrap();
    set_mtime(&r.join("touched"), 1_700_000_000);
    std::os::unix::fs::symlink("elsewhere", r.join("link")).unwrap();
    (target, r)
}

/// `restore latest --target T ARGS --json -v`: the stats and stderr.
fn restore(env: &Env, target: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let mut all = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    all.extend(args);
    all.extend(["--json", "-v"]);
    let out = env.run(&all);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{args:?}: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["stats"].clone(), err)
}

fn counts(stats: &serde_json::Value) -> (u64, u64, u64) {
    (
        stats["replaced"].as_u64().unwrap(),
        stats["unchanged"].as_u64().unwrap(),
        stats["kept"].as_u64().unwrap(),
    )
}

/// The default keeps everything that stands in the target and restores
/// only what is missing; the summary line and a note say so, `-v` names
/// each path kept.
#[test]
fn by_default_a_restore_keeps_what_is_in_the_target_and_says_so() {
    let env = Env::init();
    let (target, r) = snapshot_and_a_used_target(&env);
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("in the target already: 0 replaced, 0 unchanged, 5 kept (--overwrite never)"),
        "{text}"
    );
    assert!(
        err.contains("note: 5 path(s) already in the target were kept as they are"),
        "{err}"
    );
    assert_eq!(read(&r.join("a")), "old a, longer");
    assert_eq!(read(&r.join("b")), "local b");
    assert_eq!(read(&r.join("touched")), "by hand!!");
    assert_eq!(link_of(&r.join("link")), Path::new("elsewhere"));
    assert_eq!(read(&r.join("new")), "new", "what was missing is restored");

    std::fs::remove_file(r.join("new")).unwrap();
    let (stats, err) = restore(&env, &target, &[]);
    assert_eq!(stats["overwrite"], "never");
    assert_eq!(counts(&stats), (0, 0, 5), "{stats}");
    assert_eq!(stats["files"], 1, "{stats}");
    assert!(
        err.contains("kept what stands in the target")
            && err.contains(&format!("{}/a", r.display())),
        "-v names each path kept: {err}"
    );
}

/// `if-changed` replaces what differs, takes a file of the snapshot's size
/// and time as up to date without reading it, and finds equal content
/// under another time; `-v` names each replaced path.
#[test]
fn if_changed_replaces_what_differs_and_names_it() {
    let env = Env::init();
    let (target, r) = snapshot_and_a_used_target(&env);
    let (stats, err) = restore(&env, &target, &["--overwrite", "if-changed"]);
    assert_eq!(stats["overwrite"], "if-changed");
    // a, b and link replaced; same (read: equal) and touched (size and
    // time equal: not read) unchanged.
    assert_eq!(counts(&stats), (3, 2, 0), "{stats}");
    assert_eq!(read(&r.join("a")), "new a");
    assert_eq!(read(&r.join("b")), "new b");
    assert_eq!(link_of(&r.join("link")), Path::new("a"));
    assert_eq!(
        read(&r.join("touched")),
        "by hand!!",
        "trusted by size and time"
    );
    let same = std::fs::metadata(r.join("same")).unwrap();
    assert_eq!(
        filetime::FileTime::from_last_modification_time(&same).unix_seconds(),
        1_800_000_000,
        "an unchanged file gets the snapshot's time"
    );
    for p in ["a", "b", "link"] {
        assert!(
            err.contains(&format!("{}/{p}", r.display()))
                && err.contains("replaced what stood in the target"),
            "-v names {p}: {err}"
        );
    }
    assert!(!err.contains(&format!("{}/same", r.display())), "{err}");
}

/// `always` reads every file of the snapshot's size, whatever its time.
#[test]
fn always_compares_content_whatever_the_time() {
    let env = Env::init();
    let (target, r) = snapshot_and_a_used_target(&env);
    let (stats, _) = restore(&env, &target, &["--overwrite", "always"]);
    assert_eq!(counts(&stats), (4, 1, 0), "{stats}");
    assert_eq!(read(&r.join("touched")), "snapshot!");
    assert_eq!(read(&r.join("same")), "same");
    // Restoring again finds everything in place.
    let (stats, _) = restore(&env, &target, &["--overwrite", "always"]);
    assert_eq!(counts(&stats), (0, 6, 0), "{stats}");
    assert_eq!(stats["bytes"], 0, "nothing written: {stats}");
}

/// `if-newer` replaces only what is older than the snapshot's entry.
#[test]
fn if_newer_replaces_only_what_is_older() {
    let env = Env::init();
    let (target, r) = snapshot_and_a_used_target(&env);
    let (stats, _) = restore(&env, &target, &["--overwrite", "if-newer"]);
    assert_eq!(read(&r.join("a")), "new a", "older: replaced");
    assert_eq!(read(&r.join("b")), "local b", "newer: kept");
    assert_eq!(read(&r.join("touched")), "by hand!!", "as new: kept");
    // a replaced; same (older, equal content) unchanged; b, touched and
    // the link (made just now, newer) kept.
    assert_eq!(counts(&stats), (1, 1, 3), "{stats}");
}

/// Under `never`, a symlink where the snapshot has a directory stays, and
/// nothing goes below it (never through it); with `always` it is replaced
/// by the directory, the link itself and never what it points to.
#[test]
fn never_keeps_a_symlink_where_a_directory_goes_and_writes_nothing_through_it() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    std::fs::write(src.join("d/x"), "x").unwrap();
    std::fs::write(src.join("d/sub/y"), "y").unwrap();
    std::fs::write(src.join("z"), "z").unwrap();
    env.snapshot(&[&src]);
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = env.path("out");
    let r = restored(&target, &src);
    std::fs::create_dir_all(&r).unwrap();
    std::os::unix::fs::symlink(&outside, r.join("d")).unwrap();

    let (stats, _) = restore(&env, &target, &[]);
    // d, d/sub, d/sub/y and d/x kept; z restored.
    assert_eq!(counts(&stats), (0, 0, 4), "{stats}");
    assert_eq!(read(&r.join("z")), "z");
    assert!(std::fs::symlink_metadata(r.join("d")).unwrap().is_symlink());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    let (stats, _) = restore(&env, &target, &["--overwrite", "always"]);
    assert_eq!(stats["replaced"], 1, "the symlink: {stats}");
    assert!(std::fs::symlink_metadata(r.join("d")).unwrap().is_dir());
    assert_eq!(read(&r.join("d/sub/y")), "y");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// `restore --plan` takes the same choice: by default it keeps the files
/// it finds (and its dry run says so); `--overwrite if-changed` replaces
/// those that differ.
#[test]
fn restore_plan_follows_the_same_choice() {
    let env = Env::init();
    let files = env.path("etc");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("app.conf"), "from the snapshot").unwrap();
    let plan = env.write_plan(&format!(
        "source \"conf\" kind=\"files\" {{\n    path \"{}\"\n}}\n",
        files.display()
    ));
    let plan = plan.to_str().unwrap();
    let out = env.run_plan(&["snapshot", "--plan", plan]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = env.path("root");
    let root_s = root.to_str().unwrap();
    let conf = restored(&root, &files).join("app.conf");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, "edited in place").unwrap();

    let run = |args: &[&str]| {
        let mut all = vec!["restore", "--plan", plan, "latest", "--target-root", root_s];
        all.extend(args);
        let out = env.run_plan(&all);
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 0, "{args:?}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run(&["--dry-run"]);
    assert!(
        text.contains("keeping files that exist (--overwrite never)"),
        "{text}"
    );
    let text = run(&["--dry-run", "--overwrite", "if-changed"]);
    assert!(
        text.contains("replacing files that differ (--overwrite if-changed)"),
        "{text}"
    );
    let text = run(&[]);
    assert!(text.contains("1 kept (--overwrite never)"), "{text}");
    assert_eq!(read(&conf), "edited in place");
    let text = run(&["--overwrite", "if-changed"]);
    assert!(text.contains("1 replaced"), "{text}");
    assert_eq!(read(&conf), "from the snapshot");
}

/// Issue 29: a restore keeps where chunks are per frame and numbers only
/// the files it writes. Files that share every chunk (copies of one
/// many-chunk file), one of them kept in the target, each get all of
/// them; and under `if-changed` a copy with the same content but another
/// time is read chunk by chunk and found equal.
#[test]
fn files_sharing_chunks_are_each_written_around_a_kept_one() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = noise(29, 3 << 20);
    for name in ["a-copy", "b-copy", "c-copy"] {
        std::fs::write(src.join(name), &data).unwrap();
        set_mtime(&src.join(name), 1_800_000_000);
    }
    std::fs::write(src.join("d-small"), "small").unwrap();
    let snap = env.json(&["snapshot", src.to_str().unwrap()]);
    assert!(
        snap["bytes_added"].as_u64().unwrap() < 2 * data.len() as u64,
        "the copies share their chunks: {snap}"
    );
    let target = env.path("out");
    let r = restored(&target, &src);
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(r.join("b-copy"), "local b").unwrap();

    let (stats, _) = restore(&env, &target, &[]);
    assert_eq!(counts(&stats), (0, 0, 1), "{stats}");
    for name in ["a-copy", "c-copy"] {
        assert!(std::fs::read(r.join(name)).unwrap() == data, "{name}");
    }
    assert_eq!(read(&r.join("b-copy")), "local b");
    assert_eq!(read(&r.join("d-small")), "small");

    std::fs::write(r.join("b-copy"), &data).unwrap();
    set_mtime(&r.join("b-copy"), 1_000_000_000);
    std::fs::write(r.join("c-copy"), "changed").unwrap();
    let (stats, _) = restore(&env, &target, &["--overwrite", "if-changed"]);
    // c-copy replaced; b-copy read and equal; a-copy and d-small trusted
    // by size and time.
    assert_eq!(counts(&stats), (1, 3, 0), "{stats}");
    for name in ["a-copy", "b-copy", "c-copy"] {
        assert!(std::fs::read(r.join(name)).unwrap() == data, "{name}");
    }
}
