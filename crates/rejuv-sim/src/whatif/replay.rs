//! The `rejuv` policy's replay: the production shell ([`Shell`]: the core's state machine,
//! the detector, the gate, the budget, the cooldown and escalation inside it) driven over
//! simulated agents whose samples come from the recorded series, on the recording's clock.
//!
//! - Each server's agent reports its series as the host's memory (`used / total` = replayed
//!   value / capacity), with the sample time of the recording; it is polled at every recorded
//!   sample, and every [`BUSY_POLL_MS`] while its server is the source or the target of a
//!   workflow. Before its first sample it reports no memory reading.
//! - Commands are carried out as [`super::timing`] says: a copy is healthy 30 s after its
//!   start; the rejuvenation's actions take a minute and reset the series when they begin
//!   ([`Track::rejuvenate`]); the load balancer applies tables after a second and drains in
//!   five.
//! - The replay ends with the fleet's last sample: a workflow that has not rejuvenated its
//!   server by then does not count.
//!
//! Nothing here decides: what to rejuvenate, when, and whether the budget allows it is the
//! core's, exactly as in the controller.

use super::config::server_ip;
use super::input::Fleet;
use super::model::{ResetModel, Track};
use super::timing::{
    BUSY_POLL_MS, COPY_HEALTHY_MS, DRAIN_MS, PROXY_APPLY_MS, REJUVENATE_MS, REPLY_MS, TICK_BUSY_MS,
    TICK_IDLE_MS,
};
use rejuv_core::api::{
    ActionOutcome, ActionReport, AgentState, BackendState, InstanceState, InstanceStatus,
    RejuvenationReport,
};
use rejuv_core::cluster::{Cluster, Command, CommandKind, CommandResult, LogEvent, Workflow};
use rejuv_core::config::{Action, Config};
use rejuv_core::shell::{Attempt, Effects, Shell, Step};
use rejuv_core::time::Now;
use rejuv_core::types::{Role, Sample};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Wall-clock ms at the replay's start (the config holds no freeze window: the date is moot).
const WALL0: u64 = 1_700_000_000_000;
/// Every simulated host's memory: a series at its capacity uses all of it.
const MEM_TOTAL: u64 = 1 << 40;
/// A recording holds no load: every host reports this one, always.
const LOAD: f64 = 0.5;

/// A forecast the detector made, as the workflow it started carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Index of the server in the fleet.
    pub server: usize,
    /// When the workflow started, seconds (the recording's clock).
    pub t_s: f64,
    /// The value then and the rate, in the series' unit.
    pub value: f64,
    pub slope_per_s: f64,
    pub tte_s: f64,
}

/// One rejuvenation the core asked for: which server, when, and the actions of the level it
/// escalated to.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub server: usize,
    pub t_s: f64,
    pub actions: Vec<Action>,
}

/// What the `rejuv` policy did.
pub struct RejuvReplay<'a> {
    pub tracks: Vec<Track<'a>>,
    pub forecasts: Vec<Forecast>,
    pub runs: Vec<Run>,
    /// Most workflows running at once.
    pub max_concurrent: u32,
    /// Lowest share of the primaries' serving units on the available server list.
    pub min_capacity_fraction: f64,
    pub completed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    /// Servers kept out of service at the end (failed, or their escalation exhausted).
    pub kept_out: Vec<String>,
}

