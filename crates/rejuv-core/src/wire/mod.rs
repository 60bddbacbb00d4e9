//! The controller API's request and answer types, shared by the controller (which builds and
//! serializes them), the CLI, the demo and the invariant watcher (which read them), and the
//! dashboard (which reads the same JSON).
//!
//! Every route but `/healthz` needs `Authorization: Bearer <api token>`; an error of any route
//! is an [`ApiError`] with a 4xx/5xx status.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | GET | `/healthz` | | `ok` (no token needed) |
//! | GET | `/v1/status` | | [`Status`] |
//! | GET | `/v1/events` | [`EventsQuery`] | [`StoredEvent`] array, oldest first |
//! | GET | `/v1/workflows` | | finished [`Workflow`] array, newest first |
//! | GET | `/v1/servers/{id}/explain` | | [`Explain`]; `404` for an unknown server |
//! | GET | `/v1/servers/{id}/history` | | [`History`] (the last hour, bounded); `404` for an unknown server |
//! | POST | `/v1/servers/{id}/rejuvenate` | [`RejuvenateQuery`] | `202` [`Accepted`]; `409` refused |
//! | POST | `/v1/servers/{id}/maintenance` | [`MaintenanceRequest`] | `202` [`Accepted`]; `409` refused |
//! | POST | `/v1/pause`, `/v1/resume` | | `202` [`Accepted`] |
//! | POST | `/v1/join` | [`JoinRequest`] (join token, not the API token) | `202`/`200` [`JoinAnswer`]; `400` wrong facts; `409` taken id or address |
//! | GET | `/v1/servers/pending` | | [`PendingJoin`] array |
//! | POST | `/v1/servers/{id}/approve`, `/v1/servers/{id}/remove` | | [`ServersChanged`]; `404` unknown; `409` refused |
//! | GET | `/metrics` | | OpenMetrics text |
//!
//! [`Workflows`] is what `rejuv workflows --output json` prints: the running workflows of the
//! status beside the finished ones.
//!
//! The cluster's own types ([`crate::cluster::Workflow`], [`crate::cluster::LogEvent`], ...)
//! are embedded as they serialize in the stored state, so the API, the store and the
//! simulator's digests read the same names.

mod events;
mod explain;
mod history;
mod join;
mod operator;
mod status;

pub use crate::api::ApiError;
pub use crate::cluster::Workflow;
pub use events::{EventsQuery, StoredEvent, Workflows};
pub use explain::Explain;
pub use history::{History, HistoryPoint, HISTORY_POINTS, HISTORY_SPACING_MS, HISTORY_SPAN_MS};
pub use join::{JoinAnswer, JoinRequest, JoinState, PendingJoin, ServersChanged};
pub use operator::{Accepted, MaintenanceRequest, RejuvenateQuery};
pub use status::{InstanceView, ServerView, Status, StoreHealth};
