//! The rules every stored node path obeys (spec/repository.md, "Node paths").
//!
//! A node path names where a node lands below a restore's target, so a path
//! that could name something outside it, or that the file system cannot
//! hold, must never be stored: writers check every node list before storing
//! it ([`check_tree`]), and readers (`restore`, `check`) check it again
//! before they act on it, because a repository's content is only as
//! trustworthy as its key's holders.

use super::{Node, NodeKind};
use rustc_hash::FxHashMap;

/// The longest name of one path component (Linux's `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// The longest whole path (Linux's `PATH_MAX`, less its NUL).
pub const PATH_MAX: usize = 4095;

/// Why `path` cannot be a node path, or `None` when it can: relative,
/// `/`-separated, every component non-empty, neither `.` nor `..`, without
/// NUL, at most [`NAME_MAX`] bytes each and [`PATH_MAX`] in all.
pub fn problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("the path is empty".into());
    }
    if path.len() > PATH_MAX {
        return Some(format!("the path is longer than {PATH_MAX} bytes"));
    }
    if path.starts_with('/') {
        return Some("the path is absolute".into());
    }
    if path.contains('\0') {
        return Some("the path contains a NUL byte".into());
    }
    for c in path.split('/') {
        match c {
            "" => return Some("the path has an empty component (`//` or a trailing `/`)".into()),
            "." | ".." => return Some(format!("the path has a `{c}` component")),
            c if c.len() > NAME_MAX => {
                return Some(format!(
                    "a component is {} bytes long, more than the {NAME_MAX} a file name can have",
                    c.len()
                ))
            }
            _ => {}
        }
    }
    None
}

/// Why `nodes` cannot be restored as one tree, or `None`: every path obeys
/// [`problem`], no path appears twice, and nothing lies below a node that
/// is not a directory (a file or a symlink cannot hold other nodes).
pub fn tree_problem(nodes: &[Node]) -> Option<String> {
    if let Some((path, p)) = nodes
        .iter()
        .find_map(|n| Some((&n.path, problem(&n.path)?)))
    {
        return Some(format!("{path:?}: {p}"));
    }
    list_problem(nodes.iter().map(|n| (n.path.as_str(), n.kind)))
}

/// The list-wide rules of [`tree_problem`] (each path once, nothing below a
/// file or symlink) over paths that each obey [`problem`], given with their
/// kinds in any order: `check` checks each path once per distinct
/// node-list chunk and the whole list per snapshot.
pub fn list_problem<'a>(nodes: impl IntoIterator<Item = (&'a str, NodeKind)>) -> Option<String> {
    let nodes: Vec<(&str, NodeKind)> = nodes.into_iter().collect();
    let mut kinds: FxHashMap<&str, NodeKind> =
        FxHashMap::with_capacity_and_hasher(nodes.len(), Default::default());
    for &(path, kind) in &nodes {
        if kinds.insert(path, kind).is_some() {
            return Some(format!("{path:?} is stored twice"));
        }
    }
    // Siblings usually follow each other: their parent's chain is walked
    // once.
    let mut last_parent = None;
    for &(path, _) in &nodes {
        let parent = path.rsplit_once('/').map(|(p, _)| p);
        if parent.is_none() || parent == last_parent {
            continue;
        }
        last_parent = parent;
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            match kinds.get(parent) {
                Some(NodeKind::Dir) | None => {}
                Some(k) => {
                    return Some(format!(
                        "{path:?} lies below {parent:?}, which is a {}",
                        if *k == NodeKind::Symlink {
                            "symlink"
                        } else {
                            "file"
                        }
                    ))
                }
            }
            at = parent;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, kind: NodeKind) -> Node {
        Node {
            kind,
            ..Node::stream(path, 0, Vec::new())
        }
    }

    #[test]
    fn paths_that_could_leave_the_target_are_refused() {
        for bad in [
            "", "/etc", "..", ".", "../x", "a/../b", "a/./b", "a//b", "a/", "a\0b",
        ] {
            assert!(problem(bad).is_some(), "{bad:?} must be refused");
        }
        let long = "n".repeat(256);
        assert!(problem(&long).unwrap().contains("256 bytes"));
        assert!(problem(&"a/".repeat(2048)).is_some());
        for good in ["a", "a/b", ".hidden", "a/..b", "...", &"n".repeat(255)] {
            assert_eq!(problem(good), None, "{good:?}");
        }
    }

    #[test]
    fn a_tree_holds_each_path_once_and_nothing_below_a_file() {
        let ok = [
            node("a", NodeKind::Dir),
            node("a/f", NodeKind::File),
            node("b/c", NodeKind::File), // parents need not be stored
        ];
        assert_eq!(tree_problem(&ok), None);
        let twice = [node("a", NodeKind::File), node("a", NodeKind::File)];
        assert!(tree_problem(&twice).unwrap().contains("twice"));
        let below_link = [node("a", NodeKind::Symlink), node("a/b/c", NodeKind::File)];
        assert!(tree_problem(&below_link).unwrap().contains("symlink"));
        let bad = [node("a/../b", NodeKind::File)];
        assert!(tree_problem(&bad).unwrap().contains("`..`"));
    }
}
