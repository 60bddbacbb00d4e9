//! One schedule: the production shell ([`rejuv_core::shell::Shell`], with the production
//! detector and gate inside it) driven over the simulated [`Fleet`], one queued event at a
//! time, with the controller crashing and restarting as the fault schedule says.

use super::describe::{json_difference, short_command};
use super::fleet::{Ev, Fleet, POLL_TIMEOUT_MS, RESYNC_MS};
use super::report::{Options, Violation};
use super::rng::Rng;
use super::world::{Scenario, T0};
use rejuv_core::api::AgentState;
use rejuv_core::cluster::Cluster;
use rejuv_core::shell::{Attempt, Shell};
use rejuv_core::time::Now;
use rejuv_core::types::ServerId;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The engine ticks the core this often.
const TICK_MS: u64 = 1_000;
/// Each agent is polled this often.
const POLL_MS: u64 = 2_000;
/// A fault may be drawn this often.
pub const FAULT_TICK_MS: u64 = 2_000;

pub type Res = Result<(), Violation>;

pub struct Sim {
    /// The controller process's shell; `None` while it is down.
    pub shell: Option<Shell>,
    pub f: Fleet,
}

impl Sim {
    pub fn new(seed: u64, opts: Options) -> Self {
        let mut rng = Rng::new(seed);
        let sc = Scenario::draw(&mut rng);
        let cfg = sc.config();
        let (cluster, _) = Cluster::new(&cfg, Now::new(0, T0));
        let f = Fleet::new(seed, opts, rng, sc, cluster);
        let mut sim = Sim { shell: None, f };
        let line = format!("seed {} scenario {}", seed, sim.f.sc.describe());
        sim.f.log(line);
        sim.start_controller();
        sim.f.at(FAULT_TICK_MS, Ev::FaultTick);
        sim
    }

    /// The state as the running controller has it, or as stored while it is down.
    pub fn cluster(&self) -> &Arc<Cluster> {
        match &self.shell {
            Some(s) => s.cluster(),
            None => &self.f.stored,
        }
    }

    pub fn run_all(&mut self) -> Res {
        while self.f.steps < self.f.opts.steps {
            self.next_event()?;
        }
        self.heal();
        let running: BTreeSet<u64> = self.cluster().workflows.keys().copied().collect();
        let pending: BTreeSet<u64> = self.cluster().pending.keys().copied().collect();
        let bound = self.liveness_bound();
        let deadline = self.f.t + bound;
        loop {
            let c = self.cluster();
            let live = !c.workflows.keys().any(|w| running.contains(w));
            let drained = !c.pending.keys().any(|id| pending.contains(id));
            if live && drained {
                break;
            }
            if self.f.t >= deadline {
                return Err(self.stuck(live, &running, &pending, bound));
            }
            self.next_event()?;
        }
        self.settle()
    }

    fn stuck(
        &self,
        live: bool,
        running: &BTreeSet<u64>,
        pending: &BTreeSet<u64>,
        bound: u64,
    ) -> Violation {
        let c = self.cluster();
        if live {
            let stuck: Vec<String> = c
                .pending
                .values()
                .filter(|cmd| pending.contains(&cmd.id))
                .map(|cmd| format!("{}:{}", cmd.id, short_command(cmd)))
                .collect();
            let detail = format!(
                "commands pending at the heal still unanswered {bound} ms later: {stuck:?}"
            );
            return self.f.violation("outbox-drains", detail);
        }
        let stuck: Vec<String> = c
            .workflows
            .values()
            .filter(|w| running.contains(&w.id))
            .map(|w| format!("{} for {} in {}", w.id, w.server, w.phase))
            .collect();
        let detail =
            format!("workflows still running {bound} ms after every fault healed: {stuck:?}");
        self.f.violation("liveness", detail)
    }

    /// With nothing under way, every instance an agent runs is one the core knows.
    fn settle(&mut self) -> Res {
        let settle_until = self.f.t + 120_000;
        let quiet = |s: &Sim| s.cluster().pending.is_empty() && s.cluster().workflows.is_empty();
        while !quiet(self) && self.f.t < settle_until {
            self.next_event()?;
        }
        let inflight = self.shell.as_ref().map_or(0, |s| s.commands_in_flight());
        if !quiet(self) || inflight > 0 {
            return Ok(());
        }
        let c = self.cluster().clone();
        for (sid, a) in &self.f.agents {
            for id in a.instances.keys() {
                if c.instances.get(id).is_none_or(|i| &i.server != sid) {
                    let detail =
                        format!("{sid}'s agent runs {id}, which the core does not know there");
                    return Err(self.f.violation("no-leaked-instances", detail));
                }
            }
        }
        Ok(())
    }

