//! The ranges every number in a repository's `config` must lie in.
//!
//! The config is plain JSON and not authenticated: it is read before any key
//! opens the repository, so whoever can write to the storage can change it.
//! Its numbers size buffers and drive FastCDC and zstd, which panic or
//! allocate without bound outside their ranges. So each one is checked here
//! before it is used, and a value outside its range refuses the repository
//! (spec/repository.md, "Config validation").

use super::{ChunkerParams, Config};
use fastcdc::v2020 as cdc;
use std::ops::RangeInclusive;

/// FastCDC's limits for each size (all sizes must also be even).
pub const CHUNK_MIN: RangeInclusive<u32> = cdc::MINIMUM_MIN as u32..=cdc::MINIMUM_MAX as u32;
pub const CHUNK_AVG: RangeInclusive<u32> = cdc::AVERAGE_MIN as u32..=cdc::AVERAGE_MAX as u32;
pub const CHUNK_MAX: RangeInclusive<u32> = cdc::MAXIMUM_MIN as u32..=cdc::MAXIMUM_MAX as u32;
/// Target size of a frame: 4 KiB to 16 MiB.
pub const FRAME_SIZE: RangeInclusive<u32> = 4 << 10..=16 << 20;
/// Target size of a pack: 1 MiB to 128 MiB.
pub const PACK_SIZE: RangeInclusive<u32> = 1 << 20..=128 << 20;
/// zstd's positive levels.
pub const ZSTD_LEVEL: RangeInclusive<i32> = 1..=22;

fn in_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: &RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{field} is {value}, outside {}..={}",
            range.start(),
            range.end()
        ))
    }
}

impl ChunkerParams {
    /// Whether FastCDC accepts these sizes: each within its range, even,
    /// and min ≤ avg ≤ max. The problem names the field (`chunker.max`).
    pub fn validate(&self) -> Result<(), String> {
        for (field, value, range) in [
            ("chunker.min", self.min, &CHUNK_MIN),
            ("chunker.avg", self.avg, &CHUNK_AVG),
            ("chunker.max", self.max, &CHUNK_MAX),
        ] {
            in_range(field, value, range)?;
            if value % 2 != 0 {
                return Err(format!("{field} is {value}, not an even number"));
            }
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            return Err(format!(
                "chunker sizes are out of order: chunker.min {} ≤ chunker.avg {} ≤ chunker.max {} does not hold",
                self.min, self.avg, self.max
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Whether every number in the config lies in its range; the problem
    /// names the first field that does not.
    pub fn validate(&self) -> Result<(), String> {
        self.chunker.validate()?;
        in_range("frame_size", self.frame_size, &FRAME_SIZE)?;
        in_range("pack_size", self.pack_size, &PACK_SIZE)?;
        in_range("zstd_level", self.zstd_level, &ZSTD_LEVEL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::CHUNKER_DEFAULT;

    #[test]
    fn defaults_are_valid_and_each_bound_is_enforced() {
        assert_eq!(CHUNKER_DEFAULT.validate(), Ok(()));
        let with = |f: fn(&mut ChunkerParams)| {
            let mut p = CHUNKER_DEFAULT;
            f(&mut p);
            p.validate()
        };
        assert!(with(|p| p.max = 1).unwrap_err().contains("chunker.max"));
        assert!(with(|p| p.min = 0).unwrap_err().contains("chunker.min"));
        assert!(with(|p| p.avg = 8193).unwrap_err().contains("even"));
        assert!(with(|p| p.min = 16384).unwrap_err().contains("order"));
        assert!(with(|p| p.max = 1 << 30)
            .unwrap_err()
            .contains("chunker.max"));
    }
}
