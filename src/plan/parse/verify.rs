//! The `verify` node: when and where backups are proven by restoring them.

use std::collections::HashMap;

use kdl::KdlNode;

use crate::plan::reader::{children, Parser};
use crate::plan::{ReadData, Verify};

const VERIFY: &[&str] = &[
    "cron",
    "postgres-scratch",
    "kafka-scratch",
    "skip-alert-after",
    "read-data",
];

impl Parser<'_> {
    pub(super) fn verify(&mut self, node: &KdlNode) -> Verify {
        self.check_block(node, 0, &[]);
        let mut v = Verify::default();
        let mut seen = HashMap::new();
        for c in children(node) {
            let name = c.name().value();
            if !VERIFY.contains(&name) {
                self.unknown_node(c, VERIFY, "in `verify`");
                continue;
            }
            if !self.first(&mut seen, c, "in `verify`") {
                continue;
            }
            match name {
                "cron" => v.cron = self.cron_arg(c).unwrap_or(v.cron),
                "postgres-scratch" => v.postgres_scratch = self.postgres_url_arg(c),
                "kafka-scratch" => v.kafka_scratch = self.host_ports_arg(c),
                "read-data" => {
                    v.read_data = self.parsed_arg(c, ReadData::parse).unwrap_or(v.read_data)
                }
                _ => v.skip_alert_after = self.count_arg(c, 1).unwrap_or(v.skip_alert_after),
            }
        }
        v
    }
}
