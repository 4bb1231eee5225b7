//! An open repository: backend + master key + index cache.
//!
//! Every read of a repository file checks that the stored bytes hash to the
//! file's name before decrypting, and every chunk read is checked against its
//! keyed id, so damage is reported, never silently restored.

mod frame;
mod keys;
mod node_scan;
mod reader;

use frame::FrameCache;
pub use frame::{
    chunk_slice, compress_with_prefix, decode_frame_bytes, decompress_with_prefix, FrameDecoder,
};
pub use keys::{
    host_name, local_key_files, make_key_file, read_key_file, user_name, write_key_file, NewKey,
    DEFAULT_SCRYPT_LOG_N,
};
pub use node_scan::{NodeScan, Visit};
pub use reader::{FileReader, Lookup};

use crate::backend::{Backend, FileRef};
use crate::crypto::{MasterKey, Secret};
use crate::error::{Error, Kind, Result};
use crate::index::{CacheOptions, IndexCache};
use crate::repo::{
    Config, FileId, FileKind, Id, IndexId, KeyId, Node, PackId, ProofId, RepoId, Snapshot,
    SnapshotId, SourceRecord, CHUNKER_DEFAULT,
};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Mutex;

/// Readable snapshots with their ids, and unreadable ones with the reason.
pub type SnapshotList = (Vec<(SnapshotId, Snapshot)>, Vec<(SnapshotId, Error)>);

pub struct Repository {
    pub backend: Box<dyn Backend>,
    pub config: Config,
    pub key: MasterKey,
    /// The key file that opened the repository.
    pub key_id: KeyId,
    pub cache: IndexCache,
    frames: Mutex<FrameCache>,
    spool: Mutex<Option<Spool>>,
}

/// Packs of a remote repository already downloaded (and verified) by a
/// restore's pre-check, kept on local disk so the restore reads each pack
/// once instead of once more per frame.
struct Spool {
    dir: tempfile::TempDir,
    packs: std::collections::HashSet<PackId>,
}

const DEFAULT_FRAME_SIZE: u32 = 512 * 1024;
const DEFAULT_PACK_SIZE: u32 = 16 << 20;

impl Repository {
    /// Create a repository with one key. Returns its config and the key id.
    pub fn init(backend: &dyn Backend, new: &NewKey) -> Result<(Config, KeyId)> {
        Self::init_with(backend, new, CHUNKER_DEFAULT).map(|(c, k, _)| (c, k))
    }

    /// [`init`](Self::init) with other chunker sizes; also returns the new
    /// master key (for the unlocked-key cache).
    pub fn init_with(
        backend: &dyn Backend,
        new: &NewKey,
        chunker: crate::repo::ChunkerParams,
    ) -> Result<(Config, KeyId, MasterKey)> {
        backend.create()?;
        let key = MasterKey::generate();
        let config = Config {
            version: crate::repo::FEATURES_VERSION,
            id: RepoId::random(),
            created: jiff::Timestamp::now(),
            chunker,
            frame_size: DEFAULT_FRAME_SIZE,
            pack_size: DEFAULT_PACK_SIZE,
            zstd_level: 3,
            features: crate::repo::KNOWN_FEATURES
                .iter()
                .map(|f| f.to_string())
                .collect(),
        };
        // Key first, config last: a repository without a config does not exist yet.
        let kf = make_key_file(&key, config.id, new)?;
        let key_id = write_key_file(backend, &kf)?;
        backend.write(
            &FileRef::config(),
            &crate::repo::encode::config_json(&config),
        )?;
        Ok((config, key_id, key))
    }

