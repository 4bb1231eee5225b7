//! Issue 26, item 3: the daemon watches the WAL archive of each physical
//! PostgreSQL source. An archive_command that fails is mailed (real SMTP
//! sink) and shown in `/status` and `/metrics`; once archiving works again
//! the status says so and the lag is zero.

use crate::common::daemon::*;
use crate::common::*;
use cairn::testing::ScratchCluster;

fn sql(url: &str, statements: &str) {
    crate::common::sql(url, "postgres", statements);
}

#[test]
fn failing_archiving_is_mailed_and_shown_then_clears() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    // archive_command fails until the flag file exists (a setting given on
    // the server's command line cannot be changed by ALTER SYSTEM).
    let flags = tempfile::Builder::new()
        .prefix("cairn-flag-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        flags.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let flag = flags.path().join("archive-ok");
    let command = format!("'test -f {}'", flag.display());
    let cluster =
        ScratchCluster::start(&[("archive_mode", "on"), ("archive_command", &command)]).unwrap();
    // A finished segment that cannot be archived.
    sql(
        &cluster.url(),
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal();",
    );
    let p = plan(
        &env,
        &format!(
            "source \"db\" kind=\"postgres\" {{\n    url \"{}\"\n    physical #true\n}}\n\
             schedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\n{}",
            cluster.url(),
            email(
                &smtp,
                "    missed-backup \"100h\"\n    archive-lag \"1h\"\n"
            )
        ),
    );
    let d = Served::start(&env, &p);
    let mail = smtp.wait_for("WAL archive: db, archiving fails at", 60);
    assert!(
        mail.contains("archive_command fails"),
        "the mail says what fails: {mail}"
    );
    assert!(mail.contains("archive_command:"), "{mail}");
    assert!(mail.contains("pg_stat_archiver"), "the hint: {mail}");

    let s = d.status();
    let a = &s["archives"]["db"];
    assert_eq!(a["failing"], true, "{s}");
    assert!(a["server"]["failed_count"].as_i64().unwrap() >= 1, "{a}");
    assert_eq!(
        a["server"]["archive_command"],
        format!("test -f {}", flag.display()),
        "{a}"
    );
    let m = d.checked_metrics();
    assert_eq!(m.get("cairn_wal_archive_failing{source=\"db\"}"), 1.0);
    assert!(m.get("cairn_wal_archive_ready_files{source=\"db\"}") >= 1.0);
    assert!(m.get("cairn_wal_archive_failures_total{source=\"db\"}") >= 1.0);

    // Fixed: the waiting segment is archived, the status clears.
    // A new segment wakes the archiver, which retries the waiting one.
    std::fs::write(&flag, "").unwrap();
    sql(
        &cluster.url(),
        "INSERT INTO t SELECT g FROM generate_series(1, 10) g; SELECT pg_switch_wal();",
    );
    d.wait_until("archiving works again", 60, |s| {
        s["archives"]["db"]["failing"] == false && s["archives"]["db"]["lag_seconds"] == 0
    });
    let m = d.checked_metrics();
    assert_eq!(m.get("cairn_wal_archive_failing{source=\"db\"}"), 0.0);
    assert_eq!(m.get("cairn_wal_archive_lag_seconds{source=\"db\"}"), 0.0);
    assert!(m.has("cairn_wal_last_archived_timestamp_seconds{source=\"db\"}"));
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("alert") && log.contains("wal-archive"),
        "the alert is logged: {log}"
    );
}

#[test]
fn waiting_wal_beyond_archive_lag_is_mailed() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    // archive_command takes 8 s a file: segments wait, and nothing fails.
    let cluster =
        ScratchCluster::start(&[("archive_mode", "on"), ("archive_command", "'sleep 8'")]).unwrap();
    sql(
        &cluster.url(),
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal();",
    );
    sql(
        &cluster.url(),
        "INSERT INTO t SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal();",
    );
    let p = plan(
        &env,
        &format!(
            "source \"db\" kind=\"postgres\" {{\n    url \"{}\"\n    physical #true\n}}\n\
             schedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\n{}",
            cluster.url(),
            email(
                &smtp,
                "    missed-backup \"100h\"\n    archive-lag \"2s\"\n"
            )
        ),
    );
    let d = Served::start(&env, &p);
    let mail = smtp.wait_for("WAL files waiting, oldest", 60);
    assert!(mail.contains("archive-lag 2s"), "{mail}");
    let s = d.status();
    assert_eq!(s["archives"]["db"]["failing"], false, "{s}");
    assert!(
        s["archives"]["db"]["lag_seconds"].as_u64().unwrap() >= 2,
        "{s}"
    );
    drop(d);
}
