//! The sample service as a stand-alone process, for tests that need a real process (an OOM-like
//! `SIGKILL` must kill only it) and for agent catalogs (`--listen 127.0.0.1:{port}`).
//!
//! Prints `listening on ADDR` on stdout once it accepts connections, so a caller that passed
//! port 0 learns the port. `SIGTERM` or `SIGINT` drains in-flight requests and exits 0; a
//! second one exits at once with 130.

use anyhow::Context;
use clap::Parser;
use rejuv_sample::service::{self, ServiceArgs, ServiceOptions};
use std::io::Write;
use std::net::SocketAddr;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "An HTTP service that ages on purpose (rejuv sample)."
)]
struct Args {
    /// Address to serve on; port 0 picks one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    let opts = ServiceOptions::from(args.service);
    service::run(listener, opts, shutdown).await
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        for round in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if round == 0 {
                eprintln!("rejuv-sample-service: shutting down, draining in-flight requests");
                shutdown.cancel();
            } else {
                eprintln!("rejuv-sample-service: second signal, exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
