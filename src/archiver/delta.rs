//! Delta anchors: which chunk of the previous version of a stream a new
//! chunk is delta-compressed against. Anchors are content-defined points
//! in the data, so a changed chunk still shares most of them with the chunk
//! it replaced, wherever chunk boundaries moved.

use crate::error::Result;
use crate::index::IndexReader;
use crate::repo::{ChunkId, Compression};
use crate::repository::Repository;
use std::collections::HashMap;

/// The previous version of the stream being stored, whose chunks new
/// chunks are delta-compressed against (see
/// [`Packer::set_base_stream`](super::Packer::set_base_stream)).
pub(super) struct BaseStream {
    ids: Vec<ChunkId>,
    /// Where each chunk of `ids` is (its last place).
    pos: HashMap<ChunkId, usize>,
    anchors: AnchorMap,
    /// The guess for a new chunk that shares no anchor: one past the base
    /// of the chunk before, or of the last chunk both streams share.
    cursor: usize,
}

impl BaseStream {
    /// The base stream `ids` (not empty), read once for its anchors. A
    /// chunk that cannot be read stops the reading there, leaving out its
    /// anchors and those of every chunk after it: the base of a new chunk is
    /// a guess, and every base is checked against its id when a frame is
    /// compressed against it.
    pub(super) fn read(repo: &Repository, ids: Vec<ChunkId>) -> BaseStream {
        let mut anchor_map = AnchorMap::new(ANCHOR_CAP);
        let read = repo.for_each_chunk_unchecked(&ids, |j, data| anchor_map.add(j as u32, data));
        if let Err(e) = read {
            tracing::warn!(error = %e, "cannot read all of the previous version; delta compression will guess less well");
        }
        BaseStream {
            pos: ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
            ids,
            anchors: anchor_map,
            cursor: 0,
        }
    }

    /// Chunk `id`, which the repository has, was passed in the stream being
    /// stored: a new chunk after it that shares no anchor is guessed to
    /// replace the chunk after `id`'s place in the base stream.
    pub(super) fn passed(&mut self, id: &ChunkId) {
        if let Some(p) = self.pos.get(id) {
            self.cursor = p + 1;
        }
    }

    /// The base for the next new chunk `data`: the chunk of the base
    /// stream it shares the most anchors with (see [`anchors`]) or, with
    /// none in common, the one after the base chunk of the chunk before;
    /// when the chosen chunk is a delta itself, its own base (chains stay
    /// one deep).
    pub(super) fn next_base(
        &mut self,
        data: &[u8],
        index: &IndexReader,
    ) -> Result<Option<ChunkId>> {
        let best = self.anchors.best(data);
        let chosen = match best {
            Some(j) => j,
            None if self.cursor < self.ids.len() => self.cursor,
            None => return Ok(None),
        };
        self.cursor = chosen + 1;
        let candidate = self.ids[chosen];
        let Some(loc) = index.get(&candidate)? else {
            return Ok(None);
        };
        if loc.compression != Compression::ZstdDelta {
            return Ok(Some(candidate));
        }
        let Some(base) = loc.base else {
            return Ok(None);
        };
        Ok(match index.get(&base)? {
            Some(l) if l.compression != Compression::ZstdDelta => Some(base),
            _ => None,
        })
    }
}

const AMBIGUOUS: u32 = u32::MAX;

/// Gear hash table for [`anchors`]: fixed (splitmix64), since anchors are
/// only compared within one backup run and never stored.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Call `f` with the anchors of `data`: the gear hash (over about the last
/// 64 bytes) at the positions where its top 11 bits are zero, one every
/// ~2 KiB, decided by content like chunk boundaries. A changed chunk keeps
/// most anchors of the chunk it replaced, so anchors find that chunk even
/// where chunk boundaries moved, which counting chunks cannot: on the
/// pgbench day of benches/README.md ("PostgreSQL: second-day bytes"),
/// counting put the median delta frame at 2.2 KB and left 144 of 827
/// frames without a usable base.
fn anchors(data: &[u8], mask: u64, mut f: impl FnMut(u64)) {
    let mut h: u64 = 0;
    for &byte in data {
        h = (h << 1).wrapping_add(GEAR[byte as usize]);
        if h & mask == 0 {
            f(h);
        }
    }
}

