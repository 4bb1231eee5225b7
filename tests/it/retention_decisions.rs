//! Snapshot tests of `cairn::retention::plan` over synthetic backup
//! histories. Each snapshot is a table with one line per backup snapshot:
//! its time in the planning time zone, its id, keep/remove and the reasons.
//! The tables were checked by hand; see the comments on each test for what
//! to look for.

use cairn::retention::{self, Candidate, Count, GroupBy, GroupDecision, Policy, TagGroup};
use jiff::civil::{date, Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).expect("bundled tzdb has the zone")
}

fn utc(s: &str) -> Timestamp {
    s.parse().expect("valid RFC 3339 timestamp")
}

/// `retention::plan` seen from far enough ahead that no snapshot is in the future.
fn plan(policy: &Policy, gb: GroupBy, cands: &[Candidate], tz: &TimeZone) -> Vec<GroupDecision> {
    retention::plan(policy, gb, cands, tz, utc("2200-01-01T00:00:00Z"))
}

/// A candidate on host `h`, path `/`, no tags.
fn cand(id: impl Into<String>, time: Timestamp) -> Candidate {
    Candidate {
        id: id.into(),
        time,
        host: "h".to_string(),
        tags: vec![],
        paths: vec!["/".to_string()],
        corrupted: None,
        incomplete: false,
    }
}

/// Candidates for a list of times, ids `s001`, `s002`, ... in chronological order.
fn numbered(times: impl IntoIterator<Item = Timestamp>) -> Vec<Candidate> {
    let mut times: Vec<Timestamp> = times.into_iter().collect();
    times.sort();
    times
        .into_iter()
        .enumerate()
        .map(|(i, t)| cand(format!("s{:03}", i + 1), t))
        .collect()
}

/// One header line per group, then one line per snapshot, newest first.
fn render(groups: &[GroupDecision], tz: &TimeZone) -> String {
    let mut out = String::new();
    for group in groups {
        out.push_str(&format!(
            "== {}: {} kept, {} removed ==\n",
            group.key,
            group.kept().count(),
            group.removed().count()
        ));
        for d in &group.decisions {
            let local = d.time.to_zoned_datetime(tz.clone());
            out.push_str(&format!(
                "{}  {:<13} {:<6}  {}\n",
                local.strftime("%Y-%m-%d %a %H:%M:%S %Z"),
                d.id,
                if d.keep { "keep" } else { "remove" },
                d.reasons.join("; ")
            ));
        }
    }
    out
}

/// 2026, one backup a day at 02:00 UTC, except the ISO week 2026-W11
/// (Mon 2026-03-09 .. Sun 2026-03-15) and the ten days 2026-08-10 ..
/// 2026-08-19, plus extra backups on a few days.
fn year_2026() -> Vec<Timestamp> {
    let gap_week = date(2026, 3, 9)..=date(2026, 3, 15);
    let gap_august = date(2026, 8, 10)..=date(2026, 8, 19);
    let mut times = Vec::new();
    let mut day = date(2026, 1, 1);
    while day.year() == 2026 {
        if !gap_week.contains(&day) && !gap_august.contains(&day) {
            times.push(at_utc(day, 2, 0));
        }
        day = day.tomorrow().expect("in range");
    }
    for (day, hours) in [
        (date(2026, 3, 17), &[10, 18][..]),
        (date(2026, 8, 21), &[9, 21][..]),
        (date(2026, 12, 30), &[8, 14, 20][..]),
    ] {
        for &h in hours {
            times.push(at_utc(day, h, 0));
        }
    }
    times
}

fn at_utc(day: Date, hour: i8, minute: i8) -> Timestamp {
    day.at(hour, minute, 0, 0)
        .to_zoned_datetime(TimeZone::UTC)
        .expect("valid UTC time")
        .timestamp()
}

fn daily7_weekly4_monthly12() -> Policy {
    Policy {
        keep_daily: Some(Count::Limit(7)),
        keep_weekly: Some(Count::Limit(4)),
        keep_monthly: Some(Count::Limit(12)),
        ..Policy::default()
    }
}

