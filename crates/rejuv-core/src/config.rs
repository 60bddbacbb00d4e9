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

use crate::types::{Mode, Role, ServerId, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A problem with one field of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `servers[2].port_range`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid TOML for rejuv: {0}")]
    Parse(#[source] toml::de::Error),
    #[error("config has {} error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    pub servers: Vec<ServerConfig>,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default = "default_cluster_name")]
    pub name: String,
    pub mode: Mode,
}

fn default_cluster_name() -> String {
    "rejuv".into()
}

/// Bearer tokens. A token file holds one line; leading and trailing white space is dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Token the controller presents to agents, and agents require.
    pub agent_token_file: Option<PathBuf>,
    /// Token operators present to the controller API (and the proxy's admin API).
    pub api_token_file: Option<PathBuf>,
    /// Named operator tokens for the controller API: an action taken with one is logged as
    /// that operator's (the shared `api_token_file` logs the `x-rejuv-actor` header's name).
    #[serde(default)]
    pub operators: Vec<OperatorToken>,
}

/// A named operator and the file holding their token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorToken {
    pub name: String,
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default = "default_controller_listen")]
    pub listen: SocketAddr,
    /// How often agents are polled for a sample.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll_interval: Duration,
    /// An agent that has not answered for this long is unreachable.
    #[serde(with = "humantime_serde", default = "default_agent_timeout")]
    pub agent_timeout: Duration,
}

fn default_controller_listen() -> SocketAddr {
    "127.0.0.1:7070".parse().expect("static address")
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_agent_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            listen: default_controller_listen(),
            poll_interval: default_poll(),
            agent_timeout: default_agent_timeout(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

fn default_capacity() -> u32 {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Program to run. `{port}` and `{address}` in args and env values are replaced with the
    /// instance's allocated port and the server address; `{instance}` with the instance id.
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    /// Capacity units one instance takes.
    #[serde(default = "default_units")]
    pub units: u32,
    pub health: HealthConfig,
    /// Longest time an instance being drained is given to finish in-flight requests.
    #[serde(with = "humantime_serde", default = "default_drain")]
    pub drain: Duration,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    #[serde(with = "humantime_serde", default = "default_grace")]
    pub stop_grace: Duration,
    pub handoff: Option<HandoffConfig>,
}

fn default_units() -> u32 {
    1
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
fn default_grace() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// HTTP path answered with 2xx when the instance is healthy.
    pub path: String,
    #[serde(with = "humantime_serde", default = "default_health_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_health_timeout")]
    pub timeout: Duration,
}

fn default_health_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}

/// State hand-off: the old instance's state is read with `GET export` and written to the new
/// instance with `PUT import`, while the proxy holds the service's requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffConfig {
    pub export: String,
    pub import: String,
    /// Longest time a request is held while the state moves.
    #[serde(with = "humantime_serde", default = "default_hold")]
    pub hold: Duration,
}

fn default_hold() -> Duration {
    Duration::from_secs(5)
}

/// A resource the detector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    /// Host memory used, as a fraction of total.
    MemoryUsed,
    /// Swap used, as a fraction of total swap.
    SwapUsed,
    /// Open fds, as a fraction of the host limit.
    Fds,
    /// Host threads, a count.
    Threads,
    /// Summed RSS of the server's instances, as a fraction of its memory budget.
    InstanceRss,
    /// Highest health-check latency among the server's instances, milliseconds.
    HealthLatencyMs,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::MemoryUsed => "memory-used",
            Resource::SwapUsed => "swap-used",
            Resource::Fds => "fds",
            Resource::Threads => "threads",
            Resource::InstanceRss => "instance-rss",
            Resource::HealthLatencyMs => "health-latency-ms",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub resource: Resource,
    /// The signal fires while the value is above this.
    pub above: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// How long a signal must hold before the server is judged unstable.
    #[serde(with = "humantime_serde", default = "default_hold_down")]
    pub hold_down: Duration,
    #[serde(default = "default_rules")]
    pub rules: Vec<RuleConfig>,
    /// Fixed-period rejuvenation: a primary that has run this long is rejuvenated through the
    /// same workflow, whatever the detector says (as max-requests / max-lifetime settings do).
    #[serde(with = "humantime_serde", default)]
    pub max_running_time: Option<Duration>,
    /// Fraction in [0, 0.5] by which each server's `max_running_time` is shortened (a stable
    /// per-server draw), so servers started together do not all come due at once.
    #[serde(default = "default_jitter")]
    pub max_running_time_jitter: f64,
    /// The predictive trend rule (`[policy.trend]`): forecasts time to exhaustion and judges a
    /// server suspect, then unstable, when exhaustion comes within the horizon.
    #[serde(default)]
    pub trend: crate::trend::TrendConfig,
    /// Reactive failover: a primary whose agent has not answered for this long, with its
    /// instances down, has its instances started elsewhere and leaves the list; it is
    /// rejuvenated when it comes back, before it rejoins.
    #[serde(with = "humantime_serde", default = "default_failover_after")]
    pub failover_after: Duration,
}

