//! Stage benchmarks of the write (and read) pipeline on 16 MiB of
//! deterministic, corpus-like data: chunk → hash → compress → encrypt → pack,
//! plus index-cache lookups. See `benches/README.md`.
//!
//! Run: `cargo bench --bench pipeline` (add `-- --quick` for a fast pass, or
//! a filter such as `-- compress`).

use cairn::archiver::{with_packer, PackBuilder};
use cairn::backend::LocalBackend;
use cairn::chunk::{for_each_chunk, ChunkError};
use cairn::crypto::{MasterKey, Secret};
use cairn::index::IndexCache;
use cairn::progress::Progress;
use cairn::repo::{
    ChunkEntry, ChunkId, Compression, FrameEntry, Id, IndexFile, IndexId, PackEntry, PackId,
    RepoId, CHUNKER_DEFAULT, FORMAT_VERSION,
};
use cairn::repository::{NewKey, Repository};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

const DATA_LEN: usize = 16 << 20;
const FRAME_LEN: usize = 512 << 10;
const CHUNKER_SEED: u64 = 0x5eed_c0de;
const INDEX_ENTRIES: usize = 100_000;
const LOOKUPS: usize = 10_000;

/// xorshift64*: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn id(&mut self) -> Id {
        let mut b = [0u8; 32];
        for w in b.chunks_mut(8) {
            w.copy_from_slice(&self.next().to_le_bytes());
        }
        Id(b)
    }
}

const SERVICES: &[&str] = &[
    "collector",
    "ingest",
    "router",
    "notifier",
    "archiver",
    "auth",
    "billing",
    "search",
];
const EXCEPTIONS: &[&str] = &[
    "NullPointerException",
    "TimeoutException",
    "IllegalStateException",
    "SQLException",
    "KafkaException",
    "IOException",
];
const FRAMES: &[&str] = &[
    "at com.biopro.svc.Handler.process(Handler.java:",
    "at com.biopro.svc.Queue.poll(Queue.java:",
    "at org.postgresql.core.v3.QueryExecutorImpl.execute(QueryExecutorImpl.java:",
    "at org.apache.kafka.clients.consumer.KafkaConsumer.poll(KafkaConsumer.java:",
    "at java.base/java.lang.Thread.run(Thread.java:",
];

/// One COPY-format row like `make-corpus` writes: id, timestamp, service,
/// exception, stack trace and a JSON payload.
fn text_row(rng: &mut Rng, i: usize, out: &mut Vec<u8>) {
    use std::fmt::Write;
    let mut s = String::with_capacity(512);
    let svc = rng.pick(SERVICES);
    let _ = write!(
        s,
        "{i}\t2026-{:02}-{:02} {:02}:{:02}:{:02}+00\t{svc}\t{}\t",
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.pick(EXCEPTIONS),
    );
    for k in 0..3 + rng.below(7) {
        if k > 0 {
            s.push_str("\\n");
        }
        let _ = write!(s, "{}{})", rng.pick(FRAMES), 10 + rng.below(990));
    }
    let _ = writeln!(
        s,
        "\t{{\"id\": {i}, \"svc\": \"{svc}\", \"attempt\": {}, \"user\": \"u{:06}\", \"tags\": [\"{}\", \"{}\"]}}",
        1 + rng.below(5),
        rng.below(200_000),
        rng.pick(SERVICES),
        rng.pick(SERVICES),
    );
    out.extend_from_slice(s.as_bytes());
}

