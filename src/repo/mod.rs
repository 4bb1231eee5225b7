//! Everything cairn stores in a repository, in one place.
//!
//! These types *are* the on-disk format described in `spec/repository.md`;
//! change one only together with the spec and the format version.

pub mod encode;
#[cfg(test)]
mod golden;
mod id;
pub mod kafka;
mod limits;
mod manifest;
pub mod node_path;
mod pack;
pub mod postgres;
mod source_kind;

pub use id::Id;
pub use manifest::{
    ChunkerParams, Config, IndexFile, KeyFile, KeyKind, KeyMaterial, LockFile, Node, NodeKind,
    Proof, Snapshot, SourceRecord, SourceStatus, Summary, WalClaim, WalEntry, CHUNKER_DEFAULT,
    FEATURES_VERSION, FORMAT_VERSION, KNOWN_FEATURES,
};
pub use pack::{
    prefix_bases, split_pack, ChunkEntry, Compression, FrameEntry, PackEntry, PackHeader,
    PACK_MAGIC, PACK_TRAILER_LEN,
};
pub use source_kind::SourceKind;

/// The kinds of files in a repository, each in its own directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
    /// Archived PostgreSQL WAL files: `wal/<wal file name>.<file id>`.
    Wal,
    /// Restore-test outcomes ([`Proof`]).
    Proof,
}

impl FileKind {
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Lock => "locks",
            FileKind::Wal => "wal",
            FileKind::Proof => "proofs",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Config => "config",
            FileKind::Key => "key",
            FileKind::Pack => "pack",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshot",
            FileKind::Lock => "lock",
            FileKind::Wal => "wal file",
            FileKind::Proof => "proof",
        }
    }
}
