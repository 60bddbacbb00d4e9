//! JSON shapes spoken between the pieces: controller ⇄ agent, controller ⇄ builtin proxy.
//!
//! # Agent API (HTTP/JSON, `Authorization: Bearer <agent token>` on every route but `/healthz`)
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/healthz` | | `ok` (no token needed) |
//! | GET | `/v1/state` | | [`AgentState`] |
//! | GET | `/v1/samples?after_ms=T` | | the newest samples the agent kept ([`crate::types::Sample`] array, oldest first), those taken after `T` |
//! | PUT | `/v1/instances/{id}` | [`StartInstance`] | [`InstanceStatus`]; same id again changes nothing |
//! | DELETE | `/v1/instances/{id}?epoch=N` | | [`InstanceStatus`] once the whole tree has ended; an unknown id answers `state = "absent"` |
//! | GET | `/v1/instances/{id}/state` | | the instance's exported state (its `handoff.export`), bytes |
//! | PUT | `/v1/instances/{id}/state?epoch=N` | bytes | 204 once the instance imported it (`handoff.import`) |
//! | POST | `/v1/rejuvenate` | [`RejuvenateRequest`] | [`RejuvenationReport`]; the same `run_id` again returns the stored report |
//! | GET | `/metrics` | | Prometheus text |
//!
//! Every mutating request carries the controller's epoch; an agent persists the highest it has
//! seen and answers `409` with [`ApiError`] to a lower one. Errors are [`ApiError`] with a
//! 4xx/5xx status.
//!
//! # Builtin proxy admin API (`Authorization: Bearer <api token>`)
//! | method | path | body | answer |
//! |---|---|---|---|
//! | PUT | `/v1/routes` | [`RouteTable`] | [`ProxyStatus`] |
//! | GET | `/v1/status` | | [`ProxyStatus`] |
//! | GET | `/healthz` | | `ok` |

use crate::config::Action;
use crate::types::{InstanceId, Sample, ServerId, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Error body of every API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `GET /v1/state` of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub server_id: ServerId,
    /// Wall-clock ms when this agent process started.
    pub agent_started_at_ms: u64,
    /// Wall-clock ms the running time counts from (first start, or last rejuvenation).
    pub running_since_ms: u64,
    /// Highest controller epoch this agent has accepted.
    pub epoch: u64,
    /// Newest sample.
    pub sample: Sample,
    pub instances: Vec<InstanceStatus>,
    /// Exits of instances that nobody asked for, since the agent's data dir was created.
    pub crashes_total: u64,
    pub last_rejuvenation: Option<RejuvenationReport>,
    pub version: String,
    /// The host's boot identity: it changes when the host restarts, and only then (the
    /// kernel's boot id, and inside a container the container's start too; see the agent's
    /// `host` module). Empty from an agent that does not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

/// `PUT /v1/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartInstance {
    pub epoch: u64,
    /// A service from the agent's own catalog: the controller names a service, never a command.
    pub service: ServiceName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Process started, health not yet passing.
    Starting,
    /// Health check passing.
    Running,
    /// Health check failing after having passed.
    Unhealthy,
    /// Exited unasked; the agent restarts it after a backoff.
    Crashed,
    Stopping,
    Stopped,
    /// The agent has never heard of this id.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: InstanceId,
    pub service: ServiceName,
    /// Address and port the instance serves on.
    pub addr: Option<SocketAddr>,
    pub pid: Option<u32>,
    pub state: InstanceState,
    pub healthy: bool,
    /// Wall-clock ms the current process of the instance started.
    pub started_at_ms: Option<u64>,
    /// Times this instance exited unasked.
    pub crashes: u32,
    pub last_exit: Option<String>,
    /// The last lines of its output when it last exited unasked (from its log file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_output: Vec<String>,
}

impl InstanceStatus {
    /// What an agent says of an id it does not know: already stopped.
    pub fn absent(id: &str) -> Self {
        Self {
            id: id.into(),
            service: String::new(),
            addr: None,
            pid: None,
            state: InstanceState::Absent,
            healthy: false,
            started_at_ms: None,
            crashes: 0,
            last_exit: None,
            last_output: Vec::new(),
        }
    }
}

/// A piece of an instance's output (`GET /v1/instances/{id}/logs` of the agent and of the
/// controller): the bytes from `offset` to `next`; `size` is the log's length now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub offset: u64,
    pub next: u64,
    pub size: u64,
    pub text: String,
}

/// `POST /v1/rejuvenate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejuvenateRequest {
    pub epoch: u64,
    /// Makes a retry harmless: a run id already carried out returns its stored report.
    pub run_id: String,
    pub actions: Vec<Action>,
    /// Instances `stop-instances` leaves running (an in-place rejuvenation's copies, which
    /// serve meanwhile). At most [`MAX_KEEP`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_instances: Vec<crate::types::InstanceId>,
}

