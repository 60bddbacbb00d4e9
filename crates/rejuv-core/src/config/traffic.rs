//! `[traffic]`: the load balancer rejuv drives — the builtin proxy or an HAProxy — and the
//! checks that it names only services of the catalog.

use super::field::Errors;
use super::listener::{self, ListenerLimits};
use super::services::ServiceConfig;
use crate::types::ServiceName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

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
    /// Builtin proxy: connections each front-end listener serves at once; more are closed at
    /// once and counted. (The admin API has the API limits, [`ListenerLimits::api`].)
    #[serde(default = "listener::default_front_end_max_connections")]
    pub max_connections: usize,
    /// Builtin proxy: how long a client of a front end has to send a request head.
    #[serde(
        with = "humantime_serde",
        default = "listener::default_header_read_timeout"
    )]
    pub header_read_timeout: Duration,
    /// Builtin proxy: how long a front end waits on a silent client (see [`ListenerLimits`]).
    #[serde(with = "humantime_serde", default = "listener::default_idle_timeout")]
    pub idle_timeout: Duration,
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
            max_connections: listener::FRONT_END_MAX_CONNECTIONS,
            header_read_timeout: listener::HEADER_READ_TIMEOUT,
            idle_timeout: listener::IDLE_TIMEOUT,
        }
    }
}

impl TrafficConfig {
    /// The bounds of each of the builtin proxy's front-end listeners.
    pub fn listener_limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    /// The adapter's own settings, and that it names only services of the catalog.
    pub(crate) fn validate(
        &self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        errs: &mut Errors,
    ) {
        match self.adapter {
            TrafficAdapter::Builtin => {
                if self.admin.is_none() {
                    errs.add("traffic.admin", "the builtin proxy needs an admin address");
                }
                self.listener_limits().validate("traffic", errs);
                for name in self.listen.keys() {
                    if !services.contains_key(name) {
                        errs.add(
                            format!("traffic.listen.{name}"),
                            "names a service not in [services]",
                        );
                    }
                }
            }
            TrafficAdapter::Haproxy => match &self.haproxy {
                None => errs.add(
                    "traffic.haproxy",
                    "adapter = \"haproxy\" needs a [traffic.haproxy] section",
                ),
                Some(h) => h.validate(services, errs),
            },
        }
    }
}

impl HaproxyTrafficConfig {
    fn validate(&self, services: &BTreeMap<ServiceName, ServiceConfig>, errs: &mut Errors) {
        let ok_socket = self
            .socket
            .strip_prefix("unix:")
            .is_some_and(|p| p.starts_with('/'))
            || self
                .socket
                .strip_prefix("tcp:")
                .is_some_and(|a| a.parse::<SocketAddr>().is_ok());
        if !ok_socket {
            errs.add(
                "traffic.haproxy.socket",
                "must be unix:/absolute/path or tcp:IP:PORT",
            );
        }
        if self.backends.is_empty() {
            errs.add(
                "traffic.haproxy.backends",
                "name the HAProxy backend of at least one service",
            );
        }
        for (svc, be) in &self.backends {
            if !services.contains_key(svc) {
                errs.add(
                    format!("traffic.haproxy.backends.{svc}"),
                    "names a service not in [services]",
                );
            }
            let plain = be
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if be.is_empty() || !plain {
                errs.add(
                    format!("traffic.haproxy.backends.{svc}"),
                    "backend names use only letters, digits, '_', '.' and '-'",
                );
            }
        }
    }
}
