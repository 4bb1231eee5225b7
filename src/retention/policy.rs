//! What to keep: the rules of a retention policy and how each is written
//! on the command line and in a plan (`spec/retention.md`).

use std::fmt;

use super::duration::{CalendarDuration, ParseError};

/// How many periods a bucket rule keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Count {
    /// The newest `n` periods (at least 1).
    Limit(u32),
    /// Every period (`unlimited`, or `-1`).
    Unlimited,
}

/// The hint every refused count gets.
pub const COUNT_HINT: &str =
    "give a whole number of periods, e.g. 7, or `unlimited` (also -1) to keep \
one snapshot of every period";

impl Count {
    /// A count as written on the command line: a whole number, `unlimited`
    /// or `-1`. `0` means "rule not set" (`None`), as in restic.
    pub fn parse(text: &str) -> Result<Option<Count>, ParseError> {
        let s = text.trim();
        if s == "unlimited" || s == "-1" {
            return Ok(Some(Count::Unlimited));
        }
        let why = if s.starts_with('-') {
            "negative counts other than -1 (= unlimited) are not allowed"
        } else {
            "not a count"
        };
        match s.parse::<u32>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(Count::Limit(n))),
            Err(_) => Err(ParseError {
                message: format!("{text:?}: {why}"),
                hint: COUNT_HINT.into(),
            }),
        }
    }

    /// The limit, or `None` when unlimited.
    pub fn limit(self) -> Option<u32> {
        match self {
            Count::Limit(n) => Some(n),
            Count::Unlimited => None,
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Limit(n) => write!(f, "{n}"),
            Count::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl serde::Serialize for Count {
    /// A number, or the string `"unlimited"`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::Limit(n) => s.serialize_u32(*n),
            Count::Unlimited => s.serialize_str("unlimited"),
        }
    }
}

/// Tags a snapshot must all have to be kept by `keep-tag` (restic's tag
/// list: `a,b` = both). The empty group matches snapshots without tags
/// (restic's `--keep-tag ''`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct TagGroup(pub Vec<String>);

impl TagGroup {
    /// `a,b` (spaces around tags are dropped; a set, kept sorted); `""` is
    /// the empty group.
    /// An empty tag inside a list (`a,,b`, `a,`) is refused.
    pub fn parse(text: &str) -> Result<TagGroup, ParseError> {
        if text.trim().is_empty() {
            return Ok(TagGroup(Vec::new()));
        }
        let tags: Vec<String> = text.split(',').map(|t| t.trim().to_string()).collect();
        if tags.iter().any(String::is_empty) {
            return Err(ParseError {
                message: format!("{text:?} has an empty tag"),
                hint: "write the tags a snapshot must all have, separated by commas (`a,b`); \
                       repeat the rule for snapshots having any one group; `\"\"` alone keeps \
                       snapshots without tags"
                    .into(),
            });
        }
        let mut set = tags;
        set.sort();
        set.dedup();
        Ok(TagGroup(set))
    }

    /// Whether a snapshot with `tags` has every tag of the group (the empty
    /// group: whether it has no tag at all).
    pub fn matches(&self, tags: &[String]) -> bool {
        if self.0.is_empty() {
            return tags.is_empty();
        }
        self.0.iter().all(|t| tags.contains(t))
    }
}

impl fmt::Display for TagGroup {
    /// `a,b`, or `''` for the empty group.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("''")
        } else {
            f.write_str(&self.0.join(","))
        }
    }
}

/// The calendar periods bucket rules count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// `keep-last`: every snapshot is a period of its own.
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    /// `last`, `hourly`, …, `yearly`.
    pub fn name(self) -> &'static str {
        match self {
            Period::Last => "last",
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }
}

/// What to keep. Every field is an independent rule; a snapshot is kept if
/// any rule keeps it. `None` (a count of 0 or a zero duration when parsed)
/// means "rule not set".
#[derive(Default, Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    /// Keep the `n` newest snapshots.
    pub keep_last: Option<Count>,
    /// Keep the newest snapshot of each of the `n` newest hours that have snapshots.
    pub keep_hourly: Option<Count>,
    /// … days …
    pub keep_daily: Option<Count>,
    /// … ISO weeks …
    pub keep_weekly: Option<Count>,
    /// … months …
    pub keep_monthly: Option<Count>,
    /// … years that have snapshots.
    pub keep_yearly: Option<Count>,
    /// Keep every snapshot taken after the newest one minus this.
    pub keep_within: Option<CalendarDuration>,
    /// Keep the newest snapshot of each hour within this of the newest one.
    pub keep_within_hourly: Option<CalendarDuration>,
    /// … of each day …
    pub keep_within_daily: Option<CalendarDuration>,
    /// … of each ISO week …
    pub keep_within_weekly: Option<CalendarDuration>,
    /// … of each month …
    pub keep_within_monthly: Option<CalendarDuration>,
    /// … of each year within this of the newest one.
    pub keep_within_yearly: Option<CalendarDuration>,
    /// Keep every snapshot that has all tags of any one group.
    pub keep_tags: Vec<TagGroup>,
}

impl Policy {
    /// `true` when no rule is set at all. Such a policy would remove every
    /// snapshot, so [`super::plan`] keeps everything instead and the caller
    /// should refuse to run.
    pub fn is_empty(&self) -> bool {
        self.bucket_rules().next().is_none()
            && self.within().is_none()
            && self.within_rules().next().is_none()
            && self.keep_tags.is_empty()
    }

