//! Source → target offset translation for consumer groups.
//!
//! A restore produces a partition's records in their original order, so the
//! target offsets are increasing in the source offsets, but the two differ
//! wherever the source log had gaps (compaction, transaction markers,
//! aborted records) or did not start at 0. A group that committed offset `c`
//! had read every record below `c` and none at or above it; on the target it
//! must resume at the first restored record whose source offset is `>= c`, or
//! at the partition's end when there is none.

/// Restored records of one partition: `(source offset, target offset)`,
/// increasing in both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetMap {
    pairs: Vec<(i64, i64)>,
}

impl OffsetMap {
    pub fn new(mut pairs: Vec<(i64, i64)>) -> OffsetMap {
        pairs.sort_unstable();
        OffsetMap { pairs }
    }

    /// Target offset after the last restored record, if any.
    pub fn next_target(&self) -> Option<i64> {
        self.pairs.last().map(|p| p.1 + 1)
    }

    /// The target offset for committed source offset `c`; `end` is the
    /// target partition's log end offset.
    pub fn translate(&self, c: i64, end: i64) -> i64 {
        let i = self.pairs.partition_point(|(s, _)| *s < c);
        match self.pairs.get(i) {
            Some((_, t)) => *t,
            None => end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A source partition: its log start, the offsets of the records that
    /// survived (gaps = compaction / markers), and its log end.
    fn partition() -> impl Strategy<Value = (i64, Vec<i64>, i64)> {
        (
            0i64..1000,
            proptest::collection::vec((1i64..5, any::<bool>()), 0..60),
            0i64..4,
        )
            .prop_map(|(start, steps, tail)| {
                let mut offsets = Vec::new();
                let mut o = start;
                for (step, kept) in steps {
                    if kept {
                        offsets.push(o);
                    }
                    o += step;
                }
                (start, offsets, o + tail)
            })
    }

    proptest! {
        /// A consumer resuming at the translated offset reads on the target
        /// exactly the records it had not read on the source.
        #[test]
        fn resumes_exactly_after_what_was_read(
            (start, offsets, end) in partition(),
            target_base in 0i64..50,
            commit_pick in 0usize..100,
            commit_kind in 0u8..4,
        ) {
            let pairs: Vec<(i64, i64)> = offsets.iter().enumerate().map(|(i, s)| (*s, target_base + i as i64)).collect();
            let map = OffsetMap::new(pairs.clone());
            let target_end = map.next_target().unwrap_or(target_base);
            // Commits anywhere: below the log start, at a record, in a gap, at the log end.
            let c = match commit_kind {
                0 => start.saturating_sub(1 + commit_pick as i64),
                1 if !offsets.is_empty() => offsets[commit_pick % offsets.len()],
                2 => start + (commit_pick as i64 % (end - start + 1)),
                _ => end,
            };
            let t = map.translate(c, target_end);
            let unread_source: Vec<i64> = pairs.iter().filter(|(s, _)| *s >= c).map(|p| p.0).collect();
            let read_on_target: Vec<i64> = pairs.iter().filter(|(_, tg)| *tg >= t).map(|p| p.0).collect();
            prop_assert_eq!(unread_source, read_on_target);
            prop_assert!(t <= target_end);
        }

        #[test]
        fn translation_is_monotonic((_, offsets, end) in partition(), a in 0i64..1300, b in 0i64..1300) {
            let map = OffsetMap::new(offsets.iter().enumerate().map(|(i, s)| (*s, i as i64)).collect());
            let e = map.next_target().unwrap_or(0);
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(map.translate(lo, e) <= map.translate(hi, e));
            prop_assert_eq!(map.translate(end, e), e);
        }
    }

    #[test]
    fn examples() {
        // Source log starts at 100 with a compacted gap at 102..104.
        let map = OffsetMap::new(vec![(100, 0), (101, 1), (104, 2), (105, 3)]);
        assert_eq!(
            map.translate(0, 4),
            0,
            "below the log start: from the first record"
        );
        assert_eq!(map.translate(101, 4), 1);
        assert_eq!(
            map.translate(102, 4),
            2,
            "in a gap: the next surviving record"
        );
        assert_eq!(map.translate(106, 4), 4, "at the log end: the target's end");
        let empty = OffsetMap::default();
        assert_eq!(empty.translate(7, 0), 0, "empty partition: its end");
    }
}
