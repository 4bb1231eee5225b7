//! Where the chunks a restore needs are stored.
//!
//! A file restore keeps, for each frame it reads, which chunks of which
//! files that frame holds and where ([`locate_files`]): one [`Target`] of
//! 24 bytes per chunk of a file, naming the chunk by its file and its place
//! in that file's node (whose content list the restore holds anyway)
//! instead of by a copy of its id, and one [`Location`] per frame. A map
//! from every chunk id to its location (128 bytes a chunk plus a hash
//! table's slack: 68 MB of a 200,000-file restore's 255 MB heap peak) is
//! what this replaced (issue 29). Restores that stream into a server still
//! get that map from [`locate_chunks`]: they look chunks up by id.

use crate::error::{Error, Result};
use crate::index::{IndexReader, Location};
use crate::repo::{ChunkId, Compression, Node, PackId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One chunk to write: chunk `chunk` of file `file`, at `file_offset` in
/// that file and at `offset..offset + length` in its frame's plaintext.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Target {
    /// The file's number among the files restored.
    pub file: u32,
    /// The chunk's place in the file's content list: its id is
    /// `content[chunk]`.
    pub chunk: u32,
    pub file_offset: u64,
    pub offset: u32,
    pub length: u32,
}

/// One frame to read and the chunks to write from it.
pub(super) struct FrameWork {
    /// The frame's location (its pack, offset, length and compression; the
    /// chunk fields are those of the first chunk found in it).
    pub loc: Location,
    pub targets: Vec<Target>,
}

/// The frames a restore reads, by pack and offset.
pub(super) type Frames = HashMap<(PackId, u64), FrameWork>;

/// Where the chunks of `files` (file number `i` is `files[i]`) are, by
/// frame; an error naming the files when any chunk, or a base of a delta
/// frame holding one, is missing from the index. Nothing per chunk is kept
/// but its [`Target`].
///
/// Chunks are looked up in id order, so that consecutive lookups fall on
/// the same pages of the index cache and a small page cache serves them
/// all (in file order every lookup lands on a random page).
pub(super) fn locate_files(reader: &IndexReader, files: &[&Node]) -> Result<Frames> {
    // Where each file's chunks start in one list of all of them.
    let mut starts: Vec<usize> = Vec::with_capacity(files.len() + 1);
    starts.push(0);
    for n in files {
        starts.push(starts[starts.len() - 1] + n.content.len());
    }
    // (file, chunk) pairs, sorted by the chunk's id: 8 bytes each, where
    // a copy of the id would take 40.
    let mut wanted: Vec<(u32, u32)> = Vec::with_capacity(starts[files.len()]);
    for (i, n) in files.iter().enumerate() {
        let file = number(i, "files")?;
        for k in 0..n.content.len() {
            wanted.push((file, number(k, "chunks in one file")?));
        }
    }
    let id = |(file, chunk): (u32, u32)| &files[file as usize].content[chunk as usize];
    wanted.sort_unstable_by(|a, b| id(*a).cmp(id(*b)));
    let mut frames = Frames::new();
    let mut missing = Missing::default();
    // Each chunk's length, made its offset in its file below.
    let mut offsets: Vec<u64> = vec![0; wanted.len()];
    let mut last: Option<(&ChunkId, Option<Location>)> = None;
    for (file, chunk) in wanted {
        let id = id((file, chunk));
        let loc = match &last {
            Some((l, loc)) if *l == id => loc.clone(),
            _ => {
                let loc = reader.get(id)?;
                last = Some((id, loc.clone()));
                loc
            }
        };
        let Some(loc) = loc else {
            missing.file(&files[file as usize].path);
            continue;
        };
        offsets[starts[file as usize] + chunk as usize] = loc.length as u64;
        let target = Target {
            file,
            chunk,
            file_offset: 0,
            offset: loc.offset,
            length: loc.length,
        };
        frames
            .entry(loc.frame_key())
            .or_insert_with(|| FrameWork {
                loc,
                targets: Vec::new(),
            })
            .targets
            .push(target);
    }
    // Delta frames need their bases: they are chunks this restore reads.
    for w in frames.values() {
        if w.loc.compression == Compression::ZstdDelta {
            for b in reader.frame_bases(&w.loc)? {
                if reader.get(&b)?.is_none() {
                    missing.base();
                }
            }
        }
    }
    missing.check()?;
    for w in starts.windows(2) {
        let mut at = 0u64;
        for o in &mut offsets[w[0]..w[1]] {
            (*o, at) = (at, at + *o);
        }
    }
    for w in frames.values_mut() {
        for t in &mut w.targets {
            t.file_offset = offsets[starts[t.file as usize] + t.chunk as usize];
        }
        // File order within the frame: a file's chunks that follow each
        // other in it go out as one write.
        w.targets.sort_unstable_by_key(|t| (t.file, t.chunk));
    }
    Ok(frames)
}

