//! The controller's HTTP API: status, events, explanations, operator actions, metrics.
//!
//! Every route but `/healthz` and the dashboard page needs `Authorization: Bearer <api token>`,
//! checked before anything else of the request is read (its query, its body): a request
//! without it costs the controller its headers alone. Bodies are bounded ([`MAX_BODY`]); a body
//! must be a JSON object; `x-rejuv-actor` must be a plain name ([`actor`]). Operator actions are
//! parsed into [`OperatorCommand`]s and sent to the engine, the single owner of the state; one
//! that does not fit the current state gets `409` with the reason. The routes, their requests
//! and their answers are the types of [`rejuv_core::wire`].

use crate::engine::{Msg, Published};
use crate::history::SharedHistory;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rejuv_core::cluster::{OperatorCommand, ServerState};
use rejuv_core::config::Config;
use rejuv_core::config::TokenRole;
use rejuv_core::wire::{
    Accepted, ApiError, EventsQuery, Explain, History, InstanceView, MaintenanceRequest,
    RejuvenateQuery, ServerView, Status,
};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Clone)]
pub struct ApiState {
    pub cfg: Arc<Config>,
    /// The file `POST /v1/reload` reads again.
    pub config_path: Option<std::path::PathBuf>,
    /// Reads instances' output through their agents (`rejuv logs`).
    pub agents: crate::agent_client::AgentClient,
    pub token: Arc<String>,
    /// Named operator tokens: (name, token).
    pub operators: Arc<Vec<(String, String, TokenRole)>>,
    pub published: watch::Receiver<Published>,
    /// Recent readings per server (the engine writes them).
    pub history: SharedHistory,
    pub tx: mpsc::Sender<Msg>,
    pub store: Arc<Mutex<Store>>,
    /// A file holding a one-time code that `POST /v1/session` exchanges for the API token
    /// (the demo's dashboard link), valid while the file exists.
    pub session_code_file: Option<std::path::PathBuf>,
    /// The API listener's connections, for `/metrics`.
    pub connections: Arc<rejuv_net::ConnectionStats>,
    /// The controller's TLS, for the certificates' expiry on `/metrics`.
    pub tls: Option<Arc<rejuv_net::tls::Tls>>,
    /// The join token (`join.token_file`) that `POST /v1/join` requires; none: joining is off.
    pub join_token: Option<Arc<String>>,
}

/// Largest request body (bytes): maintenance's `{"on": true}` is a few bytes, a join request
/// a few hundred.
pub const MAX_BODY: usize = 4096;

/// Longest `x-rejuv-actor` name.
const MAX_ACTOR: usize = 64;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(get_status))
        .route("/v1/events", get(events))
        .route("/v1/workflows", get(workflows))
        .route("/v1/servers/{id}/explain", get(explain))
        .route("/v1/servers/{id}/history", get(history))
        .route("/v1/servers/{id}/rejuvenate", post(rejuvenate))
        .route("/v1/servers/{id}/maintenance", post(maintenance))
        .route("/v1/servers/pending", get(pending_joins))
        .route("/v1/servers/{id}/approve", post(approve))
        .route("/v1/servers/{id}/remove", post(remove))
        .route("/v1/pause", post(pause))
        .route("/v1/reload", post(reload))
        .route("/v1/instances/{id}/logs", get(instance_logs))
        .route("/v1/cancel/{id}", post(cancel))
        .route("/v1/resume", post(resume))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/healthz", get(|| async { "ok" }))
        // The dashboard page itself carries no data; its calls to the API carry the token.
        .route("/ui", get(ui))
        .route("/v1/session", post(session))
        // Agents that join carry the join token, not an operator's.
        .route("/v1/join", post(join))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The token check, before the handler's extractors read the query or the body; then the
