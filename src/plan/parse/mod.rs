//! KDL text → [`Plan`], reporting every problem rather than the first.
//!
//! The walk is deliberately forgiving: a bad value is reported and replaced
//! by its default so the rest of the plan is still checked; references
//! between nodes (a schedule naming a source, a service depending on
//! another) are checked at the end, because nodes may come in any order.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use kdl::{KdlDocument, KdlNode};

use super::diagnostic::{Diagnostics, LineIndex};
use super::limits::Parsed;
use super::reader::{
    args, children, entry_at, example, node_at, prop, syntax_problem, Parser, READ_HINT,
};
use super::values::{closest, parse_duration, Percent, Size};
use super::{
    graph, Alerts, Api, CommandSource, Email, FilesSource, KafkaSource, Plan, PostgresSource,
    Probe, Repository, Retention, Schedule, Service, SmtpSecurity, Source, SourceSettings, Token,
    Verify,
};

const TOP_LEVEL: &[&str] = &[
    "repository",
    "source",
    "schedule",
    "retention",
    "alerts",
    "service",
    "verify",
    "api",
];
const REPOSITORY: &[&str] = &["password-file", "identity", "cache-dir"];
const SOURCE_KINDS: &[(&str, &[&str])] = &[
    ("files", &["path"]),
    ("postgres", &["url", "database", "physical"]),
    (
        "kafka",
        &[
            "brokers",
            "topic",
            "include-internal",
            "no-messages",
            "kafka-config",
            "retries",
            "retry-delay",
        ],
    ),
    ("command", &["command", "file-name"]),
];
const SCHEDULE: &[&str] = &["cron", "timezone", "sources", "tag", "expected-duration"];
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
const ALERTS: &[&str] = &[
    "email",
    "webhook",
    "missed-backup",
    "storage-warning",
    "quota",
    "slow-factor",
    "repeat-every",
];
const EMAIL: &[&str] = &["smtp", "username", "password-file", "from", "to"];
const SERVICE: &[&str] = &["stop", "start", "ready", "stopped", "depends-on", "sources"];
const VERIFY: &[&str] = &[
    "cron",
    "postgres-scratch",
    "kafka-scratch",
    "skip-alert-after",
];
const API: &[&str] = &["listen", "token", "token-file"];

/// A source, schedule or service name as written, for cross-checks.
struct Named {
    name: String,
    offset: usize,
}

/// The setting nodes of one source, already checked against its kind.
struct Settings<'n>(Vec<&'n KdlNode>);

