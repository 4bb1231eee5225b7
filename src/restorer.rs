//! Restore files from a snapshot.
//!
//! Before anything is written, every pack the restore needs is read and its
//! bytes are checked against its name (the BLAKE3 of its content), and every
//! chunk must be in the index. Then frames are decoded in parallel, each
//! exactly once, in pack order; each chunk is checked against its keyed id and
//! written at its offset in every file that uses it. All-zero chunks become
//! holes. Metadata (mode, owner, mtime) is applied last, directories deepest
//! first, so writing files does not disturb directory times.

use crate::backend::FileRef;
use crate::error::{Error, Result, ResultExt};
use crate::index::Location;
use crate::interrupt;
use crate::progress::Progress;
use crate::repo::{FileKind, Id, Node, NodeKind};
use crate::repository::{chunk_slice, FrameDecoder, Repository};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub packs_verified: u64,
}

struct Target {
    file: usize,
    file_offset: u64,
    chunk: Id,
    offset: u32,
    length: u32,
}

struct FrameWork {
    loc: Location,
    targets: Vec<Target>,
}

/// Does `path` (from a snapshot) stay inside the target directory?
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Keep nodes equal to or below one of `include` (no filter when empty).
pub fn filter_nodes(nodes: Vec<Node>, include: &[String]) -> Vec<Node> {
    if include.is_empty() {
        return nodes;
    }
    let inc: Vec<String> = include
        .iter()
        .map(|p| p.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect();
    nodes
        .into_iter()
        .filter(|n| {
            inc.iter().any(|p| {
                n.path == *p
                    || n.path.starts_with(&format!("{p}/"))
                    || p.starts_with(&format!("{}/", n.path))
            })
        })
        .collect()
}

/// Check that every chunk is indexed and every pack it needs is intact.
/// Returns the locations of all chunks in `nodes`.
pub fn verify_before_restore(
    repo: &Repository,
    nodes: &[Node],
) -> Result<(HashMap<Id, Location>, u64)> {
    let reader = repo.cache.reader()?;
    let mut locs = HashMap::new();
    let mut missing: BTreeMap<String, usize> = BTreeMap::new();
    for n in nodes {
        for id in &n.content {
            if locs.contains_key(id) {
                continue;
            }
            match reader.get(id)? {
                Some(l) => {
                    locs.insert(*id, l);
                }
                None => *missing.entry(n.path.clone()).or_default() += 1,
            }
        }
    }
    if !missing.is_empty() {
        let files: Vec<String> = missing.keys().take(10).cloned().collect();
        return Err(Error::integrity(format!(
            "{} file(s) of the snapshot have chunks missing from the index (e.g. {}); nothing was restored",
            missing.len(),
            files.join(", ")
        ))
        .with_hint("run `cairn check --read-data` to see what is damaged; restore another snapshot with `--at` or an id"));
    }
    let packs: Vec<Id> = locs
        .values()
        .map(|l| l.pack)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let next = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    // Remote stores are latency-bound: more downloads in flight than cores.
    let threads = if repo.backend.is_local() {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .min(4)
    } else {
        8
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(pack) = packs.get(i) else { break };
                let f = FileRef::new(FileKind::Pack, pack.to_hex());
                // A local pack is hashed where it lies; only a damaged one is
                // read whole, to see whether the frames needed are intact.
                if repo.backend.is_local()
                    && repo.backend.content_id(&f).is_ok_and(|id| id == *pack)
                {
                    continue;
                }
                let verdict = match repo.backend.read(&f) {
                    Ok(bytes) if Id::of_bytes(&bytes) == *pack => {
                        repo.spool_pack(*pack, &bytes).err().map(|e| e.to_string())
                    }
                    Ok(bytes) => needed_frames_intact(repo, *pack, &bytes, &locs)
                        .err()
                        .map(|e| format!("{f}: content does not match its name, and a frame this restore needs is damaged: {e}")),
                    Err(e) => Some(format!("{f}: {e}")),
                };
                if let Some(v) = verdict {
                    if let Ok(mut b) = bad.lock() {
                        b.push((*pack, v));
                    }
                }
            });
        }
    });
    let bad = bad.into_inner().unwrap_or_default();
    if !bad.is_empty() {
        let bad_packs: HashSet<Id> = bad.iter().map(|(p, _)| *p).collect();
        let files: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                n.content
                    .iter()
                    .any(|c| locs.get(c).is_some_and(|l| bad_packs.contains(&l.pack)))
            })
            .map(|n| n.path.as_str())
            .take(10)
            .collect();
        let details: Vec<String> = bad.into_iter().map(|(_, v)| v).collect();
        return Err(Error::integrity(format!(
            "{} pack(s) needed by this restore are damaged or missing ({}); affected files include: {}; nothing was restored",
            details.len(),
            details.join("; "),
            files.join(", ")
        ))
        .with_hint("run `cairn check --read-data` for the full list; restore another snapshot with `--at` or an id"));
    }
    Ok((locs, packs.len() as u64))
}

