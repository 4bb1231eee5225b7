//! Retention policy evaluation: which snapshots does `forget` keep, and why?
//!
//! # Why this module exists
//!
//! Deleting snapshots is the one operation in a backup tool that destroys
//! data on purpose, so the decision of *what* to delete must be easy to
//! reason about, easy to test and completely separate from the code that
//! actually touches the repository. This module is that decision, and
//! nothing else: it is pure (no I/O, no clock, no global time zone), takes a
//! list of [`Candidate`] snapshots plus a [`Policy`] and returns, for every
//! snapshot, whether it is kept together with the human-readable reasons.
//! The `forget` command prints those reasons (and can do so in a dry run)
//! before it removes anything.
//!
//! # Semantics
//!
//! The rules follow restic's `forget` (`internal/restic/snapshot_policy.go`):
//!
//! * Snapshots are first split into groups by a [`GroupKey`] (host, sorted
//!   paths and/or sorted tags, as selected by [`GroupBy`]). Every group is
//!   evaluated on its own; groups are returned sorted by key.
//! * Inside a group snapshots are ordered newest first (ties broken by id,
//!   then host, paths and tags, so the result never depends on input order).
//! * Each *bucket rule* (`keep_last`, `keep_hourly`, `keep_daily`,
//!   `keep_weekly`, `keep_monthly`, `keep_yearly`) with a count `N` walks the
//!   group from newest to oldest and keeps the newest snapshot of each of the
//!   `N` most recent periods (hour, calendar day, ISO week, month, year) **that
//!   contain at least one snapshot**. Periods without snapshots do not use up
//!   a count: `keep_daily = 7` keeps seven days that have backups, even if
//!   they are spread over three weeks. `keep_last` treats every snapshot as a
//!   period of its own.
//! * `keep_within = d` keeps every snapshot taken at or after
//!   `newest snapshot of the group - d`. It is measured from the newest
//!   snapshot, not from "now", so a host that stopped backing up does not
//!   silently lose its history.
//! * `keep_tags` keeps every snapshot that carries at least one of the
//!   listed tags.
//! * A snapshot kept by several rules lists every reason; a snapshot that no
//!   rule keeps is removed with the reason [`REASON_REMOVED`].
//! * An empty policy (see [`Policy::is_empty`]) keeps everything, with the
//!   reason [`REASON_NO_POLICY`]; callers are expected to refuse to run
//!   `forget` without a policy in the first place.
//!
//! A count of `0` and a `keep_within` of zero mean "rule not set", as in
//! restic.
//!
//! # Time zones
//!
//! Periods are calendar periods in the time zone passed to [`plan`], computed
//! with [`jiff::ZonedDateTime`], so they stay correct across daylight saving
//! time changes: a 23- or 25-hour day is still one day, and a snapshot taken
//! at 19:00 on March 5th in New York belongs to March 5th even though it is
//! already March 6th in UTC. Hourly periods are wall-clock hours, which
//! means the repeated hour when clocks fall back (e.g. 01:00–02:00 on
//! 2026-11-01 in New York) is a single hourly period, and the skipped hour
//! when clocks spring forward simply has no snapshots.
//!
//! Weeks are ISO 8601 weeks (Monday to Sunday, numbered within the ISO
//! week-based year), so the week around New Year is one week, e.g. `2026-W53`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

/// The single reason given for a snapshot that no rule keeps.
pub const REASON_REMOVED: &str = "no rule keeps it";

/// The single reason given for every snapshot when the policy is empty.
pub const REASON_NO_POLICY: &str = "no policy";

/// A snapshot as seen by the retention planner: only the fields that
/// grouping and the rules look at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// Snapshot id, echoed back in the [`Decision`].
    pub id: String,
    /// When the snapshot was taken.
    pub time: Timestamp,
    /// Host the snapshot was taken on.
    pub host: String,
    /// Tags of the snapshot (any order).
    pub tags: Vec<String>,
    /// Backed-up paths of the snapshot (any order).
    pub paths: Vec<String>,
}

