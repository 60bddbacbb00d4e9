//! The keeper: the one task that owns an instance's process, restarts it after a crash with
//! backoff, and carries out a stop.

use super::error::SupervisorError;
use super::instance::{Cmd, Instance};
use super::process::{describe_exit, health_loop, wall_ms};
use super::run::Run;
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
        let output = super::output::tail_lines(&self.log_path(&inst.id), super::output::TAIL_LINES);
        {
            let mut s = inst.lock();
            s.crashes += 1;
            s.state = InstanceState::Crashed;
            s.healthy = false;
            s.healthy_since = None;
            s.last_exit = Some(what.clone());
            s.last_output = output;
        }
        self.metrics.crashes.inc();
        tracing::warn!(exit = %what, "instance exited unasked");
        if let Err(e) = self.store.add_crash().await {
            tracing::error!(error = %e, "cannot persist the crash count");
        }
    }

    /// Starts the next run of `inst` (after a crash, or a container's first).
    pub(super) async fn respawn(&self, inst: &Instance) -> Result<Run, SupervisorError> {
        let (run, pid, cgroup) = self.start_run(inst).await?;
        let mut s = inst.lock();
        s.pid = pid;
        s.run_cgroup = cgroup;
        s.state = InstanceState::Starting;
        s.healthy = false;
        s.started_at_ms = Some(wall_ms());
        s.health_latency_ms = None;
        tracing::info!(pid = ?s.pid, "instance run started");
        Ok(run)
    }
}

/// Where an instance's keeper is.
enum Phase {
    /// A run is under way, started at `since`.
    Running { run: Run, since: Instant },
    /// Waiting `delay` before the next start.
    Backoff { delay: Duration },
}

/// Who to answer once a stop is done.
type Reply = tokio::sync::oneshot::Sender<Result<(), SupervisorError>>;

/// The one task that owns an instance's process: health checks, crash restarts, stop.
pub(super) async fn keeper(
    sup: Arc<Supervisor>,
    inst: Arc<Instance>,
    run: Option<Run>,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let (mut run, cmd) = supervise(&sup, &inst, run, &mut rx).await;
    let reply = match cmd {
        Some(Cmd::Release { reply }) => {
            let record = run.as_ref().and_then(|r| sup.run_record(&inst, r));
            tracing::info!(?record, "instance left running for the next agent");
            let _ = reply.send(record);
            return;
        }
        Some(Cmd::Stop { reply }) => Some(reply),
        None => None,
    };
    {
        let mut s = inst.lock();
        s.state = InstanceState::Stopping;
        s.healthy = false;
    }
    tracing::info!("stopping instance");
    let reply = match run.as_mut() {
        Some(Run::Container { id }) => {
            let id = id.clone();
            stop_container_run(&sup, &inst, &id, reply).await
        }
        Some(Run::Unit { name, .. }) => {
            let name = name.clone();
            stop_unit_run(&sup, &inst, &name, reply).await
        }
        Some(Run::Process(child)) => stop_tree(&sup, &inst, Some(child), reply, &mut rx).await,
        Some(Run::Adopted { .. }) | None => stop_tree(&sup, &inst, None, reply, &mut rx).await,
    };
    leave(&sup, &inst).await;
    if let Some(r) = reply {
        let _ = r.send(Ok(()));
    }
    // Answer stops that queued up behind this one.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Cmd::Stop { reply } => {
                let _ = reply.send(Ok(()));
            }
            // Stopped: nothing is left to hand over.
            Cmd::Release { reply } => drop(reply),
        }
    }
}

