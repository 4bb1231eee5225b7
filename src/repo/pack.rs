use super::{ChunkId, PackId};
use serde::{Deserialize, Serialize};

/// Bytes at the very end of a pack: header length (u32 LE) and magic `CRNP`.
pub const PACK_TRAILER_LEN: usize = 8;
pub const PACK_MAGIC: &[u8; 4] = b"CRNP";

/// How a frame's plaintext is encoded before encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The concatenated chunks, as they are.
    None,
    /// One zstd frame over the concatenated chunks.
    Zstd,
    /// One zstd frame over the concatenated chunks, compressed against a
    /// prefix: the plaintexts of the chunks' `base`s (see
    /// [`FrameEntry::bases`]), which decoding needs too.
    #[serde(rename = "zstd-delta")]
    ZstdDelta,
}

/// One chunk inside a frame's plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    pub id: ChunkId,
    /// Byte offset of the chunk in the frame's decompressed plaintext.
    #[serde(rename = "o")]
    pub offset: u32,
    #[serde(rename = "l")]
    pub length: u32,
    /// In a `zstd-delta` frame: the stored chunk this one was compressed
    /// against (the chunk it replaces in the previous version of its
    /// stream). A base is never itself in a `zstd-delta` frame.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ChunkId>,
}

/// A frame: several chunks compressed together and encrypted as one age file.
///
/// Frames are the unit of compression and encryption; chunks are the unit of
/// deduplication. A chunk is read by reading, decrypting and decompressing its frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameEntry {
    /// Byte offset of the frame's ciphertext in the pack.
    pub offset: u64,
    /// Length of the ciphertext.
    pub length: u32,
    /// Length of the decompressed plaintext (sum of chunk lengths).
    pub raw_length: u32,
    pub compression: Compression,
    pub chunks: Vec<ChunkEntry>,
}

impl FrameEntry {
    /// The chunks whose plaintexts, concatenated in this order, are the
    /// zstd prefix of a `zstd-delta` frame: each distinct `base` of its
    /// chunks, in the order of first use. Empty for other frames.
    pub fn bases(&self) -> Vec<ChunkId> {
        if self.compression != Compression::ZstdDelta {
            return Vec::new();
        }
        prefix_bases(&self.chunks)
    }
}

/// The distinct bases of `chunks` in order of first use: the chunks whose
/// plaintexts make the prefix of a delta frame holding `chunks`.
pub fn prefix_bases(chunks: &[ChunkEntry]) -> Vec<ChunkId> {
    let mut out: Vec<ChunkId> = Vec::new();
    for b in chunks.iter().filter_map(|c| c.base) {
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out
}

/// The encrypted header at the end of every pack (see spec/repository.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackHeader {
    pub version: u32,
    pub frames: Vec<FrameEntry>,
}

/// A pack as listed in an index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: PackId,
    /// Total size of the pack file in bytes.
    pub size: u64,
    pub frames: Vec<FrameEntry>,
}

impl PackEntry {
    pub fn chunk_count(&self) -> usize {
        self.frames.iter().map(|f| f.chunks.len()).sum()
    }
}

/// Split a pack's bytes into (frames region, header ciphertext), checking the trailer.
pub fn split_pack(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    if bytes.len() < PACK_TRAILER_LEN {
        return None;
    }
    let (body, trailer) = bytes.split_at(bytes.len() - PACK_TRAILER_LEN);
    if &trailer[4..] != PACK_MAGIC {
        return None;
    }
    let header_len = u32::from_le_bytes(trailer[..4].try_into().ok()?) as usize;
    if header_len > body.len() {
        return None;
    }
    Some(body.split_at(body.len() - header_len))
}
