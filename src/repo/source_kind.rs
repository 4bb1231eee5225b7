//! The kind of a source in a snapshot ([`SourceRecord::kind`](super::SourceRecord)).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What a snapshot source holds, stored as its lowercase name.
///
/// A name this build does not know (written by a newer cairn) reads as
/// [`SourceKind::Unknown`] and is kept as written, so listing and
/// forgetting such a snapshot still work; restoring or testing that source
/// is refused with a hint to upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// Files and directories (a node list).
    Files,
    /// Standard input stored as one file.
    Stdin,
    /// A command's standard output stored as one file.
    Command,
    /// A PostgreSQL cluster, logical or physical ([`super::postgres`]).
    Postgres,
    /// A Kafka cluster's topics, records and group offsets ([`super::kafka`]).
    Kafka,
    Unknown(String),
}

impl SourceKind {
    /// Every kind this build reads and writes.
    pub const KNOWN: [SourceKind; 5] = [
        SourceKind::Files,
        SourceKind::Stdin,
        SourceKind::Command,
        SourceKind::Postgres,
        SourceKind::Kafka,
    ];

    /// The stored name.
    pub fn as_str(&self) -> &str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Stdin => "stdin",
            SourceKind::Command => "command",
            SourceKind::Postgres => "postgres",
            SourceKind::Kafka => "kafka",
            SourceKind::Unknown(s) => s,
        }
    }

    pub fn parse(s: &str) -> SourceKind {
        SourceKind::KNOWN
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or_else(|| SourceKind::Unknown(s.to_string()))
    }

    /// How people call it in messages.
    pub fn label(&self) -> &str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Stdin => "standard input",
            SourceKind::Command => "command output",
            SourceKind::Postgres => "PostgreSQL",
            SourceKind::Kafka => "Kafka",
            SourceKind::Unknown(s) => s,
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SourceKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SourceKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SourceKind, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(SourceKind::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_kept() {
        for k in SourceKind::KNOWN {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<SourceKind>(&json).unwrap(), k);
        }
        let k: SourceKind = serde_json::from_str("\"mysql\"").unwrap();
        assert_eq!(k, SourceKind::Unknown("mysql".into()));
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"mysql\"");
    }
}