    /// How long after the heal every workflow must have ended: each phase's limit once, the
    /// command deadlines, poll slack, and the wall-clock skew the run went through (the core's
    /// timeouts run on wall time).
    fn liveness_bound(&self) -> u64 {
        let cfg = &self.f.cfg;
        let r = &cfg.rejuvenation;
        let ms = |d: Duration| d.as_millis() as u64;
        let drain = cfg
            .services
            .values()
            .map(|s| ms(s.drain))
            .max()
            .unwrap_or(0);
        let skew = (self.f.offset_span.1 - self.f.offset_span.0).unsigned_abs();
        ms(r.duplex_timeout)
            + ms(cfg.gate.max_wait)
            + drain
            + 30_000
            + 2 * ms(r.verify_timeout)
            + 90_000
            + 30_000
            + skew
    }

    pub fn next_event(&mut self) -> Res {
        let Some(((t, _), ev)) = self.f.queue.pop_first() else {
            return Err(self
                .f
                .violation("simulation", "the event queue ran dry".into()));
        };
        self.f.t = t;
        self.handle(ev)?;
        self.after_shell()
    }

    /// What the shell's last call left to do: a broken invariant, or the failpoint's crash.
    fn after_shell(&mut self) -> Res {
        if let Some(v) = self.f.violation.take() {
            return Err(v);
        }
        if let Some(downtime) = self.f.crash_now.take() {
            return self.crash(downtime, "right after a commit");
        }
        Ok(())
    }

    pub fn start_controller(&mut self) {
        let f = &mut self.f;
        let epoch = f.process.epoch + 1;
        f.process = super::fleet::Process {
            up: true,
            epoch,
            started_t: f.t,
            wall_at_start: (T0 as i64 + f.t as i64 + f.ctl_offset_ms) as u64,
            traffic_scheduled: false,
        };
        f.forget_checks();
        let stored = (*f.stored).clone();
        let mut shell = Shell::new(f.cfg.clone(), stored, false);
        f.at(f.t, Ev::Tick { epoch });
        let servers: Vec<ServerId> = f.agents.keys().cloned().collect();
        for (k, server) in servers.into_iter().enumerate() {
            let t = f.t + 100 + 150 * k as u64;
            f.at(t, Ev::Poll { epoch, server });
        }
        f.schedule_traffic(f.t);
        let now = f.now();
        shell.start(now, f);
        self.shell = Some(shell);
    }

    /// The controller dies: what it had under way is gone with its epoch; the stored state
    /// (read back through JSON, as the store keeps it) is what the next process starts from.
    pub fn crash(&mut self, downtime: u64, how: &str) -> Res {
        let f = &mut self.f;
        f.crashes += 1;
        f.world(format!(
            "controller crashes {how}; restarts in {downtime} ms"
        ));
        let stored = f.stored.clone();
        let json = serde_json::to_string(&*stored).map_err(|e| {
            f.violation(
                "store-round-trip",
                format!("the state does not serialize: {e}"),
            )
        })?;
        let back: Cluster = serde_json::from_str(&json).map_err(|e| {
            f.violation(
                "store-round-trip",
                format!("the stored state does not load: {e}"),
            )
        })?;
        if back != *stored {
            // serde_json (without its `float_roundtrip` feature, as the controller builds it)
            // may read a float back one ulp off; anything else is a real difference.
            let written = serde_json::to_value(&*stored).unwrap_or_default();
            let read = serde_json::to_value(&back).unwrap_or_default();
            if let Some(path) = json_difference(&written, &read, "$") {
                let detail = format!(
                    "the state read back from JSON differs from the state written at {path}"
                );
                return Err(f.violation("store-round-trip", detail));
            }
            f.float_drift += 1;
        }
        f.stored = Arc::new(back);
        f.process.up = false;
        f.process.epoch += 1;
        self.shell = None;
        self.f.at(self.f.t + downtime, Ev::ControllerRestart);
        Ok(())
    }

