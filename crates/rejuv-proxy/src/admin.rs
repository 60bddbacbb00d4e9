//! The admin API the controller talks to (table at the top of `rejuv_core::api`): it pushes
//! the desired route table and polls the status, whose in-flight counts tell it when a drain
//! has finished. Every route but `/healthz` needs `Authorization: Bearer <token>`.

use crate::state::Shared;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use rejuv_core::api::{ApiError, RouteTable};
use std::sync::Arc;

/// The admin router over `shared`, guarded by `token`.
pub fn router(shared: Arc<Shared>, token: String) -> Router {
    let token: Arc<str> = token.into();
    Router::new()
        .route("/v1/routes", put(put_routes))
        .route("/v1/status", get(get_status))
        .route_layer(middleware::from_fn_with_state(token, require_token))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
}

/// `GET /metrics`: the expiry of the admin API's certificates (`rejuv_tls_cert_expiry_seconds`),
/// without a token (it tells no secret); empty without TLS.
pub fn metrics_router(tls: Option<Arc<rejuv_net::tls::Tls>>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let tls = tls.clone();
            async move {
                let text = match &tls {
                    Some(t) => rejuv_net::tls::with_metrics("# EOF\n".to_string(), t),
                    None => "# EOF\n".to_string(),
                };
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn require_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    if bearer_matches(request.headers(), &token) {
        next.run(request).await
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    rejuv_core::digest::bearer_matches(header, token)
}

/// `?shard=K`: the table (or status) of shard K of a sharded fleet (default 0).
#[derive(serde::Deserialize)]
struct ShardQuery {
    #[serde(default)]
    shard: u32,
}

async fn put_routes(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ShardQuery>,
    body: Bytes,
) -> Response {
    let table: RouteTable = match serde_json::from_slice(&body) {
        Ok(table) => table,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("route table: {e}")),
    };
    match shared.apply_shard(q.shard, &table) {
        Ok(status) => Json(status).into_response(),
        Err(e) => {
            tracing::warn!(version = table.version, error = %e, "rejected a route table");
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

async fn get_status(State(shared): State<Arc<Shared>>, Query(q): Query<ShardQuery>) -> Response {
    Json(shared.status_of(q.shard)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_with_the_exact_token_passes() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "t0k"));
        headers.insert(header::AUTHORIZATION, "Basic t0k".parse().unwrap());
        assert!(!bearer_matches(&headers, "t0k"));
        headers.insert(header::AUTHORIZATION, "Bearer t0k".parse().unwrap());
        assert!(bearer_matches(&headers, "t0k"));
    }
}
