//! Working out a restore before anything runs: which snapshots a plan
//! made, the order services start in, and the steps of [`prepare`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Destination, Item, Options, Orchestration, Step};
use crate::error::{Error, Result};
use crate::plan::{Plan, Service, SourceSettings};
use crate::repo::{Snapshot, SnapshotId, SourceStatus};
use crate::source::{handling, Handling};

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

/// Work out the steps of restoring snapshot `id` with `plan`. Refuses, before
/// anything runs, what orchestration cannot restore.
pub fn prepare(
    plan: &Plan,
    id: SnapshotId,
    snap: &Snapshot,
    options: &Options,
) -> Result<Orchestration> {
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
        if record.kind.as_str() != kind {
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
            SourceSettings::Postgres(p) if handling(record) == Handling::PgPhysical => {
                physical_destination(name, p, options)?
            }
            SourceSettings::Postgres(p) => {
                let shown = crate::source::pg::Target::parse(&p.url)?
                    .shown()
                    .to_string();
                Destination::Postgres {
                    url: p.url.clone(),
                    shown,
                }
            }
            SourceSettings::Kafka(k) => {
                use crate::source::kafka::{ConfigChoice, ExistingTopics};
                let spec = crate::plan::job_sources(plan, &[name.to_string()])?;
                let asked = if options.recreate_topics {
                    ExistingTopics::Recreate
                } else if options.force {
                    ExistingTopics::Append
                } else {
                    ExistingTopics::Refuse
                };
                match spec.into_iter().next().map(|s| s.spec) {
                    Some(crate::job::SourceSpec::Kafka {
                        options: target, ..
                    }) => Destination::Kafka {
                        target: Box::new(target),
                        existing: k.restore_existing_topics.max(asked),
                        configs: if k.restore_all_configs || options.all_configs {
                            ConfigChoice::All
                        } else {
                            ConfigChoice::Explicit
                        },
                    },
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

/// Where and how a physical backup of source `name` is restored; refuses
/// what cannot be: no `pgdata`, no key file for the restored cluster's
/// `restore_command`, a data directory that is not empty and may not go
/// aside (a server running in it is expected: its service stops it).
fn physical_destination(
    name: &str,
    p: &crate::plan::PostgresSource,
    options: &Options,
) -> Result<Destination> {
    use crate::source::pg::{check_pgdata, ExistingPgdata, RecoveryTarget};
    let Some(dir) = &p.pgdata else {
        return Err(Error::failure(format!(
            "source {name:?} is a physical PostgreSQL backup and the plan says no `pgdata` to restore it into; nothing was changed"
        ))
        .with_hint(format!(
            "add `pgdata \"DIR\"` (the cluster's data directory) to source {name:?}, or restore it by hand: `cairn restore --at TIME --source {name} --pgdata DIR`"
        )));
    };
    if options.wal_fetch.is_none() {
        return Err(Error::usage(format!(
            "source {name:?}: the restored cluster's restore_command must open the repository, and the key is not in a file"
        ))
        .with_hint("give the plan's repository a `password-file` or `identity`, or pass --password-file/--identity"));
    }
    let asked = if options.force {
        ExistingPgdata::MoveAside
    } else {
        ExistingPgdata::Refuse
    };
    let existing = p.restore_existing_pgdata.max(asked);
    check_pgdata(dir, existing, true).map_err(|e| {
        let hint = e.hint().unwrap_or_default().to_string();
        e.with_hint(format!("source {name:?}: {hint}"))
    })?;
    Ok(Destination::Pgdata {
        dir: dir.clone(),
        url: p.url.clone(),
        at: options.at.unwrap_or(RecoveryTarget::Immediate),
        existing,
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
}
