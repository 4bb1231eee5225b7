//! Physical backups, WAL archiving through `cairn wal-push`, and
//! point-in-time restores through `cairn wal-fetch`, against real clusters.
//! PostgreSQL runs as the `postgres` user, so every cairn command here runs
//! as that user too (the archive_command must be able to write the repository).

use crate::common::*;
use cairn::testing::{free_port, ScratchCluster};
use std::process::{Command, Output};

struct PgEnv {
    env: Env,
}

impl PgEnv {
    fn new() -> PgEnv {
        let env = Env::new();
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(env.dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let pg = PgEnv { env };
        pg.ok(&["init", "--kdf-work-factor", "10"]);
        pg
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", BIN])
            .args(["-r", self.env.repo.to_str().unwrap()])
            .args(["--password-file", self.env.password_file.to_str().unwrap()])
            .args(["--cache-dir", self.env.cache.to_str().unwrap()])
            .env("TZ", "UTC");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?}: {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn archive_command(&self) -> String {
        format!(
            "'{BIN} wal-push -q -r {} --password-file {} --cache-dir {} %p'",
            self.env.repo.display(),
            self.env.password_file.display(),
            self.env.cache.display()
        )
    }
}

fn client(url: &str) -> postgres::Client {
    url.parse::<postgres::Config>()
        .unwrap()
        .connect(postgres::NoTls)
        .unwrap()
}

fn server_now(c: &mut postgres::Client) -> String {
    c.query_one(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Switch WAL and wait until the server reports the segment archived.
fn switch_and_wait(c: &mut postgres::Client) {
    let before: i64 = c
        .query_one("SELECT archived_count FROM pg_stat_archiver", &[])
        .unwrap()
        .get(0);
    c.batch_execute("SELECT pg_switch_wal()").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (n, failed): (i64, i64) = {
            let r = c
                .query_one(
                    "SELECT archived_count, failed_count FROM pg_stat_archiver",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        if n > before {
            return;
        }
        assert!(
            failed == 0 || std::time::Instant::now() < deadline,
            "archiving fails: see the cluster log"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "WAL was not archived in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn point_in_time_restore_replays_exactly_to_the_target() {
    let pg = PgEnv::new();
    let archive = pg.archive_command();
    let cluster =
        ScratchCluster::start(&[("archive_mode", "on"), ("archive_command", &archive)]).unwrap();
    let mut c = client(&cluster.url());
    c.batch_execute("CREATE TABLE markers (n int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp()); INSERT INTO markers (n) VALUES (1)").unwrap();
    pg.ok(&["snapshot", "--postgres", &cluster.url(), "--physical"]);
    c.batch_execute("INSERT INTO markers (n) VALUES (2)")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let target = server_now(&mut c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.batch_execute("INSERT INTO markers (n) VALUES (3)")
        .unwrap();
    switch_and_wait(&mut c);

    // Listing shows the physical backup.
    let snaps: serde_json::Value = serde_json::from_str(&pg.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps[0]["sources"][0]["kind"], "postgres");
    let from: jiff::Timestamp = snaps[0]["restorable"]["from"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let to: jiff::Timestamp = snaps[0]["restorable"]["to"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let t: jiff::Timestamp = target.parse().unwrap();
    assert!(
        from < t && t < to,
        "restorable range {from}..{to} covers the target {t}"
    );

    // Restore between marker 2 and marker 3.
    let pgdata = pg.env.path("restored");
    let port = free_port().unwrap();
    let out = pg.ok(&[
        "restore",
        "--at",
        &target,
        "--source",
        "postgres",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--start-port",
        &port.to_string(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["started"], true);
    assert_eq!(report["verified_with_pg_verifybackup"], true);
    let restored_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut r = client(&restored_url);
    let got: Vec<i32> = r
        .query("SELECT n FROM markers ORDER BY n", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        got,
        vec![1, 2],
        "exactly the markers committed before the target"
    );
    let reached = report["reached"].as_str().unwrap().to_string();
    assert!(
        !reached.is_empty() && reached <= target,
        "reached {reached}, target {target}"
    );
    // The restored cluster does not archive into the repository.
    let mode: String = r.query_one("SHOW archive_mode", &[]).unwrap().get(0);
    assert_eq!(mode, "off");
    drop(r);
    let st = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(cairn::testing::pg_tool("pg_ctl"))
        .arg("-D")
        .arg(&pgdata)
        .args(["-m", "immediate", "-w", "stop"])
        .status()
        .unwrap();
    assert!(st.success());

    // Too early: before any base backup ended.
    let early = pg.run(&[
        "restore",
        "--at",
        "2000-01-01T00:00:00Z",
        "--source",
        "postgres",
        "--pgdata",
        pg.env.path("early").to_str().unwrap(),
    ]);
    let (code, err) = code_and_stderr(&early);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("earliest time it can be restored to"), "{err}");
    assert!(!pg.env.path("early").exists());
    // Too late: after the last archived WAL.
    let late = pg.run(&[
        "restore",
        "--at",
        "2100-01-01T00:00:00Z",
        "--source",
        "postgres",
        "--pgdata",
        pg.env.path("late").to_str().unwrap(),
    ]);
    let (code, err) = code_and_stderr(&late);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("after the last archived WAL"), "{err}");
}

#[test]
fn wal_push_is_idempotent_and_refuses_conflicts_and_fetch_of_missing_fails() {
    let pg = PgEnv::new();
    let dir = pg.env.path("walsrc");
    std::fs::create_dir_all(&dir).unwrap();
    let seg = dir.join("000000010000000000000007");
    std::fs::write(&seg, noise(9, 16 << 20)).unwrap();
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status()
        .unwrap();
    pg.ok(&["wal-push", seg.to_str().unwrap()]);
    pg.ok(&["wal-push", seg.to_str().unwrap()]);
    let mut other = noise(9, 16 << 20);
    other[12345] ^= 1;
    std::fs::write(&seg, other).unwrap();
    let (code, err) = code_and_stderr(&pg.run(&["wal-push", seg.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already archived with different content"),
        "{err}"
    );

    let dest = dir.join("fetched");
    pg.ok(&[
        "wal-fetch",
        "000000010000000000000007",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&dest).unwrap(), noise(9, 16 << 20));
    let (code, err) = code_and_stderr(&pg.run(&[
        "wal-fetch",
        "000000010000000000000008",
        dest.to_str().unwrap(),
    ]));
    assert!(code != 0 && code <= 125, "{code} {err}");
    let (code, _) =
        code_and_stderr(&pg.run(&["wal-push", dir.join("not-a-wal-name").to_str().unwrap()]));
    assert_eq!(code, 2);
    // Prune keeps archived WAL.
    pg.ok(&["prune"]);
    pg.ok(&[
        "wal-fetch",
        "000000010000000000000007",
        dest.to_str().unwrap(),
    ]);
}

/// The base backup is taken over cairn's own replication connection, which
/// must answer SCRAM and report a refused password with the server's words;
/// `CAIRN_PG_BASEBACKUP=pg_basebackup` takes the same backup with the tool.
/// Only replication connections ask for the password, so a wrong one is
/// refused to the built-in client, not to cairn's first (SQL) connection.
#[test]
fn physical_snapshots_authenticate_with_scram_and_can_use_pg_basebackup() {
    let pg = PgEnv::new();
    let cluster = ScratchCluster::start(&[("password_encryption", "scram-sha-256")]).unwrap();
    let mut c = client(&cluster.url());
    c.batch_execute("CREATE ROLE backup LOGIN SUPERUSER REPLICATION PASSWORD 'sekret'")
        .unwrap();
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all backup 127.0.0.1/32 trust\nhost replication backup 127.0.0.1/32 scram-sha-256\n{rest}"
        ),
    )
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The password comes from PGPASSWORD: a URL holding one is refused.
    let url = format!("postgres://backup@127.0.0.1:{}/postgres", cluster.port);
    let snapshot = |pw: &str, tool: &str| {
        pg.cmd()
            .env("CAIRN_LOG", "cairn=info")
            .env("CAIRN_PG_BASEBACKUP", tool)
            .env("PGPASSWORD", pw)
            .args(["snapshot", "--postgres", &url, "--physical", "--json"])
            .output()
            .unwrap()
    };

    let out = snapshot("sekret", "builtin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("via=\"replication protocol\""), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["bytes_added"].as_u64().unwrap() > 0, "{report}");

    let wrong = snapshot("wrong", "builtin");
    let (code, err) = code_and_stderr(&wrong);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("password authentication failed"), "{err}");

    let out = snapshot("sekret", "pg_basebackup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("via=\"pg_basebackup\""), "{err}");

    // Both recorded where their backup starts and stops, on timeline 1.
    let snaps: serde_json::Value = serde_json::from_str(&pg.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    for s in snaps.as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let shown: serde_json::Value =
            serde_json::from_str(&pg.ok(&["cat", "snapshot", id])).unwrap();
        let meta = &shown["sources"][0]["metadata"];
        assert_eq!(meta["timeline"], 1, "{shown}");
        assert!(meta["start_lsn"].as_str().unwrap().contains('/'), "{shown}");
        assert!(meta["stop_lsn"].as_str().unwrap().contains('/'), "{shown}");
    }
}

/// When archiving fails, `snapshot --physical` fails once the server has
/// waited `--archive-timeout` for the backup's WAL, naming archive_command
/// and pg_stat_archiver's last failure, instead of waiting for ever; no
/// snapshot is saved.
#[test]
fn a_physical_snapshot_gives_up_when_archiving_fails() {
    let pg = PgEnv::new();
    let cluster =
        ScratchCluster::start(&[("archive_mode", "on"), ("archive_command", "'false'")]).unwrap();
    let mut cmd = pg.cmd();
    cmd.args([
        "snapshot",
        "--postgres",
        &cluster.url(),
        "--physical",
        "--archive-timeout",
        "3s",
    ]);
    // A liveness bound, generous: the command used to wait for ever.
    let out = output_within(&mut cmd, 120);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("waited 3s for the base backup's WAL to be archived"),
        "{err}"
    );
    assert!(
        err.contains("archive_command \"false\" last failed on"),
        "{err}"
    );
    assert!(err.contains("hint: fix archive_command"), "{err}");
    let snaps: serde_json::Value = serde_json::from_str(&pg.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");
}

/// Issue 27, item 9: restoring a physical snapshot the logical way
/// (`restore latest --to URL`) is a usage mistake that names the way to
/// restore it (it said "missing field `globals`"), before any server is
/// contacted: the URL's port is closed.
#[test]
fn restore_to_a_url_of_a_physical_snapshot_names_pgdata_and_at() {
    let pg = PgEnv::new();
    let cluster = ScratchCluster::start(&[]).unwrap();
    pg.ok(&["snapshot", "--postgres", &cluster.url(), "--physical"]);
    let port = free_port().unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (code, err) = code_and_stderr(&pg.run(&["restore", "latest", "--to", &url]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("has no logical PostgreSQL source to restore with --to URL"),
        "{err}"
    );
    assert!(
        err.contains("postgres is a physical PostgreSQL source (restore it with --pgdata DIR --at TIME --source postgres"),
        "{err}"
    );
    assert!(!err.contains("globals"), "{err}");
}
