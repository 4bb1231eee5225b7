//! Row counts and content checksums of a database's relations: taken at
//! backup, in the dump's exported snapshot, and again after a restore, so
//! that the two can be compared table by table. A table's rows are summed
//! by [`COPY_METHOD`] (each row's XXH3-128 over its COPY text), by
//! `hash_record_extended` in SQL, or by the md5 of each row's text for
//! types without an extended hash.

use super::conn::{describe, Target};
use super::meta::{TableSum, COPY_METHOD};
use crate::error::Error;
use std::collections::HashSet;

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

    pub(super) fn shown(&self, t: &Target, db: &str) -> Error {
        Error::failure(format!("{}/{db}: {self}", t.shown()))
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
pub(super) fn relations<C: postgres::GenericClient>(
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
pub(super) fn large_objects_sum<C: postgres::GenericClient>(
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
pub(super) fn relation_sum<C: postgres::GenericClient>(
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
/// same settings: see `dump_settings` in [`super::dump`]), each row hashed
/// as it arrives.
fn copy_sum<C: postgres::GenericClient>(
    client: &mut C,
    schema: &str,
    name: &str,
    columns: Option<&str>,
) -> std::result::Result<(i64, String), SumError> {
    let names = columns
        .and_then(super::rows::split_columns)
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
    let mut rows = super::rows::RowHasher::default();
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
    Ok((n, super::rows::sum_hex(sum)))
}
