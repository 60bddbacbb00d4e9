//! The demo's end: let running workflows finish, count what the cluster holds, and the
//! summary (a line on stdout, and JSON with `--summary-json`).

use crate::demo::live::get;
use rejuv_core::api::AgentState;
use rejuv_core::cluster::Traffic;
use rejuv_core::wire::{Status, Workflow};
use rejuv_sample::service::CounterReply;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Debug)]
pub struct Summary {
    pub mode: String,
    pub duration_s: f64,
    pub requests_total: u64,
    pub requests_failed: u64,
    pub rejuvenations_completed: u64,
    pub rejuvenations_aborted: u64,
    pub crashes: u64,
    pub latency_ms: Latency,
    pub counter: Counter,
    pub workflows: Vec<Workflow>,
    /// How the demo's instances run: `process`, `docker` or `systemd`.
    pub backend: String,
    pub state_dir: PathBuf,
    pub store: String,
    pub controllers: u32,
    /// Broken invariants seen by the watcher outside the controllers (see [`crate::chaos`]).
    pub invariant_violations: u64,
    pub invariant_details: Vec<String>,
    /// Polls of the watcher that reached a leader (and the proxy): what the count rests on.
    pub invariant_polls: u64,
    /// Changes of leading controller after the first election.
    pub leader_changes: u64,
    /// etcd runs: SIGKILLs sent by chaos.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_kills: Option<u64>,
    /// etcd runs: controllers that exited on their own (a deposed leader) and were restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_exits: Option<u64>,
    /// etcd runs: per kill, milliseconds until another controller led.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handover_ms: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos_seed: Option<u64>,
    /// Chaos runs: faults injected, by kind (`controller-kill`, and with `--hosts docker`
    /// `host-kill`, `host-pause`, `host-partition`, `etcd-partition`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults_injected: Option<std::collections::BTreeMap<String, u64>>,
    /// Where the servers ran: `local` (this machine) or `docker` (host containers).
    pub hosts: String,
    /// Host restarts the controller saw (a server back with a new boot identity).
    pub host_restarts: u64,
    /// Whether the parts (controller, agents, proxy admin) talked mutual TLS among themselves.
    pub tls: bool,
}

#[derive(Serialize, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Serialize, Debug)]
pub struct Counter {
    pub expected: u64,
    pub actual: u64,
}

/// Pauses new workflows and waits (up to 40 s, or `shutdown`) until none runs, so no state is
/// mid-move when the demo counts.
pub async fn settle(
    api: &crate::demo::plan::Parts,
    controller: SocketAddr,
    token: &str,
    shutdown: &CancellationToken,
) {
    let _ = api
        .http
        .post(api.url(controller, "/v1/pause"))
        .bearer_auth(token)
        .send()
        .await;
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until && !shutdown.is_cancelled() {
        let url = api.url(controller, "/v1/status");
        let busy = get::<Status>(&api.http, url, token)
            .await
            .is_none_or(|s| !s.workflows.is_empty());
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of the counters of the instances that serve: what the POSTs added up to.
pub async fn counter_total(http: &reqwest::Client, status: &Status) -> u64 {
    let mut actual = 0u64;
    for s in &status.servers {
        for i in &s.instances {
            let Some(addr) = i.addr.filter(|_| i.traffic == Traffic::Serving) else {
                continue;
            };
            if let Ok(r) = http.get(format!("http://{addr}/counter")).send().await {
                if let Ok(v) = r.json::<CounterReply>().await {
                    actual += v.counter;
                }
            }
        }
    }
    actual
}

/// Unasked instance exits, as the agents count them.
pub async fn crashes_total(
    parts: &crate::demo::plan::Parts,
    agents: &[(String, SocketAddr)],
    token: &str,
) -> u64 {
    let mut crashes = 0u64;
    for (_, addr) in agents {
        let url = parts.url(*addr, "/v1/state");
        if let Some(state) = get::<AgentState>(&parts.http, url, token).await {
            crashes += state.crashes_total;
        }
    }
    crashes
}

/// The `summary:` line scripts read.
pub fn summary_line(summary: &Summary) -> String {
    let mut ha = String::new();
    if let (Some(k), Some(h)) = (summary.controller_kills, &summary.handover_ms) {
        ha = format!(
            " controller_kills={k} handover_ms_max={}",
            h.iter().max().copied().unwrap_or(0)
        );
    }
    format!(
        "summary: mode={} requests_total={} requests_failed={} rejuvenations_completed={} rejuvenations_aborted={} crashes={} latency_ms p50={:.1} p99={:.1} max={:.1} counter expected={} actual={} invariant_violations={} leader_changes={} host_restarts={}{ha}",
        summary.mode, summary.requests_total, summary.requests_failed, summary.rejuvenations_completed,
        summary.rejuvenations_aborted, summary.crashes, summary.latency_ms.p50, summary.latency_ms.p99,
        summary.latency_ms.max, summary.counter.expected, summary.counter.actual,
        summary.invariant_violations, summary.leader_changes, summary.host_restarts
    )
}
