//! HAProxy traffic adapter: keeps HAProxy backends equal to the available server list.
//!
//! rejuv drives the HAProxy the operator already runs through its runtime API (the stats
//! socket, `level admin`), with no reload. Each rejuv service maps to one HAProxy backend; each
//! instance endpoint in the route table becomes a *dynamic* server named
//! `<prefix><instance id>` (default prefix `rj-`, e.g. `rj-web-s1-1`). Like the builtin
//! adapter it is a reconcile loop: every pass reads what HAProxy has, compares it with the
//! desired [`RouteTable`] and fixes the difference, then reports the in-flight sessions per
//! instance to the engine as `TrafficSynced`, which is how a drain is known to be finished.
//!
//! | table says | HAProxy gets |
//! |---|---|
//! | `Serving` | server present at that address, state ready (`add server` + `enable server`) |
//! | `Draining` | `set server B/N state drain` (no new requests, in-flight ones finish) |
//! | absent | drain, then `maint` + `del server` once its sessions reach 0 |
//! | other address | the old server leaves as if absent, then the new one is added |
//!
//! # Guarantees
//! - Only servers whose name starts with the prefix are ever changed; static servers and other
//!   dynamic servers are left alone.
//! - A rejuv server that is in forced maintenance although the table wants it, and that rejuv
//!   did not put there, was put there by an operator: it is left alone and reported (one
//!   warning per server). HAProxy 2.6 cannot tell the two apart by itself: `add server` leaves a
//!   new server with `srv_admin_state` 0x01 (`SRV_ADMF_FMAINT`), exactly what
//!   `set server … state maint` and `disable server` leave. So `add server` and
//!   `enable server` go in one request (HAProxy runs `;`-chained commands in order), and the
//!   adapter remembers the servers it added or put in maintenance itself, per HAProxy process.
//! - In-flight counts come from a read made *after* the pass's changes are in force, so a
//!   request that slipped in before a drain took effect is still counted.
//! - Every argument sent is checked against a strict character set first (HAProxy chains
//!   commands on `;`); a table with a bad name or address is refused whole, before anything is
//!   sent.
//! - A restarted HAProxy forgets dynamic servers: every pass diffs from scratch, so the next
//!   pass re-adds them. The process identity (`show info` Pid and start time) is tracked only
//!   to reset the adapter's memory and to say so in the log.
//!
//! # Assumptions
//! - HAProxy 2.6 or later, one worker process (or the worker's socket in master-worker mode),
//!   backends with a dynamic balance algorithm (`roundrobin`, `leastconn`, `random`, `first`,
//!   or consistent hashing): `static-rr` and map-based hashing refuse dynamic servers.
//! - Dynamic servers do not inherit `default-server` in 2.6: health-check settings are sent in
//!   the `add server` line ([`HealthCheck`]).
//! - `ServiceRoutes::hold` (request holding during a state hand-off) has no HAProxy
//!   equivalent; it is logged and ignored.

use crate::engine::Msg;
use rejuv_core::api::{Backend, BackendState, RouteTable};
use rejuv_core::cluster::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// `srv_admin_state` bits (HAProxy `enum srv_admin`, include/haproxy/server-t.h).
pub mod admin {
    /// Forced into maintenance: CLI `state maint` / `disable server`, and every new dynamic
    /// server until `enable server`.
    pub const FMAINT: u8 = 0x01;
    /// Maintenance inherited from a tracked server.
    pub const IMAINT: u8 = 0x02;
    /// `disabled` in the configuration (a sticky marker, kept after `enable server`).
    pub const CMAINT: u8 = 0x04;
    /// Forced into drain: CLI `state drain`.
    pub const FDRAIN: u8 = 0x08;
    /// Drain inherited from a tracked server.
    pub const IDRAIN: u8 = 0x10;
    /// Down because its address could not be resolved.
    pub const RMAINT: u8 = 0x20;
    /// Any flag that keeps the server in maintenance.
    pub const MAINT: u8 = FMAINT | IMAINT | RMAINT;
    /// Any drain flag.
    pub const DRAIN: u8 = FDRAIN | IDRAIN;
}

