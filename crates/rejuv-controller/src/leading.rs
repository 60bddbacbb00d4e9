//! What a controller that leads runs: its options, and the start of every task of a leader
//! (engine, pollers, traffic adapter, API). Used by the single-controller (SQLite) run in the
//! crate root and by the etcd campaign in [`crate::ha`].

use crate::leader::LeaderGuard;
use crate::{agent_client, alerts, api, engine, haproxy, recover, store, traffic};
use anyhow::Context;
use rejuv_core::config::{Config, TrafficAdapter};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub struct ControllerOptions {
    pub config: Config,
    /// Token presented to agents.
    pub agent_token: String,
    /// Token operators use.
    pub api_token: String,
    /// Token of the builtin proxy's admin API (`auth.proxy_token_file`, else the API token).
    pub proxy_token: String,
    pub store_path: PathBuf,
    /// Start with new workflows paused (the state machine still places and heals instances).
    pub paused: bool,
    /// Advisory mode: judge, plan and explain, but send no command to any agent.
    pub dry_run: bool,
    /// On an empty store facing agents with history, adopt their epochs and instances
    /// instead of refusing to start (see [`crate::recover`]).
    pub adopt_agents: bool,
    /// A one-time code the dashboard exchanges for the API token (see `api::session`).
    pub session_code_file: Option<PathBuf>,
    /// The config file, read again on `SIGHUP` and `POST /v1/reload`.
    pub config_path: Option<PathBuf>,
    /// The controller's TLS (`[tls]`, see [`load_tls`]): HTTPS to agents and the builtin
    /// proxy, and to operators when `tls.api`; none: plain HTTP.
    pub tls: Option<Arc<rejuv_net::tls::Tls>>,
}

/// Loads the controller's certificate when the config has `[tls]` (its `{name}` is
/// `controller`).
pub fn load_tls(cfg: &Config) -> anyhow::Result<Option<Arc<rejuv_net::tls::Tls>>> {
    match cfg.tls_files("controller") {
        Some(files) => Ok(Some(
            rejuv_net::tls::Tls::load(files).map_err(|e| anyhow::anyhow!("[tls]: {e}"))?,
        )),
        None => Ok(None),
    }
}

/// The controller API's listener: HTTPS with the controller's certificate when `tls.api`,
/// asking operators for no certificate.
pub(crate) fn api_server(
    listener: tokio::net::TcpListener,
    cfg: &Config,
    tls: Option<&Arc<rejuv_net::tls::Tls>>,
) -> rejuv_net::Server {
    let server =
        rejuv_net::Server::new(listener, "controller API", cfg.controller.listener_limits());
    match tls {
        Some(t) if cfg.api_tls() => server.with_tls(t.clone(), None),
        _ => server,
    }
}

/// What a leading controller runs: its API and its tasks (engine, pollers, traffic adapter).
pub(crate) struct Leading {
    pub app: axum::Router,
    pub tasks: tokio::task::JoinSet<()>,
    /// The engine's inbox (the shards' budget keeper, on etcd, sends to it).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub tx: tokio::sync::mpsc::Sender<engine::Msg>,
    /// What the engine publishes after every step.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub published: tokio::sync::watch::Receiver<engine::Published>,
}