    fn handle(&mut self, ev: Ev) -> Res {
        let f = &mut self.f;
        let now = f.now();
        match ev {
            Ev::Tick { epoch } if f.live(epoch) => {
                f.at(f.t + TICK_MS, Ev::Tick { epoch });
                if let Some(s) = &mut self.shell {
                    s.tick(now, f);
                }
            }
            Ev::Poll { epoch, server } if f.live(epoch) => self.poll(epoch, server),
            Ev::PollRead {
                epoch,
                server,
                sent_t,
                sent_wall,
                reply_at,
            } => self.poll_read(epoch, server, sent_t, sent_wall, reply_at),
            Ev::PollReply {
                epoch,
                server,
                sent_t,
                sent_wall,
                reply,
            } if f.live(epoch) => {
                let next = (sent_t + POLL_MS).max(f.t);
                f.at(
                    next,
                    Ev::Poll {
                        epoch,
                        server: server.clone(),
                    },
                );
                if let Some(s) = &mut self.shell {
                    let reply = reply.as_deref().ok_or(());
                    s.sample(&server, sent_wall, reply, now, f);
                }
            }
            Ev::Arrive {
                epoch,
                command,
                n,
                deadline,
            } if f.live(epoch) => f.arrive(epoch, &command, n, deadline),
            Ev::Reply {
                epoch,
                id,
                n,
                result,
            } if f.live(epoch) => {
                if let Some(s) = &mut self.shell {
                    s.attempted(id, n, Attempt::Answered(result), now, f);
                }
            }
            Ev::AttemptFailed { epoch, id, n } if f.live(epoch) => {
                if let Some(s) = &mut self.shell {
                    let error = format!("no answer (attempt {})", n + 1);
                    let failed = Attempt::Failed {
                        error,
                        permanent: false,
                    };
                    s.attempted(id, n, failed, now, f);
                }
            }
            Ev::Wake { epoch, id, n } if f.live(epoch) => {
                if let Some(s) = &mut self.shell {
                    s.wake(id, n, f);
                }
            }
            Ev::TrafficPut { epoch } if f.live(epoch) => {
                f.process.traffic_scheduled = false;
                self.traffic_put();
            }
            Ev::FaultTick if !f.healed => {
                f.at(f.t + FAULT_TICK_MS, Ev::FaultTick);
                if f.rng.chance(f.sc.profile.fault_chance()) {
                    self.fault()?;
                }
            }
            Ev::ControllerRestart if !f.process.up => {
                f.world("controller restarts: resending the outbox".into());
                self.start_controller();
            }
            Ev::AgentRestart { server } => self.agent_restart(server),
            Ev::HostUp { server } => self.host_up(server),
            // An event of a controller process that is no more.
            _ => {}
        }
        Ok(())
    }

    fn agent_restart(&mut self, server: ServerId) {
        let a = self.f.agents.get_mut(&server).expect("known server");
        if a.host_up && !a.process_up {
            a.process_up = true;
            a.instances.clear();
            self.f.world(format!(
                "agent on {server} restarted (its instances are lost)"
            ));
        }
    }

    fn host_up(&mut self, server: ServerId) {
        let t = self.f.t;
        let a = self.f.agents.get_mut(&server).expect("known server");
        if !a.host_up {
            a.host_up = true;
            a.process_up = true;
            a.instances.clear();
            a.running_since_wall = a.wall(t);
            a.fresh(t);
            self.f.world(format!("{server} is up again after a reboot"));
        }
    }

    fn poll(&mut self, epoch: u64, server: ServerId) {
        let f = &mut self.f;
        let sent_t = f.t;
        let sent_wall = f.now().wall_ms;
        let lost = f.lost();
        let l1 = f.latency();
        let l2 = f.latency();
        let a = &f.agents[&server];
        let refused = a.host_up && !a.process_up;
        let unanswered = Ev::PollReply {
            epoch,
            server: server.clone(),
            sent_t,
            sent_wall,
            reply: None,
        };
        if !a.answers(sent_t) || lost {
            let at = if refused {
                sent_t + 1
            } else {
                sent_t + POLL_TIMEOUT_MS
            };
            f.at(at, unanswered);
            return;
        }
        let arrive = (sent_t + l1).max(a.hung_until);
        let reply_at = arrive + l2;
        if reply_at > sent_t + POLL_TIMEOUT_MS {
            f.at(sent_t + POLL_TIMEOUT_MS, unanswered);
        } else {
            let read = Ev::PollRead {
                epoch,
                server,
                sent_t,
                sent_wall,
                reply_at,
            };
            f.at(arrive, read);
        }
    }

    /// The poll reaches the agent, which reads its state (or has died meanwhile).
    fn poll_read(
        &mut self,
        epoch: u64,
        server: ServerId,
        sent_t: u64,
        sent_wall: u64,
        reply_at: u64,
    ) {
        let f = &mut self.f;
        let t = f.t;
        let a = f.agents.get_mut(&server).expect("known server");
        let reply: Option<Box<AgentState>> = a.answers(t).then(|| Box::new(a.state(t, &server)));
        let at = if reply.is_some() {
            reply_at
        } else {
            sent_t + POLL_TIMEOUT_MS
        };
        let ev = Ev::PollReply {
            epoch,
            server,
            sent_t,
            sent_wall,
            reply,
        };
        f.at(at.max(t), ev);
    }

    fn traffic_put(&mut self) {
        let f = &mut self.f;
        if f.t < f.sync_blocked_until {
            // The proxy does not answer; the adapter backs off (at most 5 s) and retries.
            let at = (f.t + 5_000).min(f.sync_blocked_until + f.rng.range(1, 200));
            f.schedule_traffic(at);
            return;
        }
        let Some(shell) = &mut self.shell else {
            return;
        };
        let table = shell.cluster().routes.clone();
        let in_flight = f.proxy.apply(&table, f.t, &mut f.rng);
        let version = f.proxy.table.version;
        let now = f.now();
        shell.traffic_synced(version, in_flight, now, f);
        if f.process.up
            && f.crash_now.is_none()
            && (f.proxy.busy(f.t) || f.proxy.table.version < shell.cluster().routes.version)
        {
            f.schedule_traffic(f.t + RESYNC_MS);
        }
    }
}
