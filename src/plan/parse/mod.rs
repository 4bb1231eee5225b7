//! KDL text → [`Plan`], reporting every problem rather than the first.
//!
//! The walk is deliberately forgiving: a bad value is reported and replaced
//! by its default so the rest of the plan is still checked; references
//! between nodes (a schedule naming a source, a service depending on
//! another) are checked at the end, because nodes may come in any order.

mod alerts;
mod api;
mod repository;
mod retention;
mod schedules;
mod services;
mod sources;
mod verify;

use std::collections::HashMap;
use std::path::Path;

use kdl::{KdlDocument, KdlNode};

use super::diagnostic::{Diagnostics, LineIndex};
use super::limits::Parsed;
use super::reader::{args, entry_at, example, node_at, syntax_problem, Parser};
use super::values::closest;
use super::{graph, Plan, Repository, Schedule, Service, Source};

const TOP_LEVEL: &[&str] = &[
    "name",
    "repository",
    "source",
    "schedule",
    "retention",
    "alerts",
    "service",
    "verify",
    "api",
];

/// Names (of plans, sources, schedules, services): letters, digits, `_`,
/// `.`, `-`, not empty.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A source, schedule or service name as written, for cross-checks.
struct Named {
    name: String,
    offset: usize,
}

/// A reference to a source or service by name, checked once all nodes are read.
struct Reference {
    name: String,
    offset: usize,
    /// "schedule `nightly` names", for messages.
    from: String,
}

pub(super) fn parse(text: &str, file: &Path, dir: &Path) -> Result<Plan, Diagnostics> {
    let mut p = Parser {
        file,
        dir,
        lines: LineIndex::new(text),
        diags: Vec::new(),
    };
    // Offsets in `prepared` are those in `text`: positions stay right.
    let prepared = match super::limits::prepare(text) {
        Ok(t) => t,
        Err((offset, message, hint)) => {
            p.error(offset, message, hint);
            return Err(p.finish());
        }
    };
    let doc = match super::limits::parse_kdl(prepared) {
        Parsed::Done(Ok(doc)) => doc,
        Parsed::Interrupted => {
            p.error(0, "interrupted while parsing", "run the command again");
            return Err(p.finish());
        }
        Parsed::Failed(message) => {
            p.error(0, message, "this is a bug in cairn; please report it");
            return Err(p.finish());
        }
        Parsed::Done(Err(err)) => {
            for d in &err.diagnostics {
                let (message, hint) = syntax_problem(text, d);
                p.error(d.span.offset(), message, hint);
            }
            return Err(p.finish());
        }
    };
    let plan = p.plan(&doc);
    let diags = p.finish();
    if diags.is_empty() {
        Ok(plan)
    } else {
        Err(diags)
    }
}

