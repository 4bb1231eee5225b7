//! Check: prove the repository is whole, and say exactly what is not.

use crate::backend::FileRef;
use crate::error::{Error, Kind, Result};
use crate::progress::Progress;
use crate::repo::{
    split_pack, ChunkId, Compression, FileKind, IndexFile, IndexId, Node, NodeKind, PackEntry,
    PackHeader, PackId, SnapshotId,
};
use crate::repository::{NodeScan, Repository};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};

/// A file (or node list) of a snapshot that cannot be restored whole.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Damage {
    pub snapshot: SnapshotId,
    pub time: jiff::Timestamp,
    pub source: String,
    /// The file's path, or `(node list)` when the list itself is unreadable.
    pub path: String,
}

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    pub errors: Vec<String>,
    pub damaged: Vec<Damage>,
    /// Packs no index file lists: leftovers of interrupted snapshots.
    pub unreferenced_packs: Vec<PackId>,
    /// Packs read with any damage (`cairn repair packs` salvages them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_packs: Vec<PackId>,
    /// Archived WAL files whose content is damaged or not indexed (each
    /// also one of `errors`): recovery cannot replay past them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_wal: Vec<String>,
    /// Runs of WAL segments missing from what physical snapshots replay
    /// (each also one of `errors`).
    pub wal_gaps: usize,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.damaged.is_empty()
    }
    /// Ids of snapshots with any damage.
    pub fn damaged_snapshots(&self) -> BTreeSet<SnapshotId> {
        self.damaged.iter().map(|d| d.snapshot).collect()
    }
}

/// Which packs `--read-data-subset` selects.
fn subset(spec: Option<&str>, all: bool, packs: &[PackId]) -> Result<Vec<PackId>> {
    let Some(spec) = spec else {
        return Ok(if all { packs.to_vec() } else { Vec::new() });
    };
    let bad = || {
        Error::usage(format!("--read-data-subset {spec:?} is not N/M or P%"))
            .with_hint("e.g. 1/5 (the first of five parts) or 10%")
    };
    if let Some(p) = spec.strip_suffix('%') {
        let pct: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&pct) || pct == 0.0 {
            return Err(bad());
        }
        let n = ((packs.len() as f64) * pct / 100.0).ceil() as usize;
        let mut v = packs.to_vec();
        use rand::seq::SliceRandom;
        v.shuffle(&mut rand::rng());
        v.truncate(n.max(1).min(packs.len()));
        return Ok(v);
    }
    let (n, m) = spec.split_once('/').ok_or_else(bad)?;
    let (n, m): (u32, u32) = (
        n.trim().parse().map_err(|_| bad())?,
        m.trim().parse().map_err(|_| bad())?,
    );
    if m == 0 || n == 0 || n > m {
        return Err(bad());
    }
    Ok(packs
        .iter()
        .filter(|p| part_of(p, m) == n)
        .copied()
        .collect())
}

/// Which of `m` parts (1 to `m`) pack `p` is in: by its id, so a pack stays
/// in its part as packs come and go, and `1/m` … `m/m` read every pack.
pub fn part_of(p: &PackId, m: u32) -> u32 {
    let head = u32::from_be_bytes([p.0[0], p.0[1], p.0[2], p.0[3]]);
    head % m.max(1) + 1
}

/// Read a whole pack and return the ids of chunks in it that are damaged.
/// A storage that cannot be reached is an error, not damage: the check
/// stops (exit 4) instead of naming every snapshot the pack serves.
fn read_pack(
    repo: &Repository,
    entry: &PackEntry,
    report: &mut CheckReport,
) -> Result<HashSet<ChunkId>> {
    let f = FileRef::of(entry.id);
    let mut damaged = HashSet::new();
    let bytes = match repo.backend.read(&f) {
        Ok(b) => b,
        Err(e) if matches!(e.kind(), Kind::Unavailable | Kind::Interrupted) => return Err(e),
        Err(e) => {
            report.errors.push(format!("{f}: {e}"));
            damaged.extend(
                entry
                    .frames
                    .iter()
                    .flat_map(|fr| fr.chunks.iter().map(|c| c.id)),
            );
            return Ok(damaged);
        }
    };
    report.packs_read += 1;
    report.bytes_read += bytes.len() as u64;
    if PackId::of_bytes(&bytes) != entry.id {
        report.errors.push(format!(
            "{f} is damaged: its content does not match its name"
        ));
    }
    match split_pack(&bytes).map(|(_, h)| repo.key.unseal::<PackHeader>(h, &f)) {
        Some(Ok(h)) if h.frames == entry.frames => {}
        Some(Ok(_)) => report
            .errors
            .push(format!("{f}: header differs from the index")),
        Some(Err(e)) => report.errors.push(format!("{f}: header unreadable: {e}")),
        None => report
            .errors
            .push(format!("{f}: no valid pack trailer (truncated?)")),
    }
    for fr in &entry.frames {
        match repo.decode_in_pack(&bytes, fr, &f) {
            Ok(plain) => {
                for c in &fr.chunks {
                    if repo.listed_chunk(&plain, c).is_none() {
                        report
                            .errors
                            .push(format!("{f}: chunk {} does not match its id", c.id.short()));
                        damaged.insert(c.id);
                    }
                }
            }
            Err(e) => {
                report.errors.push(e.to_string());
                damaged.extend(fr.chunks.iter().map(|c| c.id));
            }
        }
    }
    Ok(damaged)
}

