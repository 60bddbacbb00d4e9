//! `rejuv whatif --prometheus` end to end: a real Prometheus scrapes an exporter made here,
//! once a second (two servers whose RSS rises linearly toward a capacity, one that stays
//! flat); then `rejuv whatif --prometheus URL --query test_rss_bytes --server-label server`
//! replays what it holds. Bad input ends in exit 2 naming what is wrong: the label missing,
//! two series of one server, a server without a capacity, Prometheus down.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/prometheus.rs"]
mod prometheus;
use prometheus::{free_addr, wait_for, Prometheus};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

/// The capacity every test series runs out at (bytes).
const CAPACITY: f64 = 1e9;

/// The servers of the test exporter: (name, RSS at start, bytes per second). The aging ones
/// reach `CAPACITY` 40 s and 45 s after the exporter started.
const SERVERS: [(&str, f64, f64); 3] = [
    ("aging-1", 0.5e9, 0.5e9 / 40.0),
    ("aging-2", 0.6e9, 0.4e9 / 45.0),
    ("flat-1", 0.45e9, 0.0),
];

/// The exporter: `test_rss_bytes{server, process="api"}`, each value a function of the time
/// since it started, and `test_capacity_bytes{server}` of the aging servers only. Stops when
/// dropped (its runtime goes).
struct Exporter {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
}

impl Exporter {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let t0 = Instant::now();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move { Self::exposition(t0.elapsed()) }),
        );
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { _rt: rt, addr }
    }

    fn exposition(at: Duration) -> String {
        let mut out = String::from(
            "# HELP test_rss_bytes RSS of a process of a test server.\n# TYPE test_rss_bytes gauge\n",
        );
        for (name, start, rate) in SERVERS {
            out += &format!(
                "test_rss_bytes{{server=\"{name}\",process=\"api\"}} {:.0}\n",
                start + rate * at.as_secs_f64()
            );
        }
        out += "# HELP test_capacity_bytes Memory budget of a test server.\n# TYPE test_capacity_bytes gauge\n";
        for (name, _, rate) in SERVERS {
            if rate > 0.0 {
                out += &format!("test_capacity_bytes{{server=\"{name}\"}} {CAPACITY:.0}\n");
            }
        }
        out
    }
}