/// What to keep. Every field is an independent rule; a snapshot is kept if
/// any rule keeps it. `None`, a count of `0` and a zero `keep_within` all
/// mean "rule not set".
#[derive(Default, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Keep the `n` newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the `n` newest hours that have snapshots.
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the `n` newest days that have snapshots.
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the `n` newest ISO weeks that have snapshots.
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the `n` newest months that have snapshots.
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the `n` newest years that have snapshots.
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot at most this much older than the newest snapshot
    /// of its group (like restic, relative to the newest snapshot, not to now).
    pub keep_within: Option<Duration>,
    /// Keep every snapshot that has any of these tags.
    pub keep_tags: Vec<String>,
}

impl Policy {
    /// `true` when no rule is set at all. Such a policy would remove every
    /// snapshot, so [`plan`] keeps everything instead and the caller should
    /// refuse to run.
    pub fn is_empty(&self) -> bool {
        self.bucket_rules().next().is_none() && self.within().is_none() && self.keep_tags.is_empty()
    }

    /// The bucket rules that are set, in the order their reasons are listed.
    fn bucket_rules(&self) -> impl Iterator<Item = (Period, u32)> {
        [
            (Period::Last, self.keep_last),
            (Period::Hourly, self.keep_hourly),
            (Period::Daily, self.keep_daily),
            (Period::Weekly, self.keep_weekly),
            (Period::Monthly, self.keep_monthly),
            (Period::Yearly, self.keep_yearly),
        ]
        .into_iter()
        .filter_map(|(period, count)| match count {
            Some(n) if n > 0 => Some((period, n)),
            _ => None,
        })
    }

    /// `keep_within`, if set to a non-zero duration.
    fn within(&self) -> Option<Duration> {
        self.keep_within.filter(|d| !d.is_zero())
    }
}

/// Which snapshot fields split snapshots into independently evaluated
/// groups. restic's default is `host,paths`; the derived `Default` groups
/// nothing (all snapshots form one group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupBy {
    /// Group by host name.
    pub host: bool,
    /// Group by the (sorted) set of backed-up paths.
    pub paths: bool,
    /// Group by the (sorted) set of tags.
    pub tags: bool,
}

/// Words accepted by [`GroupBy::from_str`] (singular forms are accepted too).
pub const GROUP_BY_WORDS: [&str; 3] = ["host", "paths", "tags"];

impl FromStr for GroupBy {
    type Err = String;

    /// Parses a comma-separated list such as `"host,paths"`, `"tags"` or
    /// `""` (no grouping). Whitespace around words is ignored and the
    /// singular forms `path` and `tag` (and `hosts`) are accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut group_by = GroupBy::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "host" | "hosts" => group_by.host = true,
                "paths" | "path" => group_by.paths = true,
                "tags" | "tag" => group_by.tags = true,
                other => {
                    return Err(format!(
                        "unknown group-by field '{other}' (allowed: {}, comma-separated, or empty for no grouping)",
                        GROUP_BY_WORDS.join(", ")
                    ))
                }
            }
        }
        Ok(group_by)
    }
}

impl fmt::Display for GroupBy {
    /// The canonical form accepted by [`GroupBy::from_str`], e.g. `host,paths`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = [
            (self.host, "host"),
            (self.paths, "paths"),
            (self.tags, "tags"),
        ]
        .into_iter()
        .filter_map(|(on, word)| on.then_some(word))
        .collect();
        f.write_str(&words.join(","))
    }
}

/// The identity of a group. A field is `None` when snapshots are not grouped
/// by it; `paths` and `tags` are sorted and de-duplicated, so the order in
/// which a snapshot lists them does not matter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct GroupKey {
    /// Host name, when grouping by host.
    pub host: Option<String>,
    /// Sorted paths, when grouping by paths.
    pub paths: Option<Vec<String>>,
    /// Sorted tags, when grouping by tags.
    pub tags: Option<Vec<String>>,
}

impl GroupKey {
    /// The key `candidate` belongs to under `group_by`.
    pub fn of(candidate: &Candidate, group_by: GroupBy) -> GroupKey {
        GroupKey {
            host: group_by.host.then(|| candidate.host.clone()),
            paths: group_by.paths.then(|| sorted_set(&candidate.paths)),
            tags: group_by.tags.then(|| sorted_set(&candidate.tags)),
        }
    }
}

fn sorted_set(items: &[String]) -> Vec<String> {
    let mut v = items.to_vec();
    v.sort();
    v.dedup();
    v
}

