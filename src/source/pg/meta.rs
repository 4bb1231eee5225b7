//! What a PostgreSQL snapshot records about its source, in the snapshot's
//! source metadata. A logical one: the server, each database's dump, and
//! each relation's row count and checksum, which a restore is compared
//! with. A physical one: where its base backup starts and stops.

use crate::error::{Error, Result};
pub use crate::repo::postgres::{DatabaseMeta, PgMeta, PhysicalMeta, TableSum, COPY_METHOD};
use crate::repo::SourceRecord;

pub fn metadata(source: &SourceRecord) -> Result<PgMeta> {
    serde_json::from_value(source.metadata.clone()).map_err(|e| {
        Error::integrity(format!(
            "source {} has no valid PostgreSQL metadata: {e}",
            source.name
        ))
    })
}
