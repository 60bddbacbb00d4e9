//! The simulated world around the controller: the scenario a seed draws (cluster shape, config,
//! fault profile), the agents on the servers, and the builtin proxy the traffic adapter feeds.
//!
//! Everything here is plain data advanced by the simulation loop; nothing reads a real clock
//! or touches the network.

use super::rng::Rng;
use rejuv_core::api::{
    ActionOutcome, ActionReport, AgentState, InstanceState, InstanceStatus, RejuvenationReport,
    RouteTable,
};
use rejuv_core::config::{Action, Config};
use rejuv_core::types::{InstanceId, Mode, Sample};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Wall-clock start of every run (the same instant the core's tests use).
pub const T0: u64 = 1_700_000_000_000;
/// Wall-clock jumps are kept within this distance of true time.
pub const MAX_CLOCK_SKEW_MS: i64 = 600_000;

/// How rough a schedule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Calm,
    Moderate,
    Stormy,
}

impl Profile {
    /// Chance of a fault at each fault tick.
    pub fn fault_chance(self) -> f64 {
        match self {
            Profile::Calm => 0.03,
            Profile::Moderate => 0.10,
            Profile::Stormy => 0.25,
        }
    }
}

/// What a seed draws before the run starts.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub mode: Mode,
    pub primaries: usize,
    pub spares: usize,
    pub capacities: Vec<u32>,
    pub services: Vec<&'static str>,
    pub max_concurrent: u32,
    pub floor: u32,
    pub cooldown_s: u64,
    pub escalation: bool,
    pub max_running_time_s: Option<u64>,
    pub profile: Profile,
    /// Chance that a started instance never becomes healthy.
    pub never_healthy: f64,
    /// Chance that an agent refuses a start for good (a 4xx).
    pub start_refused: f64,
    /// Chance that a rejuvenation action fails.
    pub action_fails: f64,
    /// `rejuvenation.in_place`: with no free target, the copies start on the source itself.
    pub in_place: bool,
}

