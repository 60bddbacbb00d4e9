//! A container's life as the docker backend drives it: start (idempotent by name), wait for
//! it to end on its own, stop it with a grace period, look at it, and find the ones an agent
//! owns by their labels (adoption and orphan clean-up after an agent restart).
//!
//! # Guarantees
//! - [`Docker::create_and_start`] never touches a container whose labels differ from the
//!   spec's: a name clash with someone else's container is an error, not a removal.
//! - [`Docker::stop_and_remove`] of a container that is already stopped or gone succeeds.

use super::spec::{whole_seconds, ContainerSpec};
use super::{is_status, Docker, DockerError};
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ContainerSummaryStateEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// A started container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// Its init process, as the host sees it (`/proc/<pid>`).
    pub pid: u32,
}

/// What [`Docker::inspect`] sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub running: bool,
    /// The host's pid of its init process, while it runs.
    pub pid: Option<u32>,
    /// Once it has run and stopped.
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// The memory limit in force, bytes.
    pub memory_limit: Option<u64>,
    /// The container's labels (the image's included).
    pub labels: BTreeMap<String, String>,
}

/// One row of [`Docker::list_labelled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
}

/// Why a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Its init process exited with this status.
    Exited(i64),
    /// Killed by this signal (the Engine reports 128 + the signal's number).
    Signalled(i32),
    /// Killed by the kernel's OOM killer at the container's memory limit.
    OomKilled,
    /// The container is gone (removed by someone, or never existed).
    Removed,
}

impl ExitReason {
    fn from_status(code: i64, oom_killed: bool) -> Self {
        match code {
            _ if oom_killed => ExitReason::OomKilled,
            129..=192 => ExitReason::Signalled((code - 128) as i32),
            _ => ExitReason::Exited(code),
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Exited(c) => write!(f, "exited with status {c}"),
            ExitReason::Signalled(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by signal {s} ({sig})"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            ExitReason::OomKilled => write!(f, "killed by the OOM killer at its memory limit"),
            ExitReason::Removed => write!(f, "removed"),
        }
    }
}

impl Docker {
    /// Creates and starts the container `spec` describes, unless it already runs.
    ///
    /// Idempotent by name: a running container of that name whose labels include the spec's
    /// is returned as it is; a stopped one is removed and made anew.
    ///
    /// # Errors
    /// An invalid spec; [`DockerError::NameTaken`] for a container of that name with other
    /// labels; [`DockerError::ImageMissing`]; [`DockerError::ExitedAtStart`] (with its last
    /// output; the container is removed) when it ended before it could be seen running.
    pub async fn create_and_start(&self, spec: &ContainerSpec) -> Result<Container, DockerError> {
        spec.validate()?;
        // Twice at most: a concurrent create of the same name makes ours fail with 409, and
        // the second pass finds theirs.
        for _ in 0..2 {
            if let Some(existing) = self.inspect(&spec.name).await? {
                if !labels_include(&existing.labels, &spec.labels) {
                    return Err(DockerError::NameTaken {
                        name: spec.name.clone(),
                    });
                }
                if let (true, Some(pid)) = (existing.running, existing.pid) {
                    return Ok(Container {
                        id: existing.id,
                        name: spec.name.clone(),
                        pid,
                    });
                }
                self.remove(&existing.id).await?;
            }
            let options = CreateContainerOptionsBuilder::default()
                .name(&spec.name)
                .build();
            match self
                .client()
                .create_container(Some(options), spec.to_create_body())
                .await
            {
                Ok(created) => return self.start_created(spec, &created.id).await,
                Err(e) if is_status(&e, 409) => continue,
                Err(e) if is_status(&e, 404) => {
                    return Err(DockerError::ImageMissing {
                        image: spec.image.clone(),
                    })
                }
                Err(e) => return Err(DockerError::api("create", &spec.name, e)),
            }
        }
        Err(DockerError::NameTaken {
            name: spec.name.clone(),
        })
    }

    async fn start_created(
        &self,
        spec: &ContainerSpec,
        id: &str,
    ) -> Result<Container, DockerError> {
        if let Err(e) = self.client().start_container(id, None).await {
            // A container that cannot start (a port taken, a bad mount) is not left behind.
            let _ = self.remove(id).await;
            return Err(DockerError::api("start", &spec.name, e));
        }
        match self.inspect(id).await? {
            Some(ContainerState {
                running: true,
                pid: Some(pid),
                ..
            }) => Ok(Container {
                id: id.to_string(),
                name: spec.name.clone(),
                pid,
            }),
            state => {
                let reason = match state {
                    Some(s) => ExitReason::from_status(s.exit_code.unwrap_or(-1), s.oom_killed),
                    None => ExitReason::Removed,
                };
                let logs = self.last_output(id, 20).await;
                let _ = self.remove(id).await;
                Err(DockerError::ExitedAtStart {
                    name: spec.name.clone(),
                    reason,
                    logs,
                })
            }
        }
    }

