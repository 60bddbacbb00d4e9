//! Seeded, reproducible resource traces for judging the detector.
//!
//! Every trace is a series of 10 s samples of one resource against a capacity. Healthy
//! families (daily cycles, cache warm-up to a plateau, GC sawtooth, periodic batch spikes, a
//! mean-reverting wander, a server steady near its limit) never exhaust; aging families
//! (linear, bursty, accelerating, suddenly starting leaks, leaks under a daily cycle or a
//! sawtooth, runaway leaks) end at their ground-truth exhaustion: the first sample at or above
//! the capacity.
//!
//! Two draws of parameters exist: [`Draw::Dev`], the suite the detector was tuned on, and
//! [`Draw::HeldBack`], other seeds and wider or shifted parameter ranges, different cycle
//! shapes and noise, so that tuning for the kinds and not for a file can be checked.
//!
//! # Guarantees
//! The same `(family, seed, draw)` gives the same trace on every machine: the generator is
//! `rand`'s seeded `StdRng` and plain arithmetic, with no clock or global state.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Seconds between samples.
pub const STEP_S: f64 = 10.0;

/// The kind of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    // Healthy.
    DailyCycle,
    WarmUp,
    GcSawtooth,
    BatchSpikes,
    Wander,
    NearLimit,
    // Aging.
    Linear,
    Bursty,
    Accelerating,
    SuddenStart,
    LeakDaily,
    LeakSawtooth,
    Runaway,
}

impl Family {
    pub const HEALTHY: [Family; 6] = [
        Family::DailyCycle,
        Family::WarmUp,
        Family::GcSawtooth,
        Family::BatchSpikes,
        Family::Wander,
        Family::NearLimit,
    ];
    pub const AGING: [Family; 7] = [
        Family::Linear,
        Family::Bursty,
        Family::Accelerating,
        Family::SuddenStart,
        Family::LeakDaily,
        Family::LeakSawtooth,
        Family::Runaway,
    ];

    pub fn is_aging(self) -> bool {
        Self::AGING.contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::DailyCycle => "daily-cycle",
            Family::WarmUp => "warm-up",
            Family::GcSawtooth => "gc-sawtooth",
            Family::BatchSpikes => "batch-spikes",
            Family::Wander => "wander",
            Family::NearLimit => "near-limit",
            Family::Linear => "linear",
            Family::Bursty => "bursty",
            Family::Accelerating => "accelerating",
            Family::SuddenStart => "sudden-start",
            Family::LeakDaily => "leak-daily",
            Family::LeakSawtooth => "leak-sawtooth",
            Family::Runaway => "runaway",
        }
    }
}

/// Which parameter ranges to draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Draw {
    /// The development suite.
    Dev,
    /// The held-back suite: other seeds, wider and shifted ranges, other shapes.
    HeldBack,
}

/// One generated series.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub family: Family,
    pub seed: u64,
    pub draw: Draw,
    /// The exhaustion level, in the series' unit (bytes, or a count for integer series).
    pub capacity: f64,
    /// Whether values are whole numbers (fds, threads), which makes ties.
    pub integer: bool,
    /// Sample `i` is taken at `i × STEP_S` seconds.
    pub values: Vec<f64>,
    /// Ground truth: seconds of the first sample at or above the capacity (aging traces).
    pub exhaust_s: Option<f64>,
    /// Seconds at which the leak starts (0 unless it starts suddenly); an alarm before it is
    /// a false one.
    pub onset_s: f64,
    /// A bursty leak's generator, for the forecast's best possible error
    /// ([`crate::oracle`]); `None` for every other family.
    #[serde(skip)]
    pub bursty: Option<BurstyTruth>,
}

/// How a bursty leak was drawn: bursts come at random (a burst in each 10 s step with
/// probability `STEP_S / mean_gap_s`), each of an exponentially distributed size of mean
/// `mean_jump` (a fraction of the capacity), and `levels[i]` is the staircase at sample `i`
/// before the measurement noise.
#[derive(Debug, Clone)]
pub struct BurstyTruth {
    pub mean_gap_s: f64,
    pub mean_jump: f64,
    pub levels: Vec<f32>,
}

