//! An open repository: backend + master key + index cache.
//!
//! Every read of a repository file checks that the stored bytes hash to the
//! file's name before decrypting, and every chunk read is checked against its
//! keyed id, so damage is reported, never silently restored.

use crate::backend::{Backend, FileRef};
use crate::crypto::{self, MasterKey, Secret};
use crate::error::{Error, Kind, Result};
use crate::index::{IndexCache, Location};
use crate::repo::{
    Compression, Config, FileKind, FrameEntry, Id, KeyFile, KeyKind, Node, Snapshot, SourceRecord,
    CHUNKER_DEFAULT, FORMAT_VERSION,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Readable snapshots with their ids, and unreadable ones with the reason.
pub type SnapshotList = (Vec<(Id, Snapshot)>, Vec<(Id, Error)>);

pub struct Repository {
    pub backend: Box<dyn Backend>,
    pub config: Config,
    pub key: MasterKey,
    /// The key file that opened the repository.
    pub key_id: Id,
    pub cache: IndexCache,
    frames: Mutex<FrameCache>,
    spool: Mutex<Option<Spool>>,
}

/// Packs of a remote repository already downloaded (and verified) by a
/// restore's pre-check, kept on local disk so the restore reads each pack
/// once instead of once more per frame.
struct Spool {
    dir: tempfile::TempDir,
    packs: std::collections::HashSet<Id>,
}

/// How a new key file protects the master key.
pub enum NewKey {
    Password { password: String, log_n: u8 },
    Recipient(String),
}

pub const DEFAULT_SCRYPT_LOG_N: u8 = 18;
const DEFAULT_FRAME_SIZE: u32 = 512 * 1024;
const DEFAULT_PACK_SIZE: u32 = 16 << 20;

pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub fn user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", rustix::process::getuid().as_raw()))
}

/// Build a key file wrapping `material` as `new` says.
pub fn make_key_file(key: &MasterKey, repo_id: Id, new: &NewKey) -> Result<KeyFile> {
    let material = key.material(repo_id);
    let (kind, data, recipient) = match new {
        NewKey::Password { password, log_n } => (
            KeyKind::Password,
            crypto::wrap_with_password(&material, password, *log_n)?,
            None,
        ),
        NewKey::Recipient(r) => (
            KeyKind::Identity,
            crypto::wrap_to_recipient(&material, r)?,
            Some(r.clone()),
        ),
    };
    Ok(KeyFile {
        version: FORMAT_VERSION,
        kind,
        created: jiff::Timestamp::now(),
        host: host_name(),
        username: user_name(),
        recipient,
        data: hex::encode(data),
    })
}

/// Store a key file under the hash of its bytes.
pub fn write_key_file(backend: &dyn Backend, kf: &KeyFile) -> Result<Id> {
    let bytes = serde_json::to_vec_pretty(kf).map_err(|e| Error::failure(e.to_string()))?;
    let id = Id::of_bytes(&bytes);
    backend.write(&FileRef::new(FileKind::Key, id.to_hex()), &bytes)?;
    Ok(id)
}

pub fn read_key_file(backend: &dyn Backend, name: &str) -> Result<KeyFile> {
    let f = FileRef::new(FileKind::Key, name);
    let bytes = backend.read(&f)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::integrity(format!("{f} is not valid: {e}")))
}

impl Repository {
    /// Create a repository with one key. Returns its config and the key id.
    pub fn init(backend: &dyn Backend, new: &NewKey) -> Result<(Config, Id)> {
        Self::init_with(backend, new, CHUNKER_DEFAULT)
    }

    /// [`init`](Self::init) with other chunker sizes.
    pub fn init_with(
        backend: &dyn Backend,
        new: &NewKey,
        chunker: crate::repo::ChunkerParams,
    ) -> Result<(Config, Id)> {
        backend.create()?;
        let key = MasterKey::generate();
        let config = Config {
            version: FORMAT_VERSION,
            id: Id::random(),
            created: jiff::Timestamp::now(),
            chunker,
            frame_size: DEFAULT_FRAME_SIZE,
            pack_size: DEFAULT_PACK_SIZE,
            zstd_level: 3,
        };
        // Key first, config last: a repository without a config does not exist yet.
        let kf = make_key_file(&key, config.id, new)?;
        let key_id = write_key_file(backend, &kf)?;
        let bytes =
            serde_json::to_vec_pretty(&config).map_err(|e| Error::failure(e.to_string()))?;
        backend.write(&FileRef::config(), &bytes)?;
        Ok((config, key_id))
    }

