//! cairn: deduplicating, encrypted, content-addressed backups.
//!
//! Data flows source → [`chunk`] → [`archiver`] (frames, packs) →
//! [`backend`]; [`restorer`] runs it backwards. Everything stored is defined
//! in [`repo`] and specified in `spec/repository.md`.
//!
//! The public modules are the library: the on-disk format, opening and
//! reading a repository, writing to it, retention and the operations the
//! daemon and commands share ([`ops`]). The command line, the daemon, the
//! sources and the backup job are the binary's ([`run`] is its entry point).

pub mod archiver;
pub mod backend;
pub mod chunk;
pub mod crypto;
pub mod error;
pub mod index;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod repo;
pub mod repository;
pub mod restorer;
pub mod retention;

mod app;
pub(crate) mod cli;
pub(crate) mod clock;
pub(crate) mod commands;
pub(crate) mod daemon;
pub(crate) mod fsutil;
pub(crate) mod interrupt;
pub(crate) mod job;
pub(crate) mod lock;
pub(crate) mod logging;
pub(crate) mod orchestrate;
pub(crate) mod prove;
pub(crate) mod source;
#[cfg(feature = "testing")]
pub mod testing;

pub use app::run;
pub use error::{Error, Kind, Result};
pub use repository::Repository;
