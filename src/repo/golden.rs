//! Golden tests of everything cairn writes: the serialized bytes of each
//! stored type, built from fixed values through the same encoders the
//! repository uses (`encode.rs`). A format change shows up here as a diff
//! to review (`cargo insta review`), together with spec/repository.md.

use super::encode::{
    config_json, key_file_json, node_list, pack_trailer, parse_node_list, plaintext_json,
};
use super::kafka::{ConfigEntry, GroupMeta, GroupOffset, KafkaMeta, PartitionMeta, TopicMeta};
use super::postgres::{DataOffsets, DatabaseMeta, PgBackupKind, PgMeta, PhysicalMeta, TableSum};
use super::*;
use insta::assert_snapshot;
use jiff::Timestamp;

/// The 32 bytes of a fixed id.
fn id(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    // Sealed files hold compact JSON; the golden copy is the same fields in
    // the same order, indented for review.
    let compact = plaintext_json(v).unwrap();
    let indented = serde_json::to_string_pretty(v).unwrap();
    let strip = |s: &[u8]| -> serde_json::Value { serde_json::from_slice(s).unwrap() };
    assert_eq!(strip(&compact), strip(indented.as_bytes()));
    assert!(!compact.contains(&b'\n'), "plaintext is compact JSON");
    indented
}

fn frames() -> Vec<FrameEntry> {
    vec![
        FrameEntry {
            offset: 0,
            length: 4_321,
            raw_length: 16_384,
            compression: Compression::Zstd,
            chunks: vec![
                ChunkEntry {
                    id: ChunkId(id(0x11)),
                    offset: 0,
                    length: 8_192,
                    base: None,
                },
                ChunkEntry {
                    id: ChunkId(id(0x12)),
                    offset: 8_192,
                    length: 8_192,
                    base: None,
                },
            ],
        },
        FrameEntry {
            offset: 4_321,
            length: 99,
            raw_length: 8_000,
            compression: Compression::ZstdDelta,
            chunks: vec![ChunkEntry {
                id: ChunkId(id(0x13)),
                offset: 0,
                length: 8_000,
                base: Some(ChunkId(id(0x11))),
            }],
        },
        FrameEntry {
            offset: 4_420,
            length: 2_048,
            raw_length: 2_000,
            compression: Compression::None,
            chunks: vec![ChunkEntry {
                id: ChunkId(id(0x14)),
                offset: 0,
                length: 2_000,
                base: None,
            }],
        },
    ]
}

#[test]
fn config() {
    let c = Config {
        version: FEATURES_VERSION,
        id: RepoId(id(0xc0)),
        created: at("2026-01-02T03:04:05.123456789Z"),
        chunker: CHUNKER_DEFAULT,
        frame_size: 512 * 1024,
        pack_size: 16 << 20,
        zstd_level: 3,
        features: KNOWN_FEATURES.iter().map(|f| f.to_string()).collect(),
    };
    let bytes = config_json(&c);
    assert_eq!(c.unreadable(), None);
    assert!(serde_json::from_slice::<Config>(&bytes).is_ok());
    assert_snapshot!("config", text(bytes));
}

#[test]
fn key_files_and_key_material() {
    let password = KeyFile {
        version: FORMAT_VERSION,
        kind: KeyKind::Password,
        created: at("2026-01-02T03:04:05Z"),
        host: "db1".into(),
        username: "root".into(),
        recipient: None,
        data: "6167652d656e6372797074696f6e".into(),
    };
    let identity = KeyFile {
        kind: KeyKind::Identity,
        username: "postgres".into(),
        recipient: Some("age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq".into()),
        ..password.clone()
    };
    assert_snapshot!("key_file_password", text(key_file_json(&password)));
    assert_snapshot!("key_file_identity", text(key_file_json(&identity)));
    let material = KeyMaterial {
        repo_id: RepoId(id(0xc0)),
        identity: "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
            .into(),
        hash_key: "ab".repeat(32),
    };
    assert_snapshot!("key_material", pretty(&material));
}

#[test]
fn index_file() {
    let idx = IndexFile {
        version: FORMAT_VERSION,
        packs: vec![PackEntry {
            id: PackId(id(0xa1)),
            size: 6_476,
            frames: frames(),
        }],
    };
    let json = pretty(&idx);
    let back: IndexFile = serde_json::from_str(&json).unwrap();
    assert_eq!(back.packs[0], idx.packs[0]);
    assert_snapshot!("index_file", json);
}

