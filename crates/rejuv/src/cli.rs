//! Command-line interface: every subcommand, its flags, and the glue to the libraries.

use crate::config_file::{config_text, load_config, ConfigText};
use crate::conn::read_token;
use anyhow::Context;
use clap::{Parser, Subcommand};
use rejuv_core::config::Config;
use rejuv_core::detect::analyze;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The text `--version` prints after the name: the crate version, and the commit when the
/// build set `REJUV_GIT_COMMIT` (`REJUV_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`).
pub fn version_string() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| match option_env!("REJUV_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("{VERSION} (commit {c})"),
        _ => VERSION.to_string(),
    })
}

const EXAMPLES_TOP: &str = "\
Examples:
  rejuv demo                                   # a whole cluster on this machine
  rejuv config check rejuv.toml                # validate a config
  rejuv status --controller http://ctl:7070 --token-file /etc/rejuv/api.token
  rejuv completions bash > /etc/bash_completion.d/rejuv

Operator commands read --controller (or REJUV_CONTROLLER) and --token-file (or REJUV_TOKEN).
Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config, 3 refused by the
controller (does not fit the current state, or no such server), 4 unauthorized.";

#[derive(Parser)]
#[command(
    name = "rejuv",
    version = version_string(),
    about = "Proactive software rejuvenation for server clusters",
    long_about = "rejuv watches every server for aging (leaks, creeping latency), duplicates an aging \
server's processes onto a spare, switches traffic without dropping a request, rejuvenates the \
server and gives it back as the new spare.\n\nStart here:  rejuv demo",
    after_help = EXAMPLES_TOP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the agent of one server.
    #[command(after_help = "\
Examples:
  rejuv agent --config /etc/rejuv/rejuv.toml --server s1
  rejuv agent --config rejuv.toml --server s1 --data-dir /var/lib/rejuv --token-file agent.token
  rejuv agent --config /etc/rejuv/rejuv.toml --server s1 --keep-instances   # upgradable in place
  rejuv agent --config rejuv.toml --server-id s7 --join https://10.0.0.10:7070 \
      --join-token-file /etc/rejuv/join.token --role spare --capacity 8 \
      --address 10.0.0.17:7001 --data-dir /var/lib/rejuv/agent   # joins instead of a [[servers]] entry")]
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// This server's id in the config (with --join: the id it joins as).
        #[arg(long, alias = "server-id")]
        server: String,
        #[command(flatten)]
        join: JoinArgs,
        /// File holding the agent token (default: auth.agent_token_file of the config).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Data directory (default: the server's data_dir in the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// On SIGTERM/SIGINT, leave the instances running for the next agent to adopt (an
        /// agent upgrade); same as `[agent] keep_instances_on_exit = true`.
        #[arg(long)]
        keep_instances: bool,
    },
    /// Run the controller.
    #[command(after_help = "\
Examples:
  rejuv controller --config /etc/rejuv/rejuv.toml
  rejuv controller --config rejuv.toml --listen 127.0.0.1:7070 --dry-run
  rejuv controller --config prometheus.toml --dry-run --once --output json   # [source] kind = \"prometheus\"")]
    Controller {
        #[arg(long)]
        config: PathBuf,
        /// Listen address of the API (default: controller.listen of the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// SQLite store file (default: store.path of the config); unused with
        /// store.kind = "etcd".
        #[arg(long)]
        store: Option<PathBuf>,
        /// Start with new workflows paused.
        #[arg(long)]
        paused: bool,
        /// Judge, plan and explain; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// When the store is empty but the agents have history (a lost store): take an epoch
        /// above the agents' and adopt their running instances, instead of refusing to start.
        /// On a store with a state: take an epoch above every agent's (a restored backup).
        #[arg(long)]
        adopt_agents: bool,
        /// A file holding a one-time code that the dashboard (`/ui#code=CODE`) exchanges once
        /// for the API token; the file is removed when the code is used.
        #[arg(long, value_name = "PATH")]
        session_code_file: Option<PathBuf>,
        /// With a Prometheus `[source]` and --dry-run: judge its servers once, print the
        /// advisory report of those aging, and exit.
        #[arg(long)]
        once: bool,
        /// With --once: `table` for people, `json` for scripts (`{"servers": [...]}` alone on
        /// stdout).
        #[arg(long, short = 'o', value_enum)]
        output: Option<crate::conn::Output>,
    },
    /// Run the builtin proxy (the front end clients use).
    #[command(after_help = "\
