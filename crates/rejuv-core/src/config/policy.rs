//! `[policy]`: what the detector watches and when it judges a server unstable — the threshold
//! rules with their hold-down, the trend rule (`[policy.trend]`, [`TrendConfig`]),
//! fixed-period rejuvenation and reactive failover — and the [`Resource`]s they name.

use super::field::{Errors, FieldError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A resource the detector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    /// Host memory used, as a fraction of total.
    MemoryUsed,
    /// Swap used, as a fraction of total swap.
    SwapUsed,
    /// Open fds, as a fraction of the host limit.
    Fds,
    /// Host threads, a count.
    Threads,
    /// Each instance's RSS, as a fraction of its share of the server's memory budget (its
    /// `memory_limit`, else the budget divided by the instances the server runs). With one
    /// instance per server: the instance's RSS against the whole budget.
    InstanceRss,
    /// Each instance's health-check latency, milliseconds.
    HealthLatencyMs,
    /// Each instance's open fds (its whole process tree), a count.
    InstanceFds,
    /// Each instance's threads (its whole process tree), a count.
    InstanceThreads,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::MemoryUsed => "memory-used",
            Resource::SwapUsed => "swap-used",
            Resource::Fds => "fds",
            Resource::Threads => "threads",
            Resource::InstanceRss => "instance-rss",
            Resource::HealthLatencyMs => "health-latency-ms",
            Resource::InstanceFds => "instance-fds",
            Resource::InstanceThreads => "instance-threads",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub resource: Resource,
    /// The signal fires while the value is above this.
    pub above: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// How long a signal must hold before the server is judged unstable.
    #[serde(with = "humantime_serde", default = "default_hold_down")]
    pub hold_down: Duration,
    #[serde(default = "default_rules")]
    pub rules: Vec<RuleConfig>,
    /// Fixed-period rejuvenation: a primary that has run this long is rejuvenated through the
    /// same workflow, whatever the detector says (as max-requests / max-lifetime settings do).
    #[serde(with = "humantime_serde", default)]
    pub max_running_time: Option<Duration>,
    /// Fraction in [0, 0.5] by which each server's `max_running_time` is shortened (a stable
    /// per-server draw), so servers started together do not all come due at once.
    #[serde(default = "default_jitter")]
    pub max_running_time_jitter: f64,
    /// The predictive trend rule (`[policy.trend]`): forecasts time to exhaustion and judges a
    /// server suspect, then unstable, when exhaustion comes within the horizon.
    #[serde(default)]
    pub trend: TrendConfig,
    /// Reactive failover: a primary whose agent has not answered for this long, with its
    /// instances down, has its instances started elsewhere and leaves the list; it is
    /// rejuvenated when it comes back, before it rejoins.
    #[serde(with = "humantime_serde", default = "default_failover_after")]
    pub failover_after: Duration,
}

fn default_failover_after() -> Duration {
    Duration::from_secs(15)
}

fn default_jitter() -> f64 {
    0.1
}

fn default_hold_down() -> Duration {
    Duration::from_secs(60)
}

fn default_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            resource: Resource::MemoryUsed,
            above: 0.9,
        },
        RuleConfig {
            resource: Resource::SwapUsed,
            above: 0.5,
        },
        RuleConfig {
            resource: Resource::Fds,
            above: 0.8,
        },
    ]
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            hold_down: default_hold_down(),
            rules: default_rules(),
            max_running_time: None,
            max_running_time_jitter: default_jitter(),
            trend: TrendConfig::default(),
            failover_after: default_failover_after(),
        }
    }
}

impl PolicyConfig {
    /// The rules, the trend rule under `policy.trend`, and the timing of fixed-period
    /// rejuvenation and failover; `agent_timeout` is `controller.agent_timeout`, which
    /// failover must outlast.
    pub(crate) fn validate(&self, agent_timeout: Duration, errs: &mut Errors) {
        if self.hold_down.is_zero() && self.rules.is_empty() {
            errs.add(
                "policy.rules",
                "no rules: the detector would never judge a server",
            );
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(i, errs);
        }
        for e in self.trend.validate("policy.trend") {
            errs.add(e.field, e.reason);
        }
        if !(0.0..=0.5).contains(&self.max_running_time_jitter) {
            errs.add(
                "policy.max_running_time_jitter",
                "must be a fraction in [0, 0.5]",
            );
        }
        if self.max_running_time.is_some_and(|d| d.is_zero()) {
            errs.add(
                "policy.max_running_time",
                "must be greater than 0 (leave it out to disable)",
            );
        }
        if self.failover_after <= agent_timeout {
            errs.add(
                "policy.failover_after",
                "must be longer than controller.agent_timeout (one missed poll is not a death)",
            );
        }
    }
}

impl RuleConfig {
    /// A limit is a fraction for the resources measured as one, else a positive number.
    fn validate(&self, i: usize, errs: &mut Errors) {
        let fraction = !matches!(
            self.resource,
            Resource::Threads
                | Resource::HealthLatencyMs
                | Resource::InstanceFds
                | Resource::InstanceThreads
        );
        if !self.above.is_finite() || self.above <= 0.0 || (fraction && self.above > 1.0) {
            errs.add(
                format!("policy.rules[{i}].above"),
                if fraction {
                    "must be a fraction in (0, 1] for this resource"
                } else {
                    "must be a positive number"
                },
            );
        }
    }
}

