//! Repository locks.
//!
//! Writers that only add data (`snapshot`) take shared locks and may run
//! together; commands that delete (`prune`, `forget`, `key remove`) take an
//! exclusive lock. A lock is refreshed every few minutes while held; one
//! whose holder died (same host, pid gone) or that was not refreshed for
//! [`STALE_AFTER`] is ignored.

use crate::backend::FileRef;
use crate::error::{Error, Kind, Result};
use crate::repo::{FileKind, Id, LockFile};
use crate::repository::{host_name, user_name, Repository};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

fn describe(l: &LockFile) -> String {
    format!(
        "{} lock held by {}@{} (pid {}) since {} for `{}`",
        if l.exclusive {
            "an exclusive"
        } else {
            "a shared"
        },
        l.username,
        l.host,
        l.pid,
        l.time.strftime("%Y-%m-%d %H:%M:%S UTC"),
        l.command
    )
}

fn pid_alive(pid: u32) -> bool {
    // kill(pid, 0) checks existence without sending a signal.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether a lock no longer protects anything.
pub fn is_stale(l: &LockFile) -> bool {
    let age = jiff::Timestamp::now().duration_since(l.time);
    if age > jiff::SignedDuration::try_from(STALE_AFTER).unwrap_or(jiff::SignedDuration::MAX) {
        return true;
    }
    if l.host != host_name() {
        return false;
    }
    if l.pid == std::process::id() {
        // Our pid, but older than this process: an earlier process had it.
        return PROCESS_START.get().is_some_and(|start| l.time < *start);
    }
    !pid_alive(l.pid)
}

static PROCESS_START: std::sync::OnceLock<jiff::Timestamp> = std::sync::OnceLock::new();

/// Record when this process started (call first thing in `main`), so a lock
/// left by an earlier process that had the same pid is recognised as stale.
pub fn mark_process_start() {
    let _ = PROCESS_START.set(jiff::Timestamp::now());
}

/// All current locks with their file ids (unreadable ones are skipped).
pub fn list_locks(repo: &Repository) -> Result<Vec<(Id, LockFile)>> {
    let mut out = Vec::new();
    for (name, _) in repo.backend.list(FileKind::Lock)? {
        let Some(id) = Id::parse(&name) else { continue };
        match repo.read_sealed::<LockFile>(FileKind::Lock, &id) {
            Ok(l) => out.push((id, l)),
            Err(e) => tracing::debug!(lock = %name, error = %e, "skipping unreadable lock"),
        }
    }
    Ok(out)
}

fn conflicts(exclusive: bool, own: Option<Id>, locks: &[(Id, LockFile)]) -> Option<String> {
    locks
        .iter()
        .filter(|(id, _)| Some(*id) != own)
        .filter(|(_, l)| !is_stale(l))
        .find(|(_, l)| exclusive || l.exclusive)
        .map(|(_, l)| describe(l))
}

fn locked_error(holder: String) -> Error {
    Error::new(Kind::Locked, format!("the repository is locked: {holder}")).with_hint(
        "wait for that command to finish; if its process is gone, the lock expires after 30 minutes (or run `cairn unlock`)",
    )
}

/// Take a lock, run `f`, release the lock (also when `f` fails).
pub fn with_lock<T>(
    repo: &Repository,
    exclusive: bool,
    command: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let (id, lock) = acquire(repo, exclusive, command)?;
    // The index may have changed between opening the repository and taking
    // the lock (a prune elsewhere): look again now that nobody can delete.
    if let Err(e) = repo.cache.sync(repo.backend.as_ref(), &repo.key) {
        let _ = repo
            .backend
            .remove(&FileRef::new(FileKind::Lock, id.to_hex()));
        return Err(e);
    }
    let name = Mutex::new(id);
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        let refresher = scope.spawn(|| refresh_loop(repo, lock, &name, &stop));
        let out = f();
        stop.store(true, Ordering::SeqCst);
        refresher.thread().unpark();
        out
    });
    if let Ok(id) = name.lock() {
        let _ = repo
            .backend
            .remove(&FileRef::new(FileKind::Lock, id.to_hex()));
    }
    out
}

fn acquire(repo: &Repository, exclusive: bool, command: &str) -> Result<(Id, LockFile)> {
    if let Some(h) = conflicts(exclusive, None, &list_locks(repo)?) {
        return Err(locked_error(h));
    }
    let lock = LockFile {
        host: host_name(),
        username: user_name(),
        pid: std::process::id(),
        time: jiff::Timestamp::now(),
        exclusive,
        command: command.to_string(),
    };
    let id = repo.write_sealed(FileKind::Lock, &lock)?;
    // Someone may have locked at the same moment: look again.
    if let Some(h) = conflicts(exclusive, Some(id), &list_locks(repo)?) {
        let _ = repo
            .backend
            .remove(&FileRef::new(FileKind::Lock, id.to_hex()));
        return Err(locked_error(h));
    }
    Ok((id, lock))
}

fn refresh_loop(repo: &Repository, mut lock: LockFile, name: &Mutex<Id>, stop: &AtomicBool) {
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(Duration::from_millis(500));
        if stop.load(Ordering::SeqCst) || last.elapsed() < REFRESH_EVERY {
            continue;
        }
        last = std::time::Instant::now();
        lock.time = jiff::Timestamp::now();
        match repo.write_sealed(FileKind::Lock, &lock) {
            Ok(new) => {
                if let Ok(mut cur) = name.lock() {
                    let old = std::mem::replace(&mut *cur, new);
                    let _ = repo
                        .backend
                        .remove(&FileRef::new(FileKind::Lock, old.to_hex()));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not refresh the repository lock"),
        }
    }
}

/// Remove stale locks (or all, with `all`), and lock files that cannot be
/// read (damaged, or not lock files at all): no command honours them, so
/// they protect nothing, and nothing else would ever remove them. Returns
/// how many were removed.
pub fn remove_locks(repo: &Repository, all: bool) -> Result<usize> {
    let mut n = 0;
    for (name, _) in repo.backend.list(FileKind::Lock)? {
        let Some(id) = Id::parse(&name) else { continue };
        let remove = match repo.read_sealed::<LockFile>(FileKind::Lock, &id) {
            Ok(l) => all || is_stale(&l),
            Err(e) if e.kind() == Kind::Integrity => {
                tracing::info!(lock = %name, error = %e, "removing an unreadable lock file");
                true
            }
            // e.g. released (removed) since the listing
            Err(e) => {
                tracing::debug!(lock = %name, error = %e, "skipping a lock that cannot be read now");
                false
            }
        };
        if remove {
            repo.backend
                .remove(&FileRef::new(FileKind::Lock, name.as_str()))?;
            n += 1;
        }
    }
    Ok(n)
}
