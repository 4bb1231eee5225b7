//! `cairn prune`: remove data no snapshot needs, under an exclusive lock
//! (the work is in [`crate::ops::prune`]).

use super::{human_bytes, open_repo, print_json};
use crate::cli::{GlobalArgs, PruneArgs};
use crate::error::Result;
use crate::lock::with_lock;
use crate::ops::prune::prune;
use crate::repository::Repository;

pub fn run_locked(g: &GlobalArgs, repo: &Repository, dry_run: bool) -> Result<()> {
    let r = prune(repo, dry_run)?;
    if g.json {
        return print_json(&r);
    }
    if dry_run {
        for w in &r.wal_removed {
            println!("would remove archived WAL {}: {}", w.name, w.reason);
        }
    }
    println!(
        "{}{} pack(s) kept, {} removed, {} repacked, {} unreferenced removed, {} archived WAL file(s) removed; {} -> {}",
        if dry_run { "would prune: " } else { "pruned: " },
        r.packs_kept,
        r.packs_removed,
        r.packs_repacked,
        r.unreferenced_packs_removed,
        r.wal_files_removed,
        human_bytes(r.bytes_before),
        human_bytes(r.bytes_after)
    );
    Ok(())
}

pub fn run(g: &GlobalArgs, a: &PruneArgs) -> Result<()> {
    let repo = open_repo(g)?;
    with_lock(&repo, true, "prune", || run_locked(g, &repo, a.dry_run))
}