/// Full year: daily keeps Dec 25..31 (the Dec 30 20:00 backup, the newest
/// of that day), weekly keeps the Sundays of W52..W50 plus Thu Dec 31 for
/// W53, monthly keeps the last backup of each month Jan..Dec.
#[test]
fn year_with_gaps_daily_weekly_monthly() {
    let cands = numbered(year_2026());
    let groups = plan(
        &daily7_weekly4_monthly12(),
        GroupBy::default(),
        &cands,
        &TimeZone::UTC,
    );
    insta::assert_snapshot!("year_with_gaps", render(&groups, &TimeZone::UTC));
}

/// Same history seen on 2026-03-20, right after the missing week W11:
/// the missing days and the missing week do not use up counts, so daily
/// reaches back to Mar 7 and weekly keeps W12, W10, W09, W08; monthly has
/// only three months, so (restic ≥ 0.17) it keeps the oldest snapshot
/// (Jan 1) as well.
#[test]
fn year_with_gaps_cut_after_march_gap() {
    let end = utc("2026-03-20T23:59:59Z");
    let cands = numbered(year_2026().into_iter().filter(|t| *t <= end));
    let groups = plan(
        &daily7_weekly4_monthly12(),
        GroupBy::default(),
        &cands,
        &TimeZone::UTC,
    );
    insta::assert_snapshot!("year_cut_2026_03_20", render(&groups, &TimeZone::UTC));
}

/// Same history seen on 2026-08-25, after the ten missing days in August:
/// daily keeps Aug 25..20 and Aug 9; weekly keeps W35, W34, W32, W31
/// (W33 = Aug 10..16 has no backups); monthly has eight months of its
/// twelve, so it keeps the oldest snapshot (Jan 1) as well.
#[test]
fn year_with_gaps_cut_after_august_gap() {
    let end = utc("2026-08-25T23:59:59Z");
    let cands = numbered(year_2026().into_iter().filter(|t| *t <= end));
    let groups = plan(
        &daily7_weekly4_monthly12(),
        GroupBy::default(),
        &cands,
        &TimeZone::UTC,
    );
    insta::assert_snapshot!("year_cut_2026_08_25", render(&groups, &TimeZone::UTC));
}

/// Every 6 hours (UTC) from `from` to `to` inclusive.
fn every_6h(from: &str, to: &str) -> Vec<Timestamp> {
    let (from, to) = (utc(from), utc(to));
    let mut times = Vec::new();
    let mut t = from;
    while t <= to {
        times.push(t);
        t = t.checked_add(6.hours()).expect("in range");
    }
    times
}

fn daily5_hourly6() -> Policy {
    Policy {
        keep_daily: Some(Count::Limit(5)),
        keep_hourly: Some(Count::Limit(6)),
        ..Policy::default()
    }
}

/// New York springs forward on 2026-03-08 (02:00 EST -> 03:00 EDT).
/// Backups at 00/06/12/18 UTC are 19:00/01:00/07:00/13:00 EST and
/// 20:00/02:00/08:00/14:00 EDT. Days are local: the 00:00 UTC backup
/// belongs to the previous local day, so there are six local days
/// (Mar 5..10) and the oldest backup (Mar 5 19:00 EST) is the one that
/// keep_daily 5 drops. Mar 8 is a 23-hour day and still one day.
#[test]
fn new_york_spring_forward_daily_hourly() {
    let ny = tz("America/New_York");
    let cands = numbered(every_6h("2026-03-06T00:00:00Z", "2026-03-10T18:00:00Z"));
    let groups = plan(&daily5_hourly6(), GroupBy::default(), &cands, &ny);
    insta::assert_snapshot!("new_york_spring_forward", render(&groups, &ny));
}

