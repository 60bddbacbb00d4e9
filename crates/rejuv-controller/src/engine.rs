//! The single owner of the cluster state.
//!
//! Everything that happens (an agent's sample, a command's result, the traffic adapter's sync,
//! an operator's request, the clock) arrives on one channel as a [`Msg`]. The engine applies it
//! to the core state machine, commits the new state with its outbox and events to the store,
//! and only then carries out the commands. A commit that fails leaves the in-memory state as it
//! was and acts on nothing: the controller fails closed.

use crate::agent_client::AgentClient;
use crate::alerts::{Alert, AlertSink};
use crate::store::Store;
use rejuv_core::api::{AgentState, RouteTable};
use rejuv_core::cluster::{
    Cluster, Command, CommandKind, CommandResult, Event, LogEvent, Observation, OperatorCommand,
    Refusal,
};
use rejuv_core::config::Config;
use rejuv_core::detector::ServerDetector;
use rejuv_core::time::Now;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Test-only failpoint: a workflow phase name (e.g. `draining`). The controller SIGKILLs itself
/// right after committing the first step in which a workflow is in that phase, before carrying
/// out any of that step's commands: the crash-resume tests use it to die at a named step
/// instead of racing logs.
pub const CRASH_AT_ENV: &str = "REJUV_FAILPOINT_CRASH_AT";

/// Load readings kept per server for the gate: an hour at one sample a second.
const LOAD_HISTORY_KEPT: usize = 3600;

pub enum Msg {
    Event(Event),
    /// An agent's answer to a poll sent at `sent_at_ms` (wall clock): the observation is as
    /// of that moment, so a reply that raced a command is not mistaken for newer news.
    Sample {
        server: String,
        sent_at_ms: u64,
        result: Result<AgentState, String>,
    },
    Operator {
        by: String,
        command: OperatorCommand,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// The samples an agent kept (oldest first), fetched once when this controller starts
    /// leading: replayed into the server's detector so that a restart or a handover does not
    /// blind it for the trend rule's `min_window`.
    History {
        server: String,
        samples: Vec<rejuv_core::types::Sample>,
    },
}

/// What the engine publishes after every step.
#[derive(Clone)]
pub struct Published {
    pub cluster: Arc<Cluster>,
    pub epoch: u64,
    /// Latest sample per server (memory only).
    pub samples: Arc<BTreeMap<String, AgentState>>,
    /// Whether the store takes this controller's commits.
    pub store: StoreHealth,
}

/// How the store has been taking commits: while it refuses them the controller acts on
/// nothing (fail closed), and says so here (status, metrics).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreHealth {
    /// Commits refused or failed since this controller started.
    pub commit_failures_total: u64,
    /// Wall-clock time (ms) of the first failure of the current run of failures; `None` while
    /// commits succeed.
    pub failing_since_ms: Option<u64>,
    /// The last failure, as the store said it.
    pub last_error: Option<String>,
}

/// Wall-clock time as the controller uses it: read once, then carried forward by the monotonic
/// clock. A wall clock stepped forward or back while the controller runs (NTP, an operator, a
/// VM resumed) neither ends a timeout early nor stretches it; a restart re-reads the clock.
pub fn wall_ms() -> u64 {
    static ANCHOR: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    let (at, wall) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (Instant::now(), wall)
    });
    wall + at.elapsed().as_millis() as u64
}

