//! Limits on a plan file, enforced before the KDL parser sees it.
//!
//! The parser is recursive and reads whatever it is given: deep nesting of
//! `{ }` or `/* */`, and long runs of some tokens (`}}}`, `/- /- /-`,
//! `(t)(t)`), overflow its stack (the process aborts), and a huge or endless
//! file takes as long and as much memory as it is large. A plan is a few
//! kilobytes of settings, so these limits are far above any real plan
//! (spec/plan.md, "Limits"); the parser runs on a thread with a stack sized
//! for the worst the size limit allows, and the wait for it ends on Ctrl-C
//! or SIGTERM.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use kdl::{KdlDocument, KdlError};

use super::diagnostic::Diagnostic;

/// The largest plan file read: 256 KiB (the complete example plan is 4.5 KiB).
pub const MAX_PLAN_BYTES: u64 = 256 << 10;
/// How deep `{ }` blocks may nest (a plan needs three levels).
pub const MAX_NESTING: usize = 32;
/// How deep `/* */` comments may nest.
pub const MAX_COMMENT_NESTING: usize = 32;
/// How many `/-` may follow each other. More than one is a KDL syntax
/// error anyway, but one the parser takes time to find that grows with the
/// square of the run (2,000 take 20 s).
pub const MAX_SLASHDASH_RUN: usize = 1;

fn whole_file(path: &Path, message: String, hint: &str) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        position: None,
        message,
        hint: hint.into(),
    }
}