fn default_failover_after() -> Duration {
    Duration::from_secs(15)
}

fn default_jitter() -> f64 {
    0.1
}

fn default_hold_down() -> Duration {
    Duration::from_secs(60)
}

fn default_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            resource: Resource::MemoryUsed,
            above: 0.9,
        },
        RuleConfig {
            resource: Resource::SwapUsed,
            above: 0.5,
        },
        RuleConfig {
            resource: Resource::Fds,
            above: 0.8,
        },
    ]
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            hold_down: default_hold_down(),
            rules: default_rules(),
            max_running_time: None,
            max_running_time_jitter: default_jitter(),
            trend: crate::trend::TrendConfig::default(),
            failover_after: default_failover_after(),
        }
    }
}

/// When to switch and rejuvenate once the replacement is hot (claim 6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Switch only while the server's 1-minute load is at most this...
    #[serde(default = "default_max_load")]
    pub max_load: f64,
    /// ...and it has run at least this long since its last rejuvenation...
    #[serde(with = "humantime_serde", default = "default_min_running")]
    pub min_running_time: Duration,
    /// ...unless the replacement has been waiting this long already.
    #[serde(with = "humantime_serde", default = "default_max_wait")]
    pub max_wait: Duration,
    /// Prefer a quiet moment: while exhaustion is far, wait as long as the current load is
    /// above this quantile of the server's recent load history (0.5: busier than usual).
    /// 1.0 turns it off.
    #[serde(default = "default_quiet_quantile")]
    pub quiet_quantile: f64,
}

fn default_quiet_quantile() -> f64 {
    0.5
}

fn default_max_load() -> f64 {
    8.0
}
fn default_min_running() -> Duration {
    Duration::from_secs(600)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(1800)
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            max_load: default_max_load(),
            min_running_time: default_min_running(),
            max_wait: default_max_wait(),
            quiet_quantile: default_quiet_quantile(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Workflows allowed to run at once, cluster-wide.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Capacity units of primaries on the list that must remain at every moment.
    #[serde(default)]
    pub min_available_capacity: u32,
    /// After a workflow finishes, no new one starts for this long, so the fleet settles
    /// before the next disruption (an operator's `force` excepted).
    #[serde(with = "humantime_serde", default)]
    pub cooldown: Duration,
}

fn default_max_concurrent() -> u32 {
    1
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            max_concurrent: default_max_concurrent(),
            min_available_capacity: 0,
            cooldown: Duration::ZERO,
        }
    }
}

/// An agent's fixed set of rejuvenation actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    StopInstances,
    ClearScratch,
    DropCaches,
    CompactMemory,
    /// The agent re-executes itself; its running time starts again.
    RestartAgent,
    /// The configured host restart command.
    RestartHost,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::StopInstances => "stop-instances",
            Action::ClearScratch => "clear-scratch",
            Action::DropCaches => "drop-caches",
            Action::CompactMemory => "compact-memory",
            Action::RestartAgent => "restart-agent",
            Action::RestartHost => "restart-host",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejuvenationConfig {
    #[serde(default = "default_actions")]
    pub actions: Vec<Action>,
    /// Longest wait for every duplexed instance to be healthy before rolling back.
    #[serde(with = "humantime_serde", default = "default_duplex_timeout")]
    pub duplex_timeout: Duration,
    /// Longest wait for the rejuvenated server to come back fresh.
    #[serde(with = "humantime_serde", default = "default_verify_timeout")]
    pub verify_timeout: Duration,
    /// A target that failed to duplex is not chosen again for this long.
    #[serde(with = "humantime_serde", default = "default_target_cooldown")]
    pub failed_target_cooldown: Duration,
    /// Stronger levels of actions, tried in order when a server ages again within
    /// `escalation_window` of its last rejuvenation. When the strongest did not help, the
    /// server is kept out of service and a person is alerted.
    #[serde(default)]
    pub escalation: Vec<Vec<Action>>,
    #[serde(with = "humantime_serde", default = "default_escalation_window")]
    pub escalation_window: Duration,
}

