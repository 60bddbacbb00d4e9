//! The agent of one server, as a command: its flags and its run, shared by `rejuv agent` and
//! the small `rejuv-agent` binary (`agent_exec.rs` says when the one hands over to the other).

use crate::config_file::{load_config, read_token};
use anyhow::Context;
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;

/// The flags of `rejuv agent` (and of `rejuv-agent`, which takes the same).
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// This server's id in the config.
    #[arg(long)]
    pub server: String,
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
        token_file,
        data_dir,
        keep_instances,
    } = args;
    crate::logs::init_tracing();
    let mut cfg = load_config(&config)?;
    cfg.agent.keep_instances_on_exit |= keep_instances;
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
    let rt = agent_runtime()?;
    let exit = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(entry.agent)
            .await
            .with_context(|| format!("binding the agent API on {}", entry.agent))?;
        let shutdown = crate::signals::shutdown_on_signal();
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
