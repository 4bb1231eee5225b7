//! Connections to a PostgreSQL server: [`Target`], the parsed URL whose
//! password stays out of every log and command line; the settings every
//! cairn session runs with; server errors in the server's own words.

use crate::error::{Error, Kind, Result};
use std::time::Duration;

/// How long cairn and PostgreSQL's tools wait for a server to accept a
/// connection when the URL sets no `connect_timeout`: a host that drops
/// packets fails (exit 4) instead of hanging.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings every cairn session uses, so row text (and so checksums) does not
/// depend on the server's or the client's defaults.
const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'";

/// Where a PostgreSQL password goes instead of a URL; the hint whenever a
/// URL holds one (`plan check`, `snapshot --postgres`, `restore --to`).
pub const URL_PASSWORD_HINT: &str =
    "remove it from the URL; cairn gives PostgreSQL its password through PGPASSFILE \
     (~/.pgpass of the user cairn runs as) or PGPASSWORD, never in a plan or on a command line";

/// Whether a PostgreSQL URL holds a password: `user:password@host` or a
/// `password=` parameter. `url` may start with its scheme or after it.
pub fn url_has_password(url: &str) -> bool {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
    let query_password = rest
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")));
    userinfo.is_some_and(|u| u.contains(':')) || query_password
}

/// A parsed connection URL; the password stays out of every log and argv.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    shown: String,
}

impl Target {
    /// Parse a URL as given on the command line or in a plan. One holding a
    /// password is refused (everyone sees argv through `ps`, and plans are
    /// kept in git): the password comes from `PGPASSWORD` (or, for
    /// PostgreSQL's own tools, `PGPASSFILE`).
    pub fn parse(url: &str) -> Result<Target> {
        let password_refused =
            || Error::usage("the PostgreSQL URL contains a password").with_hint(URL_PASSWORD_HINT);
        if url_has_password(url) {
            return Err(password_refused());
        }
        let mut config: postgres::Config = url.parse().map_err(|e| {
            Error::usage(format!("cannot read the PostgreSQL URL: {e}"))
                .with_hint("use postgres://USER@HOST:PORT/DBNAME (put the password in PGPASSFILE or PGPASSWORD)")
        })?;
        // `host=… password=…` is a URL too, for the parser.
        if config.get_password().is_some() {
            return Err(password_refused());
        }
        if let Some(pw) = std::env::var_os("PGPASSWORD") {
            config.password(pw.into_encoded_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres");
        let shown = format!("postgres://{user}@{host}:{port}");
        Ok(Target { config, shown })
    }

    /// The parsed URL (host, port, user, password).
    pub(crate) fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// For messages: no password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn with_db(&self, db: &str) -> postgres::Config {
        let mut c = self.config.clone();
        c.dbname(db);
        c
    }

    /// The database named in the URL, or `postgres`.
    pub fn maintenance_db(&self) -> String {
        self.config.get_dbname().unwrap_or("postgres").to_string()
    }

    /// How long to wait for the server to accept a connection: the URL's
    /// `connect_timeout`, else [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The hint for a server that could not be reached.
    pub(crate) fn unreachable_hint(&self) -> String {
        format!(
            "check that the server runs and that host and port are right; cairn waits {} for it \
             to accept a connection (set connect_timeout=SECONDS in the URL to change that)",
            humantime::format_duration(self.connect_timeout())
        )
    }

    /// The error for this server not being reachable (exit 4).
    pub(crate) fn unreachable(&self, message: String) -> Error {
        Error::new(Kind::Unavailable, message).with_hint(self.unreachable_hint())
    }

    /// A connection to database `db`. A server that cannot be reached
    /// (refused, unknown host, no answer within the connect timeout, or
    /// not accepting connections yet) is [`Kind::Unavailable`] (exit 4);
    /// one that refuses us is a failure.
    pub fn connect(&self, db: &str) -> Result<postgres::Client> {
        let mut client = self.connect_within(db)?.map_err(|e| {
            let message = format!("cannot connect to {}/{db}: {}", self.shown, describe(&e));
            if is_unreachable(&e) {
                self.unreachable(message)
            } else {
                Error::failure(message).with_hint(
                    "check that the server accepts the user and the database exists; \
                     the password comes from PGPASSWORD or PGPASSFILE",
                )
            }
        })?;
        client
            .batch_execute(SESSION_SETUP)
            .map_err(|e| pg_err(self, db, e))?;
        Ok(client)
    }

    /// Connect, but give up when the server has not finished the start-up
    /// and authentication within the connect timeout (plus a margin):
    /// tokio-postgres's timeout covers only the TCP connect, so a server
    /// (or a proxy) that accepts a connection and then says nothing would
    /// hang cairn for ever. The attempt runs in a thread of its own; the
    /// wait ends early on SIGINT/SIGTERM. A thread left waiting on such a
    /// server is counted, and once [`MAX_SILENT`] wait on one server, the
    /// next connection to it fails at once instead of adding another.
    fn connect_within(
        &self,
        db: &str,
    ) -> Result<std::result::Result<postgres::Client, postgres::Error>> {
        let key = self.shown.clone();
        if silent_waiting(&key, 0) >= MAX_SILENT {
            return Err(self.unreachable(format!(
                "{MAX_SILENT} earlier connections to {key} still wait for the server to answer"
            )));
        }
        let config = self.with_db(db);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pg-connect".into())
            .spawn(move || {
                let _ = tx.send(config.connect(postgres::NoTls));
            })
            .map_err(|e| Error::io("starting a connection thread", e))?;
        let deadline = std::time::Instant::now() + self.connect_timeout() + Duration::from_secs(5);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => return Ok(r),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::failure(format!(
                        "connecting to {key}: the attempt ended without a result"
                    )))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            crate::interrupt::check()?;
            if std::time::Instant::now() > deadline {
                // The thread goes on until the server answers or closes.
                silent_waiting(&key, 1);
                let counted = key.clone();
                std::thread::spawn(move || {
                    let _ = rx.recv();
                    silent_waiting(&counted, -1);
                });
                return Err(self.unreachable(format!(
                    "{key} accepted the connection but did not answer within {}",
                    humantime::format_duration(self.connect_timeout() + Duration::from_secs(5))
                )));
            }
        }
    }

    /// Environment for PostgreSQL's tools (libpq variables), for database `db`.
    pub(crate) fn tool_env(&self, db: &str) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => env.push(("PGHOST", h.clone())),
            Some(postgres::config::Host::Unix(p)) => env.push(("PGHOST", p.display().to_string())),
            None => {}
        }
        if let Some(p) = self.config.get_ports().first() {
            env.push(("PGPORT", p.to_string()));
        }
        if let Some(u) = self.config.get_user() {
            env.push(("PGUSER", u.to_string()));
        }
        if let Some(pw) = self.config.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
        }
        env.push(("PGDATABASE", db.to_string()));
        // libpq takes whole seconds, and at least 2.
        let secs = self.connect_timeout().as_secs().max(2);
        env.push(("PGCONNECT_TIMEOUT", secs.to_string()));
        env
    }
}

