//! Results of carried-out commands ([`Event::CommandDone`](crate::cluster::Event)): the
//! command leaves the outbox, and its result goes to the part of the machine that asked for
//! it (a hook, a workflow phase, an instance).
//!
//! A result for a command no longer in the outbox (a repeat after a crash) is ignored.

use super::event::CommandResult;
use super::output::{CommandKind, EventKind, Output};
use super::state::Cluster;
use crate::config::Config;
use crate::time::Now;

impl Cluster {
    pub(super) fn on_command_done(
        &mut self,
        cfg: &Config,
        id: u64,
        result: CommandResult,
        now: Now,
        out: &mut Output,
    ) {
        let Some(cmd) = self.pending.remove(&id) else {
            return;
        };
        match (&cmd.kind, result) {
            (CommandKind::RunHook { .. }, result) => {
                self.on_hook_done(id, &cmd.kind, result, now, out)
            }
            (CommandKind::StartInstance { instance, .. }, CommandResult::Started { addr }) => {
                if let Some(i) = self.instances.get_mut(instance) {
                    if addr.is_some() {
                        i.addr = addr;
                    }
                    i.confirmed_at_ms = Some(now.wall_ms);
                }
            }
            (
                CommandKind::StartInstance {
                    server, instance, ..
                },
                CommandResult::Failed { error },
            ) => self.on_start_failed(cfg, server, instance, &error, now, out),
            (CommandKind::TransferState { to, .. }, CommandResult::Transferred) => {
                self.on_transferred(to)
            }
            (CommandKind::TransferState { from, to, .. }, CommandResult::Failed { error }) => {
                self.on_transfer_failed(from, to, &error, now, out)
            }
            (
                CommandKind::Rejuvenate { server, run_id, .. },
                CommandResult::Rejuvenated { report },
            ) => self.on_rejuvenated(server, run_id, report, now, out),
            (CommandKind::Rejuvenate { .. }, CommandResult::Failed { error }) => {
                self.on_rejuvenate_failed(&cmd.kind, &error, now, out)
            }
            (CommandKind::StopInstance { instance, .. }, CommandResult::Stopped) => {
                self.on_instance_stopped(instance, now, out)
            }
            (CommandKind::StopInstance { server, instance }, CommandResult::Failed { error }) => {
                self.log(
                    out,
                    now,
                    EventKind::CommandFailed,
                    Some(server),
                    None,
                    format!("stop {instance}: {error}"),
                );
                self.on_instance_stop_failed(instance, &error, now, out);
            }
            _ => {}
        }
    }
}
