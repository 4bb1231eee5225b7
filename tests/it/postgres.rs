//! PostgreSQL logical backups through the real binary, against real,
//! throwaway PostgreSQL 15 clusters.

use crate::common::*;
use cairn::testing::ScratchCluster;

/// A new cluster with a database `app` made by `statements`.
fn cluster_with_app(statements: &str) -> ScratchCluster {
    let cluster = ScratchCluster::start(&[]).unwrap();
    sql(&cluster.url(), "postgres", "CREATE DATABASE app");
    sql(&cluster.url(), "app", statements);
    cluster
}

/// Snapshot database `app` of `source`, then start a target cluster that
/// already has a database `app`, made by `statements` (may be empty).
fn snapshot_app_and_target(env: &Env, source: &ScratchCluster, statements: &str) -> ScratchCluster {
    env.ok(&["snapshot", "--postgres", &source.url(), "--database", "app"]);
    let target = ScratchCluster::start(&[]).unwrap();
    sql(&target.url(), "postgres", "CREATE DATABASE app");
    if !statements.is_empty() {
        sql(&target.url(), "app", statements);
    }
    target
}

/// `cairn check --restore-test ARGS`: exit code, stdout, stderr.
fn restore_test(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = env.run(&[&["check", "--restore-test"], args].concat());
    let (code, err) = code_and_stderr(&out);
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

/// A database with the awkward parts: pgbench tables, jsonb, bytea, large
/// objects, sequences, a view, a function, a role with grants.
fn populate(cluster: &ScratchCluster) {
    let url = cluster.url();
    sql(&url, "postgres", "CREATE DATABASE app");
    sql(&url, "postgres", "CREATE DATABASE other");
    sql(&url, "postgres", "CREATE ROLE reporter LOGIN");
    let pgbench = cairn::testing::pg_tool("pgbench");
    let out = std::process::Command::new(pgbench)
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sql(
        &url,
        "app",
        r#"
        CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
                             doc jsonb, raw bytea, score double precision);
        INSERT INTO events (doc, raw, score)
          SELECT jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 7)),
                 decode(md5(g::text), 'hex'), g / 3.0
          FROM generate_series(1, 20000) g;
        CREATE SEQUENCE ticket_seq START 1000;
        SELECT nextval('ticket_seq') FROM generate_series(1, 17);
        CREATE VIEW recent AS SELECT id, doc FROM events WHERE id > 4000;
        CREATE FUNCTION double_it(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2';
        GRANT SELECT ON events, recent TO reporter;
        SELECT lo_from_bytea(0, convert_to(repeat('large object ', 10000), 'UTF8'));
        -- Row text that depends on settings, a dropped and a generated column:
        -- the checksums taken from the dump must match the restored rows.
        CREATE TABLE shaped (id int, gone text, twice int GENERATED ALWAYS AS (id * 2) STORED,
                             f real, iv interval, at timestamptz, b bytea, t text, rc regclass);
        ALTER TABLE shaped DROP COLUMN gone;
        INSERT INTO shaped (id, f, iv, at, b, t, rc)
          SELECT g, g / 7.0, make_interval(days => g, secs => g / 3.0),
                 '2026-11-29 12:00+05'::timestamptz + g * interval '1 hour',
                 decode(repeat('00ff', g % 5), 'hex'), 'ünïcødé ' || g || E'\ttab\nline\\',
                 'public.events'::regclass
          FROM generate_series(1, 200) g;
        ALTER DATABASE app SET timezone = 'Asia/Kolkata';
        ALTER DATABASE app SET bytea_output = 'escape';
        ALTER DATABASE app SET extra_float_digits = -2;
        "#,
    );
    // One table holds nearly all of other's data, so its restore is split
    // into sections (spec/postgres.md, "Streamed data"): objects of every
    // section, and an index on a function, built as the table's owner.
    sql(
        &url,
        "other",
        r#"
        CREATE TABLE t (k text PRIMARY KEY, v int);
        INSERT INTO t SELECT 'k' || g, g FROM generate_series(1, 3000) g;
        CREATE FUNCTION norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT upper($1)';
        ALTER TABLE t OWNER TO reporter;
        CREATE INDEX t_norm ON t (norm(k));
        CREATE TABLE child (id int PRIMARY KEY, k text NOT NULL REFERENCES t (k));
        INSERT INTO child SELECT g, 'k' || g FROM generate_series(1, 20) g;
        CREATE SEQUENCE other_seq START 50;
        SELECT nextval('other_seq');
        CREATE MATERIALIZED VIEW t_count AS SELECT count(*) AS n FROM t;
        COMMENT ON TABLE t IS 'holds most of the data';
        GRANT SELECT ON child TO reporter;
        ALTER DATABASE other SET work_mem = '8MB';
        COMMENT ON DATABASE other IS 'mostly t';
        REVOKE CONNECT ON DATABASE other FROM PUBLIC;
        GRANT CONNECT ON DATABASE other TO reporter;
        "#,
    );
    // A database whose rows pg_dump writes in LATIN1: summed in SQL.
    sql(
        &url,
        "postgres",
        "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    );
    sql(
        &url,
        "latin",
        "CREATE TABLE t (s text); INSERT INTO t VALUES ('café'), ('Ünïcode');",
    );
}

