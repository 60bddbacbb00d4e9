//! Unit tests of the cluster-wide state machine (`rejuv_core::cluster`).
//!
//! A small harness drives a [`Cluster`] the way the controller does: it answers the commands of
//! the outbox as a fleet of fake agents would, feeds observations built from that fleet, and
//! after every single step checks `check_invariants` and a few properties of the route table.
//! On top of it:
//! - `table`: one row per (phase, event) pair, in both modes;
//! - `scenarios`: the workflows and failure paths the issue names;
//! - `regressions`: one test per bug found while writing these tests, named after the bug;
//! - `random`: seeded random event sequences (proptest), invariants after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rejuv_core::api::{
    ActionOutcome, ActionReport, BackendState, InstanceState, RejuvenationReport,
};
use rejuv_core::cluster::{
    step, Cluster, Command, CommandKind, CommandResult, Event, LogEvent, Observation,
    ObservedInstance, OperatorCommand, Outcome, Output, Phase, Refusal, ServerState, Step, Traffic,
    Workflow,
};
use rejuv_core::config::{Action, Config, Resource};
use rejuv_core::detector::{Explanation, Judgement, Level};
use rejuv_core::time::Now;
use rejuv_core::types::{InstanceId, Mode, Role, ServerId};

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Wall-clock start of every test.
const T0: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;
/// The timeouts of [`Spec::toml`], in milliseconds.
const DUPLEX_TIMEOUT_MS: u64 = 30_000;
const VERIFY_TIMEOUT_MS: u64 = 60_000;
const COOLDOWN_MS: u64 = 300_000;
const MAX_WAIT_MS: u64 = 600_000;
/// The longest `drain` of the two services (db: 4s, web: 2s).
const DRAIN_MS: u64 = 4_000;
/// Load above `gate.max_load` (2.0) and below it.
const HIGH_LOAD: f64 = 5.0;
const LOW_LOAD: f64 = 0.5;

/// The shape of a test cluster; [`Spec::toml`] writes it as `rejuv.toml` text.
#[derive(Debug, Clone)]
struct Spec {
    mode: Mode,
    primaries: usize,
    spares: usize,
    capacity: u32,
    /// Services every primary runs: `web` is stateless, `db` hands its state off.
    services: Vec<&'static str>,
    max_concurrent: u32,
    floor: u32,
    /// `rejuvenation.in_place`: off unless a test is about it, so that "no target" still
    /// means no target.
    in_place: bool,
    /// `rejuvenation.rebalance`: off unless a test is about it.
    rebalance: bool,
}

impl Spec {
    /// Three primaries and one spare (`s4`).
    fn active_standby() -> Self {
        Spec {
            mode: Mode::ActiveStandby,
            primaries: 3,
            spares: 1,
            capacity: 4,
            services: vec!["web", "db"],
            max_concurrent: 1,
            floor: 0,
            in_place: false,
            rebalance: false,
        }
    }

    /// Four primaries with room to spare.
    fn active_active() -> Self {
        Spec {
            mode: Mode::ActiveActive,
            primaries: 4,
            spares: 0,
            ..Spec::active_standby()
        }
    }

    fn of(mode: Mode) -> Self {
        match mode {
            Mode::ActiveStandby => Spec::active_standby(),
            Mode::ActiveActive => Spec::active_active(),
        }
    }

    fn services(mut self, services: &[&'static str]) -> Self {
        self.services = services.to_vec();
        self
    }

    fn budget(mut self, max_concurrent: u32) -> Self {
        self.max_concurrent = max_concurrent;
        self
    }

    fn floor(mut self, floor: u32) -> Self {
        self.floor = floor;
        self
    }

    fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    fn in_place(mut self) -> Self {
        self.in_place = true;
        self
    }

    fn servers(mut self, primaries: usize, spares: usize) -> Self {
        self.primaries = primaries;
        self.spares = spares;
        self
    }

    fn toml(&self) -> String {
        let mut t = format!(
            r#"
[cluster]
name = "test"
mode = "{mode}"

[traffic]
admin = "127.0.0.1:7071"

[gate]
max_load = 2.0
min_running_time = "60s"
max_wait = "600s"

[budget]
max_concurrent = {mc}
min_available_capacity = {floor}

[rejuvenation]
duplex_timeout = "30s"
verify_timeout = "60s"
failed_target_cooldown = "300s"
in_place = {in_place}
rebalance = {rebalance}

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
            in_place = self.in_place,
            rebalance = self.rebalance,
        );
        for i in 1..=self.primaries + self.spares {
            let primary = i <= self.primaries;
            let instances: Vec<String> = if primary {
                self.services.iter().map(|s| format!("\"{s}\"")).collect()
            } else {
                vec![]
            };
            t += &format!(
                r#"
[[servers]]
id = "s{i}"
address = "127.0.0.{a}"
agent = "127.0.0.{a}:7001"
role = "{role}"
capacity = {cap}
port_range = [20000, 20099]
instances = [{inst}]
"#,
                a = 10 + i,
                role = if primary { "primary" } else { "spare" },
                cap = self.capacity,
                inst = instances.join(", "),
            );
        }
        t
    }

    fn config(&self) -> Config {
        let text = self.toml();
        Config::from_toml(&text).unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Fake agents and the harness
// ---------------------------------------------------------------------------------------------

/// What one server's agent would report.
#[derive(Debug, Clone)]
struct FakeAgent {
    address: IpAddr,
    load1: f64,
    running_since_ms: u64,
    instances: BTreeMap<InstanceId, ObservedInstance>,
    next_port: u16,
    /// Instances started here pass their health check.
    starts_healthy: bool,
    /// MemAvailable reported, and the RSS reported for every instance.
    mem_available_bytes: Option<u64>,
    rss_bytes: Option<u64>,
    /// The host's boot identity, if the agent reports one.
    boot_id: Option<String>,
}

impl FakeAgent {
    fn observation(&self, now_ms: u64) -> Observation {
        Observation {
            reachable: true,
            at_ms: now_ms,
            load1: self.load1,
            running_since_ms: self.running_since_ms,
            running_time_s: now_ms.saturating_sub(self.running_since_ms) as f64 / 1000.0,
            crashes_total: 0,
            load_quantile: None,
            instances: self
                .instances
                .iter()
                .map(|(id, i)| {
                    let mut i = i.clone();
                    i.rss_bytes = self.rss_bytes;
                    (id.clone(), i)
                })
                .collect(),
            mem_available_bytes: self.mem_available_bytes,
            boot_id: self.boot_id.clone(),
        }
    }

    fn start(&mut self, instance: &str, now_ms: u64) -> SocketAddr {
        if let Some(addr) = self.instances.get(instance).and_then(|i| i.addr) {
            return addr; // the agent's PUT is idempotent by instance id
        }
        let addr = SocketAddr::new(self.address, self.next_port);
        self.next_port += 1;
        self.instances.insert(
            instance.to_string(),
            ObservedInstance {
                state: if self.starts_healthy {
                    InstanceState::Running
                } else {
                    InstanceState::Starting
                },
                healthy: self.starts_healthy,
                addr: Some(addr),
                started_at_ms: Some(now_ms),
                rss_bytes: None,
                crashes: 0,
                last_exit: None,
                last_output: Vec::new(),
            },
        );
        addr
    }
}

fn unreachable_observation(now_ms: u64) -> Observation {
    Observation {
        reachable: false,
        at_ms: now_ms,
        load1: 0.0,
        running_since_ms: 0,
        running_time_s: 0.0,
        crashes_total: 0,
        load_quantile: None,
        instances: BTreeMap::new(),
        mem_available_bytes: None,
        boot_id: None,
    }
}

fn explanation(tte_s: Option<f64>) -> Explanation {
    Explanation {
        resource: Resource::MemoryUsed,
        rule: if tte_s.is_some() {
            "trend"
        } else {
            "threshold"
        }
        .into(),
        value: 0.95,
        limit: 0.9,
        slope_per_s: tte_s.map(|_| 0.001),
        tte_s,
        confidence: tte_s.map(|_| 0.99),
        message: "memory-used at 95.0% is above the threshold 90.0%".into(),
        instance: None,
    }
}

/// An unstable judgement of the host-wide memory by the trend rule, exhaustion `tte_s` away.
fn judgement_with_tte(tte_s: f64) -> Judgement {
    let mut e = explanation(Some(tte_s));
    e.message = format!("memory-used will be exhausted in about {tte_s:.0}s");
    Judgement {
        level: Level::Unstable,
        explanation: Some(e),
        host: Level::Unstable,
        unstable_instances: vec![],
    }
}

/// A judgement of the host-wide memory (so a workflow takes the whole server).
fn judgement(level: Level) -> Judgement {
    Judgement {
        level,
        explanation: (level != Level::Stable).then(|| explanation(None)),
        host: level,
        unstable_instances: vec![],
    }
}

fn report(
    run_id: &str,
    actions: &[Action],
    at_ms: u64,
    failing: Option<Action>,
) -> RejuvenationReport {
    RejuvenationReport {
        run_id: run_id.to_string(),
        started_at_ms: at_ms,
        finished_at_ms: at_ms,
        boot_id: None,
        actions: actions
            .iter()
            .map(|a| ActionReport {
                action: *a,
                outcome: if Some(*a) == failing {
                    ActionOutcome::Failed
                } else {
                    ActionOutcome::Done
                },
                detail: if Some(*a) == failing {
                    "exit status 1: permission denied".into()
                } else {
                    "ok".into()
                },
            })
            .collect(),
    }
}

fn command_name(kind: &CommandKind) -> &'static str {
    match kind {
        CommandKind::StartInstance { .. } => "start",
        CommandKind::StopInstance { .. } => "stop",
        CommandKind::TransferState { .. } => "transfer",
        CommandKind::Rejuvenate { .. } => "rejuvenate",
        CommandKind::ResetDetector { .. } => "reset",
        CommandKind::Alert { .. } => "alert",
        CommandKind::RunHook { .. } => "hook",
    }
}

fn command_names(out: &Output) -> Vec<&'static str> {
    let mut v: Vec<_> = out.commands.iter().map(|c| command_name(&c.kind)).collect();
    v.sort_unstable();
    v
}

fn log_kinds(out: &Output) -> Vec<String> {
    let mut v: Vec<_> = out.events.iter().map(|e| e.kind.to_string()).collect();
    v.sort_unstable();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort_unstable();
    v
}

/// The route table agrees with the instances, and never sends traffic where it must not.
fn route_problems(c: &Cluster) -> Vec<String> {
    let mut bad = Vec::new();
    if c.routes.version != c.routes_version {
        bad.push(format!(
            "routes.version {} != routes_version {}",
            c.routes.version, c.routes_version
        ));
    }
    let mut listed = BTreeSet::new();
    for (service, r) in &c.routes.services {
        for b in &r.backends {
            listed.insert(b.id.clone());
            let Some(i) = c.instances.get(&b.id) else {
                bad.push(format!("backend {} is no known instance", b.id));
                continue;
            };
            if &i.service != service || i.addr != Some(b.addr) {
                bad.push(format!("backend {} does not match its instance", b.id));
            }
            match b.state {
                BackendState::Serving => {
                    if i.traffic != Traffic::Serving || !i.healthy {
                        bad.push(format!(
                            "{} serves but is {:?}/healthy={}",
                            b.id, i.traffic, i.healthy
                        ));
                    }
                    if c.servers.get(&i.server).is_none_or(|s| !s.on_list()) {
                        bad.push(format!(
                            "{} serves from {} which is off the list",
                            b.id, i.server
                        ));
                    }
                }
                BackendState::Draining => {
                    if i.traffic != Traffic::Draining || i.drained {
                        bad.push(format!(
                            "{} listed draining but is {:?}/drained={}",
                            b.id, i.traffic, i.drained
                        ));
                    }
                }
            }
        }
    }
    for i in c.instances.values() {
        let should = i.addr.is_some()
            && match i.traffic {
                Traffic::Serving => i.healthy,
                Traffic::Draining => !i.drained,
                Traffic::Standby => false,
            };
        if should && !listed.contains(&i.id) {
            bad.push(format!(
                "{} ({:?}) is missing from the route table",
                i.id, i.traffic
            ));
        }
    }
    bad
}

/// Properties of workflows and servers that `check_invariants` does not look at.
fn workflow_problems(c: &Cluster) -> Vec<String> {
    let mut bad = Vec::new();
    let sources: BTreeSet<&ServerId> = c.workflows.values().map(|w| &w.server).collect();
    if sources.len() != c.workflows.len() {
        bad.push("two workflows for one server".to_string());
    }
    for w in c.workflows.values() {
        let Some(s) = c.servers.get(&w.server) else {
            bad.push(format!("workflow {} for unknown server {}", w.id, w.server));
            continue;
        };
        let switched = !matches!(w.phase, Phase::Duplexing | Phase::Gating);
        let expected = if switched && w.takes_server_out() {
            ServerState::Rejuvenating { workflow: w.id }
        } else {
            ServerState::InService
        };
        if s.state != expected {
            bad.push(format!(
                "{} is {:?} in phase {}",
                w.server, s.state, w.phase
            ));
        }
        if sources.contains(&w.target) && !w.in_place() {
            bad.push(format!("{} is both a source and a target", w.target));
        }
        for p in &w.pairs {
            if c.instances.get(&p.new).is_none_or(|i| i.server != w.target) {
                bad.push(format!(
                    "copy {} of workflow {} is not on its target",
                    p.new, w.id
                ));
            }
        }
    }
    for i in c.instances.values() {
        let on_spare = c
            .servers
            .get(&i.server)
            .is_some_and(|s| s.role == Role::Spare);
        if on_spare && i.traffic != Traffic::Standby {
            bad.push(format!(
                "spare {} has {} taking traffic ({:?})",
                i.server, i.id, i.traffic
            ));
        }
    }
    bad
}

impl FakeAgent {
    /// A healthy, quiet agent of configured server `s` that has run for two hours.
    fn of(s: &rejuv_core::config::ServerConfig) -> Self {
        FakeAgent {
            address: s.address,
            load1: LOW_LOAD,
            running_since_ms: T0 - 2 * HOUR_MS,
            instances: BTreeMap::new(),
            next_port: s.port_range[0],
            starts_healthy: true,
            mem_available_bytes: None,
            rss_bytes: None,
            boot_id: None,
        }
    }
}

/// A cluster, its config, a fake fleet, and the clock.
#[derive(Debug, Clone)]
struct H {
    cfg: Config,
    c: Cluster,
    now_ms: u64,
    agents: BTreeMap<ServerId, FakeAgent>,
    /// Every log event so far.
    log: Vec<LogEvent>,
    /// Every command acknowledged so far, with the result delivered.
    delivered: Vec<(Command, CommandResult)>,
    /// The last few events, for failure messages.
    trail: Vec<String>,
}

impl H {
    fn new(spec: &Spec) -> H {
        let cfg = spec.config();
        let (c, out) = Cluster::new(&cfg, Now::at(T0));
        let bad = c.check_invariants(&cfg);
        assert!(bad.is_empty(), "invariants broken by Cluster::new: {bad:?}");
        let agents = cfg
            .servers
            .iter()
            .map(|s| (s.id.clone(), FakeAgent::of(s)))
            .collect();
        H {
            cfg,
            c,
            now_ms: T0,
            agents,
            log: out.events,
            delivered: vec![],
            trail: vec![],
        }
    }

    fn now(&self) -> Now {
        Now::at(self.now_ms)
    }

    /// One step, with every check that must hold after any step.
    fn step(&mut self, event: Event) -> Output {
        let line = format!("t+{}ms {event:?}", self.now_ms - T0);
        self.trail.push(line.chars().take(300).collect());
        if self.trail.len() > 12 {
            self.trail.remove(0);
        }
        let (c, out) = step(self.c.clone(), &self.cfg, event, self.now());
        let bad = c.check_invariants(&self.cfg);
        assert!(
            bad.is_empty(),
            "check_invariants after the last of these steps: {bad:?}\n{}",
            self.trail.join("\n")
        );
        let bad = route_problems(&c);
        assert!(
            bad.is_empty(),
            "route table after the last of these steps: {bad:?}\n{}",
            self.trail.join("\n")
        );
        let bad = workflow_problems(&c);
        assert!(
            bad.is_empty(),
            "workflows after the last of these steps: {bad:?}\n{}",
            self.trail.join("\n")
        );
        for cmd in &out.commands {
            assert_eq!(
                c.pending.get(&cmd.id),
                Some(cmd),
                "an issued command is in the outbox"
            );
        }
        self.c = c;
        self.log.extend(out.events.iter().cloned());
        out
    }

    fn agent(&mut self, server: &str) -> &mut FakeAgent {
        self.agents.get_mut(server).expect("known server")
    }

    fn observe(&mut self, server: &str) -> Output {
        let observation = self.agents[server].observation(self.now_ms);
        self.step(Event::Observed {
            server: server.into(),
            observation,
        })
    }

    fn observe_down(&mut self, server: &str) -> Output {
        self.step(Event::Observed {
            server: server.into(),
            observation: unreachable_observation(self.now_ms),
        })
    }

    fn observe_all(&mut self) {
        let ids: Vec<ServerId> = self.agents.keys().cloned().collect();
        for id in ids {
            self.observe(&id);
        }
    }

    fn judge(&mut self, server: &str, level: Level) -> Output {
        self.judge_with(server, judgement(level))
    }

    fn judge_with(&mut self, server: &str, judgement: Judgement) -> Output {
        self.step(Event::Judged {
            server: server.into(),
            judgement,
        })
    }

    fn tick(&mut self) -> Output {
        self.step(Event::Tick)
    }

    /// Lets `ms` pass, then ticks.
    fn wait(&mut self, ms: u64) -> Output {
        self.now_ms += ms;
        self.tick()
    }

    /// The adapter applied the current table and nothing is in flight.
    fn sync(&mut self) -> Output {
        let v = self.c.routes.version;
        self.sync_with(v, &[])
    }

    fn sync_with(&mut self, version: u64, in_flight: &[(&str, u64)]) -> Output {
        self.step(Event::TrafficSynced {
            version,
            in_flight: in_flight.iter().map(|(i, n)| (i.to_string(), *n)).collect(),
        })
    }

    fn operator(&mut self, command: OperatorCommand) -> Output {
        self.step(Event::Operator {
            by: "alice".into(),
            command,
        })
    }

    fn done(&mut self, id: u64, result: CommandResult) -> Output {
        if let Some(cmd) = self.c.pending.get(&id).cloned() {
            self.delivered.push((cmd, result.clone()));
        }
        self.step(Event::CommandDone { id, result })
    }

    fn pending_where(&self, f: impl Fn(&CommandKind) -> bool) -> Vec<Command> {
        self.c
            .pending
            .values()
            .filter(|c| f(&c.kind))
            .cloned()
            .collect()
    }

    fn pending_starts(&self) -> Vec<Command> {
        self.pending_where(|k| matches!(k, CommandKind::StartInstance { .. }))
    }

    /// Carries a command out as a healthy agent would, and acknowledges it.
    fn ack_ok(&mut self, cmd: &Command) -> Output {
        let now = self.now_ms;
        let result = match &cmd.kind {
            CommandKind::StartInstance {
                server, instance, ..
            } => CommandResult::Started {
                addr: Some(self.agent(server).start(instance, now)),
            },
            CommandKind::StopInstance { server, instance } => {
                self.agent(server).instances.remove(instance);
                CommandResult::Stopped
            }
            CommandKind::TransferState { .. } => CommandResult::Transferred,
            CommandKind::Rejuvenate {
                server,
                run_id,
                actions,
                keep,
            } => {
                let a = self.agent(server);
                a.instances.retain(|id, _| keep.contains(id));
                a.running_since_ms = now;
                CommandResult::Rejuvenated {
                    report: report(run_id, actions, now, None),
                }
            }
            CommandKind::ResetDetector { .. } | CommandKind::Alert { .. } => CommandResult::Done,
            CommandKind::RunHook { .. } => CommandResult::HookRan {
                ok: true,
                detail: "exit 0".into(),
            },
        };
        self.done(cmd.id, result)
    }

    fn ack_failed(&mut self, cmd: &Command) -> Output {
        self.done(
            cmd.id,
            CommandResult::Failed {
                error: "refused by the test".into(),
            },
        )
    }

    fn ack_all(&mut self, cmds: Vec<Command>) -> Output {
        let mut all = Output::default();
        for cmd in cmds {
            let out = self.ack_ok(&cmd);
            all.commands.extend(out.commands);
            all.events.extend(out.events);
        }
        all
    }

    fn ack_starts(&mut self) -> Output {
        let cmds = self.pending_starts();
        self.ack_all(cmds)
    }

    fn ack_transfers(&mut self) -> Output {
        let cmds = self.pending_where(|k| matches!(k, CommandKind::TransferState { .. }));
        assert!(!cmds.is_empty(), "no TransferState pending");
        self.ack_all(cmds)
    }

    fn pending_rejuvenate(&self) -> Command {
        let v = self.pending_where(|k| matches!(k, CommandKind::Rejuvenate { .. }));
        assert_eq!(v.len(), 1, "one Rejuvenate pending: {:?}", self.c.pending);
        v[0].clone()
    }

