//! One file per command. Each takes the resolved global options and its own
//! arguments, does its work through the library, and prints its result.

pub mod cat;
pub mod check;
pub mod forget;
pub mod forget_plan;
pub mod init;
pub mod key;
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
use std::path::PathBuf;

pub fn run(g: &GlobalArgs, command: Command) -> Result<()> {
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
    }
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

pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::failure(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// 1536 -> "1.5 KiB"
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

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
