//! Placing restored nodes in the target directory without ever leaving it.
//!
//! A snapshot's paths are checked before a restore starts, but the target
//! may hold anything: a symlink where the snapshot has a directory (planted,
//! or left by restoring an older snapshot in which that path was a symlink)
//! would otherwise carry every write below it out of the target. So every
//! directory below the target is entered with `openat(O_NOFOLLOW |
//! O_DIRECTORY)` relative to its parent's handle, never by a path, and
//! every file, symlink and mode is placed or set relative to such a handle.
//! What already stands in the target is looked at first, through the same
//! handles and changing nothing ([`TargetDir::probe`]); the `--overwrite`
//! rule decides what happens to it (`super::existing`, spec/repository.md
//! §3 "A restore never writes outside its target"). When the restore
//! changes the target:
//!
//! - a symlink or file where the snapshot has a directory is removed (the
//!   link itself, never what it points to) and the directory made;
//! - a file or symlink being replaced is renamed over;
//! - a directory is never removed: where the snapshot has a file or
//!   symlink, the rule keeps it or the restore stops before changing
//!   anything.
//!
//! File contents are staged in a private directory at the target's top,
//! `.cairn-restore-PID-XXXXXXXX` (mode 0700, files 0600; one more at the top
//! of each other file system mounted in the target), named by number so a
//! staging name always fits in `NAME_MAX`. A file gets its owner, mode and
//! times while still staged, then is renamed into place. A restore killed
//! before it ends leaves only that directory, which no other user can read,
//! and the next restore into the same target removes it.

use crate::error::{Error, Result, ResultExt};
use crate::repo::Node;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The prefix of a restore's staging directory at the target's top.
pub(super) const STAGING_PREFIX: &str = ".cairn-restore-";

/// The restore's target directory, held open.
pub(super) struct TargetDir {
    root: OwnedFd,
    path: PathBuf,
    /// The directory entered last, by its path below the target: files come
    /// in path order, so most share the directory of the one before.
    last: Option<(String, OwnedFd)>,
    /// Running as root: owners are restored too.
    root_user: bool,
}