impl Scenario {
    pub fn draw(rng: &mut Rng) -> Self {
        let mode = if rng.chance(0.5) {
            Mode::ActiveStandby
        } else {
            Mode::ActiveActive
        };
        let services: Vec<&'static str> = match rng.below(3) {
            0 => vec!["web"],
            1 => vec!["db"],
            _ => vec!["web", "db"],
        };
        let n = services.len() as u32;
        let (primaries, spares) = match mode {
            Mode::ActiveStandby => (rng.range(2, 4) as usize, rng.range(1, 2) as usize),
            Mode::ActiveActive => (rng.range(3, 5) as usize, 0),
        };
        let capacities: Vec<u32> = (0..primaries + spares)
            .map(|_| match mode {
                Mode::ActiveStandby => rng.range(u64::from(n), u64::from(2 * n)) as u32,
                // Room for the own instances and, on most servers, another server's.
                Mode::ActiveActive => rng.range(u64::from(n), u64::from(3 * n)) as u32,
            })
            .collect();
        let primary_caps = &capacities[..primaries];
        let total: u32 = primary_caps.iter().sum();
        let max = *primary_caps.iter().max().expect("primaries");
        let min = *primary_caps.iter().min().expect("primaries");
        // The boundaries are where a floor bug shows: none, room for exactly one server out,
        // room for the smallest out, and no room at all.
        let floor = match rng.below(5) {
            0 | 1 => 0,
            2 => total - max,
            3 => total - min,
            _ => total,
        };
        let profile = match rng.below(4) {
            0 => Profile::Calm,
            1 | 2 => Profile::Moderate,
            _ => Profile::Stormy,
        };
        Scenario {
            mode,
            primaries,
            spares,
            capacities,
            services,
            max_concurrent: rng.range(1, 2) as u32,
            floor,
            cooldown_s: *rng.pick(&[0, 0, 5, 20]).expect("non-empty"),
            escalation: rng.chance(0.3),
            max_running_time_s: rng.chance(0.2).then(|| rng.range(60, 240)),
            profile,
            never_healthy: *rng.pick(&[0.0, 0.02, 0.1]).expect("non-empty"),
            start_refused: *rng.pick(&[0.0, 0.0, 0.03]).expect("non-empty"),
            action_fails: *rng.pick(&[0.0, 0.0, 0.05]).expect("non-empty"),
            in_place: rng.chance(0.3),
        }
    }

    pub fn server_count(&self) -> usize {
        self.primaries + self.spares
    }

    pub fn toml(&self) -> String {
        let mut t = format!(
            r#"
[cluster]
name = "sim"
mode = "{mode}"

[traffic]
admin = "127.0.0.1:7071"

[gate]
max_load = 2.0
min_running_time = "10s"
max_wait = "90s"

[budget]
max_concurrent = {mc}
min_available_capacity = {floor}
cooldown = "{cooldown}s"

[rejuvenation]
duplex_timeout = "25s"
verify_timeout = "40s"
failed_target_cooldown = "60s"
escalation_window = "{window}"
in_place = {in_place}
{escalation}

[agent]
host_actions = true
restart_command = ["/sbin/reboot"]

[services.web]
command = "/usr/bin/true"
drain = "2s"
health = {{ path = "/healthz" }}

[services.db]
command = "/usr/bin/true"
drain = "4s"
health = {{ path = "/healthz" }}
handoff = {{ export = "/state", import = "/state", hold = "3s" }}
"#,
            mode = self.mode,
            mc = self.max_concurrent,
            floor = self.floor,
            cooldown = self.cooldown_s,
            window = if self.escalation { "10m" } else { "1s" },
            in_place = self.in_place,
            escalation = if self.escalation {
                r#"escalation = [["stop-instances", "drop-caches", "restart-agent"], ["stop-instances", "restart-host"]]"#
            } else {
                ""
            },
        );
        // The production detector, with windows for servers that age within minutes and are
        // polled every 2 s: a threshold at 75% held 4 s, and the trend rule on memory.
        t += "\n[policy]\nhold_down = \"4s\"\nrules = [{ resource = \"memory-used\", above = 0.75 }]\n";
        if let Some(s) = self.max_running_time_s {
            t += &format!("max_running_time = \"{s}s\"\n");
        }
        t += "\n[policy.trend]\nwindow = \"8m\"\nmin_window = \"32s\"\npoints = 32\nhorizon = \"3m\"\nmin_persistence = \"6s\"\nresources = [\"memory-used\"]\n";
        for i in 0..self.server_count() {
            let primary = i < self.primaries;
            let instances: Vec<String> = if primary {
                self.services.iter().map(|s| format!("\"{s}\"")).collect()
            } else {
                vec![]
            };
            t += &format!(
                r#"
[[servers]]
id = "s{n}"
address = "127.0.0.{a}"
agent = "127.0.0.{a}:7001"
role = "{role}"
capacity = {cap}
port_range = [20000, 29999]
instances = [{inst}]
"#,
                n = i + 1,
                a = 11 + i,
                role = if primary { "primary" } else { "spare" },
                cap = self.capacities[i],
                inst = instances.join(", "),
            );
        }
        t
    }

    pub fn config(&self) -> Config {
        let text = self.toml();
        Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("the simulation drew an invalid config: {e}\n{text}"))
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {}p+{}s caps {:?} services {:?} budget {} floor {} cooldown {}s escalation {} max_running_time {:?} in_place {} profile {:?}",
            self.mode,
            self.primaries,
            self.spares,
            self.capacities,
            self.services,
            self.max_concurrent,
            self.floor,
            self.cooldown_s,
            self.escalation,
            self.max_running_time_s,
            self.in_place,
            self.profile
        )
    }
}

/// One instance as its agent runs it.
#[derive(Debug, Clone)]
pub struct SimInstance {
    pub port: u16,
    pub started_wall: u64,
    /// Sim time from which its health check passes; `None`: never.
    pub healthy_at: Option<u64>,
    /// Crashed (the agent restarts it) until this sim time.
    pub crashed_until: u64,
}

