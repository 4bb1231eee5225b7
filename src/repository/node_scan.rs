//! Many node lists read at the cost of their distinct chunks.
//!
//! `check` and `prune` look at every node of every snapshot. Snapshots of
//! a tree that changes little share most of their node-list chunks (the
//! list is cut by content, so an unchanged run of nodes gives the same
//! chunks), yet each used to be read, decrypted and parsed whole: at 50
//! snapshots of 200,000 files, `check` took 61 s where restic, which
//! reads each tree once, took 5 s (benches/README.md "Many files, many
//! snapshots").
//!
//! A [`NodeScan`] reads each distinct chunk once per command. The whole
//! lines inside a chunk depend only on the chunk's bytes: the caller makes
//! what it needs of them once (a *piece*, e.g. the chunk ids they use) and
//! the scan keeps it under the chunk's id. What a chunk cannot tell alone
//! is the line it begins in the middle of and the line it ends in the
//! middle of: the scan keeps those partial bytes and, for every list,
//! joins them with their neighbours' and parses the *straddling* nodes
//! again (about one node per 8 KiB chunk instead of every node).

use super::Repository;
use crate::error::{Error, Result};
use crate::repo::{ChunkId, Node};
use std::collections::HashMap;

/// How many unread chunks are fetched together: the bytes in memory at
/// once stay near this many times the average chunk size.
const BATCH: usize = 1024;

/// What the scan keeps of one distinct chunk.
struct Piece<M> {
    /// The bytes before the first newline: the end of a line begun in an
    /// earlier chunk (the whole chunk when it has no newline).
    head: Box<[u8]>,
    /// The bytes after the last newline: the start of a line that a later
    /// chunk ends; `None` when the chunk has no newline.
    tail: Option<Box<[u8]>>,
    /// What the caller made of the whole lines between.
    inner: M,
}

/// One node list as the scan saw it.
pub struct Visit<'s, M> {
    /// The caller's piece of each chunk of the list, in order (a chunk that
    /// occurs twice gives its piece twice).
    pub pieces: Vec<&'s M>,
    /// The nodes whose line crosses a chunk boundary or begins one, parsed
    /// for this list.
    pub straddling: Vec<Node>,
}

/// Reads node lists, each distinct chunk once (see the module's text).
pub struct NodeScan<'r, M> {
    repo: &'r Repository,
    seen: HashMap<ChunkId, Piece<M>>,
}

impl<'r, M> NodeScan<'r, M> {
    pub fn new(repo: &'r Repository) -> Self {
        NodeScan {
            repo,
            seen: HashMap::new(),
        }
    }

    /// Read the node list made of chunks `tree`. `inner` is called with the
    /// nodes lying wholly inside each chunk this scan has not met before;
    /// what it returns is that chunk's piece from then on.
    pub fn visit(
        &mut self,
        tree: &[ChunkId],
        mut inner: impl FnMut(Vec<Node>) -> Result<M>,
    ) -> Result<Visit<'_, M>> {
        let mut straddling = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        for window in tree.chunks(BATCH) {
            self.read_unseen(window, &mut inner)?;
            for id in window {
                // Every chunk of the window was read above or earlier.
                let Some(p) = self.seen.get(id) else {
                    return Err(Error::integrity(format!(
                        "node-list chunk {} could not be read",
                        id.short()
                    )));
                };
                carry.extend_from_slice(&p.head);
                if let Some(tail) = &p.tail {
                    straddling.extend(parse(&carry)?);
                    carry.clear();
                    carry.extend_from_slice(tail);
                }
            }
        }
        straddling.extend(parse(&carry)?);
        let pieces = tree
            .iter()
            .filter_map(|c| self.seen.get(c))
            .map(|p| &p.inner);
        Ok(Visit {
            pieces: pieces.collect(),
            straddling,
        })
    }

    /// Read the chunks of `window` this scan has not met, in one batch, and
    /// keep their pieces. A window seen whole before (most of every list
    /// after the first) reads nothing.
    fn read_unseen(
        &mut self,
        window: &[ChunkId],
        inner: &mut impl FnMut(Vec<Node>) -> Result<M>,
    ) -> Result<()> {
        let mut unread: Vec<ChunkId> = window
            .iter()
            .filter(|c| !self.seen.contains_key(c))
            .copied()
            .collect();
        if unread.is_empty() {
            return Ok(());
        }
        unread.sort_unstable();
        unread.dedup();
        let mut failed = None;
        self.repo.for_each_listed_chunk(&unread, |id, data| {
            if failed.is_some() {
                return;
            }
            match cut(data, inner) {
                Ok(piece) => {
                    self.seen.insert(*id, piece);
                }
                Err(e) => failed = Some(e.context(format!("node-list chunk {}", id.short()))),
            }
        })?;
        failed.map_or(Ok(()), Err)
    }
}

