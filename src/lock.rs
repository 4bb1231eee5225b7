//! Repository locks.
//!
//! Writers that only add data (`snapshot`) take shared locks and may run
//! together; commands that delete (`prune`, `forget`, `key remove`) take an
//! exclusive lock. A lock is refreshed every few minutes while held; one
//! whose holder died (same host, pid gone, or the pid now names another
//! process or the machine rebooted since) or that was not refreshed for
//! [`STALE_AFTER`] is ignored. A lock file naming this very process that
//! the process does not hold (its release failed, or the repository was
//! away when it was removed and came back with the file in it) is stale
//! at once: the process knows which locks it holds.

use crate::backend::FileRef;
use crate::error::{Error, Kind, Result};
use crate::repo::{FileKind, LockFile, LockId};
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
    // kill(pid, 0) checks existence without sending a signal; EPERM means
    // it exists but is another user's.
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) | Err(rustix::io::Errno::PERM) => true,
        Err(_) => false,
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`); `None` when it does not exist or `/proc` cannot say.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after the last ')' start with field 3.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// This boot's id (`None` where the kernel does not say).
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|i| !i.is_empty())
}

/// Whether the process that wrote `l` (on this host) still runs. A pid is
/// reused once its process ends (every 32,768 processes by default): with
/// the holder's start time and boot in the lock, a pid that names another
/// process now, or a lock from before a reboot, is no holder (found by
/// `scripts/timelapse`: a daemon killed mid-run left a lock whose pid a
/// psql took days later, and the night's retention was refused as locked).
fn holder_alive(l: &LockFile) -> bool {
    if let (Some(theirs), Some(ours)) = (&l.boot_id, boot_id()) {
        if *theirs != ours {
            return false;
        }
    }
    match (l.process_start, process_start(l.pid)) {
        (Some(theirs), Some(now)) => theirs == now,
        _ => pid_alive(l.pid),
    }
}

/// The lock files this process holds now, by every thread; and, while
/// held, the right to change that set and write a lock (so a lock another
/// thread has just written is in the set before anyone looks at it).
static HELD: Mutex<Vec<LockId>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<LockId>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a lock no longer protects anything. `held` is this process's
/// own locks ([`HELD`]).
fn is_stale(id: LockId, l: &LockFile, held: &[LockId]) -> bool {
    let age = jiff::Timestamp::now().duration_since(l.time);
    if age > jiff::SignedDuration::try_from(STALE_AFTER).unwrap_or(jiff::SignedDuration::MAX) {
        return true;
    }
    if l.host != host_name() {
        return false;
    }
    if l.pid == std::process::id() {
        // Our pid: stale unless this process holds it. Its release may
        // have failed (a storage error) or hit a repository that was away
        // (a lazily unmounted share: the remove found nothing) and came
        // back with the file; or an earlier process had the same pid. A
        // daemon used to see its own dead lock as live for 30 minutes and
        // refuse every run meanwhile.
        return !held.contains(&id);
    }
    !holder_alive(l)
}

/// All current locks with their file ids (unreadable ones are skipped).
pub fn list_locks(repo: &Repository) -> Result<Vec<(LockId, LockFile)>> {
    let mut out = Vec::new();
    for (name, _) in repo.backend.list(FileKind::Lock)? {
        let Some(id) = LockId::parse(&name) else {
            continue;
        };
        match repo.read_sealed::<LockFile>(id) {
            Ok(l) => out.push((id, l)),
            Err(e) => tracing::debug!(lock = %name, error = %e, "skipping unreadable lock"),
        }
    }
    Ok(out)
}

fn conflicts(
    exclusive: bool,
    own: Option<LockId>,
    locks: &[(LockId, LockFile)],
    held: &[LockId],
) -> Option<String> {
    locks
        .iter()
        .filter(|(id, _)| Some(*id) != own)
        .filter(|(id, l)| !is_stale(*id, l, held))
        .find(|(_, l)| exclusive || l.exclusive)
        .map(|(_, l)| describe(l))
}

fn locked_error(holder: String) -> Error {
    Error::new(Kind::Locked, format!("the repository is locked: {holder}")).with_hint(
        "wait for that command to finish; if its process is gone, the lock expires after 30 minutes (or run `cairn unlock`)",
    )
}

/// A lock file this process holds (its name changes on each refresh);
/// dropping it removes the file — on return, on error, and while a panic
/// unwinds.
struct Held<'r> {
    repo: &'r Repository,
    name: Mutex<LockId>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // A refresher that panicked holding the name poisons it; the name
        // is still the current one.
        let id = *self.name.lock().unwrap_or_else(|e| e.into_inner());
        release(self.repo, id);
    }
}

/// Remove a lock file of this process. A failure leaves the command's work
/// as it is (done, or failed for its own reason), so it is a warning, not
/// the command's error; but the lock stays until it is stale (at once on
/// this host, once its pid is gone; after 30 minutes for other hosts) or
/// `cairn unlock` removes it, so it is said (issue 28: the crash-point
/// enumeration found a failed release silent).
fn release(repo: &Repository, id: LockId) {
    // No longer held, whatever the removal does: a file left behind is
    // stale to this process at once.
    held().retain(|h| *h != id);
    if let Err(e) = repo.backend.remove(&FileRef::of(id)) {
        tracing::warn!(
            "could not remove this command's lock {}: {e}; other hosts see the repository \
             as locked until the lock is 30 minutes old, or `cairn unlock` removes it",
            id.short()
        );
    }
}

/// Tells the refresher to stop when dropped, so the scope that joins it
/// ends on every path out of `f`, a panic included (issue 24: a panic used
/// to leave the refresher running and the process hanging, lock held).
struct StopRefresher<'a> {
    stop: &'a AtomicBool,
    thread: &'a std::thread::Thread,
}

impl Drop for StopRefresher<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Take a lock, run `f`, release the lock — also when `f` fails or panics.
pub fn with_lock<T>(
    repo: &Repository,
    exclusive: bool,
    command: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let (id, lock) = acquire(repo, exclusive, command)?;
    let held = Held {
        repo,
        name: Mutex::new(id),
    };
    // The index may have changed between opening the repository and taking
    // the lock (a prune elsewhere): look again now that nobody can delete.
    repo.cache.sync(repo.backend.as_ref(), &repo.key)?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let refresher = scope.spawn(|| refresh_loop(repo, lock, &held.name, &stop));
        let _stop = StopRefresher {
            stop: &stop,
            thread: refresher.thread(),
        };
        f()
    })
}

fn acquire(repo: &Repository, exclusive: bool, command: &str) -> Result<(LockId, LockFile)> {
    // One thread at a time takes a lock: another thread of this process
    // must not see the lock written below before it is in HELD (it would
    // be taken for a stale one of ours).
    let mut held = held();
    if let Some(h) = conflicts(exclusive, None, &list_locks(repo)?, &held) {
        return Err(locked_error(h));
    }
    let lock = LockFile {
        host: host_name(),
        username: user_name(),
        pid: std::process::id(),
        time: jiff::Timestamp::now(),
        exclusive,
        command: command.to_string(),
        process_start: process_start(std::process::id()),
        boot_id: boot_id(),
    };
    let id = repo.write_sealed::<LockId>(&lock)?;
    held.push(id);
    // Someone may have locked at the same moment: look again.
    if let Some(h) = conflicts(exclusive, Some(id), &list_locks(repo)?, &held) {
        drop(held);
        release(repo, id);
        return Err(locked_error(h));
    }
    Ok((id, lock))
}

fn refresh_loop(repo: &Repository, mut lock: LockFile, name: &Mutex<LockId>, stop: &AtomicBool) {
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(Duration::from_millis(500));
        if stop.load(Ordering::SeqCst) || last.elapsed() < REFRESH_EVERY {
            continue;
        }
        last = std::time::Instant::now();
        lock.time = jiff::Timestamp::now();
        let mut held = held();
        let written = repo.write_sealed::<LockId>(&lock);
        if let Ok(new) = written {
            held.push(new);
        }
        drop(held);
        match written {
            Ok(new) => {
                if let Ok(mut cur) = name.lock() {
                    let old = std::mem::replace(&mut *cur, new);
                    release(repo, old);
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
    let held = held().clone();
    for (name, _) in repo.backend.list(FileKind::Lock)? {
        let Some(id) = LockId::parse(&name) else {
            continue;
        };
        let remove = match repo.read_sealed::<LockFile>(id) {
            Ok(l) => all || is_stale(id, &l, &held),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::test_repo;

    /// Issue 24, finding 5: a panic inside a locked command stopped
    /// nothing — the refresher ran on, the scope waited for it forever and
    /// the lock stayed. Now the panic comes out of `with_lock` and the lock
    /// file is gone; so is it after an error.
    #[test]
    fn a_panic_or_an_error_inside_the_lock_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let dir_path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let repo = test_repo(&dir_path);
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_lock(&repo, true, "test", || -> Result<()> {
                    assert_eq!(list_locks(&repo).unwrap().len(), 1);
                    panic!("a bug inside a locked command")
                })
            }));
            let after_panic = list_locks(&repo).unwrap().len();
            let failed = with_lock(&repo, true, "test", || -> Result<()> {
                Err(Error::failure("failed"))
            });
            let after_error = list_locks(&repo).unwrap().len();
            let _ = tx.send((panicked.is_err(), after_panic, failed.is_err(), after_error));
        });
        // A liveness bound: before the fix this never arrived.
        let got = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("with_lock did not return after the panic");
        assert_eq!(got, (true, 0, true, 0));
    }

    /// A lock file that names this process but that the process no longer
    /// holds blocks nothing here, and `unlock` removes it. The status page
    /// test met it in CI: the daemon's retention released its lock while
    /// the repository directory was renamed away (the remove found
    /// nothing), the directory came back with the file, and the daemon's
    /// next backup was refused as locked by itself.
    #[test]
    fn a_lock_this_process_left_behind_does_not_lock_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let repo = test_repo(dir.path());
        let root = dir.path().join("repo");
        let away = dir.path().join("repo-away");
        with_lock(&repo, true, "retention", || {
            std::fs::rename(&root, &away).unwrap();
            Ok(())
        })
        .unwrap();
        std::fs::rename(&away, &root).unwrap();
        let left = list_locks(&repo).unwrap();
        assert_eq!(left.len(), 1, "the lock came back with the directory");
        assert_eq!(left[0].1.pid, std::process::id());
        // Another thread's lock of this process is held: it still counts.
        let inner = with_lock(&repo, true, "snapshot", || {
            let other = std::thread::scope(|s| {
                s.spawn(|| with_lock(&repo, false, "snapshot", || Ok(())))
                    .join()
                    .unwrap()
            });
            assert_eq!(other.unwrap_err().kind(), Kind::Locked);
            Ok(())
        });
        inner.unwrap();
        assert_eq!(remove_locks(&repo, false).unwrap(), 1);
        assert!(list_locks(&repo).unwrap().is_empty());
    }

    /// A lock whose pid now names another process (reused: the kernel
    /// hands pids out again, every 32,768 by default) or that was written
    /// before a reboot is stale; the same process is still its holder.
    #[test]
    fn a_reused_pid_or_another_boot_holds_no_lock() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = process_start(pid).expect("/proc/PID/stat of a child");
        assert!(process_start(std::process::id()).is_some());
        let lock = |process_start, boot_id| LockFile {
            host: host_name(),
            username: user_name(),
            pid,
            time: jiff::Timestamp::now(),
            exclusive: true,
            command: "snapshot".into(),
            process_start,
            boot_id,
        };
        let id = LockId([7; 32]);
        assert!(!is_stale(id, &lock(Some(start), boot_id()), &[]));
        assert!(
            is_stale(id, &lock(Some(start + 1), boot_id()), &[]),
            "another process now has the pid"
        );
        assert!(is_stale(
            id,
            &lock(Some(start), Some("another-boot".into())),
            &[]
        ));
        // A lock of an older version (no start, no boot): the pid decides.
        assert!(!is_stale(id, &lock(None, None), &[]));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(is_stale(id, &lock(Some(start), boot_id()), &[]));
        assert!(is_stale(id, &lock(None, None), &[]));
    }
}
