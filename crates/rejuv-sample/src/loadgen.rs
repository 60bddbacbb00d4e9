//! A bounded, open-loop HTTP load generator: a fixed request rate for a fixed time, through a
//! fixed set of keep-alive connections, with every request accounted for.
//!
//! It is what shows that a switchover drops nothing: `rejuv demo` and the integration tests run
//! it against the proxy while a server is rejuvenated, then read [`LoadReport`].
//!
//! # How it sends
//! Request `i` (from 0) is *intended* at `start + i / rps`, for every `i` with
//! `i / rps < duration`: exactly `⌈duration · rps⌉` requests unless `shutdown` stops it early.
//! A dispatcher hands each request, at its intended time, to the first free of `connections`
//! workers, each owning one HTTP/1.1 keep-alive connection. The schedule never waits for
//! answers (open loop), and latency is measured from the intended time, not from the moment a
//! connection was free, so a slow server shows as latency instead of as fewer requests
//! (no coordinated omission).
//!
//! # Guarantees
//! - Each intended request is counted exactly once: ok (2xx) or failed (transport error,
//!   timeout, non-2xx).
//! - Each request must finish within `timeout` of its intended time (queueing for a connection
//!   included); one that is still waiting for a connection by then fails as `timeout-queued`
//!   without being sent. So a run ends by `duration + timeout` (plus connection clean-up).
//! - A request the connection could not even send (the server closed the idle keep-alive
//!   connection first) is re-sent once on a new connection: it never reached the server, so
//!   this is safe even for a `POST`. Nothing that may have reached the server is re-sent.
//! - Latency percentiles count requests that got a response (any status); transport errors
//!   and timeouts are counted in `errors` only.

use crate::histogram::Histogram;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What load to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Front end to load, e.g. the proxy.
    pub target: SocketAddr,
    /// Fixed request rate, requests per second.
    pub rps: u32,
    /// Hard bound on the sending time.
    pub duration: Duration,
    /// Keep-alive connections used.
    pub connections: u32,
    /// Every Nth request is `POST /counter`, the others `GET /`; 0 = no posts.
    pub post_every: u32,
    /// Per request, counted from its intended send time.
    pub timeout: Duration,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub requests_total: u64,
    /// Transport errors, timeouts and non-2xx answers.
    pub requests_failed: u64,
    pub posts_ok: u64,
    pub posts_failed: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// Answers by HTTP status.
    pub status_counts: BTreeMap<u16, u64>,
    /// Requests that got no answer, by kind: `connect`, `handshake`, `closed` (the connection
    /// ended before the answer), `send`, `body`, `timeout`, `timeout-queued`.
    pub errors: BTreeMap<String, u64>,
}

/// Counters readable while a run goes on (share the `Arc` with [`run_with_stats`]).
#[derive(Debug, Default)]
pub struct LiveStats {
    requests: AtomicU64,
    failed: AtomicU64,
    posts_ok: AtomicU64,
    posts_failed: AtomicU64,
    in_flight: AtomicU64,
}

/// A reading of [`LiveStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    /// Requests finished (ok or failed).
    pub requests: u64,
    pub failed: u64,
    pub posts_ok: u64,
    pub posts_failed: u64,
    /// Requests due but not finished yet (queued or on the wire).
    pub in_flight: u64,
}

impl LiveStats {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            posts_ok: self.posts_ok.load(Ordering::Relaxed),
            posts_failed: self.posts_failed.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// Options a run cannot start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("invalid load option `{field}`: {reason}")]
    InvalidOption {
        field: &'static str,
        reason: &'static str,
    },
}

