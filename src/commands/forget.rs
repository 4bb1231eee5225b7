use super::{local_time, matches_filter, open_repo, print_json};
use crate::cli::{ForgetArgs, GlobalArgs};
use crate::error::{Error, Result};
use crate::lock::with_lock;
use crate::retention::{self, GroupBy, Policy};

fn policy(a: &ForgetArgs) -> Result<Policy> {
    let keep_within = a
        .keep_within
        .as_deref()
        .map(|s| super::parse_duration("--keep-within", s))
        .transpose()?;
    Ok(Policy {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within,
        keep_tags: a.keep_tag.clone(),
    })
}

pub fn run(g: &GlobalArgs, a: &ForgetArgs) -> Result<()> {
    let policy = policy(a)?;
    if policy.is_empty() {
        return Err(Error::usage("no keep rule given: refusing to forget every snapshot").with_hint(
            "give at least one of --keep-last/-hourly/-daily/-weekly/-monthly/-yearly/-within/-tag",
        ));
    }
    let group_by: GroupBy = a
        .group_by
        .parse()
        .map_err(|e: String| Error::usage(format!("--group-by: {e}")))?;
    let repo = open_repo(g)?;
    with_lock(&repo, true, "forget", || {
        let mut snaps = repo.snapshots()?;
        snaps.retain(|(_, s)| matches_filter(s, &a.filter));
        let groups = retention::forget(&repo, &snaps, &policy, group_by, a.dry_run)?;
        let mut removed = 0;
        for grp in &groups {
            if !g.json {
                println!("group {}:", grp.key);
            }
            for d in &grp.decisions {
                if !g.json {
                    println!(
                        "  {} {} {}  {}",
                        if d.keep { "keep  " } else { "remove" },
                        &d.id[..8],
                        local_time(d.time),
                        d.reasons.join("; ")
                    );
                }
                removed += usize::from(!d.keep);
            }
        }
        if g.json {
            print_json(&serde_json::json!({ "dry_run": a.dry_run, "groups": groups }))?;
        } else {
            println!(
                "{} {removed} snapshot(s)",
                if a.dry_run { "would remove" } else { "removed" }
            );
        }
        if a.prune && !a.dry_run {
            super::prune::run_locked(g, &repo, false)?;
        }
        Ok(())
    })
}
