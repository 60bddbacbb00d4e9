//! The reconciler: one pass makes every mapped backend equal to the route table, carrying out
//! the planner's changes while this controller leads, and remembers (per HAProxy process)
//! which servers rejuv itself put in maintenance.

use super::args::{check_addr, check_command, check_name};
use super::client::RuntimeApi;
use super::config::HaproxyConfig;
use super::error::HaproxyError;
use super::plan::{plan_backend, BackendPlan, Change};
use super::state::{Incarnation, ServerState};
use rejuv_core::api::{Backend, RouteTable};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tracing::{debug, info, warn};

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// In-flight sessions (current + queued) per instance id, for every rejuv server present
    /// after the pass.
    pub in_flight: BTreeMap<String, u64>,
    /// Every state-changing command sent in this pass, in order (reads are not listed).
    pub commands: Vec<String>,
    /// `backend/server` of rejuv servers an operator holds in maintenance; left alone.
    pub operator_maint: Vec<String>,
    /// `backend/server` whose deletion HAProxy deferred (connections still attached).
    pub deferred: Vec<String>,
    /// HAProxy is a different process than at the previous pass (restarted or reloaded).
    pub restarted: bool,
}

#[derive(Debug, Default)]
struct Memory {
    incarnation: Option<Incarnation>,
    /// `(backend, server)` rejuv added (until seen enabled) or put into maintenance itself:
    /// forced maintenance on these is rejuv's own, not an operator's.
    own_maint: BTreeSet<(String, String)>,
    /// Operator-held servers already warned about.
    warned: BTreeSet<(String, String)>,
    /// Services whose unsupported hold request was already warned about.
    hold_warned: BTreeSet<String>,
}

/// Runtime API client and reconciler. Cheap to clone; clones share the adapter's memory.
#[derive(Clone)]
pub struct Haproxy {
    cfg: Arc<HaproxyConfig>,
    api: RuntimeApi,
    memory: Arc<Mutex<Memory>>,
    /// Serializes passes so two callers cannot interleave changes.
    pass_lock: Arc<tokio::sync::Mutex<()>>,
    /// HAProxy cannot check an epoch: every change is made only while this says we lead.
    guard: crate::leader::LeaderGuard,
}

impl Haproxy {
    pub fn new(cfg: HaproxyConfig) -> Self {
        Self {
            api: RuntimeApi::new(&cfg),
            cfg: Arc::new(cfg),
            memory: Arc::new(Mutex::new(Memory::default())),
            pass_lock: Arc::new(tokio::sync::Mutex::new(())),
            guard: crate::leader::LeaderGuard::always(),
        }
    }

    /// Changes HAProxy only while `guard` says this controller leads (checked right before
    /// every change).
    pub fn with_leader_guard(mut self, guard: crate::leader::LeaderGuard) -> Self {
        self.guard = guard;
        self
    }

    pub fn config(&self) -> &HaproxyConfig {
        &self.cfg
    }

    /// Sends one command and returns HAProxy's whole answer.
    ///
    /// # Errors
    /// [`HaproxyError::InvalidArgument`] when the command holds `;`, `\`, `#` or anything but
    /// printable ASCII (nothing is sent); transport errors and timeouts otherwise. HAProxy's
    /// own error messages come back as text: the caller judges the answer.
    pub async fn command(&self, cmd: &str) -> Result<String, HaproxyError> {
        check_command(cmd)?;
        self.api.send(cmd).await
    }

    /// The servers of `backend`: `show servers state` joined with `show stat` counters.
    ///
    /// # Errors
    /// Invalid backend name, transport errors, an unknown backend ([`HaproxyError::Refused`]),
    /// an answer that does not parse.
    pub async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, HaproxyError> {
        self.api.servers(backend).await
    }

    /// One reconcile pass: make every backend match the table; returns in-flight (current
    /// sessions) per instance id for the servers rejuv manages.
    ///
    /// # Errors
    /// See [`Haproxy::reconcile_report`].
    pub async fn reconcile(
        &self,
        table: &RouteTable,
    ) -> Result<BTreeMap<String, u64>, HaproxyError> {
        Ok(self.reconcile_report(table).await?.in_flight)
    }

