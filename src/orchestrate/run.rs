//! Running the steps of an [`Orchestration`] (or describing them) and
//! reporting how each went.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::run_shell;
use super::{
    Destination, Failure, Item, Orchestration, Report, ServiceReport, ServiceState, SourceReport,
    SourceState, Step, StepReport, StepStatus, COMMAND_TIMEOUT, POLL_EVERY,
};
use crate::error::{Error, Kind, Result};
use crate::plan::Probe;
use crate::repo::Node;
use crate::repository::Repository;
use crate::source::kafka::{ConfigChoice, ExistingTopics};
use crate::source::pg::{Bases, ExistingPgdata, PitrChoice, PitrOptions, RecoveryTarget};

/// What the verify step found, for the restore steps: each item's nodes,
/// and the base backup each physical item restores.
#[derive(Default)]
struct Verified {
    nodes: HashMap<usize, Vec<Node>>,
    pitr: HashMap<usize, PitrChoice>,
}

/// How long a service using a physical source, without a `ready` probe,
/// may take to end recovery.
const RECOVERY_WAIT: Duration = Duration::from_secs(60);

fn probe_text(what: &str, p: &Probe) -> String {
    format!(
        "then wait until `{}` succeeds ({what}, at most {})",
        p.command,
        humantime::format_duration(p.timeout)
    )
}

