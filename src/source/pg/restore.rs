//! PostgreSQL logical backups, restores and proven restore tests.
//!
//! cairn shells out to PostgreSQL's own tools (`pg_dump`, `pg_dumpall`,
//! `pg_restore`, `psql`) and streams their output through the chunker, so a
//! dump never touches local disk. Inside the *same* exported snapshot as the
//! dump (`pg_export_snapshot()` + `pg_dump --snapshot`), it records each
//! table's row count and a content checksum; a restore is then compared with
//! them, table by table. Credentials go to the tools through the environment
//! (`PGPASSWORD`), never on a command line or in a log.

use crate::archiver::{tail_lines, Packer, SourceOutcome};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{Node, SourceRecord};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Settings every cairn session uses, so row text (and so checksums) does not
/// depend on the server's or the client's defaults.
const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'";

/// How pg_dump is run so that its COPY text is what [`copy_sum`] reads back
/// from a restored table with [`SESSION_SETUP`]: times in UTC, bytea in hex
/// (pg_dump sets DateStyle, IntervalStyle and extra_float_digits itself).
/// Neither changes what a restore puts back: a timestamptz is read with its
/// offset, a bytea in either form.
fn dump_settings(cmd: &mut Command) {
    let mut options = std::env::var("PGOPTIONS").unwrap_or_default();
    options.push_str(" -c bytea_output=hex");
    cmd.env("PGTZ", "UTC")
        .env("PGOPTIONS", options.trim_start());
}

/// What a logical snapshot records about the server (snapshot source metadata).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PgMeta {
    pub kind: String,
    pub server_version: String,
    pub system_identifier: String,
    /// Node holding `pg_dumpall --globals-only` (roles, tablespaces).
    pub globals: String,
    pub databases: Vec<DatabaseMeta>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DatabaseMeta {
    pub name: String,
    pub size_bytes: i64,
    /// Node holding `pg_dump --format=custom --compress=0`.
    pub dump: String,
    pub tables: Vec<TableSum>,
    /// Where the dump's data blocks are (found while it streamed), so a
    /// restore can fill in its TOC without reading it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_offsets: Option<super::archive::DataOffsets>,
}

/// Row count and order-independent content checksum of one relation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableSum {
    pub schema: String,
    pub name: String,
    /// `table`, `sequence` or `large objects`.
    pub kind: String,
    pub rows: i64,
    pub checksum: String,
    /// How rows were hashed: `copy-xxh3-128` (the sum of each row's
    /// XXH3-128 over its COPY text line, read from the dump as it streamed),
    /// `hash-record` (`hash_record_extended`, in SQL) or `md5-text` (md5 of
    /// the row's text, for types without an extended hash).
    #[serde(default = "md5_text")]
    pub method: String,
    /// [`COPY_METHOD`]: the column list of pg_dump's COPY, as it wrote it
    /// (quoted where needed); a restored table is read back in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<String>,
}

/// [`TableSum::method`] of sums taken from the rows in the dump.
pub const COPY_METHOD: &str = "copy-xxh3-128";

fn md5_text() -> String {
    "md5-text".into()
}

