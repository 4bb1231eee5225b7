//! `cairn serve`: the real daemon on a schedule of seconds, its HTTP API,
//! retention and alerts arriving at a real SMTP server (aiosmtpd).

use crate::common::daemon::*;
use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[test]
fn the_daemon_backs_up_on_schedule_applies_retention_and_serves_its_api() {
    let _serial = serial();
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    let p = plan(
        &env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nschedule \"often\" {{\n    cron \"*/2 * * * * *\"\n    tag \"often\"\n}}\nretention {{\n    keep-last 2\n}}\n",
            files.display()
        ),
    );
    let d = Served::start(&env, &p);
    // /health needs no token; everything else does, and a bad one gets a bare 401.
    assert_eq!(d.request("GET", "/health", None).0, 200);
    let (code, body) = d.request("GET", "/status", None);
    assert_eq!((code, body.as_str()), (401, "unauthorized\n"));
    assert_eq!(d.request("GET", "/status", Some("wrong")).0, 401);
    assert_eq!(d.request("POST", "/backups", Some("wrong")).0, 401);

    let s = d.wait_until("three scheduled runs", 60, |s| {
        s["runs"].as_u64() >= Some(3)
    });
    assert_eq!(s["sources"]["etc"]["last_result"], "ok", "{s}");
    assert!(s["sources"]["etc"]["next_run"].is_string(), "{s}");
    assert!(s["schedules"][0]["next_run"].is_string(), "{s}");
    // Retention (keep-last 2) ran after every run.
    let snaps = env.json(&["snapshots"]);
    let n = snaps.as_array().unwrap().len();
    assert!(
        (1..=3).contains(&n),
        "keep-last 2 plus at most one run in progress: {n}"
    );
    assert!(snaps
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["tags"][0] == "often"));

    // Trigger a run through the API and wait for it.
    let mut triggered = None;
    for _ in 0..20 {
        let (code, body) = d.request("POST", "/backups?wait=true", Some(TOKEN));
        if code == 200 {
            triggered = Some(body);
            break;
        }
        assert_eq!(code, 409, "{body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let body = triggered.expect("the API never got a turn");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["snapshot"].as_str().unwrap();
    let (code, listed) = d.request("GET", "/snapshots", Some(TOKEN));
    assert_eq!(code, 200);
    assert!(listed.contains(id), "{listed}");
    let (code, metrics) = d.request("GET", "/metrics", Some(TOKEN));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cairn_backup_success{source=\"etc\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cairn_runs_total"), "{metrics}");
    assert!(
        metrics.contains("cairn_last_backup_new_bytes{source=\"etc\"}"),
        "{metrics}"
    );

    // SIGHUP reloads the plan; changed retention rules are applied at once.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("keep-last 2", "keep-last 1");
    std::fs::write(&p, text).unwrap();
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("the rules changed\"") || !d.log().contains("plan reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    // Every request is in the access log, with the token's name.
    assert!(log.contains("route=/status status=401"), "{log}");
    assert!(
        log.contains("token=\"tests\"")
            && log.contains("route=/backups query=\"wait=true\" status=200"),
        "{log}"
    );
    assert!(log.contains("token=\"invalid\""), "{log}");
    assert!(
        log.contains("forgetting snapshot"),
        "removals are logged with reasons: {log}"
    );
    assert!(!log.contains(TOKEN), "the token never appears in the log");
}

#[test]
fn failures_missed_backups_storage_and_slow_runs_are_mailed() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let files = env.path("etc");
    make_sample_tree(&files);
    // A schedule that will not fire during the test: the daemon must notice
    // the missing backup from the repository alone.
    let p = plan(
        &env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"broken\" kind=\"command\" {{\n    command \"sh\" \"-c\" \"echo oops >&2; exit 7\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n    expected-duration \"1ms\"\n}}\n{}",
            files.display(),
            email(&smtp, "    missed-backup \"2s\"\n    quota \"1KiB\"\n")
        ),
    );
    let d = Served::start(&env, &p);
    let missed = smtp.wait_for("no successful backup", 60);
    assert!(missed.contains("X-RcptTo: oncall@example.test"), "{missed}");
    assert!(missed.contains("dba@example.test"), "{missed}");

    // A run with a failing source: failure and slow-run alerts, then the
    // storage check measures the repository against the 1 KiB quota.
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 500, "an incomplete run is an error: {body}");
    let failed = smtp.wait_for("backup failed: broken", 30);
    assert!(
        failed.contains("exit status: 7") || failed.contains("oops"),
        "{failed}"
    );
    smtp.wait_for("expected", 30);
    let storage = smtp.wait_for("measured by quota", 30);
    assert!(storage.contains("storage"), "{storage}");
    let s = d.status();
    assert_eq!(s["sources"]["broken"]["last_result"], "failed");
    assert_eq!(s["sources"]["etc"]["last_result"], "ok");
    assert_eq!(s["storage"]["measured_by"], "quota");
    // /snapshots says why a source failed (scripts/timelapse tells a
    // source spoiled by a damaged pack from other failures by it).
    let (code, listed) = d.request("GET", "/snapshots", Some(TOKEN));
    assert_eq!(code, 200, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let sources = &listed[0]["sources"];
    let broken = sources
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "broken");
    let why = broken.map(|b| b["errors"][0].as_str().unwrap_or_default().to_string());
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("7") || w.contains("oops")),
        "{listed}"
    );

    // Far above the critical threshold (95% of a 1 KiB quota): after more
    // runs, the oldest snapshots are removed until only the minimum (the
    // newest) is left, and that is mailed.
    for _ in 0..2 {
        let (code, body) = d.post_when_free("/backups?wait=true");
        assert_eq!(code, 500, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.json(&["snapshots"]).as_array().unwrap().len() > 1 {
        assert!(
            Instant::now() < deadline,
            "oldest snapshots were not removed: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let critical = smtp.wait_for("critically low", 30);
    assert!(
        !critical.contains("Removed, oldest first: nothing"),
        "{critical}"
    );
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn restore_tests_prove_mark_corrupted_snapshots_and_skip_without_an_environment() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let pg = cairn::testing::ScratchCluster::start(&[]).unwrap();
    let mut cfg: postgres::Config = pg.url().parse().unwrap();
    cfg.dbname("postgres");
    cfg.connect(postgres::NoTls)
        .unwrap()
        .batch_execute(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
        )
        .unwrap();
    let p = plan(
        &env,
        &format!(
            "source \"db\" kind=\"postgres\" {{\n    url \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nverify {{\n    cron \"0 4 1 1 *\"\n    skip-alert-after 1\n}}\n{}",
            pg.url(),
            email(&smtp, "")
        ),
    );
    let d = Served::start(&env, &p);
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}");
    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["outcome"], "passed", "{r}");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["proof"]["passed"], true, "{snaps}");
    assert_eq!(snaps[0]["corrupted"], false);

    // Damage every pack: the next test fails, marks the snapshot, alerts.
    for f in pack_files(&env.repo) {
        let mut b = std::fs::read(&f).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x55;
        std::fs::write(&f, b).unwrap();
    }
    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["outcome"], "failed", "{r}");
    // Every pack is damaged: the data check finds it before the restore.
    let mail = smtp.wait_for("restore test failed", 30);
    assert!(
        mail.contains("data check found 1 newly damaged snapshot") && mail.contains("corrupted"),
        "{mail}"
    );
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["corrupted"], true, "{snaps}");
    let listing = env.ok(&["snapshots"]);
    assert!(listing.contains("CORRUPTED"), "{listing}");
    assert_eq!(d.status()["last_restore_test"]["outcome"], "failed");
    // restore --at skips a corrupted snapshot unless --force.
    let out = env.run(&[
        "restore",
        "--at",
        "2099-01-01 00:00",
        "--to",
        &pg.url(),
        "--clean",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("marked corrupted") && err.contains("no snapshot"),
        "{err}"
    );
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");

    // An unreachable verification environment skips the test (and alerts
    // after skip-alert-after = 1) without judging the snapshot.
    let p = plan(
        &env,
        &format!(
            "source \"db\" kind=\"postgres\" {{\n    url \"{}\"\n}}\nverify {{\n    postgres-scratch \"postgres://postgres@127.0.0.1:{}/postgres\"\n    skip-alert-after 1\n}}\n{}",
            pg.url(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
            email(&smtp, "")
        ),
    );
    let d = Served::start(&env, &p);
    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The only complete snapshot of this plan file is the damaged one; the
    // environment is checked first, so the outcome is a skip.
    assert_eq!(r["outcome"], "skipped", "{r}");
    assert!(r["detail"].as_str().unwrap().contains("unreachable"), "{r}");
    smtp.wait_for("skipped", 30);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("restore test skipped"), "{log}");
}

