//! The instance supervisor: starts services from the local catalog, watches their health,
//! restarts the ones that crash, and stops whole process trees.
//!
//! Each instance has one keeper task that owns its child process and is the only one to spawn,
//! reap, restart or stop it; requests reach it over a channel. Readers (the API, the collector)
//! see a small shared status behind a mutex.
//!
//! An instance is its whole process tree: its process group (the root is started as a group
//! leader), every descendant of its root, its cgroup where the host allows one, and every
//! process found in the tree before (so a `setsid` child that got reparented stays counted).
//! See [`crate::procfs::tree_members`].
//!
//! # Guarantees
//! - Only services from `config.services` are started; the controller names a service, never a
//!   command.
//! - A stop answers only once no process of the tree is left (or says which pids survived).
//! - The same id started twice gives the same instance; no second process.
//!
//! # Assumptions
//! Pids are not reused between a scan of `/proc` and the signal that follows it (microseconds);
//! pid and start time together identify a remembered process.

use crate::cgroup::{self, Cgroups, JOIN_SCRIPT};
use crate::metrics::Metrics;
use crate::persist::Store;
use crate::procfs::{tree_members, ProcFs, ProcKey, ProcStat, TreeSeed};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rejuv_core::api::{InstanceState, InstanceStatus};
use rejuv_core::config::{ServerConfig, ServiceConfig};
use rejuv_core::types::{InstanceId, ServiceName};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// First restart delay after a crash; doubles per crash up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A process that ran this long resets the backoff: its next crash is not part of a loop.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// After SIGKILL, how long to wait for the tree to disappear before reporting survivors.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stopping tree is re-scanned.
const STOP_POLL: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid instance id '{id}': use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    InvalidId { id: String },
    #[error("service '{service}' is not in this agent's catalog")]
    UnknownService { service: String },
    #[error("instance '{id}' already runs service '{running}', not '{requested}'")]
    Conflict {
        id: String,
        running: String,
        requested: String,
    },
    #[error("instance '{id}' is still stopping; retry")]
    Busy { id: String },
    #[error("no free port in {low}..={high} on {address} for instance '{id}'")]
    NoFreePort {
        id: String,
        address: std::net::IpAddr,
        low: u16,
        high: u16,
    },
    #[error("cannot start instance '{id}' ({command})")]
    Spawn {
        id: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("instance '{id}': processes {pids:?} survived SIGKILL")]
    StopIncomplete { id: String, pids: Vec<i32> },
    #[error("no instance '{id}' on this agent")]
    NotFound { id: String },
    #[error("instance '{id}' runs service '{service}', which has no state hand-off")]
    NoHandoff { id: String, service: String },
    #[error("instance '{id}' is {state:?}, not serving")]
    NotServing { id: String, state: InstanceState },
    #[error("state hand-off with instance '{id}' ({method} {url}) failed: {reason}")]
    Handoff {
        id: String,
        method: &'static str,
        url: String,
        reason: String,
    },
}

/// Instance ids become file and cgroup names: keep them to a safe alphabet.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the API and the collector read about an instance.
#[derive(Debug)]
struct Shared {
    state: InstanceState,
    healthy: bool,
    /// Root of the current process (also its process-group id); `None` between processes.
    pid: Option<u32>,
    started_at_ms: Option<u64>,
    crashes: u32,
    last_exit: Option<String>,
    health_latency_ms: Option<f64>,
    /// Tree members seen at the last scan.
    known: HashSet<ProcKey>,
}

enum Cmd {
    Stop {
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
}

pub struct Instance {
    pub id: InstanceId,
    pub service: ServiceName,
    pub spec: ServiceConfig,
    pub addr: SocketAddr,
    pub cgroup: Option<PathBuf>,
    shared: Mutex<Shared>,
    cmds: mpsc::Sender<Cmd>,
    /// Becomes true once the keeper has finished and the instance left the table.
    gone: watch::Sender<bool>,
}

/// The per-instance view the collector needs.
#[derive(Debug, Clone)]
pub struct CollectView {
    pub seed: TreeSeed,
    pub health_latency_ms: Option<f64>,
    pub healthy: bool,
    pub state: InstanceState,
}

impl Instance {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("instance lock poisoned")
    }

    pub fn state(&self) -> InstanceState {
        self.lock().state
    }

