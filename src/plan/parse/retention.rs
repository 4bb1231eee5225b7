//! The `retention` node: which snapshots are kept (`spec/retention.md`).

use std::collections::HashMap;

use kdl::{KdlEntry, KdlNode, KdlValue};

use crate::plan::reader::{args, children, entry_at, example, Parser};
use crate::plan::values::Percent;
use crate::plan::Retention;
use crate::retention::{CalendarDuration, Count, ParseError, TagGroup};

const RETENTION: &[&str] = &[
    "keep-last",
    "keep-hourly",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "keep-yearly",
    "keep-within",
    "keep-within-hourly",
    "keep-within-daily",
    "keep-within-weekly",
    "keep-within-monthly",
    "keep-within-yearly",
    "keep-tag",
    "critical-free",
];

impl Parser<'_> {
    pub(super) fn retention(&mut self, node: &KdlNode) -> Retention {
        self.check_block(node, 0, &[]);
        let mut r = Retention::default();
        r.rules.keep_daily = None;
        let mut seen = HashMap::new();
        for c in children(node) {
            let name = c.name().value();
            if !RETENTION.contains(&name) {
                self.unknown_node(c, RETENTION, "in `retention`");
                continue;
            }
            if name != "keep-tag" && !self.first(&mut seen, c, "in `retention`") {
                continue;
            }
            let p = &mut r.rules;
            match name {
                "keep-last" => p.keep_last = self.keep_count(c),
                "keep-hourly" => p.keep_hourly = self.keep_count(c),
                "keep-daily" => p.keep_daily = self.keep_count(c),
                "keep-weekly" => p.keep_weekly = self.keep_count(c),
                "keep-monthly" => p.keep_monthly = self.keep_count(c),
                "keep-yearly" => p.keep_yearly = self.keep_count(c),
                "keep-within" => p.keep_within = self.keep_duration(c),
                "keep-within-hourly" => p.keep_within_hourly = self.keep_duration(c),
                "keep-within-daily" => p.keep_within_daily = self.keep_duration(c),
                "keep-within-weekly" => p.keep_within_weekly = self.keep_duration(c),
                "keep-within-monthly" => p.keep_within_monthly = self.keep_duration(c),
                "keep-within-yearly" => p.keep_within_yearly = self.keep_duration(c),
                "keep-tag" => {
                    let groups: Vec<TagGroup> = self.keep_tags(c);
                    r.rules.keep_tags.extend(groups);
                }
                _ => {
                    if let Some(p) = self.parsed_arg(c, Percent::parse) {
                        r.critical_free = p;
                    }
                }
            }
        }
        // No keep rule at all would remove every snapshot: keep the default instead.
        if !seen.keys().any(|k| k.starts_with("keep-")) && r.rules.keep_tags.is_empty() {
            r.rules.keep_daily = Retention::default().rules.keep_daily;
        }
        r
    }

    /// `keep-daily N`: N at least 1, or -1 / "unlimited".
    fn keep_count(&mut self, node: &KdlNode) -> Option<Count> {
        let e = self.one_arg(node, &[])?;
        let name = node.name().value();
        match e.value() {
            KdlValue::Integer(-1) => Some(Count::Unlimited),
            KdlValue::Integer(i) if (1..=i128::from(u32::MAX)).contains(i) => {
                Some(Count::Limit(*i as u32))
            }
            KdlValue::String(s) if s == "unlimited" => Some(Count::Unlimited),
            other => {
                let what = match other {
                    KdlValue::String(s) => format!("the string {s:?}"),
                    v => v.to_string(),
                };
                self.error(
                    entry_at(e),
                    format!(
                        "`{name}` takes a count of at least 1, or -1 or \"unlimited\", not {what}"
                    ),
                    format!("write it like {} or `{name} \"unlimited\"`", example(name)),
                );
                None
            }
        }
    }

    /// `keep-within "1y6m"`: restic's syntax, not zero.
    fn keep_duration(&mut self, node: &KdlNode) -> Option<CalendarDuration> {
        let e = self.one_arg(node, &[])?;
        let name = node.name().value();
        let text = self.string(name, e)?;
        let parsed = text.parse::<CalendarDuration>().and_then(|d| {
            if d.is_zero() {
                Err(ParseError {
                    message: format!("{text:?} is zero; it must be longer"),
                    hint: format!("write it like {}", example(name)),
                })
            } else {
                Ok(d)
            }
        });
        self.report(name, e, parsed)
    }

    /// `keep-tag "a,b" "c"`: each value one group (`a,b` = both tags).
    fn keep_tags(&mut self, node: &KdlNode) -> Vec<TagGroup> {
        let name = node.name().value();
        self.leaf_with_values(node);
        let mut groups = Vec::new();
        for e in args(node) {
            let Some(text) = self.string(name, e) else {
                continue;
            };
            if let Some(g) = self.report(name, e, TagGroup::parse(&text)) {
                groups.push(g);
            }
        }
        groups
    }

    fn report<T>(&mut self, name: &str, e: &KdlEntry, r: Result<T, ParseError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(err) => {
                self.error(entry_at(e), format!("`{name}`: {}", err.message), err.hint);
                None
            }
        }
    }
}