Examples:
  rejuv proxy --config /etc/rejuv/rejuv.toml")]
    Proxy {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a demo cluster on this machine: agents, controller, proxy and load, with a summary.
    ///
    /// On a terminal it draws a live view (each workflow's step, each server's memory, the
    /// requests served and failed); otherwise it prints a line per change. As soon as the
    /// front end serves it prints `dashboard: URL` and `token file: PATH`.
    #[command(after_help = "\
Examples:
  rejuv demo
  rejuv demo --mode active-active --duration 90s --summary-json summary.json
  rejuv demo --no-rejuvenation --duration 60s      # control run: the service crashes
  rejuv demo --lb haproxy                           # a real HAProxy from PATH in front
  rejuv demo --hosts docker --duration 120s         # each server a container host of its own
  rejuv demo --store etcd --controllers 2 --chaos   # leader killed at random (--features etcd)")]
    Demo(crate::demo::DemoArgs),
    /// An HTTP service that ages on purpose (for demos and tests).
    #[command(after_help = "\
Examples:
  rejuv sample-service --listen 127.0.0.1:9000 --leak-per-request 16384")]
    SampleService {
        #[arg(long)]
        listen: SocketAddr,
        #[command(flatten)]
        service: rejuv_sample::service::ServiceArgs,
    },
    /// A fixed-rate, bounded HTTP load generator.
    #[command(after_help = "\
Examples:
  rejuv loadgen --target 127.0.0.1:8080 --rps 200 --duration 30s
  rejuv loadgen --target 127.0.0.1:8080 --rps 50 --post-every 0   # GETs only")]
    Loadgen {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 200)]
        rps: u32,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 8)]
        connections: u32,
        /// Every Nth request is a POST /counter (0: none).
        #[arg(long, default_value_t = 10)]
        post_every: u32,
    },
    /// Feed a CSV series (`t_seconds,value`) to the trend detector, sample by sample, and say
    /// when it would have judged the resource unstable and the forecast at that moment.
    #[command(after_help = "\
Examples:
  rejuv analyze --input rss.csv --capacity 8589934592 --format text
  rejuv analyze --input fds.csv --capacity 65536 > report.json")]
    Analyze {
        #[arg(long)]
        input: PathBuf,
        /// The value at which the resource is exhausted (same unit as the series).
        #[arg(long)]
        capacity: u64,
        #[arg(long, value_enum, default_value_t = AnalyzeFormat::Json)]
        format: AnalyzeFormat,
    },
    /// Replay a fleet's recorded series through the rejuv policy (the production core,
    /// detector, gate and budget, with simulated agents and clock) and cron-like baselines,
    /// and compare: rejuvenations, exhaustions (crashes not prevented), disruption, lead.
    #[command(after_help = "\
Examples:
  rejuv whatif --samples fleet/                                  # rejuv against fixed:auto
  rejuv whatif --samples fleet/ --policy rejuv --policy fixed:7d --policy threshold:0.9
  rejuv whatif --samples fleet/ --config rejuv.toml --output json | jq '.policies[]'
  rejuv whatif --samples fleet/ --html report.html
  rejuv export samples --since 1h --out fleet/ && rejuv whatif --samples fleet/
  rejuv whatif --prometheus http://prom:9090 --query 'max by (instance) (process_resident_memory_bytes)' \
    --since 7d --capacity 8e9

A fleet directory holds fleet.csv (server,capacity[,role][,units]) and one SERVER.csv
(t_seconds,value) per server. See docs/whatif.md for the defaults and the reset model.")]
    Whatif(crate::whatif::WhatifArgs),
    /// Benchmarks that run real parts: `rejuv bench fleet` (the controller against a swarm).
    #[command(after_help = "\
Examples:
  rejuv bench fleet --servers 10000 --interval 10s --duration 180s --summary-json fleet.json")]
    Bench {
        #[command(subcommand)]
        command: crate::fleetbench::BenchCmd,
    },
    /// Export what a running controller holds, for other tools.
    #[command(after_help = "\
Examples:
  rejuv export samples --since 1h --out fleet/    # then: rejuv whatif --samples fleet/")]
    Export {
        #[command(subcommand)]
        command: crate::export::ExportCmd,
    },
    /// Mutual TLS between the parts: the fleet's CA and certificates (docs/tls.md).
    #[command(after_help = "\
