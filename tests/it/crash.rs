//! `kill -9` at random moments during `snapshot`: what was saved before stays
//! restorable byte for byte, the repository stays consistent (leftovers are
//! only unreferenced packs and temporary files), the dead process's lock
//! blocks nobody, and `prune` cleans up.
//!
//! The kill delays come from a seeded RNG; the seed is printed and can be
//! fixed with `CAIRN_TEST_SEED=<n>` to repeat a run.

use crate::common::*;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// About 36 MiB: six 5.5 MiB incompressible files, three of which change every
/// generation (16.5 MiB of new data: more than one 16 MiB pack, so a pack is
/// stored before the last one is built), plus 3 MiB of text that changes at
/// its end.
const SHAPE: TreeShape = TreeShape {
    random_files: 6,
    random_file_len: 11 << 19,
    period: 2,
    text_len: 3 << 20,
    salt: 0xC4A5,
};
const ITERATIONS: u64 = 20;

/// `cairn check` must pass: at most unreferenced packs, never an error or damage.
fn assert_check_clean(env: &Env, args: &[&str], when: &str) -> serde_json::Value {
    let mut a = vec!["check"];
    a.extend_from_slice(args);
    let (code, report, err) = run_json(env, &a);
    assert_eq!(
        code,
        0,
        "{when}: `cairn {}` failed\n{report:#}\n{err}",
        a.join(" ")
    );
    assert_eq!(report["errors"], serde_json::json!([]), "{when}");
    assert_eq!(report["damaged"], serde_json::json!([]), "{when}");
    report
}

fn ids(env: &Env) -> BTreeSet<String> {
    env.snapshot_ids().into_iter().collect()
}

#[test]
fn kill_9_during_snapshot_harms_nothing_saved_and_prune_cleans_up() {
    let test_started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(test_seed("kill_9_during_snapshot"));
    let env = Env::init();
    let src = env.path("src");
    let (target, scratch) = (env.path("restore"), env.path("expected"));
    let src_arg = src.to_str().unwrap().to_string();

    write_generation(&src, SHAPE, 0);
    let t = Instant::now();
    let first = env.snapshot(&[&src]);
    // How long a snapshot of one generation's changes takes; kills land in 0..=that.
    let mut typical = t.elapsed();
    // Every snapshot that was saved, with the generation of the tree it holds.
    let mut saved: Vec<(String, u64)> = vec![(first, 0)];
    let (mut saved_by_killed, mut left_packs, mut left_tmp) = (0, 0, 0);
    let (mut packs_before, mut tmp_before, mut stale_locks) = (0, 0, 0);

    for iteration in 1..=ITERATIONS {
        let generation = iteration;
        write_generation(&src, SHAPE, generation);
        let before: BTreeSet<String> = saved.iter().map(|(id, _)| id.clone()).collect();
        let delay = Duration::from_millis(rng.random_range(0..=typical.as_millis() as u64));
        let mut child = env
            .cmd()
            .args(["snapshot", "--quiet", &src_arg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();

        // Nothing saved before disappeared; at most the killed snapshot was added.
        let after = ids(&env);
        assert!(
            before.is_subset(&after),
            "iteration {iteration}: a kill removed snapshots"
        );
        let new: Vec<&String> = after.difference(&before).collect();
        assert!(new.len() <= 1, "iteration {iteration}: {new:?}");
        match new.first() {
            Some(id) => {
                saved.push(((*id).clone(), generation));
                saved_by_killed += 1;
            }
            None => assert!(
                !status.success(),
                "iteration {iteration}: exited 0 without saving a snapshot"
            ),
        }

        // The repository is consistent: leftovers are only unreferenced.
        let report = assert_check_clean(
            &env,
            &[],
            &format!("iteration {iteration}, killed after {delay:?}"),
        );
        let leftover_packs = report["unreferenced_packs"].as_array().unwrap().len();
        let leftover_tmp = repo_files(&env.repo, "tmp").len();
        left_packs += (leftover_packs > packs_before) as u32;
        left_tmp += (leftover_tmp > tmp_before) as u32;
        (packs_before, tmp_before) = (leftover_packs, leftover_tmp);
        if leftover_packs > 0 {
            // In words: a note, not an error.
            let text = env.ok(&["check"]);
            assert!(text.contains("no errors found"), "{text}");
            assert!(
                text.contains(&format!("{leftover_packs} unreferenced pack(s)")),
                "{text}"
            );
        }
        // No cairn runs now: every lock file is a stale one of a killed process.
        stale_locks = repo_files(&env.repo, "locks").len();
        eprintln!(
            "iteration {iteration}: killed after {delay:?} ({status}); snapshot saved: {}; \
             unreferenced packs: {leftover_packs}, tmp files: {leftover_tmp}, stale locks: {stale_locks} (so far)",
            !new.is_empty()
        );

        // A snapshot saved earlier, chosen at random, restores byte-identical.
        let (id, g) = saved[rng.random_range(0..saved.len())].clone();
        assert_restores_generation(&env, &id, &src, SHAPE, g, &target, &scratch);

        // The next snapshot works, and so does an exclusive lock (the dead
        // process's lock, if it left one, is recognised as stale).
        let t = Instant::now();
        let id = env.snapshot(&[&src]);
        typical = t.elapsed();
        saved.push((id, generation));
        if stale_locks > 0 {
            env.ok(&["prune", "--dry-run"]);
        }
    }
    let loop_time = test_started.elapsed();

    // The kills must have interrupted snapshots after they took their lock,
    // or this test proved little. (How many left packs or temporary files
    // behind depends on timing, so that is only reported.)
    assert!(
        saved_by_killed < ITERATIONS,
        "no kill interrupted a snapshot"
    );
    assert!(stale_locks > 0, "no kill ever left a lock behind");

    // prune removes the leftovers (with the dead processes' locks in place).
    assert_eq!(repo_files(&env.repo, "locks").len(), stale_locks);
    env.ok(&["prune"]);
    let report = assert_check_clean(&env, &[], "after prune");
    assert_eq!(
        report["unreferenced_packs"],
        serde_json::json!([]),
        "after prune"
    );
    assert_eq!(
        repo_files(&env.repo, "tmp"),
        Vec::<String>::new(),
        "tmp/ after prune"
    );
    let report = assert_check_clean(&env, &["--read-data"], "after prune");
    assert_eq!(
        report["packs_read"].as_u64(),
        Some(pack_files(&env.repo).len() as u64)
    );

    // Every saved snapshot still restores byte-identical.
    assert_eq!(
        ids(&env),
        saved
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<BTreeSet<_>>()
    );
    for (id, g) in &saved {
        assert_restores_generation(&env, id, &src, SHAPE, *g, &target, &scratch);
    }
    eprintln!(
        "{} snapshots ({} saved before the kill landed); kills that left \
         unreferenced packs: {left_packs}, temporary files: {left_tmp}; loop {loop_time:?}, total {:?}",
        saved.len(),
        saved_by_killed,
        test_started.elapsed()
    );
}
