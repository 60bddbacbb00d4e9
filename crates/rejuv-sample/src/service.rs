//! The sample service: an HTTP service that ages on purpose.
//!
//! It is the "aging server" of rejuv's demos and integration tests. It leaks real memory (each
//! chunk is written to, so it is resident and shows in RSS, and is kept for the life of the
//! service), answers more slowly the more it has leaked, and past a limit dies the way an OOM
//! kill looks to a supervisor: a `SIGKILL` out of the blue. A counter gives it state, which can
//! be handed off to a fresh instance while the proxy holds requests. It can start slowly, as
//! most real services do (see *Start-up*).
//!
//! # Routes
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/` | 200 text naming the instance; leaks, delayed by the aging latency |
//! | GET | `/healthz` | 200 `ok`; no leak, no delay, so health checks do not age it. Still starting: 503 `starting` |
//! | GET | `/counter` | 200 [`CounterReply`]; leaks, delayed |
//! | POST | `/counter` | adds 1, 200 [`CounterReply`]; leaks, delayed. Once frozen: 503 with [`NOT_APPLIED_HEADER`] and nothing applied |
//!
//! While the service is still starting, `/` and `/counter` answer 503 with `Retry-After` and
//! [`NOT_APPLIED_HEADER`] (nothing is counted, leaked or applied), and `/healthz` answers 503.
//! | GET | `/_rejuv/state` | 200 [`HandoffState`], and the instance is frozen from then on |
//! | PUT | `/_rejuv/state` | body [`HandoffState`]: adds its counter to this instance's own count, 204; a repeated import replaces the earlier one; bad JSON: 400 [`ApiError`] |
//! | GET | `/stats` | 200 [`Stats`] |
//!
//! # State hand-off
//! Export (`GET /_rejuv/state`) returns the counter and *freezes* the instance: from then on a
//! `POST /counter` is refused with 503 and `x-rejuv-not-applied: 1`, so the proxy can retry it
//! on the new instance and no increment is lost or applied twice. Import
//! (`PUT /_rejuv/state`) *adds* the received counter to the instance's own: a fresh instance
//! (counter 0) receiving the state of an old one ends with exactly the old value, and one that
//! already counted a few requests during the switchover ends with the sum of both. Importing
//! again replaces the earlier import rather than adding to it, so a hand-off retried after a
//! lost answer (or a controller restart) counts the old state once. Import does not unfreeze.
//!
//! # Start-up
//! With a start-up delay (`--startup-delay 5s`) the service binds its port at once, as the
//! process starts, and is *not ready* until the delay has passed: it accepts connections but
//! refuses work with 503 and reports unhealthy, as a service loading its data or warming its
//! caches does behind a readiness check (a Kubernetes readiness probe, Spring Boot's
//! `REFUSING_TRAFFIC`, Elasticsearch's 503 while it recovers). A supervisor that watches the
//! process or the port sees it up at once; only an HTTP health check sees it is not ready. Its
//! state routes (`/_rejuv/state`) and `/stats` answer from the start, so state can be imported
//! while it warms up. The wait costs no CPU (a timer, not work), so a benchmark on a busy
//! machine measures the delay it asked for.
//!
//! # Assumptions
//! A positive `limit` kills the whole process: run the service in-process (tests) only with
//! `limit = 0`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rejuv_core::api::{ApiError, NOT_APPLIED_HEADER};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The service's flags, shared by `rejuv sample-service` and the stand-alone binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[arg(long, default_value = "sample")]
    pub instance_id: String,
    /// Bytes leaked per request to `/` and `/counter`.
    #[arg(long, default_value_t = 0)]
    pub leak_per_request: u64,
    /// Bytes leaked per second of life.
    #[arg(long, default_value_t = 0)]
    pub leak_per_second: u64,
    /// Leaked bytes past which the process kills itself with SIGKILL, as an OOM kill; 0 = never.
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
    /// Leaked bytes at which leaking stops: a cache that warms up to a plateau; 0 = no cap.
    #[arg(long, default_value_t = 0)]
    pub leak_cap: u64,
    /// Added latency per MiB leaked, microseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_per_mib_us: u64,
    /// Touch a small resident working set at start.
    #[arg(long)]
    pub base_rss_touch: bool,
    /// Time the service takes to start (e.g. `5s`, `500ms`): it listens at once but is not
    /// ready (503 on `/healthz`, `/` and `/counter`) until this has passed.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub startup_delay: Duration,
}

impl From<ServiceArgs> for ServiceOptions {
    fn from(a: ServiceArgs) -> Self {
        ServiceOptions {
            instance_id: a.instance_id,
            leak_per_request: a.leak_per_request,
            leak_per_second: a.leak_per_second,
            limit: a.limit,
            leak_cap: a.leak_cap,
            latency_per_mib_us: a.latency_per_mib_us,
            base_rss_touch: a.base_rss_touch,
            startup_delay: a.startup_delay,
        }
    }
}

/// How the service ages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Named in every answer, so a client can tell instances apart.
    pub instance_id: String,
    /// Bytes leaked per handled request (`/` and `/counter`).
    pub leak_per_request: u64,
    /// Bytes leaked per second of life.
    pub leak_per_second: u64,
    /// Leaked bytes past which the process sends itself `SIGKILL`, as an OOM kill would;
    /// 0 = never.
    pub limit: u64,
    /// Leaked bytes at which leaking stops: a cache that warms up and plateaus instead of a
    /// leak; 0 = no cap.
    pub leak_cap: u64,
    /// Added latency per MiB leaked, in microseconds.
    pub latency_per_mib_us: u64,
    /// Touch a small resident working set ([`BASE_RSS_BYTES`]) at start, so a fresh instance
    /// has a realistic baseline RSS. Not counted as leaked.
    pub base_rss_touch: bool,
    /// Time from the start until the service is ready: before it, the port accepts
    /// connections but `/healthz`, `/` and `/counter` answer 503 (see the module's *Start-up*).
    pub startup_delay: Duration,
}

/// Size of the working set touched at start when [`ServiceOptions::base_rss_touch`] is set.
pub const BASE_RSS_BYTES: usize = 8 << 20;

/// `GET`/`POST /counter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReply {
    pub counter: u64,
    pub instance: String,
}

