//! Logical restores: a snapshot's dumps back into a server with
//! `pg_restore` (streamed; spooled for `--jobs`; or split into sections
//! around a table that holds most of the data), then every relation
//! compared with what the backup recorded.

use super::checksum::{table_sums, Proof};
use super::conn::{pg_err, Target};
use super::early_proof::{restore_and_prove, table_data_items};
use super::meta::{metadata, DatabaseMeta, TableSum};
use super::tools::{feed_with, run_tool_stdout, tool};
use crate::error::{Error, Result};
use crate::repo::{Node, SourceRecord};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

/// How to restore a logical PostgreSQL snapshot.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Replace objects in non-empty target databases.
    pub clean: bool,
    /// Only these databases (all when empty).
    pub databases: Vec<String>,
    /// `pg_restore -j`; dumps are spooled to `spool_dir` for it. 0 = stream, no spool.
    pub jobs: usize,
    pub spool_dir: Option<PathBuf>,
    /// Also restore roles and tablespaces (`globals.sql`).
    pub globals: bool,
    /// What is compared with the backup afterwards.
    pub proof: Proof,
}

impl RestoreOptions {
    /// Every database and the globals, `pg_restore -j` with one job per core.
    pub fn everything(clean: bool) -> RestoreOptions {
        RestoreOptions {
            clean,
            databases: Vec::new(),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            spool_dir: None,
            globals: true,
            proof: Proof::Counts,
        }
    }
}

/// One relation compared after a restore.
#[derive(Clone, Debug, Serialize)]
pub struct TableCheck {
    pub database: String,
    pub schema: String,
    pub name: String,
    pub kind: String,
    pub expected_rows: i64,
    pub actual_rows: Option<i64>,
    /// Whether the content checksum was compared too (not only the rows).
    pub checksum_compared: bool,
    pub ok: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    pub databases: Vec<String>,
    /// How each database's dump went into pg_restore.
    pub loads: Vec<DatabaseLoad>,
    pub tables: Vec<TableCheck>,
}

/// How one database was restored.
#[derive(Clone, Debug, Serialize)]
pub struct DatabaseLoad {
    pub database: String,
    pub load: Load,
    /// pg_restore jobs (for `streamed-data`: those building indexes and
    /// constraints; the copied table is loaded on as many connections, up
    /// to [`super::copy::MAX_CONNECTIONS`]).
    pub jobs: usize,
    /// For `streamed-data`: the table (`schema.name`) whose data cairn
    /// loaded with its own COPY, on `jobs` connections at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied: Option<String>,
}

/// How a dump goes into pg_restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// Spooled to a file, restored by `pg_restore --jobs`.
    Spooled,
    /// Streamed into one `pg_restore` (`--jobs 0`).
    Streamed,
    /// Schema and data streamed into one `pg_restore`, then indexes,
    /// constraints and privileges by `pg_restore --jobs` from the table of
    /// contents: chosen when one data block (a table's, or the large
    /// objects') holds [`STREAM_DATA_SHARE`] of the data.
    StreamedData,
}

/// Parallel restore cannot load one table's data with more than one worker.
/// When one table holds at least this share of a dump's data, spooling the
/// dump so that workers can load the rest side by side costs more than it
/// saves: at pgbench scale 50 (over 99% in one table) writing the 489 MiB spool
/// took 0.25 s and the decoding could not overlap the load. Below it, the
/// other tables' data (at least a tenth) loads in parallel.
pub const STREAM_DATA_SHARE: f64 = 0.9;

impl RestoreReport {
    pub fn mismatches(&self) -> Vec<&TableCheck> {
        self.tables.iter().filter(|t| !t.ok).collect()
    }
}

fn user_relations(client: &mut postgres::Client) -> std::result::Result<i64, postgres::Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','S','v','m','p','f') AND n.nspname <> 'information_schema' \
             AND n.nspname NOT LIKE 'pg\\_%'",
            &[],
        )?
        .get(0))
}

/// Run a PostgreSQL tool with a node's content on its stdin.
fn feed_tool(
    repo: &crate::repository::Repository,
    node: &Node,
    cmd: Command,
    what: &str,
) -> Result<String> {
    feed_with(cmd, what, |stdin| repo.copy_file(node, stdin))
}

