//! Draining: the source is off the list and its instances take no new requests; the phase
//! ends when the traffic adapter reports their in-flight requests done, or after the longest
//! drain time of its services once the adapter reported the table that drains them applied. Then the state of stateful services moves (handing off), or
//! rejuvenation starts.

use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{Cluster, Pair, Phase};
use crate::config::Config;
use crate::time::Now;

impl Cluster {
    pub(in crate::cluster) fn advance_draining(
        &mut self,
        cfg: &Config,
        id: u64,
        since: u64,
        now: Now,
        out: &mut Output,
    ) {
        let w = &self.workflows[&id];
        let server = w.server.clone();
        let target = w.target.clone();
        let drain_limit = w
            .pairs
            .iter()
            .filter_map(|p| cfg.services.get(&p.service))
            .map(|s| s.drain)
            .max()
            .unwrap_or_default();
        let all_drained = w
            .pairs
            .iter()
            .all(|p| self.instances.get(&p.old).is_none_or(|i| i.drained));
        // The drain time counts for requests in flight once the load balancer stopped sending
        // new ones; a table it never applied (unreachable, or holding someone else's) drains
        // nothing, so the source keeps its place until it does.
        let applied = w.pairs.iter().all(|p| {
            self.instances
                .get(&p.old)
                .is_none_or(|i| i.drain_applied || i.drained)
        });
        let timed_out = applied && u128::from(since) >= drain_limit.as_millis();
        if all_drained || timed_out {
            if !all_drained {
                self.log(
                    out,
                    now,
                    EventKind::DrainTimeout,
                    Some(&server),
                    Some(id),
                    format!("in-flight requests still running after {drain_limit:?}; going on"),
                );
            }
            let handoffs: Vec<Pair> = w
                .pairs
                .iter()
                .filter(|p| p.handoff && !p.transferred)
                .cloned()
                .collect();
            let w = self.workflows.get_mut(&id).expect("present");
            if handoffs.is_empty() {
                self.start_rejuvenation(cfg, id, now, out);
            } else {
                w.enter(Phase::HandingOff, now);
                self.log(
                    out,
                    now,
                    EventKind::Step,
                    Some(&server),
                    Some(id),
                    format!(
                        "drained; moving the state of {} instance(s) to {target}",
                        handoffs.len()
                    ),
                );
                for p in handoffs {
                    self.issue(
                        out,
                        CommandKind::TransferState {
                            from_server: server.clone(),
                            from: p.old.clone(),
                            to_server: target.clone(),
                            to: p.new.clone(),
                        },
                    );
                }
            }
        }
    }
}
