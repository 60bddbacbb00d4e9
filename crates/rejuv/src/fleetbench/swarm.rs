//! The swarm of `rejuv bench fleet`: one process that answers as many agents, each on its own
//! loopback address, over the agent API as the controller uses it (`GET /v1/state`,
//! `GET /v1/samples`, `PUT`/`DELETE /v1/instances/{id}`, `POST /v1/rejuvenate`, with the
//! agent token). Nothing runs: an instance is a record that turns healthy after
//! `--start-delay`; a reading is made when the controller asks for it, so its time is the
//! moment the agent answered (the latency the benchmark reports starts there).
//!
//! Each simulated agent's readings are its own: a memory level with a little noise of its own
//! seed, and, for the servers named with `--aged`, a leak that starts `--age-after` into the
//! run and climbs past the config's memory rule until a rejuvenation with `stop-instances`
//! resets it. A line of JSON per second on stdout says what the swarm has seen so far
//! ([`SwarmCounts`]); the last one, written when it ends, is the benchmark's account of which
//! servers were rejuvenated.

use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rejuv_core::api::{
    ActionOutcome, ActionReport, AgentState, InstanceState, InstanceStatus, RejuvenateRequest,
    RejuvenationReport, StartInstance,
};
use rejuv_core::config::{Action, Config};
use rejuv_core::types::Sample;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `rejuv bench swarm` (started by `rejuv bench fleet`, not by hand).
#[derive(clap::Args, Debug, Clone)]
pub struct SwarmArgs {
    /// The fleet's config: the servers (agent addresses) this swarm answers for.
    #[arg(long)]
    pub config: PathBuf,
    /// The agent token file.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Answer for servers `[from, to)` of the config's list (by position).
    #[arg(long, default_value_t = 0)]
    pub from: usize,
    #[arg(long)]
    pub to: Option<usize>,
    /// Server ids that age (a comma-separated list).
    #[arg(long, value_delimiter = ',')]
    pub aged: Vec<String>,
    /// When the aged servers start leaking, from the swarm's start.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub age_after: Duration,
    /// How fast an aged server's memory use climbs, as a share of its total per second.
    #[arg(long, default_value_t = 0.02)]
    pub age_rate: f64,
    /// How long a started instance takes to turn healthy.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub start_delay: Duration,
}

/// What the swarm has seen: one JSON line a second on stdout, and a last one at its end.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SwarmCounts {
    /// Seconds since the swarm started.
    pub t_s: f64,
    pub agents: usize,
    pub state_requests: u64,
    pub instances_started: u64,
    pub instances_stopped: u64,
    /// Aged servers that have started leaking.
    pub aged_leaking: usize,
    /// Aged servers rejuvenated (a run with `stop-instances`) after their leak started.
    pub aged_rejuvenated: Vec<String>,
    /// Servers rejuvenated that were not aged, or before their leak started.
    pub rejuvenated_unaged: Vec<String>,
    pub rejuvenations: u64,
    /// Rejuvenations (with `stop-instances`, each a new run) of an aged server whose memory
    /// was not past the memory rule then: a second workflow for one aging episode (the first
    /// had reset the leak), one entry per such run.
    #[serde(default)]
    pub rejuvenated_early: Vec<String>,
}

/// The memory rule the benchmark's config sets (`memory-used > 0.9`), less the readings' own
/// spread: an aged server rejuvenated below it was not aged then.
const RULE_USED: f64 = 0.9 - 0.03;

const GIB: u64 = 1 << 30;
const MEM_TOTAL: u64 = 16 * GIB;
/// An unaged server's memory use, as a share of its total (plus its own noise).
const BASE_USED: f64 = 0.40;

struct Inst {
    status: InstanceStatus,
    started: std::time::Instant,
}

struct AgentSim {
    server: String,
    address: std::net::IpAddr,
    ports: [u16; 2],
    aged: bool,
    /// A stable per-agent seed for its noise.
    seed: u64,
    inner: Mutex<AgentInner>,
}

