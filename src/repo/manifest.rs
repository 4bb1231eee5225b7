use super::{ChunkId, Id, PackEntry, RepoId, SnapshotId, SourceKind};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Version of each sealed file (snapshot, index, pack header, key, proof)
/// this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// The config version this build writes: format 1 plus the list of format
/// features in the config. Binaries older than the list refuse it by its
/// version, later ones by the features they do not know.
pub const FEATURES_VERSION: u32 = 2;

/// Format features this build reads and writes, all recorded in the config
/// of a repository it creates (spec/repository.md "6. Versions and
/// features"). A build that adds a way of storing data an older build
/// would misread or skip adds a name here.
pub const KNOWN_FEATURES: &[&str] = &[
    // Frames compressed as a zstd delta against an earlier stream (`b` in
    // a chunk entry): a reader without it skips whole index files.
    "zstd-delta",
];

/// FastCDC sizes: chosen by benchmark, see spec/repository.md "Chunking".
pub const CHUNKER_DEFAULT: ChunkerParams = ChunkerParams {
    min: 2 * 1024,
    avg: 8 * 1024,
    max: 32 * 1024,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// `config`: the only file with a fixed name. Plaintext: it holds no secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Random repository id; also names the local index cache.
    pub id: RepoId,
    pub created: Timestamp,
    pub chunker: ChunkerParams,
    /// Target plaintext size of a frame (several chunks compressed together).
    pub frame_size: u32,
    /// Target size of a pack file.
    pub pack_size: u32,
    pub zstd_level: i32,
    /// Format features the repository's writers may use beyond format 1;
    /// every reader must know all of them. Absent in a version-1 config
    /// (made before the list existed), which may still hold `zstd-delta`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Config {
    /// Why this build cannot read a repository with this config, if it cannot.
    pub fn unreadable(&self) -> Option<String> {
        if self.version > FEATURES_VERSION {
            return Some(format!(
                "repository format version {} is newer than this cairn understands ({FEATURES_VERSION})",
                self.version
            ));
        }
        if self.version < FEATURES_VERSION && !self.features.is_empty() {
            return Some(format!(
                "repository format version {} lists format features, which only version {FEATURES_VERSION} may",
                self.version
            ));
        }
        let unknown: Vec<&str> = self
            .features
            .iter()
            .map(String::as_str)
            .filter(|f| !KNOWN_FEATURES.contains(f))
            .collect();
        (!unknown.is_empty()).then(|| {
            format!(
                "repository uses format feature(s) this cairn does not know: {}",
                unknown.join(", ")
            )
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Master key material encrypted with age's scrypt passphrase recipient.
    Password,
    /// Master key material encrypted to a user's age X25519 recipient.
    Identity,
}

/// `keys/<id>`: one way to open the repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub kind: KeyKind,
    pub created: Timestamp,
    pub host: String,
    pub username: String,
    /// For `identity` keys: the recipient the material is encrypted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The age file (binary, hex-encoded) holding [`KeyMaterial`] as JSON.
    pub data: String,
}

/// The secret every key file wraps.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyMaterial {
    pub repo_id: RepoId,
    /// The repository's age X25519 identity (`AGE-SECRET-KEY-1...`).
    pub identity: String,
    /// 32-byte key for keyed BLAKE3 chunk ids and the chunker seed (hex).
    pub hash_key: String,
}

/// `index/<id>`: where chunks live. The union of all index files is the index.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<PackEntry>,
}

/// `locks/<id>`: who is using the repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockFile {
    pub host: String,
    pub username: String,
    pub pid: u32,
    pub time: Timestamp,
    pub exclusive: bool,
    pub command: String,
    /// When the holding process started (Linux: `/proc/PID/stat` field 22,
    /// clock ticks since boot): a live process with the lock's pid but
    /// another start time reused the pid, and the lock is stale. Absent in
    /// locks of older versions and where `/proc` cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
    /// The boot the holder ran in (`/proc/sys/kernel/random/boot_id`): a
    /// lock of this host from an earlier boot is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceStatus {
    /// Everything the source had was stored.
    Complete,
    /// Stored, but some of the source's data could not be read (listed in `errors`).
    Incomplete,
    /// Nothing was stored: the source failed (the reason is in `errors`);
    /// recorded so a run of several sources shows what it missed.
    Failed,
}

