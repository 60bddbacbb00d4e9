//! The simulated world as the shell sees it: [`Fleet`] implements
//! [`rejuv_core::shell::Effects`] with simulated agents behind a simulated network, a
//! simulated store, the builtin proxy and a clock that is only a number.
//!
//! Every message is an [`Ev`] on one queue ordered by simulated time; events of the controller
//! process carry its epoch, so whatever a crashed process had under way is dropped with it.
//! The checks of [`super::checks`] run on every step the shell hands on ([`Effects::stepped`]).

use super::checks::{self, Before, StepCtx};
use super::describe::{short_applied, short_output};
use super::report::{Options, Violation};
use super::rng::Rng;
use super::world::{Agent, Proxy, Scenario, T0};
use rejuv_core::api::AgentState;
use rejuv_core::cluster::{
    Cluster, Command, CommandKind, CommandResult, Event, LogEvent, Observation, Output, Workflow,
};
use rejuv_core::config::{Action, Config};
use rejuv_core::shell::{Effects, Step};
use rejuv_core::time::Now;
use rejuv_core::types::ServerId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// A poll not answered within this is an unreachable observation.
pub const POLL_TIMEOUT_MS: u64 = 1_500;
/// While backends drain, the traffic adapter reports in-flight counts this often.
pub const RESYNC_MS: u64 = 1_000;
/// Lines of the event log printed with a violation.
const TRAIL: usize = 30;

/// Something that happens at a simulated moment.
#[derive(Debug, Clone)]
pub enum Ev {
    Tick {
        epoch: u64,
    },
    Poll {
        epoch: u64,
        server: ServerId,
    },
    PollRead {
        epoch: u64,
        server: ServerId,
        sent_t: u64,
        sent_wall: u64,
        reply_at: u64,
    },
    PollReply {
        epoch: u64,
        server: ServerId,
        sent_t: u64,
        sent_wall: u64,
        reply: Option<Box<AgentState>>,
    },
    Arrive {
        epoch: u64,
        command: Box<Command>,
        n: u32,
        deadline: u64,
    },
    Reply {
        epoch: u64,
        id: u64,
        n: u32,
        result: CommandResult,
    },
    AttemptFailed {
        epoch: u64,
        id: u64,
        n: u32,
    },
    Wake {
        epoch: u64,
        id: u64,
        n: u32,
    },
    TrafficPut {
        epoch: u64,
    },
    FaultTick,
    ControllerRestart,
    AgentRestart {
        server: ServerId,
    },
    HostUp {
        server: ServerId,
    },
}

/// The controller process as the world knows it (memory only: lost in a crash).
#[derive(Debug, Clone, Default)]
pub struct Process {
    pub up: bool,
    pub epoch: u64,
    pub started_t: u64,
    pub wall_at_start: u64,
    pub traffic_scheduled: bool,
}

pub struct Fleet {
    pub seed: u64,
    pub opts: Options,
    pub rng: Rng,
    pub sc: Scenario,
    pub cfg: Arc<Config>,
    pub t: u64,
    seq: u64,
    pub queue: BTreeMap<(u64, u64), Ev>,
    pub agents: BTreeMap<ServerId, Agent>,
    pub proxy: Proxy,
    pub process: Process,
    pub ctl_offset_ms: i64,
    pub offset_span: (i64, i64),
    /// The last observation delivered to the core for each server (read by the checks).
    last_obs: BTreeMap<ServerId, Observation>,
    pub steps: u64,
    trail: VecDeque<String>,
    pub digest: u64,
    pub healed: bool,
    pub net_loss: f64,
    pub loss_until: u64,
    pub slow_until: u64,
    pub sync_blocked_until: u64,
    /// The failpoint: crash (after this downtime) right after the next commit.
    pub crash_after_next_step: Option<u64>,
    /// The failpoint fired: the controller dies once the shell returns, acting on nothing.
    pub crash_now: Option<u64>,
    pub crashes: u32,
    pub float_drift: u32,
    /// `Before` of the state after the last step.
    before: Option<Before>,
    /// The simulated store: the state as last committed.
    pub stored: Arc<Cluster>,
    /// A broken invariant, found while the shell ran.
    pub violation: Option<Violation>,
}

