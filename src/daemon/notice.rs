//! The body of an alert: what failed, where, since when, and what to try —
//! one labelled line each, so a person paged at night reads the source, the
//! error, the plan, the repository and the snapshot without opening a log,
//! and a filter can match `Source: db`. `spec/plan.md` ("Alerts") shows it.

use jiff::Timestamp;

/// The parts of an alert's body. Empty parts are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    /// One or two sentences: what happened.
    pub what: String,
    /// The error, as the failing step reported it.
    pub error: Option<String>,
    /// The source concerned: `db (postgres)`.
    pub source: Option<String>,
    /// The plan file.
    pub plan: Option<String>,
    /// The repository location, without credentials ([`redact_location`]).
    pub repository: Option<String>,
    /// The snapshot concerned, with a word on what it is.
    pub snapshot: Option<String>,
    /// Since when: (label, value), e.g. ("Last success", "2026-…  (3h ago)").
    pub since: Vec<(String, String)>,
    /// What to try, most specific first.
    pub hints: Vec<String>,
}

impl Details {
    /// A body that says `what`.
    pub fn new(what: impl Into<String>) -> Details {
        Details {
            what: what.into(),
            ..Details::default()
        }
    }

    /// The plain-text body.
    pub fn body(&self) -> String {
        let mut rows: Vec<(&str, String)> = Vec::new();
        let mut row = |label: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                rows.push((label, v.clone()));
            }
        };
        row("Error", &self.error);
        row("Source", &self.source);
        row("Plan", &self.plan);
        row("Repository", &self.repository);
        row("Snapshot", &self.snapshot);
        let since: Vec<(&str, String)> = self
            .since
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        rows.extend(since);
        let width = rows.iter().map(|(l, _)| l.len() + 1).max().unwrap_or(0);
        let mut out = format!("{}\n", self.what.trim_end());
        if !rows.is_empty() {
            out.push('\n');
        }
        for (label, value) in rows {
            let head = format!("{label}:");
            // Continuation lines of a multi-line value line up under it.
            let value = value
                .trim_end()
                .replace('\n', &format!("\n{:width$}  ", ""));
            out.push_str(&format!("{head:width$}  {value}\n"));
        }
        if !self.hints.is_empty() {
            out.push_str("\nWhat to try:\n");
            for h in &self.hints {
                out.push_str(&format!("  - {h}\n"));
            }
        }
        out
    }
}

/// `t` for a `since` line: RFC 3339 and how long before `now`, or `never`.
pub fn when(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let secs = (now - t).as_secs().max(0) as u64;
            let ago = humantime::format_duration(std::time::Duration::from_secs(secs));
            let whole = Timestamp::from_second(t.as_second()).unwrap_or(t);
            format!("{whole} ({ago} ago)")
        }
    }
}

/// A repository location fit to show: user info (`user:password@`), query
/// and fragment are removed from a URL; a local path is shown as it is.
pub fn redact_location(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_one_labelled_line_per_part() {
        let d = Details {
            what: "The backup of source db failed.".into(),
            error: Some("pg_dump exited 1\nconnection refused".into()),
            source: Some("db (postgres)".into()),
            plan: Some("/etc/cairn/plan.kdl".into()),
            repository: Some("s3://bucket/prefix".into()),
            snapshot: None,
            since: vec![("Last success".into(), "never".into())],
            hints: vec!["check the server".into()],
        };
        assert_eq!(
            d.body(),
            "The backup of source db failed.\n\n\
             Error:         pg_dump exited 1\n               connection refused\n\
             Source:        db (postgres)\n\
             Plan:          /etc/cairn/plan.kdl\n\
             Repository:    s3://bucket/prefix\n\
             Last success:  never\n\n\
             What to try:\n  - check the server\n"
        );
        assert_eq!(Details::new("Only this.").body(), "Only this.\n");
    }

    #[test]
    fn locations_lose_credentials() {
        assert_eq!(
            redact_location("s3://key:secret@host:9000/bucket/p?token=x#f"),
            "s3://host:9000/bucket/p"
        );
        assert_eq!(redact_location("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(redact_location("/srv/backup/repo"), "/srv/backup/repo");
    }

    #[test]
    fn when_says_how_long_ago() {
        let now: Timestamp = "2026-01-02T03:00:00Z".parse().unwrap();
        let t: Timestamp = "2026-01-02T01:59:30.5Z".parse().unwrap();
        assert_eq!(when(Some(t), now), "2026-01-02T01:59:30Z (1h 29s ago)");
        assert_eq!(when(None, now), "never");
    }
}
