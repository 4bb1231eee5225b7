//! What the status page reads from the repository, kept between requests.
//!
//! Snapshot, proof and WAL entry files are immutable and named by their
//! content, so a file read once never needs reading again: each page load
//! lists the three kinds (one request each), reads and decrypts only the
//! names not seen before, and forgets the names no longer listed. A year
//! of nightly snapshots costs one listing per load once the first load
//! has read them. Snapshots are kept without their node-list chunk ids and
//! source metadata (what the page does not show), a physical PostgreSQL
//! source's metadata parsed beforehand; the WAL is read only for plans
//! with a physical source. Another repository at the location (another
//! config id) starts the cache afresh.

use crate::error::{Kind, Result};
use crate::repo::postgres::PhysicalMeta;
use crate::repo::{FileKind, Proof, ProofId, RepoId, Snapshot, SnapshotId, WalEntry};
use crate::repository::Repository;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One cached snapshot: the manifest without node lists and metadata.
#[derive(Clone, Debug)]
pub struct Cached {
    pub snapshot: Snapshot,
    /// Physical PostgreSQL sources: name and metadata.
    pub physical: Vec<(String, PhysicalMeta)>,
}

#[derive(Default)]
pub struct RepoCache {
    repo: Option<RepoId>,
    snapshots: HashMap<SnapshotId, Cached>,
    /// Snapshot files that cannot be read (damaged), with why.
    damaged: BTreeMap<SnapshotId, String>,
    proofs: HashMap<ProofId, Option<Proof>>,
    /// WAL entry files (`NAME.ID`); `None` for a damaged one.
    wal: HashMap<String, Option<WalEntry>>,
    /// Files read and decrypted since the cache was made (for tests).
    pub reads: u64,
}

/// The slim copy kept of a snapshot.
fn slim(mut s: Snapshot) -> Cached {
    let physical = s
        .sources
        .iter()
        .filter_map(|r| crate::source::physical_meta(r).map(|m| (r.name.clone(), m)))
        .collect();
    for r in &mut s.sources {
        r.tree = Vec::new();
        r.metadata = serde_json::Value::Null;
    }
    Cached {
        snapshot: s,
        physical,
    }
}

/// `NAME.<64 hex>`: a WAL entry file (a bare name is a claim).
fn is_wal_entry(file: &str) -> bool {
    file.rsplit_once('.')
        .is_some_and(|(_, id)| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl RepoCache {
    /// Bring the cache up to date with `repo`: list, read what is new, drop
    /// what is gone. `wal`: also the WAL entries.
    pub fn refresh(&mut self, repo: &Repository, wal: bool) -> Result<()> {
        if self.repo != Some(repo.config.id) {
            *self = RepoCache {
                repo: Some(repo.config.id),
                reads: self.reads,
                ..Default::default()
            };
        }
        let listed: HashSet<SnapshotId> = repo
            .backend
            .list(FileKind::Snapshot)?
            .into_iter()
            .filter_map(|(n, _)| SnapshotId::parse(&n))
            .collect();
        self.snapshots.retain(|id, _| listed.contains(id));
        self.damaged.retain(|id, _| listed.contains(id));
        for id in listed {
            if self.snapshots.contains_key(&id) || self.damaged.contains_key(&id) {
                continue;
            }
            self.reads += 1;
            match repo.read_sealed::<Snapshot>(id) {
                Ok(s) => {
                    self.snapshots.insert(id, slim(s));
                }
                Err(e) if e.kind() == Kind::Integrity => {
                    self.damaged.insert(id, e.to_string());
                }
                // Gone since the listing (a forget), or the storage
                // faltered: tried again at the next load.
                Err(e) => tracing::warn!("cannot read snapshot {}: {e}", id.short()),
            }
        }
        let listed: HashSet<ProofId> = repo
            .backend
            .list(FileKind::Proof)?
            .into_iter()
            .filter_map(|(n, _)| ProofId::parse(&n))
            .collect();
        self.proofs.retain(|id, _| listed.contains(id));
        for id in listed {
            if self.proofs.contains_key(&id) {
                continue;
            }
            self.reads += 1;
            let p = repo
                .read_sealed::<Proof>(id)
                .map_err(|e| tracing::warn!("skipping proof {}: {e}", id.short()))
                .ok();
            self.proofs.insert(id, p);
        }
        if wal {
            let listed: HashSet<String> = repo
                .backend
                .list(FileKind::Wal)?
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| is_wal_entry(n))
                .collect();
            self.wal.retain(|n, _| listed.contains(n));
            for name in listed {
                if self.wal.contains_key(&name) {
                    continue;
                }
                self.reads += 1;
                let e = crate::source::pg::read_wal_entry(repo, &name)
                    .map_err(|e| tracing::warn!("leaving out {name}: {e}; run `cairn check`"))
                    .ok();
                self.wal.insert(name, e);
            }
        }
        Ok(())
    }

    /// The snapshots, oldest first (equal times by id), as
    /// [`Repository::snapshots`] orders them.
    pub fn snapshots(&self) -> Vec<(SnapshotId, &Cached)> {
        let mut v: Vec<_> = self.snapshots.iter().map(|(id, c)| (*id, c)).collect();
        v.sort_by(|a, b| {
            a.1.snapshot
                .time
                .cmp(&b.1.snapshot.time)
                .then(a.0.cmp(&b.0))
        });
        v
    }

    /// Snapshot files that cannot be read, with why.
    pub fn damaged(&self) -> &BTreeMap<SnapshotId, String> {
        &self.damaged
    }

    /// The newest proof of each snapshot, as [`Repository::proofs`] gives it.
    pub fn newest_proofs(&self) -> HashMap<SnapshotId, Proof> {
        let mut out: HashMap<SnapshotId, Proof> = HashMap::new();
        for p in self.proofs.values().flatten() {
            if out.get(&p.snapshot).is_none_or(|q| q.time < p.time) {
                out.insert(p.snapshot, p.clone());
            }
        }
        out
    }

    /// The readable WAL entries.
    pub fn wal_entries(&self) -> Vec<WalEntry> {
        let mut v: Vec<WalEntry> = self.wal.values().flatten().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