    pub fn read_config(backend: &dyn Backend) -> Result<Config> {
        let bytes = backend.read(&FileRef::config())?;
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(format!(
                "config of {} is not valid: {e}",
                backend.location()
            ))
        })?;
        if config.version > FORMAT_VERSION {
            return Err(Error::failure(format!(
                "repository format version {} is newer than this cairn understands ({FORMAT_VERSION})",
                config.version
            ))
            .with_hint("upgrade cairn"));
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
        cache_dir: Option<PathBuf>,
    ) -> Result<Repository> {
        let config = Self::read_config(backend.as_ref())?;
        Self::open_with_config(backend, config, secret, cache_dir)
    }

    /// [`open`](Self::open) with the config already read.
    pub fn open_with_config(
        backend: Box<dyn Backend>,
        config: Config,
        secret: &Secret,
        cache_dir: Option<PathBuf>,
    ) -> Result<Repository> {
        let (key, key_id) = Self::unlock(backend.as_ref(), &config, secret)?;
        let cache = IndexCache::open(cache_dir.as_deref(), config.id)?;
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

    /// The master key from the first key file `secret` opens. A damaged key
    /// file (empty, cut short, garbage) is skipped with a warning naming it,
    /// so that it does not lock out the holders of every other key; only
    /// when no key opens is it an error.
    fn unlock(backend: &dyn Backend, config: &Config, secret: &Secret) -> Result<(MasterKey, Id)> {
        let keys = backend.list(FileKind::Key)?;
        let mut damaged = Vec::new();
        let mut skip = |name: &str, e: Error| {
            tracing::warn!("skipping key {name}: it is damaged ({e}); trying the other keys");
            damaged.push(name.to_string());
        };
        for (name, _) in &keys {
            let kf = match read_key_file(backend, name) {
                Ok(kf) => kf,
                Err(e) if e.kind() == Kind::Integrity => {
                    skip(name, e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let matches_kind = matches!(
                (kf.kind, secret),
                (KeyKind::Password, Secret::Password(_))
                    | (KeyKind::Identity, Secret::Identities(_))
            );
            if !matches_kind {
                continue;
            }
            let data = match hex::decode(&kf.data) {
                Ok(d) => d,
                Err(e) => {
                    skip(
                        name,
                        Error::integrity(format!("key {name} is not valid: {e}")),
                    );
                    continue;
                }
            };
            let material = match crypto::unwrap_key(&data, secret) {
                Ok(m) => m,
                // Not age data any more, or its content is not key material.
                Err(e) if matches!(e.kind(), Kind::Integrity | Kind::WrongKey) => {
                    skip(name, e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(material) = material {
                if material.repo_id != config.id {
                    return Err(Error::integrity(format!(
                        "key {name} belongs to another repository ({})",
                        material.repo_id.short()
                    )));
                }
                let id = Id::parse(name).unwrap_or_default();
                return Ok((MasterKey::from_material(&material)?, id));
            }
        }
        let what = match secret {
            Secret::Password(_) => "password",
            Secret::Identities(_) => "identity",
        };
        let skipped = if damaged.is_empty() {
            String::new()
        } else {
            format!(
                " ({} damaged key file(s) skipped: {})",
                damaged.len(),
                damaged.join(", ")
            )
        };
        Err(Error::new(
            Kind::WrongKey,
            format!(
                "no key of the repository at {} opens with the given {what}{skipped}",
                backend.location()
            ),
        )
        .with_hint(
            "check --password-file / CAIRN_PASSWORD / --identity; `cairn key list` shows the keys",
        ))
    }

    /// Seal a value and store it under the hash of its stored bytes.
    pub fn write_sealed<T: Serialize>(&self, kind: FileKind, value: &T) -> Result<Id> {
        let bytes = self.key.seal(value)?;
        let id = Id::of_bytes(&bytes);
        self.backend
            .write(&FileRef::new(kind, id.to_hex()), &bytes)?;
        Ok(id)
    }

    /// Store an index file listing `packs` (written, and their packs, before
    /// any snapshot that needs them) and add it to the local cache. Returns
    /// its id and its size in bytes.
    pub fn write_index(&self, packs: Vec<crate::repo::PackEntry>) -> Result<(Id, u64)> {
        let idx = crate::repo::IndexFile {
            version: crate::repo::FORMAT_VERSION,
            packs,
        };
        let bytes = self.key.seal(&idx)?;
        let id = Id::of_bytes(&bytes);
        self.backend
            .write(&FileRef::new(FileKind::Index, id.to_hex()), &bytes)?;
        self.cache.add(&id.to_hex(), &idx)?;
        Ok((id, bytes.len() as u64))
    }

    /// Read a sealed file, check its name against its content, and open it.
    pub fn read_sealed<T: DeserializeOwned>(&self, kind: FileKind, id: &Id) -> Result<T> {
        let f = FileRef::new(kind, id.to_hex());
        let bytes = self.backend.read(&f)?;
        if Id::of_bytes(&bytes) != *id {
            return Err(Error::integrity(format!(
                "{f} is damaged: its content does not match its name"
            )));
        }
        self.key.unseal(&bytes, &f)
    }

    /// Record the outcome of a restore test of a snapshot.
    pub fn record_proof(&self, proof: &crate::repo::Proof) -> Result<Id> {
        self.write_sealed(FileKind::Proof, proof)
    }

    /// The newest proof of each snapshot that has one. Unreadable proof
    /// files are skipped with a warning.
    pub fn proofs(&self) -> Result<std::collections::HashMap<Id, crate::repo::Proof>> {
        let mut out: std::collections::HashMap<Id, crate::repo::Proof> =
            std::collections::HashMap::new();
        for (name, _) in self.backend.list(FileKind::Proof)? {
            let Some(id) = Id::parse(&name) else { continue };
            match self.read_sealed::<crate::repo::Proof>(FileKind::Proof, &id) {
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

    /// All readable snapshots, oldest first. A damaged snapshot file is
    /// skipped with a warning (`check` reports it), so one bad file does not
    /// hide every other restore point.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        Ok(self.snapshots_and_damage()?.0)
    }

    /// Readable snapshots (oldest first) and the ids of unreadable ones with why.
    pub fn snapshots_and_damage(&self) -> Result<SnapshotList> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for (name, _) in self.backend.list(FileKind::Snapshot)? {
            let Some(id) = Id::parse(&name) else { continue };
            match self.read_sealed::<Snapshot>(FileKind::Snapshot, &id) {
                Ok(s) => out.push((id, s)),
                Err(e) if e.kind() == Kind::Integrity => {
                    tracing::warn!("skipping snapshot {}: {e}; run `cairn check`", id.short());
                    bad.push((id, e));
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, bad))
    }

    /// Resolve `latest`, a full id or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
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
            0 => Err(Error::failure(format!("no snapshot matches {spec:?}"))
                .with_hint("`cairn snapshots` lists them")),
            n => Err(Error::usage(format!("{n} snapshots match {spec:?}"))
                .with_hint("give more digits of the id")),
        }
    }

    /// Read, decrypt and decompress one frame (cached: neighbouring chunks share frames).
    pub fn read_frame(&self, loc: &Location) -> Result<Arc<Vec<u8>>> {
        if let Some(f) = self
            .frames
            .lock()
            .ok()
            .and_then(|mut c| c.get(loc.frame_key()))
        {
            return Ok(f);
        }
        let frame = Arc::new(self.decode_frame(loc)?);
        if let Ok(mut c) = self.frames.lock() {
            c.put(loc.frame_key(), frame.clone());
        }
        Ok(frame)
    }

    /// Keep a verified pack of a remote repository on local disk for this
    /// process (no-op for local repositories).
    pub fn spool_pack(&self, id: Id, bytes: &[u8]) -> Result<()> {
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

    /// Forget the spooled packs and delete their files: a long-lived
    /// repository (the daemon's) calls this after each restore.
    pub fn drop_spool(&self) {
        if let Ok(mut guard) = self.spool.lock() {
            *guard = None;
        }
    }

    /// A whole pack's bytes into `buf`: from the spool when a pre-check
    /// downloaded it, else from the backend. Not checked against its name here.
    pub fn read_pack_into(&self, id: &Id, buf: &mut Vec<u8>) -> Result<()> {
        let f = FileRef::new(FileKind::Pack, id.to_hex());
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
        id: &Id,
        piece: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let f = FileRef::new(FileKind::Pack, id.to_hex());
        match self.spooled_path(id) {
            Some(path) => {
                let mut buf = Vec::new();
                crate::backend::read_whole_of(&path, &mut buf)
                    .map_err(|e| Error::io(format!("reading spooled {f}"), e))?;
                piece(&buf)
            }
            None => self.backend.read_pieces(&f, piece),
        }
    }

    /// Where pack `id` lies in the spool, when a pre-check downloaded it.
    fn spooled_path(&self, id: &Id) -> Option<std::path::PathBuf> {
        let guard = self.spool.lock().ok()?;
        let sp = guard.as_ref()?;
        sp.packs
            .contains(id)
            .then(|| sp.dir.path().join(id.to_hex()))
    }

    /// A frame's ciphertext into `buf`: from the spool, else the backend
    /// (around the page cache when `uncached`, see
    /// [`crate::backend::Backend::read_range_uncached_into`]).
    fn frame_ciphertext(&self, loc: &Location, buf: &mut Vec<u8>, uncached: bool) -> Result<()> {
        self.read_pack_range(&loc.pack, loc.frame_offset, loc.frame_length, buf, uncached)
    }

    /// `length` bytes at `offset` of pack `pack` into `buf`: from the spool,
    /// else the backend (around the page cache when `uncached`).
    fn read_pack_range(
        &self,
        pack: &Id,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
        uncached: bool,
    ) -> Result<()> {
        let f = FileRef::new(FileKind::Pack, pack.to_hex());
        match self.spooled_path(pack) {
            Some(path) => crate::backend::read_range_of(&path, offset, length, buf)
                .map_err(|e| Error::io(format!("reading spooled {f}"), e)),
            None if uncached => self
                .backend
                .read_range_uncached_into(&f, offset, length, buf),
            None => self.backend.read_range_into(&f, offset, length, buf),
        }
    }

    /// Every distinct frame of `locs`, decoded. Frames that lie close
    /// together in one pack are fetched with one ranged read, and the reads
    /// run concurrently: on object storage each read is a round trip, and a
    /// node list of 13,000 files spans a score of frames, which read one by
    /// one cost 17 round trips (0.8 s against s3s-fs) before a restore could
    /// start.
    fn decode_frames(&self, locs: &[Location]) -> Result<HashMap<FrameKey, Vec<u8>>> {
        /// Bytes between two frames read rather than spent on another request.
        const MAX_GAP: u64 = 1 << 20;
        /// The longest single read.
        const MAX_SPAN: u64 = 32 << 20;
        let mut frames: Vec<&Location> = locs.iter().collect();
        frames.sort_by_key(|l| l.frame_key());
        frames.dedup_by_key(|l| l.frame_key());
        let mut spans: Vec<Vec<&Location>> = Vec::new();
        for l in frames {
            if let Some(span) = spans.last_mut() {
                let (first, prev) = (span[0], span[span.len() - 1]);
                let end = prev.frame_offset + u64::from(prev.frame_length);
                if prev.pack == l.pack
                    && l.frame_offset >= end
                    && l.frame_offset - end <= MAX_GAP
                    && l.frame_offset + u64::from(l.frame_length) - first.frame_offset <= MAX_SPAN
                {
                    span.push(l);
                    continue;
                }
            }
            spans.push(vec![l]);
        }
        let readers = if self.backend.is_local() { 1 } else { 8 };
        let next = AtomicUsize::new(0);
        let decoded = Mutex::new(HashMap::new());
        let read_spans = || -> Result<()> {
            let mut buf = Vec::new();
            while let Some(span) = spans.get(next.fetch_add(1, Ordering::Relaxed)) {
                let (first, last) = (span[0], span[span.len() - 1]);
                let start = first.frame_offset;
                let length = last.frame_offset + u64::from(last.frame_length) - start;
                self.read_pack_range(&first.pack, start, length as u32, &mut buf, false)?;
                let file = FileRef::new(FileKind::Pack, first.pack.to_hex());
                for l in span {
                    let at = (l.frame_offset - start) as usize;
                    let ct = buf.get(at..at + l.frame_length as usize).ok_or_else(|| {
                        Error::integrity(format!(
                            "{} lies beyond the end of the file",
                            frame_name(&file, l.frame_offset)
                        ))
                    })?;
                    let frame = self.decode_located(ct, l)?;
                    decoded
                        .lock()
                        .map_err(|_| Error::failure("frame map lock poisoned"))?
                        .insert(l.frame_key(), frame);
                }
            }
            Ok(())
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..readers.min(spans.len()))
                .map(|_| s.spawn(read_spans))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| Error::failure("a frame reader panicked"))?
            })
        })?;
        decoded
            .into_inner()
            .map_err(|_| Error::failure("frame map lock poisoned"))
    }

    /// Decode a frame without caching.
    pub fn decode_frame(&self, loc: &Location) -> Result<Vec<u8>> {
        let mut ct = Vec::new();
        self.frame_ciphertext(loc, &mut ct, false)?;
        self.decode_located(&ct, loc)
    }

    /// Decrypt and decompress `ct`, the ciphertext of the frame at `loc`
    /// (a delta frame with its bases).
    pub fn decode_located(&self, ct: &[u8], loc: &Location) -> Result<Vec<u8>> {
        let mut d = FrameDecoder::new()?;
        d.decode_at(self, ct, loc)?;
        Ok(d.frame)
    }

    /// Decrypt and decompress `ct`, the ciphertext of frame `fr` of pack
    /// `file` as a pack header or index file lists it (a delta frame with
    /// its bases, from the index).
    pub fn decode_listed(&self, ct: &[u8], fr: &FrameEntry, file: &FileRef) -> Result<Vec<u8>> {
        let prefix = self.bases_plaintext(&fr.bases()).map_err(|e| {
            e.context(format!(
                "the bases of the delta frame at {} of {file}",
                fr.offset
            ))
        })?;
        decode_frame_bytes(
            &self.key,
            ct,
            fr.compression,
            fr.raw_length,
            &prefix,
            file,
            fr.offset,
        )
    }

    /// What the frame at `loc` was compressed against: nothing, or for a
    /// `zstd-delta` frame its bases' plaintexts (see [`Self::bases_plaintext`]).
    fn delta_prefix(&self, loc: &Location) -> Result<Vec<u8>> {
        if loc.compression != Compression::ZstdDelta {
            return Ok(Vec::new());
        }
        let reader = self.cache.reader()?;
        let bases = reader.frame_bases(loc)?;
        self.bases_in(&reader, &bases).map_err(|e| {
            e.context(format!(
                "the bases of the delta frame at {} of pack {}",
                loc.frame_offset,
                loc.pack.short()
            ))
        })
    }

    /// The plaintexts of `bases`, concatenated, each checked against its id.
    /// A base must lie in a frame that is not itself a delta (chains are one
    /// deep), so this never recurses further.
    pub fn bases_plaintext(&self, bases: &[Id]) -> Result<Vec<u8>> {
        if bases.is_empty() {
            return Ok(Vec::new());
        }
        self.bases_in(&self.cache.reader()?, bases)
    }

    /// [`bases_plaintext`](Self::bases_plaintext), located with `reader`.
    fn bases_in(&self, reader: &crate::index::IndexReader, bases: &[Id]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for b in bases {
            let loc = reader.get(b)?.ok_or_else(|| {
                Error::integrity(format!("base chunk {} is not in the index", b.short()))
                    .with_hint("run `cairn check --read-data` to see what is damaged")
            })?;
            if loc.compression == Compression::ZstdDelta {
                return Err(Error::integrity(format!(
                    "base chunk {} is itself stored as a delta",
                    b.short()
                )));
            }
            let frame = self.read_frame(&loc)?;
            out.extend_from_slice(self.checked_chunk(b, &loc, &frame)?);
        }
        Ok(out)
    }

    /// A chunk's plaintext, checked against its id.
    pub fn read_chunk(&self, id: &Id, loc: &Location) -> Result<Vec<u8>> {
        let frame = self.read_frame(loc)?;
        Ok(self.checked_chunk(id, loc, &frame)?.to_vec())
    }

    /// Chunk `id` cut from its decoded `frame`, checked against its id.
    fn checked_chunk<'f>(&self, id: &Id, loc: &Location, frame: &'f [u8]) -> Result<&'f [u8]> {
        let data = chunk_slice(frame, loc).ok_or_else(|| {
            Error::integrity(format!(
                "chunk {} lies outside its frame in pack {}",
                id.short(),
                loc.pack.short()
            ))
        })?;
        if self.key.chunk_id(data) != *id {
            return Err(Error::integrity(format!(
                "chunk {} in pack {} does not match its id",
                id.short(),
                loc.pack.short()
            )));
        }
        Ok(data)
    }

    /// Concatenate the chunks of a stream (a node list: held in memory
    /// whole), each checked against its id.
    pub fn read_stream(&self, ids: &[Id]) -> Result<Vec<u8>> {
        let reader = self.cache.reader()?;
        let mut locs = Vec::with_capacity(ids.len());
        for id in ids {
            locs.push(reader.get(id)?.ok_or_else(|| {
                Error::integrity(format!("chunk {} is not in the index", id.short()))
                    .with_hint("run `cairn check` to see what is damaged")
            })?);
        }
        let frames = self.decode_frames(&locs)?;
        let mut out = Vec::new();
        for (id, loc) in ids.iter().zip(&locs) {
            // decode_frames decoded every frame of `locs` or failed.
            let frame = frames.get(&loc.frame_key()).map_or(&[][..], Vec::as_slice);
            out.extend_from_slice(self.checked_chunk(id, loc, frame)?);
        }
        Ok(out)
    }

    /// Write a file node's content to `out`, chunk by chunk (each verified).
    pub fn copy_file(&self, node: &Node, out: &mut dyn std::io::Write) -> Result<()> {
        self.open_file(node)?.copy_to(&node.path, u64::MAX, out)
    }

    /// [`copy_file`](Self::copy_file) leaving out the bytes `skip` of the
    /// file; chunks that lie wholly in that range are not read at all.
    pub fn copy_file_except(
        &self,
        node: &Node,
        skip: std::ops::Range<u64>,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let mut r = self.open_file(node)?;
        r.copy_to(&node.path, skip.start, out)?;
        r.skip(skip.end.saturating_sub(skip.start))
            .map_err(|e| e.context(format!("reading {}", node.path)))?;
        r.copy_to(&node.path, u64::MAX, out)
    }

    /// A reader over a file node's content (chunks read and verified as it goes).
    pub fn open_file<'a>(&'a self, node: &Node) -> Result<FileReader<'a>> {
        self.file_reader(node, Locations::Index(Box::new(self.cache.reader()?)))
    }

    /// [`open_file`](Self::open_file) taking chunk locations from `located`
    /// (every chunk of the file must be in it) rather than from the index: a
    /// restore that verified its packs first already holds them, and a lookup
    /// per chunk in the index cache costs a tenth of a large restore's CPU.
    pub fn open_file_located<'a>(
        &'a self,
        node: &Node,
        located: Arc<HashMap<Id, Location>>,
    ) -> Result<FileReader<'a>> {
        self.file_reader(node, Locations::Known(located))
    }

    /// [`open_file`](Self::open_file) taking each chunk's location from
    /// `lookup`, as the reader reaches it: a backup that reads back what it
    /// is storing finds chunks in packs the index does not list yet.
    pub fn open_file_with<'a>(&'a self, node: &Node, lookup: Lookup<'a>) -> Result<FileReader<'a>> {
        self.file_reader(node, Locations::Lookup(lookup))
    }

    fn file_reader<'a>(&'a self, node: &Node, locations: Locations<'a>) -> Result<FileReader<'a>> {
        Ok(FileReader {
            repo: self,
            locations,
            check_ids: true,
            ids: node.content.clone(),
            next: 0,
            decoder: FrameDecoder::new()?,
            pos: 0,
            end: 0,
        })
    }

    /// Call `f` with each chunk of `ids` (its number and plaintext) in
    /// order, NOT checked against its id: only for guesses that are
    /// checked later (the bases of delta compression, see
    /// [`crate::archiver::Packer::set_base_stream`]).
    pub fn for_each_chunk_unchecked(
        &self,
        ids: &[Id],
        mut f: impl FnMut(usize, &[u8]),
    ) -> Result<()> {
        let node = Node::stream("", 0, ids.to_vec());
        let mut r = self.open_file(&node)?;
        r.check_ids = false;
        let mut i = 0;
        while r.advance()? {
            f(i, r.current());
            i += 1;
        }
        Ok(())
    }

    /// The node list of a source.
    pub fn read_tree(&self, source: &SourceRecord) -> Result<Vec<Node>> {
        let bytes = self.read_stream(&source.tree)?;
        parse_tree(&bytes).map_err(|e| e.context(format!("node list of source {}", source.name)))
    }
}

