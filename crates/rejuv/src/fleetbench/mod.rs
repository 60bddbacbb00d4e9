//! `rejuv bench fleet`: the real controller (and the real builtin proxy, and a real store)
//! against a swarm of simulated agents on loopback addresses, to measure what a fleet of a
//! given size costs the controller.
//!
//! The swarm ([`swarm`]) answers as every agent of the generated config over the agent API.
//! A few primaries age; their workflows run end to end against the swarm (copies started on
//! a spare, the switch through the proxy, the rejuvenation, the rejoin). The benchmark reads
//! the controller's CPU time, peak RSS and bytes written from `/proc`, its judgement latency
//! and commits from its `/metrics`, and what the swarm saw from the swarm's own account.

pub mod swarm;

use crate::procs::{free_port, log_file, Proc};
use anyhow::Context;
use rejuv_core::config::Config;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// The real controller against a swarm of simulated agents: its CPU, memory, judgement
    /// latency and store writes for a fleet of a given size.
    #[command(after_help = "\
Examples:
  rejuv bench fleet --servers 1000 --interval 1s --duration 180s --summary-json fleet.json
  rejuv bench fleet --servers 10000 --interval 10s --duration 180s --summary-json fleet.json
  rejuv bench fleet --servers 1000 --interval 10s --store etcd     # etcd from PATH
  rejuv bench fleet --servers 1000 --interval 1s --controllers 3 --store etcd   # one killed mid-workflow

The agents' addresses are 127.20.0.1 and up (one per server); the swarm answers for at most
5,000 of them per process. The summary's figures are described in docs/bench-fleet.md.")]
    Fleet(FleetArgs),
    /// The simulated agents of `rejuv bench fleet` (started by it).
    #[command(hide = true)]
    Swarm(swarm::SwarmArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Etcd,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Servers in the fleet (primaries and spares).
    #[arg(long, default_value_t = 1000)]
    pub servers: usize,
    /// How often the controller polls each agent (`controller.poll_interval`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long the fleet runs, from the moment every agent listens.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Measurements start this long into the run (the controller's start-up is left out).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Primaries that age (a leak past the memory rule), spread over the fleet.
    #[arg(long, default_value_t = 5)]
    pub aged: usize,
    /// Spares (default: one per 50 servers, at least twice `--aged`).
    #[arg(long)]
    pub spares: Option<usize>,
    /// Where the controller keeps its state.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Keep config, logs and store here (default: a temporary directory, removed after).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Plain HTTP between the controller and the simulated agents (`[tls] insecure = true`).
    /// By default they talk mutual TLS as production does: a fleet CA made for the run and
    /// one certificate per simulated agent, naming its server id and address.
    #[arg(long)]
    pub insecure: bool,
    /// Controllers (more than one needs `--store etcd`): the fleet is split into as many
    /// shards (`store.shards`), each owned by one controller at a time.
    #[arg(long, default_value_t = 1)]
    pub controllers: u32,
    /// With several controllers, SIGKILL the owner of the first shard seen running a workflow
    /// (once, after half the warm-up), and go on with the others.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub kill: bool,
    /// `budget.max_concurrent` (default: the number of aged servers).
    #[arg(long)]
    pub max_concurrent: Option<u32>,
}

/// Agents a swarm process answers for: each is a listening socket and a connection from the
/// controller, and a process holds at most 20,000 descriptors here.
const AGENTS_PER_SWARM: usize = 5_000;

/// What `rejuv bench fleet` reports.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
    pub servers: usize,
    pub interval_s: f64,
    pub duration_s: f64,
    pub store: StoreKind,
    /// Mean over the run after the warm-up, in % of one core.
    pub controller_cpu_pct: f64,
    /// Peak resident memory of the controller, MiB.
    pub controller_rss_mb: f64,
    /// From a reading's time on the agent to the controller's judgement of it.
    pub judge_latency_ms: Quantiles,
    /// Bytes written to storage per second for the controller (its SQLite store and log, or
    /// with etcd the etcd process's writes too), after the warm-up.
    pub store_bytes_per_s: f64,
    /// Store commits per second, after the warm-up.
    pub commits_per_s: f64,
    /// Agent polls answered per second, after the warm-up.
    pub polls_per_s: f64,
    pub workflows_completed: u64,
    pub servers_aged: usize,
    pub aged_rejuvenated: usize,
    /// Servers rejuvenated, or in a workflow, or judged unstable at the end, that were not aged.
    pub judged_unstable_wrongly: usize,
    /// The swarm's processes together, in % of one core, after the warm-up.
    pub swarm_cpu_pct: f64,
    pub swarm_processes: usize,
    /// Whether the controller and the agents talked mutual TLS (`false` with `--insecure`).
    pub tls: bool,
    /// Controllers started.
    pub controllers: u32,
    /// Controllers SIGKILLed during the run.
    pub controller_kills: u32,
    /// Times a shard's owner changed to another controller (after every shard first had one).
    pub shard_moves: u32,
    /// Workflows run twice: a server in the workflows of two shards at once, a shard claimed by
    /// two controllers at once, or a rejuvenation of an aged server not past the memory rule
    /// (a second run for one aging episode), as the swarm saw it.
    pub workflows_doubled: u32,
    /// Most unforced workflows seen running at once, over every shard (read every second).
    pub budget_max_seen: u32,
    /// `budget.max_concurrent` of the run's config.
    pub max_concurrent: u32,
    /// From the kill to the moment every shard of the killed controller was seen owned by
    /// another (read every second, so within about a second).
    pub shard_handover_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<i32> {
    match cmd {
        BenchCmd::Swarm(args) => swarm::run(args),
        BenchCmd::Fleet(args) => fleet(args),
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks / hz)
}