impl Leading {
    /// Waits for every task to end (after `local` was cancelled).
    pub async fn join(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Loads (or creates) the state through `store`, resends its outbox and starts every task
/// of a leader under `local`. Nothing touches the load balancer unless `guard` says this
/// controller still leads.
///
/// `shard`: the shard of a sharded fleet this engine runs (`cfg` is then that shard's): its
/// route table goes to the builtin proxy as that shard's, and the config is not reloaded
/// while it runs (every shard's engine reads it at its start).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_leading(
    opts: &ControllerOptions,
    cfg: Arc<Config>,
    mut store: store::Store,
    reader: store::Store,
    guard: LeaderGuard,
    local: CancellationToken,
    connections: Arc<rejuv_net::ConnectionStats>,
    shard: Option<u32>,
) -> anyhow::Result<Leading> {
    let mut client = agent_client::AgentClient::new(opts.agent_token.clone());
    if let Some(tls) = &opts.tls {
        client = client.with_tls(tls.clone(), &cfg);
    }
    let recovery = recover::check_store(&cfg, &mut store, &client, opts.adopt_agents).await?;
    let alerts = alerts::AlertSink::new(&cfg.alerts, &cfg.cluster.name).context("[alerts]")?;
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let engine = engine::Engine::new(
        cfg.clone(),
        store,
        client.clone(),
        tx.clone(),
        opts.paused,
        opts.dry_run,
        alerts.clone(),
        recovery,
    )?;
    let published = engine.published.subscribe();
    let state_published = engine.published.subscribe();
    let state_tx = tx.clone();
    let routes = engine.routes.subscribe();
    let history = engine.history();

    // The engine runs one poller per server it holds (servers come and go on a reload).
    let mut tasks = tokio::task::JoinSet::new();
    match cfg.traffic.adapter {
        TrafficAdapter::Builtin => {
            let admin = cfg
                .traffic
                .admin
                .context("traffic.admin is required for the builtin proxy")?;
            if !opts.dry_run {
                let mut proxy = traffic::BuiltinProxy::new(admin, opts.proxy_token.clone())
                    .with_leader_guard(guard.clone());
                if let Some(k) = shard {
                    proxy = proxy.with_shard(k);
                }
                if let Some(tls) = &opts.tls {
                    proxy = proxy.with_tls(tls);
                }
                tasks.spawn(traffic::reconcile_builtin(
                    proxy,
                    engine.epoch(),
                    cfg.traffic.listen.keys().cloned().collect(),
                    routes,
                    tx.clone(),
                    local.clone(),
                ));
            }
        }
        TrafficAdapter::Haproxy => {
            anyhow::ensure!(
                shard.is_none(),
                "store.shards > 1 needs traffic.adapter = \"builtin\": HAProxy holds one table, and each shard's controller sends its own"
            );
            let h = cfg
                .traffic
                .haproxy
                .as_ref()
                .context("[traffic.haproxy] is required for the haproxy adapter")?;
            let socket = match (
                h.socket.strip_prefix("unix:"),
                h.socket.strip_prefix("tcp:"),
            ) {
                (Some(path), _) => haproxy::HaproxySocket::Unix(path.into()),
                (_, Some(addr)) => {
                    haproxy::HaproxySocket::Tcp(addr.parse().context("traffic.haproxy.socket")?)
                }
                _ => anyhow::bail!("traffic.haproxy.socket must be unix:/path or tcp:IP:PORT"),
            };
            let mut hc = haproxy::HaproxyConfig::new(socket, h.backends.clone());
            hc.health_check = h.check.as_ref().map(|c| haproxy::HealthCheck {
                inter: c.inter,
                rise: c.rise,
                fall: c.fall,
            });
            hc.validate().context("[traffic.haproxy]")?;
            if !opts.dry_run {
                tasks.spawn(haproxy::reconcile_haproxy(
                    haproxy::Haproxy::new(hc).with_leader_guard(guard.clone()),
                    routes,
                    tx.clone(),
                    local.clone(),
                ));
            }
        }
    }
    if cfg.source.is_prometheus() {
        let (cfg, tx, published, local) = (
            (*cfg).clone(),
            tx.clone(),
            engine.published.subscribe(),
            local.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = crate::source::beside_agents(cfg, tx, published, local).await {
                tracing::error!("source: {}", rejuv_core::error_chain(&e));
            }
        });
    }
    tasks.spawn(engine.run(rx, local.clone()));
    if let Some(block) = cfg.alert_block.clone() {
        tasks.spawn(crate::alert_block::watch(block, tx.clone(), local.clone()));
    }
    let config_path = opts.config_path.clone().filter(|_| shard.is_none());
    if let Some(path) = config_path.clone() {
        tasks.spawn(reload_on_hangup(path, tx.clone(), local.clone()));
    }
    if let (Some(tls), Some(t)) = (&opts.tls, &cfg.tls) {
        tls.watch(local.clone());
        tasks.spawn(watch_expiry(
            tls.clone(),
            t.expiry_warning,
            alerts.clone(),
            local.clone(),
        ));
    }

