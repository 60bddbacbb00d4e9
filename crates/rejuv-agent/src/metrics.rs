//! The agent's Prometheus metrics (`/metrics`, prefix `rejuv_agent_`).
//!
//! Sample gauges mirror the newest sample so a plain Prometheus can graph a server's aging
//! without the controller; the counters record what the agent did.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rejuv_core::api::InstanceState;
use rejuv_core::types::Sample;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `starting`, `running`, `unhealthy`, `crashed` or `stopping`.
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `completed` or `failed`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub instance: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub collection_seconds: FloatGauge,
    pub instances: Family<StateLabels, Gauge>,
    pub crashes: Counter,
    pub rejuvenations: Family<OutcomeLabels, Counter>,
    pub load1: FloatGauge,
    pub mem_used_bytes: Gauge,
    pub running_time_seconds: FloatGauge,
    pub instance_rss_bytes: Family<InstanceLabels, Gauge>,
    /// Instance labels currently exported, so the series of a stopped instance can be dropped.
    exported: Mutex<BTreeSet<String>>,
}

impl Metrics {
    /// `crashes_before`: the persisted crash count, so the counter continues across restarts.
    pub fn new(crashes_before: u64) -> Self {
        let mut registry = Registry::with_prefix("rejuv_agent");
        let m = Self {
            collection_seconds: FloatGauge::default(),
            instances: Family::default(),
            crashes: Counter::default(),
            rejuvenations: Family::default(),
            load1: FloatGauge::default(),
            mem_used_bytes: Gauge::default(),
            running_time_seconds: FloatGauge::default(),
            instance_rss_bytes: Family::default(),
            exported: Mutex::new(BTreeSet::new()),
            registry: Registry::default(),
        };
        m.crashes.inc_by(crashes_before);
        registry.register(
            "collection_seconds",
            "Time the last /proc collection took",
            m.collection_seconds.clone(),
        );
        registry.register("instances", "Instances by state", m.instances.clone());
        registry.register(
            "crashes",
            "Instance exits nobody asked for",
            m.crashes.clone(),
        );
        registry.register(
            "rejuvenations",
            "Rejuvenation runs carried out (replays not counted)",
            m.rejuvenations.clone(),
        );
        registry.register("load1", "Host 1-minute load average", m.load1.clone());
        registry.register(
            "mem_used_bytes",
            "Host memory used (total - available)",
            m.mem_used_bytes.clone(),
        );
        registry.register(
            "running_time_seconds",
            "Time since the last rejuvenation (or first start)",
            m.running_time_seconds.clone(),
        );
        registry.register(
            "instance_rss_bytes",
            "Resident memory of an instance's whole process tree",
            m.instance_rss_bytes.clone(),
        );
        Self { registry, ..m }
    }

    /// Mirrors a new sample and the instance states.
    pub fn observe(&self, sample: &Sample, states: &[InstanceState], collection_seconds: f64) {
        self.collection_seconds.set(collection_seconds);
        self.load1.set(sample.load1);
        self.mem_used_bytes
            .set(sample.mem_used_bytes.min(i64::MAX as u64) as i64);
        self.running_time_seconds.set(sample.running_time_s);
        let shown = [
            (InstanceState::Starting, "starting"),
            (InstanceState::Running, "running"),
            (InstanceState::Unhealthy, "unhealthy"),
            (InstanceState::Crashed, "crashed"),
            (InstanceState::Stopping, "stopping"),
        ];
        for (state, name) in shown {
            let n = states.iter().filter(|s| **s == state).count();
            self.instances
                .get_or_create(&StateLabels { state: name.into() })
                .set(n as i64);
        }
        let mut exported = self.exported.lock().expect("metrics lock");
        let now: BTreeSet<String> = sample.instances.keys().cloned().collect();
        for gone in exported.difference(&now) {
            self.instance_rss_bytes.remove(&InstanceLabels {
                instance: gone.clone(),
            });
        }
        for (id, s) in &sample.instances {
            self.instance_rss_bytes
                .get_or_create(&InstanceLabels {
                    instance: id.clone(),
                })
                .set(s.rss_bytes.min(i64::MAX as u64) as i64);
        }
        *exported = now;
    }

    pub fn rejuvenation(&self, failed: bool) {
        let outcome = if failed { "failed" } else { "completed" };
        self.rejuvenations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
