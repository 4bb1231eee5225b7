//! PostgreSQL as a backup source: logical snapshots (`pg_dump`, proven
//! table by table), physical ones (base backups plus archived WAL) and
//! their restores.
//!
//! The rest of the crate uses what this file re-exports.

pub mod archive;
pub mod checksum;
pub mod cluster;
pub mod conn;
pub mod copy;
pub mod dump;
pub mod early_proof;
pub mod meta;
pub mod offsets;
pub mod physical;
pub mod pitr;
pub mod replication;
pub mod restore;
pub mod restore_test;
pub mod rows;
pub mod stream;
pub mod tools;
pub mod wal;

pub use checksum::Proof;
pub use cluster::{free_port, ScratchCluster};
pub use conn::Target;
pub use dump::archive_logical;
pub use meta::PhysicalMeta;
pub use physical::archive_physical;
pub use pitr::{restore_pitr, PitrOptions};
pub use restore::{restore_logical, RestoreOptions};
pub use restore_test::{restore_test, RestoreTest};
pub use tools::pg_tool;
pub use wal::{check_wal, wal_entries, wal_fetch, wal_push};
