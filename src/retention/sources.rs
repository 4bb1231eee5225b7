//! A plan's retention, decided per source (`spec/retention.md`, "Snapshots
//! with failed or incomplete sources").
//!
//! One run of a plan makes one snapshot holding every source, each with its
//! own status. Deciding over whole snapshots would let one source that
//! fails every night stop retention for all of them; so the rules run once
//! per source name, over the snapshots that stored that source, and a
//! snapshot is kept when any source's rules keep it.

use std::collections::BTreeSet;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::decide::{newest_first, plan, Decision, Match};
use super::group::{Candidate, GroupBy};
use super::policy::Policy;
use crate::repo::SourceStatus;

/// The rule name of the keep that no policy can take away: the newest
/// complete copy of a source.
pub const NEWEST_COMPLETE: &str = "newest-complete";

/// The reason given for it, followed by ` of SOURCE` in a snapshot's reasons.
pub const NEWEST_COMPLETE_REASON: &str = "newest complete copy";

/// A snapshot of a plan as per-source retention sees it.
#[derive(Clone, Debug)]
pub struct PlanSnapshot {
    /// The snapshot; its `incomplete` is not looked at (it is set per source).
    pub candidate: Candidate,
    /// Each source the snapshot records, with its status.
    pub sources: Vec<(String, SourceStatus)>,
}

/// One source's verdict on a snapshot that stored it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceVerdict {
    pub source: String,
    /// `complete` or `incomplete` (a `failed` source stored nothing and is
    /// not weighed).
    pub status: SourceStatus,
    pub keep: bool,
    /// As in [`Decision::reasons`], for this source.
    pub reasons: Vec<String>,
    pub matches: Vec<Match>,
}

/// The verdict on one snapshot of the plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub id: String,
    pub time: Timestamp,
    pub keep: bool,
    /// What its failed restore test found, when it is marked corrupted
    /// (then it is kept, and no rule counts it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupted: Option<String>,
    /// Why, naming the source: a kept snapshot lists every source's rule
    /// that keeps it (`daily 3/7 (2026-03-14) for db`, `newest complete
    /// copy of db`) or the corrupted note; a removed one lists, per source,
    /// why each rule did not keep it (`daily 7/7 used for db`).
    pub reasons: Vec<String>,
    /// The sources it stored, each with its own verdict.
    pub sources: Vec<SourceVerdict>,
}

/// The decision over a plan's snapshots.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanDecision {
    /// One verdict per snapshot, newest first (equal times by id).
    pub snapshots: Vec<Verdict>,
    /// Sources with good copies of which the rules keep none: applying the
    /// decision is refused, as `forget` refuses such a group.
    pub keeps_nothing: Vec<String>,
}

impl PlanDecision {
    /// The snapshots that go.
    pub fn removed(&self) -> impl Iterator<Item = &Verdict> {
        self.snapshots.iter().filter(|v| !v.keep)
    }
}

