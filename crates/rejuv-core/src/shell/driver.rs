//! The shell itself: feeds events to the core, commits each step with its outbox and events,
//! carries out the commands, and feeds their results back.
//!
//! One step is one [`Cluster::apply`] of an event, plus what rides along without a round trip
//! of its own: the detector's judgement of the sample an observation came with, and the
//! acknowledgement of a detector reset (the shell does that itself, at once). The step is
//! committed as a whole, then published, then its commands go out.
//!
//! # Guarantees
//! - Commit, then act: no command of a step is carried out before the step is committed.
//! - Fail closed: a commit that fails leaves the state as last published and acts on nothing;
//!   once commits succeed again, the recorded outbox is carried out again (each command is
//!   idempotent by its id, as after a crash).
//! - Judgements reach the core only from the production detector, here.

use super::carrier::Carrier;
use super::durable::{copy_readings, forget_readings, same_but_readings};
use super::effects::{Attempt, Effects, Step, StoreHealth};
use super::readings::{Judged, Readings};
use crate::api::AgentState;
use crate::cluster::{
    Changes, Cluster, Command, CommandKind, CommandResult, Event, Observation, OperatorCommand,
    Output, Phase, Refusal, ServerState,
};
use crate::config::Config;
use crate::detect::detector::Judgement;
use crate::detector::Level;
use crate::time::Now;
use crate::types::Sample;
use std::sync::Arc;

/// What a shell says about a step besides committing it: notes for the process log.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A detector was warmed from an agent's kept samples.
    Warmed {
        server: String,
        samples: usize,
        span_s: u64,
    },
    /// An agent's clock went back: its detector started afresh.
    ClockBack { server: String },
    /// The store took commits again after `failing_for_ms`; `resent` commands went again.
    StoreBack { failing_for_ms: u64, resent: usize },
    /// The store refused a commit (the first of a run of failures, or a later one).
    StoreFailed { error: String, first: bool },
}

/// The driver of the core, shared by the controller and the simulator.
pub struct Shell {
    cfg: Arc<Config>,
    /// The working state (equal to `published` between steps).
    cluster: Cluster,
    published: Arc<Cluster>,
    readings: Readings,
    carrier: Carrier,
    dry_run: bool,
    health: StoreHealth,
    notes: Vec<Note>,
    /// The published state's readings lag the working state's (see [`Shell::fresh`]).
    stale: bool,
    /// A bound on `budget.max_concurrent` below the config's (a shard's slots of the fleet's
    /// budget, see [`Shell::limit_concurrent`]).
    limit: Option<u32>,
}

impl Shell {
    /// A shell over a state that is already in the store (just created, or read back: its
    /// readings are dropped). Call [`Shell::start`] next.
    pub fn new(cfg: Arc<Config>, mut cluster: Cluster, dry_run: bool) -> Self {
        forget_readings(&mut cluster);
        cluster.fill_defaults();
        Self {
            readings: Readings::new(&cfg),
            carrier: Carrier::new(cfg.rejuvenation.verify_timeout),
            published: Arc::new(cluster.clone()),
            cluster,
            cfg,
            dry_run,
            health: StoreHealth::default(),
            notes: Vec::new(),
            stale: false,
            limit: None,
        }
    }

    /// Holds planned workflows to `slots` at once, below `budget.max_concurrent` (a shard
    /// holds that many slots of the fleet's budget), but never below the workflows running
    /// now: returns the bound in force. Takes no step; the next planning pass reads it.
    pub fn limit_concurrent(&mut self, slots: u32) -> u32 {
        let running = self
            .cluster
            .workflows
            .values()
            .filter(|w| !w.forced)
            .count() as u32;
        let bound = slots.max(running);
        self.limit = Some(bound);
        self.cfg = self.limited(self.cfg.clone());
        bound
    }

    /// `cfg` with the bound of [`Shell::limit_concurrent`] applied.
    fn limited(&self, cfg: Arc<Config>) -> Arc<Config> {
        match self.limit {
            Some(n) if n != cfg.budget.max_concurrent => {
                let mut c = (*cfg).clone();
                c.budget.max_concurrent = n;
                Arc::new(c)
            }
            _ => cfg,
        }
    }

