//! What a PostgreSQL snapshot records about its source, in the snapshot's
//! source metadata. A logical one: the server, each database's dump, and
//! each relation's row count and checksum, which a restore is compared
//! with. A physical one: where its base backup starts and stops.

use crate::error::{Error, Result};
use crate::repo::SourceRecord;
use serde::{Deserialize, Serialize};

/// What a logical snapshot records about the server (snapshot source metadata).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PgMeta {
    pub kind: String,
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
    pub data_offsets: Option<super::offsets::DataOffsets>,
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

pub fn metadata(source: &SourceRecord) -> Result<PgMeta> {
    serde_json::from_value(source.metadata.clone()).map_err(|e| {
        Error::integrity(format!(
            "source {} has no valid PostgreSQL metadata: {e}",
            source.name
        ))
    })
}

/// Metadata of a physical snapshot source.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PhysicalMeta {
    pub kind: String,
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
