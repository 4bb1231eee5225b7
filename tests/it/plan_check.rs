//! `cairn plan check` against the real binary: one broken plan per class of
//! problem in spec/plan.md ("What `plan check` reports"), one with many
//! problems at once (all must be reported, not only the first), the
//! complete example plan, and the defaults `--json` fills in.
//!
//! Each broken plan's stderr is an insta snapshot, with the temporary
//! directory replaced by `[DIR]`. Check the snapshots for: the right
//! line:column, a message naming the problem, and a hint saying what to do.

use crate::common::{code_and_stderr, Env};

/// A minimal valid plan (the repository's password file is the one `Env` writes).
const VALID: &str = r#"
repository "repo" {
    password-file "password"
}
source "etc" kind="files" {
    path "/etc"
}
"#;

struct Checked {
    code: i32,
    stdout: String,
    /// With the temporary directory replaced by `[DIR]`.
    stderr: String,
}

/// Write `plan` as `plan.kdl` into a fresh directory (with a `password`
/// file beside it) and run `cairn plan check` on it with `args` added.
fn check_with(env: &Env, plan: &str, args: &[&str]) -> Checked {
    let file = env.path("plan.kdl");
    std::fs::write(&file, plan).unwrap();
    let mut a = vec!["plan", "check", file.to_str().unwrap()];
    a.extend_from_slice(args);
    let out = env.run(&a);
    let (code, stderr) = code_and_stderr(&out);
    let dir = env.dir.path().to_str().unwrap();
    Checked {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).replace(dir, "[DIR]"),
        stderr: stderr.replace(dir, "[DIR]"),
    }
}

/// Check a broken plan: exit code 2, nothing on stdout; returns stderr.
fn problems(plan: &str) -> String {
    let c = check_with(&Env::new(), plan, &[]);
    assert_eq!(c.code, 2, "stdout:\n{}\nstderr:\n{}", c.stdout, c.stderr);
    assert_eq!(c.stdout, "");
    c.stderr
}

#[test]
fn syntax_error() {
    insta::assert_snapshot!(problems(
        r#"repository "repo" {
    password-file "password
}
source "etc" kind="files" { path "/etc" }
"#
    ));
}

#[test]
fn syntax_error_kdl_v1_booleans() {
    insta::assert_snapshot!(problems(
        r#"repository "repo" { password-file "password"; }
source "db" kind="postgres" {
    url "postgres://backup@db/postgres"
    physical true
}
"#
    ));
}

#[test]
fn unknown_nodes_with_close_names() {
    insta::assert_snapshot!(problems(
        r#"repository "repo" {
    pasword-file "password"
    password-file "password"
}
sourse "etc" kind="files" { path "/etc" }
retention { keep-dayly 7; }
frobnicate
"#
    ));
}

#[test]
fn setting_of_another_source_kind() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
source "more" kind="files" {{
    path "/srv"
    brokers "kafka:9092"
}}
"#
    )));
}

#[test]
fn unknown_properties() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
source "db" kind="postgres" compress=#true {{ url "postgres://backup@db/postgres"; }}
alerts {{
    email {{
        smtp "mail" prot=25 security="tls"
        from "cairn@example.com"
        to "ops@example.com"
    }}
}}
"#
    )));
}

#[test]
fn wrong_value_types() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
source "events" kind="kafka" {{
    brokers "kafka:9092"
    retries 1.5
    include-internal "yes"
    no-messages "true"
}}
retention {{
    keep-daily "30"
    keep-weekly -1
}}
schedule "nightly" {{
    cron 2
}}
"#
    )));
}

#[test]
fn bad_durations() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
schedule "nightly" {{ expected-duration "soon"; }}
alerts {{
    missed-backup "25"
    repeat-every "0s"
}}
service "app" {{
    stop "systemctl stop app"
    start "systemctl start app"
    ready "true" timeout="a minute"
}}
"#
    )));
}

#[test]
fn bad_percents_and_sizes() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
retention {{ critical-free "5"; }}
alerts {{
    storage-warning "120%"
    quota "500"
}}
"#
    )));
}

#[test]
fn bad_cron_expressions() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
schedule "nightly" {{ cron "0 25 * * *"; }}
schedule "often" {{ cron "*/5 * * *"; }}
verify {{ cron "0 4 * * funday"; }}
"#
    )));
}

