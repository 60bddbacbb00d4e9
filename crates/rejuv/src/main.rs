//! The `rejuv` binary: a thin `main` over the library crates.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad usage or invalid config; 3 the controller
//! refused an operator request (it does not fit the current state); 4 unauthorized. The whole
//! command line is described in `docs/cli.md`. `rejuv agent` hands over to the small
//! `rejuv-agent` binary (`agent_main.rs`) when it is installed beside this one.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod advise;
mod agent_cmd;
mod agent_exec;
mod chaos;
mod cli;
mod config_file;
mod conn;
mod demo;
mod export;
mod fail;
mod fleetbench;
mod logs;
mod ops;
mod procs;
mod signals;
mod table;
#[cfg(test)]
mod testdata;
mod tlscmd;
mod version;
mod view;
mod whatif;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let code = match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => fail::report(&e),
    };
    std::process::exit(code);
}
