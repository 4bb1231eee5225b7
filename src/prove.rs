//! Proven restores: restore a snapshot's PostgreSQL, Kafka and file sources
//! (files, stdin, command output) into a scratch environment, compare them with what was recorded at backup time
//! (a physical PostgreSQL backup: recover it to a time of its range and check it),
//! and record the outcome in the repository (`proofs/`), where a failure
//! marks the snapshot corrupted. Used by `check --restore-test` and by the
//! daemon's scheduled test.
//!
//! A test that cannot run because the scratch environment is unreachable is
//! *skipped* (with the reason), not failed: the snapshot is not to blame.

use crate::error::{Kind, Result};
use crate::repo::{Proof, Snapshot, SnapshotId, SourceStatus, FORMAT_VERSION};
use crate::repository::Repository;
use crate::source::kafka::prove::KafkaRestoreTest;
use crate::source::kafka::KafkaOptions;
use crate::source::pg::{PitrTest, RestoreTest, TestPoint};
use crate::source::{handling, Handling};
use serde::Serialize;

/// Where sources are restored for the test.
#[derive(Clone, Debug, Default)]
pub struct ScratchEnv {
    /// An empty PostgreSQL server; `None`: a throwaway cluster (initdb).
    pub postgres: Option<String>,
    /// A broker whose topics may be created; `None`: Kafka sources are not tested.
    pub kafka: Option<KafkaOptions>,
    /// Where file sources are restored (a fresh directory inside it, removed
    /// afterwards); `None`: the system's temporary directory.
    pub files_dir: Option<std::path::PathBuf>,
    /// The `restore_command` (without ` %f %p`) a restored physical
    /// cluster fetches WAL with: `cairn wal-fetch` opening this repository
    /// ([`crate::ops::access::Access::wal_fetch_command`]); `None`:
    /// physical sources are not tested.
    pub wal_fetch: Option<String>,
    /// Where in its restorable range a physical source is tested.
    pub pitr_point: TestPoint,
}

/// The restore test of one file, stdin or command source.
#[derive(Debug, Serialize)]
pub struct FilesRestoreTest {
    pub source: String,
    #[serde(flatten)]
    pub check: crate::restorer::compare::TreeCheck,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed { detail: String },
    Skipped { reason: String },
}