fn default_escalation_window() -> Duration {
    Duration::from_secs(3600)
}

impl RejuvenationConfig {
    /// The actions of escalation level `level` (0 = `actions`), clamped to the strongest.
    pub fn level(&self, level: usize) -> &[Action] {
        if level == 0 || self.escalation.is_empty() {
            &self.actions
        } else {
            &self.escalation[(level - 1).min(self.escalation.len() - 1)]
        }
    }

    /// The strongest level there is.
    pub fn max_level(&self) -> usize {
        self.escalation.len()
    }
}

fn default_actions() -> Vec<Action> {
    vec![
        Action::StopInstances,
        Action::ClearScratch,
        Action::DropCaches,
        Action::CompactMemory,
        Action::RestartAgent,
    ]
}
fn default_duplex_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_verify_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_target_cooldown() -> Duration {
    Duration::from_secs(300)
}

impl Default for RejuvenationConfig {
    fn default() -> Self {
        Self {
            actions: default_actions(),
            duplex_timeout: default_duplex_timeout(),
            verify_timeout: default_verify_timeout(),
            failed_target_cooldown: default_target_cooldown(),
            escalation: vec![],
            escalation_window: default_escalation_window(),
        }
    }
}

/// Agent settings shared by every server (least privilege: what an agent may do).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefaults {
    /// Scratch directories cleared by `clear-scratch`: absolute, inside `allowed_roots`.
    #[serde(default)]
    pub scratch_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub allowed_roots: Vec<PathBuf>,
    /// Enables host-wide actions: drop-caches, compact-memory, restart-host.
    #[serde(default)]
    pub host_actions: bool,
    /// Command run by `restart-host`.
    #[serde(default)]
    pub restart_command: Vec<String>,
    /// How often the agent takes a sample.
    #[serde(with = "humantime_serde", default = "default_sample_interval")]
    pub sample_interval: Duration,
}

fn default_sample_interval() -> Duration {
    Duration::from_secs(1)
}