/// A pack whose bytes do not match its name may still hold intact frames
/// (damage elsewhere in it): decode and verify exactly the chunks needed.
fn needed_frames_intact(
    repo: &Repository,
    pack: Id,
    bytes: &[u8],
    locs: &HashMap<Id, Location>,
) -> Result<()> {
    let f = FileRef::new(FileKind::Pack, pack.to_hex());
    let mut frames: HashMap<u64, Vec<(&Id, &Location)>> = HashMap::new();
    for (id, l) in locs.iter().filter(|(_, l)| l.pack == pack) {
        frames.entry(l.frame_offset).or_default().push((id, l));
    }
    for (offset, chunks) in frames {
        let l = chunks[0].1;
        let ct = bytes
            .get(offset as usize..offset as usize + l.frame_length as usize)
            .ok_or_else(|| {
                Error::integrity(format!("frame at {offset} is beyond the end of the file"))
            })?;
        let plain = crate::repository::decode_frame_bytes(
            &repo.key,
            ct,
            l.compression,
            l.raw_length,
            &f,
            offset,
        )?;
        for (id, l) in chunks {
            if chunk_slice(&plain, l).is_none_or(|d| repo.key.chunk_id(d) != *id) {
                return Err(Error::integrity(format!(
                    "chunk {} does not match its id",
                    id.short()
                )));
            }
        }
    }
    tracing::warn!(pack = %pack, "pack is damaged, but every frame this restore needs is intact; run `cairn check --read-data`");
    Ok(())
}

/// Restore `nodes` below `target`.
pub fn restore_nodes(
    repo: &Repository,
    nodes: &[Node],
    target: &Path,
    quiet: bool,
) -> Result<RestoreStats> {
    for n in nodes {
        if !safe_relative(&n.path) {
            return Err(Error::integrity(format!(
                "snapshot contains an unsafe path {:?}; nothing was restored",
                n.path
            )));
        }
    }
    let (locs, packs_verified) = verify_before_restore(repo, nodes)?;
    let mut stats = RestoreStats {
        packs_verified,
        ..Default::default()
    };
    std::fs::create_dir_all(target).ctx(|| format!("creating {}", target.display()))?;

    // Directories and symlinks first, then empty files of the right size.
    let mut file_paths: Vec<PathBuf> = Vec::new();
    let mut frames: HashMap<(Id, u64), FrameWork> = HashMap::new();
    for n in nodes {
        let path = target.join(&n.path);
        match n.kind {
            NodeKind::Dir => {
                std::fs::create_dir_all(&path).ctx(|| format!("creating {}", path.display()))?;
                stats.dirs += 1;
            }
            NodeKind::Symlink => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .ctx(|| format!("creating {}", parent.display()))?;
                }
                let _ = std::fs::remove_file(&path);
                std::os::unix::fs::symlink(n.target.as_deref().unwrap_or(""), &path)
                    .ctx(|| format!("creating symlink {}", path.display()))?;
                stats.symlinks += 1;
            }
            NodeKind::File => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .ctx(|| format!("creating {}", parent.display()))?;
                }
                let f =
                    std::fs::File::create(&path).ctx(|| format!("creating {}", path.display()))?;
                f.set_len(n.size)
                    .ctx(|| format!("sizing {}", path.display()))?;
                let file = file_paths.len();
                file_paths.push(path);
                queue_file(&mut frames, file, &n.content, |id| Ok(locs[id].clone()))?;
                stats.files += 1;
                stats.bytes += n.size;
            }
        }
    }
    let mut work: Vec<FrameWork> = frames.into_values().collect();
    work.sort_by_key(|w| w.loc.frame_key());

    let progress = Progress::bytes(stats.bytes, quiet, "restore");
    let written = write_frames(repo, &work, &file_paths, &progress);
    progress.finish();
    written?;
    apply_metadata(nodes, target)?;
    Ok(stats)
}

/// Queue the chunks of file number `file` under the frames that hold them.
fn queue_file(
    frames: &mut HashMap<(Id, u64), FrameWork>,
    file: usize,
    content: &[Id],
    mut location: impl FnMut(&Id) -> Result<Location>,
) -> Result<()> {
    let mut off = 0u64;
    for id in content {
        let loc = location(id)?;
        off += loc.length as u64;
        let target = Target {
            file,
            file_offset: off - loc.length as u64,
            chunk: *id,
            offset: loc.offset,
            length: loc.length,
        };
        frames
            .entry(loc.frame_key())
            .or_insert_with(|| FrameWork {
                loc,
                targets: Vec::new(),
            })
            .targets
            .push(target);
    }
    Ok(())
}

