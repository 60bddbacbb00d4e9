//! `detector-bench`: the trend detector and the threshold baselines on the trace suites, and
//! the detector's throughput and memory.
//!
//! `cargo run --release -p rejuv-sim --bin detector-bench [-- --details] [--all-details] [--skip-suites]
//! [--skip-throughput] [--dev-only] [--stress N] [--held-back-stress N] [--held-out N]
//! [--write-fleet DIR]`
//!
//! Prints markdown: the figures of both suites (dev and held-back), per family, and the
//! series-updates per second of one core. `--dev-only` leaves the held-back suite out (for
//! tuning runs); `--stress N` adds a suite of `N` dev-draw traces per family from other seeds
//! (its details list only the traces judged wrong, unless `--all-details`); `--held-back-stress N` the same of the
//! held-back draw (seeds from 4 000 001), to tune against its kinds; `--held-out N` adds `N` traces per family
//! of the held-back draw from seeds no other suite uses (`traces::held_out_suite`), kept out
//! of the tuning of the forecast models.
//!
//! `--write-fleet DIR` writes the suites instead, as a fleet directory for `rejuv whatif`:
//! one primary per trace (`fleet.csv`: `server,capacity`; `TRACE.csv`: `t_seconds,value`,
//! every trace from t = 0), and nothing else.

