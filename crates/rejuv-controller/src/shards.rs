//! Several controllers for one fleet: the fleet split into shards (`store.shards` > 1), each
//! owned by one controller at a time through an etcd lease of its own. The design, the keys and
//! the guarantees are in `docs/shards.md`; in short:
//!
//! - every controller registers under `<prefix>/members/<id>` on a lease of its own, and every
//!   half second reads the members and the shards' leader keys in one transaction;
//! - it campaigns for a shard that has no owner while it owns fewer than
//!   ⌈shards / live controllers⌉: at once for the shards it is preferred for (shard *k* with
//!   *k* mod live = its rank among the members' ids), after one lease TTL without an owner for
//!   the others; a controller that owns more than its share for three reads in a row hands one
//!   back (stops its engine, revokes its lease);
//! - a shard won is run exactly as a leader runs the whole fleet in [`crate::ha`] (same fenced
//!   store, under `<prefix>/shards/<k>/`, resuming from the stored state, steps down when its
//!   lease lapses), over the shard's servers only ([`rejuv_core::config::Config::for_shard`]);
//! - the fleet's `budget.max_concurrent` is shared through `<prefix>/budget`: a shard's engine
//!   starts planned workflows only within the slots its shard holds there, taken and given
//!   back by compare-and-swap ([`etcd_store::set_budget_slots`]); the slots belong to the
//!   shard, not to the controller, so a shard's new owner finds them with its running
//!   workflows.
//!
//! The API answers for the shards this controller owns: `?shard=K` picks the shard (default 0),
//! another controller's shard answers `503` naming its owner in `x-rejuv-leader`, and
//! `GET /v1/shards` says who owns what.

use crate::engine::{Msg, Published};
use crate::etcd_store::{self, EtcdError, EtcdStore, Keys, LeaderInfo, Session};
use crate::leader::LeaderGuard;
use crate::leading::{start_leading, ControllerOptions};
use crate::store::Store;
use crate::store_codec::StoreError;
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use rejuv_core::api::ApiError;
use rejuv_core::config::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{info, warn};

/// How often the members and owners are read (and shards campaigned for).
const ROUND: Duration = Duration::from_millis(500);
/// How often a shard's budget slots are weighed against its demand.
const BUDGET_EVERY: Duration = Duration::from_millis(250);
/// Rounds a controller must own more than its share before it hands a shard back.
const OVER_ROUNDS: u32 = 3;
/// Rounds after registering before the first campaign (controllers started together see
/// each other first).
const SETTLE_ROUNDS: u32 = 2;

/// A shard this controller runs: its API, and its lease's guard.
struct Owned {
    app: Router,
    guard: LeaderGuard,
}

#[derive(Clone)]
struct ShardsState {
    me: LeaderInfo,
    shards: u32,
    owned: Arc<Mutex<BTreeMap<u32, Owned>>>,
    owners: Arc<Mutex<BTreeMap<u32, LeaderInfo>>>,
    token: Arc<String>,
    connections: Arc<rejuv_net::ConnectionStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShardsState {
    /// The shards this controller runs and still holds the lease of, ascending.
    fn owned(&self) -> Vec<u32> {
        lock(&self.owned)
            .iter()
            .filter(|(_, o)| o.guard.still_leader())
            .map(|(k, _)| *k)
            .collect()
    }

    fn app(&self, shard: u32) -> Option<Router> {
        lock(&self.owned)
            .get(&shard)
            .filter(|o| o.guard.still_leader())
            .map(|o| o.app.clone())
    }

    fn owner(&self, shard: u32) -> Option<LeaderInfo> {
        lock(&self.owners).get(&shard).cloned()
    }
}

/// `GET /v1/shards`.
#[derive(Debug, Clone, Serialize)]
pub struct ShardsView {
    /// This controller's id.
    pub controller: String,
    pub shards: u32,
    /// The shards this controller runs now.
    pub owned: Vec<u32>,
    /// Each shard's owner as etcd says (absent: none now).
    pub owners: BTreeMap<u32, LeaderInfo>,
}

fn owned_header(owned: &[u32]) -> String {
    owned
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The `shard` of a request's query (`?shard=K`), if any.
fn shard_param(req: &Request) -> Result<Option<u32>, String> {
    let Some(q) = req.uri().query() else {
        return Ok(None);
    };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("shard=") {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("shard={v}: not a shard number"));
        }
    }
    Ok(None)
}

