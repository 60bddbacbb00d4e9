//! A real Prometheus scrapes a running controller and agent with the bearer token from a
//! `credentials_file`, and stores the documented `rejuv_` series of each. This is how the
//! exposition is checked: `promtool check metrics` rejects `prometheus-client`'s counters.

use crate::harness::{wait_for, Harness, Spec};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `prometheus` process in its own process group, killed on drop (even on failure).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    http: reqwest::blocking::Client,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let addr: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("logs/prometheus.log")).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .process_group(0);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`prometheus` is not installed: install the Debian package `prometheus`")
            }
            Err(e) => panic!("starting prometheus: {e}"),
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self { child, addr, http }
    }

    /// The result vector of an instant query, or `None` while Prometheus cannot answer.
    fn query(&self, q: &str) -> Option<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", q)])
            .send()
            .ok()?
            .json()
            .ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
    }

    /// `up` per job.
    fn up(&self) -> Option<Vec<(String, f64)>> {
        let r = self.query("up")?;
        Some(
            r.iter()
                .map(|s| {
                    let job = s["metric"]["job"].as_str().unwrap_or("?").to_string();
                    let v = s["value"][1]
                        .as_str()
                        .unwrap_or("nan")
                        .parse()
                        .unwrap_or(f64::NAN);
                    (job, v)
                })
                .collect(),
        )
    }

    /// Names of the `rejuv_` series Prometheus holds for a job, histogram series folded into
    /// their family name.
    fn names(&self, job: &str) -> BTreeSet<String> {
        let q = format!(r#"count by (__name__) ({{__name__=~"rejuv_.*",job="{job}"}})"#);
        self.query(&q)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["metric"]["__name__"].as_str())
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| n.strip_suffix(suffix))
                    .filter(|f| f.ends_with("_duration_seconds"))
                    .unwrap_or(n)
                    .to_string()
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_real_prometheus_scrapes_controller_and_agent() {
    let mut h = Harness::new(&Spec {
        primaries: 1,
        spares: 1,
        ..Spec::default()
    });
    h.start_controller(&[]);
    let token_file = h.dir.path().join("token");
    // A third job without the token shows that /metrics needs it (and that the others send it).
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: controller
    authorization:
      credentials_file: {token}
    static_configs:
      - targets: ["{controller}"]
  - job_name: agent
    authorization:
      credentials_file: {token}
    static_configs:
      - targets: ["{agent}"]
        labels: {{ server: "{server}" }}
  - job_name: no-token
    static_configs:
      - targets: ["{controller}"]
"#,
        token = token_file.display(),
        controller = h.controller_addr,
        agent = h.servers[0].agent,
        server = h.servers[0].id,
    );
    // Declared after the harness: dropped (killed) first, while its directory still exists.
    let prom = Prometheus::start(h.dir.path(), &config);

    let up = wait_for(
        "Prometheus to scrape controller and agent (up == 1 for both)",
        Duration::from_secs(60),
        || {
            let up = prom.up()?;
            let of = |job: &str| up.iter().find(|(j, _)| j == job).map(|(_, v)| *v);
            (of("controller") == Some(1.0) && of("agent") == Some(1.0) && of("no-token").is_some())
                .then_some(up)
        },
    );
    assert!(
        up.iter().any(|(j, v)| j == "no-token" && *v == 0.0),
        "a scrape without the bearer token succeeded: {up:?}"
    );

    let controller_declared = set(rejuv_controller::metrics::NAMES);
    let agent_declared = set(rejuv_agent::metrics::NAMES);

    // Always there once every server has been observed; workflow timings and forecasts come
    // only with workflows and trends.
    let controller_expected = set(&[
        "rejuv_servers",
        "rejuv_available_servers",
        "rejuv_available_capacity_units",
        "rejuv_capacity_units",
        "rejuv_servers_kept_out",
        "rejuv_paused",
        "rejuv_epoch",
        "rejuv_routes_version",
        "rejuv_pending_commands",
        "rejuv_server_state",
        "rejuv_server_judgement",
        "rejuv_server_escalation_level",
        "rejuv_server_reachable",
        "rejuv_server_running_time_seconds",
        "rejuv_server_memory_used_bytes",
        "rejuv_instances",
        "rejuv_instance_crashes_total",
        "rejuv_workflows_active",
        "rejuv_workflows_total",
        "rejuv_recent_workflows",
    ]);
    let controller = wait_for(
        "the controller's rejuv_ series in Prometheus",
        Duration::from_secs(30),
        || {
            let n = prom.names("controller");
            controller_expected.is_subset(&n).then_some(n)
        },
    );
    let unknown: Vec<_> = controller.difference(&controller_declared).collect();
    assert!(
        unknown.is_empty(),
        "undeclared controller series {unknown:?}"
    );
    assert!(controller.len() >= 5, "{controller:?}");

    // Everything the agent declares is written from its first sample on (the primary's
    // instance brings the per-instance series once its health check ran).
    // Waits up to 30 s, then compares whatever is there, so a failure shows the difference.
    let until = Instant::now() + Duration::from_secs(30);
    let agent = wait_for(
        "every declared agent series in Prometheus",
        Duration::from_secs(40),
        || {
            let n = prom.names("agent");
            (n == agent_declared || Instant::now() > until).then_some(n)
        },
    );
    assert_eq!(
        agent, agent_declared,
        "the agent series in Prometheus (left) are not the declared ones (right)"
    );

    // Values that must agree with the cluster: one primary and one spare on the list, and the
    // agent's instance is healthy.
    let v = |q: &str| -> f64 {
        let r = prom.query(q).unwrap_or_default();
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        r[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    assert_eq!(v(r#"sum(rejuv_available_servers{job="controller"})"#), 2.0);
    assert_eq!(
        v(r#"rejuv_server_reachable{job="controller",server="s1"}"#),
        1.0
    );
    assert_eq!(v(r#"sum(rejuv_agent_instance_healthy{job="agent"})"#), 1.0);
    assert!(v(r#"rejuv_agent_collection_duration_seconds_count{job="agent"}"#) >= 1.0);
    drop(prom);
    drop(h);
}
