//! The files source: a walk of the trees below the given paths, storing
//! each file's content, directories and symlinks with their metadata.
//!
//! A file whose size, mtime, ctime and inode are those recorded for its
//! path in the parent snapshot is not read: its content is the parent's
//! (spec/repository.md §2.6, "Unchanged files").

use crate::archiver::{store_nodes, Packer};
use crate::chunk::ChunkError;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{Node, NodeKind, SnapshotId, SourceKind, SourceRecord, SourceStatus};
use crate::source::SourceOutcome;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn ctime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.ctime_nsec())
}

/// A change this recent (before the file was looked at) may be followed by
/// another within the file system's timestamp granularity that leaves
/// ctime as it was; such a file's ctime is not recorded, so the next
/// snapshot reads it again.
const RACY_NS: i64 = 2_000_000_000;

/// The sizes of a changed file, and of its parent's version, for which the
/// new chunks are delta-compressed against the old ones: below, a file has
/// too few chunks for it to matter; above, reading the old version for its
/// anchors costs more than deltas save.
const DELTA_SIZES: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 30);

/// Which earlier snapshot tells which files are unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Parent {
    /// The newest snapshot of this host that holds this source, complete
    /// or incomplete, over (at least) the same paths.
    #[default]
    Newest,
    /// This snapshot (`--parent ID`).
    Snapshot(SnapshotId),
    /// None: read every file (`--force`).
    Nothing,
}

/// The parent's regular files that can be taken over, by path.
type ParentFiles = HashMap<String, ParentFile>;

/// What a parent's file node tells: whether the file changed, and its
/// content (not the rest of the node, nor its path twice).
struct ParentFile {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    content: Vec<crate::repo::ChunkId>,
}

/// The parent's files for source `name` over `paths` on `host`. A parent
/// that cannot be read is a warning (everything is read); a named one that
/// does not hold the source is an error.
fn parent_files(
    packer: &Packer,
    name: &str,
    paths: &[PathBuf],
    host: &str,
    choice: Parent,
) -> Result<Option<(SnapshotId, ParentFiles)>> {
    if choice == Parent::Nothing {
        return Ok(None);
    }
    let repo = packer.repo();
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    fn holds<'s>(s: &'s crate::repo::Snapshot, name: &str) -> Option<&'s SourceRecord> {
        s.sources.iter().find(|r| {
            r.name == name && r.kind == SourceKind::Files && r.status != SourceStatus::Failed
        })
    }
    let found = match choice {
        Parent::Snapshot(id) => {
            let snap: crate::repo::Snapshot = repo.read_sealed(id)?;
            let Some(rec) = holds(&snap, name).cloned() else {
                return Err(Error::usage(format!(
                    "snapshot {} holds no files source {name:?} to compare with",
                    id.short()
                ))
                .with_hint(
                    "give a snapshot of the same paths (`cairn snapshots`), or leave out --parent",
                ));
            };
            Some((id, rec))
        }
        _ => {
            let snaps = match repo.snapshots() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list snapshots to find a parent; reading every file");
                    return Ok(None);
                }
            };
            snaps.into_iter().rev().find_map(|(id, s)| {
                let same = s.host == host && shown.iter().all(|p| s.paths.contains(p));
                same.then(|| holds(&s, name).cloned())
                    .flatten()
                    .map(|r| (id, r))
            })
        }
    };
    let Some((id, rec)) = found else {
        return Ok(None);
    };
    // Node by node into the map: the parent's whole list is never held.
    let mut files = ParentFiles::new();
    let read = repo.for_each_node(&rec, |n| {
        if n.kind == NodeKind::File && n.inode != 0 && n.ctime_ns != 0 {
            let f = ParentFile {
                size: n.size,
                mtime_ns: n.mtime_ns,
                ctime_ns: n.ctime_ns,
                inode: n.inode,
                content: n.content,
            };
            files.insert(n.path, f);
        }
    });
    match read {
        Ok(()) => Ok(Some((id, files))),
        Err(e) if choice == Parent::Newest => {
            tracing::warn!(parent = %id.short(), error = %e, "cannot read the parent snapshot's files; reading every file");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The parent's node of the file at `rel` when the file is unchanged:
/// same size, mtime, ctime and inode, and every chunk of it still in the
/// repository.
fn unchanged<'p>(
    packer: &Packer,
    parent: &'p ParentFiles,
    e: &Entry,
) -> Result<Option<&'p ParentFile>> {
    let Some(p) = parent.get(&e.rel) else {
        return Ok(None);
    };
    let same = e.kind == EntryKind::File
        && p.size == e.size
        && p.mtime_ns == e.mtime_ns
        && p.ctime_ns == e.ctime_ns
        && p.inode == e.ino;
    if !same {
        return Ok(None);
    }
    for id in &p.content {
        if !packer.has_chunk(id)? {
            return Ok(None);
        }
    }
    Ok(Some(p))
}

