//! `[[servers]]`: the hosts of the cluster, their roles, capacity, port ranges and initial
//! instances, and the checks of them against the mode and the service catalog.

use super::field::{is_plain_name, Errors};
use super::services::ServiceConfig;
use crate::types::{Mode, Role, ServerId, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub id: ServerId,
    /// Address the server's instances bind to and the load balancer reaches them on.
    pub address: std::net::IpAddr,
    /// Address of the agent's HTTP API.
    pub agent: SocketAddr,
    pub role: Role,
    /// Capacity in units (default: 1 unit per instance slot; see `ServiceConfig::units`).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Inclusive range of ports the agent allocates to instances.
    pub port_range: [u16; 2],
    /// Memory the server's instances may use together; the `instance-rss` rule compares
    /// their summed RSS against it. Defaults to the host's total memory.
    pub memory_budget_bytes: Option<u64>,
    /// Services started on this server when the cluster is first created.
    #[serde(default)]
    pub instances: Vec<ServiceName>,
    /// Agent data directory (logs, persisted epoch, running-time origin).
    pub data_dir: Option<PathBuf>,
    /// Joined through `POST /v1/join` (see [`super::join`]) rather than listed in the file;
    /// never read from nor written to a config file.
    #[serde(skip)]
    pub joined: bool,
    /// The shard this server belongs to when `store.shards` > 1 (default: a stable function
    /// of its id for a primary, spares dealt round-robin; see [`super::Config::shard_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
}

fn default_capacity() -> u32 {
    4
}

impl ServerConfig {
    /// This server's own fields, as `servers[i]`, against the mode and the catalog.
    pub(super) fn validate(
        &self,
        i: usize,
        mode: Mode,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        errs: &mut Errors,
    ) {
        let f = |name: &str| format!("servers[{i}].{name}");
        if self.capacity == 0 {
            errs.add(f("capacity"), "must be at least 1");
        }
        if self.port_range[0] == 0 || self.port_range[0] > self.port_range[1] {
            errs.add(f("port_range"), "must be [low, high] with 0 < low <= high");
        }
        if self.memory_budget_bytes == Some(0) {
            errs.add(f("memory_budget_bytes"), "must be greater than 0");
        }
        for (j, svc) in self.instances.iter().enumerate() {
            if !services.contains_key(svc) {
                errs.add(
                    format!("servers[{i}].instances[{j}]"),
                    "names a service not in [services]",
                );
            }
        }
        if mode == Mode::ActiveActive && self.role == Role::Spare {
            errs.add(
                f("role"),
                "active-active clusters have no spares: every server is a primary",
            );
        }
        if self.role == Role::Spare && !self.instances.is_empty() {
            errs.add(f("instances"), "a spare runs nothing until it takes over");
        }
        let units: u32 = self
            .instances
            .iter()
            .filter_map(|n| services.get(n))
            .map(|svc| svc.units)
            .sum();
        if units > self.capacity {
            errs.add(
                f("instances"),
                "the initial instances need more units than the server's capacity",
            );
        }
    }
}

/// Every server, and what they must not share: ids, agent addresses, overlapping port ranges
/// on one address; an active-standby cluster needs a spare unless it may duplex in place.
/// With `joining` (a `[join]` section) the list may be empty and the spare may join later.
pub(crate) fn validate(
    servers: &[ServerConfig],
    mode: Mode,
    services: &BTreeMap<ServiceName, ServiceConfig>,
    in_place: bool,
    joining: bool,
    errs: &mut Errors,
) {
    if servers.is_empty() && !joining {
        errs.add(
            "servers",
            "at least one server is required (or a [join] section, for servers that join)",
        );
    }
    let mut ids = BTreeSet::new();
    let mut agents = BTreeSet::new();
    for (i, s) in servers.iter().enumerate() {
        let f = |name: &str| format!("servers[{i}].{name}");
        if !is_plain_name(&s.id) {
            errs.add(
                f("id"),
                "must be non-empty and use only letters, digits, '-' and '_'",
            );
        }
        if !ids.insert(s.id.clone()) {
            errs.add(f("id"), "duplicate server id");
        }
        if !agents.insert(s.agent) {
            errs.add(f("agent"), "two servers share this agent address");
        }
        s.validate(i, mode, services, errs);
    }
    validate_port_ranges(servers, errs);
    // Without a spare, an active-standby cluster can still rejuvenate in place (the copies
    // start on the same server); with in-place duplexing off it could do nothing.
    if mode == Mode::ActiveStandby
        && !in_place
        && !joining
        && !servers.iter().any(|s| s.role == Role::Spare)
    {
        errs.add(
            "servers",
            "active-standby needs at least one server with role = \"spare\" (or rejuvenation.in_place = true)",
        );
    }
}

/// Port ranges on the same address must not overlap.
fn validate_port_ranges(servers: &[ServerConfig], errs: &mut Errors) {
    for (i, a) in servers.iter().enumerate() {
        for b in servers.iter().skip(i + 1) {
            if a.address == b.address
                && a.port_range[0] <= b.port_range[1]
                && b.port_range[0] <= a.port_range[1]
            {
                errs.add(
                    format!("servers[{i}].port_range"),
                    format!(
                        "overlaps the port range of server '{}' on the same address",
                        b.id
                    ),
                );
            }
        }
    }
}
