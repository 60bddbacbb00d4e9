//! The data path: one listener per service (bounded by `rejuv_net`: a connection cap,
//! header-read and idle timeouts), HTTP/1.1 keep-alive connections from clients, and per
//! request the choice of a backend, the hold, the retries and the streaming of the response
//! back. A request held or being answered is not timed; only a silent client is.
//!
//! Routing is decided per request from the table in force, never per client connection, so a
//! client's keep-alive connection survives any table change. A request is buffered (bodies
//! are small; [`BODY_LIMIT`]) so that it can be sent again when a backend refused the
//! connection or answered with [`NOT_APPLIED_HEADER`].
//!
//! # Guarantees
//!
//! - A request that may have been applied by a backend is never sent to another one, except
//!   an idempotent method (GET, HEAD, OPTIONS) whose backend failed before answering, which
//!   is sent again once.
//! - A request is counted in its backend's `in_flight` from the moment it is dispatched until
//!   its response body has been streamed to the client, or the client went away.

use crate::pool::{self, UpstreamError, UpstreamSender};
use crate::state::{BackendRuntime, ServiceRoutesView, ServiceRuntime, Shared};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use rejuv_core::api::NOT_APPLIED_HEADER;
use rejuv_net::RequestBody;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest request body the proxy buffers (and so forwards); larger ones get a 413.
pub const BODY_LIMIT: usize = 1 << 20;
/// Most times one client request is sent to a backend (retries included).
pub const MAX_ATTEMPTS: u32 = 4;

/// Connection-level headers (RFC 9110 section 7.6.1) that a proxy must not forward.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type BoxError = Box<dyn StdError + Send + Sync>;

/// The front end of one service.
pub struct Front {
    pub shared: Arc<Shared>,
    pub service: Arc<ServiceRuntime>,
    pub shutdown: CancellationToken,
}

/// Serves client connections on `server` (the service's front-end listener, its bounds
/// and counts) until `shutdown`; then stops accepting and returns once the requests in flight
/// are answered (the caller bounds that wait).
///
/// Each client connection may hold a connection to a backend as well, so it counts two file
/// descriptors in the process's budget.
pub async fn serve(server: rejuv_net::Server, front: Arc<Front>) {
    let shutdown = front.shutdown.clone();
    server
        .fds_per_connection(2)
        .serve(
            move |peer| {
                let front = front.clone();
                service_fn(move |req| {
                    let front = front.clone();
                    async move { Ok::<_, Infallible>(front.handle(req, peer).await) }
                })
            },
            shutdown.cancelled_owned(),
        )
        .await;
}

/// Counts one request waiting for a serving backend or for a hold to end.
struct HeldGuard(Arc<ServiceRuntime>);