/// `req` without its `shard` parameter (the shard's own API reads its query strictly).
fn without_shard_param(mut req: Request) -> Request {
    let uri = req.uri().clone();
    let Some(q) = uri.query() else {
        return req;
    };
    let rest: Vec<&str> = q
        .split('&')
        .filter(|p| !p.starts_with("shard=") && !p.is_empty())
        .collect();
    let path_and_query = if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), rest.join("&"))
    };
    let mut parts = uri.into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(u) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    req
}

fn router(state: ShardsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/shards", get(shards_route))
        .route("/metrics", get(metrics))
        .fallback(forward)
        .with_state(state)
}

fn authorized(s: &ShardsState, req: &Request) -> bool {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    rejuv_core::digest::bearer_matches(header, &s.token)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(ApiError {
            error: "missing or wrong bearer token".into(),
        }),
    )
        .into_response()
}

async fn healthz(State(s): State<ShardsState>) -> Response {
    let owned = s.owned();
    let role = if owned.is_empty() {
        "follower"
    } else {
        "owner"
    };
    let body = if owned.is_empty() {
        format!("ok: follower; owns none of {} shards\n", s.shards)
    } else {
        format!(
            "ok: owns shard(s) {} of {}\n",
            owned_header(&owned),
            s.shards
        )
    };
    let mut resp = ([("x-rejuv-role", role)], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&owned_header(&owned)) {
        resp.headers_mut().insert("x-rejuv-shards", v);
    }
    resp
}

async fn shards_route(State(s): State<ShardsState>, req: Request) -> Response {
    if !authorized(&s, &req) {
        return unauthorized();
    }
    Json(ShardsView {
        controller: s.me.id.clone(),
        shards: s.shards,
        owned: s.owned(),
        owners: lock(&s.owners).clone(),
    })
    .into_response()
}

/// A shard's metrics (`?shard=K`, default the lowest this controller owns); on a controller
/// that owns none, `rejuv_leader 0` and its listener's connections.
async fn metrics(State(s): State<ShardsState>, req: Request) -> Response {
    let shard = match shard_param(&req) {
        Ok(k) => k,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(ApiError { error: e })).into_response(),
    };
    let shard = shard.or_else(|| s.owned().first().copied());
    if let Some(app) = shard.and_then(|k| s.app(k)) {
        return match app.oneshot(without_shard_param(req)).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    if !authorized(&s, &req) {
        return unauthorized();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::ha::follower_metrics(&s.connections),
    )
        .into_response()
}

/// Every other route goes to the engine of shard `?shard=K` (default 0) when this controller
/// owns it, and answers `503` naming the shard's owner otherwise. `/v1/status` says besides
/// which shard it describes and which shards this controller owns.
async fn forward(State(s): State<ShardsState>, req: Request) -> Response {
    let shard = match shard_param(&req) {
        Ok(k) => k.unwrap_or(0),
        Err(e) => return (StatusCode::BAD_REQUEST, Json(ApiError { error: e })).into_response(),
    };
    if shard >= s.shards {
        return (
            StatusCode::NOT_FOUND,
            Json(ApiError {
                error: format!("shard {shard}: the fleet has {} shards", s.shards),
            }),
        )
            .into_response();
    }
    let is_status = req.uri().path() == "/v1/status";
    let owned = s.owned();
    let Some(app) = s.app(shard) else {
        let owner = s.owner(shard);
        let msg = match &owner {
            Some(l) => format!(
                "this controller does not own shard {shard}; its owner's API is at {}",
                l.api
            ),
            None => {
                format!("this controller does not own shard {shard}, and no owner is known yet")
            }
        };
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ApiError { error: msg }),
        )
            .into_response();
        if let Some(v) = owner.and_then(|l| HeaderValue::from_str(&l.api).ok()) {
            resp.headers_mut().insert("x-rejuv-leader", v);
        }
        if let Ok(v) = HeaderValue::from_str(&owned_header(&owned)) {
            resp.headers_mut().insert("x-rejuv-shards", v);
        }
        return resp;
    };
    let resp = match app.oneshot(without_shard_param(req)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if !is_status || resp.status() != StatusCode::OK {
        return resp;
    }
    // `/v1/status`: the shard it describes and the shards this controller owns.
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "status too large").into_response();
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "shard".into(),
            serde_json::json!({"id": shard, "of": s.shards, "owned_here": owned}),
        );
    }
    let out = serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// What the shard tasks share.
