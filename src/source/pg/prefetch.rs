//! Reading WAL ahead during recovery. PostgreSQL runs `restore_command`
//! once per segment and waits for it, so a recovery that fetches each
//! segment from the repository only when asked replays no faster than one
//! read-decrypt-decompress at a time. `wal-fetch` therefore starts a
//! background `wal-prefetch` that reads the next segments of the archive
//! into a spool directory while PostgreSQL replays; the next `wal-fetch`
//! finds its segment there and only moves it into place.
//!
//! The spool is `<cache dir>/wal-prefetch/<repository id>/`, mode 0700, of
//! the user PostgreSQL runs as. Each `wal-fetch` records the segment it
//! was asked for in `.asked`; one prefetcher per spool (`flock` on `.lock`;
//! a second exits at once) follows it, removes what recovery has passed
//! (segments of the same timeline up to the one asked for) and unfinished
//! files, keeps the next `--prefetch` segments there, and exits once
//! recovery has asked for nothing new for a few seconds. Files are written by
//! [`wal_fetch`] itself (verified chunks, temporary name, fsync, rename), so
//! a spooled segment is as checked as a fetched one (spec/postgres.md,
//! "Recovery reads ahead").

use super::wal::wal_fetch;
use crate::error::{Error, Result};
use crate::repo::{FileKind, RepoId};
use crate::repository::Repository;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// How long a prefetcher waits for recovery to ask for another segment
/// before it exits.
const IDLE: Duration = Duration::from_secs(5);

/// Create the spool (mode 0700).
fn make_spool(spool: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(spool)
        .map_err(|e| Error::io(format!("creating {}", spool.display()), e))
}

/// Tell the prefetcher which segment recovery asked for last: `.asked`,
/// replaced atomically. A spool that cannot be written only means no
/// read-ahead.
pub fn record_asked(spool: &Path, name: &str) {
    let done = make_spool(spool).is_ok() && {
        let tmp = spool.join(format!(".asked.{}", std::process::id()));
        std::fs::write(&tmp, name).is_ok() && std::fs::rename(&tmp, spool.join(".asked")).is_ok()
    };
    if !done {
        tracing::debug!(spool = %spool.display(), "cannot record the segment asked for");
    }
}

fn read_asked(spool: &Path) -> Option<String> {
    std::fs::read_to_string(spool.join(".asked"))
        .ok()
        .filter(|n| is_segment(n))
}

/// The spool's lock, unless another prefetcher holds it.
fn try_lock(spool: &Path) -> Result<Option<std::fs::File>> {
    let lock = std::fs::File::create(spool.join(".lock"))
        .map_err(|e| Error::io(format!("creating {}/.lock", spool.display()), e))?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(lock)),
        Err(_) => Ok(None),
    }
}

/// Archived segment names of `timeline` after `after`, in order.
fn archived_after(repo: &Repository, timeline: &str, after: &str) -> Result<Vec<String>> {
    let mut next: Vec<String> = repo
        .backend
        .list(FileKind::Wal)?
        .into_iter()
        .filter_map(|(n, _)| n.split('.').next().map(str::to_string))
        .filter(|n| is_segment(n) && n.starts_with(timeline) && **n > *after)
        .collect();
    next.sort();
    next.dedup();
    Ok(next)
}

/// Keep the `count` archived segments after the one recovery asked for
/// last (`.asked`, at first `after`) in `spool`, one at a time, until
/// recovery has asked for nothing new for [`IDLE`]. One prefetcher per
/// spool: a second one exits at once, the first follows `.asked`. Returns
/// how many segments were read.
pub fn prefetch(repo: &Repository, spool: &Path, after: &str, count: u32) -> Result<usize> {
    if !is_segment(after) || count == 0 {
        return Ok(0);
    }
    make_spool(spool)?;
    let mut read = 0;
    loop {
        let Some(lock) = try_lock(spool)? else {
            return Ok(read);
        };
        let seen = follow(repo, spool, after, count, &mut read)?;
        drop(lock);
        // Asked for more while this one was giving up the lock: go on.
        if read_asked(spool).is_none_or(|a| a <= seen) {
            return Ok(read);
        }
    }
}

/// The locked part of [`prefetch`]; returns the last segment asked for.
fn follow(
    repo: &Repository,
    spool: &Path,
    after: &str,
    count: u32,
    read: &mut usize,
) -> Result<String> {
    let timeline = after[..8].to_string();
    let mut asked = read_asked(spool)
        .filter(|a| **a >= *after)
        .unwrap_or_else(|| after.to_string());
    let mut archived = archived_after(repo, &timeline, &asked)?;
    let mut listed_for = asked.clone();
    let mut last_news = Instant::now();
    loop {
        crate::interrupt::check()?;
        if let Some(a) = read_asked(spool).filter(|a| **a > *asked) {
            asked = a;
            last_news = Instant::now();
        }
        // What recovery has passed, and what an interrupted prefetcher left.
        if let Ok(rd) = std::fs::read_dir(spool) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // wal-fetch records a segment only once it has taken it.
                let passed = is_segment(&name) && name.starts_with(&timeline) && *name <= *asked;
                if passed || name.ends_with(".cairn-tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let wanted: Vec<&String> = archived
            .iter()
            .filter(|n| **n > asked)
            .take(count as usize)
            .collect();
        // Near the end of what was listed: list again, once per request.
        if wanted.len() < count as usize && listed_for != asked {
            archived = archived_after(repo, &timeline, &asked)?;
            listed_for = asked.clone();
            continue;
        }
        if let Some(name) = wanted.into_iter().find(|n| !spool.join(n).exists()) {
            let name = name.clone();
            wal_fetch(repo, &name, &spool.join(&name))?;
            *read += 1;
            continue;
        }
        if last_news.elapsed() > IDLE {
            return Ok(asked);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