/// `srv_check_state` bits (HAProxy `CHK_ST_*`).
mod check_state {
    pub const CONFIGURED: u8 = 0x02;
    pub const ENABLED: u8 = 0x04;
}

/// Default name prefix of the servers rejuv manages.
pub const DEFAULT_PREFIX: &str = "rj-";

/// Longest server or backend name accepted (HAProxy itself has no short limit).
const MAX_NAME: usize = 100;

/// Where HAProxy's runtime API listens (`stats socket … level admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaproxySocket {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for HaproxySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaproxySocket::Unix(p) => write!(f, "unix:{}", p.display()),
            HaproxySocket::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Health checks HAProxy runs on the servers rejuv adds (`check inter … rise … fall …`).
/// The check type (`option httpchk …`) comes from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    pub inter: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct HaproxyConfig {
    pub socket: HaproxySocket,
    /// rejuv service name → HAProxy backend name.
    pub backends: BTreeMap<String, String>,
    /// Name prefix of rejuv's servers; only servers with it are ever changed.
    pub server_prefix: String,
    /// `None`: servers are added without checks (rejuv only routes to healthy instances, and
    /// `retry-on conn-failure` covers a crash in between).
    pub health_check: Option<HealthCheck>,
    /// Limit for one runtime API exchange (connect, send, read to the end).
    pub timeout: Duration,
}

impl HaproxyConfig {
    /// A configuration with the default prefix, no health checks and a 3 s timeout.
    pub fn new(socket: HaproxySocket, backends: BTreeMap<String, String>) -> Self {
        Self {
            socket,
            backends,
            server_prefix: DEFAULT_PREFIX.to_string(),
            health_check: None,
            timeout: Duration::from_secs(3),
        }
    }

