//! The single owner of the cluster state, as a tokio task around the shared shell.
//!
//! Everything that happens (an agent's sample, an attempt's end, the traffic adapter's sync,
//! an operator's request, the clock) arrives on one channel as a [`Msg`] and is handed to
//! [`rejuv_core::shell::Shell`], which applies it to the core, commits through the store and
//! only then carries out the commands. This file is the shell's real world ([`Effects`]): the
//! store, HTTP calls to agents, hooks, alerts, timers, and what the API and metrics read.

use crate::agent_client::AgentClient;
use crate::alerts::{Alert, AlertSink};
use crate::history::SharedHistory;
use crate::store::Store;
use futures::FutureExt;
use rejuv_core::api::{AgentState, RouteTable};
use rejuv_core::cluster::{
    Cluster, Command, CommandKind, CommandResult, Event, LogEvent, OperatorCommand, Refusal,
    Workflow,
};
use rejuv_core::config::{check_join, Config, JoinRefused, JoinRequest, MAX_PENDING};
use rejuv_core::shell::{Attempt, Effects, Note, Shell, Step};
use rejuv_core::time::Now;
use rejuv_core::wire::{JoinAnswer, JoinState, PendingJoin};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use rejuv_core::shell::StoreHealth;

/// Test-only failpoint: a workflow phase name (e.g. `draining`). The controller SIGKILLs itself
/// right after committing the first step in which a workflow is in that phase, before carrying
/// out any of that step's commands: the crash-resume tests use it to die at a named step
/// instead of racing logs.
pub const CRASH_AT_ENV: &str = "REJUV_FAILPOINT_CRASH_AT";

pub enum Msg {
    /// From the traffic adapter: a route table applied ([`Event::TrafficSynced`]).
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
    /// An attempt at a command ended.
    Attempted {
        id: u64,
        attempt: u32,
        outcome: Attempt,
    },
    /// A retry's wait is over.
    Wake { id: u64, attempt: u32 },
    /// From the traffic adapter: the load balancer holds a table that is not ours
    /// (`Some(what it holds)`), or holds ours again (`None`).
    TrafficMismatch(Option<String>),
    /// A request that changes something reached the API (written to the event log as is).
    Audit(LogEvent),
    /// `[alert_block]`'s query answered something (`Some`), or nothing again (`None`).
    AlertsBlocking(Option<String>),
    /// A reloaded config (`rejuv reload`, `SIGHUP`): taken with the changes it made, or
    /// refused whole with the reason.
    Reload {
        by: String,
        config: Box<Config>,
        reply: oneshot::Sender<Result<Vec<String>, Refusal>>,
    },
    /// A shard's slots of the fleet's budget: planned workflows are held to that many at once
    /// (never below those running); the reply is the bound in force.
    BudgetSlots {
        slots: u32,
        reply: oneshot::Sender<u32>,
    },
    /// From a Prometheus `[source]` beside the agents: its latest judgement of a server.
    SourceJudged {
        server: String,
        judgement: rejuv_core::detect::detector::Judgement,
    },
    /// An agent asks to join (`POST /v1/join`, its join token checked), from `from`.
    Join {
        request: JoinRequest,
        from: String,
        reply: oneshot::Sender<Result<JoinAnswer, JoinError>>,
    },
    /// The join requests waiting for an operator.
    PendingJoins {
        reply: oneshot::Sender<Vec<PendingJoin>>,
    },
    /// An operator approves the waiting join request of `server`.
    Approve {
        server: String,
        by: String,
        reply: oneshot::Sender<Result<Vec<String>, ServerError>>,
    },
    /// An operator removes a joined server (evacuated, then forgotten) or drops its waiting
    /// join request.
    Remove {
        server: String,
        by: String,
        reply: oneshot::Sender<Result<Vec<String>, ServerError>>,
    },
}

/// Why a join request is not taken.
#[derive(Debug)]
pub enum JoinError {
    /// Its facts are wrong or clash with the cluster's.
    Facts(JoinRefused),
    /// [`MAX_PENDING`] requests wait already.
    Full,
    /// The running cluster cannot take the server (auto-approved).
    Refused(Refusal),
}

/// Why approving or removing a server did nothing.
#[derive(Debug)]
pub enum ServerError {
    /// No such request or joined server.
    NotFound(String),
    /// It does not fit the current state, with the reason.
    Refused(String),
}

/// Whether the load balancer holds this controller's route table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficHealth {
    /// What it holds instead, while it does.
    pub mismatch: Option<String>,
    pub mismatches_total: u64,
}

