//! Point-in-time restore of a physical snapshot: the newest base backup
//! that ended before the target time, unpacked and checked against its
//! manifest, then set up to replay archived WAL (through `cairn wal-fetch`)
//! up to that time. The restored cluster never archives: it must not write
//! into the production repository.

use super::meta::PhysicalMeta;
use super::tools::{is_root, pg_command, pg_tool};
use super::wal::wal_entries;
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

/// How to restore a cluster to a point in time.
pub struct PitrOptions {
    pub pgdata: std::path::PathBuf,
    pub at: jiff::Timestamp,
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
    pub target: jiff::Timestamp,
    pub pgdata: std::path::PathBuf,
    pub verified_with_pg_verifybackup: bool,
    pub started: bool,
    /// Commit time of the last transaction replayed, when started.
    pub reached: Option<String>,
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

/// Restore a physical backup into `pgdata` and configure recovery to `at`.
pub fn restore_pitr(repo: &Repository, source: &str, opts: &PitrOptions) -> Result<PitrReport> {
    let (id, snap, meta) = choose_base(repo, source, opts.at)?;
    let newest_wal = wal_entries(repo)?.into_iter().map(|w| w.archived).max();
    match newest_wal {
        Some(t) if t >= opts.at => {}
        Some(t) => {
            return Err(Error::failure(format!(
                "{} is after the last archived WAL (archived at {t}); recovery cannot reach it",
                opts.at
            ))
            .with_hint(
                "check that archive_command runs `cairn wal-push`, or choose an earlier --at",
            ))
        }
        None if opts.at <= meta.stop_time => {}
        None => {
            return Err(Error::failure(format!(
                "no WAL is archived, so {} after the base backup's end ({}) cannot be reached",
                opts.at, meta.stop_time
            ))
            .with_hint("set archive_command = 'cairn wal-push … %p' on the server"))
        }
    }
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
    let verified = verify.exists();
    if verified {
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

    let target = opts.at.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
    let settings = format!(
        "\n# Added by cairn restore: point-in-time recovery from the cairn repository.\n\
         restore_command = '{} %f %p'\n\
         recovery_target_time = '{target}'\n\
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

    let mut report = PitrReport {
        snapshot: id,
        base_stop_time: meta.stop_time,
        target: opts.at,
        pgdata: opts.pgdata.clone(),
        verified_with_pg_verifybackup: verified,
        started: false,
        reached: None,
    };
    if let Some(port) = opts.start_port {
        report.reached = Some(start_and_wait(&opts.pgdata, port, opts.timeout)?);
        report.started = true;
    }
    Ok(report)
}

/// Start the restored cluster, wait until recovery ends, return the commit
/// time of the last transaction replayed.
fn start_and_wait(pgdata: &Path, port: u16, timeout: std::time::Duration) -> Result<String> {
    let log = pgdata.join("cairn-restore.log");
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
        return Err(Error::failure(format!(
            "the restored cluster did not start: {}",
            tail_lines(&std::fs::read_to_string(&log).unwrap_or_default(), 5)
        )));
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        crate::interrupt::check()?;
        if std::time::Instant::now() > deadline {
            return Err(Error::failure(format!(
                "recovery did not finish within {}s",
                timeout.as_secs()
            ))
            .with_hint(format!("see {}", log.display())));
        }
        let logtext = std::fs::read_to_string(&log).unwrap_or_default();
        if logtext.contains("FATAL") && !logtext.contains("the database system is starting up") {
            let fatal: Vec<&str> = logtext.lines().filter(|l| l.contains("FATAL")).collect();
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
