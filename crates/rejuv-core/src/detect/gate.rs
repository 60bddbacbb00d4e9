//! The gate of claim 6: once the replacement is hot, switch and rejuvenate now, or wait for a
//! quieter moment.
//!
//! It weighs the server's current load and running time against the config, and lets urgency
//! (a forecast exhaustion that is near, or a replacement kept waiting too long) override both.

use crate::config::GateConfig;
use serde::{Deserialize, Serialize};

/// What the gate sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateInput {
    pub load1: f64,
    pub running_time_s: f64,
    /// How long the hot replacement has waited for the gate, seconds.
    pub waited_s: f64,
    /// Forecast time to exhaustion, seconds, if the detector made one.
    pub tte_s: Option<f64>,
    /// Where the current load stands in the server's recent load history: the fraction of
    /// past readings below it (0: the quietest seen, 1: the busiest), if there is a history.
    pub load_quantile: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum GateDecision {
    Now { reason: String },
    Wait { reason: String },
}

impl GateDecision {
    pub fn is_now(&self) -> bool {
        matches!(self, GateDecision::Now { .. })
    }
    pub fn reason(&self) -> &str {
        match self {
            GateDecision::Now { reason } | GateDecision::Wait { reason } => reason,
        }
    }
}

/// Exhaustion closer than this many seconds makes the switch urgent whatever the load.
pub const URGENT_TTE_S: f64 = 120.0;

pub fn decide(cfg: &GateConfig, input: GateInput) -> GateDecision {
    if let Some(tte) = input.tte_s {
        if tte <= URGENT_TTE_S {
            return GateDecision::Now {
                reason: format!("exhaustion forecast in {tte:.0}s: switching regardless of load"),
            };
        }
    }
    if input.waited_s >= cfg.max_wait.as_secs_f64() {
        return GateDecision::Now {
            reason: format!(
                "replacement waited {:.0}s (max_wait {:.0}s)",
                input.waited_s,
                cfg.max_wait.as_secs_f64()
            ),
        };
    }
    if input.running_time_s < cfg.min_running_time.as_secs_f64() {
        return GateDecision::Wait {
            reason: format!(
                "running time {:.0}s is below min_running_time {:.0}s",
                input.running_time_s,
                cfg.min_running_time.as_secs_f64()
            ),
        };
    }
    if input.load1 > cfg.max_load {
        return GateDecision::Wait {
            reason: format!(
                "load {:.2} is above max_load {:.2}",
                input.load1, cfg.max_load
            ),
        };
    }
    // A quieter moment is worth waiting for only while exhaustion is well beyond the longest
    // wait; nearer than that, the hot replacement takes over now.
    let time_to_spare = input
        .tte_s
        .is_none_or(|t| t > 2.0 * cfg.max_wait.as_secs_f64());
    if let Some(q) = input.load_quantile {
        if q > cfg.quiet_quantile && time_to_spare {
            return GateDecision::Wait {
                reason: format!(
                    "load {:.2} is busier than {:.0}% of its recent history; waiting for a quieter moment",
                    input.load1,
                    q * 100.0
                ),
            };
        }
    }
    GateDecision::Now {
        reason: format!(
            "load {:.2} <= {:.2} and running time {:.0}s >= {:.0}s",
            input.load1,
            cfg.max_load,
            input.running_time_s,
            cfg.min_running_time.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> GateConfig {
        GateConfig {
            max_load: 2.0,
            min_running_time: Duration::from_secs(60),
            max_wait: Duration::from_secs(300),
            quiet_quantile: 0.5,
        }
    }

    fn input(load1: f64, running: f64, waited: f64, tte: Option<f64>) -> GateInput {
        GateInput {
            load1,
            running_time_s: running,
            waited_s: waited,
            tte_s: tte,
            load_quantile: None,
        }
    }

    fn with_quantile(q: f64, tte: Option<f64>, waited: f64) -> GateInput {
        GateInput {
            load_quantile: Some(q),
            ..input(1.0, 100.0, waited, tte)
        }
    }

    #[test]
    fn busier_than_usual_waits_while_exhaustion_is_far() {
        let d = decide(&cfg(), with_quantile(0.9, Some(86_400.0), 0.0));
        assert!(!d.is_now());
        assert!(d.reason().contains("quieter"), "{}", d.reason());
        let d = decide(&cfg(), with_quantile(0.9, None, 0.0));
        assert!(d.reason().contains("quieter"), "{}", d.reason());
    }

    #[test]
    fn a_quiet_moment_opens_the_gate() {
        assert!(decide(&cfg(), with_quantile(0.2, Some(86_400.0), 0.0)).is_now());
    }

    #[test]
    fn busy_but_exhaustion_within_twice_the_max_wait_switches_now() {
        // max_wait is 300 s: exhaustion in 500 s leaves no room to wait for a quiet hour.
        assert!(decide(&cfg(), with_quantile(0.9, Some(500.0), 0.0)).is_now());
    }

    #[test]
    fn waiting_for_quiet_ends_at_max_wait() {
        assert!(decide(&cfg(), with_quantile(0.99, Some(86_400.0), 301.0)).is_now());
    }

    #[test]
    fn quiet_and_old_enough_switches_now() {
        assert!(decide(&cfg(), input(1.0, 100.0, 0.0, None)).is_now());
    }

    #[test]
    fn busy_waits() {
        let d = decide(&cfg(), input(3.0, 100.0, 0.0, Some(3600.0)));
        assert!(!d.is_now());
        assert!(d.reason().contains("load"));
    }

    #[test]
    fn just_rejuvenated_waits() {
        assert!(!decide(&cfg(), input(0.1, 10.0, 0.0, None)).is_now());
    }

    #[test]
    fn near_exhaustion_overrides_load_and_running_time() {
        assert!(decide(&cfg(), input(9.0, 10.0, 0.0, Some(30.0))).is_now());
    }

    #[test]
    fn waiting_too_long_overrides_load() {
        assert!(decide(&cfg(), input(9.0, 100.0, 301.0, None)).is_now());
    }
}