#[test]
fn a_scheduled_run_backs_up_files_postgres_and_kafka_into_one_snapshot() {
    let _serial = serial();
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    let pg = cairn::testing::ScratchCluster::start(&[]).unwrap();
    let broker = kafka::Broker::start();
    broker.create_topic("events", 2, &[]);
    let p = broker.producer();
    for i in 0..50 {
        let r = kafka::TestRecord {
            key: Some(format!("k{i}").into_bytes()),
            value: Some(vec![7; 64]),
            headers: vec![],
            timestamp: 1_700_000_000_000 + i,
        };
        broker.produce(&p, "events", (i % 2) as i32, &r);
    }
    broker.flush(&p);
    let plan_file = plan(
        &env,
        &format!(
            "source \"config\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"db\" kind=\"postgres\" {{\n    url \"{}\"\n}}\nsource \"queue\" kind=\"kafka\" {{\n    brokers \"{}\"\n}}\nschedule \"often\" {{\n    cron \"*/2 * * * * *\"\n}}\n",
            files.display(),
            pg.url(),
            broker.brokers()
        ),
    );
    let d = Served::start(&env, &plan_file);
    let s = d.wait_until("a scheduled run of all three sources", 90, |s| {
        ["config", "db", "queue"]
            .iter()
            .all(|n| s["sources"][n]["last_result"] == "ok")
    });
    assert!(s["last_snapshot"].is_string(), "{s}");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    let snaps = env.json(&["snapshots"]);
    let first = &snaps.as_array().unwrap()[0];
    let kinds: Vec<&str> = first["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["files", "postgres", "kafka"], "{first}");
    assert_eq!(first["complete"], true);
    // The per-source size and duration of each run are logged.
    assert!(
        log.contains("source backed up") && log.contains("source=\"queue\" kind=\"kafka\""),
        "{log}"
    );
}

#[test]
fn a_partial_run_never_displaces_a_complete_snapshot() {
    let _serial = serial();
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    let marker = env.path("healthy");
    std::fs::write(&marker, "yes").unwrap();
    let p = plan(
        &env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"flaky\" kind=\"command\" {{\n    command \"cat\" \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nretention {{\n    keep-daily 1\n}}\n",
            files.display(),
            marker.display()
        ),
    );
    let d = Served::start(&env, &p);
    let run = |expect: u16| {
        let (code, body) = d.post_when_free("/backups?wait=true");
        assert_eq!(code, expect, "{body}");
    };
    let ids = || -> Vec<(String, bool)> {
        env.json(&["snapshots"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["short_id"].as_str().unwrap().to_string(),
                    s["complete"] == true,
                )
            })
            .collect()
    };
    run(200);
    let first = ids();
    assert_eq!(first.len(), 1);
    std::fs::remove_file(&marker).unwrap();
    run(500); // the flaky source fails: an incomplete snapshot
    let after_partial = ids();
    assert_eq!(after_partial.len(), 2, "{after_partial:?}");
    assert!(
        after_partial.contains(&first[0]),
        "the complete snapshot was kept"
    );
    std::fs::write(&marker, "yes").unwrap();
    run(200);
    let last = ids();
    assert_eq!(
        last.len(),
        1,
        "keep-daily 1 keeps the newest complete one: {last:?}"
    );
    assert!(last[0].1);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("daily 1/1 used for etc"), "{log}");
}