Examples:
  rejuv tls init /etc/rejuv/ca
  rejuv tls issue --ca /etc/rejuv/ca --role agent --name s1 --san 10.0.0.11 --out /etc/rejuv/tls")]
    Tls {
        #[command(subcommand)]
        command: crate::tlscmd::TlsCmd,
    },
    /// Work with config files.
    #[command(after_help = "\
Examples:
  rejuv config check /etc/rejuv/rejuv.toml")]
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Show the cluster: servers, roles, states, judgements, running workflows.
    #[command(after_help = "\
Examples:
  rejuv status --controller http://127.0.0.1:7070 --token-file api.token
  REJUV_TOKEN=... rejuv status --output json | jq '.servers[] | {id, role, state}'")]
    Status(crate::conn::Conn),
    /// Show the event log: judgements, workflow steps, operator actions (who asked).
    #[command(after_help = "\
Examples:
  rejuv events --limit 50
  rejuv events --follow                         # until Ctrl-C
  rejuv events --follow --output json | jq -r 'select(.kind == \"operator\") | .message'")]
    Events {
        #[command(flatten)]
        conn: crate::conn::Conn,
        /// Keep printing new events as they come, until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the newest events to print first.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=1000))]
        limit: u32,
        /// Print events after this sequence number instead of the newest ones.
        #[arg(long)]
        after: Option<i64>,
        /// Poll interval of --follow (100ms to 60s).
        #[arg(long, default_value = "1s", value_parser = crate::ops::parse_interval)]
        interval: Duration,
    },
    /// Running and finished workflows, with their outcome and how long each took.
    #[command(after_help = "\
Examples:
  rejuv workflows
  rejuv workflows --output json | jq '.finished[0].steps'")]
    Workflows(crate::conn::Conn),
    /// Why a server is judged as it is: the rule that fired, and the forecast.
    #[command(after_help = "\
Examples:
  rejuv explain s2
  rejuv explain s2 --output json | jq .explanation.tte_s")]
    Explain {
        server: String,
        #[command(flatten)]
        conn: crate::conn::Conn,
    },
    /// Rejuvenate a server now, through the same workflow (duplex, switch, rejuvenate,
    /// rejoin), within the disruption budget unless --force.
    #[command(after_help = "\
Examples:
  rejuv rejuvenate s2
  rejuv rejuvenate s2 --force        # even if the disruption budget is used up")]
    Rejuvenate {
        server: String,
        /// Ignore the disruption budget.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: crate::conn::Conn,
    },
    /// Put a server in maintenance (out of service, left alone by rejuv) or release it.
    #[command(after_help = "\
Examples:
  rejuv maintenance s2 on
  rejuv maintenance s2 off")]
    Maintenance {
        server: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        conn: crate::conn::Conn,
    },
    /// Freeze: no new workflow starts (running ones finish), e.g. for a maintenance window.
    #[command(after_help = "\
Examples:
  rejuv pause && do-maintenance && rejuv resume")]
    Pause(crate::conn::Conn),
    /// Let new workflows start again after `rejuv pause`.
    #[command(after_help = "\
Examples:
  rejuv resume --controller http://127.0.0.1:7070")]
    Resume(crate::conn::Conn),
    /// Print an instance's output (its stdout and stderr, as its agent keeps them).
    #[command(after_help = "\
Examples:
  rejuv logs web-s2-k3x9a-7
  rejuv logs web-s2-k3x9a-7 --follow      # until Ctrl-C")]
    Logs {
        instance: String,
        /// Keep printing what it writes, until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How much of the end of its output to print first.
        #[arg(long, default_value_t = 16384, value_name = "BYTES")]
        tail: u64,
        /// Poll interval of --follow (100ms to 60s).
        #[arg(long, default_value = "1s", value_parser = crate::ops::parse_interval)]
        interval: Duration,
        #[command(flatten)]
        conn: crate::conn::Conn,
    },
    /// Withdraw a queued rejuvenation request (by server id) or a workflow that has not
    /// switched yet (by workflow id): its copies are stopped, the source keeps serving.
    #[command(after_help = "\
