//! The limits on disruption: capacity (and the floor it must stay above), the budget of
//! concurrent workflows, pause, freeze windows and the cluster-wide cooldown, target
//! reservations, and the quorum of answering agents without which nothing starts.
//!
//! Planning asks these before it starts a workflow; the gate asks the floor again before it
//! switches.

use super::output::{CommandKind, EventKind, Output};
use super::state::Cluster;
use crate::config::Config;
use crate::time::Now;
use crate::types::{Role, ServerId};
use std::collections::BTreeSet;

/// What a server's `blocked_reason` says while it waits for a slot of the budget.
const BUDGET_WAIT: &str = "workflow(s) running, budget";

impl Cluster {
    /// Servers that need a workflow and wait for a slot of `budget.max_concurrent` (nothing
    /// else holds them back): with shards, the slots a shard asks the fleet for.
    pub fn waiting_for_budget(&self) -> u32 {
        self.servers
            .values()
            .filter(|s| {
                s.blocked_reason
                    .as_deref()
                    .is_some_and(|r| r.contains(BUDGET_WAIT))
                    && !self.workflows.values().any(|w| w.server == s.id)
            })
            .count() as u32
    }

    /// Capacity units of primaries on the list whose agents answer, counting the sources of
    /// running whole-server workflows that move elsewhere as off (a server rejuvenated in
    /// place, or one of whose instances moves, keeps serving).
    pub fn available_capacity(&self) -> u32 {
        let busy: BTreeSet<&ServerId> = self
            .workflows
            .values()
            .filter(|w| w.takes_server_out())
            .map(|w| &w.server)
            .collect();
        self.servers
            .values()
            .filter(|s| {
                s.on_list()
                    && !s.maintenance
                    && s.role == Role::Primary
                    && s.reachable()
                    && !busy.contains(&s.id)
            })
            .map(|s| s.capacity)
            .sum()
    }

    pub(super) fn used_units(&self, cfg: &Config, server: &str) -> u32 {
        self.instances
            .values()
            .filter(|i| i.server == server)
            .map(|i| cfg.services.get(&i.service).map_or(1, |s| s.units))
            .sum()
    }

    /// Whether a majority of the servers' agents answer. A controller that cannot see most
    /// of its fleet does not know what it would disrupt: it starts nothing until it can.
    pub(super) fn quorum(&mut self, now: Now, out: &mut Output) -> bool {
        let total = self.servers.len();
        let seen = self
            .servers
            .values()
            .filter(|s| s.observation.is_some())
            .count();
        let up = self.servers.values().filter(|s| s.reachable()).count();
        let ok = up * 2 > total;
        if !ok && seen == total && !self.quorum_lost {
            self.quorum_lost = true;
            let summary = format!(
                "only {up} of {total} agents answer: no workflow starts until a majority answers"
            );
            self.log(out, now, EventKind::NoQuorum, None, None, summary.clone());
            self.issue(
                out,
                CommandKind::Alert {
                    name: "RejuvNoQuorum".into(),
                    server: None,
                    summary,
                },
            );
        } else if ok && self.quorum_lost {
            self.quorum_lost = false;
            self.log(
                out,
                now,
                EventKind::QuorumRegained,
                None,
                None,
                format!("{up} of {total} agents answer again"),
            );
        }
        ok
    }

    /// Why a new workflow for a server may not start now, if it may not: rejuv is paused,
    /// inside a freeze window, cooling down after the last workflow, or at its budget of
    /// concurrent workflows. An operator's request passes pause and freeze, a forced or
    /// failover one passes all of them.
    pub(super) fn held_back(
        &self,
        cfg: &Config,
        manual: bool,
        failover: bool,
        forced: bool,
        now: Now,
    ) -> Option<String> {
        if self.paused && !manual && !failover {
            return Some("rejuv is paused".into());
        }
        if let Some(window) = cfg.frozen_by(now.wall_ms).filter(|_| !manual && !failover) {
            return Some(format!(
                "waiting: inside the freeze window '{}'",
                window.name
            ));
        }
        if !manual && !failover {
            if cfg.outside_allowed(now.wall_ms) {
                let names: Vec<&str> = cfg.allow.iter().map(|w| w.name.as_str()).collect();
                return Some(format!(
                    "waiting: outside the allowed windows ({})",
                    names.join(", ")
                ));
            }
            if let Some(what) = self
                .alerts_blocking
                .as_ref()
                .filter(|_| cfg.alert_block.is_some())
            {
                return Some(format!("waiting: alerts are firing ({what})"));
            }
        }
        let cooling = self.last_completed_at_ms.is_some_and(|t| {
            u128::from(now.wall_ms.saturating_sub(t)) < cfg.budget.cooldown.as_millis()
        });
        if !forced && cooling {
            return Some(format!(
                "waiting: cluster cooldown of {:?} after the last workflow",
                cfg.budget.cooldown
            ));
        }
        if !forced && self.workflows.len() as u32 >= cfg.budget.max_concurrent {
            return Some(format!(
                "waiting: {} {BUDGET_WAIT} {}",
                self.workflows.len(),
                cfg.budget.max_concurrent
            ));
        }
        None
    }

    /// Frees `target` if workflow `id` holds it.
    pub(super) fn release_target(&mut self, target: &str, id: u64) {
        if let Some(t) = self.servers.get_mut(target) {
            if t.reserved_by == Some(id) {
                t.reserved_by = None;
            }
        }
    }
}