/// A `/proc/PID/status` field in kB.
fn status_kb(pid: i32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Bytes a process has caused to be written to storage (`/proc/PID/io` `write_bytes`).
fn write_bytes(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Raises this process's open-file limit to its hard limit (the children inherit it).
fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// The address of server `i`'s agent: 127.20.0.1 and up.
fn agent_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 20, 0, 1)) + i as u32,
    ))
}

/// The aged primaries: `n` of them, spread evenly over the primaries.
fn aged_ids(primaries: usize, n: usize) -> Vec<String> {
    let n = n.min(primaries);
    (0..n)
        .map(|k| format!("s{}", k * primaries / n.max(1) + primaries / (2 * n.max(1))))
        .collect()
}

struct Layout {
    primaries: usize,
    spares: usize,
    port: u16,
    aged: Vec<String>,
}

fn write_config(
    dir: &Path,
    args: &FleetArgs,
    l: &Layout,
    etcd: Option<&str>,
) -> anyhow::Result<(PathBuf, Config)> {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ctl = SocketAddr::new(lo, free_port(lo)?);
    let admin = SocketAddr::new(lo, free_port(lo)?);
    let front = SocketAddr::new(lo, free_port(lo)?);
    // Five seconds whatever the interval: polls of one agent never overlap, and a fleet's
    // first connections (a TLS handshake each, all within the first interval) need more than
    // a one-second interval on two shared cores.
    let timeout = Duration::from_secs(5);
    let store = match etcd {
        Some(ep) => format!(
            "kind = \"etcd\"\nendpoints = [\"{ep}\"]\nshards = {}\n",
            args.controllers.max(1)
        ),
        None => format!("path = \"{}\"\n", dir.join("rejuv.db").display()),
    };
    let mut t = format!(
        r#"# Written by `rejuv bench fleet`.
[cluster]
name = "bench"
mode = "active-standby"
[auth]
agent_token_file = "{tok}"
api_token_file = "{tok}"
proxy_token_file = "{tok}"
[controller]
listen = "{ctl}"
poll_interval = "{interval}"
agent_timeout = "{timeout}"
[agent]
sample_interval = "{interval}"
[policy]
hold_down = "{hold}"
rules = [{{ resource = "memory-used", above = 0.9 }}]
[gate]
min_running_time = "0s"
max_load = 64.0
[budget]
max_concurrent = {concurrent}
[rejuvenation]
duplex_timeout = "{verify}"
verify_timeout = "{verify}"
actions = ["stop-instances", "clear-scratch", "restart-agent"]
[traffic]
adapter = "builtin"
admin = "{admin}"
listen = {{ web = "{front}" }}
[store]
{store}
{tls}
[services.web]
command = "/bin/true"
drain = "1s"
health = {{ path = "/healthz" }}
"#,
        tok = dir.join("token").display(),
        tls = if args.insecure {
            "[tls]\ninsecure = true\n".to_string()
        } else {
            issue_certificates(dir, l)?
        },
        interval = humantime::format_duration(args.interval),
        timeout = humantime::format_duration(timeout),
        hold = humantime::format_duration(args.interval * 2),
        concurrent = args.max_concurrent.unwrap_or(l.aged.len() as u32).max(1),
        // Six polls, and never less than 30 s: copies turn healthy in a second, but the
        // controller learns it from the next poll of their server.
        verify = humantime::format_duration((args.interval * 6).max(Duration::from_secs(30))),
    );
    for i in 0..l.primaries + l.spares {
        let ip = agent_ip(i);
        let (role, inst) = if i < l.primaries {
            ("primary", "[\"web\"]")
        } else {
            ("spare", "[]")
        };
        t.push_str(&format!(
            "[[servers]]\nid = \"s{i}\"\naddress = \"{ip}\"\nagent = \"{ip}:{port}\"\nrole = \"{role}\"\ncapacity = 4\nport_range = [20000, 20099]\ninstances = {inst}\n",
            port = l.port
        ));
    }
    let path = dir.join("rejuv.toml");
    std::fs::write(&path, t)?;
    // Read back as the controller will read it: a mistake here fails the benchmark at once.
    let cfg = crate::config_file::load_config(&path)?;
    Ok((path, cfg))
}

