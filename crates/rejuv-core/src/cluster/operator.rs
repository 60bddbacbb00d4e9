//! Operators' requests: whether one fits the current state ([`Cluster::check_operator`],
//! asked by the shell before it feeds the request in) and carrying it out.
//!
//! A request changes what planning sees (a manual request, maintenance, pause); the workflow
//! itself starts from the plan like any other.

use super::output::{CommandKind, EventKind, Output};
use super::state::{Cluster, Phase, ServerState};
use crate::config::Config;
use crate::detector::Level;
use crate::time::Now;
use crate::types::{Mode, Role, ServerId};
use serde::{Deserialize, Serialize};

use super::event::OperatorCommand;

/// Why an operator's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refusal {
    #[error("no server named '{0}'")]
    UnknownServer(String),
    #[error("server '{0}' is already being rejuvenated")]
    Busy(String),
    #[error("server '{0}' is in maintenance")]
    InMaintenance(String),
    #[error("server '{0}' is a spare: spares run nothing to rejuvenate")]
    Spare(String),
    #[error("server '{0}' failed ({1}); check it, then release it with `maintenance off`")]
    Failed(String, String),
    /// Nothing could ever take its instances: no other server of the role a target needs,
    /// and in-place duplexing is off.
    #[error("server '{0}' can never be rejuvenated in this cluster: {1}")]
    NoPlacement(String, String),
    #[error("server '{0}' is being removed from the cluster (it is no longer in the config)")]
    Removing(String),
    #[error("nothing to cancel: {0}")]
    NothingToCancel(String),
    #[error("workflow {0} has switched already ({1}); it finishes on its own")]
    PastTheSwitch(u64, String),
    #[error("the config cannot be reloaded: {0}")]
    Reload(String),
}

enum Cancellable {
    Request(ServerId),
    Workflow(u64),
}

impl Cluster {
    /// Whether an operator's command fits the current state.
    pub fn check_operator(&self, cfg: &Config, command: &OperatorCommand) -> Result<(), Refusal> {
        match command {
            OperatorCommand::Rejuvenate { server, .. } => {
                let s = self
                    .servers
                    .get(server)
                    .ok_or_else(|| Refusal::UnknownServer(server.clone()))?;
                if s.removing {
                    return Err(Refusal::Removing(server.clone()));
                }
                if s.maintenance {
                    return Err(Refusal::InMaintenance(server.clone()));
                }
                if let ServerState::Failed { reason } = &s.state {
                    return Err(Refusal::Failed(server.clone(), reason.clone()));
                }
                // A request for a workflow still waiting at the gate opens the gate; one that
                // has switched already has nothing left to ask for.
                if self.workflows.values().any(|w| {
                    &w.server == server && !matches!(w.phase, Phase::Duplexing | Phase::Gating)
                }) {
                    return Err(Refusal::Busy(server.clone()));
                }
                if s.role == Role::Spare {
                    return Err(Refusal::Spare(server.clone()));
                }
                // Any other server may be a target some day (a primary becomes a spare after
                // its own rejuvenation); with none, only in place is left.
                let others = self.servers.len() > 1;
                if !cfg.rejuvenation.in_place && !others {
                    return Err(Refusal::NoPlacement(
                        server.clone(),
                        "no other server could take its instances and rejuvenation.in_place is false"
                            .into(),
                    ));
                }
                Ok(())
            }
            OperatorCommand::Maintenance { server, .. } => match self.servers.get(server) {
                None => Err(Refusal::UnknownServer(server.clone())),
                Some(s) if s.removing => Err(Refusal::Removing(server.clone())),
                Some(_) => Ok(()),
            },
            OperatorCommand::Pause | OperatorCommand::Resume => Ok(()),
            OperatorCommand::Cancel { id } => self.cancellable(id).map(|_| ()),
        }
    }

    /// What `rejuv cancel ID` would withdraw: a workflow that has not switched yet (by its id,
    /// or by its server's), or a request still queued (by server id).
    fn cancellable(&self, id: &str) -> Result<Cancellable, Refusal> {
        let by_workflow = id.parse::<u64>().ok().and_then(|n| self.workflows.get(&n));
        let by_server = self.workflows.values().find(|w| w.server == id);
        if let Some(w) = by_workflow.or(by_server) {
            return match w.phase {
                Phase::Duplexing | Phase::Gating => Ok(Cancellable::Workflow(w.id)),
                phase => Err(Refusal::PastTheSwitch(w.id, phase.to_string())),
            };
        }
        match self.servers.get(id) {
            Some(s) if s.manual_request.is_some() => Ok(Cancellable::Request(id.to_string())),
            Some(_) => Err(Refusal::NothingToCancel(format!(
                "server '{id}' has no queued request and no workflow"
            ))),
            None => Err(Refusal::NothingToCancel(format!(
                "no workflow or server named '{id}'"
            ))),
        }
    }