/// The state handed off between instances (`GET`/`PUT /_rejuv/state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffState {
    pub counter: u64,
}

/// `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub instance: String,
    /// Bytes leaked so far (resident: every page was written).
    pub leaked_bytes: u64,
    /// Requests to `/` and `/counter` handled (a refused `POST /counter` is not counted).
    pub requests_handled: u64,
    pub counter: u64,
    /// True once the state was exported.
    pub frozen: bool,
    pub uptime_ms: u64,
    /// False while the service is still starting (its start-up delay has not passed).
    #[serde(default)]
    pub ready: bool,
}

/// The counter and the frozen flag change together under one lock, so an export and a
/// concurrent `POST` cannot both win: either the increment is in the exported value, or it is
/// refused as not applied.
#[derive(Debug, Default)]
struct Counter {
    value: u64,
    frozen: bool,
    /// The part of `value` that came from the last import: a repeated import replaces it
    /// instead of adding again, so a retried hand-off is harmless.
    imported: u64,
}

struct Shared {
    opts: ServiceOptions,
    started: Instant,
    /// `started` plus the start-up delay: work is refused before it.
    ready_at: Instant,
    /// Kept for the life of the service: this is the leak.
    chunks: Mutex<Vec<Box<[u8]>>>,
    leaked: AtomicU64,
    requests: AtomicU64,
    counter: Mutex<Counter>,
    /// Kept only to stay resident.
    _base: Option<Box<[u8]>>,
}