/// A parsed connection URL; the password stays out of every log and argv.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    shown: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let config: postgres::Config = url.parse().map_err(|e| {
            Error::usage(format!("cannot read the PostgreSQL URL: {e}"))
                .with_hint("use postgres://USER@HOST:PORT/DBNAME (put the password in PGPASSFILE or PGPASSWORD)")
        })?;
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres");
        let shown = format!("postgres://{user}@{host}:{port}");
        Ok(Target { config, shown })
    }

    /// The parsed URL (host, port, user, password).
    pub(crate) fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// For messages: no password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn with_db(&self, db: &str) -> postgres::Config {
        let mut c = self.config.clone();
        c.dbname(db);
        c
    }

    /// The database named in the URL, or `postgres`.
    pub fn maintenance_db(&self) -> String {
        self.config.get_dbname().unwrap_or("postgres").to_string()
    }

    pub fn connect(&self, db: &str) -> Result<postgres::Client> {
        let mut client = self
            .with_db(db)
            .connect(postgres::NoTls)
            .map_err(|e| {
                Error::failure(format!("cannot connect to {}/{db}: {}", self.shown, describe(&e)))
                    .with_hint("check that the server runs and accepts the user; the password comes from PGPASSWORD or PGPASSFILE")
            })?;
        client
            .batch_execute(SESSION_SETUP)
            .map_err(|e| pg_err(self, db, e))?;
        Ok(client)
    }

    /// Environment for PostgreSQL's tools (libpq variables), for database `db`.
    pub(crate) fn tool_env(&self, db: &str) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => env.push(("PGHOST", h.clone())),
            Some(postgres::config::Host::Unix(p)) => env.push(("PGHOST", p.display().to_string())),
            None => {}
        }
        if let Some(p) = self.config.get_ports().first() {
            env.push(("PGPORT", p.to_string()));
        }
        if let Some(u) = self.config.get_user() {
            env.push(("PGUSER", u.to_string()));
        }
        if let Some(pw) = self.config.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
        }
        env.push(("PGDATABASE", db.to_string()));
        env.push(("PGCONNECT_TIMEOUT", "10".into()));
        env
    }
}

pub(super) fn pg_err(t: &Target, db: &str, e: postgres::Error) -> Error {
    Error::failure(format!("{}/{db}: {}", t.shown, describe(&e)))
}

/// Why a relation's rows could not be counted or summed.
#[derive(Debug)]
pub enum SumError {
    Server(postgres::Error),
    /// Reading `COPY … TO STDOUT` failed other than with a server error.
    Copy(std::io::Error),
}

impl From<postgres::Error> for SumError {
    fn from(e: postgres::Error) -> SumError {
        SumError::Server(e)
    }
}

impl SumError {
    /// The COPY reader wraps the server's errors in `io::Error`; unwrap them.
    fn from_copy(e: std::io::Error) -> SumError {
        let kind = e.kind();
        match e
            .into_inner()
            .map(|inner| inner.downcast::<postgres::Error>())
        {
            Some(Ok(pg)) => SumError::Server(*pg),
            Some(Err(other)) => SumError::Copy(std::io::Error::new(kind, other)),
            None => SumError::Copy(kind.into()),
        }
    }

    fn shown(&self, t: &Target, db: &str) -> Error {
        Error::failure(format!("{}/{db}: {self}", t.shown))
    }
}

impl std::fmt::Display for SumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SumError::Server(e) => f.write_str(&describe(e)),
            SumError::Copy(e) => write!(f, "reading a table's rows: {e}"),
        }
    }
}

/// postgres::Error's Display says only "db error"; show the server's words.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{}: {}", d.severity(), d.message());
            if let Some(detail) = d.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// Directory of PostgreSQL's programs: `CAIRN_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else PATH.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CAIRN_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_dump").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

pub fn pg_tool(name: &str) -> PathBuf {
    match pg_bin_dir() {
        Some(d) if d.join(name).exists() => d.join(name),
        _ => PathBuf::from(name),
    }
}

fn tool(target: &Target, name: &str, db: &str) -> Command {
    let mut c = Command::new(pg_tool(name));
    c.envs(target.tool_env(db)).env_remove("PGSERVICE");
    c
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// How much of each relation is recomputed and compared with the backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Proof {
    /// Row counts: one `count(*)` scan, about a fifth of a checksum's cost.
    #[default]
    Counts,
    /// Row counts and content checksums (what backups record).
    Checksums,
}

/// Row counts and checksums (or only counts) of every user table and
/// sequence (and large objects when readable), in the client's current
/// transaction; relations in `skip` (schema, name) were proven already and
/// are left out.
pub fn table_sums<C: postgres::GenericClient>(
    client: &mut C,
    expected: Option<&[TableSum]>,
    skip: &HashSet<(String, String)>,
    proof: Proof,
) -> std::result::Result<Vec<TableSum>, SumError> {
    let mut out = Vec::new();
    for (schema, name, kind) in relations(client)? {
        if skip.contains(&(schema.clone(), name.clone())) {
            continue;
        }
        let recorded =
            expected.and_then(|e| e.iter().find(|t| t.schema == schema && t.name == name));
        out.push(relation_sum(client, schema, name, &kind, recorded, proof)?);
    }
    out.extend(large_objects_sum(client, proof)?);
    Ok(out)
}

