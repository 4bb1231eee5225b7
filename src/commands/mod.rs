//! One file per command. Each takes the resolved global options and its own
//! arguments, does its work through the library, and prints its result.

pub mod cat;
pub mod check;
pub mod forget;
pub mod forget_plan;
pub mod init;
pub mod key;
pub mod manual;
pub mod plan;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod restore_plan;
pub mod serve;
pub mod snapshot;
pub mod snapshots;
pub mod stats;
pub mod unlock;
pub mod wal;

use crate::cli::{Command, FilterArgs, GlobalArgs};
use crate::crypto::Secret;
use crate::error::{Error, Result};
use crate::ops::access::Access;
pub use crate::ops::local_time;
use crate::repo::Snapshot;
use crate::repository::Repository;
use std::path::{Path, PathBuf};

pub fn run(g: &GlobalArgs, command: Command) -> Result<()> {
    // Commands that open no repository, or (serve) read their plan anew on
    // every reload, take the flags as given; every other one the repository,
    // key and cache of the plan in force.
    let resolved;
    let g = match &command {
        Command::Serve(_) | Command::Plan(_) | Command::Completions { .. } | Command::Man(_) => g,
        _ => {
            resolved = with_plan(g)?;
            &resolved
        }
    };
    match command {
        Command::Init(a) => init::run(g, &a),
        Command::Key(k) => key::run(g, k),
        Command::Snapshot(a) => snapshot::run(g, &a),
        Command::Snapshots(a) => snapshots::run(g, &a),
        Command::Restore(a) => restore::run(g, &a),
        Command::Serve(a) => serve::run(g, &a),
        Command::Check(a) => check::run(g, &a),
        Command::Forget(a) => forget::run(g, &a),
        Command::Prune(a) => prune::run(g, &a),
        Command::Stats => stats::run(g),
        Command::Cat(a) => cat::run(g, &a),
        Command::Unlock(a) => unlock::run(g, &a),
        Command::Repair(crate::cli::RepairCommand::Index) => repair::index(g),
        Command::Repair(crate::cli::RepairCommand::Packs { packs, dry_run }) => {
            repair::packs(g, &packs, dry_run)
        }
        Command::Plan(crate::cli::PlanCommand::Check { file }) => plan::check(g, &file),
        Command::Plan(crate::cli::PlanCommand::Token { name }) => plan::token(g, &name),
        Command::Plan(crate::cli::PlanCommand::TestAlert { file, kind }) => {
            plan::test_alert(g, &file, kind)
        }
        Command::WalPush { path } => wal::push(g, &path),
        Command::WalFetch {
            name,
            destination,
            prefetch,
        } => wal::fetch(g, &name, &destination, prefetch),
        Command::WalPrefetch { after, count } => wal::prefetch(g, &after, count),
        Command::Completions { shell } => manual::completions(shell),
        Command::Man(a) => manual::man(&a),
    }
}

/// The plan read when neither a plan nor a repository is given.
pub const DEFAULT_PLAN: &str = "/etc/cairn/plan.kdl";

/// The plan that says where the repository is: `--plan`, else `CAIRN_PLAN`,
/// else [`DEFAULT_PLAN`] when it exists and no repository is given
/// (`-r`/`CAIRN_REPOSITORY`).
pub fn plan_file(g: &GlobalArgs) -> Option<PathBuf> {
    choose_plan(
        g.plan.as_deref(),
        std::env::var_os("CAIRN_PLAN").as_deref(),
        g.repo.is_some(),
        Path::new(DEFAULT_PLAN),
    )
}

fn choose_plan(
    flag: Option<&Path>,
    env: Option<&std::ffi::OsStr>,
    repo_given: bool,
    default: &Path,
) -> Option<PathBuf> {
    if let Some(f) = flag {
        return Some(f.to_path_buf());
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return Some(PathBuf::from(e));
    }
    (!repo_given && default.is_file()).then(|| default.to_path_buf())
}

/// The global flags completed by the plan in force ([`plan_file`]): its
/// repository, and its key and cache unless given (spec/plan.md, "The plan in force"). A
/// repository given that is not the plan's is a usage error (exit 2).
pub fn with_plan(g: &GlobalArgs) -> Result<GlobalArgs> {
    let Some(file) = plan_file(g) else {
        return Ok(g.clone());
    };
    let plan = plan::load(&file)?;
    let a = access(g).with_plan(&plan)?;
    tracing::debug!(plan = %file.display(), repository = a.location.as_deref().unwrap_or_default(), "repository from the plan");
    Ok(GlobalArgs {
        repo: a.location,
        plan: Some(file),
        password_file: a.password_file,
        identity: a.identity,
        cache_dir: a.cache_dir,
        ..g.clone()
    })
}

/// The repository access the global flags give.
pub fn access(g: &GlobalArgs) -> Access {
    Access {
        location: g.repo.clone(),
        password_file: g.password_file.clone(),
        identity: g.identity.clone(),
        cache_dir: g.cache_dir.clone(),
        no_cache: g.no_cache,
        no_key_cache: g.no_key_cache,
        index_memory: None,
    }
}

/// The repository access of a restore (`restore`, `restore --plan`): its
/// index lookups go in chunk-id order, so the index cache keeps only a few
/// pages in memory ([`crate::index::ORDERED_LOOKUP_MEMORY`]).
pub fn restore_access(g: &GlobalArgs) -> Access {
    Access {
        index_memory: Some(crate::index::ORDERED_LOOKUP_MEMORY),
        ..access(g)
    }
}