impl Default for AgentDefaults {
    fn default() -> Self {
        Self {
            scratch_dirs: vec![],
            allowed_roots: vec![],
            host_actions: false,
            restart_command: vec![],
            sample_interval: default_sample_interval(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficAdapter {
    Builtin,
    Haproxy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    #[serde(default = "default_adapter")]
    pub adapter: TrafficAdapter,
    /// Builtin proxy: its admin API address.
    pub admin: Option<SocketAddr>,
    /// Builtin proxy: the address clients use, per service.
    #[serde(default)]
    pub listen: BTreeMap<ServiceName, SocketAddr>,
    /// HAProxy: its runtime API and the backend of each service.
    pub haproxy: Option<HaproxyTrafficConfig>,
}

/// `[traffic.haproxy]`: how rejuv drives an HAProxy (see `deploy/haproxy/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyTrafficConfig {
    /// The runtime API (`stats socket ... level admin`): `unix:/path` or `tcp:HOST:PORT`.
    pub socket: String,
    /// Service name → HAProxy backend name.
    pub backends: BTreeMap<ServiceName, String>,
    /// Add servers with HAProxy health checks (`check inter ... rise ... fall ...`).
    pub check: Option<HaproxyCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyCheck {
    #[serde(with = "humantime_serde", default = "default_check_inter")]
    pub inter: Duration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_check_inter() -> Duration {
    Duration::from_secs(2)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

fn default_adapter() -> TrafficAdapter {
    TrafficAdapter::Builtin
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            adapter: default_adapter(),
            admin: None,
            listen: BTreeMap::new(),
            haproxy: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    Sqlite,
    Etcd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_kind")]
    pub kind: StoreKind,
    /// SQLite database file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// etcd client URLs (`kind = "etcd"`).
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Key prefix in etcd (`kind = "etcd"`); default `/rejuv/<cluster name>`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// TTL of the leader's etcd lease (`kind = "etcd"`): a dead leader is replaced within it.
    #[serde(with = "humantime_serde", default = "default_lease_ttl")]
    pub lease_ttl: Duration,
    /// How often the leader compacts etcd's key history (`kind = "etcd"`), each time up to the
    /// revision it saw one period before, so that history of at least one period is kept;
    /// `0s` leaves compaction to etcd's own `--auto-compaction-retention`. The state is
    /// rewritten on every step, so an etcd that nobody compacts fills its quota.
    #[serde(with = "humantime_serde", default = "default_compact_every")]
    pub compact_every: Duration,
}

fn default_store_kind() -> StoreKind {
    StoreKind::Sqlite
}
fn default_store_path() -> PathBuf {
    PathBuf::from("rejuv.db")
}
fn default_etcd_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".into()]
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_compact_every() -> Duration {
    Duration::from_secs(300)
}

impl StoreConfig {
    /// The etcd key prefix for `cluster`: `prefix`, or `/rejuv/<cluster>`.
    pub fn etcd_prefix(&self, cluster: &str) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("/rejuv/{cluster}"))
    }

    fn validate(&self, err: &mut impl FnMut(String, &str)) {
        if self.kind != StoreKind::Etcd {
            return;
        }
        if self.endpoints.is_empty() {
            err(
                "store.endpoints".into(),
                "at least one etcd endpoint is required",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !e.starts_with("http://") {
                err(
                    format!("store.endpoints[{i}]"),
                    "must be an http:// URL (TLS to etcd is not supported yet)",
                );
            }
        }
        if let Some(p) = &self.prefix {
            if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
                err(
                    "store.prefix".into(),
                    "must start with '/' and not end with '/'",
                );
            }
        }
        // etcd refuses (raises) TTLs under its minimum of about 2 s with default timing.
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(3600) {
            err("store.lease_ttl".into(), "must be between 2s and 1h");
        }
        if self.compact_every > Duration::from_secs(24 * 3600) {
            err(
                "store.compact_every".into(),
                "must be at most 24h (0s leaves compaction to etcd)",
            );
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: default_store_kind(),
            path: default_store_path(),
            endpoints: default_etcd_endpoints(),
            prefix: None,
            lease_ttl: default_lease_ttl(),
            compact_every: default_compact_every(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events kept in the store; older ones are deleted.
    #[serde(default = "default_events_kept")]
    pub events: u32,
    /// Finished workflows kept.
    #[serde(default = "default_workflows_kept")]
    pub workflows: u32,
}

fn default_events_kept() -> u32 {
    10_000
}
fn default_workflows_kept() -> u32 {
    1_000
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events: default_events_kept(),
            workflows: default_workflows_kept(),
        }
    }
}

/// The alert sink: a webhook that receives a JSON body in the shape of Alertmanager's webhook
/// receiver (`version` 4, `status`, `alerts[]` with `labels` and `annotations`), so whatever
/// already takes Alertmanager's notifications (or Alertmanager itself, through a relay) can
/// take rejuv's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `http://host:port/path` that receives a POST per alert.
    pub webhook: Option<String>,
    /// A bearer token sent with each POST (file holding one line).
    pub webhook_token_file: Option<PathBuf>,
    /// How long one delivery attempt may take.
    #[serde(with = "humantime_serde", default = "default_alert_timeout")]
    pub timeout: Duration,
    /// Labels added to every alert (e.g. `team = "sre"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where a person can look (the dashboard's URL), sent as `externalURL`.
    pub external_url: Option<String>,
}

fn default_alert_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            webhook_token_file: None,
            timeout: default_alert_timeout(),
            labels: BTreeMap::new(),
            external_url: None,
        }
    }
}

/// When a hook runs: before a step starts, or after it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookWhen {
    Before,
    After,
}

impl std::fmt::Display for HookWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookWhen::Before => "before",
            HookWhen::After => "after",
        })
    }
}

/// Workflow steps a hook can be tied to: the phases, plus `rejoin` (the server goes back on
/// the list).
pub const HOOK_STEPS: &[&str] = &[
    "duplexing",
    "gating",
    "draining",
    "handing-off",
    "rejuvenating",
    "verifying",
    "rejoin",
];