/// What the walk keeps of a path until it is stored: the metadata a node
/// needs, compactly. A `std::fs::Metadata` takes ~170 bytes and the
/// absolute path another ~80; at 200,000 files that was ~50 MB of a
/// snapshot's peak memory (issue 29), for fields read once.
struct Entry {
    /// The path without its leading `/` (the node's path).
    rel: String,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    size: u64,
    /// The parent's copy can be taken (see [`unchanged`]): decided once,
    /// before the progress total, and used when the file is stored.
    unchanged: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A device, socket or fifo: skipped.
    Special,
}

impl Entry {
    fn of(rel: String, m: &std::fs::Metadata) -> Entry {
        let ft = m.file_type();
        Entry {
            rel,
            kind: if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else if ft.is_file() {
                EntryKind::File
            } else {
                EntryKind::Special
            },
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime_ns: mtime_ns(m),
            ctime_ns: ctime_ns(m),
            ino: m.ino(),
            size: m.len(),
            unchanged: false,
        }
    }

    /// The path on disk: the walk's roots are absolute.
    fn abs(&self) -> PathBuf {
        Path::new("/").join(&self.rel)
    }
}

fn walk(path: &Path, out: &mut Vec<Entry>, errors: &mut Vec<String>) {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    let Some(rel) = path.to_str().map(|s| s.trim_start_matches('/').to_string()) else {
        errors.push(format!(
            "{}: file name is not UTF-8 (not supported yet)",
            path.display()
        ));
        return;
    };
    let is_dir = meta.is_dir();
    // `/` itself has no node: its contents land directly in the target.
    if !rel.is_empty() {
        out.push(Entry::of(rel, &meta));
    }
    if !is_dir {
        return;
    }
    let mut children: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| match e {
                Ok(e) => Some(e.path()),
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    None
                }
            })
            .collect(),
        Err(e) => {
            errors.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    children.sort();
    for c in children {
        walk(&c, out, errors);
    }
}

/// The trees to walk for `paths` (absolute): each without `.` and `..`
/// components (a `..` is resolved on the file system, as reading it would,
/// so `plans/../data` is stored as where it really is), each once, and none
/// below another (`D` already holds `D/sub`), so no path is stored twice.
fn roots(paths: &[PathBuf]) -> Vec<PathBuf> {
    use std::path::Component;
    let mut out: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            let clean: PathBuf = p.components().filter(|c| *c != Component::CurDir).collect();
            if !clean.components().any(|c| c == Component::ParentDir) {
                return clean;
            }
            // Resolve the parent, keep the last component as it is (a
            // symlink is stored as a symlink, not as what it points to).
            let resolved = match (clean.parent(), clean.file_name()) {
                (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|d| d.join(name)),
                _ => std::fs::canonicalize(&clean),
            };
            resolved.unwrap_or(clean)
        })
        .collect();
    out.sort();
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::with_capacity(out.len());
    for p in out {
        // Sorted, so an ancestor comes before everything below it.
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    kept
}

/// Where the files of a source are, and what to compare them with.
pub struct FilesJob<'a> {
    pub name: &'a str,
    /// Absolute.
    pub paths: &'a [PathBuf],
    /// The host the snapshot is recorded for (its parent is of that host).
    pub host: &'a str,
    pub parent: Parent,
    pub quiet: bool,
}

