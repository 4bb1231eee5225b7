//! The WAL archive as recovery sees it: segments named by timeline and
//! number, the unbroken run of them a base backup replays, the gaps that
//! cut it, how far in time it reaches, and which segments no kept base
//! backup can replay any more (spec/postgres.md, "The WAL archive").
//!
//! Everything here works on names and stored entries only; reading a
//! segment's records is [`super::wal_records`], reading the repository is
//! [`super::wal`].

use super::meta::PhysicalMeta;
use crate::repo::{SnapshotId, WalEntry};
use jiff::Timestamp;
use std::collections::BTreeMap;

/// A WAL segment's place: its timeline and its number (LSN / segment size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

/// The size of a WAL segment, which maps positions (LSNs) to segment names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSize(u64);

impl Default for SegmentSize {
    fn default() -> Self {
        SegmentSize(16 << 20)
    }
}

impl SegmentSize {
    /// A size `initdb --wal-segsize` allows: a power of two, 1 MiB to 1 GiB.
    pub fn new(bytes: u64) -> Option<SegmentSize> {
        (bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes))
            .then_some(SegmentSize(bytes))
    }

    /// The size of the archived segments (the most common one), or
    /// PostgreSQL's default, 16 MiB, when none is archived.
    pub fn of_entries<'a>(entries: impl IntoIterator<Item = &'a WalEntry>) -> SegmentSize {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for e in entries {
            if matches!(WalName::parse(&e.name), Some(WalName::Segment(..))) {
                *counts.entry(e.size).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .and_then(|(size, _)| SegmentSize::new(size))
            .unwrap_or_default()
    }

    /// Segments per 4 GiB "log id", the middle part of a name.
    fn per_log(self) -> u64 {
        0x1_0000_0000 / self.0
    }

    /// The segment holding byte `lsn` of timeline `timeline`.
    pub fn segment_of(self, timeline: u32, lsn: u64) -> Segment {
        Segment {
            timeline,
            number: lsn / self.0,
        }
    }

    /// The segment of a name's three fields: timeline, log id, segment.
    fn numbered(self, timeline: u32, log: u32, seg: u32) -> Option<Segment> {
        ((seg as u64) < self.per_log()).then(|| Segment {
            timeline,
            number: log as u64 * self.per_log() + seg as u64,
        })
    }

    /// The file name of `s` (`XLogFileName`): timeline, log id, segment, in hex.
    pub fn name(self, s: Segment) -> String {
        format!(
            "{:08X}{:08X}{:08X}",
            s.timeline,
            s.number / self.per_log(),
            s.number % self.per_log()
        )
    }

    /// The segment a WAL file name belongs to (for a segment, a partial
    /// segment or a backup history file), if it is one of those.
    pub fn segment(self, name: &str) -> Option<Segment> {
        match WalName::parse(name)? {
            WalName::Segment(t, l, s) | WalName::Partial(t, l, s) | WalName::Backup(t, l, s) => {
                self.numbered(t, l, s)
            }
            WalName::History(_) => None,
        }
    }
}

/// The kinds of file PostgreSQL archives, by name: timeline, log id and
/// segment in the name's three hex fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalName {
    /// `000000010000000000000003`
    Segment(u32, u32, u32),
    /// `000000010000000000000003.partial`: the last, unfinished segment
    /// of a timeline that a promotion ended.
    Partial(u32, u32, u32),
    /// `000000010000000000000003.00000028.backup`: a base backup's history file.
    Backup(u32, u32, u32),
    /// `00000002.history`: how a timeline branched off its parent.
    History(u32),
}

impl WalName {
    pub fn parse(name: &str) -> Option<WalName> {
        let hex32 = |s: &str| {
            (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        if let Some(t) = name.strip_suffix(".history") {
            return hex32(t).map(WalName::History);
        }
        let fields = |s: &str| {
            Some((
                hex32(s.get(0..8)?)?,
                hex32(s.get(8..16)?)?,
                hex32(s.get(16..)?)?,
            ))
        };
        if let Some(s) = name.strip_suffix(".partial") {
            let (t, l, g) = fields(s)?;
            return Some(WalName::Partial(t, l, g));
        }
        if let Some(s) = name.strip_suffix(".backup") {
            let (seg, offset) = s.split_once('.')?;
            hex32(offset)?;
            let (t, l, g) = fields(seg)?;
            return Some(WalName::Backup(t, l, g));
        }
        let (t, l, g) = fields(name)?;
        Some(WalName::Segment(t, l, g))
    }
}

/// A WAL segment's name (not a history, backup or partial file).
pub fn is_segment(name: &str) -> bool {
    matches!(WalName::parse(name), Some(WalName::Segment(..)))
}

/// An LSN as PostgreSQL prints it, `0/2000028` (two hex halves).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some(
        (u64::from(u32::from_str_radix(hi, 16).ok()?) << 32)
            | u64::from(u32::from_str_radix(lo, 16).ok()?),
    )
}

