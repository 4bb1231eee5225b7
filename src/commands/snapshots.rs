use super::{human_bytes, local_time, matches_filter, open_repo, print_json};
use crate::cli::{GlobalArgs, SnapshotsArgs};
use crate::error::Result;
use crate::source::{pg, physical_meta};

pub fn run(g: &GlobalArgs, a: &SnapshotsArgs) -> Result<()> {
    let repo = open_repo(g)?;
    let snaps: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| matches_filter(s, &a.filter))
        .collect();
    let proofs = repo.proofs()?;
    // Physical PostgreSQL backups can be restored from their end to the
    // last transaction of the unbroken run of archived WAL after it.
    let physical = |s: &crate::repo::Snapshot| s.sources.iter().find_map(physical_meta);
    let archive = if snaps.iter().any(|(_, s)| physical(s).is_some()) {
        pg::wal_archive(&repo)?
    } else {
        pg::WalArchive::default()
    };
    let ranges: std::collections::HashMap<_, _> = snaps
        .iter()
        .filter_map(|(id, s)| {
            let m = physical(s)?;
            let r = pg::reach(&repo, &archive, &m)?;
            Some((*id, (m, r)))
        })
        .collect();
    let range_json = |id: &crate::repo::SnapshotId| {
        ranges.get(id).map(|(m, r)| {
            serde_json::json!({
                "from": m.stop_time, "to": r.time, "approximate": r.approximate,
                "gap": r.gap.map(|g| archive.size.name(g)),
            })
        })
    };
    let window = |timeline: u32| {
        archive
            .window(timeline)
            .map(|(first, last, n)| (archive.size.name(first), archive.size.name(last), n))
    };
    let wal_json = |id: &crate::repo::SnapshotId| {
        let (m, _) = ranges.get(id)?;
        let (oldest, newest, segments) = window(m.timeline)?;
        Some(serde_json::json!({
            "timeline": m.timeline, "oldest": oldest, "newest": newest, "segments": segments,
        }))
    };
    if g.json {
        let v: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id, "short_id": id.short(), "time": s.time, "host": s.host,
                    "username": s.username, "tags": s.tags, "paths": s.paths, "plan": s.plan,
                    "sources": s.sources.iter().map(|x| serde_json::json!({
                        "name": x.name, "kind": x.kind, "status": x.status, "size": x.size,
                    })).collect::<Vec<_>>(),
                    "size": s.size(), "bytes_added": s.summary.bytes_added,
                    "complete": s.is_complete(), "duration_ms": s.summary.duration_ms,
                    "restorable": range_json(id),
                    "wal": wal_json(id),
                    "corrupted": proofs.get(id).is_some_and(|p| !p.passed),
                    "proof": proofs.get(id).map(|p| serde_json::json!({
                        "time": p.time, "passed": p.passed, "sources": p.sources, "detail": p.detail,
                    })),
                })
            })
            .collect();
        return print_json(&v);
    }
    println!(
        "{:<10} {:<19} {:<16} {:<12} {:>10} {:<10} {:<19} paths",
        "ID", "TIME", "HOST", "TAGS", "SIZE", "STATUS", "PROVEN"
    );
    for (id, s) in &snaps {
        let proven = match proofs.get(id) {
            Some(p) if p.passed => local_time(p.time),
            Some(_) => "CORRUPTED".to_string(),
            None => "-".to_string(),
        };
        println!(
            "{:<10} {:<19} {:<16} {:<12} {:>10} {:<10} {:<19} {}",
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
            proven,
            s.paths.join(" ")
        );
    }
    for (id, _) in &snaps {
        if let Some((m, r)) = ranges.get(id) {
            println!(
                "{}: point-in-time restore possible from {} to {}{}{}",
                id.short(),
                local_time(m.stop_time),
                local_time(r.time),
                if r.approximate {
                    " (approximately: a WAL segment's records could not be read)"
                } else {
                    ""
                },
                r.gap
                    .map(|g| format!(
                        "; WAL segment {} is missing, so not beyond",
                        archive.size.name(g)
                    ))
                    .unwrap_or_default()
            );
        }
    }
    if !ranges.is_empty() {
        for t in archive.timelines() {
            if let Some((oldest, newest, n)) = window(t) {
                println!("archived WAL, timeline {t}: {oldest} to {newest} ({n} segment(s))");
            }
        }
    }
    for (id, _) in &snaps {
        if let Some(p) = proofs.get(id).filter(|p| !p.passed) {
            println!(
                "{}: CORRUPTED — its restore test failed at {}: {}",
                id.short(),
                local_time(p.time),
                p.detail
            );
        }
    }
    println!("{} snapshot(s)", snaps.len());
    Ok(())
}
