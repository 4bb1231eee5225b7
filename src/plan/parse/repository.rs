//! The `repository` node: where backups go and how to open them.

use std::collections::HashMap;

use kdl::KdlNode;

use crate::plan::reader::{args, children, example, node_at, Parser};
use crate::plan::Repository;

const REPOSITORY: &[&str] = &["password-file", "identity", "cache-dir"];

impl Parser<'_> {
    pub(super) fn repository(&mut self, node: &KdlNode) -> Option<Repository> {
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
}
