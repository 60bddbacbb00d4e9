//! Small pure helpers every piece needs the same way: bearer-token checks and a checksum.
//!
//! They live here so the agent, the controller and the builtin proxy check tokens alike, and
//! the persisted state files of agent and controller use one checksum.

/// FNV-1a, 64 bits: small, dependency-free, and enough to catch a torn or hand-edited file.
/// Also a stable hash for per-server jitter.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Equal-time comparison: the time taken does not depend on where the inputs differ (the
/// length may show; tokens are long random strings).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    // `subtle` answers unequal lengths at once: a token's length is no secret worth hiding.
    a.ct_eq(b).into()
}

/// The token of an `Authorization: Bearer <token>` header value; the scheme is
/// case-insensitive (RFC 9110 section 11.1).
pub fn bearer_token(header: &str) -> Option<&str> {
    header
        .trim()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Whether an `Authorization` header value presents `token`.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(bearer_token)
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn constant_time_eq_compares_fully() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_headers() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(Some("bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }
}