pub fn parse_tree(bytes: &[u8]) -> Result<Vec<Node>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).map_err(|e| Error::integrity(format!("invalid node: {e}")))
        })
        .collect()
}

pub fn chunk_slice<'a>(frame: &'a [u8], loc: &Location) -> Option<&'a [u8]> {
    let start = loc.offset as usize;
    frame.get(start..start.checked_add(loc.length as usize)?)
}

/// Decrypt and decompress a frame's ciphertext; `prefix` is what a
/// `zstd-delta` frame was compressed against ([`Repository::delta_prefix`]).
pub fn decode_frame_bytes(
    key: &MasterKey,
    ct: &[u8],
    compression: Compression,
    raw_length: u32,
    prefix: &[u8],
    file: &FileRef,
    offset: u64,
) -> Result<Vec<u8>> {
    let mut d = FrameDecoder::new()?;
    d.decode(
        key,
        ct,
        compression,
        raw_length,
        prefix,
        &frame_name(file, offset),
    )?;
    Ok(d.frame)
}

fn frame_name(file: &FileRef, offset: u64) -> String {
    format!("frame at {offset} of {file}")
}

/// Decodes frames one after another into buffers it keeps, so a long
/// restore does not allocate (and fault in) fresh memory for every frame.
pub struct FrameDecoder {
    /// Read frames around the page cache.
    uncached: bool,
    ciphertext: Vec<u8>,
    compressed: Vec<u8>,
    frame: Vec<u8>,
    key: Option<FrameKey>,
    zstd: zstd::bulk::Decompressor<'static>,
}

