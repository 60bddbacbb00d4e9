//! One run of an instance, whatever its backend: a process tree the agent spawned, or a
//! container the Docker Engine runs. The keeper starts runs, waits for them to end, and ends
//! them through this one type.

use super::error::SupervisorError;
use super::instance::Instance;
use super::process::{describe_exit, spawn_process};
use super::table::Supervisor;
use crate::docker::{
    BindMount, ContainerSpec, Network, PublishedPort, LABEL_INSTANCE, LABEL_PORT, LABEL_SERVER,
    LABEL_SERVICE,
};
use rejuv_core::config::Backend;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Child;

/// Label naming the agent (server and data directory) a container belongs to: what an agent
/// removes at start as left behind by an earlier one.
pub const LABEL_AGENT: &str = "rejuv.agent";

/// A running instance's current run.
pub(super) enum Run {
    Process(Child),
    /// A process tree an earlier agent started and handed over: not this agent's child, so
    /// its end is seen in `/proc`, not through `wait`.
    Adopted {
        pid: i32,
        starttime: u64,
    },
    Container {
        id: String,
    },
    /// A systemd unit, by name, with its main process (pid, start time) while it has one.
    Unit {
        name: String,
        main: Option<(i32, u64)>,
    },
}

/// How often an adopted process is looked for in `/proc`.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

impl Supervisor {
    /// Starts a run of `inst`: its process, or its container (created afresh under its name).
    /// Returns the run, its root pid and, for a container, the cgroup its processes are in.
    pub(super) async fn start_run(
        &self,
        inst: &Instance,
    ) -> Result<(Run, Option<u32>, Option<PathBuf>), SupervisorError> {
        match inst.spec.backend {
            Backend::Process => {
                let child = spawn_process(
                    &self.logs_dir,
                    &inst.id,
                    &inst.service,
                    &inst.spec,
                    inst.addr,
                    inst.cgroup.as_deref(),
                )?;
                let pid = child.id();
                Ok((Run::Process(child), pid, None))
            }
            Backend::Systemd => self.start_unit_run(inst).await,
            Backend::Docker => {
                let docker = self
                    .docker
                    .as_ref()
                    .ok_or_else(|| SupervisorError::Backend {
                        id: inst.id.clone(),
                        reason: "no Docker Engine is connected".into(),
                    })?;
                let spec = self.container_spec(inst);
                let c =
                    docker
                        .create_and_start(&spec)
                        .await
                        .map_err(|e| SupervisorError::Backend {
                            id: inst.id.clone(),
                            reason: rejuv_core::error_chain(&e),
                        })?;
                let cgroup = crate::docker::cgroup_dir(c.pid);
                Ok((Run::Container { id: c.id }, Some(c.pid), cgroup))
            }
        }
    }

    /// Waits until the run ends on its own; says how.
    pub(super) async fn wait_run(&self, run: &mut Run) -> String {
        match run {
            Run::Process(child) => describe_exit(child.wait().await),
            Run::Adopted { pid, starttime } => {
                while crate::procfs::same_process(*pid, *starttime) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "ended (adopted from an earlier agent: its exit status is not known)".into()
            }
            Run::Unit { name, main } => self.wait_unit(name, *main).await,
            Run::Container { id } => match &self.docker {
                Some(d) => match d.wait(id).await {
                    Ok(reason) => reason.to_string(),
                    Err(e) => format!("waiting for container {id}: {e}"),
                },
                None => "no Docker Engine".into(),
            },
        }
    }

    /// Ends a container run: the Engine's stop with `grace`, then removal.
    pub(super) async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), String> {
        match &self.docker {
            Some(d) => d
                .stop_and_remove(id, grace)
                .await
                .map_err(|e| rejuv_core::error_chain(&e)),
            None => Err("no Docker Engine".into()),
        }
    }

    /// What the Engine makes of an instance of a docker service.
    fn container_spec(&self, inst: &Instance) -> ContainerSpec {
        let spec = &inst.spec;
        let network = match spec.network.as_deref() {
            Some("host") => Network::Host,
            Some(n) => Network::Named(n.to_string()),
            None => Network::default(),
        };
        // On the host's network the service binds the instance's own address; on a Docker
        // network it listens on every address of the container and the port is published
        // on the instance's address.
        let (listen, port) = match network {
            Network::Host => (inst.addr.ip().to_string(), None),
            Network::Named(_) => (
                "0.0.0.0".to_string(),
                Some(PublishedPort {
                    host_ip: inst.addr.ip(),
                    host_port: inst.addr.port(),
                    container_port: inst.addr.port(),
                }),
            ),
        };
        let port_s = inst.addr.port().to_string();
        let subst = |s: &str| {
            s.replace("{port}", &port_s)
                .replace("{address}", &listen)
                .replace("{instance}", &inst.id)
        };
        let mut c = ContainerSpec::new(
            self.container_name(&inst.id),
            spec.image.clone().unwrap_or_default(),
        );
        c.entrypoint = spec.command.as_ref().map(|p| vec![p.display().to_string()]);
        c.args = spec.args.iter().map(|a| subst(a)).collect();
        c.env = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), subst(v)))
            .collect();
        c.labels = [
            (LABEL_INSTANCE, inst.id.clone()),
            (LABEL_SERVICE, inst.service.clone()),
            (LABEL_SERVER, self.server.id.clone()),
            (LABEL_AGENT, self.scope.clone()),
            (LABEL_PORT, inst.addr.port().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        c.workdir = spec.workdir.as_ref().map(|p| p.display().to_string());
        c.user = match (&spec.user, &spec.group) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.clone()),
            _ => None,
        };
        c.network = network;
        c.port = port;
        c.mounts = spec
            .mounts
            .iter()
            .filter_map(|m| m.parse::<BindMount>().ok())
            .collect();
        c.memory_limit = spec.memory_limit;
        c.init = true;
        c.stop_timeout = spec.stop_grace;
        c
    }

    /// A container's name: unique per agent, so agents of several clusters share a host.
    pub(super) fn container_name(&self, id: &str) -> String {
        format!("rejuv-{}-{id}", self.scope)
    }
}
