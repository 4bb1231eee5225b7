//! Crash points, enumerated (issue 28, item 5; spec/repository.md "Crash
//! points"). Each command that changes a repository — `snapshot`, `forget`,
//! `prune`, `wal-push`, `key add`, `key remove`, `repair index`, `repair
//! packs` — is run once
//! on a small repository to count its mutating backend operations
//! (`CAIRN_TEST_FAULT_COUNTS`), then, on a fresh copy of the same repository
//! each time, once per operation K and mode with `CAIRN_TEST_FAULT=OP:K:MODE`
//! (src/backend/faulty.rs): the K-th operation fails, or the process is
//! killed (SIGKILL) just before or just after it.
//!
//! After each run the invariants of spec/repository.md §3 are checked from
//! outside, never by asking the run that failed: every snapshot that existed
//! before is still listed (for `forget`: at least the kept ones, at most the
//! ones before) and restores byte-identical to the tree it was taken of;
//! archived WAL fetches byte-identical; the keys are there; `cairn check`
//! reports no error and no damage (unreferenced packs are leftovers, not
//! errors). Then the same command runs again without the fault and must
//! succeed, after which `check --read-data` is clean and the command's work
//! is done (the forgotten snapshots gone, leftovers pruned, the new key
//! opens, the WAL file fetches, the damaged index file repaired away). A
//! `fail` must end the command with a message and a non-zero exit, never a
//! panic — or, when the failed operation is one the command may do without
//! (releasing its lock), with exit 0 and a warning naming it.

use crate::common::*;
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// Small trees (3 × 1.25 MiB of noise and 48 KiB of text per generation),
/// so a few hundred runs take a minute or two; one or two of the noise
/// files change from one generation to the next: more than one 1 MiB pack.
const SHAPE: TreeShape = TreeShape {
    random_files: 3,
    random_file_len: 1280 << 10,
    period: 2,
    text_len: 48 << 10,
    salt: 0xC2A5,
};

/// The generation the command under test snapshots (the template holds 0..=2).
const NEXT: u64 = 3;

/// The operations the wrapper counts (`create` only by `init`).
const OPS: [&str; 5] = ["write", "write_new", "rename", "remove", "remove_temporary"];

/// At most this many K per operation kind; more are sampled evenly, first
/// and last included.
const MAX_K: u64 = 16;

/// The modes an operation is enumerated with. A `rename` (local backend:
/// the temporary file moved to its name inside every write) adds one state
/// of its own, killed before it with the temporary file written; its
/// `fail` and `abort-after` are those of the write it belongs to.
fn modes(op: &str) -> &'static [&'static str] {
    match op {
        "rename" => &["abort-before"],
        _ => &["fail", "abort-before", "abort-after"],
    }
}

/// What the command under test is, with what its work must leave.
enum Command {
    Snapshot,
    /// `forget --keep-last 1`: the newest snapshot stays.
    Forget,
    /// After a forget, with a leftover pack: repacks, deletes, cleans up.
    Prune,
    /// A second WAL file (the first is archived in the template).
    WalPush,
    /// A key opened by `password2`.
    KeyAdd,
    /// The second key of the template.
    KeyRemove,
    /// A damaged index file and an unindexed pack.
    RepairIndex,
    /// A byte flipped in a pack of a forgotten snapshot (no kept snapshot
    /// uses it, so every kept one must still restore).
    RepairPacks,
}

