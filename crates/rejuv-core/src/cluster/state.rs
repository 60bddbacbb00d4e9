//! The state the machine owns: the [`Cluster`] with its servers, instances, workflows and
//! outbox, and the types they are made of.
//!
//! Everything here is serialized as one document and committed by the shell after every step
//! (with the step's outbox and events), so a controller that dies resumes from it. The
//! behaviour lives in the sibling modules, each in its own `impl Cluster` block.

use super::event::Observation;
use super::names::named;
use super::output::Command;
use crate::api::{RejuvenationReport, RouteTable};
use crate::detector::{Explanation, Level};
use crate::time::Now;
use crate::types::{InstanceId, Mode, Role, ServerId, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Finished workflows kept in the state itself (the store keeps a longer history).
pub(super) const HISTORY_KEPT: usize = 64;

/// Where a server stands. Every server is in exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ServerState {
    /// On the available server list with its role.
    InService,
    /// Off the list while workflow `workflow` rejuvenates it.
    Rejuvenating { workflow: u64 },
    /// Off the list: rejuvenation failed or the server did not come back fresh.
    Failed { reason: String },
}

impl ServerState {
    pub fn name(&self) -> &'static str {
        match self {
            ServerState::InService => "in-service",
            ServerState::Rejuvenating { .. } => "rejuvenating",
            ServerState::Failed { .. } => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub id: ServerId,
    pub role: Role,
    pub state: ServerState,
    pub capacity: u32,
    /// Workflow that reserved this server as its target.
    pub reserved_by: Option<u64>,
    pub judgement: Level,
    pub explanation: Option<Explanation>,
    pub observation: Option<Observation>,
    /// Left alone by rejuv (neither source nor target) until released.
    pub maintenance: bool,
    /// Not chosen as a target again before this wall time (it failed to duplex).
    pub avoid_as_target_until_ms: Option<u64>,
    /// An operator asked for a rejuvenation; `true` ignores the budget.
    pub manual_request: Option<bool>,
    /// Why the last attempt to plan for this server found nothing (said once per reason).
    pub blocked_reason: Option<String>,
    /// Escalation level of the last rejuvenation (0: `rejuvenation.actions`).
    #[serde(default)]
    pub level: usize,
    /// Wall time of the last completed rejuvenation.
    #[serde(default)]
    pub last_rejuvenated_at_ms: Option<u64>,
    /// Wall time its agent stopped answering (`None` while it answers).
    #[serde(default)]
    pub unreachable_since_ms: Option<u64>,
    /// The level of its host-wide readings alone (memory, swap, fds, threads of the host).
    #[serde(default = "stable")]
    pub host_judgement: Level,
    /// Its instances that are unstable on their own readings, worst first.
    #[serde(default)]
    pub unstable_instances: Vec<InstanceId>,
    /// Wall times of its latest instance-scope rejuvenations, oldest first (at most
    /// [`INSTANCE_HISTORY_KEPT`]): too many within a window and the whole server is next.
    #[serde(default)]
    pub instance_rejuvenations_ms: Vec<u64>,
    /// Taken out of the config: evacuated like maintenance, then forgotten.
    #[serde(default)]
    pub removing: bool,
}

fn stable() -> Level {
    Level::Stable
}

/// Instance-scope rejuvenations remembered per server.
pub(super) const INSTANCE_HISTORY_KEPT: usize = 16;

impl Server {
    pub fn on_list(&self) -> bool {
        self.state == ServerState::InService
    }
    pub(super) fn reachable(&self) -> bool {
        self.observation.as_ref().is_some_and(|o| o.reachable)
    }
}

/// Whether the load balancer sends an instance traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Traffic {
    /// Takes requests once healthy.
    Serving,
    /// Running but takes no requests yet (a hot copy waiting for the switch).
    Standby,
    /// Takes no new requests; in-flight ones finish.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub service: ServiceName,
    pub server: ServerId,
    pub addr: Option<SocketAddr>,
    pub healthy: bool,
    pub traffic: Traffic,
    /// The route table version from which this instance is draining.
    pub draining_from_version: Option<u64>,
    pub drained: bool,
    /// The load balancer reported a table at or after `draining_from_version`: it sends this
    /// instance no new requests. Until then a drain does not time out (nothing drains).
    #[serde(default)]
    pub drain_applied: bool,
    /// Wall time the agent confirmed it started this instance; an observation taken before
    /// that cannot show it lost.
    #[serde(default)]
    pub confirmed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Duplexing,
    Gating,
    Draining,
    HandingOff,
    Rejuvenating,
    Verifying,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Duplexing => "duplexing",
            Phase::Gating => "gating",
            Phase::Draining => "draining",
            Phase::HandingOff => "handing-off",
            Phase::Rejuvenating => "rejuvenating",
            Phase::Verifying => "verifying",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Completed,
    RolledBack { reason: String },
    Failed { reason: String },
}

