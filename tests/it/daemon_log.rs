//! What `cairn serve` tells its operator, run as deployed (no `-v`): the log
//! of runs, removals, requests and alerts (text and JSON, `spec/logging.md`),
//! the API's answer to a caller's mistake, the slow-run check, and what an
//! alert e-mail says.

use crate::common::daemon::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Storage measured against a quota the tests never approach, so no
/// storage alert comes however full this machine's disk is.
const QUOTA: &str = "    quota \"1GiB\"\n";

/// The plan of these tests: files and a command source that fails once
/// `marker` is gone, `keep-last 1`, alerts to `smtp`.
fn flaky_plan(env: &Env, smtp: &Smtp, marker: &Path) -> PathBuf {
    let files = env.path("etc");
    make_sample_tree(&files);
    std::fs::write(marker, "yes").unwrap();
    plan(
        env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"flaky\" kind=\"command\" {{\n    command \"cat\" \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nretention {{\n    keep-last 1\n}}\n{}",
            files.display(),
            marker.display(),
            email(smtp, QUOTA)
        ),
    )
}

/// What [`scenario`] saw.
struct Seen {
    log: String,
    /// Complete snapshots of the first two runs; the first is removed by
    /// `keep-last 1` after the second.
    first: String,
    second: String,
    /// The snapshot saved without `flaky`.
    partial: String,
}

/// Start the daemon with `args` (no `-v`), back up twice (the second run's
/// retention removes the first snapshot), then once with `flaky` failing
/// (an alert), and ask for an unknown source; stop it.
fn scenario(env: &Env, smtp: &Smtp, args: &[&str]) -> Seen {
    let marker = env.path("healthy");
    let p = flaky_plan(env, smtp, &marker);
    let d = Served::start_with(env, &p, args);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, body) = d.post_when_free("/backups?wait=true");
        assert_eq!(code, 200, "{body}\n{}", d.log());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        ids.push(v["snapshot"].as_str().unwrap().to_string());
    }
    std::fs::remove_file(&marker).unwrap();
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 500, "an incomplete run is an error: {body}");
    // Answered 400 (`an_unknown_source_…` checks the answer); here only its
    // line in the access log matters.
    d.post_when_free("/backups?source=nope");
    let partial = env
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["complete"] == false)
        .map(|s| s["short_id"].as_str().unwrap().to_string())
        .expect("the partial snapshot");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    Seen {
        log,
        first: ids[0].clone(),
        second: ids[1].clone(),
        partial,
    }
}

/// The one log line containing every one of `needles`.
fn line<'a>(log: &'a str, needles: &[&str]) -> &'a str {
    log.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no log line with all of {needles:?}:\n{log}"))
}

#[test]
fn serve_logs_runs_removals_requests_and_alerts_at_its_default_level() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let seen = scenario(&env, &smtp, &[]);
    let log = &seen.log;
    // Each source of each run: size, bytes added, duration, outcome, snapshot.
    line(
        log,
        &[
            "INFO source backed up ",
            "trigger=\"api\"",
            &format!("snapshot=\"{}\"", seen.second),
            "source=\"etc\" kind=\"files\" outcome=\"ok\" bytes_read=",
            " bytes_added=",
            " duration_ms=",
        ],
    );
    let failed = line(
        log,
        &[
            "WARN source backed up ",
            &format!("snapshot=\"{}\"", seen.partial),
            "source=\"flaky\" kind=\"command\" outcome=\"failed\"",
            " error=\"",
        ],
    );
    assert!(
        failed.contains("healthy"),
        "the error names the file: {failed}"
    );
    line(
        log,
        &[
            "INFO backup run finished ",
            &format!("snapshot=\"{}\"", seen.second),
            "outcome=\"complete\"",
            " bytes_stored=",
            " duration_ms=",
        ],
    );
    // The removal: snapshot, its time, the rule that no longer keeps it,
    // why retention ran; then the rules applied.
    line(
        log,
        &[
            "forgetting snapshot ",
            &format!("snapshot=\"{}\" time=", seen.first),
            "reason=\"last 1/1 used for etc; last 1/1 used for flaky\"",
            "why=\"after a backup run\"",
        ],
    );
    line(
        log,
        &[
            "retention applied removed=1 why=\"after a backup run\"",
            "rules=\"keep-last 1\"",
        ],
    );
    // Every request: token name, method, route, status, duration, peer.
    line(
        log,
        &[
            "INFO request token=\"tests\" method=POST route=/backups query=\"wait=true\" status=200 duration_ms=",
            " peer=127.0.0.1:",
        ],
    );
    line(
        log,
        &[
            "request token=\"tests\"",
            "query=\"source=nope\" status=400",
        ],
    );
    // The alert: kind, recipients, subject.
    line(
        log,
        &[
            "INFO alert sent kind=\"backup-failed\" key=\"flaky\" channel=\"e-mail\"",
            " recipients=2 ",
            "backup failed: flaky\"",
        ],
    );
    assert!(!log.contains(TOKEN), "the token itself is never logged");
    for debug in ["Some(", "Report {", "Delivery", "BackupFailed"] {
        assert!(
            !log.contains(debug),
            "Rust debug output {debug:?} in:\n{log}"
        );
    }
    assert!(!log.contains("DEBUG"), "default level is info: {log}");
}

