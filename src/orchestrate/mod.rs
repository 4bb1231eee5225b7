//! Restore orchestration (`cairn restore --plan FILE`): put a whole platform
//! back to one snapshot, with the services around it stopped and started in
//! the right order (`spec/plan.md`, "Restore orchestration").
//!
//! The steps, in order:
//!
//! 1. **verify**: every chunk of every source to be restored is in the index
//!    and every pack it lives in is intact — before any service is touched;
//! 2. **stop** every service of the plan, dependents first (the reverse of
//!    the start order): its `stop` command, then its `stopped` probe polled
//!    until it succeeds or times out;
//! 3. **restore** each source of the snapshot the plan declares: files to
//!    their original absolute paths (or below a target root), logical
//!    PostgreSQL into the source's `url` (replacing what is there: the
//!    services using it are stopped), physical PostgreSQL into the source's
//!    `pgdata`, set up to recover to the time asked for (the base backup
//!    and the archive's reach are checked in step 1), Kafka into the
//!    source's brokers;
//! 4. **start** every service, dependencies first: its `start` command, then
//!    its `ready` probe polled until it succeeds or times out; a service
//!    using a physical source then waits until PostgreSQL ended recovery.
//!
//! Everything that could make the restore impossible (a physical source
//! without `pgdata` or with a data directory it must not replace, a source
//! whose kind changed since the snapshot, an unsafe path) is refused by
//! [`prepare`], before anything runs. While running, the first
//! failing step — or Ctrl-C between steps — ends the run; the [`Report`] says
//! how each step went and in what state every service and source was left.
//! Nothing is undone or restarted after a failure: the services that were
//! stopped stay stopped, so nothing runs against half-restored data.
//!
//! Commands come from the plan (a trusted, reviewed file) and run as
//! `sh -c COMMAND` in the plan's directory, in their own process group, with
//! standard input from /dev/null and standard output and error captured in a
//! temporary file (not a pipe, so a daemon started in the background that
//! keeps the descriptors open neither blocks the restore nor dies of
//! SIGPIPE). Nothing read from a snapshot ever becomes part of a command.

mod prepare;
mod run;
mod shell;

pub use prepare::prepare;
pub use shell::run_shell;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Kind};
use crate::plan::Service;
use crate::repo::{SnapshotId, SourceRecord};

/// How long a `stop` or `start` command may run before it is killed and the
/// step fails (probes have their own timeouts, from the plan).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between two runs of a probe.
const POLL_EVERY: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct Options {
    /// Only work out the steps; run nothing.
    pub dry_run: bool,
    /// Kafka: write into topics that already exist on the target (at least
    /// [`ExistingTopics::Append`] for every Kafka source).
    ///
    /// [`ExistingTopics::Append`]: crate::source::kafka::ExistingTopics::Append
    pub force: bool,
    /// Kafka: delete and recreate topics that exist on the target, whatever
    /// the plan says.
    pub recreate_topics: bool,
    /// Kafka: apply every recorded topic setting, whatever the plan says.
    pub all_configs: bool,
    /// Files are restored below this directory: `/` puts them back where
    /// they were (node paths are stored without the leading `/`).
    pub target_root: PathBuf,
    /// Files: what to do with what already stands where they go.
    pub overwrite: crate::restorer::Overwrite,
    /// No progress bars.
    pub quiet: bool,
    /// Physical PostgreSQL: where recovery stops (`--at TIME` or `--at
    /// latest`); `None`: at the end of the chosen snapshot's base backup.
    pub at: Option<crate::source::pg::RecoveryTarget>,
    /// Physical PostgreSQL: the snapshots whose base backups a restore may
    /// start from (the plan's restore points).
    pub bases: Vec<SnapshotId>,
    /// Physical PostgreSQL: the restored cluster's `restore_command`
    /// (without ` %f %p`): `cairn wal-fetch` opening the repository as the
    /// plan does; `None` when the key is not in a file.
    pub wal_fetch: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            force: false,
            recreate_topics: false,
            all_configs: false,
            target_root: PathBuf::from("/"),
            overwrite: crate::restorer::Overwrite::default(),
            quiet: false,
            at: None,
            bases: Vec::new(),
            wal_fetch: None,
        }
    }
}

/// One step of a restore.
#[derive(Clone, Debug)]
pub enum Step {
    Verify { sources: Vec<String> },
    Stop { service: usize },
    Restore { item: usize },
    Start { service: usize },
}