    /// Carries out what the stored outbox still holds (a dry run carries out nothing).
    pub fn start(&mut self, now: Now, fx: &mut dyn Effects) {
        let outbox: Vec<Command> = self.cluster.pending.values().cloned().collect();
        self.dispatch(outbox, now, fx);
    }

    /// The state as of the last step.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.published
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    pub fn store_health(&self) -> &StoreHealth {
        &self.health
    }

    /// Commands being carried out (memory only).
    pub fn commands_in_flight(&self) -> usize {
        self.carrier.inflight()
    }

    /// Notes since the last call, for the process log.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Time passed: timeouts, the gate, planning.
    pub fn tick(&mut self, now: Now, fx: &mut dyn Effects) {
        self.step(vec![Event::Tick], now, fx);
    }

    /// The traffic adapter applied route table `version`.
    pub fn traffic_synced(
        &mut self,
        version: u64,
        in_flight: std::collections::BTreeMap<String, u64>,
        now: Now,
        fx: &mut dyn Effects,
    ) {
        self.step(vec![Event::TrafficSynced { version, in_flight }], now, fx);
    }

    /// An operator's request: refused with the reason when it does not fit the state.
    pub fn operator(
        &mut self,
        by: String,
        command: OperatorCommand,
        now: Now,
        fx: &mut dyn Effects,
    ) -> Result<(), Refusal> {
        self.cluster.check_operator(&self.cfg, &command)?;
        self.step(vec![Event::Operator { by, command }], now, fx);
        Ok(())
    }

    /// What `[alert_block]`'s query answers changed.
    pub fn alerts_blocking(&mut self, firing: Option<String>, now: Now, fx: &mut dyn Effects) {
        self.step(vec![Event::AlertsBlocking { firing }], now, fx);
    }

    /// A reloaded config (`rejuv reload`, `SIGHUP`, a restart over a stored state): refused as
    /// a whole with the reason, or taken; the step that carries it out runs with it.
    pub fn reload(
        &mut self,
        by: String,
        cfg: Arc<Config>,
        now: Now,
        fx: &mut dyn Effects,
    ) -> Result<Changes, Refusal> {
        let changes = self.cluster.check_reload(&cfg)?;
        self.readings.reconfigure(&cfg);
        self.cfg = self.limited(cfg);
        self.step(vec![Event::Reconfigured { by }], now, fx);
        Ok(changes)
    }

    /// An agent's answer to a poll sent at `sent_at_ms` (or its failure): an observation and,
    /// when the sample is news, the detector's judgement of it, in one step.
    pub fn sample(
        &mut self,
        server: &str,
        sent_at_ms: u64,
        reply: Result<&AgentState, ()>,
        now: Now,
        fx: &mut dyn Effects,
    ) {
        let events = self.sample_events(server, sent_at_ms, reply, now);
        if !events.is_empty() {
            self.step(events, now, fx);
        }
    }

    /// Several agents' answers at once (those that queued while a step ran), in one step:
    /// what a step costs beyond its events (the durable check, the commit, the copy it
    /// publishes) is paid once for the batch. Routine samples ([`Shell::routine`]) take no
    /// step at all.
    pub fn samples(
        &mut self,
        batch: &[(&str, u64, Result<&AgentState, ()>)],
        now: Now,
        fx: &mut dyn Effects,
    ) {
        let mut events = Vec::new();
        for (server, sent_at_ms, reply) in batch {
            events.extend(self.sample_events(server, *sent_at_ms, *reply, now));
        }
        if !events.is_empty() {
            self.step(events, now, fx);
        }
    }

