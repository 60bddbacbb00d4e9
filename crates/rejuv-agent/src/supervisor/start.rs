//! Starting an instance: a free port, its cgroup, its first process, and its keeper.

use super::error::SupervisorError;
use super::instance::{Instance, Shared};
use super::keeper::keeper;
use super::process::{spawn_process, wall_ms};
use super::run::Run;
use super::stop::KILL_WAIT;
use super::table::Supervisor;
use rejuv_core::api::{InstanceState, InstanceStatus};
use rejuv_core::config::Backend;
use rejuv_core::config::ServiceConfig;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

impl Supervisor {
    /// Starts `service` as instance `id`, or returns the instance already running under that id.
    pub async fn start(
        self: &Arc<Self>,
        id: &str,
        service: &str,
    ) -> Result<InstanceStatus, SupervisorError> {
        self.check_start(id, service)?;
        let spec = self.services[service].clone();
        loop {
            let mut gone = {
                let mut table = self.table();
                match table.get(id) {
                    Some(inst) if inst.service != service => {
                        return Err(SupervisorError::Conflict {
                            id: id.into(),
                            running: inst.service.clone(),
                            requested: service.into(),
                        });
                    }
                    Some(inst) if inst.state() != InstanceState::Stopping => {
                        return Ok(inst.status())
                    }
                    // Being stopped: wait until it is gone, then start afresh.
                    Some(inst) => inst.gone.subscribe(),
                    None => {
                        let port = self.allocate_port(id, &table)?;
                        let inst = self.launch(id, service, &spec, port)?;
                        let status = inst.status();
                        table.insert(id.to_string(), inst);
                        return Ok(status);
                    }
                }
            };
            let patience = spec.stop_grace + KILL_WAIT + Duration::from_secs(5);
            if tokio::time::timeout(patience, gone.wait_for(|g| *g))
                .await
                .is_err()
            {
                return Err(SupervisorError::Busy { id: id.into() });
            }
        }
    }

    pub(super) fn launch(
        self: &Arc<Self>,
        id: &str,
        service: &str,
        spec: &ServiceConfig,
        port: u16,
    ) -> Result<Arc<Instance>, SupervisorError> {
        let addr = SocketAddr::new(self.server.address, port);
        let process = spec.backend == Backend::Process;
        let cgroup = process
            .then(|| self.cgroups.as_ref().and_then(|c| c.create(id)))
            .flatten();
        // A process starts here, so that a program that cannot run is this request's error;
        // a container is created by its keeper (the Engine is asked asynchronously).
        let child = if process {
            match spawn_process(&self.logs_dir, id, service, spec, addr, cgroup.as_deref()) {
                Ok(c) => Some(c),
                Err(e) => {
                    if let Some(dir) = &cgroup {
                        let _ = std::fs::remove_dir(dir);
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        let pid = child.as_ref().and_then(|c| c.id());
        let (tx, rx) = mpsc::channel(16);
        let inst = Arc::new(Instance {
            id: id.into(),
            service: service.into(),
            spec: spec.clone(),
            addr,
            cgroup,
            shared: Mutex::new(Shared {
                state: InstanceState::Starting,
                healthy: false,
                pid,
                started_at_ms: Some(wall_ms()),
                crashes: 0,
                last_exit: None,
                last_output: Vec::new(),
                healthy_since: None,
                health_latency_ms: None,
                known: HashSet::new(),
                run_cgroup: None,
            }),
            cmds: tx,
            gone: watch::Sender::new(false),
        });
        tracing::info!(instance = id, service, %addr, ?pid, backend = %spec.backend, "instance started");
        let span = tracing::info_span!("instance", server = %self.server.id, id, service);
        let run = child.map(Run::Process);
        tokio::spawn(keeper(self.clone(), inst.clone(), run, rx).instrument(span));
        Ok(inst)
    }
}
