//! What every section's validation shares: [`FieldError`] (a field and why it is wrong),
//! the [`ConfigError`] a load fails with, and [`Errors`], the list each section's `validate`
//! adds to so that the whole config reports every problem at once.

use serde::Serialize;

/// A problem with one field of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `servers[2].port_range`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The parser's message, each line clipped (it quotes the offending line, which may be
    /// megabytes long or hold control characters).
    #[error("config is not valid TOML for rejuv: {}", clipped(.0))]
    Parse(#[source] toml::de::Error),
    #[error("config has {} error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

/// Longest line of a parse error shown (bytes).
const MAX_ERROR_LINE: usize = 160;

fn clipped(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .take(12)
        .map(|l| crate::text::clean(l, MAX_ERROR_LINE))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The problems found so far, in the order they were found.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    /// Records that `field` is wrong because of `reason`.
    pub(crate) fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn into_vec(self) -> Vec<FieldError> {
        self.0
    }
}

/// Whether `s` is a non-empty name of letters, digits, `-` and `_` (server ids, service
/// names).
pub(crate) fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A size in bytes, written as a number of bytes or as a number with a unit: `512MiB`,
/// `2G`, `64k` (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024; a trailing `B` is allowed).
pub mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `text` as a size; the error says what was expected.
    pub fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
        let mult: u64 = match unit {
            "" => 1,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => {
                return Err(format!(
                "'{text}': the unit must be one of k, M, G, T, Ki, Mi, Gi, Ti (optionally with B)"
            ))
            }
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("'{text}' is not a size such as 512MiB or 1G"))?;
        let v = n * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 / 2.0 {
            return Err(format!("'{text}' is out of range"));
        }
        Ok(v as u64)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Number(n)) => Ok(Some(n)),
            Some(Raw::Text(t)) => parse(&t).map(Some).map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_none(),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn sizes_read_as_people_write_them() {
            assert_eq!(super::parse("512MiB"), Ok(512 << 20));
            assert_eq!(super::parse("2G"), Ok(2_000_000_000));
            assert_eq!(super::parse("64k"), Ok(64_000));
            assert_eq!(super::parse("1.5Gi"), Ok(3 << 29));
            assert_eq!(super::parse("4096"), Ok(4096));
            assert!(super::parse("12 parsecs").unwrap_err().contains("unit"));
            assert!(super::parse("MiB").is_err());
        }
    }
}
