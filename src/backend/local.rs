use super::{Backend, FileRef};
use crate::error::{Error, Kind, Result, ResultExt};
use crate::repo::{FileKind, Id};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A repository in a local directory.
///
/// Writes go to `tmp/` first, are fsynced, then renamed into place and the
/// directory fsynced, so a crash never leaves a half-written file under its
/// final name. Leftovers in `tmp/` are removed by `prune`.
pub struct LocalBackend {
    root: PathBuf,
    /// Whether the repository is shared with its group: decided once, by
    /// the config's group-read bit, as restic does (README "One
    /// repository, two users").
    group: std::sync::OnceLock<bool>,
}

/// Permission bits of a new file in a repository shared with its group;
/// private repositories keep tempfile's 0600.
const GROUP_FILE_MODE: u32 = 0o640;

const DIRS: [FileKind; 7] = [
    FileKind::Key,
    FileKind::Pack,
    FileKind::Index,
    FileKind::Snapshot,
    FileKind::Lock,
    FileKind::Wal,
    FileKind::Proof,
];

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            group: std::sync::OnceLock::new(),
        }
    }

    /// Whether new files and directories are made for the group too.
    fn shared(&self) -> bool {
        use std::os::unix::fs::PermissionsExt;
        *self.group.get_or_init(|| {
            fs::metadata(self.root.join("config"))
                .is_ok_and(|m| m.permissions().mode() & 0o040 != 0)
        })
    }

    /// `create_dir_all`, then, in a shared repository, group read, write and
    /// search on the new directory (its set-group-ID bit, inherited from a
    /// parent that has it, is kept).
    fn make_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        // Directories inside the repository only: a repository that went
        // away (a disk not mounted, a directory moved) is not made again,
        // piecemeal, by the next write into it.
        if !self.root.is_dir() {
            return Err(Error::new(
                Kind::NoRepository,
                format!("no repository at {}", self.root.display()),
            )
            .with_hint("check that its file system is mounted and the path is right"));
        }
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        if self.shared() {
            let mode = fs::metadata(dir)
                .ctx(|| format!("reading {}", dir.display()))?
                .permissions()
                .mode();
            if mode & 0o070 != 0o070 {
                fs::set_permissions(dir, fs::Permissions::from_mode((mode | 0o070) & 0o7777))
                    .ctx(|| format!("giving the group access to {}", dir.display()))?;
            }
        }
        Ok(())
    }

    fn path(&self, file: &FileRef) -> PathBuf {
        match file.kind {
            FileKind::Config => self.root.join("config"),
            FileKind::Pack => {
                let prefix = file.name.get(..2).unwrap_or("00");
                self.root.join("data").join(prefix).join(&file.name)
            }
            k => self.root.join(k.dir()).join(&file.name),
        }
    }

    /// The first half of a write: `data` in a new, fsynced temporary file
    /// in `tmp/` (removed when the handle is dropped), not yet under its
    /// name. The crash-point tests (backend/faulty.rs) stop a process
    /// between this and the rename, as a crash there would.
    pub(crate) fn stage(&self, file: &FileRef, data: &[u8]) -> Result<tempfile::NamedTempFile> {
        let tmp_dir = self.root.join("tmp");
        self.make_dir(&tmp_dir)?;
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .ctx(|| format!("creating a temporary file in {}", tmp_dir.display()))?;
        if self.shared() {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(GROUP_FILE_MODE))
                .ctx(|| format!("giving the group read access to {}", tmp.path().display()))?;
        }
        fill_file(tmp.path(), tmp.as_file(), data)
            .ctx(|| format!("writing {file} to {}", tmp_dir.display()))?;
        Ok(tmp)
    }

    /// Write `file` through a fsynced temporary file moved into place; with
    /// `exclusive`, only if no file of that name exists (`Ok(false)` then).
    /// The exclusive move is tempfile's `persist_noclobber`:
    /// `renameat2(RENAME_NOREPLACE)`, or `link()` where that is missing;
    /// either fails with EEXIST when the name exists, atomically, so the
    /// name appears once and never changes content.
    fn write_file(&self, file: &FileRef, data: &[u8], exclusive: bool) -> Result<bool> {
        let path = self.path(file);
        let tmp = self.stage(file, data)?;
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        if !parent.exists() {
            // e.g. wal/ in a repository created before it existed
            self.make_dir(&parent)?;
        }
        if exclusive {
            match tmp.persist_noclobber(&path) {
                Ok(_) => {}
                // The temporary file is removed when the error is dropped.
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(Error::io(format!("writing {}", path.display()), e.error)),
            }
        } else {
            tmp.persist(&path)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e.error))?;
        }
        sync_dir(&parent)?;
        Ok(true)
    }

    /// Files of `kind` whose names start with `prefix`, stat'ed for their
    /// size only once the name matches.
    fn list_matching(&self, kind: FileKind, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let dirs: Vec<PathBuf> = match kind {
            FileKind::Config => return Ok(Vec::new()),
            FileKind::Pack => {
                let data = self.root.join("data");
                let mut v = Vec::new();
                for e in fs::read_dir(&data).ctx(|| format!("listing {}", data.display()))? {
                    let e = e.ctx(|| format!("listing {}", data.display()))?;
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        v.push(e.path());
                    }
                }
                v
            }
            k => vec![self.root.join(k.dir())],
        };
        for dir in dirs {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
            };
            for e in rd {
                let e = e.ctx(|| format!("listing {}", dir.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let valid = match kind {
                    FileKind::Wal => name.len() > 65 && !name.starts_with('.'),
                    _ => name.len() == 64,
                };
                if !valid || !name.starts_with(prefix) {
                    continue;
                }
                let size = e
                    .metadata()
                    .ctx(|| format!("stat {}", e.path().display()))?
                    .len();
                out.push((name, size));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The error for a failed ranged read of `file`.
    fn range_error(&self, file: &FileRef, offset: u64, length: u32, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::NotFound => self.not_found(file, e),
            _ => Error::io(
                format!(
                    "reading {length} bytes at {offset} of {}",
                    self.path(file).display()
                ),
                e,
            ),
        }
    }

    fn not_found(&self, file: &FileRef, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound && file.kind == FileKind::Config {
            return Error::new(
                Kind::NoRepository,
                format!("no repository at {}", self.root.display()),
            )
            .with_hint("check the path, or create a repository with `cairn init`");
        }
        Error::io(format!("reading {file} in {}", self.root.display()), e)
    }
}

/// Files at least this large (packs) are written around the page cache.
const DIRECT_MIN: usize = 1 << 20;
/// Alignment of O_DIRECT buffers, offsets and lengths: the largest logical
/// block size in use (4 KiB disks), which also satisfies 512-byte ones.
const DIRECT_ALIGN: usize = 4096;
/// Bytes copied into the aligned buffer and written per call.
const DIRECT_PIECE: usize = 4 << 20;

thread_local! {
    /// A reusable buffer for O_DIRECT writes, DIRECT_ALIGN bytes longer
    /// than a piece so that an aligned piece fits inside it. Each writing
    /// thread (the pack uploaders, a handful) keeps its 4 MiB for its life.
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Write `data` into the empty file `file` (at `path`) with O_DIRECT: the
/// 4 KiB-aligned bulk through a second, direct descriptor, the tail through
/// `file`. `Ok(false)` when the file system does not take direct writes
/// (EINVAL or EOPNOTSUPP when opening or on the first piece: some network
/// file systems, tmpfs before Linux 6.6): the caller then writes all of
/// `data` through `file`, whose position is still 0 (pieces are written at
/// explicit offsets), over whatever part of the first piece got written.
///
/// Why: a pack is fsynced as soon as it is written and is not read again
/// by the backup, so a copy in the page cache buys nothing, and filling it
/// costs: on a VM measured here, 50 packs of 16 MiB written buffered took
/// 0.6–2.0 s of system CPU after the page cache had been dropped, and
/// 0.03 s with O_DIRECT (0.35 s wall either way, fsync included) — a fifth
/// of all CPU in a 1 GB Kafka snapshot. See spec/repository.md "Writing packs".
fn write_direct(path: &Path, file: &fs::File, data: &[u8]) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let Some(direct) = open_direct(path, fs::OpenOptions::new().write(true))? else {
        return Ok(false);
    };
    let bulk = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let bulk_written =
        DIRECT_BUF.with(|buf| write_aligned(&direct, &data[..bulk], &mut buf.borrow_mut()))?;
    if !bulk_written {
        return Ok(false);
    }
    file.write_all_at(&data[bulk..], bulk as u64)?;
    Ok(true)
}

/// Write `bulk` (a multiple of DIRECT_ALIGN long) through the direct
/// descriptor, a piece at a time through the aligned part of `buf`;
/// `Ok(false)` when the first piece is refused.
fn write_aligned(direct: &fs::File, bulk: &[u8], buf: &mut Vec<u8>) -> std::io::Result<bool> {
    if buf.len() < DIRECT_PIECE + DIRECT_ALIGN {
        buf.resize(DIRECT_PIECE + DIRECT_ALIGN, 0);
    }
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let aligned = &mut buf[start..start + DIRECT_PIECE];
    for (i, piece) in bulk.chunks(DIRECT_PIECE).enumerate() {
        aligned[..piece.len()].copy_from_slice(piece);
        match write_piece(direct, &aligned[..piece.len()], (i * DIRECT_PIECE) as u64) {
            Ok(()) => {}
            Err(e) if i == 0 && is_unsupported(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Write `data` into the empty file `file` at `path` and fsync it: large
/// files around the page cache where the file system allows.
fn fill_file(path: &Path, mut file: &fs::File, data: &[u8]) -> std::io::Result<()> {
    if !(data.len() >= DIRECT_MIN && write_direct(path, file, data)?) {
        file.write_all(data)?;
    }
    file.sync_all()
}

/// One positioned write of an aligned piece.
fn write_piece(direct: &fs::File, piece: &[u8], at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    #[cfg(test)]
    if at == 0 && tests::REFUSE_FIRST_PIECE.with(|r| r.get()) {
        // As a file system that takes part of a piece, then refuses.
        direct.write_all_at(&piece[..DIRECT_ALIGN], 0)?;
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    direct.write_all_at(piece, at)
}

#[cfg(target_os = "linux")]
const O_DIRECT: Option<libc::c_int> = Some(libc::O_DIRECT);
/// Elsewhere (macOS has no O_DIRECT) packs are written through the cache.
#[cfg(not(target_os = "linux"))]
const O_DIRECT: Option<libc::c_int> = None;

/// `path` opened as `options` say, with O_DIRECT; `None` where there is no
/// O_DIRECT or the file system refuses it.
fn open_direct(path: &Path, options: &mut fs::OpenOptions) -> std::io::Result<Option<fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(o_direct) = O_DIRECT else {
        return Ok(None);
    };
    match options.custom_flags(o_direct).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if is_unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Errors by which a file system refuses O_DIRECT.
fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self) -> Result<()> {
        if self.root.join("config").exists() {
            return Err(Error::failure(format!(
                "a repository already exists at {}",
                self.root.display()
            ))
            .with_hint("use it as it is, or choose another path"));
        }
        if self.root.exists() {
            let mut entries =
                fs::read_dir(&self.root).ctx(|| format!("reading {}", self.root.display()))?;
            if entries.next().is_some() {
                return Err(Error::failure(format!(
                    "{} exists and is not empty",
                    self.root.display()
                ))
                .with_hint("create the repository in a new or empty directory"));
            }
        }
        for kind in DIRS {
            let dir = self.root.join(kind.dir());
            fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        for b in 0..=255u8 {
            let dir = self.root.join("data").join(format!("{b:02x}"));
            fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        Ok(())
    }

    fn write(&self, file: &FileRef, data: &[u8]) -> Result<()> {
        // The config is the one file that must never be replaced.
        let created = self.write_file(file, data, file.kind == FileKind::Config)?;
        if !created {
            return Err(Error::failure(format!(
                "a repository already exists at {}",
                self.root.display()
            ))
            .with_hint("use it as it is, or choose another path"));
        }
        Ok(())
    }

    fn write_new(&self, file: &FileRef, data: &[u8]) -> Result<bool> {
        self.write_file(file, data, true)
    }

    fn read_into(&self, file: &FileRef, buf: &mut Vec<u8>) -> Result<()> {
        read_whole_of(&self.path(file), buf).map_err(|e| self.not_found(file, e))
    }

    fn read_pieces(
        &self,
        file: &FileRef,
        piece: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        read_pieces_of(&self.path(file), piece, |e| self.not_found(file, e))
    }

    fn content_id(&self, file: &FileRef) -> Result<Id> {
        // Mapped rather than read: no copy of the file into fresh memory.
        // Safe to map: files are written once (temp file + rename), never
        // truncated in place, and a removed file stays mapped until unmapped.
        let mut h = blake3::Hasher::new();
        h.update_mmap(self.path(file))
            .map_err(|e| self.not_found(file, e))?;
        Ok(Id(*h.finalize().as_bytes()))
    }

    fn read_range_into(
        &self,
        file: &FileRef,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        read_range_of(&self.path(file), offset, length, buf)
            .map_err(|e| self.range_error(file, offset, length, e))
    }

    fn read_range_uncached_into(
        &self,
        file: &FileRef,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        match read_range_direct(&self.path(file), offset, length, buf) {
            Ok(true) => Ok(()),
            Ok(false) => self.read_range_into(file, offset, length, buf),
            Err(e) => Err(self.range_error(file, offset, length, e)),
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        self.list_matching(kind, "")
    }

    fn list_prefix(&self, kind: FileKind, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.list_matching(kind, prefix)
    }

    fn remove(&self, file: &FileRef) -> Result<()> {
        let path = self.path(file);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    fn exists(&self, file: &FileRef) -> Result<bool> {
        Ok(self.path(file).exists())
    }

    fn is_local(&self) -> bool {
        true
    }

    fn remove_temporary(&self) -> Result<u64> {
        let tmp = self.root.join("tmp");
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Read a whole local file into `buf` (replacing its content, reusing its
/// memory).
pub(crate) fn read_whole_of(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    fs::File::open(path)?.read_to_end(buf)?;
    Ok(())
}

/// How much of a file [`read_pieces_of`] reads at a time.
const READ_PIECE: usize = 1 << 20;

/// The file at `path` handed to `piece` in order, [`READ_PIECE`] bytes at a
/// time through one buffer: a restore reading packs on several threads
/// holds a piece per thread rather than a whole pack (16 MiB by default;
/// 41 MB of a 200,000-file restore's peak on 2 cores, issue 29). An error
/// from `piece` stops the read and is returned; `io_err` says what failed.
pub(crate) fn read_pieces_of(
    path: &Path,
    piece: &mut dyn FnMut(&[u8]) -> Result<()>,
    io_err: impl Fn(std::io::Error) -> Error,
) -> Result<()> {
    let mut f = fs::File::open(path).map_err(&io_err)?;
    let mut buf = vec![0u8; READ_PIECE];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => piece(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
}

thread_local! {
    /// A reusable buffer for O_DIRECT reads (a frame and a little more).
    static DIRECT_READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`read_range_of`] around the page cache: the aligned span around the
/// range is read with O_DIRECT into an aligned buffer and the range copied
/// out. `Ok(false)` when the file system does not take O_DIRECT (EINVAL or
/// EOPNOTSUPP on open or on the read): the caller then reads as usual.
///
/// Why: the same as for writing packs ([`write_direct`]): reading 1 GB of
/// packs just written by a Kafka backup through the cache cost ~5% of the
/// backup's CPU in copies and page allocation (`perf`: `filemap_read` and
/// readahead), for pages nothing reads again.
pub(crate) fn read_range_direct(
    path: &Path,
    offset: u64,
    length: u32,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let Some(direct) = open_direct(path, fs::OpenOptions::new().read(true))? else {
        return Ok(false);
    };
    let align = DIRECT_ALIGN as u64;
    let start = offset / align * align;
    let end = (offset + u64::from(length)).div_ceil(align) * align;
    let span = (end - start) as usize;
    let skip = (offset - start) as usize;
    DIRECT_READ_BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < span + DIRECT_ALIGN {
            b.resize(span + DIRECT_ALIGN, 0);
        }
        let at = b.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &mut b[at..at + span];
        // The file's end need not be aligned: the last read comes up short.
        let mut got = 0;
        while got < span {
            match direct.read_at(&mut aligned[got..], start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if got == 0 && is_unsupported(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if got < skip + length as usize {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.clear();
        buf.extend_from_slice(&aligned[skip..skip + length as usize]);
        Ok(true)
    })
}

/// Read `length` bytes at `offset` of a local file into `buf` (replacing
/// its content, reusing its memory); a short file is `UnexpectedEof`.
pub(crate) fn read_range_of(
    path: &Path,
    offset: u64,
    length: u32,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    buf.clear();
    buf.reserve(length as usize);
    if f.take(length as u64).read_to_end(buf)? != length as usize {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        pub(super) static REFUSE_FIRST_PIECE: Cell<bool> = const { Cell::new(false) };
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 4093) as u8).collect()
    }

    #[test]
    fn a_repository_that_went_away_is_not_made_again_by_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let b = LocalBackend::new(&root);
        b.create().unwrap();
        let away = dir.path().join("away");
        fs::rename(&root, &away).unwrap();
        let lock = FileRef::new(FileKind::Lock, "a".repeat(64));
        let err = b.write(&lock, b"lock").unwrap_err();
        assert_eq!(err.kind(), Kind::NoRepository, "{err}");
        assert!(!root.exists(), "the write made {} again", root.display());
        // Back in place: writes work again.
        fs::rename(&away, &root).unwrap();
        b.write(&lock, b"lock").unwrap();
    }

    /// A file system that refuses O_DIRECT after taking part of the first
    /// piece: the whole file is written again the ordinary way, unchanged.
    #[test]
    fn refused_direct_write_falls_back_to_an_ordinary_one() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        b.create().unwrap();
        let f = FileRef::new(FileKind::Pack, format!("{:064x}", 7));
        let want = data((5 << 20) + 4097 + 13);
        REFUSE_FIRST_PIECE.with(|r| r.set(true));
        let written = b.write(&f, &want);
        REFUSE_FIRST_PIECE.with(|r| r.set(false));
        written.unwrap();
        assert!(b.read(&f).unwrap() == want);
        assert!(b.list(FileKind::Pack).unwrap() == vec![(f.name.clone(), want.len() as u64)]);
    }

    /// Of threads racing to create one name, exactly one does; the file
    /// holds its bytes, and no temporary file is left behind.
    #[test]
    fn write_new_creates_a_name_once_among_racing_writers() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        b.create().unwrap();
        let f = FileRef::new(FileKind::Wal, "000000010000000000000001");
        let won: Vec<(u8, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let (b, f) = (&b, &f);
                    s.spawn(move || (i, b.write_new(f, &[i; 100]).unwrap()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<u8> = won.iter().filter(|(_, w)| *w).map(|(i, _)| *i).collect();
        assert_eq!(winners.len(), 1, "{won:?}");
        assert!(b.read(&f).unwrap() == [winners[0]; 100]);
        assert!(!b.write_new(&f, b"later").unwrap());
        assert!(b.read(&f).unwrap() == [winners[0]; 100]);
        assert_eq!(
            fs::read_dir(dir.path().join("repo/tmp")).unwrap().count(),
            0
        );
    }

    /// The direct path itself, with a tail and more than one piece.
    #[test]
    fn direct_write_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = fs::File::create(&path).unwrap();
        let want = data(2 * DIRECT_PIECE + 3 * DIRECT_ALIGN + 5);
        let direct = write_direct(&path, &file, &want).unwrap();
        if cfg!(not(target_os = "linux")) {
            assert!(!direct);
            return;
        }
        assert!(
            direct,
            "the temporary directory's file system refused O_DIRECT"
        );
        drop(file);
        assert!(fs::read(&path).unwrap() == want);
    }

    /// Reads around the page cache return exactly the bytes asked for, at
    /// unaligned offsets and lengths and up to the file's unaligned end; a
    /// range past the end is an error, as for the ordinary read.
    #[test]
    fn direct_reads_return_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        b.create().unwrap();
        let f = FileRef::new(FileKind::Pack, format!("{:064x}", 9));
        let file = data((3 << 20) + 1234);
        b.write(&f, &file).unwrap();
        let path = b.path(&f);
        let n = file.len() as u64;
        let mut buf = vec![1, 2, 3];
        for (offset, length) in [
            (0, 4096),
            (5, 10_000),
            (4095, 2),
            (n - 700, 700),
            (0, n as u32),
        ] {
            let direct = read_range_direct(&path, offset, length, &mut buf).unwrap();
            assert_eq!(direct, cfg!(target_os = "linux"), "O_DIRECT refused here");
            let want = &file[offset as usize..(offset + u64::from(length)) as usize];
            assert!(buf == want, "{offset}+{length}");
            b.read_range_uncached_into(&f, offset, length, &mut buf)
                .unwrap();
            assert!(buf == want, "{offset}+{length} through the backend");
        }
        let e = read_range_direct(&path, n - 10, 11, &mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(b
            .read_range_uncached_into(&f, n - 10, 11, &mut buf)
            .is_err());
    }
}
