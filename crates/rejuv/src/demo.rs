//! `rejuv demo`: a whole cluster on this machine, in one command.
//!
//! Real processes: one agent per server (each on its own loopback address 127.0.0.x), the
//! controller, the builtin proxy as the front end on `--listen`, and an aging sample service
//! placed on the primaries. A fixed-rate load (GETs and counter POSTs) runs against the front
//! end while the demo shows what rejuv sees and does (a live view on a terminal, see
//! [`crate::view`]); at the end (or on SIGTERM) it stops everything it started and writes a
//! summary.
//!
//! On one machine every agent sees the same host, so the demo judges each server by its own
//! instances' RSS against a per-server memory budget (`instance-rss`), as a per-service policy
//! would on a real fleet.

use crate::procs::Proc;
use anyhow::Context;
use clap::{Args, ValueEnum};
use rejuv_core::types::Mode;
use serde::Serialize;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DemoMode {
    ActiveStandby,
    ActiveActive,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Lb {
    /// The builtin proxy (its own process).
    Builtin,
    /// A real HAProxy from PATH, driven through its runtime API.
    Haproxy,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// The load balancer in front of the cluster.
    #[arg(long, value_enum, default_value_t = Lb::Builtin)]
    pub lb: Lb,
    #[arg(long, value_enum, default_value_t = DemoMode::ActiveStandby)]
    pub mode: DemoMode,
    /// How long the load runs, counted from the moment the front end serves.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Primaries (default: 3 in active-standby, 4 in active-active).
    #[arg(long)]
    pub servers: Option<u32>,
    /// Spares (default: 1 in active-standby; active-active has none).
    #[arg(long)]
    pub spares: Option<u32>,
    /// The front end clients use.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Requests per second of the demo's own load (every 10th a POST).
    #[arg(long, default_value_t = 300)]
    pub load_rps: u32,
    /// Control run: the same cluster, with the controller never starting a workflow.
    #[arg(long)]
    pub no_rejuvenation: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// State directory (default: a fresh one under the temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Bytes each request leaks in the sample service.
    #[arg(long, default_value_t = 10 * 1024)]
    pub leak_per_request: u64,
    /// Bytes the sample service leaks per second.
    #[arg(long, default_value_t = 400 * 1024)]
    pub leak_per_second: u64,
    /// Leaked bytes past which the sample service dies like an OOM kill.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub leak_limit: u64,
    /// Memory budget of each server's instances; the detector's instance-rss rule uses it.
    #[arg(long, default_value_t = 112 * 1024 * 1024)]
    pub memory_budget: u64,
}

#[derive(Serialize, Debug)]
pub struct Summary {
    pub mode: String,
    pub duration_s: f64,
    pub requests_total: u64,
    pub requests_failed: u64,
    pub rejuvenations_completed: u64,
    pub rejuvenations_aborted: u64,
    pub crashes: u64,
    pub latency_ms: Latency,
    pub counter: Counter,
    pub workflows: Vec<Value>,
    pub state_dir: PathBuf,
}

#[derive(Serialize, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Serialize, Debug)]
pub struct Counter {
    pub expected: u64,
    pub actual: u64,
}

/// A free TCP port on `ip`, found by binding port 0.
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))
        .with_context(|| format!("finding a free port on {ip}"))?;
    Ok(l.local_addr()?.port())
}

/// A range of `n` ports on `ip` that are free right now.
fn free_range(ip: IpAddr, n: u16) -> anyhow::Result<[u16; 2]> {
    for _ in 0..200 {
        let base = 20_000 + (rand::random::<u16>() % 40_000);
        if (base..base + n).all(|p| std::net::TcpListener::bind((ip, p)).is_ok()) {
            return Ok([base, base + n - 1]);
        }
    }
    anyhow::bail!("no free range of {n} ports on {ip}")
}

struct Plan {
    config_path: PathBuf,
    token_path: PathBuf,
    controller: SocketAddr,
    admin: SocketAddr,
    servers: Vec<(String, SocketAddr)>,
    token: String,
}