/// Back up files, directories and symlinks below `paths` (absolute).
pub fn archive_files(packer: &mut Packer, job: &FilesJob) -> Result<SourceOutcome> {
    let name = job.name;
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for p in roots(job.paths) {
        walk(&p, &mut entries, &mut errors);
    }
    // Each parent file is taken out as its path is stored: the map shrinks
    // while the new list grows.
    let mut parent_files = match parent_files(packer, name, job.paths, job.host, job.parent)? {
        Some((id, f)) => {
            tracing::debug!(source = name, parent = %id.short(), files = f.len(), "comparing with the parent snapshot");
            f
        }
        None => ParentFiles::new(),
    };
    let mut total = 0u64;
    for e in entries.iter_mut().filter(|e| e.kind == EntryKind::File) {
        e.unchanged = unchanged(packer, &parent_files, e)?.is_some();
        if !e.unchanged {
            total += e.size;
        }
    }
    let progress = Progress::bytes(total, job.quiet, "snapshot");
    let mut nodes = Vec::with_capacity(entries.len());
    let (mut files, mut dirs, mut symlinks, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let (mut read, mut files_unchanged) = (0u64, 0u64);
    let walked_at = jiff::Timestamp::now().as_nanosecond() as i64;
    for e in entries {
        let abs = e.abs();
        let mut node = Node {
            kind: NodeKind::File,
            mode: e.mode & 0o7777,
            mtime_ns: e.mtime_ns,
            uid: e.uid,
            gid: e.gid,
            size: 0,
            content: Vec::new(),
            target: None,
            inode: 0,
            ctime_ns: 0,
            path: String::new(),
        };
        if e.kind == EntryKind::Dir {
            node.kind = NodeKind::Dir;
            dirs += 1;
        } else if e.kind == EntryKind::Symlink {
            match std::fs::read_link(&abs) {
                Ok(t) => match t.to_str() {
                    Some(t) => node.target = Some(t.to_string()),
                    None => {
                        errors.push(format!("{}: link target is not UTF-8", abs.display()));
                        continue;
                    }
                },
                Err(err) => {
                    errors.push(format!("{}: {err}", abs.display()));
                    continue;
                }
            }
            node.kind = NodeKind::Symlink;
            symlinks += 1;
        } else if e.kind == EntryKind::File {
            node.inode = e.ino;
            node.ctime_ns = if walked_at - e.ctime_ns < RACY_NS {
                0
            } else {
                e.ctime_ns
            };
            let parent = match (e.unchanged, parent_files.remove(&e.rel)) {
                (true, Some(p)) => {
                    node.path = e.rel;
                    node.content = p.content;
                    node.size = p.size;
                    bytes += p.size;
                    files += 1;
                    files_unchanged += 1;
                    nodes.push(node);
                    continue;
                }
                (_, p) => p,
            };
            let file = match std::fs::File::open(&abs) {
                Ok(f) => f,
                Err(err) => {
                    errors.push(format!("{}: {err}", abs.display()));
                    continue;
                }
            };
            // A large file that changed (a dump taken again, a database
            // file): its new chunks are delta-compressed against the
            // parent's version, as a PostgreSQL dump is (spec/repository.md
            // §2.3, "Delta frames").
            // Such a file is cut into larger chunks, as dumps are: a changed
            // chunk costs a small delta whatever its size, every chunk its
            // metadata.
            let base =
                parent.filter(|p| DELTA_SIZES.contains(&p.size) && DELTA_SIZES.contains(&e.size));
            let large = DELTA_SIZES.contains(&e.size);
            if let Some(p) = base {
                packer.set_base_stream(Some(p.content));
            }
            if large {
                packer.set_chunking(Some(crate::chunk::Chunking::Cdc(
                    crate::chunk::delta_stream_params(packer.repo_chunker()),
                )));
            }
            let stored = packer.add_stream(file, &progress);
            packer.set_base_stream(None);
            packer.set_chunking(None);
            match stored {
                Ok((ids, n)) => {
                    node.content = ids;
                    node.size = n;
                    bytes += n;
                    read += n;
                    files += 1;
                }
                Err(ChunkError::Read(err)) => {
                    errors.push(format!("{}: {err}", abs.display()));
                    continue;
                }
                Err(ChunkError::Sink(err)) => {
                    progress.finish();
                    return Err(err);
                }
            }
        } else {
            tracing::warn!(path = %abs.display(), "skipping special file (device, socket or fifo)");
            continue;
        }
        node.path = e.rel;
        nodes.push(node);
    }
    progress.finish();
    for e in &errors {
        tracing::warn!("unreadable: {e}");
    }
    let tree = store_nodes(packer, &nodes)?;
    Ok(SourceOutcome {
        record: SourceRecord {
            name: name.to_string(),
            kind: SourceKind::Files,
            status: if errors.is_empty() {
                SourceStatus::Complete
            } else {
                SourceStatus::Incomplete
            },
            errors,
            tree,
            size: bytes,
            metadata: serde_json::Value::Null,
        },
        files,
        dirs,
        symlinks,
        bytes_read: read,
        files_unchanged,
        verified: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 24: `..`, repeated and nested roots would store paths that
    /// cannot be restored.
    #[test]
    fn roots_are_resolved_once_and_never_nested() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(d.join("plans")).unwrap();
        std::fs::create_dir_all(d.join("data/sub")).unwrap();
        let p = |s: &str| d.join(s);
        assert_eq!(roots(&[p("plans/../data")]), vec![p("data")]);
        assert_eq!(
            roots(&[p("data"), p("data/sub"), p("data")]),
            vec![p("data")]
        );
        assert_eq!(
            roots(&[p("data/./sub"), p("plans")]),
            vec![p("data/sub"), p("plans")]
        );
        assert_eq!(roots(&[p("data/sub/..")]), vec![p("data")]);
        assert_eq!(
            roots(&[PathBuf::from("/"), p("data")]),
            vec![PathBuf::from("/")]
        );
    }
}