/// Replays `fleet` through the core configured by `cfg`; `progress` hears the share done and
/// the rejuvenations so far, now and then.
pub fn replay<'a>(
    fleet: &'a Fleet,
    cfg: Arc<Config>,
    model: ResetModel,
    progress: &mut dyn FnMut(f64, usize),
) -> RejuvReplay<'a> {
    let mut w = World::new(fleet, model);
    let (cluster, _) = Cluster::new(&cfg, w.now());
    let mut shell = Shell::new(cfg, cluster, false);
    shell.start(w.now(), &mut w);
    for (s, series) in fleet.servers.iter().enumerate() {
        // One poll each at the start, so that the core sees every agent answer.
        w.polled[s] = true;
        w.at(0, Ev::Poll(s));
        w.at(w.ms(series.t0()), Ev::Point(s));
    }
    w.at(0, Ev::Tick);
    let end_ms = w.ms(fleet.end_s());
    // Progress is told every this many events.
    const TELL_EVERY: u32 = 8192;
    let mut untold = 0;
    while let Some(((t, _), ev)) = w.queue.pop_first() {
        if t > end_ms {
            break;
        }
        w.t_ms = t;
        w.handle(ev, &mut shell);
        untold += 1;
        if untold == TELL_EVERY {
            untold = 0;
            let done = t as f64 / end_ms.max(1) as f64;
            let n = w.tracks.iter().map(|x| x.rejuvenations.len()).sum();
            progress(done, n);
        }
    }
    let c = shell.cluster();
    let kept_out = c
        .servers
        .values()
        .filter(|s| !s.on_list() && !c.workflows.values().any(|w| w.server == s.id))
        .map(|s| s.id.clone())
        .collect();
    RejuvReplay {
        max_concurrent: w.max_concurrent,
        min_capacity_fraction: w.min_capacity_fraction,
        completed: c.completed_total,
        rolled_back: c.rolled_back_total,
        failed: c.failed_total,
        kept_out,
        forecasts: w.forecasts,
        runs: w.runs,
        tracks: w.tracks,
    }
}

/// Something that happens at a moment of the replay.
#[derive(Debug)]
enum Ev {
    /// The server's agent takes its next recorded sample, and is polled.
    Point(usize),
    /// The server's agent is polled (at the start, and while it is in a workflow).
    Poll(usize),
    Tick,
    Reply {
        id: u64,
        attempt: u32,
        result: CommandResult,
    },
    Wake {
        id: u64,
        attempt: u32,
    },
    /// The load balancer applies the newest route table.
    Traffic,
}

/// One simulated agent.
struct Agent {
    addr: IpAddr,
    /// Instance id → (port, ms its health check passes from, wall ms it started).
    instances: BTreeMap<String, (u16, u64, u64)>,
    next_port: u16,
    running_since_ms: u64,
    crashes: u64,
    /// Rejuvenation reports by run id: a run asked for again is answered, not run again.
    reports: BTreeMap<String, RejuvenationReport>,
    /// Index of the next recorded sample.
    next_point: usize,
}

/// The world the shell acts on.
struct World<'a> {
    fleet: &'a Fleet,
    start_s: f64,
    /// Replay time, ms since the fleet's first sample.
    t_ms: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    index: BTreeMap<&'a str, usize>,
    agents: Vec<Agent>,
    tracks: Vec<Track<'a>>,
    /// A poll of the server is queued.
    polled: Vec<bool>,
    /// The server is the source or the target of a workflow.
    busy: Vec<bool>,
    routes_seen: u64,
    traffic_queued: bool,
    /// Draining backends and the replay ms the load balancer began draining each.
    draining_since: BTreeMap<String, u64>,
    workflows_seen: BTreeSet<u64>,
    forecasts: Vec<Forecast>,
    runs: Vec<Run>,
    max_concurrent: u32,
    min_capacity_fraction: f64,
    primary_units: f64,
}

impl<'a> World<'a> {
    fn new(fleet: &'a Fleet, model: ResetModel) -> Self {
        let start_s = fleet.start_s();
        let mut w = World {
            fleet,
            start_s,
            t_ms: 0,
            seq: 0,
            queue: BTreeMap::new(),
            index: BTreeMap::new(),
            agents: Vec::new(),
            tracks: fleet
                .servers
                .iter()
                .map(|s| Track::keeping(s, model))
                .collect(),
            polled: vec![false; fleet.servers.len()],
            busy: vec![false; fleet.servers.len()],
            routes_seen: 0,
            traffic_queued: false,
            draining_since: BTreeMap::new(),
            workflows_seen: BTreeSet::new(),
            forecasts: Vec::new(),
            runs: Vec::new(),
            max_concurrent: 0,
            min_capacity_fraction: 1.0,
            primary_units: fleet.primary_units().max(1) as f64,
        };
        for (i, s) in fleet.servers.iter().enumerate() {
            w.index.insert(&s.id, i);
            let running_since_ms = w.wall(w.ms(s.t0()));
            w.agents.push(Agent {
                addr: IpAddr::V4(server_ip(i)),
                instances: BTreeMap::new(),
                next_port: 20_000,
                running_since_ms,
                crashes: 0,
                reports: BTreeMap::new(),
                next_point: 0,
            });
        }
        w
    }

