//! `[source] kind = "prometheus"` end to end: a real Prometheus scrapes a real
//! `prometheus-node-exporter` and an exporter of aging series made here (servers whose RSS
//! rises linearly toward a capacity, servers whose RSS stays flat), once a second; then
//! `rejuv controller --dry-run --once --output json`, with no agents at all, lists the aging
//! servers with their forecasts and none of the flat ones, and judges the node exporter's
//! memory. Prometheus down, or a bad query, ends in exit 2 with the URL named.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/prometheus.rs"]
mod prometheus;
use prometheus::{free_addr, wait_for, Proc, Prometheus};

const EXE: &str = env!("CARGO_BIN_EXE_rejuv");

/// The capacity every test series runs out at (bytes).
const CAPACITY: f64 = 1e9;

/// The servers of the test exporter: (name, RSS at start, bytes per second). The aging ones
/// reach `CAPACITY` 70 s and 80 s after the exporter started.
const SERVERS: [(&str, f64, f64); 4] = [
    ("aging-1", 0.5e9, 0.5e9 / 70.0),
    ("aging-2", 0.6e9, 0.4e9 / 80.0),
    ("flat-1", 0.45e9, 0.0),
    ("flat-2", 0.85e9, 0.0),
];

/// The exporter of aging series: `test_rss_bytes{server, process="api"}`, each value a
/// function of the time since it started. Stops when dropped (its runtime goes).
struct Exporter {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    t0: Instant,
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
        Self { _rt: rt, addr, t0 }
    }

    fn value(server: usize, at: Duration) -> f64 {
        let (_, start, rate) = SERVERS[server];
        let secs = at.as_secs_f64();
        // Flat ones wander by a few kB (deterministic, no trend).
        let wiggle = if rate == 0.0 {
            (((secs as u64) * 7919) % 13) as f64 * 1000.0
        } else {
            0.0
        };
        start + rate * secs + wiggle
    }

    fn exposition(at: Duration) -> String {
        let mut out = String::from(
            "# HELP test_rss_bytes RSS of a process of a test server.\n# TYPE test_rss_bytes gauge\n",
        );
        for (i, (name, _, _)) in SERVERS.iter().enumerate() {
            out += &format!(
                "test_rss_bytes{{server=\"{name}\",process=\"api\"}} {:.0}\n",
                Self::value(i, at)
            );
        }
        out
    }
}

