//! `rejuv demo`: a whole cluster on this machine, in one command.
//!
//! Real processes: one agent per server (each on its own loopback address 127.0.0.x), the
//! controller, the builtin proxy as the front end on `--listen`, and an aging sample service
//! placed on the primaries. A fixed-rate load (GETs and counter POSTs) runs against the front
//! end while the demo shows what rejuv sees and does (a live view on a terminal, see
//! [`crate::view`]); at the end (or on SIGTERM) it stops everything it started and writes a
//! summary.
//!
//! With `--store etcd` the demo also runs etcd from PATH and `--controllers N` controllers on
//! it, one leading; `--chaos` SIGKILLs the leader at random moments and restarts it (see
//! [`crate::chaos`]). The front end is its own process either way, so a controller's death
//! drops no client connection. Every run has an invariant watcher outside the controllers;
//! its count is in the summary.
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
use tokio_util::sync::CancellationToken;

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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum StoreKind {
    /// One controller with a SQLite file in the state directory.
    Sqlite,
    /// etcd from PATH (Debian etcd-server); needs a binary built with --features etcd.
    Etcd,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the controllers keep the cluster state.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Controllers (more than one needs --store etcd: one leads, the others follow).
    #[arg(long, default_value_t = 1)]
    pub controllers: u32,
    /// SIGKILL the leading controller at random moments (every 12-25 s) and restart it;
    /// needs --store etcd and --controllers 2 or more.
    #[arg(long)]
    pub chaos: bool,
    /// Seed of the chaos schedule (default: random, printed).
    #[arg(long)]
    pub chaos_seed: Option<u64>,
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
    pub store: String,
    pub controllers: u32,
    /// Broken invariants seen by the watcher outside the controllers (see [`crate::chaos`]).
    pub invariant_violations: u64,
    pub invariant_details: Vec<String>,
    /// Polls of the watcher that reached a leader (and the proxy): what the count rests on.
    pub invariant_polls: u64,
    /// Changes of leading controller after the first election.
    pub leader_changes: u64,
    /// etcd runs: SIGKILLs sent by chaos.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_kills: Option<u64>,
    /// etcd runs: controllers that exited on their own (a deposed leader) and were restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_exits: Option<u64>,
    /// etcd runs: per kill, milliseconds until another controller led.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handover_ms: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos_seed: Option<u64>,
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
pub(crate) fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
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
    config: rejuv_core::config::Config,
    /// The controllers' API addresses; the first is `controller.listen` of the config.
    controllers: Vec<SocketAddr>,
    admin: SocketAddr,
    servers: Vec<(String, SocketAddr)>,
    token: String,
}

