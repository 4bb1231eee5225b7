//! Issue 26, item 6: physical PostgreSQL backups in restore plans and in
//! restore tests. A plan restores a physical source into its `pgdata` to a
//! time, with the cluster's service stopped around it (its start command
//! runs the recovery); `check --restore-test` recovers a physical snapshot
//! in a scratch directory, checks it and records the proof, and a damaged
//! WAL segment in the tested range fails it and marks the snapshot
//! corrupted. Everything runs as the `postgres` user, as in
//! `postgres_pitr`.

use crate::postgres_pitr::{
    archiving, client, files_under, json, marked_base_backup, markers, server_now, switch_and_wait,
    time_of, PgEnv,
};
use cairn::testing::pg_tool;
use std::path::Path;
use std::time::Duration;

fn sleep_past_a_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// A plan file in `pg`'s directory, readable by the `postgres` user.
fn write_plan(pg: &PgEnv, body: &str) -> String {
    let plan = pg.env.write_plan(body);
    plan.to_str().unwrap().to_string()
}

/// The plan's `source` and `service` for a cluster in `data` (the
/// directory `ScratchCluster` made), its socket in `dir`, on `port`.
fn db_nodes(url: &str, data: &Path, dir: &Path, port: u16, extra: &str) -> String {
    let pg_ctl = pg_tool("pg_ctl");
    let psql = pg_tool("psql");
    let (data, dir, pg_ctl, psql) = (
        data.display(),
        dir.display(),
        pg_ctl.display(),
        psql.display(),
    );
    format!(
        r#"source "db" kind="postgres" {{
    url "{url}"
    physical #true
    pgdata "{data}"
{extra}}}
service "pg" {{
    stop "{pg_ctl} -D {data} -m fast -w stop"
    start "{pg_ctl} -D {data} -l {dir}/restored.log -w -o '-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off' start"
    ready "{psql} -h 127.0.0.1 -p {port} -U postgres -Atc 'SELECT NOT pg_is_in_recovery()' | grep -qx t" timeout="120s"
    sources "db"
}}
"#
    )
}