/// Runs, health-checks and restarts the instance until a stop or a release is asked; yields
/// the live run (if any) and the command (none if the channel closed). Without a first run (a
/// container, a unit), it starts one at once.
async fn supervise(
    sup: &Arc<Supervisor>,
    inst: &Arc<Instance>,
    run: Option<Run>,
    rx: &mut mpsc::Receiver<Cmd>,
) -> (Option<Run>, Option<Cmd>) {
    let mut phase = match run {
        Some(run) => Phase::Running {
            run,
            since: Instant::now(),
        },
        None => Phase::Backoff {
            delay: Duration::ZERO,
        },
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
            Phase::Running { mut run, since } => {
                let health =
                    tokio::spawn(health_loop(sup.http.clone(), inst.clone()).in_current_span());
                let outcome = tokio::select! {
                    what = sup.wait_run(&mut run) => Err(what),
                    cmd = rx.recv() => Ok(cmd),
                };
                health.abort();
                match outcome {
                    Ok(cmd) => return (Some(run), cmd),
                    Err(what) => {
                        // What the root left behind would hold the port or leak: end it first.
                        match &run {
                            Run::Process(_) | Run::Adopted { .. } => {
                                if let Err(pids) = sup.terminate(inst, None, Duration::ZERO).await {
                                    tracing::error!(
                                        ?pids,
                                        "leftovers of a crashed instance survived SIGKILL"
                                    );
                                }
                            }
                            Run::Container { id } => {
                                if let Err(e) = sup.stop_container(id, Duration::ZERO).await {
                                    tracing::error!(error = %e, "cannot remove the ended container");
                                }
                            }
                            Run::Unit { name, .. } => {
                                if let Err(e) = sup.stop_unit(name, Duration::ZERO).await {
                                    tracing::error!(error = %e, "cannot clean up the ended unit");
                                }
                            }
                        }
                        inst.lock().pid = None;
                        sup.record_crash(inst, what).await;
                        next_delay(since.elapsed() >= BACKOFF_RESET_AFTER)
                    }
                }
            }
            Phase::Backoff { delay } => {
                tokio::select! {
                    cmd = rx.recv() => return (None, cmd),
                    _ = tokio::time::sleep(delay) => {}
                }
                match sup.respawn(inst).await {
                    Ok(run) => Phase::Running {
                        run,
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
                loop {
                    match rx.recv().await {
                        Some(Cmd::Stop { reply: r }) => {
                            reply = Some(r);
                            break;
                        }
                        // Being stopped: nothing to hand over.
                        Some(Cmd::Release { reply: r }) => drop(r),
                        None => return reply,
                    }
                }
            }
        }
    }
}

/// Ends a container run: the Engine's stop with the service's grace, then removal.
async fn stop_container_run(
    sup: &Supervisor,
    inst: &Instance,
    id: &str,
    reply: Option<Reply>,
) -> Option<Reply> {
    match sup.stop_container(id, inst.spec.stop_grace).await {
        Ok(()) => {
            inst.lock().last_exit = Some("stopped: container removed".into());
            reply
        }
        Err(e) => {
            let e = SupervisorError::Backend {
                id: inst.id.clone(),
                reason: format!("stopping its container: {e}"),
            };
            inst.lock().last_exit = Some(e.to_string());
            if let Some(r) = reply {
                let _ = r.send(Err(e));
            }
            None
        }
    }
}

/// Ends a unit run: systemd's stop (the unit's own stop, SIGKILL after the service's grace).
async fn stop_unit_run(
    sup: &Supervisor,
    inst: &Instance,
    name: &str,
    reply: Option<Reply>,
) -> Option<Reply> {
    match sup.stop_unit(name, inst.spec.stop_grace).await {
        Ok(()) => {
            inst.lock().last_exit = Some(format!("stopped: unit {name} stopped"));
            reply
        }
        Err(e) => {
            let e = SupervisorError::Backend {
                id: inst.id.clone(),
                reason: format!("stopping unit {name}: {e}"),
            };
            inst.lock().last_exit = Some(e.to_string());
            if let Some(r) = reply {
                let _ = r.send(Err(e));
            }
            None
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
        // An adopted instance's cgroup sits in its first agent's directory: that goes with
        // its last instance.
        if let (Some(parent), Some(c)) = (dir.parent(), sup.cgroups()) {
            if parent != c.base() {
                let _ = std::fs::remove_dir(parent);
            }
        }
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
