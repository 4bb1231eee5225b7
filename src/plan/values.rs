//! The value types a plan writes as strings — durations, percents, sizes,
//! cron expressions — with parsers that explain what is wrong, and
//! formatters that write them back the way a person would (so `--json`
//! shows `"25h"`, not `90000`).
//!
//! Parsers return `Err(message)`; the plan parser turns the message into a
//! diagnostic at the value's position.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use crate::source::pg::{url_has_password, URL_PASSWORD_HINT};

/// A duration in humantime syntax (`"90s"`, `"25h"`, `"30d"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// The shortest exact humantime spelling: `25h`, `30d`, `90s`, `500ms`.
/// Always parses back to the same duration with [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return if d.subsec_nanos() % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}ns", d.as_nanos())
        };
    }
    let s = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s != 0 && s % n == 0 {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// Serialize a [`Duration`] field as its humantime spelling.
pub fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Serialize an optional [`Duration`] field as its humantime spelling or `null`.
pub fn serialize_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// A percentage from 0 to 100, written `"80%"`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl Percent {
    /// Parse `"80%"` or `"12.5%"`; the `%` is required so that a bare
    /// number is never mistaken for a fraction.
    pub fn parse(s: &str) -> Result<Percent, String> {
        let t = s.trim();
        let Some(num) = t.strip_suffix('%') else {
            return Err(format!("bad percent {s:?}: it must end in %"));
        };
        let v: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("bad percent {s:?}: {:?} is not a number", num.trim()))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("bad percent {s:?}: it must be between 0% and 100%"));
        }
        Ok(Percent(v))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

const KIB: u64 = 1024;
const UNITS: [(&str, u64); 9] = [
    ("TiB", KIB * KIB * KIB * KIB),
    ("GiB", KIB * KIB * KIB),
    ("MiB", KIB * KIB),
    ("KiB", KIB),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// A number of bytes, written with a unit: `"500GiB"`, `"2TB"`, `"1.5 TiB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parse a number (decimals allowed) and one of the units B, KiB, MiB,
    /// GiB, TiB, KB, MB, GB, TB (any case, optional space between). The
    /// unit is required: a bare `500` could mean bytes or gigabytes.
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        if num.is_empty() {
            return Err(format!("bad size {s:?}: it must start with a number"));
        }
        if unit.is_empty() {
            return Err(format!("bad size {s:?}: it needs a unit"));
        }
        let Some((_, mult)) = UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) else {
            return Err(format!("bad size {s:?}: unknown unit {unit:?}"));
        };
        let bytes = if num.contains('.') {
            let v: f64 = num
                .parse()
                .map_err(|_| format!("bad size {s:?}: {num:?} is not a number"))?;
            let b = (v * *mult as f64).round();
            if b >= u64::MAX as f64 {
                return Err(format!("bad size {s:?}: too large"));
            }
            b as u64
        } else {
            let v: u64 = num
                .parse()
                .map_err(|_| format!("bad size {s:?}: {num:?} is not a number"))?;
            v.checked_mul(*mult)
                .ok_or_else(|| format!("bad size {s:?}: too large"))?
        };
        Ok(Size(bytes))
    }
}

impl fmt::Display for Size {
    /// The largest unit that divides the size exactly (binary units first).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, mult) = UNITS
            .iter()
            .find(|(_, m)| self.0 != 0 && self.0 % m == 0)
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / mult)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Check a cron expression: 5 fields (minute hour day month weekday), or 6
/// with seconds first (for short schedules, e.g. in tests); names like `MON`
/// and `JAN` are allowed, years are not.
pub fn parse_cron(s: &str) -> Result<croner::Cron, String> {
    let fields = s.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(format!(
            "bad cron expression {s:?}: it has {fields} field(s), not 5 (minute hour day month weekday) or 6 (second first)"
        ));
    }
    let seconds = if fields == 6 {
        croner::parser::Seconds::Required
    } else {
        croner::parser::Seconds::Disallowed
    };
    croner::parser::CronParser::builder()
        .seconds(seconds)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| format!("bad cron expression {s:?}: {e}"))
}

