//! PostgreSQL as a backup source: logical snapshots (`pg_dump`, proven
//! table by table), physical ones (base backups plus archived WAL), and
//! their restores.
//!
//! One concern a file. Top to bottom, each file uses only files below it:
//!
//! ```text
//! pitr_test     proving a physical snapshot: recovery to a random time of its range, pg_amcheck
//! pitr          point-in-time restore: base backup + WAL replay
//! wal_archive   the WAL archive put to use: reach, gaps for check, expiry for prune
//! prefetch      wal-fetch reading the next segments ahead into a spool
//! wal           wal-push, wal-fetch, claims, check of the WAL archive
//! wal_chain     segment names, a base backup's unbroken run, gaps, reach, expiry rules
//! wal_records   reading a segment's records: the last transaction's time
//! physical      base backups into the repository
//! replication   BASE_BACKUP over cairn's own replication connection
//! restore_test  proving a snapshot restores (scratch cluster, pg_amcheck)
//! restore       logical restores, then every relation compared
//! dump          logical backups: pg_dumpall globals, one pg_dump a database
//! early_proof   proving tables while pg_restore --jobs builds indexes
//! copy          loading a dump's largest table with cairn's own COPY
//! cluster       throwaway clusters (restore tests, the test suite)
//! checksum      row counts and checksums of relations
//! meta          what a snapshot records: PgMeta, PhysicalMeta, TableSum …
//! stream        a dump's row sums and data offsets, read as it is stored
//! offsets       DataOffsets; writing them into a spooled dump's TOC
//! archive       reading pg_dump's custom format: header, TOC, data blocks
//! rows          COPY text: row hashes, column lists
//! tools         PostgreSQL's programs: finding and running them
//! conn          Target: a server URL, connections, session settings
//! ```
//!
//! The rest of the crate (and the tests) use what this file re-exports.

pub(crate) mod archive;
pub(crate) mod checksum;
pub(crate) mod cluster;
pub(crate) mod conn;
pub(crate) mod copy;
pub(crate) mod dump;
pub(crate) mod early_proof;
pub(crate) mod meta;
pub(crate) mod offsets;
pub(crate) mod physical;
pub(crate) mod pitr;
pub(crate) mod pitr_test;
pub(crate) mod prefetch;
pub(crate) mod replication;
pub(crate) mod restore;
pub(crate) mod restore_test;
pub(crate) mod rows;
pub(crate) mod stream;
pub(crate) mod tools;
pub(crate) mod wal;
pub(crate) mod wal_archive;
pub(crate) mod wal_chain;
pub(crate) mod wal_records;

pub use checksum::Proof;
pub use cluster::ScratchCluster;
pub use conn::{url_has_password, Target, URL_PASSWORD_HINT};
pub use dump::archive_logical;
pub use physical::{archive_physical, ARCHIVE_TIMEOUT};
pub use pitr::{
    check_pgdata, choose as choose_pitr, restore_chosen, restore_pitr, Bases, ExistingPgdata,
    PitrChoice, PitrOptions, RecoveryTarget,
};
pub use pitr_test::{pitr_test, PitrTest, TestPoint};
pub use restore::{restore_logical, RestoreOptions};
pub use restore_test::{restore_test, RestoreTest};
pub use wal::{check_wal, read_wal_entry, wal_entries, wal_fetch, wal_push};
pub use wal_archive::{
    continuity_problems, damaged_wal, expired_wal, list_wal, reach, remove_expired_wal,
    wal_archive, ExpiredWal,
};
pub use wal_chain::WalArchive;