    /// Replay ms of a recording time (seconds).
    fn ms(&self, t_s: f64) -> u64 {
        ((t_s - self.start_s) * 1000.0).round().max(0.0) as u64
    }

    /// The recording's time (seconds) of a replay ms.
    fn series_s(&self, t_ms: u64) -> f64 {
        self.start_s + t_ms as f64 / 1000.0
    }

    fn wall(&self, t_ms: u64) -> u64 {
        WALL0 + t_ms
    }

    fn now(&self) -> Now {
        Now::new(self.t_ms, self.wall(self.t_ms))
    }

    fn at(&mut self, t_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t_ms, self.seq), ev);
    }

    fn handle(&mut self, ev: Ev, shell: &mut Shell) {
        let now = self.now();
        match ev {
            Ev::Point(s) => {
                let k = self.agents[s].next_point;
                self.agents[s].next_point += 1;
                let crashes = self.tracks[s].exhaustions.len();
                self.tracks[s].advance(k);
                if self.tracks[s].exhaustions.len() > crashes {
                    self.agents[s].crashes += 1;
                }
                let fleet = self.fleet;
                if let Some(next) = fleet.servers[s].t.get(k + 1) {
                    let at = self.ms(*next);
                    self.at(at, Ev::Point(s));
                }
                self.poll(s, shell);
            }
            Ev::Poll(s) => {
                self.poll(s, shell);
                if self.busy[s] {
                    self.at(self.t_ms + BUSY_POLL_MS, Ev::Poll(s));
                } else {
                    self.polled[s] = false;
                }
            }
            Ev::Tick => {
                shell.tick(now, self);
                let c = shell.cluster();
                let every = if c.workflows.is_empty() && c.pending.is_empty() {
                    TICK_IDLE_MS
                } else {
                    TICK_BUSY_MS
                };
                self.at(self.t_ms + every, Ev::Tick);
            }
            Ev::Reply {
                id,
                attempt,
                result,
            } => shell.attempted(id, attempt, Attempt::Answered(result), now, self),
            Ev::Wake { id, attempt } => shell.wake(id, attempt, self),
            Ev::Traffic => self.traffic(shell),
        }
    }

    fn poll(&mut self, s: usize, shell: &mut Shell) {
        let state = self.state(s);
        let now = self.now();
        let fleet = self.fleet;
        shell.sample(&fleet.servers[s].id, now.wall_ms, Ok(&state), now, self);
    }

    /// What the server's agent answers now: its newest recorded sample as the host's memory.
    fn state(&self, s: usize) -> AgentState {
        let a = &self.agents[s];
        let tr = &self.tracks[s];
        let series = &self.fleet.servers[s];
        let now_wall = self.wall(self.t_ms);
        let (taken_at_ms, total, used) = match tr.last {
            Some(i) => {
                let frac = tr.value / series.capacity;
                let used = (frac * MEM_TOTAL as f64)
                    .round()
                    .clamp(0.0, u64::MAX as f64) as u64;
                (self.wall(self.ms(series.t[i])), MEM_TOTAL, used)
            }
            // No reading yet (a total of 0 is no memory reading to the detector); just before
            // now, so that a first sample taken at this same moment is still news.
            None => (now_wall.saturating_sub(1), 0, 0),
        };
        let sample = Sample {
            taken_at_ms,
            load1: LOAD,
            load5: LOAD,
            load15: LOAD,
            running_time_s: now_wall.saturating_sub(a.running_since_ms) as f64 / 1000.0,
            mem_total_bytes: total,
            mem_used_bytes: used,
            mem_available_bytes: total.saturating_sub(used),
            ..Sample::default()
        };
        let instances = a
            .instances
            .iter()
            .map(|(id, (port, healthy_at, started))| {
                let healthy = self.t_ms >= *healthy_at;
                InstanceStatus {
                    id: id.clone(),
                    service: "app".into(),
                    addr: Some(SocketAddr::new(a.addr, *port)),
                    pid: None,
                    state: if healthy {
                        InstanceState::Running
                    } else {
                        InstanceState::Starting
                    },
                    healthy,
                    started_at_ms: Some(*started),
                    crashes: 0,
                    last_exit: None,
                    last_output: Vec::new(),
                }
            })
            .collect();
        AgentState {
            server_id: series.id.clone(),
            agent_started_at_ms: a.running_since_ms,
            running_since_ms: a.running_since_ms,
            epoch: 0,
            sample,
            instances,
            crashes_total: a.crashes,
            last_rejuvenation: None,
            version: "whatif".into(),
            boot_id: String::new(),
        }
    }

    /// The load balancer applies the newest table; backends it drains finish their requests
    /// [`DRAIN_MS`] later.
    fn traffic(&mut self, shell: &mut Shell) {
        self.traffic_queued = false;
        let table = shell.cluster().routes.clone();
        let draining: BTreeSet<&String> = table
            .services
            .values()
            .flat_map(|r| r.backends.iter())
            .filter(|b| b.state == BackendState::Draining)
            .map(|b| &b.id)
            .collect();
        self.draining_since.retain(|id, _| draining.contains(id));
        let t = self.t_ms;
        let mut in_flight = BTreeMap::new();
        let mut next: Option<u64> = None;
        for id in draining {
            let since = *self.draining_since.entry(id.clone()).or_insert(t);
            let busy = t < since + DRAIN_MS;
            in_flight.insert(id.clone(), u64::from(busy));
            if busy {
                next = Some(next.map_or(since + DRAIN_MS, |n| n.min(since + DRAIN_MS)));
            }
        }
        let now = self.now();
        shell.traffic_synced(table.version, in_flight, now, self);
        if let Some(at) = next {
            self.queue_traffic(at);
        }
    }

    fn queue_traffic(&mut self, at: u64) {
        if !self.traffic_queued {
            self.traffic_queued = true;
            self.at(at, Ev::Traffic);
        }
    }

    fn reply(&mut self, delay_ms: u64, id: u64, attempt: u32, result: CommandResult) {
        self.at(
            self.t_ms + delay_ms,
            Ev::Reply {
                id,
                attempt,
                result,
            },
        );
    }

    /// The agent of server `s` carries out run `run_id`.
    fn rejuvenate(&mut self, s: usize, run_id: &str, actions: &[Action]) -> RejuvenationReport {
        let started = self.wall(self.t_ms);
        // What frees a leaking process's memory is stopping it; the running time restarts
        // with the agent or the host, as on a real agent.
        let stops = actions.iter().any(|a| {
            matches!(
                a,
                Action::StopInstances | Action::RestartAgent | Action::RestartHost
            )
        });
        let restarts = actions
            .iter()
            .any(|a| matches!(a, Action::RestartAgent | Action::RestartHost));
        let t_s = self.series_s(self.t_ms);
        self.tracks[s].rejuvenate(t_s, stops);
        self.runs.push(Run {
            server: s,
            t_s,
            actions: actions.to_vec(),
        });
        let a = &mut self.agents[s];
        if stops {
            a.instances.clear();
        }
        if restarts {
            a.running_since_ms = started;
        }
        let report = RejuvenationReport {
            run_id: run_id.to_string(),
            started_at_ms: started,
            finished_at_ms: started + REJUVENATE_MS,
            boot_id: None,
            actions: actions
                .iter()
                .map(|x| ActionReport {
                    action: *x,
                    outcome: ActionOutcome::Done,
                    detail: "simulated".into(),
                })
                .collect(),
        };
        a.reports.insert(run_id.to_string(), report.clone());
        report
    }

    /// Takes what a committed step changed: the busy servers, new workflows' forecasts, the
    /// budget used and the capacity left.
    fn committed(&mut self, c: &Cluster) {
        self.max_concurrent = self.max_concurrent.max(c.workflows.len() as u32);
        let serving: u64 = c
            .servers
            .values()
            .filter(|s| s.role == Role::Primary && s.on_list() && !s.maintenance)
            .filter_map(|s| self.index.get(s.id.as_str()))
            .map(|i| u64::from(self.fleet.servers[*i].units))
            .sum();
        self.min_capacity_fraction = self
            .min_capacity_fraction
            .min((serving as f64 / self.primary_units).min(1.0));
        let mut busy = vec![false; self.busy.len()];
        for w in c.workflows.values() {
            if self.workflows_seen.insert(w.id) {
                self.forecast(w);
            }
            for id in [&w.server, &w.target] {
                if let Some(i) = self.index.get(id.as_str()) {
                    busy[*i] = true;
                }
            }
        }
        for (s, b) in busy.iter().enumerate() {
            if *b && !self.polled[s] {
                self.polled[s] = true;
                self.at(self.t_ms + BUSY_POLL_MS, Ev::Poll(s));
            }
        }
        self.busy = busy;
    }

    /// The forecast a new workflow started on, if the trend rule made one.
    fn forecast(&mut self, w: &Workflow) {
        let (Some(e), Some(&i)) = (&w.explanation, self.index.get(w.server.as_str())) else {
            return;
        };
        let (Some(tte_s), Some(slope)) = (e.tte_s, e.slope_per_s) else {
            return;
        };
        let cap = self.fleet.servers[i].capacity;
        let t_ms = w.started_at_ms.saturating_sub(WALL0);
        self.forecasts.push(Forecast {
            server: i,
            t_s: self.series_s(t_ms),
            value: e.value * cap,
            slope_per_s: slope * cap,
            tte_s,
        });
    }
}

