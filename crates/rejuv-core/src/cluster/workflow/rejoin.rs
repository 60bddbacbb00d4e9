//! Rejoining: a server verified fresh goes back on the list as a spare (active-standby) or a
//! primary (active-active), judged afresh, and its target is released. A server in
//! maintenance stays out until released; one whose escalation is exhausted (it aged again
//! soon after its strongest rejuvenation) is kept out for a person to look at.

use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{Cluster, Outcome, ServerState, Step, StepTime, Workflow};
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
        if w.exhausted {
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

    /// Back on the list with `role`, judged afresh; the target is released.
    fn rejoin(&mut self, w: Workflow, role: Role, now: Now, out: &mut Output) {
        let id = w.id;
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