/// Restore a logical snapshot into the server at `url`, then compare every
/// table's row count (and with [`Proof::Checksums`] its checksum) with those
/// taken at backup time.
/// Target databases that hold relations are refused, before anything
/// changes, unless `clean` is set.
pub fn restore_logical(
    repo: &crate::repository::Repository,
    source: &SourceRecord,
    url: &str,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let target = Target::parse(url)?;
    let meta = metadata(source)?;
    let nodes = repo.read_tree(source)?;
    let node = |path: &str| {
        nodes
            .iter()
            .find(|n| n.path == path)
            .ok_or_else(|| Error::integrity(format!("source {} lacks {path}", source.name)))
    };
    for d in &opts.databases {
        if !meta.databases.iter().any(|m| &m.name == d) {
            let names: Vec<&str> = meta.databases.iter().map(|m| m.name.as_str()).collect();
            return Err(Error::usage(format!("the snapshot has no database {d:?}"))
                .with_hint(format!("it has: {}", names.join(", "))));
        }
    }
    let dbs: Vec<&DatabaseMeta> = meta
        .databases
        .iter()
        .filter(|d| opts.databases.is_empty() || opts.databases.contains(&d.name))
        .collect();

    // 1. Everything needed is present and intact, before touching the server.
    let mut needed: Vec<Node> = dbs
        .iter()
        .map(|d| node(&d.dump).cloned())
        .collect::<Result<_>>()?;
    if opts.globals {
        needed.push(node(&meta.globals)?.clone());
    }
    crate::restorer::verify_before_restore(repo, &needed)?;

    // 2. Refuse non-empty targets unless --clean.
    let maint = target.maintenance_db();
    let mut admin = target.connect(&maint)?;
    let mut exists = HashMap::new();
    let mut refused = Vec::new();
    for d in &dbs {
        let found = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&d.name])
            .map_err(|e| pg_err(&target, &maint, e))?
            .is_some();
        if found {
            let n = user_relations(&mut target.connect(&d.name)?)
                .map_err(|e| pg_err(&target, &d.name, e))?;
            if n > 0 && !opts.clean {
                refused.push(format!("{} ({n} relations)", d.name));
            }
        }
        exists.insert(d.name.clone(), found);
    }
    if !refused.is_empty() {
        return Err(Error::failure(format!(
            "target database(s) on {} are not empty: {}; nothing was changed",
            target.shown(),
            refused.join(", ")
        ))
        .with_hint(
            "restore into another server or database, or pass --clean to replace their contents",
        ));
    }

    // 3. Roles and tablespaces; "already exists" is expected on a live server.
    if opts.globals {
        let mut cmd = tool(&target, "psql", &maint);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", "-"]);
        let err = feed_tool(repo, node(&meta.globals)?, cmd, "psql (globals)")?;
        for line in err.lines().filter(|l| l.contains("ERROR")) {
            if line.contains("already exists") {
                tracing::info!("globals: {line}");
            } else {
                tracing::warn!("globals: {line}");
            }
        }
    }

    // 4. Each database: create it when missing, then pg_restore.
    let spool =
        match (&opts.spool_dir, opts.jobs) {
            (_, 0) => None,
            (Some(d), _) => Some(tempfile::tempdir_in(d).map_err(|e| {
                Error::io(format!("creating a spool directory in {}", d.display()), e)
            })?),
            (None, _) => {
                Some(tempfile::tempdir().map_err(|e| Error::io("creating a spool directory", e))?)
            }
        };
    // Tables proven while pg_restore went on with indexes and constraints.
    let mut proven: HashMap<String, Vec<TableSum>> = HashMap::new();
    let mut loads = Vec::new();
    for d in &dbs {
        crate::interrupt::check()?;
        let dump = node(&d.dump)?;
        let mut cmd = tool(&target, "pg_restore", &maint);
        cmd.args(["--no-password", "--exit-on-error"]);
        if exists[&d.name] {
            cmd.arg("--dbname").arg(&d.name);
            if opts.clean {
                cmd.args(["--clean", "--if-exists"]);
            }
        } else {
            cmd.arg("--create").arg("--dbname").arg(&maint);
        }
        let what = format!("pg_restore of {}", d.name);
        // --clean drops what each section recreates; split into sections,
        // a table could not be dropped while another's foreign key (post-data)
        // still points at it, so a clean restore is never split.
        let split = match &spool {
            Some(spool) if !(exists[&d.name] && opts.clean) => {
                let create = !exists[&d.name];
                streamed_data_plan(repo, &target, &maint, d, dump, create, spool.path())
            }
            _ => None,
        };
        let mut copied = None;
        let load = if let Some(plan) = split {
            let sums = restore_streamed_data(repo, &target, d, dump, cmd, &plan, opts)?;
            proven.insert(d.name.clone(), sums);
            copied = plan.direct.map(|c| c.name());
            Load::StreamedData
        } else if let Some(spool) = &spool {
            let path = spool.path().join("dump");
            let started = std::time::Instant::now();
            crate::restorer::write_file(repo, dump, &path)?;
            tracing::info!(
                database = %d.name,
                bytes = dump.size,
                seconds = started.elapsed().as_secs_f64(),
                "spooled dump for pg_restore --jobs"
            );
            // pg_dump wrote to a pipe, so its TOC has no data offsets:
            // without them every pg_restore worker searches the file for
            // its table's data, block by block (one block per row).
            // Only a speed-up: if the archive cannot be read, pg_restore
            // still restores it (searching), and says so if it is damaged.
            let offsets = match &d.data_offsets {
                Some(recorded) => super::offsets::write_recorded_offsets(&path, recorded)
                    .or_else(|e| {
                        tracing::warn!(database = %d.name, error = %e, "the data offsets recorded at backup do not fit the dump; reading it for them");
                        super::offsets::add_data_offsets(&path)
                    }),
                None => super::offsets::add_data_offsets(&path),
            };
            match offsets {
                Ok(offsets) => tracing::info!(
                    database = %d.name,
                    recorded = offsets.recorded,
                    already = offsets.already,
                    "data offsets in the spooled dump's table of contents"
                ),
                Err(e) => tracing::warn!(
                    database = %d.name,
                    error = %e,
                    "could not add data offsets to the spooled dump; pg_restore will search it"
                ),
            }
            let items = table_data_items(&target, &maint, &path, &d.tables)?;
            cmd.arg("--jobs")
                .arg(opts.jobs.to_string())
                .arg("--verbose")
                .arg(&path);
            let sums = restore_and_prove(cmd, &what, &target, d, &items, &[], opts.proof)?;
            proven.insert(d.name.clone(), sums);
            let _ = std::fs::remove_file(&path);
            Load::Spooled
        } else {
            feed_tool(repo, dump, cmd, &what)?;
            Load::Streamed
        };
        loads.push(DatabaseLoad {
            database: d.name.clone(),
            load,
            jobs: if load == Load::Streamed { 1 } else { opts.jobs },
            copied,
        });
        tracing::info!(database = %d.name, "restored database");
    }

    // 5. Prove it: same rows, same content.
    let mut report = RestoreReport {
        databases: dbs.iter().map(|d| d.name.clone()).collect(),
        loads,
        tables: Vec::new(),
    };
    for d in &dbs {
        let mut c = target.connect(&d.name)?;
        let mut tx = c
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| pg_err(&target, &d.name, e))?;
        let mut actual = proven.remove(&d.name).unwrap_or_default();
        let skip = actual
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect();
        actual.extend(
            table_sums(&mut tx, Some(&d.tables), &skip, opts.proof)
                .map_err(|e| e.shown(&target, &d.name))?,
        );
        tx.commit().map_err(|e| pg_err(&target, &d.name, e))?;
        for t in &d.tables {
            let found = actual
                .iter()
                .find(|a| a.schema == t.schema && a.name == t.name && a.kind == t.kind);
            report.tables.push(TableCheck {
                database: d.name.clone(),
                schema: t.schema.clone(),
                name: t.name.clone(),
                kind: t.kind.clone(),
                expected_rows: t.rows,
                actual_rows: found.map(|a| a.rows),
                checksum_compared: opts.proof == Proof::Checksums,
                ok: found.is_some_and(|a| {
                    a.rows == t.rows && (opts.proof == Proof::Counts || a.checksum == t.checksum)
                }),
            });
        }
    }
    Ok(report)
}

