//! The cluster-wide state machine: `step(cluster, event, now) -> (cluster, output)`.
//!
//! One reducer owns the whole cluster, not one per workflow: the disruption budget, the
//! capacity floor and target reservations span workflows, and only a single reducer can keep two
//! workflows from taking the same spare.
//!
//! A workflow runs through explicit phases:
//!
//! ```text
//! plan ─▶ Duplexing ─▶ Gating ─▶ Draining ─▶ HandingOff ─▶ Rejuvenating ─▶ Verifying ─▶ rejoin
//!            │ timeout / start failed                      (stateful only)     │ failed / timeout
//!            └──▶ rolled back: target released,                                └──▶ server kept out
//!                 source keeps serving                                              (failed), alert
//! ```
//!
//! Every command the machine wants carried out is put in the outbox ([`Cluster::pending`]) in
//! the same state it returns, so a shell that commits the state commits the intent with it. A
//! command stays in the outbox until its result comes back as [`Event::CommandDone`]; after a
//! crash the shell sends every pending command again, and each one is idempotent by its id (and
//! the instance or run id it names).
//!
//! # Guarantees
//! - A source server leaves the available server list only once every one of its instances has
//!   a healthy copy on the target.
//! - No server is the target of two workflows; active workflows never exceed the budget (an
//!   operator's `force` excepted); the capacity floor holds at planning time.
//! - A failed duplex rolls back: the target's new instances are stopped, the target is released,
//!   and the source keeps serving.

use crate::api::{
    AgentState, Backend, BackendState, InstanceState, RejuvenationReport, RouteTable, ServiceRoutes,
};
use crate::config::{Config, HookWhen};
use crate::detector::{Explanation, Judgement, Level};
use crate::gate::{self, GateInput};
use crate::time::Now;
use crate::types::{InstanceId, Mode, Role, ServerId, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Finished workflows kept in the state itself (the store keeps a longer history).
const HISTORY_KEPT: usize = 64;

/// Where a server stands. Every server is in exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ServerState {
    /// On the available server list with its role.
    InService,
    /// Off the list while workflow `workflow` rejuvenates it.
    Rejuvenating { workflow: u64 },
    /// Off the list: rejuvenation failed or the server did not come back fresh.
    Failed { reason: String },
}

impl ServerState {
    pub fn name(&self) -> &'static str {
        match self {
            ServerState::InService => "in-service",
            ServerState::Rejuvenating { .. } => "rejuvenating",
            ServerState::Failed { .. } => "failed",
        }
    }
}

/// What the controller last learned from a server's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub reachable: bool,
    pub at_ms: u64,
    pub load1: f64,
    pub running_since_ms: u64,
    pub running_time_s: f64,
    pub crashes_total: u64,
    /// Where `load1` stands in the server's recent load history (fraction of past readings
    /// below it), computed by the shell from samples it keeps in memory.
    #[serde(default)]
    pub load_quantile: Option<f64>,
    /// Instances the agent reports, with whether each is healthy and where it serves.
    pub instances: BTreeMap<InstanceId, ObservedInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub state: InstanceState,
    pub healthy: bool,
    pub addr: Option<SocketAddr>,
    pub started_at_ms: Option<u64>,
}

impl Observation {
    /// Builds an observation from an agent's state reply.
    pub fn from_agent(state: &AgentState, at_ms: u64) -> Self {
        Self {
            reachable: true,
            at_ms,
            load1: state.sample.load1,
            running_since_ms: state.running_since_ms,
            running_time_s: state.sample.running_time_s,
            crashes_total: state.crashes_total,
            load_quantile: None,
            instances: state
                .instances
                .iter()
                .map(|i| {
                    (
                        i.id.clone(),
                        ObservedInstance {
                            state: i.state,
                            healthy: i.healthy,
                            addr: i.addr,
                            started_at_ms: i.started_at_ms,
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub id: ServerId,
    pub role: Role,
    pub state: ServerState,
    pub capacity: u32,
    /// Workflow that reserved this server as its target.
    pub reserved_by: Option<u64>,
    pub judgement: Level,
    pub explanation: Option<Explanation>,
    pub observation: Option<Observation>,
    /// Left alone by rejuv (neither source nor target) until released.
    pub maintenance: bool,
    /// Not chosen as a target again before this wall time (it failed to duplex).
    pub avoid_as_target_until_ms: Option<u64>,
    /// An operator asked for a rejuvenation; `true` ignores the budget.
    pub manual_request: Option<bool>,
    /// Why the last attempt to plan for this server found nothing (said once per reason).
    pub blocked_reason: Option<String>,
    /// Escalation level of the last rejuvenation (0: `rejuvenation.actions`).
    #[serde(default)]
    pub level: usize,
    /// Wall time of the last completed rejuvenation.
    #[serde(default)]
    pub last_rejuvenated_at_ms: Option<u64>,
    /// Wall time its agent stopped answering (`None` while it answers).
    #[serde(default)]
    pub unreachable_since_ms: Option<u64>,
}

impl Server {
    pub fn on_list(&self) -> bool {
        self.state == ServerState::InService
    }
    fn reachable(&self) -> bool {
        self.observation.as_ref().is_some_and(|o| o.reachable)
    }
}

/// Whether the load balancer sends an instance traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Traffic {
    /// Takes requests once healthy.
    Serving,
    /// Running but takes no requests yet (a hot copy waiting for the switch).
    Standby,
    /// Takes no new requests; in-flight ones finish.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub service: ServiceName,
    pub server: ServerId,
    pub addr: Option<SocketAddr>,
    pub healthy: bool,
    pub traffic: Traffic,
    /// The route table version from which this instance is draining.
    pub draining_from_version: Option<u64>,
    pub drained: bool,
    /// Wall time the agent confirmed it started this instance; an observation taken before
    /// that cannot show it lost.
    #[serde(default)]
    pub confirmed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Duplexing,
    Gating,
    Draining,
    HandingOff,
    Rejuvenating,
    Verifying,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Duplexing => "duplexing",
            Phase::Gating => "gating",
            Phase::Draining => "draining",
            Phase::HandingOff => "handing-off",
            Phase::Rejuvenating => "rejuvenating",
            Phase::Verifying => "verifying",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Completed,
    RolledBack { reason: String },
    Failed { reason: String },
}

/// One instance of the source and its copy on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub service: ServiceName,
    pub old: InstanceId,
    pub new: InstanceId,
    pub handoff: bool,
    pub transferred: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    pub phase: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: u64,
    pub server: ServerId,
    pub target: ServerId,
    /// Why it started: the detector's explanation, or an operator's request.
    pub reason: String,
    pub explanation: Option<Explanation>,
    pub phase: Phase,
    pub started_at_ms: u64,
    pub phase_since_ms: u64,
    pub pairs: Vec<Pair>,
    pub run_id: String,
    /// The report of the rejuvenation, once it came back.
    pub report: Option<RejuvenationReport>,
    pub gate_reason: Option<String>,
    pub steps: Vec<StepTime>,
    pub outcome: Option<Outcome>,
    pub forced: bool,
    /// Escalation level of the actions this workflow runs.
    #[serde(default)]
    pub level: usize,
    /// The strongest level already ran and the server aged again within the window: after
    /// the switch it is kept out of service for a person to look at.
    #[serde(default)]
    pub exhausted: bool,
    /// How many of `steps` have had their hooks issued (`None` in states stored before hooks
    /// existed: their past steps run no hooks).
    #[serde(default)]
    pub hooks_fired: Option<usize>,
    /// Veto hooks still running (command ids), steps whose veto hooks all passed, and the
    /// first veto.
    #[serde(default)]
    pub veto_pending: BTreeSet<u64>,
    #[serde(default)]
    pub veto_passed: Vec<String>,
    #[serde(default)]
    pub vetoed: Option<String>,
    /// Started because the source died (reactive failover), not because it aged.
    #[serde(default)]
    pub failover: bool,
}

impl Workflow {
    fn enter(&mut self, phase: Phase, now: Now) {
        self.phase = phase;
        self.phase_since_ms = now.wall_ms;
        self.steps.push(StepTime {
            phase: phase.to_string(),
            at_ms: now.wall_ms,
        });
    }
}

/// A command the shell must carry out; retried until its result comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum CommandKind {
    StartInstance {
        server: ServerId,
        instance: InstanceId,
        service: ServiceName,
    },
    StopInstance {
        server: ServerId,
        instance: InstanceId,
    },
    /// Read the state of `from` (its service's export) and write it to `to` (import).
    TransferState {
        from_server: ServerId,
        from: InstanceId,
        to_server: ServerId,
        to: InstanceId,
    },
    Rejuvenate {
        server: ServerId,
        run_id: String,
        actions: Vec<crate::config::Action>,
    },
    /// Forget the server's detector history (it was just rejuvenated).
    ResetDetector { server: ServerId },
    /// Something a person must look at; `name` is the alert's name (`alertname` label).
    Alert {
        #[serde(default)]
        name: String,
        server: Option<ServerId>,
        summary: String,
    },
    /// Run an operator's hook (see [`crate::config::HookConfig`]).
    RunHook {
        workflow: u64,
        hook: String,
        step: String,
        when: HookWhen,
        server: ServerId,
        target: ServerId,
        veto: bool,
    },
}

/// What came back from carrying out a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum CommandResult {
    Started {
        addr: Option<SocketAddr>,
    },
    Stopped,
    Transferred,
    Rejuvenated {
        report: RejuvenationReport,
    },
    Done,
    /// A hook ended: `ok` when it exited 0 within its timeout; `detail` holds its exit status,
    /// duration and the end of its output.
    HookRan {
        ok: bool,
        detail: String,
    },
    /// Will not succeed by retrying (the agent refused it, or it timed out for good).
    Failed {
        error: String,
    },
}

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum OperatorCommand {
    Rejuvenate { server: ServerId, force: bool },
    Maintenance { server: ServerId, on: bool },
    Pause,
    Resume,
}

/// Something that happened, fed to [`Cluster::step`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// An agent answered (or did not: `reachable = false`).
    Observed {
        server: ServerId,
        observation: Observation,
    },
    /// The detector's latest judgement of a server.
    Judged {
        server: ServerId,
        judgement: Judgement,
    },
    /// Time passed: timeouts, the gate, planning.
    Tick,
    CommandDone {
        id: u64,
        result: CommandResult,
    },
    /// The traffic adapter applied route table `version`; in-flight counts per instance.
    TrafficSynced {
        version: u64,
        in_flight: BTreeMap<InstanceId, u64>,
    },
    Operator {
        by: String,
        command: OperatorCommand,
    },
}

/// A line for the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    pub at_ms: u64,
    pub kind: String,
    pub server: Option<ServerId>,
    pub workflow: Option<u64>,
    pub message: String,
}

