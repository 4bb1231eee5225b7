use super::{human_bytes, open_repo, print_json};
use crate::cli::GlobalArgs;
use crate::error::Result;
use crate::repo::{FileKind, IndexFile, IndexId};

pub fn run(g: &GlobalArgs) -> Result<()> {
    let repo = open_repo(g)?;
    let snaps = repo.snapshots()?;
    let packs = repo.backend.list(FileKind::Pack)?;
    let pack_bytes: u64 = packs.iter().map(|(_, s)| s).sum();
    let mut seen = std::collections::HashSet::new();
    let mut chunks = 0u64;
    let mut raw = 0u64;
    let index_files = repo.backend.list(FileKind::Index)?;
    for (name, _) in &index_files {
        let Some(id) = IndexId::parse(name) else {
            continue;
        };
        let idx: IndexFile = repo.read_sealed(id)?;
        for c in idx
            .packs
            .iter()
            .flat_map(|p| p.frames.iter())
            .flat_map(|f| f.chunks.iter())
        {
            if seen.insert(c.id) {
                chunks += 1;
                raw += c.length as u64;
            }
        }
    }
    let logical: u64 = snaps.iter().map(|(_, s)| s.size()).sum();
    let v = serde_json::json!({
        "snapshots": snaps.len(),
        "packs": packs.len(),
        "index_files": index_files.len(),
        "stored_bytes": pack_bytes,
        "unique_chunks": chunks,
        "unique_bytes": raw,
        "logical_bytes": logical,
        "dedup_ratio": if raw > 0 { logical as f64 / raw as f64 } else { 0.0 },
        "compression_ratio": if pack_bytes > 0 { raw as f64 / pack_bytes as f64 } else { 0.0 },
    });
    if g.json {
        return print_json(&v);
    }
    println!("snapshots:        {}", snaps.len());
    println!(
        "packs:            {} ({})",
        packs.len(),
        human_bytes(pack_bytes)
    );
    println!(
        "unique chunks:    {} ({} before compression)",
        chunks,
        human_bytes(raw)
    );
    println!("all snapshots:    {} of source data", human_bytes(logical));
    if raw > 0 && pack_bytes > 0 {
        println!(
            "deduplication:    {:.2}x, compression: {:.2}x",
            logical as f64 / raw as f64,
            raw as f64 / pack_bytes as f64
        );
    }
    Ok(())
}