/// A command the controller runs before or after a workflow step, on the controller's host,
/// with `REJUV_HOOK`, `REJUV_STEP`, `REJUV_WHEN`, `REJUV_WORKFLOW`, `REJUV_SERVER`,
/// `REJUV_TARGET` and `REJUV_CLUSTER` in its environment. Its exit status and the end of its
/// output go to the event log. A hook with `veto = true` holds the workflow until it ends and
/// stops it if it fails: before `draining` (the switch) it rolls the workflow back, before
/// `rejoin` it keeps the server out of service for a person to look at.
/// Hooks are recorded before they run, so a controller that restarts may run one again: write
/// them to be safe to repeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub name: String,
    pub step: String,
    pub when: HookWhen,
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    #[serde(with = "humantime_serde", default = "default_hook_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub veto: bool,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(30)
}

impl HookConfig {
    /// Whether this hook runs at `when` of `step`.
    pub fn fires_at(&self, when: HookWhen, step: &str) -> bool {
        self.when == when && self.step == step
    }
}

/// A recurring change freeze, in UTC: on the given days (every day when empty), from `start`
/// for `duration`. No workflow starts inside it except one an operator forces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    pub name: String,
    /// `mon` … `sun`; empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, UTC.
    pub start: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl FreezeWindow {
    /// Minutes after midnight of `start`, if it is a valid `HH:MM`.
    fn start_minute(&self) -> Option<u64> {
        let (h, m) = self.start.split_once(':')?;
        let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && self.start.len() == 5).then_some(h * 60 + m)
    }

    /// Whether wall-clock time `wall_ms` (Unix milliseconds) falls inside the window.
    pub fn contains(&self, wall_ms: u64) -> bool {
        let Some(start_min) = self.start_minute() else {
            return false;
        };
        const DAY_MS: u64 = 86_400_000;
        let today = wall_ms / DAY_MS;
        // A window that started yesterday may run past midnight (durations up to a day).
        (today.saturating_sub(1)..=today).any(|day| {
            // 1970-01-01 was a Thursday: day 0 has index 3 counting from Monday.
            let name = DAY_NAMES[((day + 3) % 7) as usize];
            let on_day = self.days.is_empty() || self.days.iter().any(|d| d == name);
            let from = day * DAY_MS + start_min * 60_000;
            on_day && wall_ms >= from && wall_ms < from + self.duration.as_millis() as u64
        })
    }
}

impl Config {
    /// The freeze window `wall_ms` falls in, if any.
    pub fn frozen_by(&self, wall_ms: u64) -> Option<&FreezeWindow> {
        self.freeze.iter().find(|w| w.contains(wall_ms))
    }

