//! Where the commands log: stderr, filtered by `REJUV_LOG`.

use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Logs at `info` unless `REJUV_LOG` says otherwise.
pub fn init_tracing() {
    init_tracing_with("info");
}

/// Logs on stderr, filtered by `REJUV_LOG` or else `default`.
///
/// A filter of levels by target (`warn`, `info,rejuv_agent=debug`) is read as such; one with
/// span or field directives (`[request]=debug`) goes to the full `EnvFilter`, whose regex
/// engine is set up only then (it is most of the start-up code of the small agent binary).
pub fn init_tracing_with(default: &str) {
    let wanted = std::env::var("REJUV_LOG").ok();
    let spec = wanted.as_deref().unwrap_or(default);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match spec.parse::<Targets>() {
        Ok(targets) => tracing_subscriber::registry()
            .with(fmt.with_filter(targets))
            .try_init(),
        Err(_) => {
            let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(default));
            tracing_subscriber::registry()
                .with(fmt.with_filter(filter))
                .try_init()
        }
    };
}