impl Fleet {
    pub fn new(seed: u64, opts: Options, mut rng: Rng, sc: Scenario, stored: Cluster) -> Self {
        let cfg = Arc::new(sc.config());
        let agents = cfg
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.id.clone(),
                    Agent::new(super::world::agent_address(i), &mut rng),
                )
            })
            .collect();
        let proxy = Proxy {
            table: rejuv_core::api::RouteTable {
                epoch: 0,
                version: 0,
                services: BTreeMap::new(),
            },
            in_flight_until: BTreeMap::new(),
        };
        Fleet {
            seed,
            opts,
            rng,
            sc,
            cfg,
            t: 0,
            seq: 0,
            queue: BTreeMap::new(),
            agents,
            proxy,
            process: Process::default(),
            ctl_offset_ms: 0,
            offset_span: (0, 0),
            last_obs: BTreeMap::new(),
            steps: 0,
            trail: VecDeque::new(),
            digest: 0xcbf2_9ce4_8422_2325,
            healed: false,
            net_loss: 0.0,
            loss_until: 0,
            slow_until: 0,
            sync_blocked_until: 0,
            crash_after_next_step: None,
            crash_now: None,
            crashes: 0,
            float_drift: 0,
            before: None,
            stored: Arc::new(stored),
            violation: None,
        }
    }

    pub fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    pub fn log(&mut self, line: String) {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            self.digest ^= u64::from(b);
            self.digest = self.digest.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if self.opts.verbose {
            println!("{line}");
        }
        if self.trail.len() == TRAIL {
            self.trail.pop_front();
        }
        self.trail.push_back(line);
    }

    pub fn world(&mut self, what: String) {
        let line = format!("      t={} world: {what}", self.t);
        self.log(line);
    }

    pub fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.steps,
            invariant,
            detail,
            scenario: self.sc.describe(),
            trail: self.trail.iter().cloned().collect(),
        }
    }

    /// The controller's clock: wall time may jump (`ctl_offset_ms`), monotonic time only grows.
    pub fn now(&self) -> Now {
        let wall = (T0 as i64 + self.t as i64 + self.ctl_offset_ms) as u64;
        Now::new(
            self.t - self.process.started_t,
            wall.max(self.process.wall_at_start),
        )
    }

    pub fn live(&self, epoch: u64) -> bool {
        self.process.up && epoch == self.process.epoch
    }

    /// Whether the controller may still act (it is up and no failpoint fired).
    fn acting(&self) -> bool {
        self.process.up && self.crash_now.is_none()
    }

    pub fn latency(&mut self) -> u64 {
        if self.t < self.slow_until {
            self.rng.range(200, 3_000)
        } else {
            self.rng.range(1, 40)
        }
    }

    pub fn lost(&mut self) -> bool {
        self.t < self.loss_until && self.rng.chance(self.net_loss)
    }

    /// The process starts afresh: the state is read back, the event log gets a line.
    pub fn forget_checks(&mut self) {
        self.before = None;
    }

    pub fn schedule_traffic(&mut self, t: u64) {
        if !self.process.traffic_scheduled {
            self.process.traffic_scheduled = true;
            let epoch = self.process.epoch;
            self.at(t, Ev::TrafficPut { epoch });
        }
    }

    /// The servers a command talks to.
    fn servers_of(kind: &CommandKind) -> Vec<ServerId> {
        match kind {
            CommandKind::StartInstance { server, .. }
            | CommandKind::StopInstance { server, .. }
            | CommandKind::Rejuvenate { server, .. } => vec![server.clone()],
            CommandKind::TransferState {
                from_server,
                to_server,
                ..
            } => vec![from_server.clone(), to_server.clone()],
            CommandKind::ResetDetector { .. }
            | CommandKind::Alert { .. }
            | CommandKind::RunHook { .. } => vec![],
        }
    }

    /// The HTTP client's timeout for one request of this kind.
    fn request_timeout(kind: &CommandKind) -> u64 {
        match kind {
            CommandKind::StartInstance { .. } => 15_000,
            CommandKind::StopInstance { .. } => 60_000,
            CommandKind::TransferState { .. } => 20_000,
            CommandKind::Rejuvenate { .. } => 120_000,
            _ => 1_000,
        }
    }

    /// One attempt leaves the controller: it fails (refused, unanswered, lost) or arrives.
    fn send(&mut self, command: &Command, n: u32) {
        let epoch = self.process.epoch;
        let id = command.id;
        let servers = Self::servers_of(&command.kind);
        let t = self.t;
        let timeout = Self::request_timeout(&command.kind);
        // A refused connection fails at once, an unanswered one after the connect timeout.
        let mut fail_after = None;
        for s in &servers {
            let a = &self.agents[s];
            if !a.answers(t) {
                let d = if a.host_up && !a.process_up { 1 } else { 2_000 };
                fail_after = Some(fail_after.map_or(d, |x: u64| x.max(d)));
            }
        }
        if fail_after.is_none() && self.lost() {
            fail_after = Some(timeout);
        }
        if let Some(d) = fail_after {
            self.at(t + d, Ev::AttemptFailed { epoch, id, n });
            return;
        }
        let hung = servers
            .iter()
            .map(|s| self.agents[s].hung_until)
            .max()
            .unwrap_or(0);
        let arrive = (t + self.latency()).max(hung);
        let command = Box::new(command.clone());
        let deadline = t + timeout;
        self.at(
            arrive,
            Ev::Arrive {
                epoch,
                command,
                n,
                deadline,
            },
        );
    }

    /// The request reaches the agent(s): carried out there, then answered (or the answer is
    /// lost, or comes too late for the client).
    pub fn arrive(&mut self, epoch: u64, command: &Command, n: u32, deadline: u64) {
        let (id, t) = (command.id, self.t);
        if Self::servers_of(&command.kind)
            .iter()
            .any(|s| !self.agents[s].answers(t))
        {
            self.at(deadline.max(t), Ev::AttemptFailed { epoch, id, n });
            return;
        }
        let result = self.carried_out(&command.kind);
        let lost = self.lost();
        let reply_at = t + self.latency();
        if lost || reply_at > deadline {
            self.at(deadline.max(t), Ev::AttemptFailed { epoch, id, n });
        } else {
            self.at(
                reply_at,
                Ev::Reply {
                    epoch,
                    id,
                    n,
                    result,
                },
            );
        }
    }

    /// What the agent does with a command that reached it.
    fn carried_out(&mut self, kind: &CommandKind) -> CommandResult {
        let t = self.t;
        match kind {
            CommandKind::StartInstance {
                server, instance, ..
            } => {
                let known = self.agents[server].instances.contains_key(instance);
                if !known && self.rng.chance(self.sc.start_refused) {
                    return CommandResult::Failed {
                        error: "422: the service failed to start (simulated)".into(),
                    };
                }
                let healthy_at = if self.rng.chance(self.sc.never_healthy) {
                    None
                } else {
                    Some(t + self.rng.range(300, 6_000))
                };
                let a = self.agents.get_mut(server).expect("known server");
                CommandResult::Started {
                    addr: Some(a.start(instance, t, healthy_at)),
                }
            }
            CommandKind::StopInstance { server, instance } => {
                let a = self.agents.get_mut(server).expect("known server");
                a.advance_mem(t);
                a.instances.remove(instance);
                CommandResult::Stopped
            }
            CommandKind::TransferState {
                from_server,
                from,
                to_server,
                to,
            } => {
                if !self.agents[from_server].instances.contains_key(from) {
                    CommandResult::Failed {
                        error: format!("404: {from} is not running on {from_server}"),
                    }
                } else if !self.agents[to_server].instances.contains_key(to) {
                    CommandResult::Failed {
                        error: format!("404: {to} is not running on {to_server}"),
                    }
                } else {
                    CommandResult::Transferred
                }
            }
            CommandKind::Rejuvenate {
                server,
                run_id,
                actions,
                keep,
            } => self.rejuvenate(server, run_id, actions, keep),
            CommandKind::ResetDetector { .. }
            | CommandKind::Alert { .. }
            | CommandKind::RunHook { .. } => CommandResult::Done,
        }
    }

    fn rejuvenate(
        &mut self,
        server: &str,
        run_id: &str,
        actions: &[Action],
        keep: &[String],
    ) -> CommandResult {
        let t = self.t;
        let fail = self.rng.chance(self.sc.action_fails);
        let reboot = self.rng.range(3_000, 15_000);
        let a = self.agents.get_mut(server).expect("known server");
        let fresh = !a.reports.contains_key(run_id);
        let report = a.rejuvenate(run_id, actions, keep, t, fail);
        if fresh && report.failed().is_none() && actions.contains(&Action::RestartHost) {
            // The report is on disk and on its way; then the host goes down.
            a.host_up = false;
            a.process_up = false;
            let server = server.to_string();
            self.at(t + reboot, Ev::HostUp { server });
        }
        CommandResult::Rejuvenated { report }
    }

    /// Checks the step; whether it changed the route table.
    fn check(&mut self, step: &Step<'_>) -> bool {
        let observed = step
            .applied
            .iter()
            .any(|e| matches!(e, Event::Observed { .. }));
        for e in step.applied {
            if let Event::Observed {
                server,
                observation,
            } = e
            {
                self.last_obs.insert(server.clone(), observation.clone());
            }
        }
        let before = self
            .before
            .take()
            .unwrap_or_else(|| Before::of(step.cluster));
        let after = Before::of(step.cluster);
        let needed = checks::needed(&before, &after, observed);
        let out = Output {
            commands: step.commands.to_vec(),
            events: step.events.to_vec(),
        };
        let agents = &self.agents;
        let down = |id: &str| agents.get(id).is_some_and(|a| !a.host_up || !a.process_up);
        let ctx = StepCtx {
            cfg: &self.cfg,
            before: &before,
            after: step.cluster,
            out: &out,
            last_obs: &self.last_obs,
            down: &down,
        };
        if let Some((name, detail)) = checks::check_step(&ctx, needed) {
            if self.violation.is_none() {
                self.violation = Some(self.violation(name, detail));
            }
        }
        let routes_changed = before.routes_version != after.routes_version;
        self.before = Some(after);
        routes_changed
    }
}