#[test]
fn read_data_takes_all_off_or_one_part() {
    let err = problems(&format!("{VALID}\nverify {{ read-data \"half\"; }}\n"));
    assert!(
        err.contains("\"half\" is not \"all\", \"off\" or \"1/N\"")
            && err.contains("read-data \"1/4\""),
        "{err}"
    );
    let err = problems(&format!("{VALID}\nverify {{ read-data \"1/0\"; }}\n"));
    assert!(err.contains("(N from 1 to 1000)"), "{err}");
    let env = Env::new();
    let c = check_with(
        &env,
        &format!("{VALID}\nverify {{ read-data \"1/4\"; }}\n"),
        &["--json"],
    );
    assert_eq!(c.code, 0, "{}", c.stderr);
    let plan: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(plan["verify"]["read-data"], "1/4");
}

#[test]
fn bad_time_zone() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
schedule "nightly" {{ timezone "Europe/Berln"; }}
schedule "other" {{ timezone "Mars/Olympus_Mons"; }}
"#
    )));
}

#[test]
fn unknown_sources_and_services() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
schedule "nightly" {{ sources "etc" "ect"; }}
service "app" {{
    stop "systemctl stop app"
    start "systemctl start app"
    depends-on "postgress"
    sources "db"
}}
"#
    )));
}

#[test]
fn missing_repository_and_required_values() {
    insta::assert_snapshot!(problems(
        r#"source "db" kind="postgres" { database "app"; }
source "events" kind="kafka"
source "dump" kind="command" { file-name "x"; }
source "etc" kind="files"
source "nokind" { path "/"; }
service "app" { stop "x"; }
api { token "ci"; }
"#
    ));
}

#[test]
fn duplicate_names() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
source "etc" kind="files" {{ path "/srv/etc"; }}
schedule "nightly" {{ cron "0 2 * * *"; }}
schedule "nightly" {{ cron "0 3 * * *"; }}
service "app" {{ stop "a"; start "b"; }}
service "app" {{ stop "a"; start "b"; }}
retention {{ keep-daily 7; }}
retention {{ keep-daily 8; }}
"#
    )));
}

#[test]
fn service_dependency_cycle() {
    insta::assert_snapshot!(problems(&format!(
        r#"{VALID}
service "web" {{ stop "a"; start "b"; depends-on "app"; }}
service "app" {{ stop "a"; start "b"; depends-on "db"; }}
service "db" {{ stop "a"; start "b"; depends-on "cache"; }}
service "cache" {{ stop "a"; start "b"; depends-on "app"; }}
service "self" {{ stop "a"; start "b"; depends-on "self"; }}
"#
    )));
}

#[test]
fn unreadable_key_and_settings_files() {
    let env = Env::new();
    std::fs::create_dir(env.path("a-directory")).unwrap();
    std::fs::write(env.path("empty-password"), "\n").unwrap();
    let c = check_with(
        &env,
        r#"repository "repo" { identity "missing-identity.txt"; }
source "events" kind="kafka" {
    brokers "kafka:9092"
    kafka-config "a-directory"
}
alerts {
    email {
        smtp "mail"
        username "cairn"
        password-file "empty-password"
        from "cairn@example.com"
        to "ops@example.com"
    }
}
api {
    listen "127.0.0.1:8420"
    token-file "/nonexistent/tokens"
}
"#,
        &[],
    );
    assert_eq!(c.code, 2, "{}", c.stderr);
    insta::assert_snapshot!(c.stderr);
}

#[test]
fn many_problems_at_once() {
    insta::assert_snapshot!(problems(
        r#"// Everything wrong that can be, once: all of it must be reported.
repository "repo" {
    password-file "password"
    identity "password"
}
source "etc" kind="files" { path "/etc"; }
source "etc" kind="files" { path "/srv"; }
source "db" kind="postgres" { url "postgres://backup:hunter2@db/postgres"; }
source "bad name!" kind="files" { path "/"; }
schedule "nightly" {
    cron "0 0 2 * * * *"
    timezone "Berlin"
    sources "etcetera"
    expected-duration "30 minutes-ish"
}
retention {
    keep-daily 0
    keep-within "forever"
    critical-free "-5%"
}
alerts {
    missed-backup "a day"
    storage-warning "80"
    quota "lots"
    slow-factor 0.5
    webhook "hooks.example.com"
}
service "a" { stop "x"; start "y"; depends-on "b"; }
service "b" { stop "x"; start "y"; depends-on "a"; }
verify {
    kafka-scratch "scratch"
    skip-alert-after 0
}
api {
    listen "8420"
    token "ci" hash="md5:abc"
}
cleanup
"#
    ));
}

