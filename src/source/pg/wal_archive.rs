//! The WAL archive of a repository put to use: how far each physical
//! snapshot can be restored ([`reach`]), the gaps `check` reports
//! ([`continuity_problems`]) and the files `prune` expires
//! ([`expired_wal`]). The rules are [`super::wal_chain`]'s; this file reads
//! the repository for them.

use super::meta::PhysicalMeta;
use super::wal::{read_wal_entry, read_wal_segment};
use super::wal_chain::{
    self, Archived, BaseWal, KeptBase, Reach, SegmentTime, WalArchive, WalName,
};
use super::wal_records::scan_segment;
use crate::error::Result;
use crate::repo::{ChunkId, FileKind, Snapshot, SnapshotId};
use crate::repository::Repository;
use std::collections::BTreeMap;

/// The WAL entry files of the repository (claims are not listed).
///
/// Read order (spec/repository.md §3): `wal-push` writes its packs, then
/// their index file, then the claim and the entry. So the entries are
/// listed before the index is read, and every entry listed finds its
/// content indexed; the other way round, a push landing in between left an
/// entry whose content looked lost (found by `scripts/timelapse --days 60
/// --seed 1`: `check` during archiving reported a new segment damaged).
pub fn list_wal(repo: &Repository) -> Result<Vec<String>> {
    Ok(repo
        .backend
        .list(FileKind::Wal)?
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| is_entry_file(f))
        .collect())
}

/// The archived segments, as their entries describe them. A damaged entry
/// is left out, as if its segment were missing (`check` reports it).
pub fn wal_archive(repo: &Repository) -> Result<WalArchive> {
    let mut entries = Vec::new();
    let files = list_wal(repo)?;
    repo.sync_index()?;
    let index = repo.cache.reader()?;
    for file in files {
        match read_wal_entry(repo, &file) {
            // A segment whose content is not all indexed (its damaged
            // chunks dropped by `repair packs`) cannot be replayed: it is a
            // gap, which cuts the ranges after it, not an archived segment
            // (found by scripts/timelapse: such a gap was invisible, and
            // every restore past it failed).
            Ok(e) => match unindexed(&index, &e) {
                Ok(0) => entries.push(e),
                Ok(n) => {
                    tracing::warn!(wal = %e.name, chunks = n, "leaving out an archived WAL file whose content is not in the index; run `cairn check`")
                }
                Err(err) => return Err(err),
            },
            Err(e) => tracing::warn!("leaving out {file}: {e}; run `cairn check`"),
        }
    }
    Ok(WalArchive::new(&entries))
}

/// What [`damaged_wal`] found: archived WAL files whose content uses a
/// damaged or unindexed chunk, split by whether recovery needs them.
/// Unreadable entry files are `check_wal`'s to report.
#[derive(Debug, Default)]
pub struct DamagedWal {
    /// Segments, partial segments and timeline history files (names,
    /// sorted): recovery reads them, so each cuts the ranges that cross it.
    pub needed: Vec<String>,
    /// Backup history files (`….backup`), with their entry and claim
    /// files. Recovery never reads one (it starts from the base backup's
    /// own `backup_label`, and cairn keeps where each base backup starts
    /// and ends in its snapshot): a lost one costs nothing and must not
    /// cut a range or fail a restore test (found by `scripts/timelapse
    /// --days 400 --seed 1`: a rotten byte in the pack of one failed every
    /// later weekly test). `repair packs` removes them.
    pub backup_history: BTreeMap<String, Vec<String>>,
}

/// The archived WAL files whose content uses a chunk for which `bad`
/// holds. `files` is [`list_wal`], taken before the index that `bad`
/// reads.
pub fn damaged_wal(
    repo: &Repository,
    files: &[String],
    bad: impl Fn(&ChunkId) -> bool,
) -> Result<DamagedWal> {
    let mut out = DamagedWal::default();
    let mut needed = std::collections::BTreeSet::new();
    for file in files {
        let Ok(e) = read_wal_entry(repo, file) else {
            continue;
        };
        if !e.content.iter().any(&bad) {
            continue;
        }
        if matches!(WalName::parse(&e.name), Some(WalName::Backup(..))) {
            // The claim first, as prune removes expired WAL (listings
            // leave claims out), then the entries.
            let mut own = vec![e.name.clone()];
            own.extend(files.iter().filter(|f| wal_name_of(f) == e.name).cloned());
            out.backup_history.insert(e.name, own);
        } else {
            needed.insert(e.name);
        }
    }
    out.needed = needed.into_iter().collect();
    Ok(out)
}

