//! Physical backups, WAL archiving through `cairn wal-push`, and
//! point-in-time restores through `cairn wal-fetch`, against real clusters.
//! PostgreSQL runs as the `postgres` user, so every cairn command here runs
//! as that user too (the archive_command must be able to write the repository).

use crate::common::*;
use cairn::testing::{free_port, ScratchCluster};
use std::process::{Command, Output};

pub(crate) struct PgEnv {
    pub(crate) env: Env,
}

impl PgEnv {
    pub(crate) fn new() -> PgEnv {
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

    pub(crate) fn cmd(&self) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", BIN])
            .args(["-r", self.env.repo.to_str().unwrap()])
            .args(["--password-file", self.env.password_file.to_str().unwrap()])
            .args(["--cache-dir", self.env.cache.to_str().unwrap()])
            .env("TZ", "UTC");
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
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

    pub(crate) fn archive_command(&self) -> String {
        format!(
            "'{BIN} wal-push -q -r {} --password-file {} --cache-dir {} %p'",
            self.env.repo.display(),
            self.env.password_file.display(),
            self.env.cache.display()
        )
    }
}

pub(crate) fn client(url: &str) -> postgres::Client {
    url.parse::<postgres::Config>()
        .unwrap()
        .connect(postgres::NoTls)
        .unwrap()
}

pub(crate) fn server_now(c: &mut postgres::Client) -> String {
    c.query_one(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Switch WAL and wait until the server reports the segment archived.
pub(crate) fn switch_and_wait(c: &mut postgres::Client) {
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
    stop_restored(&pgdata);

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
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is after the end of what can be restored"),
        "{err}"
    );
    assert!(err.contains("--at latest"), "{err}");
    assert!(!pg.env.path("late").exists());
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
    gives_up_when_archiving_fails("builtin");
}

/// The same through `pg_basebackup`, which sends NOWAIT with its WAL
/// included: the snapshot was saved complete while nothing was archived.
#[test]
fn a_physical_snapshot_taken_by_pg_basebackup_gives_up_when_archiving_fails() {
    gives_up_when_archiving_fails("pg_basebackup");
}

fn gives_up_when_archiving_fails(client: &str) {
    let pg = PgEnv::new();
    let cluster =
        ScratchCluster::start(&[("archive_mode", "on"), ("archive_command", "'false'")]).unwrap();
    let mut cmd = pg.cmd();
    cmd.env("CAIRN_PG_BASEBACKUP", client).args([
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

/// The commit time of the transaction that wrote marker `n`, exactly as
/// its commit record holds it (needs `track_commit_timestamp = on`).
pub(crate) fn commit_time(c: &mut postgres::Client, n: i32) -> jiff::Timestamp {
    let t: String = c
        .query_one(
            "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM markers WHERE n = $1",
            &[&n],
        )
        .unwrap()
        .get(0);
    t.parse().unwrap()
}

/// The WAL file being written now.
pub(crate) fn current_wal_file(c: &mut postgres::Client) -> String {
    c.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .unwrap()
        .get(0)
}

/// Settings of a cluster archiving into `pg`'s repository, quiet enough
/// that the markers' commits are the only transactions.
/// A cluster archiving into `pg`'s repository, its table `markers`
/// holding 1, and a physical snapshot of it: where the archive tests start.
pub(crate) fn marked_base_backup(pg: &PgEnv) -> (ScratchCluster, postgres::Client) {
    let cluster = archiving(&pg.archive_command());
    let mut c = client(&cluster.url());
    c.batch_execute("CREATE TABLE markers (n int PRIMARY KEY); INSERT INTO markers VALUES (1)")
        .unwrap();
    pg.ok(&["snapshot", "--postgres", &cluster.url(), "--physical"]);
    (cluster, c)
}

pub(crate) fn archiving(archive: &str) -> ScratchCluster {
    ScratchCluster::start(&[
        ("archive_mode", "on"),
        ("archive_command", archive),
        ("track_commit_timestamp", "on"),
        ("autovacuum", "off"),
    ])
    .unwrap()
}

pub(crate) fn markers(url: &str) -> Vec<i32> {
    client(url)
        .query("SELECT n FROM markers ORDER BY n", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

pub(crate) fn stop_restored(pgdata: &std::path::Path) {
    let st = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(cairn::testing::pg_tool("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .args(["-m", "immediate", "-w", "stop"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Files under a directory of the repository, recursively.
pub(crate) fn files_under(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.path());
            }
        }
    }
    out
}

/// Names of the archived WAL files (entries and claims as one name).
fn archived_names(pg: &PgEnv) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(pg.env.repo.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy()[..24.min(e.file_name().len())].to_string())
        .collect()
}

pub(crate) fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

pub(crate) fn time_of(v: &serde_json::Value) -> jiff::Timestamp {
    v.as_str().unwrap().parse().unwrap()
}

fn restore_args<'a>(at: &'a str, pgdata: &'a str, port: &'a str) -> Vec<&'a str> {
    vec![
        "restore",
        "--at",
        at,
        "--source",
        "postgres",
        "--pgdata",
        pgdata,
        "--start-port",
        port,
        "--json",
    ]
}

/// Issue 26: the parser cairn runs at `wal-push` finds, in real segments,
/// the same last transaction end as `pg_waldump --rmgr=Transaction` (commits,
/// aborts, prepared ones, a transaction spread over segments), and reads
/// as many records.
#[test]
fn the_last_transaction_of_each_segment_is_the_one_pg_waldump_shows() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-wal-")
        .tempdir_in("/tmp")
        .unwrap();
    let archived = dir.path().join("archive");
    std::fs::create_dir(&archived).unwrap();
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status()
        .unwrap();
    let cluster = ScratchCluster::start(&[
        ("archive_mode", "on"),
        (
            "archive_command",
            &format!("'cp %p {}/%f'", archived.display()),
        ),
        ("max_prepared_transactions", "2"),
    ])
    .unwrap();
    let mut c = client(&cluster.url());
    c.batch_execute("CREATE TABLE t (n int, pad text)").unwrap();
    for i in 0..4 {
        // About 10 MB of WAL each: records cross pages and segments.
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series({}, {}) g",
            i * 60_000,
            i * 60_000 + 59_999
        ))
        .unwrap();
    }
    c.batch_execute("BEGIN; INSERT INTO t VALUES (-1, 'gone'); ROLLBACK")
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (-2, 'p'); PREPARE TRANSACTION 'a'")
        .unwrap();
    c.batch_execute("COMMIT PREPARED 'a'").unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (-3, 'q'); PREPARE TRANSACTION 'b'")
        .unwrap();
    c.batch_execute("ROLLBACK PREPARED 'b'").unwrap();
    switch_and_wait(&mut c);