/// The text of the plan at `path`: a regular file (or device) of at most
/// [`MAX_PLAN_BYTES`] of UTF-8. FIFOs and sockets are refused without
/// opening them (opening a FIFO waits for a writer), and reading stops
/// one byte past the limit, so `/dev/zero` is refused at once.
pub(super) fn read(path: &Path) -> Result<String, Diagnostic> {
    use std::os::unix::fs::FileTypeExt;
    let unreadable = |e: std::io::Error| {
        whole_file(
            path,
            format!("cannot read the plan: {e}"),
            "check the path and that the file is readable UTF-8 text",
        )
    };
    let kind = std::fs::metadata(path).map_err(unreadable)?.file_type();
    if kind.is_fifo() || kind.is_socket() {
        return Err(whole_file(
            path,
            format!(
                "the plan is a {}, not a file",
                if kind.is_fifo() { "FIFO" } else { "socket" }
            ),
            "give the path of a plan file: a pipe may never be written to or never end",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PLAN_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_PLAN_BYTES {
        return Err(whole_file(
            path,
            format!(
                "the plan is larger than the limit of {} KiB",
                MAX_PLAN_BYTES >> 10
            ),
            "a plan holds settings and is a few kilobytes; check that this is the plan file",
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| unreadable(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// How parsing on the parser's own thread ended.
pub(super) enum Parsed {
    Done(Result<KdlDocument, KdlError>),
    /// Ctrl-C or SIGTERM came first (the parser thread is left to finish).
    Interrupted,
    /// The thread could not start, or died (a bug in the parser).
    Failed(String),
}

/// The parser's stack for `len` bytes of plan. Its recursion grows by up to
/// about 2 KiB per byte on runs like `}}}` or `/- /- /-` (measured on
/// kdl 6.7); twice that, so no plan under the size limit can overflow it.
/// Only what the parse touches is ever backed by memory.
fn parser_stack(len: usize) -> usize {
    (16 << 20) + len.saturating_mul(4 << 10)
}

/// Parse `text` as KDL on a thread with a stack large enough for it,
/// waiting for it only while no Ctrl-C or SIGTERM has arrived.
pub(super) fn parse_kdl(text: String) -> Parsed {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("plan parser".into())
        .stack_size(parser_stack(text.len()))
        .spawn(move || {
            let _ = tx.send(KdlDocument::parse(&text));
        });
    if let Err(e) = spawned {
        return Parsed::Failed(format!("cannot start the plan parser: {e}"));
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(parsed) => return Parsed::Done(parsed),
            Err(RecvTimeoutError::Timeout) => {
                if crate::interrupt::check().is_err() {
                    return Parsed::Interrupted;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Parsed::Failed("the KDL parser failed on this plan".into())
            }
        }
    }
}

/// A problem [`prepare`] finds: byte offset, message, hint.
pub(super) type Problem = (usize, String, String);

/// The text the KDL parser is given: `text` with every `/* */` comment
/// replaced by spaces, byte for byte, so offsets (and so every line and
/// column reported) stay those of `text`. The parser recurses once per
/// token inside a block comment and once per level of `{ }`, so comments
/// are not left to it, and blocks nested deeper than [`MAX_NESTING`] (or
/// comments deeper than [`MAX_COMMENT_NESTING`]) are refused here. One
/// pass that knows KDL's strings (quoted, multi-line `"""`, raw `#"…"#`)
/// and `//` comments, so what looks like a brace or a comment inside them
/// is left alone.
pub(super) fn prepare(text: &str) -> Result<String, Problem> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // Copied into `out` up to here.
    let mut copied = 0;
    let mut depth = 0usize;
    // `/-` in a row, with only whitespace and comments between them.
    let mut slashdashes = 0usize;
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_whitespace() || b[i..].starts_with(b"/-") || b[i..].starts_with(b"/*")) {
            slashdashes = 0;
        }
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'-') => {
                slashdashes += 1;
                if slashdashes > MAX_SLASHDASH_RUN {
                    return Err((
                        i,
                        "`/-` follows another `/-`".into(),
                        "one `/-` comments out the node, value or block after it; \
                         remove the others"
                            .into(),
                    ));
                }
                i += 2;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = block_comment(b, i)?;
                // Both ends are ASCII, so on character boundaries.
                out.push_str(text.get(copied..i).unwrap_or_default());
                out.extend(std::iter::repeat_n(' ', end - i));
                copied = end;
                i = end;
                continue;
            }
            b'#' => {
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                let body = i + hashes;
                i = body;
                if b.get(body) == Some(&b'"') {
                    // A raw string: no escapes; it ends at its opening
                    // quotes followed by as many `#`.
                    let quotes = if b[body..].starts_with(b"\"\"\"") {
                        3
                    } else {
                        1
                    };
                    let close: Vec<u8> = std::iter::repeat_n(b'"', quotes)
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    let from = body + quotes;
                    i = memchr::memmem::find(&b[from..], &close)
                        .map_or(b.len(), |n| from + n + close.len());
                }
                continue;
            }
            b'"' => {
                // `"…"` or `"""…"""`; `\` escapes the next character.
                let quotes = if b[i..].starts_with(b"\"\"\"") { 3 } else { 1 };
                i += quotes;
                while i < b.len() {
                    if b[i] == b'\\' {
                        i += 2;
                    } else if b[i] == b'"' && (quotes == 1 || b[i..].starts_with(b"\"\"\"")) {
                        i += quotes;
                        break;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err((
                        i,
                        format!("blocks nested more than {MAX_NESTING} deep"),
                        "a plan needs three levels of { }; check for a missing `}` \
                         (deeper nesting is refused before parsing)"
                            .into(),
                    ));
                }
            }
            b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    Ok(out)
}

/// The end of the `/* */` comment starting at `start` (comments nest).
fn block_comment(b: &[u8], start: usize) -> Result<usize, Problem> {
    let mut open = 0usize;
    let mut i = start;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            open += 1;
            if open > MAX_COMMENT_NESTING {
                return Err((
                    i,
                    format!("comments nested more than {MAX_COMMENT_NESTING} deep"),
                    "close each `/*` with its own `*/` (comments nest); \
                     deeper nesting is refused before parsing"
                        .into(),
                ));
            }
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            open -= 1;
            i += 2;
            if open == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err((
        start,
        "this `/*` comment is never closed".into(),
        "close it with `*/`; comments nest, so every `/*` inside it needs its own `*/`".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_become_spaces_and_strings_are_left_alone() {
        let text = "a \"/* x */\" /* c\n/* d */ é */ b #\"/*\"# \"\"\"\n\"/*\n\"\"\" //x /*\nc";
        let out = prepare(text).unwrap();
        assert_eq!(out.len(), text.len());
        let comment = "/* c\n/* d */ é */";
        assert_eq!(out, text.replace(comment, &" ".repeat(comment.len())));
    }

    #[test]
    fn nesting_limits_and_where_they_are_reported() {
        let deep = "{".repeat(MAX_NESTING + 1);
        for quoted in [
            format!("a \"{deep}\""),
            format!("a #\"{deep}\"#"),
            format!("a ##\"x\"# {deep}\"##"),
            format!("a \"\\\"{deep}\""),
            format!("a \"\"\"\n\"{deep}\n\"\"\""),
            format!("// {deep}\na 1"),
            format!("/* /* {deep} */ */ a 1"),
        ] {
            assert!(prepare(&quoted).is_ok(), "{quoted}");
        }
        assert!(prepare("a #true { b #false; }").is_ok());
        let err = |t: &str| prepare(t).unwrap_err();
        assert_eq!(err(&format!("a 1\n{deep}")).0, 4 + MAX_NESTING);
        let comments = "/*".repeat(MAX_COMMENT_NESTING + 1);
        assert_eq!(
            err(&format!("a 1 {comments}")).0,
            4 + 2 * MAX_COMMENT_NESTING
        );
        let fine = format!(
            "{}{}",
            "/*".repeat(MAX_COMMENT_NESTING),
            "*/".repeat(MAX_COMMENT_NESTING)
        );
        assert!(prepare(&fine).is_ok());
        assert_eq!(err("a 1 /* /* */").0, 4);
        let dashes = "/- ".repeat(MAX_SLASHDASH_RUN);
        assert!(prepare(&format!("{dashes}a; {dashes}b")).is_ok());
        assert_eq!(
            err(&format!("{dashes}/* x */ /- a")).0,
            3 * MAX_SLASHDASH_RUN + 8
        );
    }
}
