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

/// The newest physical backup of `source` that ended at or before `at`.
pub fn choose_base(
    repo: &Repository,
    source: &str,
    at: jiff::Timestamp,
) -> Result<(SnapshotId, Snapshot, PhysicalMeta)> {
    let mut best: Option<(SnapshotId, Snapshot, PhysicalMeta)> = None;
    let mut earliest: Option<jiff::Timestamp> = None;
    for (id, snap) in repo.snapshots()? {
        for s in snap.sources.iter().filter(|s| s.name == source) {
            let Some(meta) = crate::source::physical_meta(s) else {
                continue;
            };
            earliest =
                Some(earliest.map_or(meta.stop_time, |e: jiff::Timestamp| e.min(meta.stop_time)));
            if meta.stop_time <= at && best.as_ref().is_none_or(|b| b.2.stop_time < meta.stop_time)
            {
                best = Some((id, snap.clone(), meta));
            }
        }
    }
    best.ok_or_else(|| match earliest {
        Some(e) => Error::failure(format!(
            "no physical backup of {source} had ended by {at}: the earliest time it can be restored to is {e}"
        ))
        .with_hint("choose a later --at, or restore a logical snapshot"),
        None => Error::usage(format!("no physical backup of source {source:?} exists"))
            .with_hint("take one with `cairn snapshot --postgres URL --physical`"),
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
}

/// How to restore a cluster to a point in time.
pub struct PitrOptions {
    pub pgdata: std::path::PathBuf,
    pub at: RecoveryTarget,
    /// `restore_command` without ` %f %p`, e.g. `cairn wal-fetch -r … --password-file …`.
    pub fetch_command: String,
    /// Start the restored cluster on this port and wait for the target.
    pub start_port: Option<u16>,
    pub timeout: std::time::Duration,
}

#[derive(Debug, Serialize)]
pub struct PitrReport {
    pub snapshot: SnapshotId,
    pub base_stop_time: jiff::Timestamp,
    /// `--at`'s time; `None` for `--at latest`.
    pub target: Option<jiff::Timestamp>,
    /// Recovery replays all archived WAL (`--at latest`, or a time no
    /// archived transaction is later than) instead of stopping at `target`.
    pub to_end: bool,
    /// The newest time the archive reaches from this base backup.
    pub reachable_end: jiff::Timestamp,
    /// `reachable_end` is an archive time: a segment's records could not be read.
    pub reachable_end_approximate: bool,
    pub pgdata: std::path::PathBuf,
    pub verified_with_pg_verifybackup: bool,
    pub started: bool,
    /// Commit time of the last transaction replayed, when started.
    pub reached: Option<String>,
}

/// The newest physical backup of `source`.
fn newest_base(repo: &Repository, source: &str) -> Result<(SnapshotId, Snapshot, PhysicalMeta)> {
    let mut best: Option<(SnapshotId, Snapshot, PhysicalMeta)> = None;
    for (id, snap) in repo.snapshots()? {
        for s in snap.sources.iter().filter(|s| s.name == source) {
            if let Some(meta) = crate::source::physical_meta(s) {
                if best.as_ref().is_none_or(|b| b.2.stop_time < meta.stop_time) {
                    best = Some((id, snap.clone(), meta));
                }
            }
        }
    }
    best.ok_or_else(|| {
        Error::usage(format!("no physical backup of source {source:?} exists"))
            .with_hint("take one with `cairn snapshot --postgres URL --physical`")
    })
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

/// Restore a physical backup into `pgdata` and configure recovery to the
/// target; with `start_port`, recover. A target past what the archive
/// reaches is refused before anything is written; any failure after the
/// directory was made or filled stops the restored server and takes away
/// what cairn put there.
pub fn restore_pitr(repo: &Repository, source: &str, opts: &PitrOptions) -> Result<PitrReport> {
    let (id, snap, meta) = match opts.at {
        RecoveryTarget::Time(at) => choose_base(repo, source, at)?,
        RecoveryTarget::Latest => newest_base(repo, source)?,
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
    if opts.pgdata.exists()
        && std::fs::read_dir(&opts.pgdata)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(
            Error::usage(format!("{} is not empty", opts.pgdata.display()))
                .with_hint("restore into a new or empty directory; nothing was written"),
        );
    }
    let source_rec = snap
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| Error::integrity("source vanished"))?;
    let nodes = repo.read_tree(source_rec)?;
    let base = nodes
        .iter()
        .find(|n| n.path == meta.base)
        .ok_or_else(|| Error::integrity(format!("snapshot {} lacks {}", id.short(), meta.base)))?;
    crate::restorer::verify_before_restore(repo, std::slice::from_ref(base))?;

    let mut report = PitrReport {
        snapshot: id,
        base_stop_time: meta.stop_time,
        target: match opts.at {
            RecoveryTarget::Time(at) => Some(at),
            RecoveryTarget::Latest => None,
        },
        to_end,
        reachable_end: reach.time,
        reachable_end_approximate: reach.approximate,
        pgdata: opts.pgdata.clone(),
        verified_with_pg_verifybackup: false,
        started: false,
        reached: None,
    };
    let made = Made::begin(&opts.pgdata);
    match recover(repo, base, opts, &reach, &mut report) {
        Ok(()) => Ok(report),
        Err(e) => {
            let log = std::fs::read_to_string(opts.pgdata.join(RESTORE_LOG)).ok();
            let undone = made.undo();
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
}

impl<'a> Made<'a> {
    fn begin(pgdata: &'a Path) -> Made<'a> {
        Made {
            pgdata,
            created: !pgdata.exists(),
        }
    }

    /// Stop a server started in it (`pg_ctl stop -m immediate`), then
    /// remove the directory, or its contents if it was there before.
    /// Returns what was done, for the error's hint.
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
        match (removed, self.created) {
            (Ok(()), true) => format!("{dir} was removed"),
            (Ok(()), false) => format!("{dir} was emptied"),
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("nothing is left in {dir}")
            }
            (Err(e), _) => {
                format!("removing what the restore put in {dir} failed ({e}): remove it by hand")
            }
        }
    }
}

fn chown_postgres(dir: &Path) -> Result<()> {
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
    chown_postgres(&opts.pgdata)?;

    if let Some(port) = opts.start_port {
        report.started = true;
        let reached = start_and_wait(&opts.pgdata, port, opts.timeout)?;
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
/// time of the last transaction replayed.
fn start_and_wait(pgdata: &Path, port: u16, timeout: std::time::Duration) -> Result<String> {
    let log = pgdata.join(RESTORE_LOG);
    let mut c = pg_command("pg_ctl");
    c.arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            pgdata.display()
        ))
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
