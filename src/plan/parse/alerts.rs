//! The `alerts` node and its `email` settings.

use std::collections::HashMap;

use kdl::KdlNode;

use crate::plan::reader::{children, entry_at, example, node_at, prop, Parser};
use crate::plan::values::{Percent, Size};
use crate::plan::{Alerts, Email, SmtpSecurity};

const ALERTS: &[&str] = &[
    "email",
    "webhook",
    "missed-backup",
    "storage-warning",
    "quota",
    "slow-factor",
    "repeat-every",
    "archive-lag",
];
const EMAIL: &[&str] = &["smtp", "username", "password-file", "from", "to"];

impl Parser<'_> {
    pub(super) fn alerts(&mut self, node: &KdlNode) -> Alerts {
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
                "archive-lag" => a.archive_lag = self.duration_arg(c).unwrap_or(a.archive_lag),
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
}
