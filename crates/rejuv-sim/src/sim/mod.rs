//! A deterministic simulation of the controller: the pure core (`rejuv_core::cluster`) driven
//! the way the controller's engine drives it, against simulated agents, network, proxy, clock
//! and faults, with invariants checked after every step.
//!
//! One seed draws a scenario (mode, servers, services, budget, floor, escalation, fault
//! profile) and then a fault schedule as the run goes. The run is a discrete-event loop over
//! simulated milliseconds; each [`Cluster::apply`] is one *step*. Around the core:
//! - a shell that carries out the outbox as `rejuv-controller`'s engine does: commands for one
//!   instance one after another, retries with backoff until a per-command deadline (then
//!   `CommandResult::Failed`), detector resets and alerts finished locally;
//! - agents polled every 2 s: instances that become healthy after a random delay (or never),
//!   memory that grows while a leaky server runs instances, judged `unstable` past 75% (the
//!   detector itself is replaced by that rule: `Event::Judged` is fed directly);
//! - a network whose messages are delayed or lost; a proxy the traffic adapter feeds, whose
//!   drained backends report in-flight requests for a while;
//! - a controller clock whose wall time jumps by up to ±10 min while `mono_ms` only grows;
//! - faults: controller crash and restart (the state goes through JSON as the store keeps it,
//!   and every pending command is sent again), agent crash (its instances are lost), agent
//!   hang, network partition, message loss and delay, server death, traffic sync delays,
//!   instance crashes, servers whose instances never turn healthy, load changes, and operator
//!   requests (pause, resume, maintenance on/off, rejuvenate with and without force).
//!
//! After `steps` steps every fault is healed, aging stops, and the run goes on quietly until
//! every workflow that was running has ended and every pending command was answered, within a
//! bound computed from the config: that is the liveness check. See [`checks`] for the rest.
//!
//! # Guarantees
//! - The same seed and options give the same run: the event log's digest is the same.

pub mod checks;
pub mod rng;
pub mod world;

use checks::{Before, StepCtx};
use rejuv_core::cluster::{
    Cluster, Command, CommandKind, CommandResult, Event, Observation, OperatorCommand, Output,
};
use rejuv_core::config::{Action, Config};
use rejuv_core::detector::{Explanation, Judgement, Level};
use rejuv_core::time::Now;
use rejuv_core::types::{InstanceId, ServerId};
use rng::Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use world::{Agent, Proxy, Scenario, MAX_CLOCK_SKEW_MS, T0};

/// The engine ticks the core this often.
const TICK_MS: u64 = 1_000;
/// Each agent is polled this often...
const POLL_MS: u64 = 2_000;
/// ...and a poll not answered within this is an unreachable observation.
const POLL_TIMEOUT_MS: u64 = 1_500;
/// A fault may be drawn this often.
const FAULT_TICK_MS: u64 = 2_000;
/// While backends drain, the traffic adapter reports in-flight counts this often.
const RESYNC_MS: u64 = 1_000;
/// Lines of the event log printed with a violation.
const TRAIL: usize = 30;

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Options {
    /// Steps of the faulty part of the schedule (the quiet part comes on top).
    pub steps: u64,
    /// Print every line of the event log as it happens.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 300,
            verbose: false,
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub invariant: &'static str,
    pub detail: String,
    pub scenario: String,
    /// The last lines of the event log.
    pub trail: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "VIOLATION seed {} step {}: invariant `{}`: {}",
            self.seed, self.step, self.invariant, self.detail
        )?;
        writeln!(f, "scenario: {}", self.scenario)?;
        writeln!(f, "last {} events:", self.trail.len())?;
        for line in &self.trail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: cargo run -p rejuv-sim --bin rejuv-sim -- --seed {} --verbose",
            self.seed
        )
    }
}

/// What one schedule did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: String,
    pub steps: u64,
    pub sim_ms: u64,
    pub completed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    pub controller_crashes: u32,
    /// Crashes after which some float of the state came back from JSON not bit-identical.
    pub float_drift: u32,
    /// FNV-1a of the whole event log.
    pub digest: u64,
    pub violation: Option<Violation>,
}

/// Runs the schedule of `seed`.
pub fn run(seed: u64, opts: &Options) -> RunReport {
    let mut sim = Sim::new(seed, opts.clone());
    let violation = sim.run_all().err();
    RunReport {
        seed,
        scenario: sim.sc.describe(),
        steps: sim.steps,
        sim_ms: sim.t,
        completed: sim.cluster.completed_total,
        rolled_back: sim.cluster.rolled_back_total,
        failed: sim.cluster.failed_total,
        controller_crashes: sim.crashes,
        float_drift: sim.float_drift,
        digest: sim.digest,
        violation,
    }
}

/// Many schedules, summed.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub schedules: u64,
    pub steps: u64,
    pub sim_ms: u64,
    pub completed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    pub controller_crashes: u64,
    /// Schedules in which at least one workflow completed.
    pub with_completed: u64,
    pub violations: Vec<Violation>,
    pub elapsed: Duration,
}

