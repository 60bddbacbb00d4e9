//! `detector-bench`: the trend detector and the threshold baselines on the trace suites, and
//! the detector's throughput.
//!
//! `cargo run --release -p rejuv-sim --bin detector-bench [-- --details] [--no-throughput]`

use rejuv_core::trend::TrendConfig;
use rejuv_sim::eval;
use rejuv_sim::traces;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let details = args.iter().any(|a| a == "--details");
    let cfg = TrendConfig::default();
    for (title, suite) in [("dev suite", traces::dev_suite()), ("held-back suite", traces::held_back_suite())] {
        let outs = eval::run_suite(&suite, &cfg);
        let score = eval::score(&outs);
        println!("## {title}\n");
        println!("{}", eval::markdown_summary(title, &score));
        println!("{}", eval::markdown_families(&outs));
        if details {
            for o in &outs {
                let bad = (o.aging && !o.caught()) || (!o.aging && o.detected_s.is_some()) || o.detected_s.is_some_and(|t| t < o.onset_s);
                println!(
                    "{} {:<28} ex={:>8} det={:>8} tte={:>8} err={:>6} win={:>7} lead={:>7} lead90={:>7}",
                    if bad { "!!" } else { "  " },
                    o.name,
                    f(o.exhaust_s),
                    f(o.detected_s),
                    f(o.tte_s),
                    o.tte_error().map_or("-".into(), |e| format!("{:.0}%", e * 100.0)),
                    f(o.window_s),
                    f(o.lead_s()),
                    f(o.thr90_lead_s()),
                );
            }
        }
    }
}

fn f(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{:.2}h", s / 3600.0))
}