fn source_config(url: &str, memory_query: &str) -> String {
    format!(
        r#"
[cluster]
mode = "active-active"

[source]
kind = "prometheus"
url = "{url}"
server_label = "server"
instance_label = "process"
step = "1s"
range = "60s"

[source.queries]
memory-used = "{memory_query}"
instance-rss = "test_rss_bytes"

[source.capacity]
memory-used = "node_memory_MemTotal_bytes"
instance-rss = {CAPACITY}

# The detector's windows scaled to series a minute long, sampled every second.
[policy.trend]
window = "24s"
min_window = "24s"
points = 24
horizon = "1h"
max_extrapolation = 20.0
min_evaluations = 3
min_persistence = "2s"
"#
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn once(config: &Path, json: bool) -> Run {
    let mut cmd = Command::new(EXE);
    cmd.args(["controller", "--config"])
        .arg(config)
        .args(["--dry-run", "--once"]);
    if json {
        cmd.args(["--output", "json"]);
    }
    let out = cmd.output().expect("running rejuv");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn listed(report: &Value) -> Vec<String> {
    report["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_advisory_dry_run_from_a_real_prometheus_lists_the_aging_servers_only() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = Exporter::start();
    let node_addr = free_addr();
    let _node = Proc::spawn(
        "prometheus-node-exporter",
        Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address={node_addr}"))
            .args(["--collector.disable-defaults", "--collector.meminfo"]),
        &dir.path().join("node-exporter.log"),
    );
    let prom = Prometheus::start(
        dir.path(),
        &format!(
            r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["{node_addr}"]
        labels: {{ server: "node" }}
  - job_name: aging
    static_configs:
      - targets: ["{}"]
"#,
            exporter.addr
        ),
    );
    let config = dir.path().join("rejuv.toml");
    std::fs::write(
        &config,
        source_config(
            &prom.url,
            "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes",
        ),
    )
    .unwrap();

    // Enough points for the detector's first judgements (a third of its window) of both
    // exporters' series.
    wait_for(
        "Prometheus to hold 12 points of the test exporter and the node exporter",
        Duration::from_secs(30),
        || {
            let test = prom.scalar(r#"count_over_time(test_rss_bytes{server="flat-1"}[1m])"#)?;
            let node =
                prom.scalar(r#"count_over_time(node_memory_MemTotal_bytes{server="node"}[1m])"#)?;
            (test >= 12.0 && node >= 12.0).then_some(())
        },
    );

    // Judge once every second until both aging servers are listed (the trend must persist
    // before it is judged unstable); no run may list a flat one.
    let mut runs = 0;
    let report = wait_for(
        "the advisory report to list aging-1 and aging-2",
        Duration::from_secs(40),
        || {
            let run = once(&config, true);
            runs += 1;
            assert_eq!(run.code, 0, "stderr: {}", run.stderr);
            let report: Value = serde_json::from_str(&run.stdout)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout));
            let names = listed(&report);
            assert!(
                !names.iter().any(|n| n.starts_with("flat")),
                "a flat server is listed: {report:#}"
            );
            let found =
                names.iter().any(|n| n == "aging-1") && names.iter().any(|n| n == "aging-2");
            if !found {
                std::thread::sleep(Duration::from_secs(1));
            }
            found.then_some(report)
        },
    );
    let now = exporter.t0.elapsed();
    eprintln!("listed after {runs} run(s), {now:?} after the exporter started:\n{report:#}");

    for (name, start, rate) in SERVERS.iter().take(2) {
        let s = report["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["server"] == *name)
            .unwrap();
        assert_eq!(s["resource"], "instance-rss", "{s}");
        assert_eq!(s["action"], "rejuvenate-instance", "{s}");
        assert_eq!(s["instance"], "api", "{s}");
        assert_eq!(s["agent"], false, "{s}");
        // The truth as of the newest reading: when the line reaches the capacity, less the
        // age of that reading (at most a couple of seconds).
        let exhausts_at = (CAPACITY - start) / rate;
        let truth = exhausts_at - now.as_secs_f64();
        let tte = s["exhausts_in_s"].as_f64().expect("a forecast");
        assert!(
            truth > 5.0,
            "{name} is nearly exhausted already ({truth:.0}s left)"
        );
        assert!(
            tte > 0.5 * truth && tte < 1.6 * truth + 3.0,
            "{name}: forecast {tte:.1}s, truth about {truth:.1}s"
        );
    }
    // Every server was judged: the flat ones, and the node exporter's memory.
    let judged: Vec<(&str, u64)> = report["judged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["server"].as_str().unwrap(),
                j["samples"].as_u64().unwrap(),
            )
        })
        .collect();
    for name in ["aging-1", "aging-2", "flat-1", "flat-2", "node"] {
        let n = judged
            .iter()
            .find(|(s, _)| *s == name)
            .map(|(_, n)| *n)
            .unwrap_or_else(|| panic!("{name} not judged: {judged:?}"));
        assert!(n >= 12, "{name}: {n} readings judged");
    }
    assert!(report["notes"].as_array().unwrap().is_empty(), "{report:#}");

    // The table says the same for people.
    let table = once(&config, false);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("5 server(s) judged")
            && table.stdout.contains("aging-1")
            && table.stdout.contains("rejuvenate-instance api")
            && !table.stdout.contains("flat-"),
        "{}",
        table.stdout
    );

    // A bad query: exit 2, naming the URL and Prometheus's reason.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        source_config(
            &prom.url,
            "node_memory_MemTotal_bytes -) node_memory_MemAvailable_bytes",
        ),
    )
    .unwrap();
    let run = once(&bad, true);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&prom.url) && run.stderr.contains("bad_data") && run.stdout.is_empty(),
        "{}",
        run.stderr
    );

    // Prometheus down: exit 2, naming the URL.
    let url = prom.url.clone();
    drop(prom);
    let run = once(&config, true);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("Prometheus at {url} is unreachable"))
            && run.stdout.is_empty(),
        "{}",
        run.stderr
    );
}
