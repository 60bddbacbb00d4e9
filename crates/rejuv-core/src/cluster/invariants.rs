//! The invariants that must hold after every step ([`Cluster::check_invariants`]), checked
//! by the tests and the simulator; the guarantees in the [`crate::cluster`] docs are these.

use super::state::{Cluster, Phase, ServerState};
use crate::config::Config;
use crate::types::{Mode, Role};
use std::collections::BTreeSet;

impl Cluster {
    /// Invariants that must hold after every step; each broken one is described.
    pub fn check_invariants(&self, cfg: &Config) -> Vec<String> {
        let mut bad = Vec::new();
        let mut targets = BTreeSet::new();
        for w in self.workflows.values() {
            if w.in_place() {
                // Its copies run on its own server: no target to hold, and it serves
                // throughout.
                if w.target != w.server {
                    bad.push(format!("in-place workflow {} names another target", w.id));
                }
                if matches!(
                    self.servers[&w.server].state,
                    ServerState::Rejuvenating { .. }
                ) {
                    bad.push(format!(
                        "{} left the list for an in-place workflow",
                        w.server
                    ));
                }
                continue;
            }
            if !targets.insert(&w.target) {
                bad.push(format!(
                    "server {} is the target of two workflows",
                    w.target
                ));
            }
            if self.servers.get(&w.target).and_then(|t| t.reserved_by) != Some(w.id) {
                bad.push(format!(
                    "workflow {} does not hold its target {}",
                    w.id, w.target
                ));
            }
            let off_list = !self.servers[&w.server].on_list();
            if off_list && matches!(w.phase, Phase::Duplexing | Phase::Gating) {
                bad.push(format!(
                    "{} is off the list before its copies are hot",
                    w.server
                ));
            }
        }
        let mut sources = BTreeSet::new();
        for w in self.workflows.values() {
            if !sources.insert(&w.server) {
                bad.push(format!("{} is the source of two workflows", w.server));
            }
        }
        let unforced = self.workflows.values().filter(|w| !w.forced).count() as u32;
        if unforced > cfg.budget.max_concurrent {
            bad.push(format!(
                "{unforced} workflows running, budget {}",
                cfg.budget.max_concurrent
            ));
        }
        for s in self.servers.values() {
            if let Some(wid) = s.reserved_by {
                if !self.workflows.contains_key(&wid) {
                    bad.push(format!("{} reserved by finished workflow {wid}", s.id));
                }
            }
            if let ServerState::Rejuvenating { workflow } = s.state {
                if !self.workflows.contains_key(&workflow) {
                    bad.push(format!(
                        "{} rejuvenating under finished workflow {workflow}",
                        s.id
                    ));
                }
            }
            if self.mode == Mode::ActiveActive && s.role == Role::Spare {
                bad.push(format!("{} is a spare in an active-active cluster", s.id));
            }
        }
        bad
    }
}
