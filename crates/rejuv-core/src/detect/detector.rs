//! Per-server judgement: `stable`, `suspect` (a signal fired) or `unstable` (a signal held for
//! the hold-down period), with an explanation.
//!
//! A server is judged on two kinds of readings, each by its own rules:
//! - **host-wide** readings (memory used, swap, fds and threads of the whole host), once per
//!   server;
//! - **instance** readings (RSS, fds, threads, health latency), once per instance, each on
//!   its own: an instance's RSS is a fraction of its own share of the server's memory budget
//!   (its `memory_limit` where the agent reports one, else the budget divided by the instances
//!   the server runs), so one leaking instance of four is seen as the one that leaks.
//!
//! Two rules judge every series:
//! - **threshold**: a resource above its configured `above` limit; unstable once that has held
//!   for the policy's hold-down;
//! - **trend**: a resource forecast to be exhausted within the horizon ([`super::trend`]), from
//!   a significant, persistent trend; unstable once the trend detector's own persistence is met
//!   (it is the hold-down of this rule). Memory, swap, fds and instance RSS are exhausted at
//!   100% of their total; threads, instance fds and instance threads at their threshold rule's
//!   limit (no trend without one); health latency (the performance-aging signal) at its
//!   threshold rule's limit or else [`TrendConfig::latency_limit`].
//!
//! The higher level wins; at equal levels the threshold's explanation is kept, and host-wide
//! readings before an instance's. The judgement also says how the host-wide readings alone
//! stand and which instances are unstable on their own readings: what the plan needs to choose
//! between rejuvenating one instance and the whole server.
//!
//! The controller keeps one [`ServerDetector`] per server in memory and feeds it every sample;
//! raw samples never reach the store. A rejuvenated server's detector is [`ServerDetector::reset`].

pub use super::level::Level;
use super::trend::{fmt_duration, Aggregate, Forecast, SeriesDetector};
use crate::config::{PolicyConfig, Resource, TrendConfig};
use crate::types::{InstanceId, InstanceSample, Sample};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a server was judged as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub resource: Resource,
    /// Which rule fired: `threshold` or `trend`.
    pub rule: String,
    /// Current value of the resource.
    pub value: f64,
    /// The limit the rule compares against.
    pub limit: f64,
    /// Trend per second, where a trend was estimated.
    pub slope_per_s: Option<f64>,
    /// Forecast seconds until the resource is exhausted, where one was made.
    pub tte_s: Option<f64>,
    /// Confidence of the trend in [0, 1], where one was tested.
    pub confidence: Option<f64>,
    /// One line for people.
    pub message: String,
    /// The instance whose own readings these are; `None` for host-wide readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub level: Level,
    pub explanation: Option<Explanation>,
    /// The level of the host-wide readings alone.
    #[serde(default = "stable")]
    pub host: Level,
    /// Instances unstable on their own readings, worst first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unstable_instances: Vec<InstanceId>,
}

fn stable() -> Level {
    Level::Stable
}

impl Judgement {
    pub fn stable() -> Self {
        Self {
            level: Level::Stable,
            explanation: None,
            host: Level::Stable,
            unstable_instances: Vec::new(),
        }
    }

    fn single(level: Level, explanation: Option<Explanation>) -> Self {
        Self {
            level,
            explanation,
            ..Self::stable()
        }
    }
}

/// Whether a resource is read per instance (else host-wide).
pub fn per_instance(resource: Resource) -> bool {
    matches!(
        resource,
        Resource::InstanceRss
            | Resource::HealthLatencyMs
            | Resource::InstanceFds
            | Resource::InstanceThreads
    )
}

/// The value of a host-wide `resource` in a sample, in the unit its rule uses (`None` for an
/// instance resource).
pub fn host_value(resource: Resource, s: &Sample) -> Option<f64> {
    let frac = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    match resource {
        Resource::MemoryUsed => frac(s.mem_used_bytes, s.mem_total_bytes),
        Resource::SwapUsed => frac(s.swap_used_bytes, s.swap_total_bytes),
        Resource::Fds => frac(s.open_fds, s.max_fds),
        Resource::Threads => Some(s.threads as f64),
        _ => None,
    }
}

