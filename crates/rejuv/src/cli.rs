//! Command-line interface: every subcommand, its flags, and the glue to the libraries.

use crate::config_file::read_token;
use crate::config_file::{config_text, load_config, ConfigText};
use anyhow::Context;
use clap::{Parser, Subcommand};
use rejuv_core::config::Config;
use rejuv_core::detect::analyze;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    version = crate::version::version_string(),
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
    Agent(crate::agent_cmd::AgentArgs),
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
        Cmd::Agent(args) => crate::agent_exec::run_or_exec_small(args),
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
            crate::logs::init_tracing();
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
                let shutdown = crate::signals::shutdown_on_signal();
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
            crate::logs::init_tracing();
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
                let shutdown = crate::signals::shutdown_on_signal();
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
            crate::logs::init_tracing();
            let rt = runtime()?;
            rt.block_on(async {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                let shutdown = crate::signals::shutdown_on_signal();
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
            crate::logs::init_tracing();
            let rt = runtime()?;
            let report = rt.block_on(async {
                let shutdown = crate::signals::shutdown_on_signal();
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
            crate::logs::init_tracing_with("warn");
            crate::fleetbench::run(command)
        }
        Cmd::Export { command } => crate::export::run(command),
        Cmd::Tls { command } => crate::tlscmd::run(command),
        Cmd::Demo(args) => {
            // The demo reports progress itself; its load generator's own start and end lines
            // would only cut through the live view.
            crate::logs::init_tracing_with("info,rejuv_sample=warn");
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
