//! The cluster state in parts, for a store that writes only what changed: each server, each
//! instance and the route table apart from the rest ([`WithoutFleet`]). A step then writes the
//! few parts it changed, not a state that grows with the fleet.

use super::state::{Cluster, Instance, Server};
use super::Workflow;
use crate::api::RouteTable;
use crate::cluster::Command;
use crate::types::{InstanceId, Mode};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};

/// The cluster with no servers, no instances and an empty route table: serialized, it reads
/// back as a [`Cluster`] into which the stored parts are put back.
pub struct WithoutFleet<'a>(pub &'a Cluster);

impl Serialize for WithoutFleet<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Every field is named: a new one must be sorted into the rest or the parts here
        // before this compiles.
        let Cluster {
            mode,
            servers: _,
            instances: _,
            workflows,
            history,
            pending,
            paused,
            routes_version,
            routes: _,
            next_id,
            completed_total,
            rolled_back_total,
            failed_total,
            last_completed_at_ms,
            advisory,
            quorum_lost,
            exhausted_total,
            advised: _,
            forgotten,
            unknown_reported,
            incarnation,
            alerts_blocking,
            joined,
        } = self.0;
        #[derive(Serialize)]
        struct View<'a> {
            mode: &'a Mode,
            servers: BTreeMap<String, Server>,
            instances: BTreeMap<InstanceId, Instance>,
            workflows: &'a BTreeMap<u64, Workflow>,
            history: &'a Vec<Workflow>,
            pending: &'a BTreeMap<u64, Command>,
            paused: &'a bool,
            routes_version: &'a u64,
            routes: RouteTable,
            next_id: &'a u64,
            completed_total: &'a u64,
            rolled_back_total: &'a u64,
            failed_total: &'a u64,
            last_completed_at_ms: &'a Option<u64>,
            advisory: &'a bool,
            quorum_lost: &'a bool,
            exhausted_total: &'a u64,
            forgotten: &'a Vec<InstanceId>,
            unknown_reported: &'a BTreeSet<InstanceId>,
            incarnation: &'a String,
            alerts_blocking: &'a Option<String>,
            joined: &'a BTreeMap<String, crate::config::ServerConfig>,
        }
        View {
            mode,
            servers: BTreeMap::new(),
            instances: BTreeMap::new(),
            workflows,
            history,
            pending,
            paused,
            routes_version,
            routes: RouteTable {
                epoch: 0,
                version: 0,
                services: BTreeMap::new(),
            },
            next_id,
            completed_total,
            rolled_back_total,
            failed_total,
            last_completed_at_ms,
            advisory,
            quorum_lost,
            exhausted_total,
            forgotten,
            unknown_reported,
            incarnation,
            alerts_blocking,
            joined,
        }
        .serialize(s)
    }
}

impl Server {
    /// This server as stored: without its readings (observation, explanation), which the next
    /// poll brings anew.
    pub fn without_readings(&self) -> Server {
        Server {
            observation: None,
            explanation: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::time::Now;

    #[test]
    fn the_rest_and_the_parts_make_the_whole_again() {
        let cfg = Config::from_toml(crate::config::tests::EXAMPLE).unwrap();
        let (c, _) = Cluster::new(&cfg, Now::new(0, 1_000));
        assert!(!c.servers.is_empty() && !c.instances.is_empty());
        let rest = serde_json::to_string(&WithoutFleet(&c)).unwrap();
        let mut back: Cluster = serde_json::from_str(&rest).unwrap();
        assert!(back.servers.is_empty() && back.instances.is_empty());
        back.servers = c.servers.clone();
        back.instances = c.instances.clone();
        back.routes = c.routes.clone();
        assert_eq!(back, c);
    }
}
