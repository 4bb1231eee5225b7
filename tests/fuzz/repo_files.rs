//! The repository's files: config, key files, sealed files (index,
//! snapshot, pack header, lock, proof, WAL entry), node lists and packs.
//! Seeds are the golden encodings (`src/repo/snapshots/`, pinned output of
//! cairn's writers) re-encoded by `repo::encode`, and packs built from them.

use crate::harness::fuzz;
use crate::mutate::inputs;
use cairn::backend::FileRef;
use cairn::backend::LocalBackend;
use cairn::crypto::{self, MasterKey, Secret};
use cairn::repo::encode::{pack_trailer, parse_node_list, plaintext_json};
use cairn::repo::{
    split_pack, ChunkEntry, Compression, FrameEntry, IndexFile, LockFile, PackHeader, PackId,
    Proof, Snapshot, WalEntry,
};
use cairn::repository::{compress_with_prefix, decode_frame_bytes, read_key_file, Repository};
use std::sync::OnceLock;

const JSON: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"4294967296",
    b"\"\\u0000\"",
    b"\"../x\"",
    b"\"/\"",
    b"{\"path\":\"a\",\"type\":\"dir\"}\n",
];

/// The body of a golden file: what follows insta's header.
fn golden(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/src/repo/snapshots/cairn__repo__golden__{name}.snap",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let body = text.splitn(3, "---\n").nth(2).expect("an insta header");
    body.as_bytes().to_vec()
}

fn key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(MasterKey::generate)
}

/// `plain` compressed and encrypted as a sealed file is (`MasterKey::seal`
/// of already-serialized bytes).
fn seal_bytes(plain: &[u8]) -> Vec<u8> {
    let z = compress_with_prefix(plain, &[], 3).expect("compresses");
    key().encrypt(&z).expect("encrypts")
}

/// A golden JSON read as `$t` and written again by cairn's writer
/// (compact). A macro: serde is not a dependency of this test to name.
macro_rules! reencoded {
    ($t:ty, $name:expr) => {{
        let v: $t = key()
            .unseal(&seal_bytes(&golden($name)), &"golden")
            .unwrap_or_else(|e| panic!("golden {}: {e}", $name));
        plaintext_json(&v).expect("serializes")
    }};
}

/// Sealed files whose plaintext (JSON) was damaged before sealing: what a
/// reader meets if a writer with the key ever wrote a bad file.
macro_rules! sealed_target {
    ($test:ident, $t:ty, $($name:expr),+) => {
        #[test]
        fn $test() {
            let seeds = vec![$(reencoded!($t, $name)),+];
            fuzz(stringify!($test), 300, inputs(seeds, JSON, 2048), |plain| {
                let _ = key().unseal::<$t>(&seal_bytes(plain), &"fuzzed");
            });
        }
    };
}

sealed_target!(index_file, IndexFile, "index_file");
sealed_target!(snapshot_file, Snapshot, "snapshot");
sealed_target!(pack_header, PackHeader, "pack_header");
sealed_target!(lock_file, LockFile, "lock");
sealed_target!(proof_file, Proof, "proof");
sealed_target!(wal_entry, WalEntry, "wal_entry");

/// Damaged ciphertext of a sealed file: age's header and stream parser.
#[test]
fn sealed_ciphertext() {
    let seeds = vec![
        seal_bytes(&reencoded!(IndexFile, "index_file")),
        seal_bytes(&reencoded!(Snapshot, "snapshot")),
    ];
    fuzz(
        "sealed_ciphertext",
        300,
        inputs(
            seeds,
            &[b"age-encryption.org/v1\n", b"-> X25519 ", b"\n---"],
            4096,
        ),
        |ct| {
            let _ = key().unseal::<IndexFile>(ct, &"fuzzed");
            let _ = key().decrypt(ct, &"fuzzed");
        },
    );
}

/// `config`: plain JSON, unauthenticated, read before any key; read as
/// `Repository::read_config` does, from a local backend.
#[test]
fn config() {
    let scratch = tempfile_dir();
    let dir = scratch.path();
    let backend = LocalBackend::new(dir.to_path_buf());
    fuzz(
        "config",
        400,
        inputs(vec![golden("config")], JSON, 2048),
        |bytes| {
            std::fs::write(dir.join("config"), bytes).expect("write config");
            let _ = Repository::read_config(&backend);
        },
    );
}

