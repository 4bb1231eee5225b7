//! The domain layer: what cairn does with a repository, for the commands
//! and the daemon alike. Nothing here parses arguments or prints; results
//! come back as values (reports, the snapshots a choice skipped) for the
//! caller to show or log.

pub mod access;
pub mod check;
pub mod key_cache;
pub mod prune;
pub mod repair;
pub mod repair_packs;
pub mod restore_point;
pub mod retention;

/// A time as the user reads it: local time, to the second.
pub fn local_time(t: jiff::Timestamp) -> String {
    t.to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Every pack file in the repository with its size, by id (files whose
/// names are not pack ids are left out).
pub fn packs_on_disk(
    repo: &crate::repository::Repository,
) -> crate::error::Result<std::collections::HashMap<crate::repo::PackId, u64>> {
    Ok(repo
        .backend
        .list(crate::repo::FileKind::Pack)?
        .into_iter()
        .filter_map(|(n, s)| crate::repo::PackId::parse(&n).map(|i| (i, s)))
        .collect())
}
