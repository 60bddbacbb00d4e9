//! rejuv builtin proxy: an HTTP/1.1 front end that drains, holds and retries so switchovers
//! drop no request.
//!
//! It runs in its own process, so a controller that dies drops no client connection. Each
//! service has one listen address; the controller pushes the desired [`RouteTable`] to the
//! admin API (`PUT /v1/routes`) and polls `GET /v1/status`, whose per-backend in-flight counts
//! tell it when a drain is finished.
//!
//! - [`state`]: the table in force and the counters behind the status.
//! - [`forward`]: the data path (backend choice, hold, retries, streaming).
//! - [`pool`]: upstream keep-alive connections per backend.
//! - [`admin`]: the admin API.
//!
//! [`RouteTable`]: rejuv_core::api::RouteTable

pub mod admin;
pub mod forward;
pub mod pool;
pub mod state;

use anyhow::Context as _;
use rejuv_core::config::ListenerLimits;
use rejuv_net::Server;
use state::Shared;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use state::{InvalidTable, TableError, MAX_HOLD_MS_LIMIT};

/// How long shutdown waits for in-flight requests before closing their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often idle upstream connections are checked for age.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// What the proxy serves on.
pub struct ProxyOptions {
    /// One front-end listener per service, by service name.
    pub services: BTreeMap<String, TcpListener>,
    /// The admin API's listener.
    pub admin: TcpListener,
    /// Bearer token for the admin API (all routes but `/healthz`).
    pub token: String,
    /// Bounds of each front-end listener (`[traffic]`).
    pub front_end_limits: ListenerLimits,
    /// Bounds of the admin API's listener.
    pub admin_limits: ListenerLimits,
    /// The admin API's TLS (`[tls]`): HTTPS, only for a controller of the fleet.
    pub tls: Option<Arc<rejuv_net::tls::Tls>>,
}

/// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests finish
/// (for at most [`SHUTDOWN_GRACE`]) and returns. Every listener is bounded (connections,
/// header-read and idle timeouts: `rejuv_net`); the status reports their counts.
///
/// Until the controller pushes a table, every request gets a 503.
///
/// # Errors
///
/// An empty token, a listener without a local address, or the admin server failing.
pub async fn run(opts: ProxyOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        !opts.token.is_empty(),
        "the admin API token must not be empty"
    );
    let mut listen = BTreeMap::new();
    for (name, listener) in &opts.services {
        let addr = listener
            .local_addr()
            .with_context(|| format!("local address of the listener for service {name}"))?;
        listen.insert(name.clone(), addr);
    }
    let admin_addr = opts
        .admin
        .local_addr()
        .context("local address of the admin listener")?;
    let shared = Arc::new(Shared::new(listen));

    let mut accepting = JoinSet::new();
    for (name, listener) in opts.services {
        let addr = shared.services[&name].listen;
        tracing::info!(service = %name, %addr, "proxy listening");
        let front = Arc::new(forward::Front {
            shared: shared.clone(),
            service: shared.services[&name].clone(),
            shutdown: shutdown.clone(),
        });
        let server = Server::new(
            listener,
            format!("front end of {name}"),
            opts.front_end_limits,
        )
        .with_stats(front.service.connections.clone());
        accepting.spawn(forward::serve(server, front));
    }

    tracing::info!(addr = %admin_addr, "proxy admin API listening");
    let mut admin = Server::new(opts.admin, "proxy admin API", opts.admin_limits)
        .with_stats(shared.admin_connections.clone());
    if let Some(tls) = &opts.tls {
        tls.watch(shutdown.clone());
        tracing::info!(cert = %tls.own(), "proxy admin API on HTTPS: only a controller of the fleet is served");
        admin = admin.with_tls(tls.clone(), Some(rejuv_net::tls::Role::Controller));
    }
    let admin = admin.serve_router(
        admin::router(shared.clone(), opts.token).merge(admin::metrics_router(opts.tls)),
        shutdown.clone().cancelled_owned(),
    );
    let mut admin = tokio::spawn(admin);

    let sweeper = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => shared.sweep_pools(),
                }
            }
        })
    };

    let admin_result = tokio::select! {
        () = shutdown.cancelled() => None,
        result = &mut admin => Some(result),
    };
    if let Some(result) = admin_result {
        // The admin server never stops by itself: without it the controller is blind.
        shutdown.cancel();
        result.context("admin API task")?;
        anyhow::bail!("the admin API server stopped");
    }

    tracing::info!("proxy shutting down: no new connections, letting in-flight requests finish");
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while accepting.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight requests still running at the end of the grace period; closing them");
        // Dropping a front end's task closes the connections it still serves.
        accepting.shutdown().await;
    }
    let _ = sweeper.await;
    admin.await.context("admin API task")?;
    Ok(())
}
