//! Handing instances over from one agent to the next (an agent upgrade or restart that keeps
//! services running), and adopting them.
//!
//! An agent stopped with `keep_instances_on_exit` asks every keeper to let go of its run
//! ([`Supervisor::hand_over`]) and writes the table ([`crate::handover`]). The next agent of the
//! same server and data directory calls [`Supervisor::adopt`] before it serves: each handed-over
//! instance whose service is still in the catalog (same backend), whose run is still the one
//! recorded, and that answers its health check, joins the instance table under its id and
//! port, with its start time and crash count, and gets a keeper as if this agent had started
//! it. Everything else that the earlier agent left is ended: instances of services gone from
//! the catalog, ones that do not answer health, containers labelled with this agent's scope
//! that no record names, and the trees of records whose root is gone.
//!
//! # Guarantees
//! - A recorded pid is trusted only with its start time: a pid now used by an unrelated
//!   process is neither adopted nor signalled (its cgroup and its remembered members, each
//!   checked by start time, are still ended).
//! - What the controller sees of an adopted instance (`/v1/state`: id, service, address, pid,
//!   start time, crashes) is what it saw before the restart.

use super::instance::{Instance, Shared};
use super::keeper::keeper;
use super::process::{check_health, wall_ms};
use super::run::{Run, LABEL_AGENT};
use super::table::Supervisor;
use crate::docker::{LABEL_INSTANCE, LABEL_PORT, LABEL_SERVER, LABEL_SERVICE};
use crate::handover::{Handover, InstanceRecord, RunRecord};
use rejuv_core::api::InstanceState;
use rejuv_core::config::Backend;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// Grace given to a left-over whose service is no longer in the catalog.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// What [`Supervisor::adopt`] did, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Instance ids now in this agent's table.
    pub adopted: Vec<String>,
    /// What was ended, each with why (`instance 'x': service 'y' is not in the catalog`).
    pub ended: Vec<String>,
}

impl Supervisor {
    /// Lets go of every instance (their keepers end without stopping them) and returns the
    /// table the next agent adopts. Instances being stopped are left out.
    pub async fn hand_over(&self) -> Handover {
        let mut instances = Vec::new();
        for inst in self.all() {
            let (tx, rx) = oneshot::channel();
            if inst
                .cmds
                .send(super::instance::Cmd::Release { reply: tx })
                .await
                .is_err()
            {
                continue;
            }
            let Ok(run) = rx.await else { continue };
            let s = inst.lock();
            instances.push(InstanceRecord {
                id: inst.id.clone(),
                service: inst.service.clone(),
                backend: inst.spec.backend,
                port: inst.addr.port(),
                started_at_ms: s.started_at_ms,
                crashes: s.crashes,
                last_exit: s.last_exit.clone(),
                run,
            });
        }
        Handover {
            agent_pid: std::process::id(),
            written_at_ms: wall_ms(),
            instances,
        }
    }

    /// How the next agent finds `run` of `inst` again.
    pub(super) fn run_record(&self, inst: &Instance, run: &Run) -> Option<RunRecord> {
        let process = |pid: i32, starttime: u64| RunRecord::Process {
            pid,
            starttime,
            cgroup: inst.cgroup.clone(),
            known: inst.lock().known.iter().copied().collect(),
        };
        match run {
            Run::Process(child) => {
                let pid = child.id()? as i32;
                let stat = crate::procfs::process_stat(pid).filter(|p| !p.is_gone())?;
                Some(process(pid, stat.starttime))
            }
            Run::Adopted { pid, starttime } => Some(process(*pid, *starttime)),
            Run::Container { id } => Some(RunRecord::Container { id: id.clone() }),
            Run::Unit { name, .. } => Some(RunRecord::Unit { name: name.clone() }),
        }
    }

