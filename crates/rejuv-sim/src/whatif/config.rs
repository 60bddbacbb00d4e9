//! The policy the `rejuv` replay runs, and the cluster config built around it for the fleet.
//!
//! The policy is the `[policy]`, `[gate]`, `[budget]` and `[rejuvenation]` sections of a
//! `rejuv.toml` (`--config`; a whole config may be given, the other sections are left out and
//! said so), or the built-in [`DEFAULTS`] for a fleet sampled every 10 s (`docs/whatif.md`
//! says why each value). The cluster around it is made from the fleet: one server per series,
//! each primary running one instance of one service, placed as [`Placement`] says.
//!
//! Every series is replayed as one resource the detector watches, [`RESOURCE`], as the
//! fraction `value / capacity`: the host's memory, which stays with the host whatever
//! instances move to or from it. Rules and trend resources naming `instance-rss` (what
//! `rejuv export samples` writes) are read as naming it.
//!
//! # Errors
//! A section that does not parse, or a policy the core's validation refuses, is a
//! [`WhatifError::Config`] naming the field.

use super::input::Fleet;
use super::placement::Placement;
use super::WhatifError;
use rejuv_core::config::{
    BudgetConfig, Config, GateConfig, PolicyConfig, RejuvenationConfig, Resource,
};
use rejuv_core::types::Role;
use serde::Deserialize;

/// The resource every series is replayed as.
pub const RESOURCE: Resource = Resource::MemoryUsed;

/// The policy without `--config`, for a fleet sampled every 10 s whose series span days.
/// `budget.max_concurrent` is left to [`default_max_concurrent`], which grows with the fleet.
pub const DEFAULTS: &str = r#"
[policy]
# The trend rule is the policy; this threshold is the net under it for a step change the
# trend cannot see coming. It sits above where healthy servers run (up to 98.5% in the
# trace suites' near-limit family), so it fires only on a server about to run out.
hold_down = "60s"
rules = [{ resource = "memory-used", above = 0.99 }]

[policy.trend]
# Scales of 32 h, 8 h, 2 h and 30 min: a leak that takes days shows on the longest, a
# runaway one on the shortest. 64 buckets a scale: one per 3.75 min on the 4-hour scale.
window = "32h"
min_window = "20m"
points = 64
# Alarm only when exhaustion is forecast within two days, and never further ahead than the
# scale has watched (max_extrapolation 1).
horizon = "48h"
max_extrapolation = 1.0
confidence = 0.99
min_evaluations = 3
min_persistence = "60s"
resources = ["memory-used"]

[gate]
# There is no load in a recording: the gate waits only for a fresh server's first
# 10 minutes, and never longer than 30 minutes for a quieter moment.
min_running_time = "10m"
max_wait = "30m"

[budget]
min_available_capacity = 0
cooldown = "0s"

[rejuvenation]
actions = ["stop-instances", "clear-scratch", "drop-caches", "compact-memory", "restart-agent"]
duplex_timeout = "2m"
verify_timeout = "5m"
"#;

/// Workflows at once without `--config`: 1 per 20 primaries (5% of the fleet), at least 1.
/// Leaks that start together (a bad release) then do not queue behind one another for
/// hours, and the fleet never loses more than a twentieth of its servers to rejuv at once.
pub fn default_max_concurrent(primaries: usize) -> u32 {
    (primaries.div_ceil(20)).max(1) as u32
}

/// The four sections, as a file may hold them.
#[derive(Debug, Clone, Default, Deserialize)]
struct Sections {
    policy: Option<PolicyConfig>,
    gate: Option<GateConfig>,
    budget: Option<BudgetConfig>,
    rejuvenation: Option<RejuvenationConfig>,
}

/// The policy of a `rejuv` replay.
#[derive(Debug, Clone)]
pub struct PolicySections {
    pub policy: PolicyConfig,
    pub gate: GateConfig,
    pub budget: BudgetConfig,
    pub rejuvenation: RejuvenationConfig,
    /// Where it came from: `built-in defaults`, or the file.
    pub origin: String,
    /// Top-level sections of the file that the replay does not read.
    pub ignored: Vec<String>,
    /// Whether `budget.max_concurrent` was given (else [`default_max_concurrent`]).
    max_concurrent_given: bool,
}

/// The sections a `--config` may hold.
const READ: [&str; 4] = ["policy", "gate", "budget", "rejuvenation"];

impl PolicySections {
    /// The built-in defaults ([`DEFAULTS`]).
    pub fn defaults() -> Self {
        Self::from_toml(DEFAULTS, "built-in defaults")
            .unwrap_or_else(|e| panic!("the built-in whatif defaults do not parse: {e}"))
    }

