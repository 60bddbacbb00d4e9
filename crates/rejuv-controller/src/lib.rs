//! rejuv controller: drives the core, talks to agents, the store and the load balancer, and
//! serves the API.
//!
//! - [`engine`]: the single owner of the cluster state; applies events, commits, acts.
//! - [`store`]: SQLite (embedded default), or etcd ([`etcd_store`], feature `etcd`) for several
//!   controllers with one leader ([`ha`]) or with the fleet in shards ([`shards`]); [`leader`]: the leadership guard every
//!   load-balancer write checks; [`store_codec`]: the state's encoding and the errors both
//!   backends share.
//! - [`agent_client`]: the agent API client.
//! - [`recover`]: an empty store facing agents with history: refuse, or adopt them.
//! - [`traffic`]: traffic adapters (builtin proxy) as reconcile loops.
//! - [`api`]: the HTTP API; [`metrics`]: Prometheus text; [`history`]: the recent readings
//!   the history route serves.
//! - [`source`]: a Prometheus server as a source of readings, judged by the same detector
//!   (advisory reports without agents).

pub mod agent_client;
pub mod agent_conn;
pub mod alert_block;
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
pub mod history;
pub mod hooks;
pub mod leader;
pub mod leading;
pub mod metrics;
pub mod recover;
#[cfg(feature = "etcd")]
pub mod shards;
pub mod source;
pub mod stats;
pub mod store;
pub mod store_codec;
pub mod traffic;

use anyhow::Context;
use leader::LeaderGuard;
use rejuv_core::config::StoreKind;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use leading::start_leading;
pub use leading::{load_tls, ControllerOptions};

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
        StoreKind::Etcd if opts.config.shards() > 1 => shards::run(listener, opts, shutdown).await,
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
    let server = leading::api_server(listener, &cfg, opts.tls.as_ref());
    let mut leading = start_leading(
        &opts,
        cfg,
        store,
        reader,
        LeaderGuard::always(),
        local.clone(),
        server.stats(),
        None,
    )
    .await?;
    server
        .serve_router(leading.app.clone(), local.clone().cancelled_owned())
        .await;
    local.cancel();
    leading.join().await;
    Ok(())
}