/// actor header's check, for every request that could be logged with it.
async fn require_token(State(s): State<ApiState>, request: Request, next: Next) -> Response {
    if !authorized(request.headers(), &s) {
        let mut r = err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if let Err(why) = actor_header(request.headers()) {
        return err(StatusCode::BAD_REQUEST, why);
    }
    // Every route behind this check that is not a GET changes something: it needs the
    // `operate` role, and it is audited with its answer.
    if request.method() == axum::http::Method::GET {
        return next.run(request).await;
    }
    let who = actor(request.headers(), &s);
    let from = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "?".to_string(), |c| c.0.to_string());
    let what = format!("{} {}", request.method(), request.uri().path());
    let response = match role(request.headers(), &s) {
        (name, TokenRole::Read) => err(
            StatusCode::FORBIDDEN,
            format!(
                "the token of {} has the read role; {what} needs the operate role",
                name.unwrap_or_else(|| "this operator".into())
            ),
        ),
        (_, TokenRole::Operate) => next.run(request).await,
    };
    let event = rejuv_core::cluster::LogEvent {
        at_ms: crate::engine::wall_ms(),
        kind: rejuv_core::cluster::EventKind::Audit,
        server: None,
        workflow: None,
        message: format!(
            "{who} from {from}: {what} -> {}",
            response.status().as_u16()
        ),
        level: None,
    };
    let _ = s.tx.try_send(Msg::Audit(event));
    response
}

/// The role of the token a request carries (the shared API token operates), with the
/// operator's name if it is a named token.
fn role(headers: &HeaderMap, s: &ApiState) -> (Option<String>, TokenRole) {
    let header = bearer(headers);
    match s
        .operators
        .iter()
        .find(|(_, t, _)| rejuv_core::digest::bearer_matches(header, t))
    {
        Some((name, _, role)) => (Some(name.clone()), *role),
        None => (None, TokenRole::Operate),
    }
}

/// `x-rejuv-actor`, if sent: 1 to 64 letters, digits, `-`, `_`, `.`, `@` or `+`, so that no
/// name can pass for another kind of actor in the event log ("alice (operator token alice)").
fn actor_header(headers: &HeaderMap) -> Result<Option<&str>, String> {
    let Some(v) = headers.get("x-rejuv-actor") else {
        return Ok(None);
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_ACTOR
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@+".contains(c))
    };
    match v.to_str() {
        Ok(name) if plain(name) => Ok(Some(name)),
        _ => Err(format!(
            "header x-rejuv-actor: must be 1 to {MAX_ACTOR} letters, digits, '-', '_', '.', '@' or '+'"
        )),
    }
}