#[test]
fn object_storage_use_is_measured_against_the_quota() {
    let _serial = serial();
    let server = s3::S3Server::start();
    let mut env = Env::new();
    env.location = Some("s3://bucket/quota".into());
    env.extra_env = server.env();
    env.ok(&["init", "--kdf-work-factor", "10"]);
    let smtp = Smtp::start(&env.path("mail"));
    let files = env.path("etc");
    make_sample_tree(&files);
    let p = env.path("plan.kdl");
    let hash = blake3::hash(TOKEN.as_bytes()).to_hex();
    std::fs::write(
        &p,
        format!(
            "repository \"s3://bucket/quota\" {{\n    password-file \"password\"\n    cache-dir \"{}\"\n}}\napi {{\n    listen \"127.0.0.1:8420\"\n    token \"tests\" hash=\"blake3:{hash}\"\n}}\nsource \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\n{}",
            env.cache.display(),
            files.display(),
            email(&smtp, "    quota \"1MiB\"\n    storage-warning \"50%\"\n")
        ),
    )
    .unwrap();
    let d = Served::start(&env, &p);
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}");
    let mail = smtp.wait_for("measured by quota", 30);
    assert!(mail.contains("s3://bucket/quota"), "{mail}");
    let s = d.wait_until("storage measured after the run", 30, |s| {
        s["storage"]["used_bytes"].as_u64().unwrap_or(0) > 1 << 19
    });
    assert_eq!(s["storage"]["measured_by"], "quota", "{s}");
    assert_eq!(s["storage"]["total_bytes"], 1 << 20);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// A plan with one files source and a schedule that does not fire during a test.
