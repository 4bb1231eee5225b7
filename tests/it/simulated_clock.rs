//! Issue 28, item 1: one clock for what cairn decides by the calendar. A
//! testing build reads `CAIRN_TEST_CLOCK=FILE` (src/clock.rs): the daemon's
//! schedule fires at the simulated 02:00 of its time zone, the snapshot
//! carries the simulated time, a jump across a DST change moves the next run
//! to 02:00 of the new offset, and a clock file that cannot be read stops
//! the process instead of falling back to the real date.

use crate::common::daemon::*;
use crate::common::*;

fn set_clock(file: &std::path::Path, at: &str) {
    // Written whole and renamed, so a reader never sees half a time.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, at).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[test]
fn the_daemon_runs_on_the_simulated_clock_across_a_dst_change() {
    let _serial = serial();
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    let clock = env.path("clock");
    // 01:59:52 in Berlin (CET, +01:00), two days before summer time starts
    // (Sunday 2030-03-31, 02:00 → 03:00).
    set_clock(&clock, "2030-03-29T00:59:52Z");
    let p = plan(
        &env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\n\
             schedule \"nightly\" {{\n    cron \"0 2 * * *\"\n    timezone \"Europe/Berlin\"\n    tag \"nightly\"\n}}\n",
            files.display()
        ),
    );
    let d = Served::start_env(&env, &p, &[("CAIRN_TEST_CLOCK", &clock)]);
    let s = d.wait_until("the schedule published", 30, |s| {
        s["schedules"].as_array().is_some_and(|a| !a.is_empty())
    });
    // (Or the next day's, if the run came first on a slow machine.)
    let first = &s["schedules"][0]["next_run"];
    assert!(
        first == "2030-03-29T01:00:00Z" || first == "2030-03-30T01:00:00Z",
        "02:00 CET is 01:00 UTC: {s}"
    );
    // The simulated 02:00 passes within a few real seconds: the run starts.
    let s = d.wait_until("the nightly run at the simulated 02:00", 60, |s| {
        s["sources"]["etc"]["last_result"] == "ok"
    });
    let list = env.json(&["snapshots"]);
    let snaps = list.as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{list:#}");
    let time: jiff::Timestamp = snaps[0]["time"].as_str().unwrap().parse().unwrap();
    let due: jiff::Timestamp = "2030-03-29T01:00:00Z".parse().unwrap();
    assert!(
        time >= due && time < due + jiff::SignedDuration::from_secs(120),
        "the snapshot's time is the simulated one: {time}"
    );
    assert_eq!(s["schedules"][0]["next_run"], "2030-03-30T01:00:00Z");

    // Jump past the change to summer time: the missed night runs once at
    // once, and the next run is 02:00 CEST (+02:00), 00:00 UTC.
    set_clock(&clock, "2030-03-31T10:00:00Z");
    let s = d.wait_until("the next run after the jump", 60, |s| {
        s["schedules"][0]["next_run"] == "2030-04-01T00:00:00Z"
    });
    d.wait_until("the catch-up run", 60, |s| s["running"].is_null());
    let list = env.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}\n{s}");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn an_unreadable_test_clock_stops_the_process() {
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    let clock = env.path("clock");
    std::fs::write(&clock, "next tuesday").unwrap();
    let mut c = env.cmd();
    c.env("CAIRN_TEST_CLOCK", &clock).arg("snapshot").arg(&src);
    let out = output_within(&mut c, 60);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("not an RFC 3339 time"), "{err}");
    assert!(env.snapshot_ids().is_empty());
}

/// Issue 28, found by `scripts/timelapse --days 400 --seed 1` (a plan change
/// on day 96): a reload computed every schedule's next run from the time it
/// finished, after applying the changed retention rules, so a 02:00 that came
/// due meanwhile — during that retention, or between the SIGHUP and the loop
/// noticing it — was skipped for the next night's. A schedule the reload
/// leaves unchanged keeps its pending time.
#[test]
fn a_plan_reload_does_not_skip_a_run_that_came_due_meanwhile() {
    let _serial = serial();
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    let clock = env.path("clock");
    set_clock(&clock, "2030-03-20T00:58:00Z"); // 01:58 in Berlin (CET)
    let body = |keep: u32| {
        format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\n\
             schedule \"nightly\" {{\n    cron \"0 2 * * *\"\n    timezone \"Europe/Berlin\"\n}}\n\
             retention {{\n    keep-daily {keep}\n}}\n",
            files.display()
        )
    };
    let p = plan(&env, &body(30));
    let d = Served::start_env(&env, &p, &[("CAIRN_TEST_CLOCK", &clock)]);
    d.wait_until("the schedule published", 30, |s| {
        s["schedules"][0]["next_run"] == "2030-03-20T01:00:00Z"
    });
    // New retention rules and the clock past 02:00 at the same moment: the
    // daemon's loop sees both in one turn and reloads first.
    plan(&env, &body(7));
    set_clock(&clock, "2030-03-20T01:00:30Z");
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    let s = d.wait_until("the 02:00 run after the reload", 60, |s| {
        s["runs"] == 1 && s["running"].is_null()
    });
    assert_eq!(s["schedules"][0]["next_run"], "2030-03-21T01:00:00Z", "{s}");
    assert_eq!(env.snapshot_ids().len(), 1);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("plan reloaded"), "{log}");
}