impl Outcome {
    /// Failed, for `note` as well: a passed or skipped outcome becomes a
    /// failure saying it, a failure says it after what it said.
    pub fn fail_with(&mut self, note: &str) {
        match self {
            Outcome::Failed { detail } => {
                detail.push_str("; ");
                detail.push_str(note);
            }
            _ => {
                *self = Outcome::Failed {
                    detail: note.to_string(),
                }
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProofReport {
    pub snapshot: SnapshotId,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub postgres: Vec<RestoreTest>,
    /// Physical PostgreSQL sources, recovered to a time and checked.
    pub physical: Vec<PitrTest>,
    pub kafka: Vec<KafkaRestoreTest>,
    pub files: Vec<FilesRestoreTest>,
    /// Sources of the snapshot not tested, with why.
    pub untested: Vec<String>,
}

fn skipped(snapshot: SnapshotId, reason: String, untested: Vec<String>) -> ProofReport {
    tracing::warn!(snapshot = %snapshot.short(), "restore test skipped: {reason}");
    ProofReport {
        snapshot,
        outcome: Outcome::Skipped { reason },
        postgres: Vec::new(),
        physical: Vec::new(),
        kafka: Vec::new(),
        files: Vec::new(),
        untested,
    }
}

/// Test the PostgreSQL and Kafka sources of snapshot `id` (only `source`
/// when given); records the outcome unless skipped.
pub fn prove(
    repo: &Repository,
    id: SnapshotId,
    snap: &Snapshot,
    source: Option<&str>,
    env: &ScratchEnv,
) -> Result<ProofReport> {
    let mut untested = Vec::new();
    let (mut pg, mut kafka, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    let mut physical = Vec::new();
    for s in snap
        .sources
        .iter()
        .filter(|s| source.is_none_or(|n| s.name == n))
    {
        let complete = s.status == SourceStatus::Complete;
        match (handling(s), complete) {
            (Handling::PgLogical, true) => pg.push(s),
            (Handling::PgLogical, false) => {}
            (Handling::Kafka, true) if env.kafka.is_some() => kafka.push(s),
            (Handling::Kafka, false) if env.kafka.is_some() => {}
            (Handling::Kafka, _) => untested.push(format!(
                "{} (kafka): no restore test for this kind without a scratch broker",
                s.name
            )),
            (Handling::PgPhysical, true) if env.wal_fetch.is_some() => physical.push(s),
            (Handling::PgPhysical, false) if env.wal_fetch.is_some() => {}
            (Handling::PgPhysical, _) => untested.push(format!(
                "{} (physical postgres): the restored cluster's restore_command needs the repository key in a file (--password-file or --identity)",
                s.name
            )),
            (Handling::Nodes, true) => nodes.push(s),
            (Handling::Nodes, false) => {}
            (Handling::Unknown, _) => untested.push(format!(
                "{} ({}): no restore test for this kind",
                s.name, s.kind
            )),
        }
    }
    if pg.is_empty() && kafka.is_empty() && nodes.is_empty() && physical.is_empty() {
        return Ok(skipped(
            id,
            "the snapshot has no source that can be restore-tested here".into(),
            untested,
        ));
    }
    // The scratch environment first: unreachable means skipped, not failed.
    let cluster;
    let pg_url = match (&env.postgres, pg.is_empty()) {
        (_, true) => None,
        (Some(url), false) => {
            let t = crate::source::pg::Target::parse(url)?;
            if let Err(e) = t.connect(&t.maintenance_db()) {
                return Ok(skipped(
                    id,
                    format!("the scratch PostgreSQL is unreachable: {e}"),
                    untested,
                ));
            }
            Some(url.clone())
        }
        (None, false) => match crate::source::pg::ScratchCluster::start(&[]) {
            Ok(c) => {
                cluster = c;
                Some(cluster.url())
            }
            Err(e) => {
                return Ok(skipped(
                    id,
                    format!("no throwaway PostgreSQL cluster could be started: {e}"),
                    untested,
                ))
            }
        },
    };
    if let (Some(k), false) = (&env.kafka, kafka.is_empty()) {
        let probe = crate::source::kafka::backup::consumer(k, "cairn-restore-test-probe")?;
        if let Err(e) =
            crate::source::kafka::client::retry(k, "reaching the scratch broker", || {
                rdkafka::consumer::Consumer::fetch_metadata(&probe, None, k.timeout)
            })
        {
            return Ok(skipped(
                id,
                format!("the scratch Kafka broker is unreachable: {e}"),
                untested,
            ));
        }
    }
    let mut report = ProofReport {
        snapshot: id,
        outcome: Outcome::Passed,
        postgres: Vec::new(),
        physical: Vec::new(),
        kafka: Vec::new(),
        files: Vec::new(),
        untested,
    };
    let mut failures = Vec::new();
    for s in &nodes {
        let parent = env.files_dir.clone().unwrap_or_else(std::env::temp_dir);
        let scratch = match tempfile::Builder::new()
            .prefix("cairn-restore-test-")
            .tempdir_in(&parent)
        {
            Ok(d) => d,
            Err(e) => {
                return Ok(skipped(
                    id,
                    format!(
                        "no scratch directory could be made in {}: {e}",
                        parent.display()
                    ),
                    report.untested,
                ))
            }
        };
        match files_test(repo, s, scratch.path()) {
            Ok(t) => {
                if !t.check.ok() {
                    failures.push(format!(
                        "{}: {} difference(s): {}",
                        s.name,
                        t.check.different,
                        t.check.differences.join("; ")
                    ));
                }
                report.files.push(t);
            }
            Err(e) if e.kind() == Kind::Interrupted => return Err(e),
            Err(e) => failures.push(format!("{}: {e}", s.name)),
        }
    }
    for s in &pg {
        match crate::source::pg::restore_test(repo, s, pg_url.as_deref()) {
            Ok(t) => {
                if !t.ok() {
                    failures.push(format!(
                        "{}: {} table(s) differ",
                        s.name,
                        t.report.mismatches().len()
                    ));
                }
                report.postgres.push(t);
            }
            Err(e) if e.kind() == Kind::Interrupted => return Err(e),
            Err(e) => failures.push(format!("{}: {e}", s.name)),
        }
    }
    for s in &physical {
        let fetch = env.wal_fetch.as_deref().unwrap_or_default();
        match crate::source::pg::pitr_test(repo, id, s, fetch, env.pitr_point) {
            Ok(t) => {
                if !t.ok() {
                    failures.push(format!("{}: {}", s.name, t.failures()));
                }
                report.physical.push(t);
            }
            Err(e) if matches!(e.kind(), Kind::Interrupted | Kind::Usage) => return Err(e),
            Err(e) if e.kind() == Kind::Unavailable => {
                return Ok(skipped(
                    id,
                    format!("no scratch cluster could recover {}: {e}", s.name),
                    report.untested,
                ))
            }
            // The hint holds the end of the server's log: why recovery failed.
            Err(e) => failures.push(match e.hint() {
                Some(h) => format!("{}: {e} ({h})", s.name),
                None => format!("{}: {e}", s.name),
            }),
        }
    }
    if let Some(k) = &env.kafka {
        for s in &kafka {
            match crate::source::kafka::prove::restore_test(repo, s, k, &id.short()) {
                Ok(t) => {
                    if !t.ok() {
                        let bad = t.partitions.iter().filter(|p| !p.ok).count();
                        failures.push(format!("{}: {bad} partition(s) differ", s.name));
                    }
                    report.kafka.push(t);
                }
                Err(e) if e.kind() == Kind::Interrupted => return Err(e),
                Err(e) if e.kind() == Kind::Unavailable => {
                    return Ok(skipped(
                        id,
                        format!("the scratch Kafka broker became unreachable: {e}"),
                        report.untested,
                    ))
                }
                Err(e) => failures.push(format!("{}: {e}", s.name)),
            }
        }
    }
    if !failures.is_empty() {
        report.outcome = Outcome::Failed {
            detail: failures.join("; "),
        };
    }
    let proof = Proof {
        version: FORMAT_VERSION,
        snapshot: id,
        time: crate::clock::now(),
        passed: failures.is_empty(),
        sources: pg
            .iter()
            .chain(physical.iter())
            .chain(kafka.iter())
            .chain(nodes.iter())
            .map(|s| s.name.clone())
            .collect(),
        detail: failures.join("; "),
        host: crate::repository::host_name(),
    };
    repo.record_proof(&proof)?;
    tracing::info!(snapshot = %id.short(), passed = proof.passed, detail = %proof.detail, "restore test recorded");
    Ok(report)
}

/// Restore file source `s` into the empty directory `scratch` and compare
/// it with its node list.
fn files_test(
    repo: &Repository,
    s: &crate::repo::SourceRecord,
    scratch: &std::path::Path,
) -> Result<FilesRestoreTest> {
    let nodes = repo.read_tree(s)?;
    crate::restorer::restore_nodes(
        repo,
        &nodes,
        scratch,
        crate::restorer::Overwrite::Never,
        true,
    )?;
    let check = crate::restorer::compare::compare_tree(repo, &nodes, scratch)?;
    tracing::info!(source = %s.name, files = check.files, bytes = check.bytes, differences = check.different, "file source restore-tested");
    Ok(FilesRestoreTest {
        source: s.name.clone(),
        check,
    })
}