    let end = regex::Regex::new(
        r"desc: (COMMIT|ABORT|COMMIT_PREPARED|ABORT_PREPARED) (?:\d+: )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) UTC",
    )
    .unwrap();
    let mut segments: Vec<_> = std::fs::read_dir(&archived)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for seg in &segments {
        let out = Command::new(cairn::testing::pg_tool("pg_waldump"))
            .arg(seg)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let waldump_records = text.lines().filter(|l| l.starts_with("rmgr:")).count();
        let last = text
            .lines()
            .filter_map(|l| end.captures(l))
            .map(|m| {
                kinds.insert(m[1].to_string());
                let civil: jiff::civil::DateTime = m[2].parse().unwrap();
                civil
                    .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                    .unwrap()
                    .timestamp()
            })
            .last();
        let scan = cairn::testing::scan_segment(&std::fs::read(seg).unwrap()).unwrap();
        assert_eq!(scan.last_xact_time, last, "{}", seg.display());
        // pg_waldump also reads a record that runs on into the next segment.
        assert!(
            scan.records == waldump_records || scan.records + 1 == waldump_records,
            "{}: {} records, pg_waldump {waldump_records}",
            seg.display(),
            scan.records
        );
    }
    let all: std::collections::BTreeSet<String> =
        ["COMMIT", "ABORT", "COMMIT_PREPARED", "ABORT_PREPARED"]
            .into_iter()
            .map(String::from)
            .collect();
    assert_eq!(kinds, all);
}

