use super::{human_bytes, open_repo, print_json};
use crate::cli::{GlobalArgs, SnapshotArgs};
use crate::error::{Error, Kind, Result};
use crate::job::{JobOptions, NamedSource, SourceSpec};
use crate::source::files::Parent;
use std::path::PathBuf;

enum Input {
    Paths(Vec<PathBuf>),
    Stdin(String),
    Command(String, Vec<String>),
    Postgres(String),
    Kafka(crate::source::kafka::KafkaOptions),
}

fn input(a: &SnapshotArgs) -> Result<Input> {
    let given = [
        !a.paths.is_empty(),
        a.stdin_name.is_some() && !a.stdin_from_command,
        a.stdin_from_command,
        a.postgres.is_some(),
        a.kafka.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(Error::usage(
            "give exactly one of: paths, --stdin-name NAME, --stdin-from-command -- CMD, --postgres URL or --kafka BROKERS",
        )
        .with_hint(
            "e.g. `cairn snapshot /etc` or `pg_dumpall | cairn snapshot --stdin-name all.sql`",
        ));
    }
    if let Some(url) = &a.postgres {
        crate::source::pg::Target::parse(url)?;
        return Ok(Input::Postgres(url.clone()));
    }
    if let Some(brokers) = &a.kafka {
        return Ok(Input::Kafka(super::kafka_options(brokers, &a.kafka_conn)?));
    }
    if let Some(name) = &a.stdin_name {
        // The stream is restored as a file of this name: it must be one.
        if name.contains('/') || crate::repo::node_path::problem(name).is_some() {
            return Err(
                Error::usage(format!("--stdin-name {name:?} must be a plain file name")).with_hint(
                    "e.g. --stdin-name all.sql (no `/`, not `.` or `..`, at most 255 bytes)",
                ),
            );
        }
    }
    if a.stdin_from_command {
        let name = a.stdin_name.clone().unwrap_or_else(|| "stdin".into());
        let (cmd, args) = a
            .command
            .split_first()
            .ok_or_else(|| Error::usage("--stdin-from-command needs a command after `--`"))?;
        return Ok(Input::Command(
            name,
            std::iter::once(cmd.clone())
                .chain(args.iter().cloned())
                .collect(),
        ));
    }
    if let Some(name) = &a.stdin_name {
        return Ok(Input::Stdin(name.clone()));
    }
    let mut paths = Vec::new();
    for p in &a.paths {
        if std::fs::symlink_metadata(p).is_err() {
            return Err(Error::usage(format!("{} does not exist", p.display()))
                .with_hint("check the path; nothing was backed up"));
        }
        let abs = std::path::absolute(p)
            .map_err(|e| Error::io(format!("resolving {}", p.display()), e))?;
        paths.push(abs);
    }
    Ok(Input::Paths(paths))
}

/// The sources of this run: from the plan (all, or `--source`), or the one
/// the flags describe.
fn sources(a: &SnapshotArgs) -> Result<(Vec<NamedSource>, Option<crate::plan::Plan>)> {
    let Some(file) = &a.plan else {
        let spec = match input(a)? {
            Input::Paths(p) => SourceSpec::Files(p),
            Input::Stdin(name) => SourceSpec::Stdin { file_name: name },
            Input::Command(name, argv) => SourceSpec::Command {
                file_name: name,
                argv,
            },
            Input::Postgres(url) => SourceSpec::Postgres {
                url,
                databases: a.database.clone(),
                physical: a.physical,
                archive_timeout: super::parse_duration("--archive-timeout", &a.archive_timeout)?,
            },
            Input::Kafka(options) => SourceSpec::Kafka {
                options,
                backup: crate::source::kafka::BackupOptions {
                    topics: a.topic.clone(),
                    include_internal: a.include_internal,
                    no_messages: a.no_messages,
                },
            },
        };
        let name = a.source_name.clone().unwrap_or_else(|| match &spec {
            SourceSpec::Files(_) => "files".into(),
            SourceSpec::Stdin { file_name } | SourceSpec::Command { file_name, .. } => {
                file_name.clone()
            }
            SourceSpec::Postgres { .. } => "postgres".into(),
            SourceSpec::Kafka { .. } => "kafka".into(),
        });
        return Ok((vec![NamedSource { name, spec }], None));
    };
    let plan = super::plan::load(file)?;
    let chosen = crate::plan::job_sources(&plan, &a.source)?;
    Ok((chosen, Some(plan)))
}