impl Shared {
    /// Allocates `bytes` and writes every byte (so every page is resident), keeps the chunk
    /// forever, and dies past the limit.
    fn leak(&self, bytes: u64) {
        let bytes = if self.opts.leak_cap > 0 {
            let so_far = self.leaked.load(Ordering::SeqCst);
            bytes.min(self.opts.leak_cap.saturating_sub(so_far))
        } else {
            bytes
        };
        if bytes == 0 {
            return;
        }
        let Ok(len) = usize::try_from(bytes) else {
            self.die(u64::MAX);
        };
        // A non-zero fill forces a real write of every page; zeroed memory could stay as
        // untouched copy-on-write zero pages and never show in RSS.
        let chunk = vec![0xA5u8; len].into_boxed_slice();
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(chunk);
        let leaked = self
            .leaked
            .fetch_add(bytes, Ordering::SeqCst)
            .saturating_add(bytes);
        if self.opts.limit > 0 && leaked > self.opts.limit {
            self.die(leaked);
        }
    }

    /// Ends the process the way the kernel's OOM killer would: `SIGKILL`, no clean-up, no exit
    /// code. A supervisor must see exactly what it sees in production.
    fn die(&self, leaked: u64) -> ! {
        eprintln!(
            "rejuv-sample {}: leaked {} bytes, past the limit of {} bytes: killing myself with \
             SIGKILL, as the OOM killer would",
            self.opts.instance_id, leaked, self.opts.limit
        );
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // Not reached unless the signal could not be sent; still never come back to serve.
        std::process::abort()
    }

    /// Aging latency for the current amount leaked.
    fn latency(&self) -> Duration {
        let leaked = u128::from(self.leaked.load(Ordering::SeqCst));
        let us = leaked * u128::from(self.opts.latency_per_mib_us) / (1u128 << 20);
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// The work every aging request does: count, leak, then wait the aging latency.
    async fn age(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.leak(self.opts.leak_per_request);
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Whether the start-up delay has passed.
    fn ready(&self) -> bool {
        Instant::now() >= self.ready_at
    }

    fn counter(&self) -> std::sync::MutexGuard<'_, Counter> {
        self.counter.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reply(&self, value: u64) -> Json<CounterReply> {
        Json(CounterReply {
            counter: value,
            instance: self.opts.instance_id.clone(),
        })
    }
}

/// Serves the sample service on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish, and returns. The listener has the API listeners' bounds
/// (`ListenerLimits::api`): the proxy's pool drops its idle connections well before the idle
/// timeout, and health checks come more often than it.
///
/// # Errors
/// Fails when the listener's address cannot be read.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: ServiceOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let base = opts
        .base_rss_touch
        .then(|| vec![0x5Au8; BASE_RSS_BYTES].into_boxed_slice());
    let started = Instant::now();
    let shared = Arc::new(Shared {
        ready_at: started + opts.startup_delay,
        opts,
        started,
        chunks: Mutex::new(Vec::new()),
        leaked: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        counter: Mutex::new(Counter::default()),
        _base: base,
    });
    tracing::info!(
        instance = %shared.opts.instance_id,
        %addr,
        startup_delay = ?shared.opts.startup_delay,
        "sample service listening"
    );
    if !shared.opts.startup_delay.is_zero() {
        tokio::spawn(say_ready(shared.clone(), shutdown.clone()));
    }

    let leaker = (shared.opts.leak_per_second > 0)
        .then(|| tokio::spawn(leak_over_time(shared.clone(), shutdown.clone())));

    // The routes that do the service's work wait for the start-up; state and stats do not.
    let work = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/counter", get(counter_get).post(counter_post))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            refuse_while_starting,
        ));
    let app = work
        .route("/_rejuv/state", get(state_export).put(state_import))
        .route("/stats", get(stats))
        .with_state(shared.clone());
    rejuv_net::Server::new(
        listener,
        "sample service",
        rejuv_core::config::ListenerLimits::api(),
    )
    .serve_router(app, shutdown.clone().cancelled_owned())
    .await;
    if let Some(leaker) = leaker {
        leaker.abort();
    }
    tracing::info!(instance = %shared.opts.instance_id, "sample service stopped");
    Ok(())
}