/// A query string the route's type reads, or what is wrong with it (answered 400).
fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, String> {
    q.map(|Query(q)| q)
        .map_err(|e| format!("query string: {}", e.body_text()))
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Whether the request carries the shared API token or a named operator's token.
fn authorized(headers: &HeaderMap, s: &ApiState) -> bool {
    let header = bearer(headers);
    rejuv_core::digest::bearer_matches(header, &s.token)
        || s.operators
            .iter()
            .any(|(_, t, _)| rejuv_core::digest::bearer_matches(header, t))
}

/// Who asked, for the event log: the named operator whose token was used, or, with the shared
/// token, the name in `x-rejuv-actor`.
fn actor(headers: &HeaderMap, s: &ApiState) -> String {
    let header = bearer(headers);
    if let Some((name, _, _)) = s
        .operators
        .iter()
        .find(|(_, t, _)| rejuv_core::digest::bearer_matches(header, t))
    {
        return format!("{name} (operator token {name})");
    }
    match actor_header(headers) {
        Ok(Some(name)) => format!("{name} (api token)"),
        _ => "operator (api token)".into(),
    }
}

macro_rules! guard {
    ($s:expr, $h:expr) => {
        if !authorized(&$h, &$s) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    };
}

/// The status answer: the published cluster, one row per server with its latest sample.
pub fn status(cfg: &Config, p: &Published) -> Status {
    let c = &p.cluster;
    let servers = c
        .servers
        .values()
        .map(|s| {
            let sample = p.samples.get(&s.id);
            let obs = s.observation.as_ref();
            let seen = |i: &rejuv_core::cluster::Instance| obs.and_then(|o| o.instances.get(&i.id));
            let has_workflow = c.workflows.values().any(|w| w.server == s.id);
            ServerView {
                removing: s.removing,
                queued_request: s.manual_request.filter(|_| !has_workflow).map(|force| {
                    if force {
                        "rejuvenate --force"
                    } else {
                        "rejuvenate"
                    }
                    .to_string()
                }),
                id: s.id.clone(),
                role: s.role,
                // Out of service because an operator said so is not a failure: an evacuated
                // server in maintenance reads `maintenance`.
                state: if s.maintenance && matches!(s.state, ServerState::Failed { .. }) {
                    "maintenance".to_string()
                } else {
                    s.state.name().to_string()
                },
                on_list: s.on_list(),
                maintenance: s.maintenance,
                reachable: obs.is_some_and(|o| o.reachable),
                judgement: s.judgement,
                explanation: s.explanation.clone(),
                blocked_reason: s.blocked_reason.clone(),
                capacity: s.capacity,
                reserved_by: s.reserved_by,
                running_time_s: obs.filter(|o| o.reachable).map(|o| o.running_time_s),
                load1: obs.filter(|o| o.reachable).map(|o| o.load1),
                instances_rss_bytes: sample.map_or(0, |x| {
                    x.sample.instances.values().map(|i| i.rss_bytes).sum()
                }),
                memory_budget_bytes: cfg.server(&s.id).and_then(|x| x.memory_budget_bytes),
                crashes_total: obs.map_or(0, |o| o.crashes_total),
                instances: c
                    .instances
                    .values()
                    .filter(|i| i.server == s.id)
                    .map(|i| InstanceView {
                        id: i.id.clone(),
                        service: i.service.clone(),
                        addr: i.addr,
                        healthy: i.healthy,
                        traffic: i.traffic,
                        rss_bytes: sample
                            .and_then(|x| x.sample.instances.get(&i.id))
                            .map(|x| x.rss_bytes),
                        restarts: seen(i).map_or(0, |o| o.crashes),
                        last_exit: seen(i).and_then(|o| o.last_exit.clone()),
                    })
                    .collect(),
            }
        })
        .collect();
    Status {
        cluster: cfg.cluster.name.clone(),
        mode: c.mode,
        epoch: p.epoch,
        paused: c.paused,
        available_capacity: c.available_capacity(),
        servers,
        workflows: c.workflows.values().cloned().collect(),
        history: c.history.clone(),
        routes: c.routes.clone(),
        completed_total: c.completed_total,
        rolled_back_total: c.rolled_back_total,
        failed_total: c.failed_total,
        store: p.store.clone(),
    }
}

/// `answer` as JSON with its keys sorted at every level, as the status and explain answers
/// have always been written (a `curl` diffed against an earlier one shows only what changed).
fn sorted_json(answer: &impl Serialize) -> Response {
    match serde_json::to_value(answer) {
        Ok(v) => Json(v).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_status(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    let p = s.published.borrow().clone();
    match sorted_status_json(status(&p.config, &p)) {
        Ok(body) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The status as [`sorted_json`] writes it, byte for byte, but one server at a time: the
/// document tree of a whole large fleet (10,000 servers: ~100 MB) is never held at once.
fn sorted_status_json(mut st: Status) -> serde_json::Result<Vec<u8>> {
    let servers = std::mem::take(&mut st.servers);
    let top = serde_json::to_value(&st)?;
    let serde_json::Value::Object(top) = top else {
        return serde_json::to_vec(&top);
    };
    let mut out = Vec::with_capacity(1024 + 1024 * servers.len());
    out.push(b'{');
    for (i, (key, value)) in top.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key)?;
        out.push(b':');
        if key == "servers" {
            out.push(b'[');
            for (j, server) in servers.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                // Each server's keys sorted as the whole document's are.
                serde_json::to_writer(&mut out, &serde_json::to_value(server)?)?;
            }
            out.push(b']');
        } else {
            serde_json::to_writer(&mut out, value)?;
        }
    }
    out.push(b'}');
    Ok(out)
}

async fn events(
    State(s): State<ApiState>,
    h: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    guard!(s, h);
    let q = match query(q) {
        Ok(q) => q,
        Err(why) => return err(StatusCode::BAD_REQUEST, why),
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let store = s.store.lock().expect("store lock");
    let r = match q.after {
        Some(after) => store.events(after, limit),
        None => store.recent_events(limit),
    };
    match r {
        Ok(ev) => Json(ev).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn workflows(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    let store = s.store.lock().expect("store lock");
    match store.finished_workflows(200) {
        Ok(w) => Json(w).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn explain(State(s): State<ApiState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    let p = s.published.borrow().clone();
    let Some(server) = p.cluster.servers.get(&id) else {
        return err(StatusCode::NOT_FOUND, format!("no server named '{id}'"));
    };
    let wf = p
        .cluster
        .workflows
        .values()
        .find(|w| w.server == id || w.target == id);
    let last = p.cluster.history.iter().rev().find(|w| w.server == id);
    sorted_json(&Explain {
        id: id.clone(),
        role: server.role,
        state: server.state.clone(),
        judgement: server.judgement,
        explanation: server.explanation.clone(),
        blocked_reason: server.blocked_reason.clone(),
        workflow: wf.cloned(),
        last_workflow: last.cloned(),
    })
}

/// `GET /v1/servers/{id}/history`: the readings the controller holds (the last hour, bounded;
/// see [`crate::history`]).
async fn history(State(s): State<ApiState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    let p = s.published.borrow().clone();
    if !p.cluster.servers.contains_key(&id) {
        return err(StatusCode::NOT_FOUND, format!("no server named '{id}'"));
    }
    let points = s
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .points(&id);
    let memory_budget_bytes = p
        .config
        .server(&id)
        .and_then(|x| x.memory_budget_bytes)
        .or_else(|| {
            p.samples
                .get(&id)
                .map(|x| x.sample.mem_total_bytes)
                .filter(|t| *t > 0)
        });
    Json(History {
        id,
        now_ms: crate::engine::wall_ms(),
        memory_budget_bytes,
        points,
    })
    .into_response()
}

async fn send_op(s: &ApiState, by: String, command: OperatorCommand) -> Response {
    let (reply, rx) = oneshot::channel();
    if s.tx
        .send(Msg::Operator { by, command, reply })
        .await
        .is_err()
    {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(())) => (StatusCode::ACCEPTED, Json(Accepted { accepted: true })).into_response(),
        Ok(Err(refusal)) => err(StatusCode::CONFLICT, refusal.to_string()),
        Err(_) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        ),
    }
}

async fn rejuvenate(
    State(s): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<RejuvenateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    guard!(s, h);
    let q = match query(q) {
        Ok(q) => q,
        Err(why) => return err(StatusCode::BAD_REQUEST, why),
    };
    send_op(
        &s,
        actor(&h, &s),
        OperatorCommand::Rejuvenate {
            server: id,
            force: q.force,
        },
    )
    .await
}

async fn maintenance(
    State(s): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    guard!(s, h);
    let bad = |why: String| {
        err(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"on\": true|false}}: {why}"),
        )
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return err(
                e.status(),
                format!("body: {} (at most {MAX_BODY} bytes)", e.body_text()),
            )
        }
    };
    // Serde takes `[true]` for a struct of one field; an answer is an object or nothing.
    let b: MaintenanceRequest = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v @ serde_json::Value::Object(_)) => match serde_json::from_value(v) {
            Ok(b) => b,
            Err(e) => return bad(e.to_string()),
        },
        Ok(_) => return bad("not a JSON object".into()),
        Err(e) => return bad(e.to_string()),
    };
    send_op(
        &s,
        actor(&h, &s),
        OperatorCommand::Maintenance {
            server: id,
            on: b.on,
        },
    )
    .await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    offset: Option<u64>,
    tail: Option<u64>,
}

/// `GET /v1/instances/{id}/logs?offset=N|tail=B`: a piece of an instance's output, read
/// through the agent of the server it runs on (`rejuv logs`).
async fn instance_logs(
    State(s): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    guard!(s, h);
    let q = match query(q) {
        Ok(q) => q,
        Err(why) => return err(StatusCode::BAD_REQUEST, why),
    };
    let p = s.published.borrow().clone();
    let Some(server) = p.cluster.instances.get(&id).map(|i| i.server.clone()) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("no instance named '{id}' runs in the cluster"),
        );
    };
    let Some(addr) = p.config.server(&server).map(|c| c.agent) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("no agent address for server '{server}' in the config"),
        );
    };
    let tail = q.tail.unwrap_or(16 << 10);
    match s
        .agents
        .logs(addr, &id, q.offset, tail, std::time::Duration::from_secs(5))
        .await
    {
        Ok(chunk) => Json(chunk).into_response(),
        Err(e) => err(
            StatusCode::BAD_GATEWAY,
            format!("the agent of {server}: {e}"),
        ),
    }
}