pub fn run(g: &GlobalArgs, a: &SnapshotArgs) -> Result<()> {
    super::plan_excludes(
        "snapshot",
        a.plan.as_deref(),
        &[
            ("paths", !a.paths.is_empty()),
            ("--stdin-name", a.stdin_name.is_some()),
            ("--stdin-from-command", a.stdin_from_command),
            ("--postgres", a.postgres.is_some()),
            ("--kafka", a.kafka.is_some()),
            ("--source-name", a.source_name.is_some()),
        ],
    )?;
    let (sources, plan) = sources(a)?;
    let repo = match &plan {
        Some(p) => super::plan::open_repo(g, p)?,
        None => open_repo(g)?,
    };
    let mut tags = a.tag.clone();
    if let Some(p) = &plan {
        for s in &p.schedules {
            if a.source.is_empty() {
                tags.extend(s.tags.iter().cloned());
            }
        }
        tags.sort();
        tags.dedup();
    }
    let parent = match (&a.parent, a.force) {
        (_, true) => Parent::Nothing,
        (Some(spec), _) => Parent::Snapshot(repo.find_snapshot(spec)?.0),
        (None, false) => Parent::Newest,
    };
    let opts = JobOptions {
        tags,
        host: a.host.clone(),
        plan: plan.as_ref().map(crate::plan::Plan::identity),
        quiet: g.quiet,
        parent,
    };
    let report = crate::job::run(&repo, &sources, &opts)?;
    let (id, snap) = (report.id, report.snapshot);
    let s = &snap.summary;
    let errors: Vec<&String> = snap.sources.iter().flat_map(|s| &s.errors).collect();
    tracing::info!(snapshot = %id.short(), bytes_read = s.bytes_read, bytes_added = s.bytes_added, duration_ms = s.duration_ms, "snapshot saved");
    if g.json {
        print_json(&serde_json::json!({
            "id": id, "short_id": id.short(), "time": snap.time,
            "complete": snap.is_complete(), "errors": errors,
            "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks,
            "bytes_read": s.bytes_read, "bytes_added": s.bytes_added,
            "files_unchanged": s.files_unchanged,
            "chunks_total": s.chunks_total, "chunks_new": s.chunks_new,
            "duration_ms": s.duration_ms, "sources": report.sources,
        }))?;
    } else if !g.quiet {
        if report.sources.len() > 1 {
            for r in &report.sources {
                match &r.error {
                    None => println!(
                        "source {} ({}): read {}, {} new in {:.1}s",
                        r.name,
                        r.kind,
                        human_bytes(r.bytes_read),
                        human_bytes(r.bytes_new),
                        r.duration_ms as f64 / 1000.0
                    ),
                    Some(e) => println!("source {} ({}): FAILED: {e}", r.name, r.kind),
                }
            }
        }
        let unchanged = match s.files_unchanged {
            0 => String::new(),
            n => format!(" ({n} unchanged, not read)"),
        };
        println!(
            "snapshot {} saved: {} files{unchanged}, {} dirs, {} symlinks; read {}, added {} in {:.1}s",
            id.short(),
            s.files,
            s.dirs,
            s.symlinks,
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_added),
            s.duration_ms as f64 / 1000.0
        );
    }
    let failed: Vec<&str> = snap
        .sources
        .iter()
        .filter(|x| x.status == crate::repo::SourceStatus::Failed)
        .map(|x| x.name.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(Error::new(
            Kind::SourceUnreadable,
            format!(
                "snapshot {} was saved as incomplete: source(s) {} failed",
                id.short(),
                failed.join(", ")
            ),
        )
        .with_hint("the errors are listed above and in the log; the other sources were stored"));
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("unreadable: {e}");
        }
        return Err(Error::new(
            Kind::SourceUnreadable,
            format!(
                "snapshot {} was saved as incomplete: {} item(s) could not be read",
                id.short(),
                errors.len()
            ),
        )
        .with_hint("fix the permissions or paths listed above and run the snapshot again"));
    }
    Ok(())
}