    fn ack_rejuvenate_ok(&mut self) -> Output {
        let cmd = self.pending_rejuvenate();
        self.ack_ok(&cmd)
    }

    /// Acknowledges alerts, detector resets and stops.
    fn ack_housekeeping(&mut self) -> Output {
        let cmds = self.pending_where(|k| {
            matches!(
                k,
                CommandKind::Alert { .. }
                    | CommandKind::ResetDetector { .. }
                    | CommandKind::StopInstance { .. }
            )
        });
        self.ack_all(cmds)
    }

    fn wf(&self, server: &str) -> Option<&Workflow> {
        self.c.workflows.values().find(|w| w.server == server)
    }

    fn phase(&self, server: &str) -> Option<Phase> {
        self.wf(server).map(|w| w.phase)
    }

    fn target(&self, server: &str) -> ServerId {
        self.wf(server)
            .unwrap_or_else(|| panic!("no workflow for {server}: {:?}", self.c.workflows))
            .target
            .clone()
    }

    fn last_finished(&self, server: &str) -> Option<&Workflow> {
        self.c.history.iter().rev().find(|w| w.server == server)
    }

    fn backend(&self, instance: &str) -> Option<BackendState> {
        self.c
            .routes
            .services
            .values()
            .flat_map(|r| r.backends.iter())
            .find(|b| b.id == instance)
            .map(|b| b.state)
    }

    fn instances_on(&self, server: &str) -> Vec<InstanceId> {
        self.c
            .instances
            .values()
            .filter(|i| i.server == server)
            .map(|i| i.id.clone())
            .collect()
    }

    fn instance_of(&self, server: &str, service: &str) -> InstanceId {
        self.c
            .instances
            .values()
            .find(|i| i.server == server && i.service == service)
            .unwrap_or_else(|| panic!("no {service} instance on {server}"))
            .id
            .clone()
    }

    fn logs_of_kind(&self, kind: &str) -> Vec<&LogEvent> {
        self.log
            .iter()
            .filter(|e| e.kind.as_str() == kind)
            .collect()
    }

    fn alerts_issued(outs: &[Output]) -> usize {
        outs.iter()
            .flat_map(|o| o.commands.iter())
            .filter(|c| matches!(c.kind, CommandKind::Alert { .. }))
            .count()
    }
}

/// A cluster whose initial instances all run healthy and serve; the adapter is in sync.
fn booted(spec: &Spec) -> H {
    let mut h = H::new(spec);
    let starts = h.pending_starts();
    assert_eq!(
        starts.len(),
        spec.primaries * spec.services.len(),
        "one StartInstance per initial instance"
    );
    h.ack_starts();
    h.observe_all();
    h.sync();
    assert!(h.c.pending.is_empty(), "{:?}", h.c.pending);
    for (id, i) in &h.c.instances {
        assert_eq!(
            h.backend(id),
            Some(BackendState::Serving),
            "{id} on {} serves",
            i.server
        );
    }
    h
}

/// Every phase a workflow for `s1` can be in; `None` is "no workflow".
const PHASES: [Option<Phase>; 7] = [
    None,
    Some(Phase::Duplexing),
    Some(Phase::Gating),
    Some(Phase::Draining),
    Some(Phase::HandingOff),
    Some(Phase::Rejuvenating),
    Some(Phase::Verifying),
];

/// A booted cluster whose `s1` is in `until` (its workflow's phase). Everything happens at
/// `T0`; the route table is checked at every phase on the way.
fn drive_to(spec: &Spec, until: Option<Phase>) -> H {
    let mut h = booted(spec);
    let Some(until) = until else { return h };
    let stateful = spec.services.contains(&"db");
    // Keep the gate shut until the draining phase is wanted: s1 is busy.
    h.agent("s1").load1 = HIGH_LOAD;
    h.observe("s1");
    let old = h.instances_on("s1");
    let out = h.judge("s1", Level::Unstable);
    assert_eq!(h.phase("s1"), Some(Phase::Duplexing), "{out:?}");
    let target = h.target("s1");
    let w = h.wf("s1").unwrap().clone();
    assert_eq!(h.c.servers[&target].reserved_by, Some(w.id));
    assert_eq!(w.pairs.len(), old.len());
    for p in &w.pairs {
        assert_eq!(
            h.backend(&p.new),
            None,
            "a copy takes no traffic while duplexing"
        );
        assert_eq!(h.backend(&p.old), Some(BackendState::Serving));
    }
    if until == Phase::Duplexing {
        return h;
    }

    h.ack_starts();
    h.observe(&target);
    assert_eq!(h.phase("s1"), Some(Phase::Gating));
    let w = h.wf("s1").unwrap().clone();
    assert!(
        w.gate_reason.as_deref().is_some_and(|r| r.contains("load")),
        "{:?}",
        w.gate_reason
    );
    for p in &w.pairs {
        assert!(h.c.instances[&p.new].healthy);
        assert_eq!(
            h.backend(&p.new),
            None,
            "a hot copy takes no traffic before the gate"
        );
        assert_eq!(h.backend(&p.old), Some(BackendState::Serving));
    }
    if until == Phase::Gating {
        return h;
    }

    h.agent("s1").load1 = LOW_LOAD;
    h.observe("s1");
    assert_eq!(h.phase("s1"), Some(Phase::Draining));
    assert_eq!(
        h.c.servers["s1"].state,
        ServerState::Rejuvenating { workflow: w.id }
    );
    if spec.mode == Mode::ActiveStandby {
        assert_eq!(
            h.c.servers[&target].role,
            Role::Primary,
            "the spare was promoted"
        );
    }
    for p in &w.pairs {
        let old = &h.c.instances[&p.old];
        assert_eq!(old.draining_from_version, Some(h.c.routes.version));
        assert_eq!(h.backend(&p.old), Some(BackendState::Draining));
        if p.handoff {
            assert_eq!(
                h.backend(&p.new),
                None,
                "a stateful copy waits for its state"
            );
        } else {
            assert_eq!(h.backend(&p.new), Some(BackendState::Serving));
        }
    }
    if until == Phase::Draining {
        return h;
    }

    h.sync();
    if stateful {
        assert_eq!(h.phase("s1"), Some(Phase::HandingOff));
        for p in &w.pairs {
            assert_eq!(h.backend(&p.old), None, "drained instances leave the table");
            assert_eq!(h.backend(&p.new).is_some(), !p.handoff);
        }
        let transfers = h.pending_where(|k| matches!(k, CommandKind::TransferState { .. }));
        let expected: Vec<CommandKind> = w
            .pairs
            .iter()
            .filter(|p| p.handoff)
            .map(|p| CommandKind::TransferState {
                from_server: "s1".into(),
                from: p.old.clone(),
                to_server: target.clone(),
                to: p.new.clone(),
            })
            .collect();
        assert_eq!(
            transfers.into_iter().map(|c| c.kind).collect::<Vec<_>>(),
            expected
        );
        if until == Phase::HandingOff {
            return h;
        }
        h.ack_transfers();
    } else {
        assert_ne!(
            until,
            Phase::HandingOff,
            "a stateless cluster never hands off"
        );
    }
    assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
    for p in &w.pairs {
        assert_eq!(h.backend(&p.new), Some(BackendState::Serving));
    }
    let rej = h.pending_rejuvenate();
    assert_eq!(
        rej.kind,
        CommandKind::Rejuvenate {
            server: "s1".into(),
            run_id: w.run_id.clone(),
            actions: h.cfg.rejuvenation.actions.clone(),
            keep: vec![],
        }
    );
    if until == Phase::Rejuvenating {
        return h;
    }

    h.ack_rejuvenate_ok();
    assert_eq!(h.phase("s1"), Some(Phase::Verifying));
    assert!(
        h.instances_on("s1").is_empty(),
        "the old instances are forgotten"
    );
    h
}

// ---------------------------------------------------------------------------------------------
// The (phase, event) table
// ---------------------------------------------------------------------------------------------

mod table {
    use super::*;

    /// One event, relative to the source `s1` and its (would-be) target.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Case {
        SourceSeen,
        SourceLost,
        TargetSeen,
        TargetLost,
        JudgedStable,
        JudgedSuspect,
        JudgedUnstable,
        Tick,
        /// An hour passes, then a tick: every timeout is over.
        TickLate,
        StartOk,
        StartFailed,
        StopOk,
        StopFailed,
        TransferOk,
        TransferFailed,
        RejuvenateOk,
        /// A `Rejuvenated` report with one failed action.
        RejuvenateFailedAction,
        RejuvenateFailed,
        ResetOk,
        ResetFailed,
        AlertOk,
        AlertFailed,
        /// The current table applied, nothing in flight.
        SyncedDrained,
        /// The current table applied, requests still in flight on s1's instances.
        SyncedInFlight,
        /// An older table applied, nothing in flight.
        SyncedOldVersion,
        OpRejuvenateSource,
        /// `force` on another primary: s2 (active-standby) or s3 (active-active).
        OpRejuvenateOtherForced,
        OpMaintenanceSource,
        OpMaintenanceTarget,
        OpPause,
        OpResume,
    }

    use Case::*;

    pub(super) const CASES: [Case; 31] = [
        SourceSeen,
        SourceLost,
        TargetSeen,
        TargetLost,
        JudgedStable,
        JudgedSuspect,
        JudgedUnstable,
        Tick,
        TickLate,
        StartOk,
        StartFailed,
        StopOk,
        StopFailed,
        TransferOk,
        TransferFailed,
        RejuvenateOk,
        RejuvenateFailedAction,
        RejuvenateFailed,
        ResetOk,
        ResetFailed,
        AlertOk,
        AlertFailed,
        SyncedDrained,
        SyncedInFlight,
        SyncedOldVersion,
        OpRejuvenateSource,
        OpRejuvenateOtherForced,
        OpMaintenanceSource,
        OpMaintenanceTarget,
        OpPause,
        OpResume,
    ];

    /// What a cell expects.
    #[derive(Debug)]
    struct Expect {
        /// `s1`'s workflow phase afterwards.
        phase: Option<Phase>,
        /// How `s1`'s workflow ended in this step, if it did.
        ended: Option<&'static str>,
        /// Kinds of the commands issued, as a multiset.
        commands: Vec<&'static str>,
        /// Kinds of the events logged, as a multiset.
        logs: Vec<&'static str>,
        /// The cluster is as before (an acknowledged command leaves the outbox, the adapter's
        /// confirmed version aside).
        unchanged: bool,
        /// A workflow for the "other" server of `OpRejuvenateOtherForced` exists afterwards.
        other_workflow: bool,
    }

    impl Expect {
        fn nothing(phase: Option<Phase>) -> Self {
            Expect {
                phase,
                ended: None,
                commands: vec![],
                logs: vec![],
                unchanged: true,
                other_workflow: false,
            }
        }
        fn logs(phase: Option<Phase>, logs: &[&'static str]) -> Self {
            Expect {
                logs: logs.to_vec(),
                unchanged: false,
                ..Expect::nothing(phase)
            }
        }
        fn to(phase: Option<Phase>, commands: &[&'static str], logs: &[&'static str]) -> Self {
            Expect {
                commands: commands.to_vec(),
                ..Expect::logs(phase, logs)
            }
        }
        fn ended(mut self, how: &'static str) -> Self {
            self.ended = Some(how);
            self
        }
        fn changed(mut self) -> Self {
            self.unchanged = false;
            self
        }
        fn other(mut self) -> Self {
            self.other_workflow = true;
            self
        }
    }

    const D: Option<Phase> = Some(Phase::Duplexing);
    const G: Option<Phase> = Some(Phase::Gating);
    const DR: Option<Phase> = Some(Phase::Draining);
    const HO: Option<Phase> = Some(Phase::HandingOff);
    const RJ: Option<Phase> = Some(Phase::Rejuvenating);
    const V: Option<Phase> = Some(Phase::Verifying);

    /// The table. `p` is s1's phase before the event.
    fn expect(mode: Mode, p: Option<Phase>, case: Case) -> Expect {
        let aa = mode == Mode::ActiveActive;
        // A rolled-back duplex: the copies are stopped, an alert; then planning runs again with
        // the failed target avoided: no other spare (active-standby) or another primary.
        let rolled_back = |extra: &[&'static str]| {
            let mut logs = vec!["workflow-rolled-back"];
            logs.extend_from_slice(extra);
            if aa {
                logs.push("workflow-started");
                Expect::to(D, &["stop", "stop", "alert", "start", "start"], &logs)
            } else {
                logs.push("no-target");
                Expect::to(None, &["stop", "stop", "alert", "alert"], &logs)
            }
            .ended("rolled-back")
        };
        match case {
            SourceSeen => match p {
                // The rejuvenated agent reports a fresh running time and none of the old
                // instances: rejoin.
                V => Expect::to(None, &["reset"], &["workflow-completed"]).ended("completed"),
                _ => Expect::nothing(p),
            },
            SourceLost => match p {
                // The source died while its hot copy waited: fail over to the copy at once;
                // the stateful copy serves without the state it cannot get, and says so.
                G => Expect::to(DR, &["alert"], &["agent", "handoff-skipped", "step"]),
                _ => Expect::logs(p, &["agent"]),
            },
            TargetSeen => Expect::nothing(p),
            TargetLost => match p {
                // A copy that is no longer healthy sends the workflow back to duplexing, where
                // the duplex timeout can roll it back.
                G => Expect::logs(D, &["agent", "step"]),
                _ => Expect::logs(p, &["agent"]),
            },
            JudgedStable => match p {
                None => Expect::nothing(p),
                _ => Expect::logs(p, &["judgement"]),
            },
            JudgedSuspect => Expect::logs(p, &["judgement"]),
            JudgedUnstable => match p {
                None => Expect::to(D, &["start", "start"], &["judgement", "workflow-started"]),
                _ => Expect::nothing(p),
            },
            Tick => Expect::nothing(p),
            TickLate => match p {
                None | HO | RJ => Expect::nothing(p),
                D => rolled_back(&[]),
                G => Expect::logs(DR, &["step"]),
                // The load balancer never reported the draining table applied: nothing
                // drains, so no drain time runs out (see the scenario below).
                DR => Expect::nothing(DR),
                V => Expect::to(None, &["alert"], &["workflow-failed"]).ended("failed"),
            },
            StartOk => match p {
                D => Expect::nothing(D).changed(),
                _ => Expect::nothing(p),
            },
            StartFailed => match p {
                D => rolled_back(&["command-failed"]),
                _ => Expect::nothing(p),
            },
            StopOk | ResetOk | ResetFailed | AlertOk | AlertFailed => Expect::nothing(p),
            StopFailed => Expect::logs(p, &["command-failed"]),
            TransferOk => match p {
                HO => Expect::to(RJ, &["rejuvenate"], &["step"]),
                _ => Expect::nothing(p),
            },
            TransferFailed => match p {
                HO => Expect::to(RJ, &["alert", "rejuvenate"], &["handoff-failed", "step"]),
                _ => Expect::nothing(p),
            },
            RejuvenateOk => match p {
                RJ => Expect::logs(V, &["step"]),
                _ => Expect::nothing(p),
            },
            RejuvenateFailedAction | RejuvenateFailed => match p {
                // The failed server's drained instances (web, db) leave the cluster: stopped.
                RJ => Expect::to(None, &["alert", "stop", "stop"], &["workflow-failed"])
                    .ended("failed"),
                _ => Expect::nothing(p),
            },
            SyncedDrained => match p {
                DR => Expect::to(HO, &["transfer"], &["step"]),
                _ => Expect::nothing(p),
            },
            // Applied, requests still in flight: recorded (the drain time runs from now on).
            SyncedInFlight => match p {
                DR => Expect::nothing(DR).changed(),
                _ => Expect::nothing(p),
            },
            SyncedOldVersion => Expect::nothing(p),
            OpRejuvenateSource => match p {
                None => Expect::to(D, &["start", "start"], &["operator", "workflow-started"]),
                // Before the switch the request is taken: the gate opens as soon as the copies
                // are hot (at once when they already are).
                D => Expect::logs(D, &["operator"]),
                G => Expect::logs(DR, &["operator", "step"]),
                // Switched already: nothing left to ask for.
                _ => Expect::logs(p, &["operator-refused"]).changed_not(),
            },
            OpRejuvenateOtherForced => match (p, aa) {
                // Active-active: another primary with room takes it, budget ignored.
                (_, true) | (None, false) => {
                    Expect::to(p, &["start", "start"], &["operator", "workflow-started"]).other()
                }
                // Active-standby: the only spare is taken.
                (_, false) => Expect::to(p, &["alert"], &["operator", "no-target"]),
            },
            OpMaintenanceSource => match p {
                // Maintenance takes a serving primary out of service: its instances move first,
                // as in a workflow; a workflow already running goes on and switches at once.
                None => Expect::to(D, &["start", "start"], &["operator", "workflow-started"]),
                G => Expect::logs(DR, &["operator", "step"]),
                _ => Expect::logs(p, &["operator"]),
            },
            OpMaintenanceTarget => match (p, aa) {
                // Active-active: the would-be target is a serving primary; its instances move
                // off it (once it is no longer reserved as a target).
                (None, true) => {
                    Expect::to(p, &["start", "start"], &["operator", "workflow-started"])
                }
                _ => Expect::logs(p, &["operator"]),
            },
            OpPause => Expect::logs(p, &["operator"]),
            OpResume => Expect {
                logs: vec!["operator"],
                ..Expect::nothing(p)
            },
        }
    }

    impl Expect {
        /// Only a log line: the state itself is as before.
        fn changed_not(mut self) -> Self {
            self.unchanged = true;
            self
        }
    }

    fn other_server(mode: Mode) -> &'static str {
        match mode {
            Mode::ActiveStandby => "s2",
            Mode::ActiveActive => "s3",
        }
    }