/// Where a base backup's WAL begins and ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseWal {
    /// The segment of its start (the checkpoint it replays from).
    pub start: Segment,
    /// The segment of its end. The base backup holds the WAL from `start`
    /// through this segment: the server ends a backup by switching to a
    /// new segment, and sends the ended one whole (a backup taken on a
    /// standby, which cannot switch, holds it only up to the end). So
    /// recovery needs the archive from the next segment on.
    pub stop: Segment,
}

impl BaseWal {
    pub fn of(meta: &PhysicalMeta, size: SegmentSize) -> Option<BaseWal> {
        let start = parse_lsn(&meta.start_lsn)?;
        let stop = parse_lsn(&meta.stop_lsn)?;
        Some(BaseWal {
            start: size.segment_of(meta.timeline, start),
            // XLByteToPrevSeg: an end exactly on a boundary is in the segment before.
            stop: size.segment_of(meta.timeline, stop.saturating_sub(1).max(start)),
        })
    }
}

/// What a transaction-time lookup of a segment found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentTime {
    /// The time of its last commit or abort.
    LastXact(Timestamp),
    /// It holds no commit or abort.
    NoXact,
    /// Its records could not be read.
    Unreadable,
}

/// How far point-in-time recovery from one base backup reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The newest time it can recover to: the last transaction in the
    /// unbroken run of archived segments from the base backup's end, or the
    /// base backup's end when none is.
    pub time: Timestamp,
    /// The time of that last transaction (`None`: none after the backup).
    pub last_xact: Option<Timestamp>,
    /// The records of the segment that decided `time` could not be read:
    /// `time` is when it was archived (later than its last transaction).
    pub approximate: bool,
    /// The last segment recovery replays: the end of the unbroken run of
    /// archived segments after the base backup's end segment, or that one.
    pub last_segment: Segment,
    /// The first missing segment after the run, when newer WAL of the
    /// timeline is archived: the gap that cuts the range.
    pub gap: Option<Segment>,
}

/// One archived segment: its entry's stored facts.
#[derive(Clone, Debug)]
pub struct Archived {
    pub name: String,
    pub archived: Timestamp,
    /// `None` for entries whose records were not read at push.
    pub last_xact: Option<SegmentTime>,
}

/// The archived segments, ordered by timeline and number.
#[derive(Clone, Debug, Default)]
pub struct WalArchive {
    pub size: SegmentSize,
    segments: BTreeMap<Segment, Archived>,
}

impl WalArchive {
    pub fn new(entries: &[WalEntry]) -> WalArchive {
        let size = SegmentSize::of_entries(entries);
        let mut segments = BTreeMap::new();
        for e in entries {
            if !matches!(WalName::parse(&e.name), Some(WalName::Segment(..))) {
                continue;
            }
            let Some(seg) = size.segment(&e.name) else {
                continue;
            };
            let last_xact = e.records.map(|_| match e.last_xact_time {
                Some(t) => SegmentTime::LastXact(t),
                None => SegmentTime::NoXact,
            });
            let a = Archived {
                name: e.name.clone(),
                archived: e.archived,
                last_xact,
            };
            // Two entries of one name hold one content; keep the one read.
            let slot = segments.entry(seg).or_insert_with(|| a.clone());
            if slot.last_xact.is_none() {
                *slot = a;
            }
        }
        WalArchive { size, segments }
    }

    /// Timelines with archived segments.
    pub fn timelines(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self.segments.keys().map(|s| s.timeline).collect();
        t.dedup();
        t
    }

    /// The oldest and newest archived segment of `timeline`, and how many there are.
    pub fn window(&self, timeline: u32) -> Option<(Segment, Segment, usize)> {
        let mut on = self.on_timeline(timeline);
        let first = *on.next()?.0;
        let (last, n) = on.fold((first, 1), |(_, n), (s, _)| (*s, n + 1));
        Some((first, last, n))
    }

