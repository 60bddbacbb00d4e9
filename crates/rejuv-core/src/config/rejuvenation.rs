//! `[rejuvenation]`: the agent's fixed set of [`Action`]s, the levels they escalate through,
//! and the time limits of duplexing and verification.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// An agent's fixed set of rejuvenation actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    StopInstances,
    ClearScratch,
    DropCaches,
    CompactMemory,
    /// The agent re-executes itself; its running time starts again.
    RestartAgent,
    /// The configured host restart command.
    RestartHost,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::StopInstances => "stop-instances",
            Action::ClearScratch => "clear-scratch",
            Action::DropCaches => "drop-caches",
            Action::CompactMemory => "compact-memory",
            Action::RestartAgent => "restart-agent",
            Action::RestartHost => "restart-host",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejuvenationConfig {
    #[serde(default = "default_actions")]
    pub actions: Vec<Action>,
    /// Longest wait for every duplexed instance to be healthy before rolling back.
    #[serde(with = "humantime_serde", default = "default_duplex_timeout")]
    pub duplex_timeout: Duration,
    /// Longest wait for the rejuvenated server to come back fresh.
    #[serde(with = "humantime_serde", default = "default_verify_timeout")]
    pub verify_timeout: Duration,
    /// A target that failed to duplex is not chosen again for this long.
    #[serde(with = "humantime_serde", default = "default_target_cooldown")]
    pub failed_target_cooldown: Duration,
    /// Stronger levels of actions, tried in order when a server ages again within
    /// `escalation_window` of its last rejuvenation. When the strongest did not help, the
    /// server is kept out of service and a person is alerted.
    #[serde(default)]
    pub escalation: Vec<Vec<Action>>,
    #[serde(with = "humantime_serde", default = "default_escalation_window")]
    pub escalation_window: Duration,
    /// Rejuvenate one instance alone when its own readings age and the server's host-wide
    /// readings do not (and the server runs other instances that do not age): a copy of that
    /// instance takes its traffic, the old one is stopped. `false`: every workflow moves the
    /// whole server.
    #[serde(default = "default_true")]
    pub instance_scope: bool,
    /// Instance-scope rejuvenations on one server that "did not hold": this many within
    /// `instance_escalation_window` and the next workflow for that server takes the whole
    /// server.
    #[serde(default = "default_instance_escalation_count")]
    pub instance_escalation_count: u32,
    #[serde(with = "humantime_serde", default = "default_escalation_window")]
    pub instance_escalation_window: Duration,
    /// Duplex in place when no spare or peer has room: the copies start on the same server on
    /// other ports (as PM2's reload or nginx's binary upgrade do), if the server has the memory
    /// for two copies. Host restarts are left out of an in-place rejuvenation (they would end
    /// the copies that serve).
    #[serde(default = "default_true")]
    pub in_place: bool,
    /// Active-active: while nothing else runs, move one instance at a time from the primary
    /// serving the most to the one serving the fewest while they differ by two or more (a
    /// rejoined server takes its share back).
    #[serde(default = "default_true")]
    pub rebalance: bool,
}

fn default_true() -> bool {
    true
}

fn default_instance_escalation_count() -> u32 {
    3
}

fn default_escalation_window() -> Duration {
    Duration::from_secs(3600)
}

impl RejuvenationConfig {
    /// The actions of escalation level `level` (0 = `actions`), clamped to the strongest.
    pub fn level(&self, level: usize) -> &[Action] {
        if level == 0 || self.escalation.is_empty() {
            &self.actions
        } else {
            &self.escalation[(level - 1).min(self.escalation.len() - 1)]
        }
    }

    /// The strongest level there is.
    pub fn max_level(&self) -> usize {
        self.escalation.len()
    }
}

fn default_actions() -> Vec<Action> {
    vec![
        Action::StopInstances,
        Action::ClearScratch,
        Action::DropCaches,
        Action::CompactMemory,
        Action::RestartAgent,
    ]
}
fn default_duplex_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_verify_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_target_cooldown() -> Duration {
    Duration::from_secs(300)
}

impl Default for RejuvenationConfig {
    fn default() -> Self {
        Self {
            actions: default_actions(),
            duplex_timeout: default_duplex_timeout(),
            verify_timeout: default_verify_timeout(),
            failed_target_cooldown: default_target_cooldown(),
            escalation: vec![],
            escalation_window: default_escalation_window(),
            instance_scope: true,
            instance_escalation_count: default_instance_escalation_count(),
            instance_escalation_window: default_escalation_window(),
            in_place: true,
            rebalance: true,
        }
    }
}

impl RejuvenationConfig {
    /// Whether `action` is in `actions` or in any escalation level.
    pub(crate) fn uses(&self, action: Action) -> bool {
        self.actions
            .iter()
            .chain(self.escalation.iter().flatten())
            .any(|a| *a == action)
    }

    pub(crate) fn validate(&self, errs: &mut Errors) {
        if self.actions.is_empty() {
            errs.add("rejuvenation.actions", "at least one action is required");
        }
        if self.duplex_timeout.is_zero() {
            errs.add(
                "rejuvenation.duplex_timeout",
                "must be greater than 0 (no copy could ever turn healthy in time)",
            );
        }
        if self.verify_timeout.is_zero() {
            errs.add(
                "rejuvenation.verify_timeout",
                "must be greater than 0 (no server could ever be verified fresh)",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, a) in self.actions.iter().enumerate() {
            if !seen.insert(a.to_string()) {
                errs.add(format!("rejuvenation.actions[{i}]"), "listed twice");
            }
        }
        if self.instance_scope && self.instance_escalation_count == 0 {
            errs.add(
                "rejuvenation.instance_escalation_count",
                "must be at least 1 (or set instance_scope = false)",
            );
        }
        for (i, level) in self.escalation.iter().enumerate() {
            if level.is_empty() {
                errs.add(
                    format!("rejuvenation.escalation[{i}]"),
                    "an escalation level needs at least one action",
                );
            }
        }
    }
}
