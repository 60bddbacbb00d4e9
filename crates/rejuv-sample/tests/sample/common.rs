//! Helpers: an in-process service that stops when dropped, an HTTP client, bounded waits.

use rejuv_sample::service::{self, ServiceOptions, Stats};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Fails the test with `what` if `fut` takes longer than `secs`.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s: {what}"),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub fn opts(id: &str) -> ServiceOptions {
    ServiceOptions {
        instance_id: id.to_string(),
        ..ServiceOptions::default()
    }
}

/// A sample service running in this process; cancelled (and its task aborted) when dropped.
pub struct TestService {
    pub addr: SocketAddr,
    token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestService {
    pub async fn start(opts: ServiceOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let handle = tokio::spawn(service::run(listener, opts, token.clone()));
        Self {
            addr,
            token,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stats(&self) -> Stats {
        let resp = client()
            .get(self.url("/stats"))
            .send()
            .await
            .expect("GET /stats");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("stats JSON")
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Cancels and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        let handle = self.handle.take().expect("running");
        within(10, "service run() to return after shutdown", handle)
            .await
            .expect("join")
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}
