//! `GET /v1/servers/{id}/explain`: why a server is judged as it is.

use crate::cluster::{ServerState, Workflow};
use crate::detector::{Explanation, Level};
use crate::types::{Role, ServerId};
use serde::{Deserialize, Serialize};

/// `GET /v1/servers/{id}/explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explain {
    pub id: ServerId,
    pub role: Role,
    /// The whole state, tagged `state` (with its workflow or failure reason).
    pub state: ServerState,
    pub judgement: Level,
    /// The rule that fired now; `None` while stable, and while the server is being
    /// rejuvenated (its workflow keeps what started it).
    pub explanation: Option<Explanation>,
    pub blocked_reason: Option<String>,
    /// The running workflow this server is the source or the target of.
    pub workflow: Option<Workflow>,
    /// The newest finished workflow of this server kept in the state.
    pub last_workflow: Option<Workflow>,
}