/// Decode `work` on a few threads, each frame once, writing its chunks into
/// `paths`; stops at the first failure (or interruption) and returns it.
fn write_frames(
    repo: &Repository,
    work: &[FrameWork],
    paths: &[PathBuf],
    progress: &Progress,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let fail = |e: Error| {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                };
                let mut decoder = match FrameDecoder::new() {
                    Ok(d) => d,
                    Err(e) => return fail(e),
                };
                loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(w) = work.get(i) else { break };
                    if let Err(e) = interrupt::check()
                        .and_then(|_| write_frame(repo, &mut decoder, w, paths, progress))
                    {
                        fail(e);
                        break;
                    }
                }
            });
        }
    });
    match failure.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Write one stored file to `path` (created or truncated), its frames
/// decoded in parallel and every chunk checked against its id: a dump
/// spooled for `pg_restore --jobs`. The caller verified the packs.
pub fn write_file(repo: &Repository, node: &Node, path: &Path) -> Result<()> {
    let reader = repo.cache.reader()?;
    let f = std::fs::File::create(path).ctx(|| format!("creating {}", path.display()))?;
    f.set_len(node.size)
        .ctx(|| format!("sizing {}", path.display()))?;
    let mut frames: HashMap<(Id, u64), FrameWork> = HashMap::new();
    queue_file(&mut frames, 0, &node.content, |id| {
        reader.get(id)?.ok_or_else(|| {
            Error::integrity(format!(
                "chunk {} of {} is not in the index",
                id.short(),
                node.path
            ))
        })
    })?;
    let mut work: Vec<FrameWork> = frames.into_values().collect();
    work.sort_by_key(|w| w.loc.frame_key());
    write_frames(repo, &work, &[path.to_path_buf()], &Progress::hidden())
}

fn write_frame(
    repo: &Repository,
    decoder: &mut FrameDecoder,
    w: &FrameWork,
    paths: &[PathBuf],
    progress: &Progress,
) -> Result<()> {
    let frame = decoder.frame(repo, &w.loc)?;
    let mut verified: HashSet<u32> = HashSet::new();
    let mut open: Option<(usize, std::fs::File)> = None;
    for t in &w.targets {
        let loc = Location {
            offset: t.offset,
            length: t.length,
            ..w.loc.clone()
        };
        let data = chunk_slice(frame, &loc).ok_or_else(|| {
            Error::integrity(format!(
                "chunk {} lies outside its frame in pack {}",
                t.chunk.short(),
                w.loc.pack.short()
            ))
        })?;
        if !verified.contains(&t.offset) {
            if repo.key.chunk_id(data) != t.chunk {
                return Err(Error::integrity(format!(
                    "chunk {} in pack {} does not match its id; {} is incomplete",
                    t.chunk.short(),
                    w.loc.pack.short(),
                    paths[t.file].display()
                )));
            }
            verified.insert(t.offset);
        }
        progress.inc(data.len() as u64);
        if data.iter().all(|b| *b == 0) {
            continue; // a hole: the file was sized with set_len
        }
        if open.as_ref().map(|(i, _)| *i) != Some(t.file) {
            let p = &paths[t.file];
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .ctx(|| format!("opening {}", p.display()))?;
            open = Some((t.file, f));
        }
        if let Some((_, f)) = &open {
            f.write_all_at(data, t.file_offset)
                .ctx(|| format!("writing {}", paths[t.file].display()))?;
        }
    }
    Ok(())
}

fn apply_metadata(nodes: &[Node], target: &Path) -> Result<()> {
    let root = unsafe { libc::geteuid() } == 0;
    let time = |n: &Node| {
        filetime::FileTime::from_unix_time(
            n.mtime_ns.div_euclid(1_000_000_000),
            n.mtime_ns.rem_euclid(1_000_000_000) as u32,
        )
    };
    for n in nodes.iter().filter(|n| n.kind != NodeKind::Dir) {
        let path = target.join(&n.path);
        if root {
            std::os::unix::fs::lchown(&path, Some(n.uid), Some(n.gid))
                .ctx(|| format!("setting owner of {}", path.display()))?;
        }
        if n.kind == NodeKind::Symlink {
            filetime::set_symlink_file_times(&path, time(n), time(n))
                .ctx(|| format!("setting times of {}", path.display()))?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(n.mode))
                .ctx(|| format!("setting mode of {}", path.display()))?;
            filetime::set_file_times(&path, time(n), time(n))
                .ctx(|| format!("setting times of {}", path.display()))?;
        }
    }
    let mut dirs: Vec<&Node> = nodes.iter().filter(|n| n.kind == NodeKind::Dir).collect();
    dirs.sort_by_key(|n| std::cmp::Reverse(n.path.matches('/').count()));
    for n in dirs {
        use std::os::unix::fs::PermissionsExt;
        let path = target.join(&n.path);
        if root {
            std::os::unix::fs::lchown(&path, Some(n.uid), Some(n.gid))
                .ctx(|| format!("setting owner of {}", path.display()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(n.mode))
            .ctx(|| format!("setting mode of {}", path.display()))?;
        filetime::set_file_times(&path, time(n), time(n))
            .ctx(|| format!("setting times of {}", path.display()))?;
    }
    Ok(())
}
