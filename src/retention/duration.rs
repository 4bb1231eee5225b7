//! Retention durations (`keep-within*`): restic's `<n>y<n>m<n>d<n>h`,
//! where `m` is a calendar month, measured back from a snapshot's time the
//! way restic does (Go's `time.AddDate`, then hours). See
//! `spec/retention.md`, "Durations".

use std::fmt;
use std::str::FromStr;

use jiff::tz::TimeZone;
use jiff::{civil, Timestamp, ToSpan};

/// What a retention rule given on the command line or in a plan got wrong,
/// and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub hint: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The hint every refused duration gets.
pub const DURATION_HINT: &str = "retention durations are restic's: numbers with y (years), \
m (calendar months), w (weeks), d (days), h (hours), in that order, e.g. \"1y6m\", \"1m\" \
(one month), \"2w\", \"30d\", \"36h\"; there are no minutes or seconds";

/// A span of calendar time: years, months, days and hours, each counted
/// separately (a month is not a number of days).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CalendarDuration {
    pub years: u32,
    pub months: u32,
    /// Weeks are added here, 7 days each.
    pub days: u32,
    pub hours: u32,
}

impl CalendarDuration {
    /// `true` when every part is zero: a rule with this duration is not set.
    pub fn is_zero(&self) -> bool {
        *self == CalendarDuration::default()
    }

    /// The instant `self` before `reference`, as restic computes it:
    /// years, months and days are subtracted from the calendar date in `tz`
    /// like Go's `time.AddDate` — the month first, then the days, with a
    /// day past the end of its month rolling over into the next (one month
    /// before March 31 is March 3, or March 2 in a leap year) — keeping the
    /// wall-clock time, then the hours are subtracted as elapsed hours.
    /// `None` when the result is outside the representable range.
    pub fn before(&self, reference: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = reference.to_zoned_datetime(tz.clone()).datetime();
        let months = i64::from(local.year()) * 12 + i64::from(local.month() - 1)
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i16::try_from(months.div_euclid(12)).ok()?;
        let month = i8::try_from(months.rem_euclid(12) + 1).ok()?;
        let first = civil::Date::new(year, month, 1).ok()?;
        let offset = i64::from(local.day()) - 1 - i64::from(self.days);
        let day = first.checked_add(offset.days()).ok()?;
        let zoned = day
            .to_datetime(local.time())
            .to_zoned_datetime(tz.clone())
            .ok()?;
        zoned
            .timestamp()
            .checked_sub(i64::from(self.hours).hours())
            .ok()
    }
}

impl fmt::Display for CalendarDuration {
    /// restic's spelling, e.g. `1y2m3d4h`; `0h` when zero. Weeks are shown
    /// as days (`2w` is `14d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0h");
        }
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// The units, in the only order they may be written.
const UNITS: [&str; 5] = ["y", "m", "w", "d", "h"];

/// Why a unit that is not one of [`UNITS`] is refused.
fn unknown_unit(unit: &str) -> String {
    match unit {
        "min" | "mins" | "minute" | "minutes" | "M" | "s" | "sec" | "secs" | "second"
        | "seconds" | "ms" | "us" | "µs" | "ns" => format!(
            "`{unit}` would be minutes or seconds; retention counts years, months, weeks, days \
             and hours, and `m` is a month, as in restic"
        ),
        "mo" | "mon" | "mons" | "month" | "months" => {
            format!("`{unit}`: write months as `m` (a calendar month, as in restic)")
        }
        "Y" | "W" | "D" | "H" => format!("`{unit}`: units are lower-case"),
        "year" | "years" | "yr" | "yrs" | "week" | "weeks" | "day" | "days" | "hour" | "hours"
        | "hr" | "hrs" => format!("`{unit}`: write the unit as one letter"),
        _ => format!("unknown unit `{unit}`"),
    }
}

impl FromStr for CalendarDuration {
    type Err = ParseError;

    /// `<n>y<n>m<n>w<n>d<n>h`, each part optional but at least one, in that
    /// order, each unit once; `m` is a month. Anything else — minutes,
    /// seconds, spelled-out or upper-case units, signs, spaces inside,
    /// units out of order (`1h30m` reads as 1 hour 30 minutes elsewhere) —
    /// is refused with the reason.
    fn from_str(text: &str) -> Result<Self, ParseError> {
        let refuse = |why: String| ParseError {
            message: format!("{text:?} is not a retention duration: {why}"),
            hint: DURATION_HINT.to_string(),
        };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(refuse("it is empty".into()));
        }
        let mut d = CalendarDuration::default();
        let mut previous: Option<usize> = None;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(refuse(format!("expected a number at `{rest}`")));
            }
            let n: u32 = rest[..digits]
                .parse()
                .map_err(|_| refuse(format!("{} is too large", &rest[..digits])))?;
            rest = &rest[digits..];
            let unit_len: usize = rest
                .chars()
                .take_while(|c| c.is_alphabetic())
                .map(char::len_utf8)
                .sum();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            if unit.is_empty() {
                return Err(refuse(format!("{n} has no unit")));
            }
            let Some(rank) = UNITS.iter().position(|u| *u == unit) else {
                return Err(refuse(unknown_unit(unit)));
            };
            if let Some(p) = previous {
                if rank <= p {
                    let why = if unit == "m" && UNITS[p] == "h" {
                        "`m` after `h`: there are no minutes (`m` is a month); \
                         months come before days and hours"
                            .to_string()
                    } else {
                        format!(
                            "`{unit}` after `{}`: write y, m, w, d, h in that order, each once",
                            UNITS[p]
                        )
                    };
                    return Err(refuse(why));
                }
            }
            previous = Some(rank);
            let too_large = || refuse(format!("{n}{unit} is too large"));
            match unit {
                "y" => d.years = n,
                "m" => d.months = n,
                "w" => d.days = n.checked_mul(7).ok_or_else(too_large)?,
                "d" => d.days = d.days.checked_add(n).ok_or_else(too_large)?,
                _ => d.hours = n,
            }
        }
        Ok(d)
    }
}

