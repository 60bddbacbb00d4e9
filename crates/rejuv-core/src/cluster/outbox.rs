//! The outbox and the event log: how a step asks for something to be done ([`Cluster::issue`])
//! and says what happened ([`Cluster::log`]).
//!
//! A command issued here goes both into [`Cluster::pending`] (committed with the state) and
//! into the step's [`Output`]; it leaves the outbox when its result comes back. In advisory
//! mode the step's commands are taken out again before they leave and described instead.

use super::output::{Command, CommandKind, EventKind, LogEvent, Output};
use super::state::{Cluster, Instance, FORGOTTEN_KEPT};
use crate::time::Now;
use crate::types::{InstanceId, ServerId};

impl Cluster {
    /// Removes an instance from the cluster together with any start of it still in the
    /// outbox, so no retry brings it back.
    pub(super) fn forget_instance(&mut self, id: &str) -> Option<Instance> {
        self.pending.retain(|_, c| {
            !matches!(&c.kind, CommandKind::StartInstance { instance, .. } if instance == id)
        });
        let gone = self.instances.remove(id);
        if gone.is_some() {
            self.forgotten.push(id.to_string());
            let extra = self.forgotten.len().saturating_sub(FORGOTTEN_KEPT);
            self.forgotten.drain(..extra);
        }
        gone
    }

    pub(super) fn new_instance_id(&mut self, service: &str, server: &str) -> InstanceId {
        let id = if self.incarnation.is_empty() {
            format!("{service}-{server}-{}", self.next_id)
        } else {
            format!("{service}-{server}-{}-{}", self.incarnation, self.next_id)
        };
        self.next_id += 1;
        id
    }

    pub(super) fn issue(&mut self, out: &mut Output, kind: CommandKind) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let cmd = Command { id, kind };
        self.pending.insert(id, cmd.clone());
        out.commands.push(cmd);
        id
    }

    /// Writes a line to the step's event log; the line is returned for fields beyond the
    /// common ones (a judgement's level).
    pub(super) fn log<'o>(
        &self,
        out: &'o mut Output,
        now: Now,
        kind: EventKind,
        server: Option<&str>,
        workflow: Option<u64>,
        message: String,
    ) -> &'o mut LogEvent {
        out.events.push(LogEvent {
            at_ms: now.wall_ms,
            kind,
            server: server.map(str::to_string),
            workflow,
            message,
            level: None,
        });
        out.events.last_mut().expect("just pushed")
    }

    /// Advisory mode: the commands this step issued are not carried out; the event log says
    /// what would have been done (each distinct thing once).
    pub(super) fn say_instead_of_doing(&mut self, now: Now, out: &mut Output) {
        for cmd in std::mem::take(&mut out.commands) {
            self.pending.remove(&cmd.id);
            let said = describe_command(&cmd.kind);
            if self.advised.len() > 10_000 {
                self.advised.clear();
            }
            if self.advised.insert(said.clone()) {
                let server = command_server(&cmd.kind);
                self.log(
                    out,
                    now,
                    EventKind::DryRun,
                    server.as_deref(),
                    None,
                    format!("dry run: would {said}"),
                );
            }
        }
    }
}

/// A command in words, for advisory mode's events.
fn describe_command(kind: &CommandKind) -> String {
    match kind {
        CommandKind::StartInstance {
            server,
            instance,
            service,
        } => format!("start {service} instance {instance} on {server}"),
        CommandKind::StopInstance { server, instance } => {
            format!("stop instance {instance} on {server}")
        }
        CommandKind::TransferState {
            from_server,
            from,
            to_server,
            to,
        } => format!("move the state of {from} on {from_server} to {to} on {to_server}"),
        CommandKind::Rejuvenate {
            server, actions, ..
        } => format!(
            "rejuvenate {server} ({})",
            actions
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CommandKind::ResetDetector { server } => format!("reset the detector of {server}"),
        CommandKind::Alert { name, summary, .. } => format!("alert {name}: {summary}"),
        CommandKind::RunHook {
            hook, when, step, ..
        } => format!("run hook {hook} ({when} {step})"),
    }
}

fn command_server(kind: &CommandKind) -> Option<ServerId> {
    match kind {
        CommandKind::StartInstance { server, .. }
        | CommandKind::StopInstance { server, .. }
        | CommandKind::Rejuvenate { server, .. }
        | CommandKind::ResetDetector { server }
        | CommandKind::RunHook { server, .. } => Some(server.clone()),
        CommandKind::TransferState { from_server, .. } => Some(from_server.clone()),
        CommandKind::Alert { server, .. } => server.clone(),
    }
}