    pub fn status(&self) -> InstanceStatus {
        let s = self.lock();
        InstanceStatus {
            id: self.id.clone(),
            service: self.service.clone(),
            addr: Some(self.addr),
            pid: s.pid,
            state: s.state,
            healthy: s.healthy,
            started_at_ms: s.started_at_ms,
            crashes: s.crashes,
            last_exit: s.last_exit.clone(),
        }
    }

    pub fn collect_view(&self) -> CollectView {
        let s = self.lock();
        CollectView {
            seed: TreeSeed {
                root: s.pid.map(|p| p as i32),
                cgroup_pids: self.cgroup.as_deref().map(cgroup::pids).unwrap_or_default(),
                known: s.known.clone(),
            },
            health_latency_ms: s.health_latency_ms,
            healthy: s.healthy,
            state: s.state,
        }
    }

    /// Replaces the remembered members with the ones just found (dead ones drop out).
    pub fn remember(&self, members: &[&ProcStat]) {
        self.lock().known = members.iter().map(|p| p.key()).collect();
    }

    fn health_result(&self, ok: bool, latency_ms: Option<f64>) {
        let mut s = self.lock();
        if latency_ms.is_some() {
            s.health_latency_ms = latency_ms;
        }
        let before = s.state;
        match (s.state, ok) {
            (InstanceState::Starting | InstanceState::Unhealthy | InstanceState::Running, true) => {
                s.state = InstanceState::Running;
                s.healthy = true;
            }
            (InstanceState::Running, false) => {
                s.state = InstanceState::Unhealthy;
                s.healthy = false;
            }
            (InstanceState::Starting | InstanceState::Unhealthy, false) => s.healthy = false,
            // The process is gone or going: a late answer changes nothing.
            (
                InstanceState::Crashed
                | InstanceState::Stopping
                | InstanceState::Stopped
                | InstanceState::Absent,
                _,
            ) => {}
        }
        if s.state != before {
            tracing::info!(from = ?before, to = ?s.state, "instance health changed");
        }
    }
}

pub struct Supervisor {
    server: ServerConfig,
    services: BTreeMap<ServiceName, ServiceConfig>,
    logs_dir: PathBuf,
    http: reqwest::Client,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    cgroups: Option<Cgroups>,
    self_pid: i32,
    instances: Mutex<BTreeMap<InstanceId, Arc<Instance>>>,
}