Examples:
  rejuv cancel s2          # the request queued for s2 (or its unswitched workflow)
  rejuv cancel 17          # workflow 17, while it duplexes or waits at the gate")]
    Cancel {
        id: String,
        #[command(flatten)]
        conn: crate::conn::Conn,
    },
    /// Make the controller read its config file again (as SIGHUP does): servers added join,
    /// servers removed are evacuated and forgotten; a config the running cluster cannot take
    /// is refused whole, with the reason.
    #[command(after_help = "\
Examples:
  rejuv reload --config /etc/rejuv/rejuv.toml
  kill -HUP \"$(pidof rejuv)\"   # as rejuv reload does, on the controller's host")]
    Reload(crate::conn::Conn),
    /// Servers that join by asking: the waiting requests, approving one, removing a server.
    #[command(after_help = "\
Examples:
  rejuv server pending
  rejuv server approve s7
  rejuv server remove s7")]
    Server {
        #[command(subcommand)]
        command: ServerCmd,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  rejuv completions bash > /etc/bash_completion.d/rejuv
  rejuv completions zsh > \"${fpath[1]}/_rejuv\"
  rejuv completions fish > ~/.config/fish/completions/rejuv.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `rejuv agent --join`: the server's facts, announced to the controller instead of a
/// `[[servers]]` entry.
#[derive(clap::Args, Clone, Debug)]
pub struct JoinArgs {
    /// Join the cluster of the controller at URL (not listed in [[servers]]): announce this
    /// server's facts and wait for an operator's `rejuv server approve` (or the controller's
    /// join.auto_approve).
    #[arg(long, value_name = "URL")]
    pub join: Option<String>,
    /// File holding the join token (the controller's join.token_file).
    #[arg(long, value_name = "PATH", requires = "join")]
    pub join_token_file: Option<PathBuf>,
    /// The server's role when it joins.
    #[arg(long, requires = "join", value_parser = ["primary", "spare"])]
    pub role: Option<String>,
    /// Capacity in units.
    #[arg(long, requires = "join", default_value_t = 4)]
    pub capacity: u32,
    /// Services this agent's catalog runs, comma-separated (default: every service of its
    /// config's [services]; the controller wants all of its own).
    #[arg(long, requires = "join", value_delimiter = ',')]
    pub services: Vec<String>,
    /// The instances the server starts with once it is in, comma-separated service names
    /// (default: a primary one of each of its services, a spare none; `--instances none` for
    /// none).
    #[arg(long, requires = "join", value_delimiter = ',')]
    pub instances: Vec<String>,
    /// The agent API's address: bound here and announced to the controller, which polls it;
    /// instances listen on its IP.
    #[arg(long, requires = "join", value_name = "IP:PORT")]
    pub address: Option<SocketAddr>,
    /// Ports the agent gives instances, inclusive.
    #[arg(long, requires = "join", value_name = "LOW-HIGH", default_value = "20000-20999", value_parser = parse_port_range)]
    pub port_range: [u16; 2],
    /// Memory the server's instances may use together (bytes), as
    /// servers[].memory_budget_bytes.
    #[arg(long, requires = "join", value_name = "BYTES")]
    pub memory_budget_bytes: Option<u64>,
}

fn parse_port_range(s: &str) -> Result<[u16; 2], String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| "must be LOW-HIGH, e.g. 20000-20999".to_string())?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("'{p}' is not a port"))
    };
    Ok([port(lo)?, port(hi)?])
}