fn write_config(args: &DemoArgs, dir: &Path, mode: Mode) -> anyhow::Result<Plan> {
    let exe = std::env::current_exe().context("finding the rejuv executable")?;
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let token_path = dir.join("token");
    std::fs::write(&token_path, &token)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600))?;
    }
    let lo: IpAddr = "127.0.0.1".parse()?;
    let controller = SocketAddr::new(lo, free_port(lo)?);
    let admin = SocketAddr::new(lo, free_port(lo)?);
    let (primaries, spares) = match mode {
        Mode::ActiveStandby => (args.servers.unwrap_or(3), args.spares.unwrap_or(1)),
        Mode::ActiveActive => (args.servers.unwrap_or(4), 0),
    };
    anyhow::ensure!(primaries >= 1, "--servers must be at least 1");
    anyhow::ensure!(
        mode == Mode::ActiveActive || spares >= 1,
        "active-standby needs --spares of at least 1"
    );
    anyhow::ensure!(primaries + spares <= 200, "at most 200 servers in a demo");
    let host_actions = nix::unistd::geteuid().is_root();
    let mut toml = format!(
        r#"# Written by `rejuv demo`.
[cluster]
name = "demo"
mode = "{mode}"

[auth]
agent_token_file = "{token}"
api_token_file = "{token}"

[controller]
listen = "{controller}"
poll_interval = "500ms"
agent_timeout = "2s"

[policy]
hold_down = "1s"
# A safety net only: the trend rule below acts long before.
rules = [
  {{ resource = "instance-rss", above = 0.8 }},
  {{ resource = "memory-used", above = 0.97 }},
]

# The predictive rule, scaled for services that age within a minute (sampled twice a second).
# On one machine every agent sees the same host, so the demo judges instance-rss (each server's
# instances against its memory budget) and health latency, not host-wide readings.
[policy.trend]
window = "48s"
min_window = "8s"
horizon = "60s"
min_persistence = "2s"
resources = ["instance-rss", "health-latency-ms"]

[gate]
max_load = 64.0
min_running_time = "5s"
max_wait = "10s"

[budget]
max_concurrent = 1

[rejuvenation]
actions = ["stop-instances", "clear-scratch", "drop-caches", "compact-memory", "restart-agent"]
duplex_timeout = "15s"
verify_timeout = "20s"
failed_target_cooldown = "30s"

[agent]
host_actions = {host_actions}
sample_interval = "500ms"

{traffic}

[store]
path = "{store}"

[services.web]
command = "{exe}"
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}",
        "--leak-per-request", "{lpr}", "--leak-per-second", "{lps}", "--limit", "{limit}",
        "--latency-per-mib-us", "20"]
env = {{ REJUV_LOG = "warn" }}
health = {{ path = "/healthz", interval = "250ms", timeout = "1s" }}
drain = "5s"
stop_grace = "3s"
handoff = {{ export = "/_rejuv/state", import = "/_rejuv/state", hold = "3s" }}

# A cache that warms up to a plateau and stays there: the detector must leave its server alone.
[services.cache]
command = "{exe}"
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}",
        "--leak-per-second", "{cache_rate}", "--leak-cap", "{cache_cap}"]