/// Leaks `leak_per_second` spread over ten ticks a second; the amount due is computed from the
/// time elapsed, so late ticks catch up instead of drifting.
async fn leak_over_time(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rate = u128::from(shared.opts.leak_per_second);
    let mut done: u128 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = shared.started.elapsed().as_nanos() * rate / 1_000_000_000;
        if due > done {
            shared.leak(u64::try_from(due - done).unwrap_or(u64::MAX));
            done = due;
        }
    }
}

/// Logs the moment the start-up delay has passed.
async fn say_ready(shared: Arc<Shared>, shutdown: CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep_until(shared.ready_at) => {
            tracing::info!(instance = %shared.opts.instance_id, "sample service ready");
        }
    }
}

/// Before the start-up delay has passed: `/healthz` answers 503 `starting`, the other work
/// routes 503 with `Retry-After` and [`NOT_APPLIED_HEADER`], having done nothing.
async fn refuse_while_starting(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if s.ready() {
        return next.run(req).await;
    }
    if req.uri().path() == "/healthz" {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response();
    }
    let left = s.ready_at.saturating_duration_since(Instant::now());
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ApiError {
            error: format!(
                "starting: not ready for another {} ms; the request was not applied",
                left.as_millis()
            ),
        }),
    )
        .into_response();
    let retry_after = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    resp.headers_mut()
        .insert(NOT_APPLIED_HEADER, HeaderValue::from_static("1"));
    resp
}

async fn healthz() -> &'static str {
    "ok"
}

async fn root(State(s): State<Arc<Shared>>) -> String {
    s.age().await;
    format!("hello from {}\n", s.opts.instance_id)
}

async fn counter_get(State(s): State<Arc<Shared>>) -> Json<CounterReply> {
    s.age().await;
    let value = s.counter().value;
    s.reply(value)
}

async fn counter_post(State(s): State<Arc<Shared>>) -> Response {
    // Refuse early if already frozen, so a refused request does not age the instance.
    if s.counter().frozen {
        return not_applied();
    }
    s.age().await;
    // Check again under the lock: the export may have happened while this request waited.
    let mut c = s.counter();
    if c.frozen {
        return not_applied();
    }
    c.value = c.value.saturating_add(1);
    let value = c.value;
    drop(c);
    s.reply(value).into_response()
}

fn not_applied() -> Response {
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ApiError {
            error: "state already handed off: this instance is frozen, the request was not \
                    applied; retry it on another instance"
                .into(),
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(NOT_APPLIED_HEADER, HeaderValue::from_static("1"));
    resp
}

async fn state_export(State(s): State<Arc<Shared>>) -> Json<HandoffState> {
    let mut c = s.counter();
    c.frozen = true;
    tracing::info!(instance = %s.opts.instance_id, counter = c.value, "state exported, frozen");
    Json(HandoffState { counter: c.value })
}

async fn state_import(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    // Parsed by hand rather than with the `Json` extractor, so every malformed body is a 400
    // with a message naming the expected shape (the extractor answers 415/422 for some).
    let state: HandoffState = match serde_json::from_slice(&body) {
        Ok(state) => state,
        Err(e) => {
            return bad_request(format!(
                "invalid state: expected a JSON object {{\"counter\": <non-negative integer>}}: {e}"
            ))
        }
    };
    let mut c = s.counter();
    let own = c.value - c.imported;
    let Some(sum) = own.checked_add(state.counter) else {
        return bad_request(format!(
            "invalid state: counter {} plus the imported {} overflows",
            c.value, state.counter
        ));
    };
    c.value = sum;
    c.imported = state.counter;
    tracing::info!(instance = %s.opts.instance_id, imported = state.counter, counter = sum, "state imported");
    StatusCode::NO_CONTENT.into_response()
}

fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(ApiError { error })).into_response()
}

async fn stats(State(s): State<Arc<Shared>>) -> Json<Stats> {
    let (counter, frozen) = {
        let c = s.counter();
        (c.value, c.frozen)
    };
    Json(Stats {
        instance: s.opts.instance_id.clone(),
        leaked_bytes: s.leaked.load(Ordering::SeqCst),
        requests_handled: s.requests.load(Ordering::SeqCst),
        counter,
        frozen,
        uptime_ms: u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ready: s.ready(),
    })
}
