//! `[[freeze]]`: recurring change freezes in which no new workflow starts, when they hold,
//! and the checks of their days, start and duration.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A recurring change freeze, in UTC: on the given days (every day when empty), from `start`
/// for `duration`. No workflow starts inside it except one an operator forces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    pub name: String,
    /// `mon` … `sun`; empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, UTC.
    pub start: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl FreezeWindow {
    /// Minutes after midnight of `start`, if it is a valid `HH:MM`.
    fn start_minute(&self) -> Option<u64> {
        let (h, m) = self.start.split_once(':')?;
        let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && self.start.len() == 5).then_some(h * 60 + m)
    }

    /// Whether wall-clock time `wall_ms` (Unix milliseconds) falls inside the window.
    pub fn contains(&self, wall_ms: u64) -> bool {
        let Some(start_min) = self.start_minute() else {
            return false;
        };
        const DAY_MS: u64 = 86_400_000;
        let today = wall_ms / DAY_MS;
        // A window that started yesterday may run past midnight (durations up to a day).
        (today.saturating_sub(1)..=today).any(|day| {
            // 1970-01-01 was a Thursday: day 0 has index 3 counting from Monday.
            let name = DAY_NAMES[((day + 3) % 7) as usize];
            let on_day = self.days.is_empty() || self.days.iter().any(|d| d == name);
            let from = day * DAY_MS + start_min * 60_000;
            on_day && wall_ms >= from && wall_ms < from + self.duration.as_millis() as u64
        })
    }
}

/// Every freeze window, as `freeze[i]`.
pub(crate) fn validate(windows: &[FreezeWindow], errs: &mut Errors) {
    validate_as("freeze", windows, errs)
}

/// Every window of the list `section` (`freeze` or `allow`), as `section[i]`.
pub(crate) fn validate_as(section: &str, windows: &[FreezeWindow], errs: &mut Errors) {
    for (i, w) in windows.iter().enumerate() {
        let f = |name: &str| format!("{section}[{i}].{name}");
        if w.start_minute().is_none() {
            errs.add(f("start"), "must be HH:MM (UTC), e.g. \"22:00\"");
        }
        if w.duration.is_zero() || w.duration > Duration::from_secs(86_400) {
            errs.add(f("duration"), "must be greater than 0 and at most 24h");
        }
        for (j, d) in w.days.iter().enumerate() {
            if !DAY_NAMES.contains(&d.as_str()) {
                errs.add(
                    format!("{section}[{i}].days[{j}]"),
                    format!("must be one of {}", DAY_NAMES.join(", ")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_windows_follow_days_and_cross_midnight() {
        let w = FreezeWindow {
            name: "weekend-night".into(),
            days: vec!["sat".into()],
            start: "23:00".into(),
            duration: Duration::from_secs(2 * 3600),
        };
        // 2026-11-28 is a Saturday (day 20785 since 1970-01-01).
        let sat = 20_785 * 86_400_000u64;
        let hm = |day: u64, h: u64, m: u64| day + (h * 60 + m) * 60_000;
        assert!(!w.contains(hm(sat, 22, 59)));
        assert!(w.contains(hm(sat, 23, 0)));
        assert!(
            w.contains(hm(sat + 86_400_000, 0, 59)),
            "runs past midnight"
        );
        assert!(!w.contains(hm(sat + 86_400_000, 1, 0)), "ends after 2h");
        assert!(!w.contains(hm(sat - 86_400_000, 23, 30)), "not on Friday");
        let daily = FreezeWindow {
            days: vec![],
            ..w.clone()
        };
        assert!(daily.contains(hm(sat - 86_400_000, 23, 30)));
    }
}
