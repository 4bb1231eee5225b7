//! PostgreSQL logical backups.
//!
//! cairn shells out to PostgreSQL's own tools (`pg_dump`, `pg_dumpall`)
//! and streams their output through the chunker, so a dump never touches
//! local disk. Inside the *same* exported snapshot as the dump
//! (`pg_export_snapshot()` + `pg_dump --snapshot`), it records each table's
//! row count and a content checksum; a restore is then compared with them,
//! table by table. Credentials go to the tools through the environment
//! (`PGPASSWORD`), never on a command line or in a log.

use super::checksum::{large_objects_sum, relation_sum, relations, Proof, SumError};
use super::conn::{pg_err, tool_failure, Target};
use super::meta::{DatabaseMeta, PgMeta, TableSum, COPY_METHOD};
use super::tools::tool;
use crate::archiver::Packer;
use crate::error::{Error, Kind, Result};
use crate::progress::Progress;
use crate::repo::postgres::PgBackupKind;
use crate::repo::{Node, SourceKind};
use crate::source::{command::tail_lines, SourceOutcome};
use std::collections::{HashMap, HashSet};
use std::process::Command;

/// How pg_dump is run so that its COPY text is what `copy_sum`
/// ([`super::checksum`]) reads back from a restored table with cairn's
/// session settings ([`super::conn`]): times in UTC, bytea in hex (pg_dump
/// sets DateStyle, IntervalStyle and extra_float_digits itself).
/// Neither changes what a restore puts back: a timestamptz is read with its
/// offset, a bytea in either form.
fn dump_settings(cmd: &mut Command) {
    let mut options = std::env::var("PGOPTIONS").unwrap_or_default();
    options.push_str(" -c bytea_output=hex");
    cmd.env("PGTZ", "UTC")
        .env("PGOPTIONS", options.trim_start());
}

/// Stream a command's stdout into the repository as node `path`; a non-zero
/// exit fails with the tail of its stderr. `observe` sees every piece.
fn archive_command(
    packer: &mut Packer,
    target: &Target,
    mut cmd: Command,
    what: &str,
    path: &str,
    progress: &Progress,
    observe: impl FnMut(&[u8]),
) -> Result<Node> {
    let out = crate::source::command::store_command_output_observed(
        packer, &mut cmd, what, progress, observe,
    )
    .map_err(|e| match tool_failure(target, e) {
        e if e.kind() == Kind::Failure => {
            e.with_hint("is PostgreSQL's client installed? set CAIRN_PG_BIN to its bin directory")
        }
        e => e,
    })?;
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!("{what}: {line}");
    }
    Ok(Node::stream(path, out.size, out.content))
}

