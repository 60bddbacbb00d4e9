//! Rejuvenating: the drained source gets its escalation level's actions (stop instances,
//! clear scratch, drop caches, restart, ...) as one run the agent carries out by run id. A
//! report that comes back clean moves the workflow to verifying; a failed action fails it. A
//! dead source (reactive failover) is asked again until it answers.
//!
//! In place, the copies run on the source itself: `stop-instances` keeps them, and the
//! actions that would end them (restarting the agent or the host) are left out. An
//! instance-scope workflow rejuvenates the instance alone: the old one is stopped.

use crate::api::RejuvenationReport;
use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{Cluster, Phase, Scope, Traffic};
use crate::config::{Action, Config};
use crate::time::Now;
use crate::types::InstanceId;

impl Cluster {
    pub(in crate::cluster) fn start_rejuvenation(
        &mut self,
        cfg: &Config,
        id: u64,
        now: Now,
        out: &mut Output,
    ) {
        let source = self.workflows[&id].server.clone();
        if self.servers[&source].maintenance {
            // In maintenance (asked before or during the workflow): its instances have moved,
            // it is left alone, out of service, until an operator releases it.
            self.evacuated(id, now, out);
            return;
        }
        let w = self.workflows.get_mut(&id).expect("present");
        w.enter(Phase::Rejuvenating, now);
        let server = w.server.clone();
        if w.scope == Scope::Instance {
            let old: Vec<InstanceId> = w.pairs.iter().map(|p| p.old.clone()).collect();
            self.log(
                out,
                now,
                EventKind::Step,
                Some(&server),
                Some(id),
                format!(
                    "rejuvenating: stopping {} (its copy serves)",
                    old.join(", ")
                ),
            );
            for instance in old {
                self.issue(
                    out,
                    CommandKind::StopInstance {
                        server: server.clone(),
                        instance,
                    },
                );
            }
            return;
        }
        let run_id = w.run_id.clone();
        let mut actions = cfg.rejuvenation.level(w.level).to_vec();
        let mut keep = Vec::new();
        let mut left_out = Vec::new();
        if w.in_place() {
            keep = w.pairs.iter().map(|p| p.new.clone()).collect();
            actions.retain(|a| {
                let ends_copies = matches!(a, Action::RestartAgent | Action::RestartHost);
                if ends_copies {
                    left_out.push(a.to_string());
                }
                !ends_copies
            });
        }
        let names: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        let mut said = format!("rejuvenating: {}", names.join(", "));
        if !left_out.is_empty() {
            said.push_str(&format!(
                " ({} left out: in place they would end the copies that serve)",
                left_out.join(", ")
            ));
        }
        self.log(out, now, EventKind::Step, Some(&server), Some(id), said);
        self.issue(
            out,
            CommandKind::Rejuvenate {
                server,
                run_id,
                actions,
                keep,
            },
        );
    }

    /// An instance-scope workflow's old instance is stopped: it is forgotten, and once every
    /// old one is, the workflow verifies.
    pub(in crate::cluster) fn on_instance_stopped(
        &mut self,
        instance: &str,
        now: Now,
        out: &mut Output,
    ) {
        let Some(w) = self.workflows.values().find(|w| {
            w.scope == Scope::Instance
                && w.phase == Phase::Rejuvenating
                && w.pairs.iter().any(|p| p.old == instance)
        }) else {
            return;
        };
        let (id, server) = (w.id, w.server.clone());
        self.forget_instance(instance);
        let w = &self.workflows[&id];
        if w.pairs.iter().all(|p| !self.instances.contains_key(&p.old)) {
            let copies: Vec<String> = w.pairs.iter().map(|p| p.new.clone()).collect();
            self.workflows
                .get_mut(&id)
                .expect("present")
                .enter(Phase::Verifying, now);
            self.log(
                out,
                now,
                EventKind::Step,
                Some(&server),
                Some(id),
                format!("{instance} stopped; verifying {} serves", copies.join(", ")),
            );
        }
    }