impl JoinArgs {
    /// The request the agent announces, and the server entry it runs with.
    fn request(
        &self,
        cfg: &Config,
        id: &str,
    ) -> anyhow::Result<
        Option<(
            rejuv_agent::join::JoinOptions,
            rejuv_core::config::ServerConfig,
        )>,
    > {
        let Some(url) = &self.join else {
            return Ok(None);
        };
        anyhow::ensure!(
            cfg.server(id).is_none(),
            "server '{id}' is listed in [[servers]] of the config: it needs no --join"
        );
        let controller = reqwest::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("--join {url:?} is not a URL: {e}"))?;
        let token_file = self
            .join_token_file
            .as_deref()
            .context("--join needs --join-token-file")?;
        let token = read_token(token_file)?;
        let role = self
            .role
            .clone()
            .context("--join needs --role primary|spare")?;
        let address = self
            .address
            .context("--join needs --address IP:PORT (the agent API's)")?;
        let services = if self.services.is_empty() {
            cfg.services.keys().cloned().collect()
        } else {
            self.services.clone()
        };
        let instances = match self.instances.as_slice() {
            [] if role == "primary" => services.clone(),
            [] => Vec::new(),
            [none] if none == "none" => Vec::new(),
            given => given.to_vec(),
        };
        let request = rejuv_core::config::JoinRequest {
            id: id.to_string(),
            role,
            capacity: i64::from(self.capacity),
            services,
            agent: address,
            address: None,
            port_range: self.port_range,
            memory_budget_bytes: self.memory_budget_bytes,
            instances,
        };
        // The facts are checked here as the controller checks them, so a typo stops the
        // agent at once rather than in the controller's answer.
        let entry = rejuv_core::config::check_join(cfg, &request)
            .map_err(|e| anyhow::anyhow!("--join: {e}"))?;
        let ca = if controller.scheme() == "https" {
            cfg.tls.as_ref().and_then(|t| t.ca.clone())
        } else {
            None
        };
        let opts = rejuv_agent::join::JoinOptions {
            controller,
            token,
            ca,
            request,
        };
        Ok(Some((opts, entry)))
    }
}