/// A template repository for one command, copied for every run.
struct World {
    base: Env,
    command: Command,
    args: Vec<String>,
    src: PathBuf,
    /// The template's snapshots, each with the generation of the tree it holds.
    snapshots: Vec<(String, u64)>,
    /// Snapshots the command must leave (all of them but for `forget`).
    kept: BTreeSet<String>,
    /// WAL files archived in the template, and the one `wal-push` adds.
    wal: Vec<(String, Vec<u8>)>,
    new_wal: Option<(PathBuf, Vec<u8>)>,
    /// The template's keys, and the one `key remove` removes.
    keys: BTreeSet<String>,
    removed_key: Option<String>,
    /// Errors `check` reports in the template (by a name in the message):
    /// the damaged index file `repair index` is there to remove.
    planted: Vec<String>,
    scratch: PathBuf,
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn wal_name(i: u32) -> String {
    format!("00000001000000000000000{i:X}")
}

fn key_ids(env: &Env) -> BTreeSet<String> {
    env.json(&["key", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

impl World {
    fn new(command: Command) -> World {
        let base = Env::init();
        small_packs(&base);
        let src = base.path("src");
        let mut snapshots = Vec::new();
        let mut last_packs = Vec::new();
        for g in 0..NEXT {
            write_generation(&src, SHAPE, g);
            let before = pack_files(&base.repo);
            snapshots.push((base.snapshot(&[&src]), g));
            last_packs = pack_files(&base.repo);
            last_packs.retain(|p| !before.contains(p));
        }
        write_generation(&src, SHAPE, NEXT);
        let wal_dir = base.path("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let first = wal_dir.join(wal_name(1));
        let first_data = random_bytes(0x3A1, 200 << 10);
        std::fs::write(&first, &first_data).unwrap();
        base.ok(&["wal-push", &s(&first)]);
        std::fs::write(base.path("password2"), "battery staple\n").unwrap();
        let mut w = World {
            args: Vec::new(),
            kept: snapshots.iter().map(|(id, _)| id.clone()).collect(),
            wal: vec![(wal_name(1), first_data)],
            new_wal: None,
            keys: BTreeSet::new(),
            removed_key: None,
            planted: Vec::new(),
            scratch: base.path("expected"),
            command,
            src,
            snapshots,
            base,
        };
        w.args = match w.command {
            Command::Snapshot => vec!["snapshot".into(), s(&w.src)],
            Command::Forget => {
                w.kept = [w.snapshots[2].0.clone()].into();
                vec!["forget".into(), "--keep-last".into(), "1".into()]
            }
            Command::Prune => {
                w.base.ok(&["forget", "--keep-last", "1"]);
                w.snapshots.retain(|(_, g)| *g == NEXT - 1);
                assert_eq!(w.base.snapshot_ids(), vec![w.snapshots[0].0.clone()]);
                w.kept = [w.snapshots[0].0.clone()].into();
                w.leave_unindexed_pack();
                vec!["prune".into()]
            }
            Command::WalPush => {
                let p = wal_dir.join(wal_name(2));
                let data = random_bytes(0x3A2, 200 << 10);
                std::fs::write(&p, &data).unwrap();
                w.new_wal = Some((p.clone(), data));
                vec!["wal-push".into(), s(&p)]
            }
            Command::KeyAdd => vec![
                "key".into(),
                "add".into(),
                "--new-password-file".into(),
                s(&w.base.path("password2")),
                "--kdf-work-factor".into(),
                "10".into(),
            ],
            Command::KeyRemove => {
                let added = w.base.json(&[
                    "key",
                    "add",
                    "--new-password-file",
                    &s(&w.base.path("password2")),
                    "--kdf-work-factor",
                    "10",
                ]);
                let id = added["id"].as_str().unwrap().to_string();
                w.removed_key = Some(id.clone());
                vec!["key".into(), "remove".into(), id]
            }
            Command::RepairIndex => {
                w.leave_unindexed_pack();
                let name = "d".repeat(64);
                std::fs::write(w.base.repo.join("index").join(&name), b"not an index").unwrap();
                let (code, report, _) = run_json(&w.base, &["check"]);
                assert_ne!(code, 0, "the damaged index file is not reported");
                assert_eq!(report["errors"].as_array().unwrap().len(), 1, "{report:#}");
                assert!(report["errors"][0].as_str().unwrap().contains(&name));
                w.planted.push(name);
                vec!["repair".into(), "index".into()]
            }
            Command::RepairPacks => {
                // The newest snapshot's packs hold only what it stored new.
                let (newest, _) = w.snapshots.pop().unwrap();
                w.base.ok(&["forget", &newest]);
                w.kept = w.snapshots.iter().map(|(id, _)| id.clone()).collect();
                let pack = last_packs
                    .iter()
                    .max_by_key(|p| std::fs::metadata(p).unwrap().len())
                    .unwrap();
                let mut bytes = std::fs::read(pack).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x20;
                std::fs::write(pack, bytes).unwrap();
                let name = pack.file_name().unwrap().to_str().unwrap().to_string();
                let (code, report, _) = run_json(&w.base, &["check", "--read-data"]);
                assert_ne!(code, 0, "the damaged pack is not reported");
                assert_eq!(report["damaged"], serde_json::json!([]), "{report:#}");
                assert_eq!(
                    report["damaged_packs"],
                    serde_json::json!([name]),
                    "{report:#}"
                );
                w.planted.push(name);
                vec!["repair".into(), "packs".into()]
            }
        };
        w.keys = key_ids(&w.base);
        w
    }

    /// What a `snapshot` killed after storing its packs leaves: packs no
    /// index lists and a temporary file. Its writes are the lock, two
    /// packs (by two uploader threads, in either order), the index and the
    /// snapshot; it dies renaming the index into place.
    fn leave_unindexed_pack(&self) {
        let out = self
            .base
            .cmd()
            .env("CAIRN_TEST_FAULT", "rename:4:abort-before")
            .args(["snapshot", &s(&self.src)])
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(9), "{out:?}");
        let (_, report, _) = run_json(&self.base, &["check"]);
        assert_eq!(
            report["unreferenced_packs"].as_array().unwrap().len(),
            2,
            "{report:#}"
        );
        assert_eq!(repo_files(&self.base.repo, "tmp").len(), 1);
    }

    /// A fresh copy of the template repository, and of its index cache
    /// (not of its key cache, which names the template's password file).
    fn copy(&self) -> Env {
        let env = Env::new();
        copy_tree(&self.base.repo, &env.repo);
        copy_tree(&self.base.cache, &env.cache);
        let _ = std::fs::remove_dir_all(env.cache.join("keys"));
        env
    }

    /// The command's operations, counted on a copy; it must succeed there
    /// and do real work.
    fn count(&self) -> serde_json::Value {
        let env = self.copy();
        let counts = env.path("counts.json");
        let out = env
            .cmd()
            .env("CAIRN_TEST_FAULT_COUNTS", &counts)
            .args(&self.args)
            .arg("--json")
            .output()
            .unwrap();
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 0, "{:?} without a fault: {err}", self.args);
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        match self.command {
            Command::Prune => {
                for what in [
                    "packs_repacked",
                    "packs_removed",
                    "unreferenced_packs_removed",
                ] {
                    assert!(
                        report[what].as_u64().unwrap() > 0,
                        "prune: {what}\n{report:#}"
                    );
                }
            }
            Command::RepairPacks => {
                assert_eq!(report["damaged_packs"], serde_json::json!(self.planted));
                let dropped = report["chunks_dropped"].as_array().unwrap().len();
                assert!(dropped > 0 && report["new_packs"] == 1, "{report:#}");
            }
            Command::RepairIndex => {
                assert!(report["indexed_packs"].as_u64().unwrap() > 0, "{report:#}");
                assert_eq!(
                    report["removed_index_files"],
                    serde_json::json!(self.planted)
                );
            }
            _ => {}
        }
        serde_json::from_slice(&std::fs::read(&counts).unwrap()).unwrap()
    }

    /// Restore `id` and compare it with generation `g` of the tree.
    fn assert_restores(&self, env: &Env, id: &str, g: u64) {
        let target = env.path("restore");
        assert_restores_generation(env, id, &self.src, SHAPE, g, &target, &self.scratch);
    }

    /// `cairn check` (with `--read-data` when asked) finds no error and no
    /// damage, beyond the errors planted in the template when `planted`.
    fn assert_check_clean(
        &self,
        env: &Env,
        read_data: bool,
        planted: bool,
        when: &str,
    ) -> serde_json::Value {
        let mut args = vec!["check"];
        if read_data {
            args.push("--read-data");
        }
        let (code, report, err) = run_json(env, &args);
        assert!(
            report.is_object(),
            "{when}: `cairn {args:?}` printed no report: {err}"
        );
        let unexpected: Vec<&str> = report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .filter(|e| !(planted && self.planted.iter().any(|p| e.contains(p.as_str()))))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{when}: check reports errors: {unexpected:#?}"
        );
        assert_eq!(report["damaged"], serde_json::json!([]), "{when}");
        if self.planted.is_empty() || !planted {
            assert_eq!(code, 0, "{when}: {err}");
        }
        report
    }

    /// The invariants right after a run that failed or was killed.
    fn assert_intact(&self, env: &Env, when: &str) {
        let listed: BTreeSet<String> = env.snapshot_ids().into_iter().collect();
        let before: BTreeSet<String> = self.snapshots.iter().map(|(id, _)| id.clone()).collect();
        assert!(
            self.kept.is_subset(&listed),
            "{when}: snapshots lost: {listed:?}"
        );
        match self.command {
            Command::Forget => assert!(listed.is_subset(&before), "{when}: {listed:?}"),
            Command::Snapshot => {
                let new: Vec<&String> = listed.difference(&before).collect();
                assert!(new.len() <= 1, "{when}: {new:?}");
                // A snapshot that is listed is complete.
                if let Some(id) = new.first() {
                    self.assert_restores(env, id, NEXT);
                }
            }
            _ => assert_eq!(listed, before, "{when}"),
        }
        for (id, g) in self.snapshots.iter().filter(|(id, _)| listed.contains(id)) {
            self.assert_restores(env, id, *g);
        }
        // Only these commands write WAL or delete data (every command
        // opens the repository with one of its keys, so those are there).
        if matches!(
            self.command,
            Command::Prune | Command::WalPush | Command::RepairIndex | Command::RepairPacks
        ) {
            for (name, data) in &self.wal {
                self.assert_fetches(env, name, data, when);
            }
        }
        if matches!(self.command, Command::KeyAdd | Command::KeyRemove) {
            let keys = key_ids(env);
            let mut must = self.keys.clone();
            if let Some(k) = &self.removed_key {
                must.remove(k);
            }
            assert!(must.is_subset(&keys), "{when}: keys lost: {keys:?}");
            assert!(keys.len() <= self.keys.len() + 1, "{when}: {keys:?}");
        }
        self.assert_check_clean(env, false, true, when);
    }

    fn assert_fetches(&self, env: &Env, name: &str, data: &[u8], when: &str) {
        let dest = env.path("fetched");
        env.ok(&["wal-fetch", "--prefetch", "0", name, &s(&dest)]);
        assert!(
            std::fs::read(&dest).unwrap() == data,
            "{when}: {name} differs"
        );
        std::fs::remove_file(dest).unwrap();
    }

    /// Run the command again without the fault; it must succeed (`key
    /// remove` of a key already gone must say so, exit 2) and its work be done.
    fn assert_rerun_completes(&self, env: &Env, when: &str) {
        let when = format!("{when}, then run again");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let gone = (self.removed_key.as_ref()).is_some_and(|k| !key_ids(env).contains(k));
        let (code, report, err) = run_json(env, &args);
        assert!(!err.contains("panicked"), "{when}: {err}");
        if gone {
            assert!(
                code == 2 && err.contains("no key matches"),
                "{when}: {code} {err}"
            );
        } else {
            assert_eq!(code, 0, "{when}: {err}");
        }
        let check = self.assert_check_clean(env, true, false, &when);
        let listed: BTreeSet<String> = env.snapshot_ids().into_iter().collect();
        match self.command {
            Command::Snapshot => {
                let id = report["id"].as_str().unwrap();
                assert!(listed.contains(id), "{when}");
                self.assert_restores(env, id, NEXT);
            }
            Command::Forget => assert_eq!(listed, self.kept, "{when}"),
            Command::Prune => {
                assert_eq!(check["unreferenced_packs"], serde_json::json!([]), "{when}");
                assert_eq!(repo_files(&env.repo, "tmp"), Vec::<String>::new(), "{when}");
                for (id, g) in &self.snapshots {
                    self.assert_restores(env, id, *g);
                }
            }
            Command::WalPush => {
                let (p, data) = self.new_wal.as_ref().unwrap();
                let name = p.file_name().unwrap().to_str().unwrap();
                self.assert_fetches(env, name, data, &when);
            }
            Command::KeyAdd => {
                let out = env
                    .cmd()
                    .env("CAIRN_PASSWORD_FILE", self.base.path("password2"))
                    .args(["snapshots"])
                    .output()
                    .unwrap();
                let (code, err) = code_and_stderr(&out);
                assert_eq!(code, 0, "{when}: the new key does not open: {err}");
            }
            Command::KeyRemove => {
                let k = self.removed_key.as_ref().unwrap();
                assert!(!key_ids(env).contains(k), "{when}");
            }
            Command::RepairIndex => {
                assert_eq!(check["unreferenced_packs"], serde_json::json!([]), "{when}");
            }
            // The damaged pack is in no index any more (check --read-data is
            // clean); killed before removing it, it is a leftover for prune.
            Command::RepairPacks => assert!(check.get("damaged_packs").is_none(), "{when}"),
        }
        match self.command {
            Command::Forget => {}
            Command::Snapshot => assert!(self.kept.is_subset(&listed), "{when}"),
            _ => assert_eq!(listed, self.kept, "{when}"),
        }
    }

    /// One crash point: the command with `fault` on a fresh copy.
    fn run_case(&self, op: &str, k: u64, mode: &str) {
        let fault = format!("{op}:{k}:{mode}");
        let when = format!("{:?} with CAIRN_TEST_FAULT={fault}", self.args);
        // Shown with a failure that names no case (a restore's, say).
        eprintln!("crash point: {when}");
        let env = self.copy();
        // A fault must never leave a command waiting for a thread that died
        // with its error: a liveness bound, generous for a busy machine.
        let out = output_within(
            env.cmd().env("CAIRN_TEST_FAULT", &fault).args(&self.args),
            120,
        );
        let (code, err) = code_and_stderr(&out);
        assert!(!err.contains("panicked"), "{when}: {err}");
        if mode == "fail" {
            assert!(
                err.contains("injected fault"),
                "{when}: the fault was not met or not reported (exit {code}): {err}"
            );
            if code == 0 {
                // Only a lock it could not release may leave a command's
                // work done: said on stderr, the lock left for `unlock`.
                assert!(err.contains("lock"), "{when}: exit 0: {err}");
                assert!(!repo_files(&env.repo, "locks").is_empty(), "{when}");
            } else {
                // An I/O error is a failure (exit 1, README "Exit codes").
                assert_eq!(code, 1, "{when}: {err}");
                assert!(err.contains("error:"), "{when}: {err}");
            }
        } else {
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{when}: not killed at the fault: {:?} {err}",
                out.status
            );
            assert!(
                err.contains("CAIRN_TEST_FAULT: killing the process"),
                "{when}: {err}"
            );
        }
        self.assert_intact(&env, &when);
        self.assert_rerun_completes(&env, &when);
    }
}

/// Packs of 1 MiB (the least a config may say) instead of 16, so that a
/// snapshot of a few hundred KiB stores several, written by the uploader
/// threads side by side as a large one's are. The config is the one file
/// not named by its hash and is read, checked, before anything else
/// (spec/repository.md §8), so it may be changed before the first write.
fn small_packs(env: &Env) {
    let path = env.repo.join("config");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["pack_size"] = (1u64 << 20).into();
    config["frame_size"] = (64u64 << 10).into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
}

/// Copy a directory tree, leaving out empty directories below it (but not
/// `from` itself): a repository's 256 `data/xx` directories are mostly
/// empty, and removing them again took most of a second per copy on a busy
/// test machine. The local backend makes a pack's directory when it is
/// missing, as in a repository whose `data/xx` were never all made.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if from.ends_with("data") && std::fs::read_dir(e.path()).unwrap().next().is_none() {
                continue;
            }
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The K to run for an operation made `n` times.
fn sample(n: u64) -> Vec<u64> {
    if n <= MAX_K {
        return (1..=n).collect();
    }
    let mut v: Vec<u64> = (0..MAX_K).map(|i| 1 + i * (n - 1) / (MAX_K - 1)).collect();
    v.dedup();
    v
}

/// Count, then run every crash point of `command`.
fn enumerate(command: Command) {
    let started = std::time::Instant::now();
    let world = World::new(command);
    let counts = world.count();
    let name = world.args[..if world.args[0] == "key" || world.args[0] == "repair" {
        2
    } else {
        1
    }]
        .join(" ");
    let (mut cases, mut sampled) = (0, Vec::new());
    let mut per_op = Vec::new();
    for op in OPS {
        let n = counts[op].as_u64().unwrap();
        let ks = sample(n);
        if (ks.len() as u64) < n {
            sampled.push(format!("{op} {} of {n}", ks.len()));
        }
        per_op.push(format!("{op} {n}"));
        for k in ks {
            for mode in modes(op) {
                world.run_case(op, k, mode);
                cases += 1;
            }
        }
    }
    eprintln!(
        "crash points: {name}: operations {}; {cases} runs (K × modes){}; {:.1?}",
        per_op.join(", "),
        if sampled.is_empty() {
            String::new()
        } else {
            format!(", K sampled: {}", sampled.join(", "))
        },
        started.elapsed()
    );
    assert!(cases > 0, "{name} made no mutating operation");
}

#[test]
fn snapshot() {
    enumerate(Command::Snapshot);
}

#[test]
fn forget() {
    enumerate(Command::Forget);
}

#[test]
fn prune() {
    enumerate(Command::Prune);
}

#[test]
fn wal_push() {
    enumerate(Command::WalPush);
}

#[test]
fn key_add() {
    enumerate(Command::KeyAdd);
}

#[test]
fn key_remove() {
    enumerate(Command::KeyRemove);
}

#[test]
fn repair_index() {
    enumerate(Command::RepairIndex);
}

#[test]
fn repair_packs() {
    enumerate(Command::RepairPacks);
}