impl Trace {
    pub fn name(&self) -> String {
        format!("{}-{:?}-{}", self.family.name(), self.draw, self.seed).to_lowercase()
    }
}

/// A suite: `per_family` traces of every family, seeds from `first_seed`.
pub fn suite(draw: Draw, first_seed: u64, per_family: usize) -> Vec<Trace> {
    let mut out = Vec::new();
    let mut seed = first_seed;
    for fam in Family::HEALTHY.iter().chain(Family::AGING.iter()) {
        for _ in 0..per_family {
            out.push(generate(*fam, seed, draw));
            seed += 1;
        }
    }
    out
}

/// The development suite: 9 traces per family, 54 healthy and 63 aging.
pub fn dev_suite() -> Vec<Trace> {
    suite(Draw::Dev, 1, 9)
}

/// The held-back suite: other seeds and parameter draws, same size.
pub fn held_back_suite() -> Vec<Trace> {
    suite(Draw::HeldBack, 1_000_001, 9)
}

/// A fresh held-out suite: `per_family` traces of every family of the held-back draw (wider
/// ranges, skewed cycles, other noise) from seeds that no other suite uses (from 3 000 001).
/// It was kept out of the tuning of the forecast models, to report how they do on traces not
/// seen while they were chosen.
pub fn held_out_suite(per_family: usize) -> Vec<Trace> {
    suite(Draw::HeldBack, 3_000_001, per_family)
}

/// A larger suite of the held-back draw, `per_family` traces of every family from seeds that
/// no other suite uses (from 4 000 001): for tuning against the held-back draw's kinds (skewed
/// cycles, wider ranges) without looking at the held-out suite.
pub fn held_back_stress_suite(per_family: usize) -> Vec<Trace> {
    suite(Draw::HeldBack, 4_000_001, per_family)
}

/// A larger suite of the dev draw, `per_family` traces of every family from seeds that neither
/// the dev nor the held-back suite uses: for tuning against rare members of a kind (a false
/// alarm in 1 of 54 healthy traces is a rate, and 9 traces a family do not measure it).
pub fn dev_stress_suite(per_family: usize) -> Vec<Trace> {
    suite(Draw::Dev, 2_000_001, per_family)
}

struct Gen {
    rng: StdRng,
    draw: Draw,
}

impl Gen {
    /// Uniform in `[lo, hi)` for the dev draw; for the held-back draw the range is widened by
    /// `widen` of its width on each side.
    fn u(&mut self, lo: f64, hi: f64) -> f64 {
        let (lo, hi) = match self.draw {
            Draw::Dev => (lo, hi),
            Draw::HeldBack => {
                let w = (hi - lo) * 0.15;
                (lo - w, hi + w)
            }
        };
        self.rng.gen_range(lo..hi)
    }
    /// Log-uniform in `[lo, hi)`, widened the same way in log space for the held-back draw.
    fn lu(&mut self, lo: f64, hi: f64) -> f64 {
        self.u(lo.ln(), hi.ln()).exp()
    }
    /// Uniform in `[0, 1)` whatever the draw: for phases and offsets.
    fn unit(&mut self) -> f64 {
        self.rng.gen()
    }
    fn normal(&mut self) -> f64 {
        // Box-Muller: two uniforms, one normal.
        let u1: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }
}

/// Autocorrelated measurement noise: AR(1) with coefficient `phi` and stationary sd `sd`.
struct Ar1 {
    phi: f64,
    sd: f64,
    x: f64,
}

impl Ar1 {
    fn new(g: &mut Gen) -> Self {
        let phi = match g.draw {
            Draw::Dev => g.u(0.3, 0.9),
            Draw::HeldBack => g.u(0.0, 0.95).clamp(0.0, 0.97),
        };
        let sd = g.lu(0.002, 0.012);
        let x = g.normal() * sd;
        Self { phi, sd, x }
    }
    fn next(&mut self, g: &mut Gen) -> f64 {
        self.x = self.phi * self.x + (1.0 - self.phi * self.phi).sqrt() * self.sd * g.normal();
        self.x
    }
}

