//! Proving that a logical snapshot restores (`check --restore-test`): it is
//! restored into a throwaway cluster, compared checksum by checksum, and
//! checked by `pg_amcheck` when that is installed.

use super::checksum::Proof;
use super::conn::Target;
use super::restore::{restore_logical, RestoreOptions, RestoreReport};
use super::tools::{pg_tool, tool};
use crate::error::{Error, Result};
use crate::repo::SourceRecord;
use crate::source::command::tail_lines;
use serde::Serialize;
use std::process::Stdio;

/// Result of proving one PostgreSQL source restores.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreTest {
    pub source: String,
    pub report: RestoreReport,
    /// `pg_amcheck` findings per database (empty when all clean or unavailable).
    pub amcheck: Vec<String>,
    pub amcheck_ran: bool,
}

impl RestoreTest {
    pub fn ok(&self) -> bool {
        self.report.mismatches().is_empty() && self.amcheck.is_empty()
    }
}

/// Restore `source` into a throwaway cluster (or the scratch server at
/// `scratch_url`, replacing its copies of the snapshot's databases),
/// compare checksums, and run `pg_amcheck` when available.
pub fn restore_test(
    repo: &crate::repository::Repository,
    source: &SourceRecord,
    scratch_url: Option<&str>,
) -> Result<RestoreTest> {
    let cluster;
    let url = match scratch_url {
        Some(u) => u.to_string(),
        None => {
            cluster = super::cluster::ScratchCluster::start(&[]).map_err(|e| {
                e.context("the scratch PostgreSQL for the restore test is unavailable")
            })?;
            cluster.url()
        }
    };
    // A configured scratch server keeps what the last test restored: its
    // copies of the snapshot's databases are replaced (`--clean`), as the
    // server is there to be overwritten. Refusing them as a non-empty
    // target would fail the test and mark a good snapshot corrupted.
    let opts = RestoreOptions {
        proof: Proof::Checksums,
        ..RestoreOptions::everything(scratch_url.is_some())
    };
    let report = restore_logical(repo, source, &url, &opts)?;
    let target = Target::parse(&url)?;
    let amcheck_tool = pg_tool("pg_amcheck");
    let amcheck_ran = amcheck_tool.exists();
    let mut amcheck = Vec::new();
    if amcheck_ran {
        for db in &report.databases {
            let mut c = tool(&target, "pg_amcheck", db);
            c.args([
                "--no-password",
                "--install-missing",
                "--heapallindexed",
                "--database",
            ])
            .arg(db);
            let out = c
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::io("running pg_amcheck", e))?;
            if !out.status.success() {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                amcheck.push(format!("{db}: {}", tail_lines(&text, 5)));
            }
        }
    }
    Ok(RestoreTest {
        source: source.name.clone(),
        report,
        amcheck,
        amcheck_ran,
    })
}
