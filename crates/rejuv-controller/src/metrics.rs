//! Prometheus metrics of the controller (`GET /metrics`, prefix `rejuv_`), rendered from the
//! published cluster snapshot at scrape time.
//!
//! Nothing here keeps state between scrapes: every value is read from [`Published`], so the
//! metrics are exactly what `/v1/status` shows and two scrapes of one snapshot agree. Counters
//! come from the cluster's own persisted totals (they survive a controller restart).
//!
//! Step, switchover and end-to-end workflow durations are gauges over the finished workflows the
//! snapshot keeps (`Cluster::history`, the most recent ones only): quantiles of "the last N"
//! rather than a cumulative histogram, because a histogram rebuilt from a window that slides
//! would make its buckets go down, which Prometheus reads as a counter reset.
//!
//! Every name, type and label is listed in `docs/metrics.md`; [`NAMES`] is the same list for the
//! tests (a test fails when a declared metric is never written).

use crate::engine::Published;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rejuv_core::cluster::{Cluster, Outcome, Phase, ServerState, Step, Workflow};
use rejuv_core::detector::Level;
use rejuv_core::types::Role;
use rejuv_net::{ConnectionStats, ListenerMetrics};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type Gauges = Family<Labels, FloatGauge>;

/// Every series name the controller exposes, as Prometheus stores it (counters with `_total`).
pub const NAMES: &[&str] = &[
    "rejuv_servers",
    "rejuv_available_servers",
    "rejuv_available_capacity_units",
    "rejuv_capacity_units",
    "rejuv_servers_kept_out",
    "rejuv_leader",
    "rejuv_paused",
    "rejuv_advisory",
    "rejuv_epoch",
    "rejuv_routes_version",
    "rejuv_pending_commands",
    "rejuv_store_failing",
    "rejuv_store_commit_failures_total",
    "rejuv_traffic_mismatch",
    "rejuv_traffic_mismatches_total",
    "rejuv_server_state",
    "rejuv_server_maintenance",
    "rejuv_server_judgement",
    "rejuv_server_forecast_tte_seconds",
    "rejuv_server_judged_value",
    "rejuv_server_escalation_level",
    "rejuv_server_reachable",
    "rejuv_server_observed_timestamp_seconds",
    "rejuv_server_running_time_seconds",
    "rejuv_server_load1",
    "rejuv_server_memory_used_bytes",
    "rejuv_server_memory_total_bytes",
    "rejuv_instances",
    "rejuv_instance_crashes_total",
    "rejuv_workflows_active",
    "rejuv_workflow_phase_started_timestamp_seconds",
    "rejuv_workflows_total",
    "rejuv_escalation_exhausted_total",
    "rejuv_recent_workflows",
    "rejuv_recent_step_seconds",
    "rejuv_recent_switchover_seconds",
    "rejuv_recent_workflow_seconds",
    "rejuv_last_switchover_seconds",
    "rejuv_controller_connections_open",
    "rejuv_controller_connections_refused_total",
    "rejuv_controller_connections_timed_out_total",
    "rejuv_store_commits_total",
    "rejuv_judge_latency_seconds_bucket",
    "rejuv_judge_latency_seconds_sum",
    "rejuv_judge_latency_seconds_count",
];

/// Quantiles written for the `rejuv_recent_*_seconds` gauges (`1` is the maximum).
const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.9, "0.9"), (1.0, "1")];

/// Phases a workflow passes through, in order (the label values of `phase`).
const PHASES: [Phase; 6] = [
    Phase::Duplexing,
    Phase::Gating,
    Phase::Draining,
    Phase::HandingOff,
    Phase::Rejuvenating,
    Phase::Verifying,
];

/// The `reason` a server is kept out for when its strongest rejuvenation did not last.
const EXHAUSTED: &str = "escalation-exhausted";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn set(f: &Gauges, pairs: &[(&str, &str)], v: f64) {
    f.get_or_create(&labels(pairs)).set(v);
}

