//! Policies around the workflow: fixed-period rejuvenation with jitter, the cluster-wide
//! cooldown, and escalation to stronger actions when a server ages again soon.

use rejuv_core::api::{ActionOutcome, ActionReport, InstanceState, RejuvenationReport};
use rejuv_core::cluster::{
    Cluster, CommandKind, CommandResult, Event, Observation, ObservedInstance, Phase, ServerState,
};
use rejuv_core::config::{Action, Config};
use rejuv_core::detector::{Explanation, Judgement, Level};
use rejuv_core::time::Now;
use std::collections::BTreeMap;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[cluster]
mode = "active-standby"
[traffic]
admin = "127.0.0.1:7071"
[gate]
min_running_time = "0s"
[rejuvenation]
actions = ["stop-instances", "restart-agent"]
{extra}
[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
port_range = [20000, 20010]
instances = ["web"]
[[servers]]
id = "s2"
address = "127.0.0.3"
agent = "127.0.0.3:7001"
role = "spare"
port_range = [20000, 20010]
[services.web]
command = "/bin/true"
health = {{ path = "/healthz" }}
"#
    );
    Config::from_toml(&text).unwrap()
}

/// A cluster driven by a fake fleet that acknowledges every command at once.
struct Sim {
    cfg: Config,
    c: Cluster,
    t: u64,
    running_since: BTreeMap<String, u64>,
    events: Vec<String>,
    actions_run: Vec<Vec<Action>>,
    /// What the shell reports as the load's place in its history.
    load_quantile: Option<f64>,
}

impl Sim {
    fn new(cfg: Config) -> Self {
        let t = 1_000_000;
        let (c, out) = Cluster::new(&cfg, Now::at(t));
        let mut s = Sim {
            cfg,
            c,
            t,
            running_since: [("s1".to_string(), t), ("s2".to_string(), t)].into(),
            events: vec![],
            actions_run: vec![],
            load_quantile: None,
        };
        s.ack(out.commands);
        s.observe_all();
        s
    }

    fn apply(&mut self, e: Event) {
        let out = self.c.apply(&self.cfg, e, Now::at(self.t));
        self.events.extend(
            out.events
                .iter()
                .map(|e| format!("{}: {}", e.kind, e.message)),
        );
        assert!(
            self.c.check_invariants(&self.cfg).is_empty(),
            "{:?}",
            self.c.check_invariants(&self.cfg)
        );
        self.ack(out.commands);
    }

    fn ack(&mut self, cmds: Vec<rejuv_core::cluster::Command>) {
        for cmd in cmds {
            let result = match &cmd.kind {
                CommandKind::StartInstance { instance, .. } => {
                    let port = 20000 + (instance.len() as u16);
                    CommandResult::Started {
                        addr: Some(format!("127.0.0.9:{port}").parse().unwrap()),
                    }
                }
                CommandKind::StopInstance { .. } => CommandResult::Stopped,
                CommandKind::TransferState { .. } => CommandResult::Transferred,
                CommandKind::Rejuvenate {
                    server,
                    run_id,
                    actions,
                    ..
                } => {
                    self.actions_run.push(actions.clone());
                    self.running_since.insert(server.clone(), self.t);
                    CommandResult::Rejuvenated {
                        report: RejuvenationReport {
                            run_id: run_id.clone(),
                            started_at_ms: self.t,
                            finished_at_ms: self.t,
                            boot_id: None,
                            actions: actions
                                .iter()
                                .map(|a| ActionReport {
                                    action: *a,
                                    outcome: ActionOutcome::Done,
                                    detail: String::new(),
                                })
                                .collect(),
                        },
                    }
                }
                _ => CommandResult::Done,
            };
            self.apply(Event::CommandDone { id: cmd.id, result });
        }
    }

