//! `schedule` nodes: when backups run and of which sources.

use std::collections::HashMap;

use kdl::KdlNode;

use super::{Named, Reference};
use crate::plan::reader::{children, Parser};
use crate::plan::Schedule;

const SCHEDULE: &[&str] = &[
    "cron",
    "timezone",
    "sources",
    "tag",
    "expected-duration",
    "missed-backup",
];

impl Parser<'_> {
    pub(super) fn schedule(
        &mut self,
        node: &KdlNode,
        refs: &mut Vec<Reference>,
    ) -> Option<(Schedule, bool, Named)> {
        self.check_block(node, 1, &[]);
        let named = self.name_arg(node);
        let label = format!(
            "schedule `{}`",
            named.as_ref().map_or("?", |n| n.name.as_str())
        );
        let mut s = Schedule::nightly(Vec::new());
        let mut all_sources = true;
        let mut seen = HashMap::new();
        for c in children(node) {
            let name = c.name().value();
            if !SCHEDULE.contains(&name) {
                self.unknown_node(c, SCHEDULE, &format!("in {label}"));
                continue;
            }
            if !matches!(name, "sources" | "tag")
                && !self.first(&mut seen, c, &format!("in {label}"))
            {
                continue;
            }
            match name {
                "cron" => s.cron = self.cron_arg(c).unwrap_or(s.cron),
                "timezone" => s.timezone = self.timezone_arg(c),
                "sources" => {
                    all_sources = false;
                    self.references(c, &format!("{label} names"), &mut s.sources, refs);
                }
                "tag" => s.tags.extend(self.string_args(c)),
                "missed-backup" => s.missed_backup = self.duration_arg(c),
                _ => s.expected_duration = self.duration_arg(c),
            }
        }
        let named = named?;
        s.name = named.name.clone();
        Some((s, all_sources, named))
    }
}
