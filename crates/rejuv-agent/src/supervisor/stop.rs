//! Stopping: a stop request goes to the instance's keeper; ending a whole process tree (TERM,
//! the grace period, KILL, and a wait for every member to be gone).

use super::error::SupervisorError;
use super::instance::{Cmd, Instance};
use super::table::Supervisor;
use crate::procfs::{tree_members, ProcFs, ProcKey, ProcStat};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rejuv_core::api::{InstanceState, InstanceStatus};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::oneshot;

/// After SIGKILL, how long to wait for the tree to disappear before reporting survivors.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stopping tree is re-scanned.
const STOP_POLL: Duration = Duration::from_millis(25);

impl Supervisor {
    /// Stops an instance's whole tree. Unknown ids are already stopped (`Absent`).
    pub async fn stop(&self, id: &str) -> Result<InstanceStatus, SupervisorError> {
        let Some(inst) = self.get(id) else {
            return Ok(InstanceStatus::absent(id));
        };
        let (tx, rx) = oneshot::channel();
        if inst.cmds.send(Cmd::Stop { reply: tx }).await.is_ok() {
            // A dropped reply means the keeper finished with another stop: fine.
            if let Ok(Err(e)) = rx.await {
                return Err(e);
            }
        }
        let mut gone = inst.gone.subscribe();
        let _ = gone.wait_for(|g| *g).await;
        let mut status = inst.status();
        status.state = InstanceState::Stopped;
        status.pid = None;
        status.healthy = false;
        Ok(status)
    }

    /// Stops every instance, concurrently. Returns how many were stopped.
    pub async fn stop_all(self: &Arc<Self>) -> Result<usize, Vec<SupervisorError>> {
        self.stop_all_except(&[]).await
    }

    /// Stops every instance but those named in `keep`, concurrently. Returns how many were
    /// stopped.
    pub async fn stop_all_except(
        self: &Arc<Self>,
        keep: &[String],
    ) -> Result<usize, Vec<SupervisorError>> {
        let mut set = tokio::task::JoinSet::new();
        for inst in self.all().into_iter().filter(|i| !keep.contains(&i.id)) {
            let sup = self.clone();
            set.spawn(async move { sup.stop(&inst.id).await });
        }
        let (mut stopped, mut errors) = (0, Vec::new());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(_)) => stopped += 1,
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(SupervisorError::StopIncomplete {
                    id: format!("(stop task failed: {e})"),
                    pids: vec![],
                }),
            }
        }
        if errors.is_empty() {
            Ok(stopped)
        } else {
            Err(errors)
        }
    }

    /// The live members of an instance's tree, remembered for the next scan.
    pub(super) async fn scan_members(&self, inst: &Instance) -> Vec<ProcStat> {
        let table = tokio::task::spawn_blocking(|| ProcFs::default().processes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let seed = inst.collect_view().seed;
        let members = tree_members(&table, &seed, self.self_pid);
        inst.remember(&members);
        members.into_iter().cloned().collect()
    }

    /// Ends an instance's tree: SIGTERM to its process group and to every member outside it,
    /// then SIGKILL after `grace`; returns once no member is left, or the survivors after
    /// [`KILL_WAIT`] more.
    pub(super) async fn terminate(
        &self,
        inst: &Instance,
        mut child: Option<&mut Child>,
        grace: Duration,
    ) -> Result<(), Vec<i32>> {
        let pgid = inst.lock().pid.map(|p| p as i32);
        let begun = Instant::now();
        let mut signalled: HashSet<(ProcKey, bool)> = HashSet::new();
        let mut group_signalled = [false, false];
        loop {
            // Reaps the root once it exits; until then it shows as a zombie, not a member.
            let root_alive = match child.as_deref_mut() {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => false,
            };
            let members = self.scan_members(inst).await;
            if members.is_empty() && !root_alive {
                return Ok(());
            }
            let killing = begun.elapsed() >= grace;
            let sig = if killing {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            if let Some(pg) = pgid {
                // Only while the group demonstrably exists: an empty group's id could be reused.
                let group_alive = root_alive || members.iter().any(|m| m.pgrp == pg);
                if group_alive && !group_signalled[killing as usize] {
                    group_signalled[killing as usize] = true;
                    let _ = killpg(Pid::from_raw(pg), sig);
                }
            }
            for m in &members {
                if signalled.insert((m.key(), killing)) {
                    let _ = kill(Pid::from_raw(m.pid), sig);
                }
            }
            if begun.elapsed() >= grace + KILL_WAIT {
                return Err(members.iter().map(|m| m.pid).collect());
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }
}