    fn observe_all(&mut self) {
        for server in ["s1", "s2"] {
            let instances = self
                .c
                .instances
                .values()
                .filter(|i| i.server == server)
                .map(|i| {
                    (
                        i.id.clone(),
                        ObservedInstance {
                            state: InstanceState::Running,
                            healthy: true,
                            addr: i.addr,
                            started_at_ms: Some(self.t),
                            rss_bytes: None,
                            crashes: 0,
                            last_exit: None,
                            last_output: Vec::new(),
                        },
                    )
                })
                .collect();
            let since = self.running_since[server];
            let observation = Observation {
                reachable: true,
                at_ms: self.t,
                load1: 0.1,
                running_since_ms: since,
                running_time_s: (self.t - since) as f64 / 1000.0,
                crashes_total: 0,
                load_quantile: self.load_quantile,
                instances,
                mem_available_bytes: None,
                boot_id: None,
            };
            self.apply(Event::Observed {
                server: server.into(),
                observation,
            });
        }
        let version = self.c.routes.version;
        self.apply(Event::TrafficSynced {
            version,
            in_flight: BTreeMap::new(),
        });
    }

    fn advance(&mut self, ms: u64) {
        self.t += ms;
        self.observe_all();
        self.apply(Event::Tick);
        self.observe_all();
    }

    fn primary(&self) -> String {
        self.c
            .servers
            .values()
            .find(|s| s.role == rejuv_core::types::Role::Primary)
            .unwrap()
            .id
            .clone()
    }

    fn judge(&mut self, server: &str, level: Level) {
        let explanation = (level != Level::Stable).then(|| Explanation {
            resource: rejuv_core::config::Resource::InstanceRss,
            rule: "threshold".into(),
            value: 0.9,
            limit: 0.5,
            slope_per_s: None,
            tte_s: None,
            confidence: None,
            message: "instance-rss high".into(),
            instance: None,
        });
        self.apply(Event::Judged {
            server: server.into(),
            judgement: Judgement {
                level,
                explanation,
                ..Judgement::stable()
            },
        });
    }
}

#[test]
fn fixed_period_rejuvenates_a_healthy_server_once_it_has_run_long_enough() {
    let cfg = config("").clone();
    let mut cfg = cfg;
    cfg.policy.max_running_time = Some(std::time::Duration::from_secs(100));
    cfg.policy.max_running_time_jitter = 0.0;
    let mut sim = Sim::new(cfg);
    sim.advance(90_000);
    assert!(
        sim.c.workflows.is_empty() && sim.c.history.is_empty(),
        "not due yet"
    );
    sim.advance(11_000);
    assert_eq!(sim.c.completed_total, 1, "{:?}", sim.events);
    let w = &sim.c.history[0];
    assert!(w.reason.contains("fixed-period"), "{}", w.reason);
}

#[test]
fn jitter_spreads_due_times_by_server_and_stays_within_its_bound() {
    let mut cfg = config("");
    cfg.policy.max_running_time = Some(std::time::Duration::from_secs(1000));
    cfg.policy.max_running_time_jitter = 0.5;
    let mut sim = Sim::new(cfg);
    // With jitter 0.5 every server is due somewhere in [500 s, 1000 s].
    sim.advance(499_000);
    assert_eq!(sim.c.completed_total, 0);
    for _ in 0..11 {
        sim.advance(50_000);
    }
    assert!(sim.c.completed_total >= 1);
}

#[test]
fn cooldown_keeps_the_next_workflow_waiting() {
    let mut sim = Sim::new(config(""));
    sim.cfg.budget.cooldown = std::time::Duration::from_secs(60);
    let p = sim.primary();
    sim.judge(&p, Level::Unstable);
    sim.advance(1_000);
    assert_eq!(sim.c.completed_total, 1, "{:?}", sim.events);
    let p2 = sim.primary();
    sim.judge(&p2, Level::Unstable);
    sim.advance(1_000);
    assert_eq!(sim.c.completed_total, 1, "cooling down: {:?}", sim.events);
    assert!(
        sim.events.iter().any(|e| e.contains("cooldown")),
        "{:?}",
        sim.events
    );
    sim.advance(60_000);
    sim.advance(1_000);
    assert_eq!(
        sim.c.completed_total, 2,
        "after the cooldown it runs: {:?}",
        sim.events
    );
}