/// The candidate closest to `word`, if it is close enough to be a likely
/// typo (a small edit distance, or one is a prefix of the other).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = 2.max(word.chars().count() / 3);
    candidates
        .into_iter()
        .map(|c| {
            let prefix = word.len() >= 3 && (c.starts_with(word) || word.starts_with(c));
            let d = strsim::levenshtein(&word.to_lowercase(), &c.to_lowercase());
            (if prefix { d.min(1) } else { d }, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_back() {
        let cases = [
            ("90s", 90),
            ("25h", 25 * 3600),
            ("30d", 30 * 86400),
            ("1h 30m", 5400),
            ("6h", 6 * 3600),
        ];
        for (text, secs) in cases {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_secs(secs), "{text}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(25 * 3600)), "25h");
        assert_eq!(format_duration(Duration::from_secs(30 * 86400)), "30d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert!(parse_duration("25").is_err());
        assert!(parse_duration("tomorrow").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn percents() {
        assert_eq!(Percent::parse("80%"), Ok(Percent(80.0)));
        assert_eq!(Percent::parse(" 12.5 %"), Ok(Percent(12.5)));
        assert_eq!(Percent::parse("0%"), Ok(Percent(0.0)));
        assert_eq!(Percent::parse("100%"), Ok(Percent(100.0)));
        assert!(Percent::parse("80").unwrap_err().contains("end in %"));
        assert!(Percent::parse("101%").unwrap_err().contains("between"));
        assert!(Percent::parse("-1%").is_err());
        assert!(Percent::parse("abc%").unwrap_err().contains("not a number"));
        assert_eq!(Percent(80.0).to_string(), "80%");
        assert_eq!(Percent(12.5).to_string(), "12.5%");
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("500GiB"), Ok(Size(500 << 30)));
        assert_eq!(Size::parse("2TB"), Ok(Size(2_000_000_000_000)));
        assert_eq!(Size::parse("1.5 KiB"), Ok(Size(1536)));
        assert_eq!(Size::parse("10mib"), Ok(Size(10 << 20)));
        assert_eq!(Size::parse("7B"), Ok(Size(7)));
        assert!(Size::parse("500").unwrap_err().contains("needs a unit"));
        assert!(Size::parse("GiB")
            .unwrap_err()
            .contains("start with a number"));
        assert!(Size::parse("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(Size::parse("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
        for s in ["500GiB", "2TB", "1536B", "3KiB", "1000KB"] {
            let parsed = Size::parse(s).unwrap();
            assert_eq!(Size::parse(&parsed.to_string()).unwrap(), parsed, "{s}");
        }
        assert_eq!(Size(1536).to_string(), "1536B");
        assert_eq!(Size(500 << 30).to_string(), "500GiB");
        assert_eq!(Size(1_000_000).to_string(), "1MB");
    }

    #[test]
    fn crons() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("*/15 8-18 * * MON-FRI").is_ok());
        assert!(parse_cron("0 4 * * 0").is_ok());
        assert!(parse_cron("*/5 * * * * *").is_ok(), "seconds first");
        assert!(parse_cron("0 0 2 * * * 2027")
            .unwrap_err()
            .contains("7 field(s)"));
        assert!(parse_cron("61 2 * * *").is_err());
        assert!(parse_cron("0 2 * * funday").is_err());
    }

    #[test]
    fn closest_names() {
        let known = ["repository", "source", "schedule", "retention", "alerts"];
        assert_eq!(closest("sourse", known), Some("source"));
        assert_eq!(closest("repo", known), Some("repository"));
        assert_eq!(closest("retension", known), Some("retention"));
        assert_eq!(closest("alert", known), Some("alerts"));
        assert_eq!(closest("zebra", known), None);
    }
}
