//! Restore orchestration: `cairn restore --plan` verifies the snapshot, stops
//! the plan's services (dependents first), restores its sources, and starts
//! the services again (dependencies first), waiting for each to be ready.
//! The services here are real processes: small `sh` scripts that log their
//! start, readiness and stop to an events file.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tiny service: `svc.sh NAME DIR DELAY` writes its pid, logs "start NAME",
/// becomes ready (marker file, "ready NAME") after DELAY seconds, and on
/// SIGTERM removes the marker, logs "stop NAME" and exits.
const SERVICE: &str = r#"#!/bin/sh
name=$1; dir=$2; delay=$3
echo $$ > "$dir/$name.pid"
rm -f "$dir/$name.ready"
echo "start $name" >> "$dir/events"
trap 'rm -f "$dir/$name.ready"; echo "stop $name" >> "$dir/events"; exit 0' TERM
sleep "$delay"
echo "ready $name" >> "$dir/events"
touch "$dir/$name.ready"
while :; do sleep 0.1; done
"#;

/// The services' directory; kills whatever is still running when dropped.
struct Services {
    dir: PathBuf,
}

impl Services {
    fn new(env: &Env) -> Services {
        let dir = env.path("svc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("svc.sh"), SERVICE).unwrap();
        std::fs::write(dir.join("events"), "").unwrap();
        Services { dir }
    }

    fn d(&self) -> String {
        self.dir.display().to_string()
    }

    /// The plan's `service` node for NAME.
    fn node(&self, name: &str, deps: &[&str], ready: &str, ready_timeout: &str) -> String {
        let d = self.d();
        let deps: String = deps
            .iter()
            .map(|x| format!("    depends-on \"{x}\"\n"))
            .collect();
        format!(
            r#"service "{name}" {{
    stop "kill $(cat {d}/{name}.pid) 2>/dev/null || true"
    stopped "p=$(cat {d}/{name}.pid); ! kill -0 $p 2>/dev/null || grep -q '^State:.*Z' /proc/$p/status" timeout="10s"
    start "sh {d}/svc.sh {name} {d} 1 >/dev/null 2>&1 &"
    ready "{ready}" timeout="{ready_timeout}"
{deps}}}
"#
        )
    }

    /// Start the services (in this order) and wait until each is ready.
    fn start(&self, names: &[&str]) {
        for n in names {
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "sh {d}/svc.sh {n} {d} 0 >/dev/null 2>&1 &",
                    d = self.d()
                ))
                .status()
                .unwrap();
            assert!(st.success());
            let t = Instant::now();
            while !self.dir.join(format!("{n}.ready")).exists() {
                assert!(t.elapsed() < Duration::from_secs(10), "{n} never got ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("events"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for f in {}/*.pid; do kill -9 $(cat $f) 2>/dev/null; done",
                self.d()
            ))
            .status();
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plan with a files source, a command source and web → app → db
/// (declared dependents first, so the order comes from `depends-on`).
fn setup(env: &Env, svc: &Services, app_ready: &str, app_timeout: &str) -> (PathBuf, PathBuf) {
    let files = env.path("etc");
    make_sample_tree(&files);
    let d = svc.d();
    let body = format!(
        r#"
source "conf" kind="files" {{
    path "{files}"
}}
source "version" kind="command" {{
    command "sh" "-c" "echo v1"
}}
{web}{app}{db}"#,
        files = files.display(),
        web = svc.node("web", &["app"], &format!("test -e {d}/web.ready"), "10s"),
        app = svc.node("app", &["db"], app_ready, app_timeout),
        db = svc.node("db", &[], &format!("test -e {d}/db.ready"), "10s"),
    );
    (env.write_plan(&body), files)
}

