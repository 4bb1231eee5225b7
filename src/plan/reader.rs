//! Reading KDL nodes and values while collecting diagnostics: the shape
//! checks (unknown nodes and properties, value counts, blocks) and typed
//! values (strings, integers, durations, percents, paths, …) every part of
//! a plan is made of. Each check reports its problem at the node or value
//! with a hint showing how the setting is written, and returns `None`, so
//! the caller goes on with a default and more problems are found.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kdl::{KdlEntry, KdlNode, KdlValue};

use super::diagnostic::{Diagnostic, Diagnostics, LineIndex};
use super::values::{closest, parse_cron, parse_duration, url_has_password, URL_PASSWORD_HINT};

/// How each setting is written, for hints. Keyed by node or property name.
pub(super) const EXAMPLES: &[(&str, &str)] = &[
    (
        "repository",
        "repository \"/srv/backup/repo\" { password-file \"password\" }",
    ),
    ("password-file", "password-file \"password\""),
    ("identity", "identity \"identity.txt\""),
    ("cache-dir", "cache-dir \"/var/cache/cairn\""),
    ("source", "source \"etc\" kind=\"files\" { path \"/etc\" }"),
    ("kind", "kind=\"files\" (or postgres, kafka, command)"),
    ("path", "path \"/etc\""),
    ("url", "url \"postgres://backup@db:5432/postgres\""),
    ("database", "database \"app\""),
    ("physical", "physical #true"),
    ("pgdata", "pgdata \"/var/lib/postgresql/15/main\""),
    (
        "restore-existing-pgdata",
        "restore-existing-pgdata \"move-aside\" (or refuse)",
    ),
    ("brokers", "brokers \"kafka1:9092,kafka2:9092\""),
    ("topic", "topic \"orders\""),
    ("include-internal", "include-internal #false"),
    ("no-messages", "no-messages #false"),
    ("kafka-config", "kafka-config \"kafka.properties\""),
    ("retries", "retries 3"),
    ("retry-delay", "retry-delay \"1s\""),
    (
        "restore-existing-topics",
        "restore-existing-topics \"recreate\" (or refuse, append)",
    ),
    ("restore-all-configs", "restore-all-configs #true"),
    ("command", "command \"pg_dump\" \"-Fc\" \"app\""),
    ("file-name", "file-name \"app.dump\""),
    ("schedule", "schedule \"nightly\" { cron \"0 2 * * *\" }"),
    ("cron", "cron \"0 2 * * *\" (minute hour day month weekday)"),
    ("timezone", "timezone \"Europe/Berlin\""),
    ("sources", "sources \"etc\" \"db\""),
    ("tag", "tag \"nightly\""),
    ("expected-duration", "expected-duration \"30m\""),
    ("keep-last", "keep-last 7"),
    ("keep-hourly", "keep-hourly 24"),
    ("keep-daily", "keep-daily 30"),
    ("keep-weekly", "keep-weekly 8"),
    ("keep-monthly", "keep-monthly 12"),
    ("keep-yearly", "keep-yearly 5"),
    ("keep-within", "keep-within \"1m\""),
    ("keep-within-hourly", "keep-within-hourly \"2d\""),
    ("keep-within-daily", "keep-within-daily \"7d\""),
    ("keep-within-weekly", "keep-within-weekly \"1m\""),
    ("keep-within-monthly", "keep-within-monthly \"1y\""),
    ("keep-within-yearly", "keep-within-yearly \"10y\""),
    ("keep-tag", "keep-tag \"release\""),
    ("critical-free", "critical-free \"5%\""),
    ("name", "name \"billing\""),
    (
        "email",
        "email { smtp \"mail.example.com\"; from \"cairn@example.com\"; to \"ops@example.com\" }",
    ),
    (
        "smtp",
        "smtp \"mail.example.com\" port=587 security=\"starttls\"",
    ),
    ("port", "port=587"),
    ("security", "security=\"starttls\" (or plain, tls)"),
    ("username", "username \"cairn\""),
    ("from", "from \"cairn@example.com\""),
    ("to", "to \"ops@example.com\""),
    ("webhook", "webhook \"https://hooks.example.com/cairn\""),
    ("missed-backup", "missed-backup \"25h\""),
    ("storage-warning", "storage-warning \"80%\""),
    ("quota", "quota \"500GiB\""),
    ("slow-factor", "slow-factor 2.0"),
    ("repeat-every", "repeat-every \"6h\""),
    (
        "service",
        "service \"app\" { stop \"systemctl stop app\"; start \"systemctl start app\" }",
    ),
    ("stop", "stop \"systemctl stop app\""),
    ("start", "start \"systemctl start app\""),
    (
        "ready",
        "ready \"curl -fs localhost:8080/health\" timeout=\"60s\"",
    ),
    (
        "stopped",
        "stopped \"! systemctl is-active app\" timeout=\"60s\"",
    ),
    ("timeout", "timeout=\"60s\""),
    ("depends-on", "depends-on \"db\""),
    (
        "postgres-scratch",
        "postgres-scratch \"postgres://postgres@scratch:5432/postgres\"",
    ),
    ("kafka-scratch", "kafka-scratch \"scratch-kafka:9092\""),
    ("skip-alert-after", "skip-alert-after 3"),
    ("read-data", "read-data \"1/4\""),
    ("listen", "listen \"127.0.0.1:8420\""),
    ("token", "token \"ci\" hash=\"blake3:<64 hex digits>\""),
    ("hash", "hash=\"blake3:<64 hex digits>\""),
    ("token-file", "token-file \"tokens\""),
];

