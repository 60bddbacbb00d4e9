//! The state one running agent shares between its API handlers and its background tasks
//! (sampling, supervision), and the agent's clock.

use crate::collector::Collector;
use crate::metrics::Metrics;
use crate::persist::Store;
use crate::supervisor::Supervisor;
use rejuv_core::config::Config;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Shared by the API handlers and the background tasks of one running agent.
pub struct Agent {
    pub server_id: String,
    pub(crate) token: String,
    pub config: Config,
    pub started_at_ms: u64,
    /// The host's boot identity ([`crate::host::boot_id`]), read at start.
    pub boot_id: String,
    pub store: Arc<Store>,
    pub sup: Arc<Supervisor>,
    pub collector: Arc<Collector>,
    pub metrics: Arc<Metrics>,
    /// One rejuvenation at a time.
    pub(crate) rejuvenation_lock: tokio::sync::Mutex<()>,
    /// Set by a `restart-agent` action.
    pub(crate) restart_requested: AtomicBool,
    /// Ends the HTTP server (in-flight answers are still written in full).
    pub(crate) stop_serving: CancellationToken,
    /// The agent API's TLS (`[tls]`), for the expiry metric.
    pub(crate) tls: Option<Arc<rejuv_net::tls::Tls>>,
}

pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
