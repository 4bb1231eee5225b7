//! PostgreSQL's own programs (`pg_dump`, `pg_restore`, `psql`, `initdb`, …):
//! where they are installed, and running them with a [`Target`]'s
//! connection settings in their environment (so a password is never on a
//! command line), as the `postgres` user where they refuse root, with
//! their input or output piped.

use super::conn::{says_unreachable, Target};
use crate::error::{Error, Kind, Result};
use crate::source::command::tail_lines;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL program, as the `postgres` user when we are root
/// (initdb and postgres refuse to run as root).
pub(crate) fn pg_command(tool: &str) -> Command {
    let path = pg_tool(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// Directory of PostgreSQL's programs: `CAIRN_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else PATH.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CAIRN_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_dump").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

pub fn pg_tool(name: &str) -> PathBuf {
    match pg_bin_dir() {
        Some(d) if d.join(name).exists() => d.join(name),
        _ => PathBuf::from(name),
    }
}

pub(super) fn tool(target: &Target, name: &str, db: &str) -> Command {
    let mut c = Command::new(pg_tool(name));
    c.envs(target.tool_env(db)).env_remove("PGSERVICE");
    c
}

/// Run `cmd` with `feed` writing its stdin; its stderr, or an error with
/// its end when it fails.
pub(super) fn feed_with(
    mut cmd: Command,
    what: &str,
    feed: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::failure("no stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::failure("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::failure("no stderr"))?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let fed = feed(&mut stdin);
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("waiting for {what}"), e))?;
    let _ = out_reader.join();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(what, status, &err));
    }
    fed?;
    Ok(err)
}

/// A tool that exited non-zero, with the end of its standard error; a
/// server it could not reach is [`Kind::Unavailable`] (exit 4).
fn failed(what: &str, status: std::process::ExitStatus, stderr: &str) -> Error {
    let message = format!("{what} failed ({status}): {}", tail_lines(stderr, 5));
    if says_unreachable(stderr) {
        Error::new(Kind::Unavailable, message).with_hint(
            "check that the server runs and that host and port are right \
             (connect_timeout=SECONDS in the URL sets how long to wait)",
        )
    } else {
        Error::failure(message)
    }
}

pub(super) fn run_tool_stdout(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    if !out.status.success() {
        return Err(failed(
            what,
            out.status,
            &String::from_utf8_lossy(&out.stderr),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
