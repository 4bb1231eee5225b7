//! Point-in-time restore of a physical snapshot: the newest base backup
//! that ended before the target time, unpacked and checked against its
//! manifest, then set up to replay archived WAL (through `cairn wal-fetch`)
//! up to that time. The restored cluster never archives: it must not write
//! into the production repository.

use super::meta::PhysicalMeta;
use super::tools::{is_root, pg_command, pg_tool};
use super::wal_archive::{reach, wal_archive};
use super::wal_chain::Reach;
use crate::error::{Error, Result};
use crate::repo::{Snapshot, SnapshotId};
use crate::repository::Repository;
use crate::source::command::tail_lines;
use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// A physical backup a restore may start from.
type Candidate = (SnapshotId, Snapshot, PhysicalMeta);

/// Which base backups a restore may start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bases {
    /// Every physical backup of the source in the repository; those a
    /// failed restore test marked corrupted only when `allow_corrupted`.
    Any { allow_corrupted: bool },
    /// Only those of these snapshots (a plan's restore points; the one
    /// snapshot a restore test proves).
    Among(Vec<SnapshotId>),
}

/// The physical backups of `source` that `bases` allows, and the
/// corrupted ones passed over (for messages).
fn candidates(
    repo: &Repository,
    source: &str,
    bases: &Bases,
) -> Result<(Vec<Candidate>, Vec<String>)> {
    let proofs = match bases {
        Bases::Any {
            allow_corrupted: false,
        } => repo.proofs()?,
        _ => Default::default(),
    };
    let mut found = Vec::new();
    let mut passed_over = Vec::new();
    for (id, snap) in repo.snapshots()? {
        if let Bases::Among(ids) = bases {
            if !ids.contains(&id) {
                continue;
            }
        }
        for s in snap.sources.iter().filter(|s| s.name == source) {
            let Some(meta) = crate::source::physical_meta(s) else {
                continue;
            };
            match proofs.get(&id) {
                Some(p) if !p.passed => passed_over.push(format!(
                    "skipping snapshot {}: marked corrupted by its restore test ({}); --force takes it",
                    id.short(),
                    p.detail
                )),
                _ => found.push((id, snap.clone(), meta)),
            }
        }
    }
    Ok((found, passed_over))
}

/// The hint for "no base backup": what was passed over, or how to make one.
fn none_hint(passed_over: &[String], otherwise: &str) -> String {
    if passed_over.is_empty() {
        otherwise.to_string()
    } else {
        format!(
            "{} physical backup(s) marked corrupted by a failed restore test were passed over; --force takes them",
            passed_over.len()
        )
    }
}

/// The newest of `found` that ended at or before `at`.
fn choose_base(
    found: Vec<Candidate>,
    passed_over: &[String],
    source: &str,
    at: jiff::Timestamp,
) -> Result<Candidate> {
    let earliest = found.iter().map(|c| c.2.stop_time).min();
    let best = found
        .into_iter()
        .filter(|c| c.2.stop_time <= at)
        .max_by_key(|c| c.2.stop_time);
    best.ok_or_else(|| match earliest {
        Some(e) => Error::failure(format!(
            "no physical backup of {source} had ended by {at}: the earliest time it can be restored to is {e}"
        ))
        .with_hint(none_hint(passed_over, "choose a later --at, or restore a logical snapshot")),
        None => Error::usage(format!("no physical backup of source {source:?} exists"))
            .with_hint(none_hint(passed_over, "take one with `cairn snapshot --postgres URL --physical`")),
    })
}

/// The newest of `found`.
fn newest_base(found: Vec<Candidate>, passed_over: &[String], source: &str) -> Result<Candidate> {
    found
        .into_iter()
        .max_by_key(|c| c.2.stop_time)
        .ok_or_else(|| {
            Error::usage(format!("no physical backup of source {source:?} exists")).with_hint(
                none_hint(
                    passed_over,
                    "take one with `cairn snapshot --postgres URL --physical`",
                ),
            )
        })
}

/// The restored server's log, in its data directory.
const RESTORE_LOG: &str = "cairn-restore.log";

