//! Verifying: the rejuvenated server must come back fresh (its agent answers, its running
//! time restarted after the run began, the old instances gone) within
//! `rejuvenation.verify_timeout`, and pass the `rejoin` veto hooks; then it rejoins.
//! Otherwise the workflow fails and the server stays out. An instance-scope workflow verifies
//! that the old instance is gone and its copy serves healthy. After a `restart-host` that was
//! done, the host must also answer with another boot identity than the run began on: the
//! agent alone coming back is not a restarted host.

use crate::api::RejuvenationReport;
use crate::cluster::event::Observation;
use crate::cluster::hooks::VetoGate;
use crate::cluster::output::Output;
use crate::cluster::state::{Cluster, Scope};
use crate::config::Config;
use crate::time::Now;

impl Cluster {
    pub(in crate::cluster) fn advance_verifying(
        &mut self,
        cfg: &Config,
        id: u64,
        since: u64,
        now: Now,
        out: &mut Output,
    ) {
        let w = &self.workflows[&id];
        let server = w.server.clone();
        let fresh = self.servers[&server].observation.as_ref().is_some_and(|o| {
            let old_gone = w.pairs.iter().all(|p| !o.instances.contains_key(&p.old));
            match w.scope {
                // The server itself was not rejuvenated: its old instance is gone and the
                // copies serve.
                Scope::Instance => {
                    o.reachable
                        && old_gone
                        && w.pairs
                            .iter()
                            .all(|p| self.instances.get(&p.new).is_some_and(|i| i.healthy))
                }
                Scope::Server => {
                    o.reachable
                        && w.report.as_ref().is_some_and(|r| {
                            o.running_since_ms >= r.started_at_ms && host_is_fresh(r, o)
                        })
                        && old_gone
                }
            }
        });
        if fresh {
            match self.veto_gate(cfg, id, "rejoin", now, out) {
                VetoGate::Passed => self.complete(cfg, id, now, out),
                VetoGate::Waiting => {}
                VetoGate::Vetoed(why) => self.fail(id, why, now, out),
            }
        } else if u128::from(since) >= cfg.rejuvenation.verify_timeout.as_millis() {
            self.fail(
                id,
                format!(
                    "did not come back fresh within {:?}",
                    cfg.rejuvenation.verify_timeout
                ),
                now,
                out,
            );
        }
    }
}

/// After a run that restarted its host, the server answers from another boot than the run
/// began on. A report without a boot identity (an agent that does not say) is taken at its
/// word, as before.
fn host_is_fresh(report: &RejuvenationReport, o: &Observation) -> bool {
    match (&report.boot_id, report.restarted_host()) {
        (Some(before), true) => o.boot_id.as_ref().is_some_and(|now| now != before),
        _ => true,
    }
}