impl fmt::Display for GroupKey {
    /// E.g. `host [alpha], paths [/etc, /var]`, or `all snapshots` when
    /// nothing is grouped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(host) = &self.host {
            parts.push(format!("host [{host}]"));
        }
        if let Some(paths) = &self.paths {
            parts.push(format!("paths [{}]", paths.join(", ")));
        }
        if let Some(tags) = &self.tags {
            parts.push(format!("tags [{}]", tags.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("all snapshots")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The verdict for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// The snapshot's id.
    pub id: String,
    /// The snapshot's time.
    pub time: Timestamp,
    /// `true` to keep the snapshot, `false` to forget it.
    pub keep: bool,
    /// Why: for kept snapshots one entry per rule that keeps it, e.g.
    /// `daily snapshot #3 (2026-03-14)` or `has tag 'keep'`; for removed
    /// snapshots exactly [`REASON_REMOVED`].
    pub reasons: Vec<String>,
}

/// The verdicts for one group.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupDecision {
    /// Which group this is.
    pub key: GroupKey,
    /// One decision per snapshot of the group, newest first.
    pub decisions: Vec<Decision>,
}

impl GroupDecision {
    /// Decisions of the snapshots that are kept, newest first.
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep)
    }

    /// Decisions of the snapshots that are removed, newest first.
    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep)
    }
}

/// Decides, for every candidate, whether `policy` keeps it.
///
/// Candidates are grouped according to `group_by` and calendar periods are
/// computed in `tz`. The result has one [`GroupDecision`] per group, sorted
/// by [`GroupKey`], each listing its snapshots newest first. Every candidate
/// appears exactly once in the result. The result does not depend on the
/// order of `candidates`.
pub fn plan(
    policy: &Policy,
    group_by: GroupBy,
    candidates: &[Candidate],
    tz: &TimeZone,
) -> Vec<GroupDecision> {
    let mut groups: BTreeMap<GroupKey, Vec<&Candidate>> = BTreeMap::new();
    for candidate in candidates {
        groups
            .entry(GroupKey::of(candidate, group_by))
            .or_default()
            .push(candidate);
    }
    groups
        .into_iter()
        .map(|(key, mut members)| {
            members.sort_by(|a, b| newest_first(a, b));
            GroupDecision {
                key,
                decisions: decide_group(policy, &members, tz),
            }
        })
        .collect()
}

/// Total order: newest first, then by id, then by the remaining fields so
/// that even exact duplicates sort deterministically.
fn newest_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.time
        .cmp(&a.time)
        .then_with(|| a.id.cmp(&b.id))
        .then_with(|| a.host.cmp(&b.host))
        .then_with(|| a.paths.cmp(&b.paths))
        .then_with(|| a.tags.cmp(&b.tags))
}

/// The calendar periods bucket rules count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Period {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

/// Which period a snapshot falls into, for one rule. Compared for equality
/// with the previous snapshot's bucket and rendered into the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bucket {
    /// `keep_last`: the snapshot's position in the group.
    Index(usize),
    Hour(jiff::civil::Date, i8),
    Day(jiff::civil::Date),
    /// ISO week-based year and ISO week number.
    Week(i16, i8),
    Month(i16, i8),
    Year(i16),
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Last => "last",
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    fn bucket(self, local: &ZonedDateTime, index: usize) -> Bucket {
        match self {
            Period::Last => Bucket::Index(index),
            Period::Hourly => Bucket::Hour(local.date(), local.hour()),
            Period::Daily => Bucket::Day(local.date()),
            Period::Weekly => {
                let week = local.iso_week_date();
                Bucket::Week(week.year(), week.week())
            }
            Period::Monthly => Bucket::Month(local.year(), local.month()),
            Period::Yearly => Bucket::Year(local.year()),
        }
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bucket::Index(_) => Ok(()),
            Bucket::Hour(date, hour) => write!(f, "{date} {hour:02}h"),
            Bucket::Day(date) => write!(f, "{date}"),
            Bucket::Week(year, week) => write!(f, "{year:04}-W{week:02}"),
            Bucket::Month(year, month) => write!(f, "{year:04}-{month:02}"),
            Bucket::Year(year) => write!(f, "{year:04}"),
        }
    }
}

/// Running state of one bucket rule while walking a group.
struct RuleState {
    period: Period,
    remaining: u32,
    kept: u32,
    last: Option<Bucket>,
}