struct Ctx {
    opts: ControllerOptions,
    cfg: Arc<Config>,
    client: Client,
    prefix: String,
    ttl: Duration,
    state: ShardsState,
}

impl Ctx {
    fn budget_key(&self) -> String {
        format!("{}/budget", self.prefix)
    }
    fn members_dir(&self) -> String {
        format!("{}/members/", self.prefix)
    }
}

/// The members (controllers alive) and each shard's owner, read in one transaction.
struct View {
    members: Vec<String>,
    owners: BTreeMap<u32, LeaderInfo>,
}

async fn read_view(ctx: &Ctx) -> Result<View, EtcdError> {
    let n = ctx.state.shards;
    let mut ops = vec![TxnOp::get(
        ctx.members_dir(),
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )];
    for k in 0..n {
        ops.push(TxnOp::get(Keys::shard(&ctx.prefix, k).leader(), None));
    }
    let mut kv = ctx.client.kv_client();
    let resp = tokio::time::timeout(ctx.ttl / 2, kv.txn(Txn::new().and_then(ops)))
        .await
        .map_err(|_| EtcdError::Timeout {
            what: "reading the shards' owners",
            after: ctx.ttl / 2,
        })?
        .map_err(|source| EtcdError::Op {
            what: "reading the shards' owners",
            source,
        })?;
    let mut members = Vec::new();
    let mut owners = BTreeMap::new();
    for (i, r) in resp.op_responses().into_iter().enumerate() {
        let TxnOpResponse::Get(g) = r else { continue };
        if i == 0 {
            let dir = ctx.members_dir();
            members = g
                .kvs()
                .iter()
                .filter_map(|kv| std::str::from_utf8(kv.key()).ok())
                .filter_map(|key| key.strip_prefix(&dir).map(str::to_string))
                .collect();
        } else if let Some(info) = g
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<LeaderInfo>(kv.value()).ok())
        {
            owners.insert(i as u32 - 1, info);
        }
    }
    members.sort();
    Ok(View { members, owners })
}

/// Registers this controller under `<prefix>/members/<id>` on a lease of its own.
async fn register(ctx: &Ctx) -> Result<Session, EtcdError> {
    let session = Session::start(ctx.client.clone(), Keys::new(&ctx.prefix), ctx.ttl).await?;
    let key = format!("{}{}", ctx.members_dir(), ctx.state.me.id);
    let value = serde_json::to_string(&ctx.state.me).expect("member info encodes");
    let mut kv = ctx.client.kv_client();
    tokio::time::timeout(
        ctx.ttl / 2,
        kv.put(
            key,
            value,
            Some(PutOptions::new().with_lease(session.lease())),
        ),
    )
    .await
    .map_err(|_| EtcdError::Timeout {
        what: "registering as a member",
        after: ctx.ttl / 2,
    })?
    .map_err(|source| EtcdError::Op {
        what: "registering as a member",
        source,
    })?;
    Ok(session)
}

