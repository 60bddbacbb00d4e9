//! Command-line interface: every subcommand, its flags, and the glue to the libraries.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rejuv_core::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "rejuv",
    version,
    about = "Proactive software rejuvenation for server clusters",
    long_about = "rejuv watches every server for aging (leaks, creeping latency), duplicates an aging \
server's processes onto a spare, switches traffic without dropping a request, rejuvenates the \
server and gives it back as the new spare.\n\nStart here:  rejuv demo"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the agent of one server.
    ///
    /// Example: rejuv agent --config rejuv.toml --server s1 --data-dir /var/lib/rejuv
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// This server's id in the config.
        #[arg(long)]
        server: String,
        /// File holding the agent token (default: auth.agent_token_file of the config).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Data directory (default: the server's data_dir in the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the controller.
    ///
    /// Example: rejuv controller --config rejuv.toml
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
    },
    /// Run the builtin proxy (the front end clients use).
    ///
    /// Example: rejuv proxy --config rejuv.toml
    Proxy {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a demo cluster on this machine: agents, controller, proxy and load, with a summary.
    ///
    /// Example: rejuv demo --mode active-active --duration 90s --summary-json summary.json
    Demo(crate::demo::DemoArgs),
    /// An HTTP service that ages on purpose (for demos and tests).
    ///
    /// Example: rejuv sample-service --listen 127.0.0.1:9000 --leak-per-request 16384
    SampleService {
        #[arg(long)]
        listen: SocketAddr,
        #[command(flatten)]
        service: rejuv_sample::service::ServiceArgs,
    },
    /// A fixed-rate, bounded HTTP load generator.
    ///
    /// Example: rejuv loadgen --target 127.0.0.1:8080 --rps 200 --duration 30s
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
    ///
    /// Example: rejuv analyze --input rss.csv --capacity 8589934592 --format text
    Analyze {
        #[arg(long)]
        input: PathBuf,
        /// The value at which the resource is exhausted (same unit as the series).
        #[arg(long)]
        capacity: u64,
        #[arg(long, value_enum, default_value_t = AnalyzeFormat::Json)]
        format: AnalyzeFormat,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Show the cluster: servers, roles, states, judgements, workflows.
    ///
    /// Example: rejuv status --controller http://127.0.0.1:7070 --token-file token --output json
    Status(crate::ops::Conn),
    /// Show the event log.
    ///
    /// Example: rejuv events --controller http://127.0.0.1:7070 --follow
    Events {
        #[command(flatten)]
        conn: crate::ops::Conn,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
    },
    /// Why a server is judged as it is, and its forecast.
    ///
    /// Example: rejuv explain s2 --controller http://127.0.0.1:7070
    Explain {
        server: String,
        #[command(flatten)]
        conn: crate::ops::Conn,
    },
    /// Rejuvenate a server now, through the same workflow.
    ///
    /// Example: rejuv rejuvenate s2 --controller http://127.0.0.1:7070
    Rejuvenate {
        server: String,
        /// Ignore the disruption budget.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: crate::ops::Conn,
    },
    /// Put a server in maintenance (left alone by rejuv) or release it.
    ///
    /// Example: rejuv maintenance s2 on --controller http://127.0.0.1:7070
    Maintenance {
        server: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        conn: crate::ops::Conn,
    },
    /// Stop starting new workflows (running ones finish).
    ///
    /// Example: rejuv pause --controller http://127.0.0.1:7070
    Pause(crate::ops::Conn),
    /// Let new workflows start again.
    ///
    /// Example: rejuv resume --controller http://127.0.0.1:7070
    Resume(crate::ops::Conn),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AnalyzeFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate a config and report every error with its field.
    ///
    /// Example: rejuv config check rejuv.toml
    Check { file: PathBuf },
}

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Config::from_toml(&text)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("in {}", path.display()))
}

pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(!t.is_empty(), "token file {} is empty", path.display());
    Ok(t)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REJUV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
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
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            match Config::from_toml(&text) {
                Ok(c) => {
                    println!(
                        "{}: ok ({} cluster, {} servers, {} services)",
                        file.display(),
                        c.cluster.mode,
                        c.servers.len(),
                        c.services.len()
                    );
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
            token_file,
            data_dir,
        } => {
            init_tracing();
            let cfg = load_config(&config)?;
            let entry = cfg
                .server(&server)
                .with_context(|| format!("server '{server}' is not in {}", config.display()))?
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
            let rt = runtime()?;
            let exit = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(entry.agent)
                    .await
                    .with_context(|| format!("binding the agent API on {}", entry.agent))?;
                let shutdown = crate::procs::shutdown_on_signal();
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
        } => {
            init_tracing();
            let cfg = load_config(&config)?;
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
                    store_path,
                    paused,
                    dry_run,
                };
                rejuv_controller::run(listener, opts, shutdown).await
            })?;
            Ok(0)
        }
        Cmd::Proxy { config } => {
            init_tracing();
            let cfg = load_config(&config)?;
            let token = read_token(
                cfg.auth
                    .api_token_file
                    .as_deref()
                    .context("auth.api_token_file is required")?,
            )?;
            let admin = cfg.traffic.admin.context("traffic.admin is required")?;
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
            let report = match rejuv_sim::analyze::analyze_csv(&text, capacity, &cfg) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("rejuv: {}: {e}", input.display());
                    return Ok(2);
                }
            };
            match format {
                AnalyzeFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                AnalyzeFormat::Text => {
                    let points = rejuv_sim::analyze::parse_csv(&text)?;
                    print!("{}", rejuv_sim::analyze::render_text(&report, &points));
                }
            }
            Ok(0)
        }
        Cmd::Demo(args) => {
            init_tracing();
            crate::demo::run(args)
        }
        Cmd::Status(conn) => crate::ops::status(&conn),
        Cmd::Events { conn, follow } => crate::ops::events(&conn, follow),
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
        Cmd::Pause(conn) => {
            crate::ops::post_simple(&conn, "/v1/pause", "paused: no new workflow starts")
        }
        Cmd::Resume(conn) => crate::ops::post_simple(&conn, "/v1/resume", "resumed"),
    }
}