/// New York falls back on 2026-11-01 (02:00 EDT -> 01:00 EST, 01:xx
/// happens twice). Every 6 hours UTC from Oct 28 plus every 30 minutes
/// from 00:00 EDT to 02:00 EST on Nov 1. Nov 1 is a 25-hour day but one
/// day; the repeated wall-clock hour 01h is one hourly period (only the
/// newest of the four backups in it, 01:30 EST, is kept by hourly).
#[test]
fn new_york_fall_back_daily_hourly() {
    let ny = tz("America/New_York");
    let mut times = every_6h("2026-10-28T00:00:00Z", "2026-11-01T12:00:00Z");
    // 00:00, 00:30, 01:00, 01:30 EDT, then 01:30, 02:00, 02:30 EST
    // (01:00 EST = 06:00Z is already in the 6-hourly series).
    for t in [
        "04:00", "04:30", "05:00", "05:30", "06:30", "07:00", "07:30",
    ] {
        times.push(utc(&format!("2026-11-01T{t}:00Z")));
    }
    let cands = numbered(times);
    let groups = plan(&daily5_hourly6(), GroupBy::default(), &cands, &ny);
    insta::assert_snapshot!("new_york_fall_back", render(&groups, &ny));
}

/// Every 30 minutes from 21:00 EST on 2026-03-07 to 04:30 EDT on
/// 2026-03-08 with keep_hourly 6. The wall-clock hour 02h does not exist on
/// 2026-03-08 and does not use up a count: the kept hours are 04h, 03h, 01h,
/// 00h, 23h and 22h, and only 21h is dropped.
#[test]
fn new_york_hourly_across_spring_gap() {
    let ny = tz("America/New_York");
    let start = utc("2026-03-08T02:00:00Z"); // 21:00 EST on Mar 7
    let cands = numbered((0..14).map(|i| start + (30 * i as i64).minutes()));
    let policy = Policy {
        keep_hourly: Some(Count::Limit(6)),
        ..Policy::default()
    };
    let groups = plan(&policy, GroupBy::default(), &cands, &ny);
    insta::assert_snapshot!("new_york_hourly_spring_gap", render(&groups, &ny));
}

/// Two hosts, two path sets, a backup of each (host, paths) every day for
/// ten days; beta's paths are listed in a different order on some days,
/// which must not split the group.
fn two_hosts_two_path_sets() -> Vec<Candidate> {
    let mut cands = Vec::new();
    for day in 1..=10i8 {
        for (host, hour) in [("alpha", 1), ("beta", 3)] {
            for (paths, minute) in [(vec!["/home"], 0), (vec!["/etc", "/var"], 30)] {
                let mut paths: Vec<String> = paths.into_iter().map(String::from).collect();
                if host == "beta" && day % 2 == 0 {
                    paths.reverse();
                }
                let kind = if paths.len() == 1 { "home" } else { "sys" };
                cands.push(Candidate {
                    id: format!("{host}-{kind}-{day:02}"),
                    time: at_utc(date(2026, 5, day), hour, minute),
                    host: host.to_string(),
                    tags: vec![],
                    paths,
                    corrupted: None,
                    incomplete: false,
                });
            }
        }
    }
    cands
}

fn last2_daily4() -> Policy {
    Policy {
        keep_last: Some(Count::Limit(2)),
        keep_daily: Some(Count::Limit(4)),
        ..Policy::default()
    }
}

/// Four groups of ten; each keeps its own 4 newest days (May 7..10).
#[test]
fn group_by_host_and_paths() {
    let gb: GroupBy = "host,paths".parse().expect("valid group-by");
    let groups = plan(
        &last2_daily4(),
        gb,
        &two_hosts_two_path_sets(),
        &TimeZone::UTC,
    );
    insta::assert_snapshot!("group_by_host_paths", render(&groups, &TimeZone::UTC));
}

/// Two groups of twenty; per host only the newest backup of each day is
/// kept by daily (the /etc,/var one at :30), and last 2 is both path sets
/// of May 10.
#[test]
fn group_by_host_only() {
    let gb: GroupBy = "host".parse().expect("valid group-by");
    let groups = plan(
        &last2_daily4(),
        gb,
        &two_hosts_two_path_sets(),
        &TimeZone::UTC,
    );
    insta::assert_snapshot!("group_by_host", render(&groups, &TimeZone::UTC));
}