    /// The cgroups of the handed-over process instances: the cgroup sweep at start leaves
    /// them to [`Supervisor::adopt`].
    pub fn handed_over_cgroups(handover: Option<&Handover>) -> HashSet<PathBuf> {
        handover
            .into_iter()
            .flat_map(|h| &h.instances)
            .filter_map(|r| match &r.run {
                Some(RunRecord::Process {
                    cgroup: Some(c), ..
                }) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Adopts what `handover` names and can still be vouched for; ends everything else the
    /// earlier agent left (see the module's overview). Call once, before serving.
    pub async fn adopt(self: &Arc<Self>, handover: Option<Handover>) -> Adoption {
        let mut report = Adoption::default();
        let handed_over = handover.is_some();
        let mut records = handover.map(|h| h.instances).unwrap_or_default();
        let mut containers = self.left_containers().await;
        if !handed_over {
            // An agent that ended without a hand-over (killed, crashed): its containers say
            // who they are in their labels, and are adopted by them like handed-over ones
            // (they must still pass their health check); its processes cannot be vouched for.
            records.extend(self.labelled_records(&containers).await);
        }
        let mut units = self.left_units().await;
        let mut seen = HashSet::new();
        for rec in records {
            if !seen.insert(rec.id.clone()) {
                continue;
            }
            match self.adopt_one(&rec, &mut containers, &mut units).await {
                Ok(()) => report.adopted.push(rec.id.clone()),
                Err(why) => {
                    let why = format!("instance '{}': {why}", rec.id);
                    tracing::warn!(reason = %why, "not adopted; ended");
                    report.ended.push(why);
                }
            }
        }
        for (id, (name, service)) in containers {
            let grace = self.grace_of(&service);
            tracing::warn!(container = %name, "removing a container an earlier agent of this server left");
            if let Some(d) = &self.docker {
                if let Err(e) = d.stop_and_remove(&id, grace).await {
                    tracing::error!(container = %name, error = %e, "cannot remove a left-over container");
                }
            }
            report.ended.push(format!(
                "container {name}: no handed-over instance runs in it"
            ));
        }
        for name in units {
            tracing::warn!(unit = %name, "stopping a unit an earlier agent of this server left");
            if let Err(e) = self.stop_unit(&name, ORPHAN_GRACE).await {
                tracing::error!(unit = %name, error = %e, "cannot stop a left-over unit");
            }
            report
                .ended
                .push(format!("unit {name}: no handed-over instance runs in it"));
        }
        report
    }

    /// Instance records read off the labels of containers an earlier agent left
    /// (`rejuv.instance`, `rejuv.service`, `rejuv.port`), for those whose service still runs
    /// in containers here.
    async fn labelled_records(
        &self,
        containers: &BTreeMap<String, (String, String)>,
    ) -> Vec<InstanceRecord> {
        let Some(d) = &self.docker else {
            return Vec::new();
        };
        let filter = format!("{LABEL_AGENT}={}", self.scope);
        let Ok(list) = d.list_labelled(&[filter.as_str()]).await else {
            return Vec::new();
        };
        list.into_iter()
            .filter(|c| c.running && containers.contains_key(&c.id))
            .filter_map(|c| {
                let id = c.labels.get(LABEL_INSTANCE)?.clone();
                let service = c.labels.get(LABEL_SERVICE)?.clone();
                let port = c.labels.get(LABEL_PORT)?.parse().ok()?;
                let spec = self.services.get(&service)?;
                (spec.backend == Backend::Docker).then_some(InstanceRecord {
                    id,
                    service,
                    backend: Backend::Docker,
                    port,
                    started_at_ms: None,
                    crashes: 0,
                    last_exit: None,
                    run: Some(RunRecord::Container { id: c.id }),
                })
            })
            .collect()
    }

    fn grace_of(&self, service: &str) -> Duration {
        self.services
            .get(service)
            .map_or(ORPHAN_GRACE, |s| s.stop_grace)
    }

    /// Containers labelled with this agent's scope: id → (name, service).
    async fn left_containers(&self) -> BTreeMap<String, (String, String)> {
        let Some(d) = &self.docker else {
            return BTreeMap::new();
        };
        let filter = format!("{LABEL_AGENT}={}", self.scope);
        match d.list_labelled(&[filter.as_str()]).await {
            Ok(list) => list
                .into_iter()
                .map(|c| {
                    let service = c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
                    (c.id, (c.name, service))
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list the containers an earlier agent left");
                BTreeMap::new()
            }
        }
    }

    /// Adopts one record, or ends what is left of it and says why.
    async fn adopt_one(
        self: &Arc<Self>,
        rec: &InstanceRecord,
        containers: &mut BTreeMap<String, (String, String)>,
        units: &mut HashSet<String>,
    ) -> Result<(), String> {
        let spec = self.services.get(&rec.service).cloned();
        let fit = match &spec {
            None => Err(format!(
                "service '{}' is not in the catalog any more",
                rec.service
            )),
            Some(s) if s.backend != rec.backend => Err(format!(
                "service '{}' now runs as {}, not {}",
                rec.service, s.backend, rec.backend
            )),
            Some(_) if !super::valid_instance_id(&rec.id) => Err("invalid id".to_string()),
            Some(_) => Ok(()),
        };
        let spec = spec.unwrap_or_else(|| orphan_spec(rec.backend));
        let addr = SocketAddr::new(self.server.address, rec.port);
        let Some(run) = &rec.run else {
            fit?;
            return Err("it was between runs (restarting after a crash)".into());
        };
        let (inst, rx) = self.adopted_instance(rec, spec, addr, run);
        // Whether the recorded run is still there, and as what.
        let live: Result<Run, String> = match run {
            RunRecord::Process { pid, starttime, .. } => {
                let same = crate::procfs::process_stat(*pid)
                    .is_some_and(|p| p.starttime == *starttime && !p.is_gone() && p.pgrp == *pid);
                if same {
                    Ok(Run::Adopted {
                        pid: *pid,
                        starttime: *starttime,
                    })
                } else {
                    // The pid is gone or names another process now: never signal it.
                    inst.lock().pid = None;
                    Err(format!(
                        "its process {pid} is gone (or the pid now names another process)"
                    ))
                }
            }
            RunRecord::Container { id } => match containers.remove(id) {
                Some(_) => self.live_container(&inst, id).await,
                None => Err(format!("its container {id} is gone")),
            },
            RunRecord::Unit { name } => {
                units.remove(name);
                self.live_unit(&inst, name).await
            }
        };
        let outcome = match (fit, live) {
            (Err(why), Ok(run)) => Err((why, Some(run))),
            (_, Err(why)) => Err((why, None)),
            (Ok(()), Ok(run)) => match self.first_health(&inst).await {
                true => Ok(run),
                false => Err((
                    format!("it does not answer its health check on {addr}"),
                    Some(run),
                )),
            },
        };
        match outcome {
            Ok(run) => {
                tracing::info!(instance = %rec.id, service = %rec.service, %addr, pid = ?inst.lock().pid, backend = %rec.backend, "adopted an instance an earlier agent handed over");
                self.table().insert(rec.id.clone(), inst.clone());
                let span = tracing::info_span!("instance", server = %self.server.id, id = %rec.id, service = %rec.service);
                tokio::spawn(keeper(self.clone(), inst, Some(run), rx).instrument(span));
                Ok(())
            }
            Err((why, run)) => {
                self.end_left(&inst, run).await;
                Err(why)
            }
        }
    }

    /// The instance as it was, not yet in the table, with the receiving end of its commands.
    fn adopted_instance(
        &self,
        rec: &InstanceRecord,
        spec: rejuv_core::config::ServiceConfig,
        addr: SocketAddr,
        run: &RunRecord,
    ) -> (Arc<Instance>, mpsc::Receiver<super::instance::Cmd>) {
        let (pid, cgroup, known) = match run {
            RunRecord::Process {
                pid, cgroup, known, ..
            } => (
                Some(*pid as u32),
                cgroup.clone(),
                known.iter().copied().collect(),
            ),
            _ => (None, None, HashSet::new()),
        };
        let (tx, rx) = mpsc::channel(16);
        let inst = Arc::new(Instance {
            id: rec.id.clone(),
            service: rec.service.clone(),
            spec,
            addr,
            cgroup,
            shared: Mutex::new(Shared {
                state: InstanceState::Starting,
                healthy: false,
                pid,
                started_at_ms: rec.started_at_ms,
                crashes: rec.crashes,
                last_exit: rec.last_exit.clone(),
                last_output: Vec::new(),
                healthy_since: None,
                health_latency_ms: None,
                known,
                run_cgroup: None,
            }),
            cmds: tx,
            gone: watch::Sender::new(false),
        });
        (inst, rx)
    }

    /// A handed-over container that still runs, with its labels as this agent would set them.
    async fn live_container(&self, inst: &Instance, id: &str) -> Result<Run, String> {
        let d = self.docker.as_ref().ok_or("no Docker Engine")?;
        let state = d
            .inspect(id)
            .await
            .map_err(|e| rejuv_core::error_chain(&e))?
            .ok_or_else(|| format!("its container {id} is gone"))?;
        let label = |k: &str| state.labels.get(k).map(String::as_str);
        let port = inst.addr.port().to_string();
        if label(LABEL_INSTANCE) != Some(inst.id.as_str())
            || label(LABEL_SERVICE) != Some(inst.service.as_str())
            || label(LABEL_SERVER) != Some(self.server.id.as_str())
            || label(LABEL_PORT) != Some(port.as_str())
        {
            return Err(format!(
                "container {} is labelled for another instance",
                state.name
            ));
        }
        let pid = match (state.running, state.pid) {
            (true, Some(pid)) => pid,
            _ => return Err(format!("its container {} is not running", state.name)),
        };
        let mut s = inst.lock();
        s.pid = Some(pid);
        s.run_cgroup = crate::docker::cgroup_dir(pid);
        Ok(Run::Container { id: state.id })
    }

    /// Health checks until one passes, within a few intervals (and one timeout) of trying.
    async fn first_health(&self, inst: &Instance) -> bool {
        let h = &inst.spec.health;
        let deadline = Instant::now() + (h.interval * 4).max(Duration::from_secs(2)) + h.timeout;
        loop {
            let (ok, latency) = check_health(&self.http, inst).await;
            inst.health_result(ok, latency);
            if ok {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(h.interval.min(Duration::from_millis(500))).await;
        }
    }

    /// Ends what is left of an instance that is not adopted: its verified process tree (group,
    /// cgroup, remembered members), its container or its unit, with its service's grace.
    async fn end_left(&self, inst: &Instance, run: Option<Run>) {
        let grace = inst.spec.stop_grace;
        match run {
            Some(Run::Container { id }) => {
                if let Err(e) = self.stop_container(&id, grace).await {
                    tracing::error!(error = %e, "cannot remove a left-over container");
                }
            }
            Some(Run::Unit { name, .. }) => {
                if let Err(e) = self.stop_unit(&name, grace).await {
                    tracing::error!(error = %e, "cannot stop a left-over unit");
                }
            }
            Some(Run::Process(_) | Run::Adopted { .. }) | None => {
                if let Err(pids) = self.terminate(inst, None, grace).await {
                    tracing::error!(?pids, "left-over processes survived SIGKILL");
                }
                if let Some(dir) = &inst.cgroup {
                    crate::cgroup::remove(dir).await;
                    if let Some(parent) = dir.parent() {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
            }
        }
    }
}

/// A spec for ending a left-over whose service is gone: only its grace matters.
fn orphan_spec(backend: Backend) -> rejuv_core::config::ServiceConfig {
    rejuv_core::config::ServiceConfig {
        backend,
        command: None,
        args: Vec::new(),
        env: Default::default(),
        workdir: None,
        user: None,
        group: None,
        image: None,
        network: None,
        mounts: Vec::new(),
        memory_limit: None,
        unit: None,
        units: 1,
        health: rejuv_core::config::HealthConfig::http("/"),
        drain: Duration::ZERO,
        stop_grace: ORPHAN_GRACE,
        handoff: None,
    }
}