/// What `check` keeps of the whole node lines inside one node-list chunk.
struct CheckPiece {
    /// Paths of the nodes whose content is damaged or not indexed.
    damaged: Vec<String>,
    /// The first path that breaks `node_path::problem`, with the problem.
    bad_path: Option<String>,
    /// Every node's path and kind, for the list-wide rules of
    /// `node_path::list_problem`.
    nodes: Vec<(Box<str>, NodeKind)>,
}

impl CheckPiece {
    fn of(nodes: Vec<Node>, bad: &impl Fn(&ChunkId) -> bool) -> CheckPiece {
        let damaged = nodes
            .iter()
            .filter(|n| n.content.iter().any(bad))
            .map(|n| n.path.clone())
            .collect();
        CheckPiece {
            damaged,
            bad_path: bad_path(&nodes),
            nodes: nodes
                .into_iter()
                .map(|n| (n.path.into_boxed_str(), n.kind))
                .collect(),
        }
    }
}

/// The first of `nodes` whose path breaks `node_path::problem`, described.
fn bad_path(nodes: &[Node]) -> Option<String> {
    nodes.iter().find_map(|n| {
        let p = crate::repo::node_path::problem(&n.path)?;
        Some(format!("{:?}: {p}", n.path))
    })
}

/// Check the repository: structure always, stored data when asked.
///
/// Files are read in the reverse of the order they are written in
/// (spec/repository.md §3, "Read order"): snapshots, then the index, then
/// the list of packs. A backup that finishes while the check runs then adds
/// only what the check does not look at (a snapshot not listed, an index
/// file not read, packs no read index lists), instead of a snapshot whose
/// chunks look unindexed or an indexed pack that looks missing.
pub fn check(
    repo: &Repository,
    read_all: bool,
    read_subset: Option<&str>,
    quiet: bool,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();

    // 0. Snapshot files, then the index cache that their node lists are
    //    read through.
    let mut snapshots = Vec::new();
    for (name, _) in repo.backend.list(FileKind::Snapshot)? {
        if let Some(id) = SnapshotId::parse(&name) {
            // One forgotten since the listing is no damage.
            match repo.read_listed_snapshot(id) {
                Ok(Some(snap)) => snapshots.push((id, Ok(snap))),
                Ok(None) => {}
                Err(e) => snapshots.push((id, Err(e))),
            }
        }
    }
    // Then the WAL entries, before the index their content is looked up
    // in (a push writes its index file first, its entry last).
    let wal_files = crate::source::pg::list_wal(repo)?;
    repo.sync_index()?;

    // 1. Index files.
    let mut packs: HashMap<PackId, PackEntry> = HashMap::new();
    for (name, _) in repo.backend.list(FileKind::Index)? {
        let Some(id) = IndexId::parse(&name) else {
            continue;
        };
        match repo.read_sealed::<IndexFile>(id) {
            Ok(idx) => {
                for p in idx.packs {
                    packs.insert(p.id, p);
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    // Which chunks are indexed (where is not needed: a set, not a map).
    let index: HashSet<ChunkId> = packs
        .values()
        .flat_map(|p| p.frames.iter())
        .flat_map(|f| f.chunks.iter().map(|c| c.id))
        .collect();

    // 2. Every indexed pack exists with the right size; unindexed packs are leftovers.
    let on_disk = super::packs_on_disk(repo)?;
    report.packs = on_disk.len();
    let mut damaged: HashSet<ChunkId> = HashSet::new();
    let mut ids: Vec<PackId> = packs.keys().copied().collect();
    ids.sort();
    for id in &ids {
        let p = &packs[id];
        match on_disk.get(id) {
            None => {
                report
                    .errors
                    .push(format!("pack {id} is listed in the index but missing"));
                damaged.extend(p.frames.iter().flat_map(|f| f.chunks.iter().map(|c| c.id)));
            }
            Some(size) if *size != p.size => {
                report.errors.push(format!(
                    "pack {id} has {size} bytes, the index says {}",
                    p.size
                ));
            }
            Some(_) => {}
        }
    }
    let mut unreferenced: Vec<PackId> = on_disk
        .keys()
        .filter(|p| !packs.contains_key(*p))
        .copied()
        .collect();
    unreferenced.sort();
    report.unreferenced_packs = unreferenced;

    // 3. Read data.
    let to_read: Vec<PackId> = subset(read_subset, read_all, &ids)?
        .into_iter()
        .filter(|p| on_disk.contains_key(p))
        .collect();
    if !to_read.is_empty() {
        let total: u64 = to_read.iter().map(|p| packs[p].size).sum();
        let progress = Progress::bytes(total, quiet, "check");
        for p in &to_read {
            crate::interrupt::check()?;
            let errors = report.errors.len();
            damaged.extend(read_pack(repo, &packs[p], &mut report)?);
            if report.errors.len() > errors {
                report.damaged_packs.push(*p);
            }
            progress.inc(packs[p].size);
        }
        progress.finish();
    } else {
        // Without reading data, a pack of the wrong size is presumed damaged.
        for id in &ids {
            if on_disk.get(id).is_some_and(|s| *s != packs[id].size) {
                damaged.extend(
                    packs[id]
                        .frames
                        .iter()
                        .flat_map(|f| f.chunks.iter().map(|c| c.id)),
                );
            }
        }
    }

    // 3b. A delta frame is as good as its bases: each must be indexed, have
    //     a copy in a frame that is not a delta, and be undamaged.
    //     Only the chunks that are bases are looked up, so only those are
    //     kept (not a set of every chunk of every plain frame).
    let bases: HashSet<ChunkId> = packs
        .values()
        .flat_map(|p| p.frames.iter())
        .flat_map(|f| f.bases())
        .collect();
    let plain: HashSet<ChunkId> = packs
        .values()
        .flat_map(|p| p.frames.iter())
        .filter(|f| f.compression != Compression::ZstdDelta)
        .flat_map(|f| f.chunks.iter().map(|c| c.id))
        .filter(|c| bases.contains(c))
        .collect();
    drop(bases);
    let base_problem = |b: &ChunkId| {
        if !index.contains(b) {
            Some("not in the index")
        } else if damaged.contains(b) {
            Some("damaged")
        } else if !plain.contains(b) {
            Some("stored only in delta frames")
        } else {
            None
        }
    };
    let mut spoiled = Vec::new();
    for pid in &ids {
        for fr in &packs[pid].frames {
            let bases = fr.bases();
            if let Some((b, why)) = bases.iter().find_map(|b| Some((b, base_problem(b)?))) {
                report.errors.push(format!(
                    "pack {}: the delta frame at {} needs chunk {}, which is {why}",
                    pid.short(),
                    fr.offset,
                    b.short(),
                ));
                spoiled.extend(fr.chunks.iter().map(|c| c.id));
            }
        }
    }
    damaged.extend(spoiled);

    // 3c. Archived WAL: damaged files, names with more than one content,
    //     and segments missing from what a physical snapshot replays.
    report.errors.extend(crate::source::pg::check_wal(repo)?);
    let readable: Vec<(SnapshotId, &crate::repo::Snapshot)> = snapshots
        .iter()
        .filter_map(|(id, s)| Some((*id, s.as_ref().ok()?)))
        .collect();
    let gaps = crate::source::pg::continuity_problems(repo, &readable)?;
    report.wal_gaps = gaps.len();
    report.errors.extend(gaps);

    // 4. Map damage to snapshots and files. Each distinct node-list chunk
    //    is read and parsed once (NodeScan): its damaged paths and its
    //    nodes' paths and kinds are kept for every list that holds it.
    let bad = |c: &ChunkId| !index.contains(c) || damaged.contains(c);
    // 3d. Archived WAL whose content cannot be read back: named, as the
    //     snapshots are (a damaged segment used to pass unnoticed).
    let wal = crate::source::pg::damaged_wal(repo, &wal_files, bad)?;
    report.damaged_wal = wal.needed;
    for name in &report.damaged_wal {
        report.errors.push(format!(
            "WAL file {name}: its content is damaged or not in the index; point-in-time recovery cannot replay past it"
        ));
    }
    for name in wal.backup_history.keys() {
        report.errors.push(format!(
            "backup history file {name}: its content is damaged or not in the index; recovery never reads it, so no range is cut; `cairn repair packs` removes it"
        ));
    }
    report.snapshots = snapshots.len();
    let mut scan = NodeScan::new(repo);
    for (sid, snap) in snapshots {
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(e.to_string());
                report.damaged.push(Damage {
                    snapshot: sid,
                    time: jiff::Timestamp::UNIX_EPOCH,
                    source: String::new(),
                    path: "(snapshot file)".into(),
                });
                continue;
            }
        };
        for src in &snap.sources {
            let dmg = |path: &str| Damage {
                snapshot: sid,
                time: snap.time,
                source: src.name.clone(),
                path: path.to_string(),
            };
            if src.tree.iter().any(bad) {
                report.damaged.push(dmg("(node list)"));
                continue;
            }
            let visit = scan.visit(&src.tree, |nodes| Ok(CheckPiece::of(nodes, &bad)));
            let visit = match visit {
                Ok(v) => v,
                Err(e) => {
                    report.errors.push(format!("snapshot {}: {e}", sid.short()));
                    report.damaged.push(dmg("(node list)"));
                    continue;
                }
            };
            for p in &visit.pieces {
                report.damaged.extend(p.damaged.iter().map(|d| dmg(d)));
            }
            for n in visit
                .straddling
                .iter()
                .filter(|n| n.content.iter().any(bad))
            {
                report.damaged.push(dmg(&n.path));
            }
            // A node list that restore would refuse (spec §2.6): each path
            // was checked once per chunk, the list-wide rules per list.
            let paths = visit
                .pieces
                .iter()
                .flat_map(|p| p.nodes.iter().map(|(path, kind)| (&**path, *kind)))
                .chain(visit.straddling.iter().map(|n| (n.path.as_str(), n.kind)));
            let problem = visit
                .pieces
                .iter()
                .find_map(|p| p.bad_path.clone())
                .or_else(|| bad_path(&visit.straddling))
                .or_else(|| crate::repo::node_path::list_problem(paths));
            if let Some(p) = problem {
                report.errors.push(format!(
                    "snapshot {}: source {}: node list cannot be restored: {p}",
                    sid.short(),
                    src.name
                ));
                report.damaged.push(dmg("(node list)"));
            }
        }
    }
    report.damaged.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::restore_point::tests::{another_handle, snapshot_files};

    /// Read order (spec/repository.md §3): a backup that another process
    /// finished after `check` opened the repository (and loaded the index)
    /// is checked whole, not reported as damaged.
    #[test]
    fn a_backup_finished_after_open_is_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let checker = crate::repository::test_repo(dir.path());
        let writer = another_handle(dir.path(), "writer");
        snapshot_files(&writer, dir.path());
        let report = check(&checker, true, None, true).unwrap();
        assert!(report.ok(), "{:?} {:?}", report.errors, report.damaged);
        assert_eq!(report.snapshots, 1);
        assert!(report.packs > 0 && report.packs_read == report.packs);
    }

    /// A snapshot file removed between a listing and its reading (a forget
    /// while a reader without a lock runs) is no longer there, not an
    /// error; a damaged one still is (found by `scripts/timelapse`: the
    /// daemon's `GET /snapshots` answered 500 during retention).
    #[test]
    fn a_snapshot_forgotten_since_the_listing_is_skipped_a_damaged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repository::test_repo(dir.path());
        let id = snapshot_files(&repo, dir.path());
        assert!(repo.read_listed_snapshot(id).unwrap().is_some());
        let path = dir.path().join("repo/snapshots").join(id.to_string());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = repo.read_listed_snapshot(id).unwrap_err();
        assert_eq!(err.kind(), crate::error::Kind::Integrity, "{err}");
        std::fs::remove_file(&path).unwrap();
        assert!(repo.read_listed_snapshot(id).unwrap().is_none());
        assert!(repo.snapshots().unwrap().is_empty());
    }

    /// `N/M` parts are cut by pack id: the M parts read every pack exactly
    /// once, and a pack stays in its part when others come or go (the
    /// daemon reads the next part at each restore test).
    #[test]
    fn parts_cover_every_pack_once_and_do_not_move() {
        let packs: Vec<PackId> = (0..200u32)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.wrapping_mul(2654435761).to_be_bytes());
                PackId(b)
            })
            .collect();
        let mut seen = Vec::new();
        for n in 1..=7 {
            let part = subset(Some(&format!("{n}/7")), false, &packs).unwrap();
            assert!(!part.is_empty());
            let fewer = subset(Some(&format!("{n}/7")), false, &packs[50..]).unwrap();
            assert!(fewer.iter().all(|p| part.contains(p)));
            seen.extend(part);
        }
        seen.sort();
        let mut all = packs.clone();
        all.sort();
        assert_eq!(seen, all);
        assert!(subset(Some("0/7"), false, &packs).is_err());
        assert!(subset(Some("8/7"), false, &packs).is_err());
    }
}
