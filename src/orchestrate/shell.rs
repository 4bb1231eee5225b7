//! The commands of a plan: `sh -c COMMAND` in its own process group, with
//! its output kept in a temporary file.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How much of a failing command's output the report keeps (the end of it).
const OUTPUT_TAIL: usize = 4000;

/// The outcome of one shell command.
#[derive(Clone, Debug)]
pub struct ShellOutcome {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The end of its standard output and error, interleaved.
    pub output: String,
}

/// Run `sh -c command` in `dir`, in a process group of its own, for at most
/// `timeout` (then the group is killed). Output goes to a temporary file, so
/// a background process it starts cannot keep cairn waiting.
pub fn run_shell(command: &str, dir: &Path, timeout: Duration) -> Result<ShellOutcome> {
    use std::os::unix::process::CommandExt;
    let mut file = tempfile::tempfile()
        .map_err(|e| Error::io("creating a temporary file for command output", e))?;
    let clone = |f: &std::fs::File| {
        f.try_clone()
            .map_err(|e| Error::io("duplicating a file descriptor", e))
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(clone(&file)?))
        .stderr(Stdio::from(clone(&file)?))
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("running `{command}` with sh"), e))?;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                // The whole group: sh and whatever it started in the foreground.
                if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                break child
                    .wait()
                    .map_err(|e| Error::io(format!("waiting for `{command}`"), e))?;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::io(format!("waiting for `{command}`"), e)),
        }
    };
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let start = len.saturating_sub(OUTPUT_TAIL as u64);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.take(OUTPUT_TAIL as u64).read_to_end(&mut buf);
    }
    let mut output = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        output.insert(0, '…');
    }
    Ok(ShellOutcome {
        code: status.code(),
        timed_out,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_output_exit_code_and_timeout() {
        let dir = std::env::temp_dir();
        let o = run_shell(
            "echo out; echo err >&2; exit 3",
            &dir,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.code, Some(3));
        assert!(!o.timed_out);
        assert_eq!(o.output, "out\nerr\n");
        // A background process holding the output open does not keep us waiting.
        let t = Instant::now();
        let o = run_shell("sleep 5 & echo started", &dir, Duration::from_secs(10)).unwrap();
        assert_eq!(o.code, Some(0));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let t = Instant::now();
        let o = run_shell("sleep 10", &dir, Duration::from_millis(300)).unwrap();
        assert!(o.timed_out);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
