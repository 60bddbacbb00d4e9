//! Readings: from an agent's sample to what the core is told (an observation, and the
//! production detector's judgement).
//!
//! Detectors and load histories live here, in memory: they are rebuilt from samples (the
//! agents keep their newest ones for a controller that starts leading), never stored.
//!
//! A `[source]` beside the agents (Prometheus) judges the same servers from its own series;
//! its latest judgement of a server is kept here and the worse of the two is what the core
//! is told, until the server's detector is reset.

use crate::api::AgentState;
use crate::cluster::Observation;
use crate::config::Config;
use crate::detect::detector::{Judgement, ServerDetector};
use crate::ring::push_bounded;
use crate::types::{Sample, ServerId};
use std::collections::{BTreeMap, VecDeque};

/// Load readings kept per server for the gate: an hour at one sample a second.
const LOAD_HISTORY_KEPT: usize = 3600;
/// A sample this much older than the newest seen means the agent's clock went back.
const CLOCK_BACK_MS: u64 = 60_000;

/// What a sample did to a server's detector.
pub enum Judged {
    /// The sample was news: the detector's judgement of it.
    Fresh(Judgement),
    /// The sample was seen before (polled twice, or replayed).
    Seen,
    /// The agent's clock went back; the detector started afresh with this sample.
    ClockBack(Judgement),
}

pub struct Readings {
    detectors: BTreeMap<ServerId, ServerDetector>,
    /// What each detector was made from (the policy and the server's budget), so that a
    /// reload rebuilds only the detectors whose inputs changed.
    made_from: BTreeMap<ServerId, String>,
    /// Time (agent clock) of the newest sample each detector has seen.
    observed_at: BTreeMap<ServerId, u64>,
    load_history: BTreeMap<ServerId, VecDeque<f32>>,
    /// The latest judgement of each server from its agent's samples, and from the source.
    agent: BTreeMap<ServerId, Judgement>,
    source: BTreeMap<ServerId, Judgement>,
}

impl Readings {
    pub fn new(cfg: &Config) -> Self {
        let mut r = Self {
            detectors: BTreeMap::new(),
            made_from: BTreeMap::new(),
            observed_at: BTreeMap::new(),
            load_history: BTreeMap::new(),
            agent: BTreeMap::new(),
            source: BTreeMap::new(),
        };
        r.reconfigure(cfg);
        r
    }

    /// Follows a (re)loaded config: a detector for every server it lists, made anew where
    /// the policy or the server's memory budget changed; those of servers no longer listed
    /// stay until the server is forgotten (it is still evacuated).
    pub fn reconfigure(&mut self, cfg: &Config) {
        let policy = serde_json::to_string(&cfg.policy).unwrap_or_default();
        for s in &cfg.servers {
            let budget = s.memory_budget_bytes.unwrap_or(u64::MAX);
            let key = format!("{budget}/{policy}");
            if self.made_from.get(&s.id) == Some(&key) {
                continue;
            }
            let d = ServerDetector::with_trend(&cfg.policy, budget, cfg.policy.trend.clone());
            self.detectors.insert(s.id.clone(), d);
            self.observed_at.remove(&s.id);
            self.made_from.insert(s.id.clone(), key);
        }
    }

    /// The observation an agent's reply makes, as of `sent_at_ms` (when the poll went out:
    /// a reply that raced a command is not mistaken for newer news). `gating`: one of the
    /// server's workflows waits at the gate, which wants to know where the load stands.
    pub fn observe(
        &mut self,
        server: &str,
        state: &AgentState,
        sent_at_ms: u64,
        gating: bool,
    ) -> Observation {
        let mut obs = Observation::from_agent(state, sent_at_ms);
        obs.load_quantile = self.load_quantile(server, state.sample.load1, gating);
        obs
    }

    /// What a poll that got no answer makes.
    pub fn unreachable(at_ms: u64) -> Observation {
        Observation {
            reachable: false,
            at_ms,
            load1: 0.0,
            running_since_ms: 0,
            running_time_s: 0.0,
            crashes_total: 0,
            load_quantile: None,
            instances: BTreeMap::new(),
            mem_available_bytes: None,
            boot_id: None,
        }
    }

    /// Feeds a sample to the server's detector, once (`None` for a server it does not know).
    pub fn judge(&mut self, server: &str, sample: &Sample) -> Option<Judged> {
        let taken = sample.taken_at_ms;
        let last = self.observed_at.get(server).copied().unwrap_or(0);
        let d = self.detectors.get_mut(server)?;
        let clock_back = taken <= last && last - taken >= CLOCK_BACK_MS;
        if taken <= last && !clock_back {
            return Some(Judged::Seen);
        }
        if clock_back {
            d.reset();
        }
        self.observed_at.insert(server.to_string(), taken);
        let j = d.observe(sample, taken.max(1));
        let j = self.beside_source(server, j);
        Some(if clock_back {
            Judged::ClockBack(j)
        } else {
            Judged::Fresh(j)
        })
    }

