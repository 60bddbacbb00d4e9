//! Time as the core sees it: passed in, never read.
//!
//! `Now` carries a monotonic reading (for leases and timeouts inside one process) and a
//! wall-clock reading (for deadlines that are persisted and re-armed after a restart). Both are
//! plain milliseconds so that the simulator can drive them.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (wall clock).
pub type WallMs = u64;

/// The moment a step happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Now {
    /// Milliseconds on a monotonic clock local to the running process.
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: WallMs,
}

impl Now {
    pub fn new(mono_ms: u64, wall_ms: WallMs) -> Self {
        Self { mono_ms, wall_ms }
    }

    /// A `Now` where both clocks read the same, for tests and the simulator.
    pub fn at(ms: u64) -> Self {
        Self {
            mono_ms: ms,
            wall_ms: ms,
        }
    }
}

/// A wall-clock time as people read it in logs and status: `2023-11-14 22:13:20 UTC`.
pub fn fmt_utc(ms: WallMs) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times_read_as_dates() {
        assert_eq!(super::fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::fmt_utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(super::fmt_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
