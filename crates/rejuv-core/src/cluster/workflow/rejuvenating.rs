//! Rejuvenating: the drained source gets its escalation level's actions (stop instances,
//! clear scratch, drop caches, restart, ...) as one run the agent carries out by run id. A
//! report that comes back clean moves the workflow to verifying; a failed action fails it. A
//! dead source (reactive failover) is asked again until it answers.

use crate::api::RejuvenationReport;
use crate::cluster::output::{CommandKind, EventKind, Output};
use crate::cluster::state::{Cluster, Phase, Traffic};
use crate::config::Config;
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
        let run_id = w.run_id.clone();
        let actions = cfg.rejuvenation.level(w.level).to_vec();
        let names: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        self.log(
            out,
            now,
            EventKind::Step,
            Some(&server),
            Some(id),
            format!("rejuvenating: {}", names.join(", ")),
        );
        self.issue(
            out,
            CommandKind::Rejuvenate {
                server,
                run_id,
                actions,
            },
        );
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
            };
            self.issue(out, kind);
        } else {
            self.fail(wid, format!("rejuvenation failed: {error}"), now, out);
        }
    }
}