/// One server with its agent.
#[derive(Debug, Clone)]
pub struct Agent {
    pub address: IpAddr,
    /// The host is alive (a dead server has no agent and no instances).
    pub host_up: bool,
    /// The agent process runs.
    pub process_up: bool,
    pub hung_until: u64,
    pub partitioned_until: u64,
    /// Starts on this server never become healthy until this sim time.
    pub sick_until: u64,
    pub clock_offset_ms: i64,
    pub instances: BTreeMap<InstanceId, SimInstance>,
    pub running_since_wall: u64,
    pub next_port: u16,
    pub load1: f64,
    /// Memory used, fraction; grows while instances run and the server leaks.
    pub mem: f64,
    pub mem_at: u64,
    pub leak_per_s: f64,
    /// Rejuvenation reports by run id (kept on disk: they survive restarts).
    pub reports: BTreeMap<String, RejuvenationReport>,
}

impl Agent {
    pub fn new(address: IpAddr, rng: &mut Rng) -> Self {
        let leak_per_s = if rng.chance(0.6) {
            // From 0.3 to the unstable mark (0.75) in 30 s to 3 min.
            0.45 / rng.range(30, 180) as f64
        } else {
            0.0
        };
        Agent {
            address,
            host_up: true,
            process_up: true,
            hung_until: 0,
            partitioned_until: 0,
            sick_until: 0,
            clock_offset_ms: 0,
            instances: BTreeMap::new(),
            running_since_wall: T0 - 3_600_000,
            next_port: 20_000,
            load1: 0.5,
            mem: 0.2 + rng.unit() * 0.5,
            mem_at: 0,
            leak_per_s,
            reports: BTreeMap::new(),
        }
    }

    pub fn wall(&self, t: u64) -> u64 {
        (T0 as i64 + t as i64 + self.clock_offset_ms) as u64
    }

    /// Whether a request from the controller reaches a working agent at `t`.
    pub fn answers(&self, t: u64) -> bool {
        self.host_up && self.process_up && t >= self.partitioned_until
    }

    pub fn advance_mem(&mut self, t: u64) {
        if !self.instances.is_empty() && self.host_up {
            let dt = t.saturating_sub(self.mem_at) as f64 / 1000.0;
            self.mem = (self.mem + self.leak_per_s * dt).min(1.0);
        }
        self.mem_at = t;
    }

    /// Fresh memory after a restart or a rejuvenation.
    pub fn fresh(&mut self, t: u64) {
        self.advance_mem(t);
        self.mem = 0.25;
    }

    pub fn healthy(i: &SimInstance, t: u64) -> bool {
        i.crashed_until <= t && i.healthy_at.is_some_and(|h| t >= h)
    }

    /// `GET /v1/state` at `t`: the agent's reading of its server (memory used is the
    /// simulated fraction of 8 GiB, the rest flat) and of its instances.
    pub fn state(&mut self, t: u64, server: &str) -> AgentState {
        self.advance_mem(t);
        let wall = self.wall(t);
        let total: u64 = 8 << 30;
        let used = (self.mem * total as f64) as u64;
        let sample = Sample {
            taken_at_ms: wall,
            load1: self.load1,
            load5: self.load1,
            load15: self.load1,
            running_time_s: wall.saturating_sub(self.running_since_wall) as f64 / 1000.0,
            mem_total_bytes: total,
            mem_used_bytes: used,
            mem_available_bytes: total - used,
            open_fds: 1_000,
            max_fds: 1_000_000,
            threads: 200,
            ..Sample::default()
        };
        let instances = self
            .instances
            .iter()
            .map(|(id, i)| {
                let healthy = Self::healthy(i, t);
                let state = if i.crashed_until > t {
                    InstanceState::Crashed
                } else if healthy {
                    InstanceState::Running
                } else {
                    InstanceState::Starting
                };
                InstanceStatus {
                    id: id.clone(),
                    service: id.split('-').next().unwrap_or_default().to_string(),
                    addr: Some(SocketAddr::new(self.address, i.port)),
                    pid: None,
                    state,
                    healthy,
                    started_at_ms: Some(i.started_wall),
                    crashes: 0,
                    last_exit: None,
                    last_output: Vec::new(),
                }
            })
            .collect();
        AgentState {
            server_id: server.to_string(),
            agent_started_at_ms: self.running_since_wall,
            running_since_ms: self.running_since_wall,
            epoch: 0,
            sample,
            instances,
            crashes_total: 0,
            last_rejuvenation: None,
            version: "sim".into(),
            boot_id: String::new(),
        }
    }