/// Every user table, sequence and materialized view (schema, name,
/// `relkind`), by schema and name.
fn relations<C: postgres::GenericClient>(
    client: &mut C,
) -> std::result::Result<Vec<(String, String, String)>, postgres::Error> {
    // One scan per table: compiling it (JIT) costs more than it saves.
    client.batch_execute("SET LOCAL jit = off")?;
    let rels = client.query(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'S', 'm') AND n.nspname <> 'information_schema' \
         AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2",
        &[],
    )?;
    Ok(rels
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Count and checksum of the large objects, when the user may read them all.
fn large_objects_sum<C: postgres::GenericClient>(
    client: &mut C,
    proof: Proof,
) -> std::result::Result<Option<TableSum>, postgres::Error> {
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )?
        .get(0);
    if !superuser {
        return Ok(None);
    }
    let (sql, method) = match proof {
        Proof::Counts => (
            "SELECT count(DISTINCT loid)::int8, ''::text FROM pg_largeobject",
            "count",
        ),
        Proof::Checksums => (
            "SELECT count(DISTINCT loid)::int8, coalesce(sum(('x' || substr(md5(loid::text || ':' || pageno::text || ':' || encode(data, 'hex')), 1, 16))::bit(64)::int8), 0)::text FROM pg_largeobject",
            "md5-text",
        ),
    };
    let row = client.query_one(sql, &[])?;
    Ok(Some(TableSum {
        schema: "pg_catalog".into(),
        name: "pg_largeobject".into(),
        kind: "large objects".into(),
        rows: row.get(0),
        checksum: row.get(1),
        method: method.into(),
        columns: None,
    }))
}

/// The row count and checksum of one relation (`kind` as in
/// `pg_class.relkind`), by the method recorded at backup when there is one;
/// with [`Proof::Counts`] only the row count (method `count`).
fn relation_sum<C: postgres::GenericClient>(
    client: &mut C,
    schema: String,
    name: String,
    kind: &str,
    recorded: Option<&TableSum>,
    proof: Proof,
) -> std::result::Result<TableSum, SumError> {
    let rel = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
    let from = if kind == "S" {
        rel.clone()
    } else {
        format!("ONLY {rel}")
    };
    let kind_name = match kind {
        "S" => "sequence",
        "m" => "materialized view",
        _ => "table",
    };
    if proof == Proof::Counts {
        let row = client.query_one(&format!("SELECT count(*)::int8 FROM {from} t"), &[])?;
        return Ok(TableSum {
            schema,
            name,
            kind: kind_name.into(),
            rows: row.get(0),
            checksum: String::new(),
            method: "count".into(),
            columns: None,
        });
    }
    // A sequence's state is its last value and whether it was called;
    // tables hash whole records when every column type can be hashed.
    let mut method = match (kind, recorded) {
        ("S", _) => "md5-text".to_string(),
        (_, Some(t)) => t.method.clone(),
        _ => "hash-record".to_string(),
    };
    let md5_sql = |row_text: &str| {
        format!("SELECT count(*)::int8, coalesce(sum(('x' || substr(md5({row_text}), 1, 16))::bit(64)::int8), 0)::text FROM {from} t")
    };
    if method == COPY_METHOD {
        let columns = recorded.and_then(|t| t.columns.clone());
        let (rows, checksum) = copy_sum(client, &schema, &name, columns.as_deref())?;
        return Ok(TableSum {
            schema,
            name,
            kind: kind_name.into(),
            rows,
            checksum,
            method,
            columns,
        });
    }
    let row = if method == "hash-record" {
        client.batch_execute("SAVEPOINT cairn_sum")?;
        let fast = client.query_one(
            &format!("SELECT count(*)::int8, coalesce(sum(hash_record_extended(t.*, 0)), 0)::text FROM {from} t"),
            &[],
        );
        match fast {
            Ok(r) => {
                client.batch_execute("RELEASE SAVEPOINT cairn_sum")?;
                r
            }
            Err(e) if recorded.is_none() => {
                tracing::debug!(table = %rel, error = %e, "no extended hash for a column type; hashing row text");
                client.batch_execute("ROLLBACK TO SAVEPOINT cairn_sum")?;
                method = "md5-text".into();
                client.query_one(&md5_sql("t::text"), &[])?
            }
            Err(e) => return Err(e.into()),
        }
    } else if kind == "S" {
        client.query_one(
            &md5_sql("t.last_value::text || ':' || t.is_called::text"),
            &[],
        )?
    } else {
        client.query_one(&md5_sql("t::text"), &[])?
    };
    Ok(TableSum {
        schema,
        name,
        kind: kind_name.into(),
        rows: row.get(0),
        checksum: row.get(1),
        method,
        columns: None,
    })
}