/// Runs a controller of a sharded fleet (`store.shards` > 1) until `shutdown`.
///
/// # Errors
/// etcd unreachable at start; the listener fails.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: ControllerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cfg = Arc::new(opts.config.clone());
    let sc = &cfg.store;
    let shards = cfg.shards();
    let prefix = sc.etcd_prefix(&cfg.cluster.name);
    let ttl = sc.lease_ttl;
    let api = listener.local_addr().context("controller API address")?;
    let me = LeaderInfo::this_process(api);
    let client = etcd_store::connect(&sc.endpoints)
        .await
        .context("connecting to etcd (store.endpoints)")?;
    let local = shutdown.child_token();
    let server = crate::leading::api_server(listener, &cfg, opts.tls.as_ref());
    let state = ShardsState {
        me: me.clone(),
        shards,
        owned: Arc::default(),
        owners: Arc::default(),
        token: Arc::new(opts.api_token.clone()),
        connections: server.stats(),
    };
    let server =
        tokio::spawn(server.serve_router(router(state.clone()), local.clone().cancelled_owned()));
    let ctx = Arc::new(Ctx {
        opts,
        cfg: cfg.clone(),
        client,
        prefix,
        ttl,
        state,
    });
    info!(id = %me.id, shards, "controller of a sharded fleet: campaigning for its share");

    let mut running: BTreeMap<u32, (CancellationToken, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    let mut member: Option<Session> = None;
    let mut registered_rounds = 0u32;
    let mut unowned_since: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut over = 0u32;
    let mut failing = false;
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = local.cancelled() => break,
            _ = tick.tick() => {}
        }
        running.retain(|_, (_, h)| !h.is_finished());
        if member.as_ref().is_none_or(|m| !m.guard().lease_alive()) {
            registered_rounds = 0;
            member = match register(&ctx).await {
                Ok(s) => Some(s),
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot register with etcd; retrying");
                        failing = true;
                    }
                    continue;
                }
            };
        }
        registered_rounds += 1;
        let view = match read_view(&ctx).await {
            Ok(v) => {
                if failing {
                    info!("etcd answers again");
                    failing = false;
                }
                v
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot read the shards' owners; retrying");
                    failing = true;
                }
                continue;
            }
        };
        *lock(&ctx.state.owners) = view.owners.clone();
        let live = view.members.len().max(1) as u32;
        let rank = view
            .members
            .iter()
            .position(|m| *m == me.id)
            .map_or(live - 1, |p| p as u32);
        let share = shards.div_ceil(live);
        let now = Instant::now();
        for k in 0..shards {
            if view.owners.contains_key(&k) {
                unowned_since.remove(&k);
            } else {
                unowned_since.entry(k).or_insert(now);
            }
        }
        if registered_rounds <= SETTLE_ROUNDS {
            continue;
        }
        // Campaign: the shards this controller is preferred for first, then the others once
        // they have had no owner for a lease TTL.
        let mut order: Vec<u32> = (0..shards).collect();
        order.sort_by_key(|k| (k % live != rank, *k));
        for k in order {
            if running.len() as u32 >= share {
                break;
            }
            if view.owners.contains_key(&k) || running.contains_key(&k) {
                continue;
            }
            let preferred = k % live == rank;
            let waited = unowned_since
                .get(&k)
                .is_some_and(|t| now.duration_since(*t) >= ttl);
            if !preferred && !waited {
                continue;
            }
            let session =
                match Session::start(ctx.client.clone(), Keys::shard(&ctx.prefix, k), ttl).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(shard = k, error = %e, "cannot get a lease for the shard");
                        continue;
                    }
                };
            match session.try_campaign(&me).await {
                Ok(Some(fence)) => {
                    info!(shard = k, fence, "won the shard; loading its state");
                    let stop = local.child_token();
                    let h = tokio::spawn(run_shard(k, session, fence, ctx.clone(), stop.clone()));
                    running.insert(k, (stop, h));
                }
                Ok(None) => session.resign().await,
                Err(e) => {
                    warn!(shard = k, error = %e, "campaign for the shard failed");
                    session.resign().await;
                }
            }
        }
        // Hand one shard back when this controller has owned more than its share for a while
        // (another controller joined): the one it is least preferred for.
        over = if running.len() as u32 > share {
            over + 1
        } else {
            0
        };
        if over >= OVER_ROUNDS {
            over = 0;
            let pick = running
                .keys()
                .copied()
                .max_by_key(|k| (k % live != rank, *k));
            if let Some(k) = pick {
                info!(
                    shard = k,
                    share, "owning more than this controller's share: handing the shard back"
                );
                if let Some((stop, h)) = running.remove(&k) {
                    stop.cancel();
                    let _ = h.await;
                }
            }
        }
    }
    for (stop, _) in running.values() {
        stop.cancel();
    }
    for (_, (_, h)) in running {
        let _ = h.await;
    }
    if let Some(m) = member {
        m.resign().await;
    }
    let _ = server.await;
    info!("stopped; shards handed back");
    Ok(())
}