fn pg_dump_text(cluster: &ScratchCluster, db: &str) -> String {
    let out = std::process::Command::new(cairn::testing::pg_tool("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "--no-sync",
            db,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Header comments name the version and time; \restrict keys are random.
    let mut lines: Vec<&str> = Vec::new();
    let mut rows: Option<Vec<&str>> = None;
    let text = String::from_utf8(out.stdout).unwrap();
    for l in text.lines().filter(|l| {
        !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")
    }) {
        // Rows in the order of the table's pages: a restore promises the
        // rows, not where they land (plain pg_restore places them by free
        // space too), so each COPY block's rows are compared sorted.
        match rows.as_mut() {
            Some(r) if l == "\\." => {
                r.sort_unstable();
                lines.append(r);
                lines.push(l);
                rows = None;
            }
            Some(r) => r.push(l),
            None => {
                lines.push(l);
                if l.starts_with("COPY ") && l.ends_with(" FROM stdin;") {
                    rows = Some(Vec::new());
                }
            }
        }
    }
    lines.join("\n")
}

#[test]
fn logical_round_trip_restores_equal_databases() {
    let env = Env::init();
    let source = ScratchCluster::start(&[]).unwrap();
    populate(&source);
    // The index on norm() now builds only while its owner may still call
    // norm(): pg_restore grants and revokes last, so a split restore must
    // too. (pg_amcheck cannot check such an index, so only this test has it.)
    sql(
        &source.url(),
        "other",
        "REVOKE EXECUTE ON FUNCTION norm(text) FROM PUBLIC",
    );
    let snap = env.json(&["snapshot", "--postgres", &source.url()]);
    assert_eq!(snap["complete"], true);
    // Tables of the UTF-8 databases are summed from the dump's rows, the
    // LATIN1 one's in SQL; the dumps' data offsets are recorded.
    let manifest = env.json(&["cat", "snapshot", "latest"]);
    for d in manifest["sources"][0]["metadata"]["databases"]
        .as_array()
        .unwrap()
    {
        // A data block per table, each with its recorded offset.
        let tables = d["tables"].as_array().unwrap();
        let offsets = d["data_offsets"]["entries"].as_array().unwrap();
        assert!(
            offsets.len() >= tables.iter().filter(|t| t["kind"] == "table").count(),
            "{d}"
        );
        for t in tables {
            if t["kind"] == "table" {
                let copy = t["method"] == "copy-xxh3-128";
                assert_eq!(copy, d["name"] != "latin", "{}: {t}", d["name"]);
            }
        }
    }
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["sources"][0]["kind"], "postgres");
    assert!(!snaps[0]["paths"][0].as_str().unwrap().contains("password"));

    let target = ScratchCluster::start(&[]).unwrap();
    let report = env.json(&["restore", "latest", "--to", &target.url(), "--prove"]);
    let tables = report["report"]["tables"].as_array().unwrap();
    assert!(
        tables.len() >= 8,
        "pgbench tables, events, sequences, large objects: {tables:?}"
    );
    assert!(tables.iter().all(|t| t["ok"] == true), "{tables:?}");
    assert!(
        tables.iter().all(|t| t["checksum_compared"] == true),
        "--prove compares every checksum: {tables:?}"
    );
    // pgbench_accounts holds under 90% of app's data: spooled for
    // pg_restore --jobs. other's table t holds nearly all of its data:
    // streamed, then indexes, constraints and privileges from the table of
    // contents.
    let loads = report["report"]["loads"].as_array().unwrap();
    let load = |db: &str| {
        loads
            .iter()
            .find(|l| l["database"] == db)
            .unwrap_or_else(|| panic!("{db}: {loads:?}"))["load"]
            .clone()
    };
    assert_eq!(load("app"), "spooled", "{loads:?}");
    assert_eq!(load("other"), "streamed-data", "{loads:?}");
    let other = loads.iter().find(|l| l["database"] == "other").unwrap();
    assert_eq!(other["copied"], "public.t", "{loads:?}");
    for db in ["app", "other"] {
        let (a, b) = (pg_dump_text(&source, db), pg_dump_text(&target, db));
        let first_diff = a.lines().zip(b.lines()).find(|(x, y)| x != y);
        assert!(
            a == b,
            "pg_dump of {db} differs; first differing lines: {first_diff:?}"
        );
    }
    // What pg_dump of a database does not show: the materialized view's
    // rows (refreshed in the post-data section) and the database's settings,
    // comment and privileges (CONNECT revoked from PUBLIC, granted to reporter).
    assert_eq!(
        query_i64(
            &target.url(),
            "postgres",
            "SELECT count(*) FROM pg_database d WHERE datname = 'other' \
             AND shobj_description(d.oid, 'pg_database') = 'mostly t' \
             AND has_database_privilege('reporter', d.oid, 'CONNECT') \
             AND NOT EXISTS (SELECT 1 FROM aclexplode(d.datacl) a \
                             WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')"
        ),
        1
    );
    assert_eq!(
        query_i64(&target.url(), "other", "SELECT n FROM t_count"),
        3000
    );
    assert_eq!(
        query_i64(
            &target.url(),
            "postgres",
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = 'other' AND 'work_mem=8MB' = ANY (s.setconfig)"
        ),
        1
    );
    assert_eq!(
        query_i64(
            &target.url(),
            "app",
            "SELECT count(*) FROM pgbench_accounts"
        ),
        100_000
    );
    assert_eq!(
        query_i64(&target.url(), "app", "SELECT double_it(21)::int8"),
        42
    );
    assert_eq!(
        query_i64(&target.url(), "app", "SELECT last_value FROM ticket_seq"),
        1016
    );
    assert_eq!(
        query_i64(
            &target.url(),
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'reporter'"
        ),
        1
    );
    assert_eq!(
        query_i64(
            &target.url(),
            "app",
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = 'reporter'"
        ),
        2
    );
}

#[test]
fn restore_into_a_non_empty_database_is_refused_without_clean() {
    let env = Env::init();
    let source = cluster_with_app("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)");
    let target = snapshot_app_and_target(
        &env,
        &source,
        "CREATE TABLE keep_me (y int); INSERT INTO keep_me VALUES (7)",
    );
    let out = env.run(&["restore", "latest", "--to", &target.url()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not empty") && err.contains("--clean"),
        "{err}"
    );
    assert_eq!(
        query_i64(&target.url(), "app", "SELECT count(*) FROM keep_me"),
        1,
        "nothing changed"
    );

    let report = env.json(&["restore", "latest", "--to", &target.url(), "--clean"]);
    let tables = report["report"]["tables"].as_array().unwrap();
    assert!(!tables.is_empty());
    assert!(
        tables.iter().all(|t| t["ok"] == true
            && t["checksum_compared"] == false
            && t["actual_rows"] == t["expected_rows"]),
        "without --prove, row counts only: {tables:?}"
    );
    // One table holds all the data, but a --clean restore is never split
    // into sections (see spec/postgres.md, "Streamed data").
    assert_eq!(
        report["report"]["loads"][0]["load"], "spooled",
        "{}",
        report["report"]
    );
    assert_eq!(query_i64(&target.url(), "app", "SELECT count(*) FROM t"), 2);
}

#[test]
fn an_empty_existing_database_gets_the_streamed_data_restore() {
    let env = Env::init();
    let source = cluster_with_app(
        "CREATE TABLE big (id int PRIMARY KEY, body text);
         INSERT INTO big SELECT g, repeat('x', 50) || g FROM generate_series(1, 5000) g;
         CREATE TABLE small (id int PRIMARY KEY, big_id int REFERENCES big (id));
         INSERT INTO small VALUES (1, 10), (2, 20);
         CREATE INDEX big_body ON big (body);",
    );
    // The database exists and is empty: no --create, no --clean needed.
    let target = snapshot_app_and_target(&env, &source, "");
    let report = env.json(&["restore", "latest", "--to", &target.url()]);
    assert_eq!(
        report["report"]["loads"][0]["load"], "streamed-data",
        "{}",
        report["report"]
    );
    // The big table's rows went in through cairn's own COPY, and its row
    // count is the server's count of what that COPY took.
    assert_eq!(
        report["report"]["loads"][0]["copied"], "public.big",
        "{}",
        report["report"]
    );
    let tables = report["report"]["tables"].as_array().unwrap();
    assert!(tables.iter().all(|t| t["ok"] == true), "{tables:?}");
    let big = tables.iter().find(|t| t["name"] == "big").unwrap();
    assert_eq!(big["actual_rows"], 5000, "{big}");
    let (a, b) = (pg_dump_text(&source, "app"), pg_dump_text(&target, "app"));
    assert!(a == b, "pg_dump of app differs");
    assert_eq!(
        query_i64(
            &target.url(),
            "app",
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('big_pkey', 'big_body', 'small_pkey')"
        ),
        3
    );
}

#[test]
fn a_dump_failure_fails_the_snapshot_and_records_nothing() {
    let env = Env::init();
    let mut source = ScratchCluster::start(&[]).unwrap();
    let out = env.run(&[
        "snapshot",
        "--postgres",
        &source.url(),
        "--database",
        "nope",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("database \"nope\" does not exist"), "{err}");
    assert!(env.snapshot_ids().is_empty());
    let url = source.url();
    env.ok(&["snapshot", "--postgres", &url, "--database", "postgres"]);
    let saved = env.snapshot_ids();
    source.stop().unwrap();
    // A stopped server cannot be reached: exit 4, as for Kafka (issue 27),
    // to back up from and to restore into.
    for args in [
        vec!["snapshot", "--postgres", &url],
        vec!["restore", "latest", "--to", &url],
    ] {
        let (code, err) = code_and_stderr(&env.run(&args));
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(err.contains("cannot connect"), "{err}");
        assert!(err.contains("hint: check that the server runs"), "{err}");
    }
    assert_eq!(env.snapshot_ids(), saved);
}

#[test]
fn restore_test_passes_on_a_good_snapshot_while_pgbench_writes() {
    let env = Env::init();
    let source = ScratchCluster::start(&[]).unwrap();
    populate(&source);
    // Writes during the backup must not break the consistency of the dump
    // and the checksums: both come from the same exported snapshot.
    let mut bench = std::process::Command::new(cairn::testing::pg_tool("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &source.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "2",
            "-T",
            "20",
            "-n",
            "app",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    env.ok(&["snapshot", "--postgres", &source.url()]);
    let out = env.json(&["check", "--restore-test"]);
    let _ = bench.kill();
    let _ = bench.wait();
    let results = out["postgres"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert!(results[0]["report"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["ok"] == true && t["checksum_compared"] == true));
    assert_eq!(results[0]["amcheck_ran"], true);
    assert!(results[0]["amcheck"].as_array().unwrap().is_empty());
    // The passed test is recorded: `snapshots` shows when it was proven.
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["proof"]["passed"], true, "{snaps}");
    // Once the snapshot is forgotten, prune removes its proof too.
    env.ok(&["snapshot", "--postgres", &source.url()]);
    env.ok(&["forget", "--keep-last", "1"]);
    let pruned = env.json(&["prune"]);
    assert_eq!(pruned["proofs_removed"], 1, "{pruned}");
    assert!(env.json(&["snapshots"])[0]["proof"].is_null());
}

/// A scratch cluster with an empty database `app` that passes every row
/// inserted into `public.t` through the PL/pgSQL `body` of a BEFORE INSERT
/// trigger: an event trigger adds it when a restore creates the table.
fn tampering_cluster(body: &str) -> ScratchCluster {
    cluster_with_app(&format!(
        r#"
        CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN {body} END $$;
        CREATE FUNCTION add_tamper() RETURNS event_trigger LANGUAGE plpgsql AS $$
          DECLARE obj record;
          BEGIN
            FOR obj IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
              IF obj.object_identity = 'public.t' THEN
                EXECUTE 'CREATE TRIGGER tamper BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.tamper()';
              END IF;
            END LOOP;
          END $$;
        CREATE EVENT TRIGGER add_tamper ON ddl_command_end EXECUTE FUNCTION add_tamper();
        "#
    ))
}

#[test]
fn restore_test_reports_a_table_that_restores_differently() {
    let env = Env::init();
    let source = cluster_with_app("CREATE TABLE t (k int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 50) g; CREATE TABLE u (x text); INSERT INTO u VALUES ('same')");
    env.ok(&["snapshot", "--postgres", &source.url()]);

    // A scratch server that silently alters rows of table t as they are restored.
    let scratch = tampering_cluster("IF NEW.v = 7 THEN NEW.v := 700; END IF; RETURN NEW;");
    let (code, stdout, err) = restore_test(&env, &["--scratch-url", &scratch.url()]);
    assert_eq!(code, 1, "{stdout}\n{err}");
    assert!(
        stdout.contains("MISMATCH app.public.t (table)"),
        "{stdout}\n{err}"
    );
    assert!(stdout.contains("ok       app.public.u (table)"), "{stdout}");
    assert!(
        err.contains("restore test of snapshot") && err.contains("failed"),
        "{err}"
    );
}

#[test]
fn a_scratch_server_holding_the_last_tests_databases_still_proves_the_next_snapshot() {
    // A configured test environment (`--scratch-url`, the daemon's
    // `postgres-scratch`) keeps what each restore test restored. The next
    // test must replace it, not refuse it and mark a good snapshot corrupted.
    let env = Env::init();
    let source = cluster_with_app(
        "CREATE TABLE t (k int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 50) g",
    );
    env.ok(&["snapshot", "--postgres", &source.url()]);
    let scratch = ScratchCluster::start(&[]).unwrap();
    let (code, stdout, err) = restore_test(&env, &["--scratch-url", &scratch.url()]);
    assert_eq!(code, 0, "first test: {stdout}\n{err}");
    sql(
        &source.url(),
        "app",
        "UPDATE t SET v = v + 1 WHERE k <= 10; CREATE TABLE u (x int)",
    );
    env.ok(&["snapshot", "--postgres", &source.url()]);
    let (code, stdout, err) = restore_test(&env, &["--scratch-url", &scratch.url()]);
    assert_eq!(code, 0, "second test, same scratch server: {stdout}\n{err}");
    assert!(stdout.contains("ok       app.public.u (table)"), "{stdout}");
    let snaps = env.json(&["snapshots"]);
    for s in snaps.as_array().unwrap() {
        assert_ne!(s["proof"]["passed"], false, "{snaps}");
    }
}

#[test]
fn restore_reports_a_table_that_lost_rows_even_without_prove() {
    let env = Env::init();
    let source = cluster_with_app("CREATE TABLE t (k int, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 50) g; CREATE TABLE u (x text); INSERT INTO u VALUES ('same')");
    env.ok(&["snapshot", "--postgres", &source.url()]);

    // A target that silently drops one row of t as it is restored.
    let target = tampering_cluster("IF NEW.v = 7 THEN RETURN NULL; END IF; RETURN NEW;");
    let out = env.run(&[
        "restore",
        "latest",
        "--to",
        &target.url(),
        "--database",
        "app",
        "--no-globals",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("differs from the backup in: app.public.t") && !err.contains("public.u"),
        "{err}"
    );
}

#[test]
fn restore_test_proves_a_table_whose_columns_restore_in_another_order() {
    // A column added to a parent after its child was created comes last in
    // the child; restored from a dump, it comes before the child's own.
    // The checksum must follow the dump's column order, not the table's.
    let env = Env::init();
    let source = cluster_with_app(
        "CREATE TABLE parent (a int, b text); CREATE TABLE child (c int) INHERITS (parent);
         ALTER TABLE parent ADD COLUMN d text DEFAULT 'dee';
         INSERT INTO child (a, b, c) SELECT g, 'b' || g, -g FROM generate_series(1, 30) g;",
    );
    env.ok(&["snapshot", "--postgres", &source.url()]);
    let snap = env.json(&["cat", "snapshot", "latest"]);
    let tables = &snap["sources"][0]["metadata"]["databases"][0]["tables"];
    let child = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "child")
        .unwrap();
    assert_eq!(child["method"], "copy-xxh3-128", "{child}");
    assert_eq!(child["columns"], "a, b, c, d", "{child}");
    assert_eq!(child["rows"], 30, "{child}");

    let (code, stdout, err) = restore_test(&env, &[]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(
        stdout.contains("ok       app.public.child (table)"),
        "{stdout}"
    );
}

/// A day of scattered updates: the second dump's changed chunks are stored
/// as deltas against the first dump's, so the day adds a fraction of what
/// the first snapshot stored (without deltas nearly every chunk of the
/// table is new again). The second snapshot restores equal, and still does
/// after the first is forgotten and pruned, when its bases are all that
/// is left of the first; `check --read-data` passes throughout.
#[test]
fn a_day_of_scattered_updates_is_stored_as_deltas_and_survives_pruning_the_day_before() {
    let env = Env::init();
    let source = cluster_with_app(
        "CREATE TABLE acc (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
         INSERT INTO acc SELECT g, g / 10000 + 1, 0, '' FROM generate_series(1, 100000) g;",
    );
    let url = source.url();
    let first = env.json(&["snapshot", "--postgres", &url, "--database", "app"]);
    // 1% of the rows, scattered: each updated row moves to the end of the
    // (full) heap, so the dump loses a row every ~10 KB.
    sql(
        &url,
        "app",
        "UPDATE acc SET abalance = abalance + 7 WHERE aid % 100 = 37",
    );
    let second = env.json(&["snapshot", "--postgres", &url, "--database", "app"]);
    assert_adds_a_fraction(&first, &second, 3);
    let second_id = second["id"].as_str().unwrap().to_string();

    let check = |what: &str| {
        let out = env.run(&["check", "--read-data"]);
        let (code, err) = code_and_stderr(&out);
        assert_eq!(code, 0, "check --read-data {what}: {err}");
    };
    let restore_equal = || {
        let target = ScratchCluster::start(&[]).unwrap();
        let report = env.json(&["restore", &second_id, "--to", &target.url()]);
        let tables = report["report"]["tables"].as_array().unwrap();
        assert!(tables.iter().all(|t| t["ok"] == true), "{tables:?}");
        assert!(
            pg_dump_text(&source, "app") == pg_dump_text(&target, "app"),
            "pg_dump of app differs"
        );
    };
    check("after the second snapshot");
    restore_equal();

    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(env.snapshot_ids(), vec![second_id.clone()]);
    check("after pruning the first snapshot");
    restore_equal();
}

#[test]
fn a_row_refused_by_the_server_leaves_the_copied_table_empty() {
    let env = Env::init();
    let source = cluster_with_app(
        "CREATE TABLE big (id int, body text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 200000) g;
         CREATE TABLE small (id int); INSERT INTO small VALUES (1);",
    );
    // An event trigger (not a relation: the database still counts as empty)
    // gives big, as the restore creates it, a CHECK that a row three
    // quarters into its data breaks. By then both COPY connections have
    // taken batches of rows.
    let target = snapshot_app_and_target(
        &env,
        &source,
        "CREATE FUNCTION refuse() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'big')
              AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'no_150000') THEN
             ALTER TABLE public.big ADD CONSTRAINT no_150000 CHECK (id <> 150000);
           END IF;
         END $$;
         CREATE EVENT TRIGGER refuse ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
           EXECUTE FUNCTION refuse();",
    );
    let out = env.run(&["restore", "latest", "--to", &target.url(), "--jobs", "2"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no_150000") && err.contains("public.big") && err.contains("--clean"),
        "the server's reason, the table and what to do: {err}"
    );
    // Every connection's share was rolled back, not only the failing one's.
    assert_eq!(
        query_i64(&target.url(), "app", "SELECT count(*) FROM big"),
        0
    );
    assert_eq!(
        query_i64(&target.url(), "app", "SELECT count(*) FROM small"),
        1,
        "the other tables were loaded by pg_restore before"
    );
}

#[test]
fn latin1_dumps_take_the_direct_copy_unless_their_names_are_not_ascii() {
    let env = Env::init();
    let source = ScratchCluster::start(&[]).unwrap();
    let url = source.url();
    for db in ["latin", "latin_names"] {
        sql(
            &url,
            "postgres",
            &format!(
                "CREATE DATABASE {db} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ),
        );
    }
    let rows = "SELECT g, 'café Ünïcode ' || g FROM generate_series(1, 20000) g";
    sql(
        &url,
        "latin",
        &format!("CREATE TABLE big (id int PRIMARY KEY, s text); INSERT INTO big {rows};"),
    );
    sql(
        &url,
        "latin_names",
        &format!(
            "CREATE TABLE \"données\" (id int PRIMARY KEY, s text); INSERT INTO \"données\" {rows};"
        ),
    );
    env.ok(&[
        "snapshot",
        "--postgres",
        &url,
        "--database",
        "latin",
        "--database",
        "latin_names",
    ]);

    let target = ScratchCluster::start(&[]).unwrap();
    let report = env.json(&["restore", "latest", "--to", &target.url()]);
    let tables = report["report"]["tables"].as_array().unwrap();
    assert!(tables.iter().all(|t| t["ok"] == true), "{tables:?}");
    let loads = report["report"]["loads"].as_array().unwrap();
    let load = |db: &str| loads.iter().find(|l| l["database"] == db).unwrap().clone();
    // The rows are LATIN1 bytes: the COPY session says so, as pg_restore's does.
    assert_eq!(load("latin")["load"], "streamed-data", "{loads:?}");
    assert_eq!(load("latin")["copied"], "public.big", "{loads:?}");
    // A COPY statement naming "données" would be sent as UTF-8 and read as
    // LATIN1: pg_restore loads that table.
    assert_eq!(load("latin_names")["load"], "streamed-data", "{loads:?}");
    assert!(load("latin_names").get("copied").is_none(), "{loads:?}");
    for (db, table) in [("latin", "big"), ("latin_names", "\"données\"")] {
        let q = format!("SELECT count(*) FROM {table} WHERE s = 'café Ünïcode ' || id");
        assert_eq!(query_i64(&target.url(), db, &q), 20_000, "{db}");
    }
}
