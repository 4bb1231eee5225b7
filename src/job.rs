//! A backup job: several sources stored into ONE snapshot.
//!
//! Each source is archived in turn through the same packer; a source that
//! fails is recorded in the snapshot with status `failed` and its error, and
//! the others go on. The snapshot is then saved as incomplete (exit 3) — or,
//! when every source failed, not saved at all and the first error returned.
//! An interruption or a failing repository aborts the whole job: nothing is
//! saved and existing snapshots are untouched.

use crate::archiver::{with_packer, Packer};
use crate::error::{Error, Kind, Result};
use crate::lock::with_lock;
use crate::repo::{
    Snapshot, SnapshotId, SourceKind, SourceRecord, SourceStatus, Summary, FORMAT_VERSION,
};
use crate::repository::{host_name, user_name, Repository};
use crate::source::kafka::{BackupOptions, KafkaOptions};
use crate::source::{command, files, stream, SourceOutcome};
use serde::Serialize;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// What one source of a job reads.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    Files(Vec<PathBuf>),
    Stdin {
        file_name: String,
    },
    Command {
        file_name: String,
        argv: Vec<String>,
    },
    Postgres {
        url: String,
        databases: Vec<String>,
        physical: bool,
        /// How long a physical backup waits for its WAL to be archived.
        archive_timeout: std::time::Duration,
    },
    Kafka {
        options: KafkaOptions,
        backup: BackupOptions,
    },
}

impl SourceSpec {
    /// What the snapshot lists as this source's path.
    fn shown(&self) -> Result<Vec<String>> {
        Ok(match self {
            SourceSpec::Files(p) => p.iter().map(|p| p.display().to_string()).collect(),
            SourceSpec::Stdin { file_name } | SourceSpec::Command { file_name, .. } => {
                vec![file_name.clone()]
            }
            SourceSpec::Postgres { url, .. } => {
                vec![crate::source::pg::Target::parse(url)?.shown().to_string()]
            }
            SourceSpec::Kafka { options, .. } => vec![format!("kafka://{}", options.brokers)],
        })
    }