/// Row count and checksum of a table as [`COPY_METHOD`] takes them: its
/// COPY text as pg_dump writes it (the recorded `columns` in their order,
/// same settings: see [`dump_settings`]), each row hashed as it arrives.
fn copy_sum<C: postgres::GenericClient>(
    client: &mut C,
    schema: &str,
    name: &str,
    columns: Option<&str>,
) -> std::result::Result<(i64, String), SumError> {
    let names = columns
        .and_then(super::archive::split_columns)
        .ok_or_else(|| {
            SumError::Copy(std::io::Error::other(format!(
                "the column list recorded for {schema}.{name} cannot be read"
            )))
        })?;
    let columns = names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>();
    let columns = if columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", columns.join(", "))
    };
    // As pg_dump: its float digits; no search path, so that reg* values
    // (regclass, regproc, …) are written schema-qualified; no row security,
    // so that a policy fails the read instead of hiding rows. Inside a
    // savepoint, so that later sums in this transaction keep the session's
    // settings.
    client.batch_execute(
        "SAVEPOINT cairn_copy; SET LOCAL extra_float_digits = 3; SET LOCAL search_path = ''; \
         SET LOCAL row_security = off",
    )?;
    let mut rows = super::archive::RowHasher::default();
    let mut reader = client.copy_out(&format!(
        "COPY {}.{}{columns} TO STDOUT",
        quote_ident(schema),
        quote_ident(name),
    ))?;
    // Hashed where the client buffered it: no copy into a buffer of ours.
    use std::io::BufRead;
    loop {
        let piece = reader.fill_buf().map_err(SumError::from_copy)?;
        if piece.is_empty() {
            break;
        }
        let n = piece.len();
        rows.update(piece);
        reader.consume(n);
    }
    drop(reader);
    client.batch_execute("ROLLBACK TO SAVEPOINT cairn_copy; RELEASE SAVEPOINT cairn_copy")?;
    let (n, sum) = rows.finish();
    Ok((n, super::archive::sum_hex(sum)))
}

/// Stream a command's stdout into the repository as node `path`; a non-zero
/// exit fails with the tail of its stderr. `observe` sees every piece.
fn archive_command(
    packer: &mut Packer,
    mut cmd: Command,
    what: &str,
    path: &str,
    progress: &Progress,
    observe: impl FnMut(&[u8]),
) -> Result<Node> {
    let out =
        crate::archiver::store_command_output_observed(packer, &mut cmd, what, progress, observe)
            .map_err(|e| {
            e.with_hint("is PostgreSQL's client installed? set CAIRN_PG_BIN to its bin directory")
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
            return Err(
                Error::usage(format!("database {w:?} does not exist on {}", target.shown))
                    .with_hint(format!("its databases are: {}", all.join(", "))),
            );
        }
    }
    Ok(wanted.to_vec())
}