    /// Checks of the alert sink, hooks and freeze windows.
    fn validate_operations(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });
        if let Some(url) = &self.alerts.webhook {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                err(
                    "alerts.webhook".into(),
                    "must be an http:// or https:// URL".into(),
                );
            }
        }
        if self.alerts.timeout.is_zero() {
            err("alerts.timeout".into(), "must be greater than 0".into());
        }
        let mut operators = BTreeSet::new();
        for (i, o) in self.auth.operators.iter().enumerate() {
            if o.name.is_empty()
                || o.name.len() > 64
                || !o
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
                || !operators.insert(o.name.clone())
            {
                err(
                    format!("auth.operators[{i}].name"),
                    "must be unique, at most 64 letters, digits, '-', '_', '.' or '@'".into(),
                );
            }
        }
        let mut names = BTreeSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            let f = |name: &str| format!("hooks[{i}].{name}");
            if h.name.is_empty() || !names.insert(h.name.clone()) {
                err(f("name"), "must be non-empty and unique".into());
            }
            if !HOOK_STEPS.contains(&h.step.as_str()) {
                err(
                    f("step"),
                    format!("must be one of {}", HOOK_STEPS.join(", ")),
                );
            }
            match h.command.first() {
                None => err(f("command"), "must name a program".into()),
                Some(p) if !p.starts_with('/') => {
                    err(f("command"), "the program must be an absolute path".into())
                }
                _ => {}
            }
            if h.timeout.is_zero() {
                err(f("timeout"), "must be greater than 0".into());
            }
            if h.veto
                && !(h.when == HookWhen::Before && matches!(h.step.as_str(), "draining" | "rejoin"))
            {
                err(
                    f("veto"),
                    "only a hook run before \"draining\" (the switch) or before \"rejoin\" can veto".into(),
                );
            }
        }
        for (i, w) in self.freeze.iter().enumerate() {
            let f = |name: &str| format!("freeze[{i}].{name}");
            if w.start_minute().is_none() {
                err(f("start"), "must be HH:MM (UTC), e.g. \"22:00\"".into());
            }
            if w.duration.is_zero() || w.duration > Duration::from_secs(86_400) {
                err(
                    f("duration"),
                    "must be greater than 0 and at most 24h".into(),
                );
            }
            for (j, d) in w.days.iter().enumerate() {
                if !DAY_NAMES.contains(&d.as_str()) {
                    err(
                        format!("freeze[{i}].days[{j}]"),
                        format!("must be one of {}", DAY_NAMES.join(", ")),
                    );
                }
            }
        }
        errs
    }

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

    pub fn server(&self, id: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// What is allowed but likely to hurt, each naming its field: the controller logs these
    /// at start and `rejuv config check` prints them.
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
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

    /// Every semantic problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut err = |field: String, reason: &str| {
            errs.push(FieldError {
                field,
                reason: reason.to_string(),
            })
        };

        if self.servers.is_empty() {
            err("servers".into(), "at least one server is required");
        }
        let mut ids = BTreeSet::new();
        let mut agents = BTreeSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let f = |name: &str| format!("servers[{i}].{name}");
            if s.id.is_empty()
                || !s
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                err(
                    f("id"),
                    "must be non-empty and use only letters, digits, '-' and '_'",
                );
            }
            if !ids.insert(s.id.clone()) {
                err(f("id"), "duplicate server id");
            }
            if !agents.insert(s.agent) {
                err(f("agent"), "two servers share this agent address");
            }
            if s.capacity == 0 {
                err(f("capacity"), "must be at least 1");
            }
            if s.port_range[0] == 0 || s.port_range[0] > s.port_range[1] {
                err(f("port_range"), "must be [low, high] with 0 < low <= high");
            }
            if s.memory_budget_bytes == Some(0) {
                err(f("memory_budget_bytes"), "must be greater than 0");
            }
            for (j, svc) in s.instances.iter().enumerate() {
                if !self.services.contains_key(svc) {
                    err(
                        format!("servers[{i}].instances[{j}]"),
                        "names a service not in [services]",
                    );
                }
            }
            if self.cluster.mode == Mode::ActiveActive && s.role == Role::Spare {
                err(
                    f("role"),
                    "active-active clusters have no spares: every server is a primary",
                );
            }
            if s.role == Role::Spare && !s.instances.is_empty() {
                err(f("instances"), "a spare runs nothing until it takes over");
            }
            let units: u32 = s
                .instances
                .iter()
                .filter_map(|n| self.services.get(n))
                .map(|svc| svc.units)
                .sum();
            if units > s.capacity {
                err(
                    f("instances"),
                    "the initial instances need more units than the server's capacity",
                );
            }
        }
        // Port ranges on the same address must not overlap.
        for (i, a) in self.servers.iter().enumerate() {
            for b in self.servers.iter().skip(i + 1) {
                if a.address == b.address
                    && a.port_range[0] <= b.port_range[1]
                    && b.port_range[0] <= a.port_range[1]
                {
                    err(
                        format!("servers[{i}].port_range"),
                        &format!(
                            "overlaps the port range of server '{}' on the same address",
                            b.id
                        ),
                    );
                }
            }
        }
        if self.cluster.mode == Mode::ActiveStandby
            && !self.servers.iter().any(|s| s.role == Role::Spare)
        {
            err(
                "servers".into(),
                "active-standby needs at least one server with role = \"spare\"",
            );
        }

        self.store.validate(&mut err);

        if self.services.is_empty() {
            err("services".into(), "at least one service is required");
        }
        for (name, svc) in &self.services {
            let f = |field: &str| format!("services.{name}.{field}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                err(
                    format!("services.{name}"),
                    "service names use only letters, digits, '-' and '_'",
                );
            }
            if !svc.command.is_absolute() {
                err(f("command"), "must be an absolute path");
            }
            if svc.units == 0 {
                err(f("units"), "must be at least 1");
            }
            if !svc.health.path.starts_with('/') {
                err(f("health.path"), "must start with '/'");
            }
            if svc.health.interval.is_zero() {
                err(f("health.interval"), "must be greater than 0");
            }
            if let Some(h) = &svc.handoff {
                if !h.export.starts_with('/') {
                    err(f("handoff.export"), "must start with '/'");
                }
                if !h.import.starts_with('/') {
                    err(f("handoff.import"), "must start with '/'");
                }
            }
        }

        if self.policy.hold_down.is_zero() && self.policy.rules.is_empty() {
            err(
                "policy.rules".into(),
                "no rules: the detector would never judge a server",
            );
        }
        for (i, r) in self.policy.rules.iter().enumerate() {
            let fraction = !matches!(r.resource, Resource::Threads | Resource::HealthLatencyMs);
            if !r.above.is_finite() || r.above <= 0.0 || (fraction && r.above > 1.0) {
                err(
                    format!("policy.rules[{i}].above"),
                    if fraction {
                        "must be a fraction in (0, 1] for this resource"
                    } else {
                        "must be a positive number"
                    },
                );
            }
        }
        if !(0.0..=1.0).contains(&self.gate.quiet_quantile) {
            err("gate.quiet_quantile".into(), "must be a fraction in [0, 1]");
        }
        if !self.gate.max_load.is_finite() || self.gate.max_load < 0.0 {
            err("gate.max_load".into(), "must be a non-negative number");
        }
        if self.budget.max_concurrent == 0 {
            err(
                "budget.max_concurrent".into(),
                "must be at least 1, or rejuv could never act",
            );
        }
        let total: u32 = self.servers.iter().map(|s| s.capacity).sum();
        if self.budget.min_available_capacity > total {
            err(
                "budget.min_available_capacity".into(),
                "is more than the whole cluster's capacity",
            );
        }
        if self.rejuvenation.actions.is_empty() {
            err(
                "rejuvenation.actions".into(),
                "at least one action is required",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, a) in self.rejuvenation.actions.iter().enumerate() {
            if !seen.insert(a.to_string()) {
                err(format!("rejuvenation.actions[{i}]"), "listed twice");
            }
        }
        for (i, level) in self.rejuvenation.escalation.iter().enumerate() {
            if level.is_empty() {
                err(
                    format!("rejuvenation.escalation[{i}]"),
                    "an escalation level needs at least one action",
                );
            }
        }
        for e in self.policy.trend.validate("policy.trend") {
            err(e.field, &e.reason);
        }
        if !(0.0..=0.5).contains(&self.policy.max_running_time_jitter) {
            err(
                "policy.max_running_time_jitter".into(),
                "must be a fraction in [0, 0.5]",
            );
        }
        if self.policy.max_running_time.is_some_and(|d| d.is_zero()) {
            err(
                "policy.max_running_time".into(),
                "must be greater than 0 (leave it out to disable)",
            );
        }
        let mut all_actions = self
            .rejuvenation
            .actions
            .iter()
            .chain(self.rejuvenation.escalation.iter().flatten());
        if all_actions.any(|a| *a == Action::RestartHost) && self.agent.restart_command.is_empty() {
            err(
                "agent.restart_command".into(),
                "restart-host is an action but no restart_command is set",
            );
        }
        for (i, d) in self.agent.scratch_dirs.iter().enumerate() {
            if let Err(reason) = check_scratch_dir(d, &self.agent.allowed_roots) {
                err(format!("agent.scratch_dirs[{i}]"), &reason);
            }
        }
        for (i, r) in self.agent.allowed_roots.iter().enumerate() {
            if !r.is_absolute() || r == std::path::Path::new("/") {
                err(
                    format!("agent.allowed_roots[{i}]"),
                    "must be an absolute path other than '/'",
                );
            }
        }
        if self.traffic.adapter == TrafficAdapter::Builtin {
            if self.traffic.admin.is_none() {
                err(
                    "traffic.admin".into(),
                    "the builtin proxy needs an admin address",
                );
            }
            for name in self.traffic.listen.keys() {
                if !self.services.contains_key(name) {
                    err(
                        format!("traffic.listen.{name}"),
                        "names a service not in [services]",
                    );
                }
            }
        }
        if self.traffic.adapter == TrafficAdapter::Haproxy {
            match &self.traffic.haproxy {
                None => err(
                    "traffic.haproxy".into(),
                    "adapter = \"haproxy\" needs a [traffic.haproxy] section",
                ),
                Some(h) => {
                    let ok_socket = h
                        .socket
                        .strip_prefix("unix:")
                        .is_some_and(|p| p.starts_with('/'))
                        || h.socket
                            .strip_prefix("tcp:")
                            .is_some_and(|a| a.parse::<SocketAddr>().is_ok());
                    if !ok_socket {
                        err(
                            "traffic.haproxy.socket".into(),
                            "must be unix:/absolute/path or tcp:IP:PORT",
                        );
                    }
                    if h.backends.is_empty() {
                        err(
                            "traffic.haproxy.backends".into(),
                            "name the HAProxy backend of at least one service",
                        );
                    }
                    for (svc, be) in &h.backends {
                        if !self.services.contains_key(svc) {
                            err(
                                format!("traffic.haproxy.backends.{svc}"),
                                "names a service not in [services]",
                            );
                        }
                        if be.is_empty()
                            || !be
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                        {
                            err(
                                format!("traffic.haproxy.backends.{svc}"),
                                "backend names use only letters, digits, '_', '.' and '-'",
                            );
                        }
                    }
                }
            }
        }
        if self.policy.failover_after <= self.controller.agent_timeout {
            err(
                "policy.failover_after".into(),
                "must be longer than controller.agent_timeout (one missed poll is not a death)",
            );
        }
        if self.controller.poll_interval.is_zero() {
            err("controller.poll_interval".into(), "must be greater than 0");
        }
        errs.extend(self.validate_operations());
        errs
    }
}

