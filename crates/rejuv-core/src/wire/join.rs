//! Joining: what an agent sends to `POST /v1/join` ([`JoinRequest`]) and is answered
//! ([`JoinAnswer`]), the requests waiting for an operator (`GET /v1/servers/pending`), and
//! what approving or removing a server changed ([`ServersChanged`]).

pub use crate::config::JoinRequest;
use serde::{Deserialize, Serialize};

/// Where a join request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinState {
    /// Waiting for an operator (`rejuv server approve ID`); the agent asks again meanwhile.
    Pending,
    /// The server is in the cluster.
    Joined,
}

/// The answer to `POST /v1/join`: `202` pending, `200` joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub state: JoinState,
    /// What happens next, for the agent's log.
    pub message: String,
}

/// A join request waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoin {
    pub request: JoinRequest,
    /// The address the request came from.
    pub from: String,
    /// Wall time (ms) of the first request.
    pub requested_at_ms: u64,
    /// Wall time (ms) the agent last asked.
    pub last_asked_at_ms: u64,
}

/// The answer to approving or removing a server: what changed in the cluster, one line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServersChanged {
    pub changes: Vec<String>,
}
