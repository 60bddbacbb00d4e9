//! The agent's HTTP API (see the table at the top of [`rejuv_core::api`]).
//!
//! Every route but `/healthz` requires `Authorization: Bearer <agent token>`, compared in
//! constant time; a request without it is answered 401 before anything is parsed or done.
//! Every mutating route checks the controller's epoch first (a lower one is answered 409).
//! Errors are [`ApiError`] bodies.

use crate::actions;
use crate::persist::StoreError;
use crate::shared::Agent;
use crate::supervisor::SupervisorError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rejuv_core::api::{AgentState, ApiError, RejuvenateRequest, StartInstance};
use std::sync::Arc;

/// State hand-off bodies can be much larger than API requests.
const STATE_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// An error answer.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<SupervisorError> for HttpError {
    fn from(e: SupervisorError) -> Self {
        use SupervisorError::*;
        let status = match &e {
            InvalidId { .. } | UnknownService { .. } | NoHandoff { .. } => StatusCode::BAD_REQUEST,
            Conflict { .. } | Busy { .. } | NotServing { .. } => StatusCode::CONFLICT,
            NotFound { .. } => StatusCode::NOT_FOUND,
            NoFreePort { .. } | Backend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Handoff { .. } => StatusCode::BAD_GATEWAY,
            Spawn { .. } | StopIncomplete { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, rejuv_core::error_chain(&e))
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::StaleEpoch { .. } => StatusCode::CONFLICT,
            StoreError::ImplausibleEpoch { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

type Result<T, E = HttpError> = std::result::Result<T, E>;

/// Largest body of a JSON request (start, rejuvenate): they are a few hundred bytes. The
/// instance state route has its own, larger limit.
pub const MAX_REQUEST_BODY: usize = 64 << 10;
/// Most actions one rejuvenation may list; what the agent keeps of a run grows with it.
pub const MAX_ACTIONS: usize = 32;
/// Longest `run_id`.
pub const MAX_RUN_ID: usize = 128;

pub fn router(agent: Arc<Agent>) -> Router {
    let protected = Router::new()
        .route("/v1/state", get(state))
        .route("/v1/samples", get(samples))
        .route(
            "/v1/instances/{id}",
            put(start_instance).delete(stop_instance),
        )
        .route(
            "/v1/instances/{id}/state",
            get(export_state)
                .put(import_state)
                .layer(DefaultBodyLimit::max(STATE_BODY_LIMIT)),
        )
        .route("/v1/instances/{id}/logs", get(instance_logs))
        .route("/v1/rejuvenate", post(rejuvenate))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(middleware::from_fn_with_state(agent.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(protected)
        .with_state(agent)
}

async fn require_token(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(rejuv_core::digest::bearer_token);
    match presented {
        Some(t) if rejuv_core::digest::constant_time_eq(t.as_bytes(), agent.token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => HttpError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response(),
        None => HttpError::new(
            StatusCode::UNAUTHORIZED,
            "missing 'Authorization: Bearer <agent token>'",
        )
        .into_response(),
    }
}

/// The `epoch` query parameter of a mutating request.
fn epoch_param(query: Option<String>) -> Result<u64> {
    let query = query.unwrap_or_default();
    let raw = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "epoch")
        .map(|(_, v)| v)
        .ok_or_else(|| {
            HttpError::new(StatusCode::BAD_REQUEST, "missing query parameter 'epoch'")
        })?;
    raw.parse::<u64>().map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("query parameter 'epoch={raw}': {e}"),
        )
    })
}

/// A request body, or a JSON error saying it is too big (or could not be read).
fn whole(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes> {
    body.map_err(|e| {
        HttpError::new(
            e.status(),
            format!(
                "request body: {} (this route takes at most {limit} bytes)",
                e.body_text()
            ),
        )
    })
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

async fn state(State(agent): State<Arc<Agent>>) -> Json<AgentState> {
    Json(AgentState {
        server_id: agent.server_id.clone(),
        agent_started_at_ms: agent.started_at_ms,
        running_since_ms: agent.store.running_since_ms(),
        epoch: agent.store.epoch(),
        sample: agent.collector.latest(),
        instances: agent.sup.statuses(),
        crashes_total: agent.store.crashes_total(),
        last_rejuvenation: agent.store.last_report().await,
        version: env!("CARGO_PKG_VERSION").to_string(),
        boot_id: agent.boot_id.clone(),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplesQuery {
    /// Only samples taken after this wall-clock time (ms since the epoch).
    #[serde(default)]
    after_ms: u64,
}

/// The samples this agent kept, oldest first (for a controller that takes over).
async fn samples(
    State(agent): State<Arc<Agent>>,
    q: axum::extract::Query<SamplesQuery>,
) -> Json<Vec<rejuv_core::types::Sample>> {
    Json(agent.collector.history(q.after_ms))
}

async fn start_instance(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let req: StartInstance = json_body(&whole(body, MAX_REQUEST_BODY)?)?;
    // Validate before fencing: a request that cannot be carried out changes nothing.
    agent.sup.check_start(&id, &req.service)?;
    agent.store.fence(req.epoch).await?;
    let status = agent.sup.start(&id, &req.service).await?;
    Ok(Json(status).into_response())
}

async fn stop_instance(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let epoch = epoch_param(q)?;
    agent.store.fence(epoch).await?;
    let status = agent.sup.stop(&id).await?;
    Ok(Json(status).into_response())
}

/// `GET /v1/instances/{id}/logs?offset=N&tail=B`: a piece of the instance's output (its log
/// file): from byte `offset`, or its last `tail` bytes (default 16 KiB), at most 256 KiB.
async fn instance_logs(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<crate::supervisor::output::LogChunk>> {
    if !crate::supervisor::valid_instance_id(&id) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("'{id}' is not an instance id"),
        ));
    }
    let mut offset = None;
    let mut tail = 16 << 10;
    let q = q.unwrap_or_default();
    for (k, v) in q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
    {
        let n: u64 = v.parse().map_err(|_| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("{k}={v}: not a byte count"),
            )
        })?;
        match k {
            "offset" => offset = Some(n),
            "tail" => tail = n,
            other => {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter '{other}' (offset, tail)"),
                ))
            }
        }
    }
    let path = agent.sup.log_path(&id);
    crate::supervisor::output::read_chunk(&path, offset, tail)
        .map(Json)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HttpError::new(
                StatusCode::NOT_FOUND,
                format!("no output of instance '{id}' on this server"),
            ),
            _ => HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {e}", path.display()),
            ),
        })
}

