//! `cairn repair index`: index packs that no index file lists (the work is
//! in [`crate::ops::repair`]); `cairn repair packs`: replace damaged packs
//! by what can be read back of them ([`crate::ops::repair_packs`]).

use super::{open_repo, print_json};
use crate::cli::GlobalArgs;
use crate::error::{Error, Result};
use crate::repo::PackId;

pub fn index(g: &GlobalArgs) -> Result<()> {
    let repo = open_repo(g)?;
    let r = crate::ops::repair::repair_index(&repo)?;
    if g.json {
        return print_json(&r);
    }
    println!(
        "indexed {} pack(s); {} damaged pack(s) skipped; {} damaged index file(s) removed",
        r.indexed_packs,
        r.damaged_packs.len(),
        r.removed_index_files.len()
    );
    Ok(())
}

/// The packs named by id or unique prefix.
fn named_packs(repo: &crate::repository::Repository, names: &[String]) -> Result<Vec<PackId>> {
    let on_disk = crate::ops::packs_on_disk(repo)?;
    names
        .iter()
        .map(|n| {
            let n = n.trim().to_ascii_lowercase();
            let found: Vec<PackId> = on_disk
                .keys()
                .filter(|p| !n.is_empty() && p.to_hex().starts_with(&n))
                .copied()
                .collect();
            match found.as_slice() {
                [one] => Ok(*one),
                [] => Err(Error::usage(format!("no pack {n:?} in the repository"))
                    .with_hint("name packs as `cairn check --read-data --json` does (damaged_packs), or give none to read every pack")),
                _ => Err(Error::usage(format!("{n:?} names {} packs", found.len()))
                    .with_hint("give more of the pack's id")),
            }
        })
        .collect()
}

pub fn packs(g: &GlobalArgs, names: &[String], dry_run: bool) -> Result<()> {
    let repo = open_repo(g)?;
    let suspects = match names.is_empty() {
        true => None,
        false => Some(named_packs(&repo, names)?),
    };
    let r = crate::ops::repair_packs::repair_packs(&repo, suspects.as_deref(), dry_run)?;
    if g.json {
        return print_json(&r);
    }
    let verb = if dry_run { "would replace" } else { "replaced" };
    println!(
        "read {} pack(s); {verb} {} damaged pack(s): {} chunk(s) saved, {} dropped",
        r.packs_read,
        r.damaged_packs.len(),
        r.chunks_saved,
        r.chunks_dropped.len()
    );
    for name in &r.wal_lost {
        println!(
            "WAL file {name} cannot be read back: point-in-time recovery stops before it; take a physical snapshot now"
        );
    }
    for name in &r.backup_history_removed {
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} backup history file {name}: its content was lost, and recovery never reads it"
        );
    }
    if !r.chunks_dropped.is_empty() && !dry_run {
        println!(
            "the snapshots that use the dropped chunks stay damaged until a backup stores the same data again; `cairn check` names them"
        );
    }
    Ok(())
}
