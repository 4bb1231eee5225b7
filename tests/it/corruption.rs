//! Damaged repositories: `check` names exactly the snapshots and files that
//! are affected, undamaged snapshots still restore byte-identical, and
//! `restore` of a damaged snapshot refuses before writing anything.
//!
//! Every scenario has two snapshots whose data lives in different packs:
//! A of tree X, then B of X plus directory Y holding a new 24 MiB file of
//! fresh random data (`Y/big.bin`, which fills more than one 16 MiB pack) and
//! a small new file. B's first pack therefore holds only chunks of
//! `Y/big.bin`; the small file and B's node list (but for chunks it may share
//! with A's) are in B's last pack. `setup` checks all this through
//! `cairn cat index` and `cairn cat snapshot`.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

struct Setup {
    env: Env,
    /// Tree X (snapshot A and B) and directory Y (only B).
    x: PathBuf,
    y: PathBuf,
    a: String,
    b: String,
    a_index: String,
    b_index: String,
    /// B's first pack: only chunks of `Y/big.bin`.
    y_pack: PathBuf,
    /// B's packs, in the order they were written.
    b_packs: Vec<String>,
    /// Whether B's node list shares chunks with A's.
    b_tree_shared: bool,
}

/// The path of a backed-up file as `check` reports it.
fn stored(p: &Path) -> String {
    p.to_str().unwrap().trim_start_matches('/').to_string()
}

fn chunk_ids(pack: &Value) -> BTreeSet<String> {
    pack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            f["chunks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
        })
        .collect()
}

fn pack_path(repo: &Path, id: &str) -> PathBuf {
    repo.join("data").join(&id[..2]).join(id)
}

fn setup() -> Setup {
    let env = Env::init();
    let (x, y) = (env.path("x"), env.path("y"));
    make_sample_tree(&x);
    let a = env.snapshot(&[&x]);
    let a_index = repo_files(&env.repo, "index");
    assert_eq!(a_index.len(), 1);

    std::fs::create_dir_all(&y).unwrap();
    std::fs::write(y.join("big.bin"), random_bytes(0xB16, 24 << 20)).unwrap();
    std::fs::write(y.join("small.txt"), "a small new file\n").unwrap();
    let b = env.snapshot(&[&x, &y]);
    let b_index: Vec<String> = repo_files(&env.repo, "index")
        .into_iter()
        .filter(|i| !a_index.contains(i))
        .collect();
    assert_eq!(b_index.len(), 1);

    // B's packs, in the order they were written (its index lists them so).
    let idx = env.json(&["cat", "index", &b_index[0]]);
    let packs = idx["packs"].as_array().unwrap();
    assert!(
        packs.len() >= 2,
        "24 MiB of new data should fill more than one pack: {}",
        packs.len()
    );
    let tree: BTreeSet<String> = env.json(&["cat", "snapshot", &b])["sources"][0]["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let a_chunks: BTreeSet<String> = env.json(&["cat", "index", &a_index[0]])["packs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(chunk_ids)
        .collect();
    // Nothing of A is in B's packs; B's first pack has none of B's node list,
    // which is in B's last pack, except for chunks it shares with A's node
    // list (the nodes of X come first in both).
    for p in packs {
        assert!(chunk_ids(p).is_disjoint(&a_chunks));
    }
    assert!(
        chunk_ids(&packs[0]).is_disjoint(&tree),
        "B's first pack holds node-list chunks"
    );
    let last = chunk_ids(packs.last().unwrap());
    let b_tree_shared = !tree.is_disjoint(&a_chunks);
    assert!(
        tree.iter()
            .all(|c| last.contains(c) || a_chunks.contains(c)),
        "B's node list is neither in its last pack nor in A's"
    );
    assert!(!tree.is_disjoint(&last), "B's node list has nothing new");
    let b_packs: Vec<String> = packs
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    Setup {
        y_pack: pack_path(&env.repo, &b_packs[0]),
        b_packs,
        b_tree_shared,
        env,
        x,
        y,
        a,
        b,
        a_index: a_index[0].clone(),
        b_index: b_index[0].clone(),
    }
}

impl Setup {
    fn y_big(&self) -> String {
        stored(&self.y.join("big.bin"))
    }

    /// Snapshot A restores byte-identical.
    fn assert_a_restores(&self, target: &str) {
        let target = self.env.path(target);
        self.env
            .ok(&["restore", &self.a, "--target", target.to_str().unwrap()]);
        assert_same_tree(&self.x, &restored(&target, &self.x));
    }

    /// Restoring B fails with exit 1 and writes nothing; returns stderr.
    fn assert_b_refuses(&self, target: &str) -> String {
        let target = self.env.path(target);
        let out = self
            .env
            .run(&["restore", &self.b, "--target", target.to_str().unwrap()]);
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 1, "restore of damaged snapshot B: {err}");
        let written: Vec<_> = match std::fs::read_dir(&target) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        assert!(
            written.is_empty(),
            "restore of B wrote {written:?} before failing"
        );
        err
    }

    /// `check` with `args` exits 1 and reports exactly `expected` (snapshot, path) as damaged.
    fn assert_check_damaged(&self, args: &[&str], expected: &[(&str, &str)]) -> Value {
        let mut a = vec!["check"];
        a.extend_from_slice(args);
        let (code, report, err) = run_json(&self.env, &a);
        assert_eq!(code, 1, "`cairn {}`: {report:#}\n{err}", a.join(" "));
        let got: BTreeSet<(String, String, String)> = report["damaged"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["snapshot"].as_str().unwrap().to_string(),
                    d["source"].as_str().unwrap().to_string(),
                    d["path"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String, String)> = expected
            .iter()
            .map(|(s, p)| (s.to_string(), "files".to_string(), p.to_string()))
            .collect();
        assert_eq!(got, want, "`cairn {}`: {report:#}", a.join(" "));

        // The text output says the same, one `damaged:` line per file.
        let out = self.env.run(&a);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("damaged: "))
            .collect();
        assert_eq!(lines.len(), expected.len(), "{text}");
        for (snap, path) in expected {
            let prefix = format!("damaged: snapshot {} (", &snap[..8]);
            let suffix = format!(") source files: {path}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&prefix) && l.ends_with(&suffix)),
                "no line for {snap} {path}:\n{text}"
            );
        }
        report
    }
}

