//! Handing off (stateful services only): after the drain, each stateful instance's state is
//! read from the source and written to its copy, which takes traffic once it has it. A failed
//! move leaves the copy serving without the state, and a person is alerted.

use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{Cluster, Traffic};
use crate::config::Config;
use crate::time::Now;

impl Cluster {
    pub(in crate::cluster) fn advance_handing_off(
        &mut self,
        cfg: &Config,
        id: u64,
        now: Now,
        out: &mut Output,
    ) {
        let w = &self.workflows[&id];
        if w.pairs.iter().all(|p| !p.handoff || p.transferred) {
            self.start_rejuvenation(cfg, id, now, out);
        }
    }

    /// The state reached copy `to`: it takes traffic.
    pub(in crate::cluster) fn on_transferred(&mut self, to: &str) {
        for w in self.workflows.values_mut() {
            for p in w.pairs.iter_mut().filter(|p| p.new == to) {
                p.transferred = true;
            }
        }
        if let Some(i) = self.instances.get_mut(to) {
            i.traffic = Traffic::Serving;
        }
    }

    /// The state did not reach copy `to`. The old instance is frozen or gone; the new one
    /// serves without the state rather than not at all, and a person is told.
    pub(in crate::cluster) fn on_transfer_failed(
        &mut self,
        from: &str,
        to: &str,
        error: &str,
        now: Now,
        out: &mut Output,
    ) {
        self.log(
            out,
            now,
            EventKind::HandoffFailed,
            None,
            None,
            format!("moving state {from} -> {to} failed: {error}; serving from {to} without it"),
        );
        self.on_transferred(to);
        self.issue(
            out,
            CommandKind::Alert {
                name: "RejuvHandoffFailed".into(),
                server: None,
                summary: format!("state hand-off {from} -> {to} failed: {error}"),
            },
        );
    }
}