/// `POST /v1/cancel/{id}`: withdraws a queued request (server id) or a workflow that has not
/// switched yet (workflow id, or its server's id).
async fn cancel(State(s): State<ApiState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    send_op(&s, actor(&h, &s), OperatorCommand::Cancel { id }).await
}

/// `POST /v1/reload`: reads the controller's config file again and takes it (200 with the
/// changes), or says why not (400: the file is not a valid config; 409: the running cluster
/// cannot take it; nothing of it is applied then).
async fn reload(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    let Some(path) = s.config_path.clone() else {
        return err(
            StatusCode::CONFLICT,
            "this controller was started without a config file to reload",
        );
    };
    let config = match read_config(&path) {
        Ok(c) => c,
        Err(why) => return err(StatusCode::BAD_REQUEST, why),
    };
    match reload_config(&s.tx, actor(&h, &s), config).await {
        Ok(changes) => Json(Reloaded { changes }).into_response(),
        Err(ReloadError::Refused(r)) => err(StatusCode::CONFLICT, r.to_string()),
        Err(ReloadError::Gone) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        ),
    }
}

#[derive(serde::Serialize)]
struct Reloaded {
    changes: Vec<String>,
}

/// Reads and validates the config at `path` (a reload's first half).
pub fn read_config(path: &std::path::Path) -> Result<Config, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub enum ReloadError {
    Refused(rejuv_core::cluster::Refusal),
    Gone,
}

