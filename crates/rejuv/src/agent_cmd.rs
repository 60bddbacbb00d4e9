//! The agent of one server, as a command: its flags and its run, shared by `rejuv agent` and
//! the small `rejuv-agent` binary (`agent_exec.rs` says when the one hands over to the other).

use crate::config_file::{load_config, read_token};
use anyhow::Context;
use clap::Args;
use rejuv_core::config::Config;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The flags of `rejuv agent` (and of `rejuv-agent`, which takes the same).
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// This server's id in the config (with --join: the id it joins as).
    #[arg(long, alias = "server-id")]
    pub server: String,
    #[command(flatten)]
    pub join: JoinArgs,
    /// File holding the agent token (default: auth.agent_token_file of the config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Data directory (default: the server's data_dir in the config).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// On SIGTERM/SIGINT, leave the instances running for the next agent to adopt (an
    /// agent upgrade); same as `[agent] keep_instances_on_exit = true`.
    #[arg(long)]
    pub keep_instances: bool,
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

/// The executable this process runs, as a path to run again: a binary replaced on disk while
/// it ran (an upgrade) shows as "PATH (deleted)", and the new one at PATH is meant.
pub fn own_executable() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the agent's own executable")?;
    Ok(
        match exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            Some(p) => PathBuf::from(p),
            None => exe,
        },
    )
}

/// The agent's runtime: one thread runs the agent's few requests and timers (blocking work,
/// `/proc` reads and file I/O, still gets threads of its own, which end after a few idle
/// seconds). A current-thread runtime rather than a one-worker multi-thread one: a thread, its
/// stack and (with glibc) a malloc arena less.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs the agent in this process until SIGTERM/SIGINT (exit code 0); after a
/// `restart-agent` action it re-executes its own executable with the same arguments.
pub fn run(args: AgentArgs) -> anyhow::Result<i32> {
    let AgentArgs {
        config,
        server,
        join,
        token_file,
        data_dir,
        keep_instances,
    } = args;
    crate::logs::init_tracing();
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
        let shutdown = crate::signals::shutdown_on_signal();
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
        let exe = own_executable()?;
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let err = std::process::Command::new(exe).args(args).exec();
        anyhow::bail!("re-executing the agent failed: {err}");
    }
    Ok(0)
}
