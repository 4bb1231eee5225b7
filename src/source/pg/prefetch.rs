//! Reading WAL ahead during recovery. PostgreSQL runs `restore_command`
//! once per segment and waits for it, so a recovery that fetches each
//! segment from the repository only when asked replays no faster than one
//! read-decrypt-decompress at a time. `wal-fetch` therefore starts a
//! background `wal-prefetch` that reads the next segments of the archive
//! into a spool directory while PostgreSQL replays; the next `wal-fetch`
//! finds its segment there and only moves it into place.
//!
//! The spool is `<cache dir>/wal-prefetch/<repository id>/`, mode 0700, of
//! the user PostgreSQL runs as. One prefetcher works on a spool at a time
//! (`flock` on `.lock`; the next waits for it); each removes what recovery has passed (segments of
//! the same timeline up to the one asked for) and unfinished files, so the
//! spool holds at most `--prefetch` segments. Files are written by
//! [`wal_fetch`] itself (verified chunks, temporary name, fsync, rename), so
//! a spooled segment is as checked as a fetched one (spec/postgres.md,
//! "Recovery reads ahead").

use super::wal::wal_fetch;
use crate::error::{Error, Result};
use crate::repo::{FileKind, RepoId};
use crate::repository::Repository;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The spool of repository `repo` under a cache directory.
pub fn spool_dir(cache_dir: &Path, repo: RepoId) -> PathBuf {
    cache_dir.join("wal-prefetch").join(repo.to_hex())
}

pub use super::wal_chain::is_segment;

/// Move segment `name` from the spool to `dest` if a prefetcher put it
/// there. `Ok(false)`: not spooled, fetch it from the repository.
pub fn take(spool: &Path, name: &str, dest: &Path) -> Result<bool> {
    if !is_segment(name) {
        return Ok(false);
    }
    let src = spool.join(name);
    match std::fs::rename(&src, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // Another file system: copy it through a temporary file.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            let tmp = dest.with_extension("cairn-tmp");
            std::fs::copy(&src, &tmp)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, dest))
                .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
            let _ = std::fs::remove_file(&src);
            Ok(true)
        }
        Err(e) => Err(Error::io(
            format!("moving {} to {}", src.display(), dest.display()),
            e,
        )),
    }
}

/// Read up to `count` archived segments that follow `after` on its
/// timeline (in name order) into `spool`, after any prefetcher still at it
/// is done. Returns how many were read.
pub fn prefetch(repo: &Repository, spool: &Path, after: &str, count: u32) -> Result<usize> {
    if !is_segment(after) || count == 0 {
        return Ok(0);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(spool)
        .map_err(|e| Error::io(format!("creating {}", spool.display()), e))?;
    let lock = std::fs::File::create(spool.join(".lock"))
        .map_err(|e| Error::io(format!("creating {}/.lock", spool.display()), e))?;
    // Wait for the one before: it may be reading what this one needs, and
    // what it leaves out (it started earlier) this one reads.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io(format!("locking {}/.lock", spool.display()), e.into()))?;
    let timeline = &after[..8];
    // What recovery has passed, and what an interrupted prefetcher left.
    if let Ok(rd) = std::fs::read_dir(spool) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let passed = is_segment(&name) && name.starts_with(timeline) && *name <= *after;
            if passed || name.ends_with(".cairn-tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut next: Vec<String> = repo
        .backend
        .list(FileKind::Wal)?
        .into_iter()
        .filter_map(|(n, _)| n.split('.').next().map(str::to_string))
        .filter(|n| is_segment(n) && n.starts_with(timeline) && **n > *after)
        .collect();
    next.sort();
    next.dedup();
    let mut read = 0;
    for name in next.into_iter().take(count as usize) {
        let dest = spool.join(&name);
        if dest.exists() {
            continue;
        }
        wal_fetch(repo, &name, &dest)?;
        read += 1;
    }
    Ok(read)
}