    /// `PUT /v1/instances/{id}`: idempotent by id.
    pub fn start(&mut self, id: &str, t: u64, healthy_at: Option<u64>) -> SocketAddr {
        self.advance_mem(t);
        if let Some(i) = self.instances.get(id) {
            return SocketAddr::new(self.address, i.port);
        }
        let port = self.next_port;
        self.next_port = if self.next_port >= 29_999 {
            20_000
        } else {
            self.next_port + 1
        };
        let healthy_at = if t < self.sick_until {
            None
        } else {
            healthy_at
        };
        self.instances.insert(
            id.to_string(),
            SimInstance {
                port,
                started_wall: self.wall(t),
                healthy_at,
                crashed_until: 0,
            },
        );
        SocketAddr::new(self.address, port)
    }

    /// `POST /v1/rejuvenate`: idempotent by run id.
    pub fn rejuvenate(
        &mut self,
        run_id: &str,
        actions: &[Action],
        keep: &[String],
        t: u64,
        fail: bool,
    ) -> RejuvenationReport {
        if let Some(r) = self.reports.get(run_id) {
            return r.clone();
        }
        let started = self.wall(t);
        let failing = if fail { actions.last().copied() } else { None };
        let mut reports = Vec::new();
        for a in actions {
            let failed = Some(*a) == failing;
            if !failed {
                match a {
                    Action::StopInstances => {
                        self.advance_mem(t);
                        // An in-place run's copies serve meanwhile: they stay.
                        self.instances.retain(|id, _| keep.contains(id));
                        self.fresh(t);
                    }
                    Action::RestartAgent | Action::RestartHost => {
                        self.instances.clear();
                        self.fresh(t);
                        self.running_since_wall = started;
                    }
                    _ => {}
                }
            }
            reports.push(ActionReport {
                action: *a,
                outcome: if failed {
                    ActionOutcome::Failed
                } else {
                    ActionOutcome::Done
                },
                detail: if failed {
                    "exit status 1: simulated failure".into()
                } else {
                    "ok".into()
                },
            });
        }
        // As the real agent: a run whose every action succeeded starts the running time
        // again.
        if failing.is_none() {
            self.running_since_wall = started;
        }
        let r = RejuvenationReport {
            run_id: run_id.to_string(),
            started_at_ms: started,
            finished_at_ms: started + 50,
            boot_id: None,
            actions: reports,
        };
        self.reports.insert(run_id.to_string(), r.clone());
        r
    }
}

pub fn agent_address(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + index as u8))
}

/// The builtin proxy: the table in force and the requests still in flight on backends that
/// no longer take new ones.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub table: RouteTable,
    /// Backends draining (or removed) with the sim time their last request ends.
    pub in_flight_until: BTreeMap<InstanceId, u64>,
}

impl Proxy {
    /// Applies `table` unless an older one; returns the in-flight counts it reports.
    pub fn apply(
        &mut self,
        table: &RouteTable,
        t: u64,
        rng: &mut Rng,
    ) -> BTreeMap<InstanceId, u64> {
        if table.version > self.table.version {
            let serving_before: Vec<InstanceId> = self
                .table
                .services
                .values()
                .flat_map(|r| r.backends.iter())
                .filter(|b| b.state == rejuv_core::api::BackendState::Serving)
                .map(|b| b.id.clone())
                .collect();
            let serving_now: Vec<&InstanceId> = table
                .services
                .values()
                .flat_map(|r| r.backends.iter())
                .filter(|b| b.state == rejuv_core::api::BackendState::Serving)
                .map(|b| &b.id)
                .collect();
            for id in serving_before {
                if !serving_now.contains(&&id) {
                    // Most requests end within a second or two; a few run past any drain limit.
                    let long = rng.chance(0.1);
                    let d = if long {
                        rng.range(3_000, 20_000)
                    } else {
                        rng.range(0, 2_500)
                    };
                    self.in_flight_until.entry(id).or_insert(t + d);
                }
            }
            self.table = table.clone();
        }
        self.in_flight_until.retain(|_, until| *until + 5_000 > t);
        self.in_flight_until
            .iter()
            .map(|(id, until)| (id.clone(), u64::from(*until > t)))
            .collect()
    }

    pub fn busy(&self, t: u64) -> bool {
        self.in_flight_until.values().any(|u| *u > t)
    }
}
