//! PostgreSQL physical snapshots: a base backup streamed into the
//! repository as one tar with its `backup_manifest`, so that it is
//! restorable on its own. cairn reads `BASE_BACKUP` over its own
//! replication connection ([`super::replication`]), or runs
//! `pg_basebackup -Ft -X fetch` where that cannot. Continuous archiving adds
//! every WAL file ([`super::wal`]); [`super::pitr`] restores to a time.

use super::conn::Target;
use super::meta::PhysicalMeta;
use super::tools::pg_tool;
use crate::archiver::Packer;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::postgres::PgBackupKind;
use crate::repo::{ChunkId, Node, SourceKind};
use crate::source::SourceOutcome;
use std::process::Command;
use std::time::{Duration, Instant};

/// Wait, as `BASE_BACKUP (WAIT true)` would, until the segment holding the
/// backup's last WAL byte is archived, so that a complete physical snapshot
/// means the archive reaches it. The server's own wait looks once a
/// second, so each backup waited about a second for a segment archived in
/// a tenth of one; this looks every 20 ms (`pg_stat_archiver`), and after
/// `timeout` fails with the archiver's last failure. Like the server, it
/// waits only where it archives: `archive_mode` `on` on a primary,
/// `always`.
fn wait_archived(client: &mut postgres::Client, taken: &Taken, timeout: Duration) -> Result<()> {
    let q = |e: postgres::Error| {
        Error::failure(format!(
            "waiting for the base backup's WAL to be archived: {e}"
        ))
    };
    let row = client
        .query_one(
            "SELECT current_setting('archive_mode'), pg_is_in_recovery(), \
             (SELECT setting::bigint * CASE unit WHEN '8kB' THEN 8192 WHEN 'MB' THEN 1048576 ELSE 1 END \
              FROM pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .map_err(q)?;
    let (mode, in_recovery, seg_size): (String, bool, i64) = (row.get(0), row.get(1), row.get(2));
    if !(mode == "always" || (mode == "on" && !in_recovery)) {
        return Ok(());
    }
    let Some(segment) = last_segment(&taken.stop_lsn, taken.timeline, seg_size as u64) else {
        return Err(Error::failure(format!(
            "the base backup's stop position {:?} cannot be read",
            taken.stop_lsn
        )));
    };
    let started = Instant::now();
    loop {
        let archiver = Archiver::read(client).map_err(q)?;
        // Names sort by timeline, then position; a history file's name is
        // no segment and says nothing.
        let prefix = archiver
            .archived
            .get(..24)
            .filter(|p| p.bytes().all(|b| b.is_ascii_hexdigit()));
        if prefix.is_some_and(|p| p.to_ascii_uppercase().as_str() >= segment.as_str()) {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Error::failure(format!(
                "cairn waited {}s for the base backup's WAL to be archived (segment {segment}), so the backup was given up: {}",
                timeout.as_secs(),
                archiver.describe()
            ))
            .with_hint(ARCHIVE_HINT));
        }
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The name of the WAL segment holding the byte before `stop_lsn`
/// (`X/Y`) on `timeline`: the last segment a base backup needs, as
/// PostgreSQL names it (`XLByteToPrevSeg`).
fn last_segment(stop_lsn: &str, timeline: u32, seg_size: u64) -> Option<String> {
    let (hi, lo) = stop_lsn.split_once('/')?;
    let lsn = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
    if seg_size == 0 || lsn == 0 || (1u64 << 32) % seg_size != 0 {
        return None;
    }
    let seg = (lsn - 1) / seg_size;
    let per_id = (1u64 << 32) / seg_size;
    Some(format!(
        "{timeline:08X}{:08X}{:08X}",
        seg / per_id,
        seg % per_id
    ))
}

/// The hint of a backup given up because its WAL was not archived.
const ARCHIVE_HINT: &str = "fix archive_command (the server's log says why it fails; \
     `SELECT * FROM pg_stat_archiver` shows the last failure), \
     or raise --archive-timeout / `archive-timeout` if archiving is only slow";

/// What `pg_stat_archiver` says: the last archived file, the last failure.
struct Archiver {
    archived: String,
    failed: String,
    failed_at: String,
    failures: i64,
    command: String,
}

impl Archiver {
    fn read(client: &mut postgres::Client) -> std::result::Result<Archiver, postgres::Error> {
        let r = client.query_one(
            "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''), \
             coalesce(last_failed_time::text, ''), failed_count, current_setting('archive_command') \
             FROM pg_stat_archiver",
            &[],
        )?;
        Ok(Archiver {
            archived: r.get(0),
            failed: r.get(1),
            failed_at: r.get(2),
            failures: r.get(3),
            command: r.get(4),
        })
    }

    /// For the message of a backup given up.
    fn describe(&self) -> String {
        let Archiver {
            archived,
            failed,
            failed_at,
            failures,
            command,
        } = self;
        if failed.is_empty() {
            format!("pg_stat_archiver shows no failure (last archived: {archived:?}); archive_command is {command:?}")
        } else {
            format!(
                "archive_command {command:?} last failed on {failed} at {failed_at} ({failures} failure(s)); last archived: {archived:?}"
            )
        }
    }
}

fn server_now(client: &mut postgres::Client) -> Result<jiff::Timestamp> {
    let s: String = client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .map_err(|e| Error::failure(format!("reading the server clock: {e}")))?
        .get(0);
    s.parse()
        .map_err(|e| Error::failure(format!("server clock {s:?}: {e}")))
}

/// How long a physical backup waits, by default, for its WAL to be archived.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// `pg_basebackup` into the repository as node `base.tar`; fails once the
/// server has waited `archive_timeout` for the backup's WAL to be archived.
pub fn archive_physical(
    packer: &mut Packer,
    source_name: &str,
    url: &str,
    archive_timeout: Duration,
    quiet: bool,
) -> Result<SourceOutcome> {
    let target = Target::parse(url)?;
    let db = target.maintenance_db();
    let mut client = target.connect(&db)?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), (SELECT system_identifier::text FROM pg_control_system())",
            &[],
        )
        .map_err(|e| Error::failure(format!("{}: {e}", target.shown())))?;
    let (server_version, system_identifier): (String, String) = (row.get(0), row.get(1));
    let start_time = server_now(&mut client)?;
    let progress = Progress::bytes(0, quiet, "base backup");
    // Cut by the tar's members, so that an unchanged extent of a relation
    // file is the same chunk in every base backup (crate::chunk).
    packer.set_chunking(Some(crate::chunk::Chunking::Tar));
    let taken = take_base_backup(packer, &target, &db, &progress);
    packer.set_chunking(None);
    let taken = taken?;
    // Neither way makes the server wait for the archive: cairn's client
    // sends WAIT false, and pg_basebackup, with the WAL in its tar, sends
    // NOWAIT.
    wait_archived(&mut client, &taken, archive_timeout)?;
    progress.finish();
    let stop_time = server_now(&mut client)?;
    let meta = PhysicalMeta {
        kind: PgBackupKind::Physical,
        server_version,
        system_identifier,
        timeline: taken.timeline,
        start_lsn: taken.start_lsn,
        stop_lsn: taken.stop_lsn,
        start_time,
        stop_time,
        base: "base.tar".into(),
    };
    tracing::info!(bytes = taken.size, start = %meta.start_lsn, stop = %meta.stop_lsn, via = taken.via, "base backup stored");
    let node = Node {
        mtime_ns: stop_time.as_nanosecond() as i64,
        ..Node::stream(meta.base.clone(), taken.size, taken.content)
    };
    let meta = serde_json::to_value(&meta).map_err(|e| Error::failure(e.to_string()))?;
    crate::source::stream::source_from_nodes(
        packer,
        source_name,
        SourceKind::Postgres,
        vec![node],
        meta,
    )
}