/// What the engine publishes after every step.
#[derive(Clone)]
pub struct Published {
    pub cluster: Arc<Cluster>,
    /// The config in force (it changes on a reload).
    pub config: Arc<Config>,
    pub epoch: u64,
    /// Latest sample per server (memory only). Each behind its own `Arc`: a publication's copy
    /// of the map copies pointers, not every server's state.
    pub samples: Arc<BTreeMap<String, Arc<AgentState>>>,
    /// Whether the store takes this controller's commits.
    pub store: StoreHealth,
    pub traffic: TrafficHealth,
    /// The engine's own counts (commits, judgement latency).
    pub stats: Arc<crate::stats::EngineStats>,
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
    shell: Shell,
    world: World,
    pub published: watch::Sender<Published>,
    pub routes: watch::Sender<RouteTable>,
    pub events: broadcast::Sender<LogEvent>,
    traffic: TrafficHealth,
    /// The stored state predates this start's config: reload it first thing.
    reload_at_start: bool,
    /// One poller per server the cluster holds and the config gives an agent address for.
    pollers: BTreeMap<String, (SocketAddr, CancellationToken)>,
    /// Parent of the pollers' tokens (the engine's shutdown), once it runs.
    local: Option<CancellationToken>,
    /// When the state was last published.
    last_publish: Instant,
    /// How long the last publication took (see [`PUBLISH_SHARE`]).
    publish_cost: Duration,
    /// Join requests waiting for an operator, by server id. Kept in memory only: a joining
    /// agent asks again until it is in, so a restarted controller hears them again.
    joins: BTreeMap<String, PendingJoin>,
}

/// Most samples taken in one step.
const MAX_SAMPLE_BATCH: usize = 512;

/// How often new readings alone are published (`/v1/status`, `/metrics`, the dashboard), at
/// most...
const PUBLISH_READINGS_EVERY: Duration = Duration::from_millis(250);
/// ...and no sooner than this many times the last publication's own duration after it: a
/// publication copies the cluster (and, on the next sample, the latest samples), which grows
/// with the fleet, so a large fleet's readings are published less often instead of the copies
/// taking most of the controller's work.
const PUBLISH_SHARE: u32 = 20;
/// ...and no later than this (one slow publication does not hold readings back for long).
const MAX_READINGS_WAIT: Duration = Duration::from_secs(2);

