//! The time cairn reads as "now" for what it records and decides by the
//! calendar: snapshot times, schedules, retention's "now", the daemon's
//! ages and alert rate limits, a WAL entry's archive time, proofs.
//! Durations (timeouts, how long a run took) use `std::time::Instant`
//! and are always real.
//!
//! In production this is the system clock. A build with the `testing`
//! feature (the one the integration tests run; release builds do not have
//! it) also reads `CAIRN_TEST_CLOCK=FILE`: the file holds an RFC 3339
//! time, and "now" is that time plus the real time elapsed since the file
//! was last modified. A time-lapse harness moves every cairn process it
//! starts (the daemon, `wal-push` run by PostgreSQL) to a new moment by
//! rewriting the file; between rewrites time flows as usual. A file that is
//! set but cannot be read or parsed stops the process with a message: a
//! simulation must never fall back to the real date unnoticed
//! (spec/logging.md, "Simulated time").

use jiff::Timestamp;

/// The current time (see the module's documentation).
pub fn now() -> Timestamp {
    #[cfg(feature = "testing")]
    if let Some(t) = simulated() {
        return t;
    }
    Timestamp::now()
}

#[cfg(feature = "testing")]
fn simulated() -> Option<Timestamp> {
    let path = std::env::var_os("CAIRN_TEST_CLOCK")?;
    match read_clock(std::path::Path::new(&path)) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!(
                "cairn: CAIRN_TEST_CLOCK={}: {e}",
                std::path::Path::new(&path).display()
            );
            std::process::exit(70)
        }
    }
}

/// The time a clock file says now is.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
fn read_clock(path: &std::path::Path) -> Result<Timestamp, String> {
    {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let base: Timestamp = text
            .trim()
            .parse()
            .map_err(|e| format!("{:?} is not an RFC 3339 time: {e}", text.trim()))?;
        let elapsed = std::time::SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        let elapsed = jiff::SignedDuration::try_from(elapsed).map_err(|e| e.to_string())?;
        base.checked_add(elapsed).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::read_clock;
    use jiff::Timestamp;

    #[test]
    fn the_test_clock_starts_at_the_file_and_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("clock");
        std::fs::write(&f, "2031-03-30T00:59:58Z\n").unwrap();
        let t = read_clock(&f).unwrap();
        let base: Timestamp = "2031-03-30T00:59:58Z".parse().unwrap();
        assert!(
            t >= base && t < base + jiff::SignedDuration::from_secs(5),
            "{t}"
        );
        std::fs::write(&f, "tomorrow").unwrap();
        assert!(read_clock(&f).unwrap_err().contains("not an RFC 3339 time"));
    }
}
