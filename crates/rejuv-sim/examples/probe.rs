use rejuv_core::trend::{Aggregate, SeriesDetector, TrendConfig};
use rejuv_sim::traces::{generate, Draw, Family, STEP_S};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let fam = Family::AGING.iter().chain(Family::HEALTHY.iter()).find(|f| f.name() == a[1]).unwrap();
    let seed: u64 = a[2].parse().unwrap();
    let draw = if a.get(3).map(|s| s.as_str()) == Some("h") { Draw::HeldBack } else { Draw::Dev };
    let t = generate(*fam, seed, draw);
    let cfg = TrendConfig::default();
    let mut d = SeriesDetector::new(&cfg, t.capacity, Aggregate::Max);
    println!("exhaust {:?} len {}", t.exhaust_s.map(|x| x / 3600.0), t.values.len());
    let every = (1800.0 / STEP_S) as usize;
    for (i, v) in t.values.iter().enumerate() {
        let v = d.observe((i as f64 * STEP_S * 1000.0) as u64, *v);
        if i % every == 0 {
            print!("{:6.2}h val={:.3} {:?}", i as f64 * STEP_S / 3600.0, t.values[i] / t.capacity, v.level);
            for f in d.forecasts() {
                print!(" | w={:.1}h tte={:.2}h hi={:?} conf={:.3} infl={:.1} st={}", f.window_s / 3600.0, f.tte_s / 3600.0, f.tte_high_s.map(|x| (x / 360.0).round() / 10.0), f.confidence, f.variance_inflation, f.steady);
            }
            println!();
        }
    }
}
