//! Applying a policy to groups of snapshots: which are kept, by which rule
//! and counter, and why the others go (`spec/retention.md`, "Rules").

use std::collections::BTreeMap;
use std::fmt;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

use super::duration::CalendarDuration;
use super::group::{Candidate, GroupBy, GroupKey};
use super::policy::{Count, Period, Policy, TagGroup};

/// The single reason given for every snapshot when the policy is empty.
pub const REASON_NO_POLICY: &str = "no policy";

/// One rule that keeps a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Match {
    /// `last`, `hourly` … `yearly`, `within`, `within-hourly` …
    /// `within-yearly`, or `tags`.
    pub rule: String,
    /// Count rules: this is the rule's n-th kept snapshot, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter: Option<u32>,
    /// Count rules: the count, a number or `"unlimited"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of: Option<Count>,
    /// Period rules: the period, e.g. `2026-03-14`, `2026-W11`, `2026-03`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// `within` rules: the duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<CalendarDuration>,
    /// `tags`: the group the snapshot has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagGroup>,
    /// Kept as the group's oldest snapshot, in a period already kept,
    /// because the rule was not used up (restic ≥ 0.17).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oldest: bool,
}

impl fmt::Display for Match {
    /// `daily 3/7 (2026-03-14)`, `oldest yearly 3/5 (2024)`, `last 1/3`,
    /// `within 1m of newest`, `daily within 7d (2026-04-29)`, `has tags a,b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.oldest {
            f.write_str("oldest ")?;
        }
        match (&self.tags, self.within, self.counter) {
            (Some(g), _, _) if g.0.is_empty() => f.write_str("has no tags")?,
            (Some(g), _, _) => write!(f, "has tags {g}")?,
            (None, Some(d), _) if self.period.is_none() => write!(f, "within {d} of newest")?,
            (None, Some(d), _) => {
                let period = self.rule.trim_start_matches("within-");
                write!(f, "{period} within {d}")?
            }
            (None, None, Some(n)) => match self.of {
                Some(of) => write!(f, "{} {n}/{of}", self.rule)?,
                None => write!(f, "{} {n}", self.rule)?,
            },
            (None, None, None) => f.write_str(&self.rule)?,
        }
        if let Some(p) = &self.period {
            write!(f, " ({p})")?;
        }
        Ok(())
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
    /// What its failed restore test found, when it is marked corrupted
    /// (then it is kept, and no rule counts it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupted: Option<String>,
    /// Why, for people: a kept snapshot has one entry per rule that keeps
    /// it (`daily 3/7 (2026-03-14)`), or the corrupted note, or
    /// [`REASON_NO_POLICY`]; a removed one has one entry per rule saying
    /// why that rule did not keep it (`weekly 4/4 used`).
    pub reasons: Vec<String>,
    /// The rules that keep it; empty when it is removed, corrupted, or the
    /// policy is empty.
    pub matches: Vec<Match>,
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

    /// `true` when the group has snapshots that are not corrupted and the
    /// rules keep none of them: `forget` refuses that, like restic.
    pub fn keeps_no_good_snapshot(&self) -> bool {
        let mut good = self.decisions.iter().filter(|d| d.corrupted.is_none());
        good.clone().next().is_some() && !good.any(|d| d.keep)
    }
}

/// Decides, for every candidate, whether `policy` keeps it.
///
/// Candidates are grouped according to `group_by` and calendar periods are
/// computed in `tz`; `now` only matters to the `keep-within*` rules, which
/// measure from the newest snapshot not after `now`. The result has one
/// [`GroupDecision`] per group, sorted by [`GroupKey`], each listing its
/// snapshots newest first. Every candidate appears exactly once in the
/// result, which does not depend on the order of `candidates`.
pub fn plan(
    policy: &Policy,
    group_by: GroupBy,
    candidates: &[Candidate],
    tz: &TimeZone,
    now: Timestamp,
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
                decisions: decide_group(policy, &members, tz, now),
            }
        })
        .collect()
}

/// Total order: newest first, then by id, then by the remaining fields so
/// that even exact duplicates sort deterministically.
pub(super) fn newest_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.time
        .cmp(&a.time)
        .then_with(|| a.id.cmp(&b.id))
        .then_with(|| a.host.cmp(&b.host))
        .then_with(|| a.paths.cmp(&b.paths))
        .then_with(|| a.tags.cmp(&b.tags))
        .then_with(|| a.corrupted.cmp(&b.corrupted))
        .then_with(|| a.incomplete.cmp(&b.incomplete))
}

