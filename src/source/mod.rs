//! Where backup data comes from: files, standard input, a command's
//! output, PostgreSQL and Kafka.
//!
//! A source produces nodes (named streams stored like files) plus metadata
//! recorded in the snapshot, so a restore can be proven equal to what was
//! backed up. It hands its streams to the [`archiver`](crate::archiver),
//! which stores them; sources read, the archiver writes.

pub mod command;
pub mod files;
mod handling;
pub mod kafka;
pub mod pg;
pub mod stream;

pub use handling::{handling, physical_meta, Handling};
pub use stream::SourceOutcome;

/// Nodes a source read back and checked during the run, by (source name,
/// node path).
pub type Verified = std::collections::HashSet<(String, String)>;

/// Checks a source runs on its stored data before the snapshot is saved
/// (Kafka: every partition read back and compared with what was consumed),
/// but for the nodes in `verified`.
pub fn verify_stored(
    repo: &crate::repository::Repository,
    sources: &[crate::repo::SourceRecord],
    verified: &Verified,
) -> crate::error::Result<()> {
    for s in sources.iter().filter(|s| {
        s.kind == crate::repo::SourceKind::Kafka && s.status == crate::repo::SourceStatus::Complete
    }) {
        kafka::verify_stored(repo, s, |path| {
            verified.contains(&(s.name.clone(), path.to_string()))
        })?;
    }
    Ok(())
}