    /// The policy sections of a config file's text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, WhatifError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| WhatifError::Config(format!("{origin}: {}", e.to_string().trim())))?;
        let mut ignored = Vec::new();
        let mut kept = toml::Table::new();
        for (k, v) in table {
            if READ.contains(&k.as_str()) {
                kept.insert(k, v);
            } else {
                ignored.push(k);
            }
        }
        let max_concurrent_given = kept
            .get("budget")
            .and_then(|b| b.get("max_concurrent"))
            .is_some();
        let mut s = Sections::default();
        for (k, v) in kept {
            let bad = |e: toml::de::Error| {
                WhatifError::Config(format!("{origin}: [{k}]: {}", e.to_string().trim()))
            };
            match k.as_str() {
                "policy" => s.policy = Some(v.try_into().map_err(bad)?),
                "gate" => s.gate = Some(v.try_into().map_err(bad)?),
                "budget" => s.budget = Some(v.try_into().map_err(bad)?),
                _ => s.rejuvenation = Some(v.try_into().map_err(bad)?),
            }
        }
        Ok(Self {
            policy: s.policy.unwrap_or_default(),
            gate: s.gate.unwrap_or_default(),
            budget: s.budget.unwrap_or_default(),
            rejuvenation: s.rejuvenation.unwrap_or_default(),
            origin: origin.to_string(),
            ignored,
            max_concurrent_given,
        })
    }

    /// The policy as the replay runs it for `fleet`: resources read as [`RESOURCE`], and
    /// the default budget sized to the fleet.
    fn for_fleet(&self, fleet: &Fleet) -> Result<Self, WhatifError> {
        let mut s = self.clone();
        let map = |r: Resource| {
            if r == Resource::InstanceRss {
                RESOURCE
            } else {
                r
            }
        };
        for rule in &mut s.policy.rules {
            rule.resource = map(rule.resource);
        }
        let mut resources: Vec<Resource> = Vec::new();
        for r in s.policy.trend.resources.iter().map(|r| map(*r)) {
            if !resources.contains(&r) {
                resources.push(r);
            }
        }
        s.policy.trend.resources = resources;
        // The replay moves copies only to rejuvenate: a rebalancing move is no policy's
        // decision and would blur the comparison.
        s.rejuvenation.rebalance = false;
        let watched = s.policy.trend.resources.contains(&RESOURCE)
            || s.policy.rules.iter().any(|r| r.resource == RESOURCE);
        if !watched {
            return Err(WhatifError::Config(format!(
                "{}: neither a rule nor policy.trend.resources names memory-used or instance-rss: the replay's series would not be judged at all",
                self.origin
            )));
        }
        if !self.max_concurrent_given {
            let primaries = fleet
                .servers
                .iter()
                .filter(|x| x.role == Role::Primary)
                .count();
            s.budget.max_concurrent = default_max_concurrent(primaries);
        }
        Ok(s)
    }
}

