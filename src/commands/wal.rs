//! `wal-push` / `wal-fetch`: PostgreSQL's archive_command and restore_command.

use super::open_repo;
use crate::cli::GlobalArgs;
use crate::error::Result;
use crate::lock::with_lock;
use crate::source::pg;
use std::path::Path;

pub fn push(g: &GlobalArgs, path: &Path) -> Result<()> {
    let repo = open_repo(g)?;
    let what = with_lock(&repo, false, "wal-push", || pg::wal_push(&repo, path))?;
    tracing::info!(wal = %path.display(), "{what}");
    Ok(())
}

pub fn fetch(g: &GlobalArgs, name: &str, destination: &Path) -> Result<()> {
    let repo = open_repo(g)?;
    pg::wal_fetch(&repo, name, destination)
}
