//! A running `cairn serve` and an SMTP sink (aiosmtpd) for the daemon's
//! tests (`serve`, `daemon_log`).

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-1234";

/// The daemon tests run one at a time: each starts a daemon, an SMTP server
/// and often PostgreSQL and Kafka; run together on two cores their
/// second-scale schedules and thresholds would measure the machine's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Smtp {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Smtp {
    pub fn start(dir: &Path) -> Smtp {
        Smtp::start_on(dir, cairn::testing::free_port().unwrap())
    }

    /// On `port` (one a plan already names, for a server that comes late).
    pub fn start_on(dir: &Path, port: u16) -> Smtp {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtp {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// Every message received so far (raw text).
    pub fn messages(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("new")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            // Undo quoted-printable soft line breaks, so words are whole.
            .map(|m| m.replace("=\r\n", "").replace("=\n", ""))
            .collect()
    }

    pub fn wait_for(&self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| m.contains(needle)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no e-mail containing {needle:?}; got:\n{}",
                self.messages().join("\n-----\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Served {
    pub child: Child,
    pub addr: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    /// `cairn serve` as deployed: no `-v`, default log format.
    pub fn start(env: &Env, plan: &Path) -> Served {
        Served::spawn(env.plan_cmd(), &env.path("state"), plan, &[])
    }

    /// Started in directory `cwd` with state directory `state` (a restart
    /// elsewhere, as a unit or another shell would start it).
    pub fn start_from(env: &Env, plan: &Path, cwd: &Path, state: &Path) -> Served {
        std::fs::create_dir_all(cwd).unwrap();
        let mut cmd = env.plan_cmd();
        cmd.current_dir(cwd);
        Served::spawn(cmd, state, plan, &[])
    }

    /// With more arguments (`--log-format json`, another `--check-every`:
    /// the last one given wins).
    pub fn start_with(env: &Env, plan: &Path, args: &[&str]) -> Served {
        Served::spawn(env.plan_cmd(), &env.path("state"), plan, args)
    }

    /// With environment variables set (e.g. `CAIRN_TEST_CLOCK`).
    pub fn start_env(env: &Env, plan: &Path, vars: &[(&str, &Path)]) -> Served {
        let mut cmd = env.plan_cmd();
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Served::spawn(cmd, &env.path("state"), plan, &[])
    }

    /// Started under `ulimit LIMIT` (e.g. `-n 1024`: soft and hard), as a
    /// small host or a unit without `LimitNOFILE` would run it.
    pub fn start_under_ulimit(env: &Env, plan: &Path, limit: &str) -> Served {
        let sh = env.plan_cmd();
        let mut c = Command::new("sh");
        c.env_clear();
        for (k, v) in sh.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c.stdin(Stdio::null())
            .args(["-c", &format!("ulimit {limit} && exec \"$0\" \"$@\""), BIN]);
        Served::spawn(c, &env.path("state"), plan, &[])
    }

    fn spawn(mut cmd: Command, state: &Path, plan: &Path, args: &[&str]) -> Served {
        let mut child = cmd
            .args(["serve", "--plan"])
            .arg(plan)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--check-every",
                "1s",
                "--state-dir",
            ])
            .arg(state)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            addr.contains(':'),
            "no listen address in {line:?}; stderr: {}",
            stderr.lock().unwrap()
        );
        Served {
            child,
            addr,
            stderr,
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// (status code, body)
    pub fn request(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        self.try_request(method, path, token, "Content-Length: 0\r\n", 120)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// A request with `extra` header lines, given `secs` to answer.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &str,
        secs: u64,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(secs)))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}{extra}Connection: close\r\n\r\n",
            self.addr
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        Ok((code, body))
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.request("GET", "/metrics", Some(TOKEN));
        assert_eq!(code, 200, "{body}");
        body
    }

    /// `/metrics`, checked by [`check_metrics`].
    pub fn checked_metrics(&self) -> Metrics {
        check_metrics(&self.metrics())
    }

    /// POST, retrying while another run holds the daemon (409).
    pub fn post_when_free(&self, path: &str) -> (u16, String) {
        for _ in 0..100 {
            let (code, body) = self.request("POST", path, Some(TOKEN));
            if code != 409 {
                return (code, body);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{path}: the daemon stayed busy");
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.request("GET", "/status", Some(TOKEN));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn wait_until(
        &self,
        what: &str,
        secs: u64,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn stop(mut self) -> (Option<i32>, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), self.log());
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Served {
    /// A failed test must not leave its daemon running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn plan(env: &Env, body: &str) -> PathBuf {
    let hash = blake3::hash(TOKEN.as_bytes()).to_hex();
    env.write_plan(&format!(
        "api {{\n    listen \"127.0.0.1:8420\"\n    token \"tests\" hash=\"blake3:{hash}\"\n}}\n{body}"
    ))
}

pub fn email(smtp: &Smtp, extra: &str) -> String {
    email_to_port(smtp.port, extra)
}

/// The alerts node of [`email`] for an SMTP server on `port`.
pub fn email_to_port(port: u16, extra: &str) -> String {
    format!(
        "alerts {{\n    email {{\n        smtp \"127.0.0.1\" port={} security=\"plain\"\n        from \"cairn@example.test\"\n        to \"oncall@example.test\" \"dba@example.test\"\n    }}\n    repeat-every \"1h\"\n{extra}}}\n",
        port
    )
}

/// The samples of a `/metrics` text: `name{labels}` (as written) → value.
pub struct Metrics {
    pub text: String,
    samples: std::collections::BTreeMap<String, f64>,
}

impl Metrics {
    /// The value of series `series` (`name` or `name{label="v"}`, as written).
    pub fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    pub fn has(&self, series: &str) -> bool {
        self.samples.contains_key(series)
    }
}

/// Check a `/metrics` text with Prometheus's own parser and linter
/// (`promtool check metrics`, installed by `scripts/setup`; skipped with a
/// message without it), then here: every sample's family has a TYPE line
/// before it, counters and only counters end in `_total`, every value is a
/// number. Returns the samples.
pub fn check_metrics(text: &str) -> Metrics {
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Err(e) => {
            eprintln!("promtool not found ({e}): skipping its check; scripts/setup installs it")
        }
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {:?}\n{}{}\n--- the metrics:\n{text}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let mut types = std::collections::HashMap::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "counters, and only counters, end in _total: {line}"
            );
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(types.contains_key(name), "no TYPE line before {line:?}");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}"));
            samples.insert(series.to_string(), v);
        }
    }
    Metrics {
        text: text.to_string(),
        samples,
    }
}