    /// Checks the backend names and the prefix against the strict character set.
    ///
    /// # Errors
    /// [`HaproxyError::InvalidArgument`] naming the first bad value.
    pub fn validate(&self) -> Result<(), HaproxyError> {
        check_name("server prefix", &self.server_prefix)?;
        let mut seen = BTreeSet::new();
        for b in self.backends.values() {
            check_name("backend name", b)?;
            // Each pass makes a backend equal to one service's list: two services on one
            // backend would delete each other's servers.
            if !seen.insert(b) {
                return Err(HaproxyError::InvalidArgument {
                    what: "backend name",
                    value: b.clone(),
                    reason: "mapped to two services",
                });
            }
        }
        if let Some(hc) = &self.health_check {
            if hc.inter.is_zero() || hc.rise == 0 || hc.fall == 0 {
                return Err(HaproxyError::InvalidArgument {
                    what: "health check",
                    value: format!("{hc:?}"),
                    reason: "inter, rise and fall must be positive",
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("{what} {value:?} refused before sending: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot connect to the HAProxy runtime API at {socket}")]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy runtime API at {socket}: `{command}` failed")]
    Io {
        socket: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "HAProxy runtime API at {socket}: no complete answer to `{command}` within {timeout:?}"
    )]
    Timeout {
        socket: String,
        command: String,
        timeout: Duration,
    },
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
    #[error("cannot parse HAProxy's answer to `{command}`: {reason} (in {line:?})")]
    Parse {
        command: String,
        line: String,
        reason: String,
    },
    #[error("not the leader (or its lease lapsed): HAProxy is left alone")]
    NotLeader,
}

/// One server of a backend as HAProxy reports it (`show servers state` joined with the
/// session counters of `show stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend_id: u32,
    pub backend: String,
    pub id: u32,
    pub name: String,
    /// `None` when HAProxy has no address (`-`, an unresolved FQDN).
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state`, see [`admin`].
    pub admin_state: u8,
    /// `srv_check_state` (0 when the column is absent).
    pub check_state: u8,
    /// Current sessions on the server (`scur`).
    pub sessions: u64,
    /// Requests queued for this server (`qcur`).
    pub queued: u64,
}

impl ServerState {
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.map(|ip| SocketAddr::new(ip, self.port))
    }
    /// In maintenance for any reason (forced, inherited, resolution).
    pub fn in_maint(&self) -> bool {
        self.admin_state & admin::MAINT != 0
    }
    /// In maintenance forced through the CLI (or freshly added and not yet enabled).
    pub fn forced_maint(&self) -> bool {
        self.admin_state & admin::FMAINT != 0
    }
    pub fn draining(&self) -> bool {
        self.admin_state & admin::DRAIN != 0
    }
    /// Sessions in progress plus requests waiting for this server.
    pub fn in_flight(&self) -> u64 {
        self.sessions + self.queued
    }
}

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

/// A change the planner asks for on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// `add server` (+ `enable health`) + `enable server`, in one request.
    Add {
        server: String,
        addr: SocketAddr,
    },
    Ready {
        server: String,
    },
    Drain {
        server: String,
    },
    EnableHealth {
        server: String,
    },
    /// `maint` (unless already) then `del server`; then `add` at `readd` if given.
    Delete {
        server: String,
        already_maint: bool,
        readd: Option<SocketAddr>,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
struct BackendPlan {
    changes: Vec<Change>,
    operator_maint: Vec<String>,
}

/// Which HAProxy process the adapter last talked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incarnation {
    pid: u64,
    start_time_sec: u64,
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
    memory: Arc<Mutex<Memory>>,
    /// Serializes passes so two callers cannot interleave changes.
    pass_lock: Arc<tokio::sync::Mutex<()>>,
    /// HAProxy cannot check an epoch: every change is made only while this says we lead.
    guard: crate::leader::LeaderGuard,
}

impl Haproxy {
    pub fn new(cfg: HaproxyConfig) -> Self {
        Self {
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
        self.send(cmd).await
    }

    /// The servers of `backend`: `show servers state` joined with `show stat` counters.
    ///
    /// # Errors
    /// Invalid backend name, transport errors, an unknown backend ([`HaproxyError::Refused`]),
    /// an answer that does not parse.
    pub async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, HaproxyError> {
        check_name("backend name", backend)?;
        let cmd = format!("show servers state {backend}");
        let text = self.send(&cmd).await?;
        let mut servers = parse_servers_state(&cmd, &text)?;
        let cmd = format!("show stat {backend} 4 -1");
        let text = self.send(&cmd).await?;
        let stats = parse_stat_sessions(&cmd, &text)?;
        for s in &mut servers {
            // A server absent from the second read was deleted or added in between: either
            // way it has no sessions yet.
            if let Some(&(scur, qcur)) = stats.get(&s.name) {
                s.sessions = scur;
                s.queued = qcur;
            }
        }
        Ok(servers)
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

        let incarnation = self.incarnation().await?;
        {
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

        for (service, backend) in &self.cfg.backends {
            let want = desired.get(service.as_str()).cloned().unwrap_or_default();
            let servers = self.servers(backend).await?;
            let plan = {
                let mut mem = self.memory.lock().expect("haproxy memory lock");
                // Forget what no longer needs remembering: servers gone, or out of maintenance.
                mem.own_maint.retain(|(b, n)| {
                    b != backend || servers.iter().any(|s| &s.name == n && s.forced_maint())
                });
                mem.warned.retain(|(b, n)| {
                    b != backend || servers.iter().any(|s| &s.name == n && s.forced_maint())
                });
                let own = |name: &str| mem.own_maint.contains(&(backend.clone(), name.to_string()));
                plan_backend(
                    &self.cfg.server_prefix,
                    self.cfg.health_check.is_some(),
                    &servers,
                    &want,
                    own,
                )
            };
            for name in &plan.operator_maint {
                let key = (backend.clone(), name.clone());
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
                report.operator_maint.push(format!("{backend}/{name}"));
            }
            let changed = !plan.changes.is_empty();
            for change in plan.changes {
                if !self.guard.still_leader() {
                    return Err(HaproxyError::NotLeader);
                }
                self.apply(backend, change, &mut report).await?;
            }
            // The counts must come from after the changes are in force: a request that
            // reached a server just before its drain took effect is in flight too.
            let after = if changed {
                self.servers(backend).await?
            } else {
                servers
            };
            for s in &after {
                if let Some(id) = s.name.strip_prefix(self.cfg.server_prefix.as_str()) {
                    *report.in_flight.entry(id.to_string()).or_insert(0) += s.in_flight();
                }
            }
        }
        Ok(report)
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

    async fn incarnation(&self) -> Result<Incarnation, HaproxyError> {
        let cmd = "show info";
        let text = self.send(cmd).await?;
        let field = |key: &str| -> Result<u64, HaproxyError> {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
                .ok_or_else(|| HaproxyError::Parse {
                    command: cmd.to_string(),
                    line: first_line(&text),
                    reason: format!("no {key} field"),
                })?
                .trim()
                .parse()
                .map_err(|e| HaproxyError::Parse {
                    command: cmd.to_string(),
                    line: key.to_string(),
                    reason: format!("{e}"),
                })
        };
        Ok(Incarnation {
            pid: field("Pid")?,
            start_time_sec: field("Start_time_sec")?,
        })
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
        self.send(cmd).await
    }

    /// One exchange: connect, send the line, read until HAProxy closes (non-interactive mode
    /// answers one request per connection).
    async fn send(&self, cmd: &str) -> Result<String, HaproxyError> {
        let socket = self.cfg.socket.to_string();
        let timeout = self.cfg.timeout;
        let exchange = async {
            match &self.cfg.socket {
                HaproxySocket::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|source| HaproxyError::Connect {
                            socket: socket.clone(),
                            source,
                        })?;
                    exchange(s, cmd, &socket).await
                }
                HaproxySocket::Tcp(addr) => {
                    let s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|source| HaproxyError::Connect {
                            socket: socket.clone(),
                            source,
                        })?;
                    exchange(s, cmd, &socket).await
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HaproxyError::Timeout {
                socket: socket.clone(),
                command: cmd.to_string(),
                timeout,
            })?
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    cmd: &str,
    socket: &str,
) -> Result<String, HaproxyError> {
    let io = |source| HaproxyError::Io {
        socket: socket.to_string(),
        command: cmd.to_string(),
        source,
    };
    s.write_all(format!("{cmd}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(io)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Decides the changes for one backend. Pure: the tests drive it with captured states.
fn plan_backend(
    prefix: &str,
    health_checks: bool,
    servers: &[ServerState],
    want: &BTreeMap<String, &Backend>,
    own_maint: impl Fn(&str) -> bool,
) -> BackendPlan {
    let mut plan = BackendPlan::default();
    let mut adds = Vec::new();
    let mut readies = Vec::new();
    let mut drains = Vec::new();
    let mut deletes = Vec::new();
    for s in servers {
        let Some(id) = s.name.strip_prefix(prefix) else {
            continue; // not rejuv's
        };
        let server = s.name.clone();
        let idle = s.in_flight() == 0;
        // Leaving: not in the table, or at another address (the new one comes after).
        let leaving = |readd: Option<SocketAddr>| {
            if s.in_maint() {
                idle.then_some(Change::Delete {
                    server: server.clone(),
                    already_maint: true,
                    readd,
                })
            } else if !s.draining() {
                Some(Change::Drain {
                    server: server.clone(),
                })
            } else {
                idle.then_some(Change::Delete {
                    server: server.clone(),
                    already_maint: false,
                    readd,
                })
            }
        };
        match want.get(id) {
            None => deletes.extend(leaving(None)),
            Some(b) if s.socket_addr() != Some(b.addr) => {
                let readd = (b.state == BackendState::Serving).then_some(b.addr);
                match leaving(readd) {
                    Some(c @ Change::Delete { .. }) => deletes.push(c),
                    Some(c) => drains.push(c),
                    None => {}
                }
            }
            Some(b) => match b.state {
                BackendState::Serving => {
                    if s.forced_maint() {
                        if own_maint(&server) {
                            readies.push(Change::Ready { server });
                        } else {
                            plan.operator_maint.push(server);
                        }
                    } else if s.draining() {
                        readies.push(Change::Ready { server });
                    } else if health_checks
                        && s.check_state & check_state::CONFIGURED != 0
                        && s.check_state & check_state::ENABLED == 0
                    {
                        readies.push(Change::EnableHealth { server });
                    }
                }
                BackendState::Draining => {
                    // In maintenance (rejuv's or an operator's) it takes no new requests
                    // either: nothing to do.
                    if !s.in_maint() && !s.draining() {
                        drains.push(Change::Drain { server });
                    }
                }
            },
        }
    }
    for (id, b) in want {
        let name = format!("{prefix}{id}");
        if b.state == BackendState::Serving && !servers.iter().any(|s| s.name == name) {
            adds.push(Change::Add {
                server: name,
                addr: b.addr,
            });
        }
    }
    // New servers take traffic before old ones stop taking it.
    plan.changes.extend(adds);
    plan.changes.extend(readies);
    plan.changes.extend(drains);
    plan.changes.extend(deletes);
    plan
}

/// Names (backend, server, prefix, instance id): ASCII letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit.
fn check_name(what: &'static str, value: &str) -> Result<(), HaproxyError> {
    let bad = |reason| {
        Err(HaproxyError::InvalidArgument {
            what,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if value.len() > MAX_NAME {
        return bad("longer than 100 characters");
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with an ASCII letter or digit");
    }
    if !value
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Addresses: written as `IPv4:port` or `[IPv6]:port`, no zone id.
fn check_addr(addr: &SocketAddr) -> Result<(), HaproxyError> {
    let text = addr.to_string();
    let ok = text
        .bytes()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, b'.' | b':' | b'[' | b']'));
    if !ok {
        return Err(HaproxyError::InvalidArgument {
            what: "address",
            value: text,
            reason: "only an IPv4 or IPv6 address and a port are allowed (no zone id)",
        });
    }
    if addr.port() == 0 {
        return Err(HaproxyError::InvalidArgument {
            what: "address",
            value: text,
            reason: "port 0",
        });
    }
    Ok(())
}

/// A raw command: printable ASCII, and none of `;` (chaining), `\` (escapes), `#` (comment).
fn check_command(cmd: &str) -> Result<(), HaproxyError> {
    let bad = |reason| {
        Err(HaproxyError::InvalidArgument {
            what: "command",
            value: cmd.to_string(),
            reason,
        })
    };
    if cmd.trim().is_empty() {
        return bad("empty");
    }
    if cmd.len() > 4096 {
        return bad("longer than 4096 bytes");
    }
    if !cmd.bytes().all(|c| (0x20..0x7f).contains(&c)) {
        return bad("only printable ASCII is allowed");
    }
    if cmd.bytes().any(|c| matches!(c, b';' | b'\\' | b'#')) {
        return bad("';', '\\' and '#' are not allowed (one command per request)");
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

/// Parses `show servers state <backend>` (format version 1): the columns are found by the
/// header's names, so added columns do not break it.
fn parse_servers_state(command: &str, text: &str) -> Result<Vec<ServerState>, HaproxyError> {
    let err = |line: &str, reason: String| HaproxyError::Parse {
        command: command.to_string(),
        line: line.to_string(),
        reason,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next().unwrap_or("");
    if version.trim() != "1" {
        // Not a state dump: HAProxy's error message (e.g. "Can't find backend.").
        return Err(HaproxyError::Refused {
            command: command.to_string(),
            answer: text.trim().to_string(),
        });
    }
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| err(version, "no header line".into()))?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| err(header, format!("no column {name}")))
    };
    let (be_id, be_name, srv_id, srv_name) = (
        col("be_id")?,
        col("be_name")?,
        col("srv_id")?,
        col("srv_name")?,
    );
    let (srv_addr, op, adm, port) = (
        col("srv_addr")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_port")?,
    );
    let chk = cols.iter().position(|c| *c == "srv_check_state");
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < cols.len() {
            return Err(err(
                line,
                format!("{} fields, expected {}", f.len(), cols.len()),
            ));
        }
        fn num<T: std::str::FromStr>(f: &[&str], i: usize, name: &str) -> Result<T, String> {
            f[i].parse()
                .map_err(|_| format!("{name} is not a number: {:?}", f[i]))
        }
        let parsed = (|| -> Result<ServerState, String> {
            Ok(ServerState {
                backend_id: num(&f, be_id, "be_id")?,
                backend: f[be_name].to_string(),
                id: num(&f, srv_id, "srv_id")?,
                name: f[srv_name].to_string(),
                addr: match f[srv_addr] {
                    "-" => None,
                    a => Some(
                        a.parse()
                            .map_err(|_| format!("srv_addr is not an address: {a:?}"))?,
                    ),
                },
                port: num(&f, port, "srv_port")?,
                op_state: num(&f, op, "srv_op_state")?,
                admin_state: num(&f, adm, "srv_admin_state")?,
                check_state: match chk {
                    Some(i) => num(&f, i, "srv_check_state")?,
                    None => 0,
                },
                sessions: 0,
                queued: 0,
            })
        })();
        out.push(parsed.map_err(|reason| err(line, reason))?);
    }
    Ok(out)
}

/// Parses `show stat <backend> 4 -1` (CSV): server name → (`scur`, `qcur`).
fn parse_stat_sessions(
    command: &str,
    text: &str,
) -> Result<BTreeMap<String, (u64, u64)>, HaproxyError> {
    let err = |line: &str, reason: String| HaproxyError::Parse {
        command: command.to_string(),
        line: line.to_string(),
        reason,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next().and_then(|l| l.strip_prefix("# ")) else {
        return Err(HaproxyError::Refused {
            command: command.to_string(),
            answer: text.trim().to_string(),
        });
    };
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| err(header, format!("no column {name}")))
    };
    let (sv, scur, qcur) = (col("svname")?, col("scur")?, col("qcur")?);
    let mut out = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| -> Result<u64, HaproxyError> {
            let v = f.get(i).copied().unwrap_or("");
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| err(line, format!("column {} is not a number: {v:?}", cols[i])))
        };
        let name = f
            .get(sv)
            .ok_or_else(|| err(line, "no svname".into()))?
            .to_string();
        out.insert(name, (get(scur)?, get(qcur)?));
    }
    Ok(out)
}

