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
//!    services using it are stopped), Kafka into the source's brokers;
//! 4. **start** every service, dependencies first: its `start` command, then
//!    its `ready` probe polled until it succeeds or times out.
//!
//! Everything that could make the restore impossible (a physical PostgreSQL
//! source, a source whose kind changed since the snapshot, an unsafe path) is
//! refused by [`prepare`], before anything runs. While running, the first
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

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::plan::{Plan, Probe, Service, SourceSettings};
use crate::repo::{Id, Node, Snapshot, SourceRecord, SourceStatus};
use crate::repository::Repository;

/// How long a `stop` or `start` command may run before it is killed and the
/// step fails (probes have their own timeouts, from the plan).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between two runs of a probe.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How much of a failing command's output the report keeps (the end of it).
const OUTPUT_TAIL: usize = 4000;

#[derive(Clone, Debug)]
pub struct Options {
    /// Only work out the steps; run nothing.
    pub dry_run: bool,
    /// Kafka: write into topics that already exist on the target.
    pub force: bool,
    /// Files are restored below this directory: `/` puts them back where
    /// they were (node paths are stored without the leading `/`).
    pub target_root: PathBuf,
    /// No progress bars.
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            force: false,
            target_root: PathBuf::from("/"),
            quiet: false,
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
    Postgres { url: String, shown: String },
    Kafka(Box<crate::source::kafka::KafkaOptions>),
}

