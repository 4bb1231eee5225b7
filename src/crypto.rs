//! Encryption and keyed hashing.
//!
//! Every stored byte except `config` and the key-file envelope is an age file
//! encrypted to the repository's X25519 recipient. Chunk ids are keyed
//! BLAKE3, so ids reveal nothing about content to someone without the key,
//! and a chunk read back is verified against its id before it is used.

use crate::error::{Error, Kind, Result};
use crate::repo::{ChunkId, Id, KeyMaterial, RepoId};
use age::secrecy::{ExposeSecret, SecretString};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};
use std::str::FromStr;

/// The repository's secrets, unwrapped from a key file.
pub struct MasterKey {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
    hash_key: [u8; 32],
}

/// An upper bound of the size of an age file holding `len` bytes: header
/// (one X25519 stanza, MAC, nonce) plus a 16-byte tag per 64 KiB chunk.
fn age_size(len: usize) -> usize {
    len + 512 + 16 * (len / 65536 + 1)
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        MasterKey {
            identity,
            recipient,
            hash_key: rand::random(),
        }
    }

    pub fn from_material(m: &KeyMaterial) -> Result<MasterKey> {
        let identity = age::x25519::Identity::from_str(&m.identity).map_err(|e| {
            Error::integrity(format!("key material holds an invalid identity: {e}"))
        })?;
        let mut hash_key = [0u8; 32];
        hex::decode_to_slice(&m.hash_key, &mut hash_key).map_err(|e| {
            Error::integrity(format!("key material holds an invalid hash key: {e}"))
        })?;
        let recipient = identity.to_public();
        Ok(MasterKey {
            identity,
            recipient,
            hash_key,
        })
    }

    pub fn material(&self, repo_id: RepoId) -> KeyMaterial {
        KeyMaterial {
            repo_id,
            identity: self.identity.to_string().expose_secret().to_string(),
            hash_key: hex::encode(self.hash_key),
        }
    }

    /// The id of a chunk: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId::from_raw(self.digest(data))
    }

    /// Keyed BLAKE3 of some content: a chunk's id, or a digest that tells
    /// two contents apart without revealing them (a WAL file's).
    pub fn digest(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.hash_key, data).as_bytes())
    }

    /// Seed for the chunker's gear table, so cut points depend on the key too.
    pub fn chunker_seed(&self) -> u64 {
        let h = blake3::keyed_hash(&self.hash_key, b"cairn chunker seed v1");
        u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    }

    /// An age file for `plaintext`. Like `age::encrypt`, but the output is
    /// allocated at its final size: growing it would copy every frame again.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let fail = |e: &dyn std::fmt::Display| Error::failure(format!("encrypting: {e}"));
        let encryptor = age::Encryptor::with_recipients(std::iter::once(
            &self.recipient as &dyn age::Recipient,
        ))
        .map_err(|e| fail(&e))?;
        let mut out = Vec::with_capacity(age_size(plaintext.len()));
        let mut w = encryptor.wrap_output(&mut out).map_err(|e| fail(&e))?;
        w.write_all(plaintext).map_err(|e| fail(&e))?;
        w.finish().map_err(|e| fail(&e))?;
        Ok(out)
    }

    /// The plaintext of an age file (output allocated once, see [`Self::encrypt`]).
    pub fn decrypt(&self, ciphertext: &[u8], what: &dyn std::fmt::Display) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decrypt_into(ciphertext, what, &mut out)?;
        Ok(out)
    }

    /// [`Self::decrypt`] into `out` (cleared first), reusing its memory.
    pub fn decrypt_into(
        &self,
        ciphertext: &[u8],
        what: &dyn std::fmt::Display,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let fail =
            |e: &dyn std::fmt::Display| Error::integrity(format!("{what} does not decrypt: {e}"));
        let d = age::Decryptor::new_buffered(ciphertext).map_err(|e| fail(&e))?;
        let mut r = d
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| fail(&e))?;
        out.clear();
        out.reserve(ciphertext.len());
        r.read_to_end(out).map_err(|e| fail(&e))?;
        Ok(())
    }

    /// Serialize as JSON, compress with zstd, encrypt: index, snapshot, lock, pack header.
    pub fn seal<T: Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        let json = crate::repo::encode::plaintext_json(value)
            .map_err(|e| Error::failure(format!("serializing: {e}")))?;
        let compressed = zstd::bulk::compress(&json, 3)
            .map_err(|e| Error::failure(format!("compressing: {e}")))?;
        self.encrypt(&compressed)
    }

    pub fn unseal<T: DeserializeOwned>(
        &self,
        ciphertext: &[u8],
        what: &dyn std::fmt::Display,
    ) -> Result<T> {
        let compressed = self.decrypt(ciphertext, what)?;
        let json = zstd::stream::decode_all(&compressed[..])
            .map_err(|e| Error::integrity(format!("{what} does not decompress: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| Error::integrity(format!("{what} is not valid: {e}")))
    }
}

/// Wrap key material with a passphrase (age scrypt recipient).
pub fn wrap_with_password(material: &KeyMaterial, password: &str, log_n: u8) -> Result<Vec<u8>> {
    let json =
        crate::repo::encode::plaintext_json(material).map_err(|e| Error::failure(e.to_string()))?;
    let mut r = age::scrypt::Recipient::new(SecretString::from(password.to_string()));
    r.set_work_factor(log_n);
    age::encrypt(&r, &json).map_err(|e| Error::failure(format!("encrypting key: {e}")))
}

/// Wrap key material to an age recipient (`age1...`).
pub fn wrap_to_recipient(material: &KeyMaterial, recipient: &str) -> Result<Vec<u8>> {
    let r = age::x25519::Recipient::from_str(recipient).map_err(|e| {
        Error::usage(format!("{recipient:?} is not an age X25519 recipient: {e}"))
            .with_hint("recipients look like age1…; see `age-keygen -y IDENTITY_FILE`")
    })?;
    let json =
        crate::repo::encode::plaintext_json(material).map_err(|e| Error::failure(e.to_string()))?;
    age::encrypt(&r, &json).map_err(|e| Error::failure(format!("encrypting key: {e}")))
}

/// What the user offers to open a repository.
pub enum Secret {
    Password(String),
    Identities(Vec<age::x25519::Identity>),
}

/// Try to unwrap key material; `Ok(None)` means "not this key".
pub fn unwrap_key(data: &[u8], secret: &Secret) -> Result<Option<KeyMaterial>> {
    let plain = match secret {
        Secret::Password(p) => {
            let mut id = age::scrypt::Identity::new(SecretString::from(p.clone()));
            id.set_max_work_factor(22);
            age::decrypt(&id, data)
        }
        Secret::Identities(ids) => {
            let mut result = Err(age::DecryptError::NoMatchingKeys);
            for id in ids {
                result = age::decrypt(id, data);
                if result.is_ok() {
                    break;
                }
            }
            result
        }
    };
    match plain {
        Ok(json) => serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| Error::integrity(format!("key material is not valid: {e}"))),
        Err(age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys) => Ok(None),
        Err(e) => Err(Error::new(
            Kind::WrongKey,
            format!("key file cannot be opened: {e}"),
        )),
    }
}

/// Read age X25519 identities from an identity file (as written by age-keygen).
pub fn read_identity_file(path: &std::path::Path) -> Result<Vec<age::x25519::Identity>> {
    let text =
        crate::fsutil::read_small_text(path, crate::fsutil::MAX_SECRET_FILE).map_err(|e| {
            Error::usage(format!("cannot read identity file {}: {e}", path.display())).with_hint(
                "check the path (--identity, CAIRN_IDENTITY_FILE or the plan's identity) and \
             that the user cairn runs as can read the file",
            )
        })?;
    let ids: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .filter_map(|l| age::x25519::Identity::from_str(l).ok())
        .collect();
    if ids.is_empty() {
        return Err(
            Error::usage(format!("{} holds no age X25519 identity", path.display()))
                .with_hint("create one with `cairn key add --generate-identity FILE` (or `age-keygen -o FILE`)"),
        );
    }
    Ok(ids)
}

/// A new age X25519 identity written to `path` as `age-keygen` writes one
/// (comment lines, then the secret key), mode 0600, fsynced; an existing
/// file is never replaced. Returns its recipient.
pub fn generate_identity_file(path: &std::path::Path) -> Result<age::x25519::Recipient> {
    use std::os::unix::fs::OpenOptionsExt;
    let id = age::x25519::Identity::generate();
    let public = id.to_public();
    let text = format!(
        "# created: {}\n# public key: {public}\n{}\n",
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        id.to_string().expose_secret()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "an existing identity is never replaced: add it with --new-identity FILE, or name a new file"
            } else {
                "check that the directory exists and that this user may write in it"
            };
            Error::usage(format!("cannot create identity file {}: {e}", path.display()))
                .with_hint(hint)
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn encrypt_decrypt_round_trip(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            let k = MasterKey::generate();
            let ct = k.encrypt(&data).unwrap();
            prop_assert_eq!(k.decrypt(&ct, &"test").unwrap(), data);
        }

        #[test]
        fn flipped_byte_is_detected(data in proptest::collection::vec(any::<u8>(), 1..10_000), pos in any::<prop::sample::Index>()) {
            let k = MasterKey::generate();
            let mut ct = k.encrypt(&data).unwrap();
            let i = pos.index(ct.len());
            ct[i] ^= 0x40;
            prop_assert!(k.decrypt(&ct, &"test").is_err());
        }
    }

    #[test]
    fn encryption_output_fits_its_preallocation() {
        let k = MasterKey::generate();
        for len in [0, 1, 65_535, 65_536, 65_537, 512 * 1024, (1 << 20) + 7] {
            let data = vec![7u8; len];
            let ct = k.encrypt(&data).unwrap();
            assert!(
                ct.len() <= age_size(len),
                "{len}: {} > {}",
                ct.len(),
                age_size(len)
            );
            // Interoperable: the age crate's own decryption reads it.
            assert_eq!(age::decrypt(&k.identity, &ct).unwrap(), data);
        }
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
    }

    #[test]
    fn material_round_trip_via_password() {
        let k = MasterKey::generate();
        let m = k.material(RepoId::random());
        let wrapped = wrap_with_password(&m, "pw", 10).unwrap();
        assert!(unwrap_key(&wrapped, &Secret::Password("nope".into()))
            .unwrap()
            .is_none());
        let back = unwrap_key(&wrapped, &Secret::Password("pw".into()))
            .unwrap()
            .unwrap();
        let k2 = MasterKey::from_material(&back).unwrap();
        assert_eq!(k.chunk_id(b"abc"), k2.chunk_id(b"abc"));
    }
}
