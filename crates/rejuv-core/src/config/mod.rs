//! The `rejuv.toml` model and its validation.
//!
//! One file describes the whole cluster: mode, servers, the service catalog (installed on every
//! server, as unit files are), initial placement, detection policy, gate, budget, rejuvenation
//! actions, traffic adapter, store and retention. Every piece reads the same file: an agent
//! picks its own `[[servers]]` entry by id.
//!
//! # Errors
//! [`Config::from_toml`] fails on syntax, unknown fields and wrong types (serde names the
//! field); [`Config::validate`] then reports every semantic problem at once, each naming its
//! field and the reason.
//!
//! Each section lives in its own file with its types, defaults and checks; [`Config`] composes
//! them. The checks of one section that need another (a server's instances against the
//! service catalog, failover against the agent timeout) take what they need as arguments, so
//! no section depends on this module.

mod agent;
mod alerts;
mod auth;
mod budget;
mod cluster;
mod conflicts;
mod controller;
mod field;
mod freeze;
mod gate;
mod hooks;
mod join;
mod listener;
mod policy;
mod rejuvenation;
mod retention;
mod servers;
mod services;
mod shards;
mod source;
mod store;
mod tls;
mod traffic;

pub use agent::{check_scratch_dir, AgentDefaults};
pub use alerts::AlertsConfig;
pub use auth::{AuthConfig, OperatorToken, TokenRole};
pub use budget::BudgetConfig;
pub use cluster::ClusterConfig;
pub use controller::{ControllerConfig, UnknownInstances};
pub use field::{bytes, ConfigError, FieldError};
pub use freeze::FreezeWindow;
pub use gate::GateConfig;
pub use hooks::{HookConfig, HookWhen, HOOK_STEPS};
pub use join::{check_join, JoinConfig, JoinRefused, JoinRequest, MAX_PENDING};
pub use listener::{
    ListenerLimits, API_MAX_CONNECTIONS, FRONT_END_MAX_CONNECTIONS, HEADER_READ_TIMEOUT,
    IDLE_TIMEOUT, MAX_CONNECTIONS_LIMIT, MAX_TIMEOUT,
};
pub(crate) use policy::MAX_SCALES;
pub use policy::{PolicyConfig, Resource, RuleConfig, TrendConfig};
pub use rejuvenation::{Action, RejuvenationConfig};
pub use retention::RetentionConfig;
pub use servers::ServerConfig;
pub use services::{Backend, HandoffConfig, HealthCheck, HealthConfig, ServiceConfig};
pub use source::{needs_capacity, Capacity, SourceConfig, SourceKind};
pub use store::{StoreConfig, StoreKind};
pub use tls::{TlsConfig, TlsFiles, NAME_PLACEHOLDER};
pub use traffic::{HaproxyCheck, HaproxyTrafficConfig, TrafficAdapter, TrafficConfig};

use crate::types::ServiceName;
use field::Errors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    /// The servers with agents; none with a Prometheus `[source]` in advisory mode.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    #[serde(default)]
    pub services: BTreeMap<ServiceName, ServiceConfig>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub gate: GateConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub rejuvenation: RejuvenationConfig,
    #[serde(default)]
    pub agent: AgentDefaults,
    #[serde(default)]
    pub traffic: TrafficConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Where alerts for a person go (besides the event log and the controller's log).
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Commands run before and after workflow steps.
    #[serde(default)]
    pub hooks: Vec<HookConfig>,
    /// Recurring windows in which no new workflow starts (a change freeze).
    #[serde(default)]
    pub freeze: Vec<FreezeWindow>,
    /// Where readings come from: the agents, or a Prometheus server.
    #[serde(default)]
    pub source: SourceConfig,
    /// Recurring windows outside which no planned workflow starts (none: any time). Same
    /// shape as `[[freeze]]`; a dead primary's failover and an operator's request do not wait.
    #[serde(default)]
    pub allow: Vec<FreezeWindow>,
    /// No planned workflow starts while this Prometheus query returns anything (firing
    /// alerts, as kured's `--prometheus-url` does).
    #[serde(default)]
    pub alert_block: Option<AlertBlockConfig>,
    /// Mutual TLS between the parts; none: plain HTTP (a warning unless `insecure = true`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Servers that join by asking (`rejuv agent --join`); none: only `[[servers]]`.
    #[serde(default)]
    pub join: Option<JoinConfig>,
}