/// How to restore database `d` split into sections ([`Load::StreamedData`]),
/// when one data block holds at least [`STREAM_DATA_SHARE`] of its data and
/// the split can be prepared in `dir`; `None` (the dump is spooled) otherwise.
fn streamed_data_plan(
    repo: &crate::repository::Repository,
    target: &Target,
    maint: &str,
    d: &DatabaseMeta,
    dump: &Node,
    create: bool,
    dir: &std::path::Path,
) -> Option<SplitPlan> {
    let offsets = d.data_offsets.as_ref()?;
    let share = offsets
        .largest_share(dump.size)
        .filter(|&share| share >= STREAM_DATA_SHARE)?;
    match split_by_sections(repo, target, maint, dump, offsets, create, dir) {
        Ok(plan) => {
            tracing::info!(
                database = %d.name,
                largest_table_share = share,
                "streaming the data: one table holds most of it; indexes and constraints with --jobs"
            );
            Some(plan)
        }
        Err(e) => {
            tracing::warn!(database = %d.name, error = %e, "cannot split the restore into sections; spooling the dump");
            None
        }
    }
}

/// The files a restore split into sections runs from (see [`Load::StreamedData`]).
struct SplitPlan {
    /// The dump's header and table of contents (the bytes before its first
    /// data block): all that the post-data section reads.
    toc: std::path::PathBuf,
    /// `pg_restore -L` list of the first pg_restore: every entry but the
    /// privileges (the sections pre-data and data are chosen by `--section`).
    first: std::path::PathBuf,
    /// `-L` list of the second: post-data entries, then the privileges.
    second: std::path::PathBuf,
    /// The dominant table's data, which cairn loads itself (left out of
    /// `first`); `None` when pg_restore loads it.
    direct: Option<super::copy::DirectCopy>,
}