    fn operator_cancel(&mut self, cfg: &Config, by: &str, id: &str, now: Now, out: &mut Output) {
        match self.cancellable(id) {
            Ok(Cancellable::Request(server)) => {
                if let Some(s) = self.servers.get_mut(&server) {
                    s.manual_request = None;
                    s.blocked_reason = None;
                }
                self.log(
                    out,
                    now,
                    EventKind::Operator,
                    Some(&server),
                    None,
                    format!("{by} cancelled the queued request to rejuvenate {server}"),
                );
            }
            Ok(Cancellable::Workflow(wid)) => {
                let w = &self.workflows[&wid];
                let server = w.server.clone();
                let target = w.target.clone();
                // A cancel is no fault of the target's: it keeps the cooldown it had.
                let kept = self
                    .servers
                    .get(&target)
                    .and_then(|t| t.avoid_as_target_until_ms);
                if let Some(s) = self.servers.get_mut(&server) {
                    s.manual_request = None;
                }
                self.log(
                    out,
                    now,
                    EventKind::Operator,
                    Some(&server),
                    Some(wid),
                    format!("{by} cancelled workflow {wid} of {server}"),
                );
                self.roll_back(cfg, wid, format!("cancelled by {by}"), now, out);
                if let Some(t) = self.servers.get_mut(&target) {
                    t.avoid_as_target_until_ms = kept;
                }
            }
            Err(_) => {}
        }
    }

    pub(super) fn on_operator(
        &mut self,
        cfg: &Config,
        by: &str,
        command: OperatorCommand,
        now: Now,
        out: &mut Output,
    ) {
        if let Err(refusal) = self.check_operator(cfg, &command) {
            self.log(
                out,
                now,
                EventKind::OperatorRefused,
                None,
                None,
                format!("{by}: {refusal}"),
            );
            return;
        }
        match command {
            OperatorCommand::Rejuvenate { server, force } => {
                self.operator_rejuvenate(by, &server, force, now, out)
            }
            OperatorCommand::Maintenance { server, on } => {
                self.operator_maintenance(by, &server, on, now, out)
            }
            OperatorCommand::Pause => {
                self.paused = true;
                self.log(
                    out,
                    now,
                    EventKind::Operator,
                    None,
                    None,
                    format!("{by} paused rejuv: no new workflow starts; running ones finish"),
                );
            }
            OperatorCommand::Cancel { id } => self.operator_cancel(cfg, by, &id, now, out),
            OperatorCommand::Resume => {
                self.paused = false;
                self.log(
                    out,
                    now,
                    EventKind::Operator,
                    None,
                    None,
                    format!("{by} resumed rejuv"),
                );
            }
        }
    }

    fn operator_rejuvenate(
        &mut self,
        by: &str,
        server: &str,
        force: bool,
        now: Now,
        out: &mut Output,
    ) {
        if let Some(s) = self.servers.get_mut(server) {
            s.manual_request = Some(force);
        }
        self.log(
            out,
            now,
            EventKind::Operator,
            Some(server),
            None,
            format!(
                "{by} asked to rejuvenate {server}{}",
                if force {
                    " (force: budget ignored)"
                } else {
                    ""
                }
            ),
        );
    }

    fn operator_maintenance(
        &mut self,
        by: &str,
        server: &str,
        on: bool,
        now: Now,
        out: &mut Output,
    ) {
        let back_role = match self.mode {
            Mode::ActiveStandby => Role::Spare,
            Mode::ActiveActive => Role::Primary,
        };
        if let Some(s) = self.servers.get_mut(server) {
            s.maintenance = on;
            if on {
                s.manual_request = None;
            } else if matches!(s.state, ServerState::Failed { .. }) {
                // Released by a person who looked at it: back on the list, empty,
                // judged afresh.
                s.state = ServerState::InService;
                s.role = back_role;
                s.judgement = Level::Stable;
                s.explanation = None;
                self.issue(
                    out,
                    CommandKind::ResetDetector {
                        server: server.to_string(),
                    },
                );
            }
        }
        self.log(
            out,
            now,
            EventKind::Operator,
            Some(server),
            None,
            format!(
                "{by} turned maintenance {} for {server}",
                if on { "on" } else { "off" }
            ),
        );
    }
}
