//! The `rejuv-agent` binary: the agent alone, for `rejuv agent` to hand over to.
//!
//! It holds only the agent's code (no controller, proxy, simulator or demo), so the pages of
//! code an idle agent keeps resident are few. It takes the flags of `rejuv agent` and has its
//! exit codes: 0 after SIGTERM/SIGINT, 1 runtime failure, 2 bad usage or invalid config.
//! Installed beside `rejuv`, it is what `rejuv agent` runs (see `agent_cmd.rs`).

mod agent_cmd;
mod config_file;
mod fail;
mod logs;
mod signals;
mod version;

use clap::Parser;

/// Runs the agent of one server (what `rejuv agent` runs when this binary is beside it).
#[derive(Parser)]
#[command(
    name = "rejuv-agent",
    version = version::version_string(),
    after_help = "\
Examples:
  rejuv agent --config /etc/rejuv/rejuv.toml --server s1          # runs this binary when beside rejuv
  rejuv-agent --config /etc/rejuv/rejuv.toml --server s1 --keep-instances"
)]
struct Cli {
    #[command(flatten)]
    args: agent_cmd::AgentArgs,
}

fn main() {
    let cli = Cli::parse();
    let code = match agent_cmd::run(cli.args) {
        Ok(code) => code,
        Err(e) => fail::report(&e),
    };
    std::process::exit(code);
}
