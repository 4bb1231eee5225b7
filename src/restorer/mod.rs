//! Restore files from a snapshot.
//!
//! Every chunk must be in the index before anything starts. Then every pack
//! the restore needs is read once, whole, in parallel: its bytes are checked
//! against its name (the BLAKE3 of its content), the frames needed from it are
//! decoded while it is in memory, each exactly once, and each chunk is checked
//! against its keyed id and written at its offset in every file that uses it,
//! in a private staging directory in the target. All-zero chunks become
//! holes. Only when every pack has passed are directories made and the
//! files, with their owner, mode and times, renamed into place (a failed
//! restore removes the staging directory and changes nothing else); the
//! directories' metadata comes last, deepest first. [`target`] places
//! everything by directory handle, never following a symlink out of the
//! target.
//!
//! Restores of databases and topics, which stream their data to a server,
//! check all packs first with [`verify_before_restore`]; a dump spooled for
//! `pg_restore --jobs` is then written by [`write_file`] through the same pass.

use crate::backend::FileRef;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::index::Location;
use crate::interrupt;
use crate::progress::Progress;
use crate::repo::{node_path, ChunkId, Node, NodeKind, PackId};
use crate::repository::{chunk_slice, FrameDecoder, Repository};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use target::{StagingDir, TargetDir};

pub mod compare;
mod existing;
mod include;
mod locate;
mod target;
use existing::Action;
pub use existing::Overwrite;
pub use include::{filter_nodes, near_paths, unmatched_includes};
use locate::{by_pack, locate_chunks, locate_files, FrameWork, Frames, Target};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// What a file restore did. `files`, `dirs` and `symlinks` count what is
/// now in the target as the snapshot has it (written, or found equal);
/// `bytes` what was written.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub packs_verified: u64,
    /// The rule for what already stood in the target.
    pub overwrite: Overwrite,
    /// Entries that replaced something else standing in the target.
    pub replaced: u64,
    /// Files already in the target with the snapshot's content (only their
    /// owner, mode and times were set), and symlinks to the same target.
    pub unchanged: u64,
    /// Snapshot entries not restored because something already stood
    /// there (or above them) and the rule keeps it.
    pub kept: u64,
}

/// What the restore did with what already stood in the target, for a
/// summary line: `in the target already: 2 replaced, 5 unchanged, 1 kept
/// (--overwrite never)`; `None` when nothing stood there.
pub fn existing_summary(s: &RestoreStats) -> Option<String> {
    if s.replaced + s.unchanged + s.kept == 0 {
        return None;
    }
    Some(format!(
        "in the target already: {} replaced, {} unchanged, {} kept (--overwrite {})",
        s.replaced, s.unchanged, s.kept, s.overwrite
    ))
}

