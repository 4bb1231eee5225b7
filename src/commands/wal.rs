//! `wal-push` / `wal-fetch`: PostgreSQL's archive_command and restore_command.

use super::{access, open_repo};
use crate::cli::GlobalArgs;
use crate::error::Result;
use crate::lock::with_lock;
use crate::source::pg;
use crate::source::pg::prefetch;
use std::path::Path;

pub fn push(g: &GlobalArgs, path: &Path) -> Result<()> {
    let repo = open_repo(g)?;
    let what = with_lock(&repo, false, "wal-push", || pg::wal_push(&repo, path))?;
    tracing::info!(wal = %path.display(), "{what}");
    Ok(())
}

/// `wal-fetch NAME DEST`: from the prefetch spool when the prefetcher has
/// it ready (only the config is read: no key, no index), else from the
/// repository; then the prefetcher follows.
pub fn fetch(g: &GlobalArgs, name: &str, destination: &Path, ahead: u32) -> Result<()> {
    let a = access(g);
    let spool = match (a.cache_dir(), ahead > 0 && prefetch::is_segment(name)) {
        (Some(dir), true) => {
            let backend = crate::backend::open(&a.location()?)?;
            let config = crate::repository::Repository::read_config(backend.as_ref())?;
            Some(prefetch::spool_dir(&dir, config.id))
        }
        _ => None,
    };
    let mut spooled = false;
    if let Some(s) = &spool {
        // A spool that cannot be used (another user's files) costs only the read-ahead.
        spooled = prefetch::take(s, name, destination).unwrap_or_else(|e| {
            tracing::warn!("{e}; reading {name} from the repository");
            false
        });
        // Only once it is taken: the prefetcher clears what recovery passed.
        prefetch::record_asked(s, name);
    }
    if !spooled {
        let repo = open_repo(g)?;
        pg::wal_fetch(&repo, name, destination)?;
    }
    tracing::debug!(wal = name, spooled, "fetched");
    if spool.is_some() {
        start_prefetcher(g, name, ahead);
    }
    Ok(())
}

/// The hidden `wal-prefetch`: read ahead into the spool, then exit.
pub fn prefetch(g: &GlobalArgs, after: &str, count: u32) -> Result<()> {
    let repo = open_repo(g)?;
    let Some(dir) = access(g).cache_dir() else {
        return Ok(());
    };
    let n = prefetch::prefetch(
        &repo,
        &prefetch::spool_dir(&dir, repo.config.id),
        after,
        count,
    )?;
    tracing::debug!(after, read = n, "prefetched");
    Ok(())
}

/// Start `cairn wal-prefetch` detached (its own process group, no
/// terminal, output discarded) with this command's repository, key and
/// cache; PostgreSQL does not wait for it. A failure to start is logged
/// only: recovery then reads each segment when asked.
fn start_prefetcher(g: &GlobalArgs, after: &str, count: u32) {
    use std::os::unix::process::CommandExt;
    let a = access(g);
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut c = std::process::Command::new(exe);
    c.args(["wal-prefetch", "-q", "--after", after, "--count"])
        .arg(count.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    for (k, v) in [
        ("CAIRN_REPOSITORY", a.location.as_ref().map(Into::into)),
        (
            "CAIRN_PASSWORD_FILE",
            a.password_file.clone().map(Into::into),
        ),
        ("CAIRN_IDENTITY_FILE", a.identity.clone().map(Into::into)),
        ("CAIRN_CACHE_DIR", a.cache_dir().map(Into::into)),
    ] {
        let v: Option<std::ffi::OsString> = v;
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if a.no_key_cache {
        c.env("CAIRN_NO_KEY_CACHE", "true");
    }
    if let Err(e) = c.spawn() {
        tracing::debug!("cannot start wal-prefetch: {e}");
    }
}
