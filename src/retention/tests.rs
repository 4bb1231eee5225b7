//! The rules of `spec/retention.md` checked two ways: property tests that
//! compare [`plan`] with a second, declarative reading of the spec over
//! generated histories, and cases worked by hand (several from restic's
//! `doc/060_forget.rst`).

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};

const ZONES: [&str; 5] = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

fn zone(name: &str) -> TimeZone {
    TimeZone::get(name).expect("bundled tzdb has the zone")
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("valid timestamp")
}

/// Far enough ahead that no test snapshot is in the future.
fn later() -> Timestamp {
    ts("2200-01-01T00:00:00Z")
}

fn cand(id: &str, time: &str) -> Candidate {
    Candidate {
        id: id.to_string(),
        time: ts(time),
        host: "h".to_string(),
        tags: vec![],
        paths: vec!["/".to_string()],
        corrupted: None,
        incomplete: false,
    }
}

fn dur(s: &str) -> CalendarDuration {
    s.parse().expect("valid duration")
}

fn one_group(policy: &Policy, cands: &[Candidate]) -> Vec<Decision> {
    let mut groups = plan(policy, GroupBy::default(), cands, &TimeZone::UTC, later());
    assert!(groups.len() <= 1);
    groups.pop().map(|g| g.decisions).unwrap_or_default()
}

fn kept_ids(decisions: &[Decision]) -> Vec<&str> {
    decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.as_str())
        .collect()
}

// ----- the spec, read declaratively --------------------------------------

/// The period of a snapshot for a rule, computed differently from
/// `decide.rs` (formatted local time), `index` for `keep-last`.
fn period_key(period: Period, t: Timestamp, tz: &TimeZone, index: usize) -> String {
    let z = t.to_zoned_datetime(tz.clone());
    let f = match period {
        Period::Last => return index.to_string(),
        Period::Hourly => "%Y-%m-%d %H",
        Period::Daily => "%Y-%m-%d",
        Period::Weekly => "%G-W%V",
        Period::Monthly => "%Y-%m",
        Period::Yearly => "%Y",
    };
    z.strftime(f).to_string()
}

/// The ids the spec keeps in one group (`all` newest first): corrupted
/// snapshots always; of the others, what each rule keeps.
fn spec_kept(
    policy: &Policy,
    all: &[&Candidate],
    tz: &TimeZone,
    now: Timestamp,
) -> BTreeSet<String> {
    if policy.is_empty() {
        return all.iter().map(|c| c.id.clone()).collect();
    }
    let mut kept: BTreeSet<String> = all
        .iter()
        .filter(|c| c.corrupted.is_some())
        .map(|c| c.id.clone())
        .collect();
    let good: Vec<&Candidate> = all
        .iter()
        .copied()
        .filter(|c| c.corrupted.is_none())
        .collect();
    let Some(oldest) = good.last() else {
        return kept;
    };
    // Count rules: the newest complete snapshot (else the newest) of each
    // of the N newest periods that have snapshots; the oldest snapshot too
    // when fewer than N periods have snapshots (or N is unlimited).
    for (period, count) in policy.bucket_rules() {
        let limit = count.limit().map_or(usize::MAX, |n| n as usize);
        let mut periods: Vec<(String, &Candidate)> = Vec::new();
        for (i, c) in good.iter().enumerate() {
            prefer_complete(&mut periods, period_key(period, c.time, tz, i), c);
        }
        kept.extend(periods.iter().take(limit).map(|(_, c)| c.id.clone()));
        if periods.len() < limit {
            kept.insert(oldest.id.clone());
        }
    }
    // Durations measure back from the newest snapshot not after now.
    let reference = good.iter().map(|c| c.time).filter(|t| *t <= now).max();
    let cutoff = |d: CalendarDuration| match reference {
        None => Timestamp::MIN,
        Some(r) => d.before(r, tz).unwrap_or(Timestamp::MIN),
    };
    if let Some(d) = policy.within() {
        let cut = cutoff(d);
        kept.extend(good.iter().filter(|c| c.time > cut).map(|c| c.id.clone()));
    }
    // keep-within-<period>: the newest complete (else the newest) of each
    // period among the snapshots after the cutoff, and the oldest snapshot
    // if it is after the cutoff.
    for (period, d) in policy.within_rules() {
        let cut = cutoff(d);
        let mut periods: Vec<(String, &Candidate)> = Vec::new();
        for (i, c) in good.iter().enumerate().filter(|(_, c)| c.time > cut) {
            prefer_complete(&mut periods, period_key(period, c.time, tz, i), c);
        }
        kept.extend(periods.iter().map(|(_, c)| c.id.clone()));
        if oldest.time > cut {
            kept.insert(oldest.id.clone());
        }
    }
    for c in &good {
        if policy.keep_tags.iter().any(|g| g.matches(&c.tags)) {
            kept.insert(c.id.clone());
        }
    }
    kept
}