#[test]
fn a_server_aging_again_soon_escalates_then_is_kept_out_when_the_strongest_fails() {
    let cfg = config(
        r#"escalation = [["stop-instances", "drop-caches", "restart-agent"]]
escalation_window = "10m""#,
    );
    let mut sim = Sim::new(cfg);
    // First rejuvenation: base level.
    sim.judge("s1", Level::Unstable);
    sim.advance(1_000);
    assert_eq!(sim.c.completed_total, 1);
    assert_eq!(
        sim.actions_run[0],
        vec![Action::StopInstances, Action::RestartAgent]
    );
    // s1 is now the spare; s2 serves. Hand traffic back to s1 by aging s2 (base level for s2).
    sim.judge("s2", Level::Unstable);
    sim.advance(1_000);
    assert_eq!(sim.c.completed_total, 2);
    // s1, rejuvenated 2 s ago, ages again within the window: the next level.
    sim.judge("s1", Level::Unstable);
    sim.advance(1_000);
    assert_eq!(sim.c.completed_total, 3, "{:?}", sim.events);
    assert_eq!(
        sim.actions_run[2],
        vec![
            Action::StopInstances,
            Action::DropCaches,
            Action::RestartAgent
        ]
    );
    assert_eq!(sim.c.servers["s1"].level, 1);
    assert_eq!(sim.c.servers["s1"].state, ServerState::InService);
    // s2 again, then s1 ages again at the strongest level: kept out, alerted.
    sim.judge("s2", Level::Unstable);
    sim.advance(1_000);
    sim.judge("s1", Level::Unstable);
    sim.advance(1_000);
    assert!(
        matches!(&sim.c.servers["s1"].state, ServerState::Failed { reason } if reason.contains("escalation exhausted")),
        "{:?}",
        sim.c.servers["s1"].state
    );
    assert!(
        sim.events
            .iter()
            .any(|e| e.starts_with("escalation-exhausted")),
        "{:?}",
        sim.events
    );
    assert_eq!(sim.c.exhausted_total, 1, "counted for the metric");
    // Its traffic moved to the other server before it was taken out.
    assert!(sim.c.instances.values().all(|i| i.server == "s2"));
    assert!(sim
        .c
        .workflows
        .values()
        .all(|w| w.phase != Phase::Duplexing));
}

#[test]
fn a_server_that_stayed_healthy_past_the_window_starts_again_at_the_base_level() {
    let cfg = config(
        r#"escalation = [["stop-instances", "drop-caches", "restart-agent"]]
escalation_window = "10s""#,
    );
    let mut sim = Sim::new(cfg);
    sim.judge("s1", Level::Unstable);
    sim.advance(1_000);
    sim.judge("s2", Level::Unstable);
    sim.advance(1_000);
    sim.advance(20_000);
    sim.judge("s1", Level::Unstable);
    sim.advance(1_000);
    assert_eq!(sim.c.completed_total, 3);
    assert_eq!(
        sim.actions_run[2],
        vec![Action::StopInstances, Action::RestartAgent]
    );
}

#[test]
fn the_gate_waits_for_a_quieter_moment_while_exhaustion_is_far() {
    let mut sim = Sim::new(config(""));
    sim.cfg.gate.max_wait = std::time::Duration::from_secs(600);
    sim.load_quantile = Some(0.95);
    let explanation = Explanation {
        resource: rejuv_core::config::Resource::InstanceRss,
        rule: "trend".into(),
        value: 0.6,
        limit: 1.0,
        slope_per_s: Some(1e-5),
        tte_s: Some(36_000.0),
        confidence: Some(0.99),
        message: "instance-rss will be exhausted in about 10h".into(),
        instance: None,
    };
    sim.apply(Event::Judged {
        server: "s1".into(),
        judgement: Judgement {
            level: Level::Unstable,
            explanation: Some(explanation),
            ..Judgement::stable()
        },
    });
    sim.advance(1_000);
    let w = sim.c.workflows.values().next().expect("a workflow");
    assert_eq!(w.phase, Phase::Gating, "busy hour: the hot copy waits");
    assert!(
        w.gate_reason.as_deref().unwrap_or("").contains("quieter"),
        "{:?}",
        w.gate_reason
    );
    sim.load_quantile = Some(0.1);
    sim.advance(1_000);
    sim.advance(1_000);
    assert_eq!(
        sim.c.completed_total, 1,
        "switched in the quiet moment: {:?}",
        sim.events
    );
}