use rejuv_core::detector::Level;
use rejuv_core::trend::{Aggregate, SeriesDetector, TrendConfig};
use rejuv_sim::traces::{self, Draw, Family, STEP_S};
use rejuv_sim::{eval, oracle};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all_details = args.iter().any(|a| a == "--all-details");
    let details = all_details || args.iter().any(|a| a == "--details");
    let dev_only = args.iter().any(|a| a == "--dev-only");
    // A suite's size: the number after its flag, 0 without the flag.
    let per_family = |flag: &str| -> usize {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(0, |n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("{flag} takes a number of traces per family"))
            })
    };
    let stress = per_family("--stress");
    let held_back_stress = per_family("--held-back-stress");
    let held_out = per_family("--held-out");
    if let Some(i) = args.iter().position(|a| a == "--write-fleet") {
        let Some(dir) = args.get(i + 1) else {
            eprintln!("detector-bench: --write-fleet takes a directory");
            std::process::exit(2);
        };
        if let Err(e) = write_fleet(std::path::Path::new(dir), dev_only) {
            eprintln!("detector-bench: writing the fleet to {dir}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cfg = TrendConfig::default();
    if !args.iter().any(|a| a == "--skip-suites") {
        let mut suites = vec![("dev suite", traces::dev_suite(), false)];
        if stress > 0 {
            suites.push(("dev stress suite", traces::dev_stress_suite(stress), true));
        }
        if !dev_only {
            suites.push(("held-back suite", traces::held_back_suite(), false));
        }
        if held_back_stress > 0 {
            suites.push((
                "held-back stress suite",
                traces::held_back_stress_suite(held_back_stress),
                true,
            ));
        }
        if held_out > 0 {
            suites.push(("held-out suite", traces::held_out_suite(held_out), true));
        }
        for (title, suite, only_wrong) in suites {
            let outs = eval::run_suite(&suite, &cfg);
            let score = eval::score(&outs);
            println!("### {title}\n");
            println!("{}", eval::markdown_summary(title, &score));
            println!("{}", eval::markdown_families(&outs));
            println!("{}", bursty_floor(&suite, &outs));
            if details {
                print_details(&outs, only_wrong && !all_details);
            }
        }
    }
    if !args.iter().any(|a| a == "--skip-throughput") {
        throughput(&cfg);
    }
}

/// The dev and held-back suites (the dev suite alone with `dev_only`) as a fleet directory of
/// primaries, one per trace.
fn write_fleet(dir: &std::path::Path, dev_only: bool) -> std::io::Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let mut suite = traces::dev_suite();
    if !dev_only {
        suite.extend(traces::held_back_suite());
    }
    let mut fleet = String::from("server,capacity\n");
    for t in &suite {
        let name = t.name();
        let _ = writeln!(fleet, "{name},{}", t.capacity as u64);
        let mut csv = String::with_capacity(t.values.len() * 24);
        csv.push_str("t_seconds,value\n");
        for (i, v) in t.values.iter().enumerate() {
            // Shortest text that reads back as the same value: exhaustion is `>=` capacity,
            // and a rounded byte could move it by a sample.
            let _ = writeln!(csv, "{},{v}", i as f64 * STEP_S);
        }
        std::fs::File::create(dir.join(format!("{name}.csv")))?.write_all(csv.as_bytes())?;
    }
    std::fs::write(dir.join("fleet.csv"), fleet)?;
    eprintln!(
        "detector-bench: wrote {} traces ({} aging) to {}",
        suite.len(),
        suite.iter().filter(|t| t.family.is_aging()).count(),
        dir.display()
    );
    Ok(())
}

/// The bursty leaks' forecasts beside the best possible ones ([`oracle`]).
fn bursty_floor(suite: &[traces::Trace], outs: &[eval::Outcome]) -> String {
    // Each caught bursty leak's floor, beside the detector's own error on it.
    let (floors, errors): (Vec<oracle::BurstyFloor>, Vec<f64>) = suite
        .iter()
        .zip(outs)
        .filter_map(|(t, o)| Some((oracle::bursty_floor(t, o)?, o.tte_error()?)))
        .unzip();
    let pct = |m: Option<f64>| m.map_or("-".into(), |m| format!("{:.1}%", m * 100.0));
    let med =
        |f: fn(&oracle::BurstyFloor) -> f64| pct(eval::median(floors.iter().map(f).collect()));
    let detector = pct(eval::median(errors));
    format!(
        "Bursty leaks caught, {n} traces, median TTE error at detection: the detector \
         {detector}, an oracle that estimates the bursts' rate and size from the noiseless \
         staircase seen so far {}, one that knows them {}. Expected over {} continuations: \
         {}, {}, {}.\n",
        med(|f| f.data_error),
        med(|f| f.oracle_error),
        oracle::DRAWS,
        med(|f| f.detector_expected_error),
        med(|f| f.data_expected_error),
        med(|f| f.oracle_expected_error),
        n = floors.len(),
    )
}

fn print_details(outs: &[eval::Outcome], only_wrong: bool) {
    let f = |x: Option<f64>| x.map_or("-".into(), |s| format!("{:.2}h", s / 3600.0));
    println!("```");
    for o in outs {
        let bad = (o.aging && !o.caught())
            || (!o.aging && o.detected_s.is_some())
            || o.detected_s.is_some_and(|t| t < o.onset_s);
        if only_wrong && !bad {
            continue;
        }
        println!(
            "{} {:<30} exhaust={:>8} detect={:>8} tte={:>8} err={:>5} interval={:>17} window={:>7} lead={:>7} lead90={:>7} model={}",
            if bad { "!!" } else { "  " },
            o.name,
            f(o.exhaust_s),
            f(o.detected_s),
            f(o.tte_s),
            o.tte_error().map_or("-".into(), |e| format!("{:.0}%", e * 100.0)),
            o.tte_interval_s.map_or("-".into(), |(low, high)| format!(
                "{}{}–{}",
                if o.within_interval() == Some(false) { "!" } else { "" },
                f(Some(low)),
                high.map_or("∞".into(), |h| f(Some(h)))
            )),
            f(o.window_s),
            f(o.lead_s()),
            f(o.thr90_lead_s()),
            o.model.unwrap_or("-"),
        );
    }
    println!("```\n");
}

/// Series-updates per second on one core: many series, each fed its own trace, interleaved
/// as a controller would (every series gets one sample per tick).
fn throughput(cfg: &TrendConfig) {
    println!("### throughput (one core)\n");
    println!("| workload | series | updates | seconds | updates/s | CPU seconds | updates per CPU second | bytes/series |\n|---|---|---|---|---|---|---|---|");
    let n_series = 2000;
    let ticks = 8640; // one day of 10 s samples
                      // Unit fractions of capacity; an aging trace shorter than a day wraps around.
    let make = |leaking_every: usize| -> Vec<Vec<f64>> {
        (0..n_series)
            .map(|i| {
                let fam = if leaking_every > 0 && i % leaking_every == 0 {
                    Family::AGING[(i / leaking_every) % Family::AGING.len()]
                } else {
                    Family::HEALTHY[i % Family::HEALTHY.len()]
                };
                let t = traces::generate(fam, 50_000 + i as u64, Draw::Dev);
                (0..ticks)
                    .map(|k| t.values[k % t.values.len()] / t.capacity)
                    .collect()
            })
            .collect()
    };
    let run = |name: &str, traces: &[Vec<f64>], cfg: &TrendConfig, step_ms: u64| {
        let mut dets: Vec<SeriesDetector> = (0..n_series)
            .map(|_| SeriesDetector::new(cfg, 1.0, Aggregate::Max))
            .collect();
        let mut unstable = 0u64;
        let start = Instant::now();
        let cpu_start = thread_cpu_s();
        for k in 0..ticks {
            let now = k as u64 * step_ms;
            for (d, tr) in dets.iter_mut().zip(traces) {
                if d.observe(now, tr[k]).level == Level::Unstable {
                    unstable += 1;
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = thread_cpu_s().zip(cpu_start).map(|(b, a)| b - a);
        let updates = (n_series * ticks) as f64;
        println!(
            "| {name} | {n_series} | {updates:.0} | {secs:.2} | {:.0} | {} | {} | {} |",
            updates / secs,
            cpu.map_or("-".into(), |c| format!("{c:.2}")),
            cpu.map_or("-".into(), |c| format!("{:.0}", updates / c)),
            dets[0].memory_bytes()
        );
        // Keeps the work observable, so it cannot be optimized away.
        std::hint::black_box(unstable);
    };
    let step = (STEP_S * 1000.0) as u64;
    let healthy = make(0);
    run(
        "healthy fleet, default config, 10 s samples",
        &healthy,
        cfg,
        step,
    );
    run("5% of series leaking", &make(20), cfg, step);
    run("every series leaking (worst case)", &make(1), cfg, step);
    // The shortest scale closes a bucket at every sample.
    let dense = TrendConfig {
        window: Duration::from_secs(64 * 10 * 64),
        min_window: Duration::from_secs(64 * 10),
        ..cfg.clone()
    };
    run(
        "healthy fleet, a bucket closes at every sample",
        &healthy,
        &dense,
        step,
    );
    println!();
}

/// CPU time this thread has run, seconds (Linux's `/proc/thread-self/schedstat`, nanoseconds):
/// on a machine shared with other builds, updates per CPU second measure the detector while
/// wall-clock rates measure the load.
fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}