/// What one step produced besides the new state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Commands added to the outbox by this step, to carry out once the state is committed.
    pub commands: Vec<Command>,
    pub events: Vec<LogEvent>,
}

/// Why an operator's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refusal {
    #[error("no server named '{0}'")]
    UnknownServer(String),
    #[error("server '{0}' is already being rejuvenated")]
    Busy(String),
    #[error("server '{0}' is in maintenance")]
    InMaintenance(String),
    #[error("server '{0}' is a spare: spares run nothing to rejuvenate")]
    Spare(String),
    #[error("server '{0}' failed ({1}); check it, then release it with `maintenance off`")]
    Failed(String, String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub mode: Mode,
    pub servers: BTreeMap<ServerId, Server>,
    pub instances: BTreeMap<InstanceId, Instance>,
    pub workflows: BTreeMap<u64, Workflow>,
    pub history: Vec<Workflow>,
    /// The outbox: commands issued and not yet acknowledged.
    pub pending: BTreeMap<u64, Command>,
    pub paused: bool,
    /// Version of the route table as this state defines it.
    pub routes_version: u64,
    pub routes: RouteTable,
    pub next_id: u64,
    pub completed_total: u64,
    pub rolled_back_total: u64,
    pub failed_total: u64,
    /// Wall time the last workflow completed (for the cluster-wide cooldown).
    #[serde(default)]
    pub last_completed_at_ms: Option<u64>,
    /// Advisory mode (`controller --dry-run`): judge and plan, start no workflow, carry out
    /// no command; events say what would have been done.
    #[serde(default)]
    pub advisory: bool,
    /// Fewer than a majority of agents answer: no workflow starts (said and alerted once).
    #[serde(default)]
    pub quorum_lost: bool,
    /// Workflows after which a server was kept out because escalation was exhausted.
    #[serde(default)]
    pub exhausted_total: u64,
    /// What advisory mode already said it would do (so a repeated plan is said once).
    #[serde(skip)]
    advised: BTreeSet<String>,
}

/// `step(cluster, event, now) -> (cluster, output)`.
pub fn step(mut cluster: Cluster, cfg: &Config, event: Event, now: Now) -> (Cluster, Output) {
    let out = cluster.apply(cfg, event, now);
    (cluster, out)
}

impl Cluster {
    /// A new cluster from the config: servers with their roles, and the initial instances
    /// asked of the primaries.
    pub fn new(cfg: &Config, now: Now) -> (Self, Output) {
        let mut c = Cluster {
            mode: cfg.cluster.mode,
            servers: BTreeMap::new(),
            instances: BTreeMap::new(),
            workflows: BTreeMap::new(),
            history: Vec::new(),
            pending: BTreeMap::new(),
            paused: false,
            advisory: false,
            quorum_lost: false,
            exhausted_total: 0,
            advised: BTreeSet::new(),
            routes_version: 1,
            routes: RouteTable {
                version: 1,
                services: BTreeMap::new(),
            },
            next_id: 1,
            completed_total: 0,
            rolled_back_total: 0,
            failed_total: 0,
            last_completed_at_ms: None,
        };
        let mut out = Output::default();
        for s in &cfg.servers {
            c.servers.insert(
                s.id.clone(),
                Server {
                    id: s.id.clone(),
                    role: s.role,
                    state: ServerState::InService,
                    capacity: s.capacity,
                    reserved_by: None,
                    judgement: Level::Stable,
                    explanation: None,
                    observation: None,
                    maintenance: false,
                    avoid_as_target_until_ms: None,
                    manual_request: None,
                    blocked_reason: None,
                    level: 0,
                    last_rejuvenated_at_ms: None,
                    unreachable_since_ms: None,
                },
            );
            for svc in &s.instances {
                let id = c.new_instance_id(svc, &s.id);
                c.instances.insert(
                    id.clone(),
                    Instance {
                        id: id.clone(),
                        service: svc.clone(),
                        server: s.id.clone(),
                        addr: None,
                        healthy: false,
                        traffic: Traffic::Serving,
                        draining_from_version: None,
                        drained: false,
                        confirmed_at_ms: None,
                    },
                );
                c.issue(
                    &mut out,
                    CommandKind::StartInstance {
                        server: s.id.clone(),
                        instance: id,
                        service: svc.clone(),
                    },
                );
            }
        }
        c.log(
            &mut out,
            now,
            "cluster-created",
            None,
            None,
            format!(
                "{} cluster with {} servers",
                cfg.cluster.mode,
                cfg.servers.len()
            ),
        );
        c.refresh_routes(cfg);
        (c, out)
    }

