//! What flows out of the state machine: [`Command`]s for the shell to carry out and
//! [`LogEvent`]s for the event log, gathered per step in an [`Output`].
//!
//! Plain data: the outbox ([`crate::cluster::Cluster::pending`]) holds these commands until
//! their results come back as events.

use crate::config::{Action, HookWhen};
use crate::types::{InstanceId, ServerId, ServiceName};
use serde::{Deserialize, Serialize};

/// A command the shell must carry out; retried until its result comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum CommandKind {
    StartInstance {
        server: ServerId,
        instance: InstanceId,
        service: ServiceName,
    },
    StopInstance {
        server: ServerId,
        instance: InstanceId,
    },
    /// Read the state of `from` (its service's export) and write it to `to` (import).
    TransferState {
        from_server: ServerId,
        from: InstanceId,
        to_server: ServerId,
        to: InstanceId,
    },
    Rejuvenate {
        server: ServerId,
        run_id: String,
        actions: Vec<Action>,
    },
    /// Forget the server's detector history (it was just rejuvenated).
    ResetDetector { server: ServerId },
    /// Something a person must look at; `name` is the alert's name (`alertname` label).
    Alert {
        #[serde(default)]
        name: String,
        server: Option<ServerId>,
        summary: String,
    },
    /// Run an operator's hook (see [`crate::config::HookConfig`]).
    RunHook {
        workflow: u64,
        hook: String,
        step: String,
        when: HookWhen,
        server: ServerId,
        target: ServerId,
        veto: bool,
    },
}

/// A line for the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    pub at_ms: u64,
    pub kind: String,
    pub server: Option<ServerId>,
    pub workflow: Option<u64>,
    pub message: String,
}

/// What one step produced besides the new state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Commands added to the outbox by this step, to carry out once the state is committed.
    pub commands: Vec<Command>,
    pub events: Vec<LogEvent>,
}
