//! Gating: the copies are hot; the gate decides from the source's load, running time and
//! how near exhaustion is whether to switch now or wait for a quieter moment. An operator's
//! request, maintenance or a source that died opens it at once; the capacity floor and the
//! `draining` veto hooks can still hold it. Switching ([`Cluster::switch`]) moves the traffic
//! and takes the source off the list.

use crate::cluster::hooks::VetoGate;
use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{Cluster, Phase, Placement, Server, ServerState, Traffic};
use crate::config::Config;
use crate::gate::{self, GateDecision, GateInput};
use crate::time::Now;
use crate::types::{InstanceId, Mode, Role};

impl Cluster {
    pub(in crate::cluster) fn advance_gating(
        &mut self,
        cfg: &Config,
        id: u64,
        since: u64,
        now: Now,
        out: &mut Output,
    ) {
        let w = &self.workflows[&id];
        let server = w.server.clone();
        let target = w.target.clone();
        // Right after a takeover or a restart the source has not answered this controller
        // yet (readings are not stored): whether it is down is unknown, and switching now
        // would take a live source for a dead one and lose the state it has not handed off.
        // The gate waits for its first answer (one poll).
        if self
            .servers
            .get(&server)
            .is_some_and(|s| s.observation.is_none())
        {
            return;
        }
        // A copy that fell unhealthy while waiting is not switched to.
        let copies_ok = w
            .pairs
            .iter()
            .all(|p| self.instances.get(&p.new).is_some_and(|i| i.healthy));
        let (mut decision, source_down) = self.gate_decision(cfg, id, since);
        if !copies_ok {
            // Back to duplexing: the copy gets the duplex timeout to recover, after
            // which the workflow rolls back and releases the target.
            let w = self.workflows.get_mut(&id).expect("present");
            w.enter(Phase::Duplexing, now);
            self.log(
                out,
                now,
                EventKind::Step,
                Some(&server),
                Some(id),
                format!("a copy on {target} is no longer healthy; duplexing again"),
            );
            return;
        }
        if decision.is_now() {
            if let Err(reason) = self.floor_allows_switch(cfg, id, source_down) {
                if u128::from(since) >= cfg.gate.max_wait.as_millis() {
                    // Capacity lost elsewhere is not coming back soon: free the target.
                    self.roll_back(cfg, id, reason, now, out);
                    return;
                }
                decision = GateDecision::Wait { reason };
            }
        }
        let reason = decision.reason().to_string();
        let w = &self.workflows[&id];
        // A wait is said when it starts and when its kind changes, not whenever its figures
        // move (the running time grows every poll; the load wobbles).
        let changed = w.gate_reason.as_deref().map(shape) != Some(shape(&reason));
        if decision.is_now() {
            match self.veto_gate(cfg, id, "draining", now, out) {
                VetoGate::Passed => self.switch(id, reason, now, out),
                VetoGate::Waiting => {}
                VetoGate::Vetoed(why) => self.roll_back(cfg, id, why, now, out),
            }
        } else {
            if changed {
                self.log(
                    out,
                    now,
                    EventKind::Gate,
                    Some(&server),
                    Some(id),
                    format!("waiting: {reason}"),
                );
            }
            self.workflows.get_mut(&id).expect("present").gate_reason = Some(reason);
        }
    }

    /// What the gate says for workflow `id` (an operator, maintenance or a dead source open
    /// it at once), and whether the source is down.
    fn gate_decision(&self, cfg: &Config, id: u64, since: u64) -> (GateDecision, bool) {
        let w = &self.workflows[&id];
        let s = &self.servers[&w.server];
        let obs = s.observation.as_ref();
        let input = GateInput {
            load1: obs.map_or(0.0, |o| o.load1),
            running_time_s: obs.map_or(0.0, |o| o.running_time_s),
            waited_s: since as f64 / 1000.0,
            tte_s: s.explanation.as_ref().and_then(|e| e.tte_s),
            load_quantile: obs.and_then(|o| o.load_quantile),
        };
        let mut decision = gate::decide(&cfg.gate, input);
        if s.manual_request.is_some() || w.forced || s.maintenance {
            decision = GateDecision::Now {
                reason: "requested by an operator".into(),
            };
        }
        // A source that died while its replacement waited fails over at once: the
        // hot copy is what the wait was for.
        let source_down = !obs.is_some_and(|o| o.reachable)
            || !w
                .pairs
                .iter()
                .any(|p| self.instances.get(&p.old).is_some_and(|i| i.healthy));
        if source_down && !w.pairs.is_empty() {
            decision = GateDecision::Now {
                reason: "the source is down: failing over to the hot copy".into(),
            };
        }
        (decision, source_down)
    }

