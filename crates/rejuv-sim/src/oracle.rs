//! The best forecast a bursty leak allows, to judge the detector's against.
//!
//! A bursty leak ([`crate::traces::Family::Bursty`]) is a random staircase: when it will next
//! jump, and by how much, is drawn afresh at every step. Its time to exhaustion at a detection
//! is therefore a random variable even for someone who knows the generator exactly, and a
//! forecast's relative error has a floor that no detector can go under. This module measures
//! that floor: an *oracle* that knows the burst rate, the mean burst size and the staircase's
//! level at the detection (without the measurement noise) draws [`DRAWS`] continuations of the
//! staircase from there, and forecasts the time that minimises the expected relative error
//! `E|f − T| / T` over them (the median of `T` weighted by `1/T`).
//!
//! A second, humbler oracle knows only the kind of generator and the staircase seen so far
//! (its levels without noise, from the trace's start to the detection): it estimates the burst
//! rate and mean size from the bursts it saw, then forecasts as the first does. It is the best
//! a forecast *from the data* can hope for, and still better placed than the detector (no
//! noise, the whole history, the generator's form known).
//!
//! Reported per trace: each forecast's error on what really happened, and the expected error
//! of the oracles' and of the detector's forecasts over the true continuations (a figure for
//! the forecast alone, free of the one draw the trace happened to make).
//!
//! # Guarantees
//! Seeded by the trace: the same trace and detection give the same figures. The measurement
//! noise is left out of the continuations (exhaustion is taken where the staircase reaches the
//! capacity), which makes the oracle's task a little easier than the detector's, so the floor
//! is, if anything, low.

use crate::eval::Outcome;
use crate::traces::{Trace, STEP_S};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Continuations drawn per detection.
pub const DRAWS: usize = 2001;

/// The figures of one bursty trace at its detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstyFloor {
    /// The oracle's forecast time to exhaustion, seconds.
    pub oracle_tte_s: f64,
    /// Its relative error on the trace's real exhaustion.
    pub oracle_error: f64,
    /// Expected relative error over the continuations: the oracle's and the detector's.
    pub oracle_expected_error: f64,
    pub detector_expected_error: f64,
    /// The data oracle's forecast (rate and size estimated from the bursts seen), its error on
    /// the real exhaustion and its expected error over the true continuations.
    pub data_tte_s: f64,
    pub data_error: f64,
    pub data_expected_error: f64,
}

/// The floor for one trace and the detector's outcome on it; `None` unless the trace is a
/// bursty leak that the detector caught with a forecast.
pub fn bursty_floor(trace: &Trace, outcome: &Outcome) -> Option<BurstyFloor> {
    let truth = trace.bursty.as_ref()?;
    let detected = outcome.detected_s?;
    let tte = outcome.tte_s?;
    let actual = outcome.lead_s().filter(|l| *l > 0.0)?;
    let i = (detected / STEP_S).round() as usize;
    let level = f64::from(*truth.levels.get(i)?);
    // The noise alone may have kept the value under the capacity after the staircase reached
    // it: nothing is left to forecast.
    if level >= 1.0 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(trace.seed ^ 0x0b5e_55ed);
    let p = (STEP_S / truth.mean_gap_s).clamp(1e-9, 1.0);
    let mut forecast = |p: f64, mean_jump: f64| {
        let mut times: Vec<f64> = (0..DRAWS)
            .map(|_| continuation(&mut rng, level, p, mean_jump))
            .collect();
        times.sort_by(f64::total_cmp);
        times
    };
    let times = forecast(p, truth.mean_jump);
    let f = weighted_median_by_inverse(&times);
    // The bursts seen up to the detection.
    let seen = &truth.levels[..=i];
    let (count, rise) = seen
        .windows(2)
        .map(|w| f64::from(w[1] - w[0]))
        .filter(|d| *d > 0.0)
        .fold((0usize, 0.0), |(n, s), d| (n + 1, s + d));
    let data_f = if count == 0 || i == 0 {
        f64::INFINITY
    } else {
        let p_hat = (count as f64 / i as f64).min(1.0);
        weighted_median_by_inverse(&forecast(p_hat, rise / count as f64))
    };
    let expected = |f: f64| times.iter().map(|t| (f - t).abs() / t).sum::<f64>() / DRAWS as f64;
    Some(BurstyFloor {
        oracle_tte_s: f,
        oracle_error: (f - actual).abs() / actual,
        oracle_expected_error: expected(f),
        detector_expected_error: expected(tte),
        data_tte_s: data_f,
        data_error: (data_f - actual).abs() / actual,
        data_expected_error: expected(data_f),
    })
}

/// Seconds until a staircase at `level` (a fraction of the capacity) reaches 1, bursting in
/// each step with probability `p` by an exponential amount of mean `mean_jump`.
fn continuation(rng: &mut StdRng, mut level: f64, p: f64, mean_jump: f64) -> f64 {
    let mut steps = 0.0;
    while level < 1.0 {
        // Steps until the next burst: geometric on {1, 2, ...}.
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        steps += if p >= 1.0 {
            1.0
        } else {
            (u.ln() / (1.0 - p).ln()).ceil().max(1.0)
        };
        level += -mean_jump * rng.gen_range(f64::EPSILON..1.0f64).ln();
    }
    steps * STEP_S
}

/// The `f` that minimises `Σ |f − t| / t` over the sorted, positive `times`: their median
/// weighted by `1 / t`.
fn weighted_median_by_inverse(times: &[f64]) -> f64 {
    let total: f64 = times.iter().map(|t| 1.0 / t).sum();
    let mut acc = 0.0;
    for &t in times {
        acc += 1.0 / t;
        if acc >= total / 2.0 {
            return t;
        }
    }
    times.last().copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weighted_median_leans_towards_the_short_times() {
        // Weights 1, 1/2, 1/4, 1/8: the first already holds more than half.
        assert_eq!(weighted_median_by_inverse(&[1.0, 2.0, 4.0, 8.0]), 1.0);
        // Equal times: any is the median.
        assert_eq!(weighted_median_by_inverse(&[5.0, 5.0, 5.0]), 5.0);
    }

    #[test]
    fn a_continuation_takes_about_the_distance_over_the_drift() {
        // A burst every step of mean 0.01: 0.5 to go takes about 50 bursts, 51 steps.
        let mut rng = StdRng::seed_from_u64(7);
        let n = 400;
        let mean = (0..n)
            .map(|_| continuation(&mut rng, 0.5, 1.0, 0.01))
            .sum::<f64>()
            / n as f64;
        assert!((mean / STEP_S - 51.0).abs() < 3.0, "{}", mean / STEP_S);
    }
}