    /// The result a case delivers for a command of its kind.
    fn result_of(h: &H, case: Case, cmd: &Command) -> CommandResult {
        let failed = CommandResult::Failed {
            error: "refused by the test".into(),
        };
        match case {
            StartOk => CommandResult::Started {
                addr: Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99)),
                    20050,
                )),
            },
            StopOk => CommandResult::Stopped,
            TransferOk => CommandResult::Transferred,
            RejuvenateOk | RejuvenateFailedAction => {
                let (run_id, actions) = match &cmd.kind {
                    CommandKind::Rejuvenate {
                        run_id, actions, ..
                    } => (run_id.clone(), actions.clone()),
                    _ => ("none".to_string(), vec![Action::StopInstances]),
                };
                let failing = (case == RejuvenateFailedAction).then_some(Action::DropCaches);
                CommandResult::Rejuvenated {
                    report: report(&run_id, &actions, h.now_ms, failing),
                }
            }
            ResetOk | AlertOk => CommandResult::Done,
            _ => failed,
        }
    }

    /// Stops, resets and alerts are pending in no phase of the drive: one is put in the
    /// outbox, to be acknowledged by the case.
    fn inject(h: &mut H, case: Case) {
        let kind = match case {
            StopOk | StopFailed => CommandKind::StopInstance {
                server: "s3".into(),
                instance: "web-s3-gone".into(),
            },
            ResetOk | ResetFailed => CommandKind::ResetDetector {
                server: "s3".into(),
            },
            AlertOk | AlertFailed => CommandKind::Alert {
                name: "RejuvTest".into(),
                server: Some("s3".into()),
                summary: "injected by the test".into(),
            },
            _ => return,
        };
        let id = h.c.next_id;
        h.c.next_id += 1;
        h.c.pending.insert(id, Command { id, kind });
    }

    /// Applies `case`; returns its output and the id of the outbox entry it acknowledged.
    fn apply(h: &mut H, mode: Mode, p: Option<Phase>, case: Case) -> (Output, Option<u64>) {
        let target = if p.is_some() {
            h.target("s1")
        } else {
            match mode {
                Mode::ActiveStandby => "s4".into(),
                Mode::ActiveActive => "s2".into(),
            }
        };
        let cmd_case = |case: Case| -> Option<fn(&CommandKind) -> bool> {
            Some(match case {
                StartOk | StartFailed => |k| matches!(k, CommandKind::StartInstance { .. }),
                TransferOk | TransferFailed => |k| matches!(k, CommandKind::TransferState { .. }),
                RejuvenateOk | RejuvenateFailedAction | RejuvenateFailed => {
                    |k| matches!(k, CommandKind::Rejuvenate { .. })
                }
                StopOk | StopFailed => |k| matches!(k, CommandKind::StopInstance { .. }),
                ResetOk | ResetFailed => |k| matches!(k, CommandKind::ResetDetector { .. }),
                AlertOk | AlertFailed => |k| matches!(k, CommandKind::Alert { .. }),
                _ => return None,
            })
        };
        if let Some(is_kind) = cmd_case(case) {
            // A command of this kind pending in this phase is acknowledged. Otherwise an
            // earlier acknowledgement of the kind is delivered again (or one for an id never
            // issued): it must change nothing.
            let cmd = h.pending_where(is_kind).into_iter().next();
            return match cmd {
                Some(cmd) => {
                    let result = result_of(h, case, &cmd);
                    (h.done(cmd.id, result), Some(cmd.id))
                }
                None => {
                    let old = h.delivered.iter().find(|(c, _)| is_kind(&c.kind)).cloned();
                    let (id, cmd) = match old {
                        Some((c, _)) => (c.id, c),
                        None => (
                            h.c.next_id + 1000,
                            Command {
                                id: h.c.next_id + 1000,
                                kind: CommandKind::ResetDetector {
                                    server: "s1".into(),
                                },
                            },
                        ),
                    };
                    let result = result_of(h, case, &cmd);
                    (h.step(Event::CommandDone { id, result }), None)
                }
            };
        }
        let out = match case {
            SourceSeen => h.observe("s1"),
            SourceLost => h.observe_down("s1"),
            TargetSeen => h.observe(&target),
            TargetLost => h.observe_down(&target),
            JudgedStable => h.judge("s1", Level::Stable),
            JudgedSuspect => h.judge("s1", Level::Suspect),
            JudgedUnstable => h.judge("s1", Level::Unstable),
            Tick => h.tick(),
            TickLate => h.wait(HOUR_MS),
            SyncedDrained => h.sync(),
            SyncedInFlight => {
                let ids: Vec<InstanceId> =
                    h.c.instances
                        .values()
                        .filter(|i| i.server == "s1")
                        .map(|i| i.id.clone())
                        .collect();
                let v = h.c.routes.version;
                let in_flight: Vec<(&str, u64)> = ids.iter().map(|i| (i.as_str(), 3)).collect();
                h.sync_with(v, &in_flight)
            }
            SyncedOldVersion => {
                let v = h.c.routes.version - 1;
                h.sync_with(v, &[])
            }
            OpRejuvenateSource => h.operator(OperatorCommand::Rejuvenate {
                server: "s1".into(),
                force: false,
            }),
            OpRejuvenateOtherForced => h.operator(OperatorCommand::Rejuvenate {
                server: other_server(mode).into(),
                force: true,
            }),
            OpMaintenanceSource => h.operator(OperatorCommand::Maintenance {
                server: "s1".into(),
                on: true,
            }),
            OpMaintenanceTarget => h.operator(OperatorCommand::Maintenance {
                server: target,
                on: true,
            }),
            OpPause => h.operator(OperatorCommand::Pause),
            OpResume => h.operator(OperatorCommand::Resume),
            _ => unreachable!("command cases handled above"),
        };
        (out, None)
    }

    fn normalized(c: &Cluster, acked: Option<u64>) -> Cluster {
        let mut c = c.clone();
        if let Some(id) = acked {
            c.pending.remove(&id);
        }
        c
    }

    pub(super) fn run_cell(mode: Mode, p: Option<Phase>, case: Case) {
        let mut h = drive_to(&Spec::of(mode), p);
        inject(&mut h, case);
        let before = h.clone();
        let history_before = h.c.history.len();
        let (out, acked) = apply(&mut h, mode, p, case);
        let e = expect(mode, p, case);

        assert_eq!(h.phase("s1"), e.phase, "phase of s1's workflow");
        assert_eq!(
            command_names(&out),
            sorted(&e.commands),
            "commands issued: {:?}",
            out.commands
        );
        assert_eq!(
            log_kinds(&out),
            sorted(&e.logs),
            "events logged: {:?}",
            out.events
        );
        if e.unchanged {
            assert_eq!(
                normalized(&h.c, None),
                normalized(&before.c, acked),
                "the cluster changed"
            );
        }
        let ended: Vec<&Workflow> = h.c.history[history_before..]
            .iter()
            .filter(|w| w.server == "s1")
            .collect();
        match e.ended {
            None => assert!(ended.is_empty(), "s1's workflow ended: {ended:?}"),
            Some(how) => {
                assert_eq!(ended.len(), 1, "one workflow of s1 ended");
                let got = match ended[0]
                    .outcome
                    .as_ref()
                    .expect("an ended workflow has an outcome")
                {
                    Outcome::Completed => "completed",
                    Outcome::RolledBack { .. } => "rolled-back",
                    Outcome::Failed { .. } => "failed",
                };
                assert_eq!(got, how, "{:?}", ended[0].outcome);
            }
        }
        let other = other_server(mode);
        assert_eq!(
            h.wf(other).is_some(),
            e.other_workflow,
            "workflow for {other}"
        );
        if let Some(w) = h.wf(other) {
            assert!(w.forced, "an operator's force is recorded");
        }

        // The effects each kind of cell must have on the routes and the servers.
        let old_pairs = before.wf("s1").map(|w| w.pairs.clone()).unwrap_or_default();
        let old_target = before.wf("s1").map(|w| w.target.clone());
        match (case, p) {
            (SourceLost, _) => {
                for i in h.c.instances.values().filter(|i| i.server == "s1") {
                    assert!(!i.healthy, "{} counts as unhealthy", i.id);
                    assert_ne!(h.backend(&i.id), Some(BackendState::Serving));
                }
                if p == G {
                    let w = h.wf("s1").expect("still running");
                    assert_eq!(
                        w.gate_reason.as_deref(),
                        Some("the source is down: failing over to the hot copy")
                    );
                    assert_eq!(
                        h.c.servers["s1"].state,
                        ServerState::Rejuvenating { workflow: w.id }
                    );
                    // Every copy serves at once, a stateful one too: the dead source has
                    // no state to hand off.
                    for p in &old_pairs {
                        assert_eq!(
                            h.backend(&p.new),
                            Some(BackendState::Serving),
                            "{} after the failover",
                            p.new
                        );
                    }
                }
            }
            (TargetLost, G) => {
                let t = old_target.clone().expect("there was a target");
                let w = h.wf("s1").expect("still running");
                let phases: Vec<&str> = w.steps.iter().map(|s| s.phase.as_str()).collect();
                assert_eq!(phases, ["duplexing", "gating", "duplexing"]);
                assert_eq!(
                    h.c.servers[&t].reserved_by,
                    Some(w.id),
                    "the target is kept"
                );
                assert_eq!(h.c.servers["s1"].state, ServerState::InService);
                for p in &old_pairs {
                    assert_eq!(h.backend(&p.new), None, "{} is not switched to", p.new);
                    assert_eq!(h.backend(&p.old), Some(BackendState::Serving));
                }
            }
            (TargetLost, DR) => {
                for p in &old_pairs {
                    assert_eq!(
                        h.backend(&p.new),
                        None,
                        "an unhealthy copy serves no traffic"
                    );
                }
            }
            (StartOk, D) => {
                let id = acked.expect("a start was acknowledged");
                let inst = match &before.c.pending[&id].kind {
                    CommandKind::StartInstance { instance, .. } => instance.clone(),
                    k => panic!("{k:?}"),
                };
                assert_eq!(
                    h.c.instances[&inst].addr,
                    Some(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99)),
                        20050
                    ))
                );
                assert!(!h.c.instances[&inst].healthy, "started is not healthy yet");
            }
            (TickLate | StartFailed, D) => {
                let t = old_target.clone().expect("there was a target");
                let stopped: BTreeSet<InstanceId> = out
                    .commands
                    .iter()
                    .filter_map(|c| match &c.kind {
                        CommandKind::StopInstance { server, instance } => {
                            assert_eq!(server, &t);
                            Some(instance.clone())
                        }
                        _ => None,
                    })
                    .collect();
                let copies: BTreeSet<InstanceId> =
                    old_pairs.iter().map(|p| p.new.clone()).collect();
                assert_eq!(stopped, copies, "every copy is stopped");
                for p in &old_pairs {
                    assert!(!h.c.instances.contains_key(&p.new));
                    assert_eq!(
                        h.backend(&p.old),
                        Some(BackendState::Serving),
                        "the source keeps serving"
                    );
                }
                assert_eq!(h.c.servers[&t].reserved_by, None);
                assert_eq!(
                    h.c.servers[&t].avoid_as_target_until_ms,
                    Some(h.now_ms + COOLDOWN_MS)
                );
                assert_eq!(h.c.servers["s1"].state, ServerState::InService);
                if mode == Mode::ActiveActive {
                    assert_ne!(h.target("s1"), t, "the failed target is avoided");
                }
            }
            (TransferOk | TransferFailed, HO) => {
                for p in &old_pairs {
                    assert_eq!(h.backend(&p.new), Some(BackendState::Serving));
                }
            }
            (RejuvenateOk, RJ) => {
                assert!(h.instances_on("s1").is_empty());
            }
            (RejuvenateFailedAction | RejuvenateFailed, RJ) | (TickLate, V) => {
                assert!(
                    matches!(h.c.servers["s1"].state, ServerState::Failed { .. }),
                    "{:?}",
                    h.c.servers["s1"].state
                );
                // The old instances are stopped and gone (in Verifying they are gone already).
                let stopped: BTreeSet<(ServerId, InstanceId)> = out
                    .commands
                    .iter()
                    .filter_map(|c| match &c.kind {
                        CommandKind::StopInstance { server, instance } => {
                            Some((server.clone(), instance.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                let expected: BTreeSet<(ServerId, InstanceId)> = before
                    .instances_on("s1")
                    .into_iter()
                    .map(|i| ("s1".to_string(), i))
                    .collect();
                assert_eq!(
                    stopped, expected,
                    "the failed server's instances are stopped"
                );
                assert!(
                    h.instances_on("s1").is_empty(),
                    "{:?}",
                    h.instances_on("s1")
                );
                for p in &old_pairs {
                    assert_eq!(h.backend(&p.old), None);
                    assert_eq!(h.backend(&p.new), Some(BackendState::Serving));
                }
                assert_eq!(h.c.servers[old_target.as_ref().unwrap()].reserved_by, None);
                assert_eq!(h.c.failed_total, 1);
            }
            (SourceSeen, V) => {
                let t = old_target.unwrap();
                let role = match mode {
                    Mode::ActiveStandby => Role::Spare,
                    Mode::ActiveActive => Role::Primary,
                };
                assert_eq!(h.c.servers["s1"].role, role);
                assert_eq!(h.c.servers["s1"].state, ServerState::InService);
                assert_eq!(h.c.servers[&t].role, Role::Primary);
                assert_eq!(h.c.servers[&t].reserved_by, None);
            }
            (OpPause, _) => assert!(h.c.paused),
            (OpResume, _) => assert!(!h.c.paused),
            (OpMaintenanceSource, _) => assert!(h.c.servers["s1"].maintenance),
            (OpMaintenanceTarget, _) => {
                let t = old_target.unwrap_or_else(|| match mode {
                    Mode::ActiveStandby => "s4".into(),
                    Mode::ActiveActive => "s2".into(),
                });
                assert!(h.c.servers[&t].maintenance);
            }
            (OpRejuvenateSource, None) => {
                assert_eq!(h.wf("s1").unwrap().reason, "requested by an operator");
            }
            (OpRejuvenateSource, D) => {
                assert_eq!(h.c.servers["s1"].manual_request, Some(false));
            }
            (OpRejuvenateSource, G) => {
                assert_eq!(
                    h.wf("s1").unwrap().gate_reason.as_deref(),
                    Some("requested by an operator")
                );
            }
            _ => {}
        }
    }

    pub(super) fn run_table(mode: Mode) {
        let mut failed = Vec::new();
        let mut cells = 0;
        for p in PHASES {
            for case in CASES {
                cells += 1;
                if let Err(e) = std::panic::catch_unwind(|| run_cell(mode, p, case)) {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failed.push(format!("({p:?}, {case:?}): {msg}"));
                }
            }
        }
        assert_eq!(cells, PHASES.len() * CASES.len());
        assert!(
            failed.is_empty(),
            "{} of {cells} cells failed in {mode}:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    #[test]
    fn every_phase_event_pair_active_standby() {
        run_table(Mode::ActiveStandby);
    }

    #[test]
    fn every_phase_event_pair_active_active() {
        run_table(Mode::ActiveActive);
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Carries `server`'s workflow (any phase) through to its end, as healthy agents and a quiet
/// moment would.
fn finish_workflow(h: &mut H, server: &str) {
    for _ in 0..8 {
        let Some(w) = h.wf(server).cloned() else {
            return;
        };
        h.ack_starts();
        h.observe(&w.target);
        h.agent(server).load1 = LOW_LOAD;
        h.observe(server);
        h.sync();
        let transfers = h.pending_where(|k| matches!(k, CommandKind::TransferState { .. }));
        h.ack_all(transfers);
        let rej = h.pending_where(
            |k| matches!(k, CommandKind::Rejuvenate { server: s, .. } if s == server),
        );
        h.ack_all(rej);
        h.observe(server);
    }
    panic!(
        "the workflow of {server} did not finish: {:?}",
        h.wf(server)
    );
}

/// Serving backends per service, as (service, instance) pairs.
fn serving(h: &H) -> BTreeSet<(String, InstanceId)> {
    h.c.routes
        .services
        .iter()
        .flat_map(|(name, r)| {
            r.backends
                .iter()
                .filter(|b| b.state == BackendState::Serving)
                .map(move |b| (name.clone(), b.id.clone()))
        })
        .collect()
}

fn outcome_name(w: &Workflow) -> &'static str {
    match w
        .outcome
        .as_ref()
        .expect("finished workflows have an outcome")
    {
        Outcome::Completed => "completed",
        Outcome::RolledBack { .. } => "rolled-back",
        Outcome::Failed { .. } => "failed",
    }
}

fn alerts(out: &Output) -> Vec<(Option<ServerId>, String)> {
    out.commands
        .iter()
        .filter_map(|c| match &c.kind {
            CommandKind::Alert {
                server, summary, ..
            } => Some((server.clone(), summary.clone())),
            _ => None,
        })
        .collect()
}

fn events_of<'a>(out: &'a Output, kind: &str) -> Vec<&'a LogEvent> {
    out.events
        .iter()
        .filter(|e| e.kind.as_str() == kind)
        .collect()
}

/// Carried through `step` anyway, a refused command is logged and changes nothing.
fn assert_refused_unchanged(h: &mut H, cmd: OperatorCommand) {
    assert!(
        h.c.check_operator(&h.cfg, &cmd).is_err(),
        "{cmd:?} is refused"
    );
    let before = h.c.clone();
    let out = h.operator(cmd);
    assert_eq!(log_kinds(&out), ["operator-refused"]);
    assert!(out.commands.is_empty());
    assert_eq!(h.c, before);
}

mod scenarios {
    use super::*;

    fn full_workflow(mode: Mode) {
        let spec = Spec::of(mode);
        let mut h = booted(&spec);
        let old_web = h.instance_of("s1", "web");
        let old_db = h.instance_of("s1", "db");
        let others: BTreeSet<(String, InstanceId)> = serving(&h)
            .into_iter()
            .filter(|(_, id)| id != &old_web && id != &old_db)
            .collect();

        let out = h.judge("s1", Level::Unstable);
        assert_eq!(events_of(&out, "workflow-started").len(), 1);
        let t = h.target("s1");
        // Active-standby: the spare. Active-active: the primary with the most room (a tie
        // between s2, s3, s4 goes to the lowest id).
        assert_eq!(
            t,
            if mode == Mode::ActiveStandby {
                "s4"
            } else {
                "s2"
            }
        );
        assert_eq!(h.c.servers["s1"].judgement, Level::Unstable);

        h.ack_starts();
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Duplexing),
            "started is not yet healthy"
        );
        let v_before = h.c.routes.version;
        h.observe(&t);
        // Quiet and old enough: duplexed, then the gate opens in the same step.
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        let w = h.wf("s1").unwrap().clone();
        assert!(
            w.gate_reason.as_deref().unwrap().contains("load 0.50"),
            "{:?}",
            w.gate_reason
        );
        let new_web = w
            .pairs
            .iter()
            .find(|p| p.service == "web")
            .unwrap()
            .new
            .clone();
        let new_db = w
            .pairs
            .iter()
            .find(|p| p.service == "db")
            .unwrap()
            .new
            .clone();
        assert_eq!(
            h.c.routes.version,
            v_before + 1,
            "one table for the whole switch"
        );
        assert_eq!(h.backend(&new_web), Some(BackendState::Serving));
        assert_eq!(h.backend(&old_web), Some(BackendState::Draining));
        assert_eq!(h.backend(&new_db), None);
        assert_eq!(h.backend(&old_db), Some(BackendState::Draining));
        assert!(!h.c.servers["s1"].on_list());

        h.sync();
        assert_eq!(h.phase("s1"), Some(Phase::HandingOff));
        h.ack_transfers();
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
        assert_eq!(h.backend(&new_db), Some(BackendState::Serving));
        h.ack_rejuvenate_ok();
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        let out = h.observe("s1");
        assert_eq!(h.phase("s1"), None);
        assert_eq!(events_of(&out, "workflow-completed").len(), 1);
        assert!(out.commands.iter().any(|c| c.kind
            == CommandKind::ResetDetector {
                server: "s1".into()
            }));

        let done = h.last_finished("s1").unwrap();
        assert_eq!(outcome_name(done), "completed");
        let phases: Vec<&str> = done.steps.iter().map(|s| s.phase.as_str()).collect();
        assert_eq!(
            phases,
            [
                "duplexing",
                "gating",
                "draining",
                "handing-off",
                "rejuvenating",
                "verifying",
                "rejoined"
            ]
        );
        assert_eq!(h.c.completed_total, 1);
        let s1 = &h.c.servers["s1"];
        assert_eq!(s1.state, ServerState::InService);
        assert_eq!(s1.judgement, Level::Stable);
        assert_eq!(
            s1.role,
            if mode == Mode::ActiveStandby {
                Role::Spare
            } else {
                Role::Primary
            }
        );
        assert_eq!(h.c.servers[&t].role, Role::Primary);
        assert_eq!(h.c.servers[&t].reserved_by, None);
        let mut expected = others.clone();
        expected.insert(("web".into(), new_web));
        expected.insert(("db".into(), new_db));
        assert_eq!(serving(&h), expected, "the copies replaced s1's instances");
        assert!(h
            .c
            .routes
            .services
            .values()
            .all(|r| r.backends.iter().all(|b| b.state == BackendState::Serving)));

        // The rejuvenated server is the next target.
        h.ack_housekeeping();
        let next = if mode == Mode::ActiveStandby {
            "s2"
        } else {
            "s3"
        };
        h.judge(next, Level::Unstable);
        assert_eq!(h.target(next), "s1");
    }

    #[test]
    fn full_workflow_active_standby_rejoins_the_source_as_spare() {
        full_workflow(Mode::ActiveStandby);
    }

    #[test]
    fn full_workflow_active_active_rejoins_the_source_as_primary() {
        full_workflow(Mode::ActiveActive);
    }

    #[test]
    fn stateless_switch_serves_the_copy_and_drains_the_old_in_one_table() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            let mut h = booted(&Spec::of(mode).services(&["web"]));
            let old = h.instance_of("s1", "web");
            h.judge("s1", Level::Unstable);
            h.ack_starts();
            let before = h.c.routes.clone();
            h.observe(&h.target("s1"));
            let new = h.wf("s1").unwrap().pairs[0].new.clone();
            assert_eq!(h.c.routes.version, before.version + 1);
            let web = &h.c.routes.services["web"];
            let state = |id: &str| web.backends.iter().find(|b| b.id == id).map(|b| b.state);
            assert_eq!(state(&new), Some(BackendState::Serving));
            assert_eq!(state(&old), Some(BackendState::Draining));
            assert!(!web.hold);
            let prev = &before.services["web"];
            assert!(
                prev.backends.iter().all(|b| b.id != new),
                "the copy was not listed before"
            );

            // Drained: no state to move, straight to rejuvenation.
            h.sync();
            assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
            h.ack_rejuvenate_ok();
            h.observe("s1");
            let steps: Vec<String> = h
                .last_finished("s1")
                .unwrap()
                .steps
                .iter()
                .map(|s| s.phase.to_string())
                .collect();
            assert!(!steps.iter().any(|s| s == "handing-off"), "{steps:?}");
            assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
        }
    }

    #[test]
    fn stateful_copy_serves_only_once_its_state_moved() {
        let mut h = booted(&Spec::active_standby().services(&["db"]));
        let old = h.instance_of("s1", "db");
        h.judge("s1", Level::Unstable);
        h.ack_starts();
        h.observe("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        let new = h.wf("s1").unwrap().pairs[0].new.clone();
        assert!(h.wf("s1").unwrap().pairs[0].handoff);
        assert_eq!(h.backend(&new), None);
        assert_eq!(h.backend(&old), Some(BackendState::Draining));
        // The other primaries' db instances keep serving meanwhile.
        assert_eq!(serving(&h).len(), 2);

        h.sync();
        assert_eq!(h.phase("s1"), Some(Phase::HandingOff));
        assert_eq!(h.backend(&new), None, "no traffic before the state arrives");
        h.sync();
        h.tick();
        assert_eq!(h.backend(&new), None);
        let transfer = h.pending_where(|k| matches!(k, CommandKind::TransferState { .. }));
        assert_eq!(transfer.len(), 1);
        assert_eq!(
            transfer[0].kind,
            CommandKind::TransferState {
                from_server: "s1".into(),
                from: old.clone(),
                to_server: "s4".into(),
                to: new.clone(),
            }
        );
        let v = h.c.routes.version;
        h.ack_transfers();
        assert_eq!(h.backend(&new), Some(BackendState::Serving));
        assert_eq!(h.c.routes.version, v + 1);
        assert!(h.wf("s1").unwrap().pairs[0].transferred);
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
    }

    #[test]
    fn failed_hand_off_serves_without_the_state_and_alerts() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::HandingOff));
        let t = h.pending_where(|k| matches!(k, CommandKind::TransferState { .. }))[0].clone();
        let out = h.ack_failed(&t);
        let CommandKind::TransferState { to, .. } = &t.kind else {
            unreachable!()
        };
        assert_eq!(h.backend(to), Some(BackendState::Serving));
        assert_eq!(alerts(&out).len(), 1);
        assert!(alerts(&out)[0].1.contains("hand-off"), "{:?}", alerts(&out));
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
    }

    fn duplex_timeout(mode: Mode) {
        let mut h = booted(&Spec::of(mode));
        h.judge("s1", Level::Unstable);
        let t = h.target("s1");
        let copies: BTreeSet<InstanceId> = h
            .wf("s1")
            .unwrap()
            .pairs
            .iter()
            .map(|p| p.new.clone())
            .collect();
        h.agent(&t).starts_healthy = false;
        h.ack_starts();
        h.observe(&t);
        let routes = h.c.routes.services.clone();
        let out = h.wait(DUPLEX_TIMEOUT_MS - 1);
        assert!(out.commands.is_empty() && out.events.is_empty(), "{out:?}");
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));

        let out = h.wait(1);
        let w = h.last_finished("s1").unwrap().clone();
        assert_eq!(outcome_name(&w), "rolled-back");
        assert!(
            format!("{:?}", w.outcome).contains("not healthy within"),
            "{:?}",
            w.outcome
        );
        let stops: BTreeSet<InstanceId> = out
            .commands
            .iter()
            .filter_map(|c| match &c.kind {
                CommandKind::StopInstance { server, instance } if server == &t => {
                    Some(instance.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(stops, copies);
        assert!(alerts(&out)
            .iter()
            .any(|(s, m)| s.as_deref() == Some("s1") && m.contains("rolled back")));
        assert_eq!(h.c.servers[&t].reserved_by, None);
        assert_eq!(
            h.c.servers[&t].avoid_as_target_until_ms,
            Some(h.now_ms + COOLDOWN_MS)
        );
        assert_eq!(h.c.servers["s1"].state, ServerState::InService);
        assert_eq!(
            h.c.routes.services, routes,
            "the source still serves, the copies never did"
        );
        assert_eq!(h.c.rolled_back_total, 1);
        for c in &copies {
            assert!(!h.c.instances.contains_key(c));
        }

        match mode {
            Mode::ActiveStandby => {
                let nt = events_of(&out, "no-target");
                assert_eq!(nt.len(), 1);
                assert!(
                    nt[0]
                        .message
                        .contains("no spare can take it (s4: in failed-target cooldown"),
                    "{}",
                    nt[0].message
                );
                assert_eq!(h.phase("s1"), None);
                h.ack_housekeeping();
                for _ in 0..3 {
                    let out = h.wait(1_000);
                    assert!(out.commands.is_empty() && out.events.is_empty(), "{out:?}");
                }
                // Once the cooldown is over, the spare may be chosen again.
                h.agent(&t).starts_healthy = true;
                h.wait(COOLDOWN_MS);
                assert_eq!(h.target("s1"), t);
            }
            Mode::ActiveActive => {
                let next = h.target("s1");
                assert_ne!(next, t, "the failed target is avoided");
                assert_eq!(next, "s3");
            }
        }
    }

    #[test]
    fn duplex_timeout_rolls_back_active_standby() {
        duplex_timeout(Mode::ActiveStandby);
    }

    #[test]
    fn duplex_timeout_rolls_back_active_active() {
        duplex_timeout(Mode::ActiveActive);
    }

    #[test]
    fn failed_start_rolls_back() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            let mut h = booted(&Spec::of(mode));
            h.judge("s1", Level::Unstable);
            let t = h.target("s1");
            let starts = h.pending_starts();
            assert_eq!(starts.len(), 2);
            let out = h.ack_failed(&starts[0]);
            let w = h.last_finished("s1").unwrap();
            assert_eq!(outcome_name(w), "rolled-back");
            assert!(format!("{:?}", w.outcome).contains("refused by the test"));
            assert_eq!(events_of(&out, "command-failed").len(), 1);
            assert_eq!(
                out.commands.iter().filter(|c| matches!(&c.kind, CommandKind::StopInstance { server, .. } if server == &t)).count(),
                2
            );
            assert_eq!(h.c.servers[&t].reserved_by, None);
            assert!(h.c.servers[&t].avoid_as_target_until_ms.is_some());
            for i in h.c.instances.values().filter(|i| i.server == "s1") {
                assert_eq!(h.backend(&i.id), Some(BackendState::Serving));
            }
        }
    }

    #[test]
    fn late_start_of_a_rolled_back_copy_changes_nothing() {
        let mut h = booted(&Spec::active_standby());
        h.judge("s1", Level::Unstable);
        let starts = h.pending_starts();
        h.ack_failed(&starts[0]);
        // Whatever happens to the other start, its result changes nothing.
        let before = h.c.clone();
        let out = h.step(Event::CommandDone {
            id: starts[1].id,
            result: CommandResult::Started {
                addr: Some("127.0.0.14:20000".parse().unwrap()),
            },
        });
        assert!(out.commands.is_empty() && out.events.is_empty(), "{out:?}");
        let mut expected = before;
        expected.pending.remove(&starts[1].id);
        assert_eq!(h.c, expected);
    }

    #[test]
    fn two_unstable_one_spare_budget_one() {
        let mut h = booted(&Spec::active_standby());
        h.judge("s1", Level::Unstable);
        let w1 = h.wf("s1").unwrap().id;
        let out = h.judge("s2", Level::Unstable);
        assert_eq!(h.wf("s2"), None);
        let nt = events_of(&out, "waiting-for-budget");
        assert_eq!(nt.len(), 1, "{out:?}");
        assert!(nt[0].message.contains("budget 1"), "{}", nt[0].message);
        assert_eq!(nt[0].server.as_deref(), Some("s2"));
        assert!(
            alerts(&out).is_empty(),
            "waiting for the budget is not an alert"
        );
        assert_eq!(h.c.servers["s4"].reserved_by, Some(w1));
        for _ in 0..3 {
            let out = h.wait(1_000);
            assert!(events_of(&out, "no-target").is_empty(), "said once");
        }
        // s1's workflow ends; s2's starts at once, onto the freshly rejuvenated s1.
        finish_workflow(&mut h, "s1");
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
        assert_eq!(h.target("s2"), "s1");
        assert_eq!(h.c.workflows.len(), 1);
    }

    #[test]
    fn two_unstable_one_spare_budget_two_never_reserves_it_twice() {
        let mut h = booted(&Spec::active_standby().budget(2));
        h.judge("s1", Level::Unstable);
        let w1 = h.wf("s1").unwrap().id;
        let out = h.judge("s2", Level::Unstable);
        assert_eq!(h.wf("s2"), None);
        let nt = events_of(&out, "no-target");
        assert_eq!(nt.len(), 1);
        assert!(
            nt[0].message.contains("s4: reserved by workflow"),
            "{}",
            nt[0].message
        );
        assert_eq!(alerts(&out).len(), 1);
        assert_eq!(h.c.servers["s4"].reserved_by, Some(w1));
        // Both unstable in one step too: one workflow.
        let mut h = booted(&Spec::active_standby().budget(2));
        h.c.servers.get_mut("s1").unwrap().judgement = Level::Unstable;
        h.c.servers.get_mut("s2").unwrap().judgement = Level::Unstable;
        h.tick();
        assert_eq!(h.c.workflows.len(), 1);
        assert_eq!(h.c.servers["s4"].reserved_by, Some(h.wf("s1").unwrap().id));
    }

    #[test]
    fn budget_holds_in_active_active() {
        let mut h = booted(&Spec::active_active());
        h.judge("s1", Level::Unstable);
        let out = h.judge("s3", Level::Unstable);
        assert_eq!(h.c.workflows.len(), 1);
        assert!(events_of(&out, "waiting-for-budget")[0]
            .message
            .contains("budget"));
    }

    fn assert_said_once(h: &mut H, server: &str, first: &Output, words: &str) {
        assert_eq!(h.wf(server), None);
        let nt = events_of(first, "no-target");
        assert_eq!(nt.len(), 1, "{first:?}");
        assert!(nt[0].message.contains(words), "{}", nt[0].message);
        let a = alerts(first);
        assert_eq!(a.len(), 1, "{first:?}");
        assert_eq!(a[0].0.as_deref(), Some(server));
        let mut later = vec![];
        for _ in 0..5 {
            later.push(h.tick());
            later.push(h.wait(60_000));
            later.push(h.observe("s2"));
            later.push(h.observe("s3"));
            later.push(h.judge(server, Level::Unstable));
        }
        assert_eq!(H::alerts_issued(&later), 0, "alerted again: {later:?}");
        assert!(later.iter().all(|o| events_of(o, "no-target").is_empty()));
        assert_eq!(h.wf(server), None);
    }

    #[test]
    fn no_spare_alerts_once_and_starts_when_one_returns() {
        // The spare's agent is unreachable.
        let mut h = booted(&Spec::active_standby());
        h.observe_down("s4");
        let out = h.judge("s1", Level::Unstable);
        assert_said_once(&mut h, "s1", &out, "s4: its agent does not answer");
        h.observe("s4");
        assert_eq!(h.target("s1"), "s4");

        // The spare is in maintenance.
        let mut h = booted(&Spec::active_standby());
        h.operator(OperatorCommand::Maintenance {
            server: "s4".into(),
            on: true,
        });
        let out = h.judge("s1", Level::Unstable);
        assert_said_once(&mut h, "s1", &out, "s4: in maintenance");
        h.operator(OperatorCommand::Maintenance {
            server: "s4".into(),
            on: false,
        });
        assert_eq!(h.target("s1"), "s4");
    }

    #[test]
    fn no_capacity_alerts_once() {
        // Every primary is full: 2 units used of 2.
        let mut h = booted(&Spec::active_active().capacity(2));
        let out = h.judge("s1", Level::Unstable);
        assert_said_once(
            &mut h,
            "s1",
            &out,
            "no peer can take it (s2: 0 free units, 2 needed; s3: 0 free units, 2 needed",
        );
        // A spare too small for the source's instances.
        let mut h = booted(&Spec::active_standby().capacity(2).services(&["web"]));
        h.c.servers.get_mut("s4").unwrap().capacity = 0;
        let out = h.judge("s1", Level::Unstable);
        assert_said_once(&mut h, "s1", &out, "s4: 0 free units, 1 needed");
    }

    #[test]
    fn capacity_floor_blocks_and_its_boundary_does_not() {
        // Active-standby: 3 primaries x 4 units; the spare replaces the source: 12 remain,
        // and a floor above the primaries' 12 units is refused by the config itself (the
        // spare's units do not count).
        let err = Config::from_toml(&Spec::of(Mode::ActiveStandby).floor(13).toml())
            .expect_err("a floor above the primaries' capacity is refused")
            .to_string();
        assert!(
            err.contains(
                "budget.min_available_capacity: 13 is more than the primaries' capacity (12"
            ),
            "{err}"
        );
        // Active-active: 4 x 4 units, the source leaves: 12 remain.
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            if mode == Mode::ActiveActive {
                let mut h = booted(&Spec::of(mode).floor(13));
                let out = h.judge("s1", Level::Unstable);
                assert_said_once(
                    &mut h,
                    "s1",
                    &out,
                    "capacity floor would be broken (12 < 13 units)",
                );
            }

            let mut h = booted(&Spec::of(mode).floor(12));
            h.judge("s1", Level::Unstable);
            assert_eq!(
                h.phase("s1"),
                Some(Phase::Duplexing),
                "{mode}: 12 >= 12 is allowed"
            );
        }
    }

    #[test]
    fn a_drain_times_out_only_once_the_load_balancer_applied_its_table() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Draining));
        let old: Vec<InstanceId> = h
            .wf("s1")
            .unwrap()
            .pairs
            .iter()
            .map(|p| p.old.clone())
            .collect();
        let v = h.c.routes.version;
        // Never applied (a proxy holding someone else's table, or unreachable): an hour on,
        // the source is still draining, not rejuvenated under live traffic.
        h.sync_with(v - 1, &[]);
        h.wait(HOUR_MS);
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        // Applied, with requests in flight: the drain time runs out, and it goes on.
        let busy: Vec<(&str, u64)> = old.iter().map(|i| (i.as_str(), 1)).collect();
        h.sync_with(v, &busy);
        h.wait(HOUR_MS);
        assert_eq!(h.phase("s1"), Some(Phase::HandingOff));
    }

    #[test]
    fn drain_waits_for_the_applied_version_and_no_in_flight() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Draining));
        let w = h.wf("s1").unwrap().clone();
        let old_web = w
            .pairs
            .iter()
            .find(|p| p.service == "web")
            .unwrap()
            .old
            .clone();
        let old_db = w
            .pairs
            .iter()
            .find(|p| p.service == "db")
            .unwrap()
            .old
            .clone();
        let v = h.c.routes.version;
        assert_eq!(h.c.instances[&old_web].draining_from_version, Some(v));

        // The adapter still has the table before the switch: its zero in-flight means nothing.
        h.sync_with(v - 1, &[]);
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert!(!h.c.instances[&old_web].drained && !h.c.instances[&old_db].drained);

        // The switch is applied but requests are still in flight.
        h.sync_with(v, &[(old_web.as_str(), 2), (old_db.as_str(), 1)]);
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert!(!h.c.instances[&old_web].drained && !h.c.instances[&old_db].drained);
        assert_eq!(h.backend(&old_web), Some(BackendState::Draining));

        // web is done; db still busy.
        h.sync_with(v, &[(old_web.as_str(), 0), (old_db.as_str(), 1)]);
        assert!(h.c.instances[&old_web].drained);
        assert_eq!(
            h.backend(&old_web),
            None,
            "a drained instance leaves the table"
        );
        assert_eq!(h.phase("s1"), Some(Phase::Draining));

        let v2 = h.c.routes.version;
        assert!(v2 > v);
        h.sync_with(v2, &[(old_db.as_str(), 0)]);
        assert_eq!(h.phase("s1"), Some(Phase::HandingOff));
    }

    #[test]
    fn drain_timeout_moves_on() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Draining));
        let w = h.wf("s1").unwrap().clone();
        let v = h.c.routes.version;
        let busy: Vec<(&str, u64)> = w.pairs.iter().map(|p| (p.old.as_str(), 5)).collect();
        h.sync_with(v, &busy);
        let out = h.wait(DRAIN_MS - 1);
        assert!(out.events.is_empty());
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        let out = h.wait(1);
        assert_eq!(events_of(&out, "drain-timeout").len(), 1);
        assert_eq!(h.phase("s1"), Some(Phase::HandingOff));
    }

    #[test]
    fn failed_rejuvenation_action_fails_the_workflow() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            let mut h = drive_to(&Spec::of(mode), Some(Phase::Rejuvenating));
            let t = h.target("s1");
            let copies: Vec<InstanceId> = h
                .wf("s1")
                .unwrap()
                .pairs
                .iter()
                .map(|p| p.new.clone())
                .collect();
            let cmd = h.pending_rejuvenate();
            let CommandKind::Rejuvenate {
                run_id, actions, ..
            } = &cmd.kind
            else {
                unreachable!()
            };
            let rep = report(run_id, actions, h.now_ms, Some(Action::CompactMemory));
            let out = h.done(
                cmd.id,
                CommandResult::Rejuvenated {
                    report: rep.clone(),
                },
            );
            let w = h.last_finished("s1").unwrap();
            assert_eq!(outcome_name(w), "failed");
            assert!(
                format!("{:?}", w.outcome).contains("compact-memory failed"),
                "{:?}",
                w.outcome
            );
            assert_eq!(w.report.as_ref(), Some(&rep));
            assert!(
                matches!(&h.c.servers["s1"].state, ServerState::Failed { reason } if reason.contains("compact-memory"))
            );
            assert!(!h.c.servers["s1"].on_list());
            let a = alerts(&out);
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].0.as_deref(), Some("s1"));
            assert_eq!(h.c.failed_total, 1);
            assert_eq!(h.c.servers[&t].reserved_by, None);
            for c in &copies {
                assert_eq!(
                    h.backend(c),
                    Some(BackendState::Serving),
                    "the copies keep serving"
                );
            }
            // A failed server is neither a source nor a target afterwards.
            h.judge("s1", Level::Unstable);
            assert_eq!(h.wf("s1"), None);
        }
    }

    #[test]
    fn failed_rejuvenate_command_fails_the_workflow() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Rejuvenating));
        let cmd = h.pending_rejuvenate();
        let out = h.ack_failed(&cmd);
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "failed");
        assert!(matches!(
            h.c.servers["s1"].state,
            ServerState::Failed { .. }
        ));
        assert_eq!(alerts(&out).len(), 1);
    }

    #[test]
    fn verify_timeout_fails() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Verifying));
        let out = h.wait(VERIFY_TIMEOUT_MS - 1);
        assert!(out.events.is_empty());
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        let out = h.wait(1);
        let w = h.last_finished("s1").unwrap();
        assert_eq!(outcome_name(w), "failed");
        assert!(format!("{:?}", w.outcome).contains("did not come back fresh"));
        assert!(matches!(
            h.c.servers["s1"].state,
            ServerState::Failed { .. }
        ));
        assert_eq!(alerts(&out).len(), 1);
        assert!(h.instances_on("s1").is_empty());
        // The promoted spare keeps serving as a primary.
        assert_eq!(h.c.servers["s4"].role, Role::Primary);
    }

    #[test]
    fn verify_needs_a_fresh_running_time_and_no_old_instance() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Verifying));
        let started = h.wf("s1").unwrap().report.as_ref().unwrap().started_at_ms;
        let old: Vec<InstanceId> = h
            .wf("s1")
            .unwrap()
            .pairs
            .iter()
            .map(|p| p.old.clone())
            .collect();
        // The running time did not start again.
        h.agent("s1").running_since_ms = started - 1;
        h.observe("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        // Fresh, but an old instance is still there.
        h.agent("s1").running_since_ms = started;
        h.agent("s1").instances.insert(
            old[0].clone(),
            ObservedInstance {
                state: InstanceState::Running,
                healthy: true,
                addr: None,
                started_at_ms: Some(T0),
                rss_bytes: None,
                crashes: 0,
                last_exit: None,
                last_output: Vec::new(),
            },
        );
        h.observe("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        // Unreachable.
        h.observe_down("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        h.agent("s1").instances.clear();
        h.observe("s1");
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
    }

    #[test]
    fn after_restart_host_verify_waits_for_a_new_boot_identity() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Rejuvenating));
        h.agent("s1").boot_id = Some("boot-1".into());
        h.observe("s1");
        let cmd = h.pending_rejuvenate();
        let CommandKind::Rejuvenate { run_id, .. } = &cmd.kind else {
            unreachable!()
        };
        let now = h.now_ms;
        let mut r = report(
            run_id,
            &[Action::StopInstances, Action::RestartHost],
            now,
            None,
        );
        r.boot_id = Some("boot-1".into());
        assert!(r.restarted_host());
        let a = h.agent("s1");
        a.instances.clear();
        a.running_since_ms = now;
        h.done(cmd.id, CommandResult::Rejuvenated { report: r });
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        // The agent answers fresh, from the same boot: the host did not restart.
        let out = h.observe("s1");
        assert!(events_of(&out, "host-restart").is_empty());
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        // Away, then back from another boot: a host restart, seen and verified.
        h.observe_down("s1");
        h.agent("s1").boot_id = Some("boot-2".into());
        let out = h.observe("s1");
        let seen = events_of(&out, "host-restart");
        assert_eq!(seen.len(), 1, "{out:?}");
        assert!(
            seen[0].message.contains("boot-1 -> boot-2"),
            "{}",
            seen[0].message
        );
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
    }

    #[test]
    fn gate_waits_on_high_load_until_max_wait() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let gate_logs = h.logs_of_kind("gate");
        assert_eq!(gate_logs.len(), 1);
        assert!(
            gate_logs[0]
                .message
                .contains("load 5.00 is above max_load 2.00"),
            "{}",
            gate_logs[0].message
        );
        for _ in 0..3 {
            h.tick();
            h.observe("s1");
            h.wait(1_000);
        }
        assert_eq!(h.logs_of_kind("gate").len(), 1, "the reason is said once");
        let waited = h.now_ms - T0;
        h.wait(MAX_WAIT_MS - waited - 1);
        assert_eq!(h.phase("s1"), Some(Phase::Gating));
        h.wait(1);
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        let r = h.wf("s1").unwrap().gate_reason.clone().unwrap();
        assert!(r.contains("waited 600s"), "{r}");
    }

    #[test]
    fn gate_opens_on_near_exhaustion() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let far = Judgement {
            level: Level::Unstable,
            explanation: Some(explanation(Some(3_600.0))),
            host: Level::Unstable,
            unstable_instances: vec![],
        };
        h.judge_with("s1", far);
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Gating),
            "an hour away is not urgent"
        );
        let near = Judgement {
            level: Level::Unstable,
            explanation: Some(explanation(Some(30.0))),
            host: Level::Unstable,
            unstable_instances: vec![],
        };
        h.judge_with("s1", near);
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        let r = h.wf("s1").unwrap().gate_reason.clone().unwrap();
        assert!(r.contains("exhaustion forecast in 30s"), "{r}");
    }

    #[test]
    fn a_young_server_waits_before_its_copies_start_not_at_the_gate() {
        let mut h = booted(&Spec::active_standby());
        h.agent("s1").running_since_ms = T0 - 30_000;
        h.observe("s1");
        h.judge("s1", Level::Unstable);
        assert_eq!(h.wf("s1"), None, "no hot copy held while it is young");
        let waits = |h: &H| h.logs_of_kind("waiting-for-budget").len();
        assert_eq!(waits(&h), 1);
        assert!(
            h.c.servers["s4"].reserved_by.is_none(),
            "the spare stays free"
        );
        assert!(h.c.servers["s1"]
            .blocked_reason
            .as_deref()
            .unwrap()
            .contains("gate.min_running_time (60s)"));
        // Polled every second meanwhile: the wait is said once.
        for _ in 0..29 {
            h.now_ms += 1_000;
            h.observe("s1");
        }
        assert_eq!(waits(&h), 1, "one event for one wait");
        assert_eq!(h.wf("s1"), None);
        h.wait(1_000);
        h.observe("s1");
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Duplexing),
            "60s of running time lets it start"
        );
        // A near exhaustion does not wait for the running time.
        let mut h = booted(&Spec::active_standby());
        h.agent("s2").running_since_ms = T0 - 30_000;
        h.observe("s2");
        h.judge_with("s2", judgement_with_tte(600.0));
        assert_eq!(h.phase("s2"), Some(Phase::Duplexing));
    }

    #[test]
    fn operator_request_opens_the_gate_at_once() {
        let mut h = booted(&Spec::active_standby());
        h.agent("s1").load1 = HIGH_LOAD;
        h.observe("s1");
        let out = h.operator(OperatorCommand::Rejuvenate {
            server: "s1".into(),
            force: false,
        });
        assert_eq!(h.wf("s1").unwrap().reason, "requested by an operator");
        assert!(!h.wf("s1").unwrap().forced);
        assert_eq!(events_of(&out, "operator").len(), 1);
        h.ack_starts();
        h.observe("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert_eq!(
            h.wf("s1").unwrap().gate_reason.as_deref(),
            Some("requested by an operator")
        );
        finish_workflow(&mut h, "s1");
        assert_eq!(
            h.c.servers["s1"].manual_request, None,
            "the request is used up"
        );
    }

    #[test]
    fn forced_request_ignores_the_budget() {
        let mut h = booted(&Spec {
            primaries: 5,
            ..Spec::active_active()
        });
        h.judge("s1", Level::Unstable);
        h.operator(OperatorCommand::Rejuvenate {
            server: "s3".into(),
            force: true,
        });
        assert_eq!(h.c.workflows.len(), 2, "over the budget of 1");
        assert!(h.wf("s3").unwrap().forced);
        assert_ne!(h.target("s3"), h.target("s1"));
        // An unforced one still waits for the budget.
        let out = h.judge("s5", Level::Unstable);
        assert_eq!(h.wf("s5"), None);
        assert!(events_of(&out, "waiting-for-budget")[0]
            .message
            .contains("budget"));
    }

    #[test]
    fn pause_stops_new_workflows_and_resume_starts_them() {
        let mut h = booted(&Spec::active_standby());
        h.operator(OperatorCommand::Pause);
        let out = h.judge("s1", Level::Unstable);
        assert_eq!(h.wf("s1"), None);
        let nt = events_of(&out, "waiting-for-budget");
        assert_eq!(nt.len(), 1);
        assert!(nt[0].message.contains("paused"), "{}", nt[0].message);
        assert!(
            alerts(&out).is_empty(),
            "a pause is the operator's own doing"
        );
        for _ in 0..3 {
            let out = h.wait(10_000);
            assert!(out.events.is_empty() && out.commands.is_empty());
        }
        let out = h.operator(OperatorCommand::Resume);
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
        assert_eq!(events_of(&out, "workflow-started").len(), 1);
    }

    #[test]
    fn pause_lets_the_running_workflow_finish() {
        let mut h = booted(&Spec::active_standby());
        h.judge("s1", Level::Unstable);
        h.operator(OperatorCommand::Pause);
        finish_workflow(&mut h, "s1");
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
        h.judge("s2", Level::Unstable);
        h.wait(60_000);
        assert_eq!(h.wf("s2"), None, "paused");
        h.operator(OperatorCommand::Resume);
        assert_eq!(h.target("s2"), "s1");
    }

    #[test]
    fn maintenance_server_is_never_source_or_target() {
        let mut h = booted(&Spec::active_standby());
        h.operator(OperatorCommand::Maintenance {
            server: "s1".into(),
            on: true,
        });
        // The only workflow it is the source of moves its instances off it, without rejuvenating.
        let w = h.wf("s1").expect("its instances move").clone();
        assert!(w.reason.contains("maintenance"), "{}", w.reason);
        finish_workflow(&mut h, "s1");
        h.judge("s1", Level::Unstable);
        h.wait(60_000);
        assert_eq!(h.wf("s1"), None);
        assert_eq!(
            h.c.check_operator(
                &h.cfg,
                &OperatorCommand::Rejuvenate {
                    server: "s1".into(),
                    force: true
                }
            ),
            Err(Refusal::InMaintenance("s1".into()))
        );
        h.operator(OperatorCommand::Maintenance {
            server: "s1".into(),
            on: false,
        });
        assert!(h.c.servers["s1"].on_list(), "released: back as a spare");

        // Room for s2's instances elsewhere, and then s2 (empty) would be the roomiest.
        let mut h = booted(&Spec::active_active().capacity(8));
        h.operator(OperatorCommand::Maintenance {
            server: "s2".into(),
            on: true,
        });
        finish_workflow(&mut h, "s2");
        h.now_ms += COOLDOWN_MS;
        h.judge("s1", Level::Unstable);
        assert_ne!(
            h.target("s1"),
            "s2",
            "never the target while in maintenance"
        );

        let mut h = booted(&Spec::active_active());
        for s in ["s2", "s3", "s4"] {
            h.operator(OperatorCommand::Maintenance {
                server: s.into(),
                on: true,
            });
        }
        // s2's instances move to s1 (the only primary not in maintenance); s3 and s4 wait for
        // room; s1 is nobody's source while it is a target.
        assert_eq!(h.target("s2"), "s1");
        assert!(h.wf("s3").is_none() && h.wf("s4").is_none());
        h.judge("s1", Level::Unstable);
        assert_eq!(h.wf("s1"), None);
    }

    #[test]
    fn maintenance_drops_a_pending_operator_request() {
        let mut h = booted(&Spec::active_standby());
        h.observe_down("s4");
        h.operator(OperatorCommand::Rejuvenate {
            server: "s1".into(),
            force: false,
        });
        assert_eq!(h.c.servers["s1"].manual_request, Some(false));
        h.operator(OperatorCommand::Maintenance {
            server: "s1".into(),
            on: true,
        });
        assert_eq!(h.c.servers["s1"].manual_request, None);
        h.operator(OperatorCommand::Maintenance {
            server: "s1".into(),
            on: false,
        });
        h.observe("s4");
        assert_eq!(h.wf("s1"), None);
    }

    #[test]
    fn operator_requests_that_do_not_fit_are_refused() {
        let mut h = booted(&Spec::active_standby());
        let rej = |s: &str| OperatorCommand::Rejuvenate {
            server: s.into(),
            force: false,
        };
        assert_eq!(
            h.c.check_operator(&h.cfg, &rej("s9")),
            Err(Refusal::UnknownServer("s9".into()))
        );
        assert_eq!(
            h.c.check_operator(
                &h.cfg,
                &OperatorCommand::Maintenance {
                    server: "s9".into(),
                    on: true
                }
            ),
            Err(Refusal::UnknownServer("s9".into()))
        );
        assert_eq!(
            h.c.check_operator(&h.cfg, &rej("s4")),
            Err(Refusal::Spare("s4".into()))
        );
        assert_eq!(h.c.check_operator(&h.cfg, &rej("s1")), Ok(()));
        assert_eq!(h.c.check_operator(&h.cfg, &OperatorCommand::Pause), Ok(()));
        assert_eq!(h.c.check_operator(&h.cfg, &OperatorCommand::Resume), Ok(()));
        h.agent("s1").load1 = HIGH_LOAD;
        h.observe("s1");
        h.judge("s1", Level::Unstable);
        // Before the switch, a request for the source is what opens the gate.
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
        assert_eq!(h.c.check_operator(&h.cfg, &rej("s1")), Ok(()));
        // The reserved spare is still a spare until the switch.
        assert_eq!(
            h.c.check_operator(&h.cfg, &rej("s4")),
            Err(Refusal::Spare("s4".into()))
        );
        assert_refused_unchanged(&mut h, rej("s4"));
        h.ack_starts();
        h.observe("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Gating));
        assert_eq!(h.c.check_operator(&h.cfg, &rej("s1")), Ok(()));
        // Switched: nothing left to ask for.
        h.agent("s1").load1 = LOW_LOAD;
        h.observe("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert_eq!(
            h.c.check_operator(&h.cfg, &rej("s1")),
            Err(Refusal::Busy("s1".into()))
        );

        for cmd in [rej("s9"), rej("s1")] {
            assert_refused_unchanged(&mut h, cmd);
        }
    }

    /// Fails `s1`'s workflow at its rejuvenation; its old instances are stopped and acked.
    fn failed_s1(mode: Mode) -> H {
        let mut h = drive_to(&Spec::of(mode), Some(Phase::Rejuvenating));
        let cmd = h.pending_rejuvenate();
        h.ack_failed(&cmd);
        assert!(matches!(
            h.c.servers["s1"].state,
            ServerState::Failed { .. }
        ));
        h.ack_housekeeping();
        assert!(h.c.pending.is_empty(), "{:?}", h.c.pending);
        h
    }

    #[test]
    fn maintenance_off_releases_a_failed_server() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            let mut h = failed_s1(mode);
            let other = if mode == Mode::ActiveStandby {
                "s2"
            } else {
                "s3"
            };
            // While failed: neither a source, nor a target, nor asked for.
            h.judge("s1", Level::Unstable);
            assert_eq!(h.wf("s1"), None);
            let out = h.judge(other, Level::Unstable);
            if mode == Mode::ActiveStandby {
                assert_eq!(h.wf(other), None, "the only spare was promoted; s1 failed");
                assert_eq!(events_of(&out, "no-target").len(), 1, "{out:?}");
            } else {
                assert_ne!(h.target(other), "s1");
                finish_workflow(&mut h, other);
                h.ack_housekeeping();
            }
            // Maintenance on keeps it failed; off releases it.
            h.operator(OperatorCommand::Maintenance {
                server: "s1".into(),
                on: true,
            });
            assert!(matches!(
                h.c.servers["s1"].state,
                ServerState::Failed { .. }
            ));
            let out = h.operator(OperatorCommand::Maintenance {
                server: "s1".into(),
                on: false,
            });
            assert_eq!(events_of(&out, "operator").len(), 1);
            let s1 = &h.c.servers["s1"];
            assert_eq!(s1.state, ServerState::InService, "{mode}");
            assert!(!s1.maintenance && s1.on_list());
            assert_eq!(
                s1.role,
                match mode {
                    Mode::ActiveStandby => Role::Spare,
                    Mode::ActiveActive => Role::Primary,
                },
                "{mode}"
            );
            assert_eq!(s1.judgement, Level::Stable, "the old judgement is dropped");
            assert_eq!(s1.explanation, None);
            assert_eq!(h.wf("s1"), None, "{mode}: released, not rejuvenated again");
            // Nothing of its own: whatever it runs is a copy for a workflow that chose it.
            let copies: BTreeSet<InstanceId> =
                h.c.workflows
                    .values()
                    .flat_map(|w| w.pairs.iter().map(|p| p.new.clone()))
                    .collect();
            for i in h.instances_on("s1") {
                assert!(copies.contains(&i), "{mode}: {i} runs on the released s1");
            }

            match mode {
                Mode::ActiveStandby => {
                    // Back as a spare: the waiting s2 takes it, in the step of the release.
                    assert_eq!(h.target("s2"), "s1");
                    assert_eq!(
                        h.c.check_operator(
                            &h.cfg,
                            &OperatorCommand::Rejuvenate {
                                server: "s1".into(),
                                force: false
                            }
                        ),
                        Err(Refusal::Spare("s1".into()))
                    );
                }
                Mode::ActiveActive => {
                    // Back as an empty primary: the emptiest target, and a source again.
                    h.judge("s4", Level::Unstable);
                    assert_eq!(h.target("s4"), "s1");
                    finish_workflow(&mut h, "s4");
                    h.ack_housekeeping();
                    h.judge("s1", Level::Unstable);
                    assert!(h.wf("s1").is_some(), "{:?}", h.c.servers["s1"]);
                }
            }
        }
    }

    /// Active-standby picks the first usable spare in id order, however fresh the others are.
    #[test]
    fn target_is_the_first_usable_spare_in_id_order() {
        let spec = Spec {
            spares: 2,
            ..Spec::active_standby()
        };
        let mut h = booted(&spec);
        // s5 was started more recently than s4.
        h.agent("s5").running_since_ms = T0 - 60_000;
        h.observe("s5");
        h.judge("s1", Level::Unstable);
        assert_eq!(h.target("s1"), "s4");

        // s4 unreachable: s5.
        let mut h = booted(&spec);
        h.observe_down("s4");
        h.judge("s1", Level::Unstable);
        assert_eq!(h.target("s1"), "s5");

        // s4 too small for the source: s5.
        let mut h = booted(&spec);
        h.c.servers.get_mut("s4").unwrap().capacity = 1;
        h.judge("s1", Level::Unstable);
        assert_eq!(h.target("s1"), "s5");
    }

    #[test]
    fn events_about_unknown_servers_change_nothing() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let before = h.c.clone();
        let obs = h.agents["s1"].observation(h.now_ms);
        let out = h.step(Event::Observed {
            server: "s9".into(),
            observation: obs,
        });
        assert_eq!(out, Output::default());
        let out = h.judge("s9", Level::Unstable);
        assert_eq!(out, Output::default());
        assert_eq!(h.c, before);
    }

    /// Steps a workflow to its end the same way whatever state it starts from.
    fn continue_script(h: &mut H) -> Vec<Output> {
        let mut outs = vec![];
        h.agent("s1").load1 = LOW_LOAD;
        for _ in 0..6 {
            outs.push(h.ack_starts());
            let ids: Vec<ServerId> = h.agents.keys().cloned().collect();
            for id in ids {
                outs.push(h.observe(&id));
            }
            outs.push(h.sync());
            let cmds = h.pending_where(|k| {
                matches!(
                    k,
                    CommandKind::TransferState { .. } | CommandKind::Rejuvenate { .. }
                )
            });
            outs.push(h.ack_all(cmds));
            outs.push(h.observe("s1"));
            outs.push(h.ack_housekeeping());
            outs.push(h.wait(1_000));
        }
        outs
    }

    #[test]
    fn json_round_trip_mid_workflow_is_equal_and_continues_the_same() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            for p in PHASES {
                let mut h = drive_to(&Spec::of(mode), p);
                if p.is_none() {
                    h.judge("s1", Level::Unstable);
                }
                let json = serde_json::to_string(&h.c).expect("serializes");
                let back: Cluster = serde_json::from_str(&json).expect("deserializes");
                assert_eq!(
                    back, h.c,
                    "{mode} {p:?}: the JSON round trip changed the cluster"
                );
                let mut copy = h.clone();
                copy.c = back;
                let a = continue_script(&mut h);
                let b = continue_script(&mut copy);
                assert_eq!(a, b, "{mode} {p:?}: different outputs after the round trip");
                assert_eq!(h.c, copy.c);
                let done = h.last_finished("s1").expect("the script ends the workflow");
                assert_eq!(outcome_name(done), "completed", "{mode} {p:?}");
            }
        }
    }

    #[test]
    fn lost_instance_is_started_again_once() {
        let mut h = booted(&Spec::active_standby());
        let lost = h.instance_of("s2", "web");
        h.agent("s2").instances.remove(&lost);
        let out = h.observe("s2");
        assert_eq!(
            out.commands
                .iter()
                .map(|c| c.kind.clone())
                .collect::<Vec<_>>(),
            vec![CommandKind::StartInstance {
                server: "s2".into(),
                instance: lost.clone(),
                service: "web".into()
            }]
        );
        assert_eq!(events_of(&out, "instance-lost").len(), 1);
        assert_eq!(h.backend(&lost), None, "not serving while lost");
        for _ in 0..3 {
            let out = h.observe("s2");
            assert!(
                out.commands.is_empty(),
                "not twice while one is pending: {out:?}"
            );
            h.tick();
        }
        // Unreachable agents are not asked for anything.
        h.ack_starts();
        h.agent("s2").instances.remove(&lost);
        let out = h.observe_down("s2");
        assert!(out.commands.is_empty());
        h.agent("s2").start(&lost, T0);
        let out = h.observe("s2");
        assert!(out.commands.is_empty());
        assert_eq!(h.backend(&lost), Some(BackendState::Serving));
    }

    #[test]
    fn lost_copy_on_the_target_is_started_again() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let copy = h.wf("s1").unwrap().pairs[0].new.clone();
        h.agent("s4").instances.remove(&copy);
        let out = h.observe("s4");
        assert!(out.commands.iter().any(
            |c| matches!(&c.kind, CommandKind::StartInstance { instance, .. } if instance == &copy)
        ));
        // Never switched to while it is down: back to duplexing, under the duplex timeout.
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
        assert_eq!(events_of(&out, "step").len(), 1, "{out:?}");
        assert_eq!(h.backend(&copy), None);
        h.ack_starts();
        h.observe("s4");
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Gating),
            "hot again; the gate waits on the load"
        );
    }

    #[test]
    fn redelivered_results_change_nothing() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            let mut h = booted(&Spec::of(mode));
            let redeliver_all = |h: &mut H| {
                let before = h.c.clone();
                for (cmd, result) in h.delivered.clone() {
                    let out = h.step(Event::CommandDone {
                        id: cmd.id,
                        result: result.clone(),
                    });
                    assert_eq!(out, Output::default(), "{cmd:?}");
                    let out = h.step(Event::CommandDone {
                        id: cmd.id,
                        result: CommandResult::Failed {
                            error: "late".into(),
                        },
                    });
                    assert_eq!(out, Output::default(), "{cmd:?}");
                }
                assert_eq!(h.c, before);
            };
            redeliver_all(&mut h);
            h.judge("s1", Level::Unstable);
            h.ack_starts();
            h.observe(&h.target("s1"));
            redeliver_all(&mut h);
            h.sync();
            h.ack_transfers();
            redeliver_all(&mut h);
            h.ack_rejuvenate_ok();
            redeliver_all(&mut h);
            h.observe("s1");
            h.ack_housekeeping();
            redeliver_all(&mut h);
            assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
            assert!(h.delivered.len() >= 11, "{}", h.delivered.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: bugs found while writing these tests, one test each, named after the bug. They
// were pinned as ignored tests until the fix; now they keep the fixes in place.
// ---------------------------------------------------------------------------------------------

mod regressions {
    use super::*;

    /// StartInstance commands of the copies that a rollback removed.
    fn orphan_starts(h: &H) -> Vec<Command> {
        h.pending_where(|k| {
            matches!(k, CommandKind::StartInstance { instance, .. } if !h.c.instances.contains_key(instance))
        })
    }

    /// Was: roll_back left the copies' StartInstance in the outbox next to their StopInstance.
    #[test]
    fn rollback_leaves_no_start_pending_for_a_removed_copy() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            // One start fails while the other is still pending.
            let mut h = booted(&Spec::of(mode));
            h.judge("s1", Level::Unstable);
            let copies: BTreeSet<InstanceId> = h
                .wf("s1")
                .unwrap()
                .pairs
                .iter()
                .map(|p| p.new.clone())
                .collect();
            let starts = h.pending_starts();
            assert_eq!(starts.len(), 2);
            let out = h.ack_failed(&starts[0]);
            assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "rolled-back");
            assert!(
                orphan_starts(&h).is_empty(),
                "{mode}: a shell retrying these would start copies nobody stops: {:?}",
                orphan_starts(&h)
            );
            let stopped: BTreeSet<InstanceId> = out
                .commands
                .iter()
                .filter_map(|c| match &c.kind {
                    CommandKind::StopInstance { instance, .. } => Some(instance.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(stopped, copies, "{mode}: both copies are stopped");

            // The target never answered its starts before the duplex timeout.
            let mut h = booted(&Spec::of(mode));
            h.judge("s1", Level::Unstable);
            h.wait(DUPLEX_TIMEOUT_MS);
            assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "rolled-back");
            assert!(orphan_starts(&h).is_empty(), "{:?}", orphan_starts(&h));
        }
    }

    /// Was: a source that died while its hot copy waited at the gate kept waiting, and its
    /// traffic was lost.
    #[test]
    fn source_dying_while_gating_switches_to_the_hot_copy() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let w = h.wf("s1").unwrap().clone();
        let web = w.pairs.iter().find(|p| !p.handoff).unwrap().clone();
        let db = w.pairs.iter().find(|p| p.handoff).unwrap().clone();
        let out = h.observe_down("s1");
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Draining),
            "the gate still waits on the load the dead server last reported: {:?}",
            h.wf("s1").unwrap().gate_reason
        );
        assert_eq!(
            h.wf("s1").unwrap().gate_reason.as_deref(),
            Some("the source is down: failing over to the hot copy")
        );
        assert_eq!(events_of(&out, "step").len(), 1, "{out:?}");
        assert_eq!(
            h.backend(&web.new),
            Some(BackendState::Serving),
            "the hot copy takes over"
        );
        // Was: the stateful copy waited for a transfer from the dead source, which the
        // controller retries for 30 s before giving up; the copy served nothing meanwhile.
        // The dead source's state cannot be moved: the stateful copy serves at once, without
        // it, and a person is told.
        assert_eq!(h.backend(&db.new), Some(BackendState::Serving));
        let skipped = events_of(&out, "handoff-skipped");
        assert_eq!(skipped.len(), 1, "{out:?}");
        assert!(
            skipped[0].message.contains(&db.old) && skipped[0].message.contains("lost"),
            "{}",
            skipped[0].message
        );
        assert_eq!(alerts(&out).len(), 1, "{out:?}");
        assert!(!h.wf("s1").unwrap().pairs.iter().any(|p| p.handoff));
        h.sync();
        assert!(h
            .pending_where(|k| matches!(k, CommandKind::TransferState { .. }))
            .is_empty());
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating), "no hand-off step");
    }

    /// Was: a controller that took over a workflow at the gate (its state loaded without
    /// readings) took the source, not yet polled, for dead: it switched at once, skipped the
    /// state hand-off ("its state is lost") and stopped a live instance with its state.
    #[test]
    fn a_source_not_yet_polled_after_a_takeover_is_not_taken_for_dead() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let stored = serde_json::to_string(&h.c).expect("serializes");
        let mut back: Cluster = serde_json::from_str(&stored).expect("deserializes");
        for s in back.servers.values_mut() {
            s.observation = None;
        }
        h.c = back;
        let out = h.tick();
        assert_eq!(h.phase("s1"), Some(Phase::Gating), "{out:?}");
        assert!(events_of(&out, "handoff-skipped").is_empty(), "{out:?}");
        // Its first answer says it is alive: the hand-off is still to come.
        h.observe("s1");
        assert!(h.wf("s1").unwrap().pairs.iter().any(|p| p.handoff));
        assert_ne!(
            h.wf("s1").unwrap().gate_reason.as_deref(),
            Some("the source is down: failing over to the hot copy")
        );
    }

    /// The same failover when the agent answers but none of the old instances is healthy; one
    /// healthy old instance is enough to keep waiting.
    #[test]
    fn source_with_no_healthy_instance_while_gating_switches_to_the_hot_copy() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let w = h.wf("s1").unwrap().clone();
        let set_healthy = |h: &mut H, old: &str, healthy: bool| {
            let i = h.agent("s1").instances.get_mut(old).expect("runs on s1");
            i.healthy = healthy;
        };
        set_healthy(&mut h, &w.pairs[0].old, false);
        h.observe("s1");
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Gating),
            "one old instance still serves"
        );
        set_healthy(&mut h, &w.pairs[1].old, false);
        h.observe("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert_eq!(
            h.wf("s1").unwrap().gate_reason.as_deref(),
            Some("the source is down: failing over to the hot copy")
        );
    }

    /// Was: Gating had no timeout when a copy fell unhealthy; the target and the budget were
    /// held forever.
    #[test]
    fn gating_with_a_dead_copy_does_not_hold_the_target_forever() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let copies: BTreeSet<InstanceId> = h
            .wf("s1")
            .unwrap()
            .pairs
            .iter()
            .map(|p| p.new.clone())
            .collect();
        let out = h.observe_down("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing), "back to duplexing");
        assert!(
            events_of(&out, "step")[0]
                .message
                .contains("duplexing again"),
            "{out:?}"
        );
        let out = h.wait(DUPLEX_TIMEOUT_MS - 1);
        assert!(out.commands.is_empty(), "{out:?}");
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
        let out = h.wait(1);
        assert_eq!(h.phase("s1"), None);
        assert_eq!(h.c.servers["s4"].reserved_by, None);
        let w = h.last_finished("s1").unwrap();
        assert_eq!(outcome_name(w), "rolled-back");
        assert!(
            format!("{:?}", w.outcome).contains("not healthy within"),
            "{:?}",
            w.outcome
        );
        let stopped: BTreeSet<InstanceId> = out
            .commands
            .iter()
            .filter_map(|c| match &c.kind {
                CommandKind::StopInstance { instance, .. } => Some(instance.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(stopped, copies);
        for i in h.c.instances.values().filter(|i| i.server == "s1") {
            assert_eq!(h.backend(&i.id), Some(BackendState::Serving));
        }
    }

    /// Was: blocked_reason was never cleared when a server recovered, so a later episode was not
    /// alerted.
    #[test]
    fn no_target_is_alerted_again_in_a_new_episode() {
        let mut h = booted(&Spec::active_standby());
        h.observe_down("s4");
        let first = h.judge("s1", Level::Unstable);
        assert_eq!(alerts(&first).len(), 1);
        h.judge("s1", Level::Stable);
        assert_eq!(h.c.servers["s1"].blocked_reason, None);
        h.wait(HOUR_MS);
        let second = h.judge("s1", Level::Unstable);
        assert_eq!(
            alerts(&second).len(),
            1,
            "the second episode is not reported: {second:?}"
        );
        assert_eq!(events_of(&second, "no-target").len(), 1);
    }

    /// Was: available_capacity counted primaries in maintenance, which DESIGN.md keeps off the
    /// list.
    #[test]
    fn capacity_floor_counts_maintenance_servers_as_unavailable() {
        // 3 primaries x 4 units; s2 in maintenance leaves s1 + s3 = 8 units, and replacing s1
        // by the spare keeps 8 < 12.
        let mut h = booted(&Spec::active_standby().floor(12));
        h.operator(OperatorCommand::Maintenance {
            server: "s2".into(),
            on: true,
        });
        assert_eq!(h.c.available_capacity(), 8);
        let out = h.judge("s1", Level::Unstable);
        assert_eq!(
            h.wf("s1"),
            None,
            "the floor of 12 units was broken with only 8 available"
        );
        let nt = events_of(&out, "no-target");
        assert!(
            nt[0]
                .message
                .contains("capacity floor would be broken (8 < 12 units)"),
            "{}",
            nt[0].message
        );
        // Back from maintenance: 12 units, the floor holds, the workflow starts.
        h.operator(OperatorCommand::Maintenance {
            server: "s2".into(),
            on: false,
        });
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
    }

    /// Was: an operator's request for a server whose workflow waited at the gate was refused as
    /// busy.
    #[test]
    fn operator_request_opens_a_waiting_gate() {
        let cmd = OperatorCommand::Rejuvenate {
            server: "s1".into(),
            force: false,
        };
        // Waiting at the gate: it opens in the step of the request.
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        assert_eq!(
            h.c.check_operator(&h.cfg, &cmd),
            Ok(()),
            "asking for 'now' fits a workflow that waits"
        );
        h.operator(cmd.clone());
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert_eq!(
            h.wf("s1").unwrap().gate_reason.as_deref(),
            Some("requested by an operator")
        );

        // Still duplexing: the gate opens as soon as the copies are hot, busy as s1 is.
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Duplexing));
        assert_eq!(h.c.check_operator(&h.cfg, &cmd), Ok(()));
        h.operator(cmd.clone());
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
        h.ack_starts();
        h.observe("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert_eq!(
            h.wf("s1").unwrap().gate_reason.as_deref(),
            Some("requested by an operator")
        );
        // Switched: nothing left to ask for.
        assert_eq!(
            h.c.check_operator(&h.cfg, &cmd),
            Err(Refusal::Busy("s1".into()))
        );
    }

    /// Was: Rejuvenate on a failed server was accepted by check_operator and then never acted
    /// on. Now it is refused, with the way out in the message.
    #[test]
    fn operator_rejuvenate_on_a_failed_server_is_refused() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Verifying));
        h.wait(VERIFY_TIMEOUT_MS);
        let reason = match &h.c.servers["s1"].state {
            ServerState::Failed { reason } => reason.clone(),
            s => panic!("s1 is {s:?}"),
        };
        for force in [false, true] {
            let cmd = OperatorCommand::Rejuvenate {
                server: "s1".into(),
                force,
            };
            assert_eq!(
                h.c.check_operator(&h.cfg, &cmd),
                Err(Refusal::Failed("s1".into(), reason.clone()))
            );
            assert_refused_unchanged(&mut h, cmd);
        }
        let said = Refusal::Failed("s1".into(), reason.clone()).to_string();
        assert!(
            said.contains(&reason) && said.contains("maintenance off"),
            "{said}"
        );
        assert_eq!(h.c.servers["s1"].manual_request, None);
    }

    /// Was: plan() started workflows after advance(), so they only moved on the next, unrelated
    /// event.
    #[test]
    fn a_planned_workflow_moves_in_the_step_that_planned_it() {
        // In active-active a rejuvenated server rejoins as a primary that runs nothing; a
        // workflow for it has no copies to make and goes straight to rejuvenation.
        let mut h = booted(&Spec::active_active());
        h.judge("s1", Level::Unstable);
        finish_workflow(&mut h, "s1");
        h.ack_housekeeping();
        assert!(h.instances_on("s1").is_empty());
        let out = h.operator(OperatorCommand::Rejuvenate {
            server: "s1".into(),
            force: false,
        });
        assert_eq!(h.wf("s1").unwrap().pairs.len(), 0);
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating), "{out:?}");
        assert_eq!(
            command_names(&out),
            ["rejuvenate"],
            "planned and moved on in one step"
        );
        let before = h.c.clone();
        // A result delivered twice now changes nothing: the step left nothing to do.
        let (cmd, result) = h.delivered[0].clone();
        let out = h.step(Event::CommandDone { id: cmd.id, result });
        assert_eq!(out, Output::default());
        assert_eq!(h.c, before);
    }

    /// A source instance the agent lost while its workflow waited at the gate, restarted by a
    /// StartInstance that is still in the outbox when the workflow switches.
    fn lost_source_instance_before_the_switch() -> (H, InstanceId) {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Gating));
        let old_web = h.instance_of("s1", "web");
        h.agent("s1").instances.remove(&old_web);
        let out = h.observe("s1");
        assert_eq!(command_names(&out), ["start"], "{out:?}");
        assert_eq!(h.phase("s1"), Some(Phase::Gating), "db still serves");
        h.agent("s1").load1 = LOW_LOAD;
        h.observe("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        h.sync();
        h.ack_transfers();
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
        (h, old_web)
    }

    #[test]
    fn failed_workflow_leaves_no_start_pending_for_a_removed_instance() {
        let (mut h, old_web) = lost_source_instance_before_the_switch();
        let cmd = h.pending_rejuvenate();
        h.ack_failed(&cmd);
        assert!(!h.c.instances.contains_key(&old_web));
        assert!(
            orphan_starts(&h).is_empty(),
            "a shell retrying these would start {old_web} on the failed server: {:?}",
            orphan_starts(&h)
        );
    }

    #[test]
    fn rejuvenated_server_leaves_no_start_pending_for_a_forgotten_instance() {
        let (mut h, old_web) = lost_source_instance_before_the_switch();
        h.ack_rejuvenate_ok();
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        assert!(!h.c.instances.contains_key(&old_web));
        let orphans = orphan_starts(&h);
        // The shell carries out what is in the outbox: the old instance runs again on the
        // rejuvenated server, and the server never verifies fresh.
        h.ack_all(orphans.clone());
        h.observe("s1");
        assert_eq!(
            h.phase("s1"),
            None,
            "{old_web} started again by {orphans:?}: {:?}",
            h.wf("s1")
        );
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
    }

    /// Was: a workflow that failed after a drain timeout left the failed server's instances in
    /// the route table.
    #[test]
    fn failed_server_leaves_the_route_table() {
        let mut h = drive_to(&Spec::active_standby(), Some(Phase::Draining));
        let old: BTreeSet<InstanceId> = h.instances_on("s1").into_iter().collect();
        let v = h.c.routes.version;
        let busy: Vec<(String, u64)> = h
            .wf("s1")
            .unwrap()
            .pairs
            .iter()
            .map(|p| (p.old.clone(), 1))
            .collect();
        let busy: Vec<(&str, u64)> = busy.iter().map(|(i, n)| (i.as_str(), *n)).collect();
        h.sync_with(v, &busy);
        h.wait(DRAIN_MS);
        h.ack_transfers();
        let cmd = h.pending_rejuvenate();
        let out = h.ack_failed(&cmd);
        assert!(matches!(
            h.c.servers["s1"].state,
            ServerState::Failed { .. }
        ));
        let left: Vec<&String> =
            h.c.routes
                .services
                .values()
                .flat_map(|r| r.backends.iter())
                .filter(|b| h.c.instances.get(&b.id).is_some_and(|i| i.server == "s1"))
                .map(|b| &b.id)
                .collect();
        assert!(left.is_empty(), "still in the table, forever: {left:?}");
        assert!(h.instances_on("s1").is_empty());
        let stopped: BTreeSet<InstanceId> = out
            .commands
            .iter()
            .filter_map(|c| match &c.kind {
                CommandKind::StopInstance { server, instance } if server == "s1" => {
                    Some(instance.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(stopped, old, "every old instance is stopped");
    }
}

// ---------------------------------------------------------------------------------------------
// Random event sequences
// ---------------------------------------------------------------------------------------------

mod random {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const WAITS: [u64; 8] = [0, 500, 2_000, 5_000, 31_000, 61_000, 301_000, 601_000];

    /// One random event, decoded from three bytes so that proptest can shrink a failing run.
    fn random_step(h: &mut H, a: u8, b: u8, c: u8) {
        let servers: Vec<ServerId> = h.agents.keys().cloned().collect();
        let server = servers[b as usize % servers.len()].clone();
        let other = servers[c as usize % servers.len()].clone();
        match a % 20 {
            // Acknowledge a pending command as a healthy agent would.
            0..=4 => {
                let pending: Vec<Command> = h.c.pending.values().cloned().collect();
                match pending.get(b as usize % pending.len().max(1)) {
                    Some(cmd) => h.ack_ok(cmd),
                    None => h.tick(),
                };
            }
            // Or as a broken one.
            5 => {
                let pending: Vec<Command> = h.c.pending.values().cloned().collect();
                match pending.get(b as usize % pending.len().max(1)) {
                    Some(Command {
                        id,
                        kind:
                            CommandKind::Rejuvenate {
                                run_id, actions, ..
                            },
                    }) if c & 1 == 0 => {
                        let rep = report(run_id, actions, h.now_ms, actions.last().copied());
                        h.done(*id, CommandResult::Rejuvenated { report: rep })
                    }
                    Some(cmd) => h.ack_failed(cmd),
                    None => h.tick(),
                };
            }
            6..=8 => {
                h.observe(&server);
            }
            9 => {
                h.observe_down(&server);
            }
            10 | 11 => {
                let j = match c % 4 {
                    0 => judgement(Level::Stable),
                    1 => judgement(Level::Suspect),
                    2 => judgement(Level::Unstable),
                    _ => Judgement {
                        level: Level::Unstable,
                        explanation: Some(explanation(Some(30.0))),
                        host: Level::Unstable,
                        unstable_instances: vec![],
                    },
                };
                h.judge_with(&server, j);
            }
            12 | 13 => {
                h.wait(WAITS[c as usize % WAITS.len()]);
            }
            14 => {
                // The current table applied; some draining instances still busy.
                let in_flight: Vec<(String, u64)> =
                    h.c.instances
                        .values()
                        .filter(|i| i.traffic == Traffic::Draining)
                        .enumerate()
                        .map(|(n, i)| (i.id.clone(), u64::from((c >> (n % 8)) & 1)))
                        .collect();
                let in_flight: Vec<(&str, u64)> =
                    in_flight.iter().map(|(i, n)| (i.as_str(), *n)).collect();
                let v = h.c.routes.version;
                h.sync_with(v, &in_flight);
            }
            15 => {
                let v = h.c.routes.version.saturating_sub(1 + u64::from(c % 3));
                h.sync_with(v, &[]);
            }
            16 => {
                let cmd = match b % 6 {
                    0 => OperatorCommand::Rejuvenate {
                        server: other,
                        force: false,
                    },
                    1 => OperatorCommand::Rejuvenate {
                        server: other,
                        force: true,
                    },
                    2 => OperatorCommand::Maintenance {
                        server: other,
                        on: true,
                    },
                    3 => OperatorCommand::Maintenance {
                        server: other,
                        on: false,
                    },
                    4 => OperatorCommand::Pause,
                    _ => OperatorCommand::Resume,
                };
                h.operator(cmd);
            }
            17 => {
                // The agent loses one of its instances.
                let a = h.agent(&server);
                let ids: Vec<InstanceId> = a.instances.keys().cloned().collect();
                if let Some(id) = ids.get(c as usize % ids.len().max(1)) {
                    a.instances.remove(id);
                }
                h.observe(&server);
            }
            18 => {
                h.agent(&server).load1 = if c & 1 == 0 { HIGH_LOAD } else { LOW_LOAD };
                h.observe(&server);
            }
            _ => {
                if c & 1 == 0 && !h.delivered.is_empty() {
                    // Every step settles (see
                    // `regressions::a_planned_workflow_moves_in_the_step_that_planned_it`), so
                    // a re-delivery right after any step must change nothing.
                    let (cmd, result) = h.delivered[b as usize % h.delivered.len()].clone();
                    let before = h.c.clone();
                    let out = h.step(Event::CommandDone { id: cmd.id, result });
                    assert_eq!(
                        out,
                        Output::default(),
                        "a re-delivered result did something"
                    );
                    assert_eq!(h.c, before, "a re-delivered result changed the cluster");
                } else {
                    let a = h.agent(&server);
                    a.starts_healthy = !a.starts_healthy;
                    h.tick();
                }
            }
        }
    }

    fn run(mode: Mode, ops: &[(u8, u8, u8)]) -> H {
        let mut h = booted(&Spec::of(mode));
        for &(a, b, c) in ops {
            random_step(&mut h, a, b, c);
        }
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_seed: RngSeed::Fixed(0x7e1),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_events_keep_the_invariants_active_standby(
            ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..250)
        ) {
            run(Mode::ActiveStandby, &ops);
        }

        #[test]
        fn random_events_keep_the_invariants_active_active(
            ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..250)
        ) {
            run(Mode::ActiveActive, &ops);
        }
    }

    /// The random runs above are only worth something if they reach every phase and every
    /// outcome; this checks that they do, over a fixed set of seeds (printed on failure).
    #[test]
    fn seeded_random_runs_reach_every_phase_and_outcome() {
        for mode in [Mode::ActiveStandby, Mode::ActiveActive] {
            let mut phases = BTreeSet::new();
            let mut outcomes = BTreeSet::new();
            for seed in 0..120u64 {
                let result = std::panic::catch_unwind(|| {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut h = booted(&Spec::of(mode));
                    let mut seen = BTreeSet::new();
                    for _ in 0..300 {
                        let (a, b, c) = (rng.gen::<u8>(), rng.gen::<u8>(), rng.gen::<u8>());
                        random_step(&mut h, a, b, c);
                        seen.extend(h.c.workflows.values().map(|w| w.phase.to_string()));
                    }
                    let ends: BTreeSet<&'static str> =
                        h.c.history.iter().map(outcome_name).collect();
                    (seen, ends)
                });
                match result {
                    Ok((seen, ends)) => {
                        phases.extend(seen);
                        outcomes.extend(ends);
                    }
                    Err(_) => panic!("{mode}: random run with seed {seed} failed (see above)"),
                }
            }
            assert_eq!(phases.len(), 6, "{mode}: phases reached: {phases:?}");
            assert_eq!(outcomes.len(), 3, "{mode}: outcomes reached: {outcomes:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations: hooks, freeze windows, advisory mode
// ---------------------------------------------------------------------------------------------

mod operations {
    use super::*;
    use rejuv_core::config::HookWhen;

    /// A booted cluster (web only) whose config adds `extra` TOML.
    fn booted_with(mode: Mode, extra: &str) -> H {
        let spec = Spec::of(mode).services(&["web"]);
        let mut h = booted(&spec);
        let text = spec.toml() + extra;
        h.cfg = Config::from_toml(&text).unwrap_or_else(|e| panic!("invalid: {e}\n{text}"));
        h
    }

    fn hooks_pending(h: &H) -> Vec<Command> {
        h.pending_where(|k| matches!(k, CommandKind::RunHook { .. }))
    }

    fn hook_result(ok: bool) -> CommandResult {
        CommandResult::HookRan {
            ok,
            detail: if ok {
                "exit 0"
            } else {
                "exit 1: smoke test failed"
            }
            .into(),
        }
    }

    const VETO_SWITCH: &str = r#"
[[hooks]]
name = "warm"
step = "draining"
when = "before"
command = ["/bin/true"]
veto = true
"#;

    const VETO_REJOIN: &str = r#"
[[hooks]]
name = "smoke"
step = "rejoin"
when = "before"
command = ["/bin/true"]
veto = true
"#;

    /// Judges s1 unstable and brings its copy up: the gate is open (quiet, old enough).
    fn to_gate(h: &mut H) -> ServerId {
        h.judge("s1", Level::Unstable);
        let t = h.target("s1");
        h.ack_starts();
        h.observe(&t);
        t
    }

    #[test]
    fn a_failed_veto_hook_before_the_switch_rolls_back_and_the_source_keeps_serving() {
        let mut h = booted_with(Mode::ActiveStandby, VETO_SWITCH);
        let before = serving(&h);
        to_gate(&mut h);
        assert_eq!(h.phase("s1"), Some(Phase::Gating), "held by the veto hook");
        let hooks = hooks_pending(&h);
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        assert!(matches!(&hooks[0].kind,
            CommandKind::RunHook { hook, step, when: HookWhen::Before, veto: true, .. }
                if hook == "warm" && step == "draining"));
        assert_eq!(serving(&h), before, "nothing switched while the hook runs");
        h.tick();
        assert_eq!(hooks_pending(&h).len(), 1, "the hook is issued once");
        h.done(hooks[0].id, hook_result(false));
        assert!(h.wf("s1").is_none());
        let w = h.last_finished("s1").unwrap();
        match &w.outcome {
            Some(Outcome::RolledBack { reason }) => {
                assert!(reason.contains("hook warm vetoed draining"), "{reason}")
            }
            other => panic!("expected a rollback, got {other:?}"),
        }
        assert!(h.logs_of_kind("hook").iter().any(|e| e
            .message
            .contains("hook warm (before draining) failed: exit 1")));
        assert_eq!(serving(&h), before, "the source kept serving");
    }

    #[test]
    fn a_passed_veto_hook_lets_the_switch_happen() {
        let mut h = booted_with(Mode::ActiveStandby, VETO_SWITCH);
        to_gate(&mut h);
        let hooks = hooks_pending(&h);
        h.done(hooks[0].id, hook_result(true));
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        finish_workflow(&mut h, "s1");
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
    }

    #[test]
    fn a_failed_smoke_test_before_rejoin_keeps_the_server_out_and_alerts() {
        let mut h = booted_with(Mode::ActiveActive, VETO_REJOIN);
        to_gate(&mut h);
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        h.sync();
        h.ack_all(h.pending_where(|k| matches!(k, CommandKind::Rejuvenate { .. })));
        h.observe("s1");
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Verifying),
            "fresh, held by the smoke test"
        );
        let hooks = hooks_pending(&h);
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        let out = h.done(hooks[0].id, hook_result(false));
        let w = h.last_finished("s1").unwrap();
        assert_eq!(outcome_name(w), "failed");
        assert!(matches!(
            h.c.servers["s1"].state,
            ServerState::Failed { .. }
        ));
        assert!(!h.c.servers["s1"].on_list());
        let alerts: Vec<_> = out
            .commands
            .iter()
            .filter_map(|c| match &c.kind {
                CommandKind::Alert { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(alerts, vec!["RejuvWorkflowFailed".to_string()]);
    }

    #[test]
    fn hooks_run_once_at_each_configured_point_of_a_workflow() {
        let extra = r#"
[[hooks]]
name = "notify-start"
step = "duplexing"
when = "before"
command = ["/bin/true"]

[[hooks]]
name = "after-drain"
step = "draining"
when = "after"
command = ["/bin/true"]

[[hooks]]
name = "back"
step = "rejoin"
when = "after"
command = ["/bin/true"]
"#;
        let mut h = booted_with(Mode::ActiveStandby, extra);
        h.judge("s1", Level::Unstable);
        finish_workflow(&mut h, "s1");
        h.tick();
        let ran: Vec<(String, String, HookWhen)> = hooks_pending(&h)
            .into_iter()
            .map(|c| match c.kind {
                CommandKind::RunHook {
                    hook, step, when, ..
                } => (hook, step, when),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            ran,
            vec![
                ("notify-start".into(), "duplexing".into(), HookWhen::Before),
                ("after-drain".into(), "draining".into(), HookWhen::After),
                ("back".into(), "rejoin".into(), HookWhen::After),
            ]
        );
        // Results are logged; nothing else changes.
        for c in hooks_pending(&h) {
            h.done(c.id, hook_result(true));
        }
        assert_eq!(h.logs_of_kind("hook").len(), 3);
    }

    #[test]
    fn no_workflow_starts_inside_a_freeze_window_and_one_starts_after_it() {
        // T0 is 22:13:20 UTC; the window runs 22:00–23:00 every day.
        let extra = r#"
[[freeze]]
name = "nightly-batch"
start = "22:00"
duration = "1h"
"#;
        let mut h = booted_with(Mode::ActiveStandby, extra);
        h.judge("s1", Level::Unstable);
        assert!(h.wf("s1").is_none());
        assert!(h
            .logs_of_kind("waiting-for-budget")
            .iter()
            .any(|e| e.message.contains("freeze window 'nightly-batch'")));
        h.wait(47 * 60 * 1000);
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing), "the window ended");
    }

    #[test]
    fn an_operator_request_goes_through_a_freeze_window() {
        let extra = "[[freeze]]\nname = \"all-day\"\nstart = \"00:00\"\nduration = \"24h\"\n";
        let mut h = booted_with(Mode::ActiveStandby, extra);
        h.operator(OperatorCommand::Rejuvenate {
            server: "s1".into(),
            force: false,
        });
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
    }

    #[test]
    fn advisory_mode_says_what_it_would_do_and_does_nothing() {
        let mut h = booted_with(Mode::ActiveStandby, "");
        h.c.advisory = true;
        let routes = h.c.routes.clone();
        let out = h.judge("s1", Level::Unstable);
        assert!(out.commands.is_empty(), "{:?}", out.commands);
        assert!(h.c.workflows.is_empty());
        assert_eq!(h.c.routes, routes, "no list change");
        let said = events_of(&out, "dry-run");
        assert_eq!(said.len(), 1, "{out:?}");
        assert!(
            said[0].message.contains("would rejuvenate s1") && said[0].message.contains("onto s4"),
            "{}",
            said[0].message
        );
        // Said once per episode, not on every tick.
        assert!(events_of(&h.tick(), "dry-run").is_empty());
        // The trend rule takes over from the threshold: a new reason, said once; then the
        // forecast comes nearer each sample and the plan is the same: nothing more is said.
        h.now_ms += 1_000;
        let out = h.judge_with("s1", judgement_with_tte(3_000.0));
        assert_eq!(events_of(&out, "dry-run").len(), 1, "{out:?}");
        for tte in [2_000.0, 1_000.0, 500.0] {
            h.now_ms += 1_000;
            let out = h.judge_with("s1", judgement_with_tte(tte));
            assert!(events_of(&out, "dry-run").is_empty(), "{out:?}");
        }
        // Commands the state machine issues (here: maintenance released on a failed server
        // resets its detector) are described, not carried out.
        h.c.servers.get_mut("s4").unwrap().state = ServerState::Failed {
            reason: "test".into(),
        };
        let out = h.operator(OperatorCommand::Maintenance {
            server: "s4".into(),
            on: false,
        });
        assert!(out.commands.is_empty() && h.c.pending.is_empty());
        assert!(events_of(&out, "dry-run")
            .iter()
            .any(|e| e.message == "dry run: would reset the detector of s4"));
    }

    #[test]
    fn without_a_majority_of_agents_no_workflow_starts_and_a_person_is_told() {
        let mut h = booted_with(Mode::ActiveStandby, "");
        h.observe_down("s2");
        let out = h.observe_down("s3");
        let alerts: Vec<_> = out
            .commands
            .iter()
            .filter_map(|c| match &c.kind {
                CommandKind::Alert { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(alerts, vec!["RejuvNoQuorum"]);
        h.judge("s1", Level::Unstable);
        assert!(h.wf("s1").is_none(), "2 of 4 agents answer: nothing starts");
        assert_eq!(h.logs_of_kind("no-quorum").len(), 1, "said once");
        h.observe("s2");
        assert_eq!(h.logs_of_kind("quorum-regained").len(), 1);
        assert_eq!(h.phase("s1"), Some(Phase::Duplexing));
    }

    #[test]
    fn a_dead_primary_fails_over_and_is_rejuvenated_when_it_comes_back() {
        let mut h = booted_with(Mode::ActiveStandby, "");
        h.observe_down("s1");
        assert!(h.wf("s1").is_none(), "one missed answer is not a death");
        h.now_ms += 16_000;
        h.observe_down("s1");
        let w = h.wf("s1").expect("failover started").clone();
        assert!(w.failover, "{w:?}");
        assert!(w.reason.contains("unreachable"), "{}", w.reason);
        assert_eq!(w.target, "s4");
        h.ack_starts();
        h.observe("s4");
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Draining),
            "no waiting for a quiet moment"
        );
        h.sync();
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
        // The agent is still away: the rejuvenation waits for it instead of failing.
        let rej = h.pending_rejuvenate();
        h.ack_failed(&rej);
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
        let again = h.pending_rejuvenate();
        assert_ne!(again.id, rej.id, "asked again");
        // It comes back: rejuvenated, verified, back as a spare.
        h.ack_rejuvenate_ok();
        h.observe("s1");
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
        assert_eq!(h.c.servers["s1"].role, Role::Spare);
        assert!(h.c.servers["s1"].on_list());
    }

    /// Was: a failover of a stateful service asked the dead source's agent for the state;
    /// the real controller retries that for 30 s, and the copy served nothing meanwhile.
    #[test]
    fn a_dead_primarys_stateful_copy_serves_at_once_without_its_state() {
        let mut h = booted(&Spec::active_standby().services(&["db"]));
        let old = h.instance_of("s1", "db");
        h.observe_down("s1");
        h.now_ms += 16_000;
        h.observe_down("s1");
        assert!(h.wf("s1").expect("failover started").failover);
        h.ack_starts();
        let out = h.observe("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        let new = h.wf("s1").unwrap().pairs[0].new.clone();
        assert_eq!(
            h.backend(&new),
            Some(BackendState::Serving),
            "serves at once"
        );
        let skipped = events_of(&out, "handoff-skipped");
        assert_eq!(skipped.len(), 1, "{out:?}");
        assert!(skipped[0].message.contains(&old), "{}", skipped[0].message);
        assert_eq!(alerts(&out).len(), 1, "a person is told the state is lost");
        h.sync();
        assert!(h
            .pending_where(|k| matches!(k, CommandKind::TransferState { .. }))
            .is_empty());
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
    }

    #[test]
    fn a_live_sources_stateful_copy_still_waits_for_its_state() {
        let mut h = booted(&Spec::active_standby().services(&["db"]));
        h.judge("s1", Level::Unstable);
        h.ack_starts();
        let out = h.observe("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert!(events_of(&out, "handoff-skipped").is_empty(), "{out:?}");
        assert!(h.wf("s1").unwrap().pairs[0].handoff);
    }

    #[test]
    fn a_server_put_in_maintenance_after_the_switch_is_left_alone() {
        let mut h = booted_with(Mode::ActiveStandby, "");
        to_gate(&mut h);
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        h.operator(OperatorCommand::Maintenance {
            server: "s1".into(),
            on: true,
        });
        let out = h.sync();
        assert!(h.wf("s1").is_none());
        assert!(
            h.pending_where(|k| matches!(k, CommandKind::Rejuvenate { .. }))
                .is_empty(),
            "no rejuvenation of a server in maintenance"
        );
        assert!(
            !out.commands
                .iter()
                .any(|c| matches!(c.kind, CommandKind::Alert { .. })),
            "an operator's own doing pages nobody"
        );
        assert!(!h.c.servers["s1"].on_list());
    }

    #[test]
    fn maintenance_on_a_serving_primary_moves_its_instances_then_takes_it_out() {
        let mut h = booted_with(Mode::ActiveStandby, "");
        let before = serving(&h).len();
        h.operator(OperatorCommand::Maintenance {
            server: "s1".into(),
            on: true,
        });
        assert_eq!(
            h.phase("s1"),
            Some(Phase::Duplexing),
            "its instances move first"
        );
        assert!(
            h.c.servers["s1"].on_list(),
            "still serving until the copies are hot"
        );
        finish_workflow(&mut h, "s1");
        let w = h.last_finished("s1").unwrap();
        assert_eq!(outcome_name(w), "completed");
        assert_eq!(w.steps.last().unwrap().phase, Step::Evacuated);
        assert!(
            !h.delivered
                .iter()
                .any(|(c, _)| matches!(&c.kind, CommandKind::Rejuvenate { .. })),
            "not rejuvenated"
        );
        assert!(!h.c.servers["s1"].on_list());
        assert!(h.instances_on("s1").is_empty());
        assert_eq!(
            serving(&h).len(),
            before,
            "everything it ran serves elsewhere"
        );
        h.tick();
        assert!(h.wf("s1").is_none(), "left alone");
        h.operator(OperatorCommand::Maintenance {
            server: "s1".into(),
            on: false,
        });
        assert!(h.c.servers["s1"].on_list());
        assert_eq!(h.c.servers["s1"].role, Role::Spare);
    }
}

// ---------------------------------------------------------------------------------------------
// Scope (one instance or the whole server) and placement (spare, peer, in place)
// ---------------------------------------------------------------------------------------------

mod scope_and_placement {
    use super::*;
    use rejuv_core::cluster::{Placement, Scope};

    /// `instance`'s own readings are unstable; the host's are not.
    fn instance_aging(instance: &str) -> Judgement {
        let mut e = explanation(None);
        e.resource = Resource::InstanceRss;
        e.instance = Some(instance.to_string());
        e.message = format!("{instance}: instance-rss at 95.0% is above the threshold 90.0%");
        Judgement {
            level: Level::Unstable,
            explanation: Some(e),
            host: Level::Stable,
            unstable_instances: vec![instance.to_string()],
        }
    }

    fn copies(w: &Workflow) -> Vec<InstanceId> {
        w.pairs.iter().map(|p| p.new.clone()).collect()
    }

    #[test]
    fn a_lone_server_is_rejuvenated_in_place_and_keeps_serving() {
        let mut h = booted(&Spec::active_standby().servers(1, 0).in_place());
        let old: BTreeSet<InstanceId> = h.instances_on("s1").into_iter().collect();
        let out = h.judge("s1", Level::Unstable);
        let started = events_of(&out, "workflow-started");
        assert!(
            started[0].message.contains("in place"),
            "{}",
            started[0].message
        );
        let w = h.wf("s1").unwrap().clone();
        assert_eq!(
            (w.scope, w.placement, w.target.as_str()),
            (Scope::Server, Some(Placement::InPlace), "s1")
        );
        assert_eq!(h.c.servers["s1"].reserved_by, None, "no target is held");
        assert_eq!(h.c.available_capacity(), 4, "it serves throughout");

        h.ack_starts();
        h.observe("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert!(
            h.c.servers["s1"].on_list(),
            "in place, it never leaves the list"
        );
        h.sync();
        h.ack_transfers();
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
        let cmd = h.pending_rejuvenate();
        let CommandKind::Rejuvenate { actions, keep, .. } = &cmd.kind else {
            unreachable!()
        };
        let mut kept = keep.clone();
        kept.sort();
        let mut expected = copies(&w);
        expected.sort();
        assert_eq!(kept, expected, "stop-instances keeps the copies");
        assert!(actions.contains(&Action::StopInstances));
        assert!(
            !actions.contains(&Action::RestartAgent),
            "restarting the agent would end the copies"
        );
        assert!(h
            .logs_of_kind("step")
            .iter()
            .any(|e| e.message.contains("restart-agent left out")));
        h.ack_rejuvenate_ok();
        let out = h.observe("s1");
        assert_eq!(events_of(&out, "workflow-completed").len(), 1);
        let s1 = &h.c.servers["s1"];
        assert_eq!((s1.role, s1.on_list()), (Role::Primary, true));
        let now: BTreeSet<InstanceId> = h.instances_on("s1").into_iter().collect();
        assert!(now.is_disjoint(&old), "the old instances are gone");
        assert_eq!(now.len(), old.len());
        let done = h.last_finished("s1").unwrap();
        assert_eq!(outcome_name(done), "completed");
        assert_eq!(done.placement, Some(Placement::InPlace));
    }

    #[test]
    fn in_place_is_refused_when_two_copies_do_not_fit_in_memory() {
        let mut h = booted(&Spec::active_standby().servers(1, 0).in_place());
        h.agent("s1").mem_available_bytes = Some(100 << 20);
        h.agent("s1").rss_bytes = Some(80 << 20);
        h.observe("s1");
        let out = h.judge("s1", Level::Unstable);
        assert_eq!(h.wf("s1"), None);
        let nt = events_of(&out, "no-target");
        assert!(
            nt[0]
                .message
                .contains("s1 lacks the memory for two copies (168 MB needed, 105 MB available)"),
            "{}",
            nt[0].message
        );
        // Memory freed elsewhere on the host: it goes ahead.
        h.agent("s1").mem_available_bytes = Some(1 << 30);
        h.observe("s1");
        assert_eq!(
            h.wf("s1").map(|w| w.placement),
            Some(Some(Placement::InPlace))
        );
    }

    #[test]
    fn without_in_place_a_lone_server_request_is_refused_at_once() {
        let mut spec = Spec::active_active().servers(1, 0);
        spec.in_place = false;
        let h = booted(&spec);
        let refusal = h.c.check_operator(
            &h.cfg,
            &OperatorCommand::Rejuvenate {
                server: "s1".into(),
                force: false,
            },
        );
        assert!(
            matches!(&refusal, Err(Refusal::NoPlacement(s, why)) if s == "s1" && why.contains("in_place")),
            "{refusal:?}"
        );
    }

    #[test]
    fn one_aging_instance_is_rejuvenated_alone_in_place() {
        let mut h = booted(&Spec::active_standby().in_place());
        let web = h.instance_of("s1", "web");
        let db = h.instance_of("s1", "db");
        h.judge_with("s1", instance_aging(&web));
        let w = h.wf("s1").unwrap().clone();
        assert_eq!(
            (w.scope, w.instance.as_deref(), w.placement),
            (
                Scope::Instance,
                Some(web.as_str()),
                Some(Placement::InPlace)
            )
        );
        assert_eq!(w.pairs.len(), 1, "only the aging instance moves");
        assert_eq!(
            h.c.servers["s4"].reserved_by, None,
            "the spare is not needed"
        );

        h.ack_starts();
        h.observe("s1");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert!(h.c.servers["s1"].on_list());
        assert_eq!(
            h.backend(&db),
            Some(BackendState::Serving),
            "db is untouched"
        );
        h.sync();
        assert_eq!(h.phase("s1"), Some(Phase::Rejuvenating));
        let stops = h.pending_where(
            |k| matches!(k, CommandKind::StopInstance { instance, .. } if *instance == web),
        );
        assert_eq!(stops.len(), 1, "the old instance is stopped");
        assert!(h
            .pending_where(|k| matches!(k, CommandKind::Rejuvenate { .. }))
            .is_empty());
        h.ack_all(stops);
        assert_eq!(h.phase("s1"), Some(Phase::Verifying));
        let out = h.observe("s1");
        assert_eq!(events_of(&out, "workflow-completed").len(), 1, "{out:?}");
        let s1 = &h.c.servers["s1"];
        assert_eq!(
            (s1.role, s1.on_list(), s1.judgement),
            (Role::Primary, true, Level::Stable)
        );
        assert_eq!(s1.instance_rejuvenations_ms.len(), 1);
        assert!(h.c.instances.contains_key(&db));
        assert!(!h.c.instances.contains_key(&web));
        assert_eq!(h.c.servers["s4"].role, Role::Spare);
        assert_eq!(h.last_finished("s1").unwrap().scope, Scope::Instance);
    }

    #[test]
    fn one_aging_instance_goes_to_the_spare_when_in_place_is_off() {
        let mut h = booted(&Spec::active_standby());
        let web = h.instance_of("s1", "web");
        h.judge_with("s1", instance_aging(&web));
        let w = h.wf("s1").unwrap().clone();
        assert_eq!(
            (w.scope, w.placement, w.target.as_str()),
            (Scope::Instance, Some(Placement::Spare), "s4")
        );
        h.ack_starts();
        h.observe("s4");
        assert_eq!(h.phase("s1"), Some(Phase::Draining));
        assert_eq!(
            h.c.servers["s4"].role,
            Role::Primary,
            "a spare that serves is a primary"
        );
        assert!(h.c.servers["s1"].on_list());
        h.sync();
        let stops = h.pending_where(|k| matches!(k, CommandKind::StopInstance { .. }));
        h.ack_all(stops);
        h.observe("s1");
        assert_eq!(h.wf("s1"), None);
        assert_eq!(h.c.servers["s4"].reserved_by, None);
        assert_eq!(outcome_name(h.last_finished("s1").unwrap()), "completed");
    }

    #[test]
    fn every_instance_aging_or_a_host_reading_takes_the_whole_server() {
        // Both of s1's instances age: the server does.
        let mut h = booted(&Spec::active_standby().in_place());
        let (web, db) = (h.instance_of("s1", "web"), h.instance_of("s1", "db"));
        let mut j = instance_aging(&web);
        j.unstable_instances.push(db);
        h.judge_with("s1", j);
        assert_eq!(h.wf("s1").unwrap().scope, Scope::Server);
        // The host's own readings age: the server does.
        let mut h = booted(&Spec::active_standby().in_place());
        let web = h.instance_of("s1", "web");
        let mut j = instance_aging(&web);
        j.host = Level::Unstable;
        h.judge_with("s1", j);
        assert_eq!(h.wf("s1").unwrap().scope, Scope::Server);
        assert_eq!(
            h.target("s1"),
            "s4",
            "a whole server goes to the spare first"
        );
    }

    #[test]
    fn instance_rejuvenations_that_do_not_hold_escalate_to_the_server() {
        let mut h = booted(&Spec::active_standby().in_place());
        for round in 0..3 {
            let web = h.instance_of("s1", "web");
            h.judge_with("s1", instance_aging(&web));
            assert_eq!(h.wf("s1").unwrap().scope, Scope::Instance, "round {round}");
            h.ack_starts();
            h.observe("s1");
            h.sync();
            let stops = h.pending_where(|k| matches!(k, CommandKind::StopInstance { .. }));
            h.ack_all(stops);
            h.observe("s1");
            assert_eq!(h.wf("s1"), None, "round {round}");
            h.ack_housekeeping();
            h.now_ms += 60_000;
        }
        let web = h.instance_of("s1", "web");
        h.judge_with("s1", instance_aging(&web));
        let w = h.wf("s1").unwrap();
        assert_eq!(
            (w.scope, w.target.as_str()),
            (Scope::Server, "s4"),
            "a fourth within the hour takes the whole server"
        );
    }

    #[test]
    fn failover_takes_a_spare_in_failed_target_cooldown_and_goes_before_a_request() {
        let mut h = booted(&Spec::active_standby());
        h.c.servers.get_mut("s4").unwrap().avoid_as_target_until_ms = Some(T0 + HOUR_MS);
        // An operator asked for s2 first; it waits for the spare's cooldown.
        let out = h.operator(OperatorCommand::Rejuvenate {
            server: "s2".into(),
            force: false,
        });
        assert_eq!(h.wf("s2"), None, "{out:?}");
        // s1 dies.
        h.observe_down("s1");
        h.now_ms += h.cfg.policy.failover_after.as_millis() as u64 + 1_000;
        h.observe_down("s1");
        let w = h.wf("s1").expect("the dead primary fails over at once");
        assert!(w.failover);
        assert_eq!(w.target, "s4");
        assert_eq!(h.wf("s2"), None, "the earlier request waits");
    }
}

// ---------------------------------------------------------------------------------------------
// Instances the controller did not start
// ---------------------------------------------------------------------------------------------

mod strangers {
    use super::*;

    fn stranger() -> ObservedInstance {
        ObservedInstance {
            state: InstanceState::Running,
            healthy: true,
            addr: Some("127.0.0.11:20099".parse().unwrap()),
            started_at_ms: Some(T0),
            rss_bytes: None,
            crashes: 0,
            last_exit: None,
            last_output: Vec::new(),
        }
    }

    #[test]
    fn an_instance_started_outside_the_controller_is_reported_once_and_stopped() {
        let mut h = booted(&Spec::active_standby());
        h.agent("s1").instances.insert("evil-1".into(), stranger());
        let out = h.observe("s1");
        let said = events_of(&out, "unknown-instance");
        assert_eq!(said.len(), 1, "{out:?}");
        assert!(
            said[0].message.contains("s1 runs evil-1"),
            "{}",
            said[0].message
        );
        assert!(
            said[0].message.contains("stopping it"),
            "{}",
            said[0].message
        );
        assert_eq!(
            alerts(&out)
                .iter()
                .filter(|(s, _)| s.as_deref() == Some("s1"))
                .count(),
            1
        );
        let stops = h.pending_where(
            |k| matches!(k, CommandKind::StopInstance { instance, .. } if instance == "evil-1"),
        );
        assert_eq!(stops.len(), 1);
        // Seen again before the stop is through: no second word, no second stop.
        let out = h.observe("s1");
        assert!(events_of(&out, "unknown-instance").is_empty());
        assert_eq!(
            h.pending_where(|k| matches!(k, CommandKind::StopInstance { .. }))
                .len(),
            1
        );
        h.ack_all(stops);
        assert!(!h.agents["s1"].instances.contains_key("evil-1"));
        assert!(
            !h.c.instances.contains_key("evil-1"),
            "it never joins the cluster"
        );
    }

    #[test]
    fn report_only_leaves_it_running_and_a_forgotten_copy_is_stopped_quietly() {
        let spec = Spec::active_standby();
        let mut h = booted(&spec);
        h.cfg.controller.unknown_instances = rejuv_core::config::UnknownInstances::Report;
        h.agent("s1").instances.insert("evil-1".into(), stranger());
        let out = h.observe("s1");
        assert_eq!(events_of(&out, "unknown-instance").len(), 1);
        assert!(h
            .pending_where(|k| matches!(k, CommandKind::StopInstance { .. }))
            .is_empty());

        // A copy this controller started and forgot (a rolled-back duplex) that its agent
        // still runs is stopped without an unknown-instance event.
        let mut h = booted(&spec);
        h.judge("s1", Level::Unstable);
        h.ack_starts();
        let copy = h.wf("s1").unwrap().pairs[0].new.clone();
        h.wait(DUPLEX_TIMEOUT_MS + 1_000);
        assert_eq!(h.wf("s1"), None, "rolled back");
        h.ack_housekeeping();
        let a = h.agent("s4");
        a.instances.insert(copy.clone(), stranger());
        let out = h.observe("s4");
        assert!(events_of(&out, "unknown-instance").is_empty(), "{out:?}");
        assert_eq!(
            h.pending_where(
                |k| matches!(k, CommandKind::StopInstance { instance, .. } if *instance == copy)
            )
            .len(),
            1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A reloaded config, cancelled requests, instance ids
// ---------------------------------------------------------------------------------------------
mod reload {
    use super::*;

    /// `spec`'s config without server `id`.
    fn without(spec: &Spec, id: &str) -> Config {
        let text = spec.toml();
        let blocks: Vec<&str> = text.split("\n[[servers]]").collect();
        let mut out = blocks[0].to_string();
        for b in &blocks[1..] {
            if !b.contains(&format!("id = \"{id}\"")) {
                out += "\n[[servers]]";
                out += b;
            }
        }
        Config::from_toml(&out).unwrap()
    }

    fn reload(h: &mut H, cfg: Config) -> Result<Vec<String>, Refusal> {
        let ch = h.c.check_reload(&cfg)?;
        h.cfg = cfg;
        for s in &h.cfg.servers {
            h.agents
                .entry(s.id.clone())
                .or_insert_with(|| FakeAgent::of(s));
        }
        h.step(Event::Reconfigured { by: "test".into() });
        Ok(ch.lines())
    }

    #[test]
    fn a_server_added_to_the_config_joins_and_can_take_copies() {
        let spec = Spec::active_standby().budget(2);
        let mut h = booted(&spec);
        let lines = reload(&mut h, spec.clone().servers(3, 2).config()).unwrap();
        assert_eq!(lines, vec!["s5 joins the cluster".to_string()]);
        assert!(h.c.check_reload(&h.cfg).unwrap().is_empty(), "said once");
        assert_eq!(h.c.servers["s5"].role, Role::Spare);
        assert_eq!(h.logs_of_kind("config").len(), 1);
        // s4 is busy with s1; s2's copies go to the newcomer once its agent answers.
        h.observe_all();
        h.judge("s1", Level::Unstable);
        assert_eq!(h.target("s1"), "s4");
        h.judge("s2", Level::Unstable);
        assert_eq!(h.target("s2"), "s5");
    }

    #[test]
    fn a_removed_primary_is_evacuated_then_forgotten_and_never_a_target() {
        let spec = Spec::active_standby();
        let mut h = booted(&spec);
        let before: Vec<InstanceId> = h.instances_on("s2");
        reload(&mut h, without(&spec, "s2")).unwrap();
        assert!(h.c.servers["s2"].removing);
        let w = h.wf("s2").expect("its instances move at once").clone();
        assert_eq!(w.target, "s4");
        finish_workflow(&mut h, "s2");
        h.ack_housekeeping();
        h.tick();
        assert!(!h.c.servers.contains_key("s2"), "forgotten once empty");
        assert!(before.iter().all(|i| !h.c.instances.contains_key(i)));
        let said: Vec<String> = h
            .logs_of_kind("config")
            .iter()
            .map(|e| e.message.clone())
            .collect();
        assert!(said.iter().any(|m| m.contains("s2 forgotten")), "{said:?}");
        // Nothing refers to it any more.
        assert!(h
            .c
            .routes
            .services
            .values()
            .all(|r| r.backends.iter().all(|b| h
                .c
                .instances
                .get(&b.id)
                .is_some_and(|i| i.server != "s2"))));
    }

    #[test]
    fn a_removed_spare_is_never_chosen_as_a_target() {
        let spec = Spec::active_standby().servers(3, 2);
        let mut h = booted(&spec);
        reload(&mut h, without(&spec, "s4")).unwrap();
        assert!(
            !h.c.servers.contains_key("s4"),
            "an idle spare goes at once"
        );
        h.judge("s1", Level::Unstable);
        assert_eq!(h.target("s1"), "s5");
    }

    #[test]
    fn a_removal_that_leaves_instances_nowhere_or_breaks_the_floor_is_refused_whole() {
        // The config's own check refuses a floor above the primaries it lists; the running
        // cluster's check also counts servers that are off the list (failed) right now.
        let spec = Spec::active_active().floor(8);
        let mut h = booted(&spec);
        h.c.servers.get_mut("s3").unwrap().state = ServerState::Failed {
            reason: "test".into(),
        };
        let mut two_gone = Config::from_toml(&without_text(&spec.toml(), "s1")).unwrap();
        two_gone.budget.min_available_capacity = 12;
        let err = h.c.check_reload(&two_gone).unwrap_err();
        assert!(
            err.to_string().contains(
                "would leave 8 units of serving capacity, below budget.min_available_capacity = 12"
            ),
            "{err}"
        );
        // One spare, in place allowed: a primary and the spare both gone leave the primary's
        // instances nowhere.
        let spec = Spec::active_standby().in_place();
        let h = booted(&spec);
        let two_gone =
            Config::from_toml(&without_text(&without_text(&spec.toml(), "s2"), "s4")).unwrap();
        let err = h.c.check_reload(&two_gone).unwrap_err();
        assert!(err.to_string().contains("nowhere to go"), "{err}");
        assert!(
            !h.c.servers["s2"].removing,
            "nothing of a refused reload is applied"
        );
        // A mode cannot change under a running cluster.
        let err =
            h.c.check_reload(&Spec::active_active().config())
                .unwrap_err();
        assert!(err.to_string().contains("cannot change its mode"), "{err}");
        // Nor can a service go while instances of it run.
        let no_db = Spec::active_standby()
            .services(&["web"])
            .toml()
            .replace("[services.db]", "[services.cache]");
        let err =
            h.c.check_reload(&Config::from_toml(&no_db).unwrap())
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("service 'db' is not in the config"),
            "{err}"
        );
    }

    fn without_text(text: &str, id: &str) -> String {
        text.split("\n[[servers]]")
            .enumerate()
            .filter(|(i, b)| *i == 0 || !b.contains(&format!("id = \"{id}\"")))
            .map(|(_, b)| b)
            .collect::<Vec<_>>()
            .join("\n[[servers]]")
    }

    #[test]
    fn capacity_follows_the_config() {
        let spec = Spec::active_active();
        let mut h = booted(&spec);
        let lines = reload(&mut h, spec.clone().capacity(6).config()).unwrap();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(h.c.servers.values().all(|s| s.capacity == 6));
    }

    #[test]
    fn a_queued_request_and_an_unswitched_workflow_can_be_cancelled() {
        let spec = Spec::active_standby().budget(1);
        let mut h = booted(&spec);
        h.operator(OperatorCommand::Rejuvenate {
            server: "s1".into(),
            force: false,
        });
        h.operator(OperatorCommand::Rejuvenate {
            server: "s2".into(),
            force: false,
        });
        assert!(h.wf("s1").is_some());
        assert!(h.wf("s2").is_none(), "queued behind the budget");
        let out = h.operator(OperatorCommand::Cancel { id: "s2".into() });
        assert!(out
            .events
            .iter()
            .any(|e| e.message.contains("cancelled the queued request")));
        assert_eq!(h.c.servers["s2"].manual_request, None);
        let wid = h.wf("s1").unwrap().id;
        let out = h.operator(OperatorCommand::Cancel {
            id: wid.to_string(),
        });
        assert!(h.wf("s1").is_none(), "{out:?}");
        assert_eq!(
            h.c.servers["s4"].avoid_as_target_until_ms, None,
            "a cancel does not put the target in cooldown"
        );
        let last = h.last_finished("s1").unwrap();
        assert_eq!(outcome_name(last), "rolled-back");
        assert_eq!(
            h.c.check_operator(&h.cfg, &OperatorCommand::Cancel { id: "s3".into() }),
            Err(Refusal::NothingToCancel(
                "server 's3' has no queued request and no workflow".into()
            ))
        );
    }

    #[test]
    fn a_workflow_past_the_switch_cannot_be_cancelled() {
        let spec = Spec::active_standby();
        let mut h = drive_to(&spec, Some(Phase::Draining));
        let r =
            h.c.check_operator(&h.cfg, &OperatorCommand::Cancel { id: "s1".into() });
        assert!(matches!(r, Err(Refusal::PastTheSwitch(_, _))), "{r:?}");
        let _ = &mut h;
    }

    #[test]
    fn instance_ids_differ_between_clusters_and_store_resets() {
        let cfg = Spec::active_standby().config();
        let (a, _) = Cluster::new(&cfg, Now::at(T0));
        let (b, _) = Cluster::new(&cfg, Now::at(T0 + 1));
        let ids_a: BTreeSet<&InstanceId> = a.instances.keys().collect();
        assert!(b.instances.keys().all(|i| !ids_a.contains(i)), "{ids_a:?}");
        let mut other = cfg.clone();
        other.cluster.name = "other".into();
        let (c, _) = Cluster::new(&other, Now::at(T0));
        assert!(c.instances.keys().all(|i| !ids_a.contains(i)));
        // The id still ends in its number (adoption moves the counter past it).
        assert!(a
            .instances
            .keys()
            .all(|i| i.rsplit('-').next().unwrap().parse::<u64>().is_ok()));
    }
}

mod windows_and_alerts {
    use super::*;

    #[test]
    fn planned_work_waits_outside_the_allowed_windows_failover_and_operators_do_not() {
        let spec = Spec::active_standby().budget(3);
        let mut h = booted(&spec);
        // T0 is 22:13 UTC; the only allowed window opens at 02:00 for two hours.
        h.cfg.allow = vec![rejuv_core::config::FreezeWindow {
            name: "night".into(),
            days: vec![],
            start: "02:00".into(),
            duration: std::time::Duration::from_secs(7_200),
        }];
        assert!(h.cfg.outside_allowed(T0));
        h.judge("s1", Level::Unstable);
        assert_eq!(h.wf("s1"), None);
        assert!(h.c.servers["s1"]
            .blocked_reason
            .as_deref()
            .unwrap()
            .contains("outside the allowed windows (night)"));
        h.operator(OperatorCommand::Rejuvenate {
            server: "s2".into(),
            force: false,
        });
        assert!(h.wf("s2").is_some(), "an operator's request does not wait");
        // Into the window: the planned one starts.
        let into = (T0 / 86_400_000 + 1) * 86_400_000 + 2 * HOUR_MS + 60_000;
        h.now_ms = into;
        finish_workflow(&mut h, "s2");
        h.ack_housekeeping();
        h.wait(COOLDOWN_MS + 1_000);
        h.observe_all();
        h.tick();
        assert!(
            h.wf("s1").is_some(),
            "inside the window it starts: {:?}",
            h.c.servers["s1"].blocked_reason
        );
    }

    #[test]
    fn firing_alerts_hold_planned_work_and_are_said_when_they_start_and_stop() {
        let mut h = booted(&Spec::active_standby());
        h.cfg.alert_block = Some(rejuv_core::config::AlertBlockConfig {
            url: "http://127.0.0.1:9090".into(),
            query: "ALERTS".into(),
            interval: std::time::Duration::from_secs(30),
        });
        let out = h.step(Event::AlertsBlocking {
            firing: Some("DiskFull{instance=\"db1\"}".into()),
        });
        assert_eq!(events_of(&out, "alert-block").len(), 1);
        let again = h.step(Event::AlertsBlocking {
            firing: Some("DiskFull{instance=\"db1\"}".into()),
        });
        assert!(events_of(&again, "alert-block").is_empty(), "said once");
        h.judge("s1", Level::Unstable);
        assert_eq!(h.wf("s1"), None);
        assert!(h.c.servers["s1"]
            .blocked_reason
            .as_deref()
            .unwrap()
            .contains("alerts are firing (DiskFull"));
        let out = h.step(Event::AlertsBlocking { firing: None });
        assert_eq!(events_of(&out, "alert-block").len(), 1);
        h.tick();
        assert!(h.wf("s1").is_some(), "planned work starts once they stop");
    }
}

mod rebalancing {
    use super::*;

    fn counts(h: &H) -> BTreeMap<String, usize> {
        h.c.servers
            .keys()
            .map(|s| (s.clone(), h.instances_on(s).len()))
            .collect()
    }

    #[test]
    fn a_rejoined_peer_takes_its_share_back_one_move_at_a_time() {
        let spec = Spec {
            rebalance: true,
            ..Spec::active_active().servers(3, 0).capacity(6)
        };
        let mut h = booted(&spec);
        h.judge("s1", Level::Unstable);
        let target = h.target("s1");
        finish_workflow(&mut h, "s1");
        h.ack_housekeeping();
        h.judge("s1", Level::Stable);
        let _ = target;
        // Moves follow, one at a time, until no server serves two more than another.
        let mut moves = 0;
        for _ in 0..6 {
            h.wait(1_000);
            h.observe_all();
            h.tick();
            let Some(w) = h.c.workflows.values().next().cloned() else {
                break;
            };
            assert_eq!(h.c.workflows.len(), 1, "one move at a time");
            assert!(w.rebalance && w.reason.starts_with("rebalancing:"), "{w:?}");
            for _ in 0..8 {
                if h.wf(&w.server).is_none() {
                    break;
                }
                h.ack_starts();
                h.observe_all();
                h.sync();
                let transfers = h.pending_where(|k| matches!(k, CommandKind::TransferState { .. }));
                h.ack_all(transfers);
                h.ack_housekeeping();
                h.observe_all();
            }
            assert!(h.wf(&w.server).is_none(), "{:?}", h.wf(&w.server));
            moves += 1;
        }
        let c = counts(&h);
        let (max, min) = (c.values().max().unwrap(), c.values().min().unwrap());
        assert!(
            max - min <= 1,
            "{c:?} after {moves} moves: {:?}\n{:?}",
            h.c.servers,
            h.c.history
        );
        let rebalanced = h.c.history.iter().filter(|w| w.rebalance).count();
        assert!(rebalanced >= 1, "{:?}", h.c.history);
        assert!(h
            .c
            .history
            .iter()
            .filter(|w| w.rebalance)
            .all(|w| w.target == "s1"));
        assert!(
            h.c.servers
                .values()
                .all(|s| s.instance_rejuvenations_ms.is_empty()),
            "a move is no rejuvenation: it does not count towards escalation"
        );
        // Balanced: nothing more starts.
        h.wait(1_000);
        h.observe_all();
        h.tick();
        assert!(h.c.workflows.is_empty());
    }
}