#[test]
fn a_flipped_byte_in_a_pack_damages_exactly_the_file_using_it() {
    let s = setup();
    let size = std::fs::metadata(&s.y_pack).unwrap().len();
    let middle = size / 2;
    // The byte is inside a frame, not in the pack's header.
    let idx = s.env.json(&["cat", "index", &s.b_index]);
    let frames = idx["packs"][0]["frames"].as_array().unwrap();
    assert!(frames.iter().any(|f| {
        let (o, l) = (f["offset"].as_u64().unwrap(), f["length"].as_u64().unwrap());
        o <= middle && middle < o + l
    }));
    let mut bytes = std::fs::read(&s.y_pack).unwrap();
    bytes[middle as usize] ^= 0x01;
    std::fs::write(&s.y_pack, bytes).unwrap();

    let report = s.assert_check_damaged(&["--read-data"], &[(&s.b, &s.y_big())]);
    let errors = report["errors"].to_string();
    assert!(
        errors.contains(&s.b_packs[0]),
        "the damaged pack is named: {errors}"
    );
    s.assert_a_restores("out-a");
    let err = s.assert_b_refuses("out-b");
    assert!(
        err.contains("nothing was restored") && err.contains(&s.y_big()),
        "{err}"
    );
    // What B has outside the damaged pack still restores on its own.
    let target = s.env.path("out-b-x");
    s.env.ok(&[
        "restore",
        &s.b,
        "--target",
        target.to_str().unwrap(),
        "--include",
        s.x.to_str().unwrap(),
    ]);
    assert_same_tree(&s.x, &restored(&target, &s.x));
}