/// 16 MiB shaped like the benchmark corpus: each 4 MiB block is 85% text
/// rows followed by 15% incompressible random bytes (make-corpus has ~15%
/// random attachments).
fn corpus(seed: u64) -> Vec<u8> {
    const BLOCK: usize = 4 << 20;
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(DATA_LEN + 4096);
    let mut row = 0usize;
    while out.len() < DATA_LEN {
        let block_end = out.len() + BLOCK;
        let text_end = out.len() + BLOCK * 85 / 100;
        while out.len() < text_end {
            text_row(&mut rng, row, &mut out);
            row += 1;
        }
        while out.len() < block_end {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
        out.truncate(block_end);
    }
    out.truncate(DATA_LEN);
    out
}

fn chunks_of(data: &[u8]) -> Vec<&[u8]> {
    let mut bounds = Vec::new();
    let mut at = 0usize;
    let r = for_each_chunk::<_, ()>(data, CHUNKER_DEFAULT, CHUNKER_SEED, |c| {
        bounds.push((at, c.len()));
        at += c.len();
        Ok(())
    });
    assert!(
        matches!(r, Ok(n) if n == data.len() as u64),
        "chunking failed"
    );
    bounds.iter().map(|&(o, l)| &data[o..o + l]).collect()
}

/// A fresh local repository (scrypt log_n 10, so setup is quick), opened
/// with an index cache under `dir`.
fn bench_repo(dir: &Path) -> Repository {
    let repo_dir = dir.join("repo");
    Repository::init(
        &LocalBackend::new(&repo_dir),
        &NewKey::Password {
            password: "x".into(),
            log_n: 10,
        },
    )
    .expect("init bench repository");
    Repository::open(
        Box::new(LocalBackend::new(&repo_dir)),
        &Secret::Password("x".into()),
        Some(dir.join("cache")),
    )
    .expect("open bench repository")
}

/// Remove every pack stored so far, so repeated iterations do not fill the disk.
fn remove_packs(dir: &Path) {
    let data = dir.join("repo").join("data");
    // data/<2 hex digits>/<pack>: keep the prefix directories, remove the packs.
    for prefix in std::fs::read_dir(&data).into_iter().flatten().flatten() {
        for pack in std::fs::read_dir(prefix.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(pack.path());
        }
    }
}

fn stages(c: &mut Criterion) {
    let data = corpus(42);
    let chunks = chunks_of(&data);
    let key = MasterKey::generate();
    let frames: Vec<&[u8]> = data.chunks(FRAME_LEN).collect();
    let bytes = Throughput::Bytes(data.len() as u64);

    let mut g = c.benchmark_group("stage");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(bytes.clone());

    g.bench_function("chunk", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let _ = for_each_chunk::<_, ()>(&data[..], CHUNKER_DEFAULT, CHUNKER_SEED, |c| {
                n += c.len();
                Ok(())
            });
            black_box(n)
        })
    });

    g.bench_function("hash", |b| {
        b.iter(|| {
            for c in &chunks {
                black_box(key.chunk_id(c));
            }
        })
    });

    g.bench_function("compress_zstd3", |b| {
        let mut z = zstd::bulk::Compressor::new(3).expect("zstd compressor");
        b.iter(|| {
            for f in &frames {
                black_box(z.compress(f).expect("compress"));
            }
        })
    });

    let compressed: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| zstd::bulk::compress(f, 3).expect("compress"))
        .collect();
    g.bench_function("decompress_zstd", |b| {
        let mut z = zstd::bulk::Decompressor::new().expect("zstd decompressor");
        b.iter(|| {
            for c in &compressed {
                black_box(z.decompress(c, FRAME_LEN).expect("decompress"));
            }
        })
    });

    g.bench_function("encrypt_age", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(key.encrypt(f).expect("encrypt"));
            }
        })
    });

    let sealed: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| key.encrypt(f).expect("encrypt"))
        .collect();
    g.bench_function("decrypt_age", |b| {
        b.iter(|| {
            for s in &sealed {
                black_box(key.decrypt(s, &"bench frame").expect("decrypt"));
            }
        })
    });
    g.finish();

    let sizes: Vec<usize> = compressed.iter().map(Vec::len).collect();
    let ratio = data.len() as f64 / sizes.iter().sum::<usize>() as f64;
    eprintln!(
        "bench data: {} MiB, {} chunks (mean {} KiB), {} frames, zstd-3 ratio {ratio:.2}",
        data.len() >> 20,
        chunks.len(),
        data.len() / chunks.len() / 1024,
        frames.len()
    );
}

