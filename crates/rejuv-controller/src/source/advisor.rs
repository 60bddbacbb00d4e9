//! Judging the source's servers: one production [`ServerDetector`] per server, fed every new
//! sample in order, and the advisory report of the servers it judges aging.
//!
//! The detector is the one the controller runs on its agents' samples, with the config's
//! `[policy]` (threshold rules, hold-down, `[policy.trend]`): a server the report lists is
//! one the controller would start a workflow for.

use rejuv_core::config::Config;
use rejuv_core::detect::detector::{Judgement, Level, ServerDetector};
use rejuv_core::types::{Sample, ServerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One server judged aging, and what the controller would do about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advisory {
    pub server: ServerId,
    /// The resource that is running out (or above its threshold), e.g. `memory-used`.
    pub resource: String,
    /// The forecast seconds until it is exhausted, as of the server's newest reading
    /// (`null` when a threshold rule fired without a trend).
    pub exhausts_in_s: Option<f64>,
    /// `rejuvenate-server`, or `rejuvenate-instance` (one instance ages on its own readings).
    pub action: String,
    /// The instance, for `rejuvenate-instance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The rule that fired: `trend` or `threshold`.
    pub rule: String,
    /// The detector's explanation, for people.
    pub message: String,
    /// Whether the server has an agent in the config (else rejuv can only advise).
    pub agent: bool,
}

/// A server the source had readings of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedServer {
    pub server: ServerId,
    pub level: Level,
    /// Readings judged so far.
    pub samples: u64,
    /// Wall-clock milliseconds of the newest one.
    pub newest_ms: u64,
}

/// What `rejuv controller --dry-run --once` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvisoryReport {
    /// The Prometheus server read.
    pub source: String,
    /// The servers judged aging (unstable), soonest exhaustion first.
    pub servers: Vec<Advisory>,
    /// Every server judged, by name.
    pub judged: Vec<JudgedServer>,
    /// What was left out and why.
    pub notes: Vec<String>,
}

struct Judged {
    detector: ServerDetector,
    judgement: Judgement,
    samples: u64,
    newest_ms: u64,
    /// The server's last rejuvenation: history up to it was forgotten.
    rejuvenated_ms: u64,
}

/// The detectors of the source's servers.
pub struct Advisor {
    cfg: Config,
    servers: BTreeMap<ServerId, Judged>,
    /// Last rejuvenations of servers not read yet.
    rejuvenated: BTreeMap<ServerId, u64>,
}

impl Advisor {
    pub fn new(cfg: &Config) -> Self {
        Self {
            cfg: cfg.clone(),
            servers: BTreeMap::new(),
            rejuvenated: BTreeMap::new(),
        }
    }

    /// Feeds each server's samples (oldest first) that are newer than the ones it has seen;
    /// returns the servers whose level changed, with the new level.
    pub fn feed(&mut self, samples: BTreeMap<ServerId, Vec<Sample>>) -> Vec<(ServerId, Level)> {
        let mut changed = Vec::new();
        for (server, list) in samples {
            let cfg = &self.cfg;
            let rejuvenated_ms = self.rejuvenated.get(&server).copied().unwrap_or(0);
            let j = self.servers.entry(server.clone()).or_insert_with(|| {
                // Each instance is judged against its own limit (the capacity); the budget
                // only scales the detector's messages: the limits of the instances together.
                let limits = list.iter().find(|s| !s.instances.is_empty()).map(|s| {
                    s.instances
                        .values()
                        .filter_map(|i| i.memory_limit_bytes)
                        .fold(0u64, u64::saturating_add)
                });
                let budget = cfg
                    .server(&server)
                    .and_then(|s| s.memory_budget_bytes)
                    .or(limits.filter(|l| *l > 0))
                    .unwrap_or(u64::MAX);
                Judged {
                    detector: ServerDetector::with_trend(
                        &cfg.policy,
                        budget,
                        cfg.policy.trend.clone(),
                    ),
                    judgement: Judgement::stable(),
                    samples: 0,
                    newest_ms: rejuvenated_ms,
                    rejuvenated_ms,
                }
            });
            let before = j.judgement.level;
            for s in &list {
                if s.taken_at_ms <= j.newest_ms {
                    continue;
                }
                j.judgement = j.detector.observe(s, s.taken_at_ms.max(1));
                j.newest_ms = s.taken_at_ms;
                j.samples += 1;
            }
            if j.judgement.level != before {
                changed.push((server, j.judgement.level));
            }
        }
        changed
    }

    /// The latest judgement of a server.
    pub fn judgement(&self, server: &str) -> Option<&Judgement> {
        self.servers.get(server).map(|j| &j.judgement)
    }

    /// The server was rejuvenated at `at_ms` (wall clock): forget its history, and judge
    /// only readings taken after that. Returns whether this was news.
    pub fn rejuvenated(&mut self, server: &str, at_ms: u64) -> bool {
        let Some(j) = self.servers.get_mut(server) else {
            let known = self.rejuvenated.insert(server.to_string(), at_ms);
            return known != Some(at_ms);
        };
        if at_ms <= j.rejuvenated_ms {
            return false;
        }
        j.rejuvenated_ms = at_ms;
        j.detector.reset();
        j.judgement = Judgement::stable();
        j.newest_ms = j.newest_ms.max(at_ms);
        true
    }