impl LoadOptions {
    /// # Errors
    /// Names the first option that cannot work.
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |field, reason| Err(LoadError::InvalidOption { field, reason });
        if self.rps == 0 {
            return invalid("rps", "must be greater than 0");
        }
        if self.connections == 0 {
            return invalid("connections", "must be greater than 0");
        }
        if self.timeout.is_zero() {
            return invalid("timeout", "must be greater than 0");
        }
        Ok(())
    }

    /// Requests a full run sends: ⌈duration · rps⌉.
    pub fn planned_requests(&self) -> u64 {
        let n = (self.duration.as_nanos() * u128::from(self.rps)).div_ceil(1_000_000_000);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Intended send time of request `i`, as an offset from the start.
    fn offset(&self, i: u64) -> Duration {
        let ns = u128::from(i) * 1_000_000_000 / u128::from(self.rps);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Runs the load to its end (or until `shutdown`) and reports.
///
/// # Errors
/// Only for invalid options; failed requests are counted in the report, not returned.
pub async fn run(opts: LoadOptions, shutdown: CancellationToken) -> anyhow::Result<LoadReport> {
    run_with_stats(opts, shutdown, LiveStats::new()).await
}

/// [`run`], updating `stats` as requests finish so a caller can show progress.
///
/// `shutdown` stops sending new requests; those already due are still awaited (each bounded by
/// `timeout`) and counted.
///
/// # Errors
/// Only for invalid options.
pub async fn run_with_stats(
    opts: LoadOptions,
    shutdown: CancellationToken,
    stats: Arc<LiveStats>,
) -> anyhow::Result<LoadReport> {
    opts.validate()?;
    let opts = Arc::new(opts);
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..opts.connections)
        .map(|_| tokio::spawn(worker(opts.clone(), rx.clone(), stats.clone())))
        .collect();

    let start = Instant::now();
    let planned = opts.planned_requests();
    tracing::info!(target = %opts.target, rps = opts.rps, planned, "load starting");
    for i in 0..planned {
        let intended = start + opts.offset(i);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(intended) => {}
        }
        let post = opts.post_every > 0 && (i + 1) % u64::from(opts.post_every) == 0;
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // The workers only stop once this sender is dropped, so the send cannot fail.
        let _ = tx.send(Job { intended, post });
    }
    drop(tx);

    let mut tally = Tally::default();
    for w in workers {
        // A worker only ends by draining the channel; a panic is a bug worth surfacing.
        tally.merge(&w.await?);
    }
    let report = tally.report();
    tracing::info!(
        total = report.requests_total,
        failed = report.requests_failed,
        p99_ms = report.latency_ms_p99,
        "load finished"
    );
    Ok(report)
}

#[derive(Debug, Clone, Copy)]
struct Job {
    intended: Instant,
    post: bool,
}

