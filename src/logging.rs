//! Log lines on stderr through `tracing`: warnings and errors by default
//! (`cairn serve`: info too), `-v` info, `-vv` debug, `-vvv` trace, `-q`
//! errors only; `CAIRN_LOG` (an env-filter directive) overrides; `--log-format
//! json` prints one JSON object per line, fields at the top level. The error
//! that ends a command is printed here too ([`report_error`]), as text
//! (`error: …` / `hint: …`) or, with `--log-format json`, as one JSON line
//! like the others. The log format is described in `spec/logging.md`.

use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Format of log lines on stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The format chosen by [`init`] (text until then).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The log level `-v` count and `-q` give: `floor` is the command's default
/// verbosity (0 = warnings, 1 = info), which `-v` can raise but not lower.
pub fn level(verbose: u8, quiet: bool, floor: u8) -> &'static str {
    match (quiet, verbose.max(floor)) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    }
}

/// Install the subscriber. `daemon`: the command is `cairn serve`, which
/// logs at info by default (its log is the operator's record of every run,
/// removal, request and alert); other commands log warnings by default.
pub fn init(verbose: u8, quiet: bool, format: LogFormat, daemon: bool) {
    let _ = FORMAT.set(format);
    let level = level(verbose, quiet, u8::from(daemon));
    let filter = EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("cairn={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// The format [`init`] was given.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Print the error that ends the process: `error: MESSAGE` and `hint: HINT`
/// lines, or with `--log-format json` one line
/// `{"timestamp", "level": "ERROR", "message", "hint", "exit_code"}`.
pub fn report_error(message: &str, hint: Option<&str>, exit_code: i32) {
    eprint!("{}", render_error(format(), message, hint, exit_code));
}

/// What [`report_error`] prints.
pub fn render_error(
    format: LogFormat,
    message: &str,
    hint: Option<&str>,
    exit_code: i32,
) -> String {
    match format {
        LogFormat::Text => match hint {
            Some(h) => format!("error: {message}\nhint: {h}\n"),
            None => format!("error: {message}\n"),
        },
        LogFormat::Json => {
            let mut v = serde_json::json!({
                // As tracing writes it: UTC, microseconds.
                "timestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                "level": "ERROR",
                "message": message,
                "exit_code": exit_code,
            });
            if let Some(h) = hint {
                v["hint"] = serde_json::Value::from(h);
            }
            format!("{v}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_logs_info_unless_quiet() {
        assert_eq!(level(0, false, 0), "warn");
        assert_eq!(level(0, false, 1), "info");
        assert_eq!(level(1, false, 1), "info");
        assert_eq!(level(2, false, 1), "debug");
        assert_eq!(level(0, true, 1), "error");
    }

    #[test]
    fn errors_render_as_text_or_one_json_line() {
        assert_eq!(
            render_error(LogFormat::Text, "no", Some("try"), 2),
            "error: no\nhint: try\n"
        );
        let line = render_error(LogFormat::Json, "bad \"x\"\nmore", None, 10);
        assert_eq!(line.lines().count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["message"], "bad \"x\"\nmore");
        assert_eq!(v["exit_code"], 10);
        assert!(v.get("hint").is_none());
    }
}
