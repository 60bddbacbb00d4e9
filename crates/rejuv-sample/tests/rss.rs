//! The leak is real: the resident set of this process grows by (nearly) what the service says
//! it leaked. Its own test binary, so no other test's memory moves the reading.

use rejuv_sample::service::{self, ServiceOptions, Stats};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_grows_with_the_leak() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let opts = ServiceOptions {
        instance_id: "rss".into(),
        leak_per_request: 512 * 1024,
        ..ServiceOptions::default()
    };
    let handle = tokio::spawn(service::run(listener, opts, token.clone()));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Warm up the client and server (connection, buffers) before the first reading.
    assert_eq!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let stats = |client: reqwest::Client| async move {
        client
            .get(format!("http://{addr}/stats"))
            .send()
            .await
            .unwrap()
            .json::<Stats>()
            .await
            .unwrap()
    };
    let leaked_before = stats(client.clone()).await.leaked_bytes;
    let before = rss_bytes();

    let requests = 128u64;
    for _ in 0..requests {
        let resp = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let after = rss_bytes();
    let leaked = stats(client.clone()).await.leaked_bytes - leaked_before;
    assert_eq!(
        leaked,
        requests * 512 * 1024,
        "stats count every leaked byte"
    );
    let grown = after.saturating_sub(before);
    eprintln!(
        "leaked {} KiB, RSS grew by {} KiB",
        leaked / 1024,
        grown / 1024
    );
    assert!(
        grown >= leaked / 10 * 8,
        "RSS grew by {} MiB, less than 80% of the {} MiB leaked",
        grown / MIB,
        leaked / MIB
    );

    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("service run() did not return after shutdown")
        .unwrap()
        .unwrap();
}
