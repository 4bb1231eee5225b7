//! Capturing a child process's standard output as a stored stream: the
//! command source, and the PostgreSQL tools (`pg_dump`, `pg_basebackup`).

use crate::archiver::Packer;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::ChunkId;
use std::io::Read;

/// What a child process wrote to its standard output, stored as chunks.
pub struct CommandOutput {
    pub content: Vec<ChunkId>,
    pub size: u64,
    pub stderr: String,
}

/// Last lines of a program's error output, for messages.
pub fn tail_lines(text: &str, n: usize) -> String {
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(n)..].join(" | ")
}

/// Grow a pipe a tool writes into to 1 MiB (Linux's default limit for
/// unprivileged processes) from 64 KiB, so that the tool and cairn wake
/// each other a sixteenth as often; where that is refused, it stays as is.
fn grow_pipe(pipe: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ on a descriptor this process owns; a failure
    // leaves the pipe unchanged.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pipe;
}

/// Run `cmd`, chunk and store its standard output as it is produced. Fails
/// when it cannot start, when storing fails (the child is killed), or when it
/// exits non-zero — then with the last lines of its standard error.
pub fn store_command_output(
    packer: &mut Packer,
    cmd: &mut std::process::Command,
    what: &str,
    progress: &Progress,
) -> Result<CommandOutput> {
    store_command_output_observed(packer, cmd, what, progress, |_| {})
}

/// [`store_command_output`], handing each piece of the output to `observe`
/// as it goes into the repository.
pub fn store_command_output_observed(
    packer: &mut Packer,
    cmd: &mut std::process::Command,
    what: &str,
    progress: &Progress,
    observe: impl FnMut(&[u8]),
) -> Result<CommandOutput> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::failure("no stdout"))?;
    grow_pipe(&stdout);
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::failure("no stderr"))?;
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let stored = packer.add_stream(
        Observed {
            inner: stdout,
            observe,
        },
        progress,
    );
    if stored.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("waiting for {what}"), e))?;
    let stderr = err_reader.join().unwrap_or_default();
    let (content, size) =
        stored.map_err(|e| e.into_error(format!("reading the output of {what}")))?;
    if !status.success() {
        return Err(Error::failure(format!(
            "{what} failed ({status}): {}",
            tail_lines(&stderr, 5)
        )));
    }
    Ok(CommandOutput {
        content,
        size,
        stderr,
    })
}

/// A reader that shows what it reads to a closure.
pub(crate) struct Observed<R, F> {
    pub(crate) inner: R,
    pub(crate) observe: F,
}

impl<R: Read, F: FnMut(&[u8])> Read for Observed<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.observe)(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool's output pipe holds 1 MiB after growing (Linux).
    #[cfg(target_os = "linux")]
    #[test]
    fn tool_pipes_grow_to_a_mebibyte() {
        use std::os::fd::AsRawFd;
        let (reader, writer) = std::io::pipe().unwrap();
        // SAFETY: F_GETPIPE_SZ on a pipe this test owns.
        let size =
            |fd: &std::io::PipeReader| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(size(&reader), 64 << 10, "a new pipe is 64 KiB");
        grow_pipe(&writer);
        assert_eq!(size(&reader), 1 << 20);
    }
}