/// Parameters of the trend detector. Durations, so the same detector serves any sample period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrendConfig {
    /// The longest window the trend is judged over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The shortest window; scales are `window`, `window/4`, ... down to this. A scale judges
    /// only once it holds `points/4` buckets with samples, so this should be at least
    /// `points/4` sample periods (16 s for 1 s samples with the default 64 points).
    #[serde(with = "humantime_serde")]
    pub min_window: Duration,
    /// Buckets kept per scale (8..=256). Memory per series grows with it.
    pub points: usize,
    /// Alarm only when the forecast exhaustion is at most this far ahead.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Forecast no further ahead than this multiple of the time span a scale has observed.
    pub max_extrapolation: f64,
    /// One-sided confidence the trend test must reach, after the autocorrelation correction.
    pub confidence: f64,
    /// Consecutive evaluations (bucket closes) of a scale the alarm must hold for.
    pub min_evaluations: u32,
    /// Time the alarm must hold for.
    #[serde(with = "humantime_serde")]
    pub min_persistence: Duration,
    /// Health latency at which a service counts as exhausted, when no threshold rule names
    /// `health-latency-ms`. `None` turns latency drift off in that case.
    #[serde(with = "humantime_serde")]
    pub latency_limit: Option<Duration>,
    /// The resources the trend rule watches (threads only with a threshold rule, which gives
    /// their limit). Host-wide readings are shared by agents that share a host, so a
    /// single-host demo may want only `instance-rss` and `health-latency-ms`.
    pub resources: Vec<Resource>,
}

impl Default for TrendConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(32 * 3600),
            min_window: Duration::from_secs(20 * 60),
            points: 64,
            horizon: Duration::from_secs(48 * 3600),
            max_extrapolation: 1.0,
            confidence: 0.99,
            min_evaluations: 3,
            min_persistence: Duration::from_secs(60),
            latency_limit: Some(Duration::from_secs(1)),
            resources: vec![
                Resource::MemoryUsed,
                Resource::SwapUsed,
                Resource::Fds,
                Resource::Threads,
                Resource::InstanceRss,
                Resource::HealthLatencyMs,
                Resource::InstanceFds,
                Resource::InstanceThreads,
            ],
        }
    }
}

impl TrendConfig {
    /// The defaults with every duration scaled so that the longest window is `window`:
    /// e.g. `TrendConfig::scaled(Duration::from_secs(60))` for a demo whose services age
    /// within a minute.
    pub fn scaled(window: Duration) -> Self {
        let d = Self::default();
        let k = window.as_secs_f64() / d.window.as_secs_f64();
        let sc = |x: Duration| Duration::from_secs_f64(x.as_secs_f64() * k);
        Self {
            window,
            min_window: sc(d.min_window),
            horizon: sc(d.horizon),
            min_persistence: sc(d.min_persistence),
            ..d
        }
    }

    /// The windows of the scales, longest first.
    pub fn scales(&self) -> Vec<Duration> {
        let mut out = vec![self.window];
        let mut w = self.window;
        while out.len() < MAX_SCALES {
            w /= SCALE_FACTOR;
            if w < self.min_window || w.is_zero() {
                break;
            }
            out.push(w);
        }
        out
    }

    /// Every problem, each naming its field under `prefix` (e.g. `policy.trend`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errs = Errors::default();
        let mut err = |field: &str, reason: &str| errs.add(format!("{prefix}.{field}"), reason);
        if self.window.is_zero() {
            err("window", "must be longer than zero");
        }
        if self.min_window > self.window {
            err("min_window", "must not be longer than window");
        }
        if !(8..=256).contains(&self.points) {
            err("points", "must be between 8 and 256");
        } else if (self.window.as_millis() as u64) < self.points as u64 {
            err("window", "must hold at least one millisecond per point");
        }
        if self.horizon.is_zero() {
            err("horizon", "must be longer than zero");
        }
        if !(self.max_extrapolation.is_finite() && self.max_extrapolation > 0.0) {
            err("max_extrapolation", "must be a positive number");
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            err("confidence", "must be between 0.5 and 1 (exclusive)");
        }
        if self.min_evaluations == 0 {
            err("min_evaluations", "must be at least 1");
        }
        if self.latency_limit.is_some_and(|d| d.is_zero()) {
            err("latency_limit", "must be longer than zero");
        }
        errs.into_vec()
    }
}

/// Each scale's window is this many times shorter than the one before.
const SCALE_FACTOR: u32 = 4;
/// The most scales a series is kept at.
pub(crate) const MAX_SCALES: usize = 6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_config_validation_names_fields() {
        let bad = TrendConfig {
            points: 3,
            confidence: 1.5,
            min_evaluations: 0,
            min_window: Duration::from_secs(1_000_000),
            ..TrendConfig::default()
        };
        let fields: Vec<String> = bad
            .validate("policy.trend")
            .into_iter()
            .map(|e| e.field)
            .collect();
        for f in ["points", "confidence", "min_evaluations", "min_window"] {
            assert!(fields.contains(&format!("policy.trend.{f}")), "{fields:?}");
        }
        let toml_text = "window = \"2h\"\nhorizon = \"4h\"\n";
        let cfg: TrendConfig = toml::from_str(toml_text).unwrap();
        assert_eq!(cfg.window, Duration::from_secs(7200));
        assert_eq!(cfg.points, TrendConfig::default().points);
        assert!(toml::from_str::<TrendConfig>("windw = \"2h\"").is_err());
    }
}