/// The shell's world in the controller.
struct World {
    cfg: Arc<Config>,
    store: Store,
    epoch: u64,
    started: Instant,
    client: AgentClient,
    agents: BTreeMap<String, SocketAddr>,
    tx: mpsc::Sender<Msg>,
    alerts: AlertSink,
    /// Test-only failpoint: the phase at whose first commit the process SIGKILLs itself.
    crash_at: Option<String>,
    /// Latest sample per server; shared with the published snapshot.
    samples: Arc<BTreeMap<String, Arc<AgentState>>>,
    /// Recent readings per server, for the history route.
    history: SharedHistory,
    routes: watch::Sender<RouteTable>,
    events: broadcast::Sender<LogEvent>,
    stats: Arc<crate::stats::EngineStats>,
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
        recovery: Option<crate::recover::Recovery>,
    ) -> anyhow::Result<Self> {
        let floor = recovery.as_ref().map_or(0, |r| r.epoch_floor);
        let epoch = store.next_epoch_above(floor)?;
        let started = Instant::now();
        let now = Now::new(0, wall_ms());
        let mut cluster = match store.load()? {
            Some(c) => {
                info!(
                    epoch,
                    pending = c.pending.len(),
                    workflows = c.workflows.len(),
                    "resuming stored cluster state"
                );
                c
            }
            None => {
                let (c, out) = match &recovery {
                    Some(r) => Cluster::adopt(&cfg, &r.found, now),
                    None => Cluster::new(&cfg, now),
                };
                store.commit(&c, &out.events, &[])?;
                info!(
                    epoch,
                    adopted = recovery.is_some(),
                    "created a new cluster state"
                );
                c
            }
        };
        if cluster.advisory != dry_run {
            // Advisory mode is a property of this run, recorded so the state says it.
            cluster.advisory = dry_run;
            store.commit(&cluster, &[], &[])?;
        }
        // The servers that joined are part of the config of every start; those being removed
        // keep their agent's address until they are forgotten.
        let cfg = Arc::new(
            cfg.with_joined(
                cluster
                    .joined
                    .values()
                    .filter(|s| !cluster.servers.get(&s.id).is_some_and(|x| x.removing)),
            ),
        );
        client.name_agents(&cfg);
        let leaving: Vec<(String, SocketAddr)> = cluster
            .joined
            .values()
            .filter(|s| cfg.server(&s.id).is_none())
            .map(|s| (s.id.clone(), s.agent))
            .collect();
        for (id, addr) in &leaving {
            client.name_agent(*addr, id);
        }
        // A stored state meets the config of this start: what changed is carried out once
        // the engine runs; what cannot be taken stops the start here, with the reason.
        let at_start = cluster
            .check_reload(&cfg)
            .map_err(|r| anyhow::anyhow!("{r}"))?;
        let stats = Arc::new(crate::stats::EngineStats::default());
        let published = watch::Sender::new(Published {
            config: cfg.clone(),
            cluster: Arc::new(cluster.clone()),
            epoch,
            samples: Arc::new(BTreeMap::new()),
            store: StoreHealth::default(),
            traffic: TrafficHealth::default(),
            stats: stats.clone(),
        });
        let routes = watch::Sender::new(cluster.routes.clone());
        let (events, _) = broadcast::channel(1024);
        let agents = cfg
            .servers
            .iter()
            .map(|s| (s.id.clone(), s.agent))
            .chain(leaving)
            .collect();
        let world = World {
            cfg: cfg.clone(),
            store,
            epoch,
            started,
            client,
            agents,
            tx,
            alerts,
            crash_at: std::env::var(CRASH_AT_ENV).ok().filter(|v| !v.is_empty()),
            samples: Arc::new(BTreeMap::new()),
            history: SharedHistory::default(),
            routes: routes.clone(),
            events: events.clone(),
            stats,
        };
        let mut engine = Self {
            shell: Shell::new(cfg, cluster, dry_run),
            world,
            published,
            routes,
            events,
            traffic: TrafficHealth::default(),
            reload_at_start: !at_start.is_empty(),
            pollers: BTreeMap::new(),
            local: None,
            last_publish: Instant::now(),
            publish_cost: Duration::ZERO,
            joins: BTreeMap::new(),
        };
        if paused && !engine.shell.cluster().paused {
            let by = "controller --paused".to_string();
            let _ = engine
                .shell
                .operator(by, OperatorCommand::Pause, now, &mut engine.world);
            engine.after_step();
        }
        Ok(engine)
    }

    pub fn epoch(&self) -> u64 {
        self.world.epoch
    }

    /// The recent readings this engine records, for the API to read.
    pub fn history(&self) -> SharedHistory {
        self.world.history.clone()
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>, shutdown: CancellationToken) {
        self.local = Some(shutdown.clone());
        let now = self.world.now();
        self.shell.start(now, &mut self.world);
        if self.reload_at_start {
            let cfg = self.shell.config().clone();
            match self
                .shell
                .reload("controller start".into(), cfg, now, &mut self.world)
            {
                Ok(ch) => {
                    for line in ch.lines() {
                        info!("config: {line}");
                    }
                }
                Err(r) => warn!(refusal = %r, "the stored state does not take this config"),
            }
        }
        self.after_step();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let now = self.world.now();
                    self.shell.tick(now, &mut self.world);
                }
                msg = rx.recv() => match msg {
                    None => break,
                    Some(first @ Msg::Sample { .. }) => {
                        // Samples that queued meanwhile go in one step with this one (a
                        // large fleet's first polls, or any backlog, cost one commit and one
                        // copy per batch instead of one per sample).
                        let mut batch = vec![first];
                        let mut next = None;
                        while batch.len() < MAX_SAMPLE_BATCH {
                            match rx.try_recv() {
                                Ok(m @ Msg::Sample { .. }) => batch.push(m),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.on_samples(batch);
                        if let Some(m) = next {
                            self.after_step();
                            self.on_msg(m);
                        }
                    }
                    Some(m) => self.on_msg(m),
                },
            }
            self.after_step();
        }
        info!("engine stopped");
    }

    /// Agents' answers, in one step.
    fn on_samples(&mut self, batch: Vec<Msg>) {
        let now = self.world.now();
        let mut replies: Vec<(String, u64, Result<AgentState, ()>)> =
            Vec::with_capacity(batch.len());
        for m in batch {
            let Msg::Sample {
                server,
                sent_at_ms,
                result,
            } = m
            else {
                continue;
            };
            let result = result.map_err(|e| {
                tracing::debug!(server, error = %e, "agent poll failed");
            });
            replies.push((server, sent_at_ms, result));
        }
        let refs: Vec<(&str, u64, Result<&AgentState, ()>)> = replies
            .iter()
            .map(|(s, t, r)| (s.as_str(), *t, r.as_ref().map_err(|_| ())))
            .collect();
        self.shell.samples(&refs, now, &mut self.world);
        drop(refs);
        let done = wall_ms();
        for (server, _, result) in replies {
            if let Ok(state) = result {
                let lag_ms = done.saturating_sub(state.sample.taken_at_ms);
                self.world
                    .stats
                    .judge_latency
                    .observe(lag_ms as f64 / 1000.0);
                self.world
                    .record_history(&server, std::slice::from_ref(&state.sample));
                Arc::make_mut(&mut self.world.samples).insert(server, Arc::new(state));
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        let now = self.world.now();
        let (shell, world) = (&mut self.shell, &mut self.world);
        match msg {
            Msg::Event(Event::TrafficSynced { version, in_flight }) => {
                shell.traffic_synced(version, in_flight, now, world)
            }
            Msg::Event(other) => {
                warn!(event = ?other, "the engine takes no such event from outside")
            }
            sample @ Msg::Sample { .. } => self.on_samples(vec![sample]),
            Msg::History { server, samples } => {
                world.record_history(&server, &samples);
                shell.history(&server, samples, now, world)
            }
            Msg::Operator { by, command, reply } => {
                let _ = reply.send(shell.operator(by, command, now, world));
            }
            Msg::Attempted {
                id,
                attempt,
                outcome,
            } => shell.attempted(id, attempt, outcome, now, world),
            Msg::Wake { id, attempt } => shell.wake(id, attempt, world),
            Msg::TrafficMismatch(m) => self.traffic_mismatch(m, now),
            Msg::Audit(event) => self.log_event(event),
            Msg::AlertsBlocking(firing) => shell.alerts_blocking(firing, now, world),
            Msg::Reload { by, config, reply } => {
                let _ = reply.send(self.reload(by, *config, now));
            }
            Msg::SourceJudged { server, judgement } => {
                shell.source_judged(&server, judgement, now, world)
            }
            Msg::Join {
                request,
                from,
                reply,
            } => {
                let _ = reply.send(self.join(request, from, now));
            }
            Msg::PendingJoins { reply } => {
                let _ = reply.send(self.joins.values().cloned().collect());
            }
            Msg::Approve { server, by, reply } => {
                let _ = reply.send(self.approve(&server, by, now));
            }
            Msg::Remove { server, by, reply } => {
                let _ = reply.send(self.remove(&server, by, now));
            }
            Msg::BudgetSlots { slots, reply } => {
                let bound = shell.limit_concurrent(slots);
                let _ = reply.send(bound);
            }
        }
    }

    /// A join request: refused by its facts, taken at once with `join.auto_approve`, or kept
    /// for an operator (said once per request, not on every time the agent asks again).
    fn join(
        &mut self,
        request: JoinRequest,
        from: String,
        now: Now,
    ) -> Result<JoinAnswer, JoinError> {
        let cfg = self.shell.config().clone();
        let server = check_join(&cfg, &request).map_err(JoinError::Facts)?;
        let id = server.id.clone();
        if cfg.server(&id).is_some() {
            // The same facts as when it joined (check_join refuses others): an agent that
            // restarted, or asked again before it heard the answer.
            self.joins.remove(&id);
            return Ok(JoinAnswer {
                state: JoinState::Joined,
                message: format!("{id} is in the cluster"),
            });
        }
        if self.shell.cluster().servers.contains_key(&id) {
            return Err(JoinError::Facts(JoinRefused::Conflict(format!(
                "server '{id}' is being removed: ask again once it is forgotten"
            ))));
        }
        if cfg.join.as_ref().is_some_and(|j| j.auto_approve) {
            let what = describe(&request);
            let by = format!("join.auto_approve ({id} from {from})");
            let changes = self
                .add_joined(server, by, now)
                .map_err(JoinError::Refused)?;
            self.joins.remove(&id);
            self.join_event(
                &id,
                now,
                format!("{id} joined by join.auto_approve: {what}, asked from {from}"),
            );
            info!(server = %id, ?changes, "a server joined (auto_approve)");
            return Ok(JoinAnswer {
                state: JoinState::Joined,
                message: format!("{id} is in the cluster"),
            });
        }
        let waiting = PendingJoin {
            request,
            from,
            requested_at_ms: now.wall_ms,
            last_asked_at_ms: now.wall_ms,
        };
        match self.joins.get_mut(&id) {
            Some(p) if p.request == waiting.request => p.last_asked_at_ms = now.wall_ms,
            known => {
                if known.is_none() && self.joins.len() >= MAX_PENDING {
                    return Err(JoinError::Full);
                }
                let message = format!(
                    "{id} asks to join: {}, from {}; `rejuv server approve {id}` lets it in",
                    describe(&waiting.request),
                    waiting.from
                );
                self.joins.insert(id.clone(), waiting);
                info!(server = %id, "{message}");
                self.join_event(&id, now, message);
            }
        }
        Ok(JoinAnswer {
            state: JoinState::Pending,
            message: format!("{id} waits for an operator: `rejuv server approve {id}`"),
        })
    }

    /// An operator lets the waiting server in, if its facts still fit the cluster.
    fn approve(&mut self, id: &str, by: String, now: Now) -> Result<Vec<String>, ServerError> {
        let Some(waiting) = self.joins.get(id).cloned() else {
            return Err(ServerError::NotFound(format!(
                "no join request of '{id}' is waiting (`rejuv server pending` lists them)"
            )));
        };
        let server = check_join(self.shell.config(), &waiting.request)
            .map_err(|e| ServerError::Refused(format!("{id}: {e}")))?;
        let changes = self
            .add_joined(server, by.clone(), now)
            .map_err(|r| ServerError::Refused(r.to_string()))?;
        self.joins.remove(id);
        self.join_event(
            id,
            now,
            format!("{id} approved by {by}: {}", describe(&waiting.request)),
        );
        Ok(changes)
    }

    /// An operator drops a waiting request, or removes a joined server: it leaves the list
    /// and is evacuated like a server taken out of the config, then forgotten. A server a
    /// workflow runs on is not removed until the workflow ended.
    fn remove(&mut self, id: &str, by: String, now: Now) -> Result<Vec<String>, ServerError> {
        if self.joins.remove(id).is_some() {
            self.join_event(
                id,
                now,
                format!("the join request of {id} was dropped by {by}"),
            );
            return Ok(vec![format!("the join request of {id} is dropped")]);
        }
        let cfg = self.shell.config().clone();
        let cluster = self.shell.cluster().clone();
        match cfg.server(id) {
            None if cluster.servers.get(id).is_some_and(|s| s.removing) => {
                return Err(ServerError::Refused(format!("{id} is being removed already")))
            }
            None => {
                return Err(ServerError::NotFound(format!(
                    "no server or join request named '{id}'"
                )))
            }
            Some(s) if !s.joined => {
                return Err(ServerError::Refused(format!(
                    "{id} is listed in the config's [[servers]]: take it out of the file and `rejuv reload`"
                )))
            }
            Some(_) => {}
        }
        if let Some(w) = cluster
            .workflows
            .values()
            .find(|w| w.server == id || w.target == id)
        {
            return Err(ServerError::Refused(format!(
                "workflow {} runs on {id}: remove it once the workflow ended (or `rejuv cancel {}`)",
                w.id, w.id
            )));
        }
        let mut next = (*cfg).clone();
        next.servers.retain(|s| s.id != id);
        let changes = self
            .apply_config(by.clone(), next, now)
            .map_err(|r| ServerError::Refused(r.to_string()))?;
        self.join_event(
            id,
            now,
            format!("{id} removed by {by}: it leaves the list, its instances move off it, then it is forgotten"),
        );
        Ok(changes)
    }

    /// The config in force with `server` joined, taken as a reload is.
    fn add_joined(
        &mut self,
        server: rejuv_core::config::ServerConfig,
        by: String,
        now: Now,
    ) -> Result<Vec<String>, Refusal> {
        let mut next = (**self.shell.config()).clone();
        next.servers.push(server);
        self.apply_config(by, next, now)
    }

    fn join_event(&mut self, server: &str, now: Now, message: String) {
        self.log_event(LogEvent {
            at_ms: now.wall_ms,
            kind: rejuv_core::cluster::EventKind::Join,
            server: Some(server.to_string()),
            workflow: None,
            message,
            level: None,
        });
    }

    /// Takes a reloaded config file, with the joined servers added to it.
    fn reload(&mut self, by: String, config: Config, now: Now) -> Result<Vec<String>, Refusal> {
        let merged = config.with_joined(self.shell.config().joined_servers());
        self.apply_config(by, merged, now)
    }

    /// Takes a new config in force: the core's part (servers, capacities) in one step, then
    /// the agents' addresses and the pollers.
    fn apply_config(
        &mut self,
        by: String,
        config: Config,
        now: Now,
    ) -> Result<Vec<String>, Refusal> {
        let cfg = Arc::new(config);
        let mut lines = restart_only(self.shell.config(), &cfg);
        let changes = self
            .shell
            .reload(by.clone(), cfg.clone(), now, &mut self.world)?;
        info!(by, changes = ?changes.lines(), "config reloaded");
        // Addresses of servers still in the cluster but gone from the config are kept until
        // the cluster forgets them (they are being evacuated).
        for s in &cfg.servers {
            self.world.agents.insert(s.id.clone(), s.agent);
        }
        self.world.client.name_agents(&cfg);
        self.world.cfg = cfg;
        let mut said = changes.lines();
        said.append(&mut lines);
        Ok(said)
    }

    /// A poller for every server the cluster holds, at the address the config gives it; a
    /// server forgotten (or moved to another address) has its poller ended.
    fn sync_pollers(&mut self) {
        let Some(local) = self.local.clone() else {
            return;
        };
        let cluster = self.shell.cluster().clone();
        self.world
            .agents
            .retain(|id, _| cluster.servers.contains_key(id));
        self.pollers.retain(|id, (addr, token)| {
            let keep = self.world.agents.get(id) == Some(addr);
            if !keep {
                token.cancel();
            }
            keep
        });
        let cfg = self.world.cfg.clone();
        for (id, addr) in &self.world.agents {
            if self.pollers.contains_key(id) {
                continue;
            }
            let token = local.child_token();
            tokio::spawn(poll_agent(
                id.clone(),
                *addr,
                self.world.client.clone(),
                cfg.controller.poll_interval,
                cfg.controller.agent_timeout,
                self.world.tx.clone(),
                token.clone(),
            ));
            self.pollers.insert(id.clone(), (*addr, token));
        }
    }

    /// Logs the shell's notes and publishes the state, the samples and the store's health.
    fn after_step(&mut self) {
        for note in self.shell.take_notes() {
            match note {
                Note::Warmed {
                    server,
                    samples,
                    span_s,
                } => info!(
                    server,
                    samples, span_s, "detector warmed from the agent's kept samples"
                ),
                Note::ClockBack { server } => warn!(
                    server,
                    "the agent's clock went back; its detector starts afresh"
                ),
                Note::StoreBack {
                    failing_for_ms,
                    resent,
                } => info!(failing_for_ms, resent, "the store takes commits again"),
                Note::StoreFailed { error, first: true } => {
                    warn!(error = %error, "store commit failed; the step is dropped and nothing is acted on until the store takes commits again")
                }
                Note::StoreFailed {
                    error,
                    first: false,
                } => {
                    tracing::debug!(error = %error, "store commit failed again")
                }
            }
        }
        if self.shell.cluster().servers.len() != self.pollers.len()
            || !Arc::ptr_eq(&self.published.borrow().config, self.shell.config())
        {
            self.sync_pollers();
        }
        // A change of state is published at once; new readings alone (routine samples) at
        // most every `PUBLISH_READINGS_EVERY`: each publication of them costs a copy of the
        // cluster and of the samples on the next step, which on a large fleet polled often
        // would be most of the controller's work.
        let p = self.published.borrow();
        let changed = !Arc::ptr_eq(&p.cluster, self.shell.cluster())
            || !Arc::ptr_eq(&p.config, self.shell.config())
            || &p.store != self.shell.store_health()
            || p.traffic != self.traffic;
        let readings = self.shell.readings_stale() || !Arc::ptr_eq(&p.samples, &self.world.samples);
        drop(p);
        let due = readings
            && self.last_publish.elapsed()
                >= (self.publish_cost * PUBLISH_SHARE)
                    .clamp(PUBLISH_READINGS_EVERY, MAX_READINGS_WAIT);
        if changed || due {
            let started = Instant::now();
            let cluster = self.shell.fresh().clone();
            let health = self.shell.store_health();
            self.published.send_replace(Published {
                config: self.shell.config().clone(),
                cluster,
                epoch: self.world.epoch,
                samples: self.world.samples.clone(),
                store: health.clone(),
                traffic: self.traffic.clone(),
                stats: self.world.stats.clone(),
            });
            // The replaced publication is dropped above, part of the cost.
            self.publish_cost = started.elapsed();
            self.last_publish = Instant::now();
        }
    }

    /// The load balancer's table is someone else's (`Some`), or ours again (`None`): an
    /// event when that changes; the drains wait meanwhile (no sync reaches the core).
    fn traffic_mismatch(&mut self, mismatch: Option<String>, now: Now) {
        let message = match (&self.traffic.mismatch, &mismatch) {
            (None, Some(what)) => {
                self.traffic.mismatches_total += 1;
                warn!(holds = %what, "the builtin proxy holds a route table that is not this controller's; no drain counts as done until it holds ours");
                format!("the builtin proxy holds a route table this controller did not send ({what}); no drain counts as done until it holds ours again")
            }
            (Some(_), None) => {
                info!("the builtin proxy holds this controller's route table again");
                "the builtin proxy holds this controller's route table again".to_string()
            }
            _ => return,
        };
        self.traffic.mismatch = mismatch;
        let event = LogEvent {
            at_ms: now.wall_ms,
            kind: rejuv_core::cluster::EventKind::TrafficMismatch,
            server: None,
            workflow: None,
            message,
            level: None,
        };
        self.log_event(event);
    }

    /// Writes an event that is no step's (the state is unchanged) and hands it to followers.
    fn log_event(&mut self, event: LogEvent) {
        let cluster = self.shell.cluster().clone();
        if let Err(e) = self
            .world
            .commit(&cluster, std::slice::from_ref(&event), &[])
        {
            warn!(error = %e, kind = %event.kind, "could not write an event");
        }
        let _ = self.world.events.send(event);
    }
}

impl World {
    fn now(&self) -> Now {
        Now::new(self.started.elapsed().as_millis() as u64, wall_ms())
    }

    /// Keeps `samples` (oldest first) in the server's recent readings.
    fn record_history(&self, server: &str, samples: &[rejuv_core::types::Sample]) {
        // A poisoned lock means a reader panicked mid-copy; the readings themselves are
        // whole, so recording goes on.
        let mut book = self.history.lock().unwrap_or_else(|e| e.into_inner());
        for s in samples {
            book.record(server, s);
        }
    }
}

impl Effects for World {
    fn commit(
        &mut self,
        cluster: &Cluster,
        events: &[LogEvent],
        finished: &[Workflow],
    ) -> Result<(), String> {
        self.store
            .commit(cluster, events, finished)
            .map_err(|e| rejuv_core::error_chain(&e))?;
        self.stats.commits.inc();
        Ok(())
    }

    fn carry_out(&mut self, command: &Command, attempt: u32) {
        if let CommandKind::Alert {
            name,
            server,
            summary,
        } = &command.kind
        {
            if attempt == 0 {
                warn!(
                    alert = name.as_str(),
                    server = server.as_deref().unwrap_or("-"),
                    "ALERT: {summary}"
                );
            }
        }
        let exec = Executor {
            client: self.client.clone(),
            agents: self.agents.clone(),
            epoch: self.epoch,
            alerts: self.alerts.clone(),
            cfg: self.cfg.clone(),
        };
        let tx = self.tx.clone();
        let command = command.clone();
        tokio::spawn(async move {
            let id = command.id;
            let outcome = exec.attempt(&command.kind).await;
            let _ = tx
                .send(Msg::Attempted {
                    id,
                    attempt,
                    outcome,
                })
                .await;
        });
    }

    fn wake_at(&mut self, at_mono_ms: u64, id: u64, attempt: u32) {
        let at = self.started + Duration::from_millis(at_mono_ms);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = tx.send(Msg::Wake { id, attempt }).await;
        });
    }

    fn stepped(&mut self, step: &Step<'_>) {
        if step.committed {
            if let Some(phase) = &self.crash_at {
                if step
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
        }
        for e in step.events {
            info!(kind = %e.kind, server = e.server.as_deref().unwrap_or("-"), workflow = ?e.workflow, "{}", e.message);
            let _ = self.events.send(e.clone());
        }
        if self.routes.borrow().version != step.cluster.routes.version {
            self.routes.send_replace(step.cluster.routes.clone());
        }
    }
}

