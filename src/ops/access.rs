//! How to reach and unlock a repository: its location, the key offered and
//! the index cache, as the command line gives them or a plan declares them.

use super::key_cache;
use crate::backend;
use crate::crypto::{self, Secret};
use crate::error::{Error, Result};
use crate::index::{CacheOptions, CACHE_MEMORY};
use crate::plan::Plan;
use crate::repository::Repository;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Where a repository is and what opens it.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// A local directory or `s3://BUCKET/PREFIX`.
    pub location: Option<String>,
    pub password_file: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    /// The index cache's directory (a default one when `None`).
    pub cache_dir: Option<PathBuf>,
    /// A throwaway index cache.
    pub no_cache: bool,
    /// Never read or write the unlocked-key cache.
    pub no_key_cache: bool,
    /// The index cache's page cache in memory, when not
    /// [`CACHE_MEMORY`](crate::index::CACHE_MEMORY): a restore, whose
    /// lookups come in chunk-id order, needs far less.
    pub index_memory: Option<usize>,
}

/// The first line of a password file; an empty one is an error.
pub fn read_password_file(path: &std::path::Path) -> Result<String> {
    // A file that is not there or not readable is a mistake in the
    // command line or the environment: usage (exit 2).
    let text =
        crate::fsutil::read_small_text(path, crate::fsutil::MAX_SECRET_FILE).map_err(|e| {
            Error::usage(format!("cannot read password file {}: {e}", path.display())).with_hint(
                "check the path (--password-file, CAIRN_PASSWORD_FILE or the plan's \
             password-file) and that the user cairn runs as can read the file",
            )
        })?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(Error::usage(format!(
            "password file {} is empty",
            path.display()
        )));
    }
    Ok(pw)
}

impl Access {
    pub fn location(&self) -> Result<String> {
        self.location.clone().ok_or_else(|| {
            Error::usage("no repository given").with_hint(
                "pass -r/--repo PATH or set CAIRN_REPOSITORY (create one with `cairn init -r PATH`)",
            )
        })
    }

    /// The secret offered: identity file, password file, environment or prompt.
    pub fn secret(&self) -> Result<Secret> {
        if let Some(id) = &self.identity {
            return Ok(Secret::Identities(crypto::read_identity_file(id)?));
        }
        if let Some(f) = &self.password_file {
            return Ok(Secret::Password(read_password_file(f)?));
        }
        if let Ok(pw) = std::env::var("CAIRN_PASSWORD") {
            if !pw.is_empty() {
                return Ok(Secret::Password(pw));
            }
        }
        if std::io::stdin().is_terminal() {
            let pw = rpassword::prompt_password("repository password: ")
                .map_err(|e| Error::io("reading the password from the terminal", e))?;
            return Ok(Secret::Password(pw));
        }
        Err(Error::usage("no password or identity given").with_hint(
            "use --password-file FILE, CAIRN_PASSWORD_FILE, CAIRN_PASSWORD, or --identity FILE",
        ))
    }

    /// The index cache's directory: the one given, else `$XDG_CACHE_HOME/cairn`
    /// or `~/.cache/cairn`; none with `no_cache`.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        if let Some(d) = &self.cache_dir {
            return Some(d.clone());
        }
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return Some(PathBuf::from(x).join("cairn"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("cairn"))
    }

    /// Open the repository (unlocking its key).
    pub fn open(&self) -> Result<Repository> {
        let location = self.location()?;
        let backend = backend::open(&location)?;
        // Fail with "no repository" before asking for a password.
        let config = Repository::read_config(backend.as_ref())?;
        let cache = CacheOptions {
            dir: self.cache_dir(),
            memory: self.index_memory.unwrap_or(CACHE_MEMORY),
        };
        // A password from a file may be cached (spec/repository.md §9).
        let cached = match (&self.key_cache_dir(), &self.password_file) {
            (Some(dir), Some(f)) if self.identity.is_none() => {
                key_cache::stamp(f).map(|st| (dir.clone(), st))
            }
            _ => None,
        };
        if let Some((dir, st)) = &cached {
            if let Some((key, key_id)) = key_cache::load(dir, config.id, st, backend.as_ref())? {
                tracing::debug!("key {} unlocked from the key cache", key_id.short());
                return Repository::open_unlocked(backend, config, key, key_id, cache);
            }
        }
        let secret = self.secret()?;
        let repo_id = config.id;
        let repo = Repository::open_with_config(backend, config, &secret, cache)?;
        if let Some((dir, st)) = cached {
            // The file read for the password must be the one stamped.
            if key_cache::stamp(self.password_file.as_deref().unwrap_or(Path::new("")))
                .is_some_and(|now| now == st)
            {
                key_cache::store(&dir, repo_id, repo.key_id, &repo.key, st);
            }
        }
        Ok(repo)
    }

    /// Where the unlocked-key cache lives: beside the index cache, unless
    /// either is turned off.
    pub fn key_cache_dir(&self) -> Option<PathBuf> {
        if self.no_key_cache {
            return None;
        }
        self.cache_dir()
    }

    /// `restore_command` for a restored cluster, without ` %f %p`: this
    /// binary's `wal-fetch` with this repository, key file and cache, all
    /// absolute (the server runs it from its data directory). A key that
    /// is not in a file (a prompt, `CAIRN_PASSWORD`) cannot be handed on.
    pub fn wal_fetch_command(&self) -> Result<String> {
        let exe = std::env::current_exe().map_err(|e| Error::io("finding the cairn binary", e))?;
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let repo = self.location()?;
        let repo = if repo.contains("://") {
            repo
        } else {
            abs(Path::new(&repo)).display().to_string()
        };
        let mut cmd = format!("{} wal-fetch -q -r {repo}", abs(&exe).display());
        if let Some(id) = &self.identity {
            cmd.push_str(&format!(" --identity {}", abs(id).display()));
        } else if let Some(pw) = &self.password_file {
            cmd.push_str(&format!(" --password-file {}", abs(pw).display()));
        } else {
            return Err(Error::usage("a point-in-time restore needs --password-file or --identity")
                .with_hint("the restored cluster's restore_command runs cairn wal-fetch and must open the repository by itself"));
        }
        if let Some(c) = self.cache_dir() {
            cmd.push_str(&format!(" --cache-dir {}", abs(&c).display()));
        }
        Ok(cmd)
    }

    /// This access completed by `plan`'s repository node: its location, and
    /// its key and cache unless given here (what is given here wins).
    pub fn with_plan(&self, plan: &Plan) -> Result<Access> {
        let r = &plan.repository;
        if self.location.as_deref().is_some_and(|x| x != r.location) {
            return Err(Error::usage(format!(
                "-r {} differs from the plan's repository {}",
                self.location.as_deref().unwrap_or_default(),
                r.location
            ))
            .with_hint("leave out -r/CAIRN_REPOSITORY when using --plan or CAIRN_PLAN"));
        }
        let mut a = self.clone();
        a.location = Some(r.location.clone());
        if a.identity.is_none() && a.password_file.is_none() {
            a.identity = r.identity.clone();
            a.password_file = r.password_file.clone();
        }
        if a.cache_dir.is_none() {
            a.cache_dir = r.cache_dir.clone();
        }
        Ok(a)
    }
}
