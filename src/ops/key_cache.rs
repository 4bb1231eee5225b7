//! The unlocked-key cache: the master key a password file opened, kept in
//! the user's cache directory so that the next command (a `wal-push` per WAL
//! segment, a `snapshots` from a script) opens the repository in
//! milliseconds instead of running scrypt again. Threat model and rules:
//! spec/repository.md §9.
//!
//! Only a password that comes from a file is cached: the file is a secret at
//! rest already, readable by the same user, and its metadata tells when it
//! changed. A typed password or `CAIRN_PASSWORD` is never cached (there is
//! nothing to tell a changed password by except the password itself).

use crate::backend::{Backend, FileRef};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::repo::local::{KeyCacheEntry, PasswordFileStamp, KEY_CACHE_VERSION};
use crate::repo::{KeyId, RepoId};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory of cached keys under a cache directory.
pub fn keys_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("keys")
}

/// The cache file of repository `repo` under a cache directory.
pub fn entry_path(cache_dir: &Path, repo: RepoId) -> PathBuf {
    keys_dir(cache_dir).join(format!("{}.json", repo.to_hex()))
}

/// The stamp of the password file at `path`, or `None` when it cannot be read.
pub fn stamp(path: &Path) -> Option<PasswordFileStamp> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&canonical).ok()?;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    Some(PasswordFileStamp {
        path: canonical.to_string_lossy().into_owned(),
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

/// The cached master key of `repo`, if the cache holds one for this password
/// file as it is now, and the key file it came from is still in the
/// repository. Anything else (no entry, another version, a file others can
/// read, a removed key) is a miss: the caller unlocks with the password.
pub fn load(
    cache_dir: &Path,
    repo: RepoId,
    file_stamp: &PasswordFileStamp,
    backend: &dyn Backend,
) -> Result<Option<(MasterKey, KeyId)>> {
    let path = entry_path(cache_dir, repo);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::debug!("key cache {} not read: {e}", path.display());
            return Ok(None);
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid || meta.mode() & 0o077 != 0 {
        tracing::warn!(
            "ignoring key cache {}: it must belong to uid {uid} and be readable by it only (it is uid {}, mode {:o}); \
             remove it with `cairn key forget-cache`",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
        return Ok(None);
    }
    let entry: KeyCacheEntry = match serde_json::from_reader(std::io::BufReader::new(file)) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("ignoring key cache {}: {e}", path.display());
            return Ok(None);
        }
    };
    if entry.version != KEY_CACHE_VERSION
        || entry.repo_id != repo
        || entry.material.repo_id != repo
        || &entry.password_file != file_stamp
    {
        tracing::debug!(
            "key cache {} does not match this password file",
            path.display()
        );
        return Ok(None);
    }
    // A removed key file revokes what it opened, also in caches.
    if !backend.exists(&FileRef::of(entry.key_id))? {
        tracing::debug!(
            "key cache {}: key {} is no longer in the repository",
            path.display(),
            entry.key_id.short()
        );
        return Ok(None);
    }
    let key = MasterKey::from_material(&entry.material)?;
    Ok(Some((key, entry.key_id)))
}

/// Remember `key` (opened by key file `key_id` with the password file of
/// `file_stamp`). Failing to write the cache is not an error of the
/// command: it is logged, and the next command runs scrypt again.
pub fn store(
    cache_dir: &Path,
    repo: RepoId,
    key_id: KeyId,
    key: &MasterKey,
    file_stamp: PasswordFileStamp,
) {
    let entry = KeyCacheEntry {
        version: KEY_CACHE_VERSION,
        repo_id: repo,
        key_id,
        password_file: file_stamp,
        created: jiff::Timestamp::now(),
        material: key.material(repo),
    };
    if let Err(e) = write_entry(cache_dir, repo, &entry) {
        tracing::debug!("key not cached: {e}");
    }
}

fn write_entry(cache_dir: &Path, repo: RepoId, entry: &KeyCacheEntry) -> std::io::Result<()> {
    let dir = keys_dir(cache_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    // An existing directory others can enter is tightened, not trusted.
    let m = std::fs::metadata(&dir)?;
    if m.uid() != rustix::process::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} belongs to another user",
            dir.display()
        )));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(entry_path(cache_dir, repo))
        .map_err(|e| e.error)?;
    Ok(())
}

/// Remove the cached key of `repo` (or, with `None`, of every repository).
/// Returns the files removed.
pub fn forget(cache_dir: &Path, repo: Option<RepoId>) -> Result<Vec<PathBuf>> {
    let dir = keys_dir(cache_dir);
    let files: Vec<PathBuf> = match repo {
        Some(r) => vec![entry_path(cache_dir, r)],
        None => match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        },
    };
    let mut removed = Vec::new();
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => removed.push(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", f.display()), e)),
        }
    }
    Ok(removed)
}