impl HeldGuard {
    fn new(service: &Arc<ServiceRuntime>) -> Self {
        service.held.fetch_add(1, Ordering::SeqCst);
        Self(service.clone())
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one request in flight to a backend; dropping it (response done, client gone,
/// attempt failed) ends the count.
struct FlightGuard(Arc<BackendRuntime>);

impl FlightGuard {
    fn new(backend: &Arc<BackendRuntime>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(backend.clone())
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The parts of a client request needed to send it (again) to a backend.
struct Outgoing {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Outgoing {
    fn new(parts: http::request::Parts, body: Bytes, peer: SocketAddr) -> Self {
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The body is sent whole, so the client's framing and expectations do not apply.
        headers.remove(header::EXPECT);
        headers.remove(header::CONTENT_LENGTH);
        if !body.is_empty() || parts.method == Method::POST || parts.method == Method::PUT {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        append_forwarded_for(&mut headers, peer);
        let uri = parts
            .uri
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
        Self {
            method: parts.method,
            uri,
            headers,
            body,
        }
    }

    fn idempotent(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    fn build(&self, backend: SocketAddr) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        if !req.headers().contains_key(header::HOST) {
            // An HTTP/1.0 client may omit Host; HTTP/1.1 requires it towards the backend.
            if let Ok(host) = HeaderValue::from_str(&backend.to_string()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        req
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical().to_string();
    let prior: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

/// An error with its causes, for a log line or a 502 body.
use rejuv_core::error_chain as chain;

impl Front {
    async fn handle(&self, req: Request<RequestBody>, peer: SocketAddr) -> Response<ProxyBody> {
        self.service.requests_total.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > BODY_LIMIT as u64) {
            return too_large();
        }
        let body = match Limited::new(body, BODY_LIMIT).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Err(e) => {
                return local(
                    StatusCode::BAD_REQUEST,
                    format!("rejuv-proxy: could not read the request body: {e}"),
                )
            }
        };
        self.dispatch(Outgoing::new(parts, body, peer)).await
    }

    /// Sends `req` to a serving backend, waiting, retrying and failing over as the module
    /// documentation says.
    async fn dispatch(&self, req: Outgoing) -> Response<ProxyBody> {
        let name = &self.service.name;
        let mut routes = self.shared.subscribe();
        // Backends this request must not be sent to again.
        let mut tried: Vec<Arc<BackendRuntime>> = Vec::new();
        let mut attempts = 0;
        let mut resent_after_failure = false;
        let mut last_failure: Option<(StatusCode, String)> = None;
        let mut deadline: Option<Instant> = None;
        let mut held: Option<HeldGuard> = None;
        loop {
            let snapshot = routes.borrow_and_update().clone();
            let Some(view) = snapshot.services.get(name) else {
                return self.fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("rejuv-proxy: no route for service {name}"),
                );
            };
            let Some(flight) = self.pick(view, &tried) else {
                let until = *deadline.get_or_insert_with(|| Instant::now() + view.max_hold);
                held.get_or_insert_with(|| HeldGuard::new(&self.service));
                tokio::select! {
                    changed = routes.changed() => {
                        if changed.is_err() {
                            return self.fail(StatusCode::SERVICE_UNAVAILABLE, "rejuv-proxy: shutting down".into());
                        }
                        continue;
                    }
                    () = self.shutdown.cancelled() => {
                        return self.fail(StatusCode::SERVICE_UNAVAILABLE, "rejuv-proxy: shutting down".into());
                    }
                    () = tokio::time::sleep_until(until) => {
                        let waited = view.max_hold.as_millis();
                        return match last_failure {
                            Some((status, why)) => self.fail(status, format!("rejuv-proxy: {why}; no other backend within {waited} ms")),
                            None => self.fail(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("rejuv-proxy: no serving backend for service {name} within {waited} ms"),
                            ),
                        };
                    }
                }
            };
            held = None;
            attempts += 1;
            let backend = flight.0.clone();
            backend.requests_total.fetch_add(1, Ordering::Relaxed);
            let mut sent =
                pool::send(&backend.pool, backend.addr, req.build(backend.addr), false).await;
            if sent.as_ref().is_err_and(UpstreamError::stale_pooled) {
                sent = pool::send(&backend.pool, backend.addr, req.build(backend.addr), true).await;
            }
            match sent {
                Ok((response, sender)) => {
                    if response.headers().contains_key(NOT_APPLIED_HEADER)
                        && attempts < MAX_ATTEMPTS
                    {
                        tracing::debug!(service = %name, backend = %backend.id, "backend did not apply the request; sending it elsewhere");
                        last_failure = Some((
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("backend {} did not apply the request", backend.id),
                        ));
                        tried.push(backend);
                        continue;
                    }
                    if response.status().is_server_error() {
                        backend.errors_total.fetch_add(1, Ordering::Relaxed);
                    }
                    return self.respond(response, flight, sender);
                }
                Err(e) => {
                    backend.errors_total.fetch_add(1, Ordering::Relaxed);
                    let why = chain(&e);
                    tracing::warn!(service = %name, backend = %backend.id, error = %why, "upstream request failed");
                    drop(flight);
                    tried.push(backend);
                    if e.was_sent() {
                        if !req.idempotent() || resent_after_failure {
                            return self
                                .fail(StatusCode::BAD_GATEWAY, format!("rejuv-proxy: {why}"));
                        }
                        resent_after_failure = true;
                    }
                    if attempts >= MAX_ATTEMPTS {
                        return self.fail(StatusCode::BAD_GATEWAY, format!("rejuv-proxy: {why}"));
                    }
                    last_failure = Some((StatusCode::BAD_GATEWAY, why));
                }
            }
        }
    }

    /// Chooses the next serving backend round-robin and counts the request in its flight, or
    /// `None` if the service is on hold or has no serving backend left to try.
    fn pick(&self, view: &ServiceRoutesView, tried: &[Arc<BackendRuntime>]) -> Option<FlightGuard> {
        let eligible =
            |b: &&Arc<BackendRuntime>| b.is_serving() && !tried.iter().any(|t| Arc::ptr_eq(t, b));
        loop {
            if self.service.hold.load(Ordering::SeqCst) {
                return None;
            }
            let count = view.backends.iter().filter(eligible).count();
            if count == 0 {
                return None;
            }
            let turn = self.service.next.fetch_add(1, Ordering::Relaxed) % count;
            let Some(backend) = view.backends.iter().filter(eligible).nth(turn) else {
                continue;
            };
            let flight = FlightGuard::new(backend);
            // Count first, check after: a table applied between our look and our count is
            // seen here, and one applied after sees our count (see `state`'s guarantees).
            if backend.is_serving() && !self.service.hold.load(Ordering::SeqCst) {
                return Some(flight);
            }
        }
    }

    fn respond(
        &self,
        response: Response<Incoming>,
        flight: FlightGuard,
        sender: UpstreamSender,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Response::from_parts(
            parts,
            ProxyBody::Upstream(UpstreamBody {
                inner: body,
                flight: Some(flight),
                sender: Some(sender),
                service: self.service.clone(),
            }),
        )
    }

    fn fail(&self, status: StatusCode, message: String) -> Response<ProxyBody> {
        self.service.failed_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(service = %self.service.name, %status, %message, "answering with an error");
        local(status, message)
    }
}

fn too_large() -> Response<ProxyBody> {
    let mut response = local(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("rejuv-proxy: request bodies are limited to {BODY_LIMIT} bytes"),
    );
    // The rest of the body is still on the connection, unread.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn local(status: StatusCode, mut message: String) -> Response<ProxyBody> {
    message.push('\n');
    let mut response = Response::new(ProxyBody::Local(Full::new(Bytes::from(message))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response body: the proxy's own, or a backend's streamed through.
pub enum ProxyBody {
    Local(Full<Bytes>),
    Upstream(UpstreamBody),
}

/// A backend's response body on its way to the client. It ends the request's flight when the
/// body ends or is dropped, and gives the connection back to the pool if the body ended.
pub struct UpstreamBody {
    inner: Incoming,
    flight: Option<FlightGuard>,
    sender: Option<UpstreamSender>,
    service: Arc<ServiceRuntime>,
}

impl UpstreamBody {
    fn finish(&mut self, ended: bool) {
        if let (Some(sender), Some(flight)) = (self.sender.take(), self.flight.as_ref()) {
            if ended {
                flight.0.release(sender);
            }
        }
        self.flight = None;
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that was empty from the start (HEAD, 204, 304) is never polled.
        let ended = self.inner.is_end_stream();
        self.finish(ended);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ProxyBody::Upstream(up) => match Pin::new(&mut up.inner).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => {
                    up.finish(true);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(flight) = &up.flight {
                        flight.0.errors_total.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(backend = %flight.0.id, error = %e, "upstream response body failed");
                    }
                    up.service.failed_total.fetch_add(1, Ordering::Relaxed);
                    up.finish(false);
                    Poll::Ready(Some(Err(e.into())))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(full) => full.is_end_stream(),
            ProxyBody::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(full) => full.size_hint(),
            ProxyBody::Upstream(up) => up.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn forwarded_for_is_appended_to_what_the_client_sent() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "10.0.0.9:4000".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9");
        headers.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        append_forwarded_for(&mut headers, "[::ffff:10.0.0.7]:1".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9, 1.2.3.4, 10.0.0.7");
    }
}