pub struct Engine {
    cfg: Arc<Config>,
    cluster: Cluster,
    store: Store,
    epoch: u64,
    detectors: BTreeMap<String, ServerDetector>,
    /// Shared with the published snapshot; copied only when a sample arrives.
    samples: Arc<BTreeMap<String, AgentState>>,
    /// Time (agent clock) of the newest sample each detector has seen: a sample polled twice
    /// is judged once.
    observed_at: BTreeMap<String, u64>,
    /// Recent load1 readings per server (memory only), for the gate's quiet-moment rule.
    load_history: BTreeMap<String, std::collections::VecDeque<f64>>,
    client: AgentClient,
    agents: BTreeMap<String, SocketAddr>,
    tx: mpsc::Sender<Msg>,
    running: BTreeSet<u64>,
    /// Commands for one instance run one after another (a stop never overtakes its start):
    /// the instance each running command holds, and what waits behind it.
    holds: BTreeMap<u64, String>,
    queued: BTreeMap<String, std::collections::VecDeque<Command>>,
    started: Instant,
    dry_run: bool,
    alerts: AlertSink,
    /// Test-only failpoint: the phase at whose first commit the process SIGKILLs itself.
    crash_at: Option<String>,
    pub published: watch::Sender<Published>,
    pub routes: watch::Sender<RouteTable>,
    pub events: broadcast::Sender<LogEvent>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        mut store: Store,
        client: AgentClient,
        tx: mpsc::Sender<Msg>,
        paused: bool,
        dry_run: bool,
        alerts: AlertSink,
    ) -> anyhow::Result<(Self, Vec<Command>)> {
        let epoch = store.next_epoch()?;
        let started = Instant::now();
        let wall_at_start = wall_ms();
        let now = Now::new(0, wall_at_start);
        let (mut cluster, resend) = match store.load()? {
            Some(c) => {
                let pending: Vec<Command> = c.pending.values().cloned().collect();
                info!(
                    epoch,
                    pending = pending.len(),
                    workflows = c.workflows.len(),
                    "resuming stored cluster state"
                );
                (c, pending)
            }
            None => {
                let (c, out) = Cluster::new(&cfg, now);
                store.commit(&c, &out.events, &[])?;
                info!(epoch, "created a new cluster state");
                (c, out.commands)
            }
        };
        if cluster.advisory != dry_run {
            // Advisory mode is a property of this run, recorded so the state says it.
            cluster.advisory = dry_run;
            store.commit(&cluster, &[], &[])?;
        }
        // A dry run carries out nothing, not even what an earlier run left in the outbox.
        let resend = if dry_run { Vec::new() } else { resend };
        if paused && !cluster.paused {
            let out = cluster.apply(
                &cfg,
                Event::Operator {
                    by: "controller --paused".into(),
                    command: OperatorCommand::Pause,
                },
                now,
            );
            store.commit(&cluster, &out.events, &[])?;
        }
        let detectors = cfg
            .servers
            .iter()
            .map(|s| {
                let budget = s.memory_budget_bytes.unwrap_or(u64::MAX);
                (
                    s.id.clone(),
                    ServerDetector::with_trend(&cfg.policy, budget, cfg.policy.trend.clone()),
                )
            })
            .collect();
        let agents = cfg
            .servers
            .iter()
            .map(|s| (s.id.clone(), s.agent))
            .collect();
        let published = watch::Sender::new(Published {
            cluster: Arc::new(cluster.clone()),
            epoch,
            samples: Arc::new(BTreeMap::new()),
            store: StoreHealth::default(),
        });
        let routes = watch::Sender::new(cluster.routes.clone());
        let (events, _) = broadcast::channel(1024);
        Ok((
            Self {
                cfg,
                cluster,
                store,
                epoch,
                detectors,
                samples: Arc::new(BTreeMap::new()),
                observed_at: BTreeMap::new(),
                load_history: BTreeMap::new(),
                client,
                agents,
                tx,
                running: BTreeSet::new(),
                holds: BTreeMap::new(),
                queued: BTreeMap::new(),
                started,
                dry_run,
                alerts,
                crash_at: std::env::var(CRASH_AT_ENV).ok().filter(|v| !v.is_empty()),
                published,
                routes,
                events,
            },
            resend,
        ))
    }

    fn now(&self) -> Now {
        let mono = self.started.elapsed().as_millis() as u64;
        Now::new(mono, wall_ms())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        resend: Vec<Command>,
        shutdown: CancellationToken,
    ) {
        self.dispatch(resend);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.handle(Event::Tick),
                msg = rx.recv() => match msg {
                    None => break,
                    Some(Msg::Event(e)) => self.handle(e),
                    Some(Msg::Sample { server, sent_at_ms, result }) => {
                        self.on_sample(server, sent_at_ms, result)
                    }
                    Some(Msg::History { server, samples }) => self.on_history(server, samples),
                    Some(Msg::Operator { by, command, reply }) => {
                        let r = self.cluster.check_operator(&command);
                        if r.is_ok() {
                            self.handle(Event::Operator { by, command });
                        }
                        let _ = reply.send(r);
                    }
                },
            }
        }
        info!("engine stopped");
    }

    fn on_sample(&mut self, server: String, sent_at_ms: u64, result: Result<AgentState, String>) {
        let now = self.now();
        match result {
            Ok(state) => {
                let mut obs = Observation::from_agent(&state, sent_at_ms);
                obs.load_quantile = self.load_quantile(&server, state.sample.load1);
                self.handle(Event::Observed {
                    server: server.clone(),
                    observation: obs,
                });
                if self.fresh_sample(&server, state.sample.taken_at_ms) {
                    if let Some(d) = self.detectors.get_mut(&server) {
                        let j = d.observe(&state.sample, state.sample.taken_at_ms.max(1));
                        self.handle(Event::Judged {
                            server: server.clone(),
                            judgement: j,
                        });
                    }
                }
                Arc::make_mut(&mut self.samples).insert(server, state);
            }
            Err(e) => {
                let obs = Observation {
                    reachable: false,
                    at_ms: now.wall_ms,
                    load1: 0.0,
                    running_since_ms: 0,
                    running_time_s: 0.0,
                    crashes_total: 0,
                    load_quantile: None,
                    instances: BTreeMap::new(),
                };
                tracing::debug!(server, error = %e, "agent poll failed");
                self.handle(Event::Observed {
                    server,
                    observation: obs,
                });
            }
        }
    }

    /// Whether a sample taken at `taken_at_ms` is news for the server's detector (and records
    /// it): one already seen (polled twice, or replayed from the history) is not. A time more
    /// than a minute before the newest seen is the agent's clock stepped back: the detector
    /// starts afresh rather than going blind until the clock catches up.
    fn fresh_sample(&mut self, server: &str, taken_at_ms: u64) -> bool {
        let last = self.observed_at.get(server).copied().unwrap_or(0);
        if taken_at_ms <= last {
            if last - taken_at_ms < 60_000 {
                return false;
            }
            warn!(
                server,
                "the agent's clock went back; its detector starts afresh"
            );
            if let Some(d) = self.detectors.get_mut(server) {
                d.reset();
            }
        }
        self.observed_at.insert(server.to_string(), taken_at_ms);
        true
    }

    /// Replays an agent's kept samples into the server's detector (see [`Msg::History`]).
    /// Samples from before the server's last rejuvenation are left out: the detector was
    /// reset then. A server in a workflow is left alone (its detector restarts at rejoin).
    fn on_history(&mut self, server: String, mut samples: Vec<rejuv_core::types::Sample>) {
        let Some(s) = self.cluster.servers.get(&server) else {
            return;
        };
        if self.cluster.workflows.values().any(|w| w.server == server) {
            return;
        }
        let cutoff = s.last_rejuvenated_at_ms.unwrap_or(0);
        samples.retain(|x| x.taken_at_ms > cutoff);
        samples.sort_by_key(|x| x.taken_at_ms);
        samples.dedup_by_key(|x| x.taken_at_ms);
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return;
        };
        let Some(d) = self.detectors.get_mut(&server) else {
            return;
        };
        let span_s = last.taken_at_ms.saturating_sub(first.taken_at_ms) / 1000;
        let newest = last.taken_at_ms;
        d.reset();
        let mut judgement = None;
        for x in &samples {
            judgement = Some(d.observe(x, x.taken_at_ms.max(1)));
        }
        let loads = self.load_history.entry(server.clone()).or_default();
        for x in &samples {
            if loads.len() == LOAD_HISTORY_KEPT {
                loads.pop_front();
            }
            loads.push_back(x.load1);
        }
        self.observed_at.insert(server.clone(), newest);
        info!(
            server,
            samples = samples.len(),
            span_s,
            "detector warmed from the agent's kept samples"
        );
        if let Some(j) = judgement {
            self.handle(Event::Judged {
                server,
                judgement: j,
            });
        }
    }

    /// Records `load1` in the server's in-memory load history and, while one of its workflows
    /// waits at the gate, says where `load1` stands in that history (fraction of readings below).
    fn load_quantile(&mut self, server: &str, load1: f64) -> Option<f64> {
        let history = self.load_history.entry(server.to_string()).or_default();
        if history.len() == LOAD_HISTORY_KEPT {
            history.pop_front();
        }
        history.push_back(load1);
        let gating = self
            .cluster
            .workflows
            .values()
            .any(|w| w.server == server && w.phase == rejuv_core::cluster::Phase::Gating);
        // A short history says nothing about what is usual for this server.
        if !gating || history.len() < LOAD_HISTORY_KEPT / 10 {
            return None;
        }
        let below = history.iter().filter(|l| **l < load1).count();
        Some(below as f64 / history.len() as f64)
    }

    fn handle(&mut self, event: Event) {
        if let Event::CommandDone { id, .. } = &event {
            self.running.remove(id);
            if let Some(key) = self.holds.remove(id) {
                let next = self.queued.get_mut(&key).and_then(|q| q.pop_front());
                if self.queued.get(&key).is_some_and(|q| q.is_empty()) {
                    self.queued.remove(&key);
                }
                if let Some(cmd) = next {
                    self.holds.insert(cmd.id, key);
                    self.spawn_command(cmd);
                }
            }
        }
        let now = self.now();
        let history_before = self.cluster.completed_total
            + self.cluster.rolled_back_total
            + self.cluster.failed_total;
        let out = self.cluster.apply(&self.cfg, event, now);
        let finished_n = (self.cluster.completed_total
            + self.cluster.rolled_back_total
            + self.cluster.failed_total
            - history_before) as usize;
        let finished: Vec<_> = self
            .cluster
            .history
            .iter()
            .rev()
            .take(finished_n)
            .cloned()
            .collect();
        if let Err(e) = self.store.commit(&self.cluster, &out.events, &finished) {
            // Fail closed: nothing that was not recorded is acted on.
            let error = rejuv_core::error_chain(&e);
            let first = self.published.borrow().store.failing_since_ms.is_none();
            if first {
                warn!(error = %error, "store commit failed; the step is dropped and nothing is acted on until the store takes commits again");
            } else {
                tracing::debug!(error = %error, "store commit failed again");
            }
            // The published snapshot is the state of the last successful commit.
            self.cluster = (*self.published.borrow().cluster).clone();
            self.published.send_modify(|p| {
                p.store.commit_failures_total += 1;
                p.store.failing_since_ms.get_or_insert(now.wall_ms);
                p.store.last_error = Some(error);
            });
            return;
        }
        let failing_since = self.published.borrow().store.failing_since_ms;
        if let Some(since) = failing_since {
            // Results that came back while commits failed were dropped with their steps: their
            // commands are still in the committed outbox, so carry them out again (each is
            // idempotent by its id, as after a crash), in the order they were issued.
            let again: Vec<Command> = self
                .cluster
                .pending
                .values()
                .filter(|c| {
                    !self.running.contains(&c.id) && !out.commands.iter().any(|n| n.id == c.id)
                })
                .cloned()
                .collect();
            info!(
                failing_for_ms = now.wall_ms.saturating_sub(since),
                resent = again.len(),
                "the store takes commits again"
            );
            self.dispatch(again);
        }
        if let Some(phase) = &self.crash_at {
            if self
                .cluster
                .workflows
                .values()
                .any(|w| &w.phase.to_string() == phase)
            {
                warn!(
                    phase,
                    "failpoint {CRASH_AT_ENV}: killing the controller right after the commit"
                );
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        }
        for e in &out.events {
            info!(kind = %e.kind, server = e.server.as_deref().unwrap_or("-"), workflow = ?e.workflow, "{}", e.message);
            let _ = self.events.send(e.clone());
        }
        self.dispatch(out.commands);
        if self.routes.borrow().version != self.cluster.routes.version {
            self.routes.send_replace(self.cluster.routes.clone());
        }
        let store = StoreHealth {
            failing_since_ms: None,
            ..self.published.borrow().store.clone()
        };
        self.published.send_replace(Published {
            cluster: Arc::new(self.cluster.clone()),
            epoch: self.epoch,
            samples: self.samples.clone(),
            store,
        });
    }

    fn dispatch(&mut self, commands: Vec<Command>) {
        for cmd in commands {
            if !self.running.insert(cmd.id) {
                continue;
            }
            match &cmd.kind {
                CommandKind::ResetDetector { server } => {
                    if let Some(d) = self.detectors.get_mut(server) {
                        d.reset();
                    }
                    self.finish_local(cmd.id, CommandResult::Done);
                }
                // Advisory mode: the state machine issues nothing; anything that still comes
                // (an old outbox) stays recorded and is not carried out.
                _ if self.dry_run => {
                    info!(command = ?cmd.kind, "dry run: not carried out");
                }
                CommandKind::Alert {
                    name,
                    server,
                    summary,
                } => {
                    warn!(
                        alert = name.as_str(),
                        server = server.as_deref().unwrap_or("-"),
                        "ALERT: {summary}"
                    );
                    if self.alerts.enabled() {
                        self.spawn_command(cmd);
                    } else {
                        self.finish_local(cmd.id, CommandResult::Done);
                    }
                }
                CommandKind::StartInstance { instance, .. }
                | CommandKind::StopInstance { instance, .. } => {
                    let key = instance.clone();
                    if self.holds.values().any(|k| k == &key) {
                        self.queued.entry(key).or_default().push_back(cmd);
                    } else {
                        self.holds.insert(cmd.id, key);
                        self.spawn_command(cmd);
                    }
                }
                _ => self.spawn_command(cmd),
            }
        }
    }

    fn spawn_command(&self, cmd: Command) {
        let exec = Executor {
            client: self.client.clone(),
            agents: self.agents.clone(),
            epoch: self.epoch,
            rejuvenate_deadline: self.cfg.rejuvenation.verify_timeout,
            alerts: self.alerts.clone(),
            cfg: self.cfg.clone(),
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let id = cmd.id;
            let result = exec.carry_out(cmd).await;
            let _ = tx.send(Msg::Event(Event::CommandDone { id, result })).await;
        });
    }

    fn finish_local(&self, id: u64, result: CommandResult) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Msg::Event(Event::CommandDone { id, result })).await;
        });
    }
}