    /// The advisory of one server, if it is judged aging.
    pub fn advisory(&self, server: &str) -> Option<Advisory> {
        let j = self.servers.get(server)?;
        if j.judgement.level != Level::Unstable {
            return None;
        }
        let e = j.judgement.explanation.as_ref()?;
        let instance_only = j.judgement.host < Level::Unstable && e.instance.is_some();
        Some(Advisory {
            server: server.to_string(),
            resource: e.resource.to_string(),
            exhausts_in_s: e.tte_s.map(|t| (t.max(0.0) * 10.0).round() / 10.0),
            action: if instance_only {
                "rejuvenate-instance"
            } else {
                "rejuvenate-server"
            }
            .into(),
            instance: e.instance.clone().filter(|_| instance_only),
            rule: e.rule.clone(),
            message: e.message.clone(),
            agent: self.cfg.server(server).is_some(),
        })
    }

    /// The report: every aging server, soonest exhaustion first (threshold alarms, which have
    /// no forecast, last), and every server judged.
    pub fn report(&self, source: &str, notes: Vec<String>) -> AdvisoryReport {
        let mut servers: Vec<Advisory> = self
            .servers
            .keys()
            .filter_map(|s| self.advisory(s))
            .collect();
        servers.sort_by(|a, b| {
            let k = |x: &Advisory| x.exhausts_in_s.unwrap_or(f64::INFINITY);
            k(a).total_cmp(&k(b)).then_with(|| a.server.cmp(&b.server))
        });
        AdvisoryReport {
            source: source.to_string(),
            servers,
            judged: self
                .servers
                .iter()
                .map(|(s, j)| JudgedServer {
                    server: s.clone(),
                    level: j.judgement.level,
                    samples: j.samples,
                    newest_ms: j.newest_ms,
                })
                .collect(),
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rejuv_core::config::TrendConfig;
    use rejuv_core::types::InstanceSample;
    use std::time::Duration;

    fn config() -> Config {
        let mut cfg = Config::from_toml(
            r#"
[cluster]
mode = "active-active"
[source]
kind = "prometheus"
url = "http://127.0.0.1:9090"
[source.queries]
instance-rss = "rss"
[source.capacity]
instance-rss = 1000000
"#,
        )
        .unwrap();
        cfg.policy.trend = TrendConfig {
            max_extrapolation: 20.0,
            ..TrendConfig::scaled(Duration::from_secs(60))
        };
        cfg
    }

    fn rss(t_ms: u64, v: u64) -> Sample {
        let mut s = Sample {
            taken_at_ms: t_ms,
            ..Sample::default()
        };
        s.instances.insert(
            "api".into(),
            InstanceSample {
                rss_bytes: v,
                memory_limit_bytes: Some(1_000_000),
                healthy: true,
                ..InstanceSample::default()
            },
        );
        s
    }

    #[test]
    fn an_aging_server_is_advised_and_a_flat_one_is_not() {
        let mut a = Advisor::new(&config());
        let t0 = 1_700_000_000_000;
        let mut samples = BTreeMap::new();
        // 120 s at 1 s: one rises 4 kB/s from 300 kB (exhausts 175 s after the start), one
        // stays near 600 kB.
        samples.insert(
            "aging".to_string(),
            (0..120)
                .map(|i| rss(t0 + i * 1000, 300_000 + 4_000 * i))
                .collect(),
        );
        samples.insert(
            "flat".to_string(),
            (0..120)
                .map(|i| rss(t0 + i * 1000, 600_000 + (i * 7919) % 13))
                .collect(),
        );
        let changed = a.feed(samples);
        assert_eq!(changed, vec![("aging".to_string(), Level::Unstable)]);
        let r = a.report("http://p", vec![]);
        assert_eq!(r.servers.len(), 1, "{r:?}");
        let adv = &r.servers[0];
        // 4 kB/s is about 14 MB/h (the budget is the instance's own limit).
        assert!(adv.message.contains(" MB/h"), "{}", adv.message);
        assert_eq!(
            (
                adv.server.as_str(),
                adv.resource.as_str(),
                adv.action.as_str()
            ),
            ("aging", "instance-rss", "rejuvenate-instance")
        );
        assert_eq!(adv.instance.as_deref(), Some("api"));
        // At the newest reading (119 s) the truth is 175 - 119 = 56 s.
        let tte = adv.exhausts_in_s.unwrap();
        assert!((40.0..75.0).contains(&tte), "{tte}");
        assert!(!adv.agent);
        assert_eq!(r.judged.len(), 2);
        assert_eq!(r.judged[1].level, Level::Stable);
        // Samples already seen are not judged twice.
        let again = BTreeMap::from([("flat".to_string(), vec![rss(t0, 600_000)])]);
        assert!(a.feed(again).is_empty());
        assert_eq!(a.report("http://p", vec![]).judged[1].samples, 120);

        // A rejuvenation forgets the history; readings from before it are not judged again.
        assert!(a.rejuvenated("aging", t0 + 119_000));
        assert!(!a.rejuvenated("aging", t0 + 119_000));
        assert_eq!(a.judgement("aging").unwrap().level, Level::Stable);
        let old = BTreeMap::from([(
            "aging".to_string(),
            (100..120).map(|i| rss(t0 + i * 1000, 900_000)).collect(),
        )]);
        a.feed(old);
        assert!(a.report("http://p", vec![]).servers.is_empty());
    }
}