#[test]
fn a_gap_in_the_wal_archive_cuts_the_range_and_a_failed_recovery_leaves_nothing() {
    let pg = PgEnv::new();
    let (_cluster, mut c) = marked_base_backup(&pg);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = server_now(&mut c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    let t2 = commit_time(&mut c, 2);
    let before = files_under(&pg.env.repo.join("data"));
    switch_and_wait(&mut c);
    let seg2_packs: Vec<_> = files_under(&pg.env.repo.join("data"))
        .difference(&before)
        .cloned()
        .collect();
    c.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    let seg3 = current_wal_file(&mut c);
    let t3 = commit_time(&mut c, 3);
    switch_and_wait(&mut c);
    c.batch_execute("INSERT INTO markers VALUES (4)").unwrap();
    switch_and_wait(&mut c);
    pg.ok(&["check"]);
    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    let short = snaps[0]["short_id"].as_str().unwrap().to_string();
    assert!(time_of(&snaps[0]["restorable"]["to"]) > t3, "{snaps}");

    // Lose the segment holding marker 3.
    for e in std::fs::read_dir(pg.env.repo.join("wal"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&seg3) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let out = pg.run(&["check"]);
    let (code, err) = code_and_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(err.contains("take a physical snapshot now"), "{err}");
    let line = stdout
        .lines()
        .find(|l| l.contains(&seg3))
        .unwrap_or_else(|| panic!("check names {seg3}: {stdout}"));
    assert!(line.contains("missing from the WAL archive"), "{line}");
    let cut = line
        .split(&format!("snapshot {short} reaches only "))
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("check names the snapshot and its new end: {line}"));
    assert_eq!(cut.parse::<jiff::Timestamp>().unwrap(), t2, "{line}");

    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    assert_eq!(time_of(&snaps[0]["restorable"]["to"]), t2, "{snaps}");
    assert_eq!(snaps[0]["restorable"]["gap"], seg3.as_str(), "{snaps}");
    let table = pg.ok(&["snapshots"]);
    assert!(
        table.contains(&format!("WAL segment {seg3} is missing")),
        "{table}"
    );

    // Past the end: refused, nothing written.
    let port = free_port().unwrap().to_string();
    let late = pg.env.path("late");
    let t3s = t3.to_string();
    let out = pg.run(&restore_args(&t3s, late.to_str().unwrap(), &port));
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the newest time the WAL archive reaches"),
        "{err}"
    );
    assert!(err.contains(&seg3) && err.contains("--at latest"), "{err}");
    assert!(!late.exists());

    // To the end of what is archived: marker 2.
    let latest = pg.env.path("latest");
    let report = json(&pg.ok(&restore_args("latest", latest.to_str().unwrap(), &port)));
    assert_eq!(report["to_end"], true, "{report}");
    assert_eq!(time_of(&report["reached"]), t2, "{report}");
    assert_eq!(
        markers(&format!("postgres://postgres@127.0.0.1:{port}/postgres")),
        [1, 2]
    );
    stop_restored(&latest);

    // Marker 2's segment unreadable: recovery to a time before it cannot
    // reach its target, and the (empty) directory is emptied again.
    assert!(!seg2_packs.is_empty());
    for p in &seg2_packs {
        std::fs::remove_file(p).unwrap();
    }
    let failed = pg.env.path("failed");
    std::fs::create_dir(&failed).unwrap();
    Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&failed)
        .status()
        .unwrap();
    let out = pg.run(&restore_args(&between, failed.to_str().unwrap(), &port));
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("recovery failed"), "{err}");
    assert!(err.contains("was emptied"), "{err}");
    assert!(
        err.contains("the newest time the WAL archive reaches"),
        "{err}"
    );
    assert!(failed.exists() && std::fs::read_dir(&failed).unwrap().next().is_none());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
        "the restored server was stopped"
    );
}

