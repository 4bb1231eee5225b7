//! Service dependencies as a graph: finding cycles (which would make a
//! restore wait forever for a service to start) and the order in which
//! services start.

use std::collections::{BTreeSet, HashMap};

/// Every elementary cycle reachable by a depth-first walk, each once, as the
/// list of names it passes through, starting and ending with the node that
/// comes first in `nodes` (`["a", "b", "a"]` for a → b → a).
///
/// `nodes` is in declaration order, each with the names it depends on;
/// dependencies on names not in `nodes` are ignored (they are reported
/// separately as unknown).
pub fn find_cycles(nodes: &[(&str, Vec<&str>)]) -> Vec<Vec<String>> {
    let order: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    let mut state = vec![Visit::New; nodes.len()];
    let mut seen = BTreeSet::new();
    let mut cycles = Vec::new();
    let mut stack = Vec::new();
    for start in 0..nodes.len() {
        if state[start] == Visit::New {
            walk(
                start,
                nodes,
                &order,
                &mut state,
                &mut stack,
                &mut seen,
                &mut cycles,
            );
        }
    }
    cycles
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    OnStack,
    Done,
}

fn walk(
    at: usize,
    nodes: &[(&str, Vec<&str>)],
    order: &HashMap<&str, usize>,
    state: &mut [Visit],
    stack: &mut Vec<usize>,
    seen: &mut BTreeSet<Vec<usize>>,
    cycles: &mut Vec<Vec<String>>,
) {
    state[at] = Visit::OnStack;
    stack.push(at);
    for dep in &nodes[at].1 {
        let Some(&next) = order.get(dep) else {
            continue;
        };
        match state[next] {
            Visit::New => walk(next, nodes, order, state, stack, seen, cycles),
            Visit::OnStack => {
                let from = stack.iter().position(|&i| i == next).unwrap_or(0);
                let mut cycle: Vec<usize> = stack[from..].to_vec();
                // Start at the node declared first, so each cycle has one spelling.
                let first = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                cycle.rotate_left(first);
                if seen.insert(cycle.clone()) {
                    let mut names: Vec<String> =
                        cycle.iter().map(|&i| nodes[i].0.to_string()).collect();
                    names.push(nodes[cycle[0]].0.to_string());
                    cycles.push(names);
                }
            }
            Visit::Done => {}
        }
    }
    stack.pop();
    state[at] = Visit::Done;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycles(edges: &[(&'static str, &[&'static str])]) -> Vec<String> {
        let nodes: Vec<(&str, Vec<&str>)> = edges.iter().map(|(n, d)| (*n, d.to_vec())).collect();
        find_cycles(&nodes)
            .into_iter()
            .map(|c| c.join(" -> "))
            .collect()
    }

    #[test]
    fn no_cycle() {
        assert!(cycles(&[
            ("app", &["db", "kafka"]),
            ("db", &[]),
            ("kafka", &["zk"]),
            ("zk", &[])
        ])
        .is_empty());
        assert!(cycles(&[]).is_empty());
    }

    #[test]
    fn two_node_cycle_named_from_first_declared() {
        assert_eq!(cycles(&[("a", &["b"]), ("b", &["a"])]), ["a -> b -> a"]);
    }

    #[test]
    fn self_dependency() {
        assert_eq!(cycles(&[("a", &["a"])]), ["a -> a"]);
    }

    #[test]
    fn longer_cycle_with_tail_and_unknown_names() {
        assert_eq!(
            cycles(&[
                ("web", &["app"]),
                ("app", &["db", "ghost"]),
                ("db", &["cache"]),
                ("cache", &["app"]),
            ]),
            ["app -> db -> cache -> app"]
        );
    }

    #[test]
    fn two_separate_cycles() {
        assert_eq!(
            cycles(&[("a", &["b"]), ("b", &["a"]), ("c", &["d"]), ("d", &["c"])]),
            ["a -> b -> a", "c -> d -> c"]
        );
    }

    #[test]
    fn cycle_entered_late_starts_at_first_declared() {
        assert_eq!(
            cycles(&[("x", &["c"]), ("a", &["b"]), ("b", &["c"]), ("c", &["a"])]),
            ["a -> b -> c -> a"]
        );
    }
}
