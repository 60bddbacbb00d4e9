//! The admin API the controller talks to (table at the top of `rejuv_core::api`): it pushes
//! the desired route table and polls the status, whose in-flight counts tell it when a drain
//! has finished. Every route but `/healthz` needs `Authorization: Bearer <token>`.

use crate::state::Shared;
use axum::body::Bytes;
use axum::extract::{Request, State};
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
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

/// Compares without returning early, so the time taken does not tell how much of a guessed
/// token was right (the length may still show; tokens are long random strings).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

async fn put_routes(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let table: RouteTable = match serde_json::from_slice(&body) {
        Ok(table) => table,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("route table: {e}")),
    };
    match shared.apply(&table) {
        Ok(status) => Json(status).into_response(),
        Err(e) => {
            tracing::warn!(version = table.version, error = %e, "rejected a route table");
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

async fn get_status(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.status()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

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
