//! Issue 30, items 4 and 5, through the real binary: completion scripts and
//! manual pages generated from the clap definitions, and one plan (`--plan`
//! or `CAIRN_PLAN`) giving every command its repository, key and cache.

use crate::common::{code_and_stderr, commands, make_sample_tree, Env, BIN};
use std::process::{Command, Output};

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn bash_sources_the_completion_script() {
    let env = Env::new();
    let script = stdout(&env.run(&["completions", "bash"]));
    for c in commands() {
        assert!(script.contains(&c), "no {c} in the bash completions");
    }
    let file = env.path("cairn.bash");
    std::fs::write(&file, &script).unwrap();
    // Sourced without error, it registers a completion for `cairn`.
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "set -e; source {}; complete -p cairn",
            file.display()
        ))
        .output()
        .unwrap();
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cairn"));
    // Every shell clap_complete knows has a script.
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let s = stdout(&env.run(&["completions", shell]));
        assert!(s.contains("snapshots"), "{shell}");
    }
    let (code, _) = code_and_stderr(&env.run(&["completions", "tcsh"]));
    assert_eq!(code, 2);
}

/// The first request that is not a roff string definition is the title.
fn title(page: &str) -> &str {
    page.lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
        .unwrap()
}

#[test]
fn man_prints_roff_pages() {
    let env = Env::new();
    let page = stdout(&env.run(&["man"]));
    assert!(title(&page).starts_with(".TH cairn 1 "), "{page}");
    assert!(page.contains(".SH SYNOPSIS") && page.contains("snapshots"));
    let page = stdout(&env.run(&["man", "key", "add"]));
    assert!(title(&page).starts_with(".TH cairn-key-add 1 "), "{page}");
    assert!(page.contains("new\\-password\\-file"));
    let (code, stderr) = code_and_stderr(&env.run(&["man", "nonsense"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("restore"), "{stderr}");
}

#[test]
fn man_dir_writes_one_page_per_command() {
    let env = Env::new();
    let dir = env.path("man/man1");
    stdout(&env.run(&["man", "--dir", dir.to_str().unwrap()]));
    for page in std::iter::once("cairn.1".to_string())
        .chain(commands().iter().map(|c| format!("cairn-{c}.1")))
    {
        let text =
            std::fs::read_to_string(dir.join(&page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let name = page.trim_end_matches(".1");
        assert!(
            title(&text).starts_with(&format!(".TH {name} 1 ")),
            "{page}"
        );
    }
    // Nested commands too; hidden ones and `help` not.
    assert!(dir.join("cairn-key-add.1").is_file());
    assert!(!dir.join("cairn-wal-prefetch.1").exists());
    assert!(!dir.join("cairn-help.1").exists());
}

/// A repository with one snapshot, a plan naming it (password file relative
/// to the plan), and a directory elsewhere to run commands from.
fn planned() -> (Env, String, std::path::PathBuf) {
    let env = Env::init();
    let data = env.path("data");
    make_sample_tree(&data);
    env.snapshot(&[&data]);
    let plan = env.write_plan("").to_str().unwrap().to_string();
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    (env, plan, elsewhere)
}

#[test]
fn plan_gives_every_command_its_repository() {
    let (env, plan, elsewhere) = planned();
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        env.plan_cmd()
            .current_dir(&elsewhere)
            .envs(envs.iter().copied())
            .args(args)
            .output()
            .unwrap()
    };
    let listed: serde_json::Value = serde_json::from_str(&stdout(&run(
        &[],
        &["snapshots", "--plan", &plan, "--json"],
    )))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // Before the command works as well as after it.
    let listed: serde_json::Value = serde_json::from_str(&stdout(&run(
        &[],
        &["--plan", &plan, "snapshots", "--json"],
    )))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(stdout(&run(&[], &["check", "--plan", &plan])).contains("no errors found"));
    for args in [
        &["stats"][..],
        &["key", "list"],
        &["cat", "config"],
        &["cat", "snapshot", "latest"],
        &["prune", "--dry-run"],
        &["unlock"],
    ] {
        stdout(&run(&[("CAIRN_PLAN", &plan)], args));
    }
    // The plan's cache directory is the one used.
    assert!(env.cache.is_dir());
}

#[test]
fn cairn_plan_in_the_environment_only_says_where() {
    let (env, plan, elsewhere) = planned();
    // `snapshot PATH` with CAIRN_PLAN backs up PATH into the plan's
    // repository: only `--plan` on the command line runs the plan's sources.
    let more = env.path("more");
    std::fs::create_dir(&more).unwrap();
    std::fs::write(more.join("f"), "x").unwrap();
    let out = env
        .plan_cmd()
        .current_dir(&elsewhere)
        .env("CAIRN_PLAN", &plan)
        .args(["snapshot", "--json", more.to_str().unwrap()])
        .output()
        .unwrap();
    let saved: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(saved["id"].is_string(), "{saved}");
    assert_eq!(env.snapshot_ids().len(), 2);
}

#[test]
fn a_repository_that_is_not_the_plans_is_a_usage_error() {
    let (env, plan, elsewhere) = planned();
    let other = env.path("other");
    let other = other.to_str().unwrap();
    for (envs, args) in [
        (vec![], vec!["snapshots", "-r", other, "--plan", &plan]),
        (vec![], vec!["check", "--plan", &plan, "-r", other]),
        (
            vec![("CAIRN_PLAN", plan.as_str())],
            vec!["stats", "-r", other],
        ),
        (
            vec![("CAIRN_PLAN", plan.as_str()), ("CAIRN_REPOSITORY", other)],
            vec!["stats"],
        ),
        // The commands with a --plan of their own check it too.
        (
            vec![],
            vec!["forget", "--plan", &plan, "-r", other, "--dry-run"],
        ),
    ] {
        let out = env
            .plan_cmd()
            .current_dir(&elsewhere)
            .envs(envs)
            .args(&args)
            .output()
            .unwrap();
        let (code, stderr) = code_and_stderr(&out);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("differs from the plan's repository"),
            "{args:?}: {stderr}"
        );
    }
}

/// `--plan` before the command name reaches snapshot, restore and forget
/// after clap's conflict checks: what the command line says instead of the
/// plan's work must still be refused, never silently dropped.
#[test]
fn plan_before_the_command_still_refuses_what_it_would_ignore() {
    let (env, plan, elsewhere) = planned();
    let data = env.path("data");
    let data = data.to_str().unwrap();
    let target = env.path("t");
    let target = target.to_str().unwrap();
    for args in [
        vec!["--plan", &plan, "snapshot", data],
        vec!["--plan", &plan, "restore", "latest", "--target", target],
        vec!["--plan", &plan, "forget", "--keep-daily", "3", "--dry-run"],
    ] {
        let out = env
            .plan_cmd()
            .current_dir(&elsewhere)
            .args(&args)
            .output()
            .unwrap();
        let (code, stderr) = code_and_stderr(&out);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("does the plan's work and cannot be combined"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("CAIRN_PLAN="), "{args:?}: {stderr}");
    }
    assert_eq!(env.snapshot_ids().len(), 1, "nothing was saved");
    assert!(!std::path::Path::new(target).exists());
}

/// Words of a shell-like example line: single quotes group, `#` starts a
/// comment, `[...]` (optional parts) is left out.
fn example_words(line: &str) -> Vec<String> {
    let line = line.split(" #").next().unwrap_or_default();
    let (mut words, mut word, mut quoted, mut optional) = (Vec::new(), String::new(), false, 0);
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            '[' if !quoted => optional += 1,
            ']' if !quoted => optional -= 1,
            ' ' if !quoted && !word.is_empty() => words.push(std::mem::take(&mut word)),
            ' ' if !quoted => {}
            _ if optional == 0 => word.push(c),
            _ => {}
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Issue 30, item 6: the examples in `--help` are commands cairn's
/// argument parser accepts (run against a repository that is not there).
#[test]
fn the_examples_in_help_parse() {
    let mut tried = 0;
    for command in ["snapshot", "restore", "check", "forget"] {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = stdout(&out);
        let examples = help
            .split("Examples:")
            .nth(1)
            .unwrap_or_else(|| panic!("{command} --help has no examples"));
        for line in examples
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("cairn "))
        {
            let words = example_words(line);
            let out = Command::new(BIN)
                .args(&words[1..])
                .env_clear()
                .env("CAIRN_REPOSITORY", "/nonexistent/cairn-repo")
                .env("CAIRN_PASSWORD_FILE", "/nonexistent/password")
                .env("TZ", "UTC")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            // Whatever it fails on next (a path that is not there, the
            // missing repository), clap accepted the arguments.
            let (code, err) = code_and_stderr(&out);
            assert!(
                code != 0 && !err.contains("try '--help'"),
                "{line:?} -> {words:?}: {err}"
            );
            tried += 1;
        }
    }
    assert!(tried >= 15, "only {tried} examples");
}