/// The value of an instance `resource` for one instance whose memory share is `share` bytes
/// (`None` for a host-wide resource, or a reading the instance lacks).
pub fn instance_value(resource: Resource, i: &InstanceSample, share: u64) -> Option<f64> {
    match resource {
        Resource::InstanceRss => (share > 0).then(|| i.rss_bytes as f64 / share as f64),
        Resource::HealthLatencyMs => i.health_latency_ms,
        Resource::InstanceFds => Some(i.fds as f64),
        Resource::InstanceThreads => Some(i.threads as f64),
        _ => None,
    }
}

/// An instance's memory share: its own limit where the agent reports one, else an equal part
/// of the server's budget.
pub fn instance_share(i: &InstanceSample, memory_budget: u64, instances: usize) -> u64 {
    i.memory_limit_bytes
        .filter(|l| *l > 0)
        .unwrap_or(memory_budget / instances.max(1) as u64)
}

/// The value of `resource` for the server as a whole: host-wide readings as they are, an
/// instance resource as its worst instance (what the dashboard and `analyze` show).
pub fn resource_value(resource: Resource, s: &Sample, memory_budget: u64) -> Option<f64> {
    if !per_instance(resource) {
        return host_value(resource, s);
    }
    let n = s.instances.len();
    s.instances
        .values()
        .filter_map(|i| instance_value(resource, i, instance_share(i, memory_budget, n)))
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        })
}

/// One set of series judged together (the host's, or one instance's): when its threshold
/// signal began, and a trend detector per resource, made at the first reading of it.
#[derive(Debug, Clone, Default)]
struct Series {
    firing_since_ms: Option<u64>,
    trends: BTreeMap<Resource, SeriesDetector>,
}

impl Series {
    fn reset(&mut self) {
        self.firing_since_ms = None;
        for s in self.trends.values_mut() {
            s.reset();
        }
    }

    fn memory_bytes(&self) -> usize {
        self.trends.values().map(SeriesDetector::memory_bytes).sum()
    }
}

/// Judges one server from its samples.
#[derive(Debug, Clone)]
pub struct ServerDetector {
    policy: PolicyConfig,
    memory_budget: u64,
    trend: TrendConfig,
    host: Series,
    /// One set per instance in the newest sample; an instance that left is forgotten.
    instances: BTreeMap<InstanceId, Series>,
}

impl ServerDetector {
    /// `memory_budget` is the bytes the server's instances may use together. The trend rule
    /// uses [`TrendConfig::default`].
    pub fn new(policy: &PolicyConfig, memory_budget: u64) -> Self {
        Self::with_trend(policy, memory_budget, TrendConfig::default())
    }

    /// As [`ServerDetector::new`], with the trend rule's parameters.
    pub fn with_trend(policy: &PolicyConfig, memory_budget: u64, trend: TrendConfig) -> Self {
        Self {
            policy: policy.clone(),
            memory_budget,
            trend,
            host: Series::default(),
            instances: BTreeMap::new(),
        }
    }

    pub fn trend_config(&self) -> &TrendConfig {
        &self.trend
    }

    /// Forgets all history, as after a rejuvenation.
    pub fn reset(&mut self) {
        self.host.reset();
        self.instances.clear();
    }

    /// Bytes held by the trend detectors of this server.
    pub fn trend_memory_bytes(&self) -> usize {
        self.host.memory_bytes()
            + self
                .instances
                .values()
                .map(Series::memory_bytes)
                .sum::<usize>()
    }

    /// The level at which `resource` counts as exhausted, in the unit of its values.
    fn capacity(&self, resource: Resource) -> Option<f64> {
        let rule = || {
            self.policy
                .rules
                .iter()
                .find(|r| r.resource == resource)
                .map(|r| r.above)
        };
        match resource {
            Resource::MemoryUsed | Resource::SwapUsed | Resource::Fds | Resource::InstanceRss => {
                Some(1.0)
            }
            Resource::Threads | Resource::InstanceFds | Resource::InstanceThreads => rule(),
            Resource::HealthLatencyMs => {
                rule().or(self.trend.latency_limit.map(|d| d.as_secs_f64() * 1000.0))
            }
        }
    }