fn quiet_files_plan(env: &Env) -> PathBuf {
    let files = env.path("etc");
    make_sample_tree(&files);
    plan(
        env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\n",
            files.display()
        ),
    )
}

/// Issue 24 finding 4: 1,100 idle, never-finished requests against a daemon
/// allowed 1,024 descriptors must not stop `/health` nor a backup, and the
/// server closes them itself (header-read timeout, connection table).
#[test]
fn a_flood_of_unfinished_requests_stops_neither_health_nor_backups_issue_24() {
    let _serial = serial();
    let env = Env::init();
    let p = quiet_files_plan(&env);
    let d = Served::start_under_ulimit(&env, &p, "-n 1024");
    let mut idle = Vec::new();
    for i in 0..1100 {
        let mut s = TcpStream::connect(&d.addr)
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", d.log()));
        // A request line and one header, never the blank line that ends the head.
        // (A connection the server already closed may refuse the write.)
        let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: flood\r\n");
        idle.push(s);
    }
    // Liveness bounds, not timings: a daemon that is out of descriptors
    // never answers at all.
    let health = d.try_request("GET", "/health", None, "", 60);
    assert!(
        matches!(&health, Ok((200, b)) if b == "ok\n"),
        "/health during the flood: {health:?}\n{}",
        d.log()
    );
    let backup = d.try_request(
        "POST",
        "/backups?wait=true",
        Some(TOKEN),
        "Content-Length: 0\r\n",
        300,
    );
    let body = match &backup {
        Ok((200, b)) => b.clone(),
        other => panic!("backup during the flood: {other:?}\n{}", d.log()),
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["snapshot"].as_str().unwrap();
    assert!(
        env.snapshot_ids().iter().any(|s| s.starts_with(id)),
        "{id} not in the repository"
    );
    // Every idle connection is closed by the server: made room for newer
    // ones, or timed out waiting for its request head.
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("idle connection {i} still open: {e}\n{}", d.log()),
        }
    }
    drop(idle);
    assert_eq!(d.request("GET", "/health", None).0, 200);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("max_connections=256"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}

/// Issue 24 finding 4: no endpoint takes a body; a large one is refused.
/// Started with a low soft descriptor limit, which the daemon raises.
#[test]
fn an_oversized_request_body_gets_413_issue_24() {
    let _serial = serial();
    let env = Env::init();
    let p = quiet_files_plan(&env);
    let d = Served::start_under_ulimit(&env, &p, "-S -n 256");
    // The head announces 1 MiB; the server refuses before reading any of it.
    let r = d.try_request(
        "POST",
        "/backups",
        Some(TOKEN),
        "Content-Length: 1048576\r\n",
        60,
    );
    assert!(matches!(r, Ok((413, _))), "{r:?}\n{}", d.log());
    // A body within the limit is no reason to refuse.
    let (code, body) = d
        .try_request("GET", "/status", Some(TOKEN), "Content-Length: 0\r\n", 60)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(d.status()["runs"], 0, "the refused request started no run");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("route=/backups status=413"), "{log}");
    // The soft limit went up to the hard one (whatever this machine's is).
    assert!(
        log.contains("open-file soft limit raised to the hard limit from=256"),
        "{log}"
    );
}

