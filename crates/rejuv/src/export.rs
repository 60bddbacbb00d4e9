//! `rejuv export samples`: the readings a running controller holds (`GET
//! /v1/servers/{id}/history`, about the last hour) written as a fleet directory that `rejuv
//! whatif --samples DIR` reads.
//!
//! - `SERVER.csv`: `t_seconds,value`, the server's summed instance RSS in bytes, times in
//!   seconds since `--since` before the controller's clock at the first answer (one origin
//!   for the whole fleet).
//! - `fleet.csv`: `server,capacity,role,units`: capacity is the RSS at which the series is
//!   exhausted, the server's memory budget (what the `instance-rss` rule measures against),
//!   else the host's memory; role and units as the controller has them now.
//!
//! A server with no reading in the span, or no budget to measure against, is left out (and
//! said so). Exit codes are those of the operator commands ([`crate::conn`]); a `--out`
//! directory holding other series files is bad usage (2): whatif would read them as servers.

use crate::conn::{report, Client, Conn, Fail, Output, EXIT_RUNTIME, EXIT_USAGE};
use rejuv_core::wire::{History, Status};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum ExportCmd {
    /// Write the readings the controller holds (about the last hour) as a fleet directory
    /// for `rejuv whatif --samples DIR`: one SERVER.csv (instance RSS bytes) per server and
    /// a fleet.csv (capacity: the memory budget).
    #[command(after_help = "\
Examples:
  rejuv export samples --controller http://ctl:7070 --token-file api.token --since 1h --out fleet/
  rejuv export samples --since 30m --out fleet/ && rejuv whatif --samples fleet/")]
    Samples(SamplesArgs),
}

#[derive(clap::Args, Debug)]
pub struct SamplesArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// How far back from now (the controller holds about the last hour).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// The fleet directory to write (made if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// What `--output json` prints: each server written, with its samples.
#[derive(Serialize)]
struct Written {
    out: String,
    servers: Vec<WrittenServer>,
    left_out: Vec<String>,
}

#[derive(Serialize)]
struct WrittenServer {
    server: String,
    samples: usize,
    capacity: u64,
}

pub fn run(cmd: ExportCmd) -> anyhow::Result<i32> {
    let ExportCmd::Samples(args) = cmd;
    let client = match Client::new(&args.conn) {
        Ok(c) => c,
        Err(e) => return Ok(report(e)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetched = rt.block_on(fetch(&client));
    let (status, histories) = match fetched {
        Ok(x) => x,
        Err(e) => return Ok(report(e)),
    };
    match write(&args, &status, &histories) {
        Ok(written) => {
            for s in &written.left_out {
                eprintln!("rejuv: left out {s}");
            }
            if args.conn.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&written)?);
            } else {
                eprintln!(
                    "rejuv: wrote {} series to {}",
                    written.servers.len(),
                    written.out
                );
            }
            Ok(0)
        }
        Err(f) => Ok(report(f)),
    }
}

/// The status (servers, roles, units) and every server's history.
async fn fetch(c: &Client) -> Result<(Status, Vec<History>), Fail> {
    let status: Status = c.get(&["v1", "status"], "").await?;
    let mut out = Vec::with_capacity(status.servers.len());
    for s in &status.servers {
        out.push(c.get(&["v1", "servers", &s.id, "history"], "").await?);
    }
    Ok((status, out))
}

fn write(args: &SamplesArgs, status: &Status, histories: &[History]) -> Result<Written, Fail> {
    let origin_ms = histories
        .first()
        .map_or(0, |h| h.now_ms)
        .saturating_sub(args.since.as_millis() as u64);
    let mut files: Vec<(String, String, u64, usize)> = Vec::new();
    let mut fleet = String::from("server,capacity,role,units\n");
    let mut left_out = Vec::new();
    for (s, h) in status.servers.iter().zip(histories) {
        let points: Vec<_> = h.points.iter().filter(|p| p.at_ms >= origin_ms).collect();
        let Some(capacity) = h.memory_budget_bytes.filter(|c| *c > 0) else {
            left_out.push(format!(
                "{}: no memory budget and no reading of its host's memory to measure against",
                s.id
            ));
            continue;
        };
        if points.is_empty() {
            left_out.push(format!(
                "{}: no reading in the last {}",
                s.id,
                humantime::format_duration(args.since)
            ));
            continue;
        }
        let mut csv = String::from("t_seconds,value\n");
        for p in &points {
            let ms = p.at_ms - origin_ms;
            let _ = writeln!(
                csv,
                "{}.{:03},{}",
                ms / 1000,
                ms % 1000,
                p.instances_rss_bytes
            );
        }
        let _ = writeln!(fleet, "{},{capacity},{},{}", s.id, s.role, s.capacity);
        files.push((s.id.clone(), csv, capacity, points.len()));
    }
    if files.is_empty() {
        return Err(Fail::new(
            EXIT_RUNTIME,
            format!(
                "nothing to export: no server has readings in the last {} ({})",
                humantime::format_duration(args.since),
                left_out.join("; ")
            ),
        ));
    }
    let dir = &args.out;
    check_dir(dir, &files)?;
    let io = |e: std::io::Error, p: &Path| {
        Fail::new(EXIT_RUNTIME, format!("writing {}: {e}", p.display()))
    };
    for (id, csv, ..) in &files {
        let p = dir.join(format!("{id}.csv"));
        std::fs::write(&p, csv).map_err(|e| io(e, &p))?;
    }
    let p = dir.join("fleet.csv");
    std::fs::write(&p, fleet).map_err(|e| io(e, &p))?;
    Ok(Written {
        out: dir.display().to_string(),
        servers: files
            .into_iter()
            .map(|(server, _, capacity, samples)| WrittenServer {
                server,
                samples,
                capacity,
            })
            .collect(),
        left_out,
    })
}

/// Makes `dir`; refuses one holding series files of servers not written now (whatif would
/// take them for servers of the fleet).
fn check_dir(dir: &Path, files: &[(String, String, u64, usize)]) -> Result<(), Fail> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Fail::new(EXIT_RUNTIME, format!("making {}: {e}", dir.display())))?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Fail::new(EXIT_RUNTIME, format!("reading {}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".csv") else {
            continue;
        };
        if stem != "fleet" && !files.iter().any(|(id, ..)| id == stem) {
            return Err(Fail::new(
                EXIT_USAGE,
                format!(
                    "--out {} holds {name}, which is not a server of this controller: `rejuv whatif` would read it as one; choose an empty directory",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}
