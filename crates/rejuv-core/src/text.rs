//! Text from outside (agents' replies and errors, services' output, request fields) made safe
//! to store and to print: bounded in length and with no control characters, so a reply can
//! neither grow the event log nor drive an operator's terminal (escape sequences, carriage
//! returns that overwrite a line).

/// Longest text kept from an agent's or a peer's error (bytes, before escaping).
pub const MAX_REMOTE_TEXT: usize = 512;

/// `s` cut to at most `max` bytes at a character boundary; a cut says how much was left out.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end)
}

/// `s` with every control character (ESC, CR, NUL, DEL, C1 ...) and every line break written
/// as an escape (`\u{1b}`, `\r`, `\n`): one line, printable as it is.
pub fn escape_control(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Output for a terminal: every control character but line breaks and tabs written as `\uXXXX`
/// (which also reads as the same character inside a JSON string), so no text that came from
/// outside can move the cursor, retitle the window or clear the screen.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Text from outside as it may be stored: clipped to `max` bytes, then escaped.
pub fn clean(s: &str, max: usize) -> String {
    escape_control(&clip(s, max))
}

/// Bytes from outside (a reply body) as text that may be stored: lossy UTF-8, clipped, escaped.
pub fn clean_bytes(b: &[u8], max: usize) -> String {
    let cut = &b[..b.len().min(max.saturating_add(4))];
    let mut s = clean(&String::from_utf8_lossy(cut), max);
    if b.len() > cut.len() {
        s.push_str(&format!(" ({} bytes in all)", b.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_line_breaks_are_written_out() {
        let s = "ok\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nnext\u{9b}";
        let e = escape_control(s);
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert_eq!(e, "ok\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\r\\nnext\\u{9b}");
        assert_eq!(escape_control("plain text"), "plain text");
    }

    #[test]
    fn terminal_output_keeps_lines_and_json_stays_json() {
        let s = "a\tb\nc\u{1b}[31md\u{9b}e\r";
        assert_eq!(terminal_safe(s), "a\tb\nc\\u001b[31md\\u009be\\u000d");
        let json = serde_json::to_string(&serde_json::json!({"m": "x\u{9b}y\u{7f}"})).unwrap();
        let safe = terminal_safe(&json);
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["m"], "x\u{9b}y\u{7f}");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let s = "é".repeat(400); // 800 bytes
        let c = clip(&s, 511);
        assert!(c.starts_with(&"é".repeat(255)));
        assert!(c.ends_with("… (290 more bytes)"), "{c}");
        assert_eq!(clip("short", 10), "short");
    }

    #[test]
    fn big_bodies_are_bounded_before_decoding() {
        let body = vec![b'x'; 500_000];
        let s = clean_bytes(&body, MAX_REMOTE_TEXT);
        assert!(s.len() < 600, "{}", s.len());
        assert!(s.ends_with("(500000 bytes in all)"), "{s}");
    }
}