/// Add `c` (walking newest first) to the period `key` of `periods`: the
/// first snapshot of a period stands for it until a complete one comes
/// when it is incomplete.
fn prefer_complete<'c>(periods: &mut Vec<(String, &'c Candidate)>, key: String, c: &'c Candidate) {
    match periods.iter_mut().find(|(k, _)| *k == key) {
        None => periods.push((key, c)),
        Some((_, standing)) => {
            if standing.incomplete && !c.incomplete {
                *standing = c;
            }
        }
    }
}

// ----- generators ---------------------------------------------------------

/// Candidates with unique ids, times within 2025..2027, a few hosts, path
/// sets and tags, about one in six corrupted. Half of the times fall on a
/// 15-minute grid in one week (2026-02-05..12) so that snapshots often
/// share hours, days and even exact times (which exercises the tie-break).
fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    let start = ts("2025-01-01T00:00:00Z").as_second();
    let one = (
        prop_oneof![
            0i64..(2 * 366 * 86_400),
            (0i64..(7 * 96)).prop_map(|quarter| 400 * 86_400 + quarter * 900),
        ],
        0usize..2,
        0usize..3,
        proptest::collection::vec(0usize..3, 0..3),
        0u8..6,
        0u8..4,
    );
    proptest::collection::vec(one, 0..60).prop_map(move |items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (offset, host, paths, tags, bad, partial))| Candidate {
                id: format!("s{i:03}"),
                time: Timestamp::from_second(start + offset).expect("in range"),
                host: ["alpha", "beta"][host].to_string(),
                paths: [
                    vec!["/home".to_string()],
                    vec!["/var".to_string(), "/etc".to_string()],
                    vec!["/etc".to_string(), "/var".to_string()],
                ][paths]
                    .clone(),
                tags: tags
                    .into_iter()
                    .map(|t| ["keep", "daily", "manual"][t].to_string())
                    .collect(),
                corrupted: (bad == 0).then(|| "checksum mismatch".to_string()),
                incomplete: partial == 0,
            })
            .collect()
    })
}

fn group_by() -> impl Strategy<Value = GroupBy> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(host, paths, tags)| GroupBy {
        host,
        paths,
        tags,
    })
}

fn count() -> impl Strategy<Value = Option<Count>> {
    prop_oneof![
        3 => Just(None),
        4 => (1u32..8).prop_map(|n| Some(Count::Limit(n))),
        1 => Just(Some(Count::Unlimited)),
    ]
}

fn duration() -> impl Strategy<Value = Option<CalendarDuration>> {
    proptest::option::of((0u32..2, 0u32..14, 0u32..40, 0u32..48).prop_map(
        |(years, months, days, hours)| CalendarDuration {
            years,
            months,
            days,
            hours,
        },
    ))
}

fn tag_group() -> impl Strategy<Value = TagGroup> {
    proptest::sample::select(vec![
        vec!["keep"],
        vec!["keep", "daily"],
        vec!["nope"],
        vec![],
    ])
    .prop_map(|g| TagGroup(g.into_iter().map(String::from).collect()))
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        (count(), count(), count(), count(), count(), count()),
        (
            duration(),
            duration(),
            duration(),
            duration(),
            duration(),
            duration(),
        ),
        proptest::collection::vec(tag_group(), 0..3),
    )
        .prop_map(
            |((last, hourly, daily, weekly, monthly, yearly), (w, wh, wd, ww, wm, wy), tags)| {
                Policy {
                    keep_last: last,
                    keep_hourly: hourly,
                    keep_daily: daily,
                    keep_weekly: weekly,
                    keep_monthly: monthly,
                    keep_yearly: yearly,
                    keep_within: w,
                    keep_within_hourly: wh,
                    keep_within_daily: wd,
                    keep_within_weekly: ww,
                    keep_within_monthly: wm,
                    keep_within_yearly: wy,
                    keep_tags: tags,
                }
            },
        )
}