/// Makes one attempt at a command against the agents, a hook or the alert sink.
struct Executor {
    client: AgentClient,
    agents: BTreeMap<String, SocketAddr>,
    epoch: u64,
    alerts: AlertSink,
    cfg: Arc<Config>,
}

impl Executor {
    fn agent(&self, server: &str) -> Result<SocketAddr, Attempt> {
        self.agents.get(server).copied().ok_or_else(|| {
            Attempt::Answered(CommandResult::Failed {
                error: format!("no agent address for server {server}"),
            })
        })
    }

    async fn attempt(&self, kind: &CommandKind) -> Attempt {
        match kind {
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
                    return Attempt::Answered(CommandResult::Failed {
                        error: format!("no hook named {hook} in the config"),
                    });
                };
                let call = crate::hooks::HookCall {
                    cluster: &self.cfg.cluster.name,
                    workflow: *workflow,
                    step,
                    when: *when,
                    server,
                    target,
                };
                Attempt::Answered(crate::hooks::run(h, &call).await)
            }
            CommandKind::Alert {
                name,
                server,
                summary,
            } => self.send_alert(name, server.as_deref(), summary).await,
            _ => match self.agent_attempt(kind).await {
                Ok(r) => Attempt::Answered(r),
                Err(a) => a,
            },
        }
    }

    /// Posts an alert (a sink that is not configured takes it at once).
    async fn send_alert(&self, name: &str, server: Option<&str>, summary: &str) -> Attempt {
        if !self.alerts.enabled() {
            return Attempt::Answered(CommandResult::Done);
        }
        let alert = Alert {
            name,
            server,
            summary,
            at_ms: crate::alerts::now_ms(),
        };
        match self.alerts.send(&alert).await {
            Ok(()) => Attempt::Answered(CommandResult::Done),
            Err(e) => {
                let permanent = e.is_permanent();
                if permanent {
                    warn!(error = %e, alert = name, "alert not delivered");
                } else {
                    tracing::debug!(error = %e, "alert delivery failed; retrying");
                }
                Attempt::Failed {
                    error: e.to_string(),
                    permanent,
                }
            }
        }
    }

    async fn agent_attempt(&self, kind: &CommandKind) -> Result<CommandResult, Attempt> {
        let failed = |e: crate::agent_client::ClientError| Attempt::Failed {
            permanent: e.is_permanent(),
            error: e.to_string(),
        };
        match kind {
            CommandKind::StartInstance {
                server,
                instance,
                service,
            } => {
                let addr = self.agent(server)?;
                let st = self
                    .client
                    .start(addr, self.epoch, instance, service)
                    .await
                    .map_err(failed)?;
                Ok(CommandResult::Started { addr: st.addr })
            }
            CommandKind::StopInstance { server, instance } => {
                let addr = self.agent(server)?;
                self.client
                    .stop(addr, self.epoch, instance)
                    .await
                    .map_err(failed)?;
                Ok(CommandResult::Stopped)
            }
            CommandKind::TransferState {
                from_server,
                from,
                to_server,
                to,
            } => {
                let a = self.agent(from_server)?;
                let b = self.agent(to_server)?;
                let body = self.client.export_state(a, from).await.map_err(failed)?;
                self.client
                    .import_state(b, self.epoch, to, body)
                    .await
                    .map_err(failed)?;
                Ok(CommandResult::Transferred)
            }
            CommandKind::Rejuvenate {
                server,
                run_id,
                actions,
                keep,
            } => {
                let addr = self.agent(server)?;
                let report = self
                    .client
                    .rejuvenate(addr, self.epoch, run_id, actions, keep)
                    .await
                    .map_err(failed)?;
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
    // The fleet's first polls spread over one interval, each agent at its own offset: a
    // controller that starts or takes over does not open every agent's connection (a TLS
    // handshake each) in the same instant.
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(every.mul_f64(first_poll_offset(&server))) => {}
    }
    // One kept connection for this agent's polls (agent_conn.rs: a fleet's worth of them).
    let mut conn = crate::agent_conn::AgentConn::new(client.clone(), addr);
    // First the samples the agent kept, for the detector (best effort: an agent that is down
    // now, or too old to keep samples, is judged from live samples only).
    let history = tokio::select! {
        _ = shutdown.cancelled() => return,
        h = conn.samples(0, timeout) => h,
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
        // A poll that panics (a bug reading some answer) fails this poll, not the poller: a
        // poller that ended would leave its server unpolled, and never judged unreachable.
        let result = match std::panic::AssertUnwindSafe(conn.state(timeout))
            .catch_unwind()
            .await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => {
                conn = crate::agent_conn::AgentConn::new(client.clone(), addr);
                Err(format!(
                    "agent {addr}: reading its answer failed unexpectedly; polled again on a new connection"
                ))
            }
        };
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

/// Where in the first interval server `id` is first polled, as a share of it in [0, 1): fixed
/// per id (FNV-1a), spread evenly over a fleet.
fn first_poll_offset(id: &str) -> f64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % 10_000) as f64 / 10_000.0
}

