//! `service` nodes: what is stopped and started around a restore.

use std::collections::HashMap;

use kdl::KdlNode;

use super::{Named, Reference};
use crate::plan::reader::{children, example, node_at, prop, Parser};
use crate::plan::{Probe, Service};

const SERVICE: &[&str] = &["stop", "start", "ready", "stopped", "depends-on", "sources"];

impl Parser<'_> {
    pub(super) fn service(
        &mut self,
        node: &KdlNode,
        refs: &mut Vec<Reference>,
    ) -> Option<(Service, Named, Vec<Reference>)> {
        self.check_block(node, 1, &[]);
        let named = self.name_arg(node);
        let label = format!(
            "service `{}`",
            named.as_ref().map_or("?", |n| n.name.as_str())
        );
        let mut seen = HashMap::new();
        let (mut stop, mut start, mut ready, mut stopped) = (None, None, None, None);
        let (mut depends_on, mut sources, mut deps) = (Vec::new(), Vec::new(), Vec::new());
        for c in children(node) {
            let name = c.name().value();
            if !SERVICE.contains(&name) {
                self.unknown_node(c, SERVICE, &format!("in {label}"));
                continue;
            }
            if !matches!(name, "depends-on" | "sources")
                && !self.first(&mut seen, c, &format!("in {label}"))
            {
                continue;
            }
            match name {
                "stop" => stop = self.text_arg(c),
                "start" => start = self.text_arg(c),
                "ready" => ready = self.probe(c),
                "stopped" => stopped = self.probe(c),
                "depends-on" => self.references(
                    c,
                    &format!("{label} depends on"),
                    &mut depends_on,
                    &mut deps,
                ),
                _ => self.references(c, &format!("{label} names"), &mut sources, refs),
            }
        }
        for required in ["stop", "start"] {
            if !seen.contains_key(required) {
                self.error(
                    node_at(node),
                    format!("{label} has no `{required}` command"),
                    format!("add {} inside it", example(required)),
                );
            }
        }
        let named = named?;
        let service = Service {
            name: named.name.clone(),
            stop: stop?,
            start: start?,
            ready,
            stopped,
            depends_on,
            sources,
        };
        Some((service, named, deps))
    }

    fn probe(&mut self, node: &KdlNode) -> Option<Probe> {
        let e = self.one_arg(node, &["timeout"])?;
        let command = self.string(node.name().value(), e)?;
        let timeout = match prop(node, "timeout") {
            Some(t) => self.duration("timeout", t)?,
            None => Probe::DEFAULT_TIMEOUT,
        };
        Some(Probe { command, timeout })
    }
}