fn tz() -> impl Strategy<Value = TimeZone> {
    proptest::sample::select(ZONES.to_vec()).prop_map(zone)
}

/// Usually after every snapshot; sometimes in the middle of the history,
/// so that some snapshots are in the future.
fn now() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        3 => Just(later()),
        1 => (0i64..(2 * 366 * 86_400))
            .prop_map(|s| Timestamp::from_second(ts("2025-01-01T00:00:00Z").as_second() + s).expect("in range")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The decisions are the spec's, read declaratively.
    #[test]
    fn plan_keeps_what_the_spec_says(
        cands in candidates(), policy in policy(), gb in group_by(), tz in tz(), now in now(),
    ) {
        for group in plan(&policy, gb, &cands, &tz, now) {
            let members: Vec<&Candidate> = group
                .decisions
                .iter()
                .map(|d| cands.iter().find(|c| c.id == d.id).expect("a candidate"))
                .collect();
            let expected = spec_kept(&policy, &members, &tz, now);
            let got: BTreeSet<String> = group.kept().map(|d| d.id.clone()).collect();
            prop_assert_eq!(got, expected, "group {}", group.key);
        }
    }

    /// Corrupted snapshots count for nothing: the good ones are decided as
    /// if the corrupted ones were not there, and the corrupted ones are kept
    /// with no rule matching.
    #[test]
    fn corrupted_snapshots_are_never_counted(
        cands in candidates(), policy in policy(), gb in group_by(), tz in tz(), now in now(),
    ) {
        let good: Vec<Candidate> = cands.iter().filter(|c| c.corrupted.is_none()).cloned().collect();
        let without: HashMap<String, Decision> = plan(&policy, gb, &good, &tz, now)
            .into_iter()
            .flat_map(|g| g.decisions)
            .map(|d| (d.id.clone(), d))
            .collect();
        for d in plan(&policy, gb, &cands, &tz, now).into_iter().flat_map(|g| g.decisions) {
            match &d.corrupted {
                Some(_) => {
                    prop_assert!(d.keep);
                    prop_assert!(d.matches.is_empty());
                }
                None => prop_assert_eq!(Some(&d), without.get(&d.id)),
            }
        }
    }

    /// Each count rule's counter runs 1, 2, 3 … over the snapshots it
    /// keeps and never passes its count; a snapshot is kept exactly when a
    /// rule matches it (or it is corrupted, or there is no policy).
    #[test]
    fn counters_count_up_to_the_limit(
        cands in candidates(), policy in policy(), gb in group_by(), tz in tz(), now in now(),
    ) {
        for group in plan(&policy, gb, &cands, &tz, now) {
            for (period, count) in policy.bucket_rules() {
                let counters: Vec<u32> = group
                    .decisions
                    .iter()
                    .flat_map(|d| &d.matches)
                    .filter(|m| m.rule == period.name())
                    .map(|m| m.counter.expect("count rules have counters"))
                    .collect();
                let expected: Vec<u32> = (1..=counters.len() as u32).collect();
                prop_assert_eq!(&counters, &expected);
                if let Some(n) = count.limit() {
                    prop_assert!(counters.len() <= n as usize);
                }
            }
            for d in &group.decisions {
                prop_assert!(!d.reasons.is_empty());
                let special = d.corrupted.is_some() || policy.is_empty();
                prop_assert_eq!(d.keep, special || !d.matches.is_empty(), "{:?}", d);
            }
        }
    }

    /// Any count rule keeps the newest good snapshot of every group — or,
    /// when that one is incomplete, a complete one of its period.
    #[test]
    fn newest_good_snapshot_of_each_group_is_kept(
        cands in candidates(), policy in policy(), gb in group_by(), tz in tz(), now in now(),
    ) {
        let Some((period, _)) = policy.bucket_rules().next() else {
            return Ok(());
        };
        let incomplete = |id: &str| cands.iter().any(|c| c.id == id && c.incomplete);
        let key = |d: &Decision| period_key(period, d.time, &tz, 0);
        for group in plan(&policy, gb, &cands, &tz, now) {
            if let Some(newest) = group.decisions.iter().find(|d| d.corrupted.is_none()) {
                let stand_in = period != Period::Last && incomplete(&newest.id) && group.decisions.iter().any(|d| {
                    d.keep && d.corrupted.is_none() && !incomplete(&d.id) && key(d) == key(newest)
                });
                prop_assert!(newest.keep || stand_in, "group {} newest {:?}", group.key, newest);
            }
            for pair in group.decisions.windows(2) {
                prop_assert!(pair[0].time >= pair[1].time);
            }
        }
    }

    /// Every input snapshot is decided exactly once; groups are sorted.
    #[test]
    fn kept_and_removed_partition_the_input(
        cands in candidates(), policy in policy(), gb in group_by(), tz in tz(), now in now(),
    ) {
        let groups = plan(&policy, gb, &cands, &tz, now);
        let mut seen: Vec<String> = groups
            .iter()
            .flat_map(|g| g.decisions.iter().map(|d| d.id.clone()))
            .collect();
        seen.sort();
        let mut input: Vec<String> = cands.iter().map(|c| c.id.clone()).collect();
        input.sort();
        prop_assert_eq!(&seen, &input);
        for pair in groups.windows(2) {
            prop_assert!(pair[0].key < pair[1].key);
        }
        let mut expected: HashMap<GroupKey, usize> = HashMap::new();
        for c in &cands {
            *expected.entry(GroupKey::of(c, gb)).or_default() += 1;
        }
        for g in &groups {
            prop_assert_eq!(Some(&g.decisions.len()), expected.get(&g.key));
        }
    }

    /// The plan does not depend on the order of the input.
    #[test]
    fn result_is_independent_of_input_order(
        (cands, shuffled) in candidates().prop_flat_map(|c| {
            let s = Just(c.clone()).prop_shuffle();
            (Just(c), s)
        }),
        policy in policy(), gb in group_by(), tz in tz(), now in now(),
    ) {
        let a = plan(&policy, gb, &cands, &tz, now);
        let b = plan(&policy, gb, &shuffled, &tz, now);
        prop_assert_eq!(
            serde_json::to_string(&a).expect("serialize"),
            serde_json::to_string(&b).expect("serialize")
        );
    }
}