/// The address of the `i`-th server of the replayed cluster (its agent's, and its
/// instances').
pub fn server_ip(i: usize) -> std::net::Ipv4Addr {
    let n = i + 1;
    std::net::Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// The config of the replayed cluster: the fleet as servers, one service, and the policy.
pub fn cluster_config(
    fleet: &Fleet,
    sections: &PolicySections,
    placement: Placement,
) -> Result<Config, WhatifError> {
    let sections = sections.for_fleet(fleet)?;
    let mut text = format!(
        r#"
[cluster]
name = "whatif"
mode = "{}"

[traffic]
admin = "127.0.0.1:7071"

[agent]
host_actions = true
restart_command = ["/sbin/reboot"]

[services.app]
command = "/usr/bin/true"
health = {{ path = "/healthz" }}
"#,
        placement.mode
    );
    let too_big = |id: &str| {
        WhatifError::Config(format!(
            "server {id}: its units times the {} servers of the fleet do not fit the core's capacity counter",
            fleet.servers.len()
        ))
    };
    let mut total: u32 = 0;
    for (i, s) in fleet.servers.iter().enumerate() {
        let capacity = placement.capacity(s.units).ok_or_else(|| too_big(&s.id))?;
        if s.role == Role::Primary {
            total = total.checked_add(capacity).ok_or_else(|| too_big(&s.id))?;
        }
        let ip = server_ip(i);
        let instances = if s.role == Role::Primary {
            r#"["app"]"#
        } else {
            "[]"
        };
        text += &format!(
            r#"
[[servers]]
id = "{id}"
address = "{ip}"
agent = "{ip}:7001"
role = "{role}"
capacity = {capacity}
port_range = [20000, 29999]
instances = {instances}
"#,
            id = s.id,
            role = s.role,
        );
    }
    let mut cfg: Config = toml::from_str(&text)
        .map_err(|e| WhatifError::Config(format!("the replayed cluster's config: {e}")))?;
    let floor = sections.budget.min_available_capacity;
    cfg.policy = sections.policy;
    cfg.gate = sections.gate;
    cfg.budget = sections.budget;
    cfg.budget.min_available_capacity = placement.floor(floor).ok_or_else(|| {
        WhatifError::Config(format!(
            "{}: budget.min_available_capacity {floor} is too large",
            sections.origin
        ))
    })?;
    cfg.rejuvenation = sections.rejuvenation;
    let errors = cfg.validate();
    if !errors.is_empty() {
        let all: Vec<String> = errors
            .iter()
            .map(|e| {
                // The floor is checked in the core's units; say it in serving units.
                if e.field == "budget.min_available_capacity" {
                    format!(
                        "budget.min_available_capacity: {floor} is more than the primaries' {} serving units",
                        fleet.primary_units()
                    )
                } else {
                    e.to_string()
                }
            })
            .collect();
        return Err(WhatifError::Config(format!(
            "{}: {}",
            sections.origin,
            all.join("; ")
        )));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whatif::input::Series;
    use rejuv_core::types::Mode;
    use std::time::Duration;

    fn fleet(roles: &[Role]) -> Fleet {
        Fleet {
            servers: roles
                .iter()
                .enumerate()
                .map(|(i, r)| Series {
                    id: format!("s{i}"),
                    capacity: 100.0,
                    role: *r,
                    units: 2,
                    t: vec![0.0],
                    v: vec![1.0],
                })
                .collect(),
        }
    }

    #[test]
    fn the_defaults_make_a_valid_config_sized_to_the_fleet() {
        let f = fleet(&[Role::Primary; 41]);
        let p = Placement::for_fleet(&f);
        let cfg = cluster_config(&f, &PolicySections::defaults(), p).unwrap();
        assert_eq!(cfg.cluster.mode, Mode::ActiveActive);
        assert_eq!(
            cfg.budget.max_concurrent, 3,
            "41 primaries: 1 per 20, rounded up"
        );
        assert_eq!(cfg.servers[0].capacity, 2 * 41);
        assert_eq!(cfg.policy.trend.window, Duration::from_secs(32 * 3600));
        assert_eq!(cfg.policy.trend.resources, [RESOURCE]);
        assert_eq!(default_max_concurrent(1), 1);
        assert_eq!(default_max_concurrent(20), 1);
        assert_eq!(default_max_concurrent(21), 2);
    }

    #[test]
    fn a_config_file_gives_its_policy_sections_and_the_rest_is_left_out() {
        let text = r#"
[cluster]
mode = "active-standby"

[policy]
hold_down = "5m"
rules = [{ resource = "instance-rss", above = 0.9 }]

[policy.trend]
window = "8h"
resources = ["instance-rss", "fds"]

[budget]
max_concurrent = 2
min_available_capacity = 3
"#;
        let s = PolicySections::from_toml(text, "rejuv.toml").unwrap();
        assert_eq!(s.ignored, ["cluster"]);
        let f = fleet(&[Role::Primary, Role::Primary, Role::Spare]);
        let p = Placement::for_fleet(&f);
        let cfg = cluster_config(&f, &s, p).unwrap();
        assert_eq!(cfg.cluster.mode, Mode::ActiveStandby);
        assert_eq!(cfg.policy.hold_down, Duration::from_secs(300));
        assert_eq!(cfg.policy.rules[0].resource, RESOURCE);
        assert_eq!(cfg.policy.trend.resources, [RESOURCE, Resource::Fds]);
        assert_eq!(cfg.budget.max_concurrent, 2, "given, not sized");
        assert_eq!(cfg.budget.min_available_capacity, 3);
        assert_eq!(cfg.gate.max_wait, GateConfig::default().max_wait);
    }

    #[test]
    fn bad_policy_sections_name_the_field() {
        let e = |text: &str| match PolicySections::from_toml(text, "p.toml").and_then(|s| {
            cluster_config(
                &fleet(&[Role::Primary]),
                &s,
                Placement::for_fleet(&fleet(&[Role::Primary])),
            )
        }) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        assert!(e("[policy.trend]\nwindw = \"2h\"\n").contains("windw"));
        assert!(e("[policy.trend]\npoints = 3\n").contains("policy.trend.points"));
        assert!(e("[budget]\nmin_available_capacity = 5\n").contains(
            "budget.min_available_capacity: 5 is more than the primaries' 2 serving units"
        ));
        assert!(
            e("[policy]\nrules = []\n[policy.trend]\nresources = [\"fds\"]\n")
                .contains("neither a rule nor policy.trend.resources")
        );
        assert!(e("[policy\n").starts_with("p.toml: "));
    }
}