/// Write the table of contents of `dump` (checked against the recorded
/// offsets) and the `-L` lists of the two pg_restores into `dir`. Nothing
/// touches the target: an error means the dump is spooled instead.
///
/// A single pg_restore grants and revokes privileges last, after indexes
/// and constraints; split, the first pg_restore would apply those of tables
/// and functions before the second builds the indexes, and an index on a
/// function whose EXECUTE is revoked from PUBLIC would then fail to build
/// as the table's owner. So privileges move to the second pg_restore, except
/// the database's own, which pg_restore applies only with `--create`
/// (`create`: the first pg_restore creates the database).
fn split_by_sections(
    repo: &crate::repository::Repository,
    target: &Target,
    maint: &str,
    dump: &Node,
    offsets: &super::offsets::DataOffsets,
    create: bool,
    dir: &std::path::Path,
) -> Result<SplitPlan> {
    let start = offsets
        .data_start()
        .ok_or_else(|| Error::integrity("the dump has no data blocks"))?;
    let mut head = Vec::new();
    repo.open_file(dump)?
        .take(start + 32)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(format!("reading the table of contents of {}", dump.path), e))?;
    let len = super::offsets::table_of_contents_len(&head, offsets)?;
    let toc = super::archive::read_table_of_contents(&head[..len])?;
    let plan = SplitPlan {
        toc: dir.join("toc"),
        first: dir.join("first.list"),
        second: dir.join("second.list"),
        direct: super::copy::DirectCopy::of(&toc, offsets, dump.size),
    };
    std::fs::write(&plan.toc, &head[..len])
        .map_err(|e| Error::io(format!("writing {}", plan.toc.display()), e))?;
    // With --create, the database's comment and privileges are restored
    // only when listed, and listed only with --create.
    let list = |args: &[&str]| {
        let mut cmd = tool(target, "pg_restore", maint);
        cmd.arg("--list").args(args).arg(&plan.toc);
        run_tool_stdout(cmd, "pg_restore --list")
    };
    let all = list(if create { &["--create"] } else { &[] })?;
    let post = list(&["--section=post-data"])?;
    let id = |line: &str| {
        line.split_once("; ")
            .and_then(|(n, _)| n.trim().parse::<u32>().ok())
    };
    let post: HashSet<u32> = post.lines().filter_map(id).collect();
    let direct = plan.direct.as_ref().map(|c| c.block.dump_id);
    let (mut first, mut second) = (String::new(), String::new());
    for line in all.lines() {
        let Some(n) = id(line) else { continue };
        if direct == Some(u64::from(n)) {
            continue;
        }
        let out = if deferred_privilege(line) || post.contains(&n) {
            &mut second
        } else {
            &mut first
        };
        out.push_str(line);
        out.push('\n');
    }
    for (path, text) in [(&plan.first, first), (&plan.second, second)] {
        std::fs::write(path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(plan)
}

/// Whether a `pg_restore --list` line ("<id>; <catalog oid> <oid> <desc>
/// <schema> <tag> <owner>") is a privileges entry (`ACL`, `DEFAULT ACL`)
/// other than the database's own ("ACL - DATABASE <name>").
fn deferred_privilege(line: &str) -> bool {
    let Some((_, rest)) = line.split_once("; ") else {
        return false;
    };
    let desc: Vec<&str> = rest.split_whitespace().skip(2).take(3).collect();
    match desc.as_slice() {
        ["ACL", "-", "DATABASE"] => false,
        ["ACL", ..] | ["DEFAULT", "ACL", ..] => true,
        _ => false,
    }
}

/// Restore a database whose data one table dominates (see [`Load::StreamedData`]):
/// stream the schema and the data into `load` (a `pg_restore` with its target
/// set), then build indexes and constraints and grant privileges with
/// `--jobs` from the table of contents, proving every table meanwhile.
fn restore_streamed_data(
    repo: &crate::repository::Repository,
    target: &Target,
    d: &DatabaseMeta,
    dump: &Node,
    mut load: Command,
    plan: &SplitPlan,
    opts: &RestoreOptions,
) -> Result<Vec<TableSum>> {
    // A parallel restore would load that table with one worker anyway.
    // Streamed, nothing is spooled and decoding overlaps the load; indexes
    // and constraints are then built in parallel from the table of
    // contents, which is all the post-data section reads.
    load.args(["--section=pre-data", "--section=data", "--use-list"])
        .arg(&plan.first);
    let started = std::time::Instant::now();
    let what = format!("pg_restore of {}", d.name);
    let mut loaded: Vec<&TableSum> = d.tables.iter().filter(|t| t.kind == "table").collect();
    let mut copied = None;
    // pg_restore reads the dump without the block cairn loads itself.
    let left_out = plan
        .direct
        .as_ref()
        .map_or(0..0, |c| c.block.start..c.block.end);
    feed_with(load, &what, |w| repo.copy_file_except(dump, left_out, w))?;
    if let Some(c) = &plan.direct {
        crate::interrupt::check()?;
        let rows =
            super::copy::copy_table_data(repo, target, d, dump, c, opts.jobs).map_err(|e| {
                e.with_hint(format!(
                    "the schema of {} is restored, but the rows of {} may not all be; \
                     restore it again with --clean",
                    d.name,
                    c.name()
                ))
            })?;
        // The server's own count of the rows it took, in a table this
        // restore created empty (no triggers or rules yet): the same
        // proof as a count(*), without scanning it again while the
        // primary key waits for its lock.
        if opts.proof == Proof::Counts {
            loaded.retain(|t| !(t.schema == c.schema && t.name == c.table));
            copied = Some(TableSum {
                schema: c.schema.clone(),
                name: c.table.clone(),
                kind: "table".into(),
                rows,
                checksum: String::new(),
                method: "copy-count".into(),
                columns: None,
            });
        }
    }
    tracing::info!(
        database = %d.name,
        bytes = dump.size,
        seconds = started.elapsed().as_secs_f64(),
        copied = plan.direct.as_ref().map(|c| c.name()),
        "schema and data streamed"
    );
    crate::interrupt::check()?;
    let mut post = tool(target, "pg_restore", &d.name);
    post.args(["--no-password", "--exit-on-error", "--use-list"])
        .arg(&plan.second)
        .arg("--dbname")
        .arg(&d.name)
        .arg("--jobs")
        .arg(opts.jobs.to_string())
        .arg(&plan.toc);
    let what = format!(
        "pg_restore of {} (indexes, constraints, privileges)",
        d.name
    );
    let mut proven =
        restore_and_prove(post, &what, target, d, &HashMap::new(), &loaded, opts.proof).map_err(
            |e| {
                e.with_hint(format!(
                "the rows of {} are restored, but not all its indexes, constraints or privileges; \
                 restore it again with --clean",
                d.name
            ))
            },
        )?;
    proven.extend(copied);
    Ok(proven)
}