/// Carries out one command against the agents, retrying what a retry can fix.
struct Executor {
    client: AgentClient,
    agents: BTreeMap<String, SocketAddr>,
    epoch: u64,
    rejuvenate_deadline: Duration,
    alerts: AlertSink,
    cfg: Arc<Config>,
}

impl Executor {
    fn agent(&self, server: &str) -> Result<SocketAddr, CommandResult> {
        self.agents
            .get(server)
            .copied()
            .ok_or_else(|| CommandResult::Failed {
                error: format!("no agent address for server {server}"),
            })
    }

    async fn carry_out(&self, cmd: Command) -> CommandResult {
        match &cmd.kind {
            CommandKind::RunHook {
                workflow,
                hook,
                step,
                when,
                server,
                target,
                ..
            } => {
                let Some(h) = self.cfg.hooks.iter().find(|h| &h.name == hook) else {
                    return CommandResult::Failed {
                        error: format!("no hook named {hook} in the config"),
                    };
                };
                let call = crate::hooks::HookCall {
                    cluster: &self.cfg.cluster.name,
                    workflow: *workflow,
                    step,
                    when: *when,
                    server,
                    target,
                };
                return crate::hooks::run(h, &call).await;
            }
            CommandKind::Alert {
                name,
                server,
                summary,
            } => return self.send_alert(name, server.as_deref(), summary).await,
            _ => {}
        }
        let deadline = match &cmd.kind {
            CommandKind::Rejuvenate { .. } => self.rejuvenate_deadline,
            CommandKind::StopInstance { .. } => Duration::from_secs(90),
            _ => Duration::from_secs(30),
        };
        let until = Instant::now() + deadline;
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.attempt(&cmd.kind).await {
                Ok(r) => return r,
                Err(e) if e.is_permanent() => {
                    return CommandResult::Failed {
                        error: e.to_string(),
                    }
                }
                Err(e) => {
                    if Instant::now() + backoff > until {
                        return CommandResult::Failed {
                            error: format!("gave up after {deadline:?}: {e}"),
                        };
                    }
                    tracing::debug!(command = cmd.id, error = %e, "command attempt failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(3));
                }
            }
        }
    }

