//! `[gate]`: when to switch and rejuvenate once the replacement is hot.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When to switch and rejuvenate once the replacement is hot (claim 6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Switch only while the server's 1-minute load is at most this...
    #[serde(default = "default_max_load")]
    pub max_load: f64,
    /// ...and it has run at least this long since its last rejuvenation...
    #[serde(with = "humantime_serde", default = "default_min_running")]
    pub min_running_time: Duration,
    /// ...unless the replacement has been waiting this long already.
    #[serde(with = "humantime_serde", default = "default_max_wait")]
    pub max_wait: Duration,
    /// Prefer a quiet moment: while exhaustion is far, wait as long as the current load is
    /// above this quantile of the server's recent load history (0.5: busier than usual).
    /// 1.0 turns it off.
    #[serde(default = "default_quiet_quantile")]
    pub quiet_quantile: f64,
}

fn default_quiet_quantile() -> f64 {
    0.5
}

fn default_max_load() -> f64 {
    8.0
}
fn default_min_running() -> Duration {
    Duration::from_secs(600)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(1800)
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            max_load: default_max_load(),
            min_running_time: default_min_running(),
            max_wait: default_max_wait(),
            quiet_quantile: default_quiet_quantile(),
        }
    }
}

impl GateConfig {
    pub(crate) fn validate(&self, errs: &mut Errors) {
        if !(0.0..=1.0).contains(&self.quiet_quantile) {
            errs.add("gate.quiet_quantile", "must be a fraction in [0, 1]");
        }
        if !self.max_load.is_finite() || self.max_load < 0.0 {
            errs.add("gate.max_load", "must be a non-negative number");
        }
    }
}