/// A base backup stored as one tar, and where it starts and stops.
struct Taken {
    content: Vec<ChunkId>,
    size: u64,
    start_lsn: String,
    stop_lsn: String,
    timeline: u32,
    /// `"replication protocol"` or `"pg_basebackup"`.
    via: &'static str,
}

/// Take the base backup with cairn's own replication client, or with
/// `pg_basebackup` where that client cannot (see `replication`) or
/// `CAIRN_PG_BASEBACKUP=pg_basebackup` asks for the tool.
fn take_base_backup(
    packer: &mut Packer,
    target: &Target,
    db: &str,
    progress: &Progress,
) -> Result<Taken> {
    let forced = std::env::var("CAIRN_PG_BASEBACKUP").ok();
    match forced.as_deref() {
        None | Some("") | Some("builtin") => {}
        Some("pg_basebackup") => return run_pg_basebackup(packer, target, db, progress),
        Some(other) => {
            return Err(Error::usage(format!(
                "CAIRN_PG_BASEBACKUP={other:?} is neither builtin nor pg_basebackup"
            )))
        }
    }
    let mut backup = match super::replication::start(target)? {
        super::replication::Start::Started(b) => b,
        super::replication::Start::Unsupported(why) => {
            tracing::info!(reason = %why, "taking the base backup with pg_basebackup");
            return run_pg_basebackup(packer, target, db, progress);
        }
    };
    let (content, size) = packer
        .add_stream(&mut *backup, progress)
        .map_err(|e| e.into_error("taking the base backup"))?;
    Ok(Taken {
        content,
        size,
        start_lsn: std::mem::take(&mut backup.start_lsn),
        stop_lsn: std::mem::take(&mut backup.stop_lsn),
        timeline: backup.timeline,
        via: "replication protocol",
    })
}