fn packing(c: &mut Criterion) {
    let data = corpus(42);
    let tmp = tempfile::tempdir().expect("temp dir");
    let repo = bench_repo(tmp.path());

    // Frames sealed as the archiver seals them: zstd when it pays, then age.
    let mut z = zstd::bulk::Compressor::new(repo.config.zstd_level).expect("zstd");
    let mut sealed = Vec::new();
    for f in data.chunks(repo.config.frame_size as usize) {
        let zc = z.compress(f).expect("compress");
        let (plain, compression) = if zc.len() < f.len() - f.len() / 32 {
            (zc, Compression::Zstd)
        } else {
            (f.to_vec(), Compression::None)
        };
        let chunk = ChunkEntry {
            id: repo.key.chunk_id(f),
            offset: 0,
            length: f.len() as u32,
            base: None,
        };
        sealed.push((
            repo.key.encrypt(&plain).expect("encrypt"),
            f.len() as u32,
            compression,
            chunk,
        ));
    }
    let sealed_bytes: u64 = sealed.iter().map(|s| s.0.len() as u64).sum();

    let mut g = c.benchmark_group("pack");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // PackBuilder alone: append sealed frames, seal headers, write (fsync) packs.
    g.throughput(Throughput::Bytes(sealed_bytes));
    g.bench_function("pack_builder", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let mut pb = PackBuilder::new(&repo);
                for (ct, raw, comp, chunk) in &sealed {
                    pb.add_frame(ct, *raw, *comp, vec![chunk.clone()])
                        .expect("add frame");
                }
                pb.flush().expect("flush pack");
                black_box(pb.stored.bytes);
                total += t.elapsed();
                remove_packs(tmp.path());
            }
            total
        })
    });

    // The whole write pipeline as `cairn snapshot` runs it on one stream:
    // chunk + hash + dedup lookup on this thread, compress + encrypt on
    // workers, pack + write on the writer thread. Nothing is in the index
    // yet, so every chunk is new.
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("with_packer_stream", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let (n, stored, _) = with_packer(&repo, |p| {
                    match p.add_stream(&data[..], &Progress::hidden()) {
                        Ok((_, n)) => Ok(n),
                        Err(ChunkError::Sink(e)) => Err(e),
                        Err(ChunkError::Read(e)) => Err(cairn::Error::io("reading bench data", e)),
                    }
                })
                .expect("with_packer");
                black_box((n, stored.bytes));
                total += t.elapsed();
                remove_packs(tmp.path());
            }
            total
        })
    });
    g.finish();
}

fn index_lookup(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let repo = bench_repo(tmp.path());
    let mut rng = Rng(7);
    // 100 packs × 10 frames × 100 chunks = 100k entries.
    let mut ids = Vec::with_capacity(INDEX_ENTRIES);
    let packs: Vec<PackEntry> = (0..INDEX_ENTRIES / 1000)
        .map(|_| PackEntry {
            id: PackId::from_raw(rng.id()),
            size: 16 << 20,
            frames: (0..10u64)
                .map(|f| FrameEntry {
                    offset: f * (1 << 20),
                    length: 300_000,
                    raw_length: 100 * 5000,
                    compression: Compression::Zstd,
                    chunks: (0..100u32)
                        .map(|k| {
                            let id = ChunkId::from_raw(rng.id());
                            ids.push(id);
                            ChunkEntry {
                                id,
                                offset: k * 5000,
                                length: 5000,
                                base: None,
                            }
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let idx = IndexFile {
        version: FORMAT_VERSION,
        packs,
    };

    let mut g = c.benchmark_group("index");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // Inserting 100k entries into a fresh cache (what `cache.add` costs after a snapshot).
    g.throughput(Throughput::Elements(INDEX_ENTRIES as u64));
    g.bench_function("add_100k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let cache = IndexCache::open(None, RepoId::random()).expect("temp cache");
                let t = Instant::now();
                cache.add(&IndexId::of_bytes(b"bench"), &idx).expect("add");
                total += t.elapsed();
            }
            total
        })
    });

    repo.cache
        .add(&IndexId::of_bytes(b"bench index"), &idx)
        .expect("add index");
    let reader = repo.cache.reader().expect("reader");
    assert_eq!(reader.len().expect("len"), INDEX_ENTRIES as u64);
    let hits: Vec<ChunkId> = (0..LOOKUPS).map(|_| ids[rng.below(ids.len())]).collect();
    let misses: Vec<ChunkId> = (0..LOOKUPS).map(|_| ChunkId::from_raw(rng.id())).collect();
    assert!(hits.iter().all(|id| matches!(reader.get(id), Ok(Some(_)))));
    assert!(misses.iter().all(|id| matches!(reader.get(id), Ok(None))));

    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for (name, keys) in [("hit", &hits), ("miss", &misses)] {
        g.bench_with_input(BenchmarkId::new("get_of_100k", name), keys, |b, keys| {
            b.iter(|| {
                for id in keys.iter() {
                    black_box(reader.get(id).expect("get"));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, stages, packing, index_lookup);
criterion_main!(benches);
