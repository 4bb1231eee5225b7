//! `cairn plan check FILE`: validate a plan before it is committed or
//! deployed, reporting every problem at once.

use std::path::Path;

use crate::cli::GlobalArgs;
use crate::daemon::alerts::{Alert, AlertKind, Alerter, Delivery};
use crate::error::{Error, Result};
use crate::plan::Plan;

/// Print each problem as `FILE:LINE:COLUMN: error: …` + `  hint: …` on
/// stderr and fail with a usage error (exit 2); on success print a summary,
/// or with `--json` the plan with its defaults filled in.
pub fn check(g: &GlobalArgs, file: &Path) -> Result<()> {
    let plan = load(file)?;
    if g.json {
        return super::print_json(&plan);
    }
    println!(
        "plan {} is valid: {} source(s), {} schedule(s), {} service(s)",
        file.display(),
        plan.sources.len(),
        plan.schedules.len(),
        plan.services.len()
    );
    Ok(())
}

/// Load a plan; its problems go to stderr and make a usage error (exit 2).
/// Ctrl-C or SIGTERM while it is read and parsed (bounded by the plan size
/// limit) ends the command with exit 130.
pub fn load(file: &Path) -> Result<Plan> {
    let loaded = Plan::load(file);
    crate::interrupt::check()?;
    loaded.map_err(|problems| {
        let n = problems.len();
        let what = format!(
            "plan {} has {n} problem{}",
            file.display(),
            if n == 1 { "" } else { "s" }
        );
        // With --log-format json the problems go in the error's one line.
        if crate::logging::format() == crate::logging::LogFormat::Json {
            return Error::usage(format!("{what}:\n{}", problems.to_string().trim_end()));
        }
        eprint!("{problems}");
        Error::usage(what)
    })
}

/// The plan's repository, opened with the plan's key (a key given on the
/// command line wins).
pub fn open_repo(g: &GlobalArgs, plan: &Plan) -> Result<crate::repository::Repository> {
    super::access(g).with_plan(plan)?.open()
}

/// `cairn plan test-alert FILE [--kind KIND]`: send one alert through every
/// channel the plan configures and say what was delivered. Fails (exit 1)
/// when every channel failed; a plan without channels is a usage error.
pub fn test_alert(g: &GlobalArgs, file: &Path, kind: AlertKind) -> Result<()> {
    let plan = load(file)?;
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let alerter = Alerter::new(&plan.alerts, host, None);
    if !alerter.has_channels() {
        return Err(Error::usage(format!(
            "plan {} configures no alert channel",
            file.display()
        ))
        .with_hint(
            "add `email { smtp …; from …; to … }` and/or `webhook \"URL\"` to the plan's \
             `alerts` node (spec/plan.md)",
        ));
    }
    let delivery = alerter.send(&Alert::example(kind))?;
    if g.json {
        return super::print_json(&delivery);
    }
    if let Delivery::Sent { subject, channels } = &delivery {
        println!("alert {subject:?}:");
        for c in channels {
            match &c.error {
                None => println!("  {}: sent to {}", c.channel, c.target),
                Some(e) => println!("  {}: FAILED ({}): {e}", c.channel, c.target),
            }
        }
    }
    Ok(())
}

/// `cairn plan token NAME`: a random 256-bit token (hex) and the plan line
/// holding only its BLAKE3 hash — the secret itself is never stored.
pub fn token(g: &GlobalArgs, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Error::usage(format!("token name {name:?} is not allowed"))
            .with_hint("use letters, digits, `_`, `.` and `-`"));
    }
    let secret: [u8; 32] = rand::random();
    let token = hex::encode(secret);
    let hash = format!("blake3:{}", blake3::hash(token.as_bytes()).to_hex());
    if g.json {
        return super::print_json(
            &serde_json::json!({ "name": name, "token": token, "hash": hash }),
        );
    }
    println!("token (shown once; give it to the client as `Authorization: Bearer …`):");
    println!("  {token}");
    println!("plan line (inside `api {{ … }}`):");
    println!("  token \"{name}\" hash=\"{hash}\"");
    Ok(())
}
