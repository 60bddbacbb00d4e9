//! Moving workflows on: every step, each running workflow is taken as far as the state
//! allows, through one `match` on its phase.

use crate::cluster::output::Output;
use crate::cluster::state::{Cluster, Phase};
use crate::config::Config;
use crate::time::Now;

impl Cluster {
    /// Moves every workflow as far as the state allows.
    pub(in crate::cluster) fn advance(&mut self, cfg: &Config, now: Now, out: &mut Output) {
        let ids: Vec<u64> = self.workflows.keys().copied().collect();
        for id in ids {
            // A workflow may move several phases in one step (e.g. a stateless drain that
            // finishes as soon as the table is applied); bound the loop by the phase count.
            for _ in 0..8 {
                let Some(before) = self.workflows.get(&id).map(|w| w.phase) else {
                    break;
                };
                self.advance_workflow(cfg, id, now, out);
                if self.workflows.get(&id).map(|w| w.phase) == Some(before) {
                    break;
                }
            }
        }
    }

    fn advance_workflow(&mut self, cfg: &Config, id: u64, now: Now, out: &mut Output) {
        let Some(w) = self.workflows.get(&id) else {
            return;
        };
        let since = now.wall_ms.saturating_sub(w.phase_since_ms);
        match w.phase {
            Phase::Duplexing => {
                if self.advance_duplexing(cfg, id, since, now, out) {
                    // Hot already: the gate is asked in the same pass.
                    self.advance_workflow(cfg, id, now, out);
                }
            }
            Phase::Gating => self.advance_gating(cfg, id, since, now, out),
            Phase::Draining => self.advance_draining(cfg, id, since, now, out),
            Phase::HandingOff => self.advance_handing_off(cfg, id, now, out),
            // Waits for the rejuvenation's result (see `rejuvenating`).
            Phase::Rejuvenating => {}
            Phase::Verifying => self.advance_verifying(cfg, id, since, now, out),
        }
    }
}
