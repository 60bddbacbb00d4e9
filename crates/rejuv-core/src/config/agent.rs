//! `[agent]`: what every agent may do (least privilege): scratch directories inside allowed
//! roots, host-wide actions, the host restart command, the sampling period, and the bounds of
//! the agent API's listener.

use super::field::Errors;
use super::listener::{self, ListenerLimits};
use super::rejuvenation::{Action, RejuvenationConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The Docker Engine's unix socket, for services with `backend = "docker"`.
    #[serde(default = "default_docker_socket")]
    pub docker_socket: PathBuf,
    /// When the agent is stopped (SIGTERM, SIGINT), leave its instances running and hand them
    /// over to the next agent of this server and data directory, which adopts them (an agent
    /// upgrade). `rejuv agent --keep-instances` sets it too. Default: stop them.
    #[serde(default)]
    pub keep_instances_on_exit: bool,
    /// Connections the agent API serves at once; more are closed at once and counted.
    #[serde(default = "listener::default_api_max_connections")]
    pub max_connections: usize,
    /// How long a client of the agent API has to send a request head.
    #[serde(
        with = "humantime_serde",
        default = "listener::default_header_read_timeout"
    )]
    pub header_read_timeout: Duration,
    /// How long the agent API waits on a silent client (see [`ListenerLimits`]).
    #[serde(with = "humantime_serde", default = "listener::default_idle_timeout")]
    pub idle_timeout: Duration,
}

fn default_docker_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
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
            docker_socket: default_docker_socket(),
            keep_instances_on_exit: false,
            max_connections: listener::API_MAX_CONNECTIONS,
            header_read_timeout: listener::HEADER_READ_TIMEOUT,
            idle_timeout: listener::IDLE_TIMEOUT,
        }
    }
}

impl AgentDefaults {
    /// The bounds of the agent API's listener.
    pub fn listener_limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    /// `rejuvenation` says whether `restart-host` is an action, which needs a command.
    pub(crate) fn validate(&self, rejuvenation: &RejuvenationConfig, errs: &mut Errors) {
        if rejuvenation.uses(Action::RestartHost) && self.restart_command.is_empty() {
            errs.add(
                "agent.restart_command",
                "restart-host is an action but no restart_command is set",
            );
        }
        if let Some(program) = self.restart_command.first() {
            if !std::path::Path::new(program).is_absolute() {
                errs.add(
                    "agent.restart_command[0]",
                    format!("{program:?} must be an absolute path (the agent runs it without a shell or a PATH search)"),
                );
            }
        }
        if self.sample_interval.is_zero() {
            errs.add("agent.sample_interval", "must be greater than 0");
        }
        self.listener_limits().validate("agent", errs);
        for (i, d) in self.scratch_dirs.iter().enumerate() {
            if let Err(reason) = check_scratch_dir(d, &self.allowed_roots) {
                errs.add(format!("agent.scratch_dirs[{i}]"), reason);
            }
        }
        for (i, r) in self.allowed_roots.iter().enumerate() {
            if !r.is_absolute() || r == Path::new("/") {
                errs.add(
                    format!("agent.allowed_roots[{i}]"),
                    "must be an absolute path other than '/'",
                );
            }
        }
    }
}

/// Checks a scratch directory against the allowed roots, lexically (no symlinks are followed
/// here; the agent checks the real path again before it deletes anything).
pub fn check_scratch_dir(dir: &Path, roots: &[PathBuf]) -> Result<(), String> {
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
    if dir == Path::new("/") {
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
}