    /// Replays the samples an agent kept into its server's detector, afresh; samples taken
    /// at or before `cutoff_ms` (the last rejuvenation) are left out. The judgement of the
    /// newest, if any was left.
    pub fn replay(
        &mut self,
        server: &str,
        mut samples: Vec<Sample>,
        cutoff_ms: u64,
    ) -> Option<(Judgement, usize, u64)> {
        samples.retain(|x| x.taken_at_ms > cutoff_ms);
        samples.sort_by_key(|x| x.taken_at_ms);
        samples.dedup_by_key(|x| x.taken_at_ms);
        let (first, last) = (samples.first()?, samples.last()?);
        let span_s = last.taken_at_ms.saturating_sub(first.taken_at_ms) / 1000;
        let newest = last.taken_at_ms;
        let d = self.detectors.get_mut(server)?;
        d.reset();
        let mut judgement = Judgement::stable();
        for x in &samples {
            judgement = d.observe(x, x.taken_at_ms.max(1));
        }
        let loads = self.load_history.entry(server.to_string()).or_default();
        for x in &samples {
            push_bounded(loads, x.load1 as f32, LOAD_HISTORY_KEPT);
        }
        self.observed_at.insert(server.to_string(), newest);
        let judgement = self.beside_source(server, judgement);
        Some((judgement, samples.len(), span_s))
    }

    /// Takes the source's latest judgement of a server (`None` for a server it does not
    /// know): what the core is to be told now, the worse of it and the agent's.
    pub fn source_judged(&mut self, server: &str, judgement: Judgement) -> Option<Judgement> {
        if !self.detectors.contains_key(server) {
            return None;
        }
        self.source.insert(server.to_string(), judgement);
        let agent = self
            .agent
            .get(server)
            .cloned()
            .unwrap_or_else(Judgement::stable);
        Some(self.worse_of_source(server, agent))
    }

    /// Records the agent's judgement and returns the worse of it and the source's.
    fn beside_source(&mut self, server: &str, agent: Judgement) -> Judgement {
        self.agent.insert(server.to_string(), agent.clone());
        if self.source.is_empty() {
            return agent;
        }
        self.worse_of_source(server, agent)
    }

    fn worse_of_source(&self, server: &str, agent: Judgement) -> Judgement {
        match self.source.get(server) {
            Some(s) if s.level > agent.level => s.clone(),
            _ => agent,
        }
    }

    /// Forgets the server's detector history (it was just rejuvenated), and the source's
    /// judgement of it.
    pub fn reset(&mut self, server: &str) {
        if let Some(d) = self.detectors.get_mut(server) {
            d.reset();
        }
        self.agent.remove(server);
        self.source.remove(server);
    }

    /// Records `load1` in the server's load history and, while `gating`, says where it
    /// stands in that history (fraction of readings below).
    fn load_quantile(&mut self, server: &str, load1: f64, gating: bool) -> Option<f64> {
        let history = self.load_history.entry(server.to_string()).or_default();
        // Kept as f32 (a load average has two decimals): half the memory of a fleet's hour.
        let load1 = load1 as f32;
        push_bounded(history, load1, LOAD_HISTORY_KEPT);
        // A short history says nothing about what is usual for this server.
        if !gating || history.len() < LOAD_HISTORY_KEPT / 10 {
            return None;
        }
        let below = history.iter().filter(|l| **l < load1).count();
        Some(below as f64 / history.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::detector::{Explanation, Level};

    fn config() -> Config {
        crate::config::Config::from_toml(crate::config::tests::EXAMPLE).unwrap()
    }

    fn unstable(rule: &str) -> Judgement {
        Judgement {
            level: Level::Unstable,
            explanation: Some(Explanation {
                resource: crate::config::Resource::MemoryUsed,
                rule: rule.into(),
                value: 0.8,
                limit: 1.0,
                slope_per_s: None,
                tte_s: Some(600.0),
                confidence: None,
                message: rule.into(),
                instance: None,
            }),
            host: Level::Unstable,
            unstable_instances: Vec::new(),
        }
    }

    #[test]
    fn the_worse_of_the_agent_and_the_source_is_told_until_a_reset() {
        let cfg = config();
        let server = cfg.servers[0].id.clone();
        let mut r = Readings::new(&cfg);
        assert_eq!(r.source_judged("nobody", unstable("source")), None);
        let sample = Sample {
            taken_at_ms: 1_000,
            mem_total_bytes: 100,
            mem_used_bytes: 10,
            ..Sample::default()
        };
        let Some(Judged::Fresh(j)) = r.judge(&server, &sample) else {
            panic!("a fresh sample is judged")
        };
        assert_eq!(j.level, Level::Stable);
        // The source sees aging: told at once, and kept while the agent's samples are stable.
        let told = r.source_judged(&server, unstable("source")).unwrap();
        assert_eq!(told.level, Level::Unstable);
        let next = Sample {
            taken_at_ms: 2_000,
            ..sample.clone()
        };
        let Some(Judged::Fresh(j)) = r.judge(&server, &next) else {
            panic!("a fresh sample is judged")
        };
        assert_eq!(j.explanation.unwrap().rule, "source");
        // The source is stable again: the agent's judgement stands.
        let told = r.source_judged(&server, Judgement::stable()).unwrap();
        assert_eq!(told.level, Level::Stable);
        r.source_judged(&server, unstable("source")).unwrap();
        // A rejuvenation forgets the source's judgement too.
        r.reset(&server);
        let later = Sample {
            taken_at_ms: 3_000,
            ..sample
        };
        let Some(Judged::Fresh(j)) = r.judge(&server, &later) else {
            panic!("a fresh sample is judged")
        };
        assert_eq!(j.level, Level::Stable);
    }
}
