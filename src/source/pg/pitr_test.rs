//! Proving a physical snapshot restores (`check --restore-test`, the
//! daemon's `verify`): its base backup is recovered, in a scratch data
//! directory on a free port, to a random time of its restorable range —
//! from the base backup's end to the newest time the archived WAL reaches
//! from it, or to the next newer base backup's end when that is sooner —
//! then checked: the server ended recovery, replay stopped at or
//! before that time, and `pg_amcheck` finds every table and index sound.
//!
//! Every WAL segment is read from the repository (`wal-fetch --prefetch
//! 0`): a segment an earlier restore left in the prefetch spool would
//! prove nothing about what is stored now.

use super::conn::Target;
use super::pitr::{chown_postgres, restore_pitr, Bases, PitrOptions, RecoveryTarget};
use super::tools::{pg_command, pg_tool, tool};
use super::wal_archive::{reach, wal_archive};
use crate::error::{Error, Kind, Result};
use crate::repo::{SnapshotId, SourceRecord};
use crate::repository::Repository;
use crate::source::command::tail_lines;
use jiff::Timestamp;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How long recovery in a restore test may take.
const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where in its restorable range a physical snapshot is tested.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestPoint {
    /// A random time of the range (the default).
    #[default]
    Random,
    /// The end of the range: every archived segment of it is replayed.
    End,
    /// This time, which must lie in the range.
    At(Timestamp),
}

/// The restore test of one physical PostgreSQL source.
#[derive(Clone, Debug, Serialize)]
pub struct PitrTest {
    pub source: String,
    /// The restorable range: the base backup's end …
    pub from: Timestamp,
    /// … to the newest time the archive reaches from it.
    pub to: Timestamp,
    /// `to` is an archive time (a segment's records could not be read):
    /// the test replays all archived WAL instead of stopping at a time.
    pub to_approximate: bool,
    /// The time recovered to; `None`: the end of the archived WAL.
    pub target: Option<Timestamp>,
    /// Commit time of the last transaction replayed ("": none after the
    /// base backup).
    pub reached: String,
    /// `pg_amcheck` findings (empty when clean or not installed).
    pub amcheck: Vec<String>,
    pub amcheck_ran: bool,
    /// Other findings: replay past the target.
    pub problems: Vec<String>,
    pub duration_ms: u64,
}

impl PitrTest {
    pub fn ok(&self) -> bool {
        self.amcheck.is_empty() && self.problems.is_empty()
    }

    /// What failed, in one line.
    pub fn failures(&self) -> String {
        self.problems
            .iter()
            .cloned()
            .chain(self.amcheck.iter().map(|a| format!("pg_amcheck: {a}")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A time of `[from, to]` in whole microseconds (what PostgreSQL keeps),
/// chosen at random; `to` itself when no whole microsecond lies between.
/// The end of the next newer base backup of source `name` in the
/// repository, if any. A random test point stops there: the WAL after it
/// is what a test of that newer snapshot replays, so a test costs at most
/// one backup interval of replay however old the snapshot it proves (a
/// monthly snapshot kept for a year would otherwise replay up to a year
/// of WAL), and over many tests every interval of the archive is replayed.
fn next_base_end(repo: &Repository, name: &str, after: Timestamp) -> Result<Option<Timestamp>> {
    let snapshots = repo.snapshots()?;
    Ok(
        super::wal_archive::physical_bases(snapshots.iter().map(|(i, s)| (i, s)))
            .into_iter()
            .filter(|(_, source, m)| source == name && m.stop_time > after)
            .map(|(_, _, m)| m.stop_time)
            .min(),
    )
}

fn random_time(from: Timestamp, to: Timestamp) -> Timestamp {
    let lo = from.as_microsecond() + i64::from(from.subsec_nanosecond() % 1000 != 0);
    let hi = to.as_microsecond();
    if hi < lo {
        return to;
    }
    Timestamp::from_microsecond(rand::random_range(lo..=hi)).unwrap_or(to)
}

/// A test environment problem, not the snapshot's: the test is skipped.
fn unavailable(what: String) -> Error {
    Error::new(Kind::Unavailable, what)
}

/// Stops the scratch server however the test ends.
struct Running<'a>(&'a Path);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.0)
            .args(["-m", "fast", "-w", "stop"])
            .output();
        if let Err(e) = out {
            tracing::warn!(
                "stopping the restore test's server in {}: {e}",
                self.0.display()
            );
        }
    }
}

