//! The agent's Prometheus metrics (`/metrics`, prefix `rejuv_agent_`).
//!
//! Sample gauges mirror the newest sample so a plain Prometheus can graph a server's aging
//! without the controller; the counters record what the agent did; the collection histogram
//! shows what watching costs. Every name is listed in `docs/metrics.md` and in [`NAMES`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use rejuv_core::api::InstanceState;
use rejuv_core::types::{InstanceSample, Sample};
use rejuv_net::{ConnectionStats, ListenerMetrics};
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Every series name the agent exposes, as Prometheus stores it (counters with `_total`,
/// histograms by their family name).
pub const NAMES: &[&str] = &[
    "rejuv_agent_build_info",
    "rejuv_agent_collection_seconds",
    "rejuv_agent_collection_duration_seconds",
    "rejuv_agent_collection_errors_total",
    "rejuv_agent_instances",
    "rejuv_agent_crashes_total",
    "rejuv_agent_rejuvenations_total",
    "rejuv_agent_load1",
    "rejuv_agent_load5",
    "rejuv_agent_load15",
    "rejuv_agent_mem_used_bytes",
    "rejuv_agent_mem_total_bytes",
    "rejuv_agent_mem_available_bytes",
    "rejuv_agent_buffers_bytes",
    "rejuv_agent_cached_bytes",
    "rejuv_agent_swap_used_bytes",
    "rejuv_agent_swap_total_bytes",
    "rejuv_agent_open_fds",
    "rejuv_agent_max_fds",
    "rejuv_agent_threads",
    "rejuv_agent_running_time_seconds",
    "rejuv_agent_instance_rss_bytes",
    "rejuv_agent_instance_cpu_seconds",
    "rejuv_agent_instance_fds",
    "rejuv_agent_instance_threads",
    "rejuv_agent_instance_processes",
    "rejuv_agent_instance_health_latency_seconds",
    "rejuv_agent_instance_healthy",
    "rejuv_agent_connections_open",
    "rejuv_agent_connections_refused_total",
    "rejuv_agent_connections_timed_out_total",
];

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
type PerInstance = Family<InstanceLabels, FloatGauge>;

/// Collection buckets: a few hundred microseconds for a small host up to seconds for one with
/// tens of thousands of processes.
fn collection_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ]
    .into_iter()
}

/// The host-wide gauges, one per [`Sample`] field.
#[derive(Default)]
struct Host {
    load1: FloatGauge,
    load5: FloatGauge,
    load15: FloatGauge,
    mem_used_bytes: FloatGauge,
    mem_total_bytes: FloatGauge,
    mem_available_bytes: FloatGauge,
    buffers_bytes: FloatGauge,
    cached_bytes: FloatGauge,
    swap_used_bytes: FloatGauge,
    swap_total_bytes: FloatGauge,
    open_fds: FloatGauge,
    max_fds: FloatGauge,
    threads: FloatGauge,
    running_time_seconds: FloatGauge,
}

/// How to read one per-instance value from an instance sample (`None`: nothing to show).
type Read = fn(&InstanceSample) -> Option<f64>;
/// The per-instance gauges: a name, its help, and how to read it.
type InstanceReading = (&'static str, &'static str, Read);

const INSTANCE_READINGS: [InstanceReading; 7] = [
    (
        "instance_rss_bytes",
        "Resident memory of an instance's whole process tree",
        |s| Some(s.rss_bytes as f64),
    ),
    (
        "instance_cpu_seconds",
        "CPU seconds used by an instance's process tree since it started",
        |s| Some(s.cpu_seconds),
    ),
    (
        "instance_fds",
        "Open file descriptors of an instance's process tree",
        |s| Some(s.fds as f64),
    ),
    (
        "instance_threads",
        "Threads of an instance's process tree",
        |s| Some(s.threads as f64),
    ),
    (
        "instance_processes",
        "Processes in an instance's tree",
        |s| Some(s.processes as f64),
    ),
    (
        "instance_health_latency_seconds",
        "Latency of the instance's last health check",
        |s| s.health_latency_ms.map(|ms| ms / 1000.0),
    ),
    (
        "instance_healthy",
        "1 if the instance's last health check passed",
        |s| Some(if s.healthy { 1.0 } else { 0.0 }),
    ),
];

pub struct Metrics {
    registry: Registry,
    pub collection_seconds: FloatGauge,
    collection_duration: Histogram,
    collection_errors: Counter,
    pub instances: Family<StateLabels, Gauge>,
    pub crashes: Counter,
    pub rejuvenations: Family<OutcomeLabels, Counter>,
    /// The agent API listener's connections (`listener="api"`).
    pub api_connections: Arc<ConnectionStats>,
    host: Host,
    per_instance: Vec<(PerInstance, Read)>,
    /// Instance labels currently exported, so the series of a stopped instance can be dropped.
    exported: Mutex<BTreeSet<String>>,
}