    /// Feeds one sample taken at `now_ms` and returns the judgement.
    pub fn observe(&mut self, sample: &Sample, now_ms: u64) -> Judgement {
        let mut host = std::mem::take(&mut self.host);
        let host_j = self.judge(&mut host, now_ms, None, |r| host_value(r, sample), sample);
        self.host = host;

        self.instances
            .retain(|id, _| sample.instances.contains_key(id));
        let n = sample.instances.len();
        let mut worst = host_j.clone();
        let mut unstable: Vec<(Level, f64, InstanceId)> = Vec::new();
        for (id, inst) in &sample.instances {
            let share = instance_share(inst, self.memory_budget, n);
            let mut series = self.instances.remove(id).unwrap_or_default();
            let j = self.judge(
                &mut series,
                now_ms,
                Some(id),
                |r| instance_value(r, inst, share),
                sample,
            );
            self.instances.insert(id.clone(), series);
            if j.level == Level::Unstable {
                let severity = j.explanation.as_ref().map_or(0.0, severity);
                unstable.push((j.level, severity, id.clone()));
            }
            if j.level > worst.level {
                worst = j;
            }
        }
        unstable.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
        Judgement {
            level: worst.level,
            explanation: worst.explanation,
            host: host_j.level,
            unstable_instances: unstable.into_iter().map(|(_, _, id)| id).collect(),
        }
    }

    /// Judges one set of series (the host's, or instance `instance`'s) by both rules.
    fn judge(
        &self,
        series: &mut Series,
        now_ms: u64,
        instance: Option<&InstanceId>,
        value: impl Fn(Resource) -> Option<f64>,
        sample: &Sample,
    ) -> Judgement {
        let threshold = self.observe_thresholds(series, &value, now_ms);
        let trend = self.observe_trends(series, &value, now_ms, instance.is_some(), sample);
        let mut j = match (threshold, trend) {
            (t, Some(tr)) if tr.level > t.level => tr,
            (t, _) => t,
        };
        if let (Some(id), Some(e)) = (instance, j.explanation.as_mut()) {
            e.instance = Some(id.clone());
            e.message = format!("{id}: {}", e.message);
        }
        j
    }

    fn observe_trends(
        &self,
        series: &mut Series,
        value: &impl Fn(Resource) -> Option<f64>,
        now_ms: u64,
        of_instance: bool,
        sample: &Sample,
    ) -> Option<Judgement> {
        let mut best: Option<(Level, Resource, f64, Forecast)> = None;
        for &resource in &self.trend.resources {
            if per_instance(resource) != of_instance {
                continue;
            }
            let Some(capacity) = self.capacity(resource) else {
                continue;
            };
            let Some(v) = value(resource) else {
                continue;
            };
            let aggregate = match resource {
                Resource::HealthLatencyMs => Aggregate::Mean,
                _ => Aggregate::Max,
            };
            let det = series
                .trends
                .entry(resource)
                .or_insert_with(|| SeriesDetector::new(&self.trend, capacity, aggregate));
            if det.capacity() != capacity {
                det.set_capacity(capacity);
            }
            let verdict = det.observe(now_ms, v);
            let Some(f) = verdict.forecast else { continue };
            let better = best.as_ref().is_none_or(|(l, _, _, bf)| {
                verdict.level > *l || (verdict.level == *l && f.tte_s < bf.tte_s)
            });
            if verdict.level > Level::Stable && better {
                best = Some((verdict.level, resource, v, f));
            }
        }
        let (level, resource, v, f) = best?;
        let message = trend_message(resource, &f, self.unit_scale(resource, sample));
        Some(Judgement::single(
            level,
            Some(Explanation {
                resource,
                rule: "trend".into(),
                value: v,
                limit: f.capacity,
                slope_per_s: Some(f.slope_per_s),
                tte_s: Some(f.tte_s),
                confidence: Some(f.confidence),
                message,
                instance: None,
            }),
        ))
    }

