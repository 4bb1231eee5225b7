//! Throwaway PostgreSQL clusters: `initdb` in a temporary directory, started
//! on a free port with its socket in that directory, stopped and removed on
//! drop. Used by `check --restore-test` and by the tests.

use super::tools::{is_root, pg_command};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::process::Command;

pub struct ScratchCluster {
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
}

fn run(mut c: Command, what: &str) -> Result<()> {
    let out = c
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(Error::failure(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

impl ScratchCluster {
    /// `initdb` and start a cluster; `settings` are extra `-c name=value`.
    pub fn start(settings: &[(&str, &str)]) -> Result<ScratchCluster> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| Error::io("creating a scratch cluster directory", e))?;
        if is_root() {
            let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes())
                .map_err(|_| Error::failure("bad temporary path"))?;
            // uid/gid of postgres, looked up by name.
            // SAFETY: the name is a NUL-terminated literal; the result is
            // checked for null before it is read.
            let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
            if pw.is_null() {
                return Err(
                    Error::failure("no `postgres` user to run a scratch cluster").with_hint(
                        "install PostgreSQL (scripts/setup) or run cairn as a non-root user",
                    ),
                );
            }
            // SAFETY: `pw` is not null and points at libc's passwd entry,
            // valid until the next getpwnam-family call (cairn makes no
            // other); both fields are copied out here.
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
                return Err(Error::io(
                    "chown scratch dir",
                    std::io::Error::last_os_error(),
                ));
            }
        }
        let data = dir.path().join("data");
        let mut init = pg_command("initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        run(init, "initdb")
            .map_err(|e| e.with_hint("is PostgreSQL installed? (scripts/setup postgres)"))?;
        let port = free_port()?;
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        for (k, v) in settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let mut start = pg_command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "-o", &opts, "start"]);
        run(start, "pg_ctl start")?;
        Ok(ScratchCluster {
            dir,
            port,
            running: true,
        })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"]);
        run(c, "pg_ctl stop")
    }

    /// Start it again after [`stop`](Self::stop).
    #[cfg(any(test, feature = "testing"))]
    pub fn restart(&mut self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let mut start = pg_command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o", &opts, "start"]);
        run(start, "pg_ctl start")?;
        self.running = true;
        Ok(())
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