env = {{ REJUV_LOG = "warn" }}
health = {{ path = "/healthz", interval = "250ms", timeout = "1s" }}
drain = "2s"
stop_grace = "3s"
"#,
        cache_rate = 10 * 1024 * 1024,
        cache_cap = args.memory_budget * 2 / 5,
        token = token_path.display(),
        traffic = match args.lb {
            Lb::Builtin => format!(
                "[traffic]\nadapter = \"builtin\"\nadmin = \"{admin}\"\nlisten = {{ web = \"{}\" }}\n",
                args.listen
            ),
            Lb::Haproxy => format!(
                "[traffic]\nadapter = \"haproxy\"\n[traffic.haproxy]\nsocket = \"unix:{}\"\nbackends = {{ web = \"be_web\" }}\n",
                dir.join("haproxy.sock").display()
            ),
        },
        store = dir.join("rejuv.db").display(),
        exe = exe.display(),
        lpr = args.leak_per_request,
        lps = args.leak_per_second,
        limit = args.leak_limit,
    );
    let mut servers = Vec::new();
    for i in 0..primaries + spares {
        let id = format!("s{}", i + 1);
        let ip: IpAddr = format!("127.0.0.{}", 2 + i).parse()?;
        let agent = SocketAddr::new(ip, free_port(ip)?);
        let range = free_range(ip, 16)?;
        let role = if i < primaries { "primary" } else { "spare" };
        // With three primaries or more, the last one runs the plateauing cache instead of the
        // aging web service: a server rejuv should leave alone.
        let instances = if i + 1 == primaries && primaries >= 3 {
            r#"["cache"]"#
        } else if i < primaries {
            r#"["web"]"#
        } else {
            "[]"
        };
        toml.push_str(&format!(
            r#"
[[servers]]
id = "{id}"
address = "{ip}"
agent = "{agent}"
role = "{role}"
capacity = 4
port_range = [{}, {}]
memory_budget_bytes = {budget}
instances = {instances}
data_dir = "{data}"
"#,
            range[0],
            range[1],
            budget = args.memory_budget,
            data = dir.join("agents").join(&id).display(),
        ));
        servers.push((id, agent));
    }
    let config_path = dir.join("rejuv.toml");
    std::fs::write(&config_path, &toml)?;
    rejuv_core::config::Config::from_toml(&toml)
        .context("the demo wrote a config it cannot read")?;
    Ok(Plan {
        config_path,
        token_path,
        controller,
        admin,
        servers,
        token,
    })
}