/// The run's fleet CA in `dir/tls` and a certificate for the controller, the proxy and every
/// simulated agent (named by its server id, for its address); gives the `[tls]` section. The
/// operator API stays plain HTTP (`api = false`): the benchmark measures the agents' traffic.
fn issue_certificates(dir: &Path, l: &Layout) -> anyhow::Result<String> {
    use rejuv_net::tls::issue::{init_ca, issue, IssueRequest, CA_CERT};
    use rejuv_net::tls::Role;
    let tls = dir.join("tls");
    if !tls.join(CA_CERT).exists() {
        init_ca(&tls, 2).context("making the run's CA")?;
    }
    let started = std::time::Instant::now();
    let lo = vec!["127.0.0.1".to_string()];
    let mut parts = vec![
        (Role::Controller, "controller".to_string(), lo.clone()),
        (Role::Proxy, "proxy".to_string(), lo),
    ];
    for i in 0..l.primaries + l.spares {
        parts.push((Role::Agent, format!("s{i}"), vec![agent_ip(i).to_string()]));
    }
    for (role, name, sans) in &parts {
        issue(&IssueRequest {
            ca_dir: &tls,
            role: *role,
            name,
            sans,
            days: 2,
            out_dir: &tls,
        })
        .with_context(|| format!("issuing the certificate of {role} {name}"))?;
    }
    eprintln!(
        "fleet: {} certificates issued in {:.1}s (mutual TLS; --insecure for plain HTTP)",
        parts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(format!(
        "[tls]\nca = \"{ca}\"\ncert = \"{d}/{{name}}.pem\"\nkey = \"{d}/{{name}}.key\"\napi = false\n",
        ca = tls.join(CA_CERT).display(),
        d = tls.display()
    ))
}

fn write_token(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(dir.join("token"))?;
    writeln!(f, "{hex}")?;
    Ok(())
}

/// What is read when the warm-up ends: figures are differences from it.
struct AtWarm {
    at: Instant,
    /// CPU seconds of each controller.
    cpu: Vec<f64>,
    /// Bytes each controller has written.
    written: Vec<f64>,
    etcd_written: f64,
    swarm_cpu: f64,
    figures: CtlFigures,
}

/// The controller's own figures, read from its `/metrics`.
#[derive(Debug, Clone, Default)]
struct CtlFigures {
    commits: f64,
    /// Cumulative judgement-latency histogram: (upper bound in seconds, count).
    latency: Vec<(f64, f64)>,
    polls: f64,
    /// Workflows completed (`rejuv_workflows_total`), where read from the metrics.
    completed: f64,
}

impl CtlFigures {
    /// The sum of two controllers' (or shards') figures.
    fn add(&self, other: &CtlFigures) -> CtlFigures {
        let mut latency = self.latency.clone();
        for (le, n) in &other.latency {
            match latency.iter_mut().find(|(l, _)| l == le) {
                Some((_, m)) => *m += n,
                None => latency.push((*le, *n)),
            }
        }
        latency.sort_by(|a, b| a.0.total_cmp(&b.0));
        CtlFigures {
            commits: self.commits + other.commits,
            latency,
            polls: self.polls + other.polls,
            completed: self.completed + other.completed,
        }
    }
}

/// What the benchmark sees of a sharded fleet (`--controllers N`), read every second from
/// every controller alive: who owns which shard, each shard's status and figures.
struct ShardWatch {
    shards: u32,
    /// Each shard's owner (API URL) as last seen.
    owner: BTreeMap<u32, String>,
    /// Every shard has had an owner (moves count from then).
    settled: bool,
    moves: u32,
    doubled: u32,
    budget_max_seen: u32,
    /// Latest `/v1/status?shard=K` per shard.
    statuses: BTreeMap<u32, serde_json::Value>,
    /// Shards with a workflow in their latest status read this round.
    running: BTreeSet<u32>,
    /// Doubles already counted (a shard claimed twice, a server in two shards).
    doubles_seen: BTreeSet<String>,
    /// Per shard: figures of its engines before the latest one (a new owner's engine counts
    /// from zero), and the latest one's as last read.
    offset: BTreeMap<u32, CtlFigures>,
    last: BTreeMap<u32, CtlFigures>,
}

impl ShardWatch {
    fn new(shards: u32) -> Self {
        Self {
            shards,
            owner: BTreeMap::new(),
            settled: false,
            moves: 0,
            doubled: 0,
            budget_max_seen: 0,
            statuses: BTreeMap::new(),
            running: BTreeSet::new(),
            doubles_seen: BTreeSet::new(),
            offset: BTreeMap::new(),
            last: BTreeMap::new(),
        }
    }

    async fn observe(&mut self, http: &reqwest::Client, live: &[&str], token: &str) {
        let mut claims: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for api in live {
            let Ok(text) = get_text(http, &format!("{api}/v1/shards"), token).await else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            for k in v["owned"].as_array().into_iter().flatten() {
                if let Some(k) = k.as_u64() {
                    claims.entry(k as u32).or_default().push((*api).to_string());
                }
            }
        }
        for (k, by) in &claims {
            if by.len() > 1 && self.doubles_seen.insert(format!("shard {k}: {by:?}")) {
                self.doubled += 1;
            }
            let now = &by[0];
            if let Some(prev) = self.owner.get(k) {
                if prev != now && self.settled {
                    self.moves += 1;
                }
            }
            self.owner.insert(*k, now.clone());
        }
        self.settled |= self.owner.len() as u32 == self.shards;
        let mut running = 0u32;
        let mut in_workflow: BTreeMap<String, u32> = BTreeMap::new();
        self.running.clear();
        for (k, by) in &claims {
            let api = &by[0];
            let Ok(text) = get_text(http, &format!("{api}/v1/status?shard={k}"), token).await
            else {
                continue;
            };
            let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            for w in status["workflows"].as_array().into_iter().flatten() {
                if w["forced"].as_bool() != Some(true) {
                    running += 1;
                }
                let server = w["server"].as_str().unwrap_or_default().to_string();
                if let Some(other) = in_workflow.insert(server.clone(), *k) {
                    if other != *k && self.doubles_seen.insert(format!("server {server}")) {
                        self.doubled += 1;
                    }
                }
                self.running.insert(*k);
            }
            self.statuses.insert(*k, status);
            if let Ok(text) = get_text(http, &format!("{api}/metrics?shard={k}"), token).await {
                let f = figures(&text);
                let last = self.last.entry(*k).or_default();
                if f.commits < last.commits {
                    // A new engine (a new owner) counts from zero.
                    let before = self.offset.entry(*k).or_default();
                    *before = before.add(last);
                }
                *last = f;
            }
        }
        self.budget_max_seen = self.budget_max_seen.max(running);
    }

    /// The owner (API URL) of a shard that runs a workflow now.
    fn owner_running_a_workflow(&self) -> Option<String> {
        self.running.iter().find_map(|k| self.owner.get(k).cloned())
    }

    fn owned_by(&self, api: &str) -> Vec<u32> {
        self.owner
            .iter()
            .filter(|(_, a)| a.as_str() == api)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Every shard's figures together, over all of its engines so far.
    fn figures_sum(&self) -> CtlFigures {
        let mut sum = CtlFigures::default();
        for k in 0..self.shards {
            if let Some(o) = self.offset.get(&k) {
                sum = sum.add(o);
            }
            if let Some(l) = self.last.get(&k) {
                sum = sum.add(l);
            }
        }
        sum
    }
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn figures(text: &str) -> CtlFigures {
    let mut latency = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("rejuv_judge_latency_seconds_bucket{le=\"") {
            let mut parts = rest.splitn(2, "\"} ");
            let le = parts.next().unwrap_or("");
            let n: f64 = parts
                .next()
                .and_then(|v| v.split(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            latency.push((le, n));
        }
    }
    CtlFigures {
        commits: metric_value(text, "rejuv_store_commits_total").unwrap_or(0.0),
        latency,
        polls: metric_value(text, "rejuv_judge_latency_seconds_count").unwrap_or(0.0),
        completed: metric_value(text, "rejuv_workflows_total").unwrap_or(0.0),
    }
}

/// Quantile `q` of the difference of two cumulative histograms, interpolated in its bucket.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - b)
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in &diff {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let span = n - prev.1;
            let share = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * share;
        }
        prev = (le, n);
    }
    prev.0
}

async fn get_text(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<String> {
    let r = http
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .send()
        .await?
        .error_for_status()?;
    Ok(r.text().await?)
}

fn fleet(args: FleetArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(args.servers >= 2, "--servers must be at least 2");
    anyhow::ensure!(
        args.duration > args.warmup,
        "--duration ({}) must be longer than --warmup ({})",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.warmup)
    );
    anyhow::ensure!(args.controllers >= 1, "--controllers must be at least 1");
    anyhow::ensure!(
        args.controllers == 1 || args.store == StoreKind::Etcd,
        "--controllers {} needs --store etcd: the controllers share the fleet through etcd (each owns shards of it)",
        args.controllers
    );
    anyhow::ensure!(
        args.servers <= 60_000,
        "--servers {}: at most 60,000 (one loopback address each)",
        args.servers
    );
    let limit = raise_fd_limit()?;
    let spares = args
        .spares
        .unwrap_or((args.servers / 50).max(2 * args.aged).max(1))
        .min(args.servers - 1);
    let primaries = args.servers - spares;
    let aged = aged_ids(primaries, args.aged);
    let tmp;
    let dir = match &args.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("rejuv-bench-fleet")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(dir.join("logs"))?;
    write_token(&dir)?;
    let token = crate::config_file::read_token(&dir.join("token"))?;
    let port = free_port(agent_ip(0))?;
    let layout = Layout {
        primaries,
        spares,
        port,
        aged: aged.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let shutdown = crate::signals::shutdown_on_signal();
        let etcd = match args.store {
            StoreKind::Etcd => Some(crate::chaos::start_etcd(&dir, &http).await?),
            StoreKind::Sqlite => None,
        };
        let (cfg_path, cfg) = write_config(&dir, &args, &layout, etcd.as_ref().map(|e| e.endpoint.as_str()))?;
        let exe = std::env::current_exe()?;
        eprintln!(
            "fleet: {} servers ({primaries} primaries, {spares} spares, {} aged), poll every {}, fd limit {limit}; state in {}",
            args.servers,
            aged.len(),
            humantime::format_duration(args.interval),
            dir.display()
        );

        // The swarm first: the controller's first polls find every agent listening.
        let counts: Arc<Mutex<Vec<swarm::SwarmCounts>>> = Arc::default();
        let mut swarms = Vec::new();
        let nswarm = args.servers.div_ceil(AGENTS_PER_SWARM);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        for k in 0..nswarm {
            let from = k * args.servers / nswarm;
            let to = (k + 1) * args.servers / nswarm;
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "swarm", "--config"])
                .arg(&cfg_path)
                .arg("--token-file")
                .arg(dir.join("token"))
                .args(["--from", &from.to_string(), "--to", &to.to_string()])
                .arg(format!("--aged={}", aged.join(",")))
                .arg(format!("--age-after={}s", args.warmup.as_secs().max(1) / 2))
                .stdout(Stdio::piped())
                .stderr(log_file(&dir, &format!("swarm-{k}"))?.1)
                .stdin(Stdio::null());
            let mut p = Proc::spawn("swarm", cmd)?;
            let out = p.child.stdout.take().context("the swarm's stdout")?;
            let counts = counts.clone();
            let ready = ready_tx.clone();
            counts.lock().unwrap().push(swarm::SwarmCounts::default());
            std::thread::spawn(move || {
                let mut first = true;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(c) = serde_json::from_str::<swarm::SwarmCounts>(&line) {
                        counts.lock().unwrap()[k] = c;
                        if first {
                            let _ = ready.send(k);
                            first = false;
                        }
                    }
                }
            });
            swarms.push(p);
        }
        drop(ready_tx);
        let until = Instant::now() + Duration::from_secs(120);
        for _ in 0..nswarm {
            tokio::select! {
                r = ready_rx.recv() => { r.context("a swarm process ended before it listened; see logs/swarm-*.log")?; }
                _ = tokio::time::sleep_until(until.into()) => anyhow::bail!("the swarm did not listen within 120 s"),
                _ = shutdown.cancelled() => return Ok(130),
            }
        }

        let (out, err) = log_file(&dir, "proxy")?;
        let mut cmd = Command::new(&exe);
        cmd.args(["proxy", "--config"]).arg(&cfg_path).stdout(out).stderr(err).stdin(Stdio::null());
        let _proxy = Proc::spawn("proxy", cmd)?;
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let nctl = args.controllers.max(1) as usize;
        let mut ctl_addrs = vec![cfg.controller.listen];
        for _ in 1..nctl {
            ctl_addrs.push(SocketAddr::new(lo, free_port(lo)?));
        }
        let mut controllers: Vec<Option<Proc>> = Vec::new();
        for (i, addr) in ctl_addrs.iter().enumerate() {
            let log = if i == 0 { "controller".to_string() } else { format!("controller-{}", i + 1) };
            let (out, err) = log_file(&dir, &log)?;
            let mut cmd = Command::new(&exe);
            // The swarm's servers run their instances already: the new controller adopts them.
            cmd.args(["controller", "--adopt-agents", "--config"])
                .arg(&cfg_path)
                .arg("--listen")
                .arg(addr.to_string())
                // With shards, the shards' moves are logged too.
                .env("REJUV_LOG", if nctl > 1 { "warn,rejuv_controller::shards=info" } else { "warn" })
                .stdout(out)
                .stderr(err)
                .stdin(Stdio::null());
            controllers.push(Some(Proc::spawn(&format!("controller {addr}"), cmd)?));
        }
        let pids: Vec<i32> = controllers.iter().flatten().map(Proc::pid).collect();
        let etcd_pid = etcd.as_ref().map(|e| e.pid());
        let apis: Vec<String> = ctl_addrs.iter().map(|a| format!("http://{a}")).collect();
        let mut shards = ShardWatch::new(nctl as u32);
        let started = Instant::now();

        let swarm_cpu = |swarms: &Vec<Proc>| swarms.iter().filter_map(|p| cpu_seconds(p.pid())).sum::<f64>();
        let ctl_cpu = |pids: &[i32]| pids.iter().map(|p| cpu_seconds(*p).unwrap_or(0.0)).collect::<Vec<f64>>();
        let written = |pids: &[i32]| pids.iter().map(|p| write_bytes(*p).unwrap_or(0.0)).collect::<Vec<f64>>();
        let mut at_warm: Option<AtWarm> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut interrupted = false;
        let mut kills = 0u32;
        // The kill's instant and the shards the killed controller owned, until they moved.
        let mut orphaned: Option<(Instant, Vec<u32>, String)> = None;
        let mut handover_ms = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => { interrupted = true; break; }
            }
            for (i, c) in controllers.iter_mut().enumerate() {
                if let Some(p) = c {
                    if let Ok(Some(st)) = p.child.try_wait() {
                        let log = if i == 0 { "controller.log".to_string() } else { format!("controller-{}.log", i + 1) };
                        anyhow::bail!("a controller exited ({st}); see logs/{log} in {}", dir.display());
                    }
                }
            }
            let t = started.elapsed();
            if nctl > 1 {
                let live: Vec<&str> = apis
                    .iter()
                    .zip(&controllers)
                    .filter(|(_, c)| c.is_some())
                    .map(|(a, _)| a.as_str())
                    .collect();
                shards.observe(&http, &live, &token).await;
                if let Some((at, ks, api)) = &orphaned {
                    if ks.iter().all(|k| shards.owner.get(k).is_some_and(|o| o != api)) {
                        handover_ms = Some(at.elapsed().as_millis() as u64);
                        eprintln!("\nfleet: shard(s) {ks:?} owned again after {} ms", at.elapsed().as_millis());
                        orphaned = None;
                    }
                }
                // Kill the owner of a shard that runs a workflow, once, mid-run.
                if args.kill && kills == 0 && t >= args.warmup / 2 {
                    if let Some(api) = shards.owner_running_a_workflow() {
                        if let Some(i) = apis.iter().position(|a| *a == api) {
                            if let Some(mut p) = controllers[i].take() {
                                eprintln!("\nfleet: SIGKILL the controller at {api}: it runs a workflow of shard(s) {:?}", shards.owned_by(&api));
                                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p.pid()), nix::sys::signal::Signal::SIGKILL);
                                orphaned = Some((Instant::now(), shards.owned_by(&api), api.clone()));
                                let _ = p.child.wait();
                                kills += 1;
                            }
                        }
                    }
                }
            }
            if at_warm.is_none() && t >= args.warmup {
                let fig = if nctl > 1 {
                    shards.figures_sum()
                } else {
                    figures(&get_text(&http, &format!("{}/metrics", apis[0]), &token).await.unwrap_or_default())
                };
                at_warm = Some(AtWarm {
                    at: Instant::now(),
                    cpu: ctl_cpu(&pids),
                    written: written(&pids),
                    etcd_written: etcd_pid.and_then(write_bytes).unwrap_or(0.0),
                    swarm_cpu: swarm_cpu(&swarms),
                    figures: fig,
                });
            }
            let c = total(&counts.lock().unwrap());
            let rss: f64 = pids.iter().filter_map(|p| status_kb(*p, "VmRSS:")).sum();
            let line = format!(
                "fleet {:>4}s/{}s  controller{} {:.0} MiB  polls {}  rejuvenated {}/{} aged",
                t.as_secs(),
                args.duration.as_secs(),
                if nctl > 1 { "s" } else { "" },
                rss / 1024.0,
                c.state_requests,
                c.aged_rejuvenated.len(),
                aged.len()
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else if t.as_secs().is_multiple_of(10) {
                eprintln!("{line}");
            }
            if t >= args.duration {
                break;
            }
        }
        if tty {
            eprintln!();
        }
        let end = Instant::now();
        let (fig_end, statuses) = if nctl > 1 {
            let live: Vec<&str> = apis
                .iter()
                .zip(&controllers)
                .filter(|(_, c)| c.is_some())
                .map(|(a, _)| a.as_str())
                .collect();
            shards.observe(&http, &live, &token).await;
            (shards.figures_sum(), shards.statuses.values().cloned().collect::<Vec<_>>())
        } else {
            let text = get_text(&http, &format!("{}/metrics", apis[0]), &token).await.unwrap_or_default();
            let status: serde_json::Value =
                serde_json::from_str(&get_text(&http, &format!("{}/v1/status", apis[0]), &token).await.unwrap_or_default())
                    .unwrap_or_default();
            let mut f = figures(&text);
            if status["completed_total"].as_u64().is_none() {
                f.completed = metric_value(&text, "rejuv_workflows_total").unwrap_or(0.0);
            }
            (f, vec![status])
        };
        let cpu_end = ctl_cpu(&pids);
        let wb_end = written(&pids);
        let etcd_wb_end = etcd_pid.and_then(write_bytes).unwrap_or(0.0);
        let swarm_end = swarm_cpu(&swarms);
        let peak_kb = pids.iter().filter_map(|p| status_kb(*p, "VmHWM:")).fold(0.0, f64::max);
        for p in controllers.iter_mut().flatten() {
            p.stop(Duration::from_secs(10));
        }
        for s in &mut swarms {
            s.stop(Duration::from_secs(10));
        }
        if interrupted && at_warm.is_none() {
            eprintln!("fleet: interrupted before the warm-up ended; no figures");
            return Ok(130);
        }
        let AtWarm {
            at: t0,
            cpu: cpu0,
            written: wb0,
            etcd_written: etcd_wb0,
            swarm_cpu: swarm0,
            figures: fig0,
        } = at_warm.context("the run ended before its warm-up")?;
        let secs = end.duration_since(t0).as_secs_f64().max(1e-3);
        // A controller killed after the warm-up has no figures at the end: its part is left out.
        let alive_end = |i: usize| cpu_end[i] > 0.0 || wb_end[i] > 0.0;
        let cpu: f64 = (0..pids.len()).filter(|i| alive_end(*i)).map(|i| cpu_end[i] - cpu0[i]).sum();
        let wb: f64 = (0..pids.len()).filter(|i| alive_end(*i)).map(|i| wb_end[i] - wb0[i]).sum::<f64>()
            + (etcd_wb_end - etcd_wb0);
        let c = total(&counts.lock().unwrap());
        let aged_set: std::collections::BTreeSet<&str> = aged.iter().map(String::as_str).collect();
        let mut wrong: std::collections::BTreeSet<String> = c.rejuvenated_unaged.iter().cloned().collect();
        let mut completed = 0u64;
        for status in &statuses {
            if let Some(servers) = status["servers"].as_array() {
                for s in servers {
                    let id = s["id"].as_str().unwrap_or_default();
                    let unstable = s["judgement"].as_str() == Some("unstable")
                        || s["judgement"]["level"].as_str() == Some("unstable");
                    if unstable && !aged_set.contains(id) {
                        wrong.insert(id.to_string());
                    }
                }
            }
            if let Some(ws) = status["workflows"].as_array() {
                for w in ws {
                    let id = w["server"].as_str().unwrap_or_default();
                    if !aged_set.contains(id) {
                        wrong.insert(id.to_string());
                    }
                }
            }
            completed += status["completed_total"].as_u64().unwrap_or(0);
        }
        if completed == 0 {
            completed = fig_end.completed as u64;
        }
        let summary = FleetSummary {
            servers: args.servers,
            interval_s: args.interval.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            store: args.store,
            controller_cpu_pct: 100.0 * cpu / secs,
            controller_rss_mb: peak_kb / 1024.0,
            judge_latency_ms: Quantiles {
                p50: 1000.0 * histogram_quantile(&fig0.latency, &fig_end.latency, 0.5),
                p99: 1000.0 * histogram_quantile(&fig0.latency, &fig_end.latency, 0.99),
            },
            store_bytes_per_s: wb / secs,
            commits_per_s: (fig_end.commits - fig0.commits).max(0.0) / secs,
            polls_per_s: (fig_end.polls - fig0.polls).max(0.0) / secs,
            workflows_completed: completed,
            servers_aged: aged.len(),
            aged_rejuvenated: c.aged_rejuvenated.len(),
            judged_unstable_wrongly: wrong.len(),
            swarm_cpu_pct: 100.0 * (swarm_end - swarm0) / secs,
            swarm_processes: swarms.len(),
            tls: !args.insecure,
            controllers: nctl as u32,
            controller_kills: kills,
            shard_moves: shards.moves,
            workflows_doubled: shards.doubled + c.rejuvenated_early.len() as u32,
            budget_max_seen: shards.budget_max_seen,
            max_concurrent: cfg.budget.max_concurrent,
            shard_handover_ms: handover_ms,
        };
        drop(etcd);
        print_summary(&summary);
        if let Some(path) = &args.summary_json {
            std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(if interrupted { 130 } else { 0 })
    })
}

