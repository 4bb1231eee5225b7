//! `cairn repair index`: index packs that no index file lists (the work is
//! in [`crate::ops::repair`]).

use super::{open_repo, print_json};
use crate::cli::GlobalArgs;
use crate::error::Result;

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
