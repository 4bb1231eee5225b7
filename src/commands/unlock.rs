use super::open_repo;
use crate::cli::{GlobalArgs, UnlockArgs};
use crate::error::Result;
use crate::lock::remove_locks;

pub fn run(g: &GlobalArgs, a: &UnlockArgs) -> Result<()> {
    let repo = open_repo(g)?;
    let n = remove_locks(&repo, a.remove_all)?;
    if !g.quiet {
        println!("removed {n} lock(s)");
    }
    Ok(())
}