/// How many chunks of `e`'s content the index does not list.
pub fn unindexed(index: &crate::index::IndexReader, e: &crate::repo::WalEntry) -> Result<usize> {
    let mut n = 0;
    for c in &e.content {
        if index.get(c)?.is_none() {
            n += 1;
        }
    }
    Ok(n)
}

/// `NAME.<64 hex>`: an entry; a bare WAL name is its claim.
fn is_entry_file(file: &str) -> bool {
    file.rsplit_once('.')
        .is_some_and(|(_, id)| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The WAL name an entry or claim file belongs to.
fn wal_name_of(file: &str) -> &str {
    match file.rsplit_once('.') {
        Some((name, _)) if is_entry_file(file) => name,
        _ => file,
    }
}

/// The transaction time of a segment whose entry does not say (archived
/// by a cairn that did not read records): its records, read now.
fn read_segment_time(repo: &Repository, a: &Archived) -> SegmentTime {
    let scanned = read_wal_segment(repo, &a.name)
        .map_err(|e| e.to_string())
        .and_then(|bytes| scan_segment(&bytes).map_err(|e| e.to_string()));
    match scanned {
        Ok(s) => s
            .last_xact_time
            .map_or(SegmentTime::NoXact, SegmentTime::LastXact),
        Err(e) => {
            tracing::debug!(wal = %a.name, "cannot read its records: {e}");
            SegmentTime::Unreadable
        }
    }
}

/// How far point-in-time recovery from this base backup reaches, or
/// `None` when its metadata holds no readable WAL positions.
pub fn reach(repo: &Repository, archive: &WalArchive, meta: &PhysicalMeta) -> Option<Reach> {
    let base = BaseWal::of(meta, archive.size)?;
    Some(archive.reach(meta, base, |a| read_segment_time(repo, a)))
}

/// Every physical base backup among `snapshots`: snapshot, source name,
/// metadata.
pub fn physical_bases<'a>(
    snapshots: impl IntoIterator<Item = (&'a SnapshotId, &'a Snapshot)>,
) -> Vec<(SnapshotId, String, PhysicalMeta)> {
    let mut out = Vec::new();
    for (id, snap) in snapshots {
        for s in &snap.sources {
            if let Some(m) = crate::source::physical_meta(s) {
                out.push((*id, s.name.clone(), m));
            }
        }
    }
    out
}

/// Names of `count` segments from `first`, for messages.
fn segments_named(archive: &WalArchive, timeline: u32, first: u64, last: u64) -> String {
    let name = |n| {
        archive.size.name(wal_chain::Segment {
            timeline,
            number: n,
        })
    };
    if first == last {
        format!("WAL segment {} is", name(first))
    } else {
        format!(
            "WAL segments {} to {} ({}) are",
            name(first),
            name(last),
            last - first + 1
        )
    }
}

/// `check`: every segment from each base backup's start to the newest one
/// archived on its timeline must be there. Each run of missing segments is
/// one problem naming the snapshots whose restores it cuts, and to when.
pub fn continuity_problems(
    repo: &Repository,
    snapshots: &[(SnapshotId, &Snapshot)],
) -> Result<Vec<String>> {
    let bases = physical_bases(snapshots.iter().map(|(i, s)| (i, *s)));
    if bases.is_empty() {
        return Ok(Vec::new());
    }
    let archive = wal_archive(repo)?;
    let mut by_timeline: BTreeMap<u32, Vec<(SnapshotId, PhysicalMeta, BaseWal)>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, _, meta) in bases {
        match BaseWal::of(&meta, archive.size) {
            Some(b) => by_timeline
                .entry(meta.timeline)
                .or_default()
                .push((id, meta, b)),
            None => problems.push(format!(
                "snapshot {}: its base backup's WAL positions ({}, {}) cannot be read",
                id.short(),
                meta.start_lsn,
                meta.stop_lsn
            )),
        }
    }
    for (timeline, mut bases) in by_timeline {
        bases.sort_by_key(|(_, m, _)| m.stop_time);
        let from = bases
            .iter()
            .map(|(_, _, b)| b.start.number)
            .min()
            .unwrap_or(0);
        let gaps = archive.gaps(timeline, from);
        if gaps.is_empty() {
            continue;
        }
        let reaches: Vec<Reach> = bases
            .iter()
            .map(|(_, meta, base)| archive.reach(meta, *base, |a| read_segment_time(repo, a)))
            .collect();
        for (first, last) in gaps {
            let mut effects = Vec::new();
            for ((id, _, base), r) in bases.iter().zip(&reaches) {
                if r.gap.is_some_and(|g| (first..=last).contains(&g.number)) {
                    effects.push(format!(
                        "point-in-time restore from snapshot {} reaches only {}{}",
                        id.short(),
                        r.time,
                        if r.last_xact.is_some() {
                            ", its last transaction before the gap"
                        } else {
                            ", the end of its base backup"
                        }
                    ));
                } else if base.start.number <= last && first <= base.stop.number {
                    effects.push(format!(
                        "snapshot {}'s base backup holds them itself, so its restores do not need them",
                        id.short()
                    ));
                }
            }
            problems.push(format!(
                "{} missing from the WAL archive (timeline {timeline}): {}",
                segments_named(&archive, timeline, first, last),
                if effects.is_empty() {
                    "no base backup's restore needs them".to_string()
                } else {
                    effects.join("; ")
                }
            ));
        }
    }
    Ok(problems)
}

