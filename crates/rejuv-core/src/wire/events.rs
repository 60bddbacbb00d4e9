//! `GET /v1/events` and `GET /v1/workflows`: the event log and the finished workflows.

use crate::cluster::{LogEvent, Workflow};
use serde::{Deserialize, Serialize};

/// The query of `GET /v1/events`: the events after `after` (a sequence number), or else the
/// newest ones; at most `limit` (default 100, at most 1000).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

/// One event of the log with its sequence number, flat: `{"seq", "at_ms", "kind", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub event: LogEvent,
}

/// Running and finished workflows side by side (`rejuv workflows --output json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflows {
    /// The running workflows, as in the status.
    pub running: Vec<Workflow>,
    /// As `GET /v1/workflows` answers: newest first.
    pub finished: Vec<Workflow>,
}