/// The worked-out restore: what runs, in which order, and what is left out.
#[derive(Clone, Debug)]
pub struct Orchestration {
    pub plan_file: PathBuf,
    pub plan_dir: PathBuf,
    pub id: Id,
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
    pub snapshot: Id,
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

/// Which snapshots were made by `plan` (the plan file they record is this one).
pub fn made_by(plan: &Plan, snap: &Snapshot) -> bool {
    let Some(recorded) = &snap.plan else {
        return false;
    };
    if Path::new(recorded) == plan.file {
        return true;
    }
    match (
        std::fs::canonicalize(recorded),
        std::fs::canonicalize(&plan.file),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Services in the order they start: every service after those it depends
/// on, otherwise in declaration order.
pub fn start_order(services: &[Service]) -> Result<Vec<usize>> {
    let known: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut placed = vec![false; services.len()];
    let mut order = Vec::with_capacity(services.len());
    while order.len() < services.len() {
        let next = (0..services.len()).find(|&i| {
            !placed[i]
                && services[i]
                    .depends_on
                    .iter()
                    .filter_map(|d| known.get(d.as_str()))
                    .all(|&d| placed[d])
        });
        let Some(i) = next else {
            let left: Vec<&str> = (0..services.len())
                .filter(|&i| !placed[i])
                .map(|i| services[i].name.as_str())
                .collect();
            return Err(Error::usage(format!(
                "the services {} depend on each other in a cycle",
                left.join(", ")
            ))
            .with_hint("`cairn plan check` names the cycle"));
        };
        placed[i] = true;
        order.push(i);
    }
    Ok(order)
}

fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Work out the steps of restoring snapshot `id` with `plan`. Refuses, before
/// anything runs, what orchestration cannot restore.
pub fn prepare(plan: &Plan, id: Id, snap: &Snapshot, options: &Options) -> Result<Orchestration> {
    let order = start_order(&plan.services)?;
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    // Sources used by services come first, in start order; then the rest.
    let mut source_order: Vec<&str> = Vec::new();
    for &i in &order {
        for s in &plan.services[i].sources {
            if !source_order.contains(&s.as_str()) {
                source_order.push(s);
            }
        }
    }
    for s in &plan.sources {
        if !source_order.contains(&s.name.as_str()) {
            source_order.push(&s.name);
        }
    }
    for name in source_order {
        let Some(source) = plan.source(name) else {
            continue; // a service naming an unknown source: `plan check` reports it
        };
        let kind = source.settings.kind();
        let Some(record) = snap.sources.iter().find(|r| r.name == name) else {
            skipped.push((
                name.to_string(),
                kind.to_string(),
                "not in this snapshot".to_string(),
            ));
            continue;
        };
        if record.kind != kind {
            return Err(Error::failure(format!(
                "source {name:?} is a {kind} source in the plan but a {} source in snapshot {}",
                record.kind,
                id.short()
            ))
            .with_hint(format!(
                "restore it by hand: `cairn restore {} --source {name} …`",
                id.short()
            )));
        }
        if record.status == SourceStatus::Failed {
            let why = record.errors.first().cloned().unwrap_or_default();
            skipped.push((
                name.to_string(),
                kind.to_string(),
                format!("it failed when the snapshot was made: {why}"),
            ));
            continue;
        }
        let to = match &source.settings {
            SourceSettings::Files(_) => Destination::Files(options.target_root.clone()),
            SourceSettings::Postgres(p) => {
                let physical = p.physical
                    || record.metadata.get("kind").and_then(|k| k.as_str()) == Some("physical");
                if physical {
                    return Err(Error::failure(format!(
                        "source {name:?} is a physical PostgreSQL backup, which `restore --plan` cannot restore yet; nothing was changed"
                    ))
                    .with_hint(format!(
                        "restore it by hand into a new data directory: `cairn restore --at TIME --source {name} --pgdata DIR`"
                    )));
                }
                let shown = crate::source::pg::Target::parse(&p.url)?
                    .shown()
                    .to_string();
                Destination::Postgres {
                    url: p.url.clone(),
                    shown,
                }
            }
            SourceSettings::Kafka(_) => {
                let spec = crate::plan::job_sources(plan, &[name.to_string()])?;
                match spec.into_iter().next().map(|s| s.spec) {
                    Some(crate::job::SourceSpec::Kafka { options, .. }) => {
                        Destination::Kafka(Box::new(options))
                    }
                    _ => return Err(Error::failure(format!("source {name:?} is not Kafka"))),
                }
            }
            SourceSettings::Command(_) => {
                skipped.push((
                    name.to_string(),
                    kind.to_string(),
                    format!(
                        "a command's output has no place of its own; restore it with `cairn restore {} --source {name} --target DIR`",
                        id.short()
                    ),
                ));
                continue;
            }
        };
        items.push(Item {
            name: name.to_string(),
            record: record.clone(),
            to,
        });
    }
    if items.is_empty() {
        let names: Vec<&str> = snap.sources.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::usage(format!(
            "snapshot {} has nothing this plan restores (its sources: {})",
            id.short(),
            names.join(", ")
        ))
        .with_hint(
            "choose a snapshot made with this plan; `cairn restore --plan FILE` lists them",
        ));
    }
    let mut steps = vec![Step::Verify {
        sources: items.iter().map(|i| i.name.clone()).collect(),
    }];
    steps.extend(order.iter().rev().map(|&i| Step::Stop { service: i }));
    steps.extend((0..items.len()).map(|i| Step::Restore { item: i }));
    steps.extend(order.iter().map(|&i| Step::Start { service: i }));
    let plan_dir = plan
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Orchestration {
        plan_file: plan.file.clone(),
        plan_dir,
        id,
        time: snap.time,
        steps,
        services: plan.services.clone(),
        items,
        skipped,
        options: options.clone(),
    })
}

fn probe_text(what: &str, p: &Probe) -> String {
    format!(
        "then wait until `{}` succeeds ({what}, at most {})",
        p.command,
        humantime::format_duration(p.timeout)
    )
}

impl Orchestration {
    /// One line per step, in order (without numbers).
    pub fn describe(&self, step: &Step) -> String {
        match step {
            Step::Verify { sources } => format!(
                "verify snapshot {}: every chunk and pack of {}",
                self.id.short(),
                sources.join(", ")
            ),
            Step::Stop { service } => {
                let s = &self.services[*service];
                let mut t = format!("stop service {}: `{}`", s.name, s.stop);
                if let Some(p) = &s.stopped {
                    t.push_str(", ");
                    t.push_str(&probe_text("stopped", p));
                }
                t
            }
            Step::Start { service } => {
                let s = &self.services[*service];
                let mut t = format!("start service {}: `{}`", s.name, s.start);
                if let Some(p) = &s.ready {
                    t.push_str(", ");
                    t.push_str(&probe_text("ready", p));
                }
                t
            }
            Step::Restore { item } => {
                let it = &self.items[*item];
                match &it.to {
                    Destination::Files(root) if root == Path::new("/") => format!(
                        "restore source {} (files) to its original paths",
                        it.name
                    ),
                    Destination::Files(root) => {
                        format!("restore source {} (files) below {}", it.name, root.display())
                    }
                    Destination::Postgres { shown, .. } => format!(
                        "restore source {} (postgres) into {shown}, replacing what the databases hold",
                        it.name
                    ),
                    Destination::Kafka(k) => format!(
                        "restore source {} (kafka) into {}{}",
                        it.name,
                        k.brokers,
                        if self.options.force {
                            ", adding to topics that exist"
                        } else {
                            ", refusing topics that exist"
                        }
                    ),
                }
            }
        }
    }