/// An archived WAL file that no kept base backup can replay.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExpiredWal {
    pub name: String,
    pub reason: String,
    /// Its claim and entry files, in the order to remove them.
    #[serde(skip)]
    pub files: Vec<String>,
}

/// `prune`'s WAL retention: the archived WAL files older than the start
/// of the oldest physical base backup kept (per timeline, see
/// [`wal_chain::expired`]). Nothing when no physical snapshot exists, or
/// when a snapshot cannot be read (it might be one).
pub fn expired_wal(repo: &Repository) -> Result<Vec<ExpiredWal>> {
    let (snapshots, damaged) = repo.snapshots_and_damage()?;
    if !damaged.is_empty() {
        tracing::warn!(
            "archived WAL is kept whole: {} snapshot(s) cannot be read, and may be base backups that need it",
            damaged.len()
        );
        return Ok(Vec::new());
    }
    let bases = physical_bases(snapshots.iter().map(|(i, s)| (i, s)));
    let archive = wal_archive(repo)?;
    let kept: Vec<KeptBase> = bases
        .iter()
        .filter_map(|(id, _, meta)| {
            Some(KeptBase {
                snapshot: *id,
                start: BaseWal::of(meta, archive.size)?.start,
            })
        })
        .collect();
    if kept.len() < bases.len() {
        tracing::warn!("archived WAL is kept whole: a base backup's WAL positions cannot be read");
        return Ok(Vec::new());
    }
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (file, _) in repo.backend.list(FileKind::Wal)? {
        files
            .entry(wal_name_of(&file).to_string())
            .or_default()
            .push(file);
    }
    let expired = wal_chain::expired(files.keys().map(String::as_str), archive.size, &kept);
    Ok(expired
        .into_iter()
        .map(|e| {
            // The claim first (listings leave claims out, so one left
            // behind would stay for ever), then the entries: entries
            // without a claim read as archived before claims existed, and
            // the next prune finds them.
            let mut f = vec![e.name.clone()];
            f.extend(files.remove(&e.name).unwrap_or_default());
            ExpiredWal {
                name: e.name,
                reason: e.reason,
                files: f,
            }
        })
        .collect())
}

/// Remove expired WAL files, each logged with its reason.
pub fn remove_expired_wal(repo: &Repository, expired: &[ExpiredWal]) -> Result<()> {
    for e in expired {
        tracing::info!(wal = %e.name, reason = %e.reason, "removing archived WAL");
        for f in &e.files {
            repo.backend
                .remove(&crate::backend::FileRef::new(FileKind::Wal, f.as_str()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_and_claim_files_belong_to_their_wal_name() {
        let id = "ab".repeat(32);
        let entry = format!("000000010000000000000002.00000028.backup.{id}");
        assert!(is_entry_file(&entry));
        assert_eq!(
            wal_name_of(&entry),
            "000000010000000000000002.00000028.backup"
        );
        assert_eq!(
            wal_name_of("000000010000000000000002.00000028.backup"),
            "000000010000000000000002.00000028.backup"
        );
        assert_eq!(wal_name_of("00000002.history"), "00000002.history");
        assert!(!is_entry_file("000000010000000000000003"));
    }
}