/// A daily cycle of amplitude `a` (fraction of capacity) and random phase; the held-back draw
/// uses a skewed, non-sinusoidal shape (a sharp evening peak).
struct Daily {
    a: f64,
    phase: f64,
    skew: f64,
}

impl Daily {
    fn new(g: &mut Gen, a_lo: f64, a_hi: f64) -> Self {
        let a = g.u(a_lo, a_hi).max(0.01);
        let phase = g.unit();
        let skew = match g.draw {
            Draw::Dev => 0.0,
            Draw::HeldBack => g.u(0.0, 0.4),
        };
        Self { a, phase, skew }
    }
    fn at(&self, t_s: f64) -> f64 {
        let x = 2.0 * std::f64::consts::PI * (t_s / 86_400.0 + self.phase);
        self.a * (x.sin() + self.skew * (2.0 * x).sin()) / (1.0 + self.skew)
    }
}

/// A sawtooth: rises by `amp` over `period_s`, then drops at once (a collection).
struct Saw {
    amp: f64,
    period_s: f64,
    offset_s: f64,
}

impl Saw {
    fn new(g: &mut Gen) -> Self {
        let amp = g.u(0.08, 0.22);
        let period_s = g.lu(120.0, 1800.0);
        let offset_s = g.unit() * period_s;
        Self {
            amp,
            period_s,
            offset_s,
        }
    }
    fn at(&self, t_s: f64) -> f64 {
        self.amp * ((t_s + self.offset_s) / self.period_s).fract()
    }
}

/// A trace's shape: fraction of capacity at a time in seconds (may draw from the generator).
type Shape = Box<dyn FnMut(f64, &mut Gen) -> f64>;