fn snapshot(env: &Env, plan: &Path) -> String {
    let out = env.run_plan(&["snapshot", "--plan", plan.to_str().unwrap(), "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn services_stop_dependents_first_and_start_dependencies_first() {
    let env = Env::init();
    let svc = Services::new(&env);
    let d = svc.d();
    let (plan, files) = setup(&env, &svc, &format!("test -e {d}/app.ready"), "10s");
    let plan = plan.to_str().unwrap();
    svc.start(&["db", "app", "web"]);
    let id = snapshot(&env, Path::new(plan));
    let root = env.path("root");
    let root_s = root.to_str().unwrap();

    // No restore point given: the plan's restore points are listed, exit 2.
    let out = env.run_plan(&["restore", "--plan", plan]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 2, "{err}");
    let list = stdout(&out);
    assert!(list.contains(&id[..8]), "{list}");
    assert!(
        list.contains("complete") && list.contains("conf, version"),
        "{list}"
    );
    assert!(err.contains("--at"), "{err}");

    // --dry-run: the ordered steps, nothing done.
    let before = svc.events();
    let out = env.run_plan(&[
        "restore",
        "--plan",
        plan,
        "latest",
        "--dry-run",
        "--target-root",
        root_s,
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let text = stdout(&out);
    let steps: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().split_once(". "))
        .filter(|(n, _)| n.parse::<usize>().is_ok())
        .map(|(_, rest)| rest.split(':').next().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            &format!("verify snapshot {}", &id[..8]) as &str,
            "stop service web",
            "stop service app",
            "stop service db",
            "restore source conf (files) below {root}, keeping files that exist (--overwrite never)",
            "start service db",
            "start service app",
            "start service web",
        ]
        .map(|s| s.replace("{root}", root_s)),
        "{text}"
    );
    assert!(
        text.contains("not restored: source version (command)"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(svc.events(), before, "a dry run touches no service");
    assert!(!root.exists(), "a dry run restores nothing");

    // The restore itself.
    let t = Instant::now();
    let out = env.run_plan(&["restore", "--plan", plan, &id[..8], "--target-root", root_s]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}\n{}", stdout(&out));
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "three services, each ready a second after its start"
    );
    let events = svc.events();
    assert_eq!(
        events[before.len()..],
        [
            "stop web",
            "stop app",
            "stop db",
            "start db",
            "ready db",
            "start app",
            "ready app",
            "start web",
            "ready web"
        ],
        "every service waited for: stopped before the next stops, ready before the next starts"
    );
    assert_same_tree(&files, &restored(&root, &files));
    assert!(
        !root.join("version").exists(),
        "a command source has no place to go back to"
    );

    // --json: the report of a run that went well; --at picks by time.
    let out = env.run_plan(&[
        "restore",
        "--plan",
        plan,
        "--at",
        "2999-01-01 00:00",
        "--target-root",
        root_s,
        "--json",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["snapshot"], id.as_str());
    let states: Vec<(&str, &str)> = r["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("web", "ready"), ("app", "ready"), ("db", "ready")]
    );
    assert_eq!(r["sources"][0]["state"], "restored");
    assert_eq!(r["sources"][1]["name"], "version");
    assert_eq!(r["sources"][1]["state"], "not-restored");

    // Usage: --plan does not mix with --target.
    let (code, _) =
        code_and_stderr(&env.run_plan(&["restore", "--plan", plan, "latest", "--target", root_s]));
    assert_eq!(code, 2);
}

#[test]
fn a_service_that_never_gets_ready_stops_the_restore() {
    let env = Env::init();
    let svc = Services::new(&env);
    let d = svc.d();
    let (plan, files) = setup(&env, &svc, &format!("test -e {d}/app.never"), "2s");
    let plan = plan.to_str().unwrap();
    svc.start(&["db", "app", "web"]);
    let id = snapshot(&env, Path::new(plan));
    let root = env.path("root");
    let before = svc.events();
    let t = Instant::now();
    let out = env.run_plan(&[
        "restore",
        "--plan",
        plan,
        &id,
        "--target-root",
        root.to_str().unwrap(),
        "--json",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "the timeout was waited for"
    );
    assert!(
        err.contains("step 7 (start service app) failed")
            && err.contains("did not succeed within 2s"),
        "{err}"
    );
    assert!(
        err.contains("web"),
        "the hint names what is left stopped: {err}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(r["failure"]["step"], 7);
    let states: Vec<(&str, &str)> = r["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("web", "stopped"), ("app", "failed"), ("db", "ready")],
        "the dependent of the failed service is not started"
    );
    let statuses: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["done", "done", "done", "done", "done", "done", "failed", "not-run"]
    );
    assert_eq!(r["sources"][0]["state"], "restored");
    assert_same_tree(&files, &restored(&root, &files));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        svc.events()[before.len()..],
        [
            "stop web",
            "stop app",
            "stop db",
            "start db",
            "ready db",
            "start app",
            "ready app"
        ],
        "web was never started again"
    );

    // Without --json the states go to stderr with the error.
    let out = env.run_plan(&[
        "restore",
        "--plan",
        plan,
        "latest",
        "--target-root",
        root.to_str().unwrap(),
        "-q",
    ]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("services: web stopped, app failed, db ready"),
        "{err}"
    );
    assert!(err.contains("sources: conf restored"), "{err}");
}

fn count(url: &str, db: &str, table: &str) -> i64 {
    let mut cfg: postgres::Config = url.parse().unwrap();
    cfg.dbname(db);
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn postgres_is_restored_in_place_while_its_service_is_stopped() {
    let env = Env::init();
    let svc = Services::new(&env);
    let d = svc.d();
    let pg = cairn::testing::ScratchCluster::start(&[]).unwrap();
    let url = pg.url();
    sql(&url, "postgres", "CREATE DATABASE shop");
    sql(
        &url,
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, item text);
         INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
    );
    let source = |physical: bool| {
        format!(
            "source \"db\" kind=\"postgres\" {{\n    url \"{url}\"\n    physical {}\n}}\n",
            if physical { "#true" } else { "#false" }
        )
    };
    let app = svc
        .node("app", &[], &format!("test -e {d}/app.ready"), "10s")
        .replace("}\n", "    sources \"db\"\n}\n");
    let plan = env.write_plan(&format!("{}{app}", source(false)));
    let plan = plan.to_str().unwrap();
    svc.start(&["app"]);
    snapshot(&env, Path::new(plan));

    // The application writes on after the backup; the restore takes it back.
    sql(
        &url,
        "shop",
        "DELETE FROM orders WHERE id > 40; INSERT INTO orders VALUES (1000, 'late');",
    );
    let before = svc.events();
    let out = env.run_plan(&["restore", "--plan", plan, "latest", "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sources"][0]["state"], "restored", "{r}");
    assert_eq!(count(&url, "shop", "orders"), 100);
    assert_eq!(
        count(
            &url,
            "shop",
            "orders WHERE id = 1000 OR item <> 'item ' || id"
        ),
        0
    );
    assert_eq!(
        svc.events()[before.len()..],
        ["stop app", "start app", "ready app"]
    );

    // The snapshot decides how a source is restored: a plan that now takes
    // physical backups still restores this logical one into its `url`
    // (physical snapshots: tests/it/physical_proof.rs).
    std::fs::write(
        plan,
        std::fs::read_to_string(plan)
            .unwrap()
            .replace("physical #false", "physical #true"),
    )
    .unwrap();
    sql(&url, "shop", "DELETE FROM orders WHERE id > 50");
    let out = env.run_plan(&["restore", "--plan", plan, "latest", "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&url, "shop", "orders"), 100);
}
