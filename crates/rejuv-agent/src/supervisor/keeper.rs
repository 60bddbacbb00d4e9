//! The keeper: the one task that owns an instance's process, restarts it after a crash with
//! backoff, and carries out a stop.

use super::error::SupervisorError;
use super::instance::{Cmd, Instance};
use super::process::{describe_exit, health_loop, spawn_process, wall_ms};
use super::table::Supervisor;
use crate::cgroup;
use rejuv_core::api::InstanceState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::mpsc;
use tracing::Instrument;

/// First restart delay after a crash; doubles per crash up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A process that ran this long resets the backoff: its next crash is not part of a loop.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

impl Supervisor {
    pub(super) async fn record_crash(&self, inst: &Instance, what: String) {
        {
            let mut s = inst.lock();
            s.crashes += 1;
            s.state = InstanceState::Crashed;
            s.healthy = false;
            s.last_exit = Some(what.clone());
        }
        self.metrics.crashes.inc();
        tracing::warn!(exit = %what, "instance exited unasked");
        if let Err(e) = self.store.add_crash().await {
            tracing::error!(error = %e, "cannot persist the crash count");
        }
    }

    pub(super) fn respawn(&self, inst: &Instance) -> Result<Child, SupervisorError> {
        let child = spawn_process(
            &self.logs_dir,
            &inst.id,
            &inst.service,
            &inst.spec,
            inst.addr,
            inst.cgroup.as_deref(),
        )?;
        let mut s = inst.lock();
        s.pid = child.id();
        s.state = InstanceState::Starting;
        s.healthy = false;
        s.started_at_ms = Some(wall_ms());
        s.health_latency_ms = None;
        tracing::info!(pid = ?s.pid, "instance restarted");
        Ok(child)
    }
}

/// Where an instance's keeper is.
enum Phase {
    /// A process runs, started at `since`.
    Running { child: Child, since: Instant },
    /// Waiting `delay` before the next start.
    Backoff { delay: Duration },
}

/// Who to answer once a stop is done.
type Reply = tokio::sync::oneshot::Sender<Result<(), SupervisorError>>;

/// The one task that owns an instance's process: health checks, crash restarts, stop.
pub(super) async fn keeper(
    sup: Arc<Supervisor>,
    inst: Arc<Instance>,
    child: Child,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let (mut child, reply) = supervise(&sup, &inst, child, &mut rx).await;
    {
        let mut s = inst.lock();
        s.state = InstanceState::Stopping;
        s.healthy = false;
    }
    tracing::info!("stopping instance");
    let reply = stop_tree(&sup, &inst, child.as_mut(), reply, &mut rx).await;
    leave(&sup, &inst).await;
    if let Some(r) = reply {
        let _ = r.send(Ok(()));
    }
    // Answer stops that queued up behind this one.
    rx.close();
    while let Ok(Cmd::Stop { reply }) = rx.try_recv() {
        let _ = reply.send(Ok(()));
    }
}

/// Runs, health-checks and restarts the instance until a stop is asked; yields the live child
/// (if any) and who to answer.
async fn supervise(
    sup: &Arc<Supervisor>,
    inst: &Arc<Instance>,
    child: Child,
    rx: &mut mpsc::Receiver<Cmd>,
) -> (Option<Child>, Option<Reply>) {
    let mut phase = Phase::Running {
        child,
        since: Instant::now(),
    };
    let mut backoff = BACKOFF_MIN;
    let mut next_delay = |reset: bool| {
        if reset {
            backoff = BACKOFF_MIN;
        }
        let delay = backoff;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        Phase::Backoff { delay }
    };
    loop {
        phase = match phase {
            Phase::Running { mut child, since } => {
                let health =
                    tokio::spawn(health_loop(sup.http.clone(), inst.clone()).in_current_span());
                let outcome = tokio::select! {
                    status = child.wait() => Err(status),
                    cmd = rx.recv() => Ok(cmd),
                };
                health.abort();
                match outcome {
                    Ok(cmd) => return (Some(child), cmd.map(|Cmd::Stop { reply }| reply)),
                    Err(status) => {
                        let what = describe_exit(status);
                        // What the root left behind would hold the port or leak: end it first.
                        if let Err(pids) = sup.terminate(inst, None, Duration::ZERO).await {
                            tracing::error!(
                                ?pids,
                                "leftovers of a crashed instance survived SIGKILL"
                            );
                        }
                        inst.lock().pid = None;
                        sup.record_crash(inst, what).await;
                        next_delay(since.elapsed() >= BACKOFF_RESET_AFTER)
                    }
                }
            }
            Phase::Backoff { delay } => {
                tokio::select! {
                    cmd = rx.recv() => return (None, cmd.map(|Cmd::Stop { reply }| reply)),
                    _ = tokio::time::sleep(delay) => {}
                }
                match sup.respawn(inst) {
                    Ok(child) => Phase::Running {
                        child,
                        since: Instant::now(),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "restart failed");
                        inst.lock().last_exit = Some(format!("restart failed: {e}"));
                        next_delay(false)
                    }
                }
            }
        };
    }
}

/// Ends the whole tree; while members survive, says so to the asker and waits for the next
/// stop request. Returns who to answer (none if the channel closed).
async fn stop_tree(
    sup: &Supervisor,
    inst: &Instance,
    mut child: Option<&mut Child>,
    mut reply: Option<Reply>,
    rx: &mut mpsc::Receiver<Cmd>,
) -> Option<Reply> {
    loop {
        let result = sup
            .terminate(inst, child.as_deref_mut(), inst.spec.stop_grace)
            .await;
        match result {
            Ok(()) => {
                if let Some(c) = child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        inst.lock().last_exit =
                            Some(format!("stopped: {}", describe_exit(Ok(status))));
                    }
                }
                return reply;
            }
            Err(pids) => {
                let e = SupervisorError::StopIncomplete {
                    id: inst.id.clone(),
                    pids,
                };
                tracing::error!(error = %e, "stop incomplete; the instance stays in the table");
                inst.lock().last_exit = Some(e.to_string());
                if let Some(r) = reply.take() {
                    let _ = r.send(Err(e));
                }
                // Stay Stopping until asked again.
                match rx.recv().await {
                    Some(Cmd::Stop { reply: r }) => reply = Some(r),
                    None => return reply,
                }
            }
        }
    }
}

/// The tree is gone: its cgroup is removed and the instance leaves the table.
async fn leave(sup: &Supervisor, inst: &Arc<Instance>) {
    {
        let mut s = inst.lock();
        s.pid = None;
        s.known.clear();
    }
    if let Some(dir) = &inst.cgroup {
        cgroup::remove(dir).await;
    }
    {
        let mut table = sup.table();
        if table.get(&inst.id).is_some_and(|i| Arc::ptr_eq(i, inst)) {
            table.remove(&inst.id);
        }
    }
    inst.lock().state = InstanceState::Stopped;
    inst.gone.send_replace(true);
    tracing::info!("instance stopped");
}
