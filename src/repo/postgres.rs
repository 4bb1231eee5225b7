//! What a PostgreSQL source records in its snapshot's source metadata
//! (spec/postgres.md). A logical one: the server, each database's dump, and
//! each relation's row count and checksum, which a restore is compared
//! with. A physical one: where its base backup starts and stops.

use serde::{Deserialize, Serialize};

/// Which kind of PostgreSQL backup a source holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgBackupKind {
    /// `pg_dumpall --globals-only` and one `pg_dump` per database ([`PgMeta`]).
    #[default]
    Logical,
    /// A base backup for point-in-time recovery ([`PhysicalMeta`]).
    Physical,
}

/// What a logical snapshot records about the server (snapshot source metadata).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PgMeta {
    pub kind: PgBackupKind,
    pub server_version: String,
    pub system_identifier: String,
    /// Node holding `pg_dumpall --globals-only` (roles, tablespaces).
    pub globals: String,
    pub databases: Vec<DatabaseMeta>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DatabaseMeta {
    pub name: String,
    pub size_bytes: i64,
    /// Node holding `pg_dump --format=custom --compress=0`.
    pub dump: String,
    pub tables: Vec<TableSum>,
    /// Where the dump's data blocks are (found while it streamed), so a
    /// restore can fill in its TOC without reading it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_offsets: Option<DataOffsets>,
}

/// Row count and order-independent content checksum of one relation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableSum {
    pub schema: String,
    pub name: String,
    /// `table`, `sequence` or `large objects`.
    pub kind: String,
    pub rows: i64,
    pub checksum: String,
    /// How rows were hashed: `copy-xxh3-128` (the sum of each row's
    /// XXH3-128 over its COPY text line, read from the dump as it streamed),
    /// `hash-record` (`hash_record_extended`, in SQL) or `md5-text` (md5 of
    /// the row's text, for types without an extended hash).
    #[serde(default = "md5_text")]
    pub method: String,
    /// [`COPY_METHOD`]: the column list of pg_dump's COPY, as it wrote it
    /// (quoted where needed); a restored table is read back in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<String>,
}

/// [`TableSum::method`] of sums taken from the rows in the dump.
pub const COPY_METHOD: &str = "copy-xxh3-128";

fn md5_text() -> String {
    "md5-text".into()
}

/// Where a dump's data blocks are, found while it streamed into the
/// repository: enough to fill in its TOC's data offsets at restore without
/// reading the dump again (stored with the snapshot, see spec/postgres.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataOffsets {
    /// Bytes of an offset in this archive.
    pub size: usize,
    /// `[position of an entry's offset field, position of its data block,
    /// the entry's dump id]`.
    pub entries: Vec<[u64; 3]>,
}

/// Metadata of a physical snapshot source.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PhysicalMeta {
    pub kind: PgBackupKind,
    pub server_version: String,
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// Server clock before the backup started.
    pub start_time: jiff::Timestamp,
    /// Server clock after it ended: the earliest time it can be restored to.
    pub stop_time: jiff::Timestamp,
    /// Node holding the tar stream.
    pub base: String,
}
