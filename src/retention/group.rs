//! Which snapshots are weighed together: the candidates and their groups.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;

/// A snapshot as seen by the retention planner: only the fields that
/// grouping and the rules look at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// Snapshot id, echoed back in the decision.
    pub id: String,
    /// When the snapshot was taken.
    pub time: Timestamp,
    /// Host the snapshot was taken on.
    pub host: String,
    /// Tags of the snapshot (any order).
    pub tags: Vec<String>,
    /// Backed-up paths of the snapshot (any order).
    pub paths: Vec<String>,
    /// Set when the snapshot's newest proof failed (what the restore test
    /// found): the rules pass over it and it is kept (`spec/retention.md`).
    #[serde(default)]
    pub corrupted: Option<String>,
    /// Set when some of what the snapshot was to hold is missing (a source
    /// failed or could not read everything): within a period, the rules
    /// prefer a complete snapshot (`spec/retention.md`).
    #[serde(default)]
    pub incomplete: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = Candidate {
            id: "a".into(),
            time: "2026-01-01T00:00:00Z".parse().expect("valid"),
            host: "h".into(),
            tags: vec!["b".into(), "a".into()],
            paths: vec!["/var".into(), "/etc".into(), "/var".into()],
            corrupted: None,
            incomplete: false,
        };
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
