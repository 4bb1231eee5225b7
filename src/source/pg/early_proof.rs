//! Proving tables while `pg_restore --jobs` is still at work: each time it
//! reports a table's data finished, that table is counted (or summed) on a
//! connection of cairn's own, while pg_restore goes on building indexes and
//! constraints, which change no rows.

use super::checksum::{relation_sum, Proof, SumError};
use super::conn::Target;
use super::meta::{DatabaseMeta, TableSum};
use super::tools::{run_tool_stdout, tool};
use crate::error::{Error, Result};
use crate::source::command::tail_lines;
use std::collections::HashMap;
use std::process::{Command, Stdio};

/// The `TABLE DATA` items of a dump that hold the tables of `tables`, by
/// dump id, read from `pg_restore --list`. A line that could name more than
/// one table (names with spaces can) is left out: that table is then
/// proven after the restore.
pub(super) fn table_data_items<'a>(
    target: &Target,
    db: &str,
    dump: &std::path::Path,
    tables: &'a [TableSum],
) -> Result<HashMap<u32, &'a TableSum>> {
    let mut cmd = tool(target, "pg_restore", db);
    cmd.arg("--list").arg(dump);
    let list = run_tool_stdout(cmd, "pg_restore --list")?;
    let mut items = HashMap::new();
    for line in list.lines() {
        let Some((id, rest)) = line.split_once("; ") else {
            continue;
        };
        let Ok(id) = id.trim().parse::<u32>() else {
            continue;
        };
        // "<catalog oid> <oid> TABLE DATA <schema> <name> <owner>"
        let Some(rest) = rest.split_once(" TABLE DATA ").map(|(_, r)| r) else {
            continue;
        };
        let mut named = tables.iter().filter(|t| {
            t.kind == "table" && rest.starts_with(&format!("{} {} ", t.schema, t.name))
        });
        if let (Some(t), None) = (named.next(), named.next()) {
            items.insert(id, t);
        }
    }
    Ok(items)
}

/// Run `pg_restore --jobs --verbose` and, each time it reports a table's
/// data finished, compute that table's checksum on a connection of our own
/// while pg_restore goes on building indexes and constraints (which change
/// no rows). Tables in `loaded` hold their data already and are proven from
/// the start. Returns what was proven; a table whose early proof could not
/// run is left to the proof after the restore.
pub(super) fn restore_and_prove(
    mut cmd: Command,
    what: &str,
    target: &Target,
    d: &DatabaseMeta,
    items: &HashMap<u32, &TableSum>,
    loaded: &[&TableSum],
    proof: Proof,
) -> Result<Vec<TableSum>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::failure("no stderr"))?;
    let (send, finished) = std::sync::mpsc::channel::<&TableSum>();
    for t in loaded {
        let _ = send.send(t);
    }
    let (status, err, proven) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            use std::io::BufRead;
            let mut text = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // "pg_restore: finished item 3345 TABLE DATA pgbench_accounts"
                let item = line
                    .split_once("finished item ")
                    .and_then(|(_, r)| r.split_once(" TABLE DATA "))
                    .and_then(|(id, _)| items.get(&id.parse::<u32>().ok()?));
                match item {
                    Some(table) => {
                        let _ = send.send(*table);
                    }
                    None => {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            }
            text
        });
        let prover = s.spawn(move || {
            let mut out = Vec::new();
            let mut client: Option<postgres::Client> = None;
            for recorded in finished {
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => match target.connect(&d.name) {
                        Ok(c) => client.insert(c),
                        Err(e) => {
                            tracing::debug!(error = %e, "no early proof; tables are proven after the restore");
                            return out;
                        }
                    },
                };
                let (schema, name) = (recorded.schema.clone(), recorded.name.clone());
                let sum = (|| -> std::result::Result<TableSum, SumError> {
                    let mut tx = c
                        .build_transaction()
                        .isolation_level(postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()?;
                    tx.batch_execute("SET LOCAL jit = off")?;
                    let t = relation_sum(&mut tx, schema, name, "r", Some(recorded), proof)?;
                    tx.commit()?;
                    Ok(t)
                })();
                match sum {
                    Ok(t) => out.push(t),
                    Err(e) => {
                        tracing::debug!(table = %recorded.name, error = %e, "early proof failed; proving after the restore");
                    }
                }
            }
            out
        });
        let status = child.wait();
        let err = reader.join().unwrap_or_default();
        let proven = prover.join().unwrap_or_default();
        (status, err, proven)
    });
    let status = status.map_err(|e| Error::io(format!("waiting for {what}"), e))?;
    if !status.success() {
        // --verbose tells of every item; the failure is in its error lines.
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        let shown = if errors.is_empty() {
            err.clone()
        } else {
            errors.join("\n")
        };
        return Err(Error::failure(format!(
            "{what} failed ({status}): {}",
            tail_lines(&shown, 5)
        )));
    }
    tracing::info!(
        database = %d.name,
        tables = proven.len(),
        "tables proven while pg_restore built indexes"
    );
    Ok(proven)
}
