//! Everything cairn stores in a repository, in one place.
//!
//! These types *are* the on-disk format described in `spec/repository.md`;
//! change one only together with the spec and the format version.

pub mod encode;
mod file_kind;
#[cfg(test)]
mod golden;
mod id;
pub mod kafka;
mod limits;
pub mod local;
mod manifest;
pub mod node_path;
mod pack;
pub mod postgres;
mod source_kind;

pub use file_kind::FileKind;
pub use id::{ChunkId, FileId, Id, IndexId, KeyId, LockId, PackId, ProofId, RepoId, SnapshotId};
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
