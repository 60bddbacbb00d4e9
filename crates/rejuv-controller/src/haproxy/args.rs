//! The strict character set every argument is checked against before anything is sent:
//! HAProxy chains commands on `;`, so a name, an address or a raw command that could carry a
//! second command is refused whole.

use super::error::HaproxyError;
use std::net::SocketAddr;

/// Longest server or backend name accepted (HAProxy itself has no short limit).
const MAX_NAME: usize = 100;

/// Names (backend, server, prefix, instance id): ASCII letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit.
pub(super) fn check_name(what: &'static str, value: &str) -> Result<(), HaproxyError> {
    let bad = |reason| {
        Err(HaproxyError::InvalidArgument {
            what,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if value.len() > MAX_NAME {
        return bad("longer than 100 characters");
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with an ASCII letter or digit");
    }
    if !value
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Addresses: written as `IPv4:port` or `[IPv6]:port`, no zone id.
pub(super) fn check_addr(addr: &SocketAddr) -> Result<(), HaproxyError> {
    let text = addr.to_string();
    let ok = text
        .bytes()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, b'.' | b':' | b'[' | b']'));
    if !ok {
        return Err(HaproxyError::InvalidArgument {
            what: "address",
            value: text,
            reason: "only an IPv4 or IPv6 address and a port are allowed (no zone id)",
        });
    }
    if addr.port() == 0 {
        return Err(HaproxyError::InvalidArgument {
            what: "address",
            value: text,
            reason: "port 0",
        });
    }
    Ok(())
}

/// A raw command: printable ASCII, and none of `;` (chaining), `\` (escapes), `#` (comment).
pub(super) fn check_command(cmd: &str) -> Result<(), HaproxyError> {
    let bad = |reason| {
        Err(HaproxyError::InvalidArgument {
            what: "command",
            value: cmd.to_string(),
            reason,
        })
    };
    if cmd.trim().is_empty() {
        return bad("empty");
    }
    if cmd.len() > 4096 {
        return bad("longer than 4096 bytes");
    }
    if !cmd.bytes().all(|c| (0x20..0x7f).contains(&c)) {
        return bad("only printable ASCII is allowed");
    }
    if cmd.bytes().any(|c| matches!(c, b';' | b'\\' | b'#')) {
        return bad("';', '\\' and '#' are not allowed (one command per request)");
    }
    Ok(())
}