pub(super) fn example(name: &str) -> String {
    EXAMPLES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or_else(|| format!("`{name} …`"), |(_, e)| format!("`{e}`"))
}

pub(super) const READ_HINT: &str =
    "check that the file exists and that the user cairn runs as can read it \
(relative paths are relative to the plan's directory)";

/// Message and hint for a KDL syntax error. The most likely slip — KDL v1
/// keywords (`true`, `false`, `null` without `#`) — gets its own message.
pub(super) fn syntax_problem(text: &str, d: &kdl::KdlDiagnostic) -> (String, String) {
    let at = text.get(d.span.offset()..).unwrap_or("");
    let word: String = at
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if matches!(word.as_str(), "true" | "false" | "null") {
        return (
            format!("KDL syntax: `{word}` needs a `#` in KDL v2"),
            format!("write #{word}"),
        );
    }
    let message = d.message.as_deref().unwrap_or("syntax error");
    let hint = d.help.clone().unwrap_or_else(|| {
        "plans are KDL v2: strings in double quotes, #true/#false, \
         { } around children, one node per line or separated by ;"
            .into()
    });
    (format!("KDL syntax: {message}"), hint)
}

/// The state of one check: where problems are reported and where relative
/// paths start. The node readers are in `parse.rs`.
pub(super) struct Parser<'a> {
    /// The plan file as the user named it (diagnostics show it so).
    pub(super) file: &'a Path,
    /// The plan's directory, absolute: relative paths are resolved against it.
    pub(super) dir: &'a Path,
    pub(super) lines: LineIndex<'a>,
    pub(super) diags: Vec<Diagnostic>,
}

/// Where a node starts: its name (errors about the node point here).
pub(super) fn node_at(node: &KdlNode) -> usize {
    node.name().span().offset()
}

/// Where a value or property starts.
pub(super) fn entry_at(entry: &KdlEntry) -> usize {
    entry.span().offset()
}

pub(super) fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

pub(super) fn prop<'n>(node: &'n KdlNode, name: &str) -> Option<&'n KdlEntry> {
    node.entries()
        .iter()
        .rev()
        .find(|e| e.name().is_some_and(|n| n.value() == name))
}

pub(super) fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map_or(&[], |d| d.nodes())
}

pub(super) fn describe(v: &KdlValue) -> String {
    match v {
        KdlValue::String(s) => format!("the string {s:?}"),
        KdlValue::Integer(i) => format!("the integer {i}"),
        KdlValue::Float(f) => format!("the number {f}"),
        KdlValue::Bool(b) => format!("#{b}"),
        KdlValue::Null => "#null".into(),
    }
}

