//! Vocabulary types shared by every piece: identifiers, roles, modes and samples.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A server's id as written in the config (`[[servers]] id = "..."`).
pub type ServerId = String;
/// A service's name in the catalog.
pub type ServiceName = String;
/// One running copy of a service on one server, e.g. `web-s2-7`.
pub type InstanceId = String;

/// How the cluster uses its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Spares run nothing and wait to take over an unstable primary.
    ActiveStandby,
    /// Every server is a primary; one with spare capacity takes over another's instances.
    ActiveActive,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::ActiveStandby => "active-standby",
            Mode::ActiveActive => "active-active",
        })
    }
}

/// A server's role on the available server list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    Spare,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Spare => "spare",
        })
    }
}

/// One reading of a server's state, as an agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall-clock milliseconds when the agent took the reading.
    pub taken_at_ms: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    /// Seconds since the server was last rejuvenated (or its agent first started).
    pub running_time_s: f64,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub mem_available_bytes: u64,
    pub buffers_bytes: u64,
    pub cached_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    /// Open file descriptors, host-wide (`/proc/sys/fs/file-nr`).
    pub open_fds: u64,
    /// Host-wide fd limit (`/proc/sys/fs/file-max`).
    pub max_fds: u64,
    /// Threads, host-wide.
    pub threads: u64,
    /// Per instance readings, keyed by instance id.
    pub instances: BTreeMap<InstanceId, InstanceSample>,
}

/// One reading of one instance: its whole process tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceSample {
    pub rss_bytes: u64,
    /// CPU seconds used by the tree since it started.
    pub cpu_seconds: f64,
    pub fds: u64,
    pub threads: u64,
    pub processes: u64,
    /// Latency of the last health check in milliseconds, if one ran.
    pub health_latency_ms: Option<f64>,
    pub healthy: bool,
    /// The instance's own memory limit (its service's `memory_limit`), where it has one: the
    /// `instance-rss` rule measures against it instead of a share of the server's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
}