/// Decide, per source, which of a plan's snapshots `policy` keeps.
///
/// For each source name, the candidates are the snapshots whose record of
/// it is `complete` or `incomplete`; the rules run over them as over one
/// group (within a period a complete copy stands for it), and the newest
/// good complete copy is kept even when no rule keeps it. A snapshot is
/// kept when it is corrupted or any source keeps it.
pub fn plan_by_source(
    policy: &Policy,
    snapshots: &[PlanSnapshot],
    tz: &TimeZone,
    now: Timestamp,
) -> PlanDecision {
    let stored = |s: &PlanSnapshot, name: &str| {
        s.sources
            .iter()
            .find(|(n, st)| n == name && *st != SourceStatus::Failed)
            .map(|(_, st)| *st)
    };
    let names: BTreeSet<&str> = snapshots
        .iter()
        .flat_map(|s| s.sources.iter())
        .filter(|(_, st)| *st != SourceStatus::Failed)
        .map(|(n, _)| n.as_str())
        .collect();
    let mut per_source: Vec<(&str, Vec<Decision>)> = Vec::new();
    let mut keeps_nothing = Vec::new();
    for name in names {
        let candidates: Vec<Candidate> = snapshots
            .iter()
            .filter_map(|s| {
                stored(s, name).map(|st| Candidate {
                    incomplete: st != SourceStatus::Complete,
                    ..s.candidate.clone()
                })
            })
            .collect();
        let Some(group) = plan(policy, GroupBy::default(), &candidates, tz, now).pop() else {
            continue;
        };
        let mut decisions = group.decisions;
        let complete = |d: &Decision| candidates.iter().any(|c| c.id == d.id && !c.incomplete);
        if let Some(newest) = decisions
            .iter()
            .position(|d| d.corrupted.is_none() && complete(d))
        {
            let d = &mut decisions[newest];
            if !d.keep && !policy.is_empty() {
                d.keep = true;
                d.reasons = vec![NEWEST_COMPLETE_REASON.to_string()];
                d.matches = vec![Match {
                    rule: NEWEST_COMPLETE.to_string(),
                    counter: None,
                    of: None,
                    period: None,
                    within: None,
                    tags: None,
                    oldest: false,
                }];
            }
        }
        let mut good = decisions.iter().filter(|d| d.corrupted.is_none());
        if good.clone().next().is_some() && !good.any(|d| d.keep) {
            keeps_nothing.push(name.to_string());
        }
        per_source.push((name, decisions));
    }

    let mut order: Vec<&PlanSnapshot> = snapshots.iter().collect();
    order.sort_by(|a, b| newest_first(&a.candidate, &b.candidate));
    let verdicts = order
        .into_iter()
        .map(|s| {
            let c = &s.candidate;
            let sources: Vec<SourceVerdict> = per_source
                .iter()
                .filter_map(|(name, decisions)| {
                    let d = decisions.iter().find(|d| d.id == c.id)?;
                    Some(SourceVerdict {
                        source: name.to_string(),
                        status: stored(s, name)?,
                        keep: d.keep,
                        reasons: d.reasons.clone(),
                        matches: d.matches.clone(),
                    })
                })
                .collect();
            let keep = c.corrupted.is_some() || sources.iter().any(|v| v.keep);
            let reasons = match &c.corrupted {
                Some(detail) => vec![format!(
                    "corrupted (its restore test failed: {detail}): kept, and no rule counts it"
                )],
                None if sources.is_empty() => vec!["it stores no source".to_string()],
                None => sources
                    .iter()
                    .filter(|v| v.keep == keep)
                    .flat_map(|v| v.reasons.iter().map(|r| naming(r, &v.source)))
                    .collect(),
            };
            Verdict {
                id: c.id.clone(),
                time: c.time,
                keep,
                corrupted: c.corrupted.clone(),
                reasons,
                sources,
            }
        })
        .collect();
    PlanDecision {
        snapshots: verdicts,
        keeps_nothing,
    }
}

