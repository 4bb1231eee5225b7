//! `cairn forget --plan FILE [--dry-run] [--prune]`: apply a plan's
//! retention to the snapshots it made, per source, as the daemon does (the
//! work is in [`crate::ops::retention`]).

use std::path::Path;

use super::print_json;
use crate::cli::{ForgetArgs, GlobalArgs};
use crate::error::Result;
use crate::lock::with_lock;

pub fn run(g: &GlobalArgs, a: &ForgetArgs, file: &Path) -> Result<()> {
    let plan = super::plan::load(file)?;
    let repo = super::plan::open_repo(g, &plan)?;
    let policy = plan.retention.policy();
    with_lock(&repo, true, "forget --plan", || {
        let decision = crate::ops::retention::forget(&repo, &plan, a.dry_run)?;
        let removed = decision.removed().count();
        if g.json {
            print_json(&serde_json::json!({
                "dry_run": a.dry_run,
                "plan": plan.identity(),
                "policy": policy,
                "snapshots": decision.snapshots,
            }))?;
        } else {
            println!("plan {}, policy: {policy}", plan.identity());
            if decision.snapshots.is_empty() {
                println!("no snapshot was made with this plan yet");
            }
            for v in &decision.snapshots {
                super::print_verdict(v.keep, &v.id, v.time, &v.reasons);
            }
            super::print_removed(a.dry_run, removed);
        }
        if a.prune && !a.dry_run {
            super::prune::run_locked(g, &repo, false)?;
        }
        Ok(())
    })
}