#[test]
fn pack_header_and_trailer() {
    let header = PackHeader {
        version: FORMAT_VERSION,
        frames: frames(),
    };
    let json = pretty(&header);
    assert_eq!(serde_json::from_str::<PackHeader>(&json).unwrap(), header);
    assert_snapshot!("pack_header", json);
    let trailer = pack_trailer(0x0102);
    assert_snapshot!("pack_trailer", hex::encode(trailer));
    let mut pack = b"frames".to_vec();
    pack.extend_from_slice(b"hd");
    pack.extend_from_slice(&pack_trailer(2));
    assert_eq!(split_pack(&pack), Some((&b"frames"[..], &b"hd"[..])));
}

fn pg_logical() -> serde_json::Value {
    serde_json::to_value(PgMeta {
        kind: PgBackupKind::Logical,
        server_version: "15.19".into(),
        system_identifier: "7300000000000000001".into(),
        globals: "postgres/globals.sql".into(),
        databases: vec![DatabaseMeta {
            name: "app".into(),
            size_bytes: 8_000_000,
            dump: "postgres/app.dump".into(),
            tables: vec![TableSum {
                schema: "public".into(),
                name: "events".into(),
                kind: "table".into(),
                rows: 3,
                checksum: "00112233445566778899aabbccddeeff".into(),
                method: postgres::COPY_METHOD.into(),
                columns: Some("id, payload".into()),
            }],
            data_offsets: Some(DataOffsets {
                size: 8,
                entries: vec![[100, 200, 7]],
            }),
        }],
    })
    .unwrap()
}

fn pg_physical() -> serde_json::Value {
    serde_json::to_value(PhysicalMeta {
        kind: PgBackupKind::Physical,
        server_version: "15.19".into(),
        system_identifier: "7300000000000000001".into(),
        timeline: 1,
        start_lsn: "0/2000028".into(),
        stop_lsn: "0/2000100".into(),
        start_time: at("2026-01-02T02:00:00Z"),
        stop_time: at("2026-01-02T02:00:03Z"),
        base: "base.tar".into(),
    })
    .unwrap()
}

fn kafka_meta() -> serde_json::Value {
    serde_json::to_value(KafkaMeta {
        cluster_id: Some("cluster-1".into()),
        brokers: 1,
        messages: true,
        topics: vec![TopicMeta {
            name: "events".into(),
            replication_factor: 1,
            configs: vec![ConfigEntry {
                name: "retention.ms".into(),
                value: Some("604800000".into()),
                source: "dynamic-topic".into(),
                is_default: false,
                read_only: false,
                sensitive: false,
            }],
            partitions: vec![PartitionMeta {
                id: 0,
                low: 0,
                high: 2,
                end: 2,
                node: Some("kafka/events/0".into()),
                records: 2,
                bytes: 120,
                digest: "cd".repeat(32),
                first_offset: Some(0),
                last_offset: Some(1),
            }],
        }],
        groups: vec![GroupMeta {
            name: "collector".into(),
            state: "Empty".into(),
            protocol_type: "consumer".into(),
            members: 0,
            offsets: vec![GroupOffset {
                topic: "events".into(),
                partition: 0,
                offset: 2,
                metadata: String::new(),
            }],
        }],
    })
    .unwrap()
}

#[test]
fn snapshot() {
    let source = |name: &str, kind: SourceKind, metadata| SourceRecord {
        name: name.into(),
        kind,
        status: SourceStatus::Complete,
        errors: Vec::new(),
        tree: vec![ChunkId(id(0x21))],
        size: 10,
        metadata,
    };
    let snap = Snapshot {
        version: FORMAT_VERSION,
        time: at("2026-01-02T02:00:00.5Z"),
        host: "db1".into(),
        username: "root".into(),
        tags: vec!["nightly".into()],
        paths: vec!["/etc/collector".into(), "app".into()],
        plan: Some("/etc/cairn/plan.kdl".into()),
        sources: vec![
            source("config", SourceKind::Files, serde_json::Value::Null),
            source("db", SourceKind::Postgres, pg_logical()),
            source("db-base", SourceKind::Postgres, pg_physical()),
            source("events", SourceKind::Kafka, kafka_meta()),
            SourceRecord {
                status: SourceStatus::Failed,
                errors: vec!["pg_dump exited with 1".into()],
                tree: Vec::new(),
                size: 0,
                ..source("audit", SourceKind::Command, serde_json::Value::Null)
            },
        ],
        summary: Summary {
            files: 3,
            dirs: 1,
            symlinks: 1,
            bytes_read: 30,
            bytes_added: 900,
            chunks_total: 4,
            chunks_new: 2,
            duration_ms: 1_234,
            files_unchanged: 0,
        },
        program: "cairn 0.1.0".into(),
    };
    let json = pretty(&snap);
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back.sources.len(), 5);
    assert_eq!(back.sources[3].kind, SourceKind::Kafka);
    assert_snapshot!("snapshot", json);
}

