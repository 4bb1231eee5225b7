//! Ids: 32 bytes, written as 64 lowercase hex digits.
//!
//! [`Id`] is the raw form. Each kind of thing cairn names by an id has its
//! own type over the same bytes and the same serialization, so the compiler
//! refuses a pack id where a chunk id is expected: [`ChunkId`] (keyed BLAKE3
//! of a chunk's plaintext), the file ids [`PackId`], [`IndexId`],
//! [`SnapshotId`], [`KeyId`], [`LockId`] and [`ProofId`] (plain BLAKE3 of
//! the stored bytes, each naming a file of one [`FileKind`]), and
//! [`RepoId`] (random, made by `init`). A raw `Id` remains for what no
//! other record refers to by a typed id: a WAL file's name suffix, content
//! digests, and a file of any kind in the backend. Conversions are
//! explicit: `from_raw` and `raw`.

use super::file_kind::FileKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A 32-byte identifier, written as 64 lowercase hex digits.
///
/// The untyped form of every id below; on its own, the name of a file of
/// any kind and a content digest (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// Plain (unkeyed) BLAKE3 of stored bytes: the name of a repository file.
    pub fn of_bytes(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }
    pub fn random() -> Id {
        Id(rand::random())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The first 8 hex digits, as shown in listings.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
    pub fn parse(s: &str) -> Option<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid id {s:?}")))
    }
}

/// A typed id that names a repository file: the BLAKE3 of the file's
/// stored bytes, in the directory of [`KIND`](Self::KIND).
pub trait FileId: Copy {
    const KIND: FileKind;
    /// The file's name: the id in hex.
    fn raw(self) -> Id;
    fn from_raw(id: Id) -> Self;
}

/// One typed id: a newtype over the 32 bytes with [`Id`]'s methods and
/// serialization; `file Kind` makes it a [`FileId`] of that file kind.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The typed id of a raw one (same bytes).
            pub const fn from_raw(id: Id) -> $name {
                $name(id.0)
            }
            /// The raw id (same bytes).
            pub const fn raw(self) -> Id {
                Id(self.0)
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
            pub fn parse(s: &str) -> Option<$name> {
                Id::parse(s).map($name::from_raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.raw().serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                Id::deserialize(d).map($name::from_raw)
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, file $kind:ident) => {
        typed_id!($(#[$doc])* $name);

        impl $name {
            /// BLAKE3 of the file's stored bytes: its name.
            pub fn of_bytes(data: &[u8]) -> $name {
                $name::from_raw(Id::of_bytes(data))
            }
        }

        impl FileId for $name {
            const KIND: FileKind = FileKind::$kind;
            fn raw(self) -> Id {
                $name::raw(self)
            }
            fn from_raw(id: Id) -> $name {
                $name::from_raw(id)
            }
        }
    };
}

typed_id!(
    /// A chunk: keyed BLAKE3 of its plaintext (`MasterKey::chunk_id`).
    ChunkId
);
typed_id!(
    /// A repository: random, made by `init`; names the local index cache.
    RepoId
);
typed_id!(
    /// A pack file, `data/<id>`.
    PackId, file Pack
);
typed_id!(
    /// An index file, `index/<id>`.
    IndexId, file Index
);
typed_id!(
    /// A snapshot file, `snapshots/<id>`: a restore point.
    SnapshotId, file Snapshot
);
typed_id!(
    /// A key file, `keys/<id>`.
    KeyId, file Key
);
typed_id!(
    /// A lock file, `locks/<id>`.
    LockId, file Lock
);
typed_id!(
    /// A proof file, `proofs/<id>`: one restore test's outcome.
    ProofId, file Proof
);

impl RepoId {
    pub fn random() -> RepoId {
        RepoId::from_raw(Id::random())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hex_round_trip(bytes in any::<[u8; 32]>()) {
            let id = Id(bytes);
            prop_assert_eq!(Id::parse(&id.to_hex()), Some(id));
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        }

        /// A typed id is stored exactly as the raw id of the same bytes.
        #[test]
        fn typed_ids_serialize_as_raw(bytes in any::<[u8; 32]>()) {
            let raw = serde_json::to_string(&Id(bytes)).unwrap();
            prop_assert_eq!(&serde_json::to_string(&ChunkId(bytes)).unwrap(), &raw);
            prop_assert_eq!(&serde_json::to_string(&PackId(bytes)).unwrap(), &raw);
            prop_assert_eq!(serde_json::from_str::<SnapshotId>(&raw).unwrap(), SnapshotId(bytes));
            prop_assert_eq!(PackId::parse(&Id(bytes).to_hex()), Some(PackId(bytes)));
        }
    }

    #[test]
    fn file_ids_name_their_kind() {
        assert_eq!(PackId::KIND, FileKind::Pack);
        assert_eq!(IndexId::KIND, FileKind::Index);
        assert_eq!(SnapshotId::KIND, FileKind::Snapshot);
        assert_eq!(KeyId::KIND, FileKind::Key);
        assert_eq!(LockId::KIND, FileKind::Lock);
        assert_eq!(ProofId::KIND, FileKind::Proof);
        assert_eq!(PackId::of_bytes(b"x").raw(), Id::of_bytes(b"x"));
    }
}
