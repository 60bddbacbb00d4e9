//! The operator actions' requests and their answer.

use serde::{Deserialize, Serialize};

/// The query of `POST /v1/servers/{id}/rejuvenate`: `force=true` ignores the disruption
/// budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejuvenateQuery {
    #[serde(default)]
    pub force: bool,
}

/// The body of `POST /v1/servers/{id}/maintenance`: `{"on": true|false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub on: bool,
}

/// `202` to an operator action: the engine took it (it acts on its next step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub accepted: bool,
}