/// Issue 26: retention of archived WAL. With the older of two base backups
/// forgotten, prune removes the WAL before the kept one's start (listed by
/// `--dry-run` first), keeps what it replays, and a restore to a time after
/// it still lands on its marker.
#[test]
fn prune_removes_wal_no_kept_base_backup_replays() {
    let pg = PgEnv::new();
    let (cluster, mut c) = marked_base_backup(&pg);
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    switch_and_wait(&mut c);
    pg.ok(&["snapshot", "--postgres", &cluster.url(), "--physical"]);
    c.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let target = server_now(&mut c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.batch_execute("INSERT INTO markers VALUES (4)").unwrap();
    switch_and_wait(&mut c);

    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    let (older, newer) = (&snaps[0], &snaps[1]);
    let shown = json(&pg.ok(&["cat", "snapshot", newer["id"].as_str().unwrap()]));
    let start_lsn = shown["sources"][0]["metadata"]["start_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let kept_start: String = c
        .query_one("SELECT pg_walfile_name($1::text::pg_lsn)", &[&start_lsn])
        .unwrap()
        .get(0);
    let before = archived_names(&pg);
    let older_wal: Vec<&String> = before
        .iter()
        .filter(|n| n.len() == 24 && n.as_str() < kept_start.as_str())
        .collect();
    assert!(!older_wal.is_empty(), "{before:?} {kept_start}");
    assert_eq!(
        newer["wal"]["oldest"],
        before.iter().next().unwrap().as_str(),
        "{newer}"
    );

    pg.ok(&["forget", older["id"].as_str().unwrap()]);
    let dry = pg.ok(&["prune", "--dry-run"]);
    for n in &older_wal {
        assert!(
            dry.contains(&format!("would remove archived WAL {n}")),
            "{dry}"
        );
    }
    assert!(dry.contains(&format!("older than {kept_start}")), "{dry}");
    assert_eq!(archived_names(&pg), before, "a dry run removes nothing");

    let out = pg
        .cmd()
        .env("CAIRN_LOG", "cairn=info")
        .args(["prune", "--json"])
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["wal_files_removed"].as_u64().unwrap() >= older_wal.len() as u64,
        "{report}"
    );
    assert!(err.contains("removing archived WAL"), "{err}");
    let after = archived_names(&pg);
    assert!(
        after
            .iter()
            .all(|n| n.len() != 24 || n.as_str() >= kept_start.as_str()),
        "{after:?} {kept_start} {report} {:?}",
        std::fs::read_dir(pg.env.repo.join("wal"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    assert!(after.contains(&kept_start), "{after:?}");
    pg.ok(&["check"]);
    let table = pg.ok(&["snapshots"]);
    assert!(
        table.contains(&format!("archived WAL, timeline 1: {kept_start} to")),
        "{table}"
    );

    let pgdata = pg.env.path("restored");
    let port = free_port().unwrap().to_string();
    let report = json(&pg.ok(&restore_args(&target, pgdata.to_str().unwrap(), &port)));
    assert_eq!(report["snapshot"], newer["id"], "{report}");
    assert_eq!(
        markers(&format!("postgres://postgres@127.0.0.1:{port}/postgres")),
        [1, 2, 3]
    );
    stop_restored(&pgdata);
}

/// Issue 26: a base backup holds the WAL from its start through its end
/// segment (the server switches to a new segment to end it), so with those
/// segments lost from the archive it still restores, and on past its end:
/// `check` reports the gap and says no restore needs it.
#[test]
fn a_base_backup_restores_without_its_own_segments_in_the_archive() {
    let pg = PgEnv::new();
    let (_cluster, mut c) = marked_base_backup(&pg);
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    let t2 = commit_time(&mut c, 2);
    switch_and_wait(&mut c);
    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    let short = snaps[0]["short_id"].as_str().unwrap().to_string();
    let shown = json(&pg.ok(&["cat", "snapshot", snaps[0]["id"].as_str().unwrap()]));
    let meta = &shown["sources"][0]["metadata"];
    let mut name_of = |lsn: &serde_json::Value| -> String {
        c.query_one(
            "SELECT pg_walfile_name($1::text::pg_lsn)",
            &[&lsn.as_str().unwrap()],
        )
        .unwrap()
        .get(0)
    };
    let (start, stop) = (name_of(&meta["start_lsn"]), name_of(&meta["stop_lsn"]));
    for e in std::fs::read_dir(pg.env.repo.join("wal"))
        .unwrap()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().to_string();
        if n.len() >= 24 && n[..24] >= *start && n[..24] <= *stop {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let out = pg.run(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("WAL segment {start}")), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "snapshot {short}'s base backup holds them itself, so its restores do not need them"
        )),
        "{stdout}"
    );
    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    assert_eq!(time_of(&snaps[0]["restorable"]["to"]), t2, "{snaps}");

    let pgdata = pg.env.path("restored");
    let port = free_port().unwrap().to_string();
    let report = json(&pg.ok(&restore_args("latest", pgdata.to_str().unwrap(), &port)));
    assert_eq!(time_of(&report["reached"]), t2, "{report}");
    assert_eq!(
        markers(&format!("postgres://postgres@127.0.0.1:{port}/postgres")),
        [1, 2]
    );
    stop_restored(&pgdata);
}
