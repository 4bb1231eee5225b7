//! `source` nodes: the settings of each kind (files, postgres, kafka,
//! command), checked against that kind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use kdl::KdlNode;

use super::Named;
use crate::plan::reader::{children, entry_at, example, node_at, prop, Parser};
use crate::plan::values::{closest, parse_duration};
use crate::plan::{
    CommandSource, FilesSource, KafkaSource, PostgresSource, Source, SourceSettings,
};
use crate::source::kafka::ExistingTopics;
use crate::source::pg::ExistingPgdata;

const SOURCE_KINDS: &[(&str, &[&str])] = &[
    ("files", &["path"]),
    (
        "postgres",
        &[
            "url",
            "database",
            "physical",
            "archive-timeout",
            "pgdata",
            "restore-existing-pgdata",
        ],
    ),
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
            "restore-existing-topics",
            "restore-all-configs",
        ],
    ),
    ("command", &["command", "file-name"]),
];

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

impl Parser<'_> {
    pub(super) fn source(&mut self, node: &KdlNode) -> Option<(Source, Named)> {
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
        let archive_timeout = s.get("archive-timeout").and_then(|c| {
            let e = self.one_arg(c, &[])?;
            self.parsed("archive-timeout", e, parse_duration)
        });
        let pgdata = s
            .get("pgdata")
            .and_then(|c| self.pgdata_arg(c, physical, label));
        let existing = s.get("restore-existing-pgdata").and_then(|c| {
            let e = self.one_arg(c, &[])?;
            let v = self.string("restore-existing-pgdata", e)?;
            let found = ExistingPgdata::NAMES.iter().find(|(n, _)| *n == v);
            if found.is_none() {
                self.error(
                    entry_at(e),
                    format!("unknown `restore-existing-pgdata` value {v:?}"),
                    "use \"refuse\" (the default) or \"move-aside\"",
                );
            } else if s.get("pgdata").is_none() {
                self.error(
                    node_at(c),
                    format!("{label}: `restore-existing-pgdata` without `pgdata`"),
                    format!("add {} to say which directory", example("pgdata")),
                );
            }
            found.map(|(_, x)| *x)
        });
        Some(SourceSettings::Postgres(PostgresSource {
            url: url?,
            databases,
            physical,
            archive_timeout: archive_timeout.unwrap_or(crate::source::pg::ARCHIVE_TIMEOUT),
            pgdata,
            restore_existing_pgdata: existing.unwrap_or_default(),
        }))
    }

    /// `pgdata`: where `restore --plan` puts a physical backup. An
    /// absolute directory below `/` whose parent exists, on a physical source.
    fn pgdata_arg(&mut self, c: &KdlNode, physical: bool, label: &str) -> Option<PathBuf> {
        let path = self.path_arg(c)?;
        // `..` would make "the parent" and "moved aside" mean other places.
        let plain = path
            .components()
            .all(|p| !matches!(p, std::path::Component::ParentDir));
        if !physical {
            self.error(
                node_at(c),
                format!("{label}: `pgdata` is set but the source is not physical"),
                "`pgdata` is where `restore --plan` puts a physical backup; add `physical #true` or remove `pgdata`",
            );
        }
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            _ if !plain => self.error(
                node_at(c),
                format!("`pgdata` {} contains `..`", path.display()),
                "write the data directory's path without `..`",
            ),
            None => self.error(
                node_at(c),
                format!("`pgdata` {} is not a directory below /", path.display()),
                format!("write it like {}", example("pgdata")),
            ),
            Some(parent) if !parent.is_dir() => self.error(
                node_at(c),
                format!(
                    "`pgdata` {}: its parent directory {} does not exist",
                    path.display(),
                    parent.display()
                ),
                "a restore creates the data directory itself, not the directories above it; correct the path or create them",
            ),
            Some(_) => {}
        }
        Some(path)
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
        let existing = s.get("restore-existing-topics").and_then(|c| {
            let e = self.one_arg(c, &[])?;
            let v = self.string("restore-existing-topics", e)?;
            let found = ExistingTopics::NAMES.iter().find(|(n, _)| *n == v);
            if found.is_none() {
                self.error(
                    entry_at(e),
                    format!("unknown `restore-existing-topics` value {v:?}"),
                    "use \"refuse\" (the default), \"append\" or \"recreate\"",
                );
            }
            found.map(|(_, x)| *x)
        });
        let all_configs = s.get("restore-all-configs").and_then(|c| self.bool_arg(c));
        Some(SourceSettings::Kafka(KafkaSource {
            brokers: brokers?,
            topics,
            include_internal: include_internal.unwrap_or(false),
            no_messages: no_messages.unwrap_or(false),
            kafka_config,
            retries: retries.unwrap_or(3),
            retry_delay: retry_delay.unwrap_or(Duration::from_secs(1)),
            restore_existing_topics: existing.unwrap_or_default(),
            restore_all_configs: all_configs.unwrap_or(false),
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
}