/// Databases to back up: the given ones, or every one that accepts connections.
fn databases(target: &Target, wanted: &[String]) -> Result<Vec<String>> {
    let db = target.maintenance_db();
    let mut client = target.connect(&db)?;
    let all: Vec<String> = client
        .query("SELECT datname::text FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY 1", &[])
        .map_err(|e| pg_err(target, &db, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if wanted.is_empty() {
        return Ok(all);
    }
    for w in wanted {
        if !all.contains(w) {
            return Err(Error::usage(format!(
                "database {w:?} does not exist on {}",
                target.shown()
            ))
            .with_hint(format!("its databases are: {}", all.join(", "))));
        }
    }
    Ok(wanted.to_vec())
}

/// Logical backup of a server: globals plus one custom-format dump per database.
pub fn archive_logical(
    packer: &mut Packer,
    source_name: &str,
    url: &str,
    wanted: &[String],
    quiet: bool,
) -> Result<SourceOutcome> {
    let target = Target::parse(url)?;
    let dbs = databases(&target, wanted)?;
    let progress = Progress::bytes(0, quiet, "pg_dump");
    // Each dump's new chunks are stored as deltas against the same
    // database's dump in the previous snapshot (spec/repository.md §2.3).
    let previous = packer.previous_version(source_name, SourceKind::Postgres);
    let mut nodes = Vec::new();
    let mut meta = PgMeta {
        kind: PgBackupKind::Logical,
        globals: "globals.sql".into(),
        ..Default::default()
    };
    {
        let db = target.maintenance_db();
        let mut c = target.connect(&db)?;
        let row = c
            .query_one("SELECT current_setting('server_version'), (SELECT system_identifier::text FROM pg_control_system())", &[])
            .map_err(|e| pg_err(&target, &db, e))?;
        meta.server_version = row.get(0);
        meta.system_identifier = row.get(1);
    }
    // The globals (a few KB) are dumped while the databases are: pg_dumpall
    // spends ~0.15 s starting up and checking pg_dump's version, which
    // otherwise delayed the first database's dump.
    let mut globals_cmd = tool(&target, "pg_dumpall", &target.maintenance_db());
    globals_cmd
        .args(["--globals-only", "--no-password"])
        .stdin(std::process::Stdio::null());
    let globals = std::thread::spawn(move || globals_cmd.output());
    for db in &dbs {
        let mut client = target.connect(db)?;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| pg_err(&target, db, e))?;
        let snapshot: String = tx
            .query_one("SELECT pg_export_snapshot()", &[])
            .map_err(|e| pg_err(&target, db, e))?
            .get(0);
        let path = format!("databases/{db}.dump");
        let mut cmd = tool(&target, "pg_dump", db);
        cmd.args(["--format=custom", "--compress=0", "--no-password"])
            .arg(format!("--snapshot={snapshot}"));
        dump_settings(&mut cmd);
        // Which tables' rows the dump's COPY text sums to what a restore
        // reads back (see `copy_sum`): not where the server would convert
        // that text for cairn's UTF-8 reading session, nor where a newer
        // server prints floats differently, nor an extension's
        // configuration tables (pg_dump may dump only some of their rows).
        let setup = tx
            .query_one(
                "SELECT pg_encoding_to_char(encoding)::text, current_setting('server_version_num')::int4, \
                 ARRAY(SELECT n.nspname || '.' || c.relname FROM pg_extension e \
                       CROSS JOIN LATERAL unnest(e.extconfig) AS cfg(oid) \
                       JOIN pg_class c ON c.oid = cfg.oid JOIN pg_namespace n ON n.oid = c.relnamespace)::text[] \
                 FROM pg_database WHERE datname = current_database()",
                &[],
            )
            .map_err(|e| pg_err(&target, db, e))?;
        let (encoding, version): (String, i32) = (setup.get(0), setup.get(1));
        let ext_config: HashSet<String> = setup.get::<_, Vec<String>>(2).into_iter().collect();
        let copy_sums = matches!(encoding.as_str(), "UTF8" | "SQL_ASCII") && version >= 120000;
        let in_sql = |schema: &str, name: &str, kind: &str| {
            kind != "r" || !copy_sums || ext_config.contains(&format!("{schema}.{name}"))
        };
        let (node, tables, data_offsets) = std::thread::scope(|s| {
            // Tables are summed from their rows in the dump as it streams
            // past; sequences, materialized views and large objects (which
            // the dump holds no COPY rows for), and the tables above, in
            // SQL, on a second connection in the same exported snapshot,
            // meanwhile.
            let others = s.spawn(|| -> Result<_> {
                let mut c = target.connect(db)?;
                let sums = (|| -> std::result::Result<_, SumError> {
                    c.batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                        snapshot.replace('\'', "''")
                    ))?;
                    let rels = relations(&mut c)?;
                    let mut sums = HashMap::new();
                    for (schema, name, kind) in rels.iter().filter(|r| in_sql(&r.0, &r.1, &r.2)) {
                        let sum = relation_sum(&mut c, schema.clone(), name.clone(), kind, None, Proof::Checksums)?;
                        sums.insert((schema.clone(), name.clone()), sum);
                    }
                    let large_objects = large_objects_sum(&mut c, Proof::Checksums)?;
                    Ok((rels, sums, large_objects))
                })()
                .map_err(|e| e.shown(&target, db))?;
                Ok((c, sums))
            });
            let mut scan = super::stream::StreamScan::start(copy_sums);
            let what = format!("pg_dump of {db}");
            packer.set_base_stream(previous.get(&path).cloned());
            packer.set_chunking(Some(crate::chunk::Chunking::Cdc(
                crate::chunk::delta_stream_params(packer.repo_chunker()),
            )));
            let node = archive_command(packer, &target, cmd, &what, &path, &progress, |b| {
                scan.feed(b)
            });
            packer.set_base_stream(None);
            packer.set_chunking(None);
            let from_dump = scan.finish();
            let (mut c, (rels, mut others, large_objects)) = others
                .join()
                .map_err(|_| Error::failure("the checksum thread panicked"))??;
            let node = node?;
            let (mut from_dump, data_offsets): (HashMap<_, _>, _) = match from_dump {
                Ok(Some(d)) => (
                    d.tables
                        .into_iter()
                        .map(|t| ((t.schema.clone(), t.table.clone()), t))
                        .collect(),
                    Some(d.offsets),
                ),
                Ok(None) => {
                    tracing::warn!(database = %db, "pg_dump wrote an archive version cairn does not read; summing tables in SQL instead");
                    (HashMap::new(), None)
                }
                Err(e) => {
                    tracing::warn!(database = %db, error = %e, "could not read the dump's rows; summing tables in SQL instead");
                    (HashMap::new(), None)
                }
            };
            let mut tables = Vec::new();
            for (schema, name, kind) in rels {
                let key = (schema, name);
                if let Some(t) = others.remove(&key) {
                    tables.push(t);
                } else if let Some(t) = from_dump.remove(&key) {
                    tables.push(TableSum {
                        schema: key.0,
                        name: key.1,
                        kind: "table".into(),
                        rows: t.rows,
                        checksum: super::rows::sum_hex(t.sum),
                        method: COPY_METHOD.into(),
                        columns: Some(t.columns),
                    });
                } else {
                    // A table whose rows pg_dump left out of the dump
                    // (an extension's, say): summed in SQL, same snapshot.
                    tables.push(
                        relation_sum(&mut c, key.0, key.1, &kind, None, Proof::Checksums)
                            .map_err(|e| e.shown(&target, db))?,
                    );
                }
            }
            tables.extend(large_objects);
            c.batch_execute("COMMIT")
                .map_err(|e| pg_err(&target, db, e))?;
            Ok::<_, Error>((node, tables, data_offsets))
        })?;
        let size: i64 = tx
            .query_one("SELECT pg_database_size(current_database())", &[])
            .map_err(|e| pg_err(&target, db, e))?
            .get(0);
        tx.commit().map_err(|e| pg_err(&target, db, e))?;
        tracing::info!(database = %db, bytes = node.size, tables = tables.len(), "dumped database");
        meta.databases.push(DatabaseMeta {
            name: db.clone(),
            size_bytes: size,
            dump: path,
            tables,
            data_offsets,
        });
        nodes.push(node);
    }
    let globals = globals
        .join()
        .map_err(|_| Error::failure("the pg_dumpall thread panicked"))?;
    nodes.insert(0, store_globals(packer, &target, globals, &progress)?);
    progress.finish();
    let meta = serde_json::to_value(&meta).map_err(|e| Error::failure(e.to_string()))?;
    crate::source::stream::source_from_nodes(packer, source_name, SourceKind::Postgres, nodes, meta)
}

/// Store the output of `pg_dumpall --globals-only` as `globals.sql`, or fail
/// as a dump does when the tool could not start or failed.
fn store_globals(
    packer: &mut Packer,
    target: &Target,
    out: std::io::Result<std::process::Output>,
    progress: &Progress,
) -> Result<Node> {
    let what = "pg_dumpall --globals-only";
    let out = out.map_err(|e| {
        Error::io(format!("starting {what}"), e)
            .with_hint("is PostgreSQL's client installed? set CAIRN_PG_BIN to its bin directory")
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(tool_failure(
            target,
            Error::failure(format!(
                "{what} failed ({}): {}",
                out.status,
                tail_lines(&stderr, 5)
            )),
        ));
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!("{what}: {line}");
    }
    let (content, size) = packer
        .add_stream(&out.stdout[..], progress)
        .map_err(|e| e.into_error(format!("storing the output of {what}")))?;
    Ok(Node::stream("globals.sql", size, content))
}