    /// What one unit of a resource's value is in bytes (or fds), for messages.
    fn unit_scale(&self, resource: Resource, s: &Sample) -> Option<f64> {
        let nz = |x: u64| (x > 0).then_some(x as f64);
        match resource {
            Resource::MemoryUsed => nz(s.mem_total_bytes),
            Resource::SwapUsed => nz(s.swap_total_bytes),
            Resource::Fds => nz(s.max_fds),
            Resource::InstanceRss => nz(self.memory_budget / s.instances.len().max(1) as u64),
            Resource::Threads
            | Resource::HealthLatencyMs
            | Resource::InstanceFds
            | Resource::InstanceThreads => Some(1.0),
        }
    }

    fn observe_thresholds(
        &self,
        series: &mut Series,
        value: &impl Fn(Resource) -> Option<f64>,
        now_ms: u64,
    ) -> Judgement {
        let mut fired: Option<Explanation> = None;
        for rule in &self.policy.rules {
            let Some(v) = value(rule.resource) else {
                continue;
            };
            if v > rule.above {
                let candidate = Explanation {
                    resource: rule.resource,
                    rule: "threshold".into(),
                    value: v,
                    limit: rule.above,
                    slope_per_s: None,
                    tte_s: None,
                    confidence: None,
                    message: format!(
                        "{} at {} is above the threshold {}",
                        rule.resource,
                        fmt_value(rule.resource, v),
                        fmt_value(rule.resource, rule.above)
                    ),
                    instance: None,
                };
                if fired
                    .as_ref()
                    .is_none_or(|f| severity(&candidate) > severity(f))
                {
                    fired = Some(candidate);
                }
            }
        }
        match fired {
            None => {
                series.firing_since_ms = None;
                Judgement::stable()
            }
            Some(mut e) => {
                let since = *series.firing_since_ms.get_or_insert(now_ms);
                let held = now_ms.saturating_sub(since);
                let level = if u128::from(held) >= self.policy.hold_down.as_millis() {
                    e.message = format!(
                        "{} for {:.1}s (hold-down {:.1}s)",
                        e.message,
                        held as f64 / 1000.0,
                        self.policy.hold_down.as_secs_f64()
                    );
                    Level::Unstable
                } else {
                    Level::Suspect
                };
                Judgement::single(level, Some(e))
            }
        }
    }
}

/// How far past its limit an explanation's value is (a forecast: how soon it runs out).
fn severity(e: &Explanation) -> f64 {
    match e.tte_s {
        Some(tte) => 1.0 + 1.0 / (1.0 + tte.max(0.0)),
        None if e.limit > 0.0 => e.value / e.limit,
        None => 0.0,
    }
}

/// "instance-rss will be exhausted in about 5h40m (leak of 210 MB/h, confidence 99%; range
/// 4h48m–7h)". Confidence is shown rounded down and never above 99%: a test never proves.
/// `unit` is what one unit of the series is in bytes (fds for `fds`), where known.
pub fn trend_message(resource: Resource, f: &Forecast, unit: Option<f64>) -> String {
    let per_h = f.slope_per_s * 3600.0;
    let rate = match (resource, unit) {
        (Resource::HealthLatencyMs, _) => format!("rising {per_h:.1} ms/h"),
        (Resource::Threads | Resource::InstanceThreads, _) => {
            format!("leak of {per_h:.0} threads/h")
        }
        (Resource::InstanceFds, _) => format!("leak of {per_h:.0} fds/h"),
        (Resource::Fds, Some(u)) => format!("leak of {:.0} fds/h", per_h * u),
        (_, Some(u)) => format!("leak of {}/h", fmt_bytes(per_h * u)),
        (_, None) => format!("rising {:.2}%/h", per_h * 100.0),
    };
    let what = match resource {
        Resource::HealthLatencyMs => format!("will reach {:.0} ms", f.capacity),
        _ => "will be exhausted".into(),
    };
    let range = match f.tte_high_s {
        Some(hi) => format!("{}–{}", fmt_duration(f.tte_low_s), fmt_duration(hi)),
        None => format!("{} or later", fmt_duration(f.tte_low_s)),
    };
    format!(
        "{resource} {what} in about {} ({rate}, confidence {:.0}%; range {range})",
        fmt_duration(f.tte_s),
        (f.confidence * 100.0).floor().min(99.0)
    )
}

