//! The controller's HTTP API: status, events, explanations, operator actions, metrics.
//!
//! Every route but `/healthz` needs `Authorization: Bearer <api token>`. Operator actions are
//! parsed into [`OperatorCommand`]s and sent to the engine, the single owner of the state; one
//! that does not fit the current state gets `409` with the reason. The routes, their requests
//! and their answers are the types of [`rejuv_core::wire`].

use crate::engine::{Msg, Published};
use crate::store::Store;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rejuv_core::cluster::OperatorCommand;
use rejuv_core::config::Config;
use rejuv_core::wire::{
    Accepted, ApiError, EventsQuery, Explain, InstanceView, MaintenanceRequest, RejuvenateQuery,
    ServerView, Status,
};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Clone)]
pub struct ApiState {
    pub cfg: Arc<Config>,
    pub token: Arc<String>,
    /// Named operator tokens: (name, token).
    pub operators: Arc<Vec<(String, String)>>,
    pub published: watch::Receiver<Published>,
    pub tx: mpsc::Sender<Msg>,
    pub store: Arc<Mutex<Store>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // The dashboard page itself carries no data; its calls to the API carry the token.
        .route("/ui", get(ui))
        .route("/v1/status", get(get_status))
        .route("/v1/events", get(events))
        .route("/v1/workflows", get(workflows))
        .route("/v1/servers/{id}/explain", get(explain))
        .route("/v1/servers/{id}/rejuvenate", post(rejuvenate))
        .route("/v1/servers/{id}/maintenance", post(maintenance))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route("/metrics", get(metrics))
        .with_state(state)
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
            .any(|(_, t)| rejuv_core::digest::bearer_matches(header, t))
}

/// Who asked, for the event log: the named operator whose token was used, or, with the shared
/// token, the name in `x-rejuv-actor`.
fn actor(headers: &HeaderMap, s: &ApiState) -> String {
    let header = bearer(headers);
    if let Some((name, _)) = s
        .operators
        .iter()
        .find(|(_, t)| rejuv_core::digest::bearer_matches(header, t))
    {
        return format!("{name} (operator token {name})");
    }
    match headers.get("x-rejuv-actor").and_then(|v| v.to_str().ok()) {
        Some(name) if !name.is_empty() && name.len() <= 64 => format!("{name} (api token)"),
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
            ServerView {
                id: s.id.clone(),
                role: s.role,
                state: s.state.name().to_string(),
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
    sorted_json(&status(&s.cfg, &p))
}

async fn events(State(s): State<ApiState>, h: HeaderMap, q: Query<EventsQuery>) -> Response {
    guard!(s, h);
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
    q: Query<RejuvenateQuery>,
) -> Response {
    guard!(s, h);
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
    body: Result<Json<MaintenanceRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    guard!(s, h);
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"on\": true|false}}: {e}"),
            )
        }
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

async fn pause(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    send_op(&s, actor(&h, &s), OperatorCommand::Pause).await
}

async fn resume(State(s): State<ApiState>, h: HeaderMap) -> Response {
    guard!(s, h);
    send_op(&s, actor(&h, &s), OperatorCommand::Resume).await
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
    let body = crate::metrics::render(&p);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
