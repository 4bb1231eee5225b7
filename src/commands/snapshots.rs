use super::{human_bytes, local_time, matches_filter, open_repo, print_json};
use crate::cli::{GlobalArgs, SnapshotsArgs};
use crate::error::Result;

pub fn run(g: &GlobalArgs, a: &SnapshotsArgs) -> Result<()> {
    let repo = open_repo(g)?;
    let snaps: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| matches_filter(s, &a.filter))
        .collect();
    if g.json {
        let v: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id, "short_id": id.short(), "time": s.time, "host": s.host,
                    "username": s.username, "tags": s.tags, "paths": s.paths,
                    "sources": s.sources.iter().map(|x| serde_json::json!({
                        "name": x.name, "kind": x.kind, "status": x.status, "size": x.size,
                    })).collect::<Vec<_>>(),
                    "size": s.size(), "bytes_added": s.summary.bytes_added,
                    "complete": s.is_complete(), "duration_ms": s.summary.duration_ms,
                })
            })
            .collect();
        return print_json(&v);
    }
    println!(
        "{:<10} {:<19} {:<16} {:<12} {:>10} {:<10} paths",
        "ID", "TIME", "HOST", "TAGS", "SIZE", "STATUS"
    );
    for (id, s) in &snaps {
        println!(
            "{:<10} {:<19} {:<16} {:<12} {:>10} {:<10} {}",
            id.short(),
            local_time(s.time),
            s.host,
            s.tags.join(","),
            human_bytes(s.size()),
            if s.is_complete() {
                "complete"
            } else {
                "incomplete"
            },
            s.paths.join(" ")
        );
    }
    println!("{} snapshot(s)", snaps.len());
    Ok(())
}