pub(super) fn pg_err(t: &Target, db: &str, e: postgres::Error) -> Error {
    Error::failure(format!("{}/{db}: {}", t.shown, describe(&e)))
}

/// Whether a failed connection means the server could not be reached —
/// refused, unknown host, no answer in time (tokio-postgres's `Connect`
/// and `Timeout` errors: an I/O error, or none at all, never a server's
/// message), or a server starting up or shutting down — rather than that
/// it answered and refused us (authentication, a missing database).
/// Connection attempts to one server left waiting at most (see
/// [`Target::connect_within`]).
const MAX_SILENT: usize = 4;

/// Add `delta` to the count of attempts waiting on server `key`; returns
/// the count.
fn silent_waiting(key: &str, delta: isize) -> usize {
    static WAITING: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());
    let mut w = WAITING.lock().unwrap_or_else(|e| e.into_inner());
    let i = match w.iter().position(|(k, _)| k == key) {
        Some(i) => i,
        None => {
            w.push((key.to_string(), 0));
            w.len() - 1
        }
    };
    w[i].1 = w[i].1.saturating_add_signed(delta);
    w[i].1
}

fn is_unreachable(e: &postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        return *db.code() == postgres::error::SqlState::CANNOT_CONNECT_NOW;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    // The timeout carries no cause; its words are tokio-postgres's.
    e.to_string().starts_with("timeout waiting for server")
}

/// Whether a PostgreSQL tool's standard error says the server could not be
/// reached, in libpq's words (`pg_dump`, `pg_basebackup`, `psql`, …).
pub(crate) fn says_unreachable(stderr: &str) -> bool {
    const WORDS: [&str; 8] = [
        "Connection refused",
        "could not translate host name",
        "timeout expired",
        "No route to host",
        "Network is unreachable",
        "Is the server running",
        "the database system is starting up",
        "the database system is shutting down",
    ];
    WORDS.iter().any(|w| stderr.contains(w))
}

/// A PostgreSQL tool's failure: [`Kind::Unavailable`], with the hint to
/// match, when its error says the server could not be reached.
pub(crate) fn tool_failure(target: &Target, e: Error) -> Error {
    if e.kind() == Kind::Failure && says_unreachable(e.message()) {
        let hint = target.unreachable_hint();
        e.with_kind(Kind::Unavailable).with_hint(hint)
    } else {
        e
    }
}

/// postgres::Error's Display says only "db error"; show the server's words.
pub(super) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{}: {}", d.severity(), d.message());
            if let Some(detail) = d.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        }
        // "error connecting to server", and why.
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libpq's own words, from the real `pg_dump`, for a port nothing
    /// listens on and a host that does not resolve, are read as an
    /// unreachable server; a server's refusal is not.
    #[test]
    fn libpq_words_for_an_unreachable_server_are_recognised() {
        let pg_dump = super::super::tools::pg_tool("pg_dump");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for url in [
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            "postgres://postgres@cairn-no-such-host.invalid/postgres".into(),
        ] {
            let t = Target::parse(&url).unwrap();
            let out = match std::process::Command::new(&pg_dump)
                .envs(t.tool_env("postgres"))
                .arg("--schema-only")
                .output()
            {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("skipped: pg_dump cannot run ({e})");
                    return;
                }
            };
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(says_unreachable(&err), "{url}: {err}");
            let e = tool_failure(&t, Error::failure(format!("pg_dump failed: {err}")));
            assert_eq!(e.kind(), Kind::Unavailable, "{err}");
        }
        assert!(!says_unreachable(
            "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: \
             FATAL:  password authentication failed for user \"backup\""
        ));
    }

    #[test]
    fn the_connect_timeout_is_the_urls_or_ten_seconds() {
        let t = Target::parse("postgres://u@h/db").unwrap();
        assert_eq!(t.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        assert!(t
            .tool_env("db")
            .contains(&("PGCONNECT_TIMEOUT", "10".into())));
        let t = Target::parse("postgres://u@h/db?connect_timeout=3").unwrap();
        assert_eq!(t.connect_timeout(), Duration::from_secs(3));
        assert!(t
            .tool_env("db")
            .contains(&("PGCONNECT_TIMEOUT", "3".into())));
    }
}