/// Chunk sizes for database dumps: the repository's scaled up to 64 KiB on
/// average (eight times the default); a repository made with a larger
/// `--chunk-size` keeps its own. A dump's changed chunks are stored as
/// deltas against its previous version, so a changed chunk costs about the
/// same whatever its size, while every chunk costs ~150 bytes of pack
/// header, index and node list (spec/postgres.md "Second-day bytes").
fn dump_chunker(repo: crate::repo::ChunkerParams) -> crate::repo::ChunkerParams {
    let factor = (65536 / repo.avg.max(1)).max(1);
    crate::repo::ChunkerParams {
        min: repo.min * factor,
        avg: repo.avg * factor,
        max: repo.max * factor,
    }
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
    let previous = packer.previous_version(source_name, "postgres");
    let mut nodes = Vec::new();
    let mut meta = PgMeta {
        kind: "logical".into(),
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
            let mut scan = super::archive::StreamScan::start(copy_sums);
            let what = format!("pg_dump of {db}");
            packer.set_base_stream(previous.get(&path).cloned());
            packer.set_chunking(Some(crate::chunk::Chunking::Cdc(dump_chunker(
                packer.repo_chunker(),
            ))));
            let node = archive_command(packer, cmd, &what, &path, &progress, |b| scan.feed(b));
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
                        checksum: super::archive::sum_hex(t.sum),
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
    nodes.insert(0, store_globals(packer, globals, &progress)?);
    progress.finish();
    let meta = serde_json::to_value(&meta).map_err(|e| Error::failure(e.to_string()))?;
    crate::archiver::source_from_nodes(packer, source_name, "postgres", nodes, meta)
}

/// Store the output of `pg_dumpall --globals-only` as `globals.sql`, or fail
/// as a dump does when the tool could not start or failed.
fn store_globals(
    packer: &mut Packer,
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
        return Err(Error::failure(format!(
            "{what} failed ({}): {}",
            out.status,
            tail_lines(&stderr, 5)
        )));
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!("{what}: {line}");
    }
    let (content, size) = packer
        .add_stream(&out.stdout[..], progress)
        .map_err(|e| e.into_error(format!("storing the output of {what}")))?;
    Ok(Node::stream("globals.sql", size, content))
}

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

pub fn metadata(source: &SourceRecord) -> Result<PgMeta> {
    serde_json::from_value(source.metadata.clone()).map_err(|e| {
        Error::integrity(format!(
            "source {} has no valid PostgreSQL metadata: {e}",
            source.name
        ))
    })
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

/// Run `cmd` with `feed` writing its stdin; its stderr, or an error with
/// its end when it fails.
fn feed_with(
    mut cmd: Command,
    what: &str,
    feed: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::failure("no stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::failure("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::failure("no stderr"))?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let fed = feed(&mut stdin);
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("waiting for {what}"), e))?;
    let _ = out_reader.join();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::failure(format!(
            "{what} failed ({status}): {}",
            tail_lines(&err, 5)
        )));
    }
    fed?;
    Ok(err)
}

fn run_tool_stdout(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    if !out.status.success() {
        return Err(Error::failure(format!(
            "{what} failed ({}): {}",
            out.status,
            tail_lines(&String::from_utf8_lossy(&out.stderr), 5)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `TABLE DATA` items of a dump that hold the tables of `tables`, by
/// dump id, read from `pg_restore --list`. A line that could name more than
/// one table (names with spaces can) is left out: that table is then
/// proven after the restore.
fn table_data_items<'a>(
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
fn restore_and_prove(
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
                Some(recorded) => super::archive::write_recorded_offsets(&path, recorded)
                    .or_else(|e| {
                        tracing::warn!(database = %d.name, error = %e, "the data offsets recorded at backup do not fit the dump; reading it for them");
                        super::archive::add_data_offsets(&path)
                    }),
                None => super::archive::add_data_offsets(&path),
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
    offsets: &super::archive::DataOffsets,
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
    let len = super::archive::table_of_contents_len(&head, offsets)?;
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

/// Restore `source` into a throwaway cluster (or the empty server at
/// `scratch_url`), compare checksums, and run `pg_amcheck` when available.
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
    let opts = RestoreOptions {
        proof: Proof::Checksums,
        ..RestoreOptions::everything(false)
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
