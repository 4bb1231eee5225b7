//! The files source: a walk of the trees below the given paths, storing
//! each file's content, directories and symlinks with their metadata.

use crate::archiver::{store_nodes, Packer};
use crate::chunk::ChunkError;
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::{Node, NodeKind, SourceKind, SourceRecord, SourceStatus};
use crate::source::SourceOutcome;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

struct Entry {
    abs: PathBuf,
    rel: String,
    meta: std::fs::Metadata,
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
        out.push(Entry {
            abs: path.to_path_buf(),
            rel,
            meta,
        });
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

/// Back up files, directories and symlinks below `paths` (absolute).
pub fn archive_files(
    packer: &mut Packer,
    name: &str,
    paths: &[PathBuf],
    quiet: bool,
) -> Result<SourceOutcome> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for p in roots(paths) {
        walk(&p, &mut entries, &mut errors);
    }
    let total: u64 = entries
        .iter()
        .filter(|e| e.meta.is_file())
        .map(|e| e.meta.len())
        .sum();
    let progress = Progress::bytes(total, quiet, "snapshot");
    let mut nodes = Vec::with_capacity(entries.len());
    let (mut files, mut dirs, mut symlinks, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for e in entries {
        let m = &e.meta;
        let mut node = Node {
            path: e.rel,
            kind: NodeKind::File,
            mode: m.mode() & 0o7777,
            mtime_ns: mtime_ns(m),
            uid: m.uid(),
            gid: m.gid(),
            size: 0,
            content: Vec::new(),
            target: None,
        };
        let ft = m.file_type();
        if ft.is_dir() {
            node.kind = NodeKind::Dir;
            dirs += 1;
        } else if ft.is_symlink() {
            match std::fs::read_link(&e.abs) {
                Ok(t) => match t.to_str() {
                    Some(t) => node.target = Some(t.to_string()),
                    None => {
                        errors.push(format!("{}: link target is not UTF-8", e.abs.display()));
                        continue;
                    }
                },
                Err(err) => {
                    errors.push(format!("{}: {err}", e.abs.display()));
                    continue;
                }
            }
            node.kind = NodeKind::Symlink;
            symlinks += 1;
        } else if ft.is_file() {
            let file = match std::fs::File::open(&e.abs) {
                Ok(f) => f,
                Err(err) => {
                    errors.push(format!("{}: {err}", e.abs.display()));
                    continue;
                }
            };
            match packer.add_stream(file, &progress) {
                Ok((ids, n)) => {
                    node.content = ids;
                    node.size = n;
                    bytes += n;
                    files += 1;
                }
                Err(ChunkError::Read(err)) => {
                    errors.push(format!("{}: {err}", e.abs.display()));
                    continue;
                }
                Err(ChunkError::Sink(err)) => {
                    progress.finish();
                    return Err(err);
                }
            }
        } else {
            tracing::warn!(path = %e.abs.display(), "skipping special file (device, socket or fifo)");
            continue;
        }
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
        bytes_read: bytes,
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
