//! rejuv controller: drives the core, talks to agents, the store and the load balancer, and
//! serves the API.
//!
//! - [`engine`]: the single owner of the cluster state; applies events, commits, acts.
//! - [`store`]: SQLite (embedded default), or etcd ([`etcd_store`], feature `etcd`) for several
//!   controllers with one leader ([`ha`]); [`leader`]: the leadership guard every
//!   load-balancer write checks; [`store_codec`]: the state's encoding and the errors both
//!   backends share.
//! - [`agent_client`]: the agent API client.
//! - [`traffic`]: traffic adapters (builtin proxy) as reconcile loops.
//! - [`api`]: the HTTP API; [`metrics`]: Prometheus text.

pub mod agent_client;
pub mod alerts;
pub mod api;
pub mod engine;
pub mod etcd_member;
#[cfg(feature = "etcd")]
pub mod etcd_store;
#[cfg(feature = "etcd")]
#[doc(hidden)]
pub mod etcd_test_server;
#[cfg(feature = "etcd")]
pub mod ha;
pub mod haproxy;
pub mod hooks;
pub mod leader;
pub mod metrics;
pub mod store;
pub mod store_codec;
pub mod traffic;

use anyhow::Context;
use leader::LeaderGuard;
use rejuv_core::config::{Config, StoreKind, TrafficAdapter};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub struct ControllerOptions {
    pub config: Config,
    /// Token presented to agents.
    pub agent_token: String,
    /// Token operators (and the builtin proxy's admin API) use.
    pub api_token: String,
    pub store_path: PathBuf,
    /// Start with new workflows paused (the state machine still places and heals instances).
    pub paused: bool,
    /// Advisory mode: judge, plan and explain, but send no command to any agent.
    pub dry_run: bool,
}

/// Runs the controller until `shutdown` is cancelled.
///
/// With `store.kind = "sqlite"` it leads at once. With `"etcd"` it campaigns and serves the
/// API as a follower meanwhile (see [`ha`]); it returns an error when it loses leadership.
///
/// # Errors
/// The store cannot be opened or holds a corrupt state; the listener fails; (etcd) this
/// controller lost leadership.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: ControllerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for w in opts.config.warnings() {
        tracing::warn!(field = %w.field, "config: {}", w.reason);
    }
    match opts.config.store.kind {
        StoreKind::Sqlite => run_sqlite(listener, opts, shutdown).await,
        #[cfg(feature = "etcd")]
        StoreKind::Etcd => ha::run(listener, opts, shutdown).await,
        #[cfg(not(feature = "etcd"))]
        StoreKind::Etcd => anyhow::bail!(
            "store.kind = \"etcd\": this binary was built without etcd support; build with --features etcd"
        ),
    }
}

async fn run_sqlite(
    listener: tokio::net::TcpListener,
    opts: ControllerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cfg = Arc::new(opts.config.clone());
    let store = store::Store::open(
        &opts.store_path,
        cfg.retention.events,
        cfg.retention.workflows,
    )
    .context("opening the controller store")?;
    let reader = store::Store::open(
        &opts.store_path,
        cfg.retention.events,
        cfg.retention.workflows,
    )
    .context("opening the controller store for reading")?;
    let local = shutdown.child_token();
    let mut leading = start_leading(
        &opts,
        cfg,
        store,
        reader,
        LeaderGuard::always(),
        local.clone(),
    )?;
    let serve_shutdown = local.clone();
    axum::serve(listener, leading.app.clone())
        .with_graceful_shutdown(async move { serve_shutdown.cancelled().await })
        .await
        .context("controller API server")?;
    local.cancel();
    leading.join().await;
    Ok(())
}

/// What a leading controller runs: its API and its tasks (engine, pollers, traffic adapter).
pub(crate) struct Leading {
    pub app: axum::Router,
    pub tasks: tokio::task::JoinSet<()>,
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
pub(crate) fn start_leading(
    opts: &ControllerOptions,
    cfg: Arc<Config>,
    store: store::Store,
    reader: store::Store,
    guard: LeaderGuard,
    local: CancellationToken,
) -> anyhow::Result<Leading> {
    let client = agent_client::AgentClient::new(opts.agent_token.clone());
    let alerts = alerts::AlertSink::new(&cfg.alerts, &cfg.cluster.name).context("[alerts]")?;
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let engine = engine::Engine::new(
        cfg.clone(),
        store,
        client.clone(),
        tx.clone(),
        opts.paused,
        opts.dry_run,
        alerts,
    )?;
    let published = engine.published.subscribe();
    let routes = engine.routes.subscribe();

    let mut tasks = tokio::task::JoinSet::new();
    for s in &cfg.servers {
        tasks.spawn(engine::poll_agent(
            s.id.clone(),
            s.agent,
            client.clone(),
            cfg.controller.poll_interval,
            cfg.controller.agent_timeout,
            tx.clone(),
            local.clone(),
        ));
    }
    match cfg.traffic.adapter {
        TrafficAdapter::Builtin => {
            let admin = cfg
                .traffic
                .admin
                .context("traffic.admin is required for the builtin proxy")?;
            if !opts.dry_run {
                let proxy = traffic::BuiltinProxy::new(admin, opts.api_token.clone())
                    .with_leader_guard(guard.clone());
                tasks.spawn(traffic::reconcile_builtin(
                    proxy,
                    cfg.traffic.listen.keys().cloned().collect(),
                    routes,
                    tx.clone(),
                    local.clone(),
                ));
            }
        }
        TrafficAdapter::Haproxy => {
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
    tasks.spawn(engine.run(rx, local.clone()));

    let mut operators = Vec::new();
    for o in &cfg.auth.operators {
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
        operators.push((o.name.clone(), token));
    }
    let state = api::ApiState {
        cfg: cfg.clone(),
        token: Arc::new(opts.api_token.clone()),
        operators: Arc::new(operators),
        published,
        tx,
        store: Arc::new(Mutex::new(reader)),
    };
    Ok(Leading {
        app: api::router(state),
        tasks,
    })
}