/// Runs shard `k` while this controller holds it: its engine and tasks (as a leader's), its
/// budget slots, and the watch on its lease. Hands the shard back (revokes the lease) at the
/// end, whether asked to stop or the lease was lost.
async fn run_shard(k: u32, session: Session, fence: i64, ctx: Arc<Ctx>, stop: CancellationToken) {
    let guard = session.guard();
    let keys = Keys::shard(&ctx.prefix, k);
    let fleet_max = ctx.cfg.budget.max_concurrent;
    // The slots the shard holds already (its running workflows' and the previous owner's).
    let held = match etcd_store::read_budget(&ctx.client, &ctx.budget_key(), ctx.ttl).await {
        Ok((m, _)) => m.get(&k).copied().unwrap_or(0),
        Err(e) => {
            warn!(shard = k, error = %e, "cannot read the budget; handing the shard back");
            session.resign().await;
            return;
        }
    };
    let mut scfg = ctx.cfg.for_shard(k);
    scfg.budget.max_concurrent = held.min(fleet_max);
    let retention = &ctx.cfg.retention;
    let store = Store::Etcd(Box::new(EtcdStore::leader(
        ctx.client.clone(),
        keys.clone(),
        fence,
        guard.clone(),
        ctx.ttl,
        retention.events,
        retention.workflows,
    )));
    let reader = Store::Etcd(Box::new(EtcdStore::reader(
        ctx.client.clone(),
        keys.clone(),
        ctx.ttl,
    )));
    let local = stop.child_token();
    let started = start_leading(
        &ctx.opts,
        Arc::new(scfg),
        store,
        reader,
        guard.clone(),
        local.clone(),
        ctx.state.connections.clone(),
        Some(k),
    )
    .await;
    let mut leading = match started {
        Ok(l) => l,
        Err(e) => {
            warn!(shard = k, error = %rejuv_core::error_chain(e.as_ref()), "cannot take over the shard; handing it back");
            local.cancel();
            session.resign().await;
            return;
        }
    };
    let compactor = (k == 0 && !ctx.cfg.store.compact_every.is_zero()).then(|| {
        tokio::spawn(etcd_store::compact_history(
            ctx.client.clone(),
            ctx.cfg.store.compact_every,
            guard.clone(),
            local.clone(),
            keys.clone(),
        ))
    });
    lock(&ctx.state.owned).insert(
        k,
        Owned {
            app: leading.app.clone(),
            guard: guard.clone(),
        },
    );
    info!(shard = k, slots = held, "running the shard");
    let budget = Budget {
        shard: k,
        ctx: ctx.clone(),
        keys: keys.clone(),
        fence,
        max: fleet_max,
        held,
        bound: held.min(fleet_max),
    };
    let lost = tokio::select! {
        r = budget.run(leading.tx.clone(), leading.published.clone(), local.clone()) => r,
        r = crate::ha::watch_lease(&guard, &local) => r,
    };
    lock(&ctx.state.owned).remove(&k);
    local.cancel();
    leading.join().await;
    if let Some(c) = compactor {
        let _ = c.await;
    }
    session.resign().await;
    match lost {
        Some(reason) => warn!(shard = k, reason = %reason, "lost the shard: stopped its tasks"),
        None => info!(shard = k, "handed the shard back"),
    }
}

