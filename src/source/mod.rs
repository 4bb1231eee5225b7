//! Where backup data comes from, besides plain files and streams
//! (those live in `archiver`): PostgreSQL and Kafka.
//!
//! A source produces nodes (named streams stored like files) plus metadata
//! recorded in the snapshot, so a restore can be proven equal to what was
//! backed up.

pub mod kafka;
pub mod pg_archive;
pub mod pg_cluster;
pub mod pg_copy;
pub mod pg_physical;
pub mod pg_replication;
pub mod postgres;

/// Checks a source runs on its stored data before the snapshot is saved
/// (Kafka: every partition read back and compared with what was consumed).
pub fn verify_stored(
    repo: &crate::repository::Repository,
    sources: &[crate::repo::SourceRecord],
) -> crate::error::Result<()> {
    for s in sources
        .iter()
        .filter(|s| s.kind == "kafka" && s.status == crate::repo::SourceStatus::Complete)
    {
        kafka::verify_stored(repo, s)?;
    }
    Ok(())
}
