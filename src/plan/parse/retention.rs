//! The `retention` node: which snapshots are kept.

use std::collections::HashMap;

use kdl::KdlNode;

use crate::plan::reader::{children, Parser};
use crate::plan::values::Percent;
use crate::plan::Retention;

const RETENTION: &[&str] = &[
    "keep-last",
    "keep-hourly",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "keep-yearly",
    "keep-within",
    "keep-tag",
    "critical-free",
];

impl Parser<'_> {
    pub(super) fn retention(&mut self, node: &KdlNode) -> Retention {
        self.check_block(node, 0, &[]);
        let mut r = Retention {
            keep_daily: None,
            ..Retention::default()
        };
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
            match name {
                "keep-last" => r.keep_last = self.count_arg(c, 1),
                "keep-hourly" => r.keep_hourly = self.count_arg(c, 1),
                "keep-daily" => r.keep_daily = self.count_arg(c, 1),
                "keep-weekly" => r.keep_weekly = self.count_arg(c, 1),
                "keep-monthly" => r.keep_monthly = self.count_arg(c, 1),
                "keep-yearly" => r.keep_yearly = self.count_arg(c, 1),
                "keep-within" => r.keep_within = self.duration_arg(c),
                "keep-tag" => r.keep_tags.extend(self.string_args(c)),
                _ => {
                    if let Some(p) = self.parsed_arg(c, Percent::parse) {
                        r.critical_free = p;
                    }
                }
            }
        }
        // No keep rule at all would remove every snapshot: keep the default instead.
        if !seen.keys().any(|k| k.starts_with("keep-")) && r.keep_tags.is_empty() {
            r.keep_daily = Retention::default().keep_daily;
        }
        r
    }
}