impl FrameDecoder {
    pub fn new() -> Result<FrameDecoder> {
        Ok(FrameDecoder {
            uncached: false,
            ciphertext: Vec::new(),
            compressed: Vec::new(),
            frame: Vec::new(),
            key: None,
            zstd: zstd::bulk::Decompressor::new()
                .map_err(|e| Error::failure(format!("creating a zstd decompressor: {e}")))?,
        })
    }

    /// The plaintext of the frame at `loc`; decoded unless it is the frame
    /// decoded last.
    pub fn frame(&mut self, repo: &Repository, loc: &Location) -> Result<&[u8]> {
        if self.key != Some(loc.frame_key()) {
            self.key = None;
            let mut ct = std::mem::take(&mut self.ciphertext);
            let decoded = repo
                .frame_ciphertext(loc, &mut ct, self.uncached)
                .and_then(|_| self.decode_at(repo, &ct, loc));
            self.ciphertext = ct;
            decoded?;
            self.key = Some(loc.frame_key());
        }
        Ok(&self.frame)
    }

    /// The plaintext of the frame at `loc`, whose ciphertext is `ct`.
    pub fn frame_of(&mut self, repo: &Repository, loc: &Location, ct: &[u8]) -> Result<&[u8]> {
        self.key = None;
        self.decode_at(repo, ct, loc)?;
        self.key = Some(loc.frame_key());
        Ok(&self.frame)
    }