    /// Servers may have died since the workflow started: a switch that would now break the
    /// capacity floor waits (a failover, an operator's force or maintenance does not).
    fn floor_allows_switch(&self, cfg: &Config, id: u64, source_down: bool) -> Result<(), String> {
        let w = &self.workflows[&id];
        if !w.takes_server_out() {
            // One instance, or copies on the server itself: no server leaves the list.
            return Ok(());
        }
        let s = &self.servers[&w.server];
        let gain = match self.mode {
            Mode::ActiveStandby => self.servers.get(&w.target).map_or(0, |t| t.capacity),
            Mode::ActiveActive => 0,
        };
        let after = self.available_capacity() + gain;
        if !source_down
            && !w.failover
            && !w.forced
            && !s.maintenance
            && after < cfg.budget.min_available_capacity
        {
            return Err(format!(
                "the capacity floor would be broken ({after} < {} units)",
                cfg.budget.min_available_capacity
            ));
        }
        Ok(())
    }

    /// The gate said now: the copies take the traffic, the source leaves the list.
    fn switch(&mut self, id: u64, gate_reason: String, now: Now, out: &mut Output) {
        let next_version = self.routes_version + 1;
        let source_reachable = self
            .workflows
            .get(&id)
            .and_then(|w| self.servers.get(&w.server))
            .is_some_and(Server::reachable);
        // State is exported by the source's agent from a live instance: from a dead source
        // (reactive failover, or a source that died while its copy waited) there is nothing
        // to move, and waiting for the export to give up would keep the copy out of service.
        let lost: Vec<(InstanceId, InstanceId)> = self.workflows[&id]
            .pairs
            .iter()
            .filter(|p| p.handoff && !p.transferred)
            // A reachable agent whose instance looks unhealthy (slow under memory pressure,
            // say) may still export: only a source that is gone loses its state.
            .filter(|_| !source_reachable)
            .map(|p| (p.old.clone(), p.new.clone()))
            .collect();
        let w = self.workflows.get_mut(&id).expect("present");
        for p in w.pairs.iter_mut() {
            if lost.iter().any(|(_, new)| new == &p.new) {
                p.handoff = false;
            }
        }
        w.gate_reason = Some(gate_reason.clone());
        w.enter(Phase::Draining, now);
        let pairs = w.pairs.clone();
        let server = w.server.clone();
        let target = w.target.clone();
        let takes_server_out = w.takes_server_out();
        let onto_spare = w.placement == Some(Placement::Spare);
        for (old, new) in &lost {
            self.log(
                out,
                now,
                EventKind::HandoffSkipped,
                Some(&server),
                Some(id),
                format!("{old} is down: its state is lost; {new} serves without it"),
            );
            self.issue(
                out,
                CommandKind::Alert {
                    name: "RejuvHandoffFailed".into(),
                    server: Some(server.clone()),
                    summary: format!("state hand-off {old} -> {new} impossible: {old} is down"),
                },
            );
        }
        for p in &pairs {
            if let Some(new) = self.instances.get_mut(&p.new) {
                // A stateful copy takes traffic only once the state has moved.
                if !p.handoff {
                    new.traffic = Traffic::Serving;
                }
            }
            if let Some(old) = self.instances.get_mut(&p.old) {
                old.traffic = Traffic::Draining;
                old.draining_from_version = Some(next_version);
                old.drained = false;
                old.drain_applied = false;
            }
        }
        if takes_server_out {
            if let Some(s) = self.servers.get_mut(&server) {
                s.state = ServerState::Rejuvenating { workflow: id };
            }
        }
        if onto_spare {
            // A spare that serves is a primary.
            if let Some(t) = self.servers.get_mut(&target) {
                t.role = Role::Primary;
            }
        }
        let olds: Vec<&str> = pairs.iter().map(|p| p.old.as_str()).collect();
        let news: Vec<&str> = pairs.iter().map(|p| p.new.as_str()).collect();
        let said = if takes_server_out {
            format!("gate open ({gate_reason}): {server} off the list, {target} takes its traffic; draining")
        } else {
            format!(
                "gate open ({gate_reason}): {} take(s) the traffic of {}; draining {} ({server} stays on the list)",
                news.join(", "),
                olds.join(", "),
                olds.join(", ")
            )
        };
        self.log(out, now, EventKind::Step, Some(&server), Some(id), said);
    }
}

/// A gate reason without its figures: what kind of wait it is.
fn shape(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut in_number = false;
    for c in reason.chars() {
        let digit = c.is_ascii_digit() || (in_number && c == '.');
        if digit && !in_number {
            out.push('#');
        } else if !digit {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reason_keeps_its_shape_as_its_figures_move() {
        assert_eq!(
            super::shape("running time 31s is below min_running_time 60s"),
            super::shape("running time 32s is below min_running_time 60s")
        );
        assert_eq!(
            super::shape("load 2.31 is above max_load 2.00"),
            "load # is above max_load #"
        );
        assert_ne!(
            super::shape("load 2.31 is above max_load 2.00"),
            super::shape("running time 3s is below min_running_time 60s")
        );
    }
}
