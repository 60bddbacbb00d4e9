//! Operators' hooks around workflow steps: notification hooks fired as a workflow enters and
//! leaves steps, and veto hooks that a step waits for (any failure stops the workflow).
//!
//! Hooks are commands like any other ([`CommandKind::RunHook`]): issued into the outbox,
//! carried out by the shell, their results fed back as [`CommandResult::HookRan`].

use super::event::CommandResult;
use super::output::{CommandKind, EventKind, Output};
use super::state::{Cluster, Step};
use crate::config::{Config, HookWhen};
use crate::time::Now;
use std::collections::BTreeSet;

/// What a veto gate says about a workflow's next step.
pub(super) enum VetoGate {
    Passed,
    Waiting,
    Vetoed(String),
}

impl Cluster {
    /// Issues the hooks of every step a workflow entered since the last look: `after` hooks
    /// of the step it left, `before` hooks of the step it entered (veto hooks excepted: the
    /// workflow runs those itself and waits for them).
    pub(super) fn fire_hooks(&mut self, cfg: &Config, out: &mut Output) {
        if cfg.hooks.is_empty() {
            return;
        }
        let mut todo = Vec::new();
        for w in self.workflows.values_mut().chain(self.history.iter_mut()) {
            let fired = w.hooks_fired.unwrap_or(w.steps.len());
            if fired >= w.steps.len() {
                continue;
            }
            for i in fired..w.steps.len() {
                let mut points = Vec::new();
                if i > 0 {
                    points.push((HookWhen::After, w.steps[i - 1].phase.to_string()));
                }
                match &w.steps[i].phase {
                    Step::Rejoined => {
                        points.push((HookWhen::Before, "rejoin".to_string()));
                        points.push((HookWhen::After, "rejoin".to_string()));
                    }
                    Step::RolledBack | Step::Failed => {}
                    step => points.push((HookWhen::Before, step.to_string())),
                }
                for (when, step) in points {
                    for h in cfg
                        .hooks
                        .iter()
                        .filter(|h| !h.veto && h.fires_at(when, &step))
                    {
                        todo.push(CommandKind::RunHook {
                            workflow: w.id,
                            hook: h.name.clone(),
                            step: step.clone(),
                            when,
                            server: w.server.clone(),
                            target: w.target.clone(),
                            veto: false,
                        });
                    }
                }
            }
            w.hooks_fired = Some(w.steps.len());
        }
        for kind in todo {
            self.issue(out, kind);
        }
    }

    /// Whether the veto hooks of `step` let workflow `id` go on; issues them the first time.
    pub(super) fn veto_gate(
        &mut self,
        cfg: &Config,
        id: u64,
        step: &str,
        now: Now,
        out: &mut Output,
    ) -> VetoGate {
        let hooks: Vec<String> = cfg
            .hooks
            .iter()
            .filter(|h| h.veto && h.fires_at(HookWhen::Before, step))
            .map(|h| h.name.clone())
            .collect();
        let w = &self.workflows[&id];
        if hooks.is_empty() || w.veto_passed.iter().any(|s| s == step) {
            return VetoGate::Passed;
        }
        if let Some(why) = &w.vetoed {
            return VetoGate::Vetoed(why.clone());
        }
        if !w.veto_pending.is_empty() {
            return VetoGate::Waiting;
        }
        let (server, target) = (w.server.clone(), w.target.clone());
        let mut ids = BTreeSet::new();
        for hook in &hooks {
            ids.insert(self.issue(
                out,
                CommandKind::RunHook {
                    workflow: id,
                    hook: hook.clone(),
                    step: step.to_string(),
                    when: HookWhen::Before,
                    server: server.clone(),
                    target: target.clone(),
                    veto: true,
                },
            ));
        }
        self.log(
            out,
            now,
            EventKind::Hook,
            Some(&server),
            Some(id),
            format!(
                "waiting for hook(s) {} before {step}: any failure stops the workflow",
                hooks.join(", ")
            ),
        );
        self.workflows.get_mut(&id).expect("present").veto_pending = ids;
        VetoGate::Waiting
    }

    /// A hook ended (command `id`): the result is logged, and a veto hook's result decides
    /// whether its step may go on.
    pub(super) fn on_hook_done(
        &mut self,
        id: u64,
        kind: &CommandKind,
        result: CommandResult,
        now: Now,
        out: &mut Output,
    ) {
        let CommandKind::RunHook {
            workflow,
            hook,
            step,
            when,
            server,
            veto,
            ..
        } = kind
        else {
            return;
        };
        let (ok, detail) = match result {
            CommandResult::HookRan { ok, detail } => (ok, detail),
            CommandResult::Failed { error } => (false, error),
            other => (false, format!("unexpected result {other:?}")),
        };
        self.log(
            out,
            now,
            EventKind::Hook,
            Some(server),
            Some(*workflow),
            format!(
                "hook {hook} ({when} {step}) {}: {detail}",
                if ok { "succeeded" } else { "failed" }
            ),
        );
        if *veto {
            if let Some(w) = self.workflows.get_mut(workflow) {
                w.veto_pending.remove(&id);
                if !ok && w.vetoed.is_none() {
                    w.vetoed = Some(format!("hook {hook} vetoed {step}: {detail}"));
                }
                if ok && w.veto_pending.is_empty() && w.vetoed.is_none() {
                    w.veto_passed.push(step.clone());
                }
            }
        }
    }
}