    /// Decode `ct`, the ciphertext of the frame at `loc`, into `self.frame`
    /// (a delta frame with its bases).
    fn decode_at(&mut self, repo: &Repository, ct: &[u8], loc: &Location) -> Result<()> {
        let file = FileRef::new(FileKind::Pack, loc.pack.to_hex());
        let what = frame_name(&file, loc.frame_offset);
        let prefix = repo.delta_prefix(loc)?;
        self.decode(
            &repo.key,
            ct,
            loc.compression,
            loc.raw_length,
            &prefix,
            &what,
        )
    }

    /// Decrypt and decompress `ct` into `self.frame`.
    fn decode(
        &mut self,
        key: &MasterKey,
        ct: &[u8],
        compression: Compression,
        raw_length: u32,
        prefix: &[u8],
        what: &str,
    ) -> Result<()> {
        key.decrypt_into(ct, &what, &mut self.compressed)?;
        match compression {
            Compression::None => std::mem::swap(&mut self.compressed, &mut self.frame),
            Compression::Zstd => {
                self.frame.clear();
                self.frame.reserve(raw_length as usize);
                self.zstd
                    .decompress_to_buffer(&self.compressed[..], &mut self.frame)
                    .map_err(|e| Error::integrity(format!("{what} does not decompress: {e}")))?;
            }
            Compression::ZstdDelta => {
                self.frame.clear();
                self.frame.reserve(raw_length as usize);
                decompress_with_prefix(&self.compressed, prefix, &mut self.frame)
                    .map_err(|e| Error::integrity(format!("{what} does not decompress: {e}")))?;
            }
        }
        if self.frame.len() != raw_length as usize {
            return Err(Error::integrity(format!(
                "{what} has {} bytes, the index says {raw_length}",
                self.frame.len()
            )));
        }
        Ok(())
    }
}