impl<'n> Settings<'n> {
    fn get(&self, name: &str) -> Option<&'n KdlNode> {
        self.all(name).next()
    }
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'n KdlNode> + 'a {
        self.0
            .iter()
            .copied()
            .filter(move |c| c.name().value() == name)
    }
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
        for node in doc.nodes() {
            match node.name().value() {
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
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
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

    fn repository(&mut self, node: &KdlNode) -> Option<Repository> {
        self.check_block(node, 1, &[]);
        let location = match args(node).next() {
            None => {
                self.error(
                    node_at(node),
                    "`repository` needs a location",
                    format!("write it like {}", example("repository")),
                );
                None
            }
            Some(e) => self.string("repository", e).map(|l| {
                if l.contains("://") {
                    l
                } else {
                    self.resolve(&l).display().to_string()
                }
            }),
        };
        let mut seen = HashMap::new();
        let (mut password_file, mut identity, mut cache_dir) = (None, None, None);
        for c in children(node) {
            let name = c.name().value();
            if !REPOSITORY.contains(&name) {
                self.unknown_node(c, REPOSITORY, "in `repository`");
                continue;
            }
            if !self.first(&mut seen, c, "in `repository`") {
                continue;
            }
            match name {
                "password-file" => password_file = self.readable_file_arg(c, "password file", true),
                "identity" => identity = self.readable_file_arg(c, "identity file", true),
                _ => cache_dir = self.path_arg(c),
            }
        }
        match (seen.contains_key("password-file"), seen.contains_key("identity")) {
            (false, false) => self.error(
                node_at(node),
                "`repository` has neither `password-file` nor `identity`",
                "add `password-file \"PATH\"` or `identity \"PATH\"` inside it: a scheduled backup cannot ask for a password",
            ),
            (true, true) => self.error(
                node_at(node),
                "`repository` has both `password-file` and `identity`",
                "keep one: the repository is opened either with a password or with an age identity",
            ),
            _ => {}
        }
        Some(Repository {
            location: location?,
            password_file,
            identity,
            cache_dir,
        })
    }

    fn source(&mut self, node: &KdlNode) -> Option<(Source, Named)> {
        self.check_block(node, 1, &["kind"]);
        let named = self.name_arg(node);
        let kinds: Vec<&str> = SOURCE_KINDS.iter().map(|(k, _)| *k).collect();
        let kind = match prop(node, "kind") {
            None => {
                let label = named
                    .as_ref()
                    .map_or("`source`".into(), |n| format!("source `{}`", n.name));
                self.error(
                    node_at(node),
                    format!("{label} has no `kind`"),
                    format!("add {}", example("kind")),
                );
                None
            }
            Some(e) => match self.string("kind", e) {
                Some(k) if kinds.contains(&k.as_str()) => Some(k),
                Some(k) => {
                    let hint = match closest(&k, kinds.iter().copied()) {
                        Some(c) => format!("did you mean kind=\"{c}\"?"),
                        None => format!("kinds: {}", kinds.join(", ")),
                    };
                    self.error(entry_at(e), format!("unknown source kind {k:?}"), hint);
                    None
                }
                None => None,
            },
        };
        // Without a kind the settings cannot be checked; the kind error says enough.
        let kind = kind?;
        let settings = self.source_settings(node, &kind, named.as_ref().map(|n| n.name.as_str()));
        let named = named?;
        Some((
            Source {
                name: named.name.clone(),
                settings: settings?,
            },
            named,
        ))
    }

    /// Check the children of a source against the settings of its kind
    /// and read them.
    fn source_settings(
        &mut self,
        node: &KdlNode,
        kind: &str,
        name: Option<&str>,
    ) -> Option<SourceSettings> {
        let allowed = SOURCE_KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, a)| *a);
        let label = format!("{kind} source `{}`", name.unwrap_or("?"));
        let mut seen = HashMap::new();
        let repeatable = ["path", "database", "topic"];
        let mut settings = Settings(Vec::new());
        for c in children(node) {
            let cname = c.name().value();
            if !allowed.contains(&cname) {
                match SOURCE_KINDS.iter().find(|(_, a)| a.contains(&cname)) {
                    Some((other, _)) => self.error(
                        node_at(c),
                        format!("`{cname}` is not a setting of {kind} sources"),
                        format!("`{cname}` belongs to kind=\"{other}\" sources; this one is kind=\"{kind}\""),
                    ),
                    None => self.unknown_node(c, allowed, &format!("in {label}")),
                }
                continue;
            }
            if repeatable.contains(&cname) || self.first(&mut seen, c, &format!("in {label}")) {
                settings.0.push(c);
            }
        }
        for required in ["path", "url", "brokers", "command"] {
            if allowed.contains(&required) && settings.get(required).is_none() {
                self.error(
                    node_at(node),
                    format!("{label} has no `{required}`"),
                    format!("add {} inside it", example(required)),
                );
            }
        }
        match kind {
            "files" => self.files_source(&settings),
            "postgres" => self.postgres_source(&settings, &label),
            "kafka" => self.kafka_source(&settings),
            _ => self.command_source(&settings, name),
        }
    }

    fn files_source(&mut self, s: &Settings) -> Option<SourceSettings> {
        let mut paths = Vec::new();
        for c in s.all("path") {
            for p in self.string_args(c) {
                paths.push(self.resolve(&p));
            }
        }
        (!paths.is_empty()).then_some(SourceSettings::Files(FilesSource { paths }))
    }

    fn postgres_source(&mut self, s: &Settings, label: &str) -> Option<SourceSettings> {
        let url = s.get("url").and_then(|c| self.postgres_url_arg(c));
        let databases: Vec<String> = s
            .all("database")
            .flat_map(|c| self.string_args(c))
            .collect();
        let physical = s
            .get("physical")
            .and_then(|c| self.bool_arg(c))
            .unwrap_or(false);
        if let (true, Some(d)) = (physical, s.get("database")) {
            self.error(
                node_at(d),
                format!("{label}: `database` cannot be combined with `physical #true`"),
                "a physical backup copies the whole cluster; remove `database` or `physical`",
            );
        }
        Some(SourceSettings::Postgres(PostgresSource {
            url: url?,
            databases,
            physical,
        }))
    }

    fn kafka_source(&mut self, s: &Settings) -> Option<SourceSettings> {
        let brokers = s.get("brokers").and_then(|c| self.host_ports_arg(c));
        let mut topics = Vec::new();
        for c in s.all("topic") {
            for t in self.string_args(c) {
                // Topics are matched as whole names, like `--topic`.
                if let Err(err) = regex::Regex::new(&format!("^(?:{t})$")) {
                    let detail = err.to_string();
                    self.error(
                        node_at(c),
                        format!("`topic` {t:?} is not a valid regular expression"),
                        detail
                            .lines()
                            .last()
                            .unwrap_or("check the expression")
                            .trim()
                            .to_string(),
                    );
                }
                topics.push(t);
            }
        }
        let include_internal = s.get("include-internal").and_then(|c| self.bool_arg(c));
        let no_messages = s.get("no-messages").and_then(|c| self.bool_arg(c));
        let kafka_config = s
            .get("kafka-config")
            .and_then(|c| self.readable_file_arg(c, "Kafka properties file", false));
        let retries = s.get("retries").and_then(|c| self.count_arg(c, 0));
        // Zero is allowed here (retry at once), unlike other durations.
        let retry_delay = s.get("retry-delay").and_then(|c| {
            let e = self.one_arg(c, &[])?;
            self.parsed("retry-delay", e, parse_duration)
        });
        Some(SourceSettings::Kafka(KafkaSource {
            brokers: brokers?,
            topics,
            include_internal: include_internal.unwrap_or(false),
            no_messages: no_messages.unwrap_or(false),
            kafka_config,
            retries: retries.unwrap_or(3),
            retry_delay: retry_delay.unwrap_or(Duration::from_secs(1)),
        }))
    }

    fn command_source(&mut self, s: &Settings, name: Option<&str>) -> Option<SourceSettings> {
        let command = s.get("command").map(|c| self.string_args(c))?;
        let file_name = s.get("file-name").and_then(|c| self.text_arg(c));
        if command
            .first()
            .is_none_or(|program| program.trim().is_empty())
        {
            return None;
        }
        Some(SourceSettings::Command(CommandSource {
            command,
            file_name: file_name.or_else(|| name.map(str::to_string))?,
        }))
    }

    fn schedule(
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
                _ => s.expected_duration = self.duration_arg(c),
            }
        }
        let named = named?;
        s.name = named.name.clone();
        Some((s, all_sources, named))
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
        self.check_props(node, &[]);
        self.check_no_children(node);
        let name = node.name().value();
        if args(node).next().is_none() {
            self.error(
                node_at(node),
                format!("`{name}` needs at least one value"),
                format!("write it like {}", example(name)),
            );
        }
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

    fn retention(&mut self, node: &KdlNode) -> Retention {
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

    fn alerts(&mut self, node: &KdlNode) -> Alerts {
        self.check_block(node, 0, &[]);
        let mut a = Alerts::default();
        let mut seen = HashMap::new();
        for c in children(node) {
            let name = c.name().value();
            if !ALERTS.contains(&name) {
                self.unknown_node(c, ALERTS, "in `alerts`");
                continue;
            }
            if !self.first(&mut seen, c, "in `alerts`") {
                continue;
            }
            match name {
                "email" => a.email = self.email(c),
                "webhook" => {
                    a.webhook = self.parsed_arg(c, |s| {
                        if s.starts_with("https://") || s.starts_with("http://") {
                            Ok(s.to_string())
                        } else {
                            Err(format!("{s:?} is not an http:// or https:// URL"))
                        }
                    })
                }
                "missed-backup" => {
                    a.missed_backup = self.duration_arg(c).unwrap_or(a.missed_backup)
                }
                "storage-warning" => {
                    a.storage_warning = self
                        .parsed_arg(c, Percent::parse)
                        .unwrap_or(a.storage_warning)
                }
                "quota" => a.quota = self.parsed_arg(c, Size::parse),
                "slow-factor" => {
                    if let Some(f) = self.float_arg(c) {
                        if f > 1.0 {
                            a.slow_factor = f;
                        } else {
                            self.error(
                                node_at(c),
                                format!("`slow-factor` must be more than 1, not {f}"),
                                "a run is slow when it takes longer than this many times the median of recent runs, e.g. `slow-factor 2.0`",
                            );
                        }
                    }
                }
                _ => a.repeat_every = self.duration_arg(c).unwrap_or(a.repeat_every),
            }
        }
        a
    }

    fn email(&mut self, node: &KdlNode) -> Option<Email> {
        self.check_block(node, 0, &[]);
        let mut seen = HashMap::new();
        let (mut smtp, mut port, mut security) = (None, None, SmtpSecurity::Starttls);
        let (mut username, mut password_file, mut from, mut to) = (None, None, None, Vec::new());
        for c in children(node) {
            let name = c.name().value();
            if !EMAIL.contains(&name) {
                self.unknown_node(c, EMAIL, "in `email`");
                continue;
            }
            if name != "to" && !self.first(&mut seen, c, "in `email`") {
                continue;
            }
            match name {
                "smtp" => {
                    let Some(e) = self.one_arg(c, &["port", "security"]) else {
                        continue;
                    };
                    smtp = self.string("smtp", e);
                    if let Some(e) = prop(c, "security") {
                        match self.string("security", e).as_deref() {
                            Some("plain") => security = SmtpSecurity::Plain,
                            Some("starttls") => security = SmtpSecurity::Starttls,
                            Some("tls") => security = SmtpSecurity::Tls,
                            Some(other) => self.error(
                                entry_at(e),
                                format!("unknown SMTP security {other:?}"),
                                "use security=\"plain\", \"starttls\" or \"tls\"",
                            ),
                            None => {}
                        }
                    }
                    if let Some(e) = prop(c, "port") {
                        port = self.integer("port", e, 1, 65535).map(|p| p as u16);
                    }
                }
                "username" => username = self.text_arg(c),
                "password-file" => {
                    password_file = self.readable_file_arg(c, "SMTP password file", true)
                }
                "from" | "to" => {
                    for addr in self.string_args(c) {
                        if !addr.contains('@') {
                            self.error(
                                node_at(c),
                                format!("`{name}`: {addr:?} is not an e-mail address"),
                                format!("write it like {}", example(name)),
                            );
                        } else if name == "from" {
                            from = Some(addr);
                        } else {
                            to.push(addr);
                        }
                    }
                }
                _ => {}
            }
        }
        let present = |n: &str| children(node).iter().any(|c| c.name().value() == n);
        for required in ["smtp", "from", "to"] {
            if !present(required) {
                self.error(
                    node_at(node),
                    format!("`email` has no `{required}`"),
                    format!("add {} inside it", example(required)),
                );
            }
        }
        match (present("username"), present("password-file")) {
            (true, false) => self.error(
                node_at(node),
                "`email` has a `username` but no `password-file`",
                "add `password-file \"PATH\"` with the SMTP password, or remove `username`",
            ),
            (false, true) => self.error(
                node_at(node),
                "`email` has a `password-file` but no `username`",
                "add `username \"USER\"`, or remove `password-file`",
            ),
            _ => {}
        }
        Some(Email {
            smtp: smtp?,
            port: port.unwrap_or(security.default_port()),
            security,
            username,
            password_file,
            from: from?,
            to: if to.is_empty() { return None } else { to },
        })
    }

    fn service(
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

    fn verify(&mut self, node: &KdlNode) -> Verify {
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
                _ => v.skip_alert_after = self.count_arg(c, 1).unwrap_or(v.skip_alert_after),
            }
        }
        v
    }

    fn api(&mut self, node: &KdlNode) -> Option<Api> {
        self.check_block(node, 0, &[]);
        let mut seen = HashMap::new();
        let (mut listen, mut tokens, mut token_file) = (None, Vec::<Token>::new(), None);
        let mut token_lines: HashMap<String, usize> = HashMap::new();
        for c in children(node) {
            let name = c.name().value();
            if !API.contains(&name) {
                self.unknown_node(c, API, "in `api`");
                continue;
            }
            if name != "token" && !self.first(&mut seen, c, "in `api`") {
                continue;
            }
            match name {
                "listen" => {
                    listen = self.one_arg(c, &[]).and_then(|e| {
                        let s = self.string(name, e)?;
                        self.host_port(name, e, &s).then_some(s)
                    })
                }
                "token" => {
                    let Some(e) = self.one_arg(c, &["hash"]) else {
                        continue;
                    };
                    let Some(tname) = self.string("token", e) else {
                        continue;
                    };
                    let Some(h) = prop(c, "hash") else {
                        self.error(
                            node_at(c),
                            format!("token `{tname}` has no `hash`"),
                            format!(
                                "add {} (the BLAKE3 hash of the token, never the token itself)",
                                example("hash")
                            ),
                        );
                        continue;
                    };
                    let Some(hash) = self.parsed("hash", h, |s| {
                        Token::check_hash(s).map(|_| s.to_ascii_lowercase())
                    }) else {
                        continue;
                    };
                    if let Some(line) = token_lines.get(&tname) {
                        self.error(
                            entry_at(e),
                            format!("token `{tname}` is defined twice"),
                            format!(
                                "it is first defined on line {line}; token names must be unique"
                            ),
                        );
                        continue;
                    }
                    token_lines.insert(tname.clone(), self.line_of(node_at(c)));
                    tokens.push(Token { name: tname, hash });
                }
                _ => {
                    let Some(e) = self.one_arg(c, &[]) else {
                        continue;
                    };
                    let Some(raw) = self.string(name, e) else {
                        continue;
                    };
                    let path = self.resolve(&raw);
                    if let Err(msg) = super::read_token_file(&path) {
                        let hint = if msg.starts_with("cannot read") {
                            READ_HINT.to_string()
                        } else {
                            "each line is `NAME blake3:HEX`, HEX the BLAKE3 hash of the token"
                                .into()
                        };
                        self.error(entry_at(e), msg, hint);
                    }
                    token_file = Some(path);
                }
            }
        }
        if !seen.contains_key("listen") {
            self.error(
                node_at(node),
                "`api` has no `listen` address",
                format!("add {} inside it", example("listen")),
            );
        }
        let present = |n: &str| children(node).iter().any(|c| c.name().value() == n);
        if !present("token") && !present("token-file") {
            self.error(
                node_at(node),
                "`api` has no `token` and no `token-file`",
                format!(
                    "add {}: every request to the API needs a token",
                    example("token")
                ),
            );
        }
        Some(Api {
            listen: listen?,
            tokens,
            token_file,
        })
    }
}
