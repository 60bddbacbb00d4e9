//! Plain-text tables and small formatters for the operator commands and the demo's view.
//!
//! Tables are `comfy-table`'s, without borders: columns as wide as their widest cell,
//! separated by two spaces, and no trailing blanks (so long reasons in the last column leave
//! none).

use comfy_table::presets::NOTHING;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use comfy_table::Table;

/// An empty table with these column headings.
pub fn table(head: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING).set_header(head.to_vec());
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t
}

/// The table, one line per row, each ending in a newline.
pub fn render(t: &Table) -> String {
    t.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// A span of seconds for people: `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let t = s.round() as u64;
    match t {
        t if t < 3600 => format!("{}m{:02}s", t / 60, t % 60),
        t if t < 86_400 => format!("{}h{:02}m", t / 3600, (t % 3600) / 60),
        t => format!("{}d{:02}h", t / 86_400, (t % 86_400) / 3600),
    }
}

/// Wall-clock milliseconds since the epoch as RFC 3339 UTC, to the second.
pub fn wall(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Wall-clock milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decimal bytes: `87MB`, `1.2GB`.
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0}kB", b / 1e3)
    } else {
        format!("{b:.0}B")
    }
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_the_last_is_not_padded() {
        let mut t = table(&["A", "BB", "WHY"]);
        t.add_row(vec!["xxx", "▁▂", "a reason"]);
        t.add_row(vec!["y", "zzzz", ""]);
        assert_eq!(
            render(&t),
            "A    BB    WHY\nxxx  ▁▂    a reason\ny    zzzz\n"
        );
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(secs(12.34), "12.3s");
        assert_eq!(secs(245.0), "4m05s");
        assert_eq!(secs(7380.0), "2h03m");
        assert_eq!(secs(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(secs(f64::NAN), "-");
    }

    #[test]
    fn clip_marks_the_cut() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(wall(0), "1970-01-01T00:00:00Z");
        assert_eq!(bytes(87_000_000), "87MB");
    }
}