#[test]
fn a_truncated_pack_damages_exactly_the_file_using_it() {
    let s = setup();
    let size = std::fs::metadata(&s.y_pack).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.y_pack)
        .unwrap();
    f.set_len(size / 2).unwrap();
    drop(f);

    // The structure check alone sees it (the size differs from the index)...
    let report = s.assert_check_damaged(&[], &[(&s.b, &s.y_big())]);
    let errors = report["errors"].to_string();
    assert!(
        errors.contains(&s.b_packs[0]) && errors.contains(&format!("the index says {size}")),
        "{errors}"
    );
    // ...and reading the data agrees.
    s.assert_check_damaged(&["--read-data"], &[(&s.b, &s.y_big())]);
    s.assert_a_restores("out-a");
    let err = s.assert_b_refuses("out-b");
    assert!(
        err.contains("nothing was restored") && err.contains(&s.y_big()),
        "{err}"
    );
}

#[test]
fn a_deleted_index_file_damages_the_snapshots_whose_chunks_only_it_listed() {
    let s = setup();
    let packs_before = pack_files(&s.env.repo);
    std::fs::remove_file(s.env.repo.join("index").join(&s.b_index)).unwrap();

    // B's node list was listed only in B's index, so B cannot even be read;
    // A does not use anything from B's index and is whole.
    let report = s.assert_check_damaged(&[], &[(&s.b, "(node list)")]);
    // B's packs are still there, now unreferenced: the data is not lost, only unindexed.
    let unreferenced: Vec<&str> = report["unreferenced_packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let mut b_packs = s.b_packs.clone();
    b_packs.sort();
    assert_eq!(unreferenced, b_packs);
    s.assert_a_restores("out-a");
    s.assert_b_refuses("out-b");

    // prune must not "clean up" B's unindexed packs while B still needs them:
    // it cannot tell what is in use, so it stops and removes nothing.
    let (code, err) = code_and_stderr(&s.env.run(&["prune"]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        pack_files(&s.env.repo),
        packs_before,
        "prune removed packs: {err}"
    );
    s.assert_a_restores("out-a-after-prune");

    // The packs carry their own headers: `repair index` indexes them again
    // and B is whole.
    let out = s.env.json(&["repair", "index"]);
    assert_eq!(out["indexed_packs"].as_u64(), Some(b_packs.len() as u64));
    s.env.ok(&["check", "--read-data"]);
    let target = s.env.path("out-b-repaired");
    s.env
        .ok(&["restore", &s.b, "--target", target.to_str().unwrap()]);
}

#[test]
fn a_deleted_index_file_of_shared_data_damages_every_snapshot_using_it() {
    let s = setup();
    std::fs::remove_file(s.env.repo.join("index").join(&s.a_index)).unwrap();

    // A's index listed A's node list and all of X's data, which B shares:
    // A cannot be read at all. B is damaged too: if its node list shares a
    // chunk with A's (both start with the nodes of X; whether a chunk
    // boundary falls inside that common start depends on the repository's
    // chunker key), B cannot be read either; otherwise exactly the files of X with content are damaged
    // (not the empty file, not Y's files, whose chunks are in B's index).
    let b_damaged: Vec<String> = if s.b_tree_shared {
        vec!["(node list)".to_string()]
    } else {
        [
            "data.bin",
            "empty",
            "etc/app/app.conf",
            "etc/secret.key",
            "rows.tsv",
        ]
        .iter()
        .filter(|f| std::fs::metadata(s.x.join(f)).unwrap().len() > 0)
        .map(|f| stored(&s.x.join(f)))
        .collect()
    };
    eprintln!("B's node list shares a chunk with A's: {}", s.b_tree_shared);
    let mut expected: Vec<(&str, &str)> = vec![(&s.a, "(node list)")];
    expected.extend(b_damaged.iter().map(|p| (s.b.as_str(), p.as_str())));
    s.assert_check_damaged(&[], &expected);
    let out = s.env.run(&[
        "restore",
        &s.a,
        "--target",
        s.env.path("out-a").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!s.env.path("out-a").exists());
    s.assert_b_refuses("out-b");
    if !s.b_tree_shared {
        // What only B's index lists still restores: Y.
        let target = s.env.path("out-b-y");
        s.env.ok(&[
            "restore",
            &s.b,
            "--target",
            target.to_str().unwrap(),
            "--include",
            s.y.to_str().unwrap(),
        ]);
        assert_same_tree(&s.y, &restored(&target, &s.y));
    }
}

/// Flip one byte in the middle of a snapshot file.
fn damage_snapshot_file(s: &Setup, id: &str) {
    let path = s.env.repo.join("snapshots").join(id);
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8; 1];
    use std::io::Read;
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[byte[0] ^ 0x01]).unwrap();
}

#[test]
fn a_flipped_byte_in_a_snapshot_file_is_reported_for_that_snapshot() {
    let s = setup();
    damage_snapshot_file(&s, &s.b);
    for args in [&["check"][..], &["check", "--read-data"][..]] {
        let (code, report, err) = run_json(&s.env, args);
        assert_eq!(code, 1, "{args:?}: {report:#}\n{err}");
        let errors: Vec<&str> = report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(&format!("snapshot {}", s.b)) && errors[0].contains("damaged"),
            "{errors:?}"
        );
        assert!(
            !report.to_string().contains(&s.a),
            "A is not reported: {report:#}"
        );
        let damaged = report["damaged"].as_array().unwrap();
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert_eq!(damaged[0]["snapshot"].as_str().unwrap(), s.b);
        assert_eq!(damaged[0]["path"], "(snapshot file)");
        let out = s.env.run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("error: snapshot {} is damaged", s.b)),
            "{text}"
        );
    }
}