/// Split a chunk into its partial first line, whole lines and partial last
/// line, and let `inner` make its piece of the whole lines.
fn cut<M>(data: &[u8], inner: &mut impl FnMut(Vec<Node>) -> Result<M>) -> Result<Piece<M>> {
    let first = data.iter().position(|b| *b == b'\n');
    let last = data.iter().rposition(|b| *b == b'\n');
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Piece {
            head: data.into(),
            tail: None,
            inner: inner(Vec::new())?,
        });
    };
    // One newline: no whole line inside.
    let whole = data.get(first + 1..last).unwrap_or_default();
    Ok(Piece {
        head: data[..first].into(),
        tail: Some(data[last + 1..].into()),
        inner: inner(parse(whole)?)?,
    })
}

fn parse(lines: &[u8]) -> Result<Vec<Node>> {
    crate::repo::encode::parse_node_list(lines)
        .map_err(|e| Error::integrity(format!("node list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::encode::node_list;

    /// Every 50th file is large: its line (300 chunk ids, ~20 KB) spans
    /// chunks, so some chunks hold no newline and some exactly one.
    fn file(i: usize) -> Node {
        let content = if i % 50 == 0 {
            (0..300u64)
                .map(|k| {
                    ChunkId::from_raw(crate::repo::Id::of_bytes(
                        &(i as u64 * 1000 + k).to_le_bytes(),
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        Node {
            mtime_ns: 1_700_000_000_000_000_000,
            ..Node::stream(format!("dir/file-{i:06}.txt"), i as u64, content)
        }
    }

    /// The three parts of a chunk, whatever its newlines.
    #[test]
    fn a_chunk_is_cut_at_its_first_and_last_newline() {
        let line = String::from_utf8(node_list(&[file(1)])).unwrap();
        let two = format!("{line}{line}");
        for (data, head, tail, whole) in [
            ("", "", None, 0),
            ("abc", "abc", None, 0),
            ("\n", "", Some(""), 0),
            ("ab\ncd", "ab", Some("cd"), 0),
            (&*format!("ab\n{line}cd"), "ab", Some("cd"), 1),
            (&*format!("ab\n{two}"), "ab", Some(""), 2),
        ] {
            let p = cut(data.as_bytes(), &mut |ns: Vec<Node>| Ok(ns.len())).unwrap();
            assert_eq!(&*p.head, head.as_bytes(), "{data:?}");
            assert_eq!(p.tail.as_deref(), tail.map(str::as_bytes), "{data:?}");
            assert_eq!(p.inner, whole, "{data:?}");
        }
    }

    /// Whatever the cut points, the pieces and the straddling nodes of a
    /// list are its nodes, in order; a list sharing most chunks with one
    /// seen before is read without parsing the shared chunks again.
    #[test]
    fn a_scan_sees_every_node_once_per_list_and_parses_shared_chunks_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repository::test_repo(dir.path());
        let mut nodes: Vec<Node> = (0..3000).map(file).collect();
        let store = |nodes: &[Node]| {
            let (ids, stored, _) =
                crate::archiver::with_packer(&repo, |p| crate::archiver::store_nodes(p, nodes))
                    .unwrap();
            repo.write_index(stored.packs).unwrap();
            repo.sync_index().unwrap();
            ids
        };
        let one = store(&nodes);
        nodes[1500].size = 7;
        let two = store(&nodes);
        assert!(one.len() > 10, "{} chunks", one.len());
        let mut scan = NodeScan::new(&repo);
        let mut parsed = 0;
        for (tree, want_size) in [(&one, 1500), (&two, 7), (&one, 1500)] {
            let visit = scan
                .visit(tree, |ns| {
                    parsed += ns.len();
                    Ok(ns
                        .iter()
                        .map(|n| (n.path.clone(), n.size))
                        .collect::<Vec<_>>())
                })
                .unwrap();
            let mut seen: Vec<(String, u64)> =
                visit.pieces.into_iter().flatten().cloned().collect();
            seen.extend(visit.straddling.iter().map(|n| (n.path.clone(), n.size)));
            seen.sort();
            let want: Vec<(String, u64)> = (0..3000)
                .map(file)
                .map(|n| {
                    let size = if n.size == 1500 { want_size } else { n.size };
                    (n.path, size)
                })
                .collect();
            assert_eq!(seen, want);
        }
        // The first list parsed nearly all of its nodes inside chunks; the
        // second only those of the chunks around the change; the third none.
        assert!(parsed < 3000 + 300, "parsed {parsed} nodes inside chunks");
        assert!(node_list(&nodes).len() > 100_000);
    }
}
