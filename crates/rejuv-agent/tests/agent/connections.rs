//! Issue 16, item 4 ("Unbounded connections and bodies"): the agent API closes slowloris,
//! silent and idle connections at its configured timeouts, refuses connections over its cap,
//! counts both in `/metrics`, and serves the connections it has meanwhile.

use crate::common::{Harness, TOKEN};
use rejuv_net::probe;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Longest any probe may wait.
const LIMIT: Duration = Duration::from_secs(15);

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
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

fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_silent_and_idle_connections_are_closed_at_the_agent_api_timeouts() {
    let h = Harness::new();
    let mut cfg = h.config();
    cfg.agent.header_read_timeout = Duration::from_secs(1);
    cfg.agent.idle_timeout = Duration::from_secs(2);
    let agent = h.start(cfg).await;
    let api = addr(&agent.url);
    let (slow, silent, idle) = tokio::join!(
        probe::slowloris(api, Duration::from_millis(100), LIMIT),
        probe::silent(api, LIMIT),
        probe::idle_after_request(api, "/healthz", LIMIT),
    );
    assert_at("slowloris", slow, Duration::from_secs(1));
    assert_at("silent connection", silent, Duration::from_secs(1));
    assert_at("idle keep-alive connection", idle, Duration::from_secs(2));

    let mut conn = TcpStream::connect(api).await.unwrap();
    let (status, metrics) = probe::get(&mut conn, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        series(
            &metrics,
            "rejuv_agent_connections_timed_out_total{listener=\"api\",timeout=\"header-read\"}"
        ),
        2
    );
    assert!(
        series(
            &metrics,
            "rejuv_agent_connections_timed_out_total{listener=\"api\",timeout=\"idle\"}"
        ) >= 1
    );
    agent.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_agent_api_cap_are_refused_and_counted_while_the_others_are_served() {
    let h = Harness::new();
    let mut cfg = h.config();
    cfg.agent.max_connections = 4;
    let agent = h.start(cfg).await;
    let api = addr(&agent.url);
    let mut served = TcpStream::connect(api).await.unwrap();
    assert_eq!(probe::get(&mut served, "/healthz", None).await.0, 200);

    // Silent connections until one is refused: held ones stay open (the header-read timeout
    // is 10 s), a refused one is closed at once. The harness's own client may hold a place.
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..8 {
        let mut conn = TcpStream::connect(api).await.unwrap();
        if probe::closed_within(&mut conn, Duration::from_millis(500))
            .await
            .is_some()
        {
            refused = true;
            break;
        }
        held.push(conn);
    }
    assert!(refused, "no connection refused at a cap of 4");
    assert!((2..=3).contains(&held.len()), "{} held", held.len());

    // The connection already served is served still, and the refusal is counted.
    let (status, metrics) = probe::get(&mut served, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        series(
            &metrics,
            "rejuv_agent_connections_refused_total{listener=\"api\"}"
        ),
        1
    );
    assert_eq!(
        series(&metrics, "rejuv_agent_connections_open{listener=\"api\"}"),
        4
    );
    drop(held);
    agent.shut_down().await;
}