/// The swarm processes' counts together.
fn total(parts: &[swarm::SwarmCounts]) -> swarm::SwarmCounts {
    let mut t = swarm::SwarmCounts::default();
    for p in parts {
        t.agents += p.agents;
        t.state_requests += p.state_requests;
        t.instances_started += p.instances_started;
        t.instances_stopped += p.instances_stopped;
        t.aged_leaking += p.aged_leaking;
        t.aged_rejuvenated
            .extend(p.aged_rejuvenated.iter().cloned());
        t.rejuvenated_unaged
            .extend(p.rejuvenated_unaged.iter().cloned());
        t.rejuvenations += p.rejuvenations;
        t.t_s = t.t_s.max(p.t_s);
    }
    t
}

fn print_summary(s: &FleetSummary) {
    println!(
        "servers {} every {}s ({:?}): controller {:.1}% of a core, {:.0} MiB peak; judgement p50 {:.1} ms, p99 {:.1} ms; {:.0} polls/s; store {:.0} B/s, {:.2} commits/s; workflows completed {}; aged rejuvenated {}/{}; judged unstable wrongly {}; swarm {:.1}% ({} processes)",
        s.servers,
        s.interval_s,
        s.store,
        s.controller_cpu_pct,
        s.controller_rss_mb,
        s.judge_latency_ms.p50,
        s.judge_latency_ms.p99,
        s.polls_per_s,
        s.store_bytes_per_s,
        s.commits_per_s,
        s.workflows_completed,
        s.aged_rejuvenated,
        s.servers_aged,
        s.judged_unstable_wrongly,
        s.swarm_cpu_pct,
        s.swarm_processes
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_difference_of_two_histograms() {
        let before = vec![
            (0.01, 10.0),
            (0.1, 10.0),
            (1.0, 10.0),
            (f64::INFINITY, 10.0),
        ];
        let after = vec![
            (0.01, 60.0),
            (0.1, 100.0),
            (1.0, 110.0),
            (f64::INFINITY, 110.0),
        ];
        // 100 new: 50 ≤ 10 ms, 40 in (10, 100] ms, 10 in (100 ms, 1 s].
        assert!((histogram_quantile(&before, &after, 0.5) - 0.01).abs() < 1e-9);
        let p99 = histogram_quantile(&before, &after, 0.99);
        assert!((p99 - (0.1 + 0.9 * 0.9)).abs() < 1e-9, "{p99}");
        assert_eq!(histogram_quantile(&after, &after, 0.5), 0.0);
    }

    #[test]
    fn aged_servers_are_spread_over_the_primaries() {
        assert_eq!(aged_ids(100, 4), ["s12", "s37", "s62", "s87"]);
        assert_eq!(aged_ids(3, 5).len(), 3);
        assert_eq!(agent_ip(0).to_string(), "127.20.0.1");
        assert_eq!(agent_ip(300).to_string(), "127.20.1.45");
    }

    #[test]
    fn figures_read_the_controllers_metrics() {
        let text = "# TYPE x\nrejuv_store_commits_total 42\nrejuv_judge_latency_seconds_bucket{le=\"0.005\"} 3\nrejuv_judge_latency_seconds_bucket{le=\"+Inf\"} 7\nrejuv_judge_latency_seconds_count 7\n";
        let f = figures(text);
        assert_eq!(f.commits, 42.0);
        assert_eq!(f.polls, 7.0);
        assert_eq!(f.latency, vec![(0.005, 3.0), (f64::INFINITY, 7.0)]);
    }
}