/// Key files: the JSON envelope (plaintext, unauthenticated) and the age
/// file inside it, opened with an identity (the scrypt work factor of a
/// password key is capped at 2^22 by design, see spec/fuzzing.md).
#[test]
fn key_file() {
    let scratch = tempfile_dir();
    let dir = scratch.path();
    let id_path = dir.join("identity");
    let recipient = crypto::generate_identity_file(&id_path).expect("identity");
    let secret = Secret::Identities(crypto::read_identity_file(&id_path).expect("read identity"));
    let material = key().material(cairn::repo::RepoId::random());
    let wrapped = crypto::wrap_to_recipient(&material, &recipient.to_string()).expect("wrap");
    let mut seeds = vec![golden("key_file_identity"), golden("key_file_password")];
    // A real envelope around the real age file, and the age file alone.
    let envelope = String::from_utf8(golden("key_file_identity")).expect("utf-8");
    let data_at = envelope.find("\"data\": \"").expect("data field") + 9;
    let data_end = data_at + envelope[data_at..].find('"').expect("end of data");
    let mut real = envelope[..data_at].to_string();
    real.push_str(&hex_encode(&wrapped));
    real.push_str(&envelope[data_end..]);
    seeds.push(real.into_bytes());
    let backend = LocalBackend::new(dir.to_path_buf());
    std::fs::create_dir_all(dir.join("keys")).expect("keys dir");
    let name = "a".repeat(64);
    fuzz("key_file", 300, inputs(seeds, JSON, 4096), |bytes| {
        std::fs::write(dir.join("keys").join(&name), bytes).expect("write key");
        if let Ok(kf) = read_key_file(&backend, &name) {
            if let Some(data) = hex_decode(&kf.data) {
                let _ = crypto::unwrap_key(&data, &secret);
            }
        }
    });
    fuzz(
        "key_age",
        300,
        inputs(vec![wrapped], &[b"-> X25519 ", b"\n---"], 4096),
        |bytes| {
            let _ = crypto::unwrap_key(bytes, &secret);
        },
    );
}

/// Node lists: one JSON node a line, then the checks a restore makes of
/// the tree (`node_path::tree_problem`).
#[test]
fn node_list() {
    fuzz(
        "node_list",
        400,
        inputs(vec![golden("node_list")], JSON, 4096),
        |bytes| {
            if let Ok(nodes) = parse_node_list(bytes) {
                let _ = cairn::repo::node_path::tree_problem(&nodes);
            }
        },
    );
}

/// A pack whose frames are `chunks` (each frame one compression).
fn pack(frames: &[(Compression, &[&[u8]])]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut entries = Vec::new();
    for (compression, chunks) in frames {
        let mut raw = Vec::new();
        let mut listed = Vec::new();
        for c in *chunks {
            listed.push(ChunkEntry {
                id: key().chunk_id(c),
                offset: raw.len() as u32,
                length: c.len() as u32,
                base: None,
            });
            raw.extend_from_slice(c);
        }
        let stored = match compression {
            Compression::None => raw.clone(),
            _ => compress_with_prefix(&raw, &[], 3).expect("compresses"),
        };
        let ct = key().encrypt(&stored).expect("encrypts");
        entries.push(FrameEntry {
            offset: body.len() as u64,
            length: ct.len() as u32,
            raw_length: raw.len() as u32,
            compression: *compression,
            chunks: listed,
        });
        body.extend_from_slice(&ct);
    }
    let header = key()
        .seal(&PackHeader {
            version: 1,
            frames: entries,
        })
        .expect("seals");
    body.extend_from_slice(&header);
    body.extend_from_slice(&pack_trailer(header.len()));
    body
}

/// What `check --read-data` does with a pack's bytes: the trailer, the
/// sealed header, then every frame it lists, decoded and its chunks cut.
fn read_pack(bytes: &[u8]) {
    let file = FileRef::of(PackId::of_bytes(bytes));
    let Some((_, header)) = split_pack(bytes) else {
        return;
    };
    let Ok(h) = key().unseal::<PackHeader>(header, &file) else {
        return;
    };
    for fr in &h.frames {
        let Some(end) = usize::try_from(fr.offset)
            .ok()
            .and_then(|o| o.checked_add(fr.length as usize))
        else {
            continue;
        };
        let Some(ct) = bytes.get(fr.offset as usize..end) else {
            continue;
        };
        if let Ok(plain) = decode_frame_bytes(
            key(),
            ct,
            fr.compression,
            fr.raw_length,
            &[],
            &file,
            fr.offset,
        ) {
            for c in &fr.chunks {
                let start = c.offset as usize;
                let _ = plain
                    .get(start..start.saturating_add(c.length as usize))
                    .map(|d| key().chunk_id(d) == c.id);
            }
        }
    }
}

#[test]
fn pack_file() {
    let a: &[u8] = b"the first chunk of a frame";
    let b = vec![7u8; 3000];
    let seeds = vec![
        pack(&[(Compression::None, &[a, &b]), (Compression::Zstd, &[&b, a])]),
        pack(&[(Compression::Zstd, &[a])]),
    ];
    fuzz("pack_file", 200, inputs(seeds, &[b"CRNP"], 8192), read_pack);
}

/// A scratch directory, removed when the target ends.
fn tempfile_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cairn-fuzz-")
        .tempdir()
        .expect("temp dir")
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
