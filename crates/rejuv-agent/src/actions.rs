//! Rejuvenation: the agent's fixed set of actions, run in the order the controller asks.
//!
//! # Guarantees
//! - Idempotent by `run_id`: a run id already carried out returns its stored report and runs
//!   nothing (reports survive agent restarts, see [`crate::persist`]).
//! - One run at a time.
//! - Actions run in order; after a failed action the rest are reported `Skipped` (escalating
//!   further on a server in an unknown state does more harm than good, and the controller
//!   decides what to do with a failed run).
//! - When every action succeeded, the running time starts again at the finish time.
//! - Host-wide actions (drop-caches, compact-memory, restart-host) run only where
//!   `agent.host_actions` enables them. Where `/proc/sys` is read-only (a container without
//!   privileges) drop-caches and compact-memory are skipped, saying so.
//! - `restart-host` runs `agent.restart_command` and waits for it: a command that schedules
//!   the restart and returns (`systemctl reboot`; in a container host, `kill -TERM 1`, which
//!   ends the container for its restart policy to start again) lets this run's report be
//!   stored and answered first. The controller then waits for a new boot identity.

use crate::scratch::{self, Cleared};
use crate::shared::Agent;
use rejuv_core::api::{ActionOutcome, ActionReport, RejuvenateRequest, RejuvenationReport};
use rejuv_core::config::Action;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest a `restart_command` may run before it counts as failed.
const RESTART_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Stderr kept in a report.
const STDERR_KEPT: usize = 4096;

fn report(action: Action, outcome: ActionOutcome, detail: impl Into<String>) -> ActionReport {
    ActionReport {
        action,
        outcome,
        detail: detail.into(),
    }
}

/// Runs (or replays) a rejuvenation. The caller has already checked the epoch.
pub async fn rejuvenate(
    agent: &Agent,
    req: RejuvenateRequest,
) -> Result<RejuvenationReport, crate::persist::StoreError> {
    let _one_at_a_time = agent.rejuvenation_lock.lock().await;
    if let Some(done) = agent.store.report(&req.run_id).await {
        tracing::info!(run_id = %req.run_id, "rejuvenation already carried out: replaying its report");
        return Ok(done);
    }
    let started_at_ms = crate::shared::wall_ms();
    tracing::info!(run_id = %req.run_id, actions = ?req.actions, "rejuvenation begins");
    let mut actions = Vec::with_capacity(req.actions.len());
    let mut failed: Option<Action> = None;
    for &action in &req.actions {
        let r = match failed {
            Some(f) => report(
                action,
                ActionOutcome::Skipped,
                format!("not run: {f} failed before it"),
            ),
            None => run_action(agent, action, &req.keep_instances).await,
        };
        tracing::info!(%action, outcome = ?r.outcome, detail = %r.detail, "rejuvenation action");
        if r.outcome == ActionOutcome::Failed && failed.is_none() {
            failed = Some(action);
        }
        actions.push(r);
    }
    let finished_at_ms = crate::shared::wall_ms();
    let done = RejuvenationReport {
        run_id: req.run_id,
        started_at_ms,
        finished_at_ms,
        actions,
        boot_id: (!agent.boot_id.is_empty()).then(|| agent.boot_id.clone()),
    };
    let completed = failed.is_none();
    agent
        .store
        .finish_run(done.clone(), completed.then_some(finished_at_ms))
        .await?;
    agent.metrics.rejuvenation(!completed);
    tracing::info!(run_id = %done.run_id, completed, "rejuvenation finished");
    Ok(done)
}

async fn run_action(agent: &Agent, action: Action, keep: &[String]) -> ActionReport {
    let host = agent.config.agent.host_actions;
    let not_enabled = || {
        report(
            action,
            ActionOutcome::Skipped,
            "host-wide actions are not enabled on this agent (agent.host_actions = false)",
        )
    };
    match action {
        Action::StopInstances => stop_instances(agent, action, keep).await,
        Action::ClearScratch => clear_scratch(agent).await,
        Action::DropCaches if !host => not_enabled(),
        Action::DropCaches => {
            let r = tokio::task::spawn_blocking(|| {
                // Dirty pages cannot be dropped: write them out first.
                nix::unistd::sync();
                std::fs::write("/proc/sys/vm/drop_caches", "3")
            })
            .await;
            match r {
                Ok(Ok(())) => report(
                    action,
                    ActionOutcome::Done,
                    "synced, then dropped page cache, dentries and inodes",
                ),
                Ok(Err(e)) if crate::host::is_read_only(&e) => {
                    in_a_container(action, "drop_caches")
                }
                Ok(Err(e)) => report(
                    action,
                    ActionOutcome::Failed,
                    format!("writing /proc/sys/vm/drop_caches: {e}"),
                ),
                Err(e) => report(action, ActionOutcome::Failed, format!("task failed: {e}")),
            }
        }
        Action::CompactMemory if !host => not_enabled(),
        Action::CompactMemory => match tokio::fs::write("/proc/sys/vm/compact_memory", "1").await {
            Ok(()) => report(action, ActionOutcome::Done, "memory compacted"),
            Err(e) if crate::host::is_read_only(&e) => in_a_container(action, "compact_memory"),
            Err(e) => report(
                action,
                ActionOutcome::Failed,
                format!("writing /proc/sys/vm/compact_memory: {e}"),
            ),
        },
        Action::RestartAgent => {
            if let Err(r) = stop_all(agent, action).await {
                return r;
            }
            let now = crate::shared::wall_ms();
            if let Err(e) = agent.store.set_running_since(now).await {
                return report(
                    action,
                    ActionOutcome::Failed,
                    format!("cannot persist the new running-time origin: {e}"),
                );
            }
            agent.restart_requested.store(true, Ordering::SeqCst);
            // The server stops taking requests; this one's answer is still written in full.
            agent.stop_serving.cancel();
            report(
                action,
                ActionOutcome::Done,
                "instances stopped; running time reset; the agent re-executes after this answer",
            )
        }
        Action::RestartHost if !host => not_enabled(),
        Action::RestartHost => restart_host(agent, action).await,
    }
}