named! {
    /// A step a workflow went through: the phases it entered, then how it ended.
    pub enum Step {
        Duplexing => "duplexing",
        Gating => "gating",
        Draining => "draining",
        HandingOff => "handing-off",
        Rejuvenating => "rejuvenating",
        Verifying => "verifying",
        /// Completed: back on the list (or kept out, see the workflow's outcome).
        Rejoined => "rejoined",
        /// Completed without rejuvenation: the source went into maintenance.
        Evacuated => "evacuated",
        RolledBack => "rolled-back",
        Failed => "failed",
    }
}

impl From<Phase> for Step {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Duplexing => Step::Duplexing,
            Phase::Gating => Step::Gating,
            Phase::Draining => Step::Draining,
            Phase::HandingOff => Step::HandingOff,
            Phase::Rejuvenating => Step::Rejuvenating,
            Phase::Verifying => Step::Verifying,
        }
    }
}

/// What a workflow moves and rejuvenates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One instance: its copy takes its traffic, the old one is stopped; the server stays in
    /// service with its other instances.
    Instance,
    /// The whole server: every instance moves, the server is rejuvenated (workflows stored
    /// before scopes existed were all of this scope).
    #[default]
    Server,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Instance => "instance",
            Scope::Server => "server",
        })
    }
}

/// Where a workflow's copies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// A spare (active-standby), which becomes a primary at the switch.
    Spare,
    /// A primary with room (active-active).
    Peer,
    /// The same server, on other ports; it never leaves the list.
    InPlace,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Spare => "spare",
            Placement::Peer => "peer",
            Placement::InPlace => "in-place",
        })
    }
}

/// One instance of the source and its copy on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub service: ServiceName,
    pub old: InstanceId,
    pub new: InstanceId,
    pub handoff: bool,
    pub transferred: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    pub phase: Step,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: u64,
    pub server: ServerId,
    /// Where the copies go: another server, or `server` itself when `placement` is in-place.
    pub target: ServerId,
    /// One instance or the whole server.
    #[serde(default)]
    pub scope: Scope,
    /// The instance an instance-scope workflow replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    /// Where the copies go (`None` only in states stored before placements existed, until
    /// [`Cluster::fill_defaults`] reads it from the mode).
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Why it started: the detector's explanation, or an operator's request.
    pub reason: String,
    pub explanation: Option<Explanation>,
    pub phase: Phase,
    pub started_at_ms: u64,
    pub phase_since_ms: u64,
    pub pairs: Vec<Pair>,
    pub run_id: String,
    /// The report of the rejuvenation, once it came back.
    pub report: Option<RejuvenationReport>,
    pub gate_reason: Option<String>,
    pub steps: Vec<StepTime>,
    pub outcome: Option<Outcome>,
    pub forced: bool,
    /// Escalation level of the actions this workflow runs.
    #[serde(default)]
    pub level: usize,
    /// The strongest level already ran and the server aged again within the window: after
    /// the switch it is kept out of service for a person to look at.
    #[serde(default)]
    pub exhausted: bool,
    /// How many of `steps` have had their hooks issued (`None` in states stored before hooks
    /// existed: their past steps run no hooks).
    #[serde(default)]
    pub hooks_fired: Option<usize>,
    /// Veto hooks still running (command ids), steps whose veto hooks all passed, and the
    /// first veto.
    #[serde(default)]
    pub veto_pending: BTreeSet<u64>,
    #[serde(default)]
    pub veto_passed: Vec<String>,
    #[serde(default)]
    pub vetoed: Option<String>,
    /// Started because the source died (reactive failover), not because it aged.
    #[serde(default)]
    pub failover: bool,
    /// Moves one instance to a peer with fewer (active-active rebalancing), not because it
    /// aged: it does not count towards the instance-scope escalation.
    #[serde(default)]
    pub rebalance: bool,
}

impl Workflow {
    /// Whether the copies run on the source itself.
    pub fn in_place(&self) -> bool {
        self.placement == Some(Placement::InPlace)
    }

    /// Whether the source leaves the list at the switch (a whole server moving elsewhere).
    pub fn takes_server_out(&self) -> bool {
        self.scope == Scope::Server && !self.in_place()
    }