/// zstd-decompress `compressed`, made by [`compress_with_prefix`] against
/// the same `prefix`, into `out` (whose capacity bounds the output).
pub fn decompress_with_prefix(
    compressed: &[u8],
    prefix: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let mut dctx = zstd::zstd_safe::DCtx::create();
    dctx.ref_prefix(prefix)
        .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())?;
    dctx.decompress(out, compressed)
        .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())?;
    Ok(())
}

/// zstd-compress `data` at `level` with `prefix` as raw content it may
/// refer back to (zstd's `--patch-from`): on pgbench's scattered updates
/// each row that left its place cost about 20 bytes of delta. The window covers the
/// prefix and the data, so every byte of the prefix can be referred to.
pub fn compress_with_prefix(
    data: &[u8],
    prefix: &[u8],
    level: i32,
) -> std::result::Result<Vec<u8>, String> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let err = |c| zstd::zstd_safe::get_error_name(c).to_string();
    let mut cctx = CCtx::create();
    let span = (prefix.len() + data.len()).max(1 << 10);
    let window_log = (usize::BITS - (span - 1).leading_zeros()).clamp(10, 27);
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log))
        .map_err(err)?;
    // Long-distance matching finds the long runs shared with the prefix
    // that the regular match finder, which keeps only the nearest earlier
    // occurrence of a short hash, misses in self-similar data (rows that
    // differ only in their numbers): on pgbench rows it made the deltas
    // several times smaller (`changed_chunks_are_stored_as_deltas_one_deep`).
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(err)?;
    cctx.ref_prefix(prefix).map_err(err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(err)?;
    Ok(out)
}

