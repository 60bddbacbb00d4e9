//! `[budget]`: the disruption budget — workflows at once, the capacity floor, the cooldown
//! between workflows.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Workflows allowed to run at once, cluster-wide.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Capacity units of primaries on the list that must remain at every moment.
    #[serde(default)]
    pub min_available_capacity: u32,
    /// After a workflow finishes, no new one starts for this long, so the fleet settles
    /// before the next disruption (an operator's `force` excepted).
    #[serde(with = "humantime_serde", default)]
    pub cooldown: Duration,
}

fn default_max_concurrent() -> u32 {
    1
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            max_concurrent: default_max_concurrent(),
            min_available_capacity: 0,
            cooldown: Duration::ZERO,
        }
    }
}

impl BudgetConfig {
    /// `cluster_capacity` is the summed capacity of the primaries: the floor counts primaries
    /// on the list, and spares hold none of it.
    pub(crate) fn validate(&self, cluster_capacity: u32, errs: &mut Errors) {
        if self.max_concurrent == 0 {
            errs.add(
                "budget.max_concurrent",
                "must be at least 1, or rejuv could never act",
            );
        }
        if self.min_available_capacity > cluster_capacity {
            errs.add(
                "budget.min_available_capacity",
                format!(
                    "{} is more than the primaries' capacity ({cluster_capacity}; spares serve nothing until they take over)",
                    self.min_available_capacity
                ),
            );
        }
    }
}