fn one_gauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = FloatGauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The text exposition (OpenMetrics) of one snapshot, and of the API listener's
/// connections (`api`).
pub fn render(p: &Published, api: &Arc<ConnectionStats>) -> String {
    let mut reg = Registry::with_prefix("rejuv");
    let c = &p.cluster;
    cluster_metrics(&mut reg, p);
    server_metrics(&mut reg, p);
    workflow_metrics(&mut reg, c);
    register_listener(&mut reg, api);
    p.stats.register(&mut reg);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// `rejuv_controller_connections_*{listener="api"}`: the API listener's connections, which
/// are the controller process's and not the cluster's (a follower writes them too).
pub fn register_listener(reg: &mut Registry, api: &Arc<ConnectionStats>) {
    reg.sub_registry_with_prefix("controller")
        .register_collector(Box::new(
            ListenerMetrics::default().with("api", api.clone()),
        ));
}

/// Whether a failed server is out because escalation ran out (rather than a failed
/// rejuvenation): its last finished workflow says so; the reason text is the fallback for a
/// history that no longer holds that workflow.
fn kept_out_reason(c: &Cluster, id: &str, reason: &str) -> &'static str {
    let last = c.history.iter().rev().find(|w| w.server == id);
    let exhausted = match last {
        Some(w) => w.exhausted && w.outcome == Some(Outcome::Completed),
        None => reason.starts_with("escalation exhausted"),
    };
    if exhausted {
        EXHAUSTED
    } else {
        "failed"
    }
}

fn cluster_metrics(reg: &mut Registry, p: &Published) {
    let c = &p.cluster;
    let roles = [Role::Primary, Role::Spare];

    // Every role × state pair is written, zeros included, so a panel or an alert never sees a
    // series vanish when the last server leaves a state.
    let servers = Gauges::default();
    let list = Gauges::default();
    let capacity = Gauges::default();
    for role in roles {
        let r = role.to_string();
        for state in ["in-service", "rejuvenating", "failed"] {
            let n = c
                .servers
                .values()
                .filter(|s| s.role == role && s.state.name() == state)
                .count();
            set(&servers, &[("role", &r), ("state", state)], n as f64);
        }
        let on: Vec<_> = c
            .servers
            .values()
            .filter(|s| s.role == role && s.on_list() && !s.maintenance)
            .collect();
        set(&list, &[("role", &r)], on.len() as f64);
        let cap: u32 = c
            .servers
            .values()
            .filter(|s| s.role == role)
            .map(|s| s.capacity)
            .sum();
        set(&capacity, &[("role", &r)], f64::from(cap));
    }
    reg.register("servers", "Servers by role and state", servers);
    reg.register(
        "available_servers",
        "Servers on the available server list (in service, not in maintenance) by role",
        list,
    );
    reg.register(
        "capacity_units",
        "Capacity units of all servers by their current role",
        capacity,
    );
    one_gauge(
        reg,
        "available_capacity_units",
        "Capacity units of primaries on the list, sources of running workflows counted as off",
        f64::from(c.available_capacity()),
    );

    let kept_out = Gauges::default();
    let mut counts: BTreeMap<&str, usize> = [(EXHAUSTED, 0), ("failed", 0)].into();
    for s in c.servers.values() {
        if let ServerState::Failed { reason } = &s.state {
            *counts.entry(kept_out_reason(c, &s.id, reason)).or_default() += 1;
        }
    }
    for (reason, n) in counts {
        set(&kept_out, &[("reason", reason)], n as f64);
    }
    reg.register(
        "servers_kept_out",
        "Servers kept out of service for a person to look at, by why",
        kept_out,
    );

    one_gauge(
        reg,
        "leader",
        "1 on the controller that leads (acts), 0 on a follower",
        1.0,
    );
    one_gauge(
        reg,
        "paused",
        "1 while new workflows are paused",
        flag(c.paused),
    );
    one_gauge(
        reg,
        "advisory",
        "1 in advisory mode (controller --dry-run): workflows are planned, not run",
        flag(c.advisory),
    );
    one_gauge(
        reg,
        "epoch",
        "This controller's epoch (its term as leader)",
        p.epoch as f64,
    );
    one_gauge(
        reg,
        "routes_version",
        "Version of the route table",
        c.routes.version as f64,
    );
    one_gauge(
        reg,
        "pending_commands",
        "Commands issued and not yet acknowledged (the outbox)",
        c.pending.len() as f64,
    );
    one_gauge(
        reg,
        "store_failing",
        "1 while the store refuses this controller's commits: it acts on nothing meanwhile",
        flag(p.store.failing_since_ms.is_some()),
    );
    let failures = Counter::<u64>::default();
    failures.inc_by(p.store.commit_failures_total);
    reg.register(
        "store_commit_failures",
        "Store commits that failed since this controller started (each dropped its step)",
        failures,
    );
    one_gauge(
        reg,
        "traffic_mismatch",
        "1 while the builtin proxy holds a route table that is not this controller's (no drain counts as done meanwhile)",
        flag(p.traffic.mismatch.is_some()),
    );
    let mismatches = Counter::<u64>::default();
    mismatches.inc_by(p.traffic.mismatches_total);
    reg.register(
        "traffic_mismatches",
        "Times the builtin proxy was found holding a route table this controller did not send",
        mismatches,
    );
}

