//! The bytes of the plaintext files cairn stores: one writer and one reader
//! per encoding, so the golden tests in `golden.rs` see exactly what is
//! written. Sealing (zstd, then age) is in `crypto`; this is what it seals.

use super::{Config, KeyFile, Node, PACK_MAGIC, PACK_TRAILER_LEN};
use serde::Serialize;

/// `config`: pretty JSON (the one plaintext file; people read it).
pub fn config_json(config: &Config) -> Vec<u8> {
    serde_json::to_vec_pretty(config).expect("a config always serializes")
}

/// Compact JSON: the plaintext of a sealed file (snapshot, index, lock,
/// proof, WAL entry, pack header) and of the key material in a key file.
pub fn plaintext_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// A key file: pretty JSON, like the config.
pub fn key_file_json(key: &KeyFile) -> Vec<u8> {
    serde_json::to_vec_pretty(key).expect("a key file always serializes")
}

/// A node list: one compact JSON [`Node`] per line, each ending in `\n`.
pub fn node_list(nodes: &[Node]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in nodes {
        serde_json::to_writer(&mut out, n).expect("a node always serializes");
        out.push(b'\n');
    }
    out
}

/// The bytes of [`node_list`] as a reader, one node serialized at a time:
/// the whole list is never in memory twice (at 200,000 files it was ~33 MB,
/// and its growing buffer ~67 MB of a snapshot's peak; issue 29).
pub fn node_list_reader(nodes: &[Node]) -> NodeListReader<'_> {
    NodeListReader {
        nodes: nodes.iter(),
        line: Vec::new(),
        pos: 0,
    }
}

pub struct NodeListReader<'a> {
    nodes: std::slice::Iter<'a, Node>,
    line: Vec<u8>,
    pos: usize,
}

impl std::io::Read for NodeListReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.line.len() {
            let Some(n) = self.nodes.next() else {
                return Ok(0);
            };
            self.line.clear();
            self.pos = 0;
            serde_json::to_writer(&mut self.line, n).expect("a node always serializes");
            self.line.push(b'\n');
        }
        let k = buf.len().min(self.line.len() - self.pos);
        buf[..k].copy_from_slice(&self.line[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

/// Reads a node list (empty lines are allowed); the problem names the line.
pub fn parse_node_list(bytes: &[u8]) -> Result<Vec<Node>, String> {
    let mut p = NodeListParser::default();
    p.push(bytes)?;
    p.finish()
}

/// Parses a node list as its bytes arrive, chunk by chunk, so that a
/// restore does not hold the whole list as bytes beside its nodes (at
/// 200,000 files, 25 MB of its peak; issue 29).
#[derive(Default)]
pub struct NodeListParser {
    nodes: Vec<Node>,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Lines ended so far.
    lines: usize,
}

impl NodeListParser {
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), String> {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.line(&data[..i])?;
            } else {
                self.partial.extend_from_slice(&data[..i]);
                let whole = std::mem::take(&mut self.partial);
                self.line(&whole)?;
            }
            data = &data[i + 1..];
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    fn line(&mut self, l: &[u8]) -> Result<(), String> {
        self.lines += 1;
        if !l.is_empty() {
            let mut node: Node = serde_json::from_slice(l)
                .map_err(|e| format!("invalid node on line {}: {e}", self.lines))?;
            // serde grows a list from empty, so one chunk id gets room for
            // four: 96 bytes wasted by every small file a restore holds.
            node.content.shrink_to_fit();
            self.nodes.push(node);
        }
        Ok(())
    }

    /// The nodes parsed so far, taken out (for a caller that keeps less
    /// than whole nodes).
    pub fn take_nodes(&mut self) -> Vec<Node> {
        std::mem::take(&mut self.nodes)
    }

    /// The nodes, once every byte was pushed (a last line may lack its `\n`).
    pub fn finish(mut self) -> Result<Vec<Node>, String> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last)?;
        }
        Ok(self.nodes)
    }
}

/// The last bytes of a pack: the sealed header's length (u32 LE) and the magic.
pub fn pack_trailer(sealed_header_len: usize) -> [u8; PACK_TRAILER_LEN] {
    let mut t = [0u8; PACK_TRAILER_LEN];
    t[..4].copy_from_slice(&(sealed_header_len as u32).to_le_bytes());
    t[4..].copy_from_slice(PACK_MAGIC);
    t
}
