//! Issue 16, item 4 ("Unbounded connections and bodies"): the front ends and the admin API
//! close slowloris, silent and idle connections at their timeouts and refuse connections over
//! their caps, the status counts both, and meanwhile the connections they have are served and
//! held or slow requests are not cut.

use crate::support::*;
use rejuv_core::config::ListenerLimits;
use rejuv_net::probe;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest any probe may wait.
const LIMIT: Duration = Duration::from_secs(15);

fn limits(header_read: u64, idle: u64, cap: usize) -> ListenerLimits {
    ListenerLimits {
        max_connections: cap,
        header_read_timeout: Duration::from_secs(header_read),
        idle_timeout: Duration::from_secs(idle),
    }
}

/// `took` is `timeout`, give or take the server's reaction (a loaded machine).
fn assert_at(what: &str, took: Option<Duration>, timeout: Duration) {
    let took = took.unwrap_or_else(|| panic!("{what}: still open after {LIMIT:?}"));
    assert!(
        took + Duration::from_millis(100) >= timeout
            && took <= timeout + Duration::from_millis(1500),
        "{what}: closed after {took:?}, the timeout is {timeout:?}"
    );
}

#[tokio::test]
async fn slowloris_silent_and_idle_connections_are_closed_at_the_front_end_and_admin_timeouts() {
    within("probing the front end and the admin API", async {
        let a = TestBackend::start("a").await;
        let proxy =
            TestProxy::start_with_limits(&["web"], limits(1, 2, 100), limits(1, 2, 100)).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;
        let (front, admin) = (proxy.services["web"], proxy.admin);
        let every = Duration::from_millis(100);
        let (slow, silent, idle, admin_slow, admin_idle) = tokio::join!(
            probe::slowloris(front, every, LIMIT),
            probe::silent(front, LIMIT),
            probe::idle_after_request(front, "/", LIMIT),
            probe::slowloris(admin, every, LIMIT),
            probe::idle_after_request(admin, "/healthz", LIMIT),
        );
        assert_at("front-end slowloris", slow, Duration::from_secs(1));
        assert_at(
            "front-end silent connection",
            silent,
            Duration::from_secs(1),
        );
        assert_at("front-end idle connection", idle, Duration::from_secs(2));
        assert_at("admin slowloris", admin_slow, Duration::from_secs(1));
        assert_at("admin idle connection", admin_idle, Duration::from_secs(2));

        let status = proxy.status().await;
        let front = status.services["web"].connections;
        assert_eq!(front.header_timeouts_total, 2, "{front:?}");
        assert_eq!(front.idle_timeouts_total, 1, "{front:?}");
        assert_eq!(status.admin_connections.header_timeouts_total, 1);
        assert!(status.admin_connections.idle_timeouts_total >= 1);
    })
    .await;
}

#[tokio::test]
async fn held_and_slow_requests_are_not_cut_by_the_idle_timeout() {
    within(
        "a held request and a slow response under a 1 s idle timeout",
        async {
            let a = TestBackend::start("a").await;
            let proxy =
                TestProxy::start_with_limits(&["web"], limits(1, 1, 100), ListenerLimits::api())
                    .await;
            let mut held = table(1, "web", vec![serving(&a)]);
            held.services.get_mut("web").unwrap().hold = true;
            held.services.get_mut("web").unwrap().max_hold_ms = 20_000;
            proxy.apply(&held).await;

            let mut conn = TcpStream::connect(proxy.services["web"]).await.unwrap();
            let request = AbortOnDrop(tokio::spawn(async move {
                let answer = probe::get(&mut conn, "/", None).await;
                (answer, conn)
            }));
            proxy
                .wait_status("the request to be held", |s| s.services["web"].held == 1)
                .await;
            // Held for three idle timeouts, then released.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut release = table(2, "web", vec![serving(&a)]);
            release.services.get_mut("web").unwrap().max_hold_ms = 20_000;
            proxy.apply(&release).await;
            let ((code, body), mut conn) = request.await.unwrap();
            assert_eq!((code, body.as_str()), (200, "a"));

            // The same keep-alive connection: a response the backend holds back for 3 s.
            let begun = Instant::now();
            let slow = AbortOnDrop(tokio::spawn(async move {
                let answer = probe::get(&mut conn, "/slow", None).await;
                (answer, conn)
            }));
            tokio::time::sleep(Duration::from_secs(3)).await;
            a.release_slow();
            let ((code, _), _conn) = slow.await.unwrap();
            assert_eq!(code, 200);
            assert!(begun.elapsed() >= Duration::from_secs(3));
            assert_eq!(
                proxy.status().await.services["web"]
                    .connections
                    .idle_timeouts_total,
                0
            );
        },
    )
    .await;
}

#[tokio::test]
async fn connections_over_the_front_end_cap_are_refused_and_counted_while_the_others_are_served() {
    within("filling the front end to its cap", async {
        let a = TestBackend::start("a").await;
        let proxy =
            TestProxy::start_with_limits(&["web"], limits(30, 30, 3), ListenerLimits::api()).await;
        proxy.apply(&table(1, "web", vec![serving(&a)])).await;
        let front = proxy.services["web"];
        let mut served = TcpStream::connect(front).await.unwrap();
        assert_eq!(probe::get(&mut served, "/", None).await, (200, "a".into()));
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut conn = TcpStream::connect(front).await.unwrap();
            // Something of a head, so that the connection is not taken for a quiet one.
            conn.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            held.push(conn);
        }
        proxy
            .wait_status("three connections open", |s| {
                s.services["web"].connections.open == 3
            })
            .await;
        let mut over = TcpStream::connect(front).await.unwrap();
        let took = probe::closed_within(&mut over, Duration::from_secs(5)).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(1)),
            "refused after {took:?}"
        );

        let begun = Instant::now();
        assert_eq!(probe::get(&mut served, "/", None).await, (200, "a".into()));
        assert!(
            begun.elapsed() < Duration::from_millis(500),
            "{:?}",
            begun.elapsed()
        );
        let counts = proxy.status().await.services["web"].connections;
        assert_eq!((counts.open, counts.refused_total), (3, 1), "{counts:?}");
        assert_eq!(proxy.status().await.admin_connections.refused_total, 0);
        drop(held);
    })
    .await;
}