/// Check that every chunk is indexed and every pack it needs is intact.
/// Returns the locations of all chunks in `nodes`.
pub fn verify_before_restore(
    repo: &Repository,
    nodes: &[Node],
) -> Result<(HashMap<ChunkId, Location>, u64)> {
    let locs = locate_chunks(&repo.cache.reader()?, nodes)?;
    let packs: Vec<PackId> = locs
        .values()
        .map(|l| l.pack)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let next = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    let threads = pack_threads(repo);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(pack) = packs.get(i) else { break };
                let f = FileRef::of(*pack);
                // A local pack is hashed where it lies; only a damaged one is
                // read whole, to see whether the frames needed are intact.
                if repo.backend.is_local()
                    && repo.backend.content_id(&f).is_ok_and(|id| id == pack.raw())
                {
                    continue;
                }
                let verdict = match repo.backend.read(&f) {
                    Ok(bytes) if PackId::of_bytes(&bytes) == *pack => {
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
        let bad_packs: HashSet<PackId> = bad.iter().map(|(p, _)| *p).collect();
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
        return Err(damaged_packs(&files, bad));
    }
    Ok((locs, packs.len() as u64))
}

/// Threads reading packs: remote stores are latency-bound, so more
/// downloads are kept in flight than there are cores.
fn pack_threads(repo: &Repository) -> usize {
    if repo.backend.is_local() {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .min(4)
    } else {
        8
    }
}

/// The error for a restore stopped by damaged packs: which packs, why, and
/// (some of) the files they would have spoiled.
fn damaged_packs(files: &[&str], bad: Vec<(PackId, String)>) -> Error {
    let details: Vec<String> = bad.into_iter().map(|(_, v)| v).collect();
    Error::integrity(format!(
        "{} pack(s) needed by this restore are damaged or missing ({}); affected files include: {}; nothing was restored",
        details.len(),
        details.join("; "),
        files.join(", ")
    ))
    .with_hint("run `cairn check --read-data` for the full list; restore another snapshot with `--at` or an id")
}

/// A pack whose bytes do not match its name may still hold intact frames
/// (damage elsewhere in it): decode and verify exactly the chunks needed.
fn needed_frames_intact(
    repo: &Repository,
    pack: PackId,
    bytes: &[u8],
    locs: &HashMap<ChunkId, Location>,
) -> Result<()> {
    let mut frames: HashMap<u64, Vec<(&ChunkId, &Location)>> = HashMap::new();
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
        let plain = repo.decode_located(ct, l)?;
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

/// Restore `nodes` below `target`, treating what already stands there by
/// `overwrite` (see [`existing`]).
///
/// Every pack the restore needs is read once, whole: its bytes are checked
/// against its name and, while it is in memory, the frames needed from it are
/// decoded and each chunk is checked against its id. File contents are
/// written into a private staging directory in the target (see
/// [`target`]); only when every pack has passed are they moved into place,
/// directories made and symlinks created, so a damaged repository, a failed
/// read or an interrupted restore leaves the files in `target` as they
/// were. Nothing outside `target` is ever written: directories are entered
/// by handle, without following symlinks.
pub fn restore_nodes(
    repo: &Repository,
    nodes: &[Node],
    target: &Path,
    overwrite: Overwrite,
    quiet: bool,
) -> Result<RestoreStats> {
    let nodes = one_tree(nodes)?;
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    // Every chunk of every file, even of those the target turns out to
    // have already, must be in the index before anything else.
    let reader = repo.cache.reader()?;
    let mut frames = {
        let all_files: Vec<&Node> = sorted
            .iter()
            .copied()
            .filter(|n| n.kind == NodeKind::File)
            .collect();
        locate_files(&reader, &all_files)?
    };
    let mut dest = TargetDir::open(target)?;
    let actions = {
        let shown = |rel: &str| target.join(rel).display().to_string();
        existing::survey(repo, &reader, &mut dest.probe(), &sorted, overwrite, shown)?
    };
    let mut stats = RestoreStats {
        overwrite,
        ..RestoreStats::default()
    };
    let plan: Vec<(&Node, Action)> = sorted.into_iter().zip(actions).collect();
    for (n, a) in &plan {
        match a {
            Action::Keep => {
                stats.kept += 1;
                tracing::info!(path = %target.join(&n.path).display(), overwrite = %overwrite, "kept what stands in the target");
            }
            Action::Refresh => stats.unchanged += 1,
            _ => {}
        }
    }
    let writes = |a: &Action| matches!(a, Action::Write | Action::Replace);
    // The files written, numbered anew among themselves.
    let mut files: Vec<&Node> = Vec::new();
    let renumber: Vec<Option<u32>> = plan
        .iter()
        .filter(|(n, _)| n.kind == NodeKind::File)
        .map(|(n, a)| {
            writes(a).then(|| {
                files.push(n);
                files.len() as u32 - 1
            })
        })
        .collect();
    locate::keep_files(&mut frames, &renumber);
    drop(renumber);
    stats.bytes = files.iter().map(|n| n.size).sum();
    // One staging directory per file system the files land on.
    let parents = dest.staging_parents(&files)?;
    let mut staging: Vec<StagingDir> = Vec::new();
    let mut staged_in: Vec<u32> = Vec::with_capacity(files.len());
    let mut by_parent: HashMap<&str, u32> = HashMap::new();
    dest.remove_leftovers("")?;
    for p in parents {
        let s = match by_parent.get(p) {
            Some(s) => *s,
            None => {
                if !p.is_empty() {
                    dest.remove_leftovers(p)?;
                }
                staging.push(dest.staging(p)?);
                let s = staging.len() as u32 - 1;
                by_parent.insert(p, s);
                s
            }
        };
        staged_in.push(s);
    }
    let out = Outputs::staged(&files, &staging, staged_in);
    let packs = by_pack(frames);
    stats.packs_verified = packs.len() as u64;

    let progress = Progress::bytes(stats.bytes, quiet, "restore");
    let bad = write_packs(repo, &packs, &out, &progress);
    progress.finish();
    let bad = bad?;
    if !bad.is_empty() {
        return Err(out.damaged(&packs, bad));
    }
    drop(packs);
    out.make_rest()?;

    // Every chunk is written and verified: only now is the target changed,
    // parents before what they hold.
    let replaced = |stats: &mut RestoreStats, n: &Node| {
        stats.replaced += 1;
        tracing::info!(path = %target.join(&n.path).display(), "replaced what stood in the target");
    };
    for (n, a) in plan.iter().filter(|(n, _)| n.kind == NodeKind::Dir) {
        if *a == Action::Keep {
            continue;
        }
        dest.dir(&n.path)?;
        stats.dirs += 1;
        if *a == Action::Replace {
            replaced(&mut stats, n);
        }
    }
    let mut placed = 0;
    for (n, a) in plan.iter().filter(|(n, _)| n.kind == NodeKind::File) {
        match a {
            Action::Write | Action::Replace => {
                let i = placed;
                placed += 1;
                dest.place_file(&staging[out.staged_in(i)], &i.to_string(), n)?;
                if *a == Action::Replace {
                    replaced(&mut stats, n);
                }
            }
            Action::Refresh => dest.refresh_file(n)?,
            Action::Keep => continue,
        }
        stats.files += 1;
    }
    for (n, a) in plan.iter().filter(|(n, _)| n.kind == NodeKind::Symlink) {
        if *a == Action::Keep {
            continue;
        }
        dest.place_symlink(n)?;
        stats.symlinks += 1;
        if *a == Action::Replace {
            replaced(&mut stats, n);
        }
    }
    for s in staging {
        s.finish()?;
    }
    // Directories last, deepest first, so placing what they hold does not
    // disturb their times (and a read-only one was writable until now).
    let mut dirs: Vec<&Node> = plan
        .iter()
        .filter(|(n, a)| n.kind == NodeKind::Dir && *a != Action::Keep)
        .map(|(n, _)| *n)
        .collect();
    dirs.sort_by_key(|n| std::cmp::Reverse(n.path.matches('/').count()));
    for n in dirs {
        dest.finish_dir(n)?;
    }
    Ok(stats)
}

/// `nodes` as one tree to restore: every path safe, each once (a path that
/// several sources hold is restored from the last of them), nothing below a
/// file or symlink.
fn one_tree(nodes: &[Node]) -> Result<std::borrow::Cow<'_, [Node]>> {
    let mut seen = HashSet::with_capacity(nodes.len());
    let nodes = if nodes.iter().all(|n| seen.insert(n.path.as_str())) {
        std::borrow::Cow::Borrowed(nodes)
    } else {
        let mut last: HashMap<&str, &Node> = HashMap::new();
        for n in nodes {
            last.insert(n.path.as_str(), n);
        }
        tracing::warn!("the restored sources hold some paths more than once: each is restored from the last source that holds it");
        std::borrow::Cow::Owned(last.into_values().cloned().collect())
    };
    if let Some(p) = node_path::tree_problem(&nodes) {
        return Err(Error::integrity(format!(
            "the snapshot cannot be restored as one tree: {p}; nothing was restored"
        ))
        .with_hint(
            "restore its sources one at a time with --source, or restore another snapshot",
        ));
    }
    Ok(nodes)
}

/// The files a restore writes, each created at its final size (holes
/// throughout) by the first thread with a chunk for it: creating thousands
/// of files is file-system work that then runs alongside the decoding
/// instead of before it, on one thread. A file's path is made when it is
/// opened, not kept: 200,000 staged paths held 24 MB (issue 29).
struct Outputs<'a> {
    /// The nodes written, by number: their sizes and chunk ids.
    files: &'a [&'a Node],
    place: Place<'a>,
    made: Vec<AtomicBool>,
}