impl Effects for Fleet {
    fn commit(&mut self, _: &Cluster, _: &[LogEvent], _: &[Workflow]) -> Result<(), String> {
        // The committed state is taken in `stepped`, where it arrives shared.
        Ok(())
    }

    fn carry_out(&mut self, command: &Command, attempt: u32) {
        if !self.acting() {
            return;
        }
        match &command.kind {
            // The simulated config has no hooks and no alert sink: both end at once.
            CommandKind::Alert { .. } | CommandKind::RunHook { .. } => {
                let (epoch, id, t) = (self.process.epoch, command.id, self.t);
                let result = CommandResult::Done;
                self.at(
                    t,
                    Ev::Reply {
                        epoch,
                        id,
                        n: attempt,
                        result,
                    },
                );
            }
            _ => self.send(command, attempt),
        }
    }

    fn wake_at(&mut self, at_mono_ms: u64, id: u64, n: u32) {
        if self.acting() {
            let epoch = self.process.epoch;
            let at = self.process.started_t + at_mono_ms;
            self.at(at.max(self.t), Ev::Wake { epoch, id, n });
        }
    }

    fn stepped(&mut self, step: &Step<'_>) {
        self.steps += 1;
        let now = self.now();
        let line = format!(
            "#{} t={} wall={:+} {} -> {}",
            self.steps,
            self.t,
            now.wall_ms as i64 - T0 as i64,
            short_applied(step.applied),
            short_output(step.commands, step.events)
        );
        self.log(line);
        if self.opts.verbose {
            for e in step.events {
                let server = e.server.as_deref().unwrap_or("-");
                println!("        [{}] {server} {}", e.kind, e.message);
            }
        }
        let routes_changed = self.check(step);
        if step.committed {
            self.stored = step.cluster.clone();
            if let Some(downtime) = self.crash_after_next_step.take() {
                // The failpoint: the step is committed, none of its commands is carried out.
                self.crash_now = Some(downtime);
                return;
            }
        }
        if routes_changed {
            self.schedule_traffic(self.t + 1);
        }
    }
}
