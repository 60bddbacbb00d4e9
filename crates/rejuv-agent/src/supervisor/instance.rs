//! One instance as the API and the collector see it: its fixed facts, a small shared status
//! behind a mutex, and the channel to its keeper.

use super::error::SupervisorError;
use crate::cgroup;
use crate::handover::RunRecord;
use crate::procfs::{ProcKey, ProcStat, TreeSeed};
use rejuv_core::api::{InstanceState, InstanceStatus};
use rejuv_core::config::ServiceConfig;
use rejuv_core::types::{InstanceId, ServiceName};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

/// Instance ids become file and cgroup names: keep them to a safe alphabet.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How long an instance's health must pass without a break before its crash count resets.
pub const CRASHES_FORGIVEN_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What the API and the collector read about an instance.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) state: InstanceState,
    pub(super) healthy: bool,
    /// Root of the current process (also its process-group id); `None` between processes.
    pub(super) pid: Option<u32>,
    pub(super) started_at_ms: Option<u64>,
    pub(super) crashes: u32,
    pub(super) last_exit: Option<String>,
    /// The last lines of its output when it last exited unasked.
    pub(super) last_output: Vec<String>,
    /// Since when its health has passed without a break (its crash count is forgiven after
    /// [`CRASHES_FORGIVEN_AFTER`] of it).
    pub(super) healthy_since: Option<std::time::Instant>,
    pub(super) health_latency_ms: Option<f64>,
    /// Tree members seen at the last scan.
    pub(super) known: HashSet<ProcKey>,
    /// The cgroup of the current run where its backend made one (a container's).
    pub(super) run_cgroup: Option<PathBuf>,
}

pub(super) enum Cmd {
    Stop {
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    /// Leave the instance running and say how to find its current run again (an agent that
    /// exits handing its instances over); `None` between runs.
    Release {
        reply: oneshot::Sender<Option<RunRecord>>,
    },
}

pub struct Instance {
    pub id: InstanceId,
    pub service: ServiceName,
    pub spec: ServiceConfig,
    pub addr: SocketAddr,
    pub cgroup: Option<PathBuf>,
    pub(super) shared: Mutex<Shared>,
    pub(super) cmds: mpsc::Sender<Cmd>,
    /// Becomes true once the keeper has finished and the instance left the table.
    pub(super) gone: watch::Sender<bool>,
}

/// The per-instance view the collector needs.
#[derive(Debug, Clone)]
pub struct CollectView {
    pub seed: TreeSeed,
    pub health_latency_ms: Option<f64>,
    pub healthy: bool,
    pub state: InstanceState,
}

impl Instance {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("instance lock poisoned")
    }

    pub fn state(&self) -> InstanceState {
        self.lock().state
    }

    pub fn status(&self) -> InstanceStatus {
        let s = self.lock();
        InstanceStatus {
            id: self.id.clone(),
            service: self.service.clone(),
            addr: Some(self.addr),
            pid: s.pid,
            state: s.state,
            healthy: s.healthy,
            started_at_ms: s.started_at_ms,
            crashes: s.crashes,
            last_exit: s.last_exit.clone(),
            last_output: s.last_output.clone(),
        }
    }

    pub fn collect_view(&self) -> CollectView {
        let s = self.lock();
        CollectView {
            seed: TreeSeed {
                root: s.pid.map(|p| p as i32),
                cgroup_pids: s
                    .run_cgroup
                    .as_deref()
                    .or(self.cgroup.as_deref())
                    .map(cgroup::pids)
                    .unwrap_or_default(),
                known: s.known.clone(),
            },
            health_latency_ms: s.health_latency_ms,
            healthy: s.healthy,
            state: s.state,
        }
    }

    /// Replaces the remembered members with the ones just found (dead ones drop out).
    pub fn remember(&self, members: &[&ProcStat]) {
        self.lock().known = members.iter().map(|p| p.key()).collect();
    }

    pub(super) fn health_result(&self, ok: bool, latency_ms: Option<f64>) {
        let mut s = self.lock();
        if latency_ms.is_some() {
            s.health_latency_ms = latency_ms;
        }
        let before = s.state;
        if ok {
            let since = *s.healthy_since.get_or_insert_with(std::time::Instant::now);
            if s.crashes > 0 && since.elapsed() >= CRASHES_FORGIVEN_AFTER {
                // A healthy run ends the crash loop it came out of: its count starts over
                // (the last exit and its output stay for whoever looks).
                s.crashes = 0;
            }
        } else {
            s.healthy_since = None;
        }
        match (s.state, ok) {
            (InstanceState::Starting | InstanceState::Unhealthy | InstanceState::Running, true) => {
                s.state = InstanceState::Running;
                s.healthy = true;
            }
            (InstanceState::Running, false) => {
                s.state = InstanceState::Unhealthy;
                s.healthy = false;
            }
            (InstanceState::Starting | InstanceState::Unhealthy, false) => s.healthy = false,
            // The process is gone or going: a late answer changes nothing.
            (
                InstanceState::Crashed
                | InstanceState::Stopping
                | InstanceState::Stopped
                | InstanceState::Absent,
                _,
            ) => {}
        }
        if s.state != before {
            tracing::info!(from = ?before, to = ?s.state, "instance health changed");
        }
    }
}
