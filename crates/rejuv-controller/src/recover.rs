//! A controller never silently forks its cluster.
//!
//! A store with no epoch and no state is either a new cluster or a lost one (a deleted
//! database, a new etcd prefix). The agents tell which: an agent that accepted an epoch, or runs
//! instances, has history. A fresh state facing such agents would take epoch 1 (every agent
//! answers `409 stale epoch`), start new instances beside the ones serving (orphaning them),
//! and show the cluster in service while nothing can be changed.
//!
//! So before a fresh state is made, every configured agent is asked for its state:
//! - none has history (or none answers): a new cluster, as always;
//! - some have: the controller refuses to start and names them, unless it was started with
//!   `--adopt-agents`; then it takes an epoch above every agent's and adopts their running
//!   instances ([`rejuv_core::cluster::Cluster::adopt`]).
//!
//! On a store that has a state, `--adopt-agents` only takes an epoch above every agent's: the
//! way back when an agent holds a higher epoch than the store (a restored backup).

use crate::agent_client::AgentClient;
use crate::agent_conn::AgentConn;
use crate::store::Store;
use futures::StreamExt;
use rejuv_core::api::AgentState;
use rejuv_core::cluster::Found;
use rejuv_core::config::Config;
use rejuv_core::types::ServerId;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// What a controller recovering a lost store takes from its agents.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The highest epoch an agent holds: the controller's epoch is taken above it.
    pub epoch_floor: u64,
    /// Running instances per server, adopted into the new state.
    pub found: BTreeMap<ServerId, Vec<Found>>,
}

/// How many agents a controller checking a new store asks at once.
const RECOVERY_ASKS: usize = 256;

/// Checks a store before a fresh state is made in it (see the module docs).
///
/// # Errors
/// The store's epoch is unreadable; or the store is empty, agents have history and `adopt`
/// is false (the error names them and the command that adopts them).
pub async fn check_store(
    cfg: &Config,
    store: &mut Store,
    client: &AgentClient,
    adopt: bool,
) -> anyhow::Result<Option<Recovery>> {
    let has_history = store.stored_epoch()?.is_some() || store.load()?.is_some();
    if has_history && !adopt {
        return Ok(None);
    }
    let timeout = cfg.controller.agent_timeout;
    let targets: Vec<(ServerId, std::net::SocketAddr)> = cfg
        .servers
        .iter()
        .map(|s| (s.id.clone(), s.agent))
        .collect();
    let asks = targets.into_iter().map(|(id, agent)| {
        let client = client.clone();
        async move {
            // A connection of its own, closed after the answer: the general client would keep
            // a client per address (for its certificate check) for good.
            let answer = AgentConn::new(client, agent).state(timeout).await;
            (id, answer)
        }
    });
    // At most RECOVERY_ASKS at once, in the config's order: a large fleet over TLS is not
    // asked in one burst (10,000 handshakes at once held gigabytes and timed out).
    let answers: Vec<_> = futures::stream::iter(asks)
        .buffered(RECOVERY_ASKS)
        .collect()
        .await;
    let mut with_history: Vec<(ServerId, AgentState)> = Vec::new();
    let mut silent = Vec::new();
    for (server, answer) in answers {
        match answer {
            Ok(state) if state.epoch > 0 || !state.instances.is_empty() => {
                with_history.push((server, state));
            }
            Ok(_) => {}
            Err(e) => silent.push(format!("{server} ({e})")),
        }
    }
    if !silent.is_empty() {
        warn!(
            agents = %silent.join(", "),
            "new store: these agents did not answer, so their history is unknown (an agent with a higher epoch will refuse this controller's commands)"
        );
    }
    if has_history {
        // `--adopt-agents` on a store with a state: only the epoch is taken above the agents'
        // (the way out when an agent holds an epoch above this controller's).
        let floor = with_history.iter().map(|(_, s)| s.epoch).max().unwrap_or(0);
        warn!(
            epoch_floor = floor,
            "--adopt-agents: taking an epoch above every agent's"
        );
        return Ok(Some(Recovery {
            epoch_floor: floor,
            found: BTreeMap::new(),
        }));
    }
    if with_history.is_empty() {
        return Ok(None);
    }
    let named = with_history
        .iter()
        .map(|(id, s)| format!("{id} (epoch {}, {} instances)", s.epoch, s.instances.len()))
        .collect::<Vec<_>>()
        .join(", ");
    anyhow::ensure!(
        adopt,
        "the store is empty, but agents have history: {named}. A new state would fork the \
         cluster (the agents refuse its epoch as stale, and their running instances would be \
         orphaned). If the store was lost, start this controller once with --adopt-agents to \
         take an epoch above theirs and adopt their running instances; if these agents belong \
         to another cluster, point this config at that cluster's store"
    );
    let recovery = Recovery {
        epoch_floor: with_history.iter().map(|(_, s)| s.epoch).max().unwrap_or(0),
        found: with_history
            .iter()
            .map(|(id, s)| (id.clone(), found_instances(s)))
            .collect(),
    };
    info!(agents = %named, epoch_floor = recovery.epoch_floor, "new store: adopting the agents' epochs and instances");
    Ok(Some(recovery))
}

/// The instances an agent still owns (all but stopped or stopping ones; it restarts a crashed
/// one itself).
fn found_instances(state: &AgentState) -> Vec<Found> {
    use rejuv_core::api::InstanceState;
    state
        .instances
        .iter()
        .filter(|i| {
            !matches!(
                i.state,
                InstanceState::Stopping | InstanceState::Stopped | InstanceState::Absent
            )
        })
        .map(|i| Found {
            id: i.id.clone(),
            service: i.service.clone(),
            addr: i.addr,
        })
        .collect()
}