impl RuleState {
    /// Feeds the next (older) snapshot to the rule; returns the reason if the
    /// rule keeps it.
    fn offer(&mut self, local: &ZonedDateTime, index: usize) -> Option<String> {
        if self.remaining == 0 {
            return None;
        }
        let bucket = self.period.bucket(local, index);
        if self.last.as_ref() == Some(&bucket) {
            return None;
        }
        self.remaining -= 1;
        self.kept += 1;
        let reason = match bucket {
            Bucket::Index(_) => format!("{} snapshot #{}", self.period.name(), self.kept),
            _ => format!("{} snapshot #{} ({bucket})", self.period.name(), self.kept),
        };
        self.last = Some(bucket);
        Some(reason)
    }
}

/// Applies the policy to one group, `members` sorted newest first.
fn decide_group(policy: &Policy, members: &[&Candidate], tz: &TimeZone) -> Vec<Decision> {
    if policy.is_empty() {
        return members
            .iter()
            .map(|c| Decision {
                id: c.id.clone(),
                time: c.time,
                keep: true,
                reasons: vec![REASON_NO_POLICY.to_string()],
            })
            .collect();
    }

    let mut rules: Vec<RuleState> = policy
        .bucket_rules()
        .map(|(period, count)| RuleState {
            period,
            remaining: count,
            kept: 0,
            last: None,
        })
        .collect();

    // keep_within: everything at or after (newest - duration). A duration
    // reaching before the representable range keeps everything.
    let within = policy.within().and_then(|duration| {
        let newest = members.first()?.time;
        let cutoff = newest.checked_sub(duration).unwrap_or(Timestamp::MIN);
        Some((duration, cutoff))
    });

    let mut keep_tags: Vec<&String> = Vec::new();
    for tag in &policy.keep_tags {
        if !keep_tags.contains(&tag) {
            keep_tags.push(tag);
        }
    }

    members
        .iter()
        .enumerate()
        .map(|(index, candidate)| {
            let local = candidate.time.to_zoned_datetime(tz.clone());
            let mut reasons: Vec<String> = rules
                .iter_mut()
                .filter_map(|rule| rule.offer(&local, index))
                .collect();
            if let Some((duration, cutoff)) = within {
                if candidate.time >= cutoff {
                    reasons.push(format!(
                        "within {} of newest",
                        humantime::format_duration(duration)
                    ));
                }
            }
            for tag in &keep_tags {
                if candidate.tags.contains(tag) {
                    reasons.push(format!("has tag '{tag}'"));
                }
            }
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push(REASON_REMOVED.to_string());
            }
            Decision {
                id: candidate.id.clone(),
                time: candidate.time,
                keep,
                reasons,
            }
        })
        .collect()
}