/// Each candidate with what it stored of sources `a`, `b` and `c`
/// (complete, incomplete, failed or absent); the candidate's own
/// `incomplete` is ignored by per-source retention.
fn plan_snapshots() -> impl Strategy<Value = Vec<PlanSnapshot>> {
    use crate::repo::SourceStatus::{Complete, Failed, Incomplete};
    candidates().prop_flat_map(|cands| {
        let n = cands.len();
        (
            Just(cands),
            proptest::collection::vec(proptest::collection::vec(0u8..5, 3), n),
        )
            .prop_map(|(cands, statuses)| {
                cands
                    .into_iter()
                    .zip(statuses)
                    .map(|(candidate, st)| PlanSnapshot {
                        candidate,
                        sources: ["a", "b", "c"]
                            .iter()
                            .zip(st)
                            .filter_map(|(name, s)| {
                                let status = match s {
                                    0 | 1 => Complete,
                                    2 => Incomplete,
                                    3 => Failed,
                                    _ => return None,
                                };
                                Some((name.to_string(), status))
                            })
                            .collect(),
                    })
                    .collect()
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Per-source retention is the spec's: for every source, the rules
    /// over the snapshots that stored it (a complete copy standing for its
    /// period) plus its newest good complete copy; a snapshot is kept when
    /// it is corrupted or any source keeps it.
    #[test]
    fn plan_by_source_keeps_what_the_spec_says(
        snaps in plan_snapshots(), policy in policy(), tz in tz(), now in now(),
    ) {
        use crate::repo::SourceStatus;
        prop_assume!(!policy.is_empty());
        let mut expected: BTreeSet<String> = snaps
            .iter()
            .filter(|s| s.candidate.corrupted.is_some())
            .map(|s| s.candidate.id.clone())
            .collect();
        for name in ["a", "b", "c"] {
            let mut of_source: Vec<Candidate> = snaps
                .iter()
                .filter_map(|s| {
                    let st = s.sources.iter().find(|(n, _)| n == name)?.1;
                    (st != SourceStatus::Failed).then(|| Candidate {
                        incomplete: st == SourceStatus::Incomplete,
                        ..s.candidate.clone()
                    })
                })
                .collect();
            of_source.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
            let all: Vec<&Candidate> = of_source.iter().collect();
            expected.extend(spec_kept(&policy, &all, &tz, now));
            if let Some(c) = all.iter().find(|c| c.corrupted.is_none() && !c.incomplete) {
                expected.insert(c.id.clone());
            }
        }
        let d = plan_by_source(&policy, &snaps, &tz, now);
        prop_assert_eq!(d.snapshots.len(), snaps.len());
        let got: BTreeSet<String> = d.snapshots.iter().filter(|v| v.keep).map(|v| v.id.clone()).collect();
        prop_assert_eq!(got, expected);
        for v in &d.snapshots {
            prop_assert!(!v.reasons.is_empty(), "{:?}", v);
            prop_assert!(v.sources.iter().all(|s| s.status != SourceStatus::Failed));
        }
    }
}

// ----- cases worked by hand ------------------------------------------------

/// restic's `doc/060_forget.rst`: backups every weekday for two weeks at
/// 11:00, an extra one on Fridays at 23:00, none on the second Wednesday.
fn restic_doc_weekdays() -> Vec<Candidate> {
    [
        ("60e5c031", "2025-04-21T11:00:00Z"),
        ("1dccffe9", "2025-04-22T11:00:00Z"),
        ("90a5c949", "2025-04-23T11:00:00Z"),
        ("79580708", "2025-04-24T11:00:00Z"),
        ("8a603ddf", "2025-04-25T11:00:00Z"),
        ("ae33bf10", "2025-04-25T23:00:00Z"),
        ("fb8b1418", "2025-04-28T11:00:00Z"),
        ("1db188b4", "2025-04-29T11:00:00Z"),
        ("7baa4f28", "2025-05-01T11:00:00Z"),
        ("05c48af3", "2025-05-02T11:00:00Z"),
        ("ad72e262", "2025-05-02T23:00:00Z"),
    ]
    .into_iter()
    .map(|(id, t)| cand(id, t))
    .collect()
}

/// `--keep-daily 5` keeps the previous Friday's late backup because the
/// Wednesday is missing (restic's documentation lists the same five).
#[test]
fn restic_doc_keep_daily_5() {
    let policy = Policy {
        keep_daily: Some(Count::Limit(5)),
        ..Policy::default()
    };
    let d = one_group(&policy, &restic_doc_weekdays());
    assert_eq!(
        kept_ids(&d),
        ["ad72e262", "7baa4f28", "1db188b4", "fb8b1418", "ae33bf10"]
    );
    assert_eq!(d[0].reasons, ["daily 1/5 (2025-05-02)"]);
    assert_eq!(d[1].reasons, ["daily: 2025-05-02 already kept"]);
    assert_eq!(d[5].reasons, ["daily 5/5 (2025-04-25)"]);
    assert_eq!(d[6].reasons, ["daily 5/5 used"]);
}

/// `--keep-within-daily 7d` keeps one per day after 2025-04-25 23:00 —
/// the Friday-late backup at exactly that time is not after it, so only
/// four remain (restic's documentation lists the same four).
#[test]
fn restic_doc_keep_within_daily_7d() {
    let policy = Policy {
        keep_within_daily: Some(dur("7d")),
        ..Policy::default()
    };
    let d = one_group(&policy, &restic_doc_weekdays());
    assert_eq!(
        kept_ids(&d),
        ["ad72e262", "7baa4f28", "1db188b4", "fb8b1418"]
    );
    assert_eq!(d[0].reasons, ["daily within 7d (2025-05-02)"]);
    assert_eq!(
        d[5].reasons,
        ["daily within 7d: not after 2025-04-25 23:00:00"]
    );
}

/// restic's documentation: a backup every day for 100 years and
/// `--keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75`
/// keeps 7 dailies, 4 more weeklies (the dailies include one week's
/// newest), 12 or 11 more monthlies and 75 or 74 more yearlies. Here the
/// last day, 2124-12-31, is a Sunday and the end of a month and a year, so
/// it is the newest daily, weekly, monthly and yearly at once: 7 + 4 + 11
/// + 74 = 96 are kept.
#[test]
fn restic_doc_hundred_years_of_dailies() {
    let last = jiff::civil::date(2124, 12, 31);
    assert_eq!(last.weekday(), jiff::civil::Weekday::Sunday);
    let mut cands = Vec::new();
    let mut day = jiff::civil::date(2025, 1, 1);
    while day <= last {
        let t = day
            .at(2, 0, 0, 0)
            .to_zoned_datetime(TimeZone::UTC)
            .expect("valid")
            .timestamp();
        cands.push(Candidate {
            id: format!("d{}", cands.len()),
            time: t,
            ..cand("", "2000-01-01T00:00:00Z")
        });
        day = day.tomorrow().expect("in range");
    }
    let policy = Policy {
        keep_daily: Some(Count::Limit(7)),
        keep_weekly: Some(Count::Limit(5)),
        keep_monthly: Some(Count::Limit(12)),
        keep_yearly: Some(Count::Limit(75)),
        ..Policy::default()
    };
    let d = one_group(&policy, &cands);
    let has = |d: &Decision, rule: &str| d.matches.iter().any(|m| m.rule == rule);
    let count = |f: &dyn Fn(&Decision) -> bool| d.iter().filter(|d| f(d)).count();
    assert_eq!(count(&|d| has(d, "daily")), 7);
    assert_eq!(count(&|d| has(d, "weekly") && !has(d, "daily")), 4);
    assert_eq!(
        count(&|d| has(d, "monthly") && !has(d, "daily") && !has(d, "weekly")),
        11
    );
    assert_eq!(count(&|d| has(d, "yearly") && d.matches.len() == 1), 74);
    assert_eq!(count(&|d| d.keep), 96);
    // 100 calendar years: yearly 75 is used up, so the oldest snapshot is
    // not kept.
    assert!(!d.last().expect("snapshots").keep);
}

/// restic ≥ 0.17: while a count is not used up, the oldest snapshot is
/// kept too, marked `oldest`.
#[test]
fn unused_count_keeps_the_oldest_snapshot() {
    let cands = [
        cand("a", "2026-06-15T09:00:00Z"),
        cand("b", "2025-12-15T09:00:00Z"),
        cand("c", "2024-12-15T09:00:00Z"),
        cand("d", "2024-01-15T09:00:00Z"),
    ];
    let policy = Policy {
        keep_yearly: Some(Count::Limit(5)),
        ..Policy::default()
    };
    let d = one_group(&policy, &cands);
    assert_eq!(kept_ids(&d), ["a", "b", "c", "d"]);
    assert_eq!(d[3].reasons, ["oldest yearly 4/5 (2024)"]);
    assert!(d[3].matches[0].oldest);
    // Used up exactly: the oldest goes.
    let policy = Policy {
        keep_yearly: Some(Count::Limit(3)),
        ..Policy::default()
    };
    let d = one_group(&policy, &cands);
    assert_eq!(kept_ids(&d), ["a", "b", "c"]);
    assert_eq!(d[3].reasons, ["yearly 3/3 used"]);
    // Unlimited never runs out.
    let policy = Policy {
        keep_monthly: Some(Count::Unlimited),
        ..Policy::default()
    };
    let mut more = cands.to_vec();
    more.push(cand("e", "2024-01-10T09:00:00Z"));
    let d = one_group(&policy, &more);
    assert_eq!(kept_ids(&d), ["a", "b", "c", "d", "e"]);
    assert_eq!(d[0].reasons, ["monthly 1/unlimited (2026-06)"]);
    assert_eq!(d[4].reasons, ["oldest monthly 5/unlimited (2024-01)"]);
}

#[test]
fn reasons_name_the_rule_counter_and_period() {
    let cands = [
        cand("a", "2026-03-14T13:20:00Z"),
        cand("b", "2026-03-14T13:10:00Z"),
        cand("c", "2026-03-13T09:00:00Z"),
        cand("d", "2026-03-13T08:00:00Z"),
    ];
    let policy = Policy {
        keep_last: Some(Count::Limit(1)),
        keep_hourly: Some(Count::Limit(2)),
        keep_daily: Some(Count::Limit(2)),
        keep_weekly: Some(Count::Limit(1)),
        keep_monthly: Some(Count::Limit(1)),
        keep_yearly: Some(Count::Limit(1)),
        keep_within: Some(dur("1h")),
        keep_within_daily: Some(dur("1d")),
        ..Policy::default()
    };
    let d = one_group(&policy, &cands);
    assert_eq!(
        d[0].reasons,
        [
            "last 1/1",
            "hourly 1/2 (2026-03-14 13h)",
            "daily 1/2 (2026-03-14)",
            "weekly 1/1 (2026-W11)",
            "monthly 1/1 (2026-03)",
            "yearly 1/1 (2026)",
            "within 1h of newest",
            "daily within 1d (2026-03-14)",
        ]
    );
    assert_eq!(d[1].reasons, ["within 1h of newest"]);
    assert_eq!(
        d[2].reasons,
        ["hourly 2/2 (2026-03-13 09h)", "daily 2/2 (2026-03-13)",]
    );
    assert!(!d[3].keep);
    assert_eq!(
        d[3].reasons,
        [
            "last 1/1 used",
            "hourly 2/2 used",
            "daily 2/2 used",
            "weekly 1/1 used",
            "monthly 1/1 used",
            "yearly 1/1 used",
            "within 1h: not after 2026-03-14 12:20:00",
            "daily within 1d: not after 2026-03-13 13:20:00",
        ]
    );
    let json = serde_json::to_value(&d[2].matches[0]).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"rule": "hourly", "counter": 2, "of": 2, "period": "2026-03-13 09h"})
    );
}

#[test]
fn iso_week_spans_new_year() {
    // 2026-12-31 (Thu) and 2027-01-01 (Fri) are both in 2026-W53.
    let cands = [
        cand("new", "2027-01-01T10:00:00Z"),
        cand("mid", "2026-12-31T10:00:00Z"),
        cand("old", "2026-12-28T10:00:00Z"),
    ];
    let policy = Policy {
        keep_weekly: Some(Count::Limit(1)),
        ..Policy::default()
    };
    let d = one_group(&policy, &cands);
    assert_eq!(d[0].reasons, ["weekly 1/1 (2026-W53)"]);
    assert!(!d[1].keep && !d[2].keep);
}

/// `1m` is a calendar month (restic), measured from the newest snapshot;
/// a snapshot exactly at the cutoff is not after it.
#[test]
fn keep_within_one_month_is_a_month() {
    let cands = [
        cand("newest", "2026-03-31T02:00:00Z"),
        cand("in", "2026-03-03T02:00:01Z"),
        cand("edge", "2026-03-03T02:00:00Z"),
        cand("out", "2026-02-28T02:00:00Z"),
    ];
    let policy = Policy {
        keep_within: Some(dur("1m")),
        ..Policy::default()
    };
    let d = one_group(&policy, &cands);
    assert_eq!(kept_ids(&d), ["newest", "in"]);
    assert_eq!(d[0].reasons, ["within 1m of newest"]);
    assert_eq!(d[2].reasons, ["within 1m: not after 2026-03-03 02:00:00"]);
}

/// Durations measure from the newest snapshot that is not in the future;
/// with every snapshot in the future they keep everything (restic).
#[test]
fn future_snapshots_do_not_move_the_reference() {
    let cands = [
        cand("future", "2099-01-01T00:00:00Z"),
        cand("now", "2026-03-10T00:00:00Z"),
        cand("week", "2026-03-03T12:00:00Z"),
        cand("old", "2026-01-01T00:00:00Z"),
    ];
    let policy = Policy {
        keep_within: Some(dur("7d")),
        ..Policy::default()
    };
    let now = ts("2026-03-10T01:00:00Z");
    let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC, now);
    assert_eq!(kept_ids(&groups[0].decisions), ["future", "now", "week"]);
    let now = ts("2020-01-01T00:00:00Z");
    let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC, now);
    assert_eq!(groups[0].kept().count(), 4);
}

