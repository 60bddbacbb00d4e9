//! Where the commands log: stderr, filtered by `REJUV_LOG`.

/// Logs at `info` unless `REJUV_LOG` says otherwise.
pub fn init_tracing() {
    init_tracing_with("info");
}

/// Logs on stderr, filtered by `REJUV_LOG` or else `default`.
pub fn init_tracing_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REJUV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
