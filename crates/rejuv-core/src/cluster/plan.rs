//! Planning: which servers need a workflow, whether the budget lets one start, which target
//! takes their instances (a spare, or the primary with the most room), and starting it: the
//! target reserved and the copies asked for (duplexing). In advisory mode the plan is said,
//! not started.

use super::output::{CommandKind, EventKind, Output};
use super::state::{Cluster, Instance, Pair, Phase, Server, Traffic, Workflow};
use crate::config::Config;
use crate::detector::{Explanation, Level};
use crate::time::Now;
use crate::types::{InstanceId, Mode, Role, ServerId, ServiceName};
use std::collections::BTreeSet;

impl Cluster {
    /// Starts a workflow for every server that needs one, within the budget.
    pub(super) fn plan(&mut self, cfg: &Config, now: Now, out: &mut Output) {
        if !self.quorum(now, out) {
            return;
        }
        let candidates = self.candidates(cfg, now);
        // A server that is no longer waiting for a target starts a new episode next time:
        // its reason is said (and alerted) again then.
        for s in self.servers.values_mut() {
            if !candidates.contains(&s.id) {
                s.blocked_reason = None;
            }
        }
        for id in candidates {
            // An earlier candidate of this same pass may have taken this server as its target.
            if self.servers[&id].reserved_by.is_some() {
                continue;
            }
            // A dead server's capacity is gone already: its failover is not held by the
            // budget, the cooldown or a freeze (rejuv's own disruptions are what those bound).
            let failover = self.dead(cfg, &self.servers[&id], now).is_some();
            let forced = self.servers[&id].manual_request == Some(true) || failover;
            let manual =
                self.servers[&id].manual_request.is_some() || self.servers[&id].maintenance;
            if let Some(why) = self.held_back(cfg, manual, failover, forced, now) {
                self.blocked(&id, why, false, now, out);
                continue;
            }
            match self.choose_target(cfg, &id, failover, now) {
                Ok(target) if self.advisory => self.advise(cfg, &id, &target, now, out),
                Ok(target) => self.start_workflow(cfg, &id, &target, forced, now, out),
                Err(why) => self.blocked(&id, why, true, now, out),
            }
        }
    }

    /// Primaries on the list that need a workflow and have none: judged unstable, asked for
    /// by an operator, due by age, dead, or put in maintenance with instances still on them.
    fn candidates(&self, cfg: &Config, now: Now) -> Vec<ServerId> {
        self.servers
            .values()
            .filter(|s| s.on_list() && s.role == Role::Primary && s.reserved_by.is_none())
            .filter(|s| {
                if s.maintenance {
                    // Maintenance takes a server out of service: what it runs moves first.
                    self.instances.values().any(|i| i.server == s.id)
                } else {
                    s.judgement == Level::Unstable
                        || s.manual_request.is_some()
                        || self.due_by_age(cfg, s).is_some()
                        || self.dead(cfg, s, now).is_some()
                }
            })
            .filter(|s| !self.workflows.values().any(|w| w.server == s.id))
            .map(|s| s.id.clone())
            .collect()
    }

    fn blocked(&mut self, server: &str, why: String, alert: bool, now: Now, out: &mut Output) {
        let s = self.servers.get_mut(server).expect("present");
        if s.blocked_reason.as_deref() == Some(why.as_str()) {
            return;
        }
        s.blocked_reason = Some(why.clone());
        self.log(
            out,
            now,
            EventKind::NoTarget,
            Some(server),
            None,
            format!("{server} needs rejuvenation but {why}"),
        );
        if alert {
            self.issue(
                out,
                CommandKind::Alert {
                    name: "RejuvNoTarget".into(),
                    server: Some(server.to_string()),
                    summary: format!("{server} needs rejuvenation but {why}"),
                },
            );
        }
    }

