//! Rejoining: a server verified fresh goes back on the list as a spare (active-standby) or a
//! primary (active-active), judged afresh, and its target is released. A server in
//! maintenance stays out until released; one whose escalation is exhausted (it aged again
//! soon after its strongest rejuvenation) is kept out for a person to look at.

use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{
    Cluster, Outcome, Placement, Scope, ServerState, Step, StepTime, Workflow,
    INSTANCE_HISTORY_KEPT,
};
use crate::config::Config;
use crate::detector::Level;
use crate::time::Now;
use crate::types::{Mode, Role};

impl Cluster {
    pub(in crate::cluster) fn complete(
        &mut self,
        cfg: &Config,
        id: u64,
        now: Now,
        out: &mut Output,
    ) {
        let Some(mut w) = self.workflows.remove(&id) else {
            return;
        };
        w.steps.push(StepTime {
            phase: Step::Rejoined,
            at_ms: now.wall_ms,
        });
        w.outcome = Some(Outcome::Completed);
        let role = match self.mode {
            Mode::ActiveStandby => Role::Spare,
            Mode::ActiveActive => Role::Primary,
        };
        self.last_completed_at_ms = Some(now.wall_ms);
        if w.scope == Scope::Instance {
            self.instance_replaced(w, now, out);
        } else if w.in_place() {
            // Its copies serve from it: it stays as it is. Maintenance moves them elsewhere
            // next (a plan of its own); an exhausted escalation is a person's to look at.
            if w.exhausted {
                self.issue(
                    out,
                    CommandKind::Alert {
                        name: "RejuvEscalationExhausted".into(),
                        server: Some(w.server.clone()),
                        summary: format!(
                            "{} aged again within {:?} of its strongest rejuvenation (in place: it keeps serving)",
                            w.server, cfg.rejuvenation.escalation_window
                        ),
                    },
                );
            }
            self.rejoin(w, role, now, out);
        } else if w.exhausted {
            self.keep_out_exhausted(cfg, w, now, out);
        } else if self.servers[&w.server].maintenance {
            self.hold_in_maintenance(w, role, now, out);
        } else {
            self.rejoin(w, role, now, out);
        }
    }

    /// The strongest level already ran and the server aged again within the window.
    fn keep_out_exhausted(&mut self, cfg: &Config, w: Workflow, now: Now, out: &mut Output) {
        let id = w.id;
        let reason = format!(
            "escalation exhausted: aged again within {:?} of its strongest rejuvenation",
            cfg.rejuvenation.escalation_window
        );
        self.keep_out(&w, &reason);
        if let Some(s) = self.servers.get_mut(&w.server) {
            s.last_rejuvenated_at_ms = Some(now.wall_ms);
            s.level = w.level;
        }
        self.log(
            out,
            now,
            EventKind::EscalationExhausted,
            Some(&w.server),
            Some(id),
            format!(
                "{}: {reason}; kept out of service until an operator releases it",
                w.server
            ),
        );
        self.issue(
            out,
            CommandKind::Alert {
                name: "RejuvEscalationExhausted".into(),
                server: Some(w.server.clone()),
                summary: format!("{} {reason}", w.server),
            },
        );
        self.exhausted_total += 1;
        self.completed_total += 1;
        self.finish(w);
    }

    /// Rejuvenated, but an operator holds it: it rejoins when they release it.
    fn hold_in_maintenance(&mut self, w: Workflow, role: Role, now: Now, out: &mut Output) {
        self.keep_out(
            &w,
            "rejuvenated while in maintenance: turn maintenance off to release it",
        );
        if let Some(s) = self.servers.get_mut(&w.server) {
            s.last_rejuvenated_at_ms = Some(now.wall_ms);
            s.role = role;
        }
        self.issue(
            out,
            CommandKind::ResetDetector {
                server: w.server.clone(),
            },
        );
        self.log(
            out,
            now,
            EventKind::WorkflowCompleted,
            Some(&w.server),
            Some(w.id),
            format!(
                "{} is fresh and stays out of service: it is in maintenance",
                w.server
            ),
        );
        self.completed_total += 1;
        self.finish(w);
    }

    /// One instance replaced: the server served throughout; it no longer counts that instance
    /// as aging, and remembers the rejuvenation (too many in a window and the whole server is
    /// next).
    fn instance_replaced(&mut self, w: Workflow, now: Now, out: &mut Output) {
        let id = w.id;
        if let Some(s) = self.servers.get_mut(&w.server) {
            s.unstable_instances
                .retain(|i| !w.pairs.iter().any(|p| &p.old == i));
            if s.unstable_instances.is_empty() && s.host_judgement != Level::Unstable {
                s.judgement = Level::Stable;
                s.explanation = None;
            }
            if !w.rebalance {
                s.instance_rejuvenations_ms.push(now.wall_ms);
            }
            let extra = s
                .instance_rejuvenations_ms
                .len()
                .saturating_sub(INSTANCE_HISTORY_KEPT);
            s.instance_rejuvenations_ms.drain(..extra);
            s.blocked_reason = None;
        }
        if !w.in_place() {
            self.release_target(&w.target, id);
        }
        let secs = now.wall_ms.saturating_sub(w.started_at_ms) as f64 / 1000.0;
        let pairs: Vec<String> = w
            .pairs
            .iter()
            .map(|p| format!("{} replaced by {}", p.old, p.new))
            .collect();
        let place = match w.placement {
            Some(Placement::InPlace) => format!("in place on {}", w.server),
            _ => format!("on {}", w.target),
        };
        self.log(
            out,
            now,
            EventKind::WorkflowCompleted,
            Some(&w.server),
            Some(id),
            format!("{} {place} ({secs:.1}s end to end)", pairs.join(", ")),
        );
        self.completed_total += 1;
        self.finish(w);
    }

    /// Back on the list with `role` (a server rejuvenated in place keeps its own), judged
    /// afresh; the target is released.
    fn rejoin(&mut self, w: Workflow, role: Role, now: Now, out: &mut Output) {
        let id = w.id;
        let role = if w.in_place() {
            self.servers.get(&w.server).map_or(role, |s| s.role)
        } else {
            role
        };
        if let Some(s) = self.servers.get_mut(&w.server) {
            s.last_rejuvenated_at_ms = Some(now.wall_ms);
            s.level = w.level;
            s.state = ServerState::InService;
            s.role = role;
            s.manual_request = None;
            s.judgement = Level::Stable;
            s.explanation = None;
            s.blocked_reason = None;
        }
        self.release_target(&w.target, id);
        self.issue(
            out,
            CommandKind::ResetDetector {
                server: w.server.clone(),
            },
        );
        let secs = now.wall_ms.saturating_sub(w.started_at_ms) as f64 / 1000.0;
        self.log(
            out,
            now,
            EventKind::WorkflowCompleted,
            Some(&w.server),
            Some(id),
            format!(
                "{} is fresh and back on the list as {role} ({secs:.1}s end to end)",
                w.server
            ),
        );
        self.completed_total += 1;
        self.finish(w);
    }
}
