//! PostgreSQL as a backup source: logical snapshots (`pg_dump`, proven
//! table by table), physical ones (base backups plus archived WAL) and
//! their restores.
//!
//! The rest of the crate uses what this file re-exports.

pub mod archive;
pub mod cluster;
pub mod copy;
pub mod physical;
pub mod replication;
pub mod restore;

pub use cluster::{free_port, ScratchCluster};
pub use physical::{
    archive_physical, check_wal, restore_pitr, wal_entries, wal_fetch, wal_push, PhysicalMeta,
    PitrOptions,
};
pub use restore::{
    archive_logical, pg_tool, restore_logical, restore_test, Proof, RestoreOptions, RestoreTest,
    Target,
};
