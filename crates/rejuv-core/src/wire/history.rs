//! `GET /v1/servers/{id}/history`: the recent readings the controller holds for one server,
//! for the dashboard's charts and `rejuv export samples`.
//!
//! # Guarantees
//! Bounded: at most [`HISTORY_POINTS`] readings per server, one per [`HISTORY_SPACING_MS`] of
//! the agent's clock at most, none older than [`HISTORY_SPAN_MS`] before the newest (the last
//! hour). Memory only: a controller that starts leading has what its agents kept, then what
//! it polls.

use crate::types::ServerId;
use serde::{Deserialize, Serialize};

/// A reading is kept when it was taken at least this long after the last one kept.
pub const HISTORY_SPACING_MS: u64 = 5_000;
/// Readings older than this before the newest are dropped.
pub const HISTORY_SPAN_MS: u64 = 3_600_000;
/// The most readings kept per server.
pub const HISTORY_POINTS: usize = (HISTORY_SPAN_MS / HISTORY_SPACING_MS) as usize;

/// `GET /v1/servers/{id}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub id: ServerId,
    /// The controller's wall clock when it answered, ms (`export samples` counts `--since`
    /// back from it).
    pub now_ms: u64,
    /// What instance RSS is measured against: the server's `memory_budget_bytes`, else the
    /// host's total memory in its newest reading.
    pub memory_budget_bytes: Option<u64>,
    /// Oldest first, times strictly increasing.
    pub points: Vec<HistoryPoint>,
}

/// One reading, in the units the detector judges it in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// When the agent took it (its wall clock), ms.
    pub at_ms: u64,
    /// Summed RSS of the server's instances.
    pub instances_rss_bytes: u64,
    /// Host memory used, a fraction of the total (absent without a reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used: Option<f64>,
    /// Swap used, a fraction of the total swap (absent without swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_used: Option<f64>,
    /// Open fds, a fraction of the host's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<f64>,
    /// Host threads, a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<f64>,
    /// The slowest health check of its instances, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_latency_ms: Option<f64>,
}