/// The HAProxy the demo runs with `--lb haproxy`: a frontend on `listen`, an empty backend
/// whose servers rejuv adds at run time, and the runtime API on a socket in the state dir.
fn haproxy_config(dir: &Path, listen: SocketAddr) -> String {
    format!(
        r#"# Written by `rejuv demo --lb haproxy` (see deploy/haproxy/ for a commented example).
global
    stats socket {sock} mode 600 level admin
    stats timeout 10s

defaults
    mode http
    option redispatch
    retries 3
    retry-on conn-failure
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 5s
    timeout http-request 10s
    timeout http-keep-alive 10s

frontend web
    bind {listen}
    default_backend be_web

backend be_web
    balance roundrobin
"#,
        sock = dir.join("haproxy.sock").display()
    )
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs").join(format!("{name}.log")))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

async fn wait_http(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < until,
            "{what} did not answer at {url} within {limit:?}; see the logs in the state directory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Events worth a progress line: everything but a server judged stable again (that is the
/// normal state, and a noisy signal would print it again and again).
fn worth_a_line(e: &Value) -> bool {
    let kind = e["kind"].as_str().unwrap_or("");
    let msg = e["message"].as_str().unwrap_or("");
    !(kind == "judgement" && msg.contains("stable") && !msg.contains("unstable"))
}

pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DemoArgs) -> anyhow::Result<i32> {
    let shutdown = crate::procs::shutdown_on_signal();
    let mode = match args.mode {
        DemoMode::ActiveStandby => Mode::ActiveStandby,
        DemoMode::ActiveActive => Mode::ActiveActive,
    };
    let dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "rejuv-demo-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
        )),
    };
    std::fs::create_dir_all(dir.join("logs"))?;
    let plan = write_config(&args, &dir, mode)?;
    let exe = std::env::current_exe()?;
    let mut p = crate::view::Progress::new(&mode.to_string());
    p.line(&format!("state directory: {}", dir.display()));
    p.line(&format!(
        "{mode} cluster: {} servers; config {}",
        plan.servers.len(),
        plan.config_path.display()
    ));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    // Processes, dropped (and so stopped) in reverse order: controller, proxy, agents.
    let mut agents = Vec::new();
    for (id, _) in &plan.servers {
        let (out, err) = log_file(&dir, &format!("agent-{id}"))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["agent", "--config"])
            .arg(&plan.config_path)
            .args(["--server", id]);
        cmd.stdout(out).stderr(err).stdin(Stdio::null());
        agents.push(Proc::spawn(&format!("agent {id}"), cmd)?);
    }
    for (id, addr) in &plan.servers {
        wait_http(
            &http,
            &format!("http://{addr}/healthz"),
            &format!("agent {id}"),
            Duration::from_secs(30),
        )
        .await?;
    }
    let mut proxy = match args.lb {
        Lb::Builtin => {
            let (out, err) = log_file(&dir, "proxy")?;
            let mut cmd = Command::new(&exe);
            cmd.args(["proxy", "--config"]).arg(&plan.config_path);
            cmd.stdout(out).stderr(err).stdin(Stdio::null());
            let p = Proc::spawn("proxy", cmd)?;
            wait_http(
                &http,
                &format!("http://{}/healthz", plan.admin),
                "proxy",
                Duration::from_secs(30),
            )
            .await?;
            p
        }
        Lb::Haproxy => {
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(&dir, args.listen))?;
            let (out, err) = log_file(&dir, "haproxy")?;
            let mut cmd = Command::new("haproxy");
            cmd.args(["-db", "-f"]).arg(&cfg);
            cmd.stdout(out).stderr(err).stdin(Stdio::null());
            let p = Proc::spawn("haproxy", cmd)
                .context("starting haproxy from PATH (Debian package haproxy)")?;
            let sock = dir.join("haproxy.sock");
            let until = Instant::now() + Duration::from_secs(30);
            while std::os::unix::net::UnixStream::connect(&sock).is_err() {
                anyhow::ensure!(
                    Instant::now() < until,
                    "haproxy did not open {}; see logs/haproxy.log",
                    sock.display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            p
        }
    };
    let mut controller = {
        let (out, err) = log_file(&dir, "controller")?;
        let mut cmd = Command::new(&exe);
        cmd.args(["controller", "--config"]).arg(&plan.config_path);
        if args.no_rejuvenation {
            cmd.arg("--paused");
        }
        cmd.stdout(out).stderr(err).stdin(Stdio::null());
        Proc::spawn("controller", cmd)?
    };
    wait_http(
        &http,
        &format!("http://{}/healthz", plan.controller),
        "controller",
        Duration::from_secs(30),
    )
    .await?;
    p.line(&format!(
        "agents, proxy and controller up; waiting for the front end {} to serve",
        args.listen
    ));
    wait_http(
        &http,
        &format!("http://{}/", args.listen),
        "front end",
        Duration::from_secs(60),
    )
    .await?;

    p.raw(&format!(
        "dashboard: http://{}/ui#token={}",
        plan.controller, plan.token
    ));
    p.raw(&format!("token file: {}", plan.token_path.display()));
    p.line(&format!(
        "front end serving; load {} req/s for {:?}{}",
        args.load_rps,
        args.duration,
        if args.no_rejuvenation {
            " (control run: rejuvenation off)"
        } else {
            ""
        }
    ));

    let load_opts = rejuv_sample::loadgen::LoadOptions {
        target: args.listen,
        rps: args.load_rps,
        duration: args.duration,
        connections: 8,
        post_every: 10,
        timeout: Duration::from_secs(5),
    };
    let load_stop = shutdown.child_token();
    let stats = rejuv_sample::loadgen::LiveStats::new();
    let load = tokio::spawn(rejuv_sample::loadgen::run_with_stats(
        load_opts,
        load_stop.clone(),
        stats.clone(),
    ));

    // Progress until the load ends: events as they come (every 500 ms), the cluster's status
    // about once a second for the view (or a summary line every 10 s without a terminal).
    let auth = format!("Bearer {}", plan.token);
    let mut last_seq: i64 = 0;
    let mut last_status: Option<Instant> = None;
    let load_started = Instant::now();
    while !load.is_finished() {
        tokio::select! {
            _ = shutdown.cancelled() => { load_stop.cancel(); break; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Ok(r) = http
            .get(format!(
                "http://{}/v1/events?after={last_seq}&limit=200",
                plan.controller
            ))
            .header("authorization", &auth)
            .send()
            .await
        {
            if let Ok(v) = r.json::<Value>().await {
                for e in v.as_array().into_iter().flatten() {
                    last_seq = e["seq"].as_i64().unwrap_or(last_seq);
                    if !worth_a_line(e) {
                        continue;
                    }
                    p.line(&format!(
                        "{:<4} {:<20} {}",
                        e["server"].as_str().unwrap_or("-"),
                        e["kind"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        if last_status.is_none_or(|t| t.elapsed() >= Duration::from_millis(900)) {
            last_status = Some(Instant::now());
            if let Ok(r) = http
                .get(format!("http://{}/v1/status", plan.controller))
                .header("authorization", &auth)
                .send()
                .await
            {
                if let Ok(v) = r.json::<Value>().await {
                    let totals = crate::view::Totals {
                        load: stats.snapshot(),
                        elapsed: load_started.elapsed(),
                        duration: args.duration,
                        rps: args.load_rps,
                    };
                    p.update(&v, &totals);
                }
            }
        }
    }
    p.finish();
    let report = load.await.context("load generator task")??;
    p.line(&format!(
        "load done: {} requests, {} failed, {} POSTs ok",
        report.requests_total, report.requests_failed, report.posts_ok
    ));

    // Let running workflows finish before counting, so no state is mid-move.
    if !args.no_rejuvenation {
        p.line("pausing new workflows; letting running ones finish (up to 40s) before counting");
        let _ = http
            .post(format!("http://{}/v1/pause", plan.controller))
            .header("authorization", &auth)
            .send()
            .await;
        let until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < until && !shutdown.is_cancelled() {
            let busy = match http
                .get(format!("http://{}/v1/status", plan.controller))
                .header("authorization", &auth)
                .send()
                .await
            {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .map(|v| v["workflows"].as_array().is_some_and(|a| !a.is_empty()))
                    .unwrap_or(true),
                Err(_) => true,
            };
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let status: Value = http
        .get(format!("http://{}/v1/status", plan.controller))
        .header("authorization", &auth)
        .send()
        .await?
        .json()
        .await?;
    let mut actual = 0u64;
    for s in status["servers"].as_array().into_iter().flatten() {
        for i in s["instances"].as_array().into_iter().flatten() {
            if i["traffic"] != "serving" {
                continue;
            }
            let Some(addr) = i["addr"].as_str() else {
                continue;
            };
            if let Ok(r) = http.get(format!("http://{addr}/counter")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    actual += v["counter"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    let mut crashes = 0u64;
    for (_, addr) in &plan.servers {
        if let Ok(r) = http
            .get(format!("http://{addr}/v1/state"))
            .header("authorization", &auth)
            .send()
            .await
        {
            if let Ok(v) = r.json::<Value>().await {
                crashes += v["crashes_total"].as_u64().unwrap_or(0);
            }
        }
    }
    let workflows: Vec<Value> = status["history"].as_array().cloned().unwrap_or_default();
    let summary = Summary {
        mode: mode.to_string(),
        duration_s: load_started.elapsed().as_secs_f64(),
        requests_total: report.requests_total,
        requests_failed: report.requests_failed,
        rejuvenations_completed: status["completed_total"].as_u64().unwrap_or(0),
        rejuvenations_aborted: status["rolled_back_total"].as_u64().unwrap_or(0)
            + status["failed_total"].as_u64().unwrap_or(0),
        crashes,
        latency_ms: Latency {
            p50: report.latency_ms_p50,
            p99: report.latency_ms_p99,
            max: report.latency_ms_max,
        },
        counter: Counter {
            expected: report.posts_ok,
            actual,
        },
        workflows,
        state_dir: dir.clone(),
    };

    controller.stop(Duration::from_secs(10));
    proxy.stop(Duration::from_secs(10));
    for a in agents.iter_mut() {
        a.stop(Duration::from_secs(15));
    }

    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &args.summary_json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    p.raw(&format!(
        "summary: mode={} requests_total={} requests_failed={} rejuvenations_completed={} rejuvenations_aborted={} crashes={} latency_ms p50={:.1} p99={:.1} max={:.1} counter expected={} actual={}",
        summary.mode, summary.requests_total, summary.requests_failed, summary.rejuvenations_completed,
        summary.rejuvenations_aborted, summary.crashes, summary.latency_ms.p50, summary.latency_ms.p99,
        summary.latency_ms.max, summary.counter.expected, summary.counter.actual
    ));
    Ok(0)
}
