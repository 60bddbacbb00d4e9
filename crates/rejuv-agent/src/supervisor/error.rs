//! What the supervisor can fail at: one variant per step.

use rejuv_core::api::InstanceState;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid instance id '{id}': use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    InvalidId { id: String },
    #[error("service '{service}' is not in this agent's catalog")]
    UnknownService { service: String },
    #[error("instance '{id}' already runs service '{running}', not '{requested}'")]
    Conflict {
        id: String,
        running: String,
        requested: String,
    },
    #[error("instance '{id}' is still stopping; retry")]
    Busy { id: String },
    #[error("no free port in {low}..={high} on {address} for instance '{id}'")]
    NoFreePort {
        id: String,
        address: std::net::IpAddr,
        low: u16,
        high: u16,
    },
    #[error("cannot start instance '{id}' ({command})")]
    Spawn {
        id: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start instance '{id}': {reason}")]
    Backend { id: String, reason: String },
    #[error("instance '{id}': processes {pids:?} survived SIGKILL")]
    StopIncomplete { id: String, pids: Vec<i32> },
    #[error("no instance '{id}' on this agent")]
    NotFound { id: String },
    #[error("instance '{id}' runs service '{service}', which has no state hand-off")]
    NoHandoff { id: String, service: String },
    #[error("instance '{id}' is {state:?}, not serving")]
    NotServing { id: String, state: InstanceState },
    #[error("state hand-off with instance '{id}' ({method} {url}) failed: {reason}")]
    Handoff {
        id: String,
        method: &'static str,
        url: String,
        reason: String,
    },
}
