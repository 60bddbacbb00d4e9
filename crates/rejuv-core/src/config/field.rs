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
