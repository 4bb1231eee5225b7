//! Where backup data comes from, besides plain files and streams
//! (those live in `archiver`): PostgreSQL now, Kafka later.
//!
//! A source produces nodes (named streams stored like files) plus metadata
//! recorded in the snapshot, so a restore can be proven equal to what was
//! backed up.

pub mod pg_cluster;
pub mod pg_physical;
pub mod postgres;
