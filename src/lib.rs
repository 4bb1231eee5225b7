//! cairn: deduplicating, encrypted, content-addressed backups.
//!
//! Data flows source → [`chunk`] → [`archiver`] (frames, packs) →
//! [`backend`]; [`restorer`] runs it backwards. Everything stored is defined
//! in [`repo`] and specified in `spec/repository.md`.

pub mod archiver;
pub mod backend;
pub mod chunk;
pub mod cli;
pub mod commands;
pub mod crypto;
pub mod daemon;
pub mod error;
pub mod fsutil;
pub mod index;
pub mod interrupt;
pub mod job;
pub mod lock;
pub mod logging;
pub mod ops;
pub mod orchestrate;
pub mod plan;
pub mod progress;
pub mod prove;
pub mod repo;
pub mod repository;
pub mod restorer;
pub mod retention;
pub mod source;

pub use error::{Error, Kind, Result};
pub use repository::Repository;