impl Supervisor {
    pub fn new(
        server: ServerConfig,
        services: BTreeMap<ServiceName, ServiceConfig>,
        logs_dir: PathBuf,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        cgroups: Option<Cgroups>,
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
            self_pid: std::process::id() as i32,
            instances: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<InstanceId, Arc<Instance>>> {
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

    /// A port of the server's range that no instance of ours holds and that binds right now.
    fn allocate_port(
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

    fn launch(
        self: &Arc<Self>,
        id: &str,
        service: &str,
        spec: &ServiceConfig,
        port: u16,
    ) -> Result<Arc<Instance>, SupervisorError> {
        let addr = SocketAddr::new(self.server.address, port);
        let cgroup = self.cgroups.as_ref().and_then(|c| c.create(id));
        let child = match spawn_process(&self.logs_dir, id, service, spec, addr, cgroup.as_deref())
        {
            Ok(c) => c,
            Err(e) => {
                if let Some(dir) = &cgroup {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e);
            }
        };
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
                pid: child.id(),
                started_at_ms: Some(wall_ms()),
                crashes: 0,
                last_exit: None,
                health_latency_ms: None,
                known: HashSet::new(),
            }),
            cmds: tx,
            gone: watch::Sender::new(false),
        });
        tracing::info!(instance = id, service, %addr, pid = ?child.id(), "instance started");
        let span = tracing::info_span!("instance", server = %self.server.id, id, service);
        tokio::spawn(keeper(self.clone(), inst.clone(), child, rx).instrument(span));
        Ok(inst)
    }

    /// Stops an instance's whole tree. Unknown ids are already stopped (`Absent`).
    pub async fn stop(&self, id: &str) -> Result<InstanceStatus, SupervisorError> {
        let Some(inst) = self.get(id) else {
            return Ok(InstanceStatus {
                id: id.into(),
                service: String::new(),
                addr: None,
                pid: None,
                state: InstanceState::Absent,
                healthy: false,
                started_at_ms: None,
                crashes: 0,
                last_exit: None,
            });
        };
        let (tx, rx) = oneshot::channel();
        if inst.cmds.send(Cmd::Stop { reply: tx }).await.is_ok() {
            // A dropped reply means the keeper finished with another stop: fine.
            if let Ok(Err(e)) = rx.await {
                return Err(e);
            }
        }
        let mut gone = inst.gone.subscribe();
        let _ = gone.wait_for(|g| *g).await;
        let mut status = inst.status();
        status.state = InstanceState::Stopped;
        status.pid = None;
        status.healthy = false;
        Ok(status)
    }

    /// Stops every instance, concurrently. Returns how many were stopped.
    pub async fn stop_all(self: &Arc<Self>) -> Result<usize, Vec<SupervisorError>> {
        let mut set = tokio::task::JoinSet::new();
        for inst in self.all() {
            let sup = self.clone();
            set.spawn(async move { sup.stop(&inst.id).await });
        }
        let (mut stopped, mut errors) = (0, Vec::new());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(_)) => stopped += 1,
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(SupervisorError::StopIncomplete {
                    id: format!("(stop task failed: {e})"),
                    pids: vec![],
                }),
            }
        }
        if errors.is_empty() {
            Ok(stopped)
        } else {
            Err(errors)
        }
    }

    /// The live members of an instance's tree, remembered for the next scan.
    async fn scan_members(&self, inst: &Instance) -> Vec<ProcStat> {
        let table = tokio::task::spawn_blocking(|| ProcFs::default().processes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let seed = inst.collect_view().seed;
        let members = tree_members(&table, &seed, self.self_pid);
        inst.remember(&members);
        members.into_iter().cloned().collect()
    }

    /// Ends an instance's tree: SIGTERM to its process group and to every member outside it,
    /// then SIGKILL after `grace`; returns once no member is left, or the survivors after
    /// [`KILL_WAIT`] more.
    async fn terminate(
        &self,
        inst: &Instance,
        mut child: Option<&mut Child>,
        grace: Duration,
    ) -> Result<(), Vec<i32>> {
        let pgid = inst.lock().pid.map(|p| p as i32);
        let begun = Instant::now();
        let mut signalled: HashSet<(ProcKey, bool)> = HashSet::new();
        let mut group_signalled = [false, false];
        loop {
            // Reaps the root once it exits; until then it shows as a zombie, not a member.
            let root_alive = match child.as_deref_mut() {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => false,
            };
            let members = self.scan_members(inst).await;
            if members.is_empty() && !root_alive {
                return Ok(());
            }
            let killing = begun.elapsed() >= grace;
            let sig = if killing {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            if let Some(pg) = pgid {
                // Only while the group demonstrably exists: an empty group's id could be reused.
                let group_alive = root_alive || members.iter().any(|m| m.pgrp == pg);
                if group_alive && !group_signalled[killing as usize] {
                    group_signalled[killing as usize] = true;
                    let _ = killpg(Pid::from_raw(pg), sig);
                }
            }
            for m in &members {
                if signalled.insert((m.key(), killing)) {
                    let _ = kill(Pid::from_raw(m.pid), sig);
                }
            }
            if begun.elapsed() >= grace + KILL_WAIT {
                return Err(members.iter().map(|m| m.pid).collect());
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    async fn record_crash(&self, inst: &Instance, what: String) {
        {
            let mut s = inst.lock();
            s.crashes += 1;
            s.state = InstanceState::Crashed;
            s.healthy = false;
            s.last_exit = Some(what.clone());
        }
        self.metrics.crashes.inc();
        tracing::warn!(exit = %what, "instance exited unasked");
        if let Err(e) = self.store.add_crash().await {
            tracing::error!(error = %e, "cannot persist the crash count");
        }
    }

    fn respawn(&self, inst: &Instance) -> Result<Child, SupervisorError> {
        let child = spawn_process(
            &self.logs_dir,
            &inst.id,
            &inst.service,
            &inst.spec,
            inst.addr,
            inst.cgroup.as_deref(),
        )?;
        let mut s = inst.lock();
        s.pid = child.id();
        s.state = InstanceState::Starting;
        s.healthy = false;
        s.started_at_ms = Some(wall_ms());
        s.health_latency_ms = None;
        tracing::info!(pid = ?s.pid, "instance restarted");
        Ok(child)
    }

    /// GET the instance's `handoff.export`.
    pub async fn export_state(
        &self,
        id: &str,
    ) -> Result<(bytes::Bytes, Option<String>), SupervisorError> {
        let (inst, handoff) = self.handoff_target(id)?;
        let url = format!("http://{}{}", inst.addr, handoff.export);
        let herr = |reason: String| SupervisorError::Handoff {
            id: id.into(),
            method: "GET",
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .get(&url)
            .timeout(handoff.hold)
            .send()
            .await
            .map_err(|e| herr(e.to_string()))?;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.map_err(|e| herr(e.to_string()))?;
        if !status.is_success() {
            return Err(herr(format!("answered {status}: {}", excerpt(&body))));
        }
        Ok((body, ctype))
    }

    /// PUT to the instance's `handoff.import`.
    pub async fn import_state(&self, id: &str, body: bytes::Bytes) -> Result<(), SupervisorError> {
        let (inst, handoff) = self.handoff_target(id)?;
        let url = format!("http://{}{}", inst.addr, handoff.import);
        let herr = |reason: String| SupervisorError::Handoff {
            id: id.into(),
            method: "PUT",
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .put(&url)
            .timeout(handoff.hold)
            .body(body)
            .send()
            .await
            .map_err(|e| herr(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(herr(format!("answered {status}: {}", excerpt(&body))));
        }
        Ok(())
    }

    fn handoff_target(
        &self,
        id: &str,
    ) -> Result<(Arc<Instance>, rejuv_core::config::HandoffConfig), SupervisorError> {
        let inst = self
            .get(id)
            .ok_or_else(|| SupervisorError::NotFound { id: id.into() })?;
        let handoff = inst
            .spec
            .handoff
            .clone()
            .ok_or_else(|| SupervisorError::NoHandoff {
                id: id.into(),
                service: inst.service.clone(),
            })?;
        let state = inst.state();
        if !matches!(
            state,
            InstanceState::Starting | InstanceState::Running | InstanceState::Unhealthy
        ) {
            return Err(SupervisorError::NotServing {
                id: id.into(),
                state,
            });
        }
        Ok((inst, handoff))
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.trim().to_string()
}

fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(name) => format!("killed by signal {sig} ({name})"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => format!("ended: {s}"),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Starts one process of an instance: its own process group, output appended to
/// `logs/<id>.log`, placeholders substituted, joined to its cgroup before `exec` if it has one.
fn spawn_process(
    logs_dir: &Path,
    id: &str,
    service: &str,
    spec: &ServiceConfig,
    addr: SocketAddr,
    cgroup: Option<&Path>,
) -> Result<Child, SupervisorError> {
    let command = spec.command.display().to_string();
    let serr = |source: std::io::Error| SupervisorError::Spawn {
        id: id.into(),
        command: command.clone(),
        source,
    };
    // Checked here so that a missing program is a start error, not a crash loop (with the
    // cgroup prologue the exec happens in the shell, past `spawn`).
    let meta = std::fs::metadata(&spec.command).map_err(serr)?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(serr(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not an executable file",
        )));
    }
    let port = addr.port().to_string();
    let address = addr.ip().to_string();
    let subst = |s: &str| {
        s.replace("{port}", &port)
            .replace("{address}", &address)
            .replace("{instance}", id)
    };

    let log_path = logs_dir.join(format!("{id}.log"));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(serr)?;
    {
        use std::io::Write;
        let _ = writeln!(
            log,
            "--- rejuv-agent: starting service '{service}' as instance '{id}' on {addr} at {} ms",
            wall_ms()
        );
    }
    let log_err = log.try_clone().map_err(serr)?;

    let mut cmd = match cgroup {
        Some(dir) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(JOIN_SCRIPT)
                .arg(dir.join("cgroup.procs"))
                .arg(&spec.command);
            c
        }
        None => Command::new(&spec.command),
    };
    cmd.args(spec.args.iter().map(|a| subst(a)))
        .envs(spec.env.iter().map(|(k, v)| (k, subst(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        // The keeper decides when an instance ends, never a dropped handle.
        .kill_on_drop(false);
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    cmd.spawn().map_err(serr)
}

/// Where an instance's keeper is.
enum Phase {
    /// A process runs, started at `since`.
    Running { child: Child, since: Instant },
    /// Waiting `delay` before the next start.
    Backoff { delay: Duration },
}

/// The one task that owns an instance's process: health checks, crash restarts, stop.
async fn keeper(
    sup: Arc<Supervisor>,
    inst: Arc<Instance>,
    child: Child,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let mut phase = Phase::Running {
        child,
        since: Instant::now(),
    };
    let mut backoff = BACKOFF_MIN;
    // Runs until a stop is asked; yields the live child (if any) and who to answer.
    let (mut child, mut reply) = loop {
        phase = match phase {
            Phase::Running { mut child, since } => {
                let health =
                    tokio::spawn(health_loop(sup.http.clone(), inst.clone()).in_current_span());
                let outcome = tokio::select! {
                    status = child.wait() => Err(status),
                    cmd = rx.recv() => Ok(cmd),
                };
                health.abort();
                match outcome {
                    Ok(cmd) => break (Some(child), cmd.map(|Cmd::Stop { reply }| reply)),
                    Err(status) => {
                        let what = describe_exit(status);
                        // What the root left behind would hold the port or leak: end it first.
                        if let Err(pids) = sup.terminate(&inst, None, Duration::ZERO).await {
                            tracing::error!(
                                ?pids,
                                "leftovers of a crashed instance survived SIGKILL"
                            );
                        }
                        inst.lock().pid = None;
                        sup.record_crash(&inst, what).await;
                        if since.elapsed() >= BACKOFF_RESET_AFTER {
                            backoff = BACKOFF_MIN;
                        }
                        let delay = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        Phase::Backoff { delay }
                    }
                }
            }
            Phase::Backoff { delay } => {
                tokio::select! {
                    cmd = rx.recv() => break (None, cmd.map(|Cmd::Stop { reply }| reply)),
                    _ = tokio::time::sleep(delay) => {}
                }
                match sup.respawn(&inst) {
                    Ok(child) => Phase::Running {
                        child,
                        since: Instant::now(),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "restart failed");
                        inst.lock().last_exit = Some(format!("restart failed: {e}"));
                        let delay = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        Phase::Backoff { delay }
                    }
                }
            }
        };
    };

    {
        let mut s = inst.lock();
        s.state = InstanceState::Stopping;
        s.healthy = false;
    }
    tracing::info!("stopping instance");
    loop {
        let result = sup
            .terminate(&inst, child.as_mut(), inst.spec.stop_grace)
            .await;
        match result {
            Ok(()) => {
                if let Some(c) = child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        inst.lock().last_exit =
                            Some(format!("stopped: {}", describe_exit(Ok(status))));
                    }
                }
                break;
            }
            Err(pids) => {
                let e = SupervisorError::StopIncomplete {
                    id: inst.id.clone(),
                    pids,
                };
                tracing::error!(error = %e, "stop incomplete; the instance stays in the table");
                inst.lock().last_exit = Some(e.to_string());
                if let Some(r) = reply.take() {
                    let _ = r.send(Err(e));
                }
                // Stay Stopping until asked again.
                match rx.recv().await {
                    Some(Cmd::Stop { reply: r }) => reply = Some(r),
                    None => break,
                }
            }
        }
    }
    {
        let mut s = inst.lock();
        s.pid = None;
        s.known.clear();
    }
    if let Some(dir) = &inst.cgroup {
        cgroup::remove(dir).await;
    }
    {
        let mut table = sup.table();
        if table.get(&inst.id).is_some_and(|i| Arc::ptr_eq(i, &inst)) {
            table.remove(&inst.id);
        }
    }
    inst.lock().state = InstanceState::Stopped;
    inst.gone.send_replace(true);
    tracing::info!("instance stopped");
    if let Some(r) = reply {
        let _ = r.send(Ok(()));
    }
    // Answer stops that queued up behind this one.
    rx.close();
    while let Ok(Cmd::Stop { reply }) = rx.try_recv() {
        let _ = reply.send(Ok(()));
    }
}

/// Checks health every `health.interval` while one process of the instance runs.
async fn health_loop(http: reqwest::Client, inst: Arc<Instance>) {
    let health = &inst.spec.health;
    let url = format!("http://{}{}", inst.addr, health.path);
    loop {
        let begun = Instant::now();
        let result = http.get(&url).timeout(health.timeout).send().await;
        let elapsed_ms = begun.elapsed().as_secs_f64() * 1000.0;
        let (ok, latency) = match result {
            Ok(resp) => (resp.status().is_success(), Some(elapsed_ms)),
            // A timeout is the slowest answer there is: it counts as latency.
            Err(e) if e.is_timeout() => (false, Some(elapsed_ms)),
            // Refused while starting: no latency to report.
            Err(_) => (false, None),
        };
        inst.health_result(ok, latency);
        tokio::time::sleep(health.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_safe_names() {
        for ok in ["web-s2-7", "a", "x.y_z", "A1"] {
            assert!(valid_instance_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-x",
            ".hidden",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_instance_id(bad), "{bad}");
        }
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(
            describe_exit(Ok(ExitStatus::from_raw(3 << 8))),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(Ok(ExitStatus::from_raw(9))),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
