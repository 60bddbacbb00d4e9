//! Duplexing: every instance of the source is started on the target (as a standby copy) and
//! the workflow waits until each copy is healthy, then goes to the gate. A copy that does not
//! come up within `rejuvenation.duplex_timeout`, or whose start fails, rolls the workflow back.

use crate::cluster::output::{EventKind, Output};
use crate::cluster::state::{Cluster, Phase};
use crate::config::Config;
use crate::time::Now;

impl Cluster {
    /// Moves a duplexing workflow on; `true` when its copies are all hot and it entered the
    /// gate.
    pub(in crate::cluster) fn advance_duplexing(
        &mut self,
        cfg: &Config,
        id: u64,
        since: u64,
        now: Now,
        out: &mut Output,
    ) -> bool {
        let w = &self.workflows[&id];
        let server = w.server.clone();
        let target = w.target.clone();
        let all_healthy = w.pairs.iter().all(|p| {
            self.instances
                .get(&p.new)
                .is_some_and(|i| i.healthy && i.addr.is_some())
        });
        if all_healthy {
            let n = w.pairs.len();
            let w = self.workflows.get_mut(&id).expect("present");
            w.enter(Phase::Gating, now);
            self.log(
                out,
                now,
                EventKind::Step,
                Some(&server),
                Some(id),
                format!("duplexed: {n} instance(s) healthy on {target}; the replacement is hot"),
            );
            return true;
        } else if u128::from(since) >= cfg.rejuvenation.duplex_timeout.as_millis() {
            // What the target's agent says of each copy that did not come up: how it ended
            // and what it printed, so the reason is in the workflow and its event.
            let seen = self
                .servers
                .get(&target)
                .and_then(|t| t.observation.as_ref());
            let why: Vec<String> = w
                .pairs
                .iter()
                .filter(|p| !self.instances.get(&p.new).is_some_and(|i| i.healthy))
                .map(|p| match seen.and_then(|o| o.instances.get(&p.new)) {
                    Some(i) => format!("{}: {}", p.new, i.trouble()),
                    None => format!("{}: not reported by {target}'s agent", p.new),
                })
                .collect();
            self.roll_back(
                cfg,
                id,
                format!(
                    "instances on {target} not healthy within {:?} ({})",
                    cfg.rejuvenation.duplex_timeout,
                    why.join("; ")
                ),
                now,
                out,
            );
        }
        false
    }

    /// A copy could not be started: its workflow (if it was one's) rolls back.
    pub(in crate::cluster) fn on_start_failed(
        &mut self,
        cfg: &Config,
        server: &str,
        instance: &str,
        error: &str,
        now: Now,
        out: &mut Output,
    ) {
        let wf = self.workflow_of_new_instance(instance);
        self.log(
            out,
            now,
            EventKind::CommandFailed,
            Some(server),
            wf,
            format!("start {instance}: {error}"),
        );
        if let Some(w) = wf {
            self.roll_back(
                cfg,
                w,
                format!("starting {instance} on {server} failed: {error}"),
                now,
                out,
            );
        }
    }

    fn workflow_of_new_instance(&self, instance: &str) -> Option<u64> {
        self.workflows
            .values()
            .find(|w| w.pairs.iter().any(|p| p.new == instance))
            .map(|w| w.id)
    }
}