    pub(super) fn enter(&mut self, phase: Phase, now: Now) {
        self.phase = phase;
        self.phase_since_ms = now.wall_ms;
        self.steps.push(StepTime {
            phase: phase.into(),
            at_ms: now.wall_ms,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub mode: Mode,
    pub servers: BTreeMap<ServerId, Server>,
    pub instances: BTreeMap<InstanceId, Instance>,
    pub workflows: BTreeMap<u64, Workflow>,
    pub history: Vec<Workflow>,
    /// The outbox: commands issued and not yet acknowledged.
    pub pending: BTreeMap<u64, Command>,
    pub paused: bool,
    /// Version of the route table as this state defines it.
    pub routes_version: u64,
    pub routes: RouteTable,
    pub next_id: u64,
    pub completed_total: u64,
    pub rolled_back_total: u64,
    pub failed_total: u64,
    /// Wall time the last workflow completed (for the cluster-wide cooldown).
    #[serde(default)]
    pub last_completed_at_ms: Option<u64>,
    /// Advisory mode (`controller --dry-run`): judge and plan, start no workflow, carry out
    /// no command; events say what would have been done.
    #[serde(default)]
    pub advisory: bool,
    /// Fewer than a majority of agents answer: no workflow starts (said and alerted once).
    #[serde(default)]
    pub quorum_lost: bool,
    /// Workflows after which a server was kept out because escalation was exhausted.
    #[serde(default)]
    pub exhausted_total: u64,
    /// What advisory mode already said it would do (so a repeated plan is said once).
    #[serde(skip)]
    pub(super) advised: BTreeSet<String>,
    /// Instances this cluster ran and forgot, newest last (at most [`FORGOTTEN_KEPT`]): an
    /// agent still reporting one is stopped quietly; anything else it reports is unknown.
    #[serde(default)]
    pub forgotten: Vec<InstanceId>,
    /// Unknown instances already reported (each is said once).
    #[serde(default)]
    pub unknown_reported: BTreeSet<InstanceId>,
    /// A short mark of this cluster state's creation (its name and creation time), part of
    /// every instance id it makes: a cluster started over a fresh store, or another cluster
    /// on the same hosts, never makes an id an agent already knows. Empty in states stored
    /// before it existed (their ids stay as they were).
    #[serde(default)]
    pub incarnation: String,
    /// What `[alert_block]`'s query returns while it returns anything (no planned workflow
    /// starts meanwhile).
    #[serde(default)]
    pub alerts_blocking: Option<String>,
    /// The servers that joined (`POST /v1/join`) rather than being listed in `[[servers]]`,
    /// as they asked: the controller adds them to the config of every start and reload. One
    /// being removed stays here until it is forgotten.
    #[serde(default)]
    pub joined: BTreeMap<ServerId, crate::config::ServerConfig>,
}

/// The incarnation mark of a cluster named `name` created at `wall_ms`: five base-36 digits
/// of an FNV-1a hash of both.
pub(super) fn incarnation(name: &str, wall_ms: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(wall_ms.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut n = h % 36u64.pow(5);
    let mut digits = [b'0'; 5];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

/// Forgotten instance ids remembered.
pub(super) const FORGOTTEN_KEPT: usize = 1024;

impl Cluster {
    /// Fills what states stored by older versions lack: a workflow's placement follows from
    /// the mode it ran in (a spare in active-standby, a peer in active-active).
    pub fn fill_defaults(&mut self) {
        let by_mode = match self.mode {
            Mode::ActiveStandby => Placement::Spare,
            Mode::ActiveActive => Placement::Peer,
        };
        for w in self.workflows.values_mut().chain(self.history.iter_mut()) {
            w.placement.get_or_insert(by_mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_names() {
        for step in Step::ALL {
            let json = serde_json::to_string(step).unwrap();
            assert_eq!(&serde_json::from_str::<Step>(&json).unwrap(), step);
        }
        for phase in [
            Phase::Duplexing,
            Phase::Gating,
            Phase::Draining,
            Phase::HandingOff,
            Phase::Rejuvenating,
            Phase::Verifying,
        ] {
            assert_eq!(Step::from(phase).as_str(), phase.to_string());
        }
        let names: Vec<&str> = Step::ALL.iter().map(Step::as_str).collect();
        assert_eq!(
            names[6..],
            ["rejoined", "evacuated", "rolled-back", "failed"]
        );
        let old: StepTime = serde_json::from_str(r#"{"phase":"waiting","at_ms":3}"#).unwrap();
        assert_eq!(old.phase, Step::Other("waiting".into()));
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"phase":"waiting","at_ms":3}"#
        );
    }
}