/// The top 11 bits: one anchor per ~2 KiB.
const ANCHOR_MASK: u64 = 0x7ff << 53;

/// The most anchors a base stream keeps (~40 MB of map): one per ~2 KiB
/// up to 4 GiB of dump, sparser beyond.
const ANCHOR_CAP: usize = 1 << 21;

/// Anchor → the chunk of the base stream it occurs in (AMBIGUOUS: in
/// several). Past `cap` entries only anchors with one more leading zero
/// bit are kept (about half), and so on, so memory stays bounded whatever
/// the size of the previous version.
struct AnchorMap {
    map: HashMap<u64, u32>,
    mask: u64,
    cap: usize,
}

impl AnchorMap {
    fn new(cap: usize) -> AnchorMap {
        AnchorMap {
            map: HashMap::new(),
            mask: ANCHOR_MASK,
            cap,
        }
    }

    /// Record the anchors of chunk number `chunk`.
    fn add(&mut self, chunk: u32, data: &[u8]) {
        let map = &mut self.map;
        anchors(data, self.mask, |a| {
            map.entry(a)
                .and_modify(|k| {
                    if *k != chunk {
                        *k = AMBIGUOUS
                    }
                })
                .or_insert(chunk);
        });
        while self.map.len() > self.cap {
            self.mask |= self.mask >> 1;
            let mask = self.mask;
            self.map.retain(|a, _| a & mask == 0);
        }
    }

