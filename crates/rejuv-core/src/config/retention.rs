//! `[retention]`: how many events and finished workflows the store keeps.

use super::field::Errors;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events kept in the store; older ones are deleted.
    #[serde(default = "default_events_kept")]
    pub events: u32,
    /// Finished workflows kept.
    #[serde(default = "default_workflows_kept")]
    pub workflows: u32,
}

fn default_events_kept() -> u32 {
    10_000
}
fn default_workflows_kept() -> u32 {
    1_000
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events: default_events_kept(),
            workflows: default_workflows_kept(),
        }
    }
}

impl RetentionConfig {
    pub(crate) fn validate(&self, errs: &mut Errors) {
        if self.events == 0 {
            errs.add(
                "retention.events",
                "must be at least 1 (the store would delete every event as it writes it)",
            );
        }
        if self.workflows == 0 {
            errs.add(
                "retention.workflows",
                "must be at least 1 (no finished workflow could be shown)",
            );
        }
    }
}