#[test]
fn serve_logs_json_fields_with_log_format_json() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let seen = scenario(&env, &smtp, &["--log-format", "json"]);
    let events: Vec<serde_json::Value> = seen
        .log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", seen.log))
        })
        .collect();
    let find = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        events
            .iter()
            .find(|e| e["message"] == what && f(e))
            .cloned()
            .unwrap_or_else(|| panic!("no {what:?} event:\n{}", seen.log))
    };
    let ok = find("source backed up", &|e| {
        e["snapshot"] == seen.second.as_str() && e["source"] == "etc"
    });
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["kind"], "files", "{ok}");
    assert_eq!(ok["outcome"], "ok", "{ok}");
    assert_eq!(ok["trigger"], "api", "{ok}");
    for f in ["bytes_read", "bytes_added", "duration_ms"] {
        assert!(ok[f].is_u64(), "{f} is a number: {ok}");
    }
    assert!(ok["bytes_read"].as_u64() > Some(0), "{ok}");
    let failed = find("source backed up", &|e| {
        e["source"] == "flaky" && e["outcome"] == "failed"
    });
    assert_eq!(failed["snapshot"], seen.partial.as_str());
    assert!(
        failed["error"].as_str().unwrap().contains("healthy"),
        "{failed}"
    );
    let removed = find("forgetting snapshot", &|e| {
        e["snapshot"] == seen.first.as_str()
    });
    assert_eq!(
        removed["reason"], "last 1/1 used for etc; last 1/1 used for flaky",
        "{removed}"
    );
    assert!(removed["time"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .is_ok());
    assert_eq!(removed["span"]["why"], "after a backup run", "{removed}");
    let req = find("request", &|e| {
        e["status"] == 200 && e["route"] == "/backups"
    });
    assert_eq!(req["token"], "tests", "{req}");
    assert_eq!(req["method"], "POST", "{req}");
    assert!(req["duration_ms"].is_u64(), "{req}");
    assert!(
        req["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{req}"
    );
    let alert = find("alert sent", &|e| e["key"] == "flaky");
    assert_eq!(alert["kind"], "backup-failed");
    assert_eq!(alert["recipients"], 2, "{alert}");
    assert!(
        alert["subject"]
            .as_str()
            .unwrap()
            .ends_with("backup failed: flaky"),
        "{alert}"
    );
    assert!(!seen.log.contains(TOKEN));
}

#[test]
fn an_alert_mail_says_what_failed_where_since_when_and_what_to_try() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let seen = scenario(&env, &smtp, &[]);
    let mail = smtp.wait_for("flaky", 30);
    let subject = mail
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or_default();
    assert!(subject.ends_with("] backup failed: flaky"), "{mail}");
    let plan = std::fs::canonicalize(env.path("plan.kdl")).unwrap();
    // `Label:   value` rows, one per part of the message.
    let row = |label: &str| -> String {
        mail.lines()
            .find_map(|l| l.strip_prefix(&format!("{label}:")))
            .unwrap_or_else(|| panic!("no {label:?} row in:\n{mail}"))
            .trim()
            .to_string()
    };
    assert!(row("Error").contains("healthy"), "{mail}");
    assert_eq!(row("Source"), "flaky (command)");
    assert_eq!(row("Plan"), plan.display().to_string());
    assert_eq!(row("Repository"), env.repo.display().to_string());
    assert_eq!(
        row("Snapshot"),
        format!("{} (saved without this source)", seen.partial)
    );
    // Since when: the second run was the last success, minutes old at most.
    assert!(row("Last success").ends_with(" ago)"), "{mail}");
    assert!(row("Failing since").ends_with(" ago)"), "{mail}");
    // What to try: the command that shows the whole error, for this source.
    assert!(mail.contains("What to try:"), "{mail}");
    assert!(
        mail.contains(&format!(
            "cairn snapshot --plan {} --source flaky -v",
            plan.display()
        )),
        "{mail}"
    );
    assert!(!mail.contains("password"), "{mail}");
}