/// Which period a snapshot falls into, for one rule.
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

fn bucket(period: Period, local: &ZonedDateTime, index: usize) -> Bucket {
    match period {
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

/// For each of `good` (newest first), whether it stands for its period of
/// `period` among those `eligible` (for `keep-within-<period>`: after the
/// cutoff): the period's newest complete eligible snapshot, or its newest
/// eligible one when none is complete. A period's snapshots are next to
/// each other in `good` (local time never goes back to an earlier period).
fn representatives(
    period: Period,
    good: &[&Candidate],
    locals: &[ZonedDateTime],
    eligible: impl Fn(&Candidate) -> bool,
) -> Vec<bool> {
    let buckets: Vec<Bucket> = locals
        .iter()
        .enumerate()
        .map(|(i, l)| bucket(period, l, i))
        .collect();
    let mut out = vec![false; good.len()];
    let mut start = 0;
    while start < good.len() {
        let end = (start..good.len())
            .find(|&i| buckets[i] != buckets[start])
            .unwrap_or(good.len());
        let mut candidates = (start..end).filter(|&i| eligible(good[i]));
        let first = candidates.clone().next();
        if let Some(pick) = candidates.find(|&i| !good[i].incomplete).or(first) {
            out[pick] = true;
        }
        start = end;
    }
    out
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

/// A count rule while walking a group from newest to oldest.
struct CountRule {
    period: Period,
    count: Count,
    /// `None` when unlimited.
    remaining: Option<u32>,
    kept: u32,
    last: Option<Bucket>,
}

impl CountRule {
    /// The next (older) snapshot: kept when the rule has a count left and
    /// the snapshot opens a period — or is the group's oldest.
    /// A period is opened by its representative only (its newest complete
    /// snapshot, else its newest: [`representatives`]).
    fn offer(
        &mut self,
        local: &ZonedDateTime,
        index: usize,
        oldest: bool,
        representative: bool,
    ) -> Result<Match, String> {
        let name = self.period.name();
        if self.remaining == Some(0) {
            return Err(format!("{name} {0}/{0} used", self.count));
        }
        let bucket = bucket(self.period, local, index);
        let same = self.last.as_ref() == Some(&bucket);
        if same && !oldest {
            return Err(format!("{name}: {bucket} already kept"));
        }
        if !same && !representative {
            return Err(format!("{name}: {bucket} keeps a complete snapshot"));
        }
        self.kept += 1;
        if let Some(r) = &mut self.remaining {
            *r -= 1;
        }
        let period = (self.period != Period::Last).then(|| bucket.to_string());
        self.last = Some(bucket);
        Ok(Match {
            rule: name.to_string(),
            counter: Some(self.kept),
            of: Some(self.count),
            period,
            within: None,
            tags: None,
            oldest: same,
        })
    }
}

/// A `keep-within-<period>` rule while walking a group.
struct WithinRule {
    period: Period,
    within: CalendarDuration,
    cutoff: Timestamp,
    last: Option<Bucket>,
}

impl WithinRule {
    fn offer(
        &mut self,
        time: Timestamp,
        local: &ZonedDateTime,
        oldest: bool,
        representative: bool,
        tz: &TimeZone,
    ) -> Result<Match, String> {
        let name = self.period.name();
        if time <= self.cutoff {
            return Err(format!(
                "{name} within {}: not after {}",
                self.within,
                local_time(self.cutoff, tz)
            ));
        }
        let bucket = bucket(self.period, local, 0);
        let same = self.last.as_ref() == Some(&bucket);
        if same && !oldest {
            return Err(format!(
                "{name} within {}: {bucket} already kept",
                self.within
            ));
        }
        if !same && !representative {
            return Err(format!(
                "{name} within {}: {bucket} keeps a complete snapshot",
                self.within
            ));
        }
        let period = Some(bucket.to_string());
        self.last = Some(bucket);
        Ok(Match {
            rule: format!("within-{name}"),
            counter: None,
            of: None,
            period,
            within: Some(self.within),
            tags: None,
            oldest: same,
        })
    }
}

fn local_time(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Applies the policy to one group, `members` sorted newest first:
/// corrupted snapshots are set aside and kept, the rest is decided by
/// [`evaluate`].
fn decide_group(
    policy: &Policy,
    members: &[&Candidate],
    tz: &TimeZone,
    now: Timestamp,
) -> Vec<Decision> {
    let no_policy = policy.is_empty();
    let good: Vec<&Candidate> = members
        .iter()
        .copied()
        .filter(|c| c.corrupted.is_none() && !no_policy)
        .collect();
    let mut verdicts = evaluate(policy, &good, tz, now).into_iter();
    members
        .iter()
        .map(|c| match (&c.corrupted, no_policy) {
            (_, true) => Decision {
                id: c.id.clone(),
                time: c.time,
                keep: true,
                corrupted: c.corrupted.clone(),
                reasons: vec![REASON_NO_POLICY.to_string()],
                matches: Vec::new(),
            },
            (Some(detail), false) => Decision {
                id: c.id.clone(),
                time: c.time,
                keep: true,
                corrupted: Some(detail.clone()),
                reasons: vec![format!(
                    "corrupted (its restore test failed: {detail}): kept, and no rule counts it"
                )],
                matches: Vec::new(),
            },
            (None, false) => verdicts.next().expect("one verdict per good snapshot"),
        })
        .collect()
}

/// The rules over the group's good snapshots, newest first.
fn evaluate(policy: &Policy, good: &[&Candidate], tz: &TimeZone, now: Timestamp) -> Vec<Decision> {
    // The newest snapshot not in the future; with none, durations reach
    // back without limit (restic).
    let reference = good.iter().map(|c| c.time).filter(|t| *t <= now).max();
    let cutoff = |d: CalendarDuration| {
        reference
            .and_then(|r| d.before(r, tz))
            .unwrap_or(Timestamp::MIN)
    };
    let mut counts: Vec<CountRule> = policy
        .bucket_rules()
        .map(|(period, count)| CountRule {
            period,
            count,
            remaining: count.limit(),
            kept: 0,
            last: None,
        })
        .collect();
    let within = policy.within().map(|d| (d, cutoff(d)));
    let mut withins: Vec<WithinRule> = policy
        .within_rules()
        .map(|(period, d)| WithinRule {
            period,
            within: d,
            cutoff: cutoff(d),
            last: None,
        })
        .collect();
    let mut tag_groups: Vec<&TagGroup> = Vec::new();
    for g in &policy.keep_tags {
        if !tag_groups.contains(&g) {
            tag_groups.push(g);
        }
    }

    let locals: Vec<ZonedDateTime> = good
        .iter()
        .map(|c| c.time.to_zoned_datetime(tz.clone()))
        .collect();
    let count_reps: Vec<Vec<bool>> = counts
        .iter()
        .map(|r| representatives(r.period, good, &locals, |_| true))
        .collect();
    let within_reps: Vec<Vec<bool>> = withins
        .iter()
        .map(|r| representatives(r.period, good, &locals, |c| c.time > r.cutoff))
        .collect();
    let oldest_index = good.len().saturating_sub(1);
    good.iter()
        .enumerate()
        .map(|(index, c)| {
            let local = &locals[index];
            let oldest = index == oldest_index;
            let mut matches = Vec::new();
            let mut why_not = Vec::new();
            let mut sort = |r: Result<Match, String>| match r {
                Ok(m) => matches.push(m),
                Err(e) => why_not.push(e),
            };
            for (rule, reps) in counts.iter_mut().zip(&count_reps) {
                sort(rule.offer(local, index, oldest, reps[index]));
            }
            if let Some((d, cut)) = within {
                sort(if c.time > cut {
                    Ok(Match {
                        rule: "within".into(),
                        counter: None,
                        of: None,
                        period: None,
                        within: Some(d),
                        tags: None,
                        oldest: false,
                    })
                } else {
                    Err(format!("within {d}: not after {}", local_time(cut, tz)))
                });
            }
            for (rule, reps) in withins.iter_mut().zip(&within_reps) {
                sort(rule.offer(c.time, local, oldest, reps[index], tz));
            }
            let mut any_tag = false;
            for g in &tag_groups {
                if g.matches(&c.tags) {
                    any_tag = true;
                    sort(Ok(Match {
                        rule: "tags".into(),
                        counter: None,
                        of: None,
                        period: None,
                        within: None,
                        tags: Some((*g).clone()),
                        oldest: false,
                    }));
                }
            }
            if !tag_groups.is_empty() && !any_tag {
                sort(Err("no tag group matches".into()));
            }
            let keep = !matches.is_empty();
            Decision {
                id: c.id.clone(),
                time: c.time,
                keep,
                corrupted: None,
                reasons: if keep {
                    matches.iter().map(Match::to_string).collect()
                } else {
                    why_not
                },
                matches,
            }
        })
        .collect()
}