impl serde::Serialize for CalendarDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CalendarDuration, ParseError> {
        s.parse()
    }

    fn dur(years: u32, months: u32, days: u32, hours: u32) -> CalendarDuration {
        CalendarDuration {
            years,
            months,
            days,
            hours,
        }
    }

    #[test]
    fn restic_forms_parse() {
        assert_eq!(parse("1m"), Ok(dur(0, 1, 0, 0)));
        assert_eq!(parse("1y2m3d4h"), Ok(dur(1, 2, 3, 4)));
        assert_eq!(parse(" 2y5m7d3h "), Ok(dur(2, 5, 7, 3)));
        assert_eq!(parse("7d"), Ok(dur(0, 0, 7, 0)));
        assert_eq!(parse("36h"), Ok(dur(0, 0, 0, 36)));
        assert_eq!(parse("75y"), Ok(dur(75, 0, 0, 0)));
        assert_eq!(parse("2w"), Ok(dur(0, 0, 14, 0)));
        assert_eq!(parse("1w2d"), Ok(dur(0, 0, 9, 0)));
        assert!(parse("0d").expect("zero parses").is_zero());
    }

    #[test]
    fn display_is_restic_spelling_and_parses_back() {
        for s in ["1y2m3d4h", "1m", "14d", "6h", "0h", "100y"] {
            let d = parse(s).expect(s);
            assert_eq!(parse(&d.to_string()), Ok(d), "{s}");
        }
        assert_eq!(parse("2w").expect("valid").to_string(), "14d");
        assert_eq!(dur(1, 2, 3, 4).to_string(), "1y2m3d4h");
    }

    #[test]
    fn minutes_and_other_forms_are_refused_with_a_reason() {
        for (text, says) in [
            ("1min", "minutes or seconds"),
            ("30s", "minutes or seconds"),
            ("5M", "minutes or seconds"),
            ("90sec", "minutes or seconds"),
            ("1h30m", "no minutes"),
            ("1mo", "write months as `m`"),
            ("1month", "write months as `m`"),
            ("2days", "one letter"),
            ("1D", "lower-case"),
            ("", "empty"),
            ("d", "expected a number"),
            ("-1d", "expected a number"),
            ("+1d", "expected a number"),
            ("1y 2m", "expected a number"),
            ("12", "has no unit"),
            ("1d1d", "each once"),
            ("1d1y", "in that order"),
            ("1x", "unknown unit `x`"),
            ("99999999999d", "too large"),
            ("1000000000w", "too large"),
            ("forever", "expected a number"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.message.contains(says), "{text:?}: {}", e.message);
            assert!(e.message.contains(&format!("{text:?}")), "{}", e.message);
            assert_eq!(e.hint, DURATION_HINT);
        }
    }

    fn before(d: &str, reference: &str, tz: &str) -> String {
        let tz = TimeZone::get(tz).expect("zone");
        let t: Timestamp = reference.parse().expect("timestamp");
        parse(d)
            .expect("duration")
            .before(t, &tz)
            .expect("in range")
            .to_string()
    }

    /// Go's `time.AddDate` normalises an overflowing day into the next
    /// month, which jiff's span arithmetic would clamp instead.
    #[test]
    fn months_are_subtracted_like_go_add_date() {
        assert_eq!(
            before("1m", "2026-03-31T12:00:00Z", "UTC"),
            "2026-03-03T12:00:00Z"
        );
        assert_eq!(
            before("1m", "2024-03-31T12:00:00Z", "UTC"),
            "2024-03-02T12:00:00Z"
        );
        assert_eq!(
            before("1y", "2024-02-29T00:00:00Z", "UTC"),
            "2023-03-01T00:00:00Z"
        );
        assert_eq!(
            before("1m", "2026-01-15T02:00:00Z", "UTC"),
            "2025-12-15T02:00:00Z"
        );
        assert_eq!(
            before("13m", "2026-01-15T02:00:00Z", "UTC"),
            "2024-12-15T02:00:00Z"
        );
        assert_eq!(
            before("1m40d", "2026-05-10T00:00:00Z", "UTC"),
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(
            before("1d", "2026-03-01T00:00:00Z", "UTC"),
            "2026-02-28T00:00:00Z"
        );
    }

    /// Days keep the wall-clock time across a DST change; hours are elapsed.
    #[test]
    fn days_keep_wall_clock_time_and_hours_are_elapsed() {
        // New York springs forward on 2026-03-08 at 02:00: one day before
        // 2026-03-08 12:00 EDT is 2026-03-07 12:00 EST, 23 elapsed hours.
        assert_eq!(
            before("1d", "2026-03-08T16:00:00Z", "America/New_York"),
            "2026-03-07T17:00:00Z"
        );
        assert_eq!(
            before("24h", "2026-03-08T16:00:00Z", "America/New_York"),
            "2026-03-07T16:00:00Z"
        );
        assert_eq!(
            before("1d2h", "2026-03-08T16:00:00Z", "America/New_York"),
            "2026-03-07T15:00:00Z"
        );
    }

    #[test]
    fn out_of_range_is_none() {
        let d = parse("4000000000y").expect("parses");
        assert!(d.before(Timestamp::UNIX_EPOCH, &TimeZone::UTC).is_none());
        let d = parse("20000y").expect("parses");
        assert!(d.before(Timestamp::UNIX_EPOCH, &TimeZone::UTC).is_none());
    }
}
