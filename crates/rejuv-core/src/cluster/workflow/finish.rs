//! How workflows end other than by rejoining: rolled back before the switch (copies stopped,
//! target released, source keeps serving), failed after it (source kept out, a person
//! alerted), or evacuated (the source went into maintenance: its copies serve, it is left
//! alone). Each ends in the history ([`Cluster::history`]) with its outcome.

use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{
    Cluster, Outcome, Phase, Scope, ServerState, Step, StepTime, Traffic, Workflow, HISTORY_KEPT,
};
use crate::config::Config;
use crate::time::Now;
use crate::types::{InstanceId, ServerId};

impl Cluster {
    /// Takes a workflow's server out of service (failed, for a person to look at) and frees
    /// its target.
    pub(in crate::cluster) fn keep_out(&mut self, w: &Workflow, reason: &str) {
        if w.scope == Scope::Instance || w.in_place() {
            // One instance failed to be replaced cleanly, or a server rejuvenated in place
            // did not come back fresh: it serves from its copies all the same (taking it out
            // would take them out too); the alert says what to look at.
            self.release_target(&w.target, w.id);
            return;
        }
        if let Some(s) = self.servers.get_mut(&w.server) {
            s.state = ServerState::Failed {
                reason: reason.to_string(),
            };
            s.manual_request = None;
        }
        self.release_target(&w.target, w.id);
    }

    pub(in crate::cluster) fn finish(&mut self, w: Workflow) {
        self.history.push(w);
        if self.history.len() > HISTORY_KEPT {
            let extra = self.history.len() - HISTORY_KEPT;
            self.history.drain(..extra);
        }
    }

    /// Undoes a workflow that has not switched yet: the copies are stopped, the target is
    /// released and kept from being chosen again for a while; the source keeps serving.
    pub(in crate::cluster) fn roll_back(
        &mut self,
        cfg: &Config,
        id: u64,
        reason: String,
        now: Now,
        out: &mut Output,
    ) {
        let Some(w) = self.workflows.get(&id) else {
            return;
        };
        if !matches!(w.phase, Phase::Duplexing | Phase::Gating) {
            // Past the switch there is nothing to undo: the copies serve.
            return;
        }
        let mut w = self.workflows.remove(&id).expect("present");
        for p in &w.pairs {
            // A start still in the outbox for a copy being removed must not be retried; the
            // shell carries out commands for one instance in order, so the stop comes after
            // any start already on its way.
            if let Some(i) = self.forget_instance(&p.new) {
                self.issue(
                    out,
                    CommandKind::StopInstance {
                        server: i.server,
                        instance: i.id,
                    },
                );
            }
        }
        let in_place = w.in_place();
        if let Some(t) = self.servers.get_mut(&w.target).filter(|_| !in_place) {
            if t.reserved_by == Some(id) {
                t.reserved_by = None;
            }
            t.avoid_as_target_until_ms =
                Some(now.wall_ms + cfg.rejuvenation.failed_target_cooldown.as_millis() as u64);
        }
        w.outcome = Some(Outcome::RolledBack {
            reason: reason.clone(),
        });
        w.steps.push(StepTime {
            phase: Step::RolledBack,
            at_ms: now.wall_ms,
        });
        self.log(
            out,
            now,
            EventKind::WorkflowRolledBack,
            Some(&w.server),
            Some(id),
            if in_place {
                format!(
                    "{reason}; {} keeps serving with its old instances",
                    w.server
                )
            } else {
                format!(
                    "{reason}; {} keeps serving, {} is released",
                    w.server, w.target
                )
            },
        );
        self.issue(
            out,
            CommandKind::Alert {
                name: "RejuvWorkflowRolledBack".into(),
                server: Some(w.server.clone()),
                summary: format!("workflow {id} for {} rolled back: {reason}", w.server),
            },
        );
        self.rolled_back_total += 1;
        self.finish(w);
    }

    /// Ends a workflow whose source went into maintenance, once its copies serve: the source is
    /// out of service (not rejuvenated) until an operator turns maintenance off.
    pub(in crate::cluster) fn evacuated(&mut self, id: u64, now: Now, out: &mut Output) {
        let Some(mut w) = self.workflows.remove(&id) else {
            return;
        };
        self.stop_drained(&w.server, out);
        self.keep_out(&w, "in maintenance: turn maintenance off to release it");
        w.outcome = Some(Outcome::Completed);
        w.steps.push(StepTime {
            phase: Step::Evacuated,
            at_ms: now.wall_ms,
        });
        self.log(
            out,
            now,
            EventKind::WorkflowCompleted,
            Some(&w.server),
            Some(id),
            format!(
                "{}'s instances serve from {}; {} is out of service for maintenance, not rejuvenated",
                w.server, w.target, w.server
            ),
        );
        self.completed_total += 1;
        self.finish(w);
    }

    /// Forgets and stops the source's draining instances (their copies serve).
    pub(in crate::cluster) fn stop_drained(&mut self, server: &str, out: &mut Output) {
        let leftovers: Vec<(ServerId, InstanceId)> = self
            .instances
            .values()
            .filter(|i| i.server == server && i.traffic == Traffic::Draining)
            .map(|i| (i.server.clone(), i.id.clone()))
            .collect();
        for (server, instance) in leftovers {
            self.forget_instance(&instance);
            self.issue(out, CommandKind::StopInstance { server, instance });
        }
    }

    /// A workflow past its switch failed: the source stays off the list, a person is alerted.
    pub(in crate::cluster) fn fail(&mut self, id: u64, reason: String, now: Now, out: &mut Output) {
        let Some(mut w) = self.workflows.remove(&id) else {
            return;
        };
        let whole = w.scope == Scope::Server;
        let stays = !w.takes_server_out();
        if whole {
            // The failed server takes no traffic: its old instances leave the table and are
            // stopped (their copies serve).
            self.stop_drained(&w.server, out);
        } else {
            // Only this workflow's old instance: asked to stop once more, then forgotten.
            for p in &w.pairs {
                if let Some(i) = self.forget_instance(&p.old) {
                    self.issue(
                        out,
                        CommandKind::StopInstance {
                            server: i.server,
                            instance: i.id,
                        },
                    );
                }
            }
        }
        self.keep_out(&w, &reason);
        w.outcome = Some(Outcome::Failed {
            reason: reason.clone(),
        });
        w.steps.push(StepTime {
            phase: Step::Failed,
            at_ms: now.wall_ms,
        });
        self.log(
            out,
            now,
            EventKind::WorkflowFailed,
            Some(&w.server),
            Some(id),
            if stays {
                format!("{reason}; {} and its copies keep serving", w.server)
            } else {
                format!(
                    "{reason}; {} stays off the list until an operator looks",
                    w.server
                )
            },
        );
        self.issue(
            out,
            CommandKind::Alert {
                name: "RejuvWorkflowFailed".into(),
                server: Some(w.server.clone()),
                summary: format!("rejuvenation of {} failed: {reason}", w.server),
            },
        );
        self.failed_total += 1;
        self.finish(w);
    }
}
