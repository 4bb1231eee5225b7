//! What a file restore does with what already stands in its target: the
//! `--overwrite` rule (restic ≥ 0.17's four choices), decided for every
//! node before anything in the target changes.
//!
//! - `never` (the default): nothing that stands in the target is replaced
//!   or changed. A file, symlink or anything else at a path the snapshot
//!   holds is kept; so is a symlink or file where the snapshot has a
//!   directory, with everything the snapshot holds below it. What was kept
//!   is counted and, at `-v`, listed. This is the default because it is the one choice that
//!   cannot lose data: the snapshot stays in the repository, so a kept file
//!   can be restored later with another choice, while a replaced file that
//!   was nowhere else is gone.
//! - `if-changed`: a file whose size and modification time match the
//!   snapshot's is taken as up to date (its owner, mode and times are set,
//!   its content is not read); any other file of the same size is read and
//!   compared chunk by chunk with the snapshot, and kept if equal. Files
//!   that differ, and symlinks that point elsewhere, are replaced.
//! - `always`: as `if-changed`, but every existing file of the snapshot's
//!   size is read and compared, whatever its time.
//! - `if-newer`: only what is older (modification time) than the
//!   snapshot's entry is replaced (after the same comparison); the rest is
//!   kept.
//!
//! With every choice but `never`, a symlink or file where the snapshot has
//! a directory is replaced by the directory (the link, never what it points
//! to), and a directory where the snapshot has a file or symlink stops the
//! restore before anything changes (exit 2): cairn never removes a
//! directory. With every choice, as with restic, a directory that exists
//! where the snapshot has one is entered, what is missing in it added, and
//! it gets the snapshot's owner, mode and times.

use super::target::{Probe, Standing};
use crate::error::{Error, Result};
use crate::index::IndexReader;
use crate::repo::{Node, NodeKind};
use crate::repository::Repository;
use std::collections::HashSet;
use std::io::Read;

/// What to do with a file or symlink already in the target.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    /// Replace every existing file that differs from the snapshot.
    Always,
    /// As `always`, taking a file of the snapshot's size and time as unchanged.
    IfChanged,
    /// Replace only what is older than the snapshot's entry.
    IfNewer,
    /// Keep everything that exists; restore only what is missing.
    #[default]
    Never,
}

impl Overwrite {
    pub fn as_str(self) -> &'static str {
        match self {
            Overwrite::Always => "always",
            Overwrite::IfChanged => "if-changed",
            Overwrite::IfNewer => "if-newer",
            Overwrite::Never => "never",
        }
    }
}

impl std::fmt::Display for Overwrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the restore does with one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing stands there (or an existing directory is entered): write it.
    Write,
    /// Something else stands there: replace it.
    Replace,
    /// A file with the snapshot's content, or a symlink to the same
    /// target, is there: set its owner, mode and times only.
    Refresh,
    /// Leave what stands there (and restore nothing below it).
    Keep,
}

/// Decide, for every node of `sorted` (in path order), what the restore
/// does, looking at the target without changing it. Fails (usage) where a
/// directory stands in place of a file or symlink and the rule would have
/// to remove it.
pub(super) fn survey(
    repo: &Repository,
    index: &IndexReader,
    probe: &mut Probe<'_>,
    sorted: &[&Node],
    rule: Overwrite,
    shown: impl Fn(&str) -> String,
) -> Result<Vec<Action>> {
    let mut kept_dirs: HashSet<&str> = HashSet::new();
    let mut actions = Vec::with_capacity(sorted.len());
    for n in sorted {
        let below_kept = n
            .path
            .match_indices('/')
            .any(|(i, _)| kept_dirs.contains(&n.path[..i]));
        if below_kept {
            actions.push(Action::Keep);
            continue;
        }
        let standing = probe.standing(&n.path)?;
        let action = match (&standing, n.kind) {
            (Standing::Missing, _) => Action::Write,
            // Below a symlink or file that is not in `sorted`: under
            // `never` it stays, so nothing can go below it.
            (Standing::Below, _) if rule == Overwrite::Never => Action::Keep,
            (Standing::Below, _) => Action::Write,
            (Standing::Dir, NodeKind::Dir) => Action::Write,
            (_, _) if rule == Overwrite::Never => Action::Keep,
            (Standing::Dir, kind) => {
                return Err(Error::usage(format!(
                    "{} is a directory in the target, where the snapshot has a {}; nothing was restored",
                    shown(&n.path),
                    if kind == NodeKind::Symlink { "symlink" } else { "file" },
                ))
                .with_hint(
                    "move that directory away, restore into an empty directory, or keep it \
                     with --overwrite never (the rest is restored)",
                ))
            }
            (_, NodeKind::Dir) => Action::Replace,
            (Standing::File { mtime_ns, .. }, _)
            | (Standing::Symlink { mtime_ns, .. }, _)
            | (Standing::Other { mtime_ns }, _)
                if rule == Overwrite::IfNewer && n.mtime_ns <= *mtime_ns =>
            {
                Action::Keep
            }
            (Standing::File { size, mtime_ns }, NodeKind::File) => {
                let same_time = rule == Overwrite::IfChanged && n.mtime_ns == *mtime_ns;
                if *size == n.size && (same_time || same_content(repo, index, probe, n)?) {
                    Action::Refresh
                } else {
                    Action::Replace
                }
            }
            (Standing::Symlink { target, .. }, NodeKind::Symlink)
                if n.target.as_deref().map(str::as_bytes) == Some(target.as_slice()) =>
            {
                Action::Refresh
            }
            _ => Action::Replace,
        };
        if action == Action::Keep && n.kind == NodeKind::Dir {
            kept_dirs.insert(n.path.as_str());
        }
        actions.push(action);
    }
    Ok(actions)
}

/// Whether the regular file at `n`'s path holds exactly `n`'s content:
/// read chunk by chunk (each the length the index records) and each
/// compared with its keyed id. A file that cannot be read differs.
fn same_content(
    repo: &Repository,
    index: &IndexReader,
    probe: &mut Probe<'_>,
    n: &Node,
) -> Result<bool> {
    let Some(mut f) = probe.open_file(&n.path)? else {
        return Ok(false);
    };
    let mut buf = Vec::new();
    for id in &n.content {
        let Some(loc) = index.get(id)? else {
            return Ok(false);
        };
        buf.resize(loc.length as usize, 0);
        if f.read_exact(&mut buf).is_err() || repo.key.chunk_id(&buf) != *id {
            return Ok(false);
        }
    }
    // Nothing after the last chunk.
    Ok(matches!(f.read(&mut [0u8; 1]), Ok(0)))
}