    fn kind(&self) -> SourceKind {
        match self {
            SourceSpec::Files(_) => SourceKind::Files,
            SourceSpec::Stdin { .. } => SourceKind::Stdin,
            SourceSpec::Command { .. } => SourceKind::Command,
            SourceSpec::Postgres { .. } => SourceKind::Postgres,
            SourceSpec::Kafka { .. } => SourceKind::Kafka,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NamedSource {
    pub name: String,
    pub spec: SourceSpec,
}

#[derive(Clone, Debug, Default)]
pub struct JobOptions {
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// The plan file the job comes from, recorded in the snapshot.
    pub plan: Option<String>,
    pub quiet: bool,
    /// Which snapshot tells files sources which files are unchanged.
    pub parent: files::Parent,
}

/// How one source went.
#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    pub name: String,
    pub kind: SourceKind,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub bytes_read: u64,
    /// Bytes of chunks this source added to the repository, before
    /// compression (what deduplication did not find).
    pub bytes_new: u64,
    pub duration_ms: u64,
}

/// The outcome of a job whose snapshot was saved.
#[derive(Clone, Debug)]
pub struct JobReport {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    pub sources: Vec<SourceReport>,
}

fn archive(packer: &mut Packer, s: &NamedSource, opts: &JobOptions) -> Result<SourceOutcome> {
    let quiet = opts.quiet;
    match &s.spec {
        SourceSpec::Files(paths) => {
            let host = opts.host.clone().unwrap_or_else(host_name);
            let job = files::FilesJob {
                name: &s.name,
                paths,
                host: &host,
                parent: opts.parent,
                quiet,
            };
            files::archive_files(packer, &job)
        }
        SourceSpec::Stdin { file_name } => stream::archive_stream(
            packer,
            &s.name,
            SourceKind::Stdin,
            file_name,
            std::io::stdin().lock(),
            quiet,
        ),
        SourceSpec::Command { file_name, argv } => {
            let progress = crate::progress::Progress::bytes(0, quiet, "snapshot");
            let what = format!("command {:?}", argv.join(" "));
            let out = command::store_command_output(
                packer,
                Command::new(&argv[0]).args(&argv[1..]),
                &what,
                &progress,
            )
            .map_err(|e| e.with_hint("check the command, its arguments and PATH"))?;
            progress.finish();
            stream::stream_source(
                packer,
                &s.name,
                SourceKind::Command,
                file_name,
                out.content,
                out.size,
            )
        }
        SourceSpec::Postgres {
            url,
            physical: true,
            archive_timeout,
            ..
        } => crate::source::pg::archive_physical(packer, &s.name, url, *archive_timeout, quiet),
        SourceSpec::Postgres { url, databases, .. } => {
            crate::source::pg::archive_logical(packer, &s.name, url, databases, quiet)
        }
        SourceSpec::Kafka { options, backup } => {
            crate::source::kafka::archive_kafka(packer, &s.name, options, backup, quiet)
        }
    }
}

/// Run the job: every source into one snapshot (see the module docs).
pub fn run(repo: &Repository, sources: &[NamedSource], opts: &JobOptions) -> Result<JobReport> {
    let started = Instant::now();
    let time = crate::clock::now();
    let mut paths = Vec::new();
    for s in sources {
        paths.extend(s.spec.shown()?);
    }
    with_lock(repo, false, "snapshot", || {
        let mut failed_kinds = Vec::new();
        let ((records, reports, totals, verified), stored, stats) = with_packer(repo, |p| {
            let mut records = Vec::new();
            let mut verified = crate::source::Verified::new();
            let mut reports = Vec::new();
            // files, dirs, symlinks, bytes read, files unchanged
            let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64);
            for s in sources {
                let t = Instant::now();
                let new_before = p.stats.bytes_new_raw;
                tracing::info!(source = %s.name, kind = %s.spec.kind(), "backing up source");
                match archive(p, s, opts) {
                    Ok(o) => {
                        totals.0 += o.files;
                        totals.1 += o.dirs;
                        totals.2 += o.symlinks;
                        totals.3 += o.bytes_read;
                        totals.4 += o.files_unchanged;
                        let ms = t.elapsed().as_millis() as u64;
                        let bytes_new = p.stats.bytes_new_raw - new_before;
                        // At debug: `cairn serve` logs each source once the snapshot is saved.
                        tracing::debug!(source = %s.name, bytes_read = o.bytes_read, bytes_new, duration_ms = ms, "source stored");
                        reports.push(SourceReport {
                            name: s.name.clone(),
                            kind: s.spec.kind(),
                            ok: o.record.status == SourceStatus::Complete,
                            error: o.record.errors.first().cloned(),
                            bytes_read: o.bytes_read,
                            bytes_new,
                            duration_ms: ms,
                        });
                        verified.extend(o.verified.into_iter().map(|n| (s.name.clone(), n)));
                        records.push(o.record);
                    }
                    Err(e) if e.kind() == Kind::Interrupted => return Err(e),
                    Err(e) if sources.len() == 1 => return Err(e.context("no snapshot was saved")),
                    Err(e) => {
                        failed_kinds.push(e.kind());
                        let msg = e.to_string();
                        tracing::error!(source = %s.name, error = msg.as_str(), "source failed");
                        reports.push(SourceReport {
                            name: s.name.clone(),
                            kind: s.spec.kind(),
                            ok: false,
                            error: Some(msg.clone()),
                            bytes_read: 0,
                            bytes_new: p.stats.bytes_new_raw - new_before,
                            duration_ms: t.elapsed().as_millis() as u64,
                        });
                        records.push(SourceRecord {
                            name: s.name.clone(),
                            kind: s.spec.kind(),
                            status: SourceStatus::Failed,
                            errors: vec![msg],
                            tree: Vec::new(),
                            size: 0,
                            metadata: serde_json::Value::Null,
                        });
                    }
                }
            }
            Ok((records, reports, totals, verified))
        })?;
        if records.iter().all(|r| r.status == SourceStatus::Failed) {
            let first = reports
                .iter()
                .find_map(|r| r.error.clone())
                .unwrap_or_default();
            // Failing the same way (every server unreachable, say) keeps
            // that way's exit code.
            let kind = match failed_kinds.split_first() {
                Some((k, rest)) if rest.iter().all(|r| r == k) => *k,
                _ => Kind::Failure,
            };
            return Err(Error::new(
                kind,
                format!("every source failed, no snapshot was saved; the first: {first}"),
            ));
        }
        let mut snapshot = Snapshot {
            version: FORMAT_VERSION,
            time,
            host: opts.host.clone().unwrap_or_else(host_name),
            username: user_name(),
            tags: opts.tags.clone(),
            paths,
            plan: opts.plan.clone(),
            summary: Summary {
                files: totals.0,
                dirs: totals.1,
                symlinks: totals.2,
                bytes_read: totals.3,
                bytes_added: stored.bytes,
                chunks_total: stats.chunks_total,
                chunks_new: stats.chunks_new,
                duration_ms: 0,
                files_unchanged: totals.4,
            },
            sources: records,
            program: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        };
        snapshot.summary.duration_ms = started.elapsed().as_millis() as u64;
        let id = commit(repo, stored.packs, &mut snapshot, &verified)?;
        Ok(JobReport {
            id,
            snapshot,
            sources: reports,
        })
    })
}

/// Store the index for the packs written, check the sources on what was
/// stored (but the nodes in `verified`, which their source already read
/// back during the run), then store the snapshot manifest — in that order,
/// so a snapshot is only ever saved over data that is in the repository and
/// proven.
pub fn commit(
    repo: &Repository,
    packs: Vec<crate::repo::PackEntry>,
    snapshot: &mut Snapshot,
    verified: &crate::source::Verified,
) -> Result<SnapshotId> {
    snapshot.summary.bytes_added += commit_index(repo, packs)?;
    crate::source::verify_stored(repo, &snapshot.sources, verified)
        .map_err(|e| e.context("checking the stored data failed; no snapshot was saved"))?;
    repo.write_sealed::<SnapshotId>(snapshot)
}

/// Store an index file for newly written packs (none when empty); returns its size.
pub fn commit_index(repo: &Repository, packs: Vec<crate::repo::PackEntry>) -> Result<u64> {
    if packs.is_empty() {
        return Ok(0);
    }
    repo.write_index(packs).map(|(_, size)| size)
}