    /// The events a sample brings, or none when it is routine (its readings are taken here).
    fn sample_events(
        &mut self,
        server: &str,
        sent_at_ms: u64,
        reply: Result<&AgentState, ()>,
        now: Now,
    ) -> Vec<Event> {
        let state = match reply {
            Ok(s) => s,
            Err(()) => {
                let observation = Readings::unreachable(now.wall_ms);
                let server = server.to_string();
                return vec![Event::Observed {
                    server,
                    observation,
                }];
            }
        };
        let gating = self
            .cluster
            .workflows
            .values()
            .any(|w| w.server == server && w.phase == Phase::Gating);
        let observation = self.readings.observe(server, state, sent_at_ms, gating);
        let judged = self.readings.judge(server, &state.sample);
        let judgement = match judged {
            Some(Judged::Fresh(j)) => Some(j),
            Some(Judged::ClockBack(j)) => {
                let server = server.to_string();
                self.notes.push(Note::ClockBack { server });
                Some(j)
            }
            Some(Judged::Seen) | None => None,
        };
        if self.routine(server, &observation, judgement.as_ref()) {
            self.take_readings(server, observation, judgement);
            return Vec::new();
        }
        let mut events = vec![Event::Observed {
            server: server.to_string(),
            observation,
        }];
        if let Some(judgement) = judgement {
            let server = server.to_string();
            events.push(Event::Judged { server, judgement });
        }
        events
    }

    /// The samples an agent kept (fetched when this shell starts leading): replayed into the
    /// server's detector so that a restart or a handover does not blind it. Samples from
    /// before the server's last rejuvenation are left out, and a server in a workflow is left
    /// alone (its detector restarts at rejoin).
    pub fn history(&mut self, server: &str, samples: Vec<Sample>, now: Now, fx: &mut dyn Effects) {
        let Some(s) = self.cluster.servers.get(server) else {
            return;
        };
        if self.cluster.workflows.values().any(|w| w.server == server) {
            return;
        }
        let cutoff = s.last_rejuvenated_at_ms.unwrap_or(0);
        let Some((judgement, n, span_s)) = self.readings.replay(server, samples, cutoff) else {
            return;
        };
        let server = server.to_string();
        self.notes.push(Note::Warmed {
            server: server.clone(),
            samples: n,
            span_s,
        });
        self.step(vec![Event::Judged { server, judgement }], now, fx);
    }

    /// The `[source]`'s latest judgement of a server (Prometheus, beside its agent): the core
    /// is told the worse of it and the agent's, at once and with every sample until the
    /// server's detector is reset.
    pub fn source_judged(
        &mut self,
        server: &str,
        judgement: Judgement,
        now: Now,
        fx: &mut dyn Effects,
    ) {
        let Some(judgement) = self.readings.source_judged(server, judgement) else {
            return;
        };
        let server = server.to_string();
        self.step(vec![Event::Judged { server, judgement }], now, fx);
    }

    /// An attempt at a command ended (see [`Effects::carry_out`]).
    pub fn attempted(
        &mut self,
        id: u64,
        attempt: u32,
        outcome: Attempt,
        now: Now,
        fx: &mut dyn Effects,
    ) {
        if let Some(result) = self
            .carrier
            .attempted(id, attempt, outcome, now.mono_ms, fx)
        {
            self.finish(id, result, now, fx);
        }
    }

    /// A retry's wait is over (see [`Effects::wake_at`]).
    pub fn wake(&mut self, id: u64, attempt: u32, fx: &mut dyn Effects) {
        self.carrier.wake(id, attempt, fx);
    }

    fn finish(&mut self, id: u64, result: CommandResult, now: Now, fx: &mut dyn Effects) {
        self.carrier.done(id, now.mono_ms, fx);
        self.step(vec![Event::CommandDone { id, result }], now, fx);
    }