    /// An instance-scope workflow's old instance could not be stopped: the workflow fails
    /// (its copy serves; the old one is left for a person).
    pub(in crate::cluster) fn on_instance_stop_failed(
        &mut self,
        instance: &str,
        error: &str,
        now: Now,
        out: &mut Output,
    ) {
        let Some(id) = self
            .workflows
            .values()
            .find(|w| w.scope == Scope::Instance && w.pairs.iter().any(|p| p.old == instance))
            .map(|w| w.id)
        else {
            return;
        };
        self.fail(id, format!("stopping {instance} failed: {error}"), now, out);
    }

    /// Run `run_id` on `server` came back with its report.
    pub(in crate::cluster) fn on_rejuvenated(
        &mut self,
        server: &str,
        run_id: &str,
        report: RejuvenationReport,
        now: Now,
        out: &mut Output,
    ) {
        let Some(w) = self.workflows.values_mut().find(|w| w.run_id == run_id) else {
            return;
        };
        let wid = w.id;
        if let Some(failed) = report.failed().cloned() {
            let reason = format!("action {} failed: {}", failed.action, failed.detail);
            w.report = Some(report);
            self.fail(wid, reason, now, out);
            return;
        }
        let summary: Vec<String> = report
            .actions
            .iter()
            .map(|a| format!("{} {:?}", a.action, a.outcome).to_lowercase())
            .collect();
        w.report = Some(report);
        w.enter(Phase::Verifying, now);
        self.forget_drained(server, out);
        self.log(
            out,
            now,
            EventKind::Step,
            Some(server),
            Some(wid),
            format!(
                "rejuvenated ({}); verifying it is fresh",
                summary.join(", ")
            ),
        );
    }

    /// The source's old instances are gone with its rejuvenation: they are forgotten.
    fn forget_drained(&mut self, server: &str, out: &mut Output) {
        let gone: Vec<InstanceId> = self
            .instances
            .values()
            .filter(|i| i.server == server && i.traffic == Traffic::Draining)
            .map(|i| i.id.clone())
            .collect();
        for id in gone {
            // A start still on its way (e.g. after the agent lost the instance) would
            // leave a copy nobody tracks: it is followed by a stop.
            let starting = self.pending.values().any(|c| {
                matches!(&c.kind, CommandKind::StartInstance { instance, .. } if instance == &id)
            });
            if let Some(i) = self.forget_instance(&id) {
                if starting {
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
    }

    /// The rejuvenation command `kind` failed for good.
    pub(in crate::cluster) fn on_rejuvenate_failed(
        &mut self,
        kind: &CommandKind,
        error: &str,
        now: Now,
        out: &mut Output,
    ) {
        let CommandKind::Rejuvenate {
            server,
            run_id,
            actions,
            keep,
        } = kind
        else {
            return;
        };
        let Some(w) = self.workflows.values().find(|w| &w.run_id == run_id) else {
            return;
        };
        let wid = w.id;
        let still_away = !self.servers[server].reachable();
        if self.servers[server].maintenance {
            self.evacuated(wid, now, out);
        } else if w.failover && still_away {
            // A dead server is rejuvenated when it comes back, before it rejoins:
            // ask again (the agent's run id makes a repeat harmless).
            if w.report.is_none() {
                self.log(
                    out,
                    now,
                    EventKind::Step,
                    Some(server),
                    Some(wid),
                    format!(
                        "{server} is still unreachable: it will be rejuvenated when it answers again"
                    ),
                );
            }
            let kind = CommandKind::Rejuvenate {
                server: server.clone(),
                run_id: run_id.clone(),
                actions: actions.clone(),
                keep: keep.clone(),
            };
            self.issue(out, kind);
        } else {
            self.fail(wid, format!("rejuvenation failed: {error}"), now, out);
        }
    }
}