/// Checks a scratch directory against the allowed roots, lexically (no symlinks are followed
/// here; the agent checks the real path again before it deletes anything).
pub fn check_scratch_dir(dir: &std::path::Path, roots: &[PathBuf]) -> Result<(), String> {
    use std::path::Component;
    if !dir.is_absolute() {
        return Err("must be an absolute path".into());
    }
    if dir
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err("must not contain '.' or '..'".into());
    }
    if dir == std::path::Path::new("/") {
        return Err("must never be '/'".into());
    }
    if !roots
        .iter()
        .any(|r| dir.starts_with(r) && dir != r.as_path())
    {
        return Err("is outside agent.allowed_roots".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn example_is_valid() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.cluster.mode, Mode::ActiveStandby);
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
        let held = EXAMPLE.replace(
            "health = { path = \"/healthz\" }",
            "health = { path = \"/healthz\" }\nhandoff = { export = \"/e\", import = \"/i\", hold = \"3s\" }",
        );
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
            .replace("instances = [\"web\"]", "instances = [\"db\"]");
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(&text) else {
            panic!()
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"servers"), "{fields:?}");
        assert!(fields.contains(&"services.web.command"), "{fields:?}");
        assert!(fields.contains(&"servers[0].instances[0]"), "{fields:?}");
    }

    #[test]
    fn scratch_dirs_must_stay_inside_roots() {
        let roots = vec![PathBuf::from("/var/tmp/app")];
        assert!(check_scratch_dir("/var/tmp/app/cache".as_ref(), &roots).is_ok());
        assert!(check_scratch_dir("/var/tmp/app".as_ref(), &roots).is_err());
        assert!(check_scratch_dir("/".as_ref(), &roots).is_err());
        assert!(check_scratch_dir("/etc".as_ref(), &roots).is_err());
        assert!(check_scratch_dir("/var/tmp/app/../../etc".as_ref(), &roots).is_err());
        assert!(check_scratch_dir("relative".as_ref(), &roots).is_err());
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

    #[test]
    fn freeze_windows_follow_days_and_cross_midnight() {
        let w = FreezeWindow {
            name: "weekend-night".into(),
            days: vec!["sat".into()],
            start: "23:00".into(),
            duration: Duration::from_secs(2 * 3600),
        };
        // 2026-11-28 is a Saturday (day 20785 since 1970-01-01).
        let sat = 20_785 * 86_400_000u64;
        let hm = |day: u64, h: u64, m: u64| day + (h * 60 + m) * 60_000;
        assert!(!w.contains(hm(sat, 22, 59)));
        assert!(w.contains(hm(sat, 23, 0)));
        assert!(
            w.contains(hm(sat + 86_400_000, 0, 59)),
            "runs past midnight"
        );
        assert!(!w.contains(hm(sat + 86_400_000, 1, 0)), "ends after 2h");
        assert!(!w.contains(hm(sat - 86_400_000, 23, 30)), "not on Friday");
        let daily = FreezeWindow {
            days: vec![],
            ..w.clone()
        };
        assert!(daily.contains(hm(sat - 86_400_000, 23, 30)));
    }
}