#[test]
fn a_plan_restores_a_physical_source_to_a_time_with_its_service_around_it() {
    let pg = PgEnv::new();
    let cluster = archiving(&pg.archive_command());
    let url = cluster.url();
    let data = cluster.data_dir();
    let mut c = client(&url);
    c.batch_execute("CREATE TABLE markers (n int PRIMARY KEY); INSERT INTO markers VALUES (1)")
        .unwrap();
    let refuse = write_plan(&pg, &db_nodes(&url, &data, cluster.dir(), cluster.port, ""));
    pg.ok(&["snapshot", "--plan", &refuse]);
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    sleep_past_a_second();
    let target = server_now(&mut c);
    sleep_past_a_second();
    c.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    let before = files_under(&pg.env.repo.join("data"));
    switch_and_wait(&mut c);
    let seg_packs: Vec<_> = files_under(&pg.env.repo.join("data"))
        .difference(&before)
        .cloned()
        .collect();
    drop(c);

    // The live data directory is refused before anything runs.
    let (code, err) =
        crate::common::code_and_stderr(&pg.run(&["restore", "--plan", &refuse, "--at", &target]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert!(err.contains("move-aside"), "{err}");
    assert_eq!(markers(&url), [1, 2, 3], "the cluster was not stopped");

    // Allowed to move it aside: the dry run says so, then the restore.
    let plan = write_plan(
        &pg,
        &db_nodes(
            &url,
            &data,
            cluster.dir(),
            cluster.port,
            "    restore-existing-pgdata \"move-aside\"\n",
        ),
    );
    // A time past what the archive reaches: refused by the verify step,
    // before the service is stopped.
    let (code, err) = crate::common::code_and_stderr(&pg.run(&[
        "restore",
        "--plan",
        &plan,
        "--at",
        "2100-01-01T00:00:00Z",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("step 1 (verify snapshot)")
            && err.contains("after the end of what can be restored"),
        "{err}"
    );
    assert_eq!(markers(&url), [1, 2, 3], "the cluster was not stopped");
    let dry = pg.ok(&["restore", "--plan", &plan, "--at", &target, "--dry-run"]);
    assert!(
        dry.contains("restore source db (physical postgres) into")
            && dry.contains("moving what is there aside")
            && dry.contains(&format!(
                "the newest base backup that ended by {}",
                target.parse::<jiff::Timestamp>().unwrap()
            )),
        "{dry}"
    );
    let steps: Vec<&str> = dry.lines().filter(|l| l.contains(". ")).collect();
    assert!(
        steps.iter().position(|l| l.contains("stop service pg"))
            < steps.iter().position(|l| l.contains("restore source db"))
            && steps.iter().position(|l| l.contains("restore source db"))
                < steps.iter().position(|l| l.contains("start service pg")),
        "{dry}"
    );
    let out = pg.ok(&["restore", "--plan", &plan, "--at", &target, "--json"]);
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["sources"][0]["state"], "restored", "{report}");
    let detail = report["sources"][0]["detail"].as_str().unwrap();
    assert!(detail.contains(".cairn-old-"), "{detail}");
    let started = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "start")
        .unwrap();
    // The start step waited for the end of recovery and read how far it
    // replayed: marker 2's commit, before the target.
    let replayed = started["detail"]
        .as_str()
        .and_then(|d| d.split("last transaction replayed ").nth(1))
        .unwrap_or_else(|| panic!("{report}"));
    let replayed: jiff::Timestamp = replayed.parse().unwrap();
    assert!(replayed <= target.parse().unwrap(), "{report}");
    // Exactly the rows committed before the target; the restored cluster
    // does not archive; the old directory is kept beside it.
    assert_eq!(markers(&url), [1, 2]);
    let mode: String = client(&url)
        .query_one("SHOW archive_mode", &[])
        .unwrap()
        .get(0);
    assert_eq!(mode, "off");
    let aside: Vec<_> = std::fs::read_dir(cluster.dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("data.cairn-old-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(aside[0].path().join("PG_VERSION").exists());
    assert!(!data.join("recovery.signal").exists());

    // A snapshot named instead of a time: the state its base backup holds.
    pg.ok(&["restore", "--plan", &plan, "latest"]);
    assert_eq!(markers(&url), [1]);
    // `--at latest`: the end of the archived WAL.
    let out = pg.ok(&["restore", "--plan", &plan, "--at", "latest"]);
    assert!(
        out.contains("recovery to the end of the archived WAL"),
        "{out}"
    );
    assert_eq!(markers(&url), [1, 2, 3]);
    let aside = std::fs::read_dir(cluster.dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("data.cairn-old-")
        })
        .count();
    assert_eq!(aside, 3, "each restore kept what it replaced");

    // A plan without `pgdata` refuses a physical snapshot before any
    // service is touched.
    let bare = write_plan(
        &pg,
        &db_nodes(&url, &data, cluster.dir(), cluster.port, "")
            .replace(&format!("    pgdata \"{}\"\n", data.display()), ""),
    );
    let (code, err) =
        crate::common::code_and_stderr(&pg.run(&["restore", "--plan", &bare, "latest"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no `pgdata`"), "{err}");
    assert_eq!(markers(&url), [1, 2, 3], "the restored cluster still runs");

    // The segment after the base backup damaged (and no spooled copy):
    // recovery to the end stops at the backup's end, and the start step
    // says archived WAL could not be fetched.
    assert!(!seg_packs.is_empty());
    for p in &seg_packs {
        let mut bytes = std::fs::read(p).unwrap();
        bytes[0] ^= 0x01;
        std::fs::write(p, bytes).unwrap();
    }
    let _ = std::fs::remove_dir_all(pg.env.cache.join("wal-prefetch"));
    let plan = write_plan(
        &pg,
        &db_nodes(
            &url,
            &data,
            cluster.dir(),
            cluster.port,
            "    restore-existing-pgdata \"move-aside\"\n",
        ),
    );
    let out = pg.run(&["restore", "--plan", &plan, "--at", "latest"]);
    let (code, err) = crate::common::code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("start service pg") && err.contains("archived WAL could not be fetched"),
        "{err}"
    );
}

#[test]
fn plan_check_validates_pgdata() {
    let pg = PgEnv::new();
    let body = |pgdata: &str, physical: &str, extra: &str| {
        format!(
            "source \"db\" kind=\"postgres\" {{\n    url \"postgres://postgres@127.0.0.1/postgres\"\n    physical {physical}\n    pgdata \"{pgdata}\"\n{extra}}}\n"
        )
    };
    let ok = write_plan(
        &pg,
        &body(
            "/tmp/cairn-no-such-cluster",
            "#true",
            "    restore-existing-pgdata \"move-aside\"\n",
        ),
    );
    pg.ok(&["plan", "check", &ok]);
    let checked = json(&pg.ok(&["plan", "check", &ok, "--json"]));
    assert_eq!(
        checked["sources"][0]["pgdata"],
        "/tmp/cairn-no-such-cluster"
    );
    assert_eq!(
        checked["sources"][0]["restore-existing-pgdata"],
        "move-aside"
    );
    for (pgdata, physical, extra, says) in [
        ("/tmp/a/b/c/main", "#true", "", "does not exist"),
        ("/tmp/main", "#false", "", "not physical"),
        ("/", "#true", "", "not a directory below /"),
        ("/tmp/x/../main", "#true", "", "contains `..`"),
        (
            "/tmp/main",
            "#true",
            "    restore-existing-pgdata \"delete\"\n",
            "unknown `restore-existing-pgdata`",
        ),
    ] {
        let plan = write_plan(&pg, &body(pgdata, physical, extra));
        let (code, err) = crate::common::code_and_stderr(&pg.run(&["plan", "check", &plan]));
        assert_eq!(code, 2, "{pgdata}: {err}");
        assert!(err.contains(says), "{pgdata}: {err}");
    }
}

#[test]
fn the_restore_test_recovers_a_physical_snapshot_and_records_its_proof() {
    let pg = PgEnv::new();
    let cluster = archiving(&pg.archive_command());
    let mut c = client(&cluster.url());
    c.batch_execute(
        "CREATE TABLE markers (n int PRIMARY KEY, pad text); CREATE INDEX ON markers (pad);
         INSERT INTO markers SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    )
    .unwrap();
    pg.ok(&["snapshot", "--postgres", &cluster.url(), "--physical"]);
    c.batch_execute(
        "INSERT INTO markers SELECT g, md5(g::text) FROM generate_series(1001, 2000) g",
    )
    .unwrap();
    sleep_past_a_second();
    c.batch_execute("INSERT INTO markers VALUES (2001, 'last')")
        .unwrap();
    switch_and_wait(&mut c);

    let out = pg.run(&["check", "--restore-test", "--json"]);
    let (code, err) = crate::common::code_and_stderr(&out);
    assert_eq!(code, 0, "{err}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(!err.contains("scratch environment"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "passed", "{report}");
    assert_eq!(report["untested"].as_array().unwrap().len(), 0, "{report}");
    let t = &report["physical"][0];
    assert_eq!(t["source"], "postgres");
    assert_eq!(t["amcheck_ran"], true, "{t}");
    let (from, to, target) = (
        time_of(&t["from"]),
        time_of(&t["to"]),
        time_of(&t["target"]),
    );
    assert!(from <= target && target <= to, "{t}");
    if let Ok(reached) = t["reached"].as_str().unwrap().parse::<jiff::Timestamp>() {
        assert!(reached <= target, "{t}");
    }

    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    assert_eq!(snaps[0]["corrupted"], false, "{snaps}");
    assert_eq!(snaps[0]["proof"]["passed"], true, "{snaps}");
    assert_eq!(
        snaps[0]["proof"]["sources"],
        serde_json::json!(["postgres"])
    );

    // To the end of the range: every archived segment replayed, the last
    // marker reached; the text output says what was proven.
    let out = pg.ok(&["check", "--restore-test", "--restore-test-at", "end"]);
    assert!(
        out.contains("source postgres: passed (recovered to") && out.contains("pg_amcheck --all"),
        "{out}"
    );
}

#[test]
fn a_damaged_wal_segment_in_the_range_fails_the_restore_test_and_marks_the_snapshot() {
    let pg = PgEnv::new();
    let (_cluster, mut c) = marked_base_backup(&pg);
    c.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    let before = files_under(&pg.env.repo.join("data"));
    switch_and_wait(&mut c);
    let seg_packs: Vec<_> = files_under(&pg.env.repo.join("data"))
        .difference(&before)
        .cloned()
        .collect();
    c.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    switch_and_wait(&mut c);
    assert!(!seg_packs.is_empty());
    // One byte of each pack that segment was stored in.
    for p in &seg_packs {
        let mut bytes = std::fs::read(p).unwrap();
        bytes[0] ^= 0x01;
        std::fs::write(p, bytes).unwrap();
    }

    let out = pg.run(&["check", "--restore-test", "--restore-test-at", "end"]);
    let (code, err) = crate::common::code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("marked corrupted"), "{err}");
    let snaps = json(&pg.ok(&["snapshots", "--json"]));
    assert_eq!(snaps[0]["corrupted"], true, "{snaps}");
    let detail = snaps[0]["proof"]["detail"].as_str().unwrap();
    assert!(detail.contains("could not be fetched"), "{detail}");

    // A point-in-time restore now passes over the corrupted base backup.
    let (code, err) = crate::common::code_and_stderr(&pg.run(&[
        "restore",
        "--at",
        "latest",
        "--source",
        "postgres",
        "--pgdata",
        pg.env.path("restored").to_str().unwrap(),
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("marked corrupted"), "{err}");
    assert!(!pg.env.path("restored").exists());
}
