//! The whole life of a repository on S3-compatible storage (s3s-fs), through
//! the real binary.

use crate::common::*;
use s3::S3Server;
use std::process::Stdio;

fn s3_env(server: &S3Server, prefix: &str) -> Env {
    let mut env = Env::new();
    env.location = Some(format!("s3://bucket/{prefix}"));
    env.extra_env = server.env();
    env.ok(&["init", "--kdf-work-factor", "10"]);
    env
}

#[test]
fn snapshot_restore_check_forget_prune_on_s3() {
    let server = S3Server::start();
    let env = s3_env(&server, "repo");
    let src = env.path("src");
    make_sample_tree(&src);
    let first = env.snapshot(&[&src]);
    std::fs::write(src.join("data.bin"), noise(99, 2 << 20)).unwrap();
    let second = env.snapshot(&[&src]);
    assert_ne!(first, second);
    let target = env.path("out");
    env.ok(&["restore", &second, "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target, &src));
    env.ok(&["check", "--read-data"]);
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(env.snapshot_ids(), vec![second.clone()]);
    env.ok(&["check", "--read-data"]);
    let target2 = env.path("out2");
    env.ok(&["restore", "latest", "--target", target2.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&target2, &src));
    // The data really is in the bucket, not on local disk.
    assert!(!env.repo.exists());
    assert!(server.dir.path().join("bucket/repo/config").exists());
}

#[test]
fn wrong_credentials_fail_clearly() {
    let server = S3Server::start();
    let mut env = s3_env(&server, "repo");
    env.extra_env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.extra_env
        .push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let (code, err) = code_and_stderr(&env.run(&["snapshots"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the credentials") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    // A prefix with no repository is "no repository", exit 10.
    let mut empty = Env::new();
    empty.location = Some("s3://bucket/nothing-here".into());
    empty.extra_env = server.env();
    let (code, err) = code_and_stderr(&empty.run(&["snapshots"]));
    assert_eq!(code, 10, "{err}");
}

#[test]
fn server_killed_mid_snapshot_leaves_existing_snapshots_intact() {
    let mut server = S3Server::start();
    let env = s3_env(&server, "repo");
    let src = env.path("src");
    make_sample_tree(&src);
    let first = env.snapshot(&[&src]);
    std::fs::write(src.join("big.bin"), noise(5, 48 << 20)).unwrap();
    let child = env
        .cmd()
        .args(["snapshot", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the snapshot has started writing packs, then kill the server.
    let data = server.dir.path().join("bucket/repo/data");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let packs = walk_count(&data);
        if packs > 1 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the snapshot cannot succeed without its server"
    );
    server.restart();
    assert_eq!(env.snapshot_ids(), vec![first.clone()]);
    env.ok(&["check", "--read-data"]);
    let target = env.path("out");
    env.ok(&["restore", &first, "--target", target.to_str().unwrap()]);
    assert_same_tree(&src.join("etc"), &restored(&target, &src).join("etc"));
    // And the next snapshot works.
    env.snapshot(&[&src]);
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
}

fn walk_count(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn two_writers_back_up_into_one_bucket_concurrently() {
    let server = S3Server::start();
    let env = s3_env(&server, "shared");
    let (a, b) = (env.path("a"), env.path("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("x"), noise(1, 20 << 20)).unwrap();
    std::fs::write(b.join("y"), noise(2, 20 << 20)).unwrap();
    // Shared content between the two: deduplication across writers is harmless.
    std::fs::write(a.join("common"), noise(3, 4 << 20)).unwrap();
    std::fs::write(b.join("common"), noise(3, 4 << 20)).unwrap();
    let spawn = |p: &std::path::Path, cache: &str| {
        let mut c = env.cmd();
        // Separate caches, as on two hosts.
        c.env("CAIRN_CACHE_DIR", env.path(cache))
            .args(["snapshot", p.to_str().unwrap()]);
        c.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a, "cache-a"), spawn(&b, "cache-b"));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    assert!(
        oa.status.success(),
        "{}",
        String::from_utf8_lossy(&oa.stderr)
    );
    assert!(
        ob.status.success(),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
    assert_eq!(env.snapshot_ids().len(), 2);
    env.ok(&["check", "--read-data"]);
    env.ok(&["prune"]);
    for (p, name) in [(&a, "ra"), (&b, "rb")] {
        let t = env.path(name);
        let snaps = env.json(&["snapshots"]);
        let id = snaps
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["paths"][0] == p.display().to_string())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        env.ok(&["restore", &id, "--target", t.to_str().unwrap()]);
        assert_same_tree(p, &restored(&t, p));
    }
}

/// A PostgreSQL dump stored as deltas against the day before, on S3: the
/// second backup reads the previous dump and its bases from the bucket
/// (ranged reads), the bases survive pruning the day before, and
/// `check --read-data` and a restore decode the delta frames with them.
#[test]
fn delta_encoded_dumps_restore_from_s3_after_the_day_before_is_pruned() {
    use cairn::testing::ScratchCluster;
    let server = S3Server::start();
    let env = s3_env(&server, "pg");
    let source = ScratchCluster::start(&[]).unwrap();
    let url = source.url();
    let run = |q: &str| sql(&url, "postgres", q);
    run(
        "CREATE TABLE acc (aid int PRIMARY KEY, abalance int, filler char(84));
         INSERT INTO acc SELECT g, 0, md5(g::text) FROM generate_series(1, 50000) g;",
    );
    let first = env.json(&["snapshot", "--postgres", &url, "--database", "postgres"]);
    run("UPDATE acc SET abalance = aid % 13 WHERE aid % 50 = 7");
    let second = env.json(&["snapshot", "--postgres", &url, "--database", "postgres"]);
    // md5 text in every row, so the first dump is not mostly blanks: with
    // only 60 KB stored for it, the second snapshot's fixed costs (index,
    // node list, snapshot file) were half as much again, and one run under
    // load crossed the bound (37,633 bytes against 74,735).
    assert_adds_a_fraction(&first, &second, 10);
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    env.ok(&["check", "--read-data"]);
    let target = ScratchCluster::start(&[]).unwrap();
    // Into the target's empty `postgres` database. The packs the restore
    // needs, bases included, are checked (and, the store being remote,
    // spooled) first; the delta frames are decoded as the dump streams
    // into pg_restore.
    let report = env.json(&["restore", "latest", "--to", &target.url()]);
    let tables = report["report"]["tables"].as_array().unwrap();
    assert!(
        !tables.is_empty() && tables.iter().all(|t| t["ok"] == true),
        "{tables:?}"
    );
    let sum = "SELECT sum(abalance * aid)::int8 FROM acc";
    let query = |cluster: &ScratchCluster| query_i64(&cluster.url(), "postgres", sum);
    assert_eq!(query(&source), query(&target));
    assert!(query(&target) > 0);
}

/// Issue 24, finding 6 on S3: a WAL name is claimed with a conditional PUT
/// (`If-None-Match: *`), which s3s-fs accepts and refuses when the object
/// exists. Different content under an archived name is refused; a push of
/// the claimed content whose entry is missing (a push that died between
/// claim and entry) finds the claim taken by its own content and stores the
/// entry, and wal-fetch returns that content.
#[test]
fn issue_24_wal_names_are_claimed_once_on_s3() {
    let server = S3Server::start();
    let env = s3_env(&server, "repo");
    let name = "000000010000000000000001";
    let write = |dir: &str, bytes: &[u8]| {
        let d = env.path(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
        d.join(name)
    };
    let a = random_bytes(0x5A, 64 << 10);
    let pa = write("a", &a);
    let pb = write("b", &random_bytes(0x5B, 64 << 10));
    env.ok(&["wal-push", pa.to_str().unwrap()]);
    env.ok(&["wal-push", pa.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&env.run(&["wal-push", pb.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("different content"), "{err}");

    let wal = server.dir.path().join("bucket/repo/wal");
    assert!(wal.join(name).exists(), "no claim object");
    for e in std::fs::read_dir(&wal).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().len() > 65 {
            std::fs::remove_file(p).unwrap();
        }
    }
    env.ok(&["wal-push", pa.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&env.run(&["wal-push", pb.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    let fetched = env.path("fetched");
    env.ok(&["wal-fetch", name, fetched.to_str().unwrap()]);
    assert!(std::fs::read(&fetched).unwrap() == a);
    env.ok(&["check", "--read-data"]);
}