impl Effects for World<'_> {
    fn commit(&mut self, _: &Cluster, _: &[LogEvent], _: &[Workflow]) -> Result<(), String> {
        // Nothing outlives the replay: there is no store.
        Ok(())
    }

    fn carry_out(&mut self, command: &Command, attempt: u32) {
        let id = command.id;
        let server = match &command.kind {
            CommandKind::StartInstance { server, .. }
            | CommandKind::StopInstance { server, .. }
            | CommandKind::Rejuvenate { server, .. } => self.index.get(server.as_str()).copied(),
            _ => None,
        };
        match (&command.kind, server) {
            (CommandKind::StartInstance { instance, .. }, Some(s)) => {
                let t = self.t_ms;
                let wall = self.wall(t);
                let a = &mut self.agents[s];
                let port = match a.instances.get(instance) {
                    Some((port, ..)) => *port,
                    None => {
                        let port = a.next_port;
                        a.next_port = if port >= 29_999 { 20_000 } else { port + 1 };
                        a.instances
                            .insert(instance.clone(), (port, t + COPY_HEALTHY_MS, wall));
                        port
                    }
                };
                let addr = Some(SocketAddr::new(a.addr, port));
                self.reply(REPLY_MS, id, attempt, CommandResult::Started { addr });
            }
            (CommandKind::StopInstance { instance, .. }, Some(s)) => {
                self.agents[s].instances.remove(instance);
                self.reply(REPLY_MS, id, attempt, CommandResult::Stopped);
            }
            (
                CommandKind::Rejuvenate {
                    run_id, actions, ..
                },
                Some(s),
            ) => {
                let (delay, report) = match self.agents[s].reports.get(run_id) {
                    Some(r) => (REPLY_MS, r.clone()),
                    None => (REJUVENATE_MS, self.rejuvenate(s, run_id, actions)),
                };
                self.reply(delay, id, attempt, CommandResult::Rejuvenated { report });
            }
            (CommandKind::TransferState { .. }, _) => {
                self.reply(REPLY_MS, id, attempt, CommandResult::Transferred);
            }
            (CommandKind::RunHook { .. }, _) => {
                // A replay's config holds no hooks; one that is asked for passes.
                let result = CommandResult::HookRan {
                    ok: true,
                    detail: "no hooks run in a replay".into(),
                };
                self.reply(0, id, attempt, result);
            }
            (CommandKind::Alert { .. } | CommandKind::ResetDetector { .. }, _) => {
                self.reply(0, id, attempt, CommandResult::Done);
            }
            (_, None) => {
                let error = "no such server in the replayed fleet".to_string();
                self.reply(0, id, attempt, CommandResult::Failed { error });
            }
        }
    }

    fn wake_at(&mut self, at_mono_ms: u64, id: u64, attempt: u32) {
        let at = at_mono_ms.max(self.t_ms);
        self.at(at, Ev::Wake { id, attempt });
    }

    fn stepped(&mut self, step: &Step<'_>) {
        let c = step.cluster;
        if c.routes.version != self.routes_seen {
            self.routes_seen = c.routes.version;
            self.queue_traffic(self.t_ms + PROXY_APPLY_MS);
        }
        // Workflows, roles and the list change only in committed steps.
        if step.committed {
            self.committed(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whatif::config::{cluster_config, PolicySections};
    use crate::whatif::input::Series;
    use crate::whatif::placement::Placement;

    const CAP: f64 = 8.0e9;

    /// 10 s samples for `len_s`: from 30% of the capacity to exhaustion at `ex_s` (with a
    /// small wiggle), or flat at 40% when `ex_s` is `None`.
    fn series(id: &str, ex_s: Option<f64>, len_s: f64) -> Series {
        let n = (len_s / 10.0) as usize;
        let t: Vec<f64> = (0..n).map(|i| i as f64 * 10.0).collect();
        let v = t
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let wiggle = 0.002 * (((i * 7919) % 13) as f64 / 13.0 - 0.5);
                let frac = match ex_s {
                    Some(ex) => 0.3 + 0.7 * t / ex,
                    None => 0.4,
                };
                (frac + wiggle) * CAP
            })
            .collect();
        Series {
            id: id.into(),
            capacity: CAP,
            role: rejuv_core::types::Role::Primary,
            units: 1,
            t,
            v,
        }
    }

    fn run<'a>(fleet: &'a Fleet, sections: &PolicySections) -> RejuvReplay<'a> {
        let cfg = cluster_config(fleet, sections, Placement::for_fleet(fleet)).unwrap();
        replay(fleet, Arc::new(cfg), ResetModel::Offset, &mut |_, _| {})
    }

    #[test]
    fn a_leaking_server_is_rejuvenated_before_it_exhausts_and_the_flat_ones_are_left_alone() {
        // Eleven hours: the leak would exhaust at ten, and after its rejuvenation it does not
        // come near exhaustion again before the recording ends.
        let ex = 10.0 * 3600.0;
        let fleet = Fleet {
            servers: vec![
                series("flat1", None, 11.0 * 3600.0),
                series("leak", Some(ex), 11.0 * 3600.0),
                series("flat2", None, 11.0 * 3600.0),
            ],
        };
        let r = run(&fleet, &PolicySections::defaults());
        let (flat1, leak, flat2) = (&r.tracks[0], &r.tracks[1], &r.tracks[2]);
        assert!(flat1.rejuvenations.is_empty() && flat2.rejuvenations.is_empty());
        assert!(leak.exhaustions.is_empty(), "{:?}", leak.exhaustions);
        assert_eq!(leak.rejuvenations.len(), 1, "{:?}", leak.rejuvenations);
        let rj = leak.rejuvenations[0];
        let lead = rj.lead_s.expect("it would have exhausted");
        assert!(
            lead >= 600.0 && (lead - (ex - rj.t_s)).abs() <= 10.0,
            "{rj:?}"
        );
        // The forecast the workflow started on, near the truth.
        assert_eq!(r.forecasts.len(), 1);
        let f = &r.forecasts[0];
        assert_eq!(f.server, 1);
        let truth = ex - f.t_s;
        assert!(
            (f.tte_s - truth).abs() < 0.25 * truth,
            "{f:?} truth {truth}"
        );
        // One workflow at a time, and while it ran the leaking server was off the list.
        assert_eq!(r.max_concurrent, 1);
        assert!((r.min_capacity_fraction - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!((r.completed, r.rolled_back, r.failed), (1, 0, 0));
        assert!(r.kept_out.is_empty());
    }

    #[test]
    fn the_budget_and_the_cooldown_hold_rejuvenations_back() {
        // Four servers leaking alike: one workflow at a time is enough without a cooldown;
        // with three hours of cooldown after each, the later ones run out first.
        let ex = 10.0 * 3600.0;
        let fleet = Fleet {
            servers: (0..4)
                .map(|i| series(&format!("s{i}"), Some(ex + 600.0 * i as f64), 11.0 * 3600.0))
                .collect(),
        };
        let free = run(&fleet, &PolicySections::defaults());
        assert!(free.tracks.iter().all(|t| t.exhaustions.is_empty()));
        assert!(free.tracks.iter().all(|t| t.rejuvenations.len() == 1));
        assert_eq!(free.max_concurrent, 1, "1 per 20 primaries: 1");
        let text = format!(
            "{}\n[budget]\nmax_concurrent = 1\ncooldown = \"3h\"\n",
            DEFAULT_POLICY_NO_BUDGET
        );
        let held = run(&fleet, &PolicySections::from_toml(&text, "test").unwrap());
        let exhausted = held
            .tracks
            .iter()
            .filter(|t| !t.exhaustions.is_empty())
            .count();
        assert!(exhausted >= 2, "the cooldown held back only {exhausted}");
        assert_eq!(held.max_concurrent, 1);
    }

    #[test]
    fn escalation_runs_stronger_actions_and_keeps_out_a_server_that_keeps_aging() {
        // A leak that runs out four hours after every restart ages again well within the
        // window: the second rejuvenation runs the stronger level, and after the strongest
        // has run and it aged again the core keeps it out for a person to look at.
        let fleet = Fleet {
            servers: vec![
                series("leak", Some(4.0 * 3600.0), 12.0 * 3600.0),
                series("flat", None, 12.0 * 3600.0),
            ],
        };
        let text = format!(
            "{}\n[rejuvenation]\nactions = [\"stop-instances\", \"restart-agent\"]\nescalation = [[\"stop-instances\", \"clear-scratch\", \"restart-agent\"]]\nescalation_window = \"24h\"\nverify_timeout = \"5m\"\n",
            DEFAULT_POLICY_NO_REJUVENATION
        );
        let r = run(&fleet, &PolicySections::from_toml(&text, "test").unwrap());
        let levels: Vec<&[Action]> = r
            .runs
            .iter()
            .filter(|x| x.server == 0)
            .map(|x| x.actions.as_slice())
            .collect();
        assert!(levels.len() >= 3, "{:?}", r.runs);
        assert_eq!(levels[0], [Action::StopInstances, Action::RestartAgent]);
        assert!(
            levels[1..]
                .iter()
                .all(|a| a.contains(&Action::ClearScratch)),
            "{levels:?}"
        );
        assert_eq!(r.kept_out, ["leak"]);
        assert!(
            r.runs.iter().all(|x| x.server == 0),
            "the flat server is left alone"
        );
    }

    /// The defaults' `[policy]` and `[gate]`, for tests that give their own budget or
    /// rejuvenation.
    const DEFAULT_POLICY_NO_BUDGET: &str = r#"
[policy]
hold_down = "60s"
rules = [{ resource = "memory-used", above = 0.99 }]
[policy.trend]
resources = ["memory-used"]
[gate]
min_running_time = "10m"
max_wait = "30m"
[rejuvenation]
duplex_timeout = "2m"
verify_timeout = "5m"
"#;

    const DEFAULT_POLICY_NO_REJUVENATION: &str = r#"
[policy]
hold_down = "60s"
rules = [{ resource = "memory-used", above = 0.99 }]
[policy.trend]
resources = ["memory-used"]
[gate]
min_running_time = "10m"
max_wait = "30m"
"#;
}
