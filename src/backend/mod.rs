//! Where repository files are stored.
//!
//! Every storage (a local directory now, object storage later) implements one
//! small [`Backend`] trait of whole-file operations; everything above it —
//! encryption, packing, locking — is shared. Files are immutable once
//! written, so a backend needs no partial updates, only atomic whole writes.

#[cfg(feature = "testing")]
pub mod faulty;
mod local;
mod s3;

pub use local::LocalBackend;
pub(crate) use local::{read_pieces_of, read_range_of, read_whole_of};
pub use s3::{S3Backend, MULTIPART_THRESHOLD};

use crate::error::{Error, Kind, Result};
use crate::repo::{FileId, FileKind, Id};

/// One stored file: its kind and name (64 hex digits, or `config`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileRef {
    pub kind: FileKind,
    pub name: String,
}

impl FileRef {
    pub fn new(kind: FileKind, name: impl Into<String>) -> Self {
        FileRef {
            kind,
            name: name.into(),
        }
    }
    /// The file a typed id names: the repository boundary between typed
    /// ids and the backend's file names.
    pub fn of<I: FileId>(id: I) -> Self {
        FileRef::new(I::KIND, id.raw().to_hex())
    }
    pub fn config() -> Self {
        FileRef::new(FileKind::Config, "config")
    }
}

impl std::fmt::Display for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            FileKind::Config => f.write_str("config"),
            k => write!(f, "{} {}", k.name(), self.name),
        }
    }
}

pub trait Backend: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;
    /// Create the repository's directories; fails if a config already exists.
    fn create(&self) -> Result<()>;
    /// Write a whole file atomically: readers see all of it or nothing.
    fn write(&self, file: &FileRef, data: &[u8]) -> Result<()>;
    /// [`write`](Self::write), but only if no file of that name exists:
    /// `Ok(false)` when one does (it is left as it is). The check and the
    /// write are one step, so of writers racing for one name exactly one
    /// gets `Ok(true)`: the primitive behind claims on a WAL name
    /// (spec/postgres.md "One content per WAL name").
    fn write_new(&self, file: &FileRef, data: &[u8]) -> Result<bool>;
    /// A whole file into `buf` (replacing its content), so callers reading
    /// many packs can reuse one buffer.
    fn read_into(&self, file: &FileRef, buf: &mut Vec<u8>) -> Result<()>;
    fn read(&self, file: &FileRef) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(file, &mut buf)?;
        Ok(buf)
    }
    /// A whole file, handed to `piece` in order as it arrives, so that a
    /// caller can work on the first bytes of a remote object before the last
    /// have come. An error from `piece` stops the read and is returned. By
    /// default the file is read whole and handed over at once.
    fn read_pieces(
        &self,
        file: &FileRef,
        piece: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        piece(&self.read(file)?)
    }
    /// `length` bytes at `offset` into `buf` (replacing its content), so
    /// callers can reuse one buffer; fewer bytes than asked is an error.
    fn read_range_into(
        &self,
        file: &FileRef,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
    ) -> Result<()>;
    /// [`read_range_into`](Self::read_range_into) for data not worth keeping
    /// in the page cache: the Kafka check reads back packs a backup has just
    /// written around it. Local files are read with O_DIRECT where the file
    /// system allows; elsewhere this is a plain ranged read.
    fn read_range_uncached_into(
        &self,
        file: &FileRef,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.read_range_into(file, offset, length, buf)
    }
    fn read_range(&self, file: &FileRef, offset: u64, length: u32) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_range_into(file, offset, length, &mut buf)?;
        Ok(buf)
    }
    /// BLAKE3 of a file's content (a pack's name, when it is intact).
    fn content_id(&self, file: &FileRef) -> Result<Id> {
        Ok(Id::of_bytes(&self.read(file)?))
    }
    /// Names and sizes of all files of a kind.
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>>;
    /// [`list`](Self::list) of only the names starting with `prefix` (e.g.
    /// one WAL name's entries), sorted. A backend that can ask for those
    /// alone does, so that the cost of looking up one name does not grow
    /// with the archive: the local one stats only matching names, S3 starts
    /// its listing at the prefix.
    fn list_prefix(&self, kind: FileKind, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut v = self.list(kind)?;
        v.retain(|(n, _)| n.starts_with(prefix));
        Ok(v)
    }
    fn remove(&self, file: &FileRef) -> Result<()>;
    fn exists(&self, file: &FileRef) -> Result<bool>;
    /// Whether reads are local-disk cheap (no reason to keep copies).
    fn is_local(&self) -> bool {
        false
    }
    /// Remove leftovers of interrupted writes; only under an exclusive lock.
    fn remove_temporary(&self) -> Result<u64> {
        Ok(0)
    }
}

/// Open the backend for a repository location given on the command line.
pub fn open(location: &str) -> Result<Box<dyn Backend>> {
    if location.is_empty() {
        return Err(Error::usage("no repository given").with_hint(
            "pass -r/--repo PATH or set CAIRN_REPOSITORY (create one with `cairn init -r PATH`)",
        ));
    }
    let backend: Box<dyn Backend> = if location.starts_with("s3://") {
        Box::new(S3Backend::new(location)?)
    } else if let Some((scheme, _)) = location.split_once("://") {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "repository location {location:?}: the {scheme}:// scheme is not supported yet"
            ),
        )
        .with_hint("use a local directory path"));
    } else {
        Box::new(LocalBackend::new(location))
    };
    // Crash-point tests only: a build without the `testing` feature has no
    // such wrapper (spec/repository.md "Crash points").
    #[cfg(feature = "testing")]
    let backend = faulty::from_env(backend, location)?;
    Ok(backend)
}