    /// One reconcile pass, with the details of what it did.
    ///
    /// # Errors
    /// A name or address outside the strict character set (nothing is sent); HAProxy
    /// unreachable or refusing a command (the changes made before the failure stay; the next
    /// pass continues from what HAProxy then has).
    pub async fn reconcile_report(&self, table: &RouteTable) -> Result<PassReport, HaproxyError> {
        let _serial = self.pass_lock.lock().await;
        self.cfg.validate()?;
        let desired = self.desired(table)?;
        let mut report = PassReport::default();

        self.note_incarnation(self.api.incarnation().await?, &mut report);
        for (service, backend) in &self.cfg.backends {
            let want = desired.get(service.as_str()).cloned().unwrap_or_default();
            self.reconcile_backend(backend, &want, &mut report).await?;
        }
        Ok(report)
    }

    /// A new HAProxy process forgot rejuv's servers, and what rejuv remembered of them.
    fn note_incarnation(&self, incarnation: Incarnation, report: &mut PassReport) {
        let mut mem = self.memory.lock().expect("haproxy memory lock");
        if mem.incarnation.is_some_and(|old| old != incarnation) {
            report.restarted = true;
            info!(
                pid = incarnation.pid,
                "HAProxy is a new process (restart or reload): it forgot rejuv's servers; re-adding them"
            );
            mem.own_maint.clear();
            mem.warned.clear();
        }
        mem.incarnation = Some(incarnation);
    }

    /// Makes one backend match `want`, then counts in-flight sessions of rejuv's servers.
    async fn reconcile_backend(
        &self,
        backend: &str,
        want: &BTreeMap<String, &Backend>,
        report: &mut PassReport,
    ) -> Result<(), HaproxyError> {
        let servers = self.api.servers(backend).await?;
        let plan = self.plan(backend, &servers, want);
        for name in &plan.operator_maint {
            self.warn_operator_maint(backend, name);
            report.operator_maint.push(format!("{backend}/{name}"));
        }
        let changed = !plan.changes.is_empty();
        for change in plan.changes {
            if !self.guard.still_leader() {
                return Err(HaproxyError::NotLeader);
            }
            self.apply(backend, change, report).await?;
        }
        // The counts must come from after the changes are in force: a request that
        // reached a server just before its drain took effect is in flight too.
        let after = if changed {
            self.api.servers(backend).await?
        } else {
            servers
        };
        for s in &after {
            if let Some(id) = s.name.strip_prefix(self.cfg.server_prefix.as_str()) {
                *report.in_flight.entry(id.to_string()).or_insert(0) += s.in_flight();
            }
        }
        Ok(())
    }

    /// The planner's changes for one backend, with what rejuv remembers of its own servers.
    fn plan(
        &self,
        backend: &str,
        servers: &[ServerState],
        want: &BTreeMap<String, &Backend>,
    ) -> BackendPlan {
        let mut mem = self.memory.lock().expect("haproxy memory lock");
        // Forget what no longer needs remembering: servers gone, or out of maintenance.
        let held = |b: &String, n: &String| {
            b != backend || servers.iter().any(|s| &s.name == n && s.forced_maint())
        };
        mem.own_maint.retain(|(b, n)| held(b, n));
        mem.warned.retain(|(b, n)| held(b, n));
        let own = |name: &str| {
            mem.own_maint
                .contains(&(backend.to_string(), name.to_string()))
        };
        plan_backend(
            &self.cfg.server_prefix,
            self.cfg.health_check.is_some(),
            servers,
            want,
            own,
        )
    }

    /// One warning per server an operator holds in maintenance.
    fn warn_operator_maint(&self, backend: &str, name: &str) {
        let key = (backend.to_string(), name.to_string());
        let first = self
            .memory
            .lock()
            .expect("haproxy memory lock")
            .warned
            .insert(key);
        if first {
            warn!(
                backend = %backend,
                server = %name,
                "an operator put rejuv server {backend}/{name} in maintenance; leaving it alone until it is set ready again"
            );
        }
    }