impl Parser<'_> {
    fn plan(&mut self, doc: &KdlDocument) -> Plan {
        let mut seen = HashMap::new();
        let mut repository = None;
        let mut sources: Vec<(Source, Named)> = Vec::new();
        let mut schedules: Vec<(Schedule, bool, Named)> = Vec::new();
        let mut services: Vec<(Service, Named, Vec<Reference>)> = Vec::new();
        let mut refs: Vec<Reference> = Vec::new();
        let mut retention = None;
        let mut alerts = None;
        let mut verify = None;
        let mut api = None;
        let mut name = None;
        for node in doc.nodes() {
            match node.name().value() {
                "name" => {
                    if self.first(&mut seen, node, "in a plan") {
                        name = self.plan_name(node);
                    }
                }
                "repository" => {
                    if self.first(&mut seen, node, "in a plan") {
                        repository = self.repository(node);
                    }
                }
                "source" => {
                    if let Some(s) = self.source(node) {
                        sources.push(s);
                    }
                }
                "schedule" => {
                    if let Some(s) = self.schedule(node, &mut refs) {
                        schedules.push(s);
                    }
                }
                "service" => {
                    if let Some(s) = self.service(node, &mut refs) {
                        services.push(s);
                    }
                }
                "retention" if self.first(&mut seen, node, "in a plan") => {
                    retention = Some(self.retention(node));
                }
                "alerts" if self.first(&mut seen, node, "in a plan") => {
                    alerts = Some(self.alerts(node));
                }
                "verify" if self.first(&mut seen, node, "in a plan") => {
                    verify = Some(self.verify(node));
                }
                "api" if self.first(&mut seen, node, "in a plan") => {
                    api = self.api(node);
                }
                "retention" | "alerts" | "verify" | "api" => {}
                _ => self.unknown_node(node, TOP_LEVEL, "at the top level of a plan"),
            }
        }
        if !seen.contains_key("repository") {
            self.error(
                0,
                "the plan has no `repository`",
                format!("add one, like {}", example("repository")),
            );
        }

        self.check_unique("source", sources.iter().map(|(_, n)| n));
        self.check_unique("schedule", schedules.iter().map(|(_, _, n)| n));
        self.check_unique("service", services.iter().map(|(_, n, _)| n));
        let source_names: Vec<String> = sources.iter().map(|(s, _)| s.name.clone()).collect();
        self.check_references(&refs, "source", &source_names);
        self.check_service_graph(&mut services);

        let mut schedules: Vec<Schedule> = schedules
            .into_iter()
            .map(|(mut s, all_sources, _)| {
                if all_sources {
                    s.sources = source_names.clone();
                }
                s
            })
            .collect();
        if schedules.is_empty() {
            schedules.push(Schedule::nightly(source_names.clone()));
        }
        Plan {
            file: self.file.to_path_buf(),
            name,
            canonical_file: super::canonical(self.file),
            repository: repository.unwrap_or_else(|| Repository {
                location: String::new(),
                password_file: None,
                identity: None,
                cache_dir: None,
            }),
            sources: sources.into_iter().map(|(s, _)| s).collect(),
            schedules,
            retention: retention.unwrap_or_default(),
            alerts: alerts.unwrap_or_default(),
            services: services.into_iter().map(|(s, _, _)| s).collect(),
            verify: verify.unwrap_or_default(),
            api,
        }
    }

    /// Every `depends-on` names a service, and no service waits for
    /// itself through others (a restore could never start it).
    fn check_service_graph(&mut self, services: &mut [(Service, Named, Vec<Reference>)]) {
        let names: Vec<String> = services.iter().map(|(s, _, _)| s.name.clone()).collect();
        let deps: Vec<Reference> = services
            .iter_mut()
            .flat_map(|(_, _, d)| std::mem::take(d))
            .collect();
        self.check_references(&deps, "service", &names);
        let graph: Vec<(&str, Vec<&str>)> = services
            .iter()
            .map(|(s, _, _)| {
                let deps = s.depends_on.iter().map(String::as_str).collect();
                (s.name.as_str(), deps)
            })
            .collect();
        for cycle in graph::find_cycles(&graph) {
            let offset = services
                .iter()
                .find(|(s, _, _)| s.name == cycle[0])
                .map_or(0, |(_, n, _)| n.offset);
            self.error(
                offset,
                format!("services depend on each other in a cycle: {}", cycle.join(" -> ")),
                "remove one `depends-on` of the cycle, so the services can be started one after the other",
            );
        }
    }

    fn check_unique<'n>(&mut self, what: &str, names: impl Iterator<Item = &'n Named>) {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for n in names {
            if let Some(&offset) = first.get(n.name.as_str()) {
                let line = self.line_of(offset);
                self.error(
                    n.offset,
                    format!("{what} `{}` is defined twice", n.name),
                    format!("it is first defined on line {line}; {what} names must be unique"),
                );
            } else {
                first.insert(&n.name, n.offset);
            }
        }
    }

    fn check_references(&mut self, refs: &[Reference], what: &str, known: &[String]) {
        for r in refs {
            if known.contains(&r.name) {
                continue;
            }
            let hint = match closest(&r.name, known.iter().map(String::as_str)) {
                Some(c) => format!("did you mean `{c}`?"),
                None if known.is_empty() => format!("the plan defines no {what}"),
                None => format!("the plan's {what}s: {}", known.join(", ")),
            };
            self.error(
                r.offset,
                format!("{} unknown {what} `{}`", r.from, r.name),
                hint,
            );
        }
    }

    /// The top-level `name "…"`: what the plan's snapshots record, so it
    /// uses the characters of other names and can never be read as a path.
    fn plan_name(&mut self, node: &KdlNode) -> Option<String> {
        let e = self.one_arg(node, &[])?;
        let name = self.string("name", e)?;
        if !valid_name(&name) {
            self.error(
                entry_at(e),
                format!("plan name {name:?} is not allowed"),
                "names use only letters, digits, `_`, `.` and `-`; the name must be unique among the plans sharing a repository",
            );
            return None;
        }
        Some(name)
    }

    /// The name argument of `source`, `schedule` and `service` nodes.
    fn name_arg(&mut self, node: &KdlNode) -> Option<Named> {
        let what = node.name().value();
        let Some(e) = args(node).next() else {
            self.error(
                node_at(node),
                format!("`{what}` needs a name"),
                format!("write it like {}", example(what)),
            );
            return None;
        };
        let name = self.string(what, e)?;
        if !valid_name(&name) {
            self.error(
                entry_at(e),
                format!("{what} name {name:?} is not allowed"),
                "names use only letters, digits, `_`, `.` and `-`",
            );
            return None;
        }
        Some(Named {
            name,
            offset: entry_at(e),
        })
    }

    /// String values naming other nodes: collected into `names` and
    /// remembered in `refs` to be checked once every node is read.
    fn references(
        &mut self,
        node: &KdlNode,
        from: &str,
        names: &mut Vec<String>,
        refs: &mut Vec<Reference>,
    ) {
        self.leaf_with_values(node);
        let name = node.name().value();
        for e in args(node) {
            if let Some(s) = self.string(name, e) {
                refs.push(Reference {
                    name: s.clone(),
                    offset: entry_at(e),
                    from: from.to_string(),
                });
                names.push(s);
            }
        }
    }
}