fn errno(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// `path`'s parent below the target ("" for the top) and its last name.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn timestamps(n: &Node) -> Timestamps {
    let t = Timespec {
        tv_sec: n.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: n.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn temporary_name() -> String {
    format!(".cairn-{:08x}", rand::random::<u32>())
}

impl TargetDir {
    /// Open `path` (made, with its parents, when missing). The target itself
    /// is the user's choice and is followed if it is a symlink.
    pub(super) fn open(path: &Path) -> Result<TargetDir> {
        std::fs::create_dir_all(path).ctx(|| format!("creating {}", path.display()))?;
        let root = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)
        .ctx(|| format!("opening {}", path.display()))?;
        Ok(TargetDir {
            root,
            path: path.to_path_buf(),
            last: None,
            root_user: rustix::process::geteuid().is_root(),
        })
    }

    fn show(&self, rel: &str) -> String {
        self.path.join(rel).display().to_string()
    }

    /// Remove what restores killed before they ended left in directory
    /// `parent` below the target: staging
    /// directories whose process (named in the directory's name) is gone.
    /// A restore still running into the same target keeps its own.
    pub(super) fn remove_leftovers(&self, parent: &str) -> Result<()> {
        let dir = self.path.join(parent);
        let entries = std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
                continue;
            };
            let pid = rest
                .split_once('-')
                .and_then(|(pid, _)| pid.parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw);
            let gone =
                pid.is_none_or(|pid| rustix::process::test_kill_process(pid) == Err(Errno::SRCH));
            if gone {
                let p = e.path();
                // remove_dir_all never follows symlinks.
                std::fs::remove_dir_all(&p)
                    .ctx(|| format!("removing {}, left by an interrupted restore", p.display()))?;
                tracing::info!(path = %p.display(), "removed what an interrupted restore left");
            }
        }
        Ok(())
    }

    /// A look at what already stands in the target, changing nothing.
    pub(super) fn probe(&self) -> Probe<'_> {
        Probe {
            target: self,
            last: None,
        }
    }

    /// Where each of `files` is staged: below the target, the directory to
    /// hold its staging directory. That is the target itself, unless the
    /// file lands on another file system (a mount point in the target):
    /// then the top of that file system in the target, so the final rename
    /// stays within one file system and the data is never staged on the
    /// wrong disk. Looks without following symlinks; where the file's
    /// directories do not exist yet, they will be made on the file system
    /// of the deepest one that does.
    pub(super) fn staging_parents<'a>(&self, files: &[&'a Node]) -> Result<Vec<&'a str>> {
        use std::os::unix::fs::MetadataExt;
        let root_dev = std::fs::metadata(&self.path)
            .ctx(|| format!("reading {}", self.path.display()))?
            .dev();
        // Per directory below the target: None where it is not (yet) a
        // real directory, else its device and the top of that device's
        // stretch of the path.
        let mut seen: HashMap<&'a str, Option<(u64, &'a str)>> = HashMap::new();
        let mut out = Vec::with_capacity(files.len());
        for n in files {
            let mut at: (u64, &'a str) = (root_dev, "");
            for (i, _) in n.path.match_indices('/') {
                let prefix = &n.path[..i];
                let here = *seen.entry(prefix).or_insert_with(|| {
                    let m = std::fs::symlink_metadata(self.path.join(prefix)).ok()?;
                    let dev = m.dev();
                    m.is_dir()
                        .then_some((dev, if dev == at.0 { at.1 } else { prefix }))
                });
                match here {
                    Some(h) => at = h,
                    None => break,
                }
            }
            out.push(at.1);
        }
        Ok(out)
    }

    /// Make a private staging directory for this restore in directory
    /// `parent` below the target.
    pub(super) fn staging(&mut self, parent: &str) -> Result<StagingDir> {
        let name = format!(
            "{STAGING_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let path = self.path.join(parent).join(&name);
        let dir = self.dir(parent)?;
        rfs::mkdirat(dir, &name, Mode::from_raw_mode(0o700))
            .map_err(errno)
            .ctx(|| format!("creating {}", path.display()))?;
        let fd = rfs::openat(
            dir,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)
        .ctx(|| format!("opening {}", path.display()))?;
        Ok(StagingDir {
            fd,
            path,
            done: false,
        })
    }

    /// Enter (or make) directory `name` of `parent`, replacing a symlink or
    /// file that stands there; never follows a symlink.
    fn enter(&self, parent: BorrowedFd<'_>, name: &str, rel: &str) -> Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let open = || rfs::openat(parent, name, flags, Mode::empty());
        let made = |replaced: bool| -> Result<OwnedFd> {
            match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno(e)).ctx(|| format!("creating {}", self.show(rel))),
            }
            if replaced {
                tracing::info!(path = %self.show(rel), "replaced a symlink or file with the snapshot's directory");
            }
            open()
                .map_err(errno)
                .ctx(|| format!("opening {}", self.show(rel)))
        };
        match open() {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) => made(false),
            // A symlink (ELOOP) or something else (ENOTDIR) stands there:
            // remove it, never what it points to. unlinkat without
            // REMOVEDIR refuses a directory, so nothing more can go.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                rfs::unlinkat(parent, name, AtFlags::empty())
                    .map_err(errno)
                    .ctx(|| {
                        format!(
                            "removing {} to make the snapshot's directory",
                            self.show(rel)
                        )
                    })?;
                made(true)
            }
            Err(e) => Err(errno(e)).ctx(|| format!("opening {}", self.show(rel))),
        }
    }

    /// Directory `rel` below the target ("" is the target), entered from
    /// the target one component at a time and made where missing.
    pub(super) fn dir(&mut self, rel: &str) -> Result<BorrowedFd<'_>> {
        if rel.is_empty() {
            return Ok(self.root.as_fd());
        }
        if self.last.as_ref().is_none_or(|(p, _)| p != rel) {
            let mut cur: Option<OwnedFd> = None;
            let mut at = 0;
            for name in rel.split('/') {
                at += name.len();
                let parent = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
                let next = self.enter(parent, name, &rel[..at])?;
                cur = Some(next);
                at += 1;
            }
            let fd = cur.ok_or_else(|| Error::failure("empty directory path"))?;
            self.last = Some((rel.to_string(), fd));
        }
        match &self.last {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(Error::failure("no directory entered")),
        }
    }

    /// Owner (as root), mode and times of `n` on the open `fd`.
    fn set_meta(&self, fd: BorrowedFd<'_>, n: &Node, what: &str) -> Result<()> {
        set_meta(fd, n, self.root_user)
            .ctx(|| format!("setting the owner, mode and times of {what}"))
    }

    /// Move staged file `staged` into place as `n`, with its metadata.
    pub(super) fn place_file(
        &mut self,
        staging: &StagingDir,
        staged: &str,
        n: &Node,
    ) -> Result<()> {
        let shown = self.show(&n.path);
        {
            let fd = rfs::openat(
                &staging.fd,
                staged,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)
            .ctx(|| format!("opening the staged {shown}"))?;
            self.set_meta(fd.as_fd(), n, &shown)?;
        }
        let (parent, name) = split(&n.path);
        let root_user = self.root_user;
        let dir = self.dir(parent)?;
        match rfs::renameat(&staging.fd, staged, dir, name) {
            Ok(()) => Ok(()),
            // A mount point between the staging directory and this one.
            Err(Errno::XDEV) => copy_into(&staging.fd, staged, dir, name, n, root_user)
                .ctx(|| format!("copying the restored {shown} into place")),
            Err(Errno::ISDIR) | Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => Err(Error::usage(
                format!("{shown} is a directory in the target, where the snapshot has a file"),
            )
            .with_hint("move that directory away, or restore into an empty directory")),
            Err(e) => Err(errno(e)).ctx(|| format!("moving the restored {shown} into place")),
        }
    }

    /// Give file `n`, already in the target with the snapshot's content,
    /// the snapshot's owner, mode and times (never through a symlink).
    pub(super) fn refresh_file(&mut self, n: &Node) -> Result<()> {
        let shown = self.show(&n.path);
        let (parent, name) = split(&n.path);
        let root_user = self.root_user;
        let dir = self.dir(parent)?;
        let fd = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)
        .ctx(|| format!("opening {shown}"))?;
        set_meta(fd.as_fd(), n, root_user)
            .ctx(|| format!("setting the owner, mode and times of {shown}"))
    }

    /// Create symlink `n` (made beside its place, then renamed over it).
    pub(super) fn place_symlink(&mut self, n: &Node) -> Result<()> {
        let shown = self.show(&n.path);
        let (parent, name) = split(&n.path);
        let root_user = self.root_user;
        let dir = self.dir(parent)?;
        let tmp = temporary_name();
        rfs::symlinkat(n.target.as_deref().unwrap_or(""), dir, &tmp)
            .map_err(errno)
            .ctx(|| format!("creating symlink {shown}"))?;
        let placed = (|| {
            if root_user {
                rfs::chownat(
                    dir,
                    &tmp,
                    Some(rfs::Uid::from_raw(n.uid)),
                    Some(rfs::Gid::from_raw(n.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            rfs::utimensat(dir, &tmp, &timestamps(n), AtFlags::SYMLINK_NOFOLLOW)?;
            rfs::renameat(dir, &tmp, dir, name)
        })();
        if let Err(e) = placed {
            let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
            return match e {
                Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => Err(Error::usage(format!(
                    "{shown} is a directory in the target, where the snapshot has a symlink"
                ))
                .with_hint("move that directory away, or restore into an empty directory")),
                e => Err(errno(e)).ctx(|| format!("creating symlink {shown}")),
            };
        }
        Ok(())
    }

    /// Owner, mode and times of directory `n` (after everything below it).
    pub(super) fn finish_dir(&mut self, n: &Node) -> Result<()> {
        let shown = self.show(&n.path);
        let fd = {
            let dir = self.dir(&n.path)?;
            dir.try_clone_to_owned()
                .ctx(|| format!("opening {shown}"))?
        };
        self.set_meta(fd.as_fd(), n, &shown)
    }
}

/// Owner (with `root_user`), mode and times of `n` on the open `fd`; the
/// owner first, since changing it clears set-id bits.
fn set_meta(fd: BorrowedFd<'_>, n: &Node, root_user: bool) -> std::io::Result<()> {
    if root_user {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(n.uid)),
            Some(rfs::Gid::from_raw(n.gid)),
        )?;
    }
    rfs::fchmod(fd, Mode::from_raw_mode(n.mode & 0o7777))?;
    rfs::futimens(fd, &timestamps(n))?;
    Ok(())
}

/// Copy staged file `staged` to `name` in `dir` (another file system),
/// through a temporary name, with `n`'s metadata.
fn copy_into(
    staging: &OwnedFd,
    staged: &str,
    dir: BorrowedFd<'_>,
    name: &str,
    n: &Node,
    root_user: bool,
) -> std::io::Result<()> {
    let from = rfs::openat(
        staging,
        staged,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let tmp = temporary_name();
    let to = rfs::openat(
        dir,
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let (mut from, mut to) = (std::fs::File::from(from), std::fs::File::from(to));
    let copied = (|| -> std::io::Result<()> {
        std::io::copy(&mut from, &mut to)?;
        set_meta(to.as_fd(), n, root_user)?;
        rfs::renameat(dir, &tmp, dir, name)?;
        Ok(())
    })();
    if copied.is_err() {
        let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
    }
    copied?;
    let _ = rfs::unlinkat(staging, staged, AtFlags::empty());
    Ok(())
}

/// What stands in the target at a path, looked at without following a
/// symlink anywhere on the way.
#[derive(Debug)]
pub(super) enum Standing {
    /// Nothing (or a directory on the way is missing).
    Missing,
    /// A directory on the way is not one: a symlink, file or other thing
    /// stands there instead.
    Below,
    Dir,
    File {
        size: u64,
        mtime_ns: i64,
    },
    Symlink {
        target: Vec<u8>,
        mtime_ns: i64,
    },
    /// A device, FIFO or socket.
    Other {
        mtime_ns: i64,
    },
}

/// A directory below the target, for [`Probe`]: open, missing, or not a
/// directory.
enum Entered {
    Dir(OwnedFd),
    Missing,
    NotDir,
}

/// Looks at what stands in the target (see [`TargetDir::probe`]),
/// entering directories by handle as the restore itself does.
pub(super) struct Probe<'a> {
    target: &'a TargetDir,
    /// The directory looked into last: paths come in order, so most share it.
    last: Option<(String, Entered)>,
}

impl Probe<'_> {
    fn enter(&mut self, rel: &str) -> Result<&Entered> {
        if self.last.as_ref().is_none_or(|(p, _)| p != rel) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut cur: Option<OwnedFd> = None;
            let mut entered = None;
            let mut at = 0;
            if !rel.is_empty() {
                for name in rel.split('/') {
                    at += name.len();
                    let parent = cur.as_ref().map_or(self.target.root.as_fd(), |f| f.as_fd());
                    match rfs::openat(parent, name, flags, Mode::empty()) {
                        Ok(fd) => cur = Some(fd),
                        Err(Errno::NOENT) => {
                            entered = Some(Entered::Missing);
                            break;
                        }
                        Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                            entered = Some(Entered::NotDir);
                            break;
                        }
                        Err(e) => {
                            return Err(errno(e))
                                .ctx(|| format!("opening {}", self.target.show(&rel[..at])))
                        }
                    }
                    at += 1;
                }
            }
            let entered = match (entered, cur) {
                (Some(e), _) => e,
                (None, Some(fd)) => Entered::Dir(fd),
                (None, None) => Entered::Dir(
                    self.target
                        .root
                        .try_clone()
                        .ctx(|| format!("opening {}", self.target.path.display()))?,
                ),
            };
            self.last = Some((rel.to_string(), entered));
        }
        match &self.last {
            Some((_, e)) => Ok(e),
            None => Err(Error::failure("no directory looked into")),
        }
    }

    /// What stands at `rel` below the target.
    pub(super) fn standing(&mut self, rel: &str) -> Result<Standing> {
        let (parent, name) = split(rel);
        let shown = self.target.show(rel);
        let dir = match self.enter(parent)? {
            Entered::Dir(fd) => fd,
            Entered::Missing => return Ok(Standing::Missing),
            Entered::NotDir => return Ok(Standing::Below),
        };
        let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Standing::Missing),
            Err(e) => return Err(errno(e)).ctx(|| format!("looking at {shown}")),
        };
        let mtime_ns = st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64;
        Ok(match rfs::FileType::from_raw_mode(st.st_mode as _) {
            rfs::FileType::Directory => Standing::Dir,
            rfs::FileType::RegularFile => Standing::File {
                size: st.st_size as u64,
                mtime_ns,
            },
            rfs::FileType::Symlink => Standing::Symlink {
                target: rfs::readlinkat(dir, name, Vec::new())
                    .map_err(errno)
                    .ctx(|| format!("reading symlink {shown}"))?
                    .into_bytes(),
                mtime_ns,
            },
            _ => Standing::Other { mtime_ns },
        })
    }

    /// The regular file at `rel`, open for reading (never through a
    /// symlink); `None` when something else stands there now.
    pub(super) fn open_file(&mut self, rel: &str) -> Result<Option<std::fs::File>> {
        let (parent, name) = split(rel);
        let Entered::Dir(dir) = self.enter(parent)? else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rfs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(_) => return Ok(None),
        };
        let f = std::fs::File::from(fd);
        let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(regular.then_some(f))
    }
}

/// The private directory a restore stages file contents in; removed with
/// whatever is left in it when dropped.
pub(super) struct StagingDir {
    fd: OwnedFd,
    pub(super) path: PathBuf,
    done: bool,
}

impl StagingDir {
    /// Where staged file number `i` is written.
    pub(super) fn file(&self, i: usize) -> PathBuf {
        self.path.join(i.to_string())
    }

    /// Every staged file has been moved into place: remove the directory.
    pub(super) fn finish(mut self) -> Result<()> {
        self.done = true;
        std::fs::remove_dir(&self.path).ctx(|| format!("removing {}", self.path.display()))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
