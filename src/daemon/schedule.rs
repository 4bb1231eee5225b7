//! When schedules fire: cron expressions evaluated in a time zone.
//!
//! `croner` does the matching; this file lets it walk jiff's zoned times
//! (croner's own jiff support targets an older jiff), so daylight-saving
//! gaps and repeats are resolved by jiff's time-zone database.

use croner::{CivilDateTime, CronDateTime, Resolution, Weekday};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ZonedDateTime as Zoned};
use std::cmp::Ordering;

/// A zoned time croner can search over.
#[derive(Clone, Debug)]
struct At(Zoned);

impl CronDateTime for At {
    fn to_civil(&self) -> CivilDateTime {
        let d = self.0.datetime();
        CivilDateTime::from_ymd_hms_opt(
            d.year() as i32,
            d.month() as u32,
            d.day() as u32,
            d.hour() as u32,
            d.minute() as u32,
            d.second() as u32,
        )
        .expect("jiff gives valid civil times")
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(self.0.weekday().to_sunday_zero_offset() as u32)
    }

    fn resolve_civil(
        &self,
        c: CivilDateTime,
    ) -> Result<Resolution<Self>, croner::errors::CronError> {
        let tz = self.0.time_zone().clone();
        let Ok(dt) = DateTime::new(
            c.year() as i16,
            c.month() as i8,
            c.day() as i8,
            c.hour() as i8,
            c.minute() as i8,
            c.second() as i8,
            0,
        ) else {
            return Ok(Resolution::Gap);
        };
        let zone = |ts: Result<Timestamp, jiff::Error>| {
            ts.ok().map(|t| At(t.to_zoned_datetime(tz.clone())))
        };
        Ok(match tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => match zone(offset.to_timestamp(dt)) {
                Some(z) => Resolution::Single(z),
                None => Resolution::Gap,
            },
            AmbiguousOffset::Gap { .. } => Resolution::Gap,
            AmbiguousOffset::Fold { before, after } => {
                match (zone(before.to_timestamp(dt)), zone(after.to_timestamp(dt))) {
                    (Some(a), Some(b)) => Resolution::Ambiguous(a, b),
                    (Some(a), None) | (None, Some(a)) => Resolution::Single(a),
                    (None, None) => Resolution::Gap,
                }
            }
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .timestamp()
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .ok()
            .map(|t| At(t.to_zoned_datetime(self.0.time_zone().clone())))
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

/// The first time strictly after `after` at which `cron` fires in `tz`.
pub fn next_after(cron: &str, tz: &TimeZone, after: Timestamp) -> Result<Timestamp, String> {
    let c = crate::plan::values::parse_cron(cron)?;
    c.find_next_occurrence(&At(after.to_zoned_datetime(tz.clone())), false)
        .map(|z| z.0.timestamp())
        .map_err(|e| format!("cron {cron:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn nightly_at_two_in_a_zone() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // 2026-11-25 01:30 Berlin is 00:30 UTC; the next 02:00 is 01:00 UTC.
        let next = next_after("0 2 * * *", &berlin, ts("2026-11-25T00:30:00Z")).unwrap();
        assert_eq!(next, ts("2026-11-25T01:00:00Z"));
        // Just after it: the next day.
        let next = next_after("0 2 * * *", &berlin, next).unwrap();
        assert_eq!(next, ts("2026-11-26T01:00:00Z"));
    }

    #[test]
    fn weekly_and_every_minute() {
        let utc = TimeZone::UTC;
        // 2026-11-25 is a Wednesday; Sunday 04:00 comes on the 29th.
        let next = next_after("0 4 * * 0", &utc, ts("2026-11-25T12:00:00Z")).unwrap();
        assert_eq!(next, ts("2026-11-29T04:00:00Z"));
        let next = next_after("* * * * *", &utc, ts("2026-11-25T12:00:30Z")).unwrap();
        assert_eq!(next, ts("2026-11-25T12:01:00Z"));
        let next = next_after("*/5 * * * * *", &utc, ts("2026-11-25T12:00:31Z")).unwrap();
        assert_eq!(next, ts("2026-11-25T12:00:35Z"));
    }

    #[test]
    fn a_skipped_hour_is_not_a_crash() {
        // Berlin skips 02:00-03:00 on 2026-03-29.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let next = next_after("30 2 * * *", &berlin, ts("2026-03-28T12:00:00Z")).unwrap();
        assert!(next > ts("2026-03-28T12:00:00Z"));
        assert!(next <= ts("2026-03-30T01:00:00Z"), "{next}");
    }
}
