//! Per-server judgement: `stable`, `suspect` (a signal fired) or `unstable` (a signal held for
//! the hold-down period), with an explanation.
//!
//! The controller keeps one [`ServerDetector`] per server in memory and feeds it every sample;
//! raw samples never reach the store. A rejuvenated server's detector is [`ServerDetector::reset`].

use crate::config::{PolicyConfig, Resource};
use crate::types::Sample;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Stable,
    Suspect,
    Unstable,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Stable => "stable",
            Level::Suspect => "suspect",
            Level::Unstable => "unstable",
        })
    }
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub level: Level,
    pub explanation: Option<Explanation>,
}

impl Judgement {
    pub fn stable() -> Self {
        Self {
            level: Level::Stable,
            explanation: None,
        }
    }
}

/// The value of `resource` in a sample, in the unit its rule uses.
pub fn resource_value(resource: Resource, s: &Sample, memory_budget: u64) -> Option<f64> {
    let frac = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    match resource {
        Resource::MemoryUsed => frac(s.mem_used_bytes, s.mem_total_bytes),
        Resource::SwapUsed => frac(s.swap_used_bytes, s.swap_total_bytes),
        Resource::Fds => frac(s.open_fds, s.max_fds),
        Resource::Threads => Some(s.threads as f64),
        Resource::InstanceRss => {
            if s.instances.is_empty() {
                return None;
            }
            frac(
                s.instances.values().map(|i| i.rss_bytes).sum(),
                memory_budget,
            )
        }
        Resource::HealthLatencyMs => s
            .instances
            .values()
            .filter_map(|i| i.health_latency_ms)
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            }),
    }
}

/// Judges one server from its samples.
#[derive(Debug, Clone)]
pub struct ServerDetector {
    policy: PolicyConfig,
    memory_budget: u64,
    /// Wall ms since when some signal has been firing without a break.
    firing_since_ms: Option<u64>,
}

impl ServerDetector {
    /// `memory_budget` is the bytes the server's instances may use together.
    pub fn new(policy: &PolicyConfig, memory_budget: u64) -> Self {
        Self {
            policy: policy.clone(),
            memory_budget,
            firing_since_ms: None,
        }
    }

    /// Forgets all history, as after a rejuvenation.
    pub fn reset(&mut self) {
        self.firing_since_ms = None;
    }

    /// Feeds one sample taken at `now_ms` and returns the judgement.
    pub fn observe(&mut self, sample: &Sample, now_ms: u64) -> Judgement {
        let mut fired: Option<Explanation> = None;
        for rule in &self.policy.rules {
            let Some(value) = resource_value(rule.resource, sample, self.memory_budget) else {
                continue;
            };
            if value > rule.above {
                let severity = value / rule.above;
                let better = fired.as_ref().is_none_or(|f| severity > f.value / f.limit);
                if better {
                    fired = Some(Explanation {
                        resource: rule.resource,
                        rule: "threshold".into(),
                        value,
                        limit: rule.above,
                        slope_per_s: None,
                        tte_s: None,
                        confidence: None,
                        message: format!(
                            "{} at {} is above the threshold {}",
                            rule.resource,
                            fmt_value(rule.resource, value),
                            fmt_value(rule.resource, rule.above)
                        ),
                    });
                }
            }
        }
        match fired {
            None => {
                self.firing_since_ms = None;
                Judgement::stable()
            }
            Some(mut e) => {
                let since = *self.firing_since_ms.get_or_insert(now_ms);
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
                Judgement {
                    level,
                    explanation: Some(e),
                }
            }
        }
    }
}

fn fmt_value(r: Resource, v: f64) -> String {
    match r {
        Resource::Threads => format!("{v:.0}"),
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
}