/// Apply `policy` to `snapshots` (already listed and selected by the
/// caller): decide, and remove what no rule keeps (logged with its reason)
/// unless `dry_run`. The caller holds the exclusive lock. Returns the decisions.
pub fn forget(
    repo: &crate::repository::Repository,
    snapshots: &[(crate::repo::Id, crate::repo::Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    dry_run: bool,
) -> crate::error::Result<Vec<GroupDecision>> {
    let candidates: Vec<Candidate> = snapshots
        .iter()
        .map(|(id, s)| Candidate {
            id: id.to_hex(),
            time: s.time,
            host: s.host.clone(),
            tags: s.tags.clone(),
            paths: s.paths.clone(),
        })
        .collect();
    let groups = plan(policy, group_by, &candidates, &TimeZone::system());
    for d in groups.iter().flat_map(|g| g.removed()) {
        remove_snapshot(repo, &d.id, d.time, &d.reasons.join("; "), dry_run)?;
    }
    Ok(groups)
}

/// Remove one snapshot file (unless `dry_run`), logging why: every
/// removal of a snapshot goes through here.
pub fn remove_snapshot(
    repo: &crate::repository::Repository,
    id_hex: &str,
    time: Timestamp,
    reason: &str,
    dry_run: bool,
) -> crate::error::Result<()> {
    tracing::info!(snapshot = &id_hex[..8.min(id_hex.len())], %time, reason, dry_run, "forgetting snapshot");
    if dry_run {
        return Ok(());
    }
    repo.backend.remove(&crate::backend::FileRef::new(
        crate::repo::FileKind::Snapshot,
        id_hex,
    ))
}

#[cfg(test)]
mod tests {
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

    fn cand(id: &str, time: &str) -> Candidate {
        Candidate {
            id: id.to_string(),
            time: ts(time),
            host: "h".to_string(),
            tags: vec![],
            paths: vec!["/".to_string()],
        }
    }

    /// Candidates with unique ids, times within 2025..2027, a few hosts,
    /// path sets and tags. Half of the times fall on a 15-minute grid in one
    /// week (2026-02-05..12) so that snapshots often share hours, days and
    /// even exact times (which exercises the tie-break).
    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        let start = ts("2025-01-01T00:00:00Z").as_second();
        let one = (
            prop_oneof![
                // Anywhere in two years.
                0i64..(2 * 366 * 86_400),
                // Densely packed in a week, to share days, hours and times.
                (0i64..(7 * 96)).prop_map(|quarter| 400 * 86_400 + quarter * 900),
            ],
            0usize..2,
            0usize..3,
            proptest::collection::vec(0usize..3, 0..3),
        );
        proptest::collection::vec(one, 0..60).prop_map(move |items| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, (offset, host, paths, tags))| Candidate {
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

    fn count() -> impl Strategy<Value = Option<u32>> {
        prop_oneof![Just(None), (0u32..8).prop_map(Some)]
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            (count(), count(), count(), count(), count(), count()),
            proptest::option::of((0u64..40 * 86_400).prop_map(Duration::from_secs)),
            proptest::collection::vec(
                prop_oneof![Just("keep".to_string()), Just("nope".to_string())],
                0..2,
            ),
        )
            .prop_map(
                |((last, hourly, daily, weekly, monthly, yearly), within, tags)| Policy {
                    keep_last: last,
                    keep_hourly: hourly,
                    keep_daily: daily,
                    keep_weekly: weekly,
                    keep_monthly: monthly,
                    keep_yearly: yearly,
                    keep_within: within,
                    keep_tags: tags,
                },
            )
    }

    fn tz() -> impl Strategy<Value = TimeZone> {
        proptest::sample::select(ZONES.to_vec()).prop_map(zone)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// (a) Any bucket rule keeps the newest snapshot of every group.
        #[test]
        fn newest_of_each_group_is_kept(
            cands in candidates(), policy in policy(), gb in group_by(), tz in tz(),
        ) {
            prop_assume!(policy.bucket_rules().next().is_some());
            for group in plan(&policy, gb, &cands, &tz) {
                let newest = &group.decisions[0];
                prop_assert!(newest.keep, "group {} newest {:?}", group.key, newest);
                for d in &group.decisions[1..] {
                    prop_assert!(d.time <= newest.time);
                }
            }
        }

        /// (b) keep_daily = N alone keeps min(N, distinct local days) per group.
        #[test]
        fn keep_daily_keeps_one_per_distinct_day(
            cands in candidates(), n in 1u32..10, gb in group_by(), tz in tz(),
        ) {
            let policy = Policy { keep_daily: Some(n), ..Policy::default() };
            for group in plan(&policy, gb, &cands, &tz) {
                let days: BTreeSet<jiff::civil::Date> = group
                    .decisions
                    .iter()
                    .map(|d| d.time.to_zoned_datetime(tz.clone()).date())
                    .collect();
                let kept: Vec<&Decision> = group.kept().collect();
                prop_assert_eq!(kept.len(), days.len().min(n as usize));
                // ...and never two kept snapshots on the same day.
                let kept_days: BTreeSet<jiff::civil::Date> = kept
                    .iter()
                    .map(|d| d.time.to_zoned_datetime(tz.clone()).date())
                    .collect();
                prop_assert_eq!(kept_days.len(), kept.len());
            }
        }

        /// (c) Every input snapshot is decided exactly once.
        #[test]
        fn kept_and_removed_partition_the_input(
            cands in candidates(), policy in policy(), gb in group_by(), tz in tz(),
        ) {
            let groups = plan(&policy, gb, &cands, &tz);
            let mut seen: Vec<String> = groups
                .iter()
                .flat_map(|g| g.decisions.iter().map(|d| d.id.clone()))
                .collect();
            seen.sort();
            let mut input: Vec<String> = cands.iter().map(|c| c.id.clone()).collect();
            input.sort();
            prop_assert_eq!(&seen, &input);
            let mut deduped = seen.clone();
            deduped.dedup();
            prop_assert_eq!(deduped.len(), seen.len());
            for g in &groups {
                for d in &g.decisions {
                    prop_assert!(!d.reasons.is_empty());
                    prop_assert_eq!(d.keep, d.reasons != [REASON_REMOVED.to_string()]);
                }
            }
            // Groups are sorted by key and keys are unique.
            for pair in groups.windows(2) {
                prop_assert!(pair[0].key < pair[1].key);
            }
        }

        /// (d) keep_last = N alone keeps exactly min(N, len) per group: the N newest.
        #[test]
        fn keep_last_keeps_exactly_n(
            cands in candidates(), n in 1u32..10, gb in group_by(), tz in tz(),
        ) {
            let policy = Policy { keep_last: Some(n), ..Policy::default() };
            for group in plan(&policy, gb, &cands, &tz) {
                let expected = group.decisions.len().min(n as usize);
                prop_assert_eq!(group.kept().count(), expected);
                prop_assert!(group.decisions[..expected].iter().all(|d| d.keep));
            }
        }

        /// (e) The plan does not depend on the order of the input.
        #[test]
        fn result_is_independent_of_input_order(
            (cands, shuffled) in candidates().prop_flat_map(|c| {
                let s = Just(c.clone()).prop_shuffle();
                (Just(c), s)
            }),
            policy in policy(), gb in group_by(), tz in tz(),
        ) {
            let a = plan(&policy, gb, &cands, &tz);
            let b = plan(&policy, gb, &shuffled, &tz);
            prop_assert_eq!(
                serde_json::to_string(&a).expect("serialize"),
                serde_json::to_string(&b).expect("serialize")
            );
        }

        /// Grouping only splits: the number of snapshots per key matches.
        #[test]
        fn groups_match_keys(cands in candidates(), gb in group_by(), tz in tz()) {
            let policy = Policy { keep_last: Some(1), ..Policy::default() };
            let mut expected: HashMap<GroupKey, usize> = HashMap::new();
            for c in &cands {
                *expected.entry(GroupKey::of(c, gb)).or_default() += 1;
            }
            let groups = plan(&policy, gb, &cands, &tz);
            prop_assert_eq!(groups.len(), expected.len());
            for g in &groups {
                prop_assert_eq!(Some(&g.decisions.len()), expected.get(&g.key));
            }
        }
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let policy = Policy::default();
        assert!(policy.is_empty());
        let zero = Policy {
            keep_last: Some(0),
            keep_within: Some(Duration::ZERO),
            ..Policy::default()
        };
        assert!(zero.is_empty());
        let cands = [
            cand("a", "2026-01-01T00:00:00Z"),
            cand("b", "2026-01-02T00:00:00Z"),
        ];
        let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC);
        assert_eq!(groups.len(), 1);
        for d in &groups[0].decisions {
            assert!(d.keep);
            assert_eq!(d.reasons, vec![REASON_NO_POLICY.to_string()]);
        }
        assert!(plan(&policy, GroupBy::default(), &[], &TimeZone::UTC).is_empty());
    }

    #[test]
    fn non_empty_policies() {
        for p in [
            Policy {
                keep_last: Some(1),
                ..Policy::default()
            },
            Policy {
                keep_yearly: Some(1),
                ..Policy::default()
            },
            Policy {
                keep_within: Some(Duration::from_secs(1)),
                ..Policy::default()
            },
            Policy {
                keep_tags: vec!["x".into()],
                ..Policy::default()
            },
        ] {
            assert!(!p.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn reasons_name_the_period() {
        let cands = [
            cand("a", "2026-03-14T13:20:00Z"),
            cand("b", "2026-03-14T13:10:00Z"),
            cand("c", "2026-03-13T09:00:00Z"),
        ];
        let policy = Policy {
            keep_last: Some(1),
            keep_hourly: Some(2),
            keep_daily: Some(2),
            keep_weekly: Some(1),
            keep_monthly: Some(1),
            keep_yearly: Some(1),
            keep_within: Some(Duration::from_secs(3600)),
            keep_tags: vec![],
        };
        let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC);
        let d = &groups[0].decisions;
        assert_eq!(
            d[0].reasons,
            [
                "last snapshot #1",
                "hourly snapshot #1 (2026-03-14 13h)",
                "daily snapshot #1 (2026-03-14)",
                "weekly snapshot #1 (2026-W11)",
                "monthly snapshot #1 (2026-03)",
                "yearly snapshot #1 (2026)",
                "within 1h of newest",
            ]
        );
        assert_eq!(d[1].reasons, ["within 1h of newest"]);
        assert_eq!(
            d[2].reasons,
            [
                "hourly snapshot #2 (2026-03-13 09h)",
                "daily snapshot #2 (2026-03-13)"
            ]
        );
    }

    #[test]
    fn iso_week_spans_new_year() {
        // 2026-12-31 (Thu) and 2027-01-01 (Fri) are both in 2026-W53.
        let cands = [
            cand("new", "2027-01-01T10:00:00Z"),
            cand("old", "2026-12-31T10:00:00Z"),
        ];
        let policy = Policy {
            keep_weekly: Some(2),
            ..Policy::default()
        };
        let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC);
        let d = &groups[0].decisions;
        assert_eq!(d[0].reasons, ["weekly snapshot #1 (2026-W53)"]);
        assert!(!d[1].keep);
    }

    #[test]
    fn keep_within_is_inclusive_and_relative_to_newest() {
        let cands = [
            cand("newest", "2020-01-11T00:00:00Z"),
            cand("edge", "2020-01-01T00:00:00Z"),
            cand("out", "2019-12-31T23:59:59Z"),
        ];
        let policy = Policy {
            keep_within: Some(Duration::from_secs(10 * 86_400)),
            ..Policy::default()
        };
        let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC);
        let keep: Vec<bool> = groups[0].decisions.iter().map(|d| d.keep).collect();
        assert_eq!(keep, [true, true, false]);
        assert_eq!(groups[0].decisions[0].reasons, ["within 10days of newest"]);
    }

    #[test]
    fn huge_keep_within_keeps_everything() {
        let cands = [
            cand("a", "2026-01-01T00:00:00Z"),
            cand("b", "1970-01-01T00:00:00Z"),
        ];
        let policy = Policy {
            keep_within: Some(Duration::from_secs(u64::MAX)),
            ..Policy::default()
        };
        let groups = plan(&policy, GroupBy::default(), &cands, &TimeZone::UTC);
        assert!(groups[0].decisions.iter().all(|d| d.keep));
    }

    #[test]
    fn keep_tags_lists_each_matching_tag_once() {
        let mut a = cand("a", "2026-01-02T00:00:00Z");
        a.tags = vec!["keep".into(), "manual".into()];
        let b = cand("b", "2026-01-01T00:00:00Z");
        let policy = Policy {
            keep_tags: vec!["manual".into(), "keep".into(), "manual".into()],
            ..Policy::default()
        };
        let groups = plan(&policy, GroupBy::default(), &[a, b], &TimeZone::UTC);
        let d = &groups[0].decisions;
        assert_eq!(d[0].reasons, ["has tag 'manual'", "has tag 'keep'"]);
        assert_eq!(d[1].reasons, [REASON_REMOVED]);
        assert!(!d[1].keep);
    }

    #[test]
    fn group_by_parsing_and_display() {
        let gb: GroupBy = "host,paths".parse().expect("valid");
        assert_eq!(
            gb,
            GroupBy {
                host: true,
                paths: true,
                tags: false
            }
        );
        assert_eq!(gb.to_string(), "host,paths");
        assert_eq!("".parse::<GroupBy>(), Ok(GroupBy::default()));
        assert_eq!(
            " tag , host ".parse::<GroupBy>().map(|g| g.to_string()),
            Ok("host,tags".into())
        );
        let err = "host,nope".parse::<GroupBy>().expect_err("unknown word");
        assert!(err.contains("'nope'"), "{err}");
        assert!(err.contains("host, paths, tags"), "{err}");
    }

    #[test]
    fn group_key_display_and_normalisation() {
        let mut c = cand("a", "2026-01-01T00:00:00Z");
        c.paths = vec!["/var".into(), "/etc".into(), "/var".into()];
        c.tags = vec!["b".into(), "a".into()];
        let all = GroupBy {
            host: true,
            paths: true,
            tags: true,
        };
        let key = GroupKey::of(&c, all);
        assert_eq!(
            key.paths,
            Some(vec!["/etc".to_string(), "/var".to_string()])
        );
        assert_eq!(key.to_string(), "host [h], paths [/etc, /var], tags [a, b]");
        assert_eq!(
            GroupKey::of(&c, GroupBy::default()).to_string(),
            "all snapshots"
        );
    }
}