#[test]
fn node_list_lines() {
    let nodes = vec![
        Node {
            path: "etc/collector".into(),
            kind: NodeKind::Dir,
            mode: 0o755,
            mtime_ns: 1_700_000_000_123_456_789,
            uid: 0,
            gid: 0,
            size: 0,
            content: Vec::new(),
            target: None,
            inode: 0,
            ctime_ns: 0,
        },
        Node {
            path: "etc/collector/app.toml".into(),
            kind: NodeKind::File,
            mode: 0o640,
            mtime_ns: 1_700_000_000_000_000_000,
            uid: 0,
            gid: 998,
            size: 16_000,
            content: vec![ChunkId(id(0x31)), ChunkId(id(0x32))],
            target: None,
            inode: 131_075,
            ctime_ns: 1_700_000_001_000_000_000,
        },
        Node {
            path: "etc/collector/current".into(),
            kind: NodeKind::Symlink,
            mode: 0o777,
            mtime_ns: -1,
            uid: 0,
            gid: 0,
            size: 0,
            content: Vec::new(),
            target: Some("app.toml".into()),
            inode: 0,
            ctime_ns: 0,
        },
    ];
    let bytes = node_list(&nodes);
    assert_eq!(parse_node_list(&bytes).unwrap(), nodes);
    // The streamed list (what snapshots store) is the same bytes, whatever
    // the reads' sizes: the same list gives the same chunks.
    for step in [1, 7, 64, 1 << 16] {
        let mut reader = crate::repo::encode::node_list_reader(&nodes);
        let (mut streamed, mut buf) = (Vec::new(), vec![0u8; step]);
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            streamed.extend_from_slice(&buf[..n]);
        }
        assert_eq!(streamed, bytes, "reads of {step} bytes");
    }
    assert_snapshot!("node_list", text(bytes));
}

#[test]
fn wal_entry_claim_proof_and_lock() {
    let wal = WalEntry {
        name: "000000010000000000000003".into(),
        size: 16 << 20,
        digest: Id(id(0x41)),
        content: vec![ChunkId(id(0x42))],
        archived: at("2026-01-02T02:00:04Z"),
        host: "db1".into(),
        records: Some(51_234),
        last_xact_time: Some(at("2026-01-02T01:59:58.123456Z")),
    };
    let claim = WalClaim {
        name: wal.name.clone(),
        digest: wal.digest,
    };
    let proof = Proof {
        version: FORMAT_VERSION,
        snapshot: SnapshotId(id(0x51)),
        time: at("2026-01-04T03:00:00Z"),
        passed: false,
        sources: vec!["db".into()],
        detail: "public.events: 3 rows, 2 restored".into(),
        host: "scratch".into(),
    };
    let lock = LockFile {
        host: "db1".into(),
        username: "root".into(),
        pid: 4242,
        time: at("2026-01-02T02:00:00Z"),
        exclusive: false,
        command: "snapshot".into(),
        process_start: None,
        boot_id: None,
    };
    assert_snapshot!("wal_entry", pretty(&wal));
    // An entry of a cairn that did not read the records still reads.
    let old: WalEntry = serde_json::from_str(
        r#"{"name":"000000010000000000000003","size":16777216,"digest":"4141414141414141414141414141414141414141414141414141414141414141","content":[],"archived":"2026-01-02T02:00:04Z","host":"db1"}"#,
    )
    .unwrap();
    assert_eq!((old.records, old.last_xact_time), (None, None));
    assert_snapshot!("wal_claim", pretty(&claim));
    assert_snapshot!("proof", pretty(&proof));
    assert_snapshot!("lock", pretty(&lock));
}