/// A real Prometheus (with its own data directory, on a free port) scraping `target` every
/// second.
fn start_prometheus(dir: &Path, target: SocketAddr) -> Prometheus {
    Prometheus::start(
        dir,
        &format!(
            r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: aging
    static_configs:
      - targets: ["{target}"]
"#
        ),
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn whatif(url: &str, extra: &[&str]) -> Run {
    let out = Command::new(EXE)
        .args([
            "whatif",
            "--prometheus",
            url,
            "--since",
            "2m",
            "--step",
            "1s",
        ])
        .args(extra)
        .output()
        .expect("running rejuv");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn policy<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name)
        .unwrap_or_else(|| panic!("no policy {name}: {v:#}"))
}

fn exhausted(p: &Value) -> Vec<&str> {
    p["servers_exhausted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn a_fleet_read_from_a_real_prometheus_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = Exporter::start();
    let prom = start_prometheus(dir.path(), exporter.addr);

    // Past the moment both aging servers reach their capacity (45 s), with a few points
    // to spare.
    wait_for(
        "Prometheus to hold 55 points of aging-2",
        Duration::from_secs(120),
        || {
            let n = prom.scalar(r#"count_over_time(test_rss_bytes{server="aging-2"}[2m])"#)?;
            (n >= 55.0).then_some(())
        },
    );

    let json = [
        "--query",
        "test_rss_bytes",
        "--server-label",
        "server",
        "--policy",
        "rejuv",
        "--policy",
        "fixed:30s",
        "--output",
        "json",
    ];
    let capacity = CAPACITY.to_string();
    let run = whatif(&prom.url, &[&json[..], &["--capacity", &capacity]].concat());
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout));
    eprintln!("{v:#}");
    let names: Vec<&str> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rejuv", "fixed:30s"]);
    // The restarts every 30 s come before either aging server runs out (each leaks less
    // than its headroom in 30 s).
    let fixed = policy(&v, "fixed:30s");
    // Every one of the three servers restarts on the same grid (the window is longer than
    // 30 s for each).
    let restarts = fixed["rejuvenations"].as_u64().unwrap();
    assert!(restarts >= 3 && restarts.is_multiple_of(3), "{fixed:#}");
    assert_eq!(fixed["exhaustions"], 0, "{fixed:#}");
    assert!(exhausted(fixed).is_empty(), "{fixed:#}");
    // The production policy with its defaults (a fleet sampled every 10 s, trends over
    // hours) has no time to act on a minute of data: both aging servers run out, at the
    // capacity given, and the flat one does not.
    let rejuv = policy(&v, "rejuv");
    assert_eq!(exhausted(rejuv), ["aging-1", "aging-2"], "{rejuv:#}");

    // The capacity per server from a query: the same figures.
    let by_query = whatif(
        &prom.url,
        &[
            &json[..],
            &[
                "--capacity-query",
                r#"test_capacity_bytes or on(server) (test_rss_bytes * 0 + 1e9)"#,
            ],
        ]
        .concat(),
    );
    assert_eq!(by_query.code, 0, "stderr: {}", by_query.stderr);
    let w: Value = serde_json::from_str(&by_query.stdout).unwrap();
    assert_eq!(
        exhausted(policy(&w, "rejuv")),
        ["aging-1", "aging-2"],
        "{w:#}"
    );

    // A server the capacity query has no value for: exit 2, naming it.
    let run = whatif(
        &prom.url,
        &[&json[..], &["--capacity-query", "test_capacity_bytes"]].concat(),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("server `flat-1` has no capacity")
            && run.stderr.contains("test_capacity_bytes")
            && run.stderr.contains(&prom.url)
            && run.stdout.is_empty(),
        "{}",
        run.stderr
    );

    // No capacity at all: exit 2.
    let run = whatif(&prom.url, &json);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--capacity"), "{}", run.stderr);

    // Every series of one scrape has the same `instance`: two series for one server.
    let run = whatif(
        &prom.url,
        &["--query", "test_rss_bytes", "--capacity", &capacity],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("two series for server")
            && run.stderr.contains(&exporter.addr.to_string())
            && run.stderr.contains("label `instance`"),
        "{}",
        run.stderr
    );

    // A label the series lack.
    let run = whatif(
        &prom.url,
        &[
            "--query",
            "test_rss_bytes",
            "--server-label",
            "host",
            "--capacity",
            &capacity,
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("has no label `host`") && run.stderr.contains("server=\"aging-1\""),
        "{}",
        run.stderr
    );

    // No series, and a query Prometheus refuses.
    let run = whatif(
        &prom.url,
        &["--query", "no_such_metric", "--capacity", &capacity],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("no series for `no_such_metric`"),
        "{}",
        run.stderr
    );
    let run = whatif(
        &prom.url,
        &["--query", "test_rss_bytes -)", "--capacity", &capacity],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&prom.url) && run.stderr.contains("bad_data"),
        "{}",
        run.stderr
    );

    // Prometheus down: exit 2, naming the URL.
    let url = prom.url.clone();
    drop(prom);
    let run = whatif(&url, &[&json[..], &["--capacity", &capacity]].concat());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("Prometheus at {url} is unreachable"))
            && run.stdout.is_empty(),
        "{}",
        run.stderr
    );
}

#[test]
fn a_range_of_more_points_than_prometheus_answers_is_refused_before_asking() {
    // Nothing listens at this address: the step is checked first.
    let url = format!("http://{}", free_addr());
    let out = Command::new(EXE)
        .args([
            "whatif",
            "--prometheus",
            &url,
            "--query",
            "up",
            "--capacity",
            "1",
        ])
        .args(["--since", "1d", "--step", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("86401 points") && stderr.contains("at least 8s"),
        "{stderr}"
    );
}