#[derive(Subcommand)]
pub enum ServerCmd {
    /// Join requests waiting for an operator: each server's id, role, capacity, agent.
    #[command(after_help = "\
Examples:
  rejuv server pending
  rejuv server pending --output json | jq -r '.[].request.id'")]
    Pending(crate::conn::Conn),
    /// Let a waiting server in: it joins the cluster as its request says (operate role).
    #[command(after_help = "\
Examples:
  rejuv server approve s7
  rejuv server approve s7 --controller https://10.0.0.10:7070 --token-file ~/.rejuv/alice.token")]
    Approve {
        server: String,
        #[command(flatten)]
        conn: crate::conn::Conn,
    },
    /// Remove a joined server: off the list, its instances moved off it (a workflow running
    /// on it must end first), then forgotten. Drops a waiting join request too.
    #[command(after_help = "\
Examples:
  rejuv server remove s7
  rejuv server remove s7 && rejuv events --follow   # watch it leave")]
    Remove {
        server: String,
        #[command(flatten)]
        conn: crate::conn::Conn,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AnalyzeFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate a config and report every error with its field.
    #[command(after_help = "\
Examples:
  rejuv config check rejuv.toml && echo valid")]
    Check { file: PathBuf },
}

fn init_tracing() {
    init_tracing_with("info");
}

/// Logs on stderr, filtered by `REJUV_LOG` or else `default`.
fn init_tracing_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REJUV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The agent's runtime: one worker is plenty for an agent's few requests and timers, and every
/// thread less is a stack and (with glibc) a malloc arena less. Blocking work (`/proc` reads,
/// file I/O) still gets its own threads, which end after a few idle seconds.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Config {
            command: ConfigCmd::Check { file },
        } => {
            let text = match config_text(&file) {
                Ok(t) => t,
                Err(ConfigText::Io(e)) => return Err(e),
                Err(ConfigText::NotText(why)) => {
                    eprintln!("{}: {why}", file.display());
                    return Ok(2);
                }
            };
            match Config::from_toml(&text) {
                Ok(c) => {
                    println!(
                        "{}: ok ({} cluster, {} servers, {} services)",
                        file.display(),
                        c.cluster.mode,
                        c.servers.len(),
                        c.services.len()
                    );
                    for w in c.warnings() {
                        eprintln!("warning: {w}");
                    }
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(2)
                }
            }
        }
        Cmd::Agent {
            config,
            server,
            join,
            token_file,
            data_dir,
            keep_instances,
        } => {
            init_tracing();
            let mut cfg = load_config(&config)?;
            cfg.agent.keep_instances_on_exit |= keep_instances;
            let joining = join.request(&cfg, &server)?;
            if let Some((_, entry)) = &joining {
                rejuv_agent::join::check_certificate(&cfg, &server)?;
                cfg.servers.push(entry.clone());
            }
            let entry = cfg
                .server(&server)
                .with_context(|| {
                    format!(
                        "server '{server}' is not in {} (pass --join URL to join instead)",
                        config.display()
                    )
                })?
                .clone();
            let token_file = token_file
                .or(cfg.auth.agent_token_file.clone())
                .context("no agent token: pass --token-file or set auth.agent_token_file")?;
            let token = read_token(&token_file)?;
            let data_dir = data_dir
                .or(entry.data_dir.clone())
                .context("no data dir: pass --data-dir or set the server's data_dir")?;
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let rt = agent_runtime()?;
            let exit = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(entry.agent)
                    .await
                    .with_context(|| format!("binding the agent API on {}", entry.agent))?;
                let shutdown = crate::procs::shutdown_on_signal();
                if let Some((opts, _)) = joining {
                    let joiner = rejuv_agent::join::Joiner::new(opts)?;
                    tokio::spawn(joiner.run(shutdown.child_token()));
                }
                let opts = rejuv_agent::AgentOptions {
                    config: cfg,
                    server_id: server,
                    token,
                    data_dir,
                };
                rejuv_agent::run(listener, opts, shutdown).await
            })?;
            drop(rt);
            if matches!(exit, rejuv_agent::Exit::Restart) {
                // The agent re-executes itself: a fresh process, fresh memory, same arguments.
                use std::os::unix::process::CommandExt;
                let exe = std::env::current_exe().context("finding the agent's own executable")?;
                // A binary replaced on disk while the agent ran (an upgrade) shows as
                // "PATH (deleted)": re-execute the new one at PATH.
                let exe = match exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
                    Some(p) => std::path::PathBuf::from(p),
                    None => exe,
                };
                let args: Vec<String> = std::env::args().skip(1).collect();
                let err = std::process::Command::new(exe).args(args).exec();
                anyhow::bail!("re-executing the agent failed: {err}");
            }
            Ok(0)
        }
        Cmd::Controller {
            config,
            listen,
            store,
            paused,
            dry_run,
            adopt_agents,
            session_code_file,
            once,
            output,
        } => {
            init_tracing();
            let cfg = load_config(&config)?;
            let advise = crate::advise::AdviseArgs {
                config_path: &config,
                dry_run,
                once,
                output,
            };
            if crate::advise::wanted(&cfg, &advise) {
                return crate::advise::run(cfg, advise);
            }
            let config_path = Some(config.clone());
            let agent_token = read_token(
                cfg.auth
                    .agent_token_file
                    .as_deref()
                    .context("auth.agent_token_file is required")?,
            )?;
            let api_token = read_token(
                cfg.auth
                    .api_token_file
                    .as_deref()
                    .context("auth.api_token_file is required")?,
            )?;
            // Every token file is read before the store is opened or a state made in it.
            for o in &cfg.auth.operators {
                read_token(&o.token_file)
                    .with_context(|| format!("auth.operators: the token of {}", o.name))?;
            }
            if let Some(j) = &cfg.join {
                read_token(&j.token_file).context("join.token_file")?;
            }
            let proxy_token = match &cfg.auth.proxy_token_file {
                Some(p) => read_token(p)?,
                None => api_token.clone(),
            };
            let tls = rejuv_controller::load_tls(&cfg)?;
            let listen = listen.unwrap_or(cfg.controller.listen);
            let store_path = store.unwrap_or(cfg.store.path.clone());
            let rt = runtime()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding the controller API on {listen}"))?;
                let shutdown = crate::procs::shutdown_on_signal();
                let opts = rejuv_controller::ControllerOptions {
                    config: cfg,
                    agent_token,
                    api_token,
                    proxy_token,
                    store_path,
                    paused,
                    dry_run,
                    adopt_agents,
                    session_code_file,
                    config_path,
                    tls,
                };
                rejuv_controller::run(listener, opts, shutdown).await
            })?;
            Ok(0)
        }
        Cmd::Proxy { config } => {
            init_tracing();
            let cfg = load_config(&config)?;
            for w in cfg.warnings() {
                tracing::warn!(field = %w.field, "config: {}", w.reason);
            }
            let token = read_token(
                cfg.auth
                    .proxy_token_file
                    .as_deref()
                    .or(cfg.auth.api_token_file.as_deref())
                    .context("auth.proxy_token_file (or api_token_file) is required")?,
            )?;
            let admin = cfg.traffic.admin.context("traffic.admin is required")?;
            let tls = match cfg.tls_files("proxy") {
                Some(files) => Some(
                    rejuv_net::tls::Tls::load(files).map_err(|e| anyhow::anyhow!("[tls]: {e}"))?,
                ),
                None => None,
            };
            let rt = runtime()?;
            rt.block_on(async {
                let mut services = std::collections::BTreeMap::new();
                for (name, addr) in &cfg.traffic.listen {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the front end of '{name}' on {addr}"))?;
                    services.insert(name.clone(), l);
                }
                let admin = tokio::net::TcpListener::bind(admin)
                    .await
                    .with_context(|| format!("binding the proxy admin API on {admin}"))?;
                let shutdown = crate::procs::shutdown_on_signal();
                rejuv_proxy::run(
                    rejuv_proxy::ProxyOptions {
                        services,
                        admin,
                        token,
                        front_end_limits: cfg.traffic.listener_limits(),
                        admin_limits: rejuv_core::config::ListenerLimits::api(),
                        tls,
                    },
                    shutdown,
                )
                .await
            })?;
            Ok(0)
        }
        Cmd::SampleService { listen, service } => {
            init_tracing();
            let rt = runtime()?;
            rt.block_on(async {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                let shutdown = crate::procs::shutdown_on_signal();
                rejuv_sample::service::run(l, service.into(), shutdown).await
            })?;
            Ok(0)
        }
        Cmd::Loadgen {
            target,
            rps,
            duration,
            connections,
            post_every,
        } => {
            init_tracing();
            let rt = runtime()?;
            let report = rt.block_on(async {
                let shutdown = crate::procs::shutdown_on_signal();
                let opts = rejuv_sample::loadgen::LoadOptions {
                    target,
                    rps,
                    duration,
                    connections,
                    post_every,
                    timeout: Duration::from_secs(5),
                };
                rejuv_sample::loadgen::run(opts, shutdown).await
            })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
        Cmd::Analyze {
            input,
            capacity,
            format,
        } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let cfg = rejuv_core::trend::TrendConfig::default();
            let report = match analyze::analyze_csv(&text, capacity, &cfg) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("rejuv: {}: {e}", input.display());
                    return Ok(2);
                }
            };
            match format {
                AnalyzeFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                AnalyzeFormat::Text => {
                    let points = analyze::parse_csv(&text)?;
                    print!("{}", analyze::render_text(&report, &points));
                }
            }
            Ok(0)
        }
        Cmd::Whatif(args) => crate::whatif::run(args),
        Cmd::Bench { command } => {
            init_tracing_with("warn");
            crate::fleetbench::run(command)
        }
        Cmd::Export { command } => crate::export::run(command),
        Cmd::Tls { command } => crate::tlscmd::run(command),
        Cmd::Demo(args) => {
            // The demo reports progress itself; its load generator's own start and end lines
            // would only cut through the live view.
            init_tracing_with("info,rejuv_sample=warn");
            crate::demo::run(args)
        }
        Cmd::Status(conn) => crate::ops::status(&conn),
        Cmd::Events {
            conn,
            follow,
            limit,
            after,
            interval,
        } => crate::ops::events(
            &conn,
            &crate::ops::EventsOptions {
                follow,
                limit,
                after,
                interval,
            },
        ),
        Cmd::Workflows(conn) => crate::ops::workflows(&conn),
        Cmd::Explain { server, conn } => crate::ops::explain(&conn, &server),
        Cmd::Rejuvenate {
            server,
            force,
            conn,
        } => crate::ops::rejuvenate(&conn, &server, force),
        Cmd::Maintenance {
            server,
            state,
            conn,
        } => crate::ops::maintenance(&conn, &server, state == "on"),
        Cmd::Pause(conn) => crate::ops::pause(&conn),
        Cmd::Resume(conn) => crate::ops::resume(&conn),
        Cmd::Cancel { id, conn } => crate::ops::cancel(&conn, &id),
        Cmd::Logs {
            instance,
            follow,
            tail,
            interval,
            conn,
        } => crate::ops::logs(&conn, &instance, tail, follow, interval),
        Cmd::Reload(conn) => crate::ops::reload(&conn),
        Cmd::Server { command } => match command {
            ServerCmd::Pending(conn) => crate::ops::pending(&conn),
            ServerCmd::Approve { server, conn } => crate::ops::approve(&conn, &server),
            ServerCmd::Remove { server, conn } => crate::ops::remove(&conn, &server),
        },
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "rejuv", &mut std::io::stdout());
            Ok(0)
        }
    }
}
