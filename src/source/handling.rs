//! How a stored source is restored and proven: the one place that
//! dispatches over [`SourceKind`] (and a PostgreSQL source's backup kind).
//! Commands, restore tests and plan restores ask [`handling`] instead of
//! comparing kind names.

use crate::repo::postgres::{PgBackupKind, PhysicalMeta};
use crate::repo::{SourceKind, SourceRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// A node list restored into a directory (files, stdin, command output).
    Nodes,
    /// A logical PostgreSQL backup, restored into a server; restore-tested
    /// in a scratch cluster.
    PgLogical,
    /// A PostgreSQL base backup, restored into a data directory and
    /// recovered to a time from the archived WAL.
    PgPhysical,
    /// Kafka topics, records and group offsets, restored into a cluster;
    /// restore-tested on a scratch broker.
    Kafka,
    /// Written by a newer cairn: listed and forgotten, never restored.
    Unknown,
}

/// How `source` is restored and proven.
pub fn handling(source: &SourceRecord) -> Handling {
    match &source.kind {
        SourceKind::Files | SourceKind::Stdin | SourceKind::Command => Handling::Nodes,
        SourceKind::Postgres => match source.metadata.get("kind").and_then(|k| k.as_str()) {
            Some("physical") => Handling::PgPhysical,
            _ => Handling::PgLogical,
        },
        SourceKind::Kafka => Handling::Kafka,
        SourceKind::Unknown(_) => Handling::Unknown,
    }
}

impl Handling {
    /// What it is, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Handling::Nodes => "file",
            Handling::PgLogical => "logical PostgreSQL",
            Handling::PgPhysical => "physical PostgreSQL",
            Handling::Kafka => "Kafka",
            Handling::Unknown => "unknown",
        }
    }

    /// The `cairn restore` options that restore it.
    pub fn restore_with(self) -> &'static str {
        match self {
            Handling::Nodes => "--target DIR",
            Handling::PgLogical => "--to URL",
            Handling::PgPhysical => "--pgdata DIR --at TIME",
            Handling::Kafka => "--to-brokers HOST:PORT",
            Handling::Unknown => "a newer cairn",
        }
    }
}

/// The base backup's metadata of a physical PostgreSQL source.
pub fn physical_meta(source: &SourceRecord) -> Option<PhysicalMeta> {
    (handling(source) == Handling::PgPhysical)
        .then(|| serde_json::from_value::<PhysicalMeta>(source.metadata.clone()).ok())
        .flatten()
        .filter(|m| m.kind == PgBackupKind::Physical)
}