    fn on_timeline(&self, timeline: u32) -> impl DoubleEndedIterator<Item = (&Segment, &Archived)> {
        self.segments.range(
            Segment {
                timeline,
                number: 0,
            }..=Segment {
                timeline,
                number: u64::MAX,
            },
        )
    }

    /// Runs of missing segments of `timeline` from segment number `from`
    /// up to the newest one archived, as `(first, last)` numbers.
    pub fn gaps(&self, timeline: u32, from: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut next = from;
        for (s, _) in self.on_timeline(timeline) {
            if s.number > next {
                gaps.push((next, s.number - 1));
            }
            next = next.max(s.number + 1);
        }
        gaps
    }

    /// How far recovery from a base backup reaches: through the segments it
    /// holds, then along the unbroken run of archived segments after them,
    /// to the last transaction in that run.
    /// `time_of` reads a segment whose entry does not say (an entry of an
    /// older cairn): its records, fetched from the repository.
    pub fn reach(
        &self,
        meta: &PhysicalMeta,
        base: BaseWal,
        mut time_of: impl FnMut(&Archived) -> SegmentTime,
    ) -> Reach {
        // The end segment's archived copy, if any, for its transactions;
        // then the unbroken run after it.
        let mut run: Vec<&Archived> = self.segments.get(&base.stop).into_iter().collect();
        let mut next = Segment {
            number: base.stop.number + 1,
            ..base.stop
        };
        while let Some(a) = self.segments.get(&next) {
            run.push(a);
            next.number += 1;
        }
        let newer = self
            .on_timeline(base.stop.timeline)
            .next_back()
            .map(|(s, _)| *s);
        let gap = newer.filter(|n| *n >= next).map(|_| next);
        let last_segment = Segment {
            number: next.number - 1,
            ..next
        };
        let mut reach = Reach {
            time: meta.stop_time,
            last_xact: None,
            approximate: false,
            last_segment,
            gap,
        };
        // Newest first: the first segment with a transaction decides.
        for a in run.iter().rev() {
            match a.last_xact.unwrap_or_else(|| time_of(a)) {
                SegmentTime::NoXact => continue,
                SegmentTime::LastXact(t) => {
                    reach.last_xact = Some(t);
                    reach.time = reach.time.max(t);
                }
                SegmentTime::Unreadable => {
                    reach.approximate = a.archived > reach.time;
                    reach.time = reach.time.max(a.archived);
                }
            }
            break;
        }
        reach
    }
}

/// A physical base backup that retention keeps, and where its WAL starts.
#[derive(Clone, Debug)]
pub struct KeptBase {
    pub snapshot: SnapshotId,
    pub start: Segment,
}

/// Why a WAL file goes: the one kept base backup it would have to be
/// newer than.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub name: String,
    pub reason: String,
}