#[test]
fn huge_durations_keep_everything() {
    let cands = [
        cand("a", "2026-01-01T00:00:00Z"),
        cand("b", "1970-01-01T00:00:00Z"),
    ];
    let policy = Policy {
        keep_within: Some(dur("4000000000y")),
        keep_within_yearly: Some(dur("4000000000y")),
        ..Policy::default()
    };
    assert!(one_group(&policy, &cands).iter().all(|d| d.keep));
}

/// `keep-tag a,b` needs both tags; several groups: any; `''`: no tags.
#[test]
fn tag_groups() {
    let mut both = cand("both", "2026-01-04T00:00:00Z");
    both.tags = vec!["b".into(), "a".into()];
    let mut a = cand("a", "2026-01-03T00:00:00Z");
    a.tags = vec!["a".into()];
    let mut c = cand("c", "2026-01-02T00:00:00Z");
    c.tags = vec!["c".into()];
    let none = cand("none", "2026-01-01T00:00:00Z");
    let cands = [both, a, c, none];
    let group = |s: &str| TagGroup::parse(s).expect("valid");
    let keep = |groups: &[&str]| {
        let policy = Policy {
            keep_tags: groups.iter().map(|g| group(g)).collect(),
            ..Policy::default()
        };
        one_group(&policy, &cands)
    };
    let d = keep(&["a,b"]);
    assert_eq!(kept_ids(&d), ["both"]);
    assert_eq!(d[0].reasons, ["has tags a,b"]);
    assert_eq!(d[1].reasons, ["no tag group matches"]);
    assert_eq!(kept_ids(&keep(&["a,b", "c"])), ["both", "c"]);
    assert_eq!(kept_ids(&keep(&["a"])), ["both", "a"]);
    let d = keep(&[""]);
    assert_eq!(kept_ids(&d), ["none"]);
    assert_eq!(d[3].reasons, ["has no tags"]);
    // The same group twice is one reason.
    assert_eq!(keep(&["a,b", "b,a"])[0].reasons, ["has tags a,b"]);
}