/// `[alert_block]`: a Prometheus query that must be empty for a planned workflow to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertBlockConfig {
    /// Prometheus base URL, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// PromQL (instant query); any series in the answer blocks.
    #[serde(default = "default_alert_query")]
    pub query: String,
    /// How often it is asked.
    #[serde(with = "humantime_serde", default = "default_alert_interval")]
    pub interval: std::time::Duration,
}

fn default_alert_query() -> String {
    r#"ALERTS{alertstate="firing",severity="critical"}"#.to_string()
}

fn default_alert_interval() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

impl Config {
    /// Parses and validates a config.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(ConfigError::Parse)?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Every semantic problem, each naming its field: every section's own checks, one section
    /// after the other.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors::default();
        // A Prometheus source alone (no agents) only advises: no servers, services or
        // traffic to check.
        let advisory_only = self.advisory_only();
        if !advisory_only {
            servers::validate(
                &self.servers,
                self.cluster.mode,
                &self.services,
                self.rejuvenation.in_place,
                self.join.is_some(),
                &mut errs,
            );
        }
        self.source.validate(&mut errs);
        self.store.validate(&mut errs);
        self.validate_shards(&mut errs);
        if !advisory_only {
            services::validate(&self.services, &mut errs);
        }
        self.policy
            .validate(self.controller.agent_timeout, &mut errs);
        self.gate.validate(&mut errs);
        self.cluster.validate(&mut errs);
        self.retention.validate(&mut errs);
        let capacity: u32 = self
            .servers
            .iter()
            .filter(|s| s.role == crate::types::Role::Primary)
            .map(|s| s.capacity)
            .sum();
        self.budget.validate(capacity, &mut errs);
        self.rejuvenation.validate(&mut errs);
        self.agent.validate(&self.rejuvenation, &mut errs);
        if !advisory_only {
            self.traffic.validate(&self.services, &mut errs);
        }
        self.controller.validate(&mut errs);
        self.alerts.validate(&mut errs);
        self.auth.validate(&mut errs);
        if let Some(t) = &self.tls {
            t.validate(&mut errs);
        }
        hooks::validate(&self.hooks, &mut errs);
        freeze::validate(&self.freeze, &mut errs);
        freeze::validate_as("allow", &self.allow, &mut errs);
        if let Some(a) = &self.alert_block {
            if !a.url.starts_with("http://") {
                errs.add("alert_block.url", "must be an http:// URL of Prometheus");
            }
            if a.query.trim().is_empty() {
                errs.add("alert_block.query", "must be a PromQL query");
            }
            if a.interval < std::time::Duration::from_secs(1) {
                errs.add("alert_block.interval", "must be at least 1s");
            }
        }
        conflicts::validate(self, &mut errs);
        errs.into_vec()
    }

    /// A Prometheus source and no agents: the controller can only advise (`--dry-run`).
    pub fn advisory_only(&self) -> bool {
        self.servers.is_empty() && self.join.is_none() && self.source.is_prometheus()
    }

    pub fn server(&self, id: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// The TLS files of the part named `name` (see [`NAME_PLACEHOLDER`]), when TLS is on.
    pub fn tls_files(&self, name: &str) -> Option<TlsFiles> {
        self.tls.as_ref().and_then(|t| t.files(name))
    }

    /// Whether the controller's operator API is HTTPS.
    pub fn api_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.enabled() && t.api)
    }

    /// The freeze window `wall_ms` falls in, if any.
    pub fn frozen_by(&self, wall_ms: u64) -> Option<&FreezeWindow> {
        self.freeze.iter().find(|w| w.contains(wall_ms))
    }

    /// Whether `wall_ms` is outside every `[[allow]]` window (never, when there is none).
    pub fn outside_allowed(&self, wall_ms: u64) -> bool {
        !self.allow.is_empty() && !self.allow.iter().any(|w| w.contains(wall_ms))
    }

    /// What is allowed but likely to hurt, each naming its field: the controller logs these
    /// at start and `rejuv config check` prints them.
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        // A Prometheus source alone talks to no agent or proxy.
        if !self.tls.as_ref().is_some_and(|t| t.enabled() || t.insecure) && !self.advisory_only() {
            out.push(FieldError {
                field: "tls".into(),
                reason: "not set: controller, agents and proxy talk plain HTTP, so anyone on the network path reads their tokens and commands; add [tls] (see `rejuv tls init`) or set [tls] insecure = true to say it is on purpose".into(),
            });
        }
        if self.traffic.adapter == TrafficAdapter::Builtin
            && self.auth.proxy_token_file.is_none()
            && !self.advisory_only()
        {
            out.push(FieldError {
                field: "auth.proxy_token_file".into(),
                reason: "not set: the builtin proxy's admin API takes the operators' API token, so every holder of it can rewrite where traffic goes; give the proxy a token of its own".into(),
            });
        }
        if self.store.kind == StoreKind::Etcd {
            // A leader that dies during a hand-off is replaced within the lease TTL; the
            // next one then finishes the move. Requests held longer than `hold` fail.
            let needed = self.store.lease_ttl + Duration::from_secs(2);
            for (name, svc) in &self.services {
                if let Some(h) = svc.handoff.as_ref().filter(|h| h.hold < needed) {
                    out.push(FieldError {
                        field: format!("services.{name}.handoff.hold"),
                        reason: format!(
                            "{} is shorter than store.lease_ttl + 2s ({}): requests held while a leader that died mid-hand-off is replaced would fail",
                            humantime::format_duration(h.hold),
                            humantime::format_duration(needed)
                        ),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::Mode;
    use std::collections::BTreeSet;

    /// A small valid config (one primary, one spare, one service), for tests across the core.
    pub(crate) const EXAMPLE: &str = r#"
[cluster]
mode = "active-standby"

[traffic]
admin = "127.0.0.1:7071"
listen = { web = "127.0.0.1:8080" }

[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "127.0.0.2:7001"
role = "primary"
port_range = [20000, 20010]
instances = ["web"]

[[servers]]
id = "s2"
address = "127.0.0.3"
agent = "127.0.0.3:7001"
role = "spare"
port_range = [20000, 20010]

[services.web]
command = "/usr/bin/true"
health = { path = "/healthz" }
"#;

    #[test]
    fn active_standby_without_a_spare_is_valid_when_it_may_duplex_in_place() {
        let no_spare = EXAMPLE.replace("role = \"spare\"", "role = \"primary\"");
        assert!(Config::from_toml(&no_spare).is_ok());
        let Err(ConfigError::Invalid(errs)) =
            Config::from_toml(&format!("{no_spare}\n[rejuvenation]\nin_place = false\n"))
        else {
            panic!("no spare and no in-place duplexing must be refused")
        };
        let e = errs
            .iter()
            .find(|e| e.field == "servers")
            .expect("names servers");
        assert!(e.reason.contains("in_place"), "{}", e.reason);
    }

    #[test]
    fn example_is_valid() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.cluster.mode, Mode::ActiveStandby);
    }

    #[test]
    fn listener_limits_have_defaults_and_are_checked_by_field() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.agent.listener_limits(), ListenerLimits::api());
        assert_eq!(c.controller.listener_limits(), ListenerLimits::api());
        assert_eq!(c.traffic.listener_limits(), ListenerLimits::front_end());
        let set = EXAMPLE
            .replace(
                "[traffic]\n",
                "[traffic]\nmax_connections = 50000\nheader_read_timeout = \"3s\"\n",
            )
            .replace(
                "[cluster]\n",
                "[controller]\nidle_timeout = \"5m\"\n\n[cluster]\n",
            );
        let c = Config::from_toml(&set).unwrap();
        assert_eq!(c.traffic.max_connections, 50_000);
        assert_eq!(c.traffic.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.controller.idle_timeout, Duration::from_secs(300));
        let bad =
            format!("{EXAMPLE}\n[agent]\nmax_connections = 0\nheader_read_timeout = \"0s\"\n")
                .replace("[traffic]\n", "[traffic]\nidle_timeout = \"2h\"\n");
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(&bad) else {
            panic!("zero and two-hour limits are refused")
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "agent.max_connections",
                "agent.header_read_timeout",
                "traffic.idle_timeout"
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn etcd_store_fields_are_checked() {
        let ok = format!(
            "{EXAMPLE}\n[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"5s\"\n"
        );
        let c = Config::from_toml(&ok).unwrap();
        assert_eq!(c.store.kind, StoreKind::Etcd);
        assert_eq!(c.store.etcd_prefix(&c.cluster.name), "/rejuv/rejuv");
        let bad = ok
            .replace("http://127.0.0.1:2379", "127.0.0.1:2379")
            .replace("\"5s\"", "\"1s\"");
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(&bad) else {
            panic!()
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"store.endpoints[0]"), "{fields:?}");
        assert!(fields.contains(&"store.lease_ttl"), "{fields:?}");
        let compact = ok.replace("lease_ttl = \"5s\"", "compact_every = \"2d\"");
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(&compact) else {
            panic!("a compaction period of two days is refused")
        };
        assert_eq!(errs[0].field, "store.compact_every");
    }

    #[test]
    fn a_handoff_hold_shorter_than_a_leader_handover_is_warned_about() {
        let plain = Config::from_toml(EXAMPLE).unwrap().warnings();
        assert_eq!(
            plain[0].field, "tls",
            "no [tls]: plain HTTP is warned about"
        );
        let example = format!("{EXAMPLE}\n[tls]\ninsecure = true\n");
        let bare = Config::from_toml(&example).unwrap().warnings();
        assert_eq!(bare.len(), 1, "{bare:?}");
        assert_eq!(
            bare[0].field, "auth.proxy_token_file",
            "the proxy shares the API token"
        );
        let held = example
            .replace(
                "health = { path = \"/healthz\" }",
                "health = { path = \"/healthz\" }\nhandoff = { export = \"/e\", import = \"/i\", hold = \"3s\" }",
            )
            .replace("[traffic]", "[auth]\nproxy_token_file = \"/p\"\n[traffic]");
        let sqlite = Config::from_toml(&held).unwrap();
        assert!(sqlite.warnings().is_empty(), "no leader handover on SQLite");
        let etcd = format!("{held}\n[store]\nkind = \"etcd\"\nlease_ttl = \"5s\"\n");
        let w = Config::from_toml(&etcd).unwrap().warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "services.web.handoff.hold");
        assert!(w[0].reason.contains("7s"), "{}", w[0].reason);
        let long = etcd.replace("hold = \"3s\"", "hold = \"7s\"");
        assert!(Config::from_toml(&long).unwrap().warnings().is_empty());
    }

    #[test]
    fn unknown_field_is_named() {
        let text = EXAMPLE.replace("[cluster]", "[cluster]\nmood = 1");
        let e = Config::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("mood"), "{e}");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = EXAMPLE
            .replace("role = \"spare\"", "role = \"primary\"")
            .replace("command = \"/usr/bin/true\"", "command = \"true\"")
            .replace("instances = [\"web\"]", "instances = [\"db\"]")
            + "\n[rejuvenation]\nin_place = false\n";
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(&text) else {
            panic!()
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"servers"), "{fields:?}");
        assert!(fields.contains(&"services.web.command"), "{fields:?}");
        assert!(fields.contains(&"servers[0].instances[0]"), "{fields:?}");
    }

    #[test]
    fn bad_hooks_alerts_and_freeze_windows_are_named() {
        let text = format!(
            "{EXAMPLE}
[alerts]
webhook = \"ftp://x\"

[[hooks]]
name = \"smoke\"
step = \"draining\"
when = \"after\"
command = [\"smoke.sh\"]
veto = true

[[hooks]]
name = \"smoke\"
step = \"lunch\"
when = \"before\"
command = []

[[freeze]]
name = \"w\"
days = [\"monday\"]
start = \"25:00\"
duration = \"2d\"
"
        );
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(&text) else {
            panic!("accepted")
        };
        let fields: BTreeSet<_> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "alerts.webhook",
            "hooks[0].command",
            "hooks[0].veto",
            "hooks[1].name",
            "hooks[1].step",
            "hooks[1].command",
            "freeze[0].start",
            "freeze[0].duration",
            "freeze[0].days[0]",
        ] {
            assert!(fields.contains(f), "{f} not in {fields:?}");
        }
    }
}