    /// One step: apply the events (and the acknowledgements of local commands they issue),
    /// commit, publish, act.
    fn step(&mut self, events: Vec<Event>, now: Now, fx: &mut dyn Effects) {
        let finished_before = self.finished_total();
        let mut applied = Vec::with_capacity(events.len());
        let mut out = Output::default();
        let batch = events.len() > 2
            && events
                .iter()
                .all(|e| matches!(e, Event::Observed { .. } | Event::Judged { .. }));
        let mut todo: std::collections::VecDeque<Event> = if batch {
            // Samples that came together: applied together, one planning pass for all.
            applied.extend(events.iter().cloned());
            let o = self.cluster.apply_observations(&self.cfg, events, now);
            let mut todo = std::collections::VecDeque::new();
            for c in &o.commands {
                if let CommandKind::ResetDetector { server } = &c.kind {
                    self.readings.reset(server);
                    todo.push_back(Event::CommandDone {
                        id: c.id,
                        result: CommandResult::Done,
                    });
                }
            }
            out.commands.extend(o.commands);
            out.events.extend(o.events);
            todo
        } else {
            events.into()
        };
        while let Some(event) = todo.pop_front() {
            let o = self.cluster.apply(&self.cfg, event.clone(), now);
            applied.push(event);
            for c in &o.commands {
                if let CommandKind::ResetDetector { server } = &c.kind {
                    // Memory only and instant: acknowledged in the same step.
                    self.readings.reset(server);
                    todo.push_back(Event::CommandDone {
                        id: c.id,
                        result: CommandResult::Done,
                    });
                }
            }
            out.commands.extend(o.commands);
            out.events.extend(o.events);
        }
        out.commands
            .retain(|c| self.cluster.pending.contains_key(&c.id));
        let finished_n = (self.finished_total() - finished_before) as usize;
        let durable = !out.events.is_empty()
            || finished_n > 0
            || !same_but_readings(&self.published, &self.cluster);
        if durable && !self.commit(finished_n, &out, now, fx) {
            return;
        }
        self.publish(durable);
        fx.stepped(&Step {
            applied: &applied,
            cluster: &self.published,
            events: &out.events,
            commands: &out.commands,
            committed: durable,
        });
        self.dispatch(out.commands, now, fx);
    }

    /// Whether a sample of `server` is routine: it changes the server's readings and nothing
    /// else a step would act on. Its agent answered as last time (reachable, the same
    /// instances in the same states, the same running time origin and crash count), its
    /// judgement is the level it has, and the server takes part in nothing that is going on
    /// (no workflow, reservation, pending command, maintenance or request).
    ///
    /// Such a sample skips the step: no planning pass over the fleet, no durable check, no
    /// copy of the state. What it could still change, the readings a plan reads (a gate's
    /// load, a target's free memory), is read by the next step: every tick runs one. This is
    /// what keeps a step's cost from growing with the fleet for the samples that are almost
    /// all of a large fleet's traffic.
    fn routine(&self, server: &str, obs: &Observation, judgement: Option<&Judgement>) -> bool {
        let Some(s) = self.cluster.servers.get(server) else {
            return false;
        };
        let Some(last) = s.observation.as_ref() else {
            return false;
        };
        let same_instances = last.instances.len() == obs.instances.len()
            && last
                .instances
                .iter()
                .zip(&obs.instances)
                .all(|((ka, a), (kb, b))| ka == kb && a.same_but_readings(b));
        let judged_same = judgement.is_none_or(|j| {
            j.level == s.judgement
                && j.host == s.host_judgement
                && j.unstable_instances == s.unstable_instances
        });
        obs.reachable
            && last.reachable
            && s.unreachable_since_ms.is_none()
            && s.state == ServerState::InService
            && s.reserved_by.is_none()
            && !s.maintenance
            && !s.removing
            && s.manual_request.is_none()
            && s.judgement == Level::Stable
            && judged_same
            && same_instances
            && last.running_since_ms == obs.running_since_ms
            && last.crashes_total == obs.crashes_total
            && !self
                .cluster
                .workflows
                .values()
                .any(|w| w.server == server || w.target == server)
            && !self
                .cluster
                .pending
                .values()
                .any(|c| c.kind.concerns(server))
    }

    /// Takes a routine sample's readings ([`Shell::routine`]) without a step: into the working
    /// state, and into the published one when nobody else holds it (otherwise the published
    /// readings lag until [`Shell::fresh`] or the next step).
    fn take_readings(&mut self, server: &str, obs: Observation, judgement: Option<Judgement>) {
        let s = self
            .cluster
            .servers
            .get_mut(server)
            .expect("checked routine");
        if let Some(j) = judgement {
            s.explanation = j.explanation;
        }
        s.observation = Some(obs);
        match Arc::get_mut(&mut self.published) {
            Some(p) => {
                let to = p
                    .servers
                    .get_mut(server)
                    .expect("published holds every server");
                to.observation.clone_from(&s.observation);
                to.explanation.clone_from(&s.explanation);
            }
            None => self.stale = true,
        }
    }