    /// Removes an instance from the cluster together with any start of it still in the
    /// outbox, so no retry brings it back.
    fn forget_instance(&mut self, id: &str) -> Option<Instance> {
        self.pending.retain(|_, c| {
            !matches!(&c.kind, CommandKind::StartInstance { instance, .. } if instance == id)
        });
        self.instances.remove(id)
    }

    fn new_instance_id(&mut self, service: &str, server: &str) -> InstanceId {
        let id = format!("{service}-{server}-{}", self.next_id);
        self.next_id += 1;
        id
    }

    fn issue(&mut self, out: &mut Output, kind: CommandKind) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let cmd = Command { id, kind };
        self.pending.insert(id, cmd.clone());
        out.commands.push(cmd);
        id
    }

    fn log(
        &self,
        out: &mut Output,
        now: Now,
        kind: &str,
        server: Option<&str>,
        workflow: Option<u64>,
        message: String,
    ) {
        out.events.push(LogEvent {
            at_ms: now.wall_ms,
            kind: kind.to_string(),
            server: server.map(str::to_string),
            workflow,
            message,
        });
    }

    /// Applies one event. See the module docs for the phases.
    pub fn apply(&mut self, cfg: &Config, event: Event, now: Now) -> Output {
        let mut out = Output::default();
        match event {
            Event::Observed {
                server,
                observation,
            } => self.on_observed(cfg, &server, observation, now, &mut out),
            Event::Judged { server, judgement } => {
                self.on_judged(&server, judgement, now, &mut out)
            }
            Event::Tick => {}
            Event::CommandDone { id, result } => {
                self.on_command_done(cfg, id, result, now, &mut out)
            }
            Event::TrafficSynced { version, in_flight } => {
                self.on_traffic_synced(version, &in_flight)
            }
            Event::Operator { by, command } => {
                // Refusals are reported by `check_operator` before the event is applied;
                // here the request is carried out.
                self.on_operator(&by, command, now, &mut out);
            }
        }
        self.settle(cfg, now, &mut out);
        self.refresh_routes(cfg);
        self.fire_hooks(cfg, &mut out);
        if self.advisory {
            self.say_instead_of_doing(now, &mut out);
        }
        out
    }

    /// Issues the hooks of every step a workflow entered since the last look: `after` hooks
    /// of the step it left, `before` hooks of the step it entered (veto hooks excepted: the
    /// workflow runs those itself and waits for them).
    fn fire_hooks(&mut self, cfg: &Config, out: &mut Output) {
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
                let entered = w.steps[i].phase.as_str();
                let mut points = Vec::new();
                if i > 0 {
                    points.push((HookWhen::After, w.steps[i - 1].phase.clone()));
                }
                match entered {
                    "rejoined" => {
                        points.push((HookWhen::Before, "rejoin".to_string()));
                        points.push((HookWhen::After, "rejoin".to_string()));
                    }
                    "rolled-back" | "failed" => {}
                    phase => points.push((HookWhen::Before, phase.to_string())),
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
    fn veto_gate(
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
            "hook",
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

    /// Advisory mode: the commands this step issued are not carried out; the event log says
    /// what would have been done (each distinct thing once).
    fn say_instead_of_doing(&mut self, now: Now, out: &mut Output) {
        for cmd in std::mem::take(&mut out.commands) {
            self.pending.remove(&cmd.id);
            let said = describe_command(&cmd.kind);
            if self.advised.len() > 10_000 {
                self.advised.clear();
            }
            if self.advised.insert(said.clone()) {
                let server = command_server(&cmd.kind);
                self.log(
                    out,
                    now,
                    "dry-run",
                    server.as_deref(),
                    None,
                    format!("dry run: would {said}"),
                );
            }
        }
    }

    /// Whether an operator's command fits the current state.
    pub fn check_operator(&self, command: &OperatorCommand) -> Result<(), Refusal> {
        match command {
            OperatorCommand::Rejuvenate { server, .. } => {
                let s = self
                    .servers
                    .get(server)
                    .ok_or_else(|| Refusal::UnknownServer(server.clone()))?;
                if s.maintenance {
                    return Err(Refusal::InMaintenance(server.clone()));
                }
                if let ServerState::Failed { reason } = &s.state {
                    return Err(Refusal::Failed(server.clone(), reason.clone()));
                }
                // A request for a workflow still waiting at the gate opens the gate; one that
                // has switched already has nothing left to ask for.
                if self.workflows.values().any(|w| {
                    &w.server == server && !matches!(w.phase, Phase::Duplexing | Phase::Gating)
                }) {
                    return Err(Refusal::Busy(server.clone()));
                }
                if s.role == Role::Spare {
                    return Err(Refusal::Spare(server.clone()));
                }
                Ok(())
            }
            OperatorCommand::Maintenance { server, .. } => self
                .servers
                .get(server)
                .map(|_| ())
                .ok_or_else(|| Refusal::UnknownServer(server.clone())),
            OperatorCommand::Pause | OperatorCommand::Resume => Ok(()),
        }
    }

    fn on_operator(&mut self, by: &str, command: OperatorCommand, now: Now, out: &mut Output) {
        if let Err(refusal) = self.check_operator(&command) {
            self.log(
                out,
                now,
                "operator-refused",
                None,
                None,
                format!("{by}: {refusal}"),
            );
            return;
        }
        match command {
            OperatorCommand::Rejuvenate { server, force } => {
                if let Some(s) = self.servers.get_mut(&server) {
                    s.manual_request = Some(force);
                }
                self.log(
                    out,
                    now,
                    "operator",
                    Some(&server),
                    None,
                    format!(
                        "{by} asked to rejuvenate {server}{}",
                        if force {
                            " (force: budget ignored)"
                        } else {
                            ""
                        }
                    ),
                );
            }
            OperatorCommand::Maintenance { server, on } => {
                let back_role = match self.mode {
                    Mode::ActiveStandby => Role::Spare,
                    Mode::ActiveActive => Role::Primary,
                };
                if let Some(s) = self.servers.get_mut(&server) {
                    s.maintenance = on;
                    if on {
                        s.manual_request = None;
                    } else if matches!(s.state, ServerState::Failed { .. }) {
                        // Released by a person who looked at it: back on the list, empty,
                        // judged afresh.
                        s.state = ServerState::InService;
                        s.role = back_role;
                        s.judgement = Level::Stable;
                        s.explanation = None;
                        self.issue(
                            out,
                            CommandKind::ResetDetector {
                                server: server.clone(),
                            },
                        );
                    }
                }
                self.log(
                    out,
                    now,
                    "operator",
                    Some(&server),
                    None,
                    format!(
                        "{by} turned maintenance {} for {server}",
                        if on { "on" } else { "off" }
                    ),
                );
            }
            OperatorCommand::Pause => {
                self.paused = true;
                self.log(
                    out,
                    now,
                    "operator",
                    None,
                    None,
                    format!("{by} paused rejuv: no new workflow starts; running ones finish"),
                );
            }
            OperatorCommand::Resume => {
                self.paused = false;
                self.log(
                    out,
                    now,
                    "operator",
                    None,
                    None,
                    format!("{by} resumed rejuv"),
                );
            }
        }
    }

    fn on_observed(
        &mut self,
        _cfg: &Config,
        server: &str,
        obs: Observation,
        now: Now,
        out: &mut Output,
    ) {
        let Some(s) = self.servers.get_mut(server) else {
            return;
        };
        let was_reachable = s.reachable();
        if obs.reachable {
            s.unreachable_since_ms = None;
        } else if s.unreachable_since_ms.is_none() {
            s.unreachable_since_ms = Some(now.wall_ms);
        }
        if obs.reachable != was_reachable && s.observation.is_some() {
            let msg = if obs.reachable {
                "agent reachable again"
            } else {
                "agent unreachable"
            };
            out.events.push(LogEvent {
                at_ms: now.wall_ms,
                kind: "agent".into(),
                server: Some(server.to_string()),
                workflow: None,
                message: msg.into(),
            });
        }
        if obs.reachable {
            for inst in self.instances.values_mut().filter(|i| i.server == server) {
                match obs.instances.get(&inst.id) {
                    Some(o) => {
                        if o.addr.is_some() {
                            inst.addr = o.addr;
                        }
                        inst.healthy = o.healthy && o.state == InstanceState::Running;
                    }
                    None => inst.healthy = false,
                }
            }
            s.observation = Some(obs);
        } else {
            for inst in self.instances.values_mut().filter(|i| i.server == server) {
                inst.healthy = false;
            }
            match &mut s.observation {
                Some(o) => {
                    o.reachable = false;
                    o.at_ms = obs.at_ms;
                }
                None => s.observation = Some(obs),
            }
        }
        // An instance the server should run but that its agent does not know (the agent lost
        // it, e.g. its host restarted) is started again, unless a start is already pending.
        let s = &self.servers[server];
        if let Some(o) = s.observation.as_ref().filter(|o| o.reachable) {
            let missing: Vec<(InstanceId, ServiceName)> = self
                .instances
                .values()
                .filter(|i| i.server == server && i.traffic != Traffic::Draining)
                .filter(|i| !o.instances.contains_key(&i.id))
                .filter(|i| i.confirmed_at_ms.is_none_or(|t| o.at_ms >= t))
                .filter(|i| {
                    !self.pending.values().any(|c| {
                        matches!(&c.kind, CommandKind::StartInstance { instance, .. } if instance == &i.id)
                    })
                })
                .map(|i| (i.id.clone(), i.service.clone()))
                .collect();
            for (id, service) in missing {
                self.log(
                    out,
                    now,
                    "instance-lost",
                    Some(server),
                    None,
                    format!("agent does not run {id}: starting it again"),
                );
                self.issue(
                    out,
                    CommandKind::StartInstance {
                        server: server.to_string(),
                        instance: id,
                        service,
                    },
                );
            }
        }
    }

    fn on_judged(&mut self, server: &str, j: Judgement, now: Now, out: &mut Output) {
        let Some(s) = self.servers.get_mut(server) else {
            return;
        };
        let changed = s.judgement != j.level;
        s.judgement = j.level;
        s.explanation = j.explanation.clone();
        if changed {
            let msg = match &j.explanation {
                Some(e) => format!("judged {}: {}", j.level, e.message),
                None => format!("judged {}", j.level),
            };
            self.log(out, now, "judgement", Some(server), None, msg);
        }
    }

    fn on_command_done(
        &mut self,
        cfg: &Config,
        id: u64,
        result: CommandResult,
        now: Now,
        out: &mut Output,
    ) {
        let Some(cmd) = self.pending.remove(&id) else {
            return;
        };
        match (&cmd.kind, result) {
            (
                CommandKind::RunHook {
                    workflow,
                    hook,
                    step,
                    when,
                    server,
                    veto,
                    ..
                },
                result,
            ) => {
                let (ok, detail) = match result {
                    CommandResult::HookRan { ok, detail } => (ok, detail),
                    CommandResult::Failed { error } => (false, error),
                    other => (false, format!("unexpected result {other:?}")),
                };
                self.log(
                    out,
                    now,
                    "hook",
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
            (CommandKind::StartInstance { instance, .. }, CommandResult::Started { addr }) => {
                if let Some(i) = self.instances.get_mut(instance) {
                    if addr.is_some() {
                        i.addr = addr;
                    }
                    i.confirmed_at_ms = Some(now.wall_ms);
                }
            }
            (
                CommandKind::StartInstance {
                    server, instance, ..
                },
                CommandResult::Failed { error },
            ) => {
                let wf = self.workflow_of_new_instance(instance);
                self.log(
                    out,
                    now,
                    "command-failed",
                    Some(server),
                    wf,
                    format!("start {instance}: {error}"),
                );
                if let Some(w) = wf {
                    self.roll_back(
                        cfg,
                        w,
                        format!("starting {instance} on {server} failed: {error}"),
                        now,
                        out,
                    );
                }
            }
            (CommandKind::TransferState { to, .. }, CommandResult::Transferred) => {
                for w in self.workflows.values_mut() {
                    for p in w.pairs.iter_mut().filter(|p| &p.new == to) {
                        p.transferred = true;
                    }
                }
                if let Some(i) = self.instances.get_mut(to) {
                    i.traffic = Traffic::Serving;
                }
            }
            (CommandKind::TransferState { from, to, .. }, CommandResult::Failed { error }) => {
                // The old instance is frozen or gone; the new one serves without the state
                // rather than not at all, and a person is told.
                self.log(
                    out,
                    now,
                    "handoff-failed",
                    None,
                    None,
                    format!(
                        "moving state {from} -> {to} failed: {error}; serving from {to} without it"
                    ),
                );
                for w in self.workflows.values_mut() {
                    for p in w.pairs.iter_mut().filter(|p| &p.new == to) {
                        p.transferred = true;
                    }
                }
                if let Some(i) = self.instances.get_mut(to) {
                    i.traffic = Traffic::Serving;
                }
                self.issue(
                    out,
                    CommandKind::Alert {
                        name: "RejuvHandoffFailed".into(),
                        server: None,
                        summary: format!("state hand-off {from} -> {to} failed: {error}"),
                    },
                );
            }
            (
                CommandKind::Rejuvenate { server, run_id, .. },
                CommandResult::Rejuvenated { report },
            ) => {
                let Some(w) = self.workflows.values_mut().find(|w| &w.run_id == run_id) else {
                    return;
                };
                let wid = w.id;
                if let Some(failed) = report.failed().cloned() {
                    let reason = format!("action {} failed: {}", failed.action, failed.detail);
                    w.report = Some(report);
                    self.fail(wid, reason, now, out);
                    return;
                }
                let summary: Vec<String> = report
                    .actions
                    .iter()
                    .map(|a| format!("{} {:?}", a.action, a.outcome).to_lowercase())
                    .collect();
                w.report = Some(report);
                w.enter(Phase::Verifying, now);
                let server = server.clone();
                let gone: Vec<InstanceId> = self
                    .instances
                    .values()
                    .filter(|i| i.server == server && i.traffic == Traffic::Draining)
                    .map(|i| i.id.clone())
                    .collect();
                for id in gone {
                    // A start still on its way (e.g. after the agent lost the instance) would
                    // leave a copy nobody tracks: it is followed by a stop.
                    let starting = self.pending.values().any(|c| {
                        matches!(&c.kind, CommandKind::StartInstance { instance, .. } if instance == &id)
                    });
                    if let Some(i) = self.forget_instance(&id) {
                        if starting {
                            self.issue(
                                out,
                                CommandKind::StopInstance {
                                    server: i.server,
                                    instance: i.id,
                                },
                            );
                        }
                    }
                }
                self.log(
                    out,
                    now,
                    "step",
                    Some(&server),
                    Some(wid),
                    format!(
                        "rejuvenated ({}); verifying it is fresh",
                        summary.join(", ")
                    ),
                );
            }
            (
                CommandKind::Rejuvenate {
                    server,
                    run_id,
                    actions,
                },
                CommandResult::Failed { error },
            ) => {
                let Some(w) = self.workflows.values().find(|w| &w.run_id == run_id) else {
                    return;
                };
                let wid = w.id;
                let still_away = !self.servers[server].reachable();
                if self.servers[server].maintenance {
                    self.evacuated(wid, now, out);
                } else if w.failover && still_away {
                    // A dead server is rejuvenated when it comes back, before it rejoins:
                    // ask again (the agent's run id makes a repeat harmless).
                    if w.report.is_none() && !w.steps.iter().any(|s| s.phase == "waiting") {
                        self.log(
                            out,
                            now,
                            "step",
                            Some(server),
                            Some(wid),
                            format!("{server} is still unreachable: it will be rejuvenated when it answers again"),
                        );
                    }
                    let kind = CommandKind::Rejuvenate {
                        server: server.clone(),
                        run_id: run_id.clone(),
                        actions: actions.clone(),
                    };
                    self.issue(out, kind);
                } else {
                    self.fail(wid, format!("rejuvenation failed: {error}"), now, out);
                }
            }
            (CommandKind::StopInstance { server, instance }, CommandResult::Failed { error }) => {
                self.log(
                    out,
                    now,
                    "command-failed",
                    Some(server),
                    None,
                    format!("stop {instance}: {error}"),
                );
            }
            _ => {}
        }
    }

    fn on_traffic_synced(&mut self, version: u64, in_flight: &BTreeMap<InstanceId, u64>) {
        for i in self.instances.values_mut() {
            if i.traffic == Traffic::Draining && !i.drained {
                if let Some(from) = i.draining_from_version {
                    if version >= from && in_flight.get(&i.id).copied().unwrap_or(0) == 0 {
                        i.drained = true;
                    }
                }
            }
        }
    }

    fn workflow_of_new_instance(&self, instance: &str) -> Option<u64> {
        self.workflows
            .values()
            .find(|w| w.pairs.iter().any(|p| p.new == instance))
            .map(|w| w.id)
    }

    /// Moves every workflow as far as the state allows, then plans new ones.
    fn advance(&mut self, cfg: &Config, now: Now, out: &mut Output) {
        let ids: Vec<u64> = self.workflows.keys().copied().collect();
        for id in ids {
            // A workflow may move several phases in one step (e.g. a stateless drain that
            // finishes as soon as the table is applied); bound the loop by the phase count.
            for _ in 0..8 {
                let Some(before) = self.workflows.get(&id).map(|w| w.phase) else {
                    break;
                };
                self.advance_workflow(cfg, id, now, out);
                if self.workflows.get(&id).map(|w| w.phase) == Some(before) {
                    break;
                }
            }
        }
    }

    /// Moves workflows, plans new ones, and moves those too, until nothing changes.
    fn settle(&mut self, cfg: &Config, now: Now, out: &mut Output) {
        for _ in 0..4 {
            self.advance(cfg, now, out);
            let before = self.workflows.len();
            self.plan(cfg, now, out);
            if self.workflows.len() == before {
                break;
            }
        }
    }

    fn advance_workflow(&mut self, cfg: &Config, id: u64, now: Now, out: &mut Output) {
        let Some(w) = self.workflows.get(&id) else {
            return;
        };
        let since = now.wall_ms.saturating_sub(w.phase_since_ms);
        let server = w.server.clone();
        let target = w.target.clone();
        match w.phase {
            Phase::Duplexing => {
                let all_healthy = w.pairs.iter().all(|p| {
                    self.instances
                        .get(&p.new)
                        .is_some_and(|i| i.healthy && i.addr.is_some())
                });
                if all_healthy {
                    let n = w.pairs.len();
                    let w = self.workflows.get_mut(&id).expect("present");
                    w.enter(Phase::Gating, now);
                    self.log(
                        out,
                        now,
                        "step",
                        Some(&server),
                        Some(id),
                        format!(
                            "duplexed: {n} instance(s) healthy on {target}; the replacement is hot"
                        ),
                    );
                    self.advance_workflow(cfg, id, now, out);
                } else if u128::from(since) >= cfg.rejuvenation.duplex_timeout.as_millis() {
                    self.roll_back(
                        cfg,
                        id,
                        format!(
                            "instances on {target} not healthy within {:?}",
                            cfg.rejuvenation.duplex_timeout
                        ),
                        now,
                        out,
                    );
                }
            }
            Phase::Gating => {
                // A copy that fell unhealthy while waiting is not switched to.
                let copies_ok = w
                    .pairs
                    .iter()
                    .all(|p| self.instances.get(&p.new).is_some_and(|i| i.healthy));
                let s = &self.servers[&server];
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
                    decision = gate::GateDecision::Now {
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
                    decision = gate::GateDecision::Now {
                        reason: "the source is down: failing over to the hot copy".into(),
                    };
                }
                if !copies_ok {
                    // Back to duplexing: the copy gets the duplex timeout to recover, after
                    // which the workflow rolls back and releases the target.
                    let w = self.workflows.get_mut(&id).expect("present");
                    w.enter(Phase::Duplexing, now);
                    self.log(
                        out,
                        now,
                        "step",
                        Some(&server),
                        Some(id),
                        format!("a copy on {target} is no longer healthy; duplexing again"),
                    );
                    return;
                }
                // Servers may have died since the workflow started: a switch that would now
                // break the capacity floor waits (a failover or an operator's force does not).
                let gain = match self.mode {
                    Mode::ActiveStandby => self.servers.get(&target).map_or(0, |t| t.capacity),
                    Mode::ActiveActive => 0,
                };
                let after = self.available_capacity() + gain;
                if decision.is_now()
                    && !source_down
                    && !w.failover
                    && !w.forced
                    && !s.maintenance
                    && after < cfg.budget.min_available_capacity
                {
                    let reason = format!(
                        "the capacity floor would be broken ({after} < {} units)",
                        cfg.budget.min_available_capacity
                    );
                    if u128::from(since) >= cfg.gate.max_wait.as_millis() {
                        // Capacity lost elsewhere is not coming back soon: free the target.
                        self.roll_back(cfg, id, reason, now, out);
                        return;
                    }
                    decision = gate::GateDecision::Wait { reason };
                }
                let reason = decision.reason().to_string();
                let changed = w.gate_reason.as_deref() != Some(reason.as_str());
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
                            "gate",
                            Some(&server),
                            Some(id),
                            format!("waiting: {reason}"),
                        );
                    }
                    self.workflows.get_mut(&id).expect("present").gate_reason = Some(reason);
                }
            }
            Phase::Draining => {
                let drain_limit = w
                    .pairs
                    .iter()
                    .filter_map(|p| cfg.services.get(&p.service))
                    .map(|s| s.drain)
                    .max()
                    .unwrap_or_default();
                let all_drained = w
                    .pairs
                    .iter()
                    .all(|p| self.instances.get(&p.old).is_none_or(|i| i.drained));
                let timed_out = u128::from(since) >= drain_limit.as_millis();
                if all_drained || timed_out {
                    if !all_drained {
                        self.log(
                            out,
                            now,
                            "drain-timeout",
                            Some(&server),
                            Some(id),
                            format!(
                                "in-flight requests still running after {drain_limit:?}; going on"
                            ),
                        );
                    }
                    let handoffs: Vec<Pair> = w
                        .pairs
                        .iter()
                        .filter(|p| p.handoff && !p.transferred)
                        .cloned()
                        .collect();
                    let w = self.workflows.get_mut(&id).expect("present");
                    if handoffs.is_empty() {
                        self.start_rejuvenation(cfg, id, now, out);
                    } else {
                        w.enter(Phase::HandingOff, now);
                        self.log(
                            out,
                            now,
                            "step",
                            Some(&server),
                            Some(id),
                            format!(
                                "drained; moving the state of {} instance(s) to {target}",
                                handoffs.len()
                            ),
                        );
                        for p in handoffs {
                            self.issue(
                                out,
                                CommandKind::TransferState {
                                    from_server: server.clone(),
                                    from: p.old.clone(),
                                    to_server: target.clone(),
                                    to: p.new.clone(),
                                },
                            );
                        }
                    }
                }
            }
            Phase::HandingOff => {
                if w.pairs.iter().all(|p| !p.handoff || p.transferred) {
                    self.start_rejuvenation(cfg, id, now, out);
                }
            }
            Phase::Rejuvenating => {}
            Phase::Verifying => {
                let w = &self.workflows[&id];
                let fresh = self.servers[&server].observation.as_ref().is_some_and(|o| {
                    o.reachable
                        && w.report
                            .as_ref()
                            .is_some_and(|r| o.running_since_ms >= r.started_at_ms)
                        && w.pairs.iter().all(|p| !o.instances.contains_key(&p.old))
                });
                if fresh {
                    match self.veto_gate(cfg, id, "rejoin", now, out) {
                        VetoGate::Passed => self.complete(cfg, id, now, out),
                        VetoGate::Waiting => {}
                        VetoGate::Vetoed(why) => self.fail(id, why, now, out),
                    }
                } else if u128::from(since) >= cfg.rejuvenation.verify_timeout.as_millis() {
                    self.fail(
                        id,
                        format!(
                            "did not come back fresh within {:?}",
                            cfg.rejuvenation.verify_timeout
                        ),
                        now,
                        out,
                    );
                }
            }
        }
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
        for (old, new) in &lost {
            self.log(
                out,
                now,
                "handoff-skipped",
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
            }
        }
        if let Some(s) = self.servers.get_mut(&server) {
            s.state = ServerState::Rejuvenating { workflow: id };
        }
        if self.mode == Mode::ActiveStandby {
            if let Some(t) = self.servers.get_mut(&target) {
                t.role = Role::Primary;
            }
        }
        self.log(
            out,
            now,
            "step",
            Some(&server),
            Some(id),
            format!(
            "gate open ({gate_reason}): {server} off the list, {target} takes its traffic; draining"
        ),
        );
    }

    fn start_rejuvenation(&mut self, cfg: &Config, id: u64, now: Now, out: &mut Output) {
        let source = self.workflows[&id].server.clone();
        if self.servers[&source].maintenance {
            // In maintenance (asked before or during the workflow): its instances have moved,
            // it is left alone, out of service, until an operator releases it.
            self.evacuated(id, now, out);
            return;
        }
        let w = self.workflows.get_mut(&id).expect("present");
        w.enter(Phase::Rejuvenating, now);
        let server = w.server.clone();
        let run_id = w.run_id.clone();
        let actions = cfg.rejuvenation.level(w.level).to_vec();
        let names: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        self.log(
            out,
            now,
            "step",
            Some(&server),
            Some(id),
            format!("rejuvenating: {}", names.join(", ")),
        );
        self.issue(
            out,
            CommandKind::Rejuvenate {
                server,
                run_id,
                actions,
            },
        );
    }

    fn complete(&mut self, cfg: &Config, id: u64, now: Now, out: &mut Output) {
        let Some(mut w) = self.workflows.remove(&id) else {
            return;
        };
        w.steps.push(StepTime {
            phase: "rejoined".into(),
            at_ms: now.wall_ms,
        });
        w.outcome = Some(Outcome::Completed);
        let role = match self.mode {
            Mode::ActiveStandby => Role::Spare,
            Mode::ActiveActive => Role::Primary,
        };
        self.last_completed_at_ms = Some(now.wall_ms);
        if w.exhausted {
            let reason = format!(
                "escalation exhausted: aged again within {:?} of its strongest rejuvenation",
                cfg.rejuvenation.escalation_window
            );
            self.keep_out(&w, &reason);
            if let Some(s) = self.servers.get_mut(&w.server) {
                s.last_rejuvenated_at_ms = Some(now.wall_ms);
                s.level = w.level;
            }
            self.log(
                out,
                now,
                "escalation-exhausted",
                Some(&w.server),
                Some(id),
                format!(
                    "{}: {reason}; kept out of service until an operator releases it",
                    w.server
                ),
            );
            self.issue(
                out,
                CommandKind::Alert {
                    name: "RejuvEscalationExhausted".into(),
                    server: Some(w.server.clone()),
                    summary: format!("{} {reason}", w.server),
                },
            );
            self.exhausted_total += 1;
            self.completed_total += 1;
            self.finish(w);
            return;
        }
        if self.servers[&w.server].maintenance {
            // Rejuvenated, but an operator holds it: it rejoins when they release it.
            self.keep_out(
                &w,
                "rejuvenated while in maintenance: turn maintenance off to release it",
            );
            if let Some(s) = self.servers.get_mut(&w.server) {
                s.last_rejuvenated_at_ms = Some(now.wall_ms);
                s.role = role;
            }
            self.issue(
                out,
                CommandKind::ResetDetector {
                    server: w.server.clone(),
                },
            );
            self.log(
                out,
                now,
                "workflow-completed",
                Some(&w.server),
                Some(id),
                format!(
                    "{} is fresh and stays out of service: it is in maintenance",
                    w.server
                ),
            );
            self.completed_total += 1;
            self.finish(w);
            return;
        }
        if let Some(s) = self.servers.get_mut(&w.server) {
            s.last_rejuvenated_at_ms = Some(now.wall_ms);
            s.level = w.level;
            s.state = ServerState::InService;
            s.role = role;
            s.manual_request = None;
            s.judgement = Level::Stable;
            s.explanation = None;
            s.blocked_reason = None;
        }
        self.release_target(&w.target, id);
        self.issue(
            out,
            CommandKind::ResetDetector {
                server: w.server.clone(),
            },
        );
        let secs = now.wall_ms.saturating_sub(w.started_at_ms) as f64 / 1000.0;
        self.log(
            out,
            now,
            "workflow-completed",
            Some(&w.server),
            Some(id),
            format!(
                "{} is fresh and back on the list as {role} ({secs:.1}s end to end)",
                w.server
            ),
        );
        self.completed_total += 1;
        self.finish(w);
    }

    /// Takes a workflow's server out of service (failed, for a person to look at) and frees
    /// its target.
    fn keep_out(&mut self, w: &Workflow, reason: &str) {
        if let Some(s) = self.servers.get_mut(&w.server) {
            s.state = ServerState::Failed {
                reason: reason.to_string(),
            };
            s.manual_request = None;
        }
        self.release_target(&w.target, w.id);
    }

    /// Frees `target` if workflow `id` holds it.
    fn release_target(&mut self, target: &str, id: u64) {
        if let Some(t) = self.servers.get_mut(target) {
            if t.reserved_by == Some(id) {
                t.reserved_by = None;
            }
        }
    }

    fn finish(&mut self, w: Workflow) {
        self.history.push(w);
        if self.history.len() > HISTORY_KEPT {
            let extra = self.history.len() - HISTORY_KEPT;
            self.history.drain(..extra);
        }
    }

    /// Undoes a workflow that has not switched yet: the copies are stopped, the target is
    /// released and kept from being chosen again for a while; the source keeps serving.
    fn roll_back(&mut self, cfg: &Config, id: u64, reason: String, now: Now, out: &mut Output) {
        let Some(w) = self.workflows.get(&id) else {
            return;
        };
        if !matches!(w.phase, Phase::Duplexing | Phase::Gating) {
            // Past the switch there is nothing to undo: the copies serve.
            return;
        }
        let mut w = self.workflows.remove(&id).expect("present");
        for p in &w.pairs {
            // A start still in the outbox for a copy being removed must not be retried; the
            // shell carries out commands for one instance in order, so the stop comes after
            // any start already on its way.
            if let Some(i) = self.forget_instance(&p.new) {
                self.issue(
                    out,
                    CommandKind::StopInstance {
                        server: i.server,
                        instance: i.id,
                    },
                );
            }
        }
        if let Some(t) = self.servers.get_mut(&w.target) {
            if t.reserved_by == Some(id) {
                t.reserved_by = None;
            }
            t.avoid_as_target_until_ms =
                Some(now.wall_ms + cfg.rejuvenation.failed_target_cooldown.as_millis() as u64);
        }
        w.outcome = Some(Outcome::RolledBack {
            reason: reason.clone(),
        });
        w.steps.push(StepTime {
            phase: "rolled-back".into(),
            at_ms: now.wall_ms,
        });
        self.log(
            out,
            now,
            "workflow-rolled-back",
            Some(&w.server),
            Some(id),
            format!(
                "{reason}; {} keeps serving, {} is released",
                w.server, w.target
            ),
        );
        self.issue(
            out,
            CommandKind::Alert {
                name: "RejuvWorkflowRolledBack".into(),
                server: Some(w.server.clone()),
                summary: format!("workflow {id} for {} rolled back: {reason}", w.server),
            },
        );
        self.rolled_back_total += 1;
        self.finish(w);
    }

    /// Ends a workflow whose source went into maintenance, once its copies serve: the source is
    /// out of service (not rejuvenated) until an operator turns maintenance off.
    fn evacuated(&mut self, id: u64, now: Now, out: &mut Output) {
        let Some(mut w) = self.workflows.remove(&id) else {
            return;
        };
        self.stop_drained(&w.server, out);
        self.keep_out(&w, "in maintenance: turn maintenance off to release it");
        w.outcome = Some(Outcome::Completed);
        w.steps.push(StepTime {
            phase: "evacuated".into(),
            at_ms: now.wall_ms,
        });
        self.log(
            out,
            now,
            "workflow-completed",
            Some(&w.server),
            Some(id),
            format!(
                "{}'s instances serve from {}; {} is out of service for maintenance, not rejuvenated",
                w.server, w.target, w.server
            ),
        );
        self.completed_total += 1;
        self.finish(w);
    }

    /// Forgets and stops the source's draining instances (their copies serve).
    fn stop_drained(&mut self, server: &str, out: &mut Output) {
        let leftovers: Vec<(ServerId, InstanceId)> = self
            .instances
            .values()
            .filter(|i| i.server == server && i.traffic == Traffic::Draining)
            .map(|i| (i.server.clone(), i.id.clone()))
            .collect();
        for (server, instance) in leftovers {
            self.forget_instance(&instance);
            self.issue(out, CommandKind::StopInstance { server, instance });
        }
    }

    /// A workflow past its switch failed: the source stays off the list, a person is alerted.
    fn fail(&mut self, id: u64, reason: String, now: Now, out: &mut Output) {
        let Some(mut w) = self.workflows.remove(&id) else {
            return;
        };
        // The failed server takes no traffic: its old instances leave the table and are
        // stopped (their copies serve).
        self.stop_drained(&w.server, out);
        self.keep_out(&w, &reason);
        w.outcome = Some(Outcome::Failed {
            reason: reason.clone(),
        });
        w.steps.push(StepTime {
            phase: "failed".into(),
            at_ms: now.wall_ms,
        });
        self.log(
            out,
            now,
            "workflow-failed",
            Some(&w.server),
            Some(id),
            format!(
                "{reason}; {} stays off the list until an operator looks",
                w.server
            ),
        );
        self.issue(
            out,
            CommandKind::Alert {
                name: "RejuvWorkflowFailed".into(),
                server: Some(w.server.clone()),
                summary: format!("rejuvenation of {} failed: {reason}", w.server),
            },
        );
        self.failed_total += 1;
        self.finish(w);
    }

    /// Capacity units of primaries on the list whose agents answer, counting sources of running
    /// workflows as off.
    pub fn available_capacity(&self) -> u32 {
        let busy: BTreeSet<&ServerId> = self.workflows.values().map(|w| &w.server).collect();
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

    fn used_units(&self, cfg: &Config, server: &str) -> u32 {
        self.instances
            .values()
            .filter(|i| i.server == server)
            .map(|i| cfg.services.get(&i.service).map_or(1, |s| s.units))
            .sum()
    }

    /// Whether a majority of the servers' agents answer. A controller that cannot see most
    /// of its fleet does not know what it would disrupt: it starts nothing until it can.
    fn quorum(&mut self, now: Now, out: &mut Output) -> bool {
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
            self.log(out, now, "no-quorum", None, None, summary.clone());
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
                "quorum-regained",
                None,
                None,
                format!("{up} of {total} agents answer again"),
            );
        }
        ok
    }

    /// Starts a workflow for every server that needs one, within the budget.
    fn plan(&mut self, cfg: &Config, now: Now, out: &mut Output) {
        if !self.quorum(now, out) {
            return;
        }
        let candidates: Vec<ServerId> = self
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
            if self.paused && !manual && !failover {
                self.blocked(&id, "rejuv is paused".into(), false, now, out);
                continue;
            }
            if let Some(window) = cfg.frozen_by(now.wall_ms).filter(|_| !manual && !failover) {
                self.blocked(
                    &id,
                    format!("waiting: inside the freeze window '{}'", window.name),
                    false,
                    now,
                    out,
                );
                continue;
            }
            let cooling = self.last_completed_at_ms.is_some_and(|t| {
                u128::from(now.wall_ms.saturating_sub(t)) < cfg.budget.cooldown.as_millis()
            });
            if !forced && cooling {
                self.blocked(
                    &id,
                    format!(
                        "waiting: cluster cooldown of {:?} after the last workflow",
                        cfg.budget.cooldown
                    ),
                    false,
                    now,
                    out,
                );
                continue;
            }
            if !forced && self.workflows.len() as u32 >= cfg.budget.max_concurrent {
                self.blocked(
                    &id,
                    format!(
                        "waiting: {} workflow(s) running, budget {}",
                        self.workflows.len(),
                        cfg.budget.max_concurrent
                    ),
                    false,
                    now,
                    out,
                );
                continue;
            }
            match self.choose_target(cfg, &id, failover, now) {
                Ok(target) if self.advisory => self.advise(cfg, &id, &target, now, out),
                Ok(target) => self.start_workflow(cfg, &id, &target, forced, now, out),
                Err(why) => self.blocked(&id, why, true, now, out),
            }
        }
    }

    /// Why `s` counts as dead (reactive failover), if it does: a primary on the list whose
    /// agent has not answered for `policy.failover_after` and none of whose instances is
    /// known healthy.
    fn dead(&self, cfg: &Config, s: &Server, now: Now) -> Option<String> {
        let since = s.unreachable_since_ms?;
        let gone = now.wall_ms.saturating_sub(since);
        let has_instances = self.instances.values().any(|i| i.server == s.id);
        let any_healthy = self
            .instances
            .values()
            .any(|i| i.server == s.id && i.healthy);
        (s.role == Role::Primary
            && has_instances
            && !any_healthy
            && u128::from(gone) >= cfg.policy.failover_after.as_millis())
        .then(|| {
            format!(
                "agent unreachable for {:.0}s and its instances down: failing over",
                gone as f64 / 1000.0
            )
        })
    }

    /// Why `s` is due for fixed-period rejuvenation, if it is: its running time passed
    /// `max_running_time`, shortened by its own stable jitter.
    fn due_by_age(&self, cfg: &Config, s: &Server) -> Option<String> {
        let max = cfg.policy.max_running_time?;
        let running = s
            .observation
            .as_ref()
            .filter(|o| o.reachable)?
            .running_time_s;
        let limit =
            max.as_secs_f64() * (1.0 - cfg.policy.max_running_time_jitter * unit_hash(&s.id));
        (running >= limit).then(|| {
            format!(
                "running time {running:.0}s reached its fixed-period limit {limit:.0}s (max_running_time {:?} with jitter)",
                max
            )
        })
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
            "no-target",
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
        self.log(out, now, "dry-run", Some(source), None, said);
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
        let src = &self.servers[source];
        // Escalation: a server the detector finds aging again soon after its last
        // rejuvenation gets the next, stronger level of actions.
        let aged_again = src.manual_request.is_none()
            && src.judgement == Level::Unstable
            && !cfg.rejuvenation.escalation.is_empty()
            && src.last_rejuvenated_at_ms.is_some_and(|t| {
                u128::from(now.wall_ms.saturating_sub(t))
                    < cfg.rejuvenation.escalation_window.as_millis()
            });
        let max_level = cfg.rejuvenation.max_level();
        let (level, exhausted) = if aged_again {
            (max_level.min(src.level + 1), src.level >= max_level)
        } else {
            (0, false)
        };
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
            "workflow-started",
            Some(source),
            Some(id),
            format!("{source} unstable ({reason}); duplexing {n} instance(s) onto {target}"),
        );
    }

    /// Recomputes the route table; bumps its version when it changed.
    fn refresh_routes(&mut self, cfg: &Config) {
        let mut services: BTreeMap<ServiceName, ServiceRoutes> = BTreeMap::new();
        for name in cfg.services.keys() {
            let hold = cfg.services[name]
                .handoff
                .as_ref()
                .map_or(5_000, |h| h.hold.as_millis() as u64);
            services.insert(
                name.clone(),
                ServiceRoutes {
                    backends: vec![],
                    hold: false,
                    max_hold_ms: hold,
                },
            );
        }
        for i in self.instances.values() {
            let Some(addr) = i.addr else { continue };
            let state = match i.traffic {
                Traffic::Serving if i.healthy => BackendState::Serving,
                Traffic::Draining if !i.drained => BackendState::Draining,
                _ => continue,
            };
            if let Some(r) = services.get_mut(&i.service) {
                r.backends.push(Backend {
                    id: i.id.clone(),
                    addr,
                    state,
                });
            }
        }
        if services != self.routes.services {
            self.routes_version += 1;
            self.routes = RouteTable {
                version: self.routes_version,
                services,
            };
        }
    }

    /// Invariants that must hold after every step; each broken one is described.
    pub fn check_invariants(&self, cfg: &Config) -> Vec<String> {
        let mut bad = Vec::new();
        let mut targets = BTreeSet::new();
        for w in self.workflows.values() {
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

/// A stable draw in [0, 1) from a server id, for per-server jitter.
fn unit_hash(id: &str) -> f64 {
    (crate::digest::fnv1a64(id.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}

/// What a veto gate says about a workflow's next step.
enum VetoGate {
    Passed,
    Waiting,
    Vetoed(String),
}

/// A command in words, for advisory mode's events.
fn describe_command(kind: &CommandKind) -> String {
    match kind {
        CommandKind::StartInstance {
            server,
            instance,
            service,
        } => format!("start {service} instance {instance} on {server}"),
        CommandKind::StopInstance { server, instance } => {
            format!("stop instance {instance} on {server}")
        }
        CommandKind::TransferState {
            from_server,
            from,
            to_server,
            to,
        } => format!("move the state of {from} on {from_server} to {to} on {to_server}"),
        CommandKind::Rejuvenate {
            server, actions, ..
        } => format!(
            "rejuvenate {server} ({})",
            actions
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CommandKind::ResetDetector { server } => format!("reset the detector of {server}"),
        CommandKind::Alert { name, summary, .. } => format!("alert {name}: {summary}"),
        CommandKind::RunHook {
            hook, when, step, ..
        } => format!("run hook {hook} ({when} {step})"),
    }
}

fn command_server(kind: &CommandKind) -> Option<ServerId> {
    match kind {
        CommandKind::StartInstance { server, .. }
        | CommandKind::StopInstance { server, .. }
        | CommandKind::Rejuvenate { server, .. }
        | CommandKind::ResetDetector { server }
        | CommandKind::RunHook { server, .. } => Some(server.clone()),
        CommandKind::TransferState { from_server, .. } => Some(from_server.clone()),
        CommandKind::Alert { server, .. } => server.clone(),
    }
}
