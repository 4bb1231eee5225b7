//! `cairn plan check FILE`: validate a plan before it is committed or
//! deployed, reporting every problem at once.

use std::path::Path;

use crate::cli::GlobalArgs;
use crate::error::{Error, Result};
use crate::plan::Plan;

/// Print each problem as `FILE:LINE:COLUMN: error: …` + `  hint: …` on
/// stderr and fail with a usage error (exit 2); on success print a summary,
/// or with `--json` the plan with its defaults filled in.
pub fn check(g: &GlobalArgs, file: &Path) -> Result<()> {
    let plan = match Plan::load(file) {
        Ok(plan) => plan,
        Err(problems) => {
            eprint!("{problems}");
            let n = problems.len();
            return Err(Error::usage(format!(
                "plan {} has {n} problem{}",
                file.display(),
                if n == 1 { "" } else { "s" }
            )));
        }
    };
    if g.json {
        return super::print_json(&plan);
    }
    println!(
        "plan {} is valid: {} source(s), {} schedule(s), {} service(s)",
        file.display(),
        plan.sources.len(),
        plan.schedules.len(),
        plan.services.len()
    );
    Ok(())
}
