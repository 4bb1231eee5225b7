use super::{human_bytes, local_time, open_repo, parse_time, print_json};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::error::{Error, Result};
use crate::repo::{Id, Snapshot};
use crate::repository::Repository;
use crate::restorer;

/// The newest snapshot taken at or before `at` (optionally one that has `source`).
pub fn snapshot_at(
    repo: &Repository,
    at: jiff::Timestamp,
    sources: &[String],
) -> Result<(Id, Snapshot)> {
    let all = repo.snapshots()?;
    let has_sources = |s: &Snapshot| {
        sources
            .iter()
            .all(|n| s.sources.iter().any(|x| &x.name == n))
    };
    let oldest = all
        .iter()
        .find(|(_, s)| has_sources(s))
        .map(|(_, s)| s.time);
    all.into_iter()
        .rev()
        .find(|(_, s)| s.time <= at && has_sources(s))
        .ok_or_else(|| {
            let msg = format!("no snapshot was taken at or before {}", local_time(at));
            match oldest {
                Some(t) => Error::failure(msg)
                    .with_hint(format!("the oldest one is from {}", local_time(t))),
                None => Error::failure(msg).with_hint("`cairn snapshots` lists the restore points"),
            }
        })
}

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<()> {
    let at = a.at.as_deref().map(parse_time).transpose()?;
    if a.snapshot.is_none() && at.is_none() {
        return Err(
            Error::usage("which snapshot? give an id, `latest`, or --at TIME")
                .with_hint("`cairn snapshots` lists the restore points"),
        );
    }
    let repo = open_repo(g)?;
    let (id, snap) = match (&a.snapshot, at) {
        (Some(s), _) => repo.find_snapshot(s)?,
        (None, Some(t)) => snapshot_at(&repo, t, &a.source)?,
        (None, None) => unreachable!("checked above"),
    };
    for name in &a.source {
        if !snap.sources.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = snap.sources.iter().map(|s| s.name.as_str()).collect();
            return Err(
                Error::usage(format!("snapshot {} has no source {name:?}", id.short()))
                    .with_hint(format!("its sources are: {}", names.join(", "))),
            );
        }
    }
    let mut nodes = Vec::new();
    for s in snap
        .sources
        .iter()
        .filter(|s| a.source.is_empty() || a.source.contains(&s.name))
    {
        nodes.extend(repo.read_tree(s)?);
    }
    let nodes = restorer::filter_nodes(nodes, &a.include);
    if nodes.is_empty() && !a.include.is_empty() {
        return Err(Error::usage(format!(
            "nothing in snapshot {} matches --include {}",
            id.short(),
            a.include.join(", ")
        ))
        .with_hint("paths are stored without the leading /, e.g. home/user/file"));
    }
    let started = std::time::Instant::now();
    let stats = restorer::restore_nodes(&repo, &nodes, &a.target, g.quiet)?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(snapshot = %id.short(), bytes = stats.bytes, seconds = secs, "restore finished");
    if g.json {
        print_json(&serde_json::json!({
            "snapshot": id, "time": snap.time, "target": a.target, "stats": stats,
            "duration_ms": (secs * 1000.0) as u64,
        }))
    } else {
        if !g.quiet {
            println!(
                "restored snapshot {} of {} to {}: {} files, {} dirs, {} symlinks, {} in {:.1}s",
                id.short(),
                local_time(snap.time),
                a.target.display(),
                stats.files,
                stats.dirs,
                stats.symlinks,
                human_bytes(stats.bytes),
                secs
            );
        }
        Ok(())
    }
}
