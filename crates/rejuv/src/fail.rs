//! How a failed command ends: its error with the whole chain on stderr, and the exit code
//! (2 for an invalid config, 1 for any other failure).

/// Prints `e` and returns the exit code it maps to.
pub fn report(e: &anyhow::Error) -> i32 {
    eprintln!(
        "rejuv: error: {}",
        rejuv_core::text::terminal_safe(&format!("{e:#}"))
    );
    if e.downcast_ref::<rejuv_core::config::ConfigError>()
        .is_some()
    {
        2
    } else {
        1
    }
}