    /// The state as of the last step with the newest readings: the published state, brought
    /// up to date if routine samples or readings-only steps left its readings behind (a copy
    /// when someone else holds it; callers that publish it elsewhere should call this
    /// sparingly on a large fleet).
    pub fn fresh(&mut self) -> &Arc<Cluster> {
        if self.stale {
            match Arc::get_mut(&mut self.published) {
                Some(p) => copy_readings(p, &self.cluster),
                None => self.published = Arc::new(self.cluster.clone()),
            }
            self.stale = false;
        }
        &self.published
    }

    /// Whether the published state's readings lag the working state's.
    pub fn readings_stale(&self) -> bool {
        self.stale
    }

    /// Makes the working state the published one. Most steps change only readings (a sample's
    /// observation and judgement): when nothing outside holds the published state (the
    /// simulators), those are patched into it instead of copying the whole cluster; a
    /// published state someone holds (the controller's API) is never changed, but replaced.
    fn publish(&mut self, durable: bool) {
        if !durable {
            match Arc::get_mut(&mut self.published) {
                Some(p) => {
                    copy_readings(p, &self.cluster);
                    debug_assert!(*p == self.cluster, "a readings-only step changed more");
                    self.stale = false;
                }
                // Someone holds the published state: rather than copy the whole cluster for
                // new readings, they wait for `fresh`.
                None => self.stale = true,
            }
            return;
        }
        self.published = Arc::new(self.cluster.clone());
        self.stale = false;
    }

    /// Commits the step; on failure restores the last published state and says so.
    fn commit(&mut self, finished_n: usize, out: &Output, now: Now, fx: &mut dyn Effects) -> bool {
        let history = &self.cluster.history;
        let finished: Vec<_> = history.iter().rev().take(finished_n).cloned().collect();
        if let Err(error) = fx.commit(&self.cluster, &out.events, &finished) {
            let first = self.health.failing_since_ms.is_none();
            self.health.commit_failures_total += 1;
            self.health.failing_since_ms.get_or_insert(now.wall_ms);
            self.health.last_error = Some(error.clone());
            self.notes.push(Note::StoreFailed { error, first });
            self.cluster = (*self.published).clone();
            return false;
        }
        if let Some(since) = self.health.failing_since_ms.take() {
            // Results that came back while commits failed were dropped with their steps:
            // their commands are still in the committed outbox, so they go again.
            let again: Vec<Command> = self
                .cluster
                .pending
                .values()
                .filter(|c| {
                    !self.carrier.is_running(c.id) && !out.commands.iter().any(|n| n.id == c.id)
                })
                .cloned()
                .collect();
            self.notes.push(Note::StoreBack {
                failing_for_ms: now.wall_ms.saturating_sub(since),
                resent: again.len(),
            });
            self.dispatch(again, now, fx);
        }
        true
    }

    fn dispatch(&mut self, commands: Vec<Command>, now: Now, fx: &mut dyn Effects) {
        for c in commands {
            if let CommandKind::ResetDetector { server } = &c.kind {
                // Left in an outbox by an older process: reset and acknowledge.
                self.readings.reset(server);
                let id = c.id;
                self.step(
                    vec![Event::CommandDone {
                        id,
                        result: CommandResult::Done,
                    }],
                    now,
                    fx,
                );
                continue;
            }
            // Advisory mode: the core issues nothing; what an older outbox holds stays
            // recorded and is not carried out.
            if self.dry_run {
                continue;
            }
            self.carrier.dispatch(c, now.mono_ms, fx);
        }
    }

    fn finished_total(&self) -> u64 {
        let c = &self.cluster;
        c.completed_total + c.rolled_back_total + c.failed_total
    }
}