type FrameKey = (Id, u64);

/// A few recently decoded frames.
#[derive(Default)]
struct FrameCache {
    entries: Vec<(FrameKey, Arc<Vec<u8>>)>,
}

impl FrameCache {
    const CAPACITY: usize = 8;
    fn get(&mut self, key: FrameKey) -> Option<Arc<Vec<u8>>> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        let e = self.entries.remove(i);
        let v = e.1.clone();
        self.entries.push(e);
        Some(v)
    }
    fn put(&mut self, key: FrameKey, v: Arc<Vec<u8>>) {
        if self.entries.len() >= Self::CAPACITY {
            self.entries.remove(0);
        }
        self.entries.push((key, v));
    }
}

/// All key files with their ids.
pub fn local_key_files(backend: &dyn Backend) -> Result<Vec<(Id, KeyFile)>> {
    let mut out = Vec::new();
    for (name, _) in backend.list(FileKind::Key)? {
        if let Some(id) = Id::parse(&name) {
            match read_key_file(backend, &name) {
                Ok(kf) => out.push((id, kf)),
                Err(e) if e.kind() == Kind::Integrity => {
                    tracing::warn!("skipping key {name}: it is damaged ({e})")
                }
                Err(e) => return Err(e),
            }
        }
    }
    out.sort_by_key(|(_, k)| k.created);
    Ok(out)
}

/// Where a chunk is, for [`Repository::open_file_with`].
pub type Lookup<'a> = &'a dyn Fn(&Id) -> Result<Location>;