    pub fn read_config(backend: &dyn Backend) -> Result<Config> {
        let bytes = backend.read(&FileRef::config())?;
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(format!(
                "config of {} is not valid: {e}",
                backend.location()
            ))
        })?;
        if let Some(why) = config.unreadable() {
            return Err(
                Error::failure(format!("{why}: {}", backend.location())).with_hint(
                    "upgrade cairn to a release that reads it; nothing was read or changed",
                ),
            );
        }
        // Unauthenticated, and its numbers size buffers and drive FastCDC
        // and zstd: refuse any outside the ranges cairn writes.
        config.validate().map_err(|problem| {
            Error::integrity(format!(
                "config of {} is not valid: {problem}",
                backend.location()
            ))
            .with_hint(
                "cairn never changes the config after `init`, so it looks tampered with or damaged; \
                 put back a copy of the original (spec/repository.md, \"Config validation\")",
            )
        })?;
        Ok(config)
    }

    /// Open with the first key file the secret unlocks.
    pub fn open(
        backend: Box<dyn Backend>,
        secret: &Secret,
        cache: impl Into<CacheOptions>,
    ) -> Result<Repository> {
        let config = Self::read_config(backend.as_ref())?;
        Self::open_with_config(backend, config, secret, cache)
    }

    /// [`open`](Self::open) with the config already read.
    pub fn open_with_config(
        backend: Box<dyn Backend>,
        config: Config,
        secret: &Secret,
        cache: impl Into<CacheOptions>,
    ) -> Result<Repository> {
        let (key, key_id) = Self::unlock(backend.as_ref(), &config, secret)?;
        Self::open_unlocked(backend, config, key, key_id, cache)
    }

    /// [`open`](Self::open) with the master key already at hand (from the
    /// key cache, spec/repository.md §9).
    pub fn open_unlocked(
        backend: Box<dyn Backend>,
        config: Config,
        key: MasterKey,
        key_id: KeyId,
        cache: impl Into<CacheOptions>,
    ) -> Result<Repository> {
        let options = cache.into();
        let cache = IndexCache::open_with(options.dir.as_deref(), config.id, options.memory)?;
        cache.sync(backend.as_ref(), &key)?;
        Ok(Repository {
            backend,
            config,
            key,
            key_id,
            cache,
            frames: Mutex::new(FrameCache::default()),
            spool: Mutex::new(None),
        })
    }

    /// Seal a value and store it under the hash of its stored bytes, as a
    /// file of the kind of `I`.
    pub fn write_sealed<I: FileId>(&self, value: &impl Serialize) -> Result<I> {
        let bytes = self.key.seal(value)?;
        let id = I::from_raw(Id::of_bytes(&bytes));
        self.backend.write(&FileRef::of(id), &bytes)?;
        Ok(id)
    }

    /// Store an index file listing `packs` (written, and their packs, before
    /// any snapshot that needs them) and add it to the local cache. Returns
    /// its id and its size in bytes.
    pub fn write_index(&self, packs: Vec<crate::repo::PackEntry>) -> Result<(IndexId, u64)> {
        let idx = crate::repo::IndexFile {
            version: crate::repo::FORMAT_VERSION,
            packs,
        };
        let bytes = self.key.seal(&idx)?;
        let id = IndexId::of_bytes(&bytes);
        self.backend.write(&FileRef::of(id), &bytes)?;
        self.cache.add(&id, &idx)?;
        Ok((id, bytes.len() as u64))
    }

    /// Read a sealed file, check its name against its content, and open it.
    pub fn read_sealed<T: DeserializeOwned>(&self, id: impl FileId) -> Result<T> {
        let f = FileRef::of(id);
        let bytes = self.backend.read(&f)?;
        if Id::of_bytes(&bytes) != id.raw() {
            return Err(Error::integrity(format!(
                "{f} is damaged: its content does not match its name"
            )));
        }
        self.key.unseal(&bytes, &f)
    }

    /// Record the outcome of a restore test of a snapshot.
    pub fn record_proof(&self, proof: &crate::repo::Proof) -> Result<ProofId> {
        self.write_sealed(proof)
    }

    /// The newest proof of each snapshot that has one. Unreadable proof
    /// files are skipped with a warning.
    pub fn proofs(&self) -> Result<std::collections::HashMap<SnapshotId, crate::repo::Proof>> {
        let mut out: std::collections::HashMap<SnapshotId, crate::repo::Proof> =
            std::collections::HashMap::new();
        for (name, _) in self.backend.list(FileKind::Proof)? {
            let Some(id) = ProofId::parse(&name) else {
                continue;
            };
            match self.read_sealed::<crate::repo::Proof>(id) {
                Ok(p) => {
                    if out.get(&p.snapshot).is_none_or(|q| q.time < p.time) {
                        out.insert(p.snapshot, p);
                    }
                }
                Err(e) => tracing::warn!("skipping proof {}: {e}", id.short()),
            }
        }
        Ok(out)
    }

    /// Bring the index cache up to date with the repository's index files:
    /// new ones are added, and it is rebuilt when one it holds is gone.
    /// Returns how many index files were read.
    pub fn sync_index(&self) -> Result<usize> {
        self.cache.sync(self.backend.as_ref(), &self.key)
    }

    /// All readable snapshots, oldest first. A damaged snapshot file is
    /// skipped with a warning (`check` reports it), so one bad file does not
    /// hide every other restore point. The index cache is brought up to
    /// date afterwards, as [`snapshots_and_damage`](Self::snapshots_and_damage) says.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        Ok(self.snapshots_and_damage()?.0)
    }

    /// Readable snapshots (oldest first) and the ids of unreadable ones with why.
    ///
    /// Read order (spec/repository.md §3): the snapshot files are listed
    /// and read first, and only then is the index cache brought up to date.
    /// A snapshot file is written only after the index files that list its
    /// chunks, so every snapshot returned finds its chunks in the cache, even
    /// one a backup finished after the repository was opened.
    pub fn snapshots_and_damage(&self) -> Result<SnapshotList> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for (name, _) in self.backend.list(FileKind::Snapshot)? {
            let Some(id) = SnapshotId::parse(&name) else {
                continue;
            };
            match self.read_listed_snapshot(id) {
                Ok(Some(s)) => out.push((id, s)),
                Ok(None) => {}
                Err(e) if e.kind() == Kind::Integrity => {
                    tracing::warn!("skipping snapshot {}: {e}; run `cairn check`", id.short());
                    bad.push((id, e));
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        self.sync_index()?;
        Ok((out, bad))
    }

    /// Snapshot `id`, found by a listing: `None` when its file is gone since
    /// (a `forget` or retention that ran meanwhile; readers take no lock),
    /// instead of an error. Found by `scripts/timelapse`: `GET /snapshots`
    /// answered 500 while the daemon's retention for changed rules removed
    /// snapshots.
    pub fn read_listed_snapshot(&self, id: SnapshotId) -> Result<Option<Snapshot>> {
        match self.read_sealed::<Snapshot>(id) {
            Ok(s) => Ok(Some(s)),
            Err(e) => match self.backend.exists(&FileRef::of(id)) {
                Ok(false) => {
                    tracing::debug!(snapshot = %id.short(), "snapshot removed since it was listed");
                    Ok(None)
                }
                _ => Err(e),
            },
        }
    }

    /// Resolve `latest`, a full id or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        let (all, damaged) = self.snapshots_and_damage()?;
        let lower = spec.to_ascii_lowercase();
        if let Some((_, e)) = damaged
            .into_iter()
            .find(|(id, _)| spec != "latest" && id.to_hex().starts_with(&lower))
        {
            return Err(e.with_hint(
                "this snapshot's file is damaged; restore another one (`cairn snapshots`)",
            ));
        }
        if spec == "latest" {
            return all.into_iter().next_back().ok_or_else(|| {
                Error::failure("the repository has no snapshots")
                    .with_hint("create one with `cairn snapshot`")
            });
        }
        let matches: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec.to_ascii_lowercase()))
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => Err(Error::usage(format!("no snapshot matches {spec:?}"))
                .with_hint("`cairn snapshots` lists them")),
            n => Err(Error::usage(format!("{n} snapshots match {spec:?}"))
                .with_hint("give more digits of the id")),
        }
    }

    /// Keep a verified pack of a remote repository on local disk for this
    /// process (no-op for local repositories).
    pub fn spool_pack(&self, id: PackId, bytes: &[u8]) -> Result<()> {
        if self.backend.is_local() {
            return Ok(());
        }
        let mut guard = self
            .spool
            .lock()
            .map_err(|_| Error::failure("spool lock poisoned"))?;
        if guard.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("cairn-spool-")
                .tempdir()
                .map_err(|e| Error::io("creating a spool directory for downloaded packs", e))?;
            *guard = Some(Spool {
                dir,
                packs: Default::default(),
            });
        }
        if let Some(sp) = guard.as_mut() {
            let path = sp.dir.path().join(id.to_hex());
            std::fs::write(&path, bytes)
                .map_err(|e| Error::io(format!("spooling to {}", path.display()), e))?;
            sp.packs.insert(id);
        }
        Ok(())
    }

    /// Forget the recently decoded frames: a long-lived repository (the
    /// daemon's) calls this before each use. Otherwise a delta base read
    /// once stays in memory, and after its pack is damaged on disk new
    /// snapshots are still stored as deltas against it: they save as
    /// complete and can never be restored (issue 28, found by
    /// `scripts/timelapse`). Read again, the damaged base fails its check
    /// and the new data is stored whole.
    pub fn forget_frames(&self) {
        if let Ok(mut c) = self.frames.lock() {
            *c = FrameCache::default();
        }
    }

    /// Forget the spooled packs and delete their files: a long-lived
    /// repository (the daemon's) calls this after each restore.
    pub fn drop_spool(&self) {
        if let Ok(mut guard) = self.spool.lock() {
            *guard = None;
        }
    }

    /// A whole pack's bytes into `buf`: from the spool when a pre-check
    /// downloaded it, else from the backend. Not checked against its name here.
    pub fn read_pack_into(&self, id: &PackId, buf: &mut Vec<u8>) -> Result<()> {
        let f = FileRef::of(*id);
        match self.spooled_path(id) {
            Some(path) => crate::backend::read_whole_of(&path, buf)
                .map_err(|e| Error::io(format!("reading spooled {f}"), e)),
            None => self.backend.read_into(&f, buf),
        }
    }

    /// Pack `id` handed to `piece` as it arrives ([`Backend::read_pieces`]),
    /// from the spool when a pre-check downloaded it.
    pub fn read_pack_pieces(
        &self,
        id: &PackId,
        piece: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let f = FileRef::of(*id);
        match self.spooled_path(id) {
            Some(path) => crate::backend::read_pieces_of(&path, piece, |e| {
                Error::io(format!("reading spooled {f}"), e)
            }),
            None => self.backend.read_pieces(&f, piece),
        }
    }

    /// Where pack `id` lies in the spool, when a pre-check downloaded it.
    fn spooled_path(&self, id: &PackId) -> Option<std::path::PathBuf> {
        let guard = self.spool.lock().ok()?;
        let sp = guard.as_ref()?;
        sp.packs
            .contains(id)
            .then(|| sp.dir.path().join(id.to_hex()))
    }

    /// `length` bytes at `offset` of pack `pack` into `buf`: from the spool,
    /// else the backend (around the page cache when `uncached`).
    fn read_pack_range(
        &self,
        pack: &PackId,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
        uncached: bool,
    ) -> Result<()> {
        let f = FileRef::of(*pack);
        match self.spooled_path(pack) {
            Some(path) => crate::backend::read_range_of(&path, offset, length, buf)
                .map_err(|e| Error::io(format!("reading spooled {f}"), e)),
            None if uncached => self
                .backend
                .read_range_uncached_into(&f, offset, length, buf),
            None => self.backend.read_range_into(&f, offset, length, buf),
        }
    }

    /// The node list of a source.
    pub fn read_tree(&self, source: &SourceRecord) -> Result<Vec<Node>> {
        let mut nodes = Vec::new();
        self.for_each_node(source, |n| nodes.push(n))?;
        // Grown by doubling: up to half of it unused (a node is 120 bytes).
        nodes.shrink_to_fit();
        Ok(nodes)
    }

    /// Call `f` with each node of a source's list, in order, parsed as
    /// the list's chunks arrive: neither its bytes nor its nodes are ever
    /// all in memory.
    pub fn for_each_node(&self, source: &SourceRecord, mut f: impl FnMut(Node)) -> Result<()> {
        let mut parser = crate::repo::encode::NodeListParser::default();
        let mut bad = None;
        self.for_each_listed_chunk(&source.tree, |_, data| {
            if bad.is_none() {
                bad = parser.push(data).err();
                parser.take_nodes().into_iter().for_each(&mut f);
            }
        })?;
        let last = match bad {
            Some(e) => Err(e),
            None => parser.finish(),
        }
        .map_err(|e| Error::integrity(e).context(format!("node list of source {}", source.name)))?;
        last.into_iter().for_each(f);
        Ok(())
    }
}

pub fn parse_tree(bytes: &[u8]) -> Result<Vec<Node>> {
    crate::repo::encode::parse_node_list(bytes).map_err(Error::integrity)
}

/// A new local repository under `dir` (password `pw`, cheap KDF), for unit tests.
#[cfg(test)]
pub fn test_repo(dir: &std::path::Path) -> Repository {
    let path = dir.join("repo");
    let new = NewKey::Password {
        password: "pw".into(),
        log_n: 10,
    };
    Repository::init(&crate::backend::LocalBackend::new(&path), &new).unwrap();
    Repository::open(
        Box::new(crate::backend::LocalBackend::new(&path)),
        &crate::crypto::Secret::Password("pw".into()),
        Some(dir.join("cache")),
    )
    .unwrap()
}
