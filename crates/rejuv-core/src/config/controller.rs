//! `[controller]`: where the controller listens, the bounds of that listener, and how it polls
//! its agents.

use super::field::Errors;
use super::listener::{self, ListenerLimits};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

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
    /// What to do with an instance an agent runs that this controller did not start (someone
    /// with the agent token, or a leftover): `stop` it (the default), or only `report` it.
    /// Either way it is an `unknown-instance` event, once.
    #[serde(default)]
    pub unknown_instances: UnknownInstances,
    /// Connections the controller API serves at once; more are closed at once and counted.
    #[serde(default = "listener::default_api_max_connections")]
    pub max_connections: usize,
    /// How long a client of the controller API has to send a request head.
    #[serde(
        with = "humantime_serde",
        default = "listener::default_header_read_timeout"
    )]
    pub header_read_timeout: Duration,
    /// How long the controller API waits on a silent client (see [`ListenerLimits`]).
    #[serde(with = "humantime_serde", default = "listener::default_idle_timeout")]
    pub idle_timeout: Duration,
}

/// [`ControllerConfig::unknown_instances`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownInstances {
    #[default]
    Stop,
    Report,
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
            unknown_instances: UnknownInstances::default(),
            max_connections: listener::API_MAX_CONNECTIONS,
            header_read_timeout: listener::HEADER_READ_TIMEOUT,
            idle_timeout: listener::IDLE_TIMEOUT,
        }
    }
}

impl ControllerConfig {
    /// The bounds of the controller API's listener.
    pub fn listener_limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    pub(crate) fn validate(&self, errs: &mut Errors) {
        if self.poll_interval.is_zero() {
            errs.add("controller.poll_interval", "must be greater than 0");
        }
        if self.agent_timeout.is_zero() {
            errs.add(
                "controller.agent_timeout",
                "must be greater than 0 (every poll would time out at once)",
            );
        }
        self.listener_limits().validate("controller", errs);
    }
}
