//! The version both binaries print.

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The text `--version` prints after the name: the crate version, and the commit when the
/// build set `REJUV_GIT_COMMIT` (`REJUV_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`).
pub fn version_string() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| match option_env!("REJUV_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("{VERSION} (commit {c})"),
        _ => VERSION.to_string(),
    })
}