    /// The table's backends per mapped service, every name and address checked.
    fn desired<'t>(
        &self,
        table: &'t RouteTable,
    ) -> Result<BTreeMap<&'t str, BTreeMap<String, &'t Backend>>, HaproxyError> {
        let mut out = BTreeMap::new();
        for (service, routes) in &table.services {
            if !self.cfg.backends.contains_key(service) {
                continue;
            }
            if routes.hold {
                let first = self
                    .memory
                    .lock()
                    .expect("haproxy memory lock")
                    .hold_warned
                    .insert(service.clone());
                if first {
                    warn!(
                        service = %service,
                        "the route table asks to hold requests (state hand-off); HAProxy cannot hold them: ignored"
                    );
                }
            }
            let mut m = BTreeMap::new();
            for b in &routes.backends {
                check_name("instance id", &b.id)?;
                check_name(
                    "server name",
                    &format!("{}{}", self.cfg.server_prefix, b.id),
                )?;
                check_addr(&b.addr)?;
                m.insert(b.id.clone(), b);
            }
            out.insert(service.as_str(), m);
        }
        Ok(out)
    }

    async fn apply(
        &self,
        backend: &str,
        change: Change,
        report: &mut PassReport,
    ) -> Result<(), HaproxyError> {
        match change {
            Change::Add { server, addr } => self.add(backend, &server, addr, report).await,
            Change::Ready { server } => {
                let cmd = format!("set server {backend}/{server} state ready");
                self.expect_empty(&cmd, report).await?;
                self.forget_own(backend, &server);
                Ok(())
            }
            Change::Drain { server } => {
                let cmd = format!("set server {backend}/{server} state drain");
                self.expect_empty(&cmd, report).await
            }
            Change::EnableHealth { server } => {
                let cmd = format!("enable health {backend}/{server}");
                self.expect_empty(&cmd, report).await
            }
            Change::Delete {
                server,
                already_maint,
                readd,
            } => {
                if !already_maint {
                    self.remember_own(backend, &server);
                    let cmd = format!("set server {backend}/{server} state maint");
                    self.expect_empty(&cmd, report).await?;
                }
                let cmd = format!("del server {backend}/{server}");
                let answer = self.send_write(&cmd, report).await?;
                let answer = answer.trim();
                if answer == "Server deleted." || answer == "No such server." {
                    self.forget_own(backend, &server);
                    if let Some(addr) = readd {
                        return self.add(backend, &server, addr, report).await;
                    }
                    Ok(())
                } else if answer.contains("still has connections") {
                    // A session slipped in between the read and the delete (a persistent
                    // client, a retry): it stays in maintenance and goes at a later pass.
                    report.deferred.push(format!("{backend}/{server}"));
                    Ok(())
                } else {
                    Err(HaproxyError::Refused {
                        command: cmd,
                        answer: answer.to_string(),
                    })
                }
            }
        }
    }

    async fn add(
        &self,
        backend: &str,
        server: &str,
        addr: SocketAddr,
        report: &mut PassReport,
    ) -> Result<(), HaproxyError> {
        let target = format!("{backend}/{server}");
        let mut add = format!("add server {target} {addr}");
        let mut chain = Vec::new();
        if let Some(hc) = &self.cfg.health_check {
            add.push_str(&format!(
                " check inter {}ms rise {} fall {}",
                hc.inter.as_millis().max(1),
                hc.rise,
                hc.fall
            ));
            chain.push(add);
            chain.push(format!("enable health {target}"));
        } else {
            chain.push(add);
        }
        chain.push(format!("enable server {target}"));
        for c in &chain {
            check_command(c)?;
        }
        // Remembered before sending: if the enable does not happen, the next pass must know
        // the maintenance state is rejuv's own and enable the server.
        self.remember_own(backend, server);
        let cmd = chain.join("; ");
        let answer = self.send_write(&cmd, report).await?;
        let words: Vec<&str> = answer.lines().filter(|l| !l.trim().is_empty()).collect();
        if words == ["New server registered."] {
            self.forget_own(backend, server);
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command: cmd,
                answer: answer.trim().to_string(),
            })
        }
    }

    fn remember_own(&self, backend: &str, server: &str) {
        self.memory
            .lock()
            .expect("haproxy memory lock")
            .own_maint
            .insert((backend.to_string(), server.to_string()));
    }

    fn forget_own(&self, backend: &str, server: &str) {
        self.memory
            .lock()
            .expect("haproxy memory lock")
            .own_maint
            .remove(&(backend.to_string(), server.to_string()));
    }

    async fn expect_empty(&self, cmd: &str, report: &mut PassReport) -> Result<(), HaproxyError> {
        let answer = self.send_write(cmd, report).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command: cmd.to_string(),
                answer: answer.trim().to_string(),
            })
        }
    }

    async fn send_write(&self, cmd: &str, report: &mut PassReport) -> Result<String, HaproxyError> {
        report.commands.push(cmd.to_string());
        debug!(command = %cmd, "haproxy");
        self.api.send(cmd).await
    }
}
