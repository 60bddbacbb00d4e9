//! The load generator against real servers: exact totals, latency from the intended send
//! time, timeouts, refused connections, early shutdown, servers closing connections.

use crate::common::{opts, within, TestService};
use axum::routing::get;
use rejuv_sample::loadgen::{self, LiveStats, LoadOptions};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn load(target: SocketAddr, rps: u32, duration_ms: u64) -> LoadOptions {
    LoadOptions {
        target,
        rps,
        duration: Duration::from_millis(duration_ms),
        connections: 4,
        post_every: 0,
        timeout: Duration::from_secs(2),
    }
}

/// Serves `app` on 127.0.0.1:0 until the returned token is cancelled.
async fn serve(app: axum::Router) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (addr, token.drop_guard())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_totals_against_the_service() {
    let svc = TestService::start(opts("lg")).await;
    let before = svc.stats().await;
    let stats = LiveStats::new();
    let o = LoadOptions {
        post_every: 5,
        ..load(svc.addr, 200, 2_000)
    };
    let t = Instant::now();
    let report = within(
        10,
        "a 2 s load run",
        loadgen::run_with_stats(o, CancellationToken::new(), stats.clone()),
    )
    .await
    .unwrap();
    let elapsed = t.elapsed();

    assert_eq!(report.requests_total, 400, "{report:?}");
    assert_eq!(report.requests_failed, 0, "{report:?}");
    assert_eq!(report.posts_ok, 80);
    assert_eq!(report.posts_failed, 0);
    assert_eq!(report.status_counts.get(&200), Some(&400));
    assert!(report.errors.is_empty());
    assert!(report.latency_ms_p50 <= report.latency_ms_p99);
    assert!(report.latency_ms_p99 <= report.latency_ms_max);
    // Open loop at a fixed rate: the last request is due at 1.995 s.
    assert!(
        elapsed >= Duration::from_millis(1_990),
        "finished too early: {elapsed:?}"
    );

    let after = svc.stats().await;
    assert_eq!(
        after.counter - before.counter,
        report.posts_ok,
        "posts_ok = counter delta"
    );
    assert_eq!(after.requests_handled - before.requests_handled, 400);

    let live = stats.snapshot();
    assert_eq!(
        (live.requests, live.failed, live.posts_ok, live.in_flight),
        (400, 0, 80, 0),
        "live stats end equal to the report"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["requests_total"], 400);
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_counts_from_the_intended_send_time() {
    // One connection to a server taking 100 ms per request, asked for 20 requests/s: requests
    // queue, and the queueing must show in the latency (no coordinated omission).
    let app = axum::Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            "slow"
        }),
    );
    let (addr, _guard) = serve(app).await;
    let o = LoadOptions {
        connections: 1,
        timeout: Duration::from_secs(5),
        ..load(addr, 20, 500)
    };
    let report = within(
        15,
        "the slow-server run",
        loadgen::run(o, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(report.requests_total, 10);
    assert_eq!(report.requests_failed, 0, "{report:?}");
    // The 10th request is due at 450 ms and answered at ≥ 1000 ms.
    assert!(report.latency_ms_max >= 500.0, "{report:?}");
    assert!(report.latency_ms_p50 >= 200.0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_within_the_bound() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let o = LoadOptions {
        connections: 1,
        timeout: Duration::from_millis(300),
        ..load(addr, 10, 500)
    };
    let t = Instant::now();
    let report = within(
        10,
        "the silent-server run",
        loadgen::run(o, CancellationToken::new()),
    )
    .await
    .unwrap();
    holder.abort();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(report.requests_total, 5);
    assert_eq!(report.requests_failed, 5);
    let timeouts = report.errors.get("timeout").copied().unwrap_or(0)
        + report.errors.get("timeout-queued").copied().unwrap_or(0);
    assert_eq!(timeouts, 5, "{report:?}");
    assert!(report.status_counts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_as_connect_errors() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let o = LoadOptions {
        post_every: 2,
        ..load(addr, 50, 200)
    };
    let report = within(
        10,
        "the refused run",
        loadgen::run(o, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(report.requests_total, 10);
    assert_eq!(report.requests_failed, 10);
    assert_eq!((report.posts_ok, report.posts_failed), (0, 5));
    assert_eq!(report.errors.get("connect"), Some(&10), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_sending_and_counts_what_was_sent() {
    let svc = TestService::start(opts("stop")).await;
    let token = CancellationToken::new();
    let stats = LiveStats::new();
    let run = tokio::spawn(loadgen::run_with_stats(
        LoadOptions {
            post_every: 1,
            ..load(svc.addr, 100, 60_000)
        },
        token.clone(),
        stats.clone(),
    ));
    within(10, "some requests to finish", async {
        while stats.snapshot().requests < 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    token.cancel();
    let report = within(5, "the run to stop after shutdown", run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        report.requests_total >= 10 && report.requests_total < 6_000,
        "{report:?}"
    );
    assert_eq!(report.requests_failed, 0);
    assert_eq!(
        report.posts_ok, report.requests_total,
        "every request was a POST"
    );
    assert_eq!(svc.stats().await.counter, report.posts_ok);
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_connection_close_costs_no_request() {
    let app = axum::Router::new().route(
        "/",
        get(|| async { ([(http::header::CONNECTION, "close")], "bye") }),
    );
    let (addr, _guard) = serve(app).await;
    let o = LoadOptions {
        connections: 2,
        ..load(addr, 100, 500)
    };
    let report = within(
        10,
        "the closing-server run",
        loadgen::run(o, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(report.requests_total, 50);
    assert_eq!(report.requests_failed, 0, "{report:?}");
}

/// What a [`raw_server`] does with each request it reads.
#[derive(Clone, Copy)]
enum RawMode {
    /// Answers 200 with keep-alive, then closes the idle connection 30 ms later.
    AnswerThenIdleClose,
    /// Closes the connection without answering.
    DropUnanswered,
}

/// A bare HTTP/1.1 server (requests without bodies only) that counts the requests it read.
async fn raw_server(mode: RawMode) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                if let RawMode::AnswerThenIdleClose = mode {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_idle_connections_costs_no_request() {
    let (addr, seen, task) = raw_server(RawMode::AnswerThenIdleClose).await;
    let o = LoadOptions {
        connections: 1,
        post_every: 2,
        ..load(addr, 20, 500)
    };
    let report = within(
        10,
        "the idle-closing run",
        loadgen::run(o, CancellationToken::new()),
    )
    .await
    .unwrap();
    task.abort();
    assert_eq!(report.requests_total, 10);
    assert_eq!(report.requests_failed, 0, "{report:?}");
    assert_eq!(report.posts_ok, 5);
    assert_eq!(seen.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_reached_the_server_is_never_sent_again() {
    let (addr, seen, task) = raw_server(RawMode::DropUnanswered).await;
    let o = LoadOptions {
        connections: 1,
        post_every: 1,
        ..load(addr, 20, 500)
    };
    let report = within(
        10,
        "the unanswered run",
        loadgen::run(o, CancellationToken::new()),
    )
    .await
    .unwrap();
    task.abort();
    assert_eq!(report.requests_total, 10);
    assert_eq!((report.posts_ok, report.posts_failed), (0, 10));
    assert_eq!(report.errors.get("closed"), Some(&10), "{report:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        10,
        "each POST reached the server exactly once"
    );
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let o = LoadOptions {
        rps: 0,
        ..load("127.0.0.1:1".parse().unwrap(), 1, 100)
    };
    let err = loadgen::run(o, CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("rps"), "{err}");
}
