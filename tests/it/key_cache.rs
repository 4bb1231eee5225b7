//! The unlocked-key cache (spec/repository.md §9): a password file's key is
//! derived once, later commands open the repository from the cache, and
//! the cache never opens what the password file no longer would.

use crate::common::{code_and_stderr, Env};
use std::os::unix::fs::PermissionsExt;

/// How many times a command ran scrypt (its `-vv` log says so each time).
fn derivations(stderr: &str) -> usize {
    stderr.matches("from the password (scrypt)").count()
}

fn snapshots_vv(env: &Env) -> (i32, String) {
    code_and_stderr(&env.run(&["snapshots", "-vv"]))
}

fn cache_file(env: &Env) -> std::path::PathBuf {
    let dir = env.cache.join("keys");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_password_file_key_is_derived_once_then_read_from_the_cache() {
    let env = Env::init();
    // init filled the cache with the key it made (found by `scripts/bench
    // scale`: the first command after init paid the KDF again).
    assert!(cache_file(&env).exists());
    for _ in 0..2 {
        let (code, err) = snapshots_vv(&env);
        assert_eq!(code, 0, "{err}");
        assert_eq!(derivations(&err), 0, "{err}");
        assert!(err.contains("unlocked from the key cache"), "{err}");
    }
    // Forgotten: the next open derives it once, and caches it again.
    env.ok(&["key", "forget-cache"]);
    let (code, err) = snapshots_vv(&env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(derivations(&err), 1, "{err}");
    let (code, err) = snapshots_vv(&env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(derivations(&err), 0, "{err}");

    let f = cache_file(&env);
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", f.display());
    let dir_mode = std::fs::metadata(f.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

    // Turned off: derived every time, and nothing read.
    let out = env.run(&["snapshots", "-vv", "--no-key-cache"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(derivations(&err), 1, "{err}");
    for off in ["1", "yes", "true"] {
        let out = env
            .cmd()
            .env("CAIRN_NO_KEY_CACHE", off)
            .args(["snapshots", "-vv"])
            .output()
            .unwrap();
        let (code, err) = code_and_stderr(&out);
        assert_eq!(
            (code, derivations(&err)),
            (0, 1),
            "CAIRN_NO_KEY_CACHE={off}: {err}"
        );
    }
}

#[test]
fn wal_push_of_many_segments_derives_the_key_once() {
    let env = Env::init();
    // As on a host where init did not run: the cache starts empty.
    env.ok(&["key", "forget-cache"]);
    let wal = env.path("pg_wal");
    std::fs::create_dir_all(&wal).unwrap();
    let mut derived = 0;
    for i in 1..=100u32 {
        let name = format!("0000000100000000{i:08X}");
        let p = wal.join(&name);
        std::fs::write(&p, crate::common::noise(u64::from(i), 8192)).unwrap();
        let out = env.run(&["wal-push", "-vv", p.to_str().unwrap()]);
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 0, "push {i}: {err}");
        derived += derivations(&err);
    }
    assert_eq!(derived, 1, "100 pushes derived the key {derived} times");
    // The archive holds all of them, and one reads back.
    let dest = env.path("back");
    env.ok(&[
        "wal-fetch",
        "000000010000000000000064",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(wal.join("000000010000000000000064")).unwrap()
    );
}

#[test]
fn a_changed_password_file_is_not_opened_by_the_cache() {
    let env = Env::init();
    env.ok(&["snapshots"]);
    // Wrong password in the same file: the stamp changed, so scrypt runs and fails.
    std::fs::write(&env.password_file, "wrong horse\n").unwrap();
    let (code, err) = code_and_stderr(&env.run(&["snapshots"]));
    assert_eq!(code, 12, "a cached key opened for a wrong password: {err}");
    // Back to the right one: works again.
    std::fs::write(&env.password_file, "correct horse\n").unwrap();
    let (code, err) = snapshots_vv(&env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(derivations(&err), 1, "{err}");
}

#[test]
fn removing_a_key_revokes_its_cached_copies() {
    let env = Env::init();
    let second = env.path("second-password");
    std::fs::write(&second, "battery staple\n").unwrap();
    let added = env.json(&[
        "key",
        "add",
        "--new-password-file",
        second.to_str().unwrap(),
        "--kdf-work-factor",
        "10",
    ]);
    let id = added["id"].as_str().unwrap().to_string();
    // Open with the second password: its key is cached.
    let second_args = ["--password-file", second.to_str().unwrap()];
    let out = env
        .cmd()
        .args(["snapshots", "-vv"])
        .args(second_args)
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    // Password keys are tried in listing order: one or two derivations.
    assert_eq!(code, 0, "{err}");
    assert!((1..=2).contains(&derivations(&err)), "{err}");
    let out = env
        .cmd()
        .args(["snapshots", "-vv"])
        .args(second_args)
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!((code, derivations(&err)), (0, 0), "{err}");
    // Removed with the first password.
    env.ok(&["key", "remove", &id[..12]]);
    let out = env
        .cmd()
        .args(["snapshots"])
        .args(second_args)
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 12, "a removed key still opened from the cache: {err}");
}

#[test]
fn a_cache_file_others_can_read_is_ignored_and_forget_cache_removes_it() {
    let env = Env::init();
    env.ok(&["snapshots"]);
    let f = cache_file(&env);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = snapshots_vv(&env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(derivations(&err), 1, "{err}");
    assert!(err.contains("ignoring key cache"), "{err}");

    let out = env.ok(&["key", "forget-cache"]);
    assert!(out.contains("forgot 1 cached key"), "{out}");
    assert!(!f.exists());
    let out = env.ok(&["key", "forget-cache"]);
    assert!(out.contains("no cached key"), "{out}");
    // --all needs no repository.
    env.ok(&["snapshots"]);
    let out = env
        .cmd()
        .env_remove("CAIRN_REPOSITORY")
        .args(["key", "forget-cache", "--all"])
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("forgot 1"));
}