#[test]
fn missing_plan_file() {
    let env = Env::new();
    let out = env.run(&["plan", "check", env.path("nope.kdl").to_str().unwrap()]);
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("nope.kdl: error: cannot read the plan"),
        "{stderr}"
    );
}

/// The complete example plan passes, once the secrets it names exist
/// beside it (they are kept out of the repository).
#[test]
fn example_plan_is_valid() {
    let env = Env::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plan.kdl");
    let text = std::fs::read_to_string(example).unwrap();
    std::fs::write(env.path("kafka.properties"), "security.protocol=SSL\n").unwrap();
    std::fs::write(env.path("smtp-password"), "secret\n").unwrap();
    std::fs::write(
        env.path("tokens"),
        "# name hash\nci blake3:0d2e6e5c1b6f2f0e8e0b5c7ca7b3c4e1d2f3a4b5c6d7e8f90a1b2c3d4e5f6a7b\n",
    )
    .unwrap();
    let c = check_with(&env, &text, &[]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(
        c.stdout,
        "plan [DIR]/plan.kdl is valid: 4 source(s), 2 schedule(s), 2 service(s)\n"
    );

    // Every node of the spec appears, so --json shows each of them set.
    let c = check_with(&env, &text, &["--json"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let plan: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    let kinds: Vec<&str> = plan["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["files", "postgres", "kafka", "command"]);
    assert_eq!(plan["sources"][2]["topics"][1], "events\\..*");
    assert_eq!(plan["sources"][2]["kafka-config"], "[DIR]/kafka.properties");
    assert_eq!(plan["alerts"]["email"]["port"], 587);
    assert_eq!(plan["alerts"]["quota"], "2TiB");
    assert_eq!(plan["services"][1]["ready"]["timeout"], "2m");
    assert_eq!(
        plan["verify"]["kafka-scratch"],
        "scratch-kafka.internal:9092"
    );
    assert_eq!(plan["api"]["tokens"][0]["name"], "grafana");
}

/// `--json` prints the plan with every default filled in (spec/plan.md).
#[test]
fn json_fills_defaults() {
    let env = Env::new();
    let c = check_with(&env, VALID, &["--json"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let plan: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(plan["repository"]["location"], "[DIR]/repo");
    assert_eq!(plan["repository"]["password-file"], "[DIR]/password");
    assert_eq!(
        plan["schedules"],
        serde_json::json!([{
            "name": "nightly",
            "cron": "0 2 * * *",
            "timezone": null,
            "sources": ["etc"],
            "tags": [],
            "expected-duration": null,
            "missed-backup": null,
        }])
    );
    assert_eq!(plan["retention"]["keep-daily"], 30);
    assert_eq!(plan["retention"]["keep-last"], serde_json::Value::Null);
    assert_eq!(plan["retention"]["critical-free"], "5%");
    assert_eq!(plan["alerts"]["missed-backup"], "25h");
    assert_eq!(plan["alerts"]["storage-warning"], "80%");
    assert_eq!(plan["alerts"]["repeat-every"], "6h");
    assert_eq!(plan["alerts"]["slow-factor"], 2.0);
    assert_eq!(plan["alerts"]["archive-lag"], "5m");
    assert_eq!(plan["verify"]["cron"], "0 4 * * 0");
    assert_eq!(plan["verify"]["skip-alert-after"], 3);
    assert_eq!(plan["verify"]["read-data"], "all");
    assert_eq!(plan["api"], serde_json::Value::Null);

    let c = check_with(&env, VALID, &[]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(
        c.stdout,
        "plan [DIR]/plan.kdl is valid: 1 source(s), 1 schedule(s), 0 service(s)\n"
    );
}

/// A `retention` block with only `critical-free` still keeps a month of
/// dailies: a policy without keep rules would remove everything.
#[test]
fn retention_without_keep_rules_keeps_the_default() {
    let env = Env::new();
    let c = check_with(
        &env,
        &format!("{VALID}\nretention {{ critical-free \"10%\"; }}\n"),
        &["--json"],
    );
    assert_eq!(c.code, 0, "{}", c.stderr);
    let plan: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(plan["retention"]["keep-daily"], 30);
    assert_eq!(plan["retention"]["critical-free"], "10%");
}

#[test]
fn plan_token_prints_a_secret_and_only_its_hash_for_the_plan() {
    let env = Env::new();
    let out = env.json(&["plan", "token", "ops"]);
    let token = out["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(
        out["hash"].as_str().unwrap(),
        format!("blake3:{}", blake3::hash(token.as_bytes()).to_hex())
    );
    let again = env.json(&["plan", "token", "ops"]);
    assert_ne!(again["token"], out["token"], "tokens are random");
    let (code, err) = code_and_stderr(&env.run(&["plan", "token", "bad name"]));
    assert_eq!(code, 2, "{err}");
}

/// `cairn plan check FILE`, killed (and the test failed) if it runs for
/// more than a minute: exit code, stderr with the directory as `[DIR]`.
fn check_file_within(env: &Env, file: &std::path::Path) -> (i32, String) {
    let out = crate::common::output_within(
        env.cmd().args(["plan", "check", file.to_str().unwrap()]),
        60,
    );
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    (
        code,
        stderr.replace(env.dir.path().to_str().unwrap(), "[DIR]"),
    )
}

fn write_within_check(env: &Env, text: &str) -> (i32, String) {
    let file = env.path("plan.kdl");
    std::fs::write(&file, text).unwrap();
    check_file_within(env, &file)
}

/// Issue 24, finding 8: 10,000 nested nodes overflowed the stack of the
/// KDL parser (SIGABRT). The nesting limit is checked before KDL parses,
/// and reported at the first brace too deep.
#[test]
fn nodes_nested_too_deeply() {
    let env = Env::new();
    let text = format!("{VALID}{}{}", "a {\n".repeat(10_000), "}\n".repeat(10_000));
    let (code, err) = write_within_check(&env, &text);
    assert_eq!(code, 2, "{err}");
    insta::assert_snapshot!(err);
}

/// Issue 24, finding 8: 100,000 nested `/*` comments overflowed the stack.
#[test]
fn comments_nested_too_deeply() {
    let env = Env::new();
    let text = format!("{VALID}{}{}", "/*".repeat(100_000), "*/".repeat(100_000));
    let (code, err) = write_within_check(&env, &text);
    assert_eq!(code, 2, "{err}");
    insta::assert_snapshot!(err);
}

/// Issue 24, finding 8: a 50 MB plan took ~45 s to parse and ignored
/// SIGTERM meanwhile. Plans are limited in size, and the limit is named.
#[test]
fn plan_too_large() {
    let env = Env::new();
    let mut text = VALID.to_string();
    while text.len() < 50_000_000 {
        text.push_str("// padding padding padding padding padding padding padding\n");
    }
    let (code, err) = write_within_check(&env, &text);
    assert_eq!(code, 2, "{err}");
    insta::assert_snapshot!(err);
}

/// Issue 24, finding 8: `/dev/zero` as a plan was read until memory ran
/// out; a FIFO nobody writes to blocked forever. Both are refused at once.
#[test]
fn endless_and_blocking_plan_files() {
    let env = Env::new();
    let (code, err) = check_file_within(&env, std::path::Path::new("/dev/zero"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/dev/zero: error:"), "{err}");
    assert!(err.contains("limit of 256 KiB"), "{err}");
    assert!(err.contains("hint:"), "{err}");

    let fifo = env.path("plan.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (code, err) = check_file_within(&env, &fifo);
    assert_eq!(code, 2, "{err}");
    insta::assert_snapshot!(err);
}

/// Issue 24, finding 8: a run of `/-` takes the KDL parser time growing
/// with its square (2,000 took 20 s) before it reports the syntax error;
/// and an unclosed `/*` is reported where it starts.
#[test]
fn slashdash_runs_and_unclosed_comments() {
    let env = Env::new();
    let (code, err) = write_within_check(&env, &format!("{VALID}{}a\n", "/- ".repeat(80_000)));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("plan.kdl:8:4: error: `/-` follows another `/-`"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let (code, err) = write_within_check(&env, &format!("{VALID}/* a /* b */\n"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("plan.kdl:8:1: error: this `/*` comment is never closed"),
        "{err}"
    );
}