    /// The target for `source`, or why there is none.
    fn choose_target(
        &self,
        cfg: &Config,
        source: &str,
        failover: bool,
        now: Now,
    ) -> Result<ServerId, String> {
        let needed: u32 = self.used_units(cfg, source);
        let src = &self.servers[source];
        let usable = |s: &&Server| {
            s.id != source
                && s.on_list()
                && !s.maintenance
                && s.reserved_by.is_none()
                && s.reachable()
                && s.avoid_as_target_until_ms.is_none_or(|t| now.wall_ms >= t)
                && !self.workflows.values().any(|w| w.server == s.id)
        };
        let (target, gain) = match self.mode {
            Mode::ActiveStandby => {
                let spares: Vec<&Server> = self
                    .servers
                    .values()
                    .filter(|s| s.role == Role::Spare)
                    .filter(usable)
                    .collect();
                // Spares in id order: a plan an operator can predict.
                let fit = spares.iter().find(|s| s.capacity >= needed);
                match fit {
                    Some(t) => (t.id.clone(), t.capacity),
                    None if spares.is_empty() => return Err("no healthy spare is free".into()),
                    None => return Err(format!("no free spare has {needed} units of capacity")),
                }
            }
            Mode::ActiveActive => {
                let best = self
                    .servers
                    .values()
                    .filter(|s| s.role == Role::Primary)
                    .filter(usable)
                    .map(|s| (s, s.capacity.saturating_sub(self.used_units(cfg, &s.id))))
                    .filter(|(_, free)| *free >= needed)
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.id.cmp(&a.0.id)));
                match best {
                    Some((t, _)) => (t.id.clone(), 0),
                    None => return Err(format!("no primary has {needed} units of spare capacity")),
                }
            }
        };
        let after = (self.available_capacity() + gain).saturating_sub(src.capacity);
        if !failover && after < cfg.budget.min_available_capacity {
            return Err(format!(
                "the capacity floor would be broken ({after} < {} units)",
                cfg.budget.min_available_capacity
            ));
        }
        Ok(target)
    }

    /// Advisory mode's stand-in for [`Self::start_workflow`]: says (once per episode) what
    /// would be started.
    fn advise(&mut self, cfg: &Config, source: &str, target: &str, now: Now, out: &mut Output) {
        let (reason, _) = self.workflow_reason(cfg, source, now);
        let n = self
            .instances
            .values()
            .filter(|i| i.server == source && i.traffic != Traffic::Draining)
            .count();
        let said = format!(
            "dry run: would rejuvenate {source} ({reason}): duplex {n} instance(s) onto {target}, switch when the gate allows, then run {}",
            cfg.rejuvenation
                .actions
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let s = self.servers.get_mut(source).expect("present");
        if s.blocked_reason.as_deref() == Some(said.as_str()) {
            return;
        }
        s.blocked_reason = Some(said.clone());
        self.log(out, now, EventKind::DryRun, Some(source), None, said);
    }

    /// Why a workflow for `source` would start now, with the detector's explanation.
    fn workflow_reason(
        &self,
        cfg: &Config,
        source: &str,
        now: Now,
    ) -> (String, Option<Explanation>) {
        let src = &self.servers[source];
        if src.maintenance {
            return (
                "put in maintenance by an operator: its instances move before it leaves the list"
                    .to_string(),
                None,
            );
        }
        if let Some(why) = self.dead(cfg, src, now) {
            return (why, None);
        }
        match (&src.manual_request, &src.explanation) {
            (Some(_), _) => (
                "requested by an operator".to_string(),
                src.explanation.clone(),
            ),
            (None, Some(e)) if src.judgement == Level::Unstable => {
                (e.message.clone(), Some(e.clone()))
            }
            _ => match self.due_by_age(cfg, src) {
                Some(why) => (why, None),
                None => ("judged unstable".to_string(), src.explanation.clone()),
            },
        }
    }

    fn start_workflow(
        &mut self,
        cfg: &Config,
        source: &str,
        target: &str,
        forced: bool,
        now: Now,
        out: &mut Output,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let (reason, explanation) = self.workflow_reason(cfg, source, now);
        let failover = self.dead(cfg, &self.servers[source], now).is_some();
        let (level, exhausted) = self.escalation(cfg, source, now);
        let pairs = self.duplicate(cfg, source, target, out);
        let mut w = Workflow {
            id,
            server: source.to_string(),
            target: target.to_string(),
            reason: reason.clone(),
            explanation,
            phase: Phase::Duplexing,
            started_at_ms: now.wall_ms,
            phase_since_ms: now.wall_ms,
            pairs,
            run_id: format!("wf{id}-{}", now.wall_ms),
            report: None,
            gate_reason: None,
            steps: vec![],
            outcome: None,
            forced,
            level,
            exhausted,
            hooks_fired: Some(0),
            failover,
            veto_pending: BTreeSet::new(),
            veto_passed: Vec::new(),
            vetoed: None,
        };
        w.enter(Phase::Duplexing, now);
        let n = w.pairs.len();
        self.workflows.insert(id, w);
        if let Some(t) = self.servers.get_mut(target) {
            t.reserved_by = Some(id);
        }
        if let Some(s) = self.servers.get_mut(source) {
            s.blocked_reason = None;
        }
        self.log(
            out,
            now,
            EventKind::WorkflowStarted,
            Some(source),
            Some(id),
            format!("{source} unstable ({reason}); duplexing {n} instance(s) onto {target}"),
        );
    }

    /// The level of actions a workflow for `source` runs, and whether the strongest one has
    /// run already. Escalation: a server the detector finds aging again soon after its last
    /// rejuvenation gets the next, stronger level of actions.
    fn escalation(&self, cfg: &Config, source: &str, now: Now) -> (usize, bool) {
        let src = &self.servers[source];
        let aged_again = src.manual_request.is_none()
            && src.judgement == Level::Unstable
            && !cfg.rejuvenation.escalation.is_empty()
            && src.last_rejuvenated_at_ms.is_some_and(|t| {
                u128::from(now.wall_ms.saturating_sub(t))
                    < cfg.rejuvenation.escalation_window.as_millis()
            });
        let max_level = cfg.rejuvenation.max_level();
        if aged_again {
            (max_level.min(src.level + 1), src.level >= max_level)
        } else {
            (0, false)
        }
    }

    /// Asks for a standby copy on `target` of every instance `source` serves with.
    fn duplicate(
        &mut self,
        cfg: &Config,
        source: &str,
        target: &str,
        out: &mut Output,
    ) -> Vec<Pair> {
        let old: Vec<(InstanceId, ServiceName)> = self
            .instances
            .values()
            .filter(|i| i.server == source && i.traffic != Traffic::Draining)
            .map(|i| (i.id.clone(), i.service.clone()))
            .collect();
        let mut pairs = Vec::new();
        for (old_id, service) in old {
            let new_id = self.new_instance_id(&service, target);
            self.instances.insert(
                new_id.clone(),
                Instance {
                    id: new_id.clone(),
                    service: service.clone(),
                    server: target.to_string(),
                    addr: None,
                    healthy: false,
                    traffic: Traffic::Standby,
                    draining_from_version: None,
                    drained: false,
                    drain_applied: false,
                    confirmed_at_ms: None,
                },
            );
            pairs.push(Pair {
                handoff: cfg
                    .services
                    .get(&service)
                    .is_some_and(|s| s.handoff.is_some()),
                service: service.clone(),
                old: old_id,
                new: new_id.clone(),
                transferred: false,
            });
            self.issue(
                out,
                CommandKind::StartInstance {
                    server: target.to_string(),
                    instance: new_id,
                    service,
                },
            );
        }
        pairs
    }
}