    fn step_target(&self, step: &Step) -> (&'static str, String) {
        match step {
            Step::Verify { .. } => ("verify", "snapshot".into()),
            Step::Stop { service } => ("stop", self.services[*service].name.clone()),
            Step::Start { service } => ("start", self.services[*service].name.clone()),
            Step::Restore { item } => ("restore", self.items[*item].name.clone()),
        }
    }

    /// Sources of the plan left out, with the reason: `(name, kind, why)`.
    pub fn skipped(&self) -> &[(String, String, String)] {
        &self.skipped
    }

    /// Run the steps (or, with `dry_run`, only list them). `on_step` is
    /// called after each step with its report.
    pub fn run(&self, repo: &Repository, on_step: &mut dyn FnMut(&StepReport)) -> Report {
        let started = Instant::now();
        let mut services: Vec<ServiceReport> = self
            .services
            .iter()
            .map(|s| ServiceReport {
                name: s.name.clone(),
                state: ServiceState::Untouched,
            })
            .collect();
        let mut sources: Vec<SourceReport> = self
            .items
            .iter()
            .map(|i| SourceReport {
                name: i.name.clone(),
                kind: i.record.kind.clone(),
                state: SourceState::NotRestored,
                detail: None,
            })
            .collect();
        sources.extend(self.skipped.iter().map(|(n, k, why)| SourceReport {
            name: n.clone(),
            kind: k.clone(),
            state: SourceState::NotRestored,
            detail: Some(why.clone()),
        }));
        let mut steps: Vec<StepReport> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (action, name) = self.step_target(s);
                StepReport {
                    number: i + 1,
                    action,
                    name,
                    description: self.describe(s),
                    status: if self.options.dry_run {
                        StepStatus::Planned
                    } else {
                        StepStatus::NotRun
                    },
                    duration_ms: None,
                    detail: None,
                }
            })
            .collect();
        let mut failure = None;
        let mut interrupted = false;
        if !self.options.dry_run {
            let mut nodes: HashMap<usize, Vec<Node>> = HashMap::new();
            for (i, step) in self.steps.iter().enumerate() {
                let r = &mut steps[i];
                if let Err(e) = crate::interrupt::check() {
                    interrupted = true;
                    failure = Some(Failure {
                        step: i + 1,
                        description: r.description.clone(),
                        error: "interrupted before this step".into(),
                        hint: e.hint().map(str::to_string),
                        output: None,
                    });
                    break;
                }
                let t = Instant::now();
                let outcome = self.run_step(repo, step, &mut nodes, &mut services, &mut sources);
                let r = &mut steps[i];
                r.duration_ms = Some(t.elapsed().as_millis() as u64);
                match outcome {
                    Ok(detail) => {
                        r.status = StepStatus::Done;
                        r.detail = detail;
                        on_step(r);
                    }
                    Err(StepError { error, output }) => {
                        interrupted = error.kind() == Kind::Interrupted;
                        r.status = StepStatus::Failed;
                        r.detail = Some(error.to_string());
                        on_step(r);
                        failure = Some(Failure {
                            step: i + 1,
                            description: r.description.clone(),
                            error: error.to_string(),
                            hint: error.hint().map(str::to_string),
                            output,
                        });
                        break;
                    }
                }
            }
        }
        Report {
            plan: self.plan_file.clone(),
            snapshot: self.id,
            short_id: self.id.short(),
            time: self.time,
            dry_run: self.options.dry_run,
            ok: failure.is_none(),
            interrupted,
            steps,
            services,
            sources,
            failure,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    fn run_step(
        &self,
        repo: &Repository,
        step: &Step,
        nodes: &mut HashMap<usize, Vec<Node>>,
        services: &mut [ServiceReport],
        sources: &mut [SourceReport],
    ) -> Result<Option<String>, StepError> {
        match step {
            Step::Verify { .. } => {
                let mut all = Vec::new();
                for (i, it) in self.items.iter().enumerate() {
                    let n = repo.read_tree(&it.record)?;
                    if matches!(it.to, Destination::Files(_)) {
                        if let Some(bad) = n.iter().find(|n| !safe_relative(&n.path)) {
                            return Err(Error::integrity(format!(
                                "source {} holds an unsafe path {:?}",
                                it.name, bad.path
                            ))
                            .into());
                        }
                    }
                    all.extend(n.iter().cloned());
                    nodes.insert(i, n);
                }
                let (_, packs) = crate::restorer::verify_before_restore(repo, &all)?;
                Ok(Some(format!(
                    "{} node(s) in {packs} pack(s) verified",
                    all.len()
                )))
            }
            Step::Stop { service } => {
                let s = &self.services[*service];
                let r = self
                    .run_command(&s.stop, COMMAND_TIMEOUT, "stop")
                    .and_then(|_| match &s.stopped {
                        Some(p) => self.poll(p, "stopped"),
                        None => Ok(()),
                    });
                services[*service].state = if r.is_ok() {
                    ServiceState::Stopped
                } else {
                    ServiceState::Failed
                };
                r.map(|_| None)
            }
            Step::Start { service } => {
                let s = &self.services[*service];
                let r = self.run_command(&s.start, COMMAND_TIMEOUT, "start");
                if r.is_err() {
                    services[*service].state = ServiceState::Failed;
                    return r.map(|_| None);
                }
                services[*service].state = ServiceState::Started;
                if let Some(p) = &s.ready {
                    let r = self.poll(p, "ready");
                    services[*service].state = if r.is_ok() {
                        ServiceState::Ready
                    } else {
                        ServiceState::Failed
                    };
                    r?;
                }
                Ok(None)
            }
            Step::Restore { item } => {
                let it = &self.items[*item];
                let r = self.restore_item(repo, it, nodes.get(item).map(Vec::as_slice));
                let rep = &mut sources[*item];
                match &r {
                    Ok(d) => {
                        rep.state = SourceState::Restored;
                        rep.detail = d.clone();
                    }
                    Err(e) => {
                        rep.state = SourceState::Failed;
                        rep.detail = Some(e.error.to_string());
                    }
                }
                r
            }
        }
    }

    fn restore_item(
        &self,
        repo: &Repository,
        it: &Item,
        nodes: Option<&[Node]>,
    ) -> Result<Option<String>, StepError> {
        match &it.to {
            Destination::Files(root) => {
                let read;
                let nodes = match nodes {
                    Some(n) => n,
                    None => {
                        read = repo.read_tree(&it.record)?;
                        &read
                    }
                };
                let st = crate::restorer::restore_nodes(repo, nodes, root, self.options.quiet)?;
                Ok(Some(format!(
                    "{} file(s), {} dir(s), {} symlink(s), {} byte(s)",
                    st.files, st.dirs, st.symlinks, st.bytes
                )))
            }
            Destination::Postgres { url, .. } => {
                use crate::source::pg;
                let report = pg::restore_logical(
                    repo,
                    &it.record,
                    url,
                    &pg::RestoreOptions::everything(true),
                )?;
                let bad: Vec<String> = report
                    .mismatches()
                    .iter()
                    .map(|t| format!("{}.{}.{}", t.database, t.schema, t.name))
                    .collect();
                if !bad.is_empty() {
                    return Err(Error::integrity(format!(
                        "the restored data differs from the backup in: {}",
                        bad.join(", ")
                    ))
                    .into());
                }
                Ok(Some(format!(
                    "{} database(s), {} relation(s) checked",
                    report.databases.len(),
                    report.tables.len()
                )))
            }
            Destination::Kafka(target) => {
                use crate::source::kafka;
                let opts = kafka::RestoreOptions {
                    force: self.options.force,
                    ..Default::default()
                };
                let report = kafka::restore_kafka(repo, &it.record, target, &opts)?;
                for w in &report.warnings {
                    tracing::warn!(source = %it.name, "{w}");
                }
                if let Some(e) = report.refused_groups() {
                    return Err(e
                    .with_hint("a consumer still runs: add its service to the plan, or stop it and commit the offsets by hand")
                    .into());
                }
                let records: u64 = report.topics.iter().map(|t| t.records).sum();
                Ok(Some(format!(
                    "{} topic(s), {records} record(s)",
                    report.topics.len()
                )))
            }
        }
    }

    /// Run a command of the plan; a non-zero exit fails with its output.
    fn run_command(&self, command: &str, timeout: Duration, what: &str) -> Result<(), StepError> {
        let out = run_shell(command, &self.plan_dir, timeout)?;
        if out.timed_out {
            return Err(StepError {
                error: Error::failure(format!(
                    "the {what} command `{command}` did not finish within {}; it was killed",
                    humantime::format_duration(timeout)
                )),
                output: Some(out.output),
            });
        }
        match out.code {
            Some(0) => Ok(()),
            code => Err(StepError {
                error: Error::failure(format!(
                    "the {what} command `{command}` {}",
                    exit_text(code)
                )),
                output: Some(out.output),
            }),
        }
    }

    /// Run `probe` until it exits 0, for at most its timeout.
    fn poll(&self, probe: &Probe, what: &str) -> Result<(), StepError> {
        let deadline = Instant::now() + probe.timeout;
        loop {
            crate::interrupt::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let out = run_shell(&probe.command, &self.plan_dir, left.max(POLL_EVERY))?;
            if out.code == Some(0) && !out.timed_out {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = if out.timed_out {
                    "its last run was killed at the deadline".to_string()
                } else {
                    format!("its last run {}", exit_text(out.code))
                };
                return Err(StepError {
                    error: Error::failure(format!(
                        "the {what} check `{}` did not succeed within {}; {last}",
                        probe.command,
                        humantime::format_duration(probe.timeout)
                    )),
                    output: Some(out.output),
                });
            }
            // One last run at the deadline itself.
            std::thread::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exited with {c}"),
        None => "was killed by a signal".into(),
    }
}

/// A failed step: the error and, for commands, the end of their output.
struct StepError {
    error: Error,
    output: Option<String>,
}

impl From<Error> for StepError {
    fn from(error: Error) -> Self {
        StepError {
            error,
            output: None,
        }
    }
}

/// The outcome of one shell command.
#[derive(Clone, Debug)]
pub struct ShellOutcome {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The end of its standard output and error, interleaved.
    pub output: String,
}

/// Run `sh -c command` in `dir`, in a process group of its own, for at most
/// `timeout` (then the group is killed). Output goes to a temporary file, so
/// a background process it starts cannot keep cairn waiting.
pub fn run_shell(command: &str, dir: &Path, timeout: Duration) -> Result<ShellOutcome> {
    use std::os::unix::process::CommandExt;
    let mut file = tempfile::tempfile()
        .map_err(|e| Error::io("creating a temporary file for command output", e))?;
    let clone = |f: &std::fs::File| {
        f.try_clone()
            .map_err(|e| Error::io("duplicating a file descriptor", e))
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(clone(&file)?))
        .stderr(Stdio::from(clone(&file)?))
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("running `{command}` with sh"), e))?;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                // The whole group: sh and whatever it started in the foreground.
                if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                break child
                    .wait()
                    .map_err(|e| Error::io(format!("waiting for `{command}`"), e))?;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::io(format!("waiting for `{command}`"), e)),
        }
    };
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let start = len.saturating_sub(OUTPUT_TAIL as u64);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.take(OUTPUT_TAIL as u64).read_to_end(&mut buf);
    }
    let mut output = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        output.insert(0, '…');
    }
    Ok(ShellOutcome {
        code: status.code(),
        timed_out,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, deps: &[&str]) -> Service {
        Service {
            name: name.into(),
            stop: String::new(),
            start: String::new(),
            ready: None,
            stopped: None,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            sources: Vec::new(),
        }
    }

    fn names(s: &[Service]) -> Vec<&str> {
        start_order(s)
            .unwrap()
            .into_iter()
            .map(|i| s[i].name.as_str())
            .collect()
    }

    #[test]
    fn dependencies_start_first_otherwise_declaration_order() {
        let s = [
            svc("web", &["app"]),
            svc("app", &["db", "cache"]),
            svc("cache", &[]),
            svc("db", &[]),
            svc("cron", &["ghost"]),
        ];
        assert_eq!(names(&s), ["cache", "db", "app", "web", "cron"]);
        assert!(names(&[]).is_empty());
    }

    #[test]
    fn a_cycle_is_an_error() {
        assert!(start_order(&[svc("a", &["b"]), svc("b", &["a"])]).is_err());
    }

    #[test]
    fn shell_output_exit_code_and_timeout() {
        let dir = std::env::temp_dir();
        let o = run_shell(
            "echo out; echo err >&2; exit 3",
            &dir,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.code, Some(3));
        assert!(!o.timed_out);
        assert_eq!(o.output, "out\nerr\n");
        // A background process holding the output open does not keep us waiting.
        let t = Instant::now();
        let o = run_shell("sleep 5 & echo started", &dir, Duration::from_secs(10)).unwrap();
        assert_eq!(o.code, Some(0));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let t = Instant::now();
        let o = run_shell("sleep 10", &dir, Duration::from_millis(300)).unwrap();
        assert!(o.timed_out);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
