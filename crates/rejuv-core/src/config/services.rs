//! `[services.NAME]`: the service catalog (installed on every server, as unit files are): how
//! an instance runs, its health check, drain time and optional state hand-off.

use super::field::{is_plain_name, Errors};
use crate::types::ServiceName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How an instance of a service runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// A process tree the agent starts and supervises itself.
    #[default]
    Process,
    /// A container the agent creates from `image` through the Docker Engine API.
    Docker,
    /// A systemd unit: an instance of a template unit the operator has (`unit`), or a
    /// transient unit the agent creates from `command`.
    Systemd,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Process => "process",
            Backend::Docker => "docker",
            Backend::Systemd => "systemd",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// How instances run: `process` (the default), `docker` or `systemd`.
    #[serde(default)]
    pub backend: Backend,
    /// Program to run (process; systemd without `unit`; docker: overrides the image's
    /// entrypoint). `{port}` and `{address}` in args and env values are replaced with the
    /// instance's allocated port and the address it listens on; `{instance}` with the
    /// instance id.
    pub command: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The instance's whole environment (besides a standard `PATH`): nothing of the agent's
    /// own environment is passed on.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    /// User (name or uid) the instance runs as; default: the agent's own. An agent running
    /// as root warns about services without one.
    pub user: Option<String>,
    /// Group (name or gid); default: the user's primary group.
    pub group: Option<String>,
    /// docker: the image instances are created from (built or loaded locally).
    pub image: Option<String>,
    /// docker: `host` (the container shares the server's network and listens on the
    /// instance's address), or a network name (`bridge`, the default, or one of the
    /// operator's): the instance's port is published on the server's address.
    pub network: Option<String>,
    /// docker: bind mounts, `SOURCE:TARGET` or `SOURCE:TARGET:ro`, both absolute.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Most memory one instance may use (bytes, or `512MiB`, `1G`): the container's limit
    /// (docker), the unit's `MemoryMax` (systemd), and for every backend what the
    /// `instance-rss` rule measures the instance against.
    #[serde(default, with = "super::field::bytes")]
    pub memory_limit: Option<u64>,
    /// systemd: a template unit the operator installed, whose instance name is the port:
    /// `web@.service` (also written `web@{port}.service`) runs instance port 8080 as
    /// `web@8080.service`. Without it, `command` runs as a transient unit.
    pub unit: Option<String>,
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

/// How an instance's health is checked: exactly one of an HTTP `path` (answered 2xx), a TCP
/// connect to its port (`tcp = true`), or a `command` that exits 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// HTTP path answered with 2xx when the instance is healthy.
    pub path: Option<String>,
    /// Healthy when a TCP connection to the instance's port is accepted.
    #[serde(default)]
    pub tcp: bool,
    /// Healthy when this program exits 0 within `timeout` (`{port}`, `{address}` and
    /// `{instance}` replaced as in `args`); it runs as the service's user.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(with = "humantime_serde", default = "default_health_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_health_timeout")]
    pub timeout: Duration,
}