/// Issue 24 finding 4: API requests use the repository the daemon opened;
/// the key (scrypt) is unlocked at start-up and again only on a reload.
#[test]
fn api_requests_do_not_unlock_the_key_again_issue_24() {
    let _serial = serial();
    let env = Env::init();
    let p = quiet_files_plan(&env);
    let d = Served::start(&env, &p);
    let listed = |d: &Served| {
        std::thread::scope(|sc| {
            let all: Vec<_> = (0..8)
                .map(|_| sc.spawn(|| d.request("GET", "/snapshots", Some(TOKEN))))
                .collect();
            for h in all {
                let (code, body) = h.join().unwrap();
                assert_eq!(code, 200, "{body}");
            }
        })
    };
    listed(&d);
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}");
    listed(&d);
    let m = d.metrics();
    assert!(m.contains("\ncairn_key_unlocks_total 1\n"), "{m}");
    assert_eq!(d.status()["key_unlocks"], 1);

    // A reload opens the repository again (its password file may have changed).
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("plan reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    listed(&d);
    let m = d.metrics();
    assert!(m.contains("\ncairn_key_unlocks_total 2\n"), "{m}");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Issue 27: a source backed up only by a weekly schedule is not alerted
/// after the daily limit; its schedule's own `missed-backup` applies, while
/// a source of a schedule without one keeps `alerts { missed-backup }`.
#[test]
fn a_schedule_sets_its_own_missed_backup_limit() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let (daily, weekly) = (env.path("daily"), env.path("weekly"));
    make_sample_tree(&daily);
    make_sample_tree(&weekly);
    let p = plan(
        &env,
        &format!(
            "source \"daily\" kind=\"files\" {{\n    path \"{}\"\n}}\n\
             source \"weekly\" kind=\"files\" {{\n    path \"{}\"\n}}\n\
             schedule \"nightly\" {{\n    cron \"0 0 1 1 *\"\n    sources \"daily\"\n}}\n\
             schedule \"sundays\" {{\n    cron \"0 0 1 1 *\"\n    sources \"weekly\"\n    missed-backup \"8d\"\n}}\n{}",
            daily.display(),
            weekly.display(),
            email(&smtp, "    missed-backup \"2s\"\n")
        ),
    );
    let d = Served::start(&env, &p);
    smtp.wait_for("missed backup: daily", 60);
    // Several more checks (every second) pass: the weekly source stays quiet.
    std::thread::sleep(Duration::from_secs(4));
    let all = smtp.messages().join("\n");
    assert!(!all.contains("missed backup: weekly"), "{all}");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Issue 28, found by `scripts/timelapse --days 120 --seed 2` (a byte
/// flipped in a pack on day 101): the daemon kept decoded frames in memory
/// from one run to the next, so once a pack holding a delta base was damaged
/// on disk, the following runs still stored the PostgreSQL dump as deltas
/// against the copy in memory. Those snapshots were saved as complete and
/// could not be restored. Read from the pack again, the damaged base fails
/// its check and the dump is stored whole.
#[test]
fn issue_28_a_delta_base_damaged_on_disk_is_not_used_from_the_daemons_memory() {
    let _serial = serial();
    let env = Env::init();
    let pg = cairn::testing::ScratchCluster::start(&[]).unwrap();
    sql(&pg.url(), "postgres", "CREATE DATABASE app");
    sql(
        &pg.url(),
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g",
    );
    let p = plan(
        &env,
        &format!(
            "source \"db\" kind=\"postgres\" {{\n    url \"{}\"\n    database \"app\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\n",
            pg.url()
        ),
    );
    let d = Served::start(&env, &p);
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}");
    let first = pack_files(&env.repo);
    // The second dump is stored as deltas against the first one's chunks,
    // which the daemon decodes to compress against.
    sql(
        &pg.url(),
        "app",
        "UPDATE t SET v = 'changed' WHERE id % 1000 = 1",
    );
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}");
    // One byte in the middle of each of the first run's packs: in the
    // dump's frames, not in the globals at the start.
    for pack in &first {
        let mut bytes = std::fs::read(pack).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(pack, bytes).unwrap();
    }
    // Every row changes, so the third dump shares no chunk with the first:
    // only its delta bases could lead there.
    sql(&pg.url(), "app", "UPDATE t SET v = v || '!'");
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    let newest = env.snapshot_ids().pop().unwrap();
    let target = cairn::testing::ScratchCluster::start(&[]).unwrap();
    let out = env.run(&["restore", &newest, "--source", "db", "--to", &target.url()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "the newest snapshot restores: {err}\n{log}");
    assert_eq!(
        query_i64(
            &target.url(),
            "app",
            "SELECT count(*) FROM t WHERE v LIKE '%!'"
        ),
        20000
    );
}
