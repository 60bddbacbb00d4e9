//! `[services.NAME]`: the service catalog (installed on every server, as unit files are): how
//! an instance runs, its health check, drain time and optional state hand-off.

use super::field::{is_plain_name, Errors};
use crate::types::ServiceName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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

impl ServiceConfig {
    /// This service's own fields, as `services.NAME`.
    fn validate(&self, name: &str, errs: &mut Errors) {
        let f = |field: &str| format!("services.{name}.{field}");
        if !self.command.is_absolute() {
            errs.add(f("command"), "must be an absolute path");
        }
        if self.units == 0 {
            errs.add(f("units"), "must be at least 1");
        }
        if !self.health.path.starts_with('/') {
            errs.add(f("health.path"), "must start with '/'");
        }
        if self.health.interval.is_zero() {
            errs.add(f("health.interval"), "must be greater than 0");
        }
        if self.health.timeout.is_zero() {
            errs.add(
                f("health.timeout"),
                "must be greater than 0 (every check would time out)",
            );
        }
        if let Some(h) = &self.handoff {
            if !h.export.starts_with('/') {
                errs.add(f("handoff.export"), "must start with '/'");
            }
            if !h.import.starts_with('/') {
                errs.add(f("handoff.import"), "must start with '/'");
            }
        }
    }
}

/// The catalog: at least one service, each with a plain name.
pub(crate) fn validate(services: &BTreeMap<ServiceName, ServiceConfig>, errs: &mut Errors) {
    if services.is_empty() {
        errs.add("services", "at least one service is required");
    }
    for (name, svc) in services {
        if !is_plain_name(name) {
            errs.add(
                format!("services.{name}"),
                "service names use only letters, digits, '-' and '_'",
            );
        }
        svc.validate(name, errs);
    }
}