struct AgentInner {
    agent_started_at_ms: u64,
    /// When the simulated host last booted (its boot id changes with it).
    booted_at_ms: u64,
    running_since_ms: u64,
    epoch: u64,
    /// Leak accumulated before the last reset is dropped: the leak counts from here.
    leak_from_ms: Option<u64>,
    instances: BTreeMap<String, Inst>,
    reports: BTreeMap<String, RejuvenationReport>,
    last_rejuvenation: Option<RejuvenationReport>,
    next_port: u16,
    readings: u64,
}

struct Shared {
    token: String,
    origin: std::time::Instant,
    origin_ms: u64,
    age_after: Duration,
    age_rate: f64,
    start_delay: Duration,
    state_requests: AtomicU64,
    started: AtomicU64,
    stopped: AtomicU64,
    rejuvenations: AtomicU64,
    aged_rejuvenated: Mutex<BTreeSet<String>>,
    rejuvenated_unaged: Mutex<BTreeSet<String>>,
    rejuvenated_early: Mutex<Vec<String>>,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A cheap stable hash (splitmix64) for per-agent noise.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A value in [-1, 1) from a seed and a step.
fn noise(seed: u64, n: u64) -> f64 {
    (mix(seed ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

impl AgentSim {
    /// When this agent's leak started, if it is aged and the leak has begun.
    fn leak_start_ms(&self, shared: &Shared) -> Option<u64> {
        self.aged
            .then(|| shared.origin_ms + shared.age_after.as_millis() as u64)
    }

    fn reading(&self, shared: &Shared, inner: &mut AgentInner, now_ms: u64) -> Sample {
        inner.readings += 1;
        let mut used = BASE_USED
            + 0.02 * (self.seed % 5) as f64 / 5.0
            + 0.004 * noise(self.seed, inner.readings);
        if let Some(start) = self.leak_start_ms(shared) {
            let from = inner.leak_from_ms.unwrap_or(start).max(start);
            if now_ms > from {
                used += shared.age_rate * (now_ms - from) as f64 / 1000.0;
            }
        }
        let used = used.clamp(0.0, 0.999);
        let used_bytes = (MEM_TOTAL as f64 * used) as u64;
        let instances = inner
            .instances
            .values()
            .filter(|i| i.status.state == InstanceState::Running)
            .map(|i| {
                (
                    i.status.id.clone(),
                    rejuv_core::types::InstanceSample {
                        rss_bytes: 200 << 20,
                        cpu_seconds: 1.0,
                        fds: 20,
                        threads: 4,
                        processes: 1,
                        health_latency_ms: Some(1.0),
                        healthy: true,
                        memory_limit_bytes: None,
                    },
                )
            })
            .collect();
        Sample {
            taken_at_ms: now_ms,
            load1: 0.5,
            load5: 0.5,
            load15: 0.5,
            running_time_s: now_ms.saturating_sub(inner.running_since_ms) as f64 / 1000.0,
            mem_total_bytes: MEM_TOTAL,
            mem_used_bytes: used_bytes,
            mem_available_bytes: MEM_TOTAL - used_bytes,
            buffers_bytes: GIB / 4,
            cached_bytes: GIB,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            open_fds: 2_000,
            max_fds: 1_000_000,
            threads: 300,
            instances,
        }
    }

    /// Instances past their start delay are running (and healthy).
    fn settle(&self, shared: &Shared, inner: &mut AgentInner) {
        for i in inner.instances.values_mut() {
            if i.status.state == InstanceState::Starting
                && i.started.elapsed() >= shared.start_delay
            {
                i.status.state = InstanceState::Running;
                i.status.healthy = true;
            }
        }
    }
}

fn boot_id(server: &str, booted_at_ms: u64) -> String {
    format!("swarm-{server}-{booted_at_ms}")
}

type Ctx = (Arc<AgentSim>, Arc<Shared>);

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let want = format!("Bearer {}", shared.token);
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

fn refuse(status: StatusCode, why: String) -> Response {
    (status, Json(serde_json::json!({ "error": why }))).into_response()
}

async fn state(State((a, s)): State<Ctx>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    s.state_requests.fetch_add(1, Ordering::Relaxed);
    let now = wall_ms();
    let mut inner = a.inner.lock().unwrap_or_else(|e| e.into_inner());
    a.settle(&s, &mut inner);
    let sample = a.reading(&s, &mut inner, now);
    let body = AgentState {
        server_id: a.server.clone(),
        agent_started_at_ms: inner.agent_started_at_ms,
        running_since_ms: inner.running_since_ms,
        epoch: inner.epoch,
        sample,
        boot_id: boot_id(&a.server, inner.booted_at_ms),
        instances: inner.instances.values().map(|i| i.status.clone()).collect(),
        crashes_total: 0,
        last_rejuvenation: inner.last_rejuvenation.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    drop(inner);
    Json(body).into_response()
}

async fn samples(State((_, s)): State<Ctx>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    // The swarm keeps no readings: a controller that starts judges from live ones.
    Json(Vec::<Sample>::new()).into_response()
}

/// Takes `epoch` if it is not older than the highest seen; `false` if it is.
fn take_epoch(inner: &mut AgentInner, epoch: u64) -> bool {
    if epoch < inner.epoch {
        return false;
    }
    inner.epoch = epoch;
    true
}

async fn start_instance(
    State((a, s)): State<Ctx>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Json(req): Json<StartInstance>,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let mut inner = a.inner.lock().unwrap_or_else(|e| e.into_inner());
    if !take_epoch(&mut inner, req.epoch) {
        return refuse(StatusCode::CONFLICT, "stale epoch".into());
    }
    if let Some(i) = inner.instances.get(&id) {
        return Json(i.status.clone()).into_response();
    }
    let port = inner.next_port;
    inner.next_port = if port >= a.ports[1] {
        a.ports[0]
    } else {
        port + 1
    };
    let status = InstanceStatus {
        id: id.clone(),
        service: req.service,
        addr: Some(SocketAddr::new(a.address, port)),
        pid: Some(1),
        state: InstanceState::Starting,
        healthy: false,
        started_at_ms: Some(wall_ms()),
        crashes: 0,
        last_exit: None,
        last_output: Vec::new(),
    };
    inner.instances.insert(
        id,
        Inst {
            status: status.clone(),
            started: std::time::Instant::now(),
        },
    );
    s.started.fetch_add(1, Ordering::Relaxed);
    Json(status).into_response()
}

#[derive(Deserialize)]
struct EpochQuery {
    epoch: u64,
}

async fn stop_instance(
    State((a, s)): State<Ctx>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<EpochQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let mut inner = a.inner.lock().unwrap_or_else(|e| e.into_inner());
    if !take_epoch(&mut inner, q.epoch) {
        return refuse(StatusCode::CONFLICT, "stale epoch".into());
    }
    let status = match inner.instances.remove(&id) {
        Some(mut i) => {
            s.stopped.fetch_add(1, Ordering::Relaxed);
            i.status.state = InstanceState::Stopped;
            i.status.healthy = false;
            i.status
        }
        None => InstanceStatus::absent(&id),
    };
    Json(status).into_response()
}

async fn no_state(headers: HeaderMap, State((_, s)): State<Ctx>) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    refuse(
        StatusCode::NOT_FOUND,
        "the swarm's services have no state to hand off".into(),
    )
}

async fn rejuvenate(
    State((a, s)): State<Ctx>,
    headers: HeaderMap,
    Json(req): Json<RejuvenateRequest>,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let now = wall_ms();
    let mut inner = a.inner.lock().unwrap_or_else(|e| e.into_inner());
    if !take_epoch(&mut inner, req.epoch) {
        return refuse(StatusCode::CONFLICT, "stale epoch".into());
    }
    if let Some(r) = inner.reports.get(&req.run_id) {
        return Json(r.clone()).into_response();
    }
    // How far the leak had gone when this run came (before its reset).
    let leaked = a.leak_start_ms(&s).map(|start| {
        let from = inner.leak_from_ms.unwrap_or(start).max(start);
        s.age_rate * now.saturating_sub(from) as f64 / 1000.0
    });
    let mut actions = Vec::with_capacity(req.actions.len());
    for action in &req.actions {
        let detail = match action {
            Action::StopInstances => {
                let keep: BTreeSet<&String> = req.keep_instances.iter().collect();
                let before = inner.instances.len();
                inner.instances.retain(|id, _| keep.contains(id));
                let n = before - inner.instances.len();
                s.stopped.fetch_add(n as u64, Ordering::Relaxed);
                inner.leak_from_ms = Some(now);
                inner.running_since_ms = now;
                format!("stopped {n} instances")
            }
            Action::RestartAgent => {
                inner.agent_started_at_ms = now;
                "agent restarted".to_string()
            }
            Action::RestartHost => {
                inner.agent_started_at_ms = now;
                inner.booted_at_ms = now;
                inner.instances.clear();
                "host restarted (simulated: a new boot id)".to_string()
            }
            other => format!("{other} (simulated)"),
        };
        actions.push(ActionReport {
            action: *action,
            outcome: ActionOutcome::Done,
            detail,
        });
    }
    let report = RejuvenationReport {
        boot_id: Some(boot_id(&a.server, inner.booted_at_ms)),
        run_id: req.run_id.clone(),
        started_at_ms: now,
        finished_at_ms: wall_ms(),
        actions,
    };
    inner.reports.insert(req.run_id, report.clone());
    inner.last_rejuvenation = Some(report.clone());
    drop(inner);
    s.rejuvenations.fetch_add(1, Ordering::Relaxed);
    if req.actions.contains(&Action::StopInstances) {
        let leaking = a.leak_start_ms(&s).is_some_and(|start| now >= start);
        let set = if leaking {
            &s.aged_rejuvenated
        } else {
            &s.rejuvenated_unaged
        };
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.server.clone());
        if leaking && leaked.is_some_and(|l| BASE_USED + 0.02 + l < RULE_USED) {
            s.rejuvenated_early
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(a.server.clone());
        }
    }
    Json(report).into_response()
}

fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/state", get(state))
        .route("/v1/samples", get(samples))
        .route(
            "/v1/instances/{id}",
            put(start_instance).delete(stop_instance),
        )
        .route("/v1/instances/{id}/state", get(no_state).put(no_state))
        .route("/v1/rejuvenate", post(rejuvenate))
        .with_state(ctx)
}

fn counts(shared: &Shared, agents: &[Arc<AgentSim>]) -> SwarmCounts {
    let now = wall_ms();
    let lock = |m: &Mutex<BTreeSet<String>>| {
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect::<Vec<_>>()
    };
    SwarmCounts {
        t_s: shared.origin.elapsed().as_secs_f64(),
        agents: agents.len(),
        state_requests: shared.state_requests.load(Ordering::Relaxed),
        instances_started: shared.started.load(Ordering::Relaxed),
        instances_stopped: shared.stopped.load(Ordering::Relaxed),
        aged_leaking: agents
            .iter()
            .filter(|a| a.leak_start_ms(shared).is_some_and(|s| now >= s))
            .count(),
        aged_rejuvenated: lock(&shared.aged_rejuvenated),
        rejuvenated_unaged: lock(&shared.rejuvenated_unaged),
        rejuvenations: shared.rejuvenations.load(Ordering::Relaxed),
        rejuvenated_early: shared
            .rejuvenated_early
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    }
}

/// Runs the swarm until SIGTERM or SIGINT.
pub fn run(args: SwarmArgs) -> anyhow::Result<i32> {
    let cfg: Config = crate::config_file::load_config(&args.config)?;
    let token = crate::config_file::read_token(&args.token_file)?;
    let to = args.to.unwrap_or(cfg.servers.len()).min(cfg.servers.len());
    anyhow::ensure!(
        args.from < to,
        "--from {} --to {to}: no server of {} in that range",
        args.from,
        args.config.display()
    );
    let aged: BTreeSet<&str> = args.aged.iter().map(String::as_str).collect();
    for id in &aged {
        anyhow::ensure!(
            cfg.server(id).is_some(),
            "--aged names {id}, which is not a server of {}",
            args.config.display()
        );
    }
    let origin_ms = wall_ms();
    let shared = Arc::new(Shared {
        token,
        origin: std::time::Instant::now(),
        origin_ms,
        age_after: args.age_after,
        age_rate: args.age_rate,
        start_delay: args.start_delay,
        state_requests: AtomicU64::new(0),
        started: AtomicU64::new(0),
        stopped: AtomicU64::new(0),
        rejuvenations: AtomicU64::new(0),
        aged_rejuvenated: Mutex::new(BTreeSet::new()),
        rejuvenated_unaged: Mutex::new(BTreeSet::new()),
        rejuvenated_early: Mutex::new(Vec::new()),
    });
    let agents: Vec<Arc<AgentSim>> = cfg.servers[args.from..to]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // A fleet that runs already: each server runs its configured instances when the
            // controller first looks (it adopts them), rather than a fleet started from
            // nothing, whose first minutes would be spent starting every instance.
            let mut next_port = s.port_range[0];
            let instances = s
                .instances
                .iter()
                .enumerate()
                .map(|(n, service)| {
                    let id = format!("{service}-{}-swarm-{}", s.id, n + 1);
                    let status = InstanceStatus {
                        id: id.clone(),
                        service: service.clone(),
                        addr: Some(SocketAddr::new(s.address, next_port)),
                        pid: Some(1),
                        state: InstanceState::Running,
                        healthy: true,
                        started_at_ms: Some(origin_ms),
                        crashes: 0,
                        last_exit: None,
                        last_output: Vec::new(),
                    };
                    next_port = next_port.saturating_add(1).min(s.port_range[1]);
                    let started = std::time::Instant::now();
                    (id, Inst { status, started })
                })
                .collect();
            Arc::new(AgentSim {
                server: s.id.clone(),
                address: s.address,
                ports: s.port_range,
                aged: aged.contains(s.id.as_str()),
                seed: mix((args.from + i) as u64 + 1),
                inner: Mutex::new(AgentInner {
                    agent_started_at_ms: origin_ms,
                    booted_at_ms: origin_ms,
                    running_since_ms: origin_ms,
                    epoch: 0,
                    leak_from_ms: None,
                    instances,
                    reports: BTreeMap::new(),
                    last_rejuvenation: None,
                    next_port,
                    readings: 0,
                }),
            })
        })
        .collect();
    let addrs: Vec<SocketAddr> = cfg.servers[args.from..to].iter().map(|s| s.agent).collect();
    // With `[tls]` each simulated agent serves HTTPS with its own certificate and, as a real
    // agent does, only to a controller of the fleet.
    let tls: Vec<Option<Arc<rejuv_net::tls::Tls>>> = cfg.servers[args.from..to]
        .iter()
        .map(|s| {
            cfg.tls_files(s.id.as_str())
                .map(|f| {
                    rejuv_net::tls::Tls::load(f)
                        .with_context(|| format!("the certificate of simulated agent {}", s.id))
                })
                .transpose()
        })
        .collect::<anyhow::Result<_>>()?;
    let limits = cfg.agent.listener_limits();
    // One worker: the swarm's share of the machine is measured, and the controller gets the
    // other core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = crate::signals::shutdown_on_signal();
        let mut listeners = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding a simulated agent on {addr}"))?;
            listeners.push(l);
        }
        for ((l, a), tls) in listeners.into_iter().zip(&agents).zip(tls) {
            let app = router((a.clone(), shared.clone()));
            let stop = shutdown.clone();
            let mut server = rejuv_net::Server::new(l, "simulated agent", limits);
            if let Some(tls) = tls {
                server = server.with_tls(tls, Some(rejuv_net::tls::Role::Controller));
            }
            tokio::spawn(server.serve_router(app, stop.cancelled_owned()));
        }
        let line = |c: &SwarmCounts| serde_json::to_string(c).unwrap_or_default();
        println!("{}", line(&counts(&shared, &agents)));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => println!("{}", line(&counts(&shared, &agents))),
            }
        }
        println!("{}", line(&counts(&shared, &agents)));
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_bounded_and_varies() {
        let v: Vec<f64> = (0..1000).map(|n| noise(7, n)).collect();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert_ne!(noise(7, 1), noise(8, 1));
    }
}
