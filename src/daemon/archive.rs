//! The WAL archive of each physical PostgreSQL source, as the daemon checks
//! it every `--check-every`: the server's own account (`pg_stat_archiver`,
//! the `.ready` files waiting in `pg_wal/archive_status`) next to the newest
//! WAL file the repository holds. Archiving that fails, or WAL that waits
//! longer than the plan's `archive-lag`, is alerted (`wal-archive`, key: the
//! source); `/status` and `/metrics` show the last archived segment, its
//! time and the lag (spec/plan.md, "Alerts"; spec/logging.md, "Metrics").
//!
//! The server is asked in a thread of its own with a deadline, so a server
//! that accepts connections and then says nothing cannot stall the checks.

use super::notice::when;
use crate::plan::{Plan, SourceSettings};
use crate::repo::FileKind;
use crate::repository::Repository;
use crate::source::pg::Target;
use serde::Serialize;
use std::time::Duration;

/// How long the daemon waits for a server's answer about its archive.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);

/// What the server says about its WAL archiving.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerArchive {
    pub archive_mode: String,
    pub archive_command: String,
    /// The WAL file being written now (`None` on a standby).
    pub current_wal: Option<String>,
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<jiff::Timestamp>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<jiff::Timestamp>,
    /// Segments waiting for `archive_command` (`.ready` files), and when the
    /// oldest became ready; `None` when the user may not list them
    /// (`pg_ls_archive_statusdir` needs `pg_monitor` or superuser).
    pub ready_segments: Option<i64>,
    pub oldest_ready: Option<jiff::Timestamp>,
}

impl ServerArchive {
    /// The last attempt failed: a failure newer than the last success.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// How long the oldest waiting segment has waited (zero when none waits).
    pub fn lag(&self, now: jiff::Timestamp) -> Option<Duration> {
        match (self.ready_segments, self.oldest_ready) {
            (Some(0), _) => Some(Duration::ZERO),
            (Some(_), Some(t)) => Some(Duration::from_secs((now - t).as_secs().max(0) as u64)),
            _ => None,
        }
    }
}

/// One source's archive, as the daemon last saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveState {
    pub checked_at: Option<jiff::Timestamp>,
    /// The server's account; absent when it could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerArchive>,
    /// Why the server could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds the oldest waiting segment has waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<u64>,
    pub failing: bool,
    /// The newest WAL file name in the repository (any timeline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_newest_wal: Option<String>,
}

/// The plan's physical PostgreSQL sources: (name, URL).
pub fn physical_sources(plan: &Plan) -> Vec<(String, String)> {
    plan.sources
        .iter()
        .filter_map(|s| match &s.settings {
            SourceSettings::Postgres(p) if p.physical => Some((s.name.clone(), p.url.clone())),
            _ => None,
        })
        .collect()
}

const QUERY: &str = "SELECT current_setting('archive_mode'), current_setting('archive_command'), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
     archived_count, last_archived_wal, extract(epoch FROM last_archived_time)::float8, \
     failed_count, last_failed_wal, extract(epoch FROM last_failed_time)::float8 \
     FROM pg_stat_archiver";

const READY: &str = "SELECT count(*), extract(epoch FROM min(modification))::float8 \
     FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'";

fn time(epoch: Option<f64>) -> Option<jiff::Timestamp> {
    epoch.and_then(|s| jiff::Timestamp::from_microsecond((s * 1e6) as i64).ok())
}

fn ask_server(url: &str) -> crate::error::Result<ServerArchive> {
    let target = Target::parse(url)?;
    let mut c = target.connect(&target.maintenance_db())?;
    let err = |e: postgres::Error| crate::error::Error::failure(format!("{}: {e}", target.shown()));
    let row = c.query_one(QUERY, &[]).map_err(err)?;
    let mut s = ServerArchive {
        archive_mode: row.get(0),
        archive_command: row.get(1),
        current_wal: row.get(2),
        archived_count: row.get(3),
        last_archived_wal: row.get(4),
        last_archived_time: time(row.get(5)),
        failed_count: row.get(6),
        last_failed_wal: row.get(7),
        last_failed_time: time(row.get(8)),
        ..Default::default()
    };
    match c.query_one(READY, &[]) {
        Ok(r) => {
            s.ready_segments = Some(r.get(0));
            s.oldest_ready = time(r.get(1));
        }
        Err(e) => tracing::debug!("{}: cannot list archive_status: {e}", target.shown()),
    }
    Ok(s)
}

/// Ask the server at `url`, giving up after [`ASK_TIMEOUT`].
pub fn server_archive(url: &str) -> Result<ServerArchive, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let url = url.to_string();
    let spawned = std::thread::Builder::new()
        .name("archive-check".into())
        .spawn(move || {
            let _ = tx.send(ask_server(&url));
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start the check: {e}"));
    }
    match rx.recv_timeout(ASK_TIMEOUT) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the server did not answer within {}",
            humantime::format_duration(ASK_TIMEOUT)
        )),
    }
}

/// The newest WAL file name the repository holds (entries are
/// `NAME.ID`, claims `NAME`; `.history` and `.backup` files are left out).
pub fn repository_newest_wal(repo: &Repository) -> Option<String> {
    let names = repo.backend.list(FileKind::Wal).ok()?;
    names
        .into_iter()
        .map(|(n, _)| n.split('.').next().unwrap_or_default().to_string())
        .filter(|n| crate::source::pg::prefetch::is_segment(n))
        .max()
}

/// What the check found: the state, and the alert's subject and sentence
/// when one is due.
pub fn judge(
    server: Result<ServerArchive, String>,
    newest: Option<String>,
    limit: Duration,
    now: jiff::Timestamp,
) -> (ArchiveState, Option<(String, String)>) {
    let mut st = ArchiveState {
        checked_at: Some(now),
        repository_newest_wal: newest,
        ..Default::default()
    };
    let s = match server {
        Ok(s) => s,
        Err(e) => {
            // An unreachable server fails its backups, which alert.
            st.error = Some(e);
            return (st, None);
        }
    };
    let lag = s.lag(now);
    st.lag_seconds = lag.map(|d| d.as_secs());
    st.failing = s.failing();
    let alert = if st.failing {
        Some((
            format!(
                "archiving fails at {}",
                s.last_failed_wal.as_deref().unwrap_or("?")
            ),
            format!(
                "PostgreSQL's archive_command fails: the last attempt, at {}, failed on WAL file {} \
                 ({} failures since the statistics were reset); the last success was {} ({}). \
                 WAL piles up in pg_wal until the disk is full, and point-in-time restore \
                 cannot reach past the last archived file.",
                when(s.last_failed_time, now),
                s.last_failed_wal.as_deref().unwrap_or("?"),
                s.failed_count,
                s.last_archived_wal.as_deref().unwrap_or("none"),
                when(s.last_archived_time, now),
            ),
        ))
    } else {
        match lag {
            Some(d) if d > limit => Some((
                format!(
                    "{} WAL files waiting, oldest {}",
                    s.ready_segments.unwrap_or_default(),
                    humantime::format_duration(d)
                ),
                format!(
                    "{} WAL files wait to be archived; the oldest has waited {} (the limit is \
                     archive-lag {}). Archiving is slower than the server writes WAL.",
                    s.ready_segments.unwrap_or_default(),
                    humantime::format_duration(d),
                    humantime::format_duration(limit)
                ),
            )),
            _ => None,
        }
    };
    st.server = Some(s);
    (st, alert)
}