/// Daily backups for 30 days, some tagged. keep_within 10 days of the
/// newest (2026-06-30 12:00) keeps everything after 2026-06-20 12:00:00 —
/// the backup at exactly that time is not after it and goes, as in restic
/// (and so does one a second earlier); older ones survive
/// only with the tag `keep` (Jun 3, 5, 11); Jun 25 is kept for both reasons;
/// the tag `manual` alone keeps nothing.
#[test]
fn keep_within_and_tags() {
    let mut cands = Vec::new();
    for day in 1..=30i8 {
        let tags: &[&str] = match day {
            3 | 11 | 25 => &["keep"],
            5 => &["keep", "manual"],
            8 | 27 => &["manual"],
            _ => &[],
        };
        let mut c = cand(format!("d{day:02}"), at_utc(date(2026, 6, day), 12, 0));
        c.tags = tags.iter().map(|t| t.to_string()).collect();
        cands.push(c);
    }
    // One second before the keep_within boundary.
    cands.push(cand("edge-1s", utc("2026-06-20T11:59:59Z")));
    let policy = Policy {
        keep_within: Some("10d".parse().expect("valid duration")),
        keep_tags: vec![TagGroup(vec!["keep".to_string()])],
        ..Policy::default()
    };
    let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC);
    insta::assert_snapshot!("keep_within_and_tags", render(&groups, &TimeZone::UTC));
}

/// Monthly backups on the 15th at 09:00 New York time, 2024-01 .. 2026-06,
/// plus one on New Year's Eve 2024: keep_last 3 keeps Jun/May/Apr 2026,
/// keep_yearly 5 keeps the newest of each of the three years that exist
/// (Jun 15 2026, Dec 15 2025, Dec 31 2024 22:00) and, with two counts
/// left, the oldest snapshot (Jan 15 2024) as "oldest yearly 4/5".
#[test]
fn keep_last_and_yearly_over_three_years() {
    let ny = tz("America/New_York");
    let mut times = Vec::new();
    for year in 2024..=2026i16 {
        for month in 1..=12i8 {
            if year == 2026 && month > 6 {
                break;
            }
            let local: DateTime = date(year, month, 15).at(9, 0, 0, 0);
            times.push(
                local
                    .to_zoned_datetime(ny.clone())
                    .expect("valid")
                    .timestamp(),
            );
        }
    }
    // New Year's Eve 2024 at 22:00 in New York is already 2025 in UTC; in
    // New York it belongs to 2024 and, being its newest, is yearly #3.
    times.push(utc("2025-01-01T03:00:00Z"));
    let cands = numbered(times);
    let policy = Policy {
        keep_last: Some(Count::Limit(3)),
        keep_yearly: Some(Count::Limit(5)),
        ..Policy::default()
    };
    let groups = plan(&policy, GroupBy::default(), &cands, &ny);
    insta::assert_snapshot!("last3_yearly5", render(&groups, &ny));
}

#[test]
fn group_by_rejects_unknown_word() {
    let err = "host,nope"
        .parse::<GroupBy>()
        .expect_err("'nope' is not a group-by field");
    assert!(err.contains("nope"), "error does not name the word: {err}");
    assert!(
        err.contains("host") && err.contains("paths") && err.contains("tags"),
        "error does not list the allowed words: {err}"
    );
}

#[test]
fn empty_policy_keeps_everything_and_says_so() {
    let policy = Policy::default();
    assert!(policy.is_empty());
    let cands = numbered(every_6h("2026-01-01T00:00:00Z", "2026-01-01T18:00:00Z"));
    let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC);
    assert_eq!(groups.len(), 1);
    assert!(groups[0].decisions.iter().all(|d| d.keep));
    assert!(groups[0]
        .decisions
        .iter()
        .all(|d| d.reasons == ["no policy"]));
}