/// One source (files, a stream, a database, a cluster) inside a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceRecord {
    pub name: String,
    pub kind: SourceKind,
    pub status: SourceStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Chunks of the source's node list (JSON lines of [`Node`]).
    pub tree: Vec<ChunkId>,
    /// Logical size of all file contents in bytes.
    pub size: u64,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Bytes this snapshot added to the repository (packs, headers, index).
    pub bytes_added: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
    pub duration_ms: u64,
    /// Files taken from the parent snapshot without reading them (their
    /// size, mtime, ctime and inode had not changed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_unchanged: u64,
}

/// `snapshots/<id>`: one restore point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: Timestamp,
    pub host: String,
    pub username: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// What was backed up: absolute paths, stream names.
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub sources: Vec<SourceRecord>,
    pub summary: Summary,
    pub program: String,
}

impl Snapshot {
    pub fn size(&self) -> u64 {
        self.sources.iter().map(|s| s.size).sum()
    }
    pub fn is_complete(&self) -> bool {
        self.sources
            .iter()
            .all(|s| s.status == SourceStatus::Complete)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a source's node list. Paths are relative, `/`-separated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ChunkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Files read from a file system: the inode number and the status
    /// change time (nanoseconds), which tell a later snapshot that the file
    /// is unchanged (spec/repository.md §2.6, "Unchanged files"). Zero
    /// (left out) for streams and for nodes written before they existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ctime_ns: i64,
}

impl Node {
    /// A regular file holding one stored stream (a dump, a base backup, a
    /// partition's records): mode 0600, owned by root, modified now.
    pub fn stream(path: impl Into<String>, size: u64, content: Vec<ChunkId>) -> Node {
        Node {
            path: path.into(),
            kind: NodeKind::File,
            mode: 0o600,
            mtime_ns: jiff::Timestamp::now().as_nanosecond() as i64,
            uid: 0,
            gid: 0,
            size,
            content,
            target: None,
            inode: 0,
            ctime_ns: 0,
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// `wal/<name>.<id>`: one archived PostgreSQL WAL file (segment, history or
/// backup file). The name carries the WAL file name so `wal-fetch` finds it
/// by listing; the suffix is the file id as for every other file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WalEntry {
    /// WAL file name as PostgreSQL gives it (`000000010000000000000003`).
    pub name: String,
    pub size: u64,
    /// Keyed BLAKE3 of the whole content: tells an identical re-push from a conflict.
    pub digest: Id,
    pub content: Vec<ChunkId>,
    /// When cairn stored it (the WAL in it is older).
    pub archived: Timestamp,
    pub host: String,
    /// How many whole records cairn read in the segment when it stored it;
    /// absent when it did not read them (not a segment, not WAL it could
    /// read, or an entry of a cairn before 2026-12): `last_xact_time` then
    /// says nothing, and readers that need it read the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// The time in the segment's last transaction commit or abort record
    /// (spec/postgres.md "The WAL archive"): how far recovery can go with
    /// it. Absent when it holds none, or when `records` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_xact_time: Option<Timestamp>,
}

/// `wal/<wal file name>`: which content a WAL name holds, written once with
/// a create-if-absent write before the name's entry, so that of two pushes
/// of different content racing for one name exactly one wins
/// (spec/postgres.md "One content per WAL name").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WalClaim {
    pub name: String,
    /// [`WalEntry::digest`] of the content that won the name.
    pub digest: Id,
}

/// `proofs/<id>`: the outcome of one restore test of a snapshot
/// (`check --restore-test`, or the daemon's scheduled test). The newest
/// proof of a snapshot decides: a failed one marks the snapshot corrupted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proof {
    pub version: u32,
    pub snapshot: SnapshotId,
    pub time: Timestamp,
    pub passed: bool,
    /// The sources that were restored and compared.
    pub sources: Vec<String>,
    /// What failed (empty when passed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub host: String,
}