/// Most instances a rejuvenation may be asked to keep running.
pub const MAX_KEEP: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionOutcome {
    Done,
    /// Not enabled on this agent, or nothing to do; `detail` says which.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionReport {
    pub action: Action,
    pub outcome: ActionOutcome,
    /// What was done, or why not (for a failed command, its stderr).
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejuvenationReport {
    pub run_id: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub actions: Vec<ActionReport>,
    /// The host's boot identity when the run began ([`AgentState::boot_id`]): after a
    /// `restart-host` that was done, the controller waits for another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl RejuvenationReport {
    pub fn failed(&self) -> Option<&ActionReport> {
        self.actions
            .iter()
            .find(|a| a.outcome == ActionOutcome::Failed)
    }

    /// Whether the run restarted its host (a `restart-host` action that was done).
    pub fn restarted_host(&self) -> bool {
        self.actions
            .iter()
            .any(|a| a.action == Action::RestartHost && a.outcome == ActionOutcome::Done)
    }
}

/// Whether the proxy may send new requests to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    /// Takes new requests.
    Serving,
    /// No new requests; in-flight ones finish.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub id: InstanceId,
    pub addr: SocketAddr,
    pub state: BackendState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoutes {
    pub backends: Vec<Backend>,
    /// While true, new requests wait (up to `max_hold_ms`) instead of being sent.
    #[serde(default)]
    pub hold: bool,
    /// Longest a request waits for a serving backend (or for a hold to end) before a 503.
    pub max_hold_ms: u64,
}

/// `PUT /v1/routes`: the whole desired table. Backends absent from it get no new requests and
/// are forgotten once their in-flight requests finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// The epoch of the controller that sent it (stamped by its traffic adapter; 0 in the
    /// cluster state and from controllers before epochs were sent). Tables are ordered by
    /// `(epoch, version)`: an older one than the one in force is ignored.
    #[serde(default)]
    pub epoch: u64,
    /// Increases with every change within an epoch.
    pub version: u64,
    pub services: BTreeMap<ServiceName, ServiceRoutes>,
}

/// Highest epoch or table version a controller can issue: the largest integer a JSON number
/// carries exactly. Anything above is not a controller's and is refused.
pub const MAX_EPOCH: u64 = 1 << 53;

/// Furthest an epoch may jump above the one in force (agents, the proxy). A controller takes
/// one epoch per start or leadership, so this is a million restarts (eleven days of one every
/// second) while the receiver was away; an epoch further ahead is not a controller's, and
/// taking it would lock every real controller out until an operator steps in.
pub const MAX_EPOCH_STEP: u64 = 1_000_000;

/// Whether `epoch` could be a controller's, for a receiver (agent, proxy) that holds
/// `in_force`: at most [`MAX_EPOCH`], and at most [`MAX_EPOCH_STEP`] above `in_force`.
pub fn epoch_is_plausible(epoch: u64, in_force: u64) -> bool {
    epoch <= MAX_EPOCH && epoch <= in_force.saturating_add(MAX_EPOCH_STEP)
}

impl RouteTable {
    /// A digest of what the table routes (services, backends, holds), without its epoch and
    /// version: two tables with the same digest send traffic the same way.
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(&self.services).unwrap_or_default();
        format!("{:016x}", crate::digest::fnv1a64(text.as_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: InstanceId,
    pub addr: SocketAddr,
    /// `None` once removed from the table but still finishing in-flight requests.
    pub state: Option<BackendState>,
    pub in_flight: u64,
    pub requests_total: u64,
    /// Requests this backend failed (connection errors, 5xx from the proxy's view).
    pub errors_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub listen: SocketAddr,
    pub backends: Vec<BackendStatus>,
    /// Requests waiting right now for a serving backend or for a hold to end.
    pub held: u64,
    pub requests_total: u64,
    /// Requests answered with an error by the proxy itself (no backend, upstream failure).
    pub failed_total: u64,
    /// The front-end listener's connections (absent from proxies before connection limits).
    #[serde(default)]
    pub connections: ConnectionCounts,
}

/// One listener's connections: open now, and closed by its bounds since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    pub open: u64,
    /// Accepted and closed at once: the listener was at its cap or the process near its file
    /// descriptor limit.
    pub refused_total: u64,
    /// Closed because the request head did not arrive within the header-read timeout.
    pub header_timeouts_total: u64,
    /// Closed because the client was silent for the idle timeout.
    pub idle_timeouts_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// Epoch and version of the table in force.
    #[serde(default)]
    pub epoch: u64,
    pub version: u64,
    /// [`RouteTable::digest`] of the table in force (empty from proxies before digests).
    #[serde(default)]
    pub digest: String,
    pub services: BTreeMap<ServiceName, ServiceStatus>,
    /// The admin API listener's connections (absent from proxies before connection limits).
    #[serde(default)]
    pub admin_connections: ConnectionCounts,
}

/// Header a service sets on a response to a request it did not apply (e.g. it already handed
/// its state off): the proxy may safely send that request to another backend.
pub const NOT_APPLIED_HEADER: &str = "x-rejuv-not-applied";
