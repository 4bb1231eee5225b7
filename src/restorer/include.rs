//! `restore --include PATH`: which of a snapshot's nodes a restore takes,
//! and the patterns that take none (an error for the caller, exit 2).

use crate::repo::Node;

/// Whether `--include` pattern `p` (trimmed of `/` at both ends) matches
/// stored path `path`: that path or one below it, whole names only
/// (`etc/host` does not match `etc/hostname`).
fn include_matches(p: &str, path: &str) -> bool {
    p.is_empty() || path == p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
}

fn trimmed(include: &[String]) -> Vec<&str> {
    include
        .iter()
        .map(|p| p.trim_start_matches('/').trim_end_matches('/'))
        .collect()
}

/// The `--include` patterns that match no node: they would restore
/// nothing, which the caller reports as an error.
pub fn unmatched_includes(nodes: &[Node], include: &[String]) -> Vec<String> {
    include
        .iter()
        .zip(trimmed(include))
        .filter(|(_, p)| !nodes.iter().any(|n| include_matches(p, &n.path)))
        .map(|(given, _)| given.clone())
        .collect()
}

/// Keep nodes equal to or below one of `include` (no filter when empty),
/// and the directories above what a pattern matched. Each pattern is a
/// stored path, with or without a leading `/`.
pub fn filter_nodes(nodes: Vec<Node>, include: &[String]) -> Vec<Node> {
    if include.is_empty() {
        return nodes;
    }
    let unmatched = unmatched_includes(&nodes, include);
    let inc: Vec<&str> = include
        .iter()
        .zip(trimmed(include))
        .filter(|(given, _)| !unmatched.contains(given))
        .map(|(_, p)| p)
        .collect();
    nodes
        .into_iter()
        .filter(|n| {
            inc.iter().any(|p| {
                include_matches(p, &n.path)
                    || p.strip_prefix(n.path.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
        })
        .collect()
}

/// For a pattern that matched nothing: up to `max` stored paths it may
/// have meant — those it is the start of, else those in its directory.
pub fn near_paths<'a>(nodes: &'a [Node], pattern: &str, max: usize) -> Vec<&'a str> {
    let p = pattern.trim_start_matches('/').trim_end_matches('/');
    let mut near: Vec<&str> = nodes
        .iter()
        .map(|n| n.path.as_str())
        .filter(|path| path.starts_with(p))
        .collect();
    if near.is_empty() {
        let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
        near = nodes
            .iter()
            .map(|n| n.path.as_str())
            .filter(|path| match dir {
                "" => !path.contains('/'),
                d => path
                    .strip_prefix(d)
                    .and_then(|r| r.strip_prefix('/'))
                    .is_some_and(|r| !r.contains('/')),
            })
            .collect();
    }
    near.sort_unstable();
    near.truncate(max);
    near
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::NodeKind;

    fn node(path: &str, kind: NodeKind) -> Node {
        Node {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime_ns: 0,
            uid: 0,
            gid: 0,
            size: 0,
            content: Vec::new(),
            target: None,
            inode: 0,
            ctime_ns: 0,
        }
    }

    #[test]
    fn a_pattern_matches_whole_names_and_takes_the_directories_above() {
        let nodes = vec![
            node("etc", NodeKind::Dir),
            node("etc/hostname", NodeKind::File),
            node("etc/hosts", NodeKind::File),
            node("var", NodeKind::Dir),
        ];
        let inc = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A prefix of a name matches nothing, and takes no directory above.
        assert_eq!(
            unmatched_includes(&nodes, &inc(&["etc/hostnam"])),
            ["etc/hostnam"]
        );
        assert!(filter_nodes(nodes.clone(), &inc(&["etc/hostnam"])).is_empty());
        assert_eq!(near_paths(&nodes, "/etc/hostnam", 5), ["etc/hostname"]);
        assert_eq!(
            near_paths(&nodes, "etc/x", 5),
            ["etc/hostname", "etc/hosts"]
        );
        // A whole name: it and the directory above.
        let kept: Vec<String> = filter_nodes(nodes.clone(), &inc(&["/etc/hosts/"]))
            .into_iter()
            .map(|n| n.path)
            .collect();
        assert_eq!(kept, ["etc", "etc/hosts"]);
        assert!(unmatched_includes(&nodes, &inc(&["/etc/hosts/", "var"])).is_empty());
    }
}