    /// The count rules that are set, in the order their reasons are listed.
    pub fn bucket_rules(&self) -> impl Iterator<Item = (Period, Count)> {
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
            Some(Count::Limit(0)) | None => None,
            Some(c) => Some((period, c)),
        })
    }

    /// The `keep-within-<period>` rules that are set, in reason order.
    pub fn within_rules(&self) -> impl Iterator<Item = (Period, CalendarDuration)> {
        [
            (Period::Hourly, self.keep_within_hourly),
            (Period::Daily, self.keep_within_daily),
            (Period::Weekly, self.keep_within_weekly),
            (Period::Monthly, self.keep_within_monthly),
            (Period::Yearly, self.keep_within_yearly),
        ]
        .into_iter()
        .filter_map(|(period, d)| d.filter(|d| !d.is_zero()).map(|d| (period, d)))
    }

    /// `keep_within`, if set to a non-zero duration.
    pub fn within(&self) -> Option<CalendarDuration> {
        self.keep_within.filter(|d| !d.is_zero())
    }

    /// The least these rules guarantee: the newest snapshot (always), the
    /// newest of every period a count or `keep-within-<period>` rule names,
    /// and every snapshot a tag group keeps. What the daemon never removes
    /// when storage runs out.
    pub fn minimum(&self) -> Policy {
        let mut min = Policy {
            keep_last: Some(Count::Limit(1)),
            keep_tags: self.keep_tags.clone(),
            ..Policy::default()
        };
        let periods = self
            .bucket_rules()
            .map(|(p, _)| p)
            .chain(self.within_rules().map(|(p, _)| p));
        for period in periods {
            let slot = match period {
                Period::Last => &mut min.keep_last,
                Period::Hourly => &mut min.keep_hourly,
                Period::Daily => &mut min.keep_daily,
                Period::Weekly => &mut min.keep_weekly,
                Period::Monthly => &mut min.keep_monthly,
                Period::Yearly => &mut min.keep_yearly,
            };
            *slot = Some(Count::Limit(1));
        }
        min
    }
}

impl fmt::Display for Policy {
    /// The rules that are set, as flags: `keep-daily 7, keep-within 1m, keep-tag a,b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .bucket_rules()
            .map(|(p, c)| format!("keep-{} {c}", p.name()))
            .collect();
        if let Some(d) = self.within() {
            parts.push(format!("keep-within {d}"));
        }
        parts.extend(
            self.within_rules()
                .map(|(p, d)| format!("keep-within-{} {d}", p.name())),
        );
        parts.extend(self.keep_tags.iter().map(|g| format!("keep-tag {g}")));
        if parts.is_empty() {
            f.write_str("no rule")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_like_restic() {
        assert_eq!(Count::parse("7"), Ok(Some(Count::Limit(7))));
        assert_eq!(Count::parse("unlimited"), Ok(Some(Count::Unlimited)));
        assert_eq!(Count::parse("-1"), Ok(Some(Count::Unlimited)));
        assert_eq!(Count::parse("0"), Ok(None));
        let e = Count::parse("-2").expect_err("negative");
        assert!(e.message.contains("negative"), "{}", e.message);
        let e = Count::parse("seven").expect_err("word");
        assert!(e.message.contains("not a count"), "{}", e.message);
        assert_eq!(Count::Unlimited.to_string(), "unlimited");
        assert_eq!(
            serde_json::to_string(&[Count::Limit(3), Count::Unlimited]).expect("json"),
            r#"[3,"unlimited"]"#
        );
    }

    #[test]
    fn tag_groups_are_and_within_and_empty_means_untagged() {
        let g = TagGroup::parse(" a , b,a").expect("valid");
        assert_eq!(g.0, ["a", "b"]);
        assert!(g.matches(&["b".into(), "a".into(), "c".into()]));
        assert!(!g.matches(&["a".into()]));
        let untagged = TagGroup::parse("").expect("valid");
        assert!(untagged.matches(&[]));
        assert!(!untagged.matches(&["a".into()]));
        assert_eq!(untagged.to_string(), "''");
        for bad in ["a,", ",a", "a,,b"] {
            let e = TagGroup::parse(bad).expect_err(bad);
            assert!(e.message.contains("empty tag"), "{}", e.message);
        }
    }

    #[test]
    fn emptiness_and_minimum() {
        assert!(Policy::default().is_empty());
        let zero = Policy {
            keep_last: Some(Count::Limit(0)),
            keep_within: Some(CalendarDuration::default()),
            keep_within_daily: Some(CalendarDuration::default()),
            ..Policy::default()
        };
        assert!(zero.is_empty());
        let month: CalendarDuration = "1m".parse().expect("valid");
        for p in [
            Policy {
                keep_yearly: Some(Count::Unlimited),
                ..Policy::default()
            },
            Policy {
                keep_within: Some(month),
                ..Policy::default()
            },
            Policy {
                keep_within_weekly: Some(month),
                ..Policy::default()
            },
            Policy {
                keep_tags: vec![TagGroup(vec![])],
                ..Policy::default()
            },
        ] {
            assert!(!p.is_empty(), "{p:?}");
        }
        let p = Policy {
            keep_daily: Some(Count::Limit(7)),
            keep_within_monthly: Some(month),
            keep_within: Some(month),
            keep_tags: vec![TagGroup(vec!["x".into()])],
            ..Policy::default()
        };
        assert_eq!(
            p.to_string(),
            "keep-daily 7, keep-within 1m, keep-within-monthly 1m, keep-tag x"
        );
        assert_eq!(
            p.minimum().to_string(),
            "keep-last 1, keep-daily 1, keep-monthly 1, keep-tag x"
        );
    }
}