/// `pg_basebackup -D - -Ft -X fetch` into the repository; the positions
/// come from its `-v` output.
fn run_pg_basebackup(
    packer: &mut Packer,
    target: &Target,
    db: &str,
    progress: &Progress,
) -> Result<Taken> {
    let mut cmd = Command::new(pg_tool("pg_basebackup"));
    cmd.envs(target.tool_env(db))
        .args([
            "-D",
            "-",
            "-Ft",
            "-X",
            "fetch",
            "--checkpoint=fast",
            "--no-password",
            "-v",
        ])
        .arg("--manifest-checksums=CRC32C");
    let out =
        crate::source::command::store_command_output(packer, &mut cmd, "pg_basebackup", progress)
            .map_err(|e| match super::conn::tool_failure(target, e) {
            e if e.kind() == crate::error::Kind::Failure => {
                e.with_hint("set CAIRN_PG_BIN to PostgreSQL's bin directory if it is not found")
            }
            e => e,
        })?;
    let (mut start_lsn, mut stop_lsn, mut timeline) = (String::new(), String::new(), 0u32);
    for line in out.stderr.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut parts = rest.split(" on timeline ");
            start_lsn = parts.next().unwrap_or("").trim().to_string();
            timeline = parts
                .next()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
        }
        if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            stop_lsn = rest.trim().to_string();
        }
    }
    Ok(Taken {
        content: out.content,
        size: out.size,
        start_lsn,
        stop_lsn,
        timeline,
        via: "pg_basebackup",
    })
}

#[cfg(test)]
mod tests {
    use super::last_segment;

    #[test]
    fn the_last_segment_holds_the_byte_before_the_stop_position() {
        const MIB16: u64 = 16 << 20;
        // Inside a segment, and right at the start of the next one.
        assert_eq!(
            last_segment("0/8000138", 1, MIB16).unwrap(),
            "000000010000000000000008"
        );
        assert_eq!(
            last_segment("0/9000000", 1, MIB16).unwrap(),
            "000000010000000000000008"
        );
        // Past the first 4 GiB, on timeline 3; 1 MiB segments.
        assert_eq!(
            last_segment("1/A0000028", 3, MIB16).unwrap(),
            "0000000300000001000000A0"
        );
        assert_eq!(
            last_segment("0/300028", 1, 1 << 20).unwrap(),
            "000000010000000000000003"
        );
        assert!(last_segment("nonsense", 1, MIB16).is_none());
        assert!(last_segment("0/0", 1, MIB16).is_none());
    }
}
