//! The `api` node: the HTTP API of `cairn serve` and its tokens.

use std::collections::HashMap;

use kdl::KdlNode;

use crate::plan::reader::{children, entry_at, example, node_at, prop, Parser, READ_HINT};
use crate::plan::{Api, Token};

const API: &[&str] = &["listen", "token", "token-file"];

impl Parser<'_> {
    pub(super) fn api(&mut self, node: &KdlNode) -> Option<Api> {
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
                    if let Err(msg) = crate::plan::read_token_file(&path) {
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
