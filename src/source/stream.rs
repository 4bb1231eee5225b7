//! Sources made of stored streams: standard input, a command's output,
//! and the node lists the PostgreSQL and Kafka sources end with. Also what
//! archiving any source produces, [`SourceOutcome`].

use crate::archiver::{store_nodes, Packer};
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::{ChunkId, Node, NodeKind, SourceKind, SourceRecord, SourceStatus};
use std::io::Read;

/// What archiving one source produced.
pub struct SourceOutcome {
    pub record: SourceRecord,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes_read: u64,
    /// Files taken from the parent snapshot without reading them.
    pub files_unchanged: u64,
    /// Nodes the source has already read back from the repository and
    /// checked during the run (Kafka partitions), which the check before
    /// the snapshot is saved need not read again.
    pub verified: Vec<String>,
}

/// A source of one stored stream, as file `file_name`.
pub fn stream_source(
    packer: &mut Packer,
    source_name: &str,
    kind: SourceKind,
    file_name: &str,
    content: Vec<ChunkId>,
    size: u64,
) -> Result<SourceOutcome> {
    let node = Node {
        path: file_name.to_string(),
        kind: NodeKind::File,
        mode: 0o644,
        mtime_ns: jiff::Timestamp::now().as_nanosecond() as i64,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        size,
        content,
        target: None,
        inode: 0,
        ctime_ns: 0,
    };
    source_from_nodes(
        packer,
        source_name,
        kind,
        vec![node],
        serde_json::Value::Null,
    )
}

/// A complete source made of stored streams (`nodes`), with its metadata.
pub fn source_from_nodes(
    packer: &mut Packer,
    source_name: &str,
    kind: SourceKind,
    nodes: Vec<Node>,
    metadata: serde_json::Value,
) -> Result<SourceOutcome> {
    let size: u64 = nodes.iter().map(|n| n.size).sum();
    let tree = store_nodes(packer, &nodes)?;
    Ok(SourceOutcome {
        record: SourceRecord {
            name: source_name.to_string(),
            kind,
            status: SourceStatus::Complete,
            errors: Vec::new(),
            tree,
            size,
            metadata,
        },
        files: nodes.len() as u64,
        dirs: 0,
        symlinks: 0,
        bytes_read: size,
        files_unchanged: 0,
        verified: Vec::new(),
    })
}

/// Back up one stream (standard input) as file `name`.
pub fn archive_stream<R: Read>(
    packer: &mut Packer,
    source_name: &str,
    kind: SourceKind,
    file_name: &str,
    reader: R,
    quiet: bool,
) -> Result<SourceOutcome> {
    let progress = Progress::bytes(0, quiet, "snapshot");
    let (ids, n) = packer
        .add_stream(reader, &progress)
        .map_err(|e| e.into_error(format!("reading {} for {file_name:?}", kind.label())))?;
    progress.finish();
    stream_source(packer, source_name, kind, file_name, ids, n)
}
