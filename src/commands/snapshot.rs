use super::{human_bytes, open_repo, print_json};
use crate::archiver::{self, with_packer, SourceOutcome};
use crate::cli::{GlobalArgs, SnapshotArgs};
use crate::error::{Error, Kind, Result};
use crate::lock::with_lock;
use crate::repo::{FileKind, IndexFile, Snapshot, Summary, FORMAT_VERSION};
use crate::repository::{host_name, user_name, Repository};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

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
        crate::source::postgres::Target::parse(url)?;
        return Ok(Input::Postgres(url.clone()));
    }
    if let Some(brokers) = &a.kafka {
        return Ok(Input::Kafka(super::kafka_options(brokers, &a.kafka_conn)?));
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
        if name.is_empty() || name.contains('/') {
            return Err(Error::usage(format!(
                "--stdin-name {name:?} must be a plain file name"
            )));
        }
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

fn run_command(
    packer: &mut archiver::Packer,
    name: &str,
    argv: &[String],
    quiet: bool,
) -> Result<SourceOutcome> {
    let progress = crate::progress::Progress::bytes(0, quiet, "snapshot");
    let what = format!("command {:?}", argv.join(" "));
    let out = archiver::store_command_output(
        packer,
        Command::new(&argv[0]).args(&argv[1..]),
        &what,
        &progress,
    )
    .map_err(|e| {
        e.context("no snapshot was saved")
            .with_hint("check the command, its arguments and PATH")
    })?;
    progress.finish();
    archiver::stream_source(packer, name, "command", name, out.content, out.size)
}

/// Store the index for the packs written, check the sources on what was
/// stored, then store the snapshot manifest — in that order, so a snapshot
/// is only ever saved over data that is in the repository and proven.
pub fn commit(
    repo: &Repository,
    packs: Vec<crate::repo::PackEntry>,
    snapshot: &mut Snapshot,
) -> Result<crate::repo::Id> {
    snapshot.summary.bytes_added += commit_index(repo, packs)?;
    crate::source::verify_stored(repo, &snapshot.sources)
        .map_err(|e| e.context("checking the stored data failed; no snapshot was saved"))?;
    repo.write_sealed(FileKind::Snapshot, snapshot)
}

/// Store an index file for newly written packs (none when empty); returns its size.
pub fn commit_index(repo: &Repository, packs: Vec<crate::repo::PackEntry>) -> Result<u64> {
    let mut size = 0;
    if !packs.is_empty() {
        let idx = IndexFile {
            version: FORMAT_VERSION,
            packs,
        };
        let bytes = repo.key.seal(&idx)?;
        let id = crate::repo::Id::of_bytes(&bytes);
        repo.backend.write(
            &crate::backend::FileRef::new(FileKind::Index, id.to_hex()),
            &bytes,
        )?;
        size = bytes.len() as u64;
        repo.cache.add(&id.to_hex(), &idx)?;
    }
    Ok(size)
}

pub fn run(g: &GlobalArgs, a: &SnapshotArgs) -> Result<()> {
    let input = input(a)?;
    let repo = open_repo(g)?;
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    let (id, snap) = with_lock(&repo, false, "snapshot", || {
        let (outcome, stored, stats) = with_packer(&repo, |p| match &input {
            Input::Paths(paths) => archiver::archive_files(
                p,
                a.source_name.as_deref().unwrap_or("files"),
                paths,
                g.quiet,
            ),
            Input::Stdin(name) => {
                archiver::archive_stream(p, name, "stdin", name, std::io::stdin().lock(), g.quiet)
            }
            Input::Command(name, argv) => run_command(p, name, argv, g.quiet),
            Input::Postgres(url) if a.physical => crate::source::pg_physical::archive_physical(
                p,
                a.source_name.as_deref().unwrap_or("postgres"),
                url,
                g.quiet,
            ),
            Input::Postgres(url) => crate::source::postgres::archive_logical(
                p,
                a.source_name.as_deref().unwrap_or("postgres"),
                url,
                &a.database,
                g.quiet,
            ),
            Input::Kafka(opts) => crate::source::kafka::archive_kafka(
                p,
                a.source_name.as_deref().unwrap_or("kafka"),
                opts,
                &crate::source::kafka::BackupOptions {
                    topics: a.topic.clone(),
                    include_internal: a.include_internal,
                    no_messages: a.no_messages,
                },
                g.quiet,
            ),
        })?;
        let paths = match &input {
            Input::Paths(p) => p.iter().map(|p| p.display().to_string()).collect(),
            Input::Stdin(n) | Input::Command(n, _) => vec![n.clone()],
            Input::Postgres(url) => {
                let t = crate::source::postgres::Target::parse(url)?;
                vec![t.shown().to_string()]
            }
            Input::Kafka(o) => vec![format!("kafka://{}", o.brokers)],
        };
        let mut snap = Snapshot {
            version: FORMAT_VERSION,
            time,
            host: a.host.clone().unwrap_or_else(host_name),
            username: user_name(),
            tags: a.tag.clone(),
            paths,
            plan: None,
            summary: Summary {
                files: outcome.files,
                dirs: outcome.dirs,
                symlinks: outcome.symlinks,
                bytes_read: outcome.bytes_read,
                bytes_added: stored.bytes,
                chunks_total: stats.chunks_total,
                chunks_new: stats.chunks_new,
                duration_ms: 0,
            },
            sources: vec![outcome.record],
            program: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        };
        snap.summary.duration_ms = started.elapsed().as_millis() as u64;
        let id = commit(&repo, stored.packs, &mut snap)?;
        Ok((id, snap))
    })?;
    let s = &snap.summary;
    let errors: Vec<&String> = snap.sources.iter().flat_map(|s| &s.errors).collect();
    tracing::info!(snapshot = %id.short(), bytes_read = s.bytes_read, bytes_added = s.bytes_added, duration_ms = s.duration_ms, "snapshot saved");
    if g.json {
        print_json(&serde_json::json!({
            "id": id, "short_id": id.short(), "time": snap.time,
            "complete": snap.is_complete(), "errors": errors,
            "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks,
            "bytes_read": s.bytes_read, "bytes_added": s.bytes_added,
            "chunks_total": s.chunks_total, "chunks_new": s.chunks_new,
            "duration_ms": s.duration_ms,
        }))?;
    } else if !g.quiet {
        println!(
            "snapshot {} saved: {} files, {} dirs, {} symlinks; read {}, added {} in {:.1}s",
            id.short(),
            s.files,
            s.dirs,
            s.symlinks,
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_added),
            s.duration_ms as f64 / 1000.0
        );
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