/// Hands a validated config to the engine and waits for its answer.
pub async fn reload_config(
    tx: &tokio::sync::mpsc::Sender<Msg>,
    by: String,
    config: Config,
) -> Result<Vec<String>, ReloadError> {
    let (reply, rx) = oneshot::channel();
    let msg = Msg::Reload {
        by,
        config: Box::new(config),
        reply,
    };
    if tx.send(msg).await.is_err() {
        return Err(ReloadError::Gone);
    }
    match rx.await {
        Ok(Ok(changes)) => Ok(changes),
        Ok(Err(r)) => Err(ReloadError::Refused(r)),
        Err(_) => Err(ReloadError::Gone),
    }
}

/// `POST /v1/join`: an agent asks to join with the join token (never an operator's token,
/// which is refused here as any other wrong one). `202` pending, `200` joined; `400` facts
/// that are wrong, each named; `409` an id or address taken; `404` joining is off.
async fn join(
    State(s): State<ApiState>,
    h: HeaderMap,
    extensions: axum::http::Extensions,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    use crate::engine::JoinError;
    use rejuv_core::config::JoinRefused;
    let Some(token) = s.join_token.as_ref() else {
        return err(
            StatusCode::NOT_FOUND,
            "joining is off: the controller's config has no [join] section",
        );
    };
    if !rejuv_core::digest::bearer_matches(bearer(&h), token) {
        let mut r = err(StatusCode::UNAUTHORIZED, "missing or wrong join token");
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return err(
                e.status(),
                format!("body: {} (at most {MAX_BODY} bytes)", e.body_text()),
            )
        }
    };
    let request: rejuv_core::wire::JoinRequest =
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v @ serde_json::Value::Object(_)) => match serde_json::from_value(v) {
                Ok(r) => r,
                Err(e) => return err(StatusCode::BAD_REQUEST, format!("join request: {e}")),
            },
            Ok(_) => return err(StatusCode::BAD_REQUEST, "join request: not a JSON object"),
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("join request: {e}")),
        };
    let from = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "?".to_string(), |c| c.0.to_string());
    let (reply, rx) = oneshot::channel();
    let msg = Msg::Join {
        request,
        from,
        reply,
    };
    if s.tx.send(msg).await.is_err() {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(answer)) => {
            let status = match answer.state {
                rejuv_core::wire::JoinState::Pending => StatusCode::ACCEPTED,
                rejuv_core::wire::JoinState::Joined => StatusCode::OK,
            };
            (status, Json(answer)).into_response()
        }
        Ok(Err(JoinError::Facts(e @ JoinRefused::Invalid(_)))) => {
            err(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(Err(JoinError::Facts(e @ JoinRefused::Conflict(_)))) => {
            err(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(JoinError::Refused(r))) => err(StatusCode::CONFLICT, r.to_string()),
        Ok(Err(JoinError::Full)) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} join requests wait already: approve or remove some first",
                rejuv_core::config::MAX_PENDING
            ),
        ),
        Err(_) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        ),
    }
}

