//! What the engine counts about its own work, for `/metrics`: store commits, and how long a
//! reading takes from the agent to the controller's judgement of it (the figure a large fleet
//! stretches first: polls queue for the one engine task).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the judgement-latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Shared between the engine (which counts) and the metrics route (which reads).
#[derive(Debug, Clone)]
pub struct EngineStats {
    /// Steps written to the store.
    pub commits: Counter,
    /// From a reading's time on its agent (`Sample::taken_at_ms`) to the end of the step that
    /// judged it.
    pub judge_latency: Histogram,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            commits: Counter::default(),
            judge_latency: Histogram::new(LATENCY_BUCKETS.into_iter()),
        }
    }
}

impl EngineStats {
    /// `rejuv_store_commits_total` and `rejuv_judge_latency_seconds`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "store_commits",
            "Steps the engine wrote to the store",
            self.commits.clone(),
        );
        reg.register(
            "judge_latency_seconds",
            "From a reading's time on its agent to the controller's judgement of it",
            self.judge_latency.clone(),
        );
    }
}