/// Decimal units, as people read them on dashboards: `210 MB`, `1.5 GB`.
pub fn fmt_bytes(b: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if v.abs() >= 100.0 || i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn fmt_value(r: Resource, v: f64) -> String {
    match r {
        Resource::Threads | Resource::InstanceFds | Resource::InstanceThreads => format!("{v:.0}"),
        Resource::HealthLatencyMs => format!("{v:.1} ms"),
        _ => format!("{:.1}%", v * 100.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;
    use crate::types::InstanceSample;
    use std::time::Duration;

    fn policy() -> PolicyConfig {
        PolicyConfig {
            hold_down: Duration::from_secs(3),
            rules: vec![RuleConfig {
                resource: Resource::InstanceRss,
                above: 0.5,
            }],
            ..PolicyConfig::default()
        }
    }

    fn sample(rss: u64) -> Sample {
        let mut s = Sample::default();
        s.instances.insert(
            "web-1".into(),
            InstanceSample {
                rss_bytes: rss,
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn signal_must_hold_for_the_hold_down() {
        let mut d = ServerDetector::new(&policy(), 1000);
        assert_eq!(d.observe(&sample(400), 0).level, Level::Stable);
        assert_eq!(d.observe(&sample(600), 1000).level, Level::Suspect);
        assert_eq!(d.observe(&sample(600), 3000).level, Level::Suspect);
        let j = d.observe(&sample(700), 4000);
        assert_eq!(j.level, Level::Unstable);
        let e = j.explanation.unwrap();
        assert_eq!(e.resource, Resource::InstanceRss);
        assert!(e.message.contains("threshold"), "{}", e.message);
    }

    #[test]
    fn a_dip_restarts_the_hold_down() {
        let mut d = ServerDetector::new(&policy(), 1000);
        d.observe(&sample(600), 0);
        d.observe(&sample(400), 2000);
        assert_eq!(d.observe(&sample(600), 4000).level, Level::Suspect);
        assert_eq!(d.observe(&sample(600), 7000).level, Level::Unstable);
    }

    #[test]
    fn no_instances_means_no_rss_signal() {
        let mut d = ServerDetector::new(&policy(), 1000);
        assert_eq!(d.observe(&Sample::default(), 0).level, Level::Stable);
    }

    fn rss_sample(rss: u64, latency_ms: Option<f64>) -> Sample {
        let mut s = Sample::default();
        s.instances.insert(
            "web-1".into(),
            InstanceSample {
                rss_bytes: rss,
                health_latency_ms: latency_ms,
                ..Default::default()
            },
        );
        s
    }

    /// A policy whose thresholds are far away, so only the trend rule can fire.
    fn high_policy() -> PolicyConfig {
        PolicyConfig {
            hold_down: Duration::from_secs(60),
            rules: vec![RuleConfig {
                resource: Resource::InstanceRss,
                above: 0.9,
            }],
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn a_leak_is_forecast_before_the_threshold_fires() {
        let budget = 8_000_000_000u64;
        let mut d = ServerDetector::new(&high_policy(), budget);
        // From 30% of the budget to exhaustion in 10 h, 10 s samples, a little wiggle.
        let mut first = None;
        for i in 0..3600u64 {
            let t = i * 10;
            let frac = 0.3 + 0.7 * t as f64 / 36_000.0 + 0.003 * ((i * 7919 % 13) as f64 / 13.0);
            let j = d.observe(&rss_sample((frac * budget as f64) as u64, None), t * 1000);
            if j.level == Level::Unstable {
                first = Some((t, j));
                break;
            }
        }
        let (t, j) = first.expect("the leak is caught");
        let e = j.explanation.unwrap();
        assert_eq!(e.rule, "trend");
        assert_eq!(e.resource, Resource::InstanceRss);
        assert!(
            e.value < 0.9,
            "the trend fired only at {} of the budget",
            e.value
        );
        assert!(36_000 - t > 2 * 3600, "caught at {t}s");
        let tte = e.tte_s.unwrap();
        assert!(
            (tte - (36_000 - t) as f64).abs() < 0.15 * (36_000 - t) as f64,
            "tte {tte}"
        );
        // 0.7 × 8 GB in 10 h = 560 MB/h.
        assert!(
            e.message
                .starts_with("web-1: instance-rss will be exhausted in about "),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("MB/h") && e.message.contains("confidence 99%"),
            "{}",
            e.message
        );
        let rate_mb_h = e.slope_per_s.unwrap() * 3600.0 * budget as f64 / 1e6;
        assert!((rate_mb_h - 560.0).abs() < 60.0, "{rate_mb_h} MB/h");

        // After a rejuvenation the history is gone: a fresh, flat server is stable.
        d.reset();
        for i in 0..100u64 {
            let j = d.observe(&rss_sample(budget / 4, None), 40_000_000 + i * 10_000);
            assert_eq!(j.level, Level::Stable);
        }
    }

    #[test]
    fn a_warm_up_to_a_plateau_is_not_a_leak() {
        let budget = 1_000_000_000u64;
        let cfg = TrendConfig::scaled(Duration::from_secs(60));
        let mut d = ServerDetector::with_trend(&high_policy(), budget, cfg);
        // 1 s samples for 5 minutes: warms from 10% to 70% with an 8 s time constant.
        for i in 0..300u64 {
            let frac = 0.7 - 0.6 * (-(i as f64) / 8.0).exp();
            let j = d.observe(&rss_sample((frac * budget as f64) as u64, None), i * 1000);
            assert_eq!(j.level, Level::Stable, "at {i}s: {:?}", j.explanation);
        }
        assert!(d.trend_memory_bytes() <= 6 * 8 * 1024);
    }

    #[test]
    fn rising_health_latency_is_performance_aging() {
        let policy = PolicyConfig {
            hold_down: Duration::from_secs(5),
            rules: vec![RuleConfig {
                resource: Resource::HealthLatencyMs,
                above: 500.0,
            }],
            ..PolicyConfig::default()
        };
        let cfg = TrendConfig::scaled(Duration::from_secs(60));
        let mut d = ServerDetector::with_trend(&policy, 1 << 30, cfg);
        // Latency drifts from 20 ms towards 500 ms over two minutes, with jitter.
        let mut fired = None;
        for i in 0..120u64 {
            let ms = 20.0 + 4.0 * i as f64 + ((i * 31) % 7) as f64;
            let j = d.observe(&rss_sample(1 << 20, Some(ms)), i * 1000);
            if j.level == Level::Unstable {
                fired = Some(j);
                break;
            }
        }
        let e = fired.expect("latency drift is caught").explanation.unwrap();
        assert_eq!(
            (e.resource, e.rule.as_str()),
            (Resource::HealthLatencyMs, "trend")
        );
        assert!(e.value < 500.0);
        assert!(e.message.contains("will reach 500 ms"), "{}", e.message);
    }

    #[test]
    fn messages_read_like_an_operator_would_say_it() {
        let f = Forecast {
            window_s: 7200.0,
            span_s: 7200.0,
            slope_per_s: 0.0256 / 3600.0,
            slope_low_per_s: 0.02 / 3600.0,
            slope_high_per_s: 0.03 / 3600.0,
            level: 0.855,
            capacity: 1.0,
            tte_s: 5.0 * 3600.0 + 40.0 * 60.0,
            tte_low_s: 4.8 * 3600.0,
            tte_high_s: Some(7.0 * 3600.0),
            confidence: 0.995,
            variance_inflation: 1.0,
            steady: true,
            model: Default::default(),
        };
        let m = trend_message(Resource::InstanceRss, &f, Some(8.2e9));
        assert_eq!(
            m,
            "instance-rss will be exhausted in about 5h40m (leak of 210 MB/h, confidence 99%; range 4h48m–7h)"
        );
    }

    #[test]
    fn the_trend_rule_watches_only_the_configured_resources() {
        let budget = 1_000_000_000u64;
        let cfg = TrendConfig {
            resources: vec![Resource::HealthLatencyMs],
            ..TrendConfig::scaled(Duration::from_secs(60))
        };
        let mut d = ServerDetector::with_trend(&high_policy(), budget, cfg);
        let mut all = ServerDetector::with_trend(
            &high_policy(),
            budget,
            TrendConfig::scaled(Duration::from_secs(60)),
        );
        // A steep RSS leak: the detector watching every resource catches it, the other not.
        let mut caught = false;
        for i in 0..80u64 {
            let s = rss_sample(((0.1 + 0.01 * i as f64) * budget as f64) as u64, None);
            let j = d.observe(&s, i * 1000);
            assert_eq!(j.level, Level::Stable, "at {i}s: {:?}", j.explanation);
            caught |= all.observe(&s, i * 1000).level == Level::Unstable;
        }
        assert!(caught, "the leak is caught when RSS is watched");
        assert_eq!(d.trend_memory_bytes(), 0);
    }

    fn two_instances(a_rss: u64, b_rss: u64) -> Sample {
        let mut s = Sample::default();
        for (id, rss) in [("web-1", a_rss), ("web-2", b_rss)] {
            s.instances.insert(
                id.into(),
                InstanceSample {
                    rss_bytes: rss,
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn each_instance_is_judged_on_its_own_share() {
        // Budget 1000, two instances: each has 500. One at 300 (60%), one at 100: only the
        // first fires, although together they are at 40% of the budget.
        let mut d = ServerDetector::new(&policy(), 1000);
        d.observe(&two_instances(300, 100), 0);
        let j = d.observe(&two_instances(300, 100), 4000);
        assert_eq!(j.level, Level::Unstable);
        assert_eq!(j.host, Level::Stable);
        assert_eq!(j.unstable_instances, vec!["web-1".to_string()]);
        let e = j.explanation.unwrap();
        assert_eq!(e.instance.as_deref(), Some("web-1"));
        assert!(
            e.message.starts_with("web-1: instance-rss at 60.0%"),
            "{}",
            e.message
        );
        // Its own limit, where the agent reports one, is what it is measured against.
        let mut s = two_instances(300, 100);
        s.instances.get_mut("web-1").unwrap().memory_limit_bytes = Some(1000);
        let mut d = ServerDetector::new(&policy(), 1000);
        d.observe(&s, 0);
        assert_eq!(d.observe(&s, 4000).level, Level::Stable);
    }

    #[test]
    fn a_host_reading_is_the_hosts_and_an_instance_that_left_is_forgotten() {
        let policy = PolicyConfig {
            hold_down: Duration::from_secs(3),
            rules: vec![
                RuleConfig {
                    resource: Resource::MemoryUsed,
                    above: 0.9,
                },
                RuleConfig {
                    resource: Resource::InstanceThreads,
                    above: 100.0,
                },
            ],
            ..PolicyConfig::default()
        };
        let mut d = ServerDetector::new(&policy, 1000);
        let mut s = two_instances(10, 10);
        s.mem_total_bytes = 100;
        s.mem_used_bytes = 95;
        s.instances.get_mut("web-2").unwrap().threads = 500;
        d.observe(&s, 0);
        let j = d.observe(&s, 4000);
        assert_eq!((j.level, j.host), (Level::Unstable, Level::Unstable));
        assert_eq!(j.unstable_instances, vec!["web-2".to_string()]);
        assert_eq!(
            j.explanation.unwrap().resource,
            Resource::MemoryUsed,
            "the host's first"
        );
        // web-2 is replaced by web-3: its history goes with it.
        s.instances.remove("web-2");
        s.instances.insert(
            "web-3".into(),
            InstanceSample {
                threads: 500,
                ..Default::default()
            },
        );
        s.mem_used_bytes = 10;
        assert_eq!(
            d.observe(&s, 5000).level,
            Level::Suspect,
            "web-3 starts its own hold-down"
        );
    }
}