/// A source that will be restored, and where to.
#[derive(Clone, Debug)]
struct Item {
    name: String,
    record: SourceRecord,
    to: Destination,
}

#[derive(Clone, Debug)]
enum Destination {
    Files(PathBuf),
    Postgres {
        url: String,
        shown: String,
    },
    /// A physical backup into a data directory, recovered when the
    /// cluster's service starts it.
    Pgdata {
        dir: PathBuf,
        /// The source's `url`: where the started cluster says how far it replayed.
        url: String,
        at: crate::source::pg::RecoveryTarget,
        existing: crate::source::pg::ExistingPgdata,
    },
    Kafka {
        target: Box<crate::source::kafka::KafkaOptions>,
        /// The plan's `restore-existing-topics`, raised by the command line.
        existing: crate::source::kafka::ExistingTopics,
        /// The plan's `restore-all-configs` or `--all-configs`.
        configs: crate::source::kafka::ConfigChoice,
    },
}

/// The worked-out restore: what runs, in which order, and what is left out.
#[derive(Clone, Debug)]
pub struct Orchestration {
    pub plan_file: PathBuf,
    pub plan_dir: PathBuf,
    pub id: SnapshotId,
    pub time: jiff::Timestamp,
    pub steps: Vec<Step>,
    services: Vec<Service>,
    items: Vec<Item>,
    /// Sources of the plan that are not restored, with the reason.
    skipped: Vec<(String, String, String)>,
    options: Options,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Not stopped (yet) by this restore.
    Untouched,
    Stopped,
    /// Started; it has no `ready` probe (or it was not polled yet).
    Started,
    /// Started and its `ready` probe succeeded.
    Ready,
    /// Its stop or start command, or a probe, failed.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceState {
    Restored,
    Failed,
    NotRestored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// Dry run: what would be done.
    Planned,
    Done,
    Failed,
    NotRun,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub number: usize,
    /// verify | stop | restore | start
    pub action: &'static str,
    /// The service or source it acts on (`snapshot` for verify).
    pub name: String,
    pub description: String,
    pub status: StepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What it did (e.g. "3 files, 1.2 MiB") or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceReport {
    pub name: String,
    pub state: ServiceState,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    pub name: String,
    pub kind: String,
    pub state: SourceState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The first failing step.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub step: usize,
    pub description: String,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The end of the failing command's standard output and error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// How a restore went (or, for a dry run, what it would do).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub plan: PathBuf,
    pub snapshot: SnapshotId,
    pub short_id: String,
    pub time: jiff::Timestamp,
    pub dry_run: bool,
    pub ok: bool,
    pub interrupted: bool,
    pub steps: Vec<StepReport>,
    pub services: Vec<ServiceReport>,
    pub sources: Vec<SourceReport>,
    pub failure: Option<Failure>,
    pub duration_ms: u64,
}

impl Report {
    /// The error a failed run ends the command with (exit 1, or 130 when
    /// interrupted); `None` when it went well.
    pub fn error(&self) -> Option<Error> {
        if self.ok {
            return None;
        }
        let left_stopped: Vec<&str> = self
            .services
            .iter()
            .filter(|s| matches!(s.state, ServiceState::Stopped | ServiceState::Failed))
            .map(|s| s.name.as_str())
            .collect();
        let hint = if left_stopped.is_empty() {
            "no service was stopped; fix the cause and run the restore again".to_string()
        } else {
            format!(
                "not running or failed: {}; fix the cause, then run the restore again (or start them by hand)",
                left_stopped.join(", ")
            )
        };
        let f = self.failure.as_ref()?;
        let what = match self.steps.get(f.step - 1) {
            Some(s) if s.action == "verify" => "verify snapshot".to_string(),
            Some(s) if s.action == "restore" => format!("restore source {}", s.name),
            Some(s) => format!("{} service {}", s.action, s.name),
            None => f.description.clone(),
        };
        let msg = format!("step {} ({what}) failed: {}", f.step, f.error);
        let kind = if self.interrupted {
            Kind::Interrupted
        } else {
            Kind::Failure
        };
        Some(Error::new(kind, msg).with_hint(match &f.hint {
            Some(h) => format!("{h}; {hint}"),
            None => hint,
        }))
    }
}