    let mut operators = Vec::new();
    for o in &cfg.auth.operators {
        rejuv_core::secret::check_private(&o.token_file)
            .map_err(|e| anyhow::anyhow!("the token file of operator {}: {e}", o.name))?;
        let token = std::fs::read_to_string(&o.token_file)
            .with_context(|| {
                format!(
                    "reading the token of operator {} from {}",
                    o.name,
                    o.token_file.display()
                )
            })?
            .trim()
            .to_string();
        anyhow::ensure!(
            !token.is_empty(),
            "the token file of operator {} ({}) is empty",
            o.name,
            o.token_file.display()
        );
        operators.push((o.name.clone(), token, o.role));
    }
    let join_token = match &cfg.join {
        Some(j) => Some(Arc::new(read_secret(&j.token_file, "join.token_file")?)),
        None => None,
    };
    let state = api::ApiState {
        cfg: cfg.clone(),
        token: Arc::new(opts.api_token.clone()),
        operators: Arc::new(operators),
        published,
        history,
        tx,
        store: Arc::new(Mutex::new(reader)),
        session_code_file: opts.session_code_file.clone(),
        config_path,
        agents: client.clone(),
        connections,
        tls: opts.tls.clone(),
        join_token,
    };
    Ok(Leading {
        app: api::router(state),
        tasks,
        tx: state_tx,
        published: state_published,
    })
}

/// A token file's one line: refused when its group or others can read it, or when empty.
fn read_secret(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    rejuv_core::secret::check_private(path).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("{what}: reading {}", path.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(!token.is_empty(), "{what}: {} is empty", path.display());
    Ok(token)
}

/// How often certificates are looked at for an expiry alert.
const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Alerts (and logs) when a certificate — the controller's, the CA, or an agent's or the
/// proxy's met in a handshake — expires within `within`: at start and every
/// [`EXPIRY_CHECK`] while it does.
async fn watch_expiry(
    tls: Arc<rejuv_net::tls::Tls>,
    within: std::time::Duration,
    alerts: alerts::AlertSink,
    local: CancellationToken,
) {
    // A first look once the pollers have met the agents.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(10),
        EXPIRY_CHECK,
    );
    loop {
        tokio::select! {
            () = local.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(summary) = tls.expiring(within) else {
            continue;
        };
        tracing::warn!("{summary}");
        let alert = alerts::Alert {
            name: "RejuvTlsCertExpiring",
            server: None,
            summary: &summary,
            at_ms: alerts::now_ms(),
        };
        if let Err(e) = alerts.send(&alert).await {
            tracing::warn!(error = %rejuv_core::error_chain(&e), "sending the certificate expiry alert");
        }
    }
}

/// Reads the config file again on every `SIGHUP` and hands it to the engine; what it changed,
/// or why it was not taken, goes to the log (and, from the core, to the event log).
async fn reload_on_hangup(
    path: PathBuf,
    tx: tokio::sync::mpsc::Sender<engine::Msg>,
    local: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload with `rejuv reload` instead");
        return;
    };
    loop {
        tokio::select! {
            _ = local.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let config = match api::read_config(&path) {
            Ok(c) => c,
            Err(why) => {
                tracing::error!("SIGHUP: the config was not reloaded: {why}");
                continue;
            }
        };
        match api::reload_config(&tx, "SIGHUP".into(), config).await {
            Ok(changes) => tracing::info!(?changes, "SIGHUP: config reloaded"),
            Err(api::ReloadError::Refused(r)) => {
                tracing::error!("SIGHUP: the config was not reloaded: {r}")
            }
            Err(api::ReloadError::Gone) => return,
        }
    }
}