pub fn repo_location(g: &GlobalArgs) -> Result<String> {
    access(g).location()
}

/// The secret the user offers: identity file, password file, environment or prompt.
pub fn secret(g: &GlobalArgs) -> Result<Secret> {
    access(g).secret()
}

pub fn cache_dir(g: &GlobalArgs) -> Option<PathBuf> {
    access(g).cache_dir()
}

pub fn open_repo(g: &GlobalArgs) -> Result<Repository> {
    access(g).open()
}

pub fn matches_filter(s: &Snapshot, f: &FilterArgs) -> bool {
    (f.host.is_empty() || f.host.contains(&s.host))
        && (f.tag.is_empty() || f.tag.iter().any(|t| s.tags.contains(t)))
}

/// `--plan` makes `command` do the plan's work, so it cannot be combined
/// with options that say what to do instead. clap checks that when `--plan`
/// follows the command name; given before it (`cairn --plan P snapshot /x`)
/// the value reaches the command after clap's checks, so they are made here:
/// nothing given on the command line is ever silently ignored.
pub fn plan_excludes(command: &str, plan: Option<&Path>, given: &[(&str, bool)]) -> Result<()> {
    let Some(plan) = plan else {
        return Ok(());
    };
    let clash: Vec<&str> = given.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect();
    if clash.is_empty() {
        return Ok(());
    }
    Err(Error::usage(format!(
        "`{command} --plan {}` does the plan's work and cannot be combined with {}",
        plan.display(),
        clash.join(", ")
    ))
    .with_hint(format!(
        "leave those out, or to take only the repository and key from the plan, set \
         CAIRN_PLAN={} instead of --plan",
        plan.display()
    )))
}

pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::failure(e.to_string()))?;
    println!("{s}");
    Ok(())
}

pub use crate::progress::human_bytes;

/// Parse `--at`: RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in local time.
pub fn parse_time(s: &str) -> Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(dt) = s.trim().parse::<jiff::civil::DateTime>() {
        if s.contains(':') {
            if let Ok(z) = dt.to_zoned_datetime(jiff::tz::TimeZone::system()) {
                return Ok(z.timestamp());
            }
        }
    }
    Err(
        Error::usage(format!("cannot read {s:?} as a time")).with_hint(
            "use RFC 3339 (2026-11-25T02:00:00Z) or local time as \"YYYY-MM-DD HH:MM[:SS]\"",
        ),
    )
}

/// A duration flag such as `--retry-delay 500ms`.
pub fn parse_duration(flag: &str, s: &str) -> Result<std::time::Duration> {
    humantime::parse_duration(s).map_err(|e| {
        Error::usage(format!("{flag} {s:?}: {e}")).with_hint("e.g. 500ms, 2s, 5m, 12h, 30d")
    })
}

/// Broker list plus connection flags, checked.
pub fn kafka_options(
    brokers: &str,
    a: &crate::cli::KafkaConnArgs,
) -> Result<crate::source::kafka::KafkaOptions> {
    let mut o = crate::source::kafka::KafkaOptions::new(brokers)?;
    o.retry = crate::source::kafka::RetryPolicy {
        retries: a.retries,
        base: parse_duration("--retry-delay", &a.retry_delay)?,
    };
    o.timeout = parse_duration("--kafka-timeout", &a.kafka_timeout)?;
    if o.timeout.is_zero() {
        return Err(Error::usage("--kafka-timeout must be more than 0"));
    }
    if let Some(f) = &a.kafka_config {
        o.load_properties(f)?;
    }
    Ok(o)
}

/// One snapshot's line in `forget`'s text output: keep or remove, id, time, reasons.
pub(crate) fn print_verdict(keep: bool, id: &str, time: jiff::Timestamp, reasons: &[String]) {
    println!(
        "  {} {} {}  {}",
        if keep { "keep  " } else { "remove" },
        &id[..8],
        local_time(time),
        reasons.join("; ")
    );
}

/// The last line of `forget`'s text output.
pub(crate) fn print_removed(dry_run: bool, removed: usize) {
    println!(
        "{} {removed} snapshot(s)",
        if dry_run { "would remove" } else { "removed" }
    );
}

#[cfg(test)]
mod tests {
    use super::choose_plan;
    use std::ffi::OsStr;
    use std::path::{Path, PathBuf};

    #[test]
    fn the_plan_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("plan.kdl");
        let missing = dir.path().join("none.kdl");
        std::fs::write(&default, "").unwrap();
        let flag = Some(Path::new("/p/flag.kdl"));
        let env = Some(OsStr::new("/p/env.kdl"));
        // --plan wins over CAIRN_PLAN, which wins over the default.
        assert_eq!(
            choose_plan(flag, env, true, &default),
            Some(PathBuf::from("/p/flag.kdl"))
        );
        assert_eq!(
            choose_plan(None, env, true, &default),
            Some(PathBuf::from("/p/env.kdl"))
        );
        // An empty CAIRN_PLAN is unset.
        assert_eq!(
            choose_plan(None, Some(OsStr::new("")), false, &default),
            Some(default.clone())
        );
        // The default only when it exists and no repository is given.
        assert_eq!(
            choose_plan(None, None, false, &default),
            Some(default.clone())
        );
        assert_eq!(choose_plan(None, None, true, &default), None);
        assert_eq!(choose_plan(None, None, false, &missing), None);
    }
}
