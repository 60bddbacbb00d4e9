//! The `rejuv` binary: a thin `main` over the library crates.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad usage or invalid config; 3 the controller
//! refused an operator request (it does not fit the current state); 4 unauthorized. The whole
//! command line is described in `docs/cli.md`.

mod advise;
mod chaos;
mod cli;
mod config_file;
mod conn;
mod demo;
mod export;
mod fleetbench;
mod ops;
mod procs;
mod table;
#[cfg(test)]
mod testdata;
mod tlscmd;
mod view;
mod whatif;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let code = match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "rejuv: error: {}",
                rejuv_core::text::terminal_safe(&format!("{e:#}"))
            );
            if e.downcast_ref::<rejuv_core::config::ConfigError>()
                .is_some()
            {
                2
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}
