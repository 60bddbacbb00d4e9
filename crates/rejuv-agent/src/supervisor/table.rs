//! The supervisor and its instance table: what runs here, looked up by id, and the checks a
//! start request must pass.

use super::error::SupervisorError;
use super::instance::{valid_instance_id, Instance};
use crate::cgroup::Cgroups;
use crate::metrics::Metrics;
use crate::persist::Store;
use rejuv_core::api::InstanceStatus;
use rejuv_core::config::{ServerConfig, ServiceConfig};
use rejuv_core::types::{InstanceId, ServiceName};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct Supervisor {
    pub(super) server: ServerConfig,
    pub(super) services: BTreeMap<ServiceName, ServiceConfig>,
    pub(super) logs_dir: PathBuf,
    pub(super) http: reqwest::Client,
    pub(super) store: Arc<Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) cgroups: Option<Cgroups>,
    /// The Docker Engine, when a service of the catalog runs in containers.
    pub(super) docker: Option<crate::docker::Docker>,
    /// systemd, when a service of the catalog runs as units.
    pub(super) systemd: Option<crate::systemd::Systemd>,
    /// This agent's server and data directory (see [`crate::cgroup::scope`]).
    pub(super) scope: String,
    pub(super) self_pid: i32,
    pub(super) instances: Mutex<BTreeMap<InstanceId, Arc<Instance>>>,
}

impl Supervisor {
    // Each is a separate part of the agent handed in by its owner at start.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server: ServerConfig,
        services: BTreeMap<ServiceName, ServiceConfig>,
        logs_dir: PathBuf,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        cgroups: Option<Cgroups>,
        docker: Option<crate::docker::Docker>,
        scope: String,
    ) -> Result<Self, reqwest::Error> {
        // Instances are local: never route their health checks through an HTTP proxy from the
        // environment.
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(Self {
            server,
            services,
            logs_dir,
            http,
            store,
            metrics,
            cgroups,
            docker,
            systemd: None,
            scope,
            self_pid: std::process::id() as i32,
            instances: Mutex::new(BTreeMap::new()),
        })
    }

    /// The systemd manager, for services with `backend = "systemd"`.
    pub fn with_systemd(mut self, systemd: Option<crate::systemd::Systemd>) -> Self {
        self.systemd = systemd;
        self
    }

    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<InstanceId, Arc<Instance>>> {
        self.instances.lock().expect("instance table poisoned")
    }

    pub fn get(&self, id: &str) -> Option<Arc<Instance>> {
        self.table().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Instance>> {
        self.table().values().cloned().collect()
    }

    pub fn statuses(&self) -> Vec<InstanceStatus> {
        self.all().iter().map(|i| i.status()).collect()
    }

    pub fn self_pid(&self) -> i32 {
        self.self_pid
    }

    /// Checks a start request without acting on it.
    pub fn check_start(&self, id: &str, service: &str) -> Result<(), SupervisorError> {
        if !valid_instance_id(id) {
            return Err(SupervisorError::InvalidId { id: id.into() });
        }
        if !self.services.contains_key(service) {
            return Err(SupervisorError::UnknownService {
                service: service.into(),
            });
        }
        Ok(())
    }

    /// A port of the server's range that no instance of ours holds and that binds right now.
    pub(super) fn allocate_port(
        &self,
        id: &str,
        table: &BTreeMap<InstanceId, Arc<Instance>>,
    ) -> Result<u16, SupervisorError> {
        let [low, high] = self.server.port_range;
        let taken: HashSet<u16> = table.values().map(|i| i.addr.port()).collect();
        (low..=high)
            .filter(|p| !taken.contains(p))
            .find(|p| std::net::TcpListener::bind((self.server.address, *p)).is_ok())
            .ok_or(SupervisorError::NoFreePort {
                id: id.into(),
                address: self.server.address,
                low,
                high,
            })
    }
}
