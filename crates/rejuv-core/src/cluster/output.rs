//! What flows out of the state machine: [`Command`]s for the shell to carry out and
//! [`LogEvent`]s for the event log, gathered per step in an [`Output`].
//!
//! Plain data: the outbox ([`crate::cluster::Cluster::pending`]) holds these commands until
//! their results come back as events.

use super::names::named;
use crate::config::{Action, HookWhen};
use crate::detector::Level;
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
        /// Instances `stop-instances` leaves running: the copies of an in-place workflow.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keep: Vec<InstanceId>,
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
impl CommandKind {
    /// Whether this command acts on `server` (or, for an alert or a hook, names it).
    pub fn concerns(&self, server: &str) -> bool {
        match self {
            CommandKind::StartInstance { server: s, .. }
            | CommandKind::StopInstance { server: s, .. }
            | CommandKind::Rejuvenate { server: s, .. }
            | CommandKind::ResetDetector { server: s } => s == server,
            CommandKind::TransferState {
                from_server,
                to_server,
                ..
            } => from_server == server || to_server == server,
            CommandKind::Alert { server: s, .. } => s.as_deref() == Some(server),
            CommandKind::RunHook {
                server: s, target, ..
            } => s == server || target == server,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    pub at_ms: u64,
    pub kind: EventKind,
    pub server: Option<ServerId>,
    pub workflow: Option<u64>,
    pub message: String,
    /// The detector's level, on [`EventKind::Judgement`] events: what the server was judged
    /// (so "stable again" can be told without reading `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
}

named! {
    /// What an event-log line is about. The names are part of the interface: the event log
    /// (API, `rejuv events`, the stores) shows and filters by them.
    pub enum EventKind {
        ClusterCreated => "cluster-created",
        /// An agent stopped or started answering.
        Agent => "agent",
        /// A server's agent came back with a new boot identity: its host restarted.
        HostRestart => "host-restart",
        InstanceLost => "instance-lost",
        /// The detector's judgement of a server changed (see [`LogEvent::level`]).
        Judgement => "judgement",
        Operator => "operator",
        OperatorRefused => "operator-refused",
        WorkflowStarted => "workflow-started",
        /// A workflow moved to its next phase (or is waiting in one).
        Step => "step",
        /// The gate holds a workflow, with the reason.
        Gate => "gate",
        DrainTimeout => "drain-timeout",
        HandoffSkipped => "handoff-skipped",
        HandoffFailed => "handoff-failed",
        Hook => "hook",
        CommandFailed => "command-failed",
        WorkflowCompleted => "workflow-completed",
        WorkflowRolledBack => "workflow-rolled-back",
        WorkflowFailed => "workflow-failed",
        EscalationExhausted => "escalation-exhausted",
        /// A server needs a workflow and nothing can take its copies (alerted).
        NoTarget => "no-target",
        /// A server needs a workflow that waits for a limit: the budget of concurrent
        /// workflows, the cooldown, a pause or a freeze window.
        WaitingForBudget => "waiting-for-budget",
        NoQuorum => "no-quorum",
        QuorumRegained => "quorum-regained",
        /// Advisory mode: what would have been done.
        DryRun => "dry-run",
        /// The load balancer holds a route table that is not this controller's (or holds
        /// it again).
        TrafficMismatch => "traffic-mismatch",
        /// An agent runs an instance this controller did not start.
        UnknownInstance => "unknown-instance",
        /// The config was reloaded: a server joined, is being removed, was forgotten, or
        /// changed capacity.
        Config => "config",
        /// `[alert_block]`'s query started or stopped returning alerts.
        AlertBlock => "alert-block",
        /// A request that changes something reached the API: who, from where, what, the answer.
        Audit => "audit",
        /// A server asked to join (`POST /v1/join`), was approved, or its removal was asked.
        Join => "join",
    }
}

/// What one step produced besides the new state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Commands added to the outbox by this step, to carry out once the state is committed.
    pub commands: Vec<Command>,
    pub events: Vec<LogEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_keep_their_names() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(&serde_json::from_str::<EventKind>(&json).unwrap(), kind);
            assert_eq!(&EventKind::from_name(kind.as_str()), kind);
        }
        assert_eq!(
            EventKind::WorkflowRolledBack.as_str(),
            "workflow-rolled-back"
        );
        assert_eq!(EventKind::NoQuorum.to_string(), "no-quorum");
    }

    #[test]
    fn an_unknown_kind_is_read_and_written_back_unchanged() {
        let json =
            r#"{"at_ms":1,"kind":"from-elsewhere","server":null,"workflow":null,"message":"m"}"#;
        let e: LogEvent = serde_json::from_str(json).unwrap();
        assert_eq!(e.kind, EventKind::Other("from-elsewhere".into()));
        assert_eq!(e.level, None);
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
    }

    #[test]
    fn a_judgement_carries_its_level() {
        let e = LogEvent {
            at_ms: 1,
            kind: EventKind::Judgement,
            server: Some("s1".into()),
            workflow: None,
            message: "judged stable".into(),
            level: Some(Level::Stable),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"judgement""#), "{json}");
        assert!(json.contains(r#""level":"stable""#), "{json}");
        assert_eq!(serde_json::from_str::<LogEvent>(&json).unwrap(), e);
    }
}
