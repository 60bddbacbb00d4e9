//! What a listener counts, and those counts as Prometheus metrics.
//!
//! [`ConnectionStats`] are plain atomics the listener updates; [`ListenerMetrics`] reads them
//! at scrape time into the part's registry (its prefix names the part):
//!
//! - `<prefix>_connections_open{listener}`: gauge;
//! - `<prefix>_connections_refused_total{listener}`: over the cap or the fd budget;
//! - `<prefix>_connections_timed_out_total{listener, timeout="header-read"|"idle"}`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use rejuv_core::api::ConnectionCounts;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One listener's connections.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    tls_refused: AtomicU64,
}

impl ConnectionStats {
    /// Connections being served now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Connections accepted and closed at once since the listener started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed because their request head was not complete in time.
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }

    /// Connections closed because their client was silent too long.
    pub fn idle_timeouts(&self) -> u64 {
        self.idle_timeouts.load(Ordering::Relaxed)
    }

    /// Connections closed because their TLS handshake failed (no certificate of the fleet,
    /// the wrong role, revoked, or not TLS at all).
    pub fn tls_refused(&self) -> u64 {
        self.tls_refused.load(Ordering::Relaxed)
    }

    /// All of them, as the proxy's status reports them.
    pub fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.open(),
            refused_total: self.refused(),
            header_timeouts_total: self.header_timeouts(),
            idle_timeouts_total: self.idle_timeouts(),
        }
    }

    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_tls_refused(&self) {
        self.tls_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_idle_timeout(&self) {
        self.idle_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// The connection metrics of a part's listeners, by `listener` label, for
/// `Registry::register_collector`.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    listeners: Vec<(String, Arc<ConnectionStats>)>,
}

impl ListenerMetrics {
    /// The series names these metrics add under `prefix`, as Prometheus stores them.
    pub fn names(prefix: &str) -> [String; 3] {
        [
            format!("{prefix}_connections_open"),
            format!("{prefix}_connections_refused_total"),
            format!("{prefix}_connections_timed_out_total"),
        ]
    }

    /// Adds a listener under the label value `listener`.
    pub fn with(mut self, listener: impl Into<String>, stats: Arc<ConnectionStats>) -> Self {
        self.listeners.push((listener.into(), stats));
        self
    }
}

type Labels = Vec<(&'static str, String)>;

impl Collector for ListenerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let label = |name: &str| -> Labels { vec![("listener", name.to_string())] };

        let mut family = encoder.encode_descriptor(
            "connections_open",
            "Connections a listener serves now",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (name, stats) in &self.listeners {
            let open = i64::try_from(stats.open()).unwrap_or(i64::MAX);
            ConstGauge::new(open).encode(family.encode_family(&label(name))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "connections_refused",
            "Connections accepted and closed at once: the listener was at its cap or the process near its file descriptor limit",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (name, stats) in &self.listeners {
            ConstCounter::new(stats.refused()).encode(family.encode_family(&label(name))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "connections_timed_out",
            "Connections closed by the server: request head not complete within the header-read timeout, or client silent for the idle timeout",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (name, stats) in &self.listeners {
            let reasons = [
                ("header-read", stats.header_timeouts()),
                ("idle", stats.idle_timeouts()),
            ];
            for (timeout, n) in reasons {
                let mut labels = label(name);
                labels.push(("timeout", timeout.to_string()));
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn the_metrics_carry_the_prefix_and_the_listener_label() {
        let stats = Arc::new(ConnectionStats::default());
        stats.opened();
        stats.count_refused();
        stats.count_refused();
        stats.count_idle_timeout();
        let mut registry = Registry::with_prefix("rejuv_agent");
        registry.register_collector(Box::new(ListenerMetrics::default().with("api", stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "rejuv_agent_connections_open{listener=\"api\"} 1",
            "rejuv_agent_connections_refused_total{listener=\"api\"} 2",
            "rejuv_agent_connections_timed_out_total{listener=\"api\",timeout=\"header-read\"} 0",
            "rejuv_agent_connections_timed_out_total{listener=\"api\",timeout=\"idle\"} 1",
            "# TYPE rejuv_agent_connections_refused counter",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let names = ListenerMetrics::names("rejuv_agent");
        for name in &names {
            assert!(text.contains(&format!("\n{name}{{")), "{name} in\n{text}");
        }
    }
}
