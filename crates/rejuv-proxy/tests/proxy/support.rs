//! Test harness: the proxy on 127.0.0.1:0 in this process, tiny hyper backends that count
//! their requests and connections, a raw HTTP/1.1 client for keep-alive checks, and bounded
//! waits. Everything started here stops when its handle is dropped, even on a failed assert.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rejuv_core::api::{
    Backend, BackendState, BackendStatus, ProxyStatus, RouteTable, ServiceRoutes,
    NOT_APPLIED_HEADER,
};
use rejuv_core::config::ListenerLimits;
use rejuv_proxy::{run, ProxyOptions};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-4f1c2a9e";
/// Longest any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs a test body with an overall bound, naming what probably hung.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(v) => v,
        Err(_) => panic!("test timed out after 30 s: {what}"),
    }
}

/// Polls `check` until it returns `Some`, failing the test with `what` after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Aborts a task when dropped.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct TestProxy {
    pub admin: SocketAddr,
    pub services: BTreeMap<String, SocketAddr>,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestProxy {
    pub async fn start(names: &[&str]) -> Self {
        Self::start_with_limits(names, ListenerLimits::front_end(), ListenerLimits::api()).await
    }

    /// A proxy whose front ends and admin API have the given bounds.
    pub async fn start_with_limits(
        names: &[&str],
        front_end_limits: ListenerLimits,
        admin_limits: ListenerLimits,
    ) -> Self {
        let mut listeners = BTreeMap::new();
        let mut services = BTreeMap::new();
        for name in names {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            services.insert(name.to_string(), l.local_addr().unwrap());
            listeners.insert(name.to_string(), l);
        }
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            ProxyOptions {
                services: listeners,
                admin,
                token: TOKEN.to_string(),
                front_end_limits,
                admin_limits,
                tls: None,
            },
            shutdown.clone(),
        ));
        let proxy = Self {
            admin: admin_addr,
            services,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            shutdown,
            task: Some(task),
        };
        let health = format!("http://{admin_addr}/healthz");
        let client = proxy.client.clone();
        wait_for("the proxy's admin API to answer /healthz", || {
            let client = client.clone();
            let health = health.clone();
            async move {
                client
                    .get(&health)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        proxy
    }

    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://{}{path}", self.services[service])
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// PUT a table; answers the status code and the body as JSON.
    pub async fn put_routes(&self, table: &RouteTable) -> (StatusCode, serde_json::Value) {
        let response = self
            .client
            .put(self.admin_url("/v1/routes"))
            .bearer_auth(TOKEN)
            .json(table)
            .send()
            .await
            .expect("PUT /v1/routes");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.json().await.expect("JSON answer"))
    }

    /// PUT a table that must be accepted and put in force.
    pub async fn apply(&self, table: &RouteTable) -> ProxyStatus {
        let (code, body) = self.put_routes(table).await;
        assert_eq!(code, StatusCode::OK, "table rejected: {body}");
        let status: ProxyStatus = serde_json::from_value(body).unwrap();
        assert_eq!(status.version, table.version);
        status
    }

    pub async fn status(&self) -> ProxyStatus {
        self.client
            .get(self.admin_url("/v1/status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /v1/status")
            .error_for_status()
            .expect("status answered")
            .json()
            .await
            .expect("status JSON")
    }

    pub async fn backend_status(&self, service: &str, id: &str) -> Option<BackendStatus> {
        self.status().await.services[service]
            .backends
            .iter()
            .find(|b| b.id == id)
            .cloned()
    }

    /// Polls the status until `check` holds for it.
    pub async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&ProxyStatus) -> bool,
    ) -> ProxyStatus {
        wait_for(what, || async {
            let status = self.status().await;
            check(&status).then_some(status)
        })
        .await
    }

    /// GET through the proxy: status and body.
    pub async fn get(&self, service: &str, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(self.url(service, path))
            .send()
            .await
            .expect("GET through the proxy");
        let code = response.status().as_u16();
        (code, response.text().await.unwrap())
    }

    pub async fn post(&self, service: &str, path: &str, body: &str) -> (u16, String) {
        let response = self
            .client
            .post(self.url(service, path))
            .body(body.to_string())
            .send()
            .await
            .expect("POST through the proxy");
        let code = response.status().as_u16();
        (code, response.text().await.unwrap())
    }

    /// Cancels the proxy and waits (bounded) for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("proxy did not stop within 20 s of shutdown")
            .expect("proxy task panicked")
    }

    pub fn take_task(&mut self) -> JoinHandle<anyhow::Result<()>> {
        self.task.take().unwrap()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn backend(id: &str, addr: SocketAddr, state: BackendState) -> Backend {
    Backend {
        id: id.to_string(),
        addr,
        state,
    }
}

pub fn table(version: u64, service: &str, backends: Vec<Backend>) -> RouteTable {
    RouteTable {
        epoch: 0,
        version,
        services: BTreeMap::from([(
            service.to_string(),
            ServiceRoutes {
                backends,
                hold: false,
                max_hold_ms: 2_000,
            },
        )]),
    }
}

pub fn serving(b: &TestBackend) -> Backend {
    backend(&b.name, b.addr, BackendState::Serving)
}

pub fn draining(b: &TestBackend) -> Backend {
    backend(&b.name, b.addr, BackendState::Draining)
}

/// An address nothing listens on: connecting is refused.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Counter(Arc<AtomicU64>);

impl Counter {
    fn up(c: &Arc<AtomicU64>) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        Self(c.clone())
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct BackendShared {
    name: String,
    hits: Arc<AtomicU64>,
    not_applied: Arc<AtomicBool>,
    slow_gate: watch::Receiver<bool>,
}

/// A tiny HTTP/1.1 service. Every path answers its name (header `x-backend` too), except
/// `/slow`, which waits until [`TestBackend::release_slow`], `/stream`, which sends a first
/// part then waits for the same release, and `/echo`, which answers the request body. The `x-forwarded-for` it saw comes back as `x-seen-xff`. While `not_applied`
/// is set it answers 503 with [`NOT_APPLIED_HEADER`].
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub open_connections: Arc<AtomicU64>,
    pub not_applied: Arc<AtomicBool>,
    release: watch::Sender<bool>,
    _task: AbortOnDrop<()>,
}

impl TestBackend {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, slow_gate) = watch::channel(false);
        let shared = BackendShared {
            name: name.to_string(),
            hits: Arc::new(AtomicU64::new(0)),
            not_applied: Arc::new(AtomicBool::new(false)),
            slow_gate,
        };
        let open_connections = Arc::new(AtomicU64::new(0));
        let task = {
            let shared = shared.clone();
            let open = open_connections.clone();
            tokio::spawn(async move {
                // Owned by this task: aborting it aborts every connection too.
                let mut connections = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    while connections.try_join_next().is_some() {}
                    let shared = shared.clone();
                    let counted = Counter::up(&open);
                    connections.spawn(async move {
                        let _counted = counted;
                        let service = service_fn(move |req| serve(shared.clone(), req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Self {
            name: name.to_string(),
            addr,
            hits: shared.hits,
            open_connections,
            not_applied: shared.not_applied,
            release,
            _task: AbortOnDrop(task),
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn release_slow(&self) {
        self.release.send_replace(true);
    }
}

/// A response body fed by a channel, to stream a response in parts.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

type TestBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

async fn serve(
    shared: BackendShared,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let xff = req.headers().get("x-forwarded-for").cloned();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut builder = Response::builder().header("x-backend", shared.name.as_str());
    if let Some(xff) = xff {
        builder = builder.header("x-seen-xff", xff);
    }
    if shared.not_applied.load(Ordering::SeqCst) {
        return Ok(builder
            .status(503)
            .header(NOT_APPLIED_HEADER, "1")
            .body(TestBody::Left(Full::new(Bytes::from_static(b"handed off"))))
            .unwrap());
    }
    let answer = match path.as_str() {
        "/slow" => {
            let mut gate = shared.slow_gate.clone();
            let _ = gate.wait_for(|open| *open).await;
            Bytes::from(shared.name.clone())
        }
        "/echo" => body,
        "/stream" => {
            // First part at once, the rest once released: the client sees a response that
            // has started and not finished.
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let mut gate = shared.slow_gate.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first ")).await;
                let _ = gate.wait_for(|open| *open).await;
                let _ = tx.send(Bytes::from_static(b"rest")).await;
            });
            return Ok(builder.body(TestBody::Right(ChannelBody(rx))).unwrap());
        }
        _ => Bytes::from(shared.name.clone()),
    };
    Ok(builder.body(TestBody::Left(Full::new(answer))).unwrap())
}

/// A backend that reads a whole request head, then closes the connection without answering:
/// the request was sent, and nobody can tell whether it was applied.
pub struct BrokenBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    _task: AbortOnDrop<()>,
}

impl BrokenBackend {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let counted = counted.clone();
                connections.spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    // Dropping the stream closes the connection with no answer.
                });
            }
        });
        Self {
            addr,
            hits,
            _task: AbortOnDrop(task),
        }
    }
}

/// One HTTP/1.1 client connection, driven by hand so the test knows it is the same one.
pub struct RawConnection {
    stream: BufReader<TcpStream>,
}

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: BufReader::new(
                TcpStream::connect(addr)
                    .await
                    .expect("connect to the proxy"),
            ),
        }
    }

    /// Sends one GET and reads its whole response (which must carry a Content-Length).
    pub async fn get(&mut self, path: &str) -> RawResponse {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("write a request on the kept-alive connection");
        let mut line = String::new();
        let n = self
            .stream
            .read_line(&mut line)
            .await
            .expect("read the status line");
        assert!(n > 0, "the proxy closed the client connection");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream
                .read_line(&mut line)
                .await
                .expect("read a header line");
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').expect("header line");
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: String::new(),
        };
        let length: usize = response
            .header("content-length")
            .expect("content-length in the response")
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        self.stream
            .read_exact(&mut body)
            .await
            .expect("read the body");
        response.body = String::from_utf8(body).unwrap();
        response
    }
}