    /// Posts an alert, retrying for up to a minute what a retry can fix.
    async fn send_alert(&self, name: &str, server: Option<&str>, summary: &str) -> CommandResult {
        let alert = Alert {
            name,
            server,
            summary,
            at_ms: crate::alerts::now_ms(),
        };
        let until = Instant::now() + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.alerts.send(&alert).await {
                Ok(()) => return CommandResult::Done,
                Err(e) if e.is_permanent() || Instant::now() + backoff > until => {
                    warn!(error = %e, alert = name, "alert not delivered");
                    return CommandResult::Failed {
                        error: e.to_string(),
                    };
                }
                Err(e) => {
                    tracing::debug!(error = %e, "alert delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn attempt(
        &self,
        kind: &CommandKind,
    ) -> Result<CommandResult, crate::agent_client::ClientError> {
        let addr_of = |s: &str| self.agent(s);
        match kind {
            CommandKind::StartInstance {
                server,
                instance,
                service,
            } => {
                let addr = match addr_of(server) {
                    Ok(a) => a,
                    Err(r) => return Ok(r),
                };
                let st = self
                    .client
                    .start(addr, self.epoch, instance, service)
                    .await?;
                Ok(CommandResult::Started { addr: st.addr })
            }
            CommandKind::StopInstance { server, instance } => {
                let addr = match addr_of(server) {
                    Ok(a) => a,
                    Err(r) => return Ok(r),
                };
                self.client.stop(addr, self.epoch, instance).await?;
                Ok(CommandResult::Stopped)
            }
            CommandKind::TransferState {
                from_server,
                from,
                to_server,
                to,
            } => {
                let a = match addr_of(from_server) {
                    Ok(a) => a,
                    Err(r) => return Ok(r),
                };
                let b = match addr_of(to_server) {
                    Ok(a) => a,
                    Err(r) => return Ok(r),
                };
                let body = self.client.export_state(a, from).await?;
                self.client.import_state(b, self.epoch, to, body).await?;
                Ok(CommandResult::Transferred)
            }
            CommandKind::Rejuvenate {
                server,
                run_id,
                actions,
            } => {
                let addr = match addr_of(server) {
                    Ok(a) => a,
                    Err(r) => return Ok(r),
                };
                let report = self
                    .client
                    .rejuvenate(addr, self.epoch, run_id, actions)
                    .await?;
                Ok(CommandResult::Rejuvenated { report })
            }
            CommandKind::ResetDetector { .. }
            | CommandKind::Alert { .. }
            | CommandKind::RunHook { .. } => Ok(CommandResult::Done),
        }
    }
}

/// Polls one agent forever, sending each answer (or failure) to the engine.
pub async fn poll_agent(
    server: String,
    addr: SocketAddr,
    client: AgentClient,
    every: Duration,
    timeout: Duration,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    // First the samples the agent kept, for the detector (best effort: an agent that is down
    // now, or too old to keep samples, is judged from live samples only).
    let history = tokio::select! {
        _ = shutdown.cancelled() => return,
        h = client.samples(addr, 0, timeout) => h,
    };
    match history {
        Ok(samples) if !samples.is_empty() => {
            if tx
                .send(Msg::History {
                    server: server.clone(),
                    samples,
                })
                .await
                .is_err()
            {
                return;
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(server, error = %e, "no sample history from the agent"),
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sent_at_ms = wall_ms();
        let result = client.state(addr, timeout).await.map_err(|e| e.to_string());
        if tx
            .send(Msg::Sample {
                server: server.clone(),
                sent_at_ms,
                result,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}