#[test]
fn a_damaged_snapshot_file_does_not_hide_the_other_snapshots() {
    let s = setup();
    damage_snapshot_file(&s, &s.b);
    s.assert_a_restores("out-a");
    let listed = s.env.snapshot_ids();
    assert!(listed.contains(&s.a), "{listed:?}");
}

#[test]
fn a_failed_restore_leaves_the_files_already_in_the_target_as_they_were() {
    // Restore writes files under temporary names and renames them into
    // place only when every pack has passed: the pack of X may be decoded before
    // the damaged pack of Y is found, and must still not touch the target.
    let s = setup();
    let target = s.env.path("out");
    s.assert_a_restores("out");
    let x = restored(&target, &s.x);
    std::fs::write(x.join("data.bin"), "edited after the first restore\n").unwrap();
    std::fs::remove_file(x.join("rows.tsv")).unwrap();
    let mut bytes = std::fs::read(&s.y_pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&s.y_pack, bytes).unwrap();

    let out = s
        .env
        .run(&["restore", &s.b, "--target", target.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing was restored"), "{err}");
    assert_eq!(
        std::fs::read_to_string(x.join("data.bin")).unwrap(),
        "edited after the first restore\n"
    );
    assert!(!x.join("rows.tsv").exists(), "rows.tsv came back");
    assert!(!restored(&target, &s.y).exists(), "Y was created");
    let left: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![s
            .x
            .strip_prefix("/")
            .unwrap()
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned()],
        "staging left behind"
    );

    fn staged(dir: &Path, found: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().contains(".cairn-") {
                found.push(p.clone());
            }
            if p.is_dir() && !p.is_symlink() {
                staged(&p, found);
            }
        }
    }
    let mut found = Vec::new();
    staged(&target, &mut found);
    assert!(found.is_empty(), "temporary files left behind: {found:?}");

    // Restored again from the intact snapshot A, replacing what differs,
    // the edits are undone.
    s.env.ok(&[
        "restore",
        &s.a,
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "if-changed",
    ]);
    assert_same_tree(&s.x, &x);
}

// Issue 24, finding 7: one damaged file must not block repair. Each test
// damages one file as a failing disk or a careless admin would, runs the
// recovery command and shows the repository usable afterwards.

