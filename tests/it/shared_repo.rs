//! One repository, two users (README "One repository, two users"): the
//! daemon runs as root, PostgreSQL's archive_command as postgres. Once the
//! repository is shared with a group (its config group-readable, its
//! directories group-writable and set-group-ID), every file either user
//! writes stays readable by the other.

use crate::common::*;
use crate::postgres_pitr::{client, markers, server_now, stop_restored, switch_and_wait};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// `cairn ARGS` as the postgres user, with its own cache.
fn as_postgres(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", env!("CARGO_BIN_EXE_cairn")])
        .args(["-r", env.repo.to_str().unwrap()])
        .args(["--password-file", env.password_file.to_str().unwrap()])
        .args(["--cache-dir", env.path("pg-cache").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

fn repo_files(root: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            repo_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn root_and_postgres_share_one_repository() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let env = Env::init();
    let dir = env.dir.path().display().to_string();
    let repo = env.repo.display().to_string();
    // The test directory lets postgres in; the password file is for both.
    sh(&format!(
        "chmod 0755 {dir} && chgrp postgres {dir}/password && chmod 0640 {dir}/password"
    ));
    // The documented way to share a repository with a group.
    sh(&format!(
        "chgrp -R postgres {repo} && chmod -R g+rwX {repo} && find {repo} -type d -exec chmod g+s {{}} + && chmod g+r {repo}/config"
    ));
    let pg_data = env.path("pg-data");
    std::fs::create_dir_all(&pg_data).unwrap();
    std::fs::write(pg_data.join("wal"), noise(3, 200_000)).unwrap();
    sh(&format!(
        "chown -R postgres:postgres {} && mkdir {dir}/pg-cache && chown postgres {dir}/pg-cache",
        pg_data.display()
    ));

    // Root writes packs, an index and a snapshot; postgres reads them all
    // and writes its own; root reads those.
    let data = env.path("data");
    make_sample_tree(&data);
    env.snapshot(&[&data]);
    let out = as_postgres(&env, &["snapshots", "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "postgres cannot read what root wrote: {err}");
    let out = as_postgres(&env, &["snapshot", pg_data.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "postgres cannot add to the repository: {err}");
    env.ok(&["check", "--read-data"]);
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(files_equal(
        &pg_data.join("wal"),
        &restored(&target, &pg_data).join("wal")
    ));
    let out = as_postgres(&env, &["check"]);
    assert_eq!(code_and_stderr(&out).0, 0, "{}", code_and_stderr(&out).1);

    let pg_gid = std::fs::metadata(&pg_data).unwrap().gid();
    let mut files = Vec::new();
    repo_files(&env.repo, &mut files);
    for f in files {
        let m = std::fs::metadata(&f).unwrap();
        assert!(
            m.permissions().mode() & 0o040 != 0,
            "{} is not group-readable",
            f.display()
        );
        assert_eq!(
            m.gid(),
            pg_gid,
            "{} is not in the shared group",
            f.display()
        );
    }
}

/// A private repository stays private, and a user who cannot read it is
/// told which uid cairn runs as and where the README explains sharing.
#[test]
fn a_user_without_access_gets_a_hint_naming_the_way_to_share() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let env = Env::init();
    let dir = env.dir.path().display().to_string();
    sh(&format!("chmod 0755 {dir} && chmod -R o+rX {} && chmod 0644 {dir}/password && mkdir {dir}/pg-cache && chown postgres {dir}/pg-cache", env.repo.display()));
    let data = env.path("data");
    make_sample_tree(&data);
    env.snapshot(&[&data]);
    let snap_file = std::fs::read_dir(env.repo.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::metadata(&snap_file).unwrap().permissions().mode() & 0o077,
        0,
        "private by default"
    );
    let out = as_postgres(&env, &["snapshots"]);
    let (code, err) = code_and_stderr(&out);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("hint: cairn runs as uid"), "{err}");
    assert!(err.contains("One repository, two users"), "{err}");
}

/// Issue 26, item 2, as deployed: root takes logical and physical
/// snapshots, PostgreSQL's archiver pushes WAL as postgres into the same
/// (group-shared) repository, and a point-in-time restore run by root —
/// whose recovery runs `wal-fetch` as postgres — lands between two markers.
#[test]
fn root_snapshots_postgres_archives_and_pitr_lands_between_markers() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let env = Env::init();
    let dir = env.dir.path().display().to_string();
    let repo = env.repo.display().to_string();
    sh(&format!(
        "chmod 0755 {dir} && chgrp postgres {dir}/password && chmod 0640 {dir}/password"
    ));
    sh(&format!(
        "chgrp -R postgres {repo} && chmod -R g+rwX {repo} && find {repo} -type d -exec chmod g+s {{}} + && chmod g+r {repo}/config"
    ));
    sh(&format!(
        "mkdir {dir}/pg-cache && chown postgres {dir}/pg-cache"
    ));
    let archive = format!(
        "'{} wal-push -q -r {repo} --password-file {dir}/password --cache-dir {dir}/pg-cache %p'",
        env!("CARGO_BIN_EXE_cairn")
    );
    let cluster = cairn::testing::ScratchCluster::start(&[
        ("archive_mode", "on"),
        ("archive_command", &archive),
    ])
    .unwrap();
    let url = cluster.url();
    let mut c = client(&url);
    c.batch_execute("CREATE TABLE markers (n int PRIMARY KEY); INSERT INTO markers VALUES (1)")
        .unwrap();
    // Root: a logical and a physical snapshot.
    env.ok(&["snapshot", "--postgres", &url]);
    env.ok(&["snapshot", "--postgres", &url, "--physical"]);
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let target = server_now(&mut c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    // postgres archives the segment holding marker 3, never failing.
    switch_and_wait(&mut c);
    let failed: i64 = c
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        failed, 0,
        "postgres cannot push WAL into the shared repository"
    );
    // Both users see the same archive and snapshots.
    env.ok(&["check"]);
    let out = as_postgres(&env, &["check"]);
    assert_eq!(code_and_stderr(&out).0, 0, "{}", code_and_stderr(&out).1);

    // Root restores; the recovery's wal-fetch runs as postgres.
    let pgdata = env.path("restored");
    let port = cairn::testing::free_port().unwrap();
    let out = env.run(&[
        "restore",
        "--at",
        &target,
        "--source",
        "postgres",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--start-port",
        &port.to_string(),
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        markers(&format!("postgres://postgres@127.0.0.1:{port}/postgres")),
        vec![1, 2]
    );
    stop_restored(&pgdata);
}
