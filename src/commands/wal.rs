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

/// `wal-fetch NAME DEST`: from the prefetch spool when a prefetcher read it
/// already, else from the repository; then the next segments are read
/// ahead in the background.
pub fn fetch(g: &GlobalArgs, name: &str, destination: &Path, ahead: u32) -> Result<()> {
    let repo = open_repo(g)?;
    let spool = access(g)
        .cache_dir()
        .map(|d| prefetch::spool_dir(&d, repo.config.id));
    let spooled = match &spool {
        Some(s) if ahead > 0 => prefetch::take(s, name, destination)?,
        _ => false,
    };
    if !spooled {
        pg::wal_fetch(&repo, name, destination)?;
    }
    tracing::debug!(wal = name, spooled, "fetched");
    if spool.is_some() && ahead > 0 && prefetch::is_segment(name) {
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