impl Parser<'_> {
    pub(super) fn error(
        &mut self,
        offset: usize,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            position: Some(self.lines.position(offset)),
            message: message.into(),
            hint: hint.into(),
        });
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.lines.position(offset).0
    }

    pub(super) fn finish(&mut self) -> Diagnostics {
        let mut d = std::mem::take(&mut self.diags);
        d.sort_by_key(|d| d.position);
        Diagnostics(d)
    }

    pub(super) fn resolve(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    // ----- node shape ---------------------------------------------------

    /// Report a node that is not known here, with the closest known name.
    pub(super) fn unknown_node(&mut self, node: &KdlNode, known: &[&str], inside: &str) {
        let name = node.name().value();
        let hint = match closest(name, known.iter().copied()) {
            Some(c) => format!("did you mean `{c}`?"),
            None => format!("known here: {}", known.join(", ")),
        };
        self.error(
            node_at(node),
            format!("unknown node `{name}` {inside}"),
            hint,
        );
    }

    /// Report properties not in `allowed` (and properties given twice).
    pub(super) fn check_props(&mut self, node: &KdlNode, allowed: &[&str]) {
        let mut seen = HashSet::new();
        for e in node.entries() {
            let Some(key) = e.name() else { continue };
            let key = key.value();
            let node_name = node.name().value();
            if !allowed.contains(&key) {
                let hint = match (closest(key, allowed.iter().copied()), allowed) {
                    (Some(c), _) => format!("did you mean `{c}`?"),
                    (None, []) => format!("`{node_name}` takes no properties"),
                    (None, _) => format!("`{node_name}` takes: {}", allowed.join(", ")),
                };
                self.error(
                    entry_at(e),
                    format!("unknown property `{key}` on `{node_name}`"),
                    hint,
                );
            } else if !seen.insert(key) {
                self.error(
                    entry_at(e),
                    format!("property `{key}` given twice on `{node_name}`"),
                    "keep one of them",
                );
            }
        }
    }

    pub(super) fn check_no_children(&mut self, node: &KdlNode) {
        if node.children().is_some() {
            let name = node.name().value();
            self.error(
                node_at(node),
                format!("`{name}` takes no {{ … }} block"),
                format!("write it like {}", example(name)),
            );
        }
    }

    /// A node that is a block: no arguments beyond `max_args`, only the
    /// given properties.
    pub(super) fn check_block(&mut self, node: &KdlNode, max_args: usize, props: &[&str]) {
        self.check_props(node, props);
        if let Some(extra) = args(node).nth(max_args) {
            let name = node.name().value();
            self.error(
                entry_at(extra),
                format!("`{name}` takes {} value(s) before its block", max_args),
                format!("write it like {}", example(name)),
            );
        }
    }

    /// Report a second occurrence of a node that may occur only once.
    /// Returns whether this is the first.
    pub(super) fn first(
        &mut self,
        seen: &mut HashMap<String, usize>,
        node: &KdlNode,
        inside: &str,
    ) -> bool {
        let name = node.name().value();
        if let Some(&line) = seen.get(name) {
            self.error(
                node_at(node),
                format!("`{name}` given twice {inside}"),
                format!("it was already given on line {line}; keep one"),
            );
            return false;
        }
        seen.insert(name.to_string(), self.line_of(node_at(node)));
        true
    }

    /// A leaf node with exactly one value and no properties (except `props`).
    pub(super) fn one_arg<'n>(
        &mut self,
        node: &'n KdlNode,
        props: &[&str],
    ) -> Option<&'n KdlEntry> {
        self.check_props(node, props);
        self.check_no_children(node);
        let name = node.name().value();
        let mut it = args(node);
        let Some(first) = it.next() else {
            self.error(
                node_at(node),
                format!("`{name}` needs a value"),
                format!("write it like {}", example(name)),
            );
            return None;
        };
        if let Some(extra) = it.next() {
            self.error(
                entry_at(extra),
                format!("`{name}` takes one value, found {}", args(node).count()),
                format!("write it like {}", example(name)),
            );
        }
        Some(first)
    }

    /// Check that `node` is a leaf with no properties and at least one
    /// value, reporting each problem.
    pub(super) fn leaf_with_values(&mut self, node: &KdlNode) {
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
    }

    /// A leaf node with one or more string values.
    pub(super) fn string_args(&mut self, node: &KdlNode) -> Vec<String> {
        self.leaf_with_values(node);
        let name = node.name().value();
        args(node).filter_map(|e| self.string(name, e)).collect()
    }

    // ----- values -------------------------------------------------------

    pub(super) fn wrong_type(&mut self, name: &str, e: &KdlEntry, wanted: &str) {
        self.error(
            entry_at(e),
            format!("`{name}` takes {wanted}, not {}", describe(e.value())),
            format!("write it like {}", example(name)),
        );
    }

    pub(super) fn string(&mut self, name: &str, e: &KdlEntry) -> Option<String> {
        match e.value() {
            KdlValue::String(s) => Some(s.clone()),
            _ => {
                self.wrong_type(name, e, "a string");
                None
            }
        }
    }

    pub(super) fn string_arg(&mut self, node: &KdlNode) -> Option<String> {
        let e = self.one_arg(node, &[])?;
        self.string(node.name().value(), e)
    }

    /// A non-empty string.
    pub(super) fn text_arg(&mut self, node: &KdlNode) -> Option<String> {
        let s = self.string_arg(node)?;
        if s.trim().is_empty() {
            let name = node.name().value();
            self.error(
                node_at(node),
                format!("`{name}` is empty"),
                format!("write it like {}", example(name)),
            );
            return None;
        }
        Some(s)
    }

    pub(super) fn integer(
        &mut self,
        name: &str,
        e: &KdlEntry,
        min: i128,
        max: i128,
    ) -> Option<i128> {
        match e.value() {
            KdlValue::Integer(i) if (min..=max).contains(i) => Some(*i),
            KdlValue::Integer(i) => {
                let range = if max >= u32::MAX.into() {
                    format!("at least {min}")
                } else {
                    format!("between {min} and {max}")
                };
                self.error(
                    entry_at(e),
                    format!("`{name}` must be {range}, not {i}"),
                    format!("write it like {}", example(name)),
                );
                None
            }
            _ => {
                self.wrong_type(name, e, "an integer");
                None
            }
        }
    }

    /// A count such as `keep-daily 30`.
    pub(super) fn count_arg(&mut self, node: &KdlNode, min: u32) -> Option<u32> {
        let e = self.one_arg(node, &[])?;
        self.integer(node.name().value(), e, min.into(), u32::MAX.into())
            .map(|i| i as u32)
    }

    pub(super) fn bool_arg(&mut self, node: &KdlNode) -> Option<bool> {
        let e = self.one_arg(node, &[])?;
        match e.value() {
            KdlValue::Bool(b) => Some(*b),
            KdlValue::String(s) if s == "true" || s == "false" => {
                let name = node.name().value();
                self.error(
                    entry_at(e),
                    format!("`{name}` takes #true or #false, not the string {s:?}"),
                    format!("KDL v2 writes booleans as #{s}: {}", example(name)),
                );
                None
            }
            _ => {
                self.wrong_type(node.name().value(), e, "#true or #false");
                None
            }
        }
    }

    pub(super) fn float_arg(&mut self, node: &KdlNode) -> Option<f64> {
        let e = self.one_arg(node, &[])?;
        match e.value() {
            KdlValue::Float(f) => Some(*f),
            KdlValue::Integer(i) => Some(*i as f64),
            _ => {
                self.wrong_type(node.name().value(), e, "a number");
                None
            }
        }
    }

    /// Parse a string value with `parse`, reporting its error at the value.
    pub(super) fn parsed<T>(
        &mut self,
        name: &str,
        e: &KdlEntry,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(name, e)?;
        match parse(&s) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.error(
                    entry_at(e),
                    format!("`{name}`: {msg}"),
                    format!("write it like {}", example(name)),
                );
                None
            }
        }
    }

    pub(super) fn parsed_arg<T>(
        &mut self,
        node: &KdlNode,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let e = self.one_arg(node, &[])?;
        self.parsed(node.name().value(), e, parse)
    }

    /// A duration of more than zero.
    pub(super) fn duration(&mut self, name: &str, e: &KdlEntry) -> Option<Duration> {
        self.parsed(name, e, |s| {
            let d = parse_duration(s)?;
            if d.is_zero() {
                return Err(format!("{s:?} is zero; it must be longer"));
            }
            Ok(d)
        })
    }

    pub(super) fn duration_arg(&mut self, node: &KdlNode) -> Option<Duration> {
        let e = self.one_arg(node, &[])?;
        self.duration(node.name().value(), e)
    }

    pub(super) fn cron_arg(&mut self, node: &KdlNode) -> Option<String> {
        self.parsed_arg(node, |s| parse_cron(s).map(|_| s.trim().to_string()))
    }

    pub(super) fn timezone_arg(&mut self, node: &KdlNode) -> Option<String> {
        let e = self.one_arg(node, &[])?;
        let name = self.string("timezone", e)?;
        if jiff::tz::TimeZone::get(&name).is_ok() {
            return Some(name);
        }
        let db = jiff::tz::db();
        let known: Vec<String> = db.available().map(|n| n.to_string()).collect();
        // "Berlin" is far from "Europe/Berlin" by edit distance; match the city too.
        let city = known.iter().find(|k| {
            k.rsplit_once('/')
                .is_some_and(|(_, c)| c.eq_ignore_ascii_case(&name))
        });
        let close = city
            .map(String::as_str)
            .or_else(|| closest(&name, known.iter().map(String::as_str)));
        let hint = match close {
            Some(c) => format!("did you mean \"{c}\"?"),
            None => {
                "use an IANA name such as \"UTC\", \"Europe/Berlin\" or \"America/New_York\"".into()
            }
        };
        self.error(entry_at(e), format!("unknown time zone {name:?}"), hint);
        None
    }

    /// A path, made absolute against the plan's directory.
    pub(super) fn path_arg(&mut self, node: &KdlNode) -> Option<PathBuf> {
        self.text_arg(node).map(|p| self.resolve(&p))
    }

    /// A path to a file cairn must be able to read (a secret or settings),
    /// checked now so a broken plan fails in CI, not at 02:00.
    pub(super) fn readable_file_arg(
        &mut self,
        node: &KdlNode,
        what: &str,
        secret: bool,
    ) -> Option<PathBuf> {
        let e = self.one_arg(node, &[])?;
        let raw = self.string(node.name().value(), e)?;
        let path = self.resolve(&raw);
        self.check_readable(entry_at(e), &path, what, secret);
        Some(path)
    }

    pub(super) fn check_readable(&mut self, offset: usize, path: &Path, what: &str, secret: bool) {
        // Bounded: a plan naming /dev/zero must not make `plan check` read forever.
        let limit = if secret {
            crate::fsutil::MAX_SECRET_FILE
        } else {
            16 << 20
        };
        match crate::fsutil::read_small(path, limit) {
            Err(e) => self.error(
                offset,
                format!("cannot read {what} {}: {e}", path.display()),
                READ_HINT,
            ),
            Ok(bytes) if secret && bytes.iter().all(u8::is_ascii_whitespace) => self.error(
                offset,
                format!("{what} {} is empty", path.display()),
                "write the secret on its first line",
            ),
            Ok(_) => {}
        }
    }

    /// `HOST:PORT`, port a number.
    pub(super) fn host_port(&mut self, name: &str, e: &KdlEntry, value: &str) -> bool {
        let ok = value.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains(',') && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !ok {
            self.error(
                entry_at(e),
                format!("`{name}`: {value:?} is not HOST:PORT"),
                format!("write it like {}", example(name)),
            );
        }
        ok
    }

    /// A comma-separated list of `HOST:PORT` (Kafka brokers); every bad
    /// entry is reported.
    pub(super) fn host_ports_arg(&mut self, node: &KdlNode) -> Option<String> {
        let name = node.name().value();
        let e = self.one_arg(node, &[])?;
        let list = self.string(name, e)?;
        let bad = list
            .split(',')
            .filter(|hp| !self.host_port(name, e, hp.trim()))
            .count();
        (bad == 0).then_some(list)
    }

    /// A `postgres://` URL without a password.
    pub(super) fn postgres_url_arg(&mut self, node: &KdlNode) -> Option<String> {
        let e = self.one_arg(node, &[])?;
        let name = node.name().value();
        let url = self.string(name, e)?;
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            self.error(
                entry_at(e),
                format!("`{name}`: {url:?} is not a postgres:// URL"),
                format!("write it like {}", example(name)),
            );
            return None;
        };
        if url_has_password(rest) {
            self.error(
                entry_at(e),
                format!("`{name}` contains a password"),
                URL_PASSWORD_HINT,
            );
            return None;
        }
        Some(url)
    }
}