/// Keep the first half of a file, as a disk that lost its tail.
fn truncate_to_half(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

/// Replace a file's bytes with text of the same length.
fn overwrite_with_garbage(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    let garbage: Vec<u8> = b"garbage ".iter().copied().cycle().take(len).collect();
    std::fs::write(path, garbage).unwrap();
}

impl Setup {
    /// `check --read-data` finds nothing wrong.
    fn assert_clean(&self) {
        let (code, report, err) = run_json(&self.env, &["check", "--read-data"]);
        assert_eq!(code, 0, "{report:#}\n{err}");
        assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
        assert_eq!(report["damaged"], serde_json::json!([]), "{report:#}");
    }

    /// Snapshot B restores Y byte-identical.
    fn assert_b_restores(&self, target: &str) {
        let target = self.env.path(target);
        self.env
            .ok(&["restore", &self.b, "--target", target.to_str().unwrap()]);
        assert_same_tree(&self.y, &restored(&target, &self.y));
        assert_same_tree(&self.x, &restored(&target, &self.x));
    }
}

/// A snapshot file that lost its tail is removed by `forget ID` (the id as
/// `check` prints it), after which prune and check are clean and A restores.
#[test]
fn issue_24_forget_removes_a_truncated_snapshot_file_by_its_id() {
    let s = setup();
    let file = s.env.repo.join("snapshots").join(&s.b);
    truncate_to_half(&file);
    let (code, _, err) = run_json(&s.env, &["check"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run_json(&s.env, &["prune"]);
    assert_eq!(code, 1, "prune with a damaged snapshot: {err}");
    assert!(
        err.contains(&format!("cairn forget {}", &s.b[..8])),
        "prune's hint names the command that removes it: {err}"
    );

    let out = s.env.ok(&["forget", &s.b[..8]]);
    assert!(out.contains(&format!("remove {}", &s.b[..8])), "{out}");
    assert!(!file.exists(), "the damaged snapshot file is still there");
    s.env.ok(&["prune"]);
    s.assert_clean();
    s.assert_a_restores("out-a");
    assert_eq!(s.env.snapshot_ids(), vec![s.a.clone()]);
}

/// `forget ID` of a snapshot nobody has is an error naming it, and a
/// policy with ids is refused: both decide which snapshots go.
#[test]
fn issue_24_forget_by_id_refuses_unknown_ids_and_mixed_rules() {
    let env = Env::init();
    let x = env.path("x");
    make_sample_tree(&x);
    let a = env.snapshot(&[&x]);
    // An id that matches nothing is a usage mistake (issue 27, item 9).
    let (code, err) = code_and_stderr(&env.run(&["forget", "0123456789abcdef"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("0123456789abcdef") && err.contains("hint:"),
        "{err}"
    );
    let (code, err) = code_and_stderr(&env.run(&["forget", &a, "--keep-last", "1"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(env.snapshot_ids(), vec![a]);
}

/// An index file overwritten with garbage: `repair index` indexes its packs
/// again and removes it, so check is clean and both snapshots restore.
#[test]
fn issue_24_repair_index_removes_the_damaged_index_file_it_replaced() {
    let s = setup();
    let file = s.env.repo.join("index").join(&s.b_index);
    overwrite_with_garbage(&file);
    let (code, _, err) = run_json(&s.env, &["check"]);
    assert_eq!(code, 1, "{err}");

    let (code, report, err) = run_json(&s.env, &["repair", "index"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        report["removed_index_files"],
        serde_json::json!([s.b_index]),
        "{report:#}"
    );
    assert!(!file.exists(), "the damaged index file is still there");
    s.assert_clean();
    s.assert_a_restores("out-a");
    s.assert_b_restores("out-b");
    s.env.ok(&["prune"]);
    s.assert_clean();
    s.assert_b_restores("out-b2");
}

/// A damaged index file whose packs no snapshot needs any more (B was
/// removed): prune goes on, keeping every pack no readable index lists and
/// the damaged file for `repair index`; after the repair, prune removes
/// B's data and the repository is clean.
#[test]
fn issue_24_prune_proceeds_past_a_damaged_index_file_it_can_scope() {
    let s = setup();
    std::fs::remove_file(s.env.repo.join("snapshots").join(&s.b)).unwrap();
    let file = s.env.repo.join("index").join(&s.b_index);
    truncate_to_half(&file);

    let out = s.env.run(&["prune"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "prune: {err}");
    assert!(
        err.contains(&s.b_index[..8]) && err.contains("repair index"),
        "{err}"
    );
    assert!(file.exists(), "prune removed the damaged index file");
    for p in &s.b_packs {
        assert!(
            pack_path(&s.env.repo, p).exists(),
            "prune removed pack {p}, which only the damaged index listed"
        );
    }
    s.assert_a_restores("out-a");

    s.env.ok(&["repair", "index"]);
    s.env.ok(&["prune"]);
    for p in &s.b_packs {
        assert!(!pack_path(&s.env.repo, p).exists(), "B's pack {p} is left");
    }
    s.assert_clean();
    s.assert_a_restores("out-a2");
}

/// A zero-byte key file is skipped with a warning naming it; another key
/// still opens the repository, and everything works.
#[test]
fn issue_24_a_zero_byte_key_file_is_skipped_while_another_key_opens() {
    let env = Env::init();
    let x = env.path("x");
    make_sample_tree(&x);
    let a = env.snapshot(&[&x]);
    let second = env.path("password2");
    std::fs::write(&second, "battery staple\n").unwrap();
    env.ok(&[
        "key",
        "add",
        "--new-password-file",
        second.to_str().unwrap(),
        "--kdf-work-factor",
        "10",
    ]);
    let keys = repo_files(&env.repo, "keys");
    assert_eq!(keys.len(), 2);
    // Damage the key listed first, so that a damaged file stops the search
    // before the good key unless it is skipped; open with the other one.
    let initial = env.json(&["key", "list"]);
    let initial_id = initial[0]["id"].as_str().unwrap().to_string();
    let damaged = keys[0].clone();
    std::fs::write(env.repo.join("keys").join(&damaged), b"").unwrap();
    let password = if initial_id == damaged {
        second
    } else {
        env.password_file.clone()
    };
    // The unlock path is what is tested: the key cache would open the
    // repository without looking at other key files.
    let run = |args: &[&str]| {
        env.cmd()
            .env("CAIRN_PASSWORD_FILE", &password)
            .env("CAIRN_NO_KEY_CACHE", "1")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["snapshots", "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("key {damaged}")) && err.contains("skipp"),
        "no warning naming the damaged key: {err}"
    );
    let (code, err) = code_and_stderr(&run(&["check", "--read-data"]));
    assert_eq!(code, 0, "{err}");
    let target = env.path("out");
    let (code, err) = code_and_stderr(&run(&["restore", &a, "--target", target.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_same_tree(&x, &restored(&target, &x));
    let (code, err) = code_and_stderr(&run(&["key", "list"]));
    assert_eq!(code, 0, "{err}");
    // The damaged key file goes by its id, as the warning names it.
    let out = run(&["key", "remove", &damaged[..8]]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(repo_files(&env.repo, "keys").len(), 1);
    let (code, err) = code_and_stderr(&run(&["snapshots"]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("skipping key"), "{err}");
    // Only a wrong password is still refused, with its own exit code.
    let wrong = env.path("wrong");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let out = env
        .cmd()
        .env("CAIRN_PASSWORD_FILE", &wrong)
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", code_and_stderr(&out).1);
}

/// Lock files of garbage and of zero bytes are removed by `unlock`.
#[test]
fn issue_24_unlock_removes_unreadable_lock_files() {
    let env = Env::init();
    let x = env.path("x");
    make_sample_tree(&x);
    env.snapshot(&[&x]);
    let locks = env.repo.join("locks");
    let garbage = locks.join("ab".repeat(32));
    let empty = locks.join("cd".repeat(32));
    std::fs::write(&garbage, b"not a lock at all").unwrap();
    std::fs::write(&empty, b"").unwrap();
    let out = env.ok(&["unlock"]);
    assert!(out.contains("removed 2 lock(s)"), "{out}");
    assert!(!garbage.exists() && !empty.exists());
    assert!(repo_files(&env.repo, "locks").is_empty());
    env.ok(&["check"]);
}

/// Set `field` (a JSON pointer) of the repository's plain-JSON `config` to
/// `value`, as someone with write access to the storage could.
fn tamper_config(env: &Env, field: &str, value: Value) {
    let path = env.repo.join("config");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    *config.pointer_mut(field).unwrap() = value;
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// Issue 24, finding 5: with the config's chunker maximum set to 1 a
/// snapshot panicked in the chunker and then hung forever holding its lock,
/// so every prune, forget and key remove failed with exit 11. Now each
/// out-of-range config value is refused before any lock is taken: exit 1,
/// the field named, a hint that the config looks tampered with — and the
/// repository stays usable once the config is put back.
#[test]
fn a_tampered_config_is_refused_promptly_and_leaves_no_lock() {
    let env = Env::init();
    let data = env.path("data");
    std::fs::write(&data, noise(24, 256 << 10)).unwrap();
    let original = std::fs::read(env.repo.join("config")).unwrap();
    for (field, value, named) in [
        ("/chunker/max", serde_json::json!(1), "chunker.max"),
        ("/chunker/min", serde_json::json!(0), "chunker.min"),
        ("/chunker/avg", serde_json::json!(8193), "chunker.avg"),
        ("/chunker/min", serde_json::json!(1 << 20), "chunker.min"),
        ("/frame_size", serde_json::json!(0), "frame_size"),
        ("/pack_size", serde_json::json!(u32::MAX), "pack_size"),
        ("/zstd_level", serde_json::json!(1000), "zstd_level"),
    ] {
        tamper_config(&env, field, value.clone());
        let out = output_within(env.cmd().args(["snapshot", data.to_str().unwrap()]), 120);
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 1, "{field}={value}: {err}");
        assert!(err.contains(named), "{field}={value}: {err}");
        assert!(err.contains("hint:") && err.contains("tampered"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            repo_files(&env.repo, "locks").is_empty(),
            "{field}={value}: a lock was left behind"
        );
        std::fs::write(env.repo.join("config"), &original).unwrap();
        // Nothing holds the repository: an exclusive command runs.
        env.ok(&["prune"]);
    }
    env.snapshot(&[&data]);
}

/// Issue 28: deduplication spread a rotten chunk into every later snapshot
/// of the unchanged file, for good. `repair packs` copies what reads back
/// of the damaged pack and drops the rest from the index; the next backup
/// stores the same data again, and since chunks are named by content, the
/// older snapshots restore again too.
#[test]
fn repair_packs_drops_the_damaged_chunks_and_the_next_backup_heals_every_snapshot() {
    let s = setup();
    let mut bytes = std::fs::read(&s.y_pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&s.y_pack, bytes).unwrap();
    // A snapshot of the unchanged tree reuses the damaged chunk.
    let c = s.env.snapshot(&[&s.x, &s.y]);
    let report = s.assert_check_damaged(&["--read-data"], &[(&s.b, &s.y_big()), (&c, &s.y_big())]);
    assert_eq!(
        report["damaged_packs"],
        serde_json::json!([s.b_packs[0]]),
        "{report:#}"
    );

    // A dry run changes nothing.
    let dry = s.env.json(&["repair", "packs", "--dry-run"]);
    assert_eq!(
        dry["damaged_packs"],
        serde_json::json!([s.b_packs[0]]),
        "{dry:#}"
    );
    assert!(s.y_pack.exists());
    // Named by a prefix, as check names it; a wrong name is exit 2.
    let out = s.env.run(&["repair", "packs", "ffffffffffffffff0"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no pack") && err.contains("hint"), "{err}");
    let r = s.env.json(&["repair", "packs", &s.b_packs[0][..12]]);
    assert_eq!(
        r["damaged_packs"],
        serde_json::json!([s.b_packs[0]]),
        "{r:#}"
    );
    let (saved, dropped) = (
        r["chunks_saved"].as_u64().unwrap(),
        r["chunks_dropped"].as_array().unwrap().len(),
    );
    assert!(
        saved > 0 && dropped > 0,
        "only the damaged frame is lost: {r:#}"
    );
    assert!(!s.y_pack.exists(), "the damaged pack is gone");
    // Until the data is stored again, B and C are damaged (not indexed);
    // nothing left in the repository is unreadable.
    s.assert_check_damaged(&["--read-data"], &[(&s.b, &s.y_big()), (&c, &s.y_big())]);

    // The next backup of the same data stores the dropped chunks again.
    let d = s.env.snapshot(&[&s.x, &s.y]);
    let (code, report, err) = run_json(&s.env, &["check", "--read-data"]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    for id in [&s.b, &c, &d] {
        let target = s.env.path(&format!("out-{}", &id[..8]));
        s.env
            .ok(&["restore", id, "--target", target.to_str().unwrap()]);
        assert_same_tree(&s.y, &restored(&target, &s.y));
    }
    s.assert_a_restores("out-a");
}