fn server_metrics(reg: &mut Registry, p: &Published) {
    let c = &p.cluster;
    let state = Gauges::default();
    let maintenance = Gauges::default();
    let judgement = Gauges::default();
    let tte = Gauges::default();
    let judged = Gauges::default();
    let level = Gauges::default();
    let reachable = Gauges::default();
    let observed = Gauges::default();
    let running = Gauges::default();
    let load1 = Gauges::default();
    let mem_used = Gauges::default();
    let mem_total = Gauges::default();
    let crashes = Family::<Labels, Counter>::default();
    for s in c.servers.values() {
        let id = s.id.as_str();
        let server = [("server", id)];
        set(
            &state,
            &[
                ("server", id),
                ("role", &s.role.to_string()),
                ("state", s.state.name()),
            ],
            1.0,
        );
        set(&maintenance, &server, flag(s.maintenance));
        set(
            &judgement,
            &server,
            match s.judgement {
                Level::Stable => 0.0,
                Level::Suspect => 1.0,
                Level::Unstable => 2.0,
            },
        );
        if let Some(e) = &s.explanation {
            let resource = e.resource.to_string();
            let l = [("server", id), ("resource", resource.as_str())];
            if let Some(t) = e.tte_s {
                set(&tte, &l, t);
            }
            set(&judged, &l, e.value);
        }
        set(&level, &server, s.level as f64);
        let obs = s.observation.as_ref();
        set(&reachable, &server, flag(obs.is_some_and(|o| o.reachable)));
        if let Some(o) = obs {
            set(&observed, &server, o.at_ms as f64 / 1000.0);
            set(&running, &server, o.running_time_s);
            set(&load1, &server, o.load1);
            // The agent's own persisted count: it only grows, across agent restarts too.
            crashes
                .get_or_create(&labels(&server))
                .inc_by(o.crashes_total);
        }
        if let Some(a) = p.samples.get(id) {
            set(&mem_used, &server, a.sample.mem_used_bytes as f64);
            set(&mem_total, &server, a.sample.mem_total_bytes as f64);
        }
    }
    reg.register(
        "server_state",
        "1 for each server's current role and state",
        state,
    );
    reg.register(
        "server_maintenance",
        "1 while an operator holds the server in maintenance",
        maintenance,
    );
    reg.register(
        "server_judgement",
        "Judgement per server: 0 stable, 1 suspect, 2 unstable",
        judgement,
    );
    reg.register(
        "server_forecast_tte_seconds",
        "Forecast seconds until the judged resource is exhausted, where a forecast was made",
        tte,
    );
    reg.register(
        "server_judged_value",
        "Current value of the resource behind a suspect or unstable judgement",
        judged,
    );
    reg.register(
        "server_escalation_level",
        "Escalation level of the server's last rejuvenation (0: rejuvenation.actions)",
        level,
    );
    reg.register(
        "server_reachable",
        "1 if the agent answered the controller's last poll",
        reachable,
    );
    reg.register(
        "server_observed_timestamp_seconds",
        "Unix time of the controller's last observation of the server",
        observed,
    );
    reg.register(
        "server_running_time_seconds",
        "Seconds since the server was last rejuvenated (or its agent first started)",
        running,
    );
    reg.register("server_load1", "Host 1-minute load average", load1);
    reg.register(
        "server_memory_used_bytes",
        "Host memory used (total - available), newest sample",
        mem_used,
    );
    reg.register(
        "server_memory_total_bytes",
        "Host memory, newest sample",
        mem_total,
    );
    reg.register(
        "instance_crashes",
        "Instance exits nobody asked for, as the server's agent counts them",
        crashes,
    );

    let instances = Gauges::default();
    let mut per: BTreeMap<(String, String, bool), usize> = BTreeMap::new();
    for s in c.servers.values() {
        for traffic in ["serving", "standby", "draining"] {
            for healthy in [true, false] {
                per.insert((s.id.clone(), traffic.into(), healthy), 0);
            }
        }
    }
    for i in c.instances.values() {
        let traffic = serde_json::to_value(i.traffic)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *per.entry((i.server.clone(), traffic, i.healthy))
            .or_default() += 1;
    }
    for ((server, traffic, healthy), n) in per {
        set(
            &instances,
            &[
                ("server", &server),
                ("traffic", &traffic),
                ("healthy", if healthy { "true" } else { "false" }),
            ],
            n as f64,
        );
    }
    reg.register(
        "instances",
        "Instances the controller placed, by server, traffic and health",
        instances,
    );
}