impl Metrics {
    /// `crashes_before`: the persisted crash count, so the counter continues across restarts.
    pub fn new(crashes_before: u64) -> Self {
        let mut registry = Registry::with_prefix("rejuv_agent");
        let m = Self {
            collection_seconds: FloatGauge::default(),
            collection_duration: Histogram::new(collection_buckets()),
            collection_errors: Counter::default(),
            instances: Family::default(),
            crashes: Counter::default(),
            rejuvenations: Family::default(),
            api_connections: Arc::default(),
            host: Host::default(),
            per_instance: INSTANCE_READINGS
                .iter()
                .map(|(_, _, read)| (PerInstance::default(), *read))
                .collect(),
            exported: Mutex::new(BTreeSet::new()),
            registry: Registry::default(),
        };
        m.crashes.inc_by(crashes_before);
        // Both outcomes exist from the start, so `increase()` sees the first run.
        for outcome in ["completed", "failed"] {
            let _ = m.rejuvenations.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            });
        }
        registry.register(
            "build",
            "The agent's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "collection_seconds",
            "Time the last /proc collection took",
            m.collection_seconds.clone(),
        );
        registry.register(
            "collection_duration_seconds",
            "Time each /proc collection took",
            m.collection_duration.clone(),
        );
        registry.register(
            "collection_errors",
            "Collections that failed (the previous sample stays current)",
            m.collection_errors.clone(),
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
        let h = &m.host;
        let host: [(&str, &str, &FloatGauge); 14] = [
            ("load1", "Host 1-minute load average", &h.load1),
            ("load5", "Host 5-minute load average", &h.load5),
            ("load15", "Host 15-minute load average", &h.load15),
            (
                "mem_used_bytes",
                "Host memory used (total - available)",
                &h.mem_used_bytes,
            ),
            ("mem_total_bytes", "Host memory", &h.mem_total_bytes),
            (
                "mem_available_bytes",
                "Host memory available (MemAvailable)",
                &h.mem_available_bytes,
            ),
            ("buffers_bytes", "Host buffers", &h.buffers_bytes),
            ("cached_bytes", "Host page cache", &h.cached_bytes),
            ("swap_used_bytes", "Host swap used", &h.swap_used_bytes),
            ("swap_total_bytes", "Host swap", &h.swap_total_bytes),
            ("open_fds", "Open file descriptors, host-wide", &h.open_fds),
            ("max_fds", "Host-wide file descriptor limit", &h.max_fds),
            ("threads", "Threads, host-wide", &h.threads),
            (
                "running_time_seconds",
                "Time since the last rejuvenation (or first start)",
                &h.running_time_seconds,
            ),
        ];
        for (name, help, g) in host {
            registry.register(name, help, g.clone());
        }
        for ((name, help, _), (family, _)) in INSTANCE_READINGS.iter().zip(&m.per_instance) {
            registry.register(*name, *help, family.clone());
        }
        registry.register_collector(Box::new(
            ListenerMetrics::default().with("api", m.api_connections.clone()),
        ));
        Self { registry, ..m }
    }

    /// Mirrors a new sample and the instance states.
    pub fn observe(&self, sample: &Sample, states: &[InstanceState], collection_seconds: f64) {
        self.collection_seconds.set(collection_seconds);
        self.collection_duration.observe(collection_seconds);
        let h = &self.host;
        h.load1.set(sample.load1);
        h.load5.set(sample.load5);
        h.load15.set(sample.load15);
        h.mem_used_bytes.set(sample.mem_used_bytes as f64);
        h.mem_total_bytes.set(sample.mem_total_bytes as f64);
        h.mem_available_bytes.set(sample.mem_available_bytes as f64);
        h.buffers_bytes.set(sample.buffers_bytes as f64);
        h.cached_bytes.set(sample.cached_bytes as f64);
        h.swap_used_bytes.set(sample.swap_used_bytes as f64);
        h.swap_total_bytes.set(sample.swap_total_bytes as f64);
        h.open_fds.set(sample.open_fds as f64);
        h.max_fds.set(sample.max_fds as f64);
        h.threads.set(sample.threads as f64);
        h.running_time_seconds.set(sample.running_time_s);
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
            let l = InstanceLabels {
                instance: gone.clone(),
            };
            for (family, _) in &self.per_instance {
                family.remove(&l);
            }
        }
        for (id, s) in &sample.instances {
            let l = InstanceLabels {
                instance: id.clone(),
            };
            for (family, read) in &self.per_instance {
                match read(s) {
                    Some(v) => {
                        family.get_or_create(&l).set(v);
                    }
                    None => {
                        family.remove(&l);
                    }
                }
            }
        }
        *exported = now;
    }

    /// A collection failed; the previous sample stays the current one.
    pub fn collection_failed(&self) {
        self.collection_errors.inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn series(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let name = l.split(['{', ' ']).next().unwrap();
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|base| base.ends_with("_duration_seconds"))
                    .unwrap_or(name)
                    .to_string()
            })
            .collect()
    }

    fn sample() -> Sample {
        let mut s = Sample {
            load1: 0.5,
            mem_total_bytes: 1000,
            mem_used_bytes: 400,
            ..Default::default()
        };
        s.instances.insert(
            "web-1".into(),
            InstanceSample {
                rss_bytes: 4096,
                health_latency_ms: Some(12.0),
                healthy: true,
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn every_declared_metric_is_written_and_nothing_else() {
        let m = Metrics::new(1);
        m.observe(&sample(), &[InstanceState::Running], 0.002);
        m.collection_failed();
        let text = m.encode();
        let declared: BTreeSet<String> = NAMES.iter().map(|s| s.to_string()).collect();
        assert_eq!(series(&text), declared, "\n{text}");
        assert!(
            text.contains("rejuv_agent_instance_health_latency_seconds{instance=\"web-1\"} 0.012")
        );
        assert!(text.contains("rejuv_agent_collection_duration_seconds_count 1"));
        assert!(text.contains("rejuv_agent_crashes_total 1"));
    }

    #[test]
    fn a_stopped_instance_loses_its_series() {
        let m = Metrics::new(0);
        m.observe(&sample(), &[InstanceState::Running], 0.001);
        assert!(m.encode().contains("instance=\"web-1\""));
        m.observe(&Sample::default(), &[], 0.001);
        assert!(!m.encode().contains("instance=\"web-1\""), "{}", m.encode());
    }
}
