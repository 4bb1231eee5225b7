//! One error type for the whole library.
//!
//! Every error carries a [`Kind`] — which decides the process exit code a
//! script sees — a message naming what failed and on what, and optionally a
//! `hint:` telling the user what to try next. Callers match on `kind()`,
//! never on message text.

use std::fmt;

/// What class of failure this is; each maps to one documented exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Anything not covered below (exit 1).
    Failure,
    /// Bad command-line arguments or parameters (exit 2).
    Usage,
    /// The snapshot was saved, but some source data could not be read (exit 3).
    SourceUnreadable,
    /// Stored data is damaged or missing (exit 1, reported distinctly).
    Integrity,
    /// A server the job needs (PostgreSQL, a Kafka broker, the object
    /// store) could not be reached: refused, not found, or no answer within
    /// its timeout, after the retries (exit 4).
    Unavailable,
    /// There is no repository at the given location (exit 10).
    NoRepository,
    /// The repository is locked by another process (exit 11).
    Locked,
    /// No key of the repository opens with the given password or identity (exit 12).
    WrongKey,
    /// The user interrupted the run (exit 130).
    Interrupted,
}

impl Kind {
    /// The process exit code for this kind (see README, "Exit codes").
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Failure | Kind::Integrity => 1,
            Kind::Usage => 2,
            Kind::SourceUnreadable => 3,
            Kind::Unavailable => 4,
            Kind::NoRepository => 10,
            Kind::Locked => 11,
            Kind::WrongKey => 12,
            Kind::Interrupted => 130,
        }
    }
}

/// Every exit code cairn uses, with its meaning in a few words: the list
/// `cairn --help` prints ([`exit_codes_help`]). The README's table says
/// the same at length; a test keeps the two in step.
pub const EXIT_CODES: &[(i32, &str)] = &[
    (0, "ok"),
    (1, "failure"),
    (2, "usage"),
    (3, "some source data unreadable"),
    (4, "a server could not be reached"),
    (10, "no repository"),
    (11, "repository locked"),
    (12, "wrong password or identity"),
    (130, "interrupted"),
];

/// `Exit codes: 0 ok, 1 failure, …` for the command line's help.
pub fn exit_codes_help() -> String {
    let codes: Vec<String> = EXIT_CODES
        .iter()
        .map(|(c, what)| format!("{c} {what}"))
        .collect();
    format!("Exit codes: {}.", codes.join(", "))
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A cairn error: kind, message, optional hint and optional underlying cause.
pub struct Error {
    kind: Kind,
    message: String,
    hint: Option<String>,
    source: Option<BoxError>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(Kind::Failure, message)
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(Kind::Integrity, message)
    }
    pub fn interrupted() -> Self {
        Self::new(Kind::Interrupted, "interrupted")
            .with_hint("nothing that was already saved is damaged; run the command again")
    }
    /// An I/O error with the operation and the path or object it was applied to.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        let denied = err.kind() == std::io::ErrorKind::PermissionDenied;
        let e = Self::failure(what.to_string()).with_source(err);
        if denied {
            return e.with_hint(format!(
                "cairn runs as uid {}; a repository shared by two users (the daemon and \
                 PostgreSQL's archive_command) needs a common group: README \"One repository, two users\"",
                rustix::process::geteuid().as_raw()
            ));
        }
        e
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// The same error, of another kind (e.g. a tool's failure found to be
    /// an unreachable server).
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Prefix the message with more context, keeping kind, hint and cause.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        let mut cause: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {self}", self.kind)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Attach context to fallible operations on paths and objects.
pub trait ResultExt<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

impl<T> ResultExt<T> for Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.context(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_code_in_the_help_list() {
        let kinds = [
            Kind::Failure,
            Kind::Usage,
            Kind::SourceUnreadable,
            Kind::Integrity,
            Kind::Unavailable,
            Kind::NoRepository,
            Kind::Locked,
            Kind::WrongKey,
            Kind::Interrupted,
        ];
        for k in kinds {
            assert!(
                EXIT_CODES.iter().any(|(c, _)| *c == k.exit_code()),
                "{k:?} exits {} which `cairn --help` does not list",
                k.exit_code()
            );
        }
        assert!(exit_codes_help().contains("4 a server could not be reached"));
    }
}
