//! Several controllers on one etcd: campaign, follow, lead, step down.
//!
//! A controller with `store.kind = "etcd"`:
//!
//! 1. grants itself a lease and campaigns ([`crate::etcd_store::Session::campaign`]); the API
//!    is up at once, as a **follower**: `/healthz` answers 200 with `x-rejuv-role: follower`
//!    and every other route answers `503` with `x-rejuv-leader: <leader API address>` (when
//!    one is known), so an operator's tools can go to the leader; a follower polls no agent
//!    and never touches the load balancer;
//! 2. on winning, takes the next epoch from etcd, loads the state, resends its outbox and
//!    starts the engine, pollers and traffic adapter exactly like a SQLite controller
//!    resuming after a crash; `/healthz` then says `x-rejuv-role: leader`;
//! 3. when leadership is lost (a fenced write failed, the lease expired, or no keep-alive was
//!    acknowledged for TTL − TTL/5 on the monotonic clock) it stops every task and returns an
//!    error: the process exits and its supervisor starts it again as a follower;
//! 4. on a clean stop (SIGTERM) it stops its tasks first, then revokes its lease so that a
//!    follower takes over at once.
//!
//! A follower whose lease lapses (etcd unreachable) grants itself a new one and campaigns
//! again; it never acted, so there is nothing to undo.

use crate::etcd_store::{self, EtcdStore, Keys, LeaderInfo, Session};
use crate::leader::LeaderGuard;
use crate::leading::{start_leading, ControllerOptions};
use crate::store::Store;
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rejuv_core::api::ApiError;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{info, warn};

/// This controller's part, as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Campaigning; the current leader when known.
    Follower(Option<LeaderInfo>),
    Leader,
}

#[derive(Clone)]
struct HaState {
    role: watch::Receiver<Role>,
    /// The leader's API, set once when the campaign is won.
    leader_app: Arc<OnceLock<Router>>,
    /// The won term's lease: a leader whose lease may have lapsed (it was frozen, say) no
    /// longer says it leads, nor serves, even before its tasks notice.
    guard: Arc<OnceLock<LeaderGuard>>,
    /// The API token: a follower's `/metrics` asks for it as the leader's does.
    token: Arc<String>,
    /// The API listener's connections, which a follower's `/metrics` shows as well.
    connections: Arc<rejuv_net::ConnectionStats>,
}

impl HaState {
    fn role(&self) -> Role {
        match self.role.borrow().clone() {
            Role::Leader if !self.guard.get().is_some_and(|g| g.still_leader()) => {
                Role::Follower(None)
            }
            r => r,
        }
    }
}

/// The API in front of everything: `/healthz` says the role; the rest goes to the leader's API
/// once this controller leads, and gets `503` naming the leader before.
fn router(state: HaState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(forward)
        .with_state(state)
}

async fn healthz(State(s): State<HaState>) -> Response {
    let role = s.role();
    match role {
        Role::Leader => ([("x-rejuv-role", "leader")], "ok: leader\n").into_response(),
        Role::Follower(l) => {
            let body = match &l {
                Some(l) => format!("ok: follower; the leader is {} (API {})\n", l.id, l.api),
                None => "ok: follower; no leader known\n".to_string(),
            };
            let mut resp = ([("x-rejuv-role", "follower")], body).into_response();
            add_leader_header(&mut resp, l.as_ref());
            resp
        }
    }
}

/// The leader's metrics; on a follower `rejuv_leader 0` and its listener's connections, so that a scrape of every
/// controller sees them all up and `absent(rejuv_leader == 1)` says when none leads.
async fn metrics(State(s): State<HaState>, req: Request) -> Response {
    if matches!(s.role(), Role::Leader) {
        return forward(State(s), req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !rejuv_core::digest::bearer_matches(header, &s.token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(ApiError {
                error: "missing or wrong bearer token".into(),
            }),
        )
            .into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        follower_metrics(&s.connections),
    )
        .into_response()
}

/// `rejuv_leader 0` and the API listener's connections.
pub(crate) fn follower_metrics(connections: &Arc<rejuv_net::ConnectionStats>) -> String {
    use prometheus_client::metrics::gauge::Gauge;
    let mut reg = prometheus_client::registry::Registry::with_prefix("rejuv");
    reg.register(
        "leader",
        "1 on the controller that leads (acts), 0 on a follower.",
        Gauge::<i64>::default(),
    );
    crate::metrics::register_listener(&mut reg, connections);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .expect("writing to a String cannot fail");
    out
}

fn add_leader_header(resp: &mut Response, leader: Option<&LeaderInfo>) {
    if let Some(v) = leader.and_then(|l| HeaderValue::from_str(&l.api).ok()) {
        resp.headers_mut().insert("x-rejuv-leader", v);
    }
}

async fn forward(State(s): State<HaState>, req: Request) -> Response {
    let role = s.role();
    match (role, s.leader_app.get()) {
        (Role::Leader, Some(app)) => match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        (role, _) => {
            let leader = match role {
                Role::Follower(l) => l,
                Role::Leader => None,
            };
            let msg = match &leader {
                Some(l) => format!(
                    "this controller is a follower; the leader's API is at {}",
                    l.api
                ),
                None => "this controller is a follower and no leader is known yet".into(),
            };
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ApiError { error: msg }),
            )
                .into_response();
            add_leader_header(&mut resp, leader.as_ref());
            resp
        }
    }
}

