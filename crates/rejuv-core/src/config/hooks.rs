//! `[[hooks]]`: commands the controller runs before and after workflow steps, and the checks
//! of their names, steps, programs and vetoes.

use super::field::Errors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// When a hook runs: before a step starts, or after it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookWhen {
    Before,
    After,
}

impl std::fmt::Display for HookWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookWhen::Before => "before",
            HookWhen::After => "after",
        })
    }
}

/// Workflow steps a hook can be tied to: the phases, plus `rejoin` (the server goes back on
/// the list).
pub const HOOK_STEPS: &[&str] = &[
    "duplexing",
    "gating",
    "draining",
    "handing-off",
    "rejuvenating",
    "verifying",
    "rejoin",
];

/// A command the controller runs before or after a workflow step, on the controller's host,
/// with `REJUV_HOOK`, `REJUV_STEP`, `REJUV_WHEN`, `REJUV_WORKFLOW`, `REJUV_SERVER`,
/// `REJUV_TARGET` and `REJUV_CLUSTER` in its environment. Its exit status and the end of its
/// output go to the event log. A hook with `veto = true` holds the workflow until it ends and
/// stops it if it fails: before `draining` (the switch) it rolls the workflow back, before
/// `rejoin` it keeps the server out of service for a person to look at.
/// Hooks are recorded before they run, so a controller that restarts may run one again: write
/// them to be safe to repeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub name: String,
    pub step: String,
    pub when: HookWhen,
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    #[serde(with = "humantime_serde", default = "default_hook_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub veto: bool,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(30)
}

impl HookConfig {
    /// Whether this hook runs at `when` of `step`.
    pub fn fires_at(&self, when: HookWhen, step: &str) -> bool {
        self.when == when && self.step == step
    }
}

impl HookConfig {
    /// This hook's own fields, as `hooks[i]`.
    fn validate(&self, i: usize, errs: &mut Errors) {
        let f = |name: &str| format!("hooks[{i}].{name}");
        if !HOOK_STEPS.contains(&self.step.as_str()) {
            errs.add(
                f("step"),
                format!("must be one of {}", HOOK_STEPS.join(", ")),
            );
        }
        match self.command.first() {
            None => errs.add(f("command"), "must name a program"),
            Some(p) if !p.starts_with('/') => {
                errs.add(f("command"), "the program must be an absolute path")
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            errs.add(f("timeout"), "must be greater than 0");
        }
        let can_veto =
            self.when == HookWhen::Before && matches!(self.step.as_str(), "draining" | "rejoin");
        if self.veto && !can_veto {
            errs.add(
                f("veto"),
                "only a hook run before \"draining\" (the switch) or before \"rejoin\" can veto",
            );
        }
    }
}

/// Every hook, and that their names are unique.
pub(crate) fn validate(hooks: &[HookConfig], errs: &mut Errors) {
    let mut names = BTreeSet::new();
    for (i, h) in hooks.iter().enumerate() {
        if h.name.is_empty() || !names.insert(h.name.clone()) {
            errs.add(format!("hooks[{i}].name"), "must be non-empty and unique");
        }
        h.validate(i, errs);
    }
}