/// Sequential reader over a stored file; see [`Repository::open_file`].
///
/// It keeps the frame of its current chunk itself (a file's chunks mostly
/// follow each other in one frame), so readers interleaved with others — a
/// Kafka restore reads many partitions at once — never decode a frame twice
/// because the shared cache evicted it, and bytes are copied once, from the
/// frame to the caller.
pub struct FileReader<'a> {
    repo: &'a Repository,
    locations: Locations<'a>,
    /// Check every chunk against its id (see [`FileReader::digest_checked_by_caller`]).
    check_ids: bool,
    ids: Vec<Id>,
    next: usize,
    decoder: FrameDecoder,
    /// The unread part of the current chunk within the decoder's frame.
    pos: usize,
    end: usize,
}

/// Where a [`FileReader`] finds its chunks.
enum Locations<'a> {
    Index(Box<crate::index::IndexReader>),
    /// Looked up already (by [`crate::restorer::verify_before_restore`]).
    Known(Arc<HashMap<Id, Location>>),
    /// Looked up by the caller, chunk by chunk.
    Lookup(Lookup<'a>),
}

impl FileReader<'_> {
    /// Skip checking each chunk against its id, for a caller that compares
    /// a digest of the whole content with one taken when it was stored (the
    /// Kafka check after a backup): that comparison catches any byte the
    /// chunk check would, and hashing every byte twice halves its speed.
    /// The safety rests on that digest, which the caller must hold from
    /// before the data was stored (spec/repository.md §3, "Reading").
    pub fn digest_checked_by_caller(mut self) -> Self {
        self.check_ids = false;
        self
    }

    /// Read frames around the page cache: for packs just written around
    /// it and read once (the Kafka check after a backup).
    pub fn uncached(mut self) -> Self {
        self.decoder.uncached = true;
        self
    }

    /// Where chunk `id` is stored.
    fn locate(&self, id: &Id) -> Result<Location> {
        match &self.locations {
            Locations::Known(m) => m.get(id).cloned().ok_or_else(|| {
                Error::integrity(format!(
                    "chunk {} is not among the chunks located before the restore",
                    id.short()
                ))
            }),
            Locations::Lookup(f) => f(id),
            Locations::Index(index) => index.get(id)?.ok_or_else(|| {
                Error::integrity(format!("chunk {} is not in the index", id.short()))
            }),
        }
    }

    /// Move `n` bytes on without returning them: chunks that lie wholly
    /// within them are neither read nor decoded. An error when the file
    /// ends first.
    pub fn skip(&mut self, mut n: u64) -> Result<()> {
        let here = (self.end - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
        self.pos += here;
        n -= here as u64;
        while n > 0 {
            let id = *self.ids.get(self.next).ok_or_else(|| {
                Error::integrity("the file ends before the bytes to skip".to_string())
            })?;
            let length = u64::from(self.locate(&id)?.length);
            if length <= n {
                self.next += 1;
                n -= length;
            } else {
                self.advance()?;
                // n < length: within the chunk just made current.
                self.pos += n as usize;
                n = 0;
            }
        }
        Ok(())
    }

    /// Write up to `limit` bytes (all that is left with `u64::MAX`) of file
    /// `path` to `out`, straight from the decoded frames.
    pub fn copy_to(
        &mut self,
        path: &str,
        mut limit: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        while limit > 0 {
            if self.pos == self.end
                && !self
                    .advance()
                    .map_err(|e| e.context(format!("reading {path}")))?
            {
                break;
            }
            let cur = self.current();
            let n = cur.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
            out.write_all(&cur[..n])
                .map_err(|e| Error::io(format!("writing {path}"), e))?;
            self.pos += n;
            limit -= n as u64;
        }
        Ok(())
    }

    /// Make the next chunk current; `false` at the end of the file.
    fn advance(&mut self) -> Result<bool> {
        let Some(id) = self.ids.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        let loc = self.locate(id)?;
        let frame = self.decoder.frame(self.repo, &loc)?;
        let data = chunk_slice(frame, &loc).ok_or_else(|| {
            Error::integrity(format!(
                "chunk {} lies outside its frame in pack {}",
                id.short(),
                loc.pack.short()
            ))
        })?;
        if self.check_ids && self.repo.key.chunk_id(data) != *id {
            return Err(Error::integrity(format!(
                "chunk {} in pack {} does not match its id",
                id.short(),
                loc.pack.short()
            )));
        }
        self.pos = loc.offset as usize;
        self.end = self.pos + data.len();
        Ok(true)
    }

    /// The unread part of the current chunk.
    fn current(&self) -> &[u8] {
        &self.decoder.frame[self.pos..self.end]
    }
}

impl std::io::Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let cur = std::io::BufRead::fill_buf(self)?;
        let n = out.len().min(cur.len());
        out[..n].copy_from_slice(&cur[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// The buffer is the current chunk, in its decoded frame.
impl std::io::BufRead for FileReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos == self.end {
            if !self.advance().map_err(std::io::Error::other)? {
                break;
            }
        }
        Ok(self.current())
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }
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