impl Summary {
    fn add(&mut self, r: RunReport) {
        self.schedules += 1;
        self.steps += r.steps;
        self.sim_ms += r.sim_ms;
        self.completed += r.completed;
        self.rolled_back += r.rolled_back;
        self.failed += r.failed;
        self.controller_crashes += u64::from(r.controller_crashes);
        self.with_completed += u64::from(r.completed > 0);
        self.violations.extend(r.violation);
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "schedules {} | steps {} | simulated {:.1} h | workflows completed {} rolled back {} failed {} | schedules with a completed workflow {} | controller crashes {} | violations {} | {:.2} s ({:.0} schedules/s, {:.0} steps/s)",
            self.schedules,
            self.steps,
            self.sim_ms as f64 / 3.6e6,
            self.completed,
            self.rolled_back,
            self.failed,
            self.with_completed,
            self.controller_crashes,
            self.violations.len(),
            secs,
            self.schedules as f64 / secs,
            self.steps as f64 / secs,
        )
    }
}

/// Runs seeds `from..from + schedules` on `threads` threads.
pub fn run_many(from: u64, schedules: u64, opts: &Options, threads: usize) -> Summary {
    let started = Instant::now();
    let threads = threads.max(1) as u64;
    let parts: Vec<Summary> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let opts = opts.clone();
                scope.spawn(move || {
                    let mut s = Summary::default();
                    let mut seed = from + k;
                    while seed < from + schedules {
                        s.add(run(seed, &opts));
                        seed += threads;
                    }
                    s
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut total = Summary::default();
    for p in parts {
        total.schedules += p.schedules;
        total.steps += p.steps;
        total.sim_ms += p.sim_ms;
        total.completed += p.completed;
        total.rolled_back += p.rolled_back;
        total.failed += p.failed;
        total.controller_crashes += p.controller_crashes;
        total.with_completed += p.with_completed;
        total.violations.extend(p.violations);
    }
    total.violations.sort_by_key(|v| v.seed);
    total.elapsed = started.elapsed();
    total
}

/// Something that happens at a simulated moment. Events of the controller process carry its
/// epoch: after a crash, whatever the dead process had under way is dropped.
#[derive(Debug, Clone)]
enum Ev {
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
        reply: Option<(Observation, f64)>,
    },
    Attempt {
        epoch: u64,
        id: u64,
        n: u32,
    },
    Arrive {
        epoch: u64,
        id: u64,
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
    LocalDone {
        epoch: u64,
        id: u64,
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

/// A command the shell is carrying out.
#[derive(Debug, Clone)]
struct Inflight {
    cmd: Command,
    until: u64,
    backoff: u64,
    n: u32,
}

/// The engine's bookkeeping (memory only: lost in a crash).
#[derive(Debug, Clone, Default)]
struct Shell {
    up: bool,
    epoch: u64,
    started_t: u64,
    wall_at_start: u64,
    running: BTreeSet<u64>,
    holds: BTreeMap<u64, InstanceId>,
    queued: BTreeMap<InstanceId, VecDeque<Command>>,
    inflight: BTreeMap<u64, Inflight>,
    traffic_scheduled: bool,
}

type Res = Result<(), Violation>;

struct Sim {
    seed: u64,
    opts: Options,
    rng: Rng,
    sc: Scenario,
    cfg: Config,
    cluster: Cluster,
    t: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    agents: BTreeMap<ServerId, Agent>,
    proxy: Proxy,
    shell: Shell,
    ctl_offset_ms: i64,
    offset_span: (i64, i64),
    last_obs: BTreeMap<ServerId, Observation>,
    last_judged: BTreeMap<ServerId, Level>,
    steps: u64,
    trail: VecDeque<String>,
    digest: u64,
    healed: bool,
    net_loss: f64,
    loss_until: u64,
    slow_until: u64,
    sync_blocked_until: u64,
    crash_after_next_step: Option<u64>,
    crashes: u32,
    /// Crashes after which a float in the state came back not bit-identical.
    float_drift: u32,
    /// `Before` of the current state, taken after the last step.
    before: Option<Before>,
}

impl Sim {
    fn new(seed: u64, opts: Options) -> Self {
        let mut rng = Rng::new(seed);
        let sc = Scenario::draw(&mut rng);
        let cfg = sc.config();
        let agents = cfg
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), Agent::new(world::agent_address(i), &mut rng)))
            .collect();
        let (cluster, out) = Cluster::new(&cfg, Now::new(0, T0));
        let proxy = Proxy {
            table: rejuv_core::api::RouteTable {
                version: 0,
                services: BTreeMap::new(),
            },
            in_flight_until: BTreeMap::new(),
        };
        let mut sim = Sim {
            seed,
            opts,
            rng,
            sc,
            cfg,
            cluster,
            t: 0,
            seq: 0,
            queue: BTreeMap::new(),
            agents,
            proxy,
            shell: Shell::default(),
            ctl_offset_ms: 0,
            offset_span: (0, 0),
            last_obs: BTreeMap::new(),
            last_judged: BTreeMap::new(),
            steps: 0,
            trail: VecDeque::new(),
            digest: 0xcbf2_9ce4_8422_2325,
            healed: false,
            net_loss: 0.0,
            loss_until: 0,
            slow_until: 0,
            sync_blocked_until: 0,
            crash_after_next_step: None,
            crashes: 0,
            float_drift: 0,
            before: None,
        };
        let line = format!("seed {} scenario {}", seed, sim.sc.describe());
        sim.log(line);
        sim.start_controller(out.commands);
        sim.at(FAULT_TICK_MS, Ev::FaultTick);
        sim
    }

    // ---------------------------------------------------------------------------------------
    // The loop
    // ---------------------------------------------------------------------------------------

    fn run_all(&mut self) -> Res {
        while self.steps < self.opts.steps {
            self.next()?;
        }
        self.heal();
        let heal_t = self.t;
        let running: BTreeSet<u64> = self.cluster.workflows.keys().copied().collect();
        let pending: BTreeSet<u64> = self.cluster.pending.keys().copied().collect();
        let bound = self.liveness_bound();
        let deadline = heal_t + bound;
        loop {
            let live = !self.cluster.workflows.keys().any(|w| running.contains(w));
            let drained = !self.cluster.pending.keys().any(|c| pending.contains(c));
            if live && drained {
                break;
            }
            if self.t >= deadline {
                let (name, detail) = if live {
                    let stuck: Vec<String> = self
                        .cluster
                        .pending
                        .values()
                        .filter(|c| pending.contains(&c.id))
                        .map(|c| format!("{}:{}", c.id, short_command(c)))
                        .collect();
                    (
                        "outbox-drains",
                        format!(
                            "commands pending at the heal still unanswered {} ms later: {stuck:?}",
                            bound
                        ),
                    )
                } else {
                    let stuck: Vec<String> = self
                        .cluster
                        .workflows
                        .values()
                        .filter(|w| running.contains(&w.id))
                        .map(|w| format!("{} for {} in {}", w.id, w.server, w.phase))
                        .collect();
                    (
                        "liveness",
                        format!("workflows still running {bound} ms after every fault healed: {stuck:?}"),
                    )
                };
                return Err(self.violation(name, detail));
            }
            self.next()?;
        }
        // With nothing under way, every instance an agent runs is one the core knows.
        let settle_until = self.t + 120_000;
        while !(self.cluster.pending.is_empty() && self.cluster.workflows.is_empty())
            && self.t < settle_until
        {
            self.next()?;
        }
        if self.cluster.pending.is_empty()
            && self.cluster.workflows.is_empty()
            && self.shell.inflight.is_empty()
        {
            for (sid, a) in &self.agents {
                for id in a.instances.keys() {
                    if self
                        .cluster
                        .instances
                        .get(id)
                        .is_none_or(|i| &i.server != sid)
                    {
                        let detail =
                            format!("{sid}'s agent runs {id}, which the core does not know there");
                        return Err(self.violation("no-leaked-instances", detail));
                    }
                }
            }
        }
        Ok(())
    }

    /// How long after the heal every workflow must have ended: each phase's limit once, the
    /// command deadlines, poll slack, and the wall-clock skew the run went through (the core's
    /// timeouts run on wall time).
    fn liveness_bound(&self) -> u64 {
        let r = &self.cfg.rejuvenation;
        let ms = |d: Duration| d.as_millis() as u64;
        let drain = self
            .cfg
            .services
            .values()
            .map(|s| ms(s.drain))
            .max()
            .unwrap_or(0);
        let skew = (self.offset_span.1 - self.offset_span.0).unsigned_abs();
        ms(r.duplex_timeout)
            + ms(self.cfg.gate.max_wait)
            + drain
            + 30_000
            + 2 * ms(r.verify_timeout)
            + 90_000
            + 30_000
            + skew
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn next(&mut self) -> Res {
        let Some(((t, _), ev)) = self.queue.pop_first() else {
            return Err(self.violation("simulation", "the event queue ran dry".into()));
        };
        self.t = t;
        self.handle(ev)
    }

    fn log(&mut self, line: String) {
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

    fn world(&mut self, what: String) {
        let line = format!("      t={} world: {what}", self.t);
        self.log(line);
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.steps,
            invariant,
            detail,
            scenario: self.sc.describe(),
            trail: self.trail.iter().cloned().collect(),
        }
    }

    fn now(&self) -> Now {
        let wall = (T0 as i64 + self.t as i64 + self.ctl_offset_ms) as u64;
        Now::new(
            self.t - self.shell.started_t,
            wall.max(self.shell.wall_at_start),
        )
    }

    fn live(&self, epoch: u64) -> bool {
        self.shell.up && epoch == self.shell.epoch
    }

    fn latency(&mut self) -> u64 {
        if self.t < self.slow_until {
            self.rng.range(200, 3_000)
        } else {
            self.rng.range(1, 40)
        }
    }

    fn lost(&mut self) -> bool {
        self.t < self.loss_until && self.rng.chance(self.net_loss)
    }

    // ---------------------------------------------------------------------------------------
    // One step of the core
    // ---------------------------------------------------------------------------------------

    fn step(&mut self, event: Event) -> Res {
        if let Event::CommandDone { id, .. } = &event {
            // As the engine: the next command for the same instance may go now.
            self.shell.running.remove(id);
            if let Some(key) = self.shell.holds.remove(id) {
                let next = self.shell.queued.get_mut(&key).and_then(|q| q.pop_front());
                if self.shell.queued.get(&key).is_some_and(|q| q.is_empty()) {
                    self.shell.queued.remove(&key);
                }
                if let Some(cmd) = next {
                    self.shell.holds.insert(cmd.id, key);
                    self.spawn(cmd);
                }
            }
        }
        let now = self.now();
        let before = self
            .before
            .take()
            .unwrap_or_else(|| Before::of(&self.cluster));
        let routes_before = self.cluster.routes.version;
        let observed = matches!(event, Event::Observed { .. });
        let head = short_event(&event);
        let out = self.cluster.apply(&self.cfg, event, now);
        self.steps += 1;
        let line = format!(
            "#{} t={} wall={:+} {head} -> {}",
            self.steps,
            self.t,
            now.wall_ms as i64 - T0 as i64,
            short_output(&out)
        );
        self.log(line);
        if self.opts.verbose {
            for e in &out.events {
                println!(
                    "        [{}] {} {}",
                    e.kind,
                    e.server.as_deref().unwrap_or("-"),
                    e.message
                );
            }
        }
        let agents = &self.agents;
        let down = |id: &str| agents.get(id).is_some_and(|a| !a.host_up || !a.process_up);
        let after = Before::of(&self.cluster);
        let needed = checks::needed(&before, &after, observed);
        let ctx = StepCtx {
            cfg: &self.cfg,
            before: &before,
            after: &self.cluster,
            out: &out,
            last_obs: &self.last_obs,
            down: &down,
        };
        if let Some((name, detail)) = checks::check_step(&ctx, needed) {
            return Err(self.violation(name, detail));
        }
        self.before = Some(after);
        if self.crash_after_next_step.is_some() {
            // The failpoint: the step is committed, none of its commands is carried out.
            let downtime = self.crash_after_next_step.take().unwrap_or(0);
            return self.crash(downtime, "right after a commit");
        }
        self.dispatch(out.commands);
        if self.cluster.routes.version != routes_before {
            self.schedule_traffic(self.t + 1);
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // The controller process
    // ---------------------------------------------------------------------------------------

    fn start_controller(&mut self, resend: Vec<Command>) {
        let epoch = self.shell.epoch + 1;
        self.shell = Shell {
            up: true,
            epoch,
            started_t: self.t,
            wall_at_start: (T0 as i64 + self.t as i64 + self.ctl_offset_ms) as u64,
            ..Shell::default()
        };
        self.last_judged.clear();
        self.at(self.t, Ev::Tick { epoch });
        let servers: Vec<ServerId> = self.agents.keys().cloned().collect();
        for (k, server) in servers.into_iter().enumerate() {
            let t = self.t + 100 + 150 * k as u64;
            self.at(t, Ev::Poll { epoch, server });
        }
        self.schedule_traffic(self.t);
        self.dispatch(resend);
    }

    fn crash(&mut self, downtime: u64, how: &str) -> Res {
        self.crashes += 1;
        self.world(format!(
            "controller crashes {how}; restarts in {downtime} ms"
        ));
        // The store: the state goes through JSON and comes back as the next process reads it.
        let json = serde_json::to_string(&self.cluster).map_err(|e| {
            self.violation(
                "store-round-trip",
                format!("the state does not serialize: {e}"),
            )
        })?;
        let back: Cluster = serde_json::from_str(&json).map_err(|e| {
            self.violation(
                "store-round-trip",
                format!("the stored state does not load: {e}"),
            )
        })?;
        if back != self.cluster {
            // serde_json (without its `float_roundtrip` feature, as the controller builds it)
            // may read a float back one ulp off; anything else is a real difference.
            let written = serde_json::to_value(&self.cluster).unwrap_or_default();
            let read = serde_json::to_value(&back).unwrap_or_default();
            if let Some(path) = json_difference(&written, &read, "$") {
                return Err(self.violation(
                    "store-round-trip",
                    format!(
                        "the state read back from JSON differs from the state written at {path}"
                    ),
                ));
            }
            self.float_drift += 1;
        }
        self.cluster = back;
        self.before = None;
        self.shell.up = false;
        // Whatever the dead process had under way is gone with its epoch.
        self.shell.epoch += 1;
        self.at(self.t + downtime, Ev::ControllerRestart);
        Ok(())
    }

    fn dispatch(&mut self, commands: Vec<Command>) {
        for cmd in commands {
            if !self.shell.running.insert(cmd.id) {
                continue;
            }
            match &cmd.kind {
                CommandKind::ResetDetector { server } => {
                    self.last_judged.remove(server);
                    let epoch = self.shell.epoch;
                    self.at(self.t, Ev::LocalDone { epoch, id: cmd.id });
                }
                // The simulated config has no hooks; a hook would end like an alert, locally.
                CommandKind::Alert { .. } | CommandKind::RunHook { .. } => {
                    let epoch = self.shell.epoch;
                    self.at(self.t, Ev::LocalDone { epoch, id: cmd.id });
                }
                CommandKind::StartInstance { instance, .. }
                | CommandKind::StopInstance { instance, .. } => {
                    let key = instance.clone();
                    if self.shell.holds.values().any(|k| k == &key) {
                        self.shell.queued.entry(key).or_default().push_back(cmd);
                    } else {
                        self.shell.holds.insert(cmd.id, key);
                        self.spawn(cmd);
                    }
                }
                _ => self.spawn(cmd),
            }
        }
    }

    fn spawn(&mut self, cmd: Command) {
        let deadline = match &cmd.kind {
            CommandKind::Rejuvenate { .. } => {
                self.cfg.rejuvenation.verify_timeout.as_millis() as u64
            }
            CommandKind::StopInstance { .. } => 90_000,
            _ => 30_000,
        };
        let id = cmd.id;
        self.shell.inflight.insert(
            id,
            Inflight {
                cmd,
                until: self.t + deadline,
                backoff: 200,
                n: 0,
            },
        );
        let epoch = self.shell.epoch;
        self.at(self.t, Ev::Attempt { epoch, id, n: 0 });
    }

    fn schedule_traffic(&mut self, t: u64) {
        if !self.shell.traffic_scheduled {
            self.shell.traffic_scheduled = true;
            let epoch = self.shell.epoch;
            self.at(t, Ev::TrafficPut { epoch });
        }
    }

    fn finish(&mut self, id: u64, result: CommandResult) -> Res {
        self.shell.inflight.remove(&id);
        self.step(Event::CommandDone { id, result })
    }

    // ---------------------------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) -> Res {
        match ev {
            Ev::Tick { epoch } => {
                if self.live(epoch) {
                    self.at(self.t + TICK_MS, Ev::Tick { epoch });
                    self.step(Event::Tick)?;
                }
            }
            Ev::Poll { epoch, server } => {
                if self.live(epoch) {
                    self.poll(epoch, server);
                }
            }
            Ev::PollRead {
                epoch,
                server,
                sent_t,
                sent_wall,
                reply_at,
            } => {
                let t = self.t;
                let a = self.agents.get_mut(&server).expect("known server");
                let reply = if a.answers(t) {
                    Some((a.observe(t, sent_wall), a.mem))
                } else {
                    None
                };
                let at = if reply.is_some() {
                    reply_at
                } else {
                    sent_t + POLL_TIMEOUT_MS
                };
                self.at(
                    at.max(t),
                    Ev::PollReply {
                        epoch,
                        server,
                        sent_t,
                        reply,
                    },
                );
            }
            Ev::PollReply {
                epoch,
                server,
                sent_t,
                reply,
            } => {
                if self.live(epoch) {
                    let next = (sent_t + POLL_MS).max(self.t);
                    self.at(
                        next,
                        Ev::Poll {
                            epoch,
                            server: server.clone(),
                        },
                    );
                    self.on_poll_reply(server, reply)?;
                }
            }
            Ev::Attempt { epoch, id, n } => {
                if self.live(epoch) {
                    self.attempt(epoch, id, n);
                }
            }
            Ev::Arrive {
                epoch,
                id,
                n,
                deadline,
            } => {
                if self.live(epoch) {
                    self.arrive(epoch, id, n, deadline);
                }
            }
            Ev::Reply {
                epoch,
                id,
                n,
                result,
            } => {
                if self.live(epoch) && self.shell.inflight.get(&id).is_some_and(|f| f.n == n) {
                    self.finish(id, result)?;
                }
            }
            Ev::AttemptFailed { epoch, id, n } => {
                if self.live(epoch) {
                    self.attempt_failed(epoch, id, n)?;
                }
            }
            Ev::LocalDone { epoch, id } => {
                if self.live(epoch) {
                    self.step(Event::CommandDone {
                        id,
                        result: CommandResult::Done,
                    })?;
                }
            }
            Ev::TrafficPut { epoch } => {
                if self.live(epoch) {
                    self.shell.traffic_scheduled = false;
                    self.traffic_put()?;
                }
            }
            Ev::FaultTick => {
                if !self.healed {
                    self.at(self.t + FAULT_TICK_MS, Ev::FaultTick);
                    if self.rng.chance(self.sc.profile.fault_chance()) {
                        self.fault()?;
                    }
                }
            }
            Ev::ControllerRestart => {
                if !self.shell.up {
                    self.world("controller restarts: resending the outbox".into());
                    let resend: Vec<Command> = self.cluster.pending.values().cloned().collect();
                    self.start_controller(resend);
                }
            }
            Ev::AgentRestart { server } => {
                let a = self.agents.get_mut(&server).expect("known server");
                if a.host_up && !a.process_up {
                    a.process_up = true;
                    a.instances.clear();
                    self.world(format!(
                        "agent on {server} restarted (its instances are lost)"
                    ));
                }
            }
            Ev::HostUp { server } => {
                let t = self.t;
                let a = self.agents.get_mut(&server).expect("known server");
                if !a.host_up {
                    a.host_up = true;
                    a.process_up = true;
                    a.instances.clear();
                    a.running_since_wall = a.wall(t);
                    a.fresh(t);
                    self.world(format!("{server} is up again after a reboot"));
                }
            }
        }
        Ok(())
    }

    fn poll(&mut self, epoch: u64, server: ServerId) {
        let sent_t = self.t;
        let sent_wall = self.now().wall_ms;
        let lost = self.lost();
        let l1 = self.latency();
        let l2 = self.latency();
        let a = &self.agents[&server];
        let refused = a.host_up && !a.process_up;
        if !a.answers(sent_t) || lost {
            let at = if refused {
                sent_t + 1
            } else {
                sent_t + POLL_TIMEOUT_MS
            };
            self.at(
                at,
                Ev::PollReply {
                    epoch,
                    server,
                    sent_t,
                    reply: None,
                },
            );
            return;
        }
        let arrive = (sent_t + l1).max(a.hung_until);
        let reply_at = arrive + l2;
        if reply_at > sent_t + POLL_TIMEOUT_MS {
            self.at(
                sent_t + POLL_TIMEOUT_MS,
                Ev::PollReply {
                    epoch,
                    server,
                    sent_t,
                    reply: None,
                },
            );
        } else {
            self.at(
                arrive,
                Ev::PollRead {
                    epoch,
                    server,
                    sent_t,
                    sent_wall,
                    reply_at,
                },
            );
        }
    }

    fn on_poll_reply(&mut self, server: ServerId, reply: Option<(Observation, f64)>) -> Res {
        match reply {
            Some((obs, mem)) => {
                self.last_obs.insert(server.clone(), obs.clone());
                self.step(Event::Observed {
                    server: server.clone(),
                    observation: obs,
                })?;
                if !self.shell.up {
                    return Ok(());
                }
                // The detector, reduced to a rule on memory: fed on every change of level
                // (and afresh after a restart or a reset), as the engine feeds every sample.
                let leak = self.agents[&server].leak_per_s;
                let j = judge(mem, leak);
                if self.last_judged.get(&server) != Some(&j.level) {
                    self.last_judged.insert(server.clone(), j.level);
                    self.step(Event::Judged {
                        server,
                        judgement: j,
                    })?;
                }
            }
            None => {
                let obs = Observation {
                    reachable: false,
                    at_ms: self.now().wall_ms,
                    load1: 0.0,
                    running_since_ms: 0,
                    running_time_s: 0.0,
                    crashes_total: 0,
                    load_quantile: None,
                    instances: BTreeMap::new(),
                };
                self.last_obs.insert(server.clone(), obs.clone());
                self.step(Event::Observed {
                    server,
                    observation: obs,
                })?;
            }
        }
        Ok(())
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

    fn attempt(&mut self, epoch: u64, id: u64, n: u32) {
        let Some(f) = self.shell.inflight.get(&id).filter(|f| f.n == n) else {
            return;
        };
        let kind = f.cmd.kind.clone();
        let servers = Self::servers_of(&kind);
        let t = self.t;
        let timeout = Self::request_timeout(&kind);
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
        self.at(
            arrive,
            Ev::Arrive {
                epoch,
                id,
                n,
                deadline: t + timeout,
            },
        );
    }

    /// The request reaches the agent(s): carried out there, then answered (or the answer is
    /// lost, or comes too late for the client).
    fn arrive(&mut self, epoch: u64, id: u64, n: u32, deadline: u64) {
        let Some(f) = self.shell.inflight.get(&id).filter(|f| f.n == n) else {
            return;
        };
        let kind = f.cmd.kind.clone();
        let t = self.t;
        if Self::servers_of(&kind)
            .iter()
            .any(|s| !self.agents[s].answers(t))
        {
            self.at(deadline.max(t), Ev::AttemptFailed { epoch, id, n });
            return;
        }
        let result = match &kind {
            CommandKind::StartInstance {
                server, instance, ..
            } => {
                let known = self.agents[server].instances.contains_key(instance);
                if !known && self.rng.chance(self.sc.start_refused) {
                    CommandResult::Failed {
                        error: "422: the service failed to start (simulated)".into(),
                    }
                } else {
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
            } => {
                let fail = self.rng.chance(self.sc.action_fails);
                let reboot = self.rng.range(3_000, 15_000);
                let a = self.agents.get_mut(server).expect("known server");
                let fresh = !a.reports.contains_key(run_id);
                let report = a.rejuvenate(run_id, actions, t, fail);
                if fresh && report.failed().is_none() && actions.contains(&Action::RestartHost) {
                    // The report is on disk and on its way; then the host goes down.
                    a.host_up = false;
                    a.process_up = false;
                    let server = server.clone();
                    self.at(t + reboot, Ev::HostUp { server });
                }
                CommandResult::Rejuvenated { report }
            }
            CommandKind::ResetDetector { .. }
            | CommandKind::Alert { .. }
            | CommandKind::RunHook { .. } => CommandResult::Done,
        };
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

    fn attempt_failed(&mut self, epoch: u64, id: u64, n: u32) -> Res {
        let t = self.t;
        let Some(f) = self.shell.inflight.get_mut(&id).filter(|f| f.n == n) else {
            return Ok(());
        };
        if t + f.backoff > f.until {
            let error = format!("gave up after its deadline (attempt {})", n + 1);
            return self.finish(id, CommandResult::Failed { error });
        }
        let at = t + f.backoff;
        f.backoff = (f.backoff * 2).min(3_000);
        f.n += 1;
        let n = f.n;
        self.at(at, Ev::Attempt { epoch, id, n });
        Ok(())
    }

    fn traffic_put(&mut self) -> Res {
        if self.t < self.sync_blocked_until {
            // The proxy does not answer; the adapter backs off (at most 5 s) and retries.
            let at = (self.t + 5_000).min(self.sync_blocked_until + self.rng.range(1, 200));
            self.schedule_traffic(at);
            return Ok(());
        }
        let table = self.cluster.routes.clone();
        let in_flight = self.proxy.apply(&table, self.t, &mut self.rng);
        let version = self.proxy.table.version;
        self.step(Event::TrafficSynced { version, in_flight })?;
        if self.shell.up
            && (self.proxy.busy(self.t) || self.proxy.table.version < self.cluster.routes.version)
        {
            self.schedule_traffic(self.t + RESYNC_MS);
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Faults
    // ---------------------------------------------------------------------------------------

    fn random_server(&mut self) -> ServerId {
        let ids: Vec<ServerId> = self.agents.keys().cloned().collect();
        self.rng.pick(&ids).expect("servers").clone()
    }

    fn fault(&mut self) -> Res {
        let t = self.t;
        let server = self.random_server();
        match self.rng.below(100) {
            0..=7 => {
                if self.shell.up && self.crash_after_next_step.is_none() {
                    let downtime = self.rng.range(200, 20_000);
                    if self.rng.chance(0.4) {
                        self.world("controller will crash right after its next commit".into());
                        self.crash_after_next_step = Some(downtime);
                    } else {
                        self.crash(downtime, "between steps")?;
                    }
                }
            }
            8..=17 => {
                let d = self.rng.range(500, 10_000);
                let a = self.agents.get_mut(&server).expect("known");
                if a.host_up && a.process_up {
                    a.advance_mem(t);
                    a.process_up = false;
                    a.instances.clear();
                    self.at(
                        t + d,
                        Ev::AgentRestart {
                            server: server.clone(),
                        },
                    );
                    self.world(format!("agent on {server} crashes (its instances die)"));
                }
            }
            18..=25 => {
                let d = self.rng.range(2_000, 40_000);
                self.agents.get_mut(&server).expect("known").hung_until = t + d;
                self.world(format!("agent on {server} hangs for {d} ms"));
            }
            26..=33 => {
                let d = self.rng.range(2_000, 30_000);
                self.agents
                    .get_mut(&server)
                    .expect("known")
                    .partitioned_until = t + d;
                self.world(format!(
                    "{server} is cut off from the controller for {d} ms"
                ));
            }
            34..=39 => {
                let revive = self
                    .rng
                    .chance(0.5)
                    .then(|| self.rng.range(20_000, 120_000));
                let a = self.agents.get_mut(&server).expect("known");
                if a.host_up {
                    a.advance_mem(t);
                    a.host_up = false;
                    a.process_up = false;
                    a.instances.clear();
                    if let Some(d) = revive {
                        self.at(
                            t + d,
                            Ev::HostUp {
                                server: server.clone(),
                            },
                        );
                    }
                    self.world(format!("{server} dies (revives after {revive:?} ms)"));
                }
            }
            40..=47 => {
                self.net_loss = 0.1 + 0.4 * self.rng.unit();
                let d = self.rng.range(5_000, 60_000);
                self.loss_until = t + d;
                self.world(format!(
                    "network loses {:.0}% of messages for {d} ms",
                    self.net_loss * 100.0
                ));
            }
            48..=53 => {
                let d = self.rng.range(5_000, 40_000);
                self.slow_until = t + d;
                self.world(format!("network slow (0.2-3 s per message) for {d} ms"));
            }
            54..=61 => {
                let d = self.rng.range(3_000, 40_000);
                self.sync_blocked_until = t + d;
                self.world(format!("traffic adapter cannot reach the proxy for {d} ms"));
            }
            62..=67 => {
                let jump = self.rng.range(60_000, MAX_CLOCK_SKEW_MS as u64) as i64
                    * if self.rng.chance(0.5) { 1 } else { -1 };
                if self.rng.chance(0.6) {
                    self.ctl_offset_ms =
                        (self.ctl_offset_ms + jump).clamp(-MAX_CLOCK_SKEW_MS, MAX_CLOCK_SKEW_MS);
                    self.offset_span.0 = self.offset_span.0.min(self.ctl_offset_ms);
                    self.offset_span.1 = self.offset_span.1.max(self.ctl_offset_ms);
                    self.world(format!(
                        "controller wall clock jumps {jump:+} ms (now {:+} ms off)",
                        self.ctl_offset_ms
                    ));
                } else {
                    let a = self.agents.get_mut(&server).expect("known");
                    a.clock_offset_ms =
                        (a.clock_offset_ms + jump).clamp(-MAX_CLOCK_SKEW_MS, MAX_CLOCK_SKEW_MS);
                    self.world(format!("{server}'s wall clock jumps {jump:+} ms"));
                }
            }
            68..=75 => {
                let d = self.rng.range(1_000, 8_000);
                let ids: Vec<InstanceId> = self.agents[&server].instances.keys().cloned().collect();
                if let Some(id) = self.rng.pick(&ids).cloned() {
                    let a = self.agents.get_mut(&server).expect("known");
                    if let Some(i) = a.instances.get_mut(&id) {
                        i.crashed_until = t + d;
                    }
                    self.world(format!("instance {id} on {server} crashes; back in {d} ms"));
                }
            }
            76..=81 => {
                let d = self.rng.range(10_000, 60_000);
                self.agents.get_mut(&server).expect("known").sick_until = t + d;
                self.world(format!(
                    "instances started on {server} in the next {d} ms never turn healthy"
                ));
            }
            82..=89 => {
                let high = self.rng.chance(0.5);
                self.agents.get_mut(&server).expect("known").load1 = if high { 5.0 } else { 0.5 };
                self.world(format!(
                    "{server}'s load goes {}",
                    if high { "up" } else { "down" }
                ));
            }
            _ => self.operator(server)?,
        }
        Ok(())
    }

    fn operator(&mut self, server: ServerId) -> Res {
        if !self.shell.up {
            return Ok(());
        }
        // Releases go preferably to servers that are held or failed, so they do come back.
        let held: Vec<ServerId> = self
            .cluster
            .servers
            .values()
            .filter(|s| s.maintenance || !s.on_list())
            .map(|s| s.id.clone())
            .collect();
        let command = match self.rng.below(20) {
            0 => OperatorCommand::Pause,
            1 | 2 => OperatorCommand::Resume,
            3..=5 => OperatorCommand::Maintenance { server, on: true },
            6..=10 => OperatorCommand::Maintenance {
                server: self.rng.pick(&held).cloned().unwrap_or(server),
                on: false,
            },
            11..=15 => OperatorCommand::Rejuvenate {
                server,
                force: false,
            },
            _ => OperatorCommand::Rejuvenate {
                server,
                force: true,
            },
        };
        // As the engine: a request that does not fit is refused before it is applied.
        match self.cluster.check_operator(&command) {
            Ok(()) => self.step(Event::Operator {
                by: "sim-operator".into(),
                command,
            }),
            Err(refusal) => {
                self.world(format!("operator request {command:?} refused: {refusal}"));
                Ok(())
            }
        }
    }

    /// Every fault ends, aging stops, loads fall: the quiet part of the schedule.
    fn heal(&mut self) {
        self.healed = true;
        self.crash_after_next_step = None;
        let t = self.t;
        self.loss_until = 0;
        self.slow_until = 0;
        self.sync_blocked_until = 0;
        let ids: Vec<ServerId> = self.agents.keys().cloned().collect();
        for id in ids {
            let a = self.agents.get_mut(&id).expect("known");
            a.hung_until = 0;
            a.partitioned_until = 0;
            a.sick_until = 0;
            a.advance_mem(t);
            a.leak_per_s = 0.0;
            a.load1 = 0.5;
            if !a.host_up {
                self.at(t, Ev::HostUp { server: id });
            } else if !a.process_up {
                self.at(t, Ev::AgentRestart { server: id });
            }
        }
        if !self.shell.up {
            self.at(t, Ev::ControllerRestart);
        }
        self.world("every fault healed; quiet from here".into());
    }
}

/// Where two JSON values differ, floats compared with a relative tolerance of 1e-12.
fn json_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()) => None,
            _ if x == y => None,
            _ => Some(format!("{path}: {x} vs {y}")),
        },
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} vs {} items", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (x, y))| json_difference(x, y, &format!("{path}[{i}]")))
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() || x.keys().zip(y.keys()).any(|(a, b)| a != b) {
                return Some(format!("{path}: different keys"));
            }
            x.iter()
                .zip(y.values())
                .find_map(|((k, x), y)| json_difference(x, y, &format!("{path}.{k}")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

/// The simulated detector: memory past 60% is suspect, past 75% unstable, with a forecast
/// when the server leaks.
fn judge(mem: f64, leak_per_s: f64) -> Judgement {
    let level = if mem >= 0.75 {
        Level::Unstable
    } else if mem >= 0.6 {
        Level::Suspect
    } else {
        Level::Stable
    };
    let tte_s = (leak_per_s > 0.0).then(|| (1.0 - mem) / leak_per_s);
    Judgement {
        level,
        explanation: (level != Level::Stable).then(|| Explanation {
            resource: rejuv_core::config::Resource::MemoryUsed,
            rule: "trend".into(),
            value: mem,
            limit: 0.9,
            slope_per_s: Some(leak_per_s),
            tte_s,
            confidence: Some(0.99),
            message: format!("memory-used at {:.1}% (simulated)", mem * 100.0),
        }),
    }
}

fn short_command(c: &Command) -> String {
    match &c.kind {
        CommandKind::StartInstance {
            server, instance, ..
        } => format!("start {instance}@{server}"),
        CommandKind::StopInstance { server, instance } => format!("stop {instance}@{server}"),
        CommandKind::TransferState { from, to, .. } => format!("transfer {from}->{to}"),
        CommandKind::Rejuvenate { server, run_id, .. } => format!("rejuvenate {server} {run_id}"),
        CommandKind::ResetDetector { server } => format!("reset {server}"),
        CommandKind::Alert { server, .. } => {
            format!("alert {}", server.as_deref().unwrap_or("-"))
        }
        CommandKind::RunHook { hook, .. } => format!("hook {hook}"),
    }
}

fn short_event(e: &Event) -> String {
    match e {
        Event::Observed {
            server,
            observation: o,
        } => {
            if o.reachable {
                let healthy = o.instances.values().filter(|i| i.healthy).count();
                // Whole numbers only: formatting floats is most of the log's cost.
                format!(
                    "observed {server} load {} run {}s {}/{} healthy",
                    if o.load1 > 2.0 { "high" } else { "low" },
                    o.running_time_s as u64,
                    healthy,
                    o.instances.len()
                )
            } else {
                format!("observed {server} unreachable")
            }
        }
        Event::Judged { server, judgement } => format!("judged {server} {}", judgement.level),
        Event::Tick => "tick".into(),
        Event::CommandDone { id, result } => {
            let r = match result {
                CommandResult::Started { .. } => "started".to_string(),
                CommandResult::Stopped => "stopped".into(),
                CommandResult::Transferred => "transferred".into(),
                CommandResult::Rejuvenated { report } => match report.failed() {
                    Some(a) => format!("rejuvenated, {} failed", a.action),
                    None => "rejuvenated".into(),
                },
                CommandResult::Done => "done".into(),
                CommandResult::Failed { error } => format!("FAILED ({error})"),
                CommandResult::HookRan { ok, .. } => format!("hook ok={ok}"),
            };
            format!("done {id}: {r}")
        }
        Event::TrafficSynced { version, in_flight } => format!(
            "synced v{version} busy {}",
            in_flight.values().filter(|n| **n > 0).count()
        ),
        Event::Operator { command, .. } => format!("operator {command:?}"),
    }
}

fn short_output(out: &Output) -> String {
    let mut s = String::new();
    for c in &out.commands {
        s += &format!("[{} {}] ", c.id, short_command(c));
    }
    for e in &out.events {
        s += &format!("<{}> ", e.kind);
    }
    s
}