/// Where an output file is written.
enum Place<'a> {
    /// File `i` is `i` in staging directory `dirs[staged_in[i]]`.
    Staged {
        dirs: &'a [StagingDir],
        staged_in: Vec<u32>,
    },
    /// The one file, at this path.
    One(PathBuf),
}

impl<'a> Outputs<'a> {
    fn staged(files: &'a [&'a Node], dirs: &'a [StagingDir], staged_in: Vec<u32>) -> Outputs<'a> {
        Outputs::new(files, Place::Staged { dirs, staged_in })
    }

    fn new(files: &'a [&'a Node], place: Place<'a>) -> Outputs<'a> {
        let made = files.iter().map(|_| AtomicBool::new(false)).collect();
        Outputs { files, place, made }
    }

    /// The staging directory of file `file`.
    fn staged_in(&self, file: usize) -> usize {
        match &self.place {
            Place::Staged { staged_in, .. } => staged_in[file] as usize,
            Place::One(_) => 0,
        }
    }

    fn path(&self, file: usize) -> PathBuf {
        match &self.place {
            Place::Staged { dirs, staged_in } => dirs[staged_in[file] as usize].file(file),
            Place::One(p) => p.clone(),
        }
    }

    /// The id of the chunk `t` writes.
    fn chunk_id(&self, t: &Target) -> Option<&'a ChunkId> {
        self.files
            .get(t.file as usize)?
            .content
            .get(t.chunk as usize)
    }

    /// File number `file`, open for writing; created and sized when new.
    fn open(&self, file: usize) -> Result<std::fs::File> {
        let path = self.path(file);
        // Owner-only from the start: the real mode comes once the file is
        // complete (a secret must never be readable while it is staged).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        // Whoever sizes it, writes before or after stay within the size.
        if !self.made[file].swap(true, Ordering::AcqRel) {
            f.set_len(self.files[file].size)
                .ctx(|| format!("sizing {}", path.display()))?;
        }
        Ok(f)
    }

    /// Create the files no chunk was written to: empty, or all holes.
    fn make_rest(&self) -> Result<()> {
        for (i, m) in self.made.iter().enumerate() {
            if !m.load(Ordering::Acquire) {
                self.open(i)?;
            }
        }
        Ok(())
    }

    /// The error for damaged packs `bad`, naming some of the files that
    /// need them.
    fn damaged(&self, packs: &[(PackId, Vec<FrameWork>)], bad: Vec<(PackId, String)>) -> Error {
        let bad_packs: HashSet<PackId> = bad.iter().map(|(p, _)| *p).collect();
        let files: Vec<&str> = locate::files_in(packs, &bad_packs)
            .into_iter()
            .map(|i| self.files[i].path.as_str())
            .collect();
        damaged_packs(&files, bad)
    }
}

