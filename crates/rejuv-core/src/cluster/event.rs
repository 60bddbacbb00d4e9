//! What flows into the state machine: [`Event`]s, with the agents' [`Observation`]s, the
//! operators' requests and the results of carried-out commands.
//!
//! These are plain data at the bottom of the loop: the shell builds them from what it saw
//! and feeds them to [`crate::cluster::step`]; nothing here decides anything.

use crate::api::{AgentState, InstanceState, RejuvenationReport};
use crate::detector::Judgement;
use crate::types::{InstanceId, ServerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What the controller last learned from a server's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub reachable: bool,
    pub at_ms: u64,
    pub load1: f64,
    pub running_since_ms: u64,
    pub running_time_s: f64,
    pub crashes_total: u64,
    /// Where `load1` stands in the server's recent load history (fraction of past readings
    /// below it), computed by the shell from samples it keeps in memory.
    #[serde(default)]
    pub load_quantile: Option<f64>,
    /// Instances the agent reports, with whether each is healthy and where it serves.
    pub instances: BTreeMap<InstanceId, ObservedInstance>,
    /// Memory the host can still give (MemAvailable), where the agent reported it: whether a
    /// second copy fits in place.
    #[serde(default)]
    pub mem_available_bytes: Option<u64>,
    /// The host's boot identity, where the agent reports one: a new one is a host restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub state: InstanceState,
    pub healthy: bool,
    pub addr: Option<SocketAddr>,
    pub started_at_ms: Option<u64>,
    /// Its whole tree's RSS in the agent's latest sample.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Times it exited unasked (its agent resets the count after a healthy run).
    #[serde(default)]
    pub crashes: u32,
    /// How it last ended, and the last lines of its output then.
    #[serde(default)]
    pub last_exit: Option<String>,
    #[serde(default)]
    pub last_output: Vec<String>,
}

impl ObservedInstance {
    /// Whether two reports of an instance differ at most in its memory reading: everything
    /// a step acts on (state, health, address, start, crashes, exit, output) is the same.
    pub fn same_but_readings(&self, other: &Self) -> bool {
        let Self {
            state,
            healthy,
            addr,
            started_at_ms,
            rss_bytes: _,
            crashes,
            last_exit,
            last_output,
        } = self;
        *state == other.state
            && *healthy == other.healthy
            && *addr == other.addr
            && *started_at_ms == other.started_at_ms
            && *crashes == other.crashes
            && *last_exit == other.last_exit
            && *last_output == other.last_output
    }

    /// Why it is not healthy, as far as its agent knows: its state, crashes, last exit and
    /// the last lines of its output (empty when there is nothing to say).
    pub fn trouble(&self) -> String {
        let mut t = format!("{:?}", self.state).to_lowercase();
        if self.crashes > 0 {
            t += &format!(", exited {} time(s)", self.crashes);
        }
        if let Some(e) = &self.last_exit {
            t += &format!(", last exit: {e}");
        }
        if !self.last_output.is_empty() {
            t += &format!("; its last output:\n  {}", self.last_output.join("\n  "));
        }
        t
    }
}

impl Observation {
    /// Builds an observation from an agent's state reply.
    pub fn from_agent(state: &AgentState, at_ms: u64) -> Self {
        Self {
            reachable: true,
            at_ms,
            load1: state.sample.load1,
            running_since_ms: state.running_since_ms,
            running_time_s: state.sample.running_time_s,
            crashes_total: state.crashes_total,
            load_quantile: None,
            mem_available_bytes: (state.sample.mem_total_bytes > 0)
                .then_some(state.sample.mem_available_bytes),
            boot_id: (!state.boot_id.is_empty()).then(|| state.boot_id.clone()),
            instances: state
                .instances
                .iter()
                .map(|i| {
                    (
                        i.id.clone(),
                        ObservedInstance {
                            state: i.state,
                            healthy: i.healthy,
                            addr: i.addr,
                            started_at_ms: i.started_at_ms,
                            rss_bytes: state.sample.instances.get(&i.id).map(|x| x.rss_bytes),
                            crashes: i.crashes,
                            last_exit: i.last_exit.clone(),
                            last_output: i.last_output.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// What came back from carrying out a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum CommandResult {
    Started {
        addr: Option<SocketAddr>,
    },
    Stopped,
    Transferred,
    Rejuvenated {
        report: RejuvenationReport,
    },
    Done,
    /// A hook ended: `ok` when it exited 0 within its timeout; `detail` holds its exit status,
    /// duration and the end of its output.
    HookRan {
        ok: bool,
        detail: String,
    },
    /// Will not succeed by retrying (the agent refused it, or it timed out for good).
    Failed {
        error: String,
    },
}

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum OperatorCommand {
    Rejuvenate {
        server: ServerId,
        force: bool,
    },
    Maintenance {
        server: ServerId,
        on: bool,
    },
    Pause,
    Resume,
    /// Withdraws a queued request (by server id) or a workflow that has not switched yet (by
    /// workflow id).
    Cancel {
        id: String,
    },
}

/// Something that happened, fed to [`step`](crate::cluster::step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// An agent answered (or did not: `reachable = false`).
    Observed {
        server: ServerId,
        observation: Observation,
    },
    /// The detector's latest judgement of a server.
    Judged {
        server: ServerId,
        judgement: Judgement,
    },
    /// Time passed: timeouts, the gate, planning.
    Tick,
    CommandDone {
        id: u64,
        result: CommandResult,
    },
    /// The traffic adapter applied route table `version`; in-flight counts per instance.
    TrafficSynced {
        version: u64,
        in_flight: BTreeMap<InstanceId, u64>,
    },
    Operator {
        by: String,
        command: OperatorCommand,
    },
    /// The config was reloaded (restart or `rejuv reload`): the step runs with the new one;
    /// servers added join, removed ones are evacuated and then forgotten.
    Reconfigured {
        by: String,
    },
    /// `[alert_block]`'s query returned these series (`Some`), or nothing again (`None`).
    AlertsBlocking {
        firing: Option<String>,
    },
}