/// A source's reason in a snapshot's list: `daily 3/7 for db`,
/// `newest complete copy of db`.
fn naming(reason: &str, source: &str) -> String {
    if reason == NEWEST_COMPLETE_REASON {
        format!("{reason} of {source}")
    } else {
        format!("{reason} for {source}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::Count;

    fn snap(id: &str, time: &str, sources: &[(&str, SourceStatus)]) -> PlanSnapshot {
        PlanSnapshot {
            candidate: Candidate {
                id: id.into(),
                time: time.parse().expect("valid"),
                host: "h".into(),
                tags: vec![],
                paths: vec![],
                corrupted: None,
                incomplete: false,
            },
            sources: sources.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        }
    }

    fn daily(n: u32) -> Policy {
        Policy {
            keep_daily: Some(Count::Limit(n)),
            ..Policy::default()
        }
    }

    fn decide(policy: &Policy, snaps: &[PlanSnapshot]) -> PlanDecision {
        plan_by_source(
            policy,
            snaps,
            &TimeZone::UTC,
            "2100-01-01T00:00:00Z".parse().expect("valid"),
        )
    }

    fn kept(d: &PlanDecision) -> Vec<&str> {
        d.snapshots
            .iter()
            .filter(|v| v.keep)
            .map(|v| v.id.as_str())
            .collect()
    }

    use SourceStatus::{Complete as C, Failed as F, Incomplete as I};

    /// A source that fails every day after day 3 keeps its last copies; the
    /// working one is decided as if the failing one were not there.
    #[test]
    fn a_failing_source_changes_nothing_for_the_others() {
        let snaps: Vec<PlanSnapshot> = (1..=10)
            .map(|day| {
                let broken = if day <= 3 { C } else { F };
                snap(
                    &format!("d{day:02}"),
                    &format!("2026-03-{day:02}T02:00:00Z"),
                    &[("etc", C), ("broken", broken)],
                )
            })
            .collect();
        let d = decide(&daily(3), &snaps);
        assert_eq!(kept(&d), ["d10", "d09", "d08", "d03", "d02", "d01"]);
        assert!(d.keeps_nothing.is_empty());
        let d10 = &d.snapshots[0];
        assert_eq!(d10.reasons, ["daily 1/3 (2026-03-10) for etc"], "{d10:#?}");
        let d05 = d.snapshots.iter().find(|v| v.id == "d05").expect("d05");
        assert!(!d05.keep);
        assert_eq!(d05.reasons, ["daily 3/3 used for etc"]);
        assert_eq!(d05.sources.len(), 1, "a failed source is not weighed");
        let d03 = d.snapshots.iter().find(|v| v.id == "d03").expect("d03");
        assert_eq!(d03.reasons, ["daily 1/3 (2026-03-03) for broken"]);
    }

    /// A source incomplete every day keeps its copies under the normal
    /// rules, and its newest complete copy however old.
    #[test]
    fn an_incomplete_source_keeps_its_best_copies() {
        let mut snaps: Vec<PlanSnapshot> = (1..=10)
            .map(|day| {
                let st = if day == 2 { C } else { I };
                snap(
                    &format!("d{day:02}"),
                    &format!("2026-03-{day:02}T02:00:00Z"),
                    &[("files", st)],
                )
            })
            .collect();
        // Day 10 also has a later incomplete run: the earlier, complete one
        // stands for the day.
        snaps.push(snap("d10b", "2026-03-10T20:00:00Z", &[("files", I)]));
        snaps[9].sources[0].1 = C;
        let d = decide(&daily(3), &snaps);
        assert_eq!(kept(&d), ["d10", "d09", "d08"]);
        let late = &d.snapshots[0];
        assert_eq!(late.id, "d10b");
        assert_eq!(
            late.reasons,
            ["daily: 2026-03-10 keeps a complete snapshot for files"]
        );
        // Without the complete copy on day 10, day 2's is kept for ever.
        snaps[9].sources[0].1 = I;
        let d = decide(&daily(3), &snaps);
        assert_eq!(kept(&d), ["d10b", "d09", "d08", "d02"]);
        let d02 = d.snapshots.iter().find(|v| v.id == "d02").expect("d02");
        assert_eq!(d02.reasons, ["newest complete copy of files"]);
        assert_eq!(d02.sources[0].matches[0].rule, NEWEST_COMPLETE);
    }

    /// Corrupted snapshots are kept and counted by no source; the newest
    /// good complete copy is kept instead.
    #[test]
    fn corrupted_snapshots_are_kept_and_not_counted() {
        let mut snaps = vec![
            snap("new", "2026-03-02T02:00:00Z", &[("a", C)]),
            snap("old", "2026-03-01T02:00:00Z", &[("a", C)]),
        ];
        snaps[0].candidate.corrupted = Some("bad".into());
        let d = decide(
            &Policy {
                keep_last: Some(Count::Limit(1)),
                ..Policy::default()
            },
            &snaps,
        );
        assert_eq!(kept(&d), ["new", "old"]);
        assert!(d.snapshots[0].reasons[0].starts_with("corrupted"));
        assert_eq!(d.snapshots[1].reasons, ["last 1/1 for a"]);
    }

    /// Rules that keep no copy of a source (here: a tag nothing has, over
    /// incomplete copies only) are flagged, not applied.
    #[test]
    fn a_source_with_nothing_kept_is_flagged() {
        let snaps = vec![snap("x", "2026-03-01T02:00:00Z", &[("a", I)])];
        let policy = Policy {
            keep_tags: vec![crate::retention::TagGroup(vec!["t".into()])],
            ..Policy::default()
        };
        assert_eq!(decide(&policy, &snaps).keeps_nothing, ["a"]);
    }
}