/// How a file restore step treats what already stands in its place.
fn overwrite_text(o: crate::restorer::Overwrite) -> &'static str {
    use crate::restorer::Overwrite;
    match o {
        Overwrite::Never => "keeping files that exist (--overwrite never)",
        Overwrite::IfChanged => "replacing files that differ (--overwrite if-changed)",
        Overwrite::Always => "replacing files whose content differs (--overwrite always)",
        Overwrite::IfNewer => "replacing files older than the snapshot's (--overwrite if-newer)",
    }
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
                    Destination::Files(root) => format!(
                        "restore source {} (files) {}, {}",
                        it.name,
                        if root == Path::new("/") {
                            "to its original paths".to_string()
                        } else {
                            format!("below {}", root.display())
                        },
                        overwrite_text(self.options.overwrite)
                    ),
                    Destination::Postgres { shown, .. } => format!(
                        "restore source {} (postgres) into {shown}, replacing what the databases hold",
                        it.name
                    ),
                    Destination::Pgdata {
                        dir, at, existing, ..
                    } => {
                        let from = match at {
                            RecoveryTarget::Time(t) => format!(
                                "the newest base backup that ended by {t}, set up to recover to {t}"
                            ),
                            RecoveryTarget::Latest => "the newest base backup, set up to recover to the end of the archived WAL".to_string(),
                            RecoveryTarget::Immediate => format!(
                                "the base backup of snapshot {}, set up to recover to its end",
                                self.id.short()
                            ),
                        };
                        format!(
                            "restore source {} (physical postgres) into {}{}: {from} when its service starts the cluster",
                            it.name,
                            dir.display(),
                            match existing {
                                ExistingPgdata::MoveAside => format!(
                                    ", moving what is there aside to {}.cairn-old-<time>",
                                    dir.display()
                                ),
                                ExistingPgdata::Refuse => " (new or empty)".to_string(),
                            }
                        )
                    }
                    Destination::Kafka {
                        target,
                        existing,
                        configs,
                    } => format!(
                        "restore source {} (kafka) into {}{}{}",
                        it.name,
                        target.brokers,
                        match existing {
                            ExistingTopics::Refuse => ", refusing topics that exist",
                            ExistingTopics::Append => ", adding to topics that exist",
                            ExistingTopics::Recreate => ", deleting and recreating topics that exist (refused while a consumer group with live members uses them)",
                        },
                        match configs {
                            ConfigChoice::All => ", with every recorded topic setting",
                            ConfigChoice::Explicit => "",
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
                kind: i.record.kind.to_string(),
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
            let mut verified = Verified::default();
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
                let outcome = self.run_step(repo, step, &mut verified, &mut services, &mut sources);
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
        verified: &mut Verified,
        services: &mut [ServiceReport],
        sources: &mut [SourceReport],
    ) -> Result<Option<String>, StepError> {
        match step {
            Step::Verify { .. } => {
                let mut all = Vec::new();
                for (i, it) in self.items.iter().enumerate() {
                    if matches!(it.to, Destination::Pgdata { .. }) {
                        // The base backup it starts from, and whether the
                        // archive reaches the target: refused here, before
                        // any service is stopped.
                        let opts = self.pitr_options(it)?;
                        let choice = crate::source::pg::choose_pitr(repo, &it.name, &opts)
                            .map_err(|e| e.context(format!("source {}", it.name)))?;
                        all.push(choice.base.clone());
                        verified.pitr.insert(i, choice);
                        continue;
                    }
                    let n = repo.read_tree(&it.record)?;
                    if matches!(it.to, Destination::Files(_)) {
                        // The same rules a restore applies (spec §2.6),
                        // checked before any service is stopped.
                        if let Some(p) = crate::repo::node_path::tree_problem(&n) {
                            return Err(Error::integrity(format!(
                                "source {} cannot be restored: {p}",
                                it.name
                            ))
                            .into());
                        }
                    }
                    all.extend(n.iter().cloned());
                    verified.nodes.insert(i, n);
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
                let recovered = self.wait_for_recovery(s, &verified.pitr);
                if recovered.is_err() {
                    services[*service].state = ServiceState::Failed;
                }
                recovered
            }
            Step::Restore { item } => {
                let it = &self.items[*item];
                let r = self.restore_item(repo, it, *item, verified);
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
        index: usize,
        verified: &Verified,
    ) -> Result<Option<String>, StepError> {
        let nodes = verified.nodes.get(&index).map(Vec::as_slice);
        match &it.to {
            Destination::Pgdata { dir, .. } => {
                let choice = verified
                    .pitr
                    .get(&index)
                    .ok_or_else(|| Error::failure(format!("source {}: not verified", it.name)))?;
                let opts = self.pitr_options(it)?;
                let report = crate::source::pg::restore_chosen(repo, choice, &opts)?;
                let mut detail = format!("{} into {}", choice.describe(&opts), dir.display());
                if let Some(old) = &report.moved_aside {
                    detail.push_str(&format!("; what was there is now {}", old.display()));
                }
                Ok(Some(detail))
            }
            Destination::Files(root) => {
                let read;
                let nodes = match nodes {
                    Some(n) => n,
                    None => {
                        read = repo.read_tree(&it.record)?;
                        &read
                    }
                };
                let st = crate::restorer::restore_nodes(
                    repo,
                    nodes,
                    root,
                    self.options.overwrite,
                    self.options.quiet,
                )?;
                Ok(Some(format!(
                    "{} file(s), {} dir(s), {} symlink(s), {} byte(s){}",
                    st.files,
                    st.dirs,
                    st.symlinks,
                    st.bytes,
                    crate::restorer::existing_summary(&st)
                        .map(|s| format!("; {s}"))
                        .unwrap_or_default()
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
            Destination::Kafka {
                target,
                existing,
                configs,
            } => {
                use crate::source::kafka;
                let opts = kafka::RestoreOptions {
                    existing: *existing,
                    configs: *configs,
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
                let mut detail = format!("{} topic(s), {records} record(s)", report.topics.len());
                if !report.deleted.is_empty() {
                    let names: Vec<&str> = report.deleted.iter().map(|d| d.name.as_str()).collect();
                    detail.push_str(&format!("; recreated {}", names.join(", ")));
                }
                Ok(Some(detail))
            }
        }
    }

    /// How physical item `it` is restored: into its `pgdata`, not started
    /// (its service starts it), from the plan's base backups.
    fn pitr_options(&self, it: &Item) -> Result<PitrOptions> {
        let Destination::Pgdata {
            dir, at, existing, ..
        } = &it.to
        else {
            return Err(Error::failure(format!(
                "source {} is not physical",
                it.name
            )));
        };
        let fetch = self.options.wal_fetch.clone().ok_or_else(|| {
            Error::usage("the restored cluster's restore_command needs the key in a file")
        })?;
        let mut opts = PitrOptions::new(dir.clone(), *at, fetch);
        opts.existing = *existing;
        opts.bases = Bases::Among(match at {
            RecoveryTarget::Immediate => vec![self.id],
            _ => self.options.bases.clone(),
        });
        Ok(opts)
    }

    /// After service `s` started: each physical source it uses must end
    /// recovery (PostgreSQL removes `recovery.signal` when it does) within
    /// its `ready` timeout (60 s without one), where its target says —
    /// asked through the source's `url` when cairn can connect: replaying
    /// to the end that stops before the last archived transaction means
    /// archived WAL could not be fetched.
    fn wait_for_recovery(
        &self,
        s: &crate::plan::Service,
        chosen: &HashMap<usize, PitrChoice>,
    ) -> Result<Option<String>, StepError> {
        let physical: Vec<(&Item, &Path, &str, RecoveryTarget, &PitrChoice)> = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, it)| s.sources.contains(&it.name))
            .filter_map(|(i, it)| match &it.to {
                Destination::Pgdata { dir, url, at, .. } => {
                    Some((it, dir.as_path(), url.as_str(), *at, chosen.get(&i)?))
                }
                _ => None,
            })
            .collect();
        if physical.is_empty() {
            return Ok(None);
        }
        let timeout = s.ready.as_ref().map_or(RECOVERY_WAIT, |p| p.timeout);
        let deadline = Instant::now() + timeout;
        let mut said = Vec::new();
        for (it, dir, url, at, choice) in physical {
            let signal = dir.join("recovery.signal");
            while signal.exists() {
                crate::interrupt::check()?;
                if Instant::now() >= deadline {
                    return Err(Error::failure(format!(
                        "PostgreSQL in {} has not ended recovery within {} of the start (recovery.signal is still there)",
                        dir.display(),
                        humantime::format_duration(timeout)
                    ))
                    .with_hint(format!(
                        "its log says why (a WAL segment that cannot be fetched ends recovery with FATAL); \
                         a long recovery needs a longer `ready` timeout, e.g. `ready \"psql -Atc 'SELECT NOT pg_is_in_recovery()' | grep -qx t\" timeout=\"1h\"` for service {}",
                        s.name
                    ))
                    .into());
                }
                std::thread::sleep(POLL_EVERY);
            }
            let reached = match replay_point(url) {
                Ok(r) => r,
                Err(e) => {
                    said.push(format!(
                        "recovery ended in {} (how far it replayed could not be read: {e})",
                        dir.display()
                    ));
                    continue;
                }
            };
            let last = choice.reach.last_xact.filter(|_| choice.to_end);
            if let Some(last) = last.filter(|l| reached.is_none_or(|r| r < *l)) {
                return Err(Error::failure(format!(
                    "recovery of source {} ended at {}, before the last archived transaction ({last}): archived WAL could not be fetched",
                    it.name,
                    reached.map_or("the base backup's end".to_string(), |r| r.to_string())
                ))
                .with_hint("`cairn check` names missing WAL segments; the cluster runs, promoted at that point")
                .into());
            }
            if let (RecoveryTarget::Time(t), Some(r)) = (at, reached) {
                if r > t {
                    return Err(Error::failure(format!(
                        "recovery of source {} replayed a transaction committed at {r}, after the target {t}",
                        it.name
                    ))
                    .into());
                }
            }
            said.push(format!(
                "recovery ended in {}; last transaction replayed {}",
                dir.display(),
                reached.map_or("none after the base backup".to_string(), |r| r.to_string())
            ));
        }
        Ok(Some(said.join("; ")))
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

/// The commit time of the last transaction the server at `url` replayed
/// (`None`: none since it started from the base backup).
fn replay_point(url: &str) -> Result<Option<jiff::Timestamp>> {
    let t = crate::source::pg::Target::parse(url)?;
    let mut client = t.connect(&t.maintenance_db())?;
    let row = client
        .query_one(
            "SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .map_err(|e| Error::failure(format!("asking {} how far it replayed: {e}", t.shown())))?;
    let text: Option<String> = row.get(0);
    text.map(|s| {
        s.parse::<jiff::Timestamp>()
            .map_err(|e| Error::failure(format!("{s:?} is not a time: {e}")))
    })
    .transpose()
}
