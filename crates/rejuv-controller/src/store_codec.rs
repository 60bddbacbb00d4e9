//! What both store backends share: how the cluster state is written (a version and a
//! checksum over its JSON), how a finished workflow is filed, and the errors a store reports.
//!
//! [`crate::store`] (SQLite, and the `Store` both backends sit behind) and
//! [`crate::etcd_store`] use this module; it uses neither, so the two backends do not import
//! each other's internals.

use rejuv_core::cluster::{Cluster, Workflow};
pub(crate) use rejuv_core::digest::fnv1a64 as checksum;
#[cfg(feature = "etcd")]
use std::time::Duration;

/// Version of the persisted cluster JSON; bumped when its shape changes incompatibly.
pub const STATE_VERSION: i64 = 1;

/// What a store backend reports when it cannot read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store at {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("stored cluster state is corrupt: {0}")]
    Corrupt(String),
    #[error("stored cluster state has version {found}, this controller reads {expected}")]
    Version { found: i64, expected: i64 },
    #[error("encoding state")]
    Json(#[from] serde_json::Error),
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// What the etcd backend reports (inside [`StoreError::Etcd`] where a store call failed).
#[cfg(feature = "etcd")]
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot connect to etcd at {endpoints:?}")]
    Connect {
        endpoints: Vec<String>,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd: {what} failed")]
    Op {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd: {what} had no answer within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("fenced: the leader key is no longer ours (another controller leads); stepping down")]
    Fenced,
    #[error("this controller does not lead (or its lease lapsed): it writes nothing")]
    NotLeader,
    #[error("the etcd store needs tokio's multi-thread runtime")]
    Runtime,
    #[error("etcd value under {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
    #[error("the etcd lease was lost")]
    LeaseLost,
}

/// The state encoded as stored: versioned JSON and its checksum.
pub(crate) fn encode_checksum(json: &str) -> String {
    format!("{:016x}", checksum(json.as_bytes()))
}

/// Decodes a stored state after checking its version and checksum.
pub(crate) fn decode_state(version: i64, sum: &str, json: &str) -> Result<Cluster, StoreError> {
    if version != STATE_VERSION {
        return Err(StoreError::Version {
            found: version,
            expected: STATE_VERSION,
        });
    }
    if encode_checksum(json) != sum {
        return Err(StoreError::Corrupt("checksum mismatch".into()));
    }
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The outcome name a finished workflow is filed under.
pub(crate) fn outcome_name(w: &Workflow) -> Result<String, StoreError> {
    Ok(match &w.outcome {
        Some(o) => serde_json::to_value(o)?["outcome"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        None => "unknown".into(),
    })
}

/// Longest event message stored (bytes, before escaping): a message quotes reasons that came
/// from agents and hooks, which are clipped already; this is the last bound.
pub const MAX_EVENT_MESSAGE: usize = 2048;

/// An event message as both backends store it: clipped and with control characters escaped.
pub fn stored_message(message: &str) -> String {
    rejuv_core::text::clean(message, MAX_EVENT_MESSAGE)
}