/// A join request's facts, for people.
fn describe(r: &JoinRequest) -> String {
    format!(
        "{} with {} units, agent {}, ports {}-{}",
        r.role, r.capacity, r.agent, r.port_range[0], r.port_range[1]
    )
}

/// Sections a reload does not change in a running controller (they are read at start): a
/// line for each that differs, so the operator knows a restart is still due.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    let mut v = Vec::new();
    let sections = [
        (
            "[controller]",
            json(&old.controller) != json(&new.controller),
        ),
        ("[auth]", json(&old.auth) != json(&new.auth)),
        ("[store]", json(&old.store) != json(&new.store)),
        ("[traffic]", json(&old.traffic) != json(&new.traffic)),
        ("[alerts]", json(&old.alerts) != json(&new.alerts)),
        ("[retention]", json(&old.retention) != json(&new.retention)),
        (
            "join.token_file",
            json(&old.join.as_ref().map(|j| &j.token_file))
                != json(&new.join.as_ref().map(|j| &j.token_file)),
        ),
    ];
    for (name, changed) in sections {
        if changed {
            v.push(format!(
                "{name} changed: it takes effect at the controller's next start"
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::first_poll_offset;

    #[test]
    fn first_polls_spread_over_the_interval_each_at_a_fixed_offset() {
        let offsets: Vec<f64> = (0..1000)
            .map(|i| first_poll_offset(&format!("s{i}")))
            .collect();
        assert!(offsets.iter().all(|o| (0.0..1.0).contains(o)));
        assert_eq!(first_poll_offset("s7"), first_poll_offset("s7"));
        let mut tenths = [0usize; 10];
        for o in &offsets {
            tenths[(o * 10.0) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&n| (50..=150).contains(&n)),
            "1,000 ids by tenth of the interval: {tenths:?}"
        );
    }
}
