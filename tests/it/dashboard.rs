//! The Grafana dashboard in `deploy/grafana/` (issue 30) queries only series
//! that exist: every `cairn_*` name in its PromQL is either served by a real
//! daemon's `/metrics` after a backup run of a files source, or listed in
//! `spec/logging.md`'s metrics table (the series that appear only with
//! physical PostgreSQL sources or after restore tests). A renamed or
//! misspelt series fails here instead of drawing an empty panel.

use crate::common::daemon::*;
use crate::common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> serde_json::Value {
    let path = root().join("deploy/grafana/cairn-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The panels, those inside rows too.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("a panels array") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every PromQL expression of the dashboard: the panels' targets' `expr`
/// and the template variables' queries.
fn queries(d: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = panels(d)
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr: {t}"))
                .to_string()
        })
        .collect();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
            out.push(q.to_string());
        }
    }
    out
}

/// The metric names a set of PromQL expressions uses.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let re = regex::Regex::new(r"cairn_[a-z_]+").unwrap();
    exprs
        .iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_string()))
        .collect()
}

/// The names in `spec/logging.md`'s `/metrics` table.
fn spec_names() -> BTreeSet<String> {
    let spec = std::fs::read_to_string(root().join("spec/logging.md")).unwrap();
    let section = spec
        .split("### `/metrics`")
        .nth(1)
        .expect("spec/logging.md has a ### `/metrics` section");
    let section = section.split("\n#").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `cairn_"))
        .map(|rest| format!("cairn_{}", rest.split('`').next().unwrap()))
        .collect()
}

/// The metric families a `/metrics` text has (its `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect()
}

/// The queried names that are neither served nor specified.
fn unknown(
    queried: &BTreeSet<String>,
    served: &BTreeSet<String>,
    specified: &BTreeSet<String>,
) -> Vec<String> {
    queried
        .iter()
        .filter(|n| !served.contains(*n) && !specified.contains(*n))
        .cloned()
        .collect()
}

/// A plan with one files source, a schedule that does not fire in a test
/// and retention that keeps what the test makes.
fn files_plan(env: &Env) -> PathBuf {
    let files = env.path("etc");
    make_sample_tree(&files);
    plan(
        env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\nschedule \"yearly\" {{\n    cron \"0 0 1 1 *\"\n}}\nretention {{\n    keep-last 5\n}}\n",
            files.display()
        ),
    )
}

#[test]
fn every_series_the_dashboard_queries_exists() {
    let queried = metric_names(&queries(&dashboard()));
    let specified = spec_names();
    assert!(
        specified.len() >= 30,
        "the spec's metrics table was not found: {specified:?}"
    );

    let _serial = serial();
    let env = Env::init();
    let p = files_plan(&env);
    let d = Served::start(&env, &p);
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    let m = d.checked_metrics();
    let served = families(&m.text);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");

    // The run is visible, so the live half of the check means something.
    for name in [
        "cairn_backup_success",
        "cairn_runs_total",
        "cairn_snapshots",
    ] {
        assert!(served.contains(name), "{name} not served:\n{}", m.text);
    }
    let missing = unknown(&queried, &served, &specified);
    assert!(
        missing.is_empty(),
        "the dashboard queries series that neither /metrics serves nor spec/logging.md lists: {missing:?}\nserved: {served:?}"
    );
    // Whatever the daemon serves is in the spec's table too.
    let unspecified: Vec<_> = served.difference(&specified).collect();
    assert!(
        unspecified.is_empty(),
        "served but not in spec/logging.md: {unspecified:?}"
    );
}

/// The check flags a name found in neither place, and only that one.
#[test]
fn a_name_neither_served_nor_specified_is_reported() {
    let exprs = vec![
        "time() - cairn_last_success_timestamp_seconds{source=~\"$source\"}".to_string(),
        "increase(cairn_runs_totl[1h])".to_string(),
        "cairn_wal_archive_lag_seconds".to_string(),
    ];
    let queried = metric_names(&exprs);
    let served: BTreeSet<String> = ["cairn_last_success_timestamp_seconds", "cairn_runs_total"]
        .map(String::from)
        .into();
    assert_eq!(
        unknown(&queried, &served, &spec_names()),
        vec!["cairn_runs_totl".to_string()]
    );
}

/// The dashboard imports into Grafana 10+ with a `DS_PROMETHEUS` input:
/// every panel and query uses that data source, ids are unique, every
/// panel but a row has a query, and every query parses as PromQL
/// (`promtool check rules`, with the dashboard's variables filled in).
#[test]
fn the_dashboard_is_importable_and_its_queries_parse() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "Grafana 10+");
    let ds = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        if p["type"] == "row" {
            continue;
        }
        let title = &p["title"];
        assert_eq!(p["datasource"], ds, "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"], ds, "{title}");
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        assert_eq!(v["datasource"], ds, "{v}");
    }

    // Each panel query as a recording rule; label_values() is Grafana's, not PromQL.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let exprs: Vec<String> = queries(&d)
        .into_iter()
        .filter(|q| !q.starts_with("label_values("))
        .collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    for (i, e) in exprs.iter().enumerate() {
        let filled = e
            .replace("$instance", ".*")
            .replace("$source", ".*")
            .replace("$__range", "1h")
            .replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::Value::String(filled)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
    {
        Err(e) => eprintln!(
            "promtool not found ({e}): skipping the PromQL check; scripts/setup installs it"
        ),
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}\n--- the rules:\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