/// A shard's slots of the fleet's budget, kept equal to its demand as far as the fleet's
/// `max_concurrent` allows. Order keeps the bound safe: slots are taken in etcd before the
/// engine may use them, and the engine is bound lower before they are given back.
struct Budget {
    shard: u32,
    ctx: Arc<Ctx>,
    keys: Keys,
    fence: i64,
    max: u32,
    /// Slots held in etcd.
    held: u32,
    /// The engine's bound (never above `held`).
    bound: u32,
}

/// Workflows a shard runs (unforced: forced ones and failovers pass the budget) and the
/// servers waiting for a slot.
fn demand(p: &Published) -> u32 {
    let c = &p.cluster;
    let running = c.workflows.values().filter(|w| !w.forced).count() as u32;
    running + c.waiting_for_budget()
}

impl Budget {
    /// Until `stop` (`None`) or until the shard is lost (`Some(reason)`).
    async fn run(
        mut self,
        tx: mpsc::Sender<Msg>,
        published: watch::Receiver<Published>,
        stop: CancellationToken,
    ) -> Option<String> {
        let mut tick = tokio::time::interval(BUDGET_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tick.tick() => {}
            }
            let want = demand(&published.borrow()).min(self.max);
            match self.step(want, &tx).await {
                Ok(true) => return None,
                Ok(false) => failing = false,
                Err(StoreError::Etcd(EtcdError::Fenced)) => {
                    return Some(
                        "a fenced budget write failed: another controller owns the shard".into(),
                    )
                }
                Err(e) => {
                    if !failing {
                        warn!(shard = self.shard, error = %e, "cannot adjust the shard's budget slots; retrying");
                        failing = true;
                    }
                }
            }
        }
    }

    /// One adjustment towards `want`; `Ok(true)`: the engine is gone.
    async fn step(&mut self, want: u32, tx: &mpsc::Sender<Msg>) -> Result<bool, StoreError> {
        if want > self.held {
            self.held = self.set(want).await?;
        }
        let bound = want.min(self.held);
        if bound != self.bound {
            let (reply, answer) = oneshot::channel();
            if tx
                .send(Msg::BudgetSlots {
                    slots: bound,
                    reply,
                })
                .await
                .is_err()
            {
                return Ok(true);
            }
            let Ok(b) = answer.await else {
                return Ok(true);
            };
            self.bound = b;
        }
        if self.bound < self.held {
            self.held = self.set(self.bound).await?;
        }
        Ok(false)
    }

    async fn set(&self, want: u32) -> Result<u32, StoreError> {
        let key = self.ctx.budget_key();
        let b = etcd_store::ShardBudget {
            client: &self.ctx.client,
            keys: &self.keys,
            budget_key: &key,
            shard: self.shard,
            fence: self.fence,
            ttl: self.ctx.ttl,
        };
        etcd_store::set_budget_slots(&b, want, self.max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_parameter_is_read_from_the_query() {
        let req = |uri: &str| {
            Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(shard_param(&req("/v1/status")), Ok(None));
        assert_eq!(shard_param(&req("/v1/status?shard=2")), Ok(Some(2)));
        assert_eq!(shard_param(&req("/v1/events?after=3&shard=1")), Ok(Some(1)));
        assert!(shard_param(&req("/v1/status?shard=x")).is_err());
        assert_eq!(owned_header(&[0, 2]), "0,2");
        let stripped = without_shard_param(req("/v1/instances/i/logs?shard=1&tail=10"));
        assert_eq!(stripped.uri().to_string(), "/v1/instances/i/logs?tail=10");
        let stripped = without_shard_param(req("/v1/status?shard=1"));
        assert_eq!(stripped.uri().to_string(), "/v1/status");
    }
}