/// Which archived WAL files no kept base backup can replay (pgBackRest's
/// archive expiry): a segment (or partial segment, or backup history
/// file) of timeline `t` at number `n` is kept while a kept base backup
/// of timeline `t` or an earlier one starts at or before `n` — recovery
/// begins at a base backup's start and only moves to later timelines.
/// Timeline history files are always kept, and so is everything when no
/// physical base backup is kept at all.
pub fn expired<'a>(
    names: impl IntoIterator<Item = &'a str>,
    size: SegmentSize,
    kept: &[KeptBase],
) -> Vec<Expired> {
    if kept.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names {
        let Some(seg) = size.segment(name) else {
            continue; // history files, and names cairn does not know
        };
        let replayers: Vec<&KeptBase> = kept
            .iter()
            .filter(|b| b.start.timeline <= seg.timeline)
            .collect();
        if replayers.iter().any(|b| b.start.number <= seg.number) {
            continue;
        }
        let reason = match replayers.iter().min_by_key(|b| b.start.number) {
            Some(b) => format!(
                "older than {}, where the oldest kept base backup (snapshot {}) starts",
                size.name(b.start),
                b.snapshot.short()
            ),
            None => format!(
                "timeline {} is older than every kept base backup's (the oldest is snapshot {} on timeline {})",
                seg.timeline,
                kept[0].snapshot.short(),
                kept.iter().map(|b| b.start.timeline).min().unwrap_or(0)
            ),
        };
        out.push(Expired {
            name: name.to_string(),
            reason,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn entry(name: &str, archived: &str, last_xact: Option<Option<&str>>) -> WalEntry {
        WalEntry {
            name: name.into(),
            size: 16 << 20,
            digest: crate::repo::Id([0; 32]),
            content: Vec::new(),
            archived: at(archived),
            host: "db".into(),
            records: last_xact.map(|_| 10),
            last_xact_time: last_xact.flatten().map(at),
        }
    }

    fn meta(timeline: u32, start: &str, stop: &str, stop_time: &str) -> PhysicalMeta {
        PhysicalMeta {
            timeline,
            start_lsn: start.into(),
            stop_lsn: stop.into(),
            stop_time: at(stop_time),
            ..Default::default()
        }
    }

    #[test]
    fn names_and_positions() {
        let size = SegmentSize::default();
        assert_eq!(parse_lsn("0/2000028"), Some(0x200_0028));
        assert_eq!(parse_lsn("1A/FF000000"), Some(0x1A_FF00_0000));
        assert_eq!(parse_lsn("nope"), None);
        let s = size.segment_of(1, 0x1A_FF00_0000);
        assert_eq!(size.name(s), "000000010000001A000000FF");
        assert_eq!(size.segment("000000010000001A000000FF"), Some(s));
        let next = Segment {
            number: s.number + 1,
            ..s
        };
        assert_eq!(size.name(next), "000000010000001B00000000");
        // 1 GiB segments: four per log id, so "…00000004" does not exist.
        let big = SegmentSize::new(1 << 30).unwrap();
        assert_eq!(
            big.name(Segment {
                timeline: 2,
                number: 5
            }),
            "000000020000000100000001"
        );
        assert_eq!(big.segment("000000020000000000000004"), None);
        assert_eq!(SegmentSize::new(3 << 20), None);
        assert_eq!(
            size.segment("000000010000000000000003.00000028.backup"),
            Some(Segment {
                timeline: 1,
                number: 3
            })
        );
        assert_eq!(
            size.segment("000000010000000000000003.partial")
                .map(|s| s.number),
            Some(3)
        );
        assert_eq!(
            WalName::parse("00000002.history"),
            Some(WalName::History(2))
        );
        assert_eq!(size.segment("00000002.history"), None);
        assert_eq!(WalName::parse("00000001000000000000000G"), None);
        // The size comes from the archived segments.
        let mut e = entry("000000010000000000000001", "2026-01-01T00:00:00Z", None);
        e.size = 64 << 20;
        assert_eq!(
            SegmentSize::of_entries([&e]),
            SegmentSize::new(64 << 20).unwrap()
        );
        assert_eq!(SegmentSize::of_entries([]), SegmentSize::default());
        // A base backup ending exactly on a boundary ends in the segment before.
        let b = BaseWal::of(
            &meta(1, "0/2000028", "0/4000000", "2026-01-01T00:00:00Z"),
            size,
        )
        .unwrap();
        assert_eq!((b.start.number, b.stop.number), (2, 3));
    }

    #[test]
    fn the_range_runs_to_the_last_transaction_before_the_first_gap() {
        let archive = WalArchive::new(&[
            entry(
                "000000010000000000000002",
                "2026-01-01T10:00:00Z",
                Some(None),
            ),
            entry(
                "000000010000000000000003",
                "2026-01-01T10:05:00Z",
                Some(Some("2026-01-01T10:04:00Z")),
            ),
            entry(
                "000000010000000000000004",
                "2026-01-01T10:10:00Z",
                Some(None),
            ),
            // 5 and 6 are missing.
            entry(
                "000000010000000000000007",
                "2026-01-01T10:30:00Z",
                Some(Some("2026-01-01T10:29:00Z")),
            ),
            entry(
                "000000020000000000000008",
                "2026-01-01T10:40:00Z",
                Some(Some("2026-01-01T10:39:00Z")),
            ),
        ]);
        assert_eq!(archive.gaps(1, 2), vec![(5, 6)]);
        assert_eq!(archive.gaps(1, 0), vec![(0, 1), (5, 6)]);
        assert_eq!(
            archive.window(1).map(|(a, b, n)| (a.number, b.number, n)),
            Some((2, 7, 4))
        );
        assert_eq!(archive.timelines(), vec![1, 2]);

        let m = meta(1, "0/2000028", "0/2000100", "2026-01-01T09:59:00Z");
        let base = BaseWal::of(&m, archive.size).unwrap();
        let r = archive.reach(&m, base, |_| unreachable!("every entry says"));
        assert_eq!(r.time, at("2026-01-01T10:04:00Z"));
        assert_eq!(r.last_xact, Some(at("2026-01-01T10:04:00Z")));
        assert_eq!(r.last_segment.number, 4);
        assert_eq!(r.gap.map(|s| s.number), Some(5));
        assert!(!r.approximate);

        // A base backup after the gap reaches the end of its timeline.
        let m = meta(1, "0/7000028", "0/7000100", "2026-01-01T10:20:00Z");
        let r = archive.reach(&m, BaseWal::of(&m, archive.size).unwrap(), |_| {
            SegmentTime::NoXact
        });
        assert_eq!((r.time, r.gap), (at("2026-01-01T10:29:00Z"), None));

        // The base backup holds its own segments: with its end segment (5)
        // missing, recovery goes on from 6, which is missing too.
        let m = meta(1, "0/5000028", "0/5000100", "2026-01-01T10:12:00Z");
        let r = archive.reach(&m, BaseWal::of(&m, archive.size).unwrap(), |_| {
            SegmentTime::NoXact
        });
        assert_eq!((r.time, r.last_xact), (m.stop_time, None));
        assert_eq!(
            (r.last_segment.number, r.gap.map(|s| s.number)),
            (5, Some(6))
        );
        // Ending in 6, it needs the archive from 7 on.
        let m = meta(1, "0/5000028", "0/6000100", "2026-01-01T10:12:00Z");
        let r = archive.reach(&m, BaseWal::of(&m, archive.size).unwrap(), |_| {
            SegmentTime::NoXact
        });
        assert_eq!((r.time, r.gap), (at("2026-01-01T10:29:00Z"), None));
    }

    #[test]
    fn entries_that_do_not_say_are_read_and_unreadable_ones_count_by_archive_time() {
        let archive = WalArchive::new(&[
            entry(
                "000000010000000000000002",
                "2026-01-01T10:00:00Z",
                Some(Some("2026-01-01T09:59:59Z")),
            ),
            entry("000000010000000000000003", "2026-01-01T10:05:00Z", None),
            entry("000000010000000000000004", "2026-01-01T10:10:00Z", None),
        ]);
        let m = meta(1, "0/2000028", "0/2000100", "2026-01-01T09:59:00Z");
        let base = BaseWal::of(&m, archive.size).unwrap();
        let mut asked = Vec::new();
        let r = archive.reach(&m, base, |a| {
            asked.push(a.name.clone());
            if a.name.ends_with('4') {
                SegmentTime::NoXact
            } else {
                SegmentTime::LastXact(at("2026-01-01T10:03:00Z"))
            }
        });
        assert_eq!(
            asked,
            ["000000010000000000000004", "000000010000000000000003"]
        );
        assert_eq!((r.time, r.approximate), (at("2026-01-01T10:03:00Z"), false));

        let r = archive.reach(&m, base, |_| SegmentTime::Unreadable);
        assert_eq!(
            (r.time, r.approximate, r.last_xact),
            (at("2026-01-01T10:10:00Z"), true, None)
        );
    }

    #[test]
    fn retention_keeps_what_a_kept_base_backup_replays() {
        let size = SegmentSize::default();
        let snap = |b: u8| SnapshotId([b; 32]);
        let names = [
            "000000010000000000000001",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000009",
            "000000010000000000000009.partial",
            "00000002.history",
            "000000020000000000000008",
            "00000002000000000000000A",
            "something-else",
        ];
        assert!(
            expired(names, size, &[]).is_empty(),
            "no base backup: keep all"
        );
        let kept = [KeptBase {
            snapshot: snap(0xab),
            start: Segment {
                timeline: 1,
                number: 3,
            },
        }];
        let gone: Vec<String> = expired(names, size, &kept)
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            gone,
            [
                "000000010000000000000001",
                "000000010000000000000002.00000028.backup"
            ]
        );
        let e = &expired(names, size, &kept)[0];
        assert!(
            e.reason.contains("older than 000000010000000000000003")
                && e.reason.contains("abababab"),
            "{}",
            e.reason
        );

        // Only a base backup on timeline 2 kept: timeline 1 goes whole.
        let kept = [KeptBase {
            snapshot: snap(0xcd),
            start: Segment {
                timeline: 2,
                number: 9,
            },
        }];
        let gone: Vec<String> = expired(names, size, &kept)
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            gone,
            [
                "000000010000000000000001",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
                "000000010000000000000009",
                "000000010000000000000009.partial",
                "000000020000000000000008",
            ]
        );
        assert!(expired(names, size, &kept)[0]
            .reason
            .contains("timeline 1 is older"));
    }
}