/// Recover physical source `source` of snapshot `id` in a scratch data
/// directory and check it. `fetch_command` is `cairn wal-fetch …` opening
/// this repository. An error of kind `Unavailable` means the scratch
/// environment failed (skip the test); any other, that the snapshot did
/// not restore.
pub fn pitr_test(
    repo: &Repository,
    id: SnapshotId,
    source: &SourceRecord,
    fetch_command: &str,
    point: TestPoint,
) -> Result<PitrTest> {
    let started = std::time::Instant::now();
    let meta = crate::source::physical_meta(source).ok_or_else(|| {
        Error::integrity(format!(
            "source {} has no valid physical backup metadata",
            source.name
        ))
    })?;
    let archive = wal_archive(repo)?;
    let range = reach(repo, &archive, &meta).ok_or_else(|| {
        Error::integrity(format!(
            "its base backup's WAL positions ({}, {}) cannot be read",
            meta.start_lsn, meta.stop_lsn
        ))
    })?;
    if let TestPoint::At(t) = point {
        if t < meta.stop_time || t > range.time {
            return Err(Error::usage(format!(
                "{t} is outside snapshot {}'s restorable range, {} to {}",
                id.short(),
                meta.stop_time,
                range.time
            )));
        }
    }
    let target = match point {
        // Its last transaction is unknown: a time could lie past it.
        _ if range.approximate => None,
        TestPoint::Random => Some(random_time(
            meta.stop_time,
            next_base_end(repo, &source.name, meta.stop_time)?
                .map_or(range.time, |next| next.min(range.time)),
        )),
        TestPoint::End => Some(range.time),
        TestPoint::At(t) => Some(t),
    };
    if !pg_tool("pg_ctl").exists() {
        return Err(unavailable(
            "pg_ctl is not installed: no scratch cluster can recover here".into(),
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("cairn-pitr-test-")
        .tempdir_in("/tmp")
        .map_err(|e| unavailable(format!("no scratch directory in /tmp: {e}")))?;
    // The restored cluster's own pg_hba.conf may want passwords cairn
    // does not have; this one lets cairn (and pg_amcheck) in on 127.0.0.1.
    let hba = scratch.path().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .map_err(|e| unavailable(format!("writing {}: {e}", hba.display())))?;
    chown_postgres(scratch.path()).map_err(|e| unavailable(e.to_string()))?;
    let pgdata: PathBuf = scratch.path().join("data");
    let port = super::cluster::free_port().map_err(|e| unavailable(e.to_string()))?;
    let mut opts = PitrOptions::new(
        pgdata.clone(),
        target.map_or(RecoveryTarget::Latest, RecoveryTarget::Time),
        format!("{fetch_command} --prefetch 0"),
    );
    opts.start_port = Some(port);
    opts.timeout = RECOVERY_TIMEOUT;
    opts.bases = Bases::Among(vec![id]);
    opts.server_settings = vec![
        ("hba_file".into(), hba.display().to_string()),
        // Certificates named by the backup's settings are not here.
        ("ssl".into(), "off".into()),
    ];
    tracing::info!(
        source = %source.name,
        from = %meta.stop_time,
        to = %range.time,
        target = %target.map_or("the end of the archived WAL".to_string(), |t| t.to_string()),
        "physical restore test: recovering"
    );
    // On failure it stops its server and removes what it put in `pgdata`.
    let report = restore_pitr(repo, &source.name, &opts)?;
    let running = Running(&pgdata);
    let reached = report.reached.clone().unwrap_or_default();
    let mut problems = Vec::new();
    if let (Some(t), Ok(r)) = (target, reached.parse::<Timestamp>()) {
        if r > t {
            problems.push(format!(
                "replay went past the target: the last transaction replayed committed at {r}, the target was {t}"
            ));
        }
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (amcheck, amcheck_ran) = amcheck_all(&url)?;
    drop(running);
    let test = PitrTest {
        source: source.name.clone(),
        from: meta.stop_time,
        to: range.time,
        to_approximate: range.approximate,
        target,
        reached,
        amcheck,
        amcheck_ran,
        problems,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        source = %source.name,
        reached = %test.reached,
        ok = test.ok(),
        "physical source restore-tested"
    );
    Ok(test)
}

/// `pg_amcheck --all --heapallindexed` on the server at `url` (installing
/// amcheck where it is missing): its findings, and whether it ran.
fn amcheck_all(url: &str) -> Result<(Vec<String>, bool)> {
    if !pg_tool("pg_amcheck").exists() {
        return Ok((Vec::new(), false));
    }
    let target = Target::parse(url)?;
    let mut c = tool(&target, "pg_amcheck", "postgres");
    c.args([
        "--no-password",
        "--install-missing",
        "--heapallindexed",
        "--all",
    ]);
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running pg_amcheck", e))?;
    if out.status.success() {
        return Ok((Vec::new(), true));
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((vec![tail_lines(&text, 5)], true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_time_is_a_whole_microsecond_inside_the_range() {
        let from: Timestamp = "2026-01-01T00:00:00.000000500Z".parse().unwrap();
        let to: Timestamp = "2026-01-01T00:00:00.000010Z".parse().unwrap();
        for _ in 0..200 {
            let t = random_time(from, to);
            assert!(from <= t && t <= to, "{t}");
            assert_eq!(t.subsec_nanosecond() % 1000, 0, "{t}");
        }
        let at: Timestamp = "2026-01-01T00:00:00.0000005Z".parse().unwrap();
        assert_eq!(random_time(at, at), at);
    }
}