/// A corrupted snapshot is never the one kept for its period: the day
/// keeps its newest good snapshot, the corrupted one is kept and says why.
#[test]
fn corrupted_snapshot_is_passed_over_and_kept() {
    let mut bad = cand("bad", "2026-03-14T20:00:00Z");
    bad.corrupted = Some("table t: checksum differs".into());
    let cands = [
        bad,
        cand("good", "2026-03-14T08:00:00Z"),
        cand("yday", "2026-03-13T08:00:00Z"),
        cand("old", "2026-03-12T08:00:00Z"),
    ];
    let policy = Policy {
        keep_daily: Some(Count::Limit(2)),
        ..Policy::default()
    };
    let d = one_group(&policy, &cands);
    assert_eq!(kept_ids(&d), ["bad", "good", "yday"]);
    assert_eq!(
        d[0].reasons,
        ["corrupted (its restore test failed: table t: checksum differs): kept, and no rule counts it"]
    );
    assert_eq!(d[0].corrupted.as_deref(), Some("table t: checksum differs"));
    assert!(d[0].matches.is_empty());
    assert_eq!(d[1].reasons, ["daily 1/2 (2026-03-14)"]);
    assert_eq!(d[3].reasons, ["daily 2/2 used"]);
}

#[test]
fn a_group_whose_good_snapshots_all_go_is_flagged() {
    let mut t = cand("tagged", "2026-01-02T00:00:00Z");
    t.tags = vec!["x".into()];
    let policy = Policy {
        keep_tags: vec![TagGroup(vec!["y".into()])],
        ..Policy::default()
    };
    let groups = plan(
        &policy,
        GroupBy::default(),
        &[t, cand("plain", "2026-01-01T00:00:00Z")],
        &TimeZone::UTC,
        later(),
    );
    assert!(groups[0].keeps_no_good_snapshot());
    // Only corrupted snapshots: nothing good to lose.
    let mut bad = cand("bad", "2026-01-01T00:00:00Z");
    bad.corrupted = Some("x".into());
    let groups = plan(&policy, GroupBy::default(), &[bad], &TimeZone::UTC, later());
    assert!(!groups[0].keeps_no_good_snapshot());
}

#[test]
fn empty_policy_keeps_everything() {
    let policy = Policy::default();
    let mut bad = cand("b", "2026-01-02T00:00:00Z");
    bad.corrupted = Some("x".into());
    let cands = [cand("a", "2026-01-01T00:00:00Z"), bad];
    let d = one_group(&policy, &cands);
    for d in &d {
        assert!(d.keep);
        assert_eq!(d.reasons, [REASON_NO_POLICY]);
    }
    assert!(plan(&policy, GroupBy::default(), &[], &TimeZone::UTC, later()).is_empty());
}
