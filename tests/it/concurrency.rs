//! Commands running at the same time on one repository lose nothing:
//! `snapshot` takes a shared lock, `prune` an exclusive one, and a prune that
//! meets a running snapshot exits 11 naming it.

use crate::common::*;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const SHAPE: TreeShape = TreeShape {
    random_files: 4,
    random_file_len: 2 << 20,
    period: 2,
    text_len: 1 << 20,
    salt: 0xC0C0,
};

fn spawn_snapshot(env: &Env, paths: &[&Path]) -> Child {
    let mut c = env.cmd();
    c.args(["snapshot", "--json", "--quiet"]);
    c.args(paths);
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for a snapshot child, require success, return its id.
fn snapshot_id(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "snapshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn assert_read_data_clean(env: &Env) {
    let (code, report, err) = run_json(env, &["check", "--read-data"]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(report["damaged"], serde_json::json!([]));
    assert_eq!(report["errors"], serde_json::json!([]));
}

#[test]
fn snapshot_and_prune_at_the_same_time_lose_nothing() {
    let env = Env::init();
    let src = env.path("src");
    let (target, scratch) = (env.path("out"), env.path("expected"));
    // Five generations; forget all but the last two, so prune has work.
    let mut snaps = Vec::new();
    for generation in 0..5 {
        write_generation(&src, SHAPE, generation);
        snaps.push((env.snapshot(&[&src]), generation));
    }
    env.ok(&["forget", "--keep-last", "2"]);
    let kept = &snaps[3..];
    assert_eq!(env.snapshot_ids().len(), 2);

    // The long snapshot: the current tree, a copy of generation 0 (data only
    // forgotten snapshots used, which prune is about to remove) and 64 MiB of
    // new data.
    let extra = env.path("extra");
    write_generation(&extra.join("gen0"), SHAPE, 0);
    std::fs::write(extra.join("new.bin"), random_bytes(0x10C6, 64 << 20)).unwrap();
    // Run prune over and over while the snapshot runs. A snapshot that
    // starts while a prune holds its exclusive lock fails with 11 (it does
    // not wait): then it is started again.
    let started = Instant::now();
    let (mut pruned, mut locked, mut snapshot_locked_out) = (0, 0, 0);
    let long_id = loop {
        let mut child = spawn_snapshot(&env, &[&src, &extra]);
        let pid = child.id();
        let finished = loop {
            let done = child.try_wait().unwrap().is_some();
            let (code, err) = code_and_stderr(&env.run(&["prune"]));
            match code {
                0 => pruned += 1,
                11 => {
                    assert!(
                        err.contains(&format!("pid {pid}")) && err.contains("`snapshot`"),
                        "exit 11 without naming the snapshot (pid {pid}) holding the lock: {err}"
                    );
                    locked += 1;
                }
                _ => panic!("prune during a snapshot exited {code}: {err}"),
            }
            if done {
                break child.wait_with_output().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (code, err) = code_and_stderr(&finished);
        if code == 11 {
            assert!(err.contains("`prune`"), "{err}");
            snapshot_locked_out += 1;
            assert!(snapshot_locked_out < 20, "the snapshot never got its lock");
            continue;
        }
        assert_eq!(code, 0, "snapshot failed: {err}");
        let v: serde_json::Value = serde_json::from_slice(&finished.stdout).unwrap();
        break v["id"].as_str().unwrap().to_string();
    };
    eprintln!(
        "snapshot took {:?} (locked out by prune {snapshot_locked_out} time(s)); prune ran {} times \
         meanwhile: {pruned} succeeded, {locked} found the snapshot's lock",
        started.elapsed(),
        pruned + locked
    );
    assert!(locked > 0, "no prune overlapped the snapshot's lock");
    env.ok(&["prune"]);

    let mut remaining = env.snapshot_ids();
    remaining.sort();
    let mut expected: Vec<String> = kept
        .iter()
        .map(|(id, _)| id.clone())
        .chain([long_id.clone()])
        .collect();
    expected.sort();
    assert_eq!(remaining, expected);
    assert_read_data_clean(&env);
    for (id, generation) in kept {
        assert_restores_generation(&env, id, &src, SHAPE, *generation, &target, &scratch);
    }
    assert_restores_generation(&env, &long_id, &src, SHAPE, 4, &target, &scratch);
    env.ok(&["restore", &long_id, "--target", target.to_str().unwrap()]);
    assert_same_tree(&extra, &restored(&target, &extra));
}

#[test]
fn two_snapshots_at_once_both_succeed_and_restore() {
    let env = Env::init();
    let (p, q) = (env.path("p"), env.path("q"));
    // Different trees with shared data (written by both at the same time)
    // and 24 MiB each of their own.
    write_generation(&p.join("tree"), SHAPE, 0);
    write_generation(&q.join("tree"), SHAPE, 0);
    std::fs::write(p.join("own.bin"), random_bytes(0x0F, 24 << 20)).unwrap();
    std::fs::write(q.join("own.bin"), random_bytes(0x0E, 24 << 20)).unwrap();
    let (cp, cq) = (spawn_snapshot(&env, &[&p]), spawn_snapshot(&env, &[&q]));
    let (ip, iq) = (snapshot_id(cp), snapshot_id(cq));
    assert_read_data_clean(&env);
    for (id, dir) in [(&ip, &p), (&iq, &q)] {
        let target = env.path(&format!("out-{}", &id[..8]));
        env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
        assert_same_tree(dir, &restored(&target, dir));
    }
    // Chunks both stored are kept by prune (at least once), and still restore.
    env.ok(&["prune"]);
    assert_read_data_clean(&env);
    for (id, dir) in [(&ip, &p), (&iq, &q)] {
        let target = env.path(&format!("out2-{}", &id[..8]));
        env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
        assert_same_tree(dir, &restored(&target, dir));
    }
}

// ---------------------------------------------------------------------------
// The moment between opening the repository (which loads the index cache)
// and taking the lock. To stop a command exactly there, the repository gets
// many unreadable lock files: the command logs one debug line per file while
// it lists the locks, before writing its own; when nobody reads its stderr,
// it blocks once the pipe is full, until the test drains it. A slow listing
// (a remote backend, a busy machine) opens the same window in real life.

const JUNK_LOCKS: usize = 2000;

fn add_junk_locks(env: &Env) -> Vec<std::path::PathBuf> {
    (0..JUNK_LOCKS)
        .map(|i| {
            let p = env.repo.join("locks").join(hex_name(i as u64));
            std::fs::write(&p, b"not a lock").unwrap();
            p
        })
        .collect()
}

fn hex_name(i: u64) -> String {
    random_bytes(i ^ 0x10CC, 32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Start `cairn -vv <args>` and return once it is stuck listing the locks.
/// Drop the returned sender (or send on it) to let the command go on; the
/// thread then returns the rest of its stderr.
fn start_paused(
    env: &Env,
    args: &[&str],
) -> (
    Child,
    std::thread::JoinHandle<String>,
    std::sync::mpsc::Sender<()>,
) {
    let mut child = env
        .cmd()
        .arg("-vv")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "{args:?} ended before listing locks"
        );
        if line.contains("skipping unreadable lock") {
            break;
        }
    }
    // Stop reading: the command blocks on its next few hundred log lines.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let drain = std::thread::spawn(move || {
        let _ = wait.recv();
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
        String::from_utf8_lossy(&rest).into_owned()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "{args:?} did not wait");
    assert_eq!(
        repo_files(&env.repo, "locks").len(),
        JUNK_LOCKS,
        "{args:?} already holds a lock"
    );
    (child, drain, go)
}

#[test]
fn prune_between_a_snapshots_index_load_and_its_lock_loses_nothing() {
    let env = Env::init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let kept = random_bytes(1, 2 << 20);
    let dropped = random_bytes(2, 2 << 20);
    std::fs::write(src.join("kept.bin"), &kept).unwrap();
    std::fs::write(src.join("dropped.bin"), &dropped).unwrap();
    env.snapshot(&[&src]);
    std::fs::remove_file(src.join("dropped.bin")).unwrap();
    env.snapshot(&[&src]);
    env.ok(&["forget", "--keep-last", "1"]);
    // The next snapshot has dropped.bin again, and something new.
    std::fs::write(src.join("dropped.bin"), &dropped).unwrap();
    std::fs::write(src.join("new.bin"), random_bytes(3, 1 << 20)).unwrap();

    let junk = add_junk_locks(&env);
    let (child, drain, go) = start_paused(&env, &["snapshot", "--json", src.to_str().unwrap()]);
    // The snapshot has loaded the index but holds no lock yet: prune may run,
    // and removes the data only the forgotten snapshot used (dropped.bin).
    // It runs elsewhere (another host or user: its own index cache).
    let mut prune = env.cmd();
    prune
        .env("CAIRN_CACHE_DIR", env.path("other-cache"))
        .args(["prune", "--json"]);
    let out = prune.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["packs_removed"].as_u64().unwrap() + report["packs_repacked"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    go.send(()).unwrap();
    let log = drain.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{log}");
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for p in junk {
        std::fs::remove_file(p).unwrap();
    }

    assert_read_data_clean(&env);
    let target = env.path("out");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn snapshot_between_prunes_index_load_and_its_lock_does_not_fail_prune() {
    let env = Env::init();
    let src = env.path("src");
    write_generation(&src, SHAPE, 0);
    env.snapshot(&[&src]);
    write_generation(&src, SHAPE, 1);

    let junk = add_junk_locks(&env);
    let (child, drain, go) = start_paused(&env, &["prune"]);
    // prune has loaded the index but holds no lock yet: a snapshot may run
    // (elsewhere: another host or user, with its own index cache).
    let mut snap = env.cmd();
    snap.env("CAIRN_CACHE_DIR", env.path("other-cache")).args([
        "snapshot",
        "--json",
        src.to_str().unwrap(),
    ]);
    let out = snap.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    go.send(()).unwrap();
    let log = drain.join().unwrap();
    let out = child.wait_with_output().unwrap();
    for p in junk {
        std::fs::remove_file(p).unwrap();
    }
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("skipping unreadable lock"))
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "prune after a snapshot finished:\n{}",
        errors.join("\n")
    );

    assert_read_data_clean(&env);
    let (target, scratch) = (env.path("out"), env.path("expected"));
    assert_restores_generation(&env, &id, &src, SHAPE, 1, &target, &scratch);
}

// Issue 24, finding 6: two `wal-push`es of different content under one
// WAL name at the same time. `wal-push` needs no PostgreSQL server: any
// file named like a WAL segment is archived.

/// A WAL segment name for `i`.
fn wal_name(i: u32) -> String {
    format!("0000000100000000000000{:02X}", i + 1)
}

/// Write `bytes` as WAL file `name` in directory `dir` of the test.
fn wal_file(env: &Env, dir: &str, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let d = env.path(dir);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn spawn_wal_push(env: &Env, path: &Path) -> Child {
    env.cmd()
        .arg("wal-push")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Twenty names, two different contents each, pushed at the same time by
/// two processes: exactly one push per name succeeds, the other is refused
/// (exit 1, naming the conflict), `wal-fetch` returns the winner's bytes,
/// and `check` is clean.
#[test]
fn issue_24_concurrent_wal_pushes_of_different_content_one_wins_per_name() {
    let env = Env::init();
    let mut both_won = Vec::new();
    let mut winners = Vec::new();
    for i in 0..20u32 {
        let name = wal_name(i);
        let a = random_bytes(0xA000 + u64::from(i), 256 << 10);
        let b = random_bytes(0xB000 + u64::from(i), 256 << 10);
        let pa = wal_file(&env, "a", &name, &a);
        let pb = wal_file(&env, "b", &name, &b);
        let (ca, cb) = (spawn_wal_push(&env, &pa), spawn_wal_push(&env, &pb));
        let (oa, ob) = (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        );
        let (won, loser) = match (oa.status.success(), ob.status.success()) {
            (true, false) => (&a, &ob),
            (false, true) => (&b, &oa),
            (true, true) => {
                both_won.push(name.clone());
                continue;
            }
            (false, false) => panic!(
                "{name}: both pushes failed:\n{}\n{}",
                String::from_utf8_lossy(&oa.stderr),
                String::from_utf8_lossy(&ob.stderr)
            ),
        };
        let (code, err) = code_and_stderr(loser);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(
            err.contains(&name) && err.contains("different content") && err.contains("hint:"),
            "{name}: {err}"
        );
        let fetched = env.path("fetched");
        env.ok(&["wal-fetch", &name, fetched.to_str().unwrap()]);
        assert!(
            std::fs::read(&fetched).unwrap() == *won,
            "{name}: wal-fetch returned other bytes than the winner's"
        );
        winners.push((name, won.clone()));
    }
    assert!(
        both_won.is_empty(),
        "both different contents were accepted for {} of 20 names: {both_won:?}",
        both_won.len()
    );
    let (code, report, err) = run_json(&env, &["check", "--read-data"]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    // Pushing the winner's content again is still fine (idempotent).
    let (name, bytes) = &winners[0];
    let again = wal_file(&env, "again", name, bytes);
    env.ok(&["wal-push", again.to_str().unwrap()]);
}

/// Copy every file of `from` that `to` lacks (file names are content
/// hashes, so nothing is overwritten).
fn copy_missing(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_missing(&e.path(), &target);
        } else if !target.exists() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A second entry of other content under an archived WAL name, planted by
/// hand (as two pushes racing in an older cairn left them): `check` reports
/// it, naming the WAL file, with or without the name's claim; `wal-fetch`
/// returns the claimed content, and refuses to guess without a claim.
#[test]
fn issue_24_check_reports_a_duplicate_wal_entry_planted_by_hand() {
    let env = Env::init();
    let twin = env.path("twin");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&env.repo)
        .arg(&twin)
        .output()
        .unwrap();
    assert!(out.status.success());
    let name = wal_name(0);
    let a = random_bytes(0xD1, 100 << 10);
    let b = random_bytes(0xD2, 100 << 10);
    env.ok(&["wal-push", wal_file(&env, "a", &name, &a).to_str().unwrap()]);
    let pb = wal_file(&env, "b", &name, &b);
    env.cmd()
        .env("CAIRN_REPOSITORY", &twin)
        .env("CAIRN_CACHE_DIR", env.path("twin-cache"))
        .arg("wal-push")
        .arg(&pb)
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("push into the twin");
    env.ok(&["check"]);
    for dir in ["wal", "index", "data"] {
        copy_missing(&twin.join(dir), &env.repo.join(dir));
    }

    let assert_reported = |what: &str| {
        let (code, report, err) = run_json(&env, &["check", "--read-data"]);
        assert_eq!(code, 1, "{what}: {report:#}\n{err}");
        let errors = report["errors"].to_string();
        assert!(
            errors.contains(&name) && errors.contains("different content"),
            "{what}: {report:#}"
        );
    };
    assert_reported("with the claim");
    let fetched = env.path("fetched");
    env.ok(&["wal-fetch", &name, fetched.to_str().unwrap()]);
    assert!(
        std::fs::read(&fetched).unwrap() == a,
        "not the claimed content"
    );

    // Without the claim (a repository written before claims existed).
    std::fs::remove_file(env.repo.join("wal").join(&name)).unwrap();
    assert_reported("without the claim");
    let out = env.run(&["wal-fetch", &name, env.path("fetched2").to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&name) && err.contains("hint:"), "{err}");
}

/// Issue 28 (found by `scripts/timelapse --days 60 --seed 1`, day 50): a
/// `check` that ran while PostgreSQL archived a segment read the index
/// before the push wrote its index file and listed the WAL entries after it
/// wrote its entry, and so reported the new segment's content as not in the
/// index — a false "point-in-time recovery cannot replay past it", and a
/// failed restore test when the daemon's data check hit it. WAL entries are
/// now listed before the index is read (spec/repository.md §3, "Read
/// order"): `check` stays clean however the two interleave.
#[test]
fn check_while_wal_is_archived_reports_nothing_missing() {
    let env = Env::init();
    env.ok(&[
        "wal-push",
        wal_file(&env, "w", &wal_name(0), &random_bytes(0xE0, 64 << 10))
            .to_str()
            .unwrap(),
    ]);
    let pushes = 40u32;
    let files: Vec<_> = (1..=pushes)
        .map(|i| {
            wal_file(
                &env,
                "w",
                &wal_name(i),
                &random_bytes(0xE0 + u64::from(i), 64 << 10),
            )
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (checks, failures) = std::thread::scope(|s| {
        let checker = s.spawn(|| {
            let (mut checks, mut failures) = (0, Vec::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = env.run(&["check"]);
                checks += 1;
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stdout).into_owned());
                }
            }
            (checks, failures)
        });
        for f in &files {
            env.ok(&["wal-push", f.to_str().unwrap()]);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        checker.join().unwrap()
    });
    assert!(
        checks >= 5,
        "only {checks} checks ran beside {pushes} pushes"
    );
    assert!(
        failures.is_empty(),
        "{} of {checks} checks failed while WAL was archived; the first:\n{}",
        failures.len(),
        failures[0]
    );
}
