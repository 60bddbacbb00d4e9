//! `rejuv-sim`: the deterministic simulation of the controller core under faults.
//!
//! ```text
//! rejuv-sim --seed S [--verbose] [--steps N]          replay one schedule
//! rejuv-sim --schedules N [--from-seed S] [--steps N] [--threads T]
//! ```
//!
//! One schedule prints its outcome (or the violation with its seed, step, invariant and the
//! last events); many print a summary. Exit status 1 when an invariant broke, 2 on bad usage.

use rejuv_sim::sim::{self, Options};
use std::process::ExitCode;

const USAGE: &str = "usage: rejuv-sim --seed S [--verbose] [--steps N]\n       rejuv-sim --schedules N [--from-seed S] [--steps N] [--threads T]";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok(args) => run(args),
        Err(e) => {
            eprintln!("rejuv-sim: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    seed: Option<u64>,
    schedules: Option<u64>,
    from_seed: u64,
    threads: usize,
    opts: Options,
}

fn parse(args: Vec<String>) -> Result<Args, String> {
    let mut a = Args {
        seed: None,
        schedules: None,
        from_seed: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        opts: Options::default(),
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: '{v}' is not a whole number"))
        };
        match flag.as_str() {
            "--seed" => a.seed = Some(value("--seed")?),
            "--schedules" => a.schedules = Some(value("--schedules")?),
            "--from-seed" => a.from_seed = value("--from-seed")?,
            "--steps" => a.opts.steps = value("--steps")?,
            "--threads" => a.threads = value("--threads")? as usize,
            "--verbose" => a.opts.verbose = true,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if a.seed.is_some() == a.schedules.is_some() {
        return Err("give either --seed or --schedules".into());
    }
    Ok(a)
}

fn run(args: Args) -> ExitCode {
    if let Some(seed) = args.seed {
        let r = sim::run(seed, &args.opts);
        println!(
            "seed {seed}: {} | steps {} | simulated {:.1} s | completed {} rolled back {} failed {} | controller crashes {} | digest {:016x}",
            r.scenario,
            r.steps,
            r.sim_ms as f64 / 1000.0,
            r.completed,
            r.rolled_back,
            r.failed,
            r.controller_crashes,
            r.digest
        );
        return match r.violation {
            Some(v) => {
                println!("{v}");
                ExitCode::from(1)
            }
            None => ExitCode::SUCCESS,
        };
    }
    let n = args.schedules.unwrap_or(0);
    let summary = sim::run_many(args.from_seed, n, &args.opts, args.threads);
    for v in summary.violations.iter().take(3) {
        println!("{v}\n");
    }
    if summary.violations.len() > 3 {
        let seeds: Vec<u64> = summary.violations.iter().map(|v| v.seed).collect();
        println!("failing seeds: {seeds:?}\n");
    }
    println!("{summary}");
    if summary.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