    /// The chunk sharing the most anchors with `data`, if any.
    fn best(&self, data: &[u8]) -> Option<usize> {
        let mut votes: Vec<(u32, u32)> = Vec::new();
        anchors(data, self.mask, |a| {
            if let Some(&j) = self.map.get(&a) {
                if j != AMBIGUOUS {
                    match votes.iter_mut().find(|(k, _)| *k == j) {
                        Some(v) => v.1 += 1,
                        None => votes.push((j, 1)),
                    }
                }
            }
        });
        votes
            .iter()
            .max_by_key(|(j, n)| (*n, std::cmp::Reverse(*j)))
            .map(|(j, _)| *j as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::tests::{data, repo, rows};
    use crate::archiver::{with_packer, Stored};
    use crate::chunk::ChunkError;
    use crate::error::Error;
    use crate::progress::Progress;
    use crate::repo::{Compression, FrameEntry, FORMAT_VERSION};
    use crate::repository::Repository;
    use std::collections::HashSet;

    /// Store `data` with `base` as its previous version; returns the ids
    /// and what was stored (also added to the index cache).
    fn store_with_base(
        repo: &Repository,
        data: &[u8],
        base: Option<Vec<ChunkId>>,
    ) -> (Vec<ChunkId>, Stored) {
        let (ids, stored, _) = with_packer(repo, |p| {
            p.set_base_stream(base);
            match p.add_stream(data, &Progress::hidden()) {
                Ok((ids, _)) => Ok(ids),
                Err(ChunkError::Sink(e)) => Err(e),
                Err(ChunkError::Read(e)) => Err(Error::io("read", e)),
            }
        })
        .unwrap();
        let idx = crate::repo::IndexFile {
            version: FORMAT_VERSION,
            packs: stored.packs.clone(),
        };
        repo.cache
            .add(&crate::repo::IndexId(rand::random()), &idx)
            .unwrap();
        (ids, stored)
    }

    /// A day of scattered updates (each updated row leaves its place and
    /// goes to the end, as in a full heap): the changed chunks are stored as
    /// deltas against the chunks they replace, a fraction of their plain
    /// size; a third version's deltas are against the first version's
    /// chunks (chains stay one deep); every version reads back exactly.
    #[test]
    fn changed_chunks_are_stored_as_deltas_one_deep() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let n = 40_000u64;
        let v1 = rows((1..=n).map(|a| (a, 0)));
        let moved = |step: u64, day: i64| {
            let mut r: Vec<(u64, i64)> =
                (1..=n).filter(|a| a % step != 0).map(|a| (a, 0)).collect();
            r.extend((1..=n).filter(|a| a % step == 0).map(|a| (a, day * 7)));
            rows(r.into_iter())
        };
        let v2 = moved(97, 1);
        let v3 = moved(89, 2);
        let (ids1, s1) = store_with_base(&repo, &v1, None);
        assert!(s1
            .packs
            .iter()
            .flat_map(|p| &p.frames)
            .all(|f| f.compression != Compression::ZstdDelta));
        // The same day stored without a base, in a repository of its own.
        let plain_dir = tempfile::tempdir().unwrap();
        let plain_repo = crate::archiver::tests::repo(plain_dir.path());
        store_with_base(&plain_repo, &v1, None);
        let (_, plain2) = store_with_base(&plain_repo, &v2, None);

        let (ids2, s2) = store_with_base(&repo, &v2, Some(ids1.clone()));
        let frames2: Vec<&FrameEntry> = s2.packs.iter().flat_map(|p| &p.frames).collect();
        assert!(frames2
            .iter()
            .any(|f| f.compression == Compression::ZstdDelta));
        let frame_bytes = |s: &Stored| -> u64 {
            s.packs
                .iter()
                .flat_map(|p| &p.frames)
                .map(|f| u64::from(f.length))
                .sum()
        };
        assert!(
            frame_bytes(&s2) * 4 < frame_bytes(&plain2),
            "frames with deltas {} bytes, without {} (packs {} and {}; {} chunks)",
            frame_bytes(&s2),
            frame_bytes(&plain2),
            s2.bytes,
            plain2.bytes,
            ids1.len()
        );
        assert_eq!(repo.read_stream(&ids2).unwrap(), v2);

        let (ids3, s3) = store_with_base(&repo, &v3, Some(ids2.clone()));
        let bases3: Vec<ChunkId> = s3
            .packs
            .iter()
            .flat_map(|p| &p.frames)
            .flat_map(|f| f.bases())
            .collect();
        assert!(!bases3.is_empty());
        let first: HashSet<ChunkId> = ids1.iter().copied().collect();
        assert!(
            bases3.iter().any(|b| first.contains(b)),
            "day 3 is based on day 1 where day 2 is a delta"
        );
        let index = repo.cache.reader().unwrap();
        for b in &bases3 {
            let loc = index.get(b).unwrap().expect("a base is indexed");
            assert_ne!(
                loc.compression,
                Compression::ZstdDelta,
                "a base is itself a delta"
            );
        }
        assert_eq!(repo.read_stream(&ids3).unwrap(), v3);
        assert_eq!(repo.read_stream(&ids1).unwrap(), v1);
    }

    /// The anchor map stays under its cap by keeping sparser anchors, and
    /// still finds each chunk from its own content.
    #[test]
    fn anchor_maps_stay_bounded_and_find_their_chunks() {
        let chunks: Vec<Vec<u8>> = (0..16)
            .map(|i| data(201 + 2 * i, 64 << 10, false))
            .collect();
        let mut full = AnchorMap::new(usize::MAX);
        let mut capped = AnchorMap::new(100);
        for (j, c) in chunks.iter().enumerate() {
            full.add(j as u32, c);
            capped.add(j as u32, c);
        }
        assert!(full.map.len() > 400, "{} anchors in 1 MiB", full.map.len());
        assert!(capped.map.len() <= 100);
        assert!(capped.mask.count_ones() > ANCHOR_MASK.count_ones());
        for (j, c) in chunks.iter().enumerate() {
            assert_eq!(full.best(c), Some(j));
            // Sparser anchors may miss a chunk, never name another one.
            assert!(capped.best(c).is_none_or(|b| b == j));
        }
        assert_eq!(full.best(&data(999, 64 << 10, false)), None);
    }

    /// A base stream that shares nothing with the data gives no delta frames.
    #[test]
    fn an_unrelated_base_stream_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let other = data(5, 1 << 20, false);
        let (base, _) = store_with_base(&repo, &other, None);
        let text = data(6, 1 << 20, true);
        let (ids, stored) = store_with_base(&repo, &text, Some(base));
        for f in stored.packs.iter().flat_map(|p| &p.frames) {
            assert_ne!(f.compression, Compression::ZstdDelta);
            assert!(f.chunks.iter().all(|c| c.base.is_none()));
        }
        assert_eq!(repo.read_stream(&ids).unwrap(), text);
    }
}
