//! Planning: which servers need a workflow, whether the budget lets one start, which target
//! takes their instances (a spare, or the primary with the most room), and starting it: the
//! target reserved and the copies asked for (duplexing). In advisory mode the plan is said,
//! not started.

use super::output::{CommandKind, EventKind, Output};
use super::state::{
    Cluster, Instance, Pair, Phase, Placement, Scope, Server, ServerState, Traffic, Workflow,
};
use crate::config::Config;
use crate::detector::{fmt_bytes, Explanation, Level};
use crate::time::{fmt_utc, Now};
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
            if let Some(why) = self.too_young(cfg, &id, manual || failover) {
                self.blocked(&id, why, false, now, out);
                continue;
            }
            let (scope, instance) = self.scope_for(cfg, &id, now);
            let placed = self.choose_placement(cfg, &id, scope, instance.as_deref(), failover, now);
            match placed {
                Ok((target, placement)) => {
                    let plan = Planned {
                        scope,
                        instance,
                        target,
                        placement,
                        rebalance: None,
                    };
                    if self.advisory {
                        self.advise(cfg, &id, &plan, now, out)
                    } else {
                        self.start_workflow(cfg, &id, plan, forced, now, out)
                    }
                }
                Err(why) => self.blocked(&id, why, true, now, out),
            }
        }
        self.rebalance(cfg, now, out);
    }

    /// Active-active: while nothing else runs and planned work may start, one instance at a
    /// time moves from the primary serving the most instances to the one serving the fewest,
    /// as long as they differ by two or more and the receiver has room. A rejoined server (its
    /// instances went to its peers) so takes its share back over time, within the budget, the
    /// gate and the windows.
    fn rebalance(&mut self, cfg: &Config, now: Now, out: &mut Output) {
        if self.mode != Mode::ActiveActive
            || !cfg.rejuvenation.rebalance
            || self.advisory
            || !self.workflows.is_empty()
        {
            return;
        }
        // A server waiting for a target comes first.
        if self.held_back(cfg, false, false, false, now).is_some()
            || self.servers.values().any(|s| s.blocked_reason.is_some())
        {
            return;
        }
        let count = |id: &str| {
            self.instances
                .values()
                .filter(|i| i.server == id && i.traffic == Traffic::Serving)
                .count()
        };
        let eligible: Vec<(&Server, usize)> = self
            .servers
            .values()
            .filter(|s| s.role == Role::Primary && s.on_list() && !s.maintenance && !s.removing)
            .filter(|s| s.reachable() && s.reserved_by.is_none() && s.judgement != Level::Unstable)
            .filter(|s| s.avoid_as_target_until_ms.is_none_or(|t| now.wall_ms >= t))
            .map(|s| (s, count(&s.id)))
            .collect();
        let (Some(&(most, m)), Some(&(least, l))) = (
            eligible
                .iter()
                .max_by_key(|(s, n)| (*n, std::cmp::Reverse(&s.id))),
            eligible.iter().min_by_key(|(s, n)| (*n, &s.id)),
        ) else {
            return;
        };
        if m < l + 2 {
            return;
        }
        let Some(inst) = self
            .instances
            .values()
            .filter(|i| i.server == most.id && i.traffic == Traffic::Serving && i.healthy)
            .find(|i| {
                let units = cfg.services.get(&i.service).map_or(1, |s| s.units);
                least
                    .capacity
                    .saturating_sub(self.used_units(cfg, &least.id))
                    >= units
            })
        else {
            return;
        };
        let plan = Planned {
            scope: Scope::Instance,
            instance: Some(inst.id.clone()),
            target: least.id.clone(),
            placement: Placement::Peer,
            rebalance: Some(format!(
                "rebalancing: {} serves {m} instances and {} serves {l}",
                most.id, least.id
            )),
        };
        let source = most.id.clone();
        self.start_workflow(cfg, &source, plan, false, now, out);
    }

    /// Primaries on the list that need a workflow and have none: judged unstable, asked for
    /// by an operator, due by age, dead, or put in maintenance with instances still on them.
    fn candidates(&self, cfg: &Config, now: Now) -> Vec<ServerId> {
        let mut ids: Vec<ServerId> = self
            .servers
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
            .collect();
        // A dead primary's failover goes first: no earlier request may take the target
        // its traffic needs now.
        ids.sort_by_key(|id| self.dead(cfg, &self.servers[id], now).is_none());
        ids
    }

    /// A server that has not run `gate.min_running_time` yet waits before its copies start
    /// (rather than holding a hot copy, and its target, at the gate), unless an operator asked,
    /// it is dead, or its exhaustion is forecast within twice `gate.max_wait`.
    fn too_young(&self, cfg: &Config, id: &str, asked: bool) -> Option<String> {
        if asked {
            return None;
        }
        let s = &self.servers[id];
        let ran = s
            .observation
            .as_ref()
            .filter(|o| o.reachable)?
            .running_time_s;
        let min = cfg.gate.min_running_time.as_secs_f64();
        let near = s
            .explanation
            .as_ref()
            .and_then(|e| e.tte_s)
            .is_some_and(|t| t <= 2.0 * cfg.gate.max_wait.as_secs_f64());
        // Said once per wait: the text holds no figure that moves with every poll.
        (ran < min && !near).then(|| {
            format!("waiting: it has run less than gate.min_running_time ({min:.0}s) since its last start")
        })
    }

    fn blocked(&mut self, server: &str, why: String, alert: bool, now: Now, out: &mut Output) {
        let s = self.servers.get_mut(server).expect("present");
        if s.blocked_reason.as_deref() == Some(why.as_str()) {
            return;
        }
        s.blocked_reason = Some(why.clone());
        // Held back by a limit rejuv sets itself (budget, cooldown, pause, freeze) is a wait;
        // nowhere to put the copies is a problem, and alerted.
        let kind = if alert {
            EventKind::NoTarget
        } else {
            EventKind::WaitingForBudget
        };
        self.log(
            out,
            now,
            kind,
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

    /// What a workflow for `source` would move: one instance (when only some of its instances
    /// age on their own readings and its host-wide readings do not), or the whole server.
    fn scope_for(&self, cfg: &Config, source: &str, now: Now) -> (Scope, Option<InstanceId>) {
        let s = &self.servers[source];
        let whole = (Scope::Server, None);
        if !cfg.rejuvenation.instance_scope
            || s.manual_request.is_some()
            || s.maintenance
            || s.judgement != Level::Unstable
            || s.host_judgement == Level::Unstable
            || self.dead(cfg, s, now).is_some()
        {
            return whole;
        }
        let serving: Vec<&InstanceId> = self
            .instances
            .values()
            .filter(|i| i.server == source && i.traffic != Traffic::Draining)
            .map(|i| &i.id)
            .collect();
        let aging: Vec<&InstanceId> = s
            .unstable_instances
            .iter()
            .filter(|id| serving.contains(id))
            .collect();
        // All of them aging is the server aging; none of them is a host-wide matter.
        if aging.is_empty() || aging.len() == serving.len() {
            return whole;
        }
        if self.instance_scope_exhausted(cfg, s, now) {
            return whole;
        }
        (Scope::Instance, Some(aging[0].clone()))
    }

    /// Instance-scope rejuvenations did not hold: too many on this server within the window.
    fn instance_scope_exhausted(&self, cfg: &Config, s: &Server, now: Now) -> bool {
        let window = cfg.rejuvenation.instance_escalation_window.as_millis() as u64;
        let recent = s
            .instance_rejuvenations_ms
            .iter()
            .filter(|t| now.wall_ms.saturating_sub(**t) < window)
            .count();
        recent as u32 >= cfg.rejuvenation.instance_escalation_count
    }

    /// Where a workflow for `source` of `scope` puts its copies, or why nowhere: another server
    /// first for a whole server (a spare, or the primary with most room), the same server
    /// first for one instance; in place only where the server answers and has the memory for
    /// the copies too.
    fn choose_placement(
        &self,
        cfg: &Config,
        source: &str,
        scope: Scope,
        instance: Option<&str>,
        failover: bool,
        now: Now,
    ) -> Result<(ServerId, Placement), String> {
        let moving = self.moving(source, instance);
        let needed: u32 = moving
            .iter()
            .map(|i| cfg.services.get(&i.service).map_or(1, |s| s.units))
            .sum();
        let in_place = || self.in_place_fits(cfg, source, &moving, failover);
        let elsewhere = || {
            let (target, placement, gain) =
                self.choose_target(cfg, source, needed, failover, now)?;
            if scope == Scope::Server {
                self.floor_allows(cfg, source, gain, failover)?;
            }
            Ok((target, placement))
        };
        // With in-place duplexing off, its reason is not news in every refusal.
        let both = |there: String, here: String| {
            if cfg.rejuvenation.in_place {
                format!("{there}; and in place: {here}")
            } else {
                there
            }
        };
        let here = (source.to_string(), Placement::InPlace);
        match scope {
            Scope::Instance => in_place()
                .map(|()| here.clone())
                .or_else(|h: String| elsewhere().map_err(|t: String| both(t, h))),
            Scope::Server => elsewhere()
                .or_else(|t: String| in_place().map(|()| here.clone()).map_err(|h| both(t, h))),
        }
    }

    /// The instances a workflow for `source` moves: the one named, or all it serves with.
    fn moving(&self, source: &str, instance: Option<&str>) -> Vec<&Instance> {
        self.instances
            .values()
            .filter(|i| i.server == source && i.traffic != Traffic::Draining)
            .filter(|i| instance.is_none_or(|id| i.id == id))
            .collect()
    }

    /// Whether copies of `moving` can run beside them on their own server.
    fn in_place_fits(
        &self,
        cfg: &Config,
        source: &str,
        moving: &[&Instance],
        failover: bool,
    ) -> Result<(), String> {
        let s = &self.servers[source];
        if !cfg.rejuvenation.in_place {
            return Err("in-place duplexing is off (rejuvenation.in_place = false)".into());
        }
        if failover || !s.reachable() {
            return Err(format!("{source} does not answer"));
        }
        if s.maintenance {
            return Err(format!(
                "{source} is going into maintenance: its instances must leave it"
            ));
        }
        let Some(obs) = s.observation.as_ref() else {
            return Err(format!("{source} has not been observed yet"));
        };
        let need: u64 = moving
            .iter()
            .filter_map(|i| obs.instances.get(&i.id).and_then(|o| o.rss_bytes))
            .sum();
        match obs.mem_available_bytes {
            Some(free) if need > free => Err(format!(
                "{source} lacks the memory for two copies ({} needed, {} available)",
                fmt_bytes(need as f64),
                fmt_bytes(free as f64)
            )),
            _ => Ok(()),
        }
    }

    /// Another server for `needed` units, how it is placed, and the capacity it adds to the
    /// list by serving (a spare's), or why there is none: every server passed over is named
    /// with its reason.
    fn choose_target(
        &self,
        cfg: &Config,
        source: &str,
        needed: u32,
        failover: bool,
        now: Now,
    ) -> Result<(ServerId, Placement, u32), String> {
        let (role, placement) = match self.mode {
            Mode::ActiveStandby => (Role::Spare, Placement::Spare),
            Mode::ActiveActive => (Role::Primary, Placement::Peer),
        };
        let mut passed: Vec<String> = Vec::new();
        let mut best: Option<(&Server, u32)> = None;
        for s in self
            .servers
            .values()
            .filter(|s| s.id != source && s.role == role)
        {
            let free = match self.mode {
                Mode::ActiveStandby => s.capacity,
                Mode::ActiveActive => s.capacity.saturating_sub(self.used_units(cfg, &s.id)),
            };
            match self.unusable(s, free, needed, failover, now) {
                Some(why) => passed.push(format!("{}: {why}", s.id)),
                // Spares in id order (a plan an operator can predict); the peer with most room.
                None if self.mode == Mode::ActiveStandby && best.is_none() => {
                    best = Some((s, free))
                }
                None if self.mode == Mode::ActiveActive
                    && best.is_none_or(|(b, bf)| free > bf || (free == bf && s.id < b.id)) =>
                {
                    best = Some((s, free))
                }
                None => {}
            }
        }
        match best {
            Some((t, _)) => {
                let gain = if self.mode == Mode::ActiveStandby {
                    t.capacity
                } else {
                    0
                };
                Ok((t.id.clone(), placement, gain))
            }
            None if passed.is_empty() => Err(match self.mode {
                Mode::ActiveStandby => "there is no spare".into(),
                Mode::ActiveActive => "there is no other primary".into(),
            }),
            None => Err(format!(
                "no {placement} can take it ({})",
                passed.join("; ")
            )),
        }
    }

    /// Why `s` cannot take copies needing `needed` units (it has `free`), if it cannot.
    fn unusable(
        &self,
        s: &Server,
        free: u32,
        needed: u32,
        failover: bool,
        now: Now,
    ) -> Option<String> {
        if !s.on_list() {
            return Some(format!(
                "{} ({})",
                s.state.name(),
                match &s.state {
                    ServerState::Failed { reason } => reason.as_str(),
                    _ => "off the list",
                }
            ));
        }
        if s.removing {
            return Some("being removed (no longer in the config)".into());
        }
        if s.maintenance {
            return Some("in maintenance".into());
        }
        if !s.reachable() {
            return Some("its agent does not answer".into());
        }
        if let Some(w) = s.reserved_by {
            return Some(format!("reserved by workflow {w}"));
        }
        if self.workflows.values().any(|w| w.server == s.id) {
            return Some("being rejuvenated".into());
        }
        // A cooldown after a failed duplex is for planned work: a dead primary's failover
        // takes any server that can serve.
        if let Some(t) = s
            .avoid_as_target_until_ms
            .filter(|t| now.wall_ms < *t && !failover)
        {
            return Some(format!(
                "in failed-target cooldown after a copy failed on it, until {}",
                fmt_utc(t)
            ));
        }
        if free < needed {
            return Some(format!("{free} free units, {needed} needed"));
        }
        None
    }

    /// Whether a whole server leaving the list for a target adding `gain` units keeps the
    /// capacity floor (a failover is not held by it: that capacity is gone already).
    fn floor_allows(
        &self,
        cfg: &Config,
        source: &str,
        gain: u32,
        failover: bool,
    ) -> Result<(), String> {
        let after =
            (self.available_capacity() + gain).saturating_sub(self.servers[source].capacity);
        if !failover && after < cfg.budget.min_available_capacity {
            return Err(format!(
                "the capacity floor would be broken ({after} < {} units)",
                cfg.budget.min_available_capacity
            ));
        }
        Ok(())
    }

    /// Advisory mode's stand-in for [`Self::start_workflow`]: says (once per episode) what
    /// would be started. The episode's key leaves out the numbers that change with every
    /// sample, so a plan that stays the same is said once.
    fn advise(&mut self, cfg: &Config, source: &str, plan: &Planned, now: Now, out: &mut Output) {
        let (reason, explanation) = self.workflow_reason(cfg, source, now);
        let n = self.moving(source, plan.instance.as_deref()).len();
        let what = match &plan.instance {
            Some(i) => format!("duplex {i} {}", placed(plan)),
            None => format!("duplex {n} instance(s) {}", placed(plan)),
        };
        let key = format!(
            "dry run: {source} {:?} {} {} {}",
            explanation
                .as_ref()
                .map(|e| (e.resource, &e.rule, &e.instance)),
            plan.scope,
            plan.placement,
            plan.target
        );
        let s = self.servers.get_mut(source).expect("present");
        if s.blocked_reason.as_deref() == Some(key.as_str()) {
            return;
        }
        s.blocked_reason = Some(key);
        let said = format!(
            "dry run: would rejuvenate {source} ({reason}), {} scope: {what}, switch when the gate allows, then {}",
            plan.scope,
            match plan.scope {
                Scope::Instance => "stop the old instance".to_string(),
                Scope::Server => format!(
                    "run {}",
                    cfg.rejuvenation
                        .actions
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        );
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
        plan: Planned,
        forced: bool,
        now: Now,
        out: &mut Output,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let (reason, explanation) = match &plan.rebalance {
            Some(why) => (why.clone(), None),
            None => self.workflow_reason(cfg, source, now),
        };
        let failover = self.dead(cfg, &self.servers[source], now).is_some();
        let (level, exhausted) = match plan.scope {
            Scope::Server => self.escalation(cfg, source, now),
            Scope::Instance => (0, false),
        };
        let pairs = self.duplicate(cfg, source, plan.instance.as_deref(), &plan.target, out);
        let target = plan.target.clone();
        let mut w = Workflow {
            id,
            server: source.to_string(),
            target: target.clone(),
            scope: plan.scope,
            instance: plan.instance.clone(),
            placement: Some(plan.placement),
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
            rebalance: plan.rebalance.is_some(),
        };
        w.enter(Phase::Duplexing, now);
        let n = w.pairs.len();
        let in_place = w.in_place();
        self.workflows.insert(id, w);
        if !in_place {
            if let Some(t) = self.servers.get_mut(&target) {
                t.reserved_by = Some(id);
            }
        }
        if let Some(s) = self.servers.get_mut(source) {
            s.blocked_reason = None;
        }
        let what = match &plan.instance {
            Some(i) => format!("duplexing {i} {}", placed(&plan)),
            None => format!("duplexing {n} instance(s) {}", placed(&plan)),
        };
        self.log(
            out,
            now,
            EventKind::WorkflowStarted,
            Some(source),
            Some(id),
            format!("{source}: {reason}; {} scope, {what}", plan.scope),
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

    /// Asks for a standby copy on `target` of `instance`, or of every instance `source` serves
    /// with.
    fn duplicate(
        &mut self,
        cfg: &Config,
        source: &str,
        instance: Option<&str>,
        target: &str,
        out: &mut Output,
    ) -> Vec<Pair> {
        let old: Vec<(InstanceId, ServiceName)> = self
            .moving(source, instance)
            .into_iter()
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

/// A workflow about to start: what it moves and where.
struct Planned {
    scope: Scope,
    instance: Option<InstanceId>,
    target: ServerId,
    placement: Placement,
    /// A workflow that is no rejuvenation (a rebalancing move) says so instead of a judgement.
    rebalance: Option<String>,
}

/// "onto s4 (spare)", "in place".
fn placed(plan: &Planned) -> String {
    match plan.placement {
        Placement::InPlace => "in place".into(),
        p => format!("onto {} ({p})", plan.target),
    }
}