async fn export_state(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> Result<Response> {
    let (body, ctype) = agent.sup.export_state(&id).await?;
    let mut headers = HeaderMap::new();
    let ctype = ctype.unwrap_or_else(|| "application/octet-stream".into());
    if let Ok(v) = ctype.parse() {
        headers.insert(header::CONTENT_TYPE, v);
    }
    Ok((headers, body).into_response())
}

async fn import_state(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode> {
    let epoch = epoch_param(q)?;
    let body = whole(body, STATE_BODY_LIMIT)?;
    agent.store.fence(epoch).await?;
    agent.sup.import_state(&id, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rejuvenate(
    State(agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = whole(body, MAX_REQUEST_BODY)?;
    let req: RejuvenateRequest = json_body(&body)?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    if req.run_id.is_empty() || req.run_id.len() > MAX_RUN_ID || !req.run_id.chars().all(plain) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("run_id must be 1 to {MAX_RUN_ID} letters, digits, '-', '_', '.' or ':'"),
        ));
    }
    if req.actions.len() > MAX_ACTIONS {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "actions: {} listed, at most {MAX_ACTIONS} (there are only a few kinds of action)",
                req.actions.len()
            ),
        ));
    }
    if req.keep_instances.len() > rejuv_core::api::MAX_KEEP {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "keep_instances: {} listed, at most {}",
                req.keep_instances.len(),
                rejuv_core::api::MAX_KEEP
            ),
        ));
    }
    agent.store.fence(req.epoch).await?;
    let report = actions::rejuvenate(&agent, req).await?;
    Ok(Json(report).into_response())
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        match &agent.tls {
            Some(tls) => rejuv_net::tls::with_metrics(agent.metrics.encode(), tls),
            None => agent.metrics.encode(),
        },
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_query() {
        assert_eq!(epoch_param(Some("epoch=7".into())).unwrap(), 7);
        assert_eq!(epoch_param(Some("a=1&epoch=9".into())).unwrap(), 9);
        assert!(epoch_param(None).is_err());
        assert!(epoch_param(Some("epoch=x".into())).is_err());
    }
}