/// Runs a controller on the etcd store until `shutdown` (returns `Ok`) or until it loses
/// leadership (returns the error that says why).
///
/// # Errors
/// etcd unreachable at start; the state cannot be loaded; leadership lost; the listener fails.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: ControllerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cfg = Arc::new(opts.config.clone());
    let sc = &cfg.store;
    let keys = Keys::new(&sc.etcd_prefix(&cfg.cluster.name));
    let ttl = sc.lease_ttl;
    let api = listener.local_addr().context("controller API address")?;
    let me = LeaderInfo::this_process(api);
    let client = etcd_store::connect(&sc.endpoints)
        .await
        .context("connecting to etcd (store.endpoints)")?;

    let (role_tx, role_rx) = watch::channel(Role::Follower(None));
    let leader_app = Arc::new(OnceLock::new());
    let lease_guard = Arc::new(OnceLock::new());
    let local = shutdown.child_token();
    let server = crate::leading::api_server(listener, &cfg, opts.tls.as_ref());
    let connections = server.stats();
    let app = router(HaState {
        role: role_rx,
        leader_app: leader_app.clone(),
        guard: lease_guard.clone(),
        token: Arc::new(opts.api_token.clone()),
        connections: connections.clone(),
    });
    let server = tokio::spawn(server.serve_router(app, local.clone().cancelled_owned()));

    // Follow until this controller wins (or is asked to stop).
    let won = loop {
        let session = match Session::start(client.clone(), keys.clone(), ttl).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot get an etcd lease; retrying");
                tokio::select! {
                    _ = local.cancelled() => break None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        info!(lease = session.lease(), id = %me.id, "campaigning for leadership");
        let campaign = session.campaign(&me, |leader| {
            role_tx.send_if_modified(|r| {
                let new = Role::Follower(leader.clone());
                let changed = *r != new;
                if changed {
                    if let Some(l) = &leader {
                        info!(leader = %l.id, api = %l.api, "following");
                    }
                }
                *r = new;
                changed
            });
        });
        let outcome = tokio::select! {
            _ = local.cancelled() => None,
            r = campaign => Some(r),
        };
        match outcome {
            None => {
                session.resign().await;
                break None;
            }
            Some(Ok(fence)) => break Some((session, fence)),
            Some(Err(e)) => {
                warn!(error = %e, "campaign ended; starting a new etcd session");
                continue;
            }
        }
    };
    let Some((session, fence)) = won else {
        let _ = server.await;
        return Ok(());
    };

    let guard = session.guard();
    info!(fence, id = %me.id, "won leadership; loading the state");
    let store = Store::Etcd(Box::new(EtcdStore::leader(
        client.clone(),
        keys.clone(),
        fence,
        guard.clone(),
        ttl,
        cfg.retention.events,
        cfg.retention.workflows,
    )));
    let reader = Store::Etcd(Box::new(EtcdStore::reader(
        client.clone(),
        keys.clone(),
        ttl,
    )));
    let started = start_leading(
        &opts,
        cfg.clone(),
        store,
        reader,
        guard.clone(),
        local.clone(),
        connections,
        None,
    )
    .await;
    let mut leading = match started {
        Ok(l) => l,
        Err(e) => {
            local.cancel();
            session.resign().await;
            let _ = server.await;
            return Err(e.context("taking over as leader"));
        }
    };
    let compactor = (!sc.compact_every.is_zero()).then(|| {
        tokio::spawn(etcd_store::compact_history(
            client.clone(),
            sc.compact_every,
            guard.clone(),
            local.clone(),
            keys.clone(),
        ))
    });
    let _ = leader_app.set(leading.app.clone());
    let _ = lease_guard.set(guard.clone());
    role_tx.send_replace(Role::Leader);
    info!("leading");

    let lost = watch_lease(&guard, &local).await;
    // Stop acting first, then (on a clean stop) give the lease back.
    local.cancel();
    leading.join().await;
    if let Some(c) = compactor {
        let _ = c.await;
    }
    let _ = server.await;
    match lost {
        None => {
            session.resign().await;
            info!("stopped; leadership handed back");
            Ok(())
        }
        Some(reason) => {
            anyhow::bail!("lost etcd leadership ({reason}); stepped down: stopped every task")
        }
    }
}

/// Waits for a stop (`None`) or for leadership to be lost (`Some(reason)`), checking the
/// guard's monotonic deadline often so that a stuck keep-alive cannot hide a lapsed lease.
pub(crate) async fn watch_lease(guard: &LeaderGuard, stop: &CancellationToken) -> Option<String> {
    let lost = guard.lost();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = lost.cancelled() => break,
            _ = tick.tick() => {
                if !guard.still_leader() {
                    guard.lose("the lease lapsed on the monotonic clock");
                    break;
                }
            }
        }
    }
    let reason = guard.lost_reason().unwrap_or_else(|| "unknown".into());
    warn!(reason = %reason, "leadership lost: stopping every task");
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_writes_leader_0_and_its_listener_connections() {
        let text = follower_metrics(&Arc::default());
        for line in [
            "rejuv_leader 0",
            "rejuv_controller_connections_open{listener=\"api\"} 0",
            "rejuv_controller_connections_refused_total{listener=\"api\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