/// Where every chunk of `nodes` is stored, by id, with the bases of the
/// delta frames among them; an error naming the files when any chunk is
/// missing from the index.
pub(super) fn locate_chunks(
    reader: &IndexReader,
    nodes: &[Node],
) -> Result<HashMap<ChunkId, Location>> {
    let mut locs = HashMap::new();
    let mut missing = Missing::default();
    // In id order, as in locate_files.
    let mut ids: Vec<(&ChunkId, usize)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.content.iter().map(move |id| (id, i)))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut last: Option<&ChunkId> = None;
    for (id, i) in ids {
        if last == Some(id) {
            if !locs.contains_key(id) {
                missing.file(&nodes[i].path);
            }
            continue;
        }
        last = Some(id);
        match reader.get(id)? {
            Some(l) => {
                locs.insert(*id, l);
            }
            None => missing.file(&nodes[i].path),
        }
    }
    // Delta frames need their bases: they are chunks this restore reads,
    // so their packs are checked with the rest before anything is written.
    let mut delta_frames: HashSet<(PackId, u64)> = HashSet::new();
    let mut bases: Vec<ChunkId> = Vec::new();
    for l in locs.values() {
        if l.compression == Compression::ZstdDelta && delta_frames.insert(l.frame_key()) {
            bases.extend(reader.frame_bases(l)?);
        }
    }
    bases.sort_unstable();
    bases.dedup();
    for b in bases {
        if locs.contains_key(&b) {
            continue;
        }
        match reader.get(&b)? {
            Some(l) => {
                locs.insert(b, l);
            }
            None => missing.base(),
        }
    }
    missing.check()?;
    Ok(locs)
}

/// Chunks missing from the index, counted by the file that needs them.
#[derive(Default)]
struct Missing(BTreeMap<String, usize>);

impl Missing {
    fn file(&mut self, path: &str) {
        *self.0.entry(path.to_string()).or_default() += 1;
    }

    fn base(&mut self) {
        *self
            .0
            .entry("(the base of a delta frame)".into())
            .or_default() += 1;
    }

    fn check(self) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let files: Vec<String> = self.0.keys().take(10).cloned().collect();
        Err(Error::integrity(format!(
            "{} file(s) of the snapshot have chunks missing from the index (e.g. {}); nothing was restored",
            self.0.len(),
            files.join(", ")
        ))
        .with_hint("run `cairn check --read-data` to see what is damaged; restore another snapshot with `--at` or an id"))
    }
}

/// `i` as a file or chunk number.
fn number(i: usize, what: &str) -> Result<u32> {
    u32::try_from(i).map_err(|_| Error::failure(format!("a restore takes at most 2^32 {what}")))
}

/// Keep only the targets of the files `renumber` gives a new number
/// (`renumber[old]`), numbered anew, and the frames that still have any.
pub(super) fn keep_files(frames: &mut Frames, renumber: &[Option<u32>]) {
    frames.retain(|_, w| {
        w.targets
            .retain_mut(|t| match renumber.get(t.file as usize) {
                Some(Some(new)) => {
                    t.file = *new;
                    true
                }
                _ => false,
            });
        w.targets.shrink_to_fit();
        !w.targets.is_empty()
    });
}

/// Frames grouped by their pack, each pack's in offset order.
pub(super) fn by_pack(frames: Frames) -> Vec<(PackId, Vec<FrameWork>)> {
    let mut packs: HashMap<PackId, Vec<FrameWork>> = HashMap::new();
    for w in frames.into_values() {
        packs.entry(w.loc.pack).or_default().push(w);
    }
    let mut packs: Vec<(PackId, Vec<FrameWork>)> = packs.into_iter().collect();
    for (_, work) in &mut packs {
        work.sort_by_key(|w| w.loc.frame_offset);
    }
    packs
}

/// The numbers of the files (at most 10, lowest first) that need a chunk
/// from one of the packs `bad`.
pub(super) fn files_in(packs: &[(PackId, Vec<FrameWork>)], bad: &HashSet<PackId>) -> Vec<usize> {
    let mut files = BTreeSet::new();
    for (_, work) in packs.iter().filter(|(p, _)| bad.contains(p)) {
        for w in work {
            files.extend(w.targets.iter().map(|t| t.file as usize));
        }
    }
    files.into_iter().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pack: u8, offset: u64, files: &[u32]) -> FrameWork {
        FrameWork {
            loc: Location {
                pack: PackId([pack; 32]),
                frame_offset: offset,
                frame_length: 100,
                raw_length: 100,
                compression: Compression::None,
                offset: 0,
                length: 0,
                base: None,
            },
            targets: files
                .iter()
                .map(|&file| Target {
                    file,
                    chunk: 0,
                    file_offset: 0,
                    offset: 0,
                    length: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_target_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Target>(), 24);
    }

    #[test]
    fn kept_files_are_numbered_anew_and_frames_left_empty_go() {
        let mut frames = Frames::new();
        for w in [
            frame(1, 0, &[0, 1]),
            frame(1, 100, &[1]),
            frame(2, 0, &[2, 0]),
        ] {
            frames.insert(w.loc.frame_key(), w);
        }
        // File 1 is kept as it stands; files 0 and 2 become 0 and 1.
        keep_files(&mut frames, &[Some(0), None, Some(1)]);
        let packs = by_pack(frames);
        let mut got: Vec<(u8, u64, Vec<u32>)> = packs
            .iter()
            .flat_map(|(p, work)| {
                work.iter().map(move |w| {
                    (
                        p.0[0],
                        w.loc.frame_offset,
                        w.targets.iter().map(|t| t.file).collect(),
                    )
                })
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![(1, 0, vec![0]), (2, 0, vec![1, 0])]);
        let bad: HashSet<PackId> = [PackId([2; 32])].into();
        assert_eq!(files_in(&packs, &bad), vec![0, 1]);
    }
}