/// One frame to decode and write: its ciphertext, cut from its pack as the
/// pack's bytes arrived.
struct FrameJob<'a> {
    pack: PackId,
    ciphertext: Vec<u8>,
    work: &'a FrameWork,
}

/// Read `packs`, each once and whole, on reader threads (many for a remote
/// store: requests are latency-bound). Each needed frame is cut from its
/// pack's bytes as they arrive and handed to decoder threads (one per
/// core), which write its chunks into `out`: the decoders start on a pack's
/// first frame while the rest is still being downloaded, and frames rather
/// than packs are their unit, so the last packs are decoded by all cores.
/// Each pack is also hashed as it arrives and checked against its name.
/// Returns the packs that could not be read or whose needed frames are
/// damaged, with why; a failure to write, or an interruption, stops all
/// threads and is returned as the error.
fn write_packs(
    repo: &Repository,
    packs: &[(PackId, Vec<FrameWork>)],
    out: &Outputs,
    progress: &Progress,
) -> Result<Vec<(PackId, String)>> {
    let next = AtomicUsize::new(0);
    let bad: Mutex<Vec<(PackId, String)>> = Mutex::new(Vec::new());
    // Packs whose bytes do not hash to their name.
    let mismatched: Mutex<HashSet<PackId>> = Mutex::new(HashSet::new());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let stopped = || failure.lock().map(|f| f.is_some()).unwrap_or(true);
    let fail = |e: Error| {
        if let Ok(mut f) = failure.lock() {
            f.get_or_insert(e);
        }
    };
    let mark_bad = |pack: PackId, why: String| {
        if let Ok(mut b) = bad.lock() {
            if !b.iter().any(|(p, _)| *p == pack) {
                b.push((pack, why));
            }
        }
    };
    let is_bad = |pack: PackId| {
        bad.lock()
            .map(|b| b.iter().any(|(p, _)| *p == pack))
            .unwrap_or(true)
    };
    let decoders = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    // A few frames queued per decoder: readers wait rather than pile up packs.
    let (send, recv) = std::sync::mpsc::sync_channel::<FrameJob>(decoders * 4);
    let recv = Mutex::new(recv);
    let (next, stopped, fail, mark_bad) = (&next, &stopped, &fail, &mark_bad);
    let mismatched_ref = &mismatched;
    std::thread::scope(|s| {
        for _ in 0..pack_threads(repo) {
            let send = send.clone();
            s.spawn(move || loop {
                if stopped() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((pack, work)) = packs.get(i) else { break };
                if let Err(e) = interrupt::check() {
                    fail(e);
                    break;
                }
                let mut cutter = FrameCutter::new(work);
                let read = repo.read_pack_pieces(pack, &mut |piece| {
                    interrupt::check()?;
                    cutter.take(piece, |w, ciphertext| {
                        let job = FrameJob {
                            pack: *pack,
                            ciphertext,
                            work: w,
                        };
                        send.send(job)
                            .map_err(|_| Error::failure("the restore's decoders stopped"))
                    })
                });
                match read {
                    Err(e) if e.kind() == Kind::Interrupted => {
                        fail(e);
                        break;
                    }
                    Err(e) => mark_bad(*pack, e.to_string()),
                    Ok(()) => {
                        if let Some(w) = cutter.missing() {
                            mark_bad(
                                *pack,
                                format!("the frame at {} lies beyond the end of the file", w.loc.frame_offset),
                            );
                        }
                        if cutter.id() != *pack {
                            tracing::warn!(pack = %pack, "pack does not match its name; it is used only if every frame this restore needs from it decodes and verifies; run `cairn check --read-data`");
                            if let Ok(mut m) = mismatched_ref.lock() {
                                m.insert(*pack);
                            }
                        }
                    }
                }
            });
        }
        drop(send);
        for _ in 0..decoders {
            s.spawn(|| {
                let mut decoder = FrameDecoder::new().map_err(fail).ok();
                // After a failure, keep draining so readers never block.
                while let Ok(Ok(job)) = recv.lock().map(|r| r.recv()) {
                    let Some(d) = decoder.as_mut().filter(|_| !stopped() && !is_bad(job.pack))
                    else {
                        continue;
                    };
                    let written = d
                        .frame_of(repo, &job.work.loc, &job.ciphertext)
                        .and_then(|frame| write_chunks(repo, frame, job.work, out, progress));
                    match written {
                        Ok(()) => {}
                        Err(e) if e.kind() == Kind::Integrity => mark_bad(job.pack, e.to_string()),
                        Err(e) => fail(e),
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    // Each reason names its pack, and says so when a needed frame failed
    // in a pack that does not match its name.
    let mismatched = mismatched.into_inner().unwrap_or_default();
    Ok(bad
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|(pack, why)| {
            let f = FileRef::of(pack);
            match mismatched.contains(&pack) {
                true => (pack, format!("{f}: content does not match its name, and a frame this restore needs is damaged: {why}")),
                false => (pack, format!("{f}: {why}")),
            }
        })
        .collect())
}

/// Cuts the frames a restore needs from a pack's bytes as they arrive, and
/// hashes all of them.
struct FrameCutter<'a> {
    /// The needed frames, in offset order.
    work: &'a [FrameWork],
    /// The next of them to complete.
    next: usize,
    /// Bytes of the pack seen so far.
    at: u64,
    /// The next frame's ciphertext so far.
    current: Vec<u8>,
    hasher: blake3::Hasher,
}

impl<'a> FrameCutter<'a> {
    fn new(work: &'a [FrameWork]) -> FrameCutter<'a> {
        FrameCutter {
            work,
            next: 0,
            at: 0,
            current: Vec::new(),
            hasher: blake3::Hasher::new(),
        }
    }

    /// Take the pack's next bytes; hand every frame they complete to `done`.
    fn take(
        &mut self,
        piece: &[u8],
        mut done: impl FnMut(&'a FrameWork, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        self.hasher.update(piece);
        let (start, end) = (self.at, self.at + piece.len() as u64);
        self.at = end;
        while let Some(w) = self.work.get(self.next) {
            let (f0, f1) = (
                w.loc.frame_offset,
                w.loc.frame_offset + w.loc.frame_length as u64,
            );
            if f0 >= end {
                break;
            }
            let (lo, hi) = (f0.max(start), f1.min(end));
            if self.current.is_empty() {
                // The frame's whole ciphertext, once: no doubling as it grows.
                self.current.reserve_exact(w.loc.frame_length as usize);
            }
            if lo < hi {
                self.current
                    .extend_from_slice(&piece[(lo - start) as usize..(hi - start) as usize]);
            }
            if f1 > end {
                break; // the frame goes on in the next piece
            }
            self.next += 1;
            done(w, std::mem::take(&mut self.current))?;
        }
        Ok(())
    }

    /// The first needed frame the pack ended before completing.
    fn missing(&self) -> Option<&'a FrameWork> {
        self.work.get(self.next)
    }

    /// The BLAKE3 of the bytes taken: the pack's name when it is intact.
    fn id(&self) -> PackId {
        PackId(*self.hasher.finalize().as_bytes())
    }
}

/// Write one stored file to `path` (replacing any file there), through the
/// same pack reading, checks and parallel decoding as a file restore: a dump
/// spooled for `pg_restore --jobs`.
pub fn write_file(repo: &Repository, node: &Node, path: &Path) -> Result<()> {
    let files = [node];
    let frames: Frames = locate_files(&repo.cache.reader()?, &files)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).ctx(|| format!("removing {}", path.display()))
        }
        _ => {}
    }
    let out = Outputs::new(&files, Place::One(path.to_path_buf()));
    let packs = by_pack(frames);
    let bad = write_packs(repo, &packs, &out, &Progress::hidden())?;
    if !bad.is_empty() {
        return Err(out.damaged(&packs, bad));
    }
    out.make_rest()
}

/// Check each chunk `w` needs from `frame` (its plaintext) against its id
/// and write it at its offsets in `out`; all-zero chunks stay holes.
fn write_chunks(
    repo: &Repository,
    frame: &[u8],
    w: &FrameWork,
    out: &Outputs,
    progress: &Progress,
) -> Result<()> {
    let mut verified: HashSet<u32> = HashSet::new();
    let mut open: Option<(usize, std::fs::File)> = None;
    let mut run: Option<Run> = None;
    for t in &w.targets {
        let id = out
            .chunk_id(t)
            .ok_or_else(|| Error::failure("a restore target names no chunk of its file"))?;
        let loc = Location {
            offset: t.offset,
            length: t.length,
            ..w.loc.clone()
        };
        let data = chunk_slice(frame, &loc).ok_or_else(|| {
            Error::integrity(format!(
                "chunk {} lies outside its frame in pack {}",
                id.short(),
                w.loc.pack.short()
            ))
        })?;
        if !verified.contains(&t.offset) {
            if repo.key.chunk_id(data) != *id {
                return Err(Error::integrity(format!(
                    "chunk {} in pack {} does not match its id; {} is incomplete",
                    id.short(),
                    w.loc.pack.short(),
                    out.path(t.file as usize).display()
                )));
            }
            verified.insert(t.offset);
        }
        progress.inc(data.len() as u64);
        if data.iter().all(|b| *b == 0) {
            continue; // a hole: the file was sized with set_len
        }
        // Chunks that follow each other both in the frame and in the file
        // (the usual case: a frame holds a stretch of a stream) go out as
        // one write.
        let start = t.offset as usize;
        match run.as_mut() {
            Some(r)
                if r.file == t.file as usize
                    && r.file_end == t.file_offset
                    && r.frame.end == start =>
            {
                r.frame.end += data.len();
                r.file_end += data.len() as u64;
            }
            _ => {
                if let Some(r) = run.take() {
                    r.write(frame, out, &mut open)?;
                }
                run = Some(Run {
                    file: t.file as usize,
                    file_end: t.file_offset + data.len() as u64,
                    frame: start..start + data.len(),
                });
            }
        }
    }
    if let Some(r) = run.take() {
        r.write(frame, out, &mut open)?;
    }
    Ok(())
}

/// Bytes `frame` of a decoded frame that go to file `file`, ending at
/// `file_end`.
struct Run {
    file: usize,
    file_end: u64,
    frame: std::ops::Range<usize>,
}

impl Run {
    fn write(
        self,
        frame: &[u8],
        out: &Outputs,
        open: &mut Option<(usize, std::fs::File)>,
    ) -> Result<()> {
        if open.as_ref().map(|(i, _)| *i) != Some(self.file) {
            *open = Some((self.file, out.open(self.file)?));
        }
        if let Some((_, f)) = open {
            let data = &frame[self.frame.clone()];
            f.write_all_at(data, self.file_end - data.len() as u64)
                .ctx(|| format!("writing {}", out.path(self.file).display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Compression;

    fn frame(offset: u64, length: u32) -> FrameWork {
        FrameWork {
            loc: Location {
                pack: PackId::default(),
                frame_offset: offset,
                frame_length: length,
                raw_length: 0,
                compression: Compression::None,
                offset: 0,
                length: 0,
                base: None,
            },
            targets: Vec::new(),
        }
    }

    /// The frames a cutter hands over when `pack` arrives in pieces of `sizes`.
    fn cut(
        work: &[FrameWork],
        pack: &[u8],
        sizes: &[usize],
    ) -> (Vec<(u64, Vec<u8>)>, bool, PackId) {
        let mut cutter = FrameCutter::new(work);
        let mut got = Vec::new();
        let mut rest = pack;
        for &n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            cutter
                .take(piece, |w, ct| {
                    got.push((w.loc.frame_offset, ct));
                    Ok(())
                })
                .unwrap();
        }
        (got, cutter.missing().is_some(), cutter.id())
    }

    #[test]
    fn frames_are_cut_from_a_pack_as_it_arrives() {
        let pack: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        // Needed: three of the pack's frames, one of them ending at its end.
        let work = [frame(0, 1000), frame(2500, 3000), frame(9000, 1000)];
        let want: Vec<(u64, Vec<u8>)> = work
            .iter()
            .map(|w| {
                let o = w.loc.frame_offset as usize;
                (o as u64, pack[o..o + w.loc.frame_length as usize].to_vec())
            })
            .collect();
        for sizes in [&[10_000][..], &[1], &[999, 1, 7], &[4096]] {
            let (got, missing, id) = cut(&work, &pack, sizes);
            assert_eq!(got, want, "pieces of {sizes:?}");
            assert!(!missing);
            assert_eq!(id, PackId::of_bytes(&pack));
        }
        // A pack cut short leaves its last frame missing, and is not its name.
        let (got, missing, id) = cut(&work, &pack[..9500], &[4096]);
        assert_eq!(got.len(), 2);
        assert!(missing);
        assert_ne!(id, PackId::of_bytes(&pack));
    }
}