fn write_config(
    args: &DemoArgs,
    dir: &Path,
    mode: Mode,
    etcd: Option<&str>,
) -> anyhow::Result<Plan> {
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
    let mut controllers = Vec::new();
    for _ in 0..args.controllers {
        controllers.push(SocketAddr::new(lo, free_port(lo)?));
    }
    let controller = controllers[0];
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
# One primary at a time may be out of service: the one a workflow moves.
min_available_capacity = {floor}

[rejuvenation]
actions = ["stop-instances", "clear-scratch", "drop-caches", "compact-memory", "restart-agent"]
duplex_timeout = "15s"
verify_timeout = "20s"
failed_target_cooldown = "30s"

[agent]
host_actions = {host_actions}
sample_interval = "500ms"

{traffic}

{store}

[services.web]
command = "{exe}"
args = ["sample-service", "--listen", "{{address}}:{{port}}", "--instance-id", "{{instance}}",
        "--leak-per-request", "{lpr}", "--leak-per-second", "{lps}", "--limit", "{limit}",
        "--latency-per-mib-us", "20"]
env = {{ REJUV_LOG = "warn" }}
health = {{ path = "/healthz", interval = "250ms", timeout = "1s" }}
drain = "5s"
stop_grace = "3s"
handoff = {{ export = "/_rejuv/state", import = "/_rejuv/state", hold = "{hold}" }}

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
        floor = primaries.saturating_sub(1) * 4,
        // Requests held during a hand-off must outlast a leader's replacement (lease 3 s).
        hold = if etcd.is_some() { "5s" } else { "3s" },
        store = match etcd {
            // A short lease: a dead leader is replaced within about 3 s.
            Some(endpoint) => format!(
                "[store]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/rejuv/demo\"\nlease_ttl = \"3s\"\n"
            ),
            None => format!("[store]\npath = \"{}\"\n", dir.join("rejuv.db").display()),
        },
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
    let config = rejuv_core::config::Config::from_toml(&toml)
        .context("the demo wrote a config it cannot read")?;
    Ok(Plan {
        config_path,
        token_path,
        config,
        controllers,
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

pub(crate) fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
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

/// The usage rules of `--store`, `--controllers` and `--chaos`, checked before anything starts.
fn check_args(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.controllers >= 1, "--controllers must be at least 1");
    anyhow::ensure!(args.controllers <= 9, "--controllers: at most 9 in a demo");
    if args.store == StoreKind::Sqlite {
        anyhow::ensure!(
            args.controllers == 1,
            "--controllers {} needs --store etcd: controllers share the cluster state through etcd (SQLite serves one controller)",
            args.controllers
        );
        anyhow::ensure!(
            !args.chaos,
            "--chaos needs --store etcd and --controllers 2 or more"
        );
    }
    anyhow::ensure!(
        !args.chaos || args.controllers >= 2,
        "--chaos needs --controllers 2 or more (it kills the leader; another must take over)"
    );
    anyhow::ensure!(
        args.store != StoreKind::Etcd || cfg!(feature = "etcd"),
        "--store etcd: this binary was built without etcd support; build with --features etcd"
    );
    Ok(())
}

/// The controller to talk to: the leader the supervisor saw last, waiting up to `limit` for
/// one.
async fn leader_within(
    rx: &tokio::sync::watch::Receiver<Option<SocketAddr>>,
    limit: Duration,
) -> Option<SocketAddr> {
    let until = Instant::now() + limit;
    loop {
        if let Some(a) = *rx.borrow() {
            return Some(a);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_async(args: DemoArgs) -> anyhow::Result<i32> {
    check_args(&args)?;
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
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut p = crate::view::Progress::new(&mode.to_string());
    p.line(&format!("state directory: {}", dir.display()));
    // Declared first, so dropped (stopped) last: the controllers revoke their leases on a
    // clean stop, which needs etcd.
    let etcd = match args.store {
        StoreKind::Etcd => {
            let e = crate::chaos::start_etcd(&dir, &http).await?;
            p.line(&format!("etcd up at {} (log: logs/etcd.log)", e.endpoint));
            Some(e)
        }
        StoreKind::Sqlite => None,
    };
    let plan = write_config(
        &args,
        &dir,
        mode,
        etcd.as_ref().map(|e| e.endpoint.as_str()),
    )?;
    let exe = std::env::current_exe()?;
    p.line(&format!(
        "{mode} cluster: {} servers; config {}",
        plan.servers.len(),
        plan.config_path.display()
    ));

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
    let controllers = crate::chaos::Controllers::start(
        &exe,
        &plan.config_path,
        &dir,
        &plan.controllers,
        args.no_rejuvenation,
    )?;
    for c in &plan.controllers {
        wait_http(
            &http,
            &format!("http://{c}/healthz"),
            "controller",
            Duration::from_secs(30),
        )
        .await?;
    }
    // The leader, as the supervisor sees it (with SQLite: the one controller, always).
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(match args.store {
        StoreKind::Sqlite => Some(plan.controllers[0]),
        StoreKind::Etcd => None,
    });
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let background = CancellationToken::new();
    // Chaos stops when the load ends, so the summary is read from a settled cluster.
    let chaos_stop = background.child_token();
    let chaos_seed = args
        .chaos
        .then(|| args.chaos_seed.unwrap_or_else(rand::random));
    let mut sqlite_controllers = None;
    let supervisor = match args.store {
        StoreKind::Etcd => Some(tokio::spawn(crate::chaos::supervise(
            controllers,
            chaos_seed,
            chaos_stop.clone(),
            leader_tx,
            lines_tx.clone(),
            background.clone(),
        ))),
        StoreKind::Sqlite => {
            sqlite_controllers = Some(controllers);
            None
        }
    };
    let watcher = tokio::spawn(crate::chaos::watch_invariants(
        plan.config.clone(),
        plan.controllers.clone(),
        (args.lb == Lb::Builtin).then_some(plan.admin),
        plan.token.clone(),
        lines_tx.clone(),
        background.clone(),
    ));
    drop(lines_tx);
    let first_leader = leader_within(&leader_rx, Duration::from_secs(30))
        .await
        .context("no controller became the leader within 30 s; see logs/controller*.log")?;
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
        first_leader, plan.token
    ));
    if plan.controllers.len() > 1 {
        let others: Vec<String> = plan
            .controllers
            .iter()
            .filter(|c| **c != first_leader)
            .map(|c| c.to_string())
            .collect();
        p.line(&format!(
            "{} controllers: {first_leader} leads now, also {}; a follower answers 503 with x-rejuv-leader naming the leader",
            plan.controllers.len(),
            others.join(", ")
        ));
    }
    p.raw(&format!("token file: {}", plan.token_path.display()));
    if let Some(seed) = chaos_seed {
        p.line(&format!(
            "chaos on (seed {seed}): the leader is SIGKILLed every 12-25 s and restarted"
        ));
    }
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
        while let Ok(l) = lines_rx.try_recv() {
            p.line(&l);
        }
        // No leader right now (a handover under way): try again in 500 ms.
        let Some(controller) = *leader_rx.borrow() else {
            continue;
        };
        if let Ok(r) = http
            .get(format!(
                "http://{controller}/v1/events?after={last_seq}&limit=200"
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
                .get(format!("http://{controller}/v1/status"))
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
    chaos_stop.cancel();
    p.finish();
    let report = load.await.context("load generator task")??;
    p.line(&format!(
        "load done: {} requests, {} failed, {} POSTs ok",
        report.requests_total, report.requests_failed, report.posts_ok
    ));

    // The last kill may have left no leader yet: wait for one (the lease TTL and a bit).
    let controller = leader_within(&leader_rx, Duration::from_secs(30))
        .await
        .context("no controller leads 30 s after the load ended; see logs/controller*.log")?;
    // Let running workflows finish before counting, so no state is mid-move.
    if !args.no_rejuvenation {
        p.line("pausing new workflows; letting running ones finish (up to 40s) before counting");
        let _ = http
            .post(format!("http://{controller}/v1/pause"))
            .header("authorization", &auth)
            .send()
            .await;
        let until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < until && !shutdown.is_cancelled() {
            let busy = match http
                .get(format!("http://{controller}/v1/status"))
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
        .get(format!("http://{controller}/v1/status"))
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

    background.cancel();
    let watched = watcher.await.context("invariant watcher task")?;
    let (mut controllers, supervised) = match supervisor {
        Some(s) => {
            let (c, r) = s.await.context("controller supervisor task")?;
            (c, Some(r))
        }
        None => (sqlite_controllers.context("the SQLite controller")?, None),
    };
    while let Ok(l) = lines_rx.try_recv() {
        p.line(&l);
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
        store: match args.store {
            StoreKind::Sqlite => "sqlite".into(),
            StoreKind::Etcd => "etcd".into(),
        },
        controllers: args.controllers,
        invariant_violations: watched.violations,
        invariant_details: watched.details,
        invariant_polls: watched.polls,
        leader_changes: supervised.as_ref().map_or(0, |r| r.leader_changes),
        controller_kills: supervised.as_ref().map(|r| r.controller_kills),
        controller_exits: supervised.as_ref().map(|r| r.controller_exits),
        handover_ms: supervised.as_ref().map(|r| r.handover_ms.clone()),
        chaos_seed,
    };

    controllers.stop(Duration::from_secs(10));
    proxy.stop(Duration::from_secs(10));
    for a in agents.iter_mut() {
        a.stop(Duration::from_secs(15));
    }
    drop(etcd);

    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &args.summary_json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut ha = String::new();
    if let (Some(k), Some(h)) = (summary.controller_kills, &summary.handover_ms) {
        ha = format!(
            " controller_kills={k} handover_ms_max={}",
            h.iter().max().copied().unwrap_or(0)
        );
    }
    p.raw(&format!(
        "summary: mode={} requests_total={} requests_failed={} rejuvenations_completed={} rejuvenations_aborted={} crashes={} latency_ms p50={:.1} p99={:.1} max={:.1} counter expected={} actual={} invariant_violations={} leader_changes={}{ha}",
        summary.mode, summary.requests_total, summary.requests_failed, summary.rejuvenations_completed,
        summary.rejuvenations_aborted, summary.crashes, summary.latency_ms.p50, summary.latency_ms.p99,
        summary.latency_ms.max, summary.counter.expected, summary.counter.actual,
        summary.invariant_violations, summary.leader_changes
    ));
    Ok(0)
}