#[test]
fn an_unknown_source_gets_400_and_is_neither_a_failed_run_nor_an_alert() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let marker = env.path("healthy");
    let p = flaky_plan(&env, &smtp, &marker);
    let d = Served::start(&env, &p);
    for path in ["/backups?source=nope&wait=true", "/backups?source=etc,nope"] {
        let (code, body) = d.post_when_free(path);
        assert_eq!(code, 400, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("\"nope\""), "{v}");
        assert_eq!(v["sources"], serde_json::json!(["etc", "flaky"]), "{v}");
    }
    // Other mistakes of the caller are 4xx with a JSON error too.
    let (code, body) = d.request("POST", "/backups?wait=maybe", Some(TOKEN));
    assert_eq!(code, 400, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (code, body) = d.request("GET", "/no-such-route", Some(TOKEN));
    assert_eq!(code, 404, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    // A real run after them: any run the mistakes had started is over by
    // the time it ends (one run at a time), and its alert sent.
    let (code, body) = d.post_when_free("/backups?source=etc&wait=true");
    assert_eq!(code, 200, "{body}");
    let s = d.status();
    assert_eq!(
        (s["runs"].as_u64(), s["failed_runs"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    let m = d.metrics();
    assert!(m.contains("\ncairn_failed_runs_total 0\n"), "{m}");
    assert_eq!(
        smtp.messages(),
        Vec::<String>::new(),
        "no alert for a caller's mistake"
    );
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Hand the password to the next `n` readers of the pipe `fifo`, one each:
/// wait until a reader has opened it (a non-blocking open for writing
/// succeeds only then), put a fresh pipe in its place for the next reader,
/// and write to the one this reader holds.
fn feed_password(fifo: &Path, n: usize) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for _ in 0..n {
        let mut w = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo)
            {
                Ok(w) => break w,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{}: {e}", fifo.display()),
            }
        };
        let fresh = fifo.with_extension("next");
        let made = std::process::Command::new("mkfifo")
            .arg(&fresh)
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::rename(&fresh, fifo).unwrap();
        w.write_all(b"correct horse\n").unwrap();
    }
}

/// The slow check compares the run's recorded duration with the limit: a
/// run that waited for the repository to open (here: its password file is a
/// pipe the test feeds late) is not slow when backing up took no time.
#[test]
fn the_slow_check_does_not_count_opening_the_repository() {
    let _serial = serial();
    let env = Env::init();
    let smtp = Smtp::start(&env.path("mail"));
    let fifo = env.path("password.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let files = env.path("etc");
    make_sample_tree(&files);
    let hash = blake3::hash(TOKEN.as_bytes()).to_hex();
    let p = env.path("plan.kdl");
    std::fs::write(
        &p,
        format!(
            "repository \"{}\" {{\n    password-file \"{}\"\n    cache-dir \"{}\"\n}}\napi {{\n    listen \"127.0.0.1:8420\"\n    token \"tests\" hash=\"blake3:{hash}\"\n}}\nsource \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n    expected-duration \"4s\"\n}}\n{}",
            env.repo.display(),
            fifo.display(),
            env.cache.display(),
            files.display(),
            email(&smtp, QUOTA)
        ),
    )
    .unwrap();
    // Start-up reads the password file twice: the plan check, the unlock.
    let feeder = {
        let fifo = fifo.clone();
        std::thread::spawn(move || feed_password(&fifo, 2))
    };
    // `-v`: the reload below is seen in the log at info also before serve
    // logged at info by default.
    let d = Served::start_with(&env, &p, &["-v"]);
    feeder.join().unwrap();
    // A reload checks the plan again (one read) and makes the next use of
    // the repository open it again (one more).
    let feeder = {
        let fifo = fifo.clone();
        std::thread::spawn(move || feed_password(&fifo, 1))
    };
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    feeder.join().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !d.log().contains("plan reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = std::thread::scope(|sc| {
        let run = sc.spawn(|| d.post_when_free("/backups?wait=true"));
        // The run waits for the repository while the pipe stays empty.
        std::thread::sleep(Duration::from_secs(6));
        feed_password(&fifo, 1);
        run.join().unwrap()
    });
    assert_eq!(run.0, 200, "{}", run.1);
    // A slow-backup alert, had there been one, was sent before the run
    // answered; nothing else is alerted here.
    let mails = smtp.messages();
    assert!(
        mails.is_empty(),
        "opening the repository counted as backing up:\n{}",
        mails.join("\n-----\n")
    );
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    // The run did wait (the test is not vacuous), and both numbers are logged.
    let finished = line(&log, &["backup run finished", "outcome=\"complete\""]);
    let field = |k: &str| -> u64 {
        let v = finished.split(&format!(" {k}=")).nth(1).unwrap_or_default();
        v.split(' ').next().unwrap_or_default().parse().unwrap_or(0)
    };
    assert!(field("elapsed_ms") >= 5000, "{finished}");
    assert!(field("duration_ms") < 4000, "{finished}");
}

#[test]
fn the_error_that_ends_a_command_is_json_with_log_format_json() {
    let env = Env::new(); // no repository
    let plan = env.write_plan("source \"etc\" kind=\"files\" {\n    path \"/etc/hostname\"\n}\n");
    for (args, code) in [
        (
            vec![
                "serve",
                "--plan",
                plan.to_str().unwrap(),
                "--state-dir",
                "/tmp",
            ],
            10,
        ),
        (vec!["serve", "--plan", "/nonexistent/plan.kdl"], 2),
    ] {
        let out = env
            .plan_cmd()
            .args(&args)
            .args(["--log-format", "json"])
            .output()
            .unwrap();
        let (got, err) = code_and_stderr(&out);
        assert_eq!(got, code, "{err}");
        let lines: Vec<serde_json::Value> = err
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let e = lines
            .iter()
            .find(|v| v["level"] == "ERROR")
            .unwrap_or_else(|| panic!("{err}"));
        assert_eq!(e["exit_code"], code, "{e}");
        assert!(
            e["message"].is_string() && e["timestamp"].is_string(),
            "{e}"
        );
        if code == 10 {
            assert!(e["hint"].is_string(), "{e}");
        }
    }
}

/// Found by `scripts/timelapse` (issue 28): an alert raised while the SMTP
/// server was down was logged as not delivered and lost. Now the daemon
/// offers it again at every check until the server takes it, saying when
/// it was raised.
#[test]
fn an_alert_raised_while_the_mail_server_is_down_is_sent_when_it_returns() {
    let _serial = serial();
    let env = Env::init();
    let port = cairn::testing::free_port().unwrap();
    let files = env.path("etc");
    make_sample_tree(&files);
    let p = plan(
        &env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nsource \"broken\" kind=\"command\" {{\n    command \"sh\" \"-c\" \"echo 'db unreachable' >&2; exit 3\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\n{}",
            files.display(),
            email_to_port(port, "")
        ),
    );
    let d = Served::start(&env, &p);
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 500, "{body}");
    // Nothing listens: the alert is kept, and retried at each 1 s check.
    std::thread::sleep(Duration::from_secs(3));
    let smtp = Smtp::start_on(&env.path("mail"), port);
    let mail = smtp.wait_for("backup failed: broken", 30);
    assert!(
        mail.contains("could not be delivered then; it is sent again now"),
        "{mail}"
    );
    assert!(mail.contains("db unreachable"), "{mail}");
    // Sent once: it does not wait any more.
    std::thread::sleep(Duration::from_secs(3));
    let copies = smtp
        .messages()
        .iter()
        .filter(|m| m.contains("backup failed: broken"))
        .count();
    assert_eq!(copies, 1, "{:?}", smtp.messages());
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("undelivered alert sent"), "{log}");
}