/// The kind of check a [`HealthConfig`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck<'a> {
    Http(&'a str),
    Tcp,
    Command(&'a [String]),
}

impl HealthConfig {
    /// An HTTP check of `path` with the default interval and timeout.
    pub fn http(path: &str) -> Self {
        Self {
            path: Some(path.to_string()),
            tcp: false,
            command: Vec::new(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
        }
    }

    /// The check to make (validated configs have exactly one).
    pub fn check(&self) -> HealthCheck<'_> {
        match (&self.path, self.tcp) {
            (Some(p), _) => HealthCheck::Http(p),
            (None, true) => HealthCheck::Tcp,
            (None, false) => HealthCheck::Command(&self.command),
        }
    }
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
        self.validate_backend(name, errs);
        if self.command.as_ref().is_some_and(|c| !c.is_absolute()) {
            errs.add(f("command"), "must be an absolute path");
        }
        for (field, v) in [("user", &self.user), ("group", &self.group)] {
            if v.as_ref().is_some_and(|u| !is_account_name(u)) {
                errs.add(
                    f(field),
                    "must be a user or group name (letters, digits, '.', '_', '-') or a number",
                );
            }
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                errs.add(f("env"), format!("'{key}' is not a variable name"));
            }
        }
        if self.memory_limit == Some(0) {
            errs.add(
                f("memory_limit"),
                "must be greater than 0 (leave it out for none)",
            );
        }
        if self.units == 0 {
            errs.add(f("units"), "must be at least 1");
        }
        self.health.validate(name, errs);
        if let Some(h) = &self.handoff {
            if !h.export.starts_with('/') {
                errs.add(f("handoff.export"), "must start with '/'");
            }
            if !h.import.starts_with('/') {
                errs.add(f("handoff.import"), "must start with '/'");
            }
        }
    }

    /// What each backend needs, and what belongs to another one.
    fn validate_backend(&self, name: &str, errs: &mut Errors) {
        let f = |field: &str| format!("services.{name}.{field}");
        let only = |errs: &mut Errors, field: &str, set: bool, backend: &str| {
            if set {
                errs.add(
                    f(field),
                    format!(
                        "is for backend = \"{backend}\" (this service's backend is {})",
                        self.backend
                    ),
                );
            }
        };
        match self.backend {
            Backend::Process => {
                if self.command.is_none() {
                    errs.add(f("command"), "is required for backend = \"process\"");
                }
            }
            Backend::Docker => {
                match &self.image {
                    None => errs.add(f("image"), "is required for backend = \"docker\""),
                    Some(i) if i.trim().is_empty() || i.chars().any(char::is_whitespace) => {
                        errs.add(f("image"), "must be an image reference such as rejuv-sample:1.0")
                    }
                    Some(_) => {}
                }
                if let Some(n) = &self.network {
                    if !is_account_name(n) {
                        errs.add(f("network"), "must be 'host', 'bridge' or a network name");
                    }
                }
                for (i, m) in self.mounts.iter().enumerate() {
                    if let Err(why) = check_mount(m) {
                        errs.add(format!("services.{name}.mounts[{i}]"), why);
                    }
                }
            }
            Backend::Systemd => match &self.unit {
                Some(u) => {
                    if !is_template_unit(u) {
                        errs.add(
                            f("unit"),
                            "must name a template unit, e.g. web@.service (or web@{port}.service): its instance is the port",
                        );
                    }
                    only(errs, "command", self.command.is_some(), "process (or systemd without unit)");
                }
                None if self.command.is_none() => errs.add(
                    f("unit"),
                    "backend = \"systemd\" needs a template unit (unit = \"web@{port}.service\") or a command to run as a transient unit",
                ),
                None => {}
            },
        }
        if self.backend != Backend::Docker {
            only(errs, "image", self.image.is_some(), "docker");
            only(errs, "network", self.network.is_some(), "docker");
            only(errs, "mounts", !self.mounts.is_empty(), "docker");
        }
        if self.backend != Backend::Systemd {
            only(errs, "unit", self.unit.is_some(), "systemd");
        }
    }
}

impl HealthConfig {
    fn validate(&self, name: &str, errs: &mut Errors) {
        let f = |field: &str| format!("services.{name}.health.{field}");
        let kinds = usize::from(self.path.is_some())
            + usize::from(self.tcp)
            + usize::from(!self.command.is_empty());
        if kinds != 1 {
            errs.add(
                format!("services.{name}.health"),
                "give exactly one check: path = \"/healthz\" (HTTP), tcp = true, or command = [...]",
            );
        }
        if self.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            errs.add(f("path"), "must start with '/'");
        }
        if self.command.first().is_some_and(|c| !c.starts_with('/')) {
            errs.add(f("command"), "the program must be an absolute path");
        }
        if self.interval.is_zero() {
            errs.add(f("interval"), "must be greater than 0");
        }
        if self.timeout.is_zero() {
            errs.add(
                f("timeout"),
                "must be greater than 0 (every check would time out)",
            );
        }
    }
}

/// `NAME@.service` or `NAME@{port}.service`, NAME a plain unit name.
fn is_template_unit(u: &str) -> bool {
    let Some(name) = u
        .strip_suffix("@.service")
        .or_else(|| u.strip_suffix("@{port}.service"))
    else {
        return false;
    };
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\'))
}

/// A user, group or network name, or a number.
fn is_account_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `SOURCE:TARGET[:ro|rw]`, both absolute.
fn check_mount(m: &str) -> Result<(), String> {
    let parts: Vec<&str> = m.split(':').collect();
    let ok = match parts.as_slice() {
        [src, dst] => src.starts_with('/') && dst.starts_with('/'),
        [src, dst, mode] => {
            src.starts_with('/') && dst.starts_with('/') && matches!(*mode, "ro" | "rw")
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{m}': write SOURCE:TARGET or SOURCE:TARGET:ro, both absolute paths"
        ))
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

#[cfg(test)]
mod tests {
    use super::is_template_unit;

    #[test]
    fn template_units_name_their_port_instance() {
        for ok in ["web@.service", "web@{port}.service", "my-app_2@.service"] {
            assert!(is_template_unit(ok), "{ok}");
        }
        for bad in [
            "web.service",
            "web@8080.service",
            "@.service",
            "-x@.service",
            "a b@.service",
            "web@.socket",
        ] {
            assert!(!is_template_unit(bad), "{bad}");
        }
    }
}
