//! Comparing a restored tree with the node list it was restored from: the
//! restore test of file, stdin and command sources (spec/repository.md
//! §2.8). Every node must be there with its type, permission bits,
//! modification time, owner (when cairn runs as root, as restores then set
//! owners) and link target; every file's bytes must hash, chunk by chunk,
//! to the chunk ids the node lists — what was read at backup time.

use crate::error::{Error, Result};
use crate::repo::{Node, NodeKind};
use crate::repository::Repository;
use serde::Serialize;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a comparison found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TreeCheck {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// One line per difference (`path: what differs`), at most [`MAX_SHOWN`].
    pub differences: Vec<String>,
    /// Differences found in all (more than are listed when over [`MAX_SHOWN`]).
    pub different: u64,
}

pub const MAX_SHOWN: usize = 20;

impl TreeCheck {
    pub fn ok(&self) -> bool {
        self.different == 0
    }
    fn differ(&mut self, path: &str, what: String) {
        self.different += 1;
        if self.differences.len() < MAX_SHOWN {
            self.differences.push(format!("{path}: {what}"));
        }
    }
}

/// Compare the tree under `root` with `nodes` (paths relative to `root`).
pub fn compare_tree(repo: &Repository, nodes: &[Node], root: &Path) -> Result<TreeCheck> {
    let owners = rustix::process::geteuid().is_root();
    let index = repo.cache.reader()?;
    let mut check = TreeCheck::default();
    for n in nodes {
        let path = root.join(&n.path);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                check.differ(&n.path, format!("missing after the restore ({e})"));
                continue;
            }
        };
        let kind = if meta.file_type().is_symlink() {
            NodeKind::Symlink
        } else if meta.is_dir() {
            NodeKind::Dir
        } else if meta.is_file() {
            NodeKind::File
        } else {
            check.differ(&n.path, "restored as a special file".into());
            continue;
        };
        if kind != n.kind {
            check.differ(
                &n.path,
                format!("is a {kind:?}, the snapshot has a {:?}", n.kind),
            );
            continue;
        }
        match kind {
            NodeKind::Dir => check.dirs += 1,
            NodeKind::Symlink => check.symlinks += 1,
            NodeKind::File => check.files += 1,
        }
        if owners && (meta.uid(), meta.gid()) != (n.uid, n.gid) {
            check.differ(
                &n.path,
                format!(
                    "owner {}:{}, the snapshot has {}:{}",
                    meta.uid(),
                    meta.gid(),
                    n.uid,
                    n.gid
                ),
            );
        }
        if kind == NodeKind::Symlink {
            let target = std::fs::read_link(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if Some(target.to_string_lossy().as_ref()) != n.target.as_deref() {
                check.differ(
                    &n.path,
                    format!(
                        "links to {}, the snapshot to {:?}",
                        target.display(),
                        n.target
                    ),
                );
            }
            continue;
        }
        if meta.mode() & 0o7777 != n.mode & 0o7777 {
            check.differ(
                &n.path,
                format!(
                    "mode {:o}, the snapshot has {:o}",
                    meta.mode() & 0o7777,
                    n.mode & 0o7777
                ),
            );
        }
        let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        if mtime != n.mtime_ns as i128 {
            check.differ(
                &n.path,
                format!("modified at {mtime} ns, the snapshot has {} ns", n.mtime_ns),
            );
        }
        if kind == NodeKind::File {
            if meta.len() != n.size {
                check.differ(
                    &n.path,
                    format!("{} bytes, the snapshot has {}", meta.len(), n.size),
                );
                continue;
            }
            check.bytes += n.size;
            let mut f = std::fs::File::open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let mut buf = Vec::new();
            for (i, id) in n.content.iter().enumerate() {
                let Some(loc) = index.get(id)? else {
                    return Err(Error::integrity(format!(
                        "chunk {} of {} is not in the index",
                        id.short(),
                        n.path
                    )));
                };
                buf.resize(loc.length as usize, 0);
                f.read_exact(&mut buf)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                if repo.key.chunk_id(&buf) != *id {
                    check.differ(
                        &n.path,
                        format!(
                            "chunk {} of {} differs from the snapshot",
                            i + 1,
                            n.content.len()
                        ),
                    );
                    break;
                }
            }
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A restored tree compares equal; each kind of tampering is found and
    /// named.
    #[test]
    fn tampering_after_a_restore_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repository::test_repo(dir.path());
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/app.conf"), "workers = 4\n").unwrap();
        std::fs::write(src.join("big"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("etc/app.conf", src.join("link")).unwrap();
        let (outcome, stored, _) = crate::archiver::with_packer(&repo, |p| {
            let job = crate::source::files::FilesJob {
                name: "files",
                paths: std::slice::from_ref(&src),
                host: "test",
                parent: crate::source::files::Parent::Nothing,
                quiet: true,
            };
            crate::source::files::archive_files(p, &job)
        })
        .unwrap();
        repo.write_index(stored.packs).unwrap();
        let nodes = repo.read_tree(&outcome.record).unwrap();
        let restored = dir.path().join("restored");
        crate::restorer::restore_nodes(
            &repo,
            &nodes,
            &restored,
            crate::restorer::Overwrite::Never,
            true,
        )
        .unwrap();

        let check = compare_tree(&repo, &nodes, &restored).unwrap();
        assert!(check.ok(), "{:?}", check.differences);
        assert_eq!((check.files, check.symlinks), (2, 1));

        let rel = src.strip_prefix("/").unwrap();
        let conf = restored.join(rel).join("etc/app.conf");
        let mtime = std::fs::metadata(&conf).unwrap().modified().unwrap();
        std::fs::write(&conf, "workers = 5\n").unwrap(); // same size, other bytes
        filetime::set_file_mtime(&conf, filetime::FileTime::from_system_time(mtime)).unwrap();
        std::fs::set_permissions(
            restored.join(rel).join("big"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        std::fs::remove_file(restored.join(rel).join("link")).unwrap();

        let check = compare_tree(&repo, &nodes, &restored).unwrap();
        // Removing the link also changed its directory's modification time.
        assert_eq!(check.different, 4, "{:?}", check.differences);
        let all = check.differences.join("\n");
        assert!(all.contains("etc/app.conf: chunk 1 of 1 differs"), "{all}");
        assert!(all.contains("big: mode 666"), "{all}");
        assert!(all.contains("link: missing after the restore"), "{all}");
        assert!(all.contains("src: modified at"), "{all}");
    }
}
