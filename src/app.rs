//! The binary's body, kept in the library so the modules it drives stay
//! private (`main.rs` only calls [`run`]).

use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when printing failed because the reader of stdout went away
/// (`cairn snapshots | head`): not a bug, the end of the command.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// The `cairn` binary: parse the command line, run one command, exit with
/// the documented code (README "Exit codes").
pub fn run() {
    let cli = crate::cli::Cli::parse();
    // `serve` logs at info by default: its log is the operator's record.
    let daemon = matches!(cli.command, crate::cli::Command::Serve(_));
    crate::logging::init(
        cli.global.verbose,
        cli.global.quiet,
        cli.global.log_format,
        daemon,
    );
    crate::interrupt::install();
    report_panics();
    // A panic unwinds through every guard (the repository lock is removed),
    // is reported by the hook, and ends here as a failure (exit 1).
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::commands::run(&cli.global, cli.command)
    }));
    match run {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let code = e.kind().exit_code();
            crate::logging::report_error(&e.to_string(), e.hint(), code);
            std::process::exit(code);
        }
        Err(_) if STDOUT_CLOSED.load(Ordering::SeqCst) => {
            // Guards have unwound (locks released); end as Unix tools do
            // when their reader goes away: killed by SIGPIPE, which Rust's
            // runtime ignores. Shells show 141.
            // SAFETY: restoring a signal's default disposition and raising
            // it on this thread; nothing runs after.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            std::process::exit(crate::error::Kind::Failure.exit_code())
        }
        Err(_) => std::process::exit(crate::error::Kind::Failure.exit_code()),
    }
}

/// A panic is a bug in cairn: report it like any other error, on an
/// `error:` line with a `hint:`, instead of Rust's default message.
fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        if what.starts_with("failed printing to stdout") && what.contains("Broken pipe") {
            STDOUT_CLOSED.store(true, Ordering::SeqCst);
            return;
        }
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::logging::report_error(
            &format!("internal error: cairn panicked{at}: {what}"),
            Some(
                "this is a bug in cairn; please report it with the command that was run \
                 (RUST_BACKTRACE=1 shows where it happened)",
            ),
            crate::error::Kind::Failure.exit_code(),
        );
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }));
}