/// A host-wide kernel tunable the host cannot write: `/proc/sys` is read-only, as in a
/// container without privileges. Not a failure of the run: the machine's kernel is not this
/// host's to tune.
fn in_a_container(action: Action, tunable: &str) -> ActionReport {
    report(
        action,
        ActionOutcome::Skipped,
        format!(
            "/proc/sys/vm/{tunable} is read-only here (a container without privileges): the machine's kernel is not this host's to tune"
        ),
    )
}

async fn stop_all(agent: &Agent, action: Action) -> Result<usize, ActionReport> {
    stop_all_but(agent, action, &[]).await
}

async fn stop_all_but(
    agent: &Agent,
    action: Action,
    keep: &[String],
) -> Result<usize, ActionReport> {
    agent.sup.stop_all_except(keep).await.map_err(|errors| {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        report(action, ActionOutcome::Failed, text.join("; "))
    })
}

async fn stop_instances(agent: &Agent, action: Action, keep: &[String]) -> ActionReport {
    let kept = if keep.is_empty() {
        String::new()
    } else {
        format!("; kept {} (in place: they serve)", keep.join(", "))
    };
    match stop_all_but(agent, action, keep).await {
        Ok(0) => report(
            action,
            ActionOutcome::Done,
            format!("no instances were running{kept}"),
        ),
        Ok(n) => report(
            action,
            ActionOutcome::Done,
            format!("stopped {n} instance(s){kept}"),
        ),
        Err(r) => r,
    }
}

async fn clear_scratch(agent: &Agent) -> ActionReport {
    let action = Action::ClearScratch;
    let dirs = agent.config.agent.scratch_dirs.clone();
    if dirs.is_empty() {
        return report(
            action,
            ActionOutcome::Skipped,
            "no agent.scratch_dirs configured",
        );
    }
    let roots = agent.config.agent.allowed_roots.clone();
    let results = tokio::task::spawn_blocking(move || {
        dirs.iter()
            .map(|d| (d.clone(), scratch::clear(d, &roots)))
            .collect::<Vec<_>>()
    })
    .await;
    let results = match results {
        Ok(r) => r,
        Err(e) => return report(action, ActionOutcome::Failed, format!("task failed: {e}")),
    };
    let mut parts = Vec::new();
    let mut total = 0;
    let mut failed = false;
    for (dir, r) in results {
        match r {
            Ok(Cleared::Absent) => parts.push(format!("{}: absent", dir.display())),
            Ok(Cleared::Removed {
                entries,
                skipped_mounts,
            }) => {
                total += entries;
                let mut s = format!("{}: removed {entries} entries", dir.display());
                if !skipped_mounts.is_empty() {
                    let m: Vec<String> = skipped_mounts
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect();
                    s.push_str(&format!(" (mount points left alone: {})", m.join(", ")));
                }
                parts.push(s);
            }
            Err(e) => {
                failed = true;
                parts.push(error_chain(&e));
            }
        }
    }
    let outcome = if failed {
        ActionOutcome::Failed
    } else {
        ActionOutcome::Done
    };
    report(
        action,
        outcome,
        format!("{total} entries removed; {}", parts.join("; ")),
    )
}

use rejuv_core::error_chain;

async fn restart_host(agent: &Agent, action: Action) -> ActionReport {
    let argv = &agent.config.agent.restart_command;
    let Some((program, args)) = argv.split_first() else {
        return report(
            action,
            ActionOutcome::Skipped,
            "no agent.restart_command configured",
        );
    };
    let shown = argv.join(" ");
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(RESTART_COMMAND_TIMEOUT, run).await {
        Err(_) => report(
            action,
            ActionOutcome::Failed,
            format!("`{shown}` did not finish within {RESTART_COMMAND_TIMEOUT:?}"),
        ),
        Ok(Err(e)) => report(
            action,
            ActionOutcome::Failed,
            format!("cannot run `{shown}`: {e}"),
        ),
        Ok(Ok(out)) if out.status.success() => {
            report(action, ActionOutcome::Done, format!("ran `{shown}`"))
        }
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            let cut = stderr
                .char_indices()
                .nth(STDERR_KEPT)
                .map_or(stderr.len(), |(i, _)| i);
            report(
                action,
                ActionOutcome::Failed,
                format!("`{shown}` failed ({}): {}", out.status, &stderr[..cut]),
            )
        }
    }
}