enum Outcome {
    Answer { status: u16, latency: Duration },
    Error(&'static str),
}

#[derive(Debug, Default)]
struct Tally {
    total: u64,
    failed: u64,
    posts_ok: u64,
    posts_failed: u64,
    latency_us: Histogram,
    status_counts: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, o: &Tally) {
        self.total += o.total;
        self.failed += o.failed;
        self.posts_ok += o.posts_ok;
        self.posts_failed += o.posts_failed;
        self.latency_us.merge(&o.latency_us);
        for (k, v) in &o.status_counts {
            *self.status_counts.entry(*k).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    fn report(&self) -> LoadReport {
        let ms = |us: u64| us as f64 / 1000.0;
        LoadReport {
            requests_total: self.total,
            requests_failed: self.failed,
            posts_ok: self.posts_ok,
            posts_failed: self.posts_failed,
            latency_ms_p50: ms(self.latency_us.percentile(50.0)),
            latency_ms_p99: ms(self.latency_us.percentile(99.0)),
            latency_ms_max: ms(self.latency_us.max()),
            status_counts: self.status_counts.clone(),
            errors: self.errors.clone(),
        }
    }
}

/// One connection's loop: takes due requests until the dispatcher is done.
async fn worker(
    opts: Arc<LoadOptions>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    stats: Arc<LiveStats>,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        let job = { rx.lock().await.recv().await };
        let Some(job) = job else { break };
        let outcome = execute(&opts, &mut conn, job).await;
        let ok = match outcome {
            Outcome::Answer { status, latency } => {
                tally
                    .latency_us
                    .record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                *tally.status_counts.entry(status).or_default() += 1;
                (200..300).contains(&status)
            }
            Outcome::Error(kind) => {
                *tally.errors.entry(kind.to_string()).or_default() += 1;
                false
            }
        };
        tally.total += 1;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !ok {
            tally.failed += 1;
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        match (job.post, ok) {
            (true, true) => {
                tally.posts_ok += 1;
                stats.posts_ok.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                tally.posts_failed += 1;
                stats.posts_failed.fetch_add(1, Ordering::Relaxed);
            }
            (false, _) => {}
        }
    }
    tally
}

/// Sends one request on the worker's connection (opening one if needed), within its deadline.
async fn execute(
    opts: &LoadOptions,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    job: Job,
) -> Outcome {
    let deadline = job.intended + opts.timeout;
    if Instant::now() >= deadline {
        return Outcome::Error("timeout-queued");
    }
    match tokio::time::timeout_at(deadline, send(opts.target, conn, job.post)).await {
        Ok(Ok(status)) => Outcome::Answer {
            status,
            latency: job.intended.elapsed(),
        },
        Ok(Err(kind)) => {
            *conn = None;
            Outcome::Error(kind)
        }
        Err(_) => {
            // The answer may still arrive on this connection and would be taken for the next
            // request's: start over on a fresh one.
            *conn = None;
            Outcome::Error("timeout")
        }
    }
}

async fn send(
    target: SocketAddr,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    post: bool,
) -> Result<u16, &'static str> {
    let mut req = request(target, post);
    // Two attempts: the second only when the first could not even be sent.
    for attempt in 0..2 {
        let sender = match conn {
            Some(s) if !s.is_closed() => s,
            _ => conn.insert(connect(target).await?),
        };
        if sender.ready().await.is_err() {
            *conn = None;
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the whole body so the connection can be reused.
                resp.into_body().collect().await.map_err(|_| "body")?;
                return Ok(status);
            }
            Err(mut e) => {
                *conn = None;
                match e.take_message() {
                    Some(unsent) if attempt == 0 => req = unsent,
                    _ => return Err(error_kind(e.error())),
                }
            }
        }
    }
    Err("closed")
}

fn error_kind(e: &hyper::Error) -> &'static str {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        "closed"
    } else {
        "send"
    }
}

fn request(target: SocketAddr, post: bool) -> Request<Empty<Bytes>> {
    let builder = Request::builder()
        .header(HOST, target.to_string())
        .header(USER_AGENT, "rejuv-loadgen");
    let builder = if post {
        builder
            .method(Method::POST)
            .uri("/counter")
            .header(CONTENT_LENGTH, "0")
    } else {
        builder.method(Method::GET).uri("/")
    };
    builder
        .body(Empty::new())
        .expect("static request parts are valid")
}

async fn connect(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, &'static str> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|_| "connect")?;
    // Small requests: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "handshake")?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the peer closes; errors show up on the sender.
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(rps: u32, duration: Duration) -> LoadOptions {
        LoadOptions {
            target: "127.0.0.1:1".parse().unwrap(),
            rps,
            duration,
            connections: 1,
            post_every: 0,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn planned_requests_cover_the_duration_exactly() {
        assert_eq!(opts(200, Duration::from_secs(2)).planned_requests(), 400);
        assert_eq!(opts(3, Duration::from_millis(1001)).planned_requests(), 4);
        assert_eq!(opts(1, Duration::ZERO).planned_requests(), 0);
        let o = opts(3, Duration::from_secs(1));
        assert_eq!(o.planned_requests(), 3);
        assert!(o.offset(2) < o.duration && o.offset(3) >= o.duration);
    }

    #[test]
    fn invalid_options_are_named() {
        let mut o = opts(0, Duration::from_secs(1));
        assert_eq!(
            o.validate(),
            Err(LoadError::InvalidOption {
                field: "rps",
                reason: "must be greater than 0"
            })
        );
        o.rps = 1;
        o.connections = 0;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connections"));
    }
}