    /// Resolves when the container `id` (or name) is no longer running: it exited on its own,
    /// was killed, or is gone.
    ///
    /// # Errors
    /// Only when the Engine cannot be asked (the connection broke, the Engine restarted).
    pub async fn wait(&self, id: &str) -> Result<ExitReason, DockerError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        // The Engine answers the headers at once and the body when the container stops: the
        // request deadline covers only the first.
        let mut answers = self.client().wait_container(id, Some(options));
        let code = match answers.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) if is_status(&e, 404) => return Ok(ExitReason::Removed),
            Some(Err(e)) => return Err(DockerError::api("wait", id, e)),
            None => {
                return Err(DockerError::api(
                    "wait",
                    id,
                    BollardError::RequestTimeoutError,
                ))
            }
        };
        let oom = match self.inspect(id).await {
            Ok(Some(s)) => s.oom_killed,
            _ => false,
        };
        Ok(ExitReason::from_status(code, oom))
    }

    /// Stops the container with the Engine's stop (SIGTERM, or the image's stop signal; SIGKILL
    /// after `grace`), then removes it with its anonymous volumes.
    ///
    /// # Errors
    /// Only when the Engine fails; a container already stopped or gone is fine.
    pub async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let t = i32::try_from(whole_seconds(grace)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(t).build();
        match self
            .client_with_extra(grace)
            .stop_container(id, Some(options))
            .await
        {
            // 304: it was not running.
            Ok(()) => {}
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
            Err(e) => return Err(DockerError::api("stop", id, e)),
        }
        self.remove(id).await
    }

    /// Removes the container, killing it if it still runs. Gone already is fine.
    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.client().remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 409: "removal already in progress" (another caller got there first).
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(DockerError::api("remove", id, e)),
        }
    }

    /// The container `id` (or name), or `None` when there is no such container.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerState>, DockerError> {
        match self.client().inspect_container(id, None).await {
            Ok(c) => Ok(Some(state_of(c))),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(DockerError::api("inspect", id, e)),
        }
    }

    /// Every container, running or not, that carries all of `labels`: each is `key` (the
    /// label is present) or `key=value`.
    pub async fn list_labelled(
        &self,
        labels: &[&str],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = HashMap::from([("label", labels.to_vec())]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let rows = self
            .client()
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::api("list", &labels.join(","), e))?;
        Ok(rows
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                running: matches!(
                    c.state,
                    Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::PAUSED)
                ),
            })
            .collect())
    }

    /// The last `lines` lines of the container's stdout and stderr, best effort (for errors).
    async fn last_output(&self, id: &str, lines: usize) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let chunks: Vec<_> = self.client().logs(id, Some(options)).collect().await;
        let mut out = String::new();
        for chunk in chunks.into_iter().flatten() {
            out.push_str(&chunk.to_string());
        }
        out
    }
}

fn labels_include(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn state_of(c: ContainerInspectResponse) -> ContainerState {
    let state = c.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let pid = state
        .pid
        .filter(|p| running && *p > 0)
        .and_then(|p| u32::try_from(p).ok());
    let started = state
        .started_at
        .as_deref()
        .is_some_and(|s| !s.starts_with("0001-"));
    ContainerState {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        running,
        pid,
        exit_code: state.exit_code.filter(|_| !running && started),
        oom_killed: state.oom_killed.unwrap_or(false),
        memory_limit: c
            .host_config
            .and_then(|h| h.memory)
            .filter(|m| *m > 0)
            .and_then(|m| u64::try_from(m).ok()),
        labels: c
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_read_like_a_shell() {
        assert_eq!(
            ExitReason::from_status(0, false).to_string(),
            "exited with status 0"
        );
        assert_eq!(
            ExitReason::from_status(137, false).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(ExitReason::from_status(137, true), ExitReason::OomKilled);
        assert_eq!(ExitReason::from_status(255, false), ExitReason::Exited(255));
    }

    #[test]
    fn labels_match_as_a_subset() {
        let have = BTreeMap::from([
            ("rejuv.instance".to_string(), "i1".to_string()),
            ("rejuv.image".to_string(), "1".to_string()),
        ]);
        let want = BTreeMap::from([("rejuv.instance".to_string(), "i1".to_string())]);
        assert!(labels_include(&have, &want));
        let other = BTreeMap::from([("rejuv.instance".to_string(), "i2".to_string())]);
        assert!(!labels_include(&have, &other));
    }
}
