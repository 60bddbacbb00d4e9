//! `GET /v1/status`: the cluster as the leader sees it, one row per server.

use crate::api::RouteTable;
use crate::cluster::{Traffic, Workflow};
use crate::detector::{Explanation, Level};
use crate::types::{InstanceId, Mode, Role, ServerId, ServiceName};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `cluster.name` of the config.
    pub cluster: String,
    pub mode: Mode,
    /// The leader's fencing term.
    pub epoch: u64,
    /// New workflows wait (`rejuv pause`).
    pub paused: bool,
    /// Capacity units of the primaries on the list whose agents answer, sources of running
    /// workflows not counted.
    pub available_capacity: u32,
    pub servers: Vec<ServerView>,
    /// Running workflows.
    pub workflows: Vec<Workflow>,
    /// The latest finished workflows kept in the state, oldest first.
    pub history: Vec<Workflow>,
    /// The route table the traffic adapter reconciles to.
    pub routes: RouteTable,
    pub completed_total: u64,
    pub rolled_back_total: u64,
    pub failed_total: u64,
    pub store: StoreHealth,
}

/// One server of [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    pub id: ServerId,
    pub role: Role,
    /// The state's name: `in-service`, `rejuvenating`, `failed`, or `maintenance` (off the
    /// list because an operator put it in maintenance; the whole state, with its workflow or
    /// reason, is in the explain answer).
    pub state: String,
    pub on_list: bool,
    pub maintenance: bool,
    /// The last poll reached its agent.
    pub reachable: bool,
    pub judgement: Level,
    pub explanation: Option<Explanation>,
    /// Why the last attempt to plan for this server found nothing.
    pub blocked_reason: Option<String>,
    pub capacity: u32,
    /// The workflow that reserved this server as its target.
    pub reserved_by: Option<u64>,
    /// From the last reachable observation.
    pub running_time_s: Option<f64>,
    pub load1: Option<f64>,
    /// Sum of the RSS of its instances, from the latest sample (0 without one).
    pub instances_rss_bytes: u64,
    /// `memory_budget_bytes` of the server's config entry.
    pub memory_budget_bytes: Option<u64>,
    /// Unasked exits of its instances, as its agent counts them.
    pub crashes_total: u64,
    pub instances: Vec<InstanceView>,
    /// No longer in the config: its instances move off it, then it is forgotten.
    #[serde(default)]
    pub removing: bool,
    /// An operator's request that waits for its workflow to start (`rejuv cancel SERVER`
    /// withdraws it); `blocked_reason` says what it waits for.
    #[serde(default)]
    pub queued_request: Option<String>,
}

/// One instance of a [`ServerView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: InstanceId,
    pub service: ServiceName,
    pub addr: Option<SocketAddr>,
    pub healthy: bool,
    pub traffic: Traffic,
    /// From the latest sample.
    pub rss_bytes: Option<u64>,
    /// Times it exited unasked and its agent restarted it (reset after a healthy run).
    #[serde(default)]
    pub restarts: u32,
    /// How it last ended (its exit status or signal), as its agent saw it.
    #[serde(default)]
    pub last_exit: Option<String>,
}

/// How the store has been taking the leader's commits: while it refuses them the controller
/// acts on nothing (fail closed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// Commits refused or failed since this controller started.
    pub commit_failures_total: u64,
    /// Wall-clock time (ms) of the first failure of the current run of failures; `None` while
    /// commits succeed.
    pub failing_since_ms: Option<u64>,
    /// The last failure, as the store said it.
    pub last_error: Option<String>,
}