/// Milliseconds spent in each phase (summed when a phase was entered more than once), and the
/// switchover: from the switch (entering `draining`) until the old server is drained and any
/// state handed off (entering `rejuvenating`).
struct Timing {
    phases: BTreeMap<Step, f64>,
    switchover_s: Option<f64>,
    total_s: Option<f64>,
}

fn timing(w: &Workflow) -> Timing {
    let mut phases = BTreeMap::new();
    for pair in w.steps.windows(2) {
        let secs = pair[1].at_ms.saturating_sub(pair[0].at_ms) as f64 / 1000.0;
        *phases.entry(pair[0].phase.clone()).or_insert(0.0) += secs;
    }
    let first = |step: Step| w.steps.iter().find(|s| s.phase == step).map(|s| s.at_ms);
    let switchover_s = match (first(Step::Draining), first(Step::Rejuvenating)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1000.0),
        _ => None,
    };
    let total_s = w
        .steps
        .last()
        .map(|s| s.at_ms.saturating_sub(w.started_at_ms) as f64 / 1000.0);
    Timing {
        phases,
        switchover_s,
        total_s,
    }
}

/// Nearest-rank quantile of a sorted, non-empty slice.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn set_quantiles(f: &Gauges, extra: &[(&str, &str)], mut values: Vec<f64>) {
    if values.is_empty() {
        return;
    }
    values.sort_by(f64::total_cmp);
    for (q, name) in QUANTILES {
        let mut l = extra.to_vec();
        l.push(("quantile", name));
        set(f, &l, quantile(&values, q));
    }
}

fn outcome_name(w: &Workflow) -> &'static str {
    match &w.outcome {
        Some(Outcome::Completed) if w.exhausted => EXHAUSTED,
        Some(Outcome::Completed) => "completed",
        Some(Outcome::RolledBack { .. }) => "rolled-back",
        Some(Outcome::Failed { .. }) => "failed",
        None => "unfinished",
    }
}