/// The reconcile loop for HAProxy: a pass whenever the route table changes, and every 250 ms
/// besides (which is also how a restarted HAProxy is noticed and repaired); after each
/// successful pass, `TrafficSynced { version: <the table just applied>, in_flight }`.
/// Failures back off from 0.2 s to 5 s; the first failure of a run is a warning, the
/// recovery an info line.
pub async fn reconcile_haproxy(
    h: Haproxy,
    mut routes: watch::Receiver<RouteTable>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    const STEADY: Duration = Duration::from_millis(250);
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    let mut routes_open = true;
    loop {
        let table = routes.borrow_and_update().clone();
        let span = tracing::info_span!("haproxy_reconcile", version = table.version);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = h.reconcile_report(&table).instrument(span) => r,
        };
        let wait = match result {
            Ok(report) => {
                if failing {
                    info!(version = table.version, "HAProxy reconciled again");
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
                if !report.commands.is_empty() {
                    info!(
                        version = table.version,
                        commands = ?report.commands,
                        "HAProxy changed to match the route table"
                    );
                }
                let ev = Event::TrafficSynced {
                    version: table.version,
                    in_flight: report.in_flight,
                };
                if tx.send(Msg::Event(ev)).await.is_err() {
                    return;
                }
                STEADY
            }
            Err(e) => {
                if failing {
                    debug!(error = %e, "HAProxy reconcile failed again");
                } else {
                    warn!(error = %e, "cannot reconcile HAProxy; retrying with backoff");
                    failing = true;
                }
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        if routes_open {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = routes.changed() => routes_open = r.is_ok(),
                _ = tokio::time::sleep(wait) => {}
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from HAProxy 2.6.12: a static server `disabled` in the configuration, a
    /// dynamic server just added (0x01), one enabled and draining (0x08), one with checks
    /// enabled (check state 6), an IPv6 one.
    const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 static1 127.0.0.1 0 5 1 1 15 1 0 0 8 0 0 0 - 9 - 0 0 - - 0
3 web 2 rj-a 127.0.0.1 2 8 1 1 1 1 0 0 0 0 0 0 - 8001 - 0 0 - - 0
3 web 3 rj-b 127.0.0.1 0 1 1 1 1 1 0 0 0 0 0 0 - 8002 - 0 0 - - 0
3 web 4 rj-y 127.0.0.1 2 0 1 1 1 6 3 3 6 0 0 0 - 8101 - 0 0 - - 0
3 web 6 rj-e ::1 0 1 1 1 0 1 0 0 0 0 0 0 - 8005 - 0 0 - - 0

";

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight
web,static1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1
web,rj-a,0,0,1,1,,4,246,345,,0,,0,0,0,0,DRAIN,1
web,rj-y,2,3,5,5,,0,0,0,,0,,0,0,0,0,UP,1

";

    #[test]
    fn parses_captured_servers_state() {
        let s = parse_servers_state("show servers state web", STATE).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "static1");
        assert_eq!(s[0].admin_state, admin::FMAINT | admin::CMAINT);
        assert!(s[0].forced_maint());
        assert_eq!(s[1].name, "rj-a");
        assert_eq!(s[1].socket_addr(), Some("127.0.0.1:8001".parse().unwrap()));
        assert!(s[1].draining() && !s[1].in_maint());
        assert_eq!(s[1].op_state, 2);
        assert!(
            s[2].forced_maint(),
            "a just-added server is in forced maintenance"
        );
        assert_eq!(s[3].check_state, 6);
        assert_eq!(s[4].socket_addr(), Some("[::1]:8005".parse().unwrap()));
        assert_eq!(
            (s[4].backend_id, s[4].id, s[4].backend.as_str()),
            (3, 6, "web")
        );
    }

    #[test]
    fn state_errors_are_refusals_or_parse_errors() {
        let e = parse_servers_state("show servers state nope", "Can't find backend.\n\n");
        assert!(
            matches!(e, Err(HaproxyError::Refused { ref answer, .. }) if answer == "Can't find backend.")
        );
        let bad = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_port\n3 web x s 1.2.3.4 0 0 80\n";
        assert!(matches!(
            parse_servers_state("c", bad),
            Err(HaproxyError::Parse { .. })
        ));
        let short = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_port\n3 web 1 s\n";
        assert!(matches!(
            parse_servers_state("c", short),
            Err(HaproxyError::Parse { .. })
        ));
    }

    #[test]
    fn parses_stat_sessions() {
        let m = parse_stat_sessions("show stat web 4 -1", STAT).unwrap();
        assert_eq!(m["static1"], (0, 0));
        assert_eq!(m["rj-a"], (1, 0));
        assert_eq!(m["rj-y"], (5, 2));
        assert!(matches!(
            parse_stat_sessions("show stat x 4 -1", "No such proxy.\n"),
            Err(HaproxyError::Refused { .. })
        ));
    }

    fn backend(id: &str, addr: &str, state: BackendState) -> Backend {
        Backend {
            id: id.into(),
            addr: addr.parse().unwrap(),
            state,
        }
    }

    #[test]
    fn plan_follows_the_table_and_skips_foreign_servers() {
        let mut servers = parse_servers_state("c", STATE).unwrap();
        servers[1].sessions = 0; // rj-a draining, idle
        let a = backend("a", "127.0.0.1:8001", BackendState::Serving);
        let b = backend("b", "127.0.0.1:8002", BackendState::Serving);
        let n = backend("n", "127.0.0.1:8009", BackendState::Serving);
        let d = backend("d", "127.0.0.1:8010", BackendState::Draining);
        let want: BTreeMap<String, &Backend> = [("a", &a), ("b", &b), ("n", &n), ("d", &d)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        // rj-b is in forced maintenance and not rejuv's: an operator's.
        let plan = plan_backend("rj-", false, &servers, &want, |_| false);
        assert_eq!(plan.operator_maint, vec!["rj-b".to_string()]);
        assert_eq!(
            plan.changes,
            vec![
                Change::Add {
                    server: "rj-n".into(),
                    addr: n.addr
                },
                Change::Ready {
                    server: "rj-a".into()
                },
                // rj-y (ready) absent from the table: drain first.
                Change::Drain {
                    server: "rj-y".into()
                },
                // rj-e in maintenance, absent, idle: delete.
                Change::Delete {
                    server: "rj-e".into(),
                    already_maint: true,
                    readd: None
                },
            ]
        );
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| format!("{c:?}").contains("static1")),
            "a static server is never touched"
        );
        // The same maintenance, remembered as rejuv's own: enabled.
        let plan = plan_backend("rj-", false, &servers, &want, |n| n == "rj-b");
        assert!(plan.operator_maint.is_empty());
        assert!(plan.changes.contains(&Change::Ready {
            server: "rj-b".into()
        }));
    }

    #[test]
    fn address_change_drains_then_replaces() {
        let mut servers = parse_servers_state("c", STATE).unwrap();
        let moved = backend("y", "127.0.0.1:9999", BackendState::Serving);
        let want: BTreeMap<String, &Backend> = [("y".to_string(), &moved)].into();
        servers.retain(|s| s.name == "rj-y");
        let plan = plan_backend("rj-", false, &servers, &want, |_| false);
        assert_eq!(
            plan.changes,
            vec![Change::Drain {
                server: "rj-y".into()
            }]
        );
        servers[0].admin_state = admin::FDRAIN;
        servers[0].sessions = 1;
        let plan = plan_backend("rj-", false, &servers, &want, |_| false);
        assert!(plan.changes.is_empty(), "waits for the sessions to end");
        servers[0].sessions = 0;
        let plan = plan_backend("rj-", false, &servers, &want, |_| false);
        assert_eq!(
            plan.changes,
            vec![Change::Delete {
                server: "rj-y".into(),
                already_maint: false,
                readd: Some(moved.addr)
            }]
        );
    }

    #[test]
    fn one_backend_per_service() {
        let cfg = HaproxyConfig::new(
            HaproxySocket::Tcp("127.0.0.1:1".parse().unwrap()),
            BTreeMap::from([("a".into(), "be".into()), ("b".into(), "be".into())]),
        );
        assert!(matches!(
            cfg.validate(),
            Err(HaproxyError::InvalidArgument {
                reason: "mapped to two services",
                ..
            })
        ));
    }

    #[test]
    fn strict_names_addresses_and_commands() {
        for ok in ["web", "rj-web-s1-1", "be_web.v2", "9a"] {
            assert!(check_name("n", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a;b",
            "a b",
            "a\nb",
            "-x",
            "a/b",
            "a\\b",
            "é",
            &"x".repeat(101),
        ] {
            assert!(check_name("n", bad).is_err(), "{bad:?}");
        }
        assert!(check_addr(&"127.0.0.1:80".parse().unwrap()).is_ok());
        assert!(check_addr(&"[::1]:80".parse().unwrap()).is_ok());
        assert!(check_addr(&"[fe80::1%2]:80".parse().unwrap()).is_err());
        assert!(check_addr(&"127.0.0.1:0".parse().unwrap()).is_err());
        assert!(check_command("show info").is_ok());
        for bad in [
            "show info; shutdown sessions",
            "show info\n",
            "",
            "a\\;b",
            "x # y",
        ] {
            assert!(check_command(bad).is_err(), "{bad:?}");
        }
    }
}