/// `GET /v1/servers/pending`: the join requests waiting for an operator, by server id.
async fn pending_joins(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    let (reply, rx) = oneshot::channel();
    if s.tx.send(Msg::PendingJoins { reply }).await.is_err() {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        );
    }
    match rx.await {
        Ok(list) => Json(list).into_response(),
        Err(_) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        ),
    }
}

/// `POST /v1/servers/{id}/approve`: lets a waiting server in (`operate` role).
async fn approve(State(s): State<ApiState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    let (reply, rx) = oneshot::channel();
    let by = actor(&h, &s);
    servers_changed(
        &s,
        Msg::Approve {
            server: id,
            by,
            reply,
        },
        rx,
    )
    .await
}

/// `POST /v1/servers/{id}/remove`: drops a waiting join request, or takes a joined server
/// off the list, evacuates and forgets it (`operate` role).
async fn remove(State(s): State<ApiState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    let (reply, rx) = oneshot::channel();
    let by = actor(&h, &s);
    servers_changed(
        &s,
        Msg::Remove {
            server: id,
            by,
            reply,
        },
        rx,
    )
    .await
}

async fn servers_changed(
    s: &ApiState,
    msg: Msg,
    rx: oneshot::Receiver<Result<Vec<String>, crate::engine::ServerError>>,
) -> Response {
    use crate::engine::ServerError;
    if s.tx.send(msg).await.is_err() {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(changes)) => Json(rejuv_core::wire::ServersChanged { changes }).into_response(),
        Ok(Err(ServerError::NotFound(why))) => err(StatusCode::NOT_FOUND, why),
        Ok(Err(ServerError::Refused(why))) => err(StatusCode::CONFLICT, why),
        Err(_) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller is shutting down",
        ),
    }
}

async fn pause(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    send_op(&s, actor(&h, &s), OperatorCommand::Pause).await
}

async fn resume(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    send_op(&s, actor(&h, &s), OperatorCommand::Resume).await
}

/// `POST /v1/session` `{"code": "..."}`: the one-time code of the session code file, once,
/// for the API token (`{"token": "..."}`); the file is removed as the code is used, so a link
/// that leaked (a terminal's scrollback, a log) opens nothing afterwards. `401` otherwise.
async fn session(
    State(s): State<ApiState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let refused = || {
        err(
            StatusCode::UNAUTHORIZED,
            "no such session code (it is used once)",
        )
    };
    let (Some(path), Ok(body)) = (s.session_code_file.as_ref(), body) else {
        return refused();
    };
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return err(StatusCode::BAD_REQUEST, "body must be {\"code\": \"...\"}");
    };
    let Some(code) = m.get("code").and_then(|c| c.as_str()) else {
        return err(StatusCode::BAD_REQUEST, "body must be {\"code\": \"...\"}");
    };
    let Ok(want) = std::fs::read_to_string(path) else {
        return refused();
    };
    let want = want.trim();
    if want.is_empty()
        || !rejuv_core::digest::constant_time_eq(code.as_bytes(), want.as_bytes())
        || std::fs::remove_file(path).is_err()
    {
        return refused();
    }
    tracing::info!("the dashboard's one-time session code was used");
    Json(serde_json::json!({ "token": s.token.as_str() })).into_response()
}

async fn ui() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("ui/index.html"),
    )
        .into_response()
}

async fn metrics(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    let p = s.published.borrow().clone();
    let mut body = crate::metrics::render(&p, &s.connections);
    if let Some(tls) = &s.tls {
        body = rejuv_net::tls::with_metrics(body, tls);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_written_one_server_at_a_time_is_the_sorted_document_byte_for_byte() {
        let p = crate::metrics::tests::busy();
        let st = status(&p.config, &p);
        assert!(st.servers.len() > 1, "a fleet of several servers");
        let whole = serde_json::to_vec(&serde_json::to_value(&st).unwrap()).unwrap();
        let streamed = sorted_status_json(st).unwrap();
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            String::from_utf8(whole).unwrap()
        );
    }
}