/// Where recovery stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// `--at T`: the state at T (`recovery_target_time`).
    Time(jiff::Timestamp),
    /// `--at latest`: the end of the archived WAL, from the newest base backup.
    Latest,
    /// The state the base backup holds: recovery ends as soon as it is
    /// consistent (`recovery_target = 'immediate'`), from the newest base
    /// backup allowed (`restore --plan SNAPSHOT`: that snapshot's).
    Immediate,
}

/// What a restore does with a data directory that is not empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistingPgdata {
    /// Refuse to restore (nothing is written).
    #[default]
    Refuse,
    /// Rename it to `DIR.cairn-old-<UTC time>` and restore into a new
    /// `DIR`; it is never deleted, and is put back if the restore fails.
    MoveAside,
}

impl ExistingPgdata {
    /// The plan's spellings (`restore-existing-pgdata`).
    pub const NAMES: [(&'static str, ExistingPgdata); 2] = [
        ("refuse", ExistingPgdata::Refuse),
        ("move-aside", ExistingPgdata::MoveAside),
    ];
}

/// How to restore a cluster to a point in time.
#[derive(Clone, Debug)]
pub struct PitrOptions {
    pub pgdata: std::path::PathBuf,
    pub at: RecoveryTarget,
    /// `restore_command` without ` %f %p`, e.g. `cairn wal-fetch -r … --password-file …`.
    pub fetch_command: String,
    /// Start the restored cluster on this port and wait for the target.
    pub start_port: Option<u16>,
    pub timeout: std::time::Duration,
    /// Which base backups it may start from.
    pub bases: Bases,
    /// What to do when `pgdata` is not empty.
    pub existing: ExistingPgdata,
    /// More `-c NAME=VALUE` settings for the server cairn starts (`start_port`).
    pub server_settings: Vec<(String, String)>,
}

impl PitrOptions {
    /// A restore into `pgdata` to `at` from any base backup not marked
    /// corrupted, refusing a non-empty directory, not started.
    pub fn new(
        pgdata: std::path::PathBuf,
        at: RecoveryTarget,
        fetch_command: String,
    ) -> PitrOptions {
        PitrOptions {
            pgdata,
            at,
            fetch_command,
            start_port: None,
            timeout: std::time::Duration::from_secs(600),
            bases: Bases::Any {
                allow_corrupted: false,
            },
            existing: ExistingPgdata::Refuse,
            server_settings: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PitrReport {
    pub snapshot: SnapshotId,
    pub base_stop_time: jiff::Timestamp,
    /// `--at`'s time; `None` for `--at latest` and the base backup's end.
    pub target: Option<jiff::Timestamp>,
    /// Recovery replays all archived WAL (`--at latest`, or a time no
    /// archived transaction is later than) instead of stopping at `target`.
    pub to_end: bool,
    /// Recovery stops at the base backup's end (`recovery_target = 'immediate'`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub immediate: bool,
    /// The newest time the archive reaches from this base backup.
    pub reachable_end: jiff::Timestamp,
    /// `reachable_end` is an archive time: a segment's records could not be read.
    pub reachable_end_approximate: bool,
    pub pgdata: std::path::PathBuf,
    /// Where the data directory that was there went (`MoveAside`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_aside: Option<std::path::PathBuf>,
    pub verified_with_pg_verifybackup: bool,
    pub started: bool,
    /// Commit time of the last transaction replayed, when started.
    pub reached: Option<String>,
    /// Newer base backups left out because a failed restore test marked them corrupted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
}

/// A restore worked out and checked, before anything is written: the base
/// backup it starts from and how far the archive lets it go.
#[derive(Clone, Debug)]
pub struct PitrChoice {
    pub snapshot: SnapshotId,
    pub meta: PhysicalMeta,
    /// The node holding the base backup's tar.
    pub base: crate::repo::Node,
    pub reach: Reach,
    /// `reach`, said for messages.
    words: String,
    pub to_end: bool,
    passed_over: Vec<String>,
}

impl PitrChoice {
    /// What it restores, for a plan's step: base backup, target, directory.
    pub fn describe(&self, opts: &PitrOptions) -> String {
        let to = match (opts.at, self.to_end) {
            (RecoveryTarget::Immediate, _) => "the end of the base backup".to_string(),
            (RecoveryTarget::Time(t), false) => format!("{t}"),
            _ => format!("the end of the archived WAL ({})", self.reach.time),
        };
        format!(
            "base backup of snapshot {} (ended {}), recovery to {to}",
            self.snapshot.short(),
            self.meta.stop_time
        )
    }
}

/// What the archive lets a restore from `meta` reach, said for messages.
fn reach_words(
    id: SnapshotId,
    reach: &Reach,
    size: crate::source::pg::wal_chain::SegmentSize,
) -> String {
    let mut s = format!(
        "the newest time the WAL archive reaches from snapshot {} is {}{}",
        id.short(),
        reach.time,
        if reach.approximate {
            " (approximately: when its last segment was archived)"
        } else if reach.last_xact.is_none() {
            " (its base backup's end: no later transaction is archived)"
        } else {
            ""
        }
    );
    if let Some(g) = reach.gap {
        s.push_str(&format!(
            "; WAL segment {} is missing, so recovery cannot go past it",
            size.name(g)
        ));
    }
    s
}

/// Whether `dir` holds anything (a directory that cannot be read counts as
/// not empty).
fn not_empty(dir: &Path) -> bool {
    dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
}

/// The process id in `DIR/postmaster.pid` when that process runs: a
/// server uses the directory.
fn running_server(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new("/proc")
        .join(pid.to_string())
        .exists()
        .then_some(pid)
}

/// Refuse what a restore into `dir` must not touch: a directory that is
/// not empty (unless it goes aside), a symlink that would go aside
/// instead of what it points to, a server running in it (unless
/// `server_may_run`: checked before a plan stops its services). Returns
/// whether something goes aside.
pub fn check_pgdata(dir: &Path, existing: ExistingPgdata, server_may_run: bool) -> Result<bool> {
    if !not_empty(dir) {
        return Ok(false);
    }
    let shown = dir.display();
    if let Some(pid) = running_server(dir).filter(|_| !server_may_run) {
        return Err(Error::usage(format!(
            "a PostgreSQL server (pid {pid}) runs in {shown}"
        ))
        .with_hint("stop it first (a plan's `service` whose `sources` name the source stops it); nothing was written"));
    }
    match existing {
        ExistingPgdata::Refuse => Err(Error::usage(format!("{shown} is not empty")).with_hint(
            "restore into a new or empty directory; a plan can move the old one aside \
             (`restore-existing-pgdata \"move-aside\"`, or --force); nothing was written",
        )),
        ExistingPgdata::MoveAside if dir.is_symlink() => Err(Error::usage(format!(
            "{shown} is a symbolic link, which cairn does not move aside"
        ))
        .with_hint("set `pgdata` to the directory it points to; nothing was written")),
        ExistingPgdata::MoveAside => Ok(true),
    }
}

/// Work out a point-in-time restore of `source` without writing anything:
/// the base backup and how far the archive reaches from it. Refuses a
/// target past that reach. The data directory is [`check_pgdata`]'s.
pub fn choose(repo: &Repository, source: &str, opts: &PitrOptions) -> Result<PitrChoice> {
    let (found, passed_over) = candidates(repo, source, &opts.bases)?;
    let (id, snap, meta) = match opts.at {
        RecoveryTarget::Time(at) => choose_base(found, &passed_over, source, at)?,
        RecoveryTarget::Latest | RecoveryTarget::Immediate => {
            newest_base(found, &passed_over, source)?
        }
    };
    let archive = wal_archive(repo)?;
    let reach = reach(repo, &archive, &meta).ok_or_else(|| {
        Error::integrity(format!(
            "snapshot {}: its base backup's WAL positions ({}, {}) cannot be read",
            id.short(),
            meta.start_lsn,
            meta.stop_lsn
        ))
    })?;
    let words = reach_words(id, &reach, archive.size);
    let to_end = match opts.at {
        RecoveryTarget::Latest => true,
        RecoveryTarget::Immediate => false,
        RecoveryTarget::Time(at) if at > reach.time => {
            return Err(Error::usage(format!(
                "{at} is after the end of what can be restored: {words}"
            ))
            .with_hint(
                "`--at latest` recovers to that end; `cairn check` names missing WAL segments; nothing was written",
            ))
        }
        // No archived transaction after `at`: the state at `at` is the
        // archive's end, and a time target would wait for a later one.
        RecoveryTarget::Time(at) => !reach.approximate && reach.last_xact.is_none_or(|x| at >= x),
    };
    let source_rec = snap
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| Error::integrity("source vanished"))?;
    let nodes = repo.read_tree(source_rec)?;
    let base = nodes
        .into_iter()
        .find(|n| n.path == meta.base)
        .ok_or_else(|| Error::integrity(format!("snapshot {} lacks {}", id.short(), meta.base)))?;
    Ok(PitrChoice {
        snapshot: id,
        meta,
        base,
        reach,
        words,
        to_end,
        passed_over,
    })
}

/// Restore a physical backup into `pgdata` and configure recovery to the
/// target; with `start_port`, recover. A target past what the archive
/// reaches is refused before anything is written; any failure after the
/// directory was made or filled stops the restored server and takes away
/// what cairn put there.
pub fn restore_pitr(repo: &Repository, source: &str, opts: &PitrOptions) -> Result<PitrReport> {
    let choice = choose(repo, source, opts)?;
    check_pgdata(&opts.pgdata, opts.existing, false)?;
    crate::restorer::verify_before_restore(repo, std::slice::from_ref(&choice.base))?;
    restore_chosen(repo, &choice, opts)
}

/// Restore what [`choose`] worked out (its packs already verified).
pub fn restore_chosen(
    repo: &Repository,
    choice: &PitrChoice,
    opts: &PitrOptions,
) -> Result<PitrReport> {
    let mut report = PitrReport {
        snapshot: choice.snapshot,
        base_stop_time: choice.meta.stop_time,
        target: match opts.at {
            RecoveryTarget::Time(at) => Some(at),
            RecoveryTarget::Latest | RecoveryTarget::Immediate => None,
        },
        to_end: choice.to_end,
        immediate: opts.at == RecoveryTarget::Immediate,
        reachable_end: choice.reach.time,
        reachable_end_approximate: choice.reach.approximate,
        pgdata: opts.pgdata.clone(),
        moved_aside: None,
        verified_with_pg_verifybackup: false,
        started: false,
        reached: None,
        passed_over: choice.passed_over.clone(),
    };
    // Checked again: the directory may have changed since `choose`.
    let move_aside = check_pgdata(&opts.pgdata, opts.existing, false)?;
    let made = Made::begin(&opts.pgdata, move_aside)?;
    report.moved_aside = made.aside.clone();
    match recover(repo, &choice.base, opts, &choice.reach, &mut report) {
        Ok(()) => Ok(report),
        Err(e) => {
            let log = std::fs::read_to_string(opts.pgdata.join(RESTORE_LOG)).ok();
            let undone = made.undo();
            let words = &choice.words;
            let mut hint = format!("{undone}; {words} (`--at latest` recovers to it)");
            if let Some(log) = log.filter(|l| !l.trim().is_empty()) {
                hint = format!("the server's log ended: {}; {hint}", tail_lines(&log, 5));
            }
            let hint = match e.hint() {
                Some(h) => format!("{h}; {hint}"),
                None => hint,
            };
            Err(e.with_hint(hint))
        }
    }
}

/// What a restore made of the data directory, to take back on failure.
struct Made<'a> {
    pgdata: &'a Path,
    /// cairn created the directory (else it existed, empty).
    created: bool,
    /// Where the directory that was there went.
    aside: Option<std::path::PathBuf>,
}

/// `DIR.cairn-old-<UTC time>`, with `-2`, `-3` … when that is taken.
fn aside_name(pgdata: &Path) -> Result<std::path::PathBuf> {
    let name = pgdata
        .file_name()
        .ok_or_else(|| Error::usage(format!("{} names no directory", pgdata.display())))?
        .to_string_lossy()
        .into_owned();
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let mut n = 1;
    loop {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let p = pgdata.with_file_name(format!("{name}.cairn-old-{stamp}{suffix}"));
        if !p.exists() && !p.is_symlink() {
            return Ok(p);
        }
        n += 1;
    }
}

impl<'a> Made<'a> {
    /// Note what is there; with `move_aside`, rename it out of the way.
    fn begin(pgdata: &'a Path, move_aside: bool) -> Result<Made<'a>> {
        let aside = if move_aside {
            let to = aside_name(pgdata)?;
            std::fs::rename(pgdata, &to).map_err(|e| {
                Error::io(
                    format!("moving {} aside to {}", pgdata.display(), to.display()),
                    e,
                )
                .with_hint(
                    "nothing was written; empty the directory by hand, or restore into another one",
                )
            })?;
            tracing::info!(pgdata = %pgdata.display(), to = %to.display(), "data directory moved aside");
            Some(to)
        } else {
            None
        };
        Ok(Made {
            pgdata,
            created: !pgdata.exists(),
            aside,
        })
    }

    /// Stop a server started in it (`pg_ctl stop -m immediate`), then
    /// remove the directory, or its contents if it was there before, and
    /// put back the directory moved aside. Returns what was done, for the
    /// error's hint.
    fn undo(self) -> String {
        let dir = self.pgdata.display();
        if self.pgdata.join("postmaster.pid").exists() {
            let stopped = pg_command("pg_ctl")
                .arg("-D")
                .arg(self.pgdata)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            if let Err(e) = &stopped {
                tracing::warn!("stopping the restored server in {dir}: {e}");
            }
        }
        let removed = if self.created {
            std::fs::remove_dir_all(self.pgdata)
        } else {
            std::fs::read_dir(self.pgdata).and_then(|entries| {
                for e in entries {
                    let p = e?.path();
                    if p.is_dir() && !p.is_symlink() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
                Ok(())
            })
        };
        let mut said = match (&removed, self.created) {
            (Ok(()), true) => format!("{dir} was removed"),
            (Ok(()), false) => format!("{dir} was emptied"),
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("nothing is left in {dir}")
            }
            (Err(e), _) => {
                format!("removing what the restore put in {dir} failed ({e}): remove it by hand")
            }
        };
        if let Some(aside) = &self.aside {
            let gone = removed.is_ok()
                || removed
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            let back = if gone {
                std::fs::rename(aside, self.pgdata)
            } else {
                Err(std::io::Error::other(
                    "the restored directory is still there",
                ))
            };
            said.push_str(&match back {
                Ok(()) => format!(" and the old one was put back from {}", aside.display()),
                Err(e) => format!(
                    "; the old one is still at {} ({e}): move it back by hand",
                    aside.display()
                ),
            });
        }
        said
    }
}

/// Give `dir` and everything in it to the `postgres` user when running as root.
pub(super) fn chown_postgres(dir: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .output()
        .map_err(|e| Error::io("running chown", e))?;
    if !out.status.success() {
        return Err(Error::failure(format!(
            "chown {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Unpack, verify, configure and (with a port) run recovery.
fn recover(
    repo: &Repository,
    base: &crate::repo::Node,
    opts: &PitrOptions,
    reach: &Reach,
    report: &mut PitrReport,
) -> Result<()> {
    std::fs::create_dir_all(&opts.pgdata)
        .map_err(|e| Error::io(format!("creating {}", opts.pgdata.display()), e))?;
    let reader = repo.open_file(base)?;
    tar::Archive::new(reader)
        .unpack(&opts.pgdata)
        .map_err(|e| {
            Error::io(
                format!("unpacking the base backup into {}", opts.pgdata.display()),
                e,
            )
        })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&opts.pgdata, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("setting permissions", e))?;

    // Check the files against the backup's own manifest before we change any.
    let verify = pg_tool("pg_verifybackup");
    report.verified_with_pg_verifybackup = verify.exists();
    if report.verified_with_pg_verifybackup {
        let out = Command::new(&verify)
            .arg(&opts.pgdata)
            .output()
            .map_err(|e| Error::io("running pg_verifybackup", e))?;
        if !out.status.success() {
            return Err(Error::integrity(format!(
                "pg_verifybackup rejects the restored base backup: {}",
                tail_lines(&String::from_utf8_lossy(&out.stderr), 5)
            )));
        }
    }

    let target = match (opts.at, report.to_end) {
        (RecoveryTarget::Immediate, _) => {
            "# The state the base backup holds: stop once consistent.\nrecovery_target = 'immediate'\n"
                .to_string()
        }
        (RecoveryTarget::Time(at), false) => format!(
            "recovery_target_time = '{}'\n",
            at.strftime("%Y-%m-%d %H:%M:%S%.6f+00")
        ),
        _ => "# No recovery target: replay all archived WAL.\n".to_string(),
    };
    let settings = format!(
        "\n# Added by cairn restore: point-in-time recovery from the cairn repository.\n\
         restore_command = '{} %f %p'\n\
         {target}\
         recovery_target_action = 'promote'\n\
         # Never archive from a restored cluster into the production repository.\n\
         archive_mode = 'off'\n\
         archive_command = ''\n",
        opts.fetch_command.replace('\'', "''")
    );
    let auto = opts.pgdata.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&settings);
    std::fs::write(&auto, conf).map_err(|e| Error::io(format!("writing {}", auto.display()), e))?;
    std::fs::write(opts.pgdata.join("recovery.signal"), "")
        .map_err(|e| Error::io("writing recovery.signal", e))?;
    // A cluster whose configuration lives elsewhere (Debian's
    // /etc/postgresql) has none in its base backup; a server cairn starts
    // needs one, and the settings above are in postgresql.auto.conf.
    let conf = opts.pgdata.join("postgresql.conf");
    if opts.start_port.is_some() && !conf.exists() {
        std::fs::write(
            &conf,
            "# Written by cairn restore: the base backup held none.\n",
        )
        .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
    }
    chown_postgres(&opts.pgdata)?;

    if let Some(port) = opts.start_port {
        report.started = true;
        let reached = start_and_wait(&opts.pgdata, port, opts.timeout, &opts.server_settings)?;
        // Replaying to the end must get to the last archived transaction:
        // short of it, WAL the archive lists could not be fetched.
        if let (true, Some(last)) = (report.to_end, reach.last_xact) {
            let got = reached.parse::<jiff::Timestamp>().ok();
            if got.is_none_or(|g| g < last) {
                return Err(Error::failure(format!(
                    "recovery ended at {}, before the last archived transaction ({last}): archived WAL could not be fetched",
                    if reached.is_empty() { "the base backup's end" } else { &reached },
                )));
            }
        }
        report.reached = Some(reached);
    }
    Ok(())
}

/// `s` in single quotes for the shell pg_ctl starts the server with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// FATAL and PANIC lines of the server log, except the refusals of
/// connections made while the server is not yet accepting them (cairn's
/// own polling).
fn fatal_lines(log: &str) -> Vec<&str> {
    const REFUSALS: [&str; 2] = [
        "the database system is starting up",
        "the database system is not yet accepting connections",
    ];
    log.lines()
        .filter(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        .filter(|l| !REFUSALS.iter().any(|r| l.contains(r)))
        .collect()
}

/// Start the restored cluster, wait until recovery ends, return the commit
/// time of the last transaction replayed. Its log goes to [`RESTORE_LOG`]
/// (no logging collector), where cairn looks for FATAL lines.
fn start_and_wait(
    pgdata: &Path,
    port: u16,
    timeout: std::time::Duration,
    settings: &[(String, String)],
) -> Result<String> {
    let log = pgdata.join(RESTORE_LOG);
    let mut options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c logging_collector=off",
        shell_quote(&pgdata.display().to_string())
    );
    for (k, v) in settings {
        options.push_str(&format!(" -c {k}={}", shell_quote(v)));
    }
    let mut c = pg_command("pg_ctl");
    c.arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(options)
        .arg("start");
    let out = c
        .output()
        .map_err(|e| Error::io("running pg_ctl start", e))?;
    if !out.status.success() {
        // Recovery that fails early ends the server before pg_ctl sees it up.
        let logtext = std::fs::read_to_string(&log).unwrap_or_default();
        let fatal = fatal_lines(&logtext);
        return Err(if fatal.is_empty() {
            Error::failure(format!(
                "the restored cluster did not start: {}",
                tail_lines(&logtext, 5)
            ))
        } else {
            Error::failure(format!("recovery failed: {}", fatal.join(" | ")))
        });
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        crate::interrupt::check()?;
        if std::time::Instant::now() > deadline {
            return Err(Error::failure(format!(
                "recovery did not finish within {}s",
                timeout.as_secs()
            )));
        }
        let logtext = std::fs::read_to_string(&log).unwrap_or_default();
        let fatal = fatal_lines(&logtext);
        if !fatal.is_empty() {
            return Err(Error::failure(format!(
                "recovery failed: {}",
                fatal.join(" | ")
            )));
        }
        if let Ok(mut client) = url
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
        {
            if let Ok(row) = client.query_one(
                "SELECT pg_is_in_recovery(), coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '')",
                &[],
            ) {
                let (in_recovery, reached): (bool, String) = (row.get(0), row.get(1));
                if !in_recovery {
                    return Ok(reached);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_in_use_is_refused_or_moved_aside_and_put_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("main");
        // Missing or empty: nothing goes aside, whatever the rule.
        assert!(!check_pgdata(&dir, ExistingPgdata::Refuse, false).unwrap());
        std::fs::create_dir(&dir).unwrap();
        assert!(!check_pgdata(&dir, ExistingPgdata::Refuse, false).unwrap());
        std::fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        let e = check_pgdata(&dir, ExistingPgdata::Refuse, false).unwrap_err();
        assert_eq!(e.kind(), crate::error::Kind::Usage);
        assert!(check_pgdata(&dir, ExistingPgdata::MoveAside, false).unwrap());
        // A server running in it (this process stands in for one).
        std::fs::write(
            dir.join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), dir.display()),
        )
        .unwrap();
        let e = check_pgdata(&dir, ExistingPgdata::MoveAside, false).unwrap_err();
        assert!(e.to_string().contains("runs in"), "{e}");
        assert!(check_pgdata(&dir, ExistingPgdata::MoveAside, true).unwrap());
        std::fs::remove_file(dir.join("postmaster.pid")).unwrap();
        // A symlink is not moved aside.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(check_pgdata(&link, ExistingPgdata::MoveAside, false).is_err());

        // Moved aside, then a failed restore puts it back.
        let made = Made::begin(&dir, true).unwrap();
        let aside = made.aside.clone().unwrap();
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("main.cairn-old-"));
        assert!(!dir.exists() && aside.join("PG_VERSION").exists());
        assert!(made.created);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("half"), "restored").unwrap();
        let said = made.undo();
        assert!(said.contains("put back"), "{said}");
        assert!(dir.join("PG_VERSION").exists() && !dir.join("half").exists());
        assert!(!aside.exists());
        // A second move in the same second gets another name.
        let first = aside_name(&dir).unwrap();
        std::fs::create_dir(&first).unwrap();
        assert_ne!(aside_name(&dir).unwrap(), first);
    }

    #[test]
    fn refused_connections_are_not_a_failed_recovery() {
        let log = "2026-01-01 LOG:  starting point-in-time recovery\n\
                   2026-01-01 FATAL:  the database system is starting up\n\
                   2026-01-01 FATAL:  the database system is not yet accepting connections\n\
                   2026-01-01 LOG:  redo done";
        assert!(fatal_lines(log).is_empty());
        let log = format!("{log}\n2026-01-01 FATAL:  recovery ended before configured recovery target was reached");
        assert_eq!(fatal_lines(&log).len(), 1);
    }
}