/// Generates one trace.
pub fn generate(family: Family, seed: u64, draw: Draw) -> Trace {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed ^ ((family as u64) << 40)),
        draw,
    };
    // A quarter of the traces are integer counts (fds, threads) against a count limit;
    // the rest are bytes against an 8 GiB budget.
    let integer = g.chance(0.25);
    let capacity = if integer {
        65_536.0
    } else {
        8.0 * 1024.0 * 1024.0 * 1024.0
    };
    let mut noise = Ar1::new(&mut g);
    let h = 3600.0;
    // The shape, as a fraction of capacity, of time in seconds; noise is added below.
    let mut onset_s = 0.0;
    let mut bursty = None;
    let (len_s, shape): (f64, Shape) = match family {
        Family::DailyCycle => {
            let m = g.u(0.35, 0.6);
            let d = Daily::new(&mut g, 0.05, 0.16);
            (3.0 * 86_400.0, Box::new(move |t, _| m + d.at(t)))
        }
        Family::WarmUp => {
            let s0 = g.u(0.05, 0.2);
            let p = g.u(0.45, 0.8).min(0.9);
            let tau = g.lu(0.3 * h, 4.0 * h);
            (
                2.0 * 86_400.0,
                Box::new(move |t, _| p - (p - s0) * (-t / tau).exp()),
            )
        }
        Family::GcSawtooth => {
            let base = g.u(0.3, 0.55);
            let saw = Saw::new(&mut g);
            (2.0 * 86_400.0, Box::new(move |t, _| base + saw.at(t)))
        }
        Family::BatchSpikes => {
            let base = g.u(0.3, 0.5);
            let height = g.u(0.15, 0.35);
            let dur = g.lu(300.0, 1800.0);
            let period = g.lu(h, 6.0 * h);
            let off = g.unit() * period;
            // A spike ramps up over a minute and stays up for its duration.
            (
                2.0 * 86_400.0,
                Box::new(move |t, _| {
                    let k = (t + off) % period;
                    base + if k < dur {
                        height * (k / 60.0).min(1.0)
                    } else {
                        0.0
                    }
                }),
            )
        }
        Family::Wander => {
            let m = g.u(0.4, 0.6);
            // The dev draw covers wide, slow wanders (a correlation time of up to 12 h and a
            // standard deviation of up to 9.5% of capacity): inside an 8 h window such a
            // wander looks like a trend. The held-back draw keeps its own ranges (the dev
            // ranges of before, widened), so its traces are unchanged.
            let (tau, sd) = match g.draw {
                Draw::Dev => (g.lu(h, 12.0 * h), g.u(0.03, 0.095)),
                Draw::HeldBack => (g.lu(h, 8.0 * h), g.u(0.03, 0.08)),
            };
            let mut x = g.normal() * sd;
            let a = (-STEP_S / tau).exp();
            (
                3.0 * 86_400.0,
                Box::new(move |_, g| {
                    x = a * x + (1.0 - a * a).sqrt() * sd * g.normal();
                    (m + x).clamp(0.05, 0.93)
                }),
            )
        }
        Family::NearLimit => {
            let m = g.u(0.9, 0.95).min(0.955);
            let sd = g.u(0.003, 0.01);
            let tau = g.lu(0.5 * h, 4.0 * h);
            let mut x = 0.0;
            let a = (-STEP_S / tau).exp();
            (
                2.0 * 86_400.0,
                Box::new(move |_, g| {
                    x = a * x + (1.0 - a * a).sqrt() * sd * g.normal();
                    (m + x).min(0.975)
                }),
            )
        }
        Family::Linear => {
            let s0 = g.u(0.2, 0.5);
            let t_ex = g.lu(2.0 * h, 72.0 * h);
            (t_ex * 1.2, Box::new(move |t, _| s0 + (1.0 - s0) * t / t_ex))
        }
        Family::Bursty => {
            let s0 = g.u(0.2, 0.5);
            let t_ex = g.lu(3.0 * h, 48.0 * h);
            // A leak made of bursts: at least about 20 of them before exhaustion. Fewer, bigger
            // steps are step changes like any other, left to the threshold rule.
            let mean_gap = g.lu(120.0, 1800.0).min(t_ex / 20.0);
            // Mean jump so that the drift reaches capacity around t_ex.
            let jump = (1.0 - s0) * mean_gap / t_ex;
            let mut level = s0;
            let p = STEP_S / mean_gap;
            bursty = Some(BurstyTruth {
                mean_gap_s: mean_gap,
                mean_jump: jump,
                levels: Vec::new(),
            });
            (
                t_ex * 2.0,
                Box::new(move |_, g| {
                    if g.rng.gen_bool(p.min(1.0)) {
                        // Exponential jump sizes.
                        level += -jump * g.rng.gen_range(f64::EPSILON..1.0f64).ln();
                    }
                    level
                }),
            )
        }
        Family::Accelerating => {
            let s0 = g.u(0.2, 0.5);
            let t_ex = g.lu(3.0 * h, 48.0 * h);
            let pw = g.u(1.5, 3.0);
            (
                t_ex * 1.2,
                Box::new(move |t, _| s0 + (1.0 - s0) * (t / t_ex).powf(pw)),
            )
        }
        Family::SuddenStart => {
            let s0 = g.u(0.2, 0.5);
            let onset = g.lu(2.0 * h, 24.0 * h);
            onset_s = onset;
            let t_ex = g.lu(2.0 * h, 36.0 * h);
            (
                (onset + t_ex) * 1.2,
                Box::new(move |t, _| s0 + (1.0 - s0) * ((t - onset) / t_ex).max(0.0)),
            )
        }
        Family::LeakDaily => {
            let s0 = g.u(0.25, 0.45);
            let d = Daily::new(&mut g, 0.04, 0.12);
            let t_ex = g.lu(12.0 * h, 72.0 * h);
            (
                t_ex * 1.5,
                Box::new(move |t, _| s0 + d.at(t) + (1.0 - s0) * t / t_ex),
            )
        }
        Family::LeakSawtooth => {
            let s0 = g.u(0.2, 0.4);
            let saw = Saw::new(&mut g);
            let t_ex = g.lu(3.0 * h, 48.0 * h);
            (
                t_ex * 1.5,
                Box::new(move |t, _| s0 + saw.at(t) + (1.0 - s0) * t / t_ex),
            )
        }
        Family::Runaway => {
            let s0 = g.u(0.2, 0.5);
            let onset = g.lu(0.5 * h, 6.0 * h);
            onset_s = onset;
            let t_ex = match draw {
                Draw::Dev => g.u(25.0 * 60.0, 55.0 * 60.0),
                Draw::HeldBack => g.rng.gen_range(25.0 * 60.0..59.0 * 60.0),
            };
            (
                onset + t_ex * 2.0,
                Box::new(move |t, _| s0 + (1.0 - s0) * ((t - onset) / t_ex).max(0.0)),
            )
        }
    };
    let mut shape = shape;
    let n = (len_s / STEP_S) as usize;
    // An aging trace goes on until it exhausts (a bursty leak may be slower than its mean).
    let n = if family.is_aging() {
        (30.0 * 86_400.0 / STEP_S) as usize
    } else {
        n
    };
    let mut values = Vec::with_capacity(n.min(100_000));
    let mut exhaust_s = None;
    for i in 0..n {
        let t = i as f64 * STEP_S;
        let level = shape(t, &mut g);
        if let Some(b) = &mut bursty {
            b.levels.push(level as f32);
        }
        let frac = (level + noise.next(&mut g)).max(0.0);
        let mut v = frac * capacity;
        if integer {
            v = v.round();
        }
        if !family.is_aging() {
            // Healthy traces never touch the capacity, whatever the noise draws.
            v = v.min(capacity * 0.985);
        }
        values.push(v);
        if family.is_aging() && v >= capacity {
            exhaust_s = Some(t);
            break;
        }
    }
    Trace {
        family,
        seed,
        draw,
        capacity,
        integer,
        values,
        exhaust_s,
        onset_s,
        bursty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace() {
        for fam in Family::HEALTHY.iter().chain(Family::AGING.iter()) {
            let a = generate(*fam, 7, Draw::Dev);
            let b = generate(*fam, 7, Draw::Dev);
            assert_eq!(a.values, b.values, "{}", fam.name());
            let c = generate(*fam, 8, Draw::Dev);
            assert_ne!(a.values, c.values, "{}", fam.name());
        }
    }

    #[test]
    fn aging_traces_end_at_exhaustion_and_healthy_ones_never_exhaust() {
        for t in suite(Draw::Dev, 100, 2)
            .into_iter()
            .chain(suite(Draw::HeldBack, 200, 2))
        {
            if t.family.is_aging() {
                let ex = t
                    .exhaust_s
                    .unwrap_or_else(|| panic!("{} never exhausts", t.name()));
                let last = *t.values.last().unwrap();
                assert!(last >= t.capacity, "{}", t.name());
                assert_eq!(ex, (t.values.len() - 1) as f64 * STEP_S, "{}", t.name());
                assert!(t.values[..t.values.len() - 1]
                    .iter()
                    .all(|v| *v < t.capacity));
            } else {
                assert!(t.exhaust_s.is_none());
                assert!(t.values.iter().all(|v| *v < t.capacity), "{}", t.name());
            }
            if t.integer {
                assert!(t.values.iter().all(|v| v.fract() == 0.0), "{}", t.name());
            }
        }
    }

    #[test]
    fn runaway_leaks_exhaust_within_an_hour_of_onset() {
        for seed in 0..20 {
            let t = generate(Family::Runaway, seed, Draw::Dev);
            let first_rise = t.values.iter().position(|v| *v > t.capacity * 0.6).unwrap();
            let ex = t.exhaust_s.unwrap();
            assert!(ex - first_rise as f64 * STEP_S < 3600.0, "seed {seed}");
        }
    }
}
