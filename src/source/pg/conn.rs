//! Connections to a PostgreSQL server: [`Target`], the parsed URL whose
//! password stays out of every log and command line; the settings every
//! cairn session runs with; server errors in the server's own words.

use crate::error::{Error, Result};

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

    pub fn connect(&self, db: &str) -> Result<postgres::Client> {
        let mut client = self
            .with_db(db)
            .connect(postgres::NoTls)
            .map_err(|e| {
                Error::failure(format!("cannot connect to {}/{db}: {}", self.shown, describe(&e)))
                    .with_hint("check that the server runs and accepts the user; the password comes from PGPASSWORD or PGPASSFILE")
            })?;
        client
            .batch_execute(SESSION_SETUP)
            .map_err(|e| pg_err(self, db, e))?;
        Ok(client)
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
        env.push(("PGCONNECT_TIMEOUT", "10".into()));
        env
    }
}

pub(super) fn pg_err(t: &Target, db: &str, e: postgres::Error) -> Error {
    Error::failure(format!("{}/{db}: {}", t.shown, describe(&e)))
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
        None => e.to_string(),
    }
}