fn workflow_metrics(reg: &mut Registry, c: &Cluster) {
    let active = Gauges::default();
    for phase in PHASES {
        let n = c.workflows.values().filter(|w| w.phase == phase).count();
        set(&active, &[("phase", &phase.to_string())], n as f64);
    }
    reg.register("workflows_active", "Workflows running, by phase", active);

    let started = Gauges::default();
    for w in c.workflows.values() {
        set(
            &started,
            &[
                ("server", &w.server),
                ("target", &w.target),
                ("phase", &w.phase.to_string()),
                ("level", &w.level.to_string()),
            ],
            w.phase_since_ms as f64 / 1000.0,
        );
    }
    reg.register(
        "workflow_phase_started_timestamp_seconds",
        "Unix time a running workflow entered its current phase",
        started,
    );

    let total = Family::<Labels, Counter>::default();
    for (outcome, n) in [
        ("completed", c.completed_total),
        ("rolled-back", c.rolled_back_total),
        ("failed", c.failed_total),
    ] {
        total
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc_by(n);
    }
    reg.register(
        "workflows",
        "Finished workflows by outcome (since the store was created)",
        total,
    );
    let exhausted = Counter::<u64>::default();
    exhausted.inc_by(c.exhausted_total);
    reg.register(
        "escalation_exhausted",
        "Workflows after which a server was kept out: its strongest rejuvenation did not help",
        exhausted,
    );

    let recent = Gauges::default();
    for outcome in ["completed", EXHAUSTED, "rolled-back", "failed"] {
        let n = c
            .history
            .iter()
            .filter(|w| outcome_name(w) == outcome)
            .count();
        set(&recent, &[("outcome", outcome)], n as f64);
    }
    reg.register(
        "recent_workflows",
        "Finished workflows in the kept history (the window of the rejuv_recent_* gauges), by outcome",
        recent,
    );

    let timings: Vec<Timing> = c.history.iter().map(timing).collect();
    let steps = Gauges::default();
    for phase in PHASES {
        let name = phase.to_string();
        let values = timings
            .iter()
            .filter_map(|t| t.phases.get(&Step::from(phase)).copied())
            .collect();
        set_quantiles(&steps, &[("phase", &name)], values);
    }
    reg.register(
        "recent_step_seconds",
        "Seconds workflows of the kept history spent in each phase: quantiles over that window",
        steps,
    );

    let switchover = Gauges::default();
    set_quantiles(
        &switchover,
        &[],
        timings.iter().filter_map(|t| t.switchover_s).collect(),
    );
    reg.register(
        "recent_switchover_seconds",
        "Switchover time (switch until the old server is drained and state handed off): quantiles over the kept history",
        switchover,
    );

    let e2e = Gauges::default();
    set_quantiles(
        &e2e,
        &[],
        timings.iter().filter_map(|t| t.total_s).collect(),
    );
    reg.register(
        "recent_workflow_seconds",
        "End-to-end workflow time (plan until rejoin, rollback or failure): quantiles over the kept history",
        e2e,
    );

    // The newest finished workflow that switched: a point per workflow on a graph.
    if let Some(s) = c.history.iter().rev().find_map(|w| timing(w).switchover_s) {
        one_gauge(
            reg,
            "last_switchover_seconds",
            "Switchover time of the newest finished workflow that switched",
            s,
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rejuv_core::api::AgentState;
    use rejuv_core::cluster::{Cluster, Observation, StepTime};
    use rejuv_core::config::{Config, Resource};
    use rejuv_core::detector::Explanation;
    use rejuv_core::time::Now;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    const CONFIG: &str = r#"
[cluster]
mode = "active-standby"
[auth]
agent_token_file = "/nonexistent/token"
api_token_file = "/nonexistent/token"
[controller]
listen = "127.0.0.1:7070"
[policy]
rules = [ { resource = "instance-rss", above = 0.5 } ]
[traffic]
adapter = "builtin"
admin = "127.0.0.1:7071"
listen = { web = "127.0.0.1:7072" }
[store]
path = "/nonexistent/rejuv.db"
[services.web]
command = "/bin/true"
health = { path = "/healthz" }
[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
capacity = 2
port_range = [20000, 20009]
instances = ["web"]
[[servers]]
id = "s2"
address = "127.0.0.3"
agent = "127.0.0.3:7001"
role = "spare"
capacity = 2
port_range = [20000, 20009]
"#;

    /// A workflow from its JSON form, so fields added later with defaults need no change here.
    fn workflow(id: u64, steps: &[(&str, u64)], outcome: Outcome, exhausted: bool) -> Workflow {
        let steps: Vec<StepTime> = steps
            .iter()
            .map(|(p, at)| StepTime {
                phase: Step::from_name(p),
                at_ms: *at,
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": id,
            "server": "s1",
            "target": "s2",
            "reason": "test",
            "explanation": null,
            "phase": "verifying",
            "started_at_ms": steps[0].at_ms,
            "phase_since_ms": steps[0].at_ms,
            "pairs": [],
            "run_id": format!("run-{id}"),
            "report": null,
            "gate_reason": null,
            "steps": steps,
            "outcome": outcome,
            "forced": false,
            "level": 1,
            "exhausted": exhausted,
        }))
        .expect("workflow json")
    }

    /// A snapshot in which every metric has something to say (also the status tests').
    pub(crate) fn busy() -> Published {
        let cfg = Config::from_toml(CONFIG).expect("test config");
        let (mut c, _) = Cluster::new(&cfg, Now::new(0, 1_000_000));
        let s1 = c.servers.get_mut("s1").unwrap();
        s1.judgement = Level::Unstable;
        s1.explanation = Some(Explanation {
            resource: Resource::InstanceRss,
            rule: "trend".into(),
            value: 0.7,
            limit: 1.0,
            slope_per_s: Some(0.01),
            tte_s: Some(30.0),
            confidence: Some(0.99),
            message: "leak".into(),
            instance: None,
        });
        s1.level = 1;
        let mut state = AgentState {
            server_id: "s1".into(),
            agent_started_at_ms: 1_000_000,
            running_since_ms: 1_000_000,
            epoch: 1,
            sample: Default::default(),
            instances: vec![],
            crashes_total: 3,
            last_rejuvenation: None,
            version: "test".into(),
            boot_id: String::new(),
        };
        state.sample.mem_used_bytes = 100;
        state.sample.mem_total_bytes = 1000;
        s1.observation = Some(Observation::from_agent(&state, 1_005_000));
        let mut w = workflow(
            7,
            &[("duplexing", 1_000_000), ("gating", 1_002_000)],
            Outcome::Completed,
            false,
        );
        w.phase = Phase::Gating;
        w.outcome = None;
        c.workflows.insert(7, w);
        c.history.push(workflow(
            1,
            &[
                ("duplexing", 0),
                ("gating", 1_000),
                ("draining", 1_500),
                ("rejuvenating", 4_500),
                ("verifying", 6_000),
                ("rejoined", 7_000),
            ],
            Outcome::Completed,
            false,
        ));
        c.history.push(workflow(
            2,
            &[
                ("duplexing", 10_000),
                ("draining", 11_000),
                ("handing-off", 12_000),
                ("rejuvenating", 13_000),
                ("rejoined", 20_000),
            ],
            Outcome::Completed,
            true,
        ));
        c.servers.get_mut("s1").unwrap().state = ServerState::Failed {
            reason: "escalation exhausted: aged again".into(),
        };
        c.completed_total = 2;
        Published {
            config: Arc::new(cfg),
            cluster: Arc::new(c),
            epoch: 4,
            samples: Arc::new([("s1".to_string(), Arc::new(state))].into()),
            store: crate::engine::StoreHealth {
                commit_failures_total: 2,
                failing_since_ms: Some(1_004_000),
                last_error: Some("etcd: committing a step failed".into()),
            },
            traffic: crate::engine::TrafficHealth {
                mismatch: Some("epoch 9 version 1".into()),
                mismatches_total: 3,
            },
            stats: Arc::default(),
        }
    }

    fn series(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect()
    }

    fn value(text: &str, line_start: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no line starting {line_start} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn every_declared_metric_is_written_and_nothing_else() {
        let text = render(&busy(), &Arc::default());
        let written = series(&text);
        let declared: BTreeSet<String> = NAMES.iter().map(|s| s.to_string()).collect();
        assert_eq!(written, declared, "\n{text}");
    }

    #[test]
    fn values_follow_the_snapshot() {
        let text = render(&busy(), &Arc::default());
        assert_eq!(value(&text, r#"rejuv_server_judgement{server="s1"}"#), 2.0);
        assert_eq!(
            value(
                &text,
                r#"rejuv_server_forecast_tte_seconds{server="s1",resource="instance-rss"}"#
            ),
            30.0
        );
        assert_eq!(
            value(&text, r#"rejuv_instance_crashes_total{server="s1"}"#),
            3.0
        );
        assert_eq!(
            value(&text, r#"rejuv_workflows_total{outcome="completed"}"#),
            2.0
        );
        assert_eq!(
            value(&text, r#"rejuv_workflows_active{phase="gating"}"#),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"rejuv_servers_kept_out{reason="escalation-exhausted"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"rejuv_recent_workflows{outcome="escalation-exhausted"}"#
            ),
            1.0
        );
        // Switchovers of 3 s (draining 1.5 → rejuvenating 4.5) and 2 s (11 → 13).
        assert_eq!(
            value(&text, r#"rejuv_recent_switchover_seconds{quantile="1"}"#),
            3.0
        );
        assert_eq!(
            value(&text, r#"rejuv_recent_switchover_seconds{quantile="0.5"}"#),
            2.0
        );
        assert_eq!(value(&text, "rejuv_last_switchover_seconds"), 2.0);
        assert_eq!(
            value(
                &text,
                r#"rejuv_recent_step_seconds{phase="duplexing",quantile="1"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"rejuv_recent_step_seconds{phase="rejuvenating",quantile="1"}"#
            ),
            7.0
        );
        assert_eq!(
            value(&text, r#"rejuv_available_servers{role="primary"}"#),
            0.0
        );
        assert_eq!(
            value(&text, r#"rejuv_available_servers{role="spare"}"#),
            1.0
        );
        assert_eq!(value(&text, r#"rejuv_server_reachable{server="s2"}"#), 0.0);
        assert_eq!(value(&text, "rejuv_epoch"), 4.0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 0.9), 4.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&[5.0], 0.5), 5.0);
    }
}
