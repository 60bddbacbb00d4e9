//! The shape of a leak, for the forecast of *when* it runs out.
//!
//! [`super::trend`] decides *whether* a series is heading for exhaustion with a linear trend
//! (Mann-Kendall, Sen's slope of the alarming scale). A straight line is the right forecast for
//! a steady leak, but not for every leak: an accelerating one runs out sooner than its slope
//! says, and one riding a daily cycle runs out at a *peak* of the cycle, not where the slope of
//! its rising half points. So once a scale alarms, the time to exhaustion is forecast again
//! from the longest history the detector holds (the longest scale with enough buckets; buckets
//! are maxima), with the model that explains that history best:
//!
//! | model | fitted | forecast |
//! |---|---|---|
//! | [`ForecastModel::Linear`] | `a + b·t` | from the latest bucket's level at the slope `b`, when `b` agrees with the alarming scale's slope within [`HISTORY_AGREEMENT`]; otherwise the alarming scale's own (recent-slope) forecast |
//! | [`ForecastModel::Accelerating`] | `a + b·t + c·t²` | the first root of the parabola fitted again on the window's recent half (how fast the growth speeds up *now*) |
//! | [`ForecastModel::Daily`] | `a + b·t + c·cos ωt + d·sin ωt`, `ω = 2π / 24 h`, and from [`DAILY_HARMONIC_SPAN_S`] of history also with `+ e·cos 2ωt + f·sin 2ωt` (a cycle that is not a sine: a sharp peak, a long flat night) | when the curve, i.e. a *peak* of the cycle, first reaches the capacity |
//! | [`ForecastModel::Onset`] | `a + b·t + c·max(0, t − τ)`, τ searched | the alarming scale's slope (it sees the leak after its start), from the level of its latest bucket |
//!
//! # How a model is chosen
//! Every fit is least squares on the bucketed window. A model other than the line competes only
//! when it explains a large share of what the line leaves unexplained
//! (`1 − RSS_model / RSS_line`): [`CURVE_SHARE`] for the parabola, [`DAILY_SHARE`] for the
//! cycle (and only over at least [`DAILY_FORECAST_SPAN_S`] of history: a cycle must have been
//! seen turning; the cycle with its second harmonic competes as a six-parameter variant of it),
//! [`ONSET_SHARE`] for the knee. Among the competitors the lowest BIC
//! (`n·ln(RSS/n) + k·ln n`) wins. These shares are what keep the extra models from fitting
//! noise: a random staircase (a bursty leak) or autocorrelated noise gives a parabola or a
//! cycle a little of the line's residual, a real acceleration or cycle most of it. On the dev
//! suites a staircase read as a parabola had given it 51–86% of the line's residual, an
//! accelerating leak 83–99%: hence 80%.
//!
//! When the line wins, its forecast separates the two things a forecast needs: the *level*,
//! which is observed (the latest bucket, moved to now along the slope), and the *rate*, which
//! must be estimated, and is best estimated over the longest history (the least-squares slope
//! of the whole window). A bursty leak, a random staircase, is where its latest bursts left it,
//! but the alarm fires after a cluster of bursts, so the recent slope over-predicts; its
//! long-run rate is the history's. For a steady leak the two estimates agree and the longer
//! one is less noisy. The alarming scale's forecast stands when the two slopes disagree by
//! more than [`HISTORY_AGREEMENT`] (a leak that started or sped up lately, which the knee
//! missed, is judged by what it does now). Before, a line through the whole history at its own
//! level (when the slopes agreed within 2) had made bursty leaks worse (27% → 29%): that
//! line's level lags behind the bursts; the latest bucket does not (bench/RESULTS.md). A
//! chosen curve that never reaches the capacity within [`REACH_LIMIT`] horizons falls back to
//! the alarming scale's forecast.
//!
//! # Guarantees
//! - Pure functions of the window; nothing is kept per series.
//! - O(n²) for the knee search (n ≤ 256 buckets) and O(n) for the rest, run only while a scale
//!   alarms, not per sample.
//! - The choice changes the forecast time to exhaustion only; whether a series alarms, and
//!   when, is decided by the linear rule of [`super::trend`] as before, except that a history
//!   best explained by a cycle whose peaks stay below the capacity
//!   ([`ShapeForecast::cycle_only`]) holds the alarm back.

use super::stats::normal_cdf;
use serde::{Deserialize, Serialize};

/// The parabola must explain at least this share of the line's residual sum of squares.
pub const CURVE_SHARE: f64 = 0.8;
/// The daily cycle must explain at least this share of the line's residual sum of squares.
pub const DAILY_SHARE: f64 = 0.7;
/// The knee must explain at least this share of the line's residual sum of squares.
pub const ONSET_SHARE: f64 = 0.8;
/// A daily cycle whose peaks stay below the capacity holds an alarm back only over at least
/// this much history (half a period; [`ShapeForecast::cycle_only`]).
pub const DAILY_MIN_SPAN_S: f64 = 12.0 * 3600.0;
/// The daily cycle forecasts the time to exhaustion from this much history on (see
/// [`ShapeForecast::cycle_only`] for when it may also hold an alarm back).
pub const DAILY_FORECAST_SPAN_S: f64 = 10.0 * 3600.0;
/// The daily cycle's second harmonic (a 12 h period) is fitted only over at least this much
/// history: most of a day, the harmonic's period seen more than once and a half.
pub const DAILY_HARMONIC_SPAN_S: f64 = 20.0 * 3600.0;
/// The period of the daily cycle.
pub const DAY_S: f64 = 86_400.0;
/// A curve is searched for its crossing this many horizons ahead at most.
pub const REACH_LIMIT: f64 = 4.0;
/// The longest history's slope gives the line's forecast only when it is within this factor
/// of the alarming scale's slope.
pub const HISTORY_AGREEMENT: f64 = 2.0;
/// The increments' variance over two buckets must be at least this many times that over one
/// for the growth to be taken as random ([`first_passage`]).
pub const RANDOM_WALK_RATIO: f64 = 1.5;
/// The local drift about which [`first_passage`] measures the increments is their mean rate
/// over this many buckets on either side: short enough to follow a cycle's or a knee's turns,
/// long enough that it takes little of a random walk's own variance (one part in nine).
pub const LOCAL_BUCKETS: usize = 4;
/// The most basis functions of a fit.
const K: usize = 6;
/// Fewer buckets than this: no model but the alarming scale's line.
pub const MIN_POINTS: usize = 16;

/// Which model made a forecast's time to exhaustion (see the module overview).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForecastModel {
    /// The alarming scale's recent slope, extrapolated.
    #[default]
    Linear,
    /// A parabola: the growth speeds up.
    Accelerating,
    /// A trend under a daily cycle: exhaustion at a peak of the cycle.
    Daily,
    /// A leak that started within the window: the alarming scale's slope after the knee.
    Onset,
}

impl ForecastModel {
    pub fn as_str(self) -> &'static str {
        match self {
            ForecastModel::Linear => "linear",
            ForecastModel::Accelerating => "accelerating",
            ForecastModel::Daily => "daily",
            ForecastModel::Onset => "onset",
        }
    }
}

/// The chosen model and its forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeForecast {
    pub model: ForecastModel,
    /// Seconds from now until the model reaches the capacity.
    pub tte_s: f64,
    /// The daily cycle explains at least [`DAILY_MIN_SPAN_S`] of history best and its peaks
    /// never reach the capacity within [`REACH_LIMIT`] horizons: the rise is the cycle's
    /// (`tte_s` is then the base's).
    pub cycle_only: bool,
    /// How far the moment may fall from `tte_s` for reasons no better rate removes
    /// ([`first_passage`]), `(low, high)` in seconds from now; `None` when the history shows
    /// none.
    pub spread_s: Option<(f64, f64)>,
}

/// What the alarming scale says: its forecast, its slope (fractions of the capacity per hour)
/// and its latest bucket (`latest_h` hours before now, value `latest` as a fraction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarming {
    pub tte_s: f64,
    pub slope_per_h: f64,
    pub latest_h: f64,
    pub latest: f64,
}

/// Chooses the model for a window and forecasts when it reaches the capacity. `th` are the
/// buckets' times in hours relative to now (ascending, all ≤ 0), `xf` their values as fractions
/// of the capacity (exhaustion at 1). `horizon_s` bounds the search of a curve's crossing
/// ([`REACH_LIMIT`] times it). Falls back to the alarming scale's forecast `base.tte_s` (as
/// [`ForecastModel::Linear`]) whenever no other model is both chosen and conclusive. The
/// forecast's spread ([`ShapeForecast::spread_s`]) is that of [`first_passage`] with `z`.
/// Allocates nothing.
pub fn forecast(th: &[f64], xf: &[f64], base: &Alarming, horizon_s: f64, z: f64) -> ShapeForecast {
    let Alarming {
        tte_s: base_tte_s,
        slope_per_h: base_slope_per_h,
        ..
    } = *base;
    let fallback = ShapeForecast {
        model: ForecastModel::Linear,
        tte_s: base_tte_s,
        cycle_only: false,
        spread_s: None,
    };
    let n = th.len();
    if n < MIN_POINTS || n != xf.len() || horizon_s.is_nan() || horizon_s <= 0.0 {
        return fallback;
    }
    let span_s = (th[n - 1] - th[0]).max(0.0) * 3600.0;
    let limit_h = REACH_LIMIT * horizon_s / 3600.0;
    let w = 2.0 * std::f64::consts::PI * 3600.0 / DAY_S;

    let Some((line, rss_line)) = fit(th, xf, |t| [1.0, t, 0.0, 0.0, 0.0, 0.0], 2) else {
        return fallback;
    };
    let nf = n as f64;
    let bic = |rss: f64, k: f64| nf * (rss.max(1e-18) / nf).ln() + k * nf.ln();
    let share = |rss: f64| {
        if rss_line > 0.0 {
            1.0 - rss / rss_line
        } else {
            0.0
        }
    };
    let mut best = (ForecastModel::Linear, bic(rss_line, 2.0));
    // Whether a model explains enough of the line's residual to compete, and beats `best`.
    let wins = |best: (ForecastModel, f64), rss: f64, k: f64, min_share: f64| {
        share(rss) >= min_share && bic(rss, k) < best.1
    };
    let quad = fit(th, xf, |t| [1.0, t, t * t, 0.0, 0.0, 0.0], 3);
    if let Some((_, rss)) = quad {
        if wins(best, rss, 3.0, CURVE_SHARE) {
            best = (ForecastModel::Accelerating, bic(rss, 3.0));
        }
    }
    // The cycle with its second harmonic: a daily shape that is not a sine (a sharp evening
    // peak, a long flat night) has its peak where the sine's is not. Fitted once most of a
    // day has been seen ([`DAILY_HARMONIC_SPAN_S`]); the sine alone (`k` = 4) from half a day.
    let cycle = |t: f64| {
        let (s, c) = (w * t).sin_cos();
        let (s2, c2) = (2.0 * w * t).sin_cos();
        [1.0, t, c, s, c2, s2]
    };
    let mut daily = (span_s >= DAILY_FORECAST_SPAN_S)
        .then(|| fit(th, xf, cycle, 4))
        .flatten();
    if let Some((_, rss)) = daily {
        if wins(best, rss, 4.0, DAILY_SHARE) {
            best = (ForecastModel::Daily, bic(rss, 4.0));
        }
    }
    if let Some((c, rss)) = (span_s >= DAILY_HARMONIC_SPAN_S)
        .then(|| fit(th, xf, cycle, 6))
        .flatten()
    {
        if wins(best, rss, 6.0, DAILY_SHARE) {
            best = (ForecastModel::Daily, bic(rss, 6.0));
            daily = Some((c, rss));
        }
    }
    if let Some(rss) = knee_rss(th, xf) {
        // The knee's position is a parameter too.
        if wins(best, rss, 5.0, ONSET_SHARE) {
            best = (ForecastModel::Onset, bic(rss, 5.0));
        }
    }
    let hours = |h: Option<f64>| h.map(|h| h * 3600.0);
    let tte_s = match best.0 {
        ForecastModel::Linear => hours(history_line(
            th[n - 1],
            xf[n - 1],
            line[1],
            base_slope_per_h,
        )),
        // The leak started inside the window: the alarming scale sees it after its start, and
        // its slope goes on from its own latest bucket.
        ForecastModel::Onset => hours(history_line(
            base.latest_h,
            base.latest,
            base_slope_per_h,
            base_slope_per_h,
        )),
        ForecastModel::Accelerating => {
            // The whole window chose the parabola; its recent half says how fast the growth
            // speeds up now (a power or exponential growth curves more and more).
            let h = if n / 2 >= MIN_POINTS { n / 2 } else { 0 };
            let c = fit(&th[h..], &xf[h..], |t| [1.0, t, t * t, 0.0, 0.0, 0.0], 3)
                .or(quad)
                .expect("chosen, so fitted")
                .0;
            hours(first_root(c[2], c[1], c[0] - 1.0))
        }
        ForecastModel::Daily => {
            let c = daily.expect("chosen, so fitted").0;
            hours(first_crossing(
                |t| cycle(t).iter().zip(&c).map(|(f, c)| f * c).sum::<f64>(),
                limit_h,
            ))
        }
    };
    let spread = |tte_s: f64| first_passage(th, xf, tte_s, z);
    match tte_s {
        Some(tte_s) if tte_s.is_finite() && tte_s <= REACH_LIMIT * horizon_s => ShapeForecast {
            model: best.0,
            tte_s,
            cycle_only: false,
            spread_s: spread(tte_s),
        },
        _ if best.0 == ForecastModel::Onset => ShapeForecast {
            model: ForecastModel::Onset,
            tte_s: base_tte_s,
            cycle_only: false,
            spread_s: spread(base_tte_s),
        },
        _ => ShapeForecast {
            // Held back only from half a day: before, the alarm stands as it did without the
            // cycle (its forecast is the line's), so the cycle never delays a detection. The
            // cycle is the one that won (with its second harmonic from 20 h): a sharp peak
            // that reaches the capacity lets an alarm stand that a sine's lower peak held back.
            cycle_only: best.0 == ForecastModel::Daily && span_s >= DAILY_MIN_SPAN_S,
            spread_s: spread(base_tte_s),
            ..fallback
        },
    }
}

/// How far the moment of exhaustion may fall from `tte_s` for reasons that no better
/// estimate of the rate removes: `(low, high)` in seconds from now, the `z`-sided quantiles of
/// the moment the series first reaches the capacity. `th`, `xf` are the history as in
/// [`forecast`]; `tte_s` the chosen forecast. `None` when the history holds too few buckets
/// or shows neither of the two reasons:
///
/// - **The growth itself is random.** A leak that comes in bursts (a random staircase) reaches
///   the capacity after a random number of bursts at random moments; even its true rate
///   leaves the moment open. For a growth of drift `μ` whose increments vary at `σ²` per hour,
///   the time to cover the distance `D` left is close to inverse Gaussian, of mean `D/μ` and
///   shape `D²/σ²` (the first passage of a Brownian motion with drift; for a staircase of
///   exponential bursts of mean size `J`, `σ² = 2Jμ`: the spread of the `D/J` bursts still to
///   come).
/// - **The peaks scatter.** The series is exhausted at its first sample at the capacity; the
///   bucket maxima scatter by `η` about the growth, so the crossing comes about `z·η/μ`
///   earlier or later than the trend's. The two spreads add in quadrature.
///
/// `μ` is taken as `D / tte_s`, the chosen forecast's own (the inverse Gaussian's mean is the
/// forecast). `σ²` and `η²` come from the bucket maxima's increments at lags of one and two
/// buckets about the *local* drift (the increments' mean rate within [`LOCAL_BUCKETS`] on
/// either side), so that a curve of any shape (a cycle, a knee, an acceleration) is not taken
/// for randomness: `V₁ = σ²Δ + 2η²`, `V₂ = 2σ²Δ + 2η²`. Noise alone gives `V₂ ≈ V₁`, a random
/// walk alone `V₂ ≈ 2·V₁`; the growth is taken as random only when `V₂` is at least
/// [`RANDOM_WALK_RATIO`] times `V₁` (past halfway: the two estimates scatter by about ±25% over
/// a window of 64 buckets).
pub fn first_passage(th: &[f64], xf: &[f64], tte_s: f64, z: f64) -> Option<(f64, f64)> {
    let n = th.len();
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if n < MIN_POINTS || n != xf.len() || !positive(tte_s) || !positive(z) {
        return None;
    }
    let dist = 1.0 - xf[n - 1];
    if !positive(dist) {
        return None;
    }
    let m_h = tte_s / 3600.0;
    let mu = dist / m_h;
    // The local rate per hour at each bucket: the mean rate of the increments within
    // LOCAL_BUCKETS on either side (gaps allowed: each increment over its own time step).
    let rate = |i: usize| {
        let dt = th[i] - th[i - 1];
        (dt > 0.0).then(|| (xf[i] - xf[i - 1]) / dt)
    };
    let local = |i: usize| {
        let (lo, hi) = (
            i.saturating_sub(LOCAL_BUCKETS).max(1),
            (i + LOCAL_BUCKETS).min(n - 1),
        );
        let (sum, k) = (lo..=hi)
            .filter_map(rate)
            .fold((0.0, 0usize), |(s, k), r| (s + r, k + 1));
        (k > 0).then(|| sum / k as f64)
    };
    // Increments about the local drift at lags 1 and 2.
    let lag_var = |lag: usize| {
        let (mut sum, mut dt_sum, mut k) = (0.0, 0.0, 0usize);
        for i in lag..n {
            let dt = th[i] - th[i - lag];
            if dt <= 0.0 {
                continue;
            }
            let mut expected = 0.0;
            for j in i + 1 - lag..=i {
                expected += local(j).unwrap_or(0.0) * (th[j] - th[j - 1]);
            }
            let d = xf[i] - xf[i - lag] - expected;
            sum += d * d;
            dt_sum += dt;
            k += 1;
        }
        (k > 0).then(|| (sum / k as f64, dt_sum / k as f64))
    };
    let ((v1, dt1), (v2, dt2)) = (lag_var(1)?, lag_var(2)?);
    if dt2 <= dt1 || !v1.is_finite() || !v2.is_finite() {
        return None;
    }
    let random = v2 >= RANDOM_WALK_RATIO * v1;
    let sigma2 = if random {
        ((v2 - v1) / (dt2 - dt1)).max(0.0)
    } else {
        0.0
    };
    let eta = ((2.0 * v1 - v2) / 2.0).max(0.0).sqrt();
    if sigma2 <= 0.0 && eta <= 0.0 {
        return None;
    }
    let (mut low_h, mut high_h) = (m_h, m_h);
    if sigma2 > 0.0 {
        // Inverse Gaussian of mean m and shape λ = D²/σ².
        let shape_h = dist * dist / sigma2;
        let cdf = |t: f64| inverse_gaussian_cdf(t, m_h, shape_h);
        let quantile = |p: f64| {
            let (mut lo, mut hi) = (0.0, m_h);
            while cdf(hi) < p && hi < 1e6 * m_h {
                hi *= 2.0;
            }
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if cdf(mid) < p {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            0.5 * (lo + hi)
        };
        let p_low = normal_cdf(-z);
        (low_h, high_h) = (quantile(p_low), quantile(1.0 - p_low));
    }
    let scatter_h = z * eta / mu;
    let low = m_h - (m_h - low_h).max(0.0).hypot(scatter_h);
    let high = m_h + (high_h - m_h).max(0.0).hypot(scatter_h);
    Some((low.max(0.0) * 3600.0, high * 3600.0))
}

/// The distribution function of the inverse Gaussian of mean `m` and shape `l` at `t`:
/// `Φ(√(l/t)(t/m − 1)) + e^{2l/m}·Φ(−√(l/t)(t/m + 1))`. The second term is a huge factor times
/// a tiny tail; it is computed as one exponent times the tail's Mills ratio, which neither
/// overflows nor loses the tail to rounding (`x² / 2 ≥ 2l/m` always, so the exponent is ≤ 0).
fn inverse_gaussian_cdf(t: f64, m: f64, l: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    let r = (l / t).sqrt();
    let a = normal_cdf(r * (t / m - 1.0));
    let e = 2.0 * l / m;
    let x = r * (t / m + 1.0);
    let b = if x < 3.0 {
        // e ≤ x²/2 < 4.5 here: no overflow, and a tail above 1e-3 keeps its digits.
        e.exp() * normal_cdf(-x)
    } else {
        (e - x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * mills_ratio(x)
    };
    (a + b).clamp(0.0, 1.0)
}

/// The normal's Mills ratio `Φ(−x) / φ(x)` for `x ≥ 3`, by its continued fraction
/// `1 / (x + 1 / (x + 2 / (x + 3 / (x + …))))`, 40 terms deep (relative error far below
/// 1e-12 there).
fn mills_ratio(x: f64) -> f64 {
    let mut f = x;
    for k in (1..=40).rev() {
        f = x + f64::from(k) / f;
    }
    1.0 / f
}

/// The line's forecast, in hours: the longest history's least-squares `slope_per_h`, from the
/// level of its latest bucket (`t_last` hours before now, value `x_last`; moved to now along
/// the slope), to the capacity at 1. `None` (the alarming scale's forecast stands) unless the
/// slope is positive and agrees with the alarming scale's `base_slope_per_h` within
/// [`HISTORY_AGREEMENT`]: a leak that started recently (a knee the onset model missed) is
/// judged by the alarming scale.
///
/// Why the latest bucket and not the line's value now: the level is observed, only the rate
/// must be estimated. A staircase (a bursty leak) is where it is after its latest bursts, while
/// a line through the history lags behind the bursts that made the alarm; for a steady leak
/// the two agree.
fn history_line(t_last: f64, x_last: f64, slope_per_h: f64, base_slope_per_h: f64) -> Option<f64> {
    let agree = slope_per_h > 0.0
        && base_slope_per_h > 0.0
        && base_slope_per_h <= HISTORY_AGREEMENT * slope_per_h
        && slope_per_h <= HISTORY_AGREEMENT * base_slope_per_h;
    if !agree {
        return None;
    }
    let level = x_last - slope_per_h * t_last.min(0.0);
    Some(((1.0 - level) / slope_per_h).max(0.0))
}

/// Least squares of `xs` on the first `k` (≤ [`K`]) functions of `basis(t)`: the coefficients
/// (zero beyond `k`) and the residual sum of squares. `None` when the system is singular.
fn fit(
    ts: &[f64],
    xs: &[f64],
    basis: impl Fn(f64) -> [f64; K],
    k: usize,
) -> Option<([f64; K], f64)> {
    let mut a = [[0.0f64; K]; K];
    let mut b = [0.0f64; K];
    for (&t, &x) in ts.iter().zip(xs) {
        let f = basis(t);
        for i in 0..k {
            b[i] += f[i] * x;
            for j in 0..k {
                a[i][j] += f[i] * f[j];
            }
        }
    }
    let c = solve(a, b, k)?;
    let rss = ts
        .iter()
        .zip(xs)
        .map(|(&t, &x)| {
            let f = basis(t);
            let y: f64 = (0..k).map(|i| f[i] * c[i]).sum();
            (x - y) * (x - y)
        })
        .sum();
    Some((c, rss))
}

/// Solves the `k × k` system `a·c = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: [[f64; K]; K], mut b: [f64; K], k: usize) -> Option<[f64; K]> {
    let scale = (0..k).map(|i| a[i][i].abs()).fold(0.0, f64::max);
    if !scale.is_finite() || scale <= 0.0 {
        return None;
    }
    for i in 0..k {
        let p = (i..k).max_by(|&x, &y| a[x][i].abs().total_cmp(&a[y][i].abs()))?;
        if a[p][i].abs() <= 1e-12 * scale {
            return None;
        }
        a.swap(i, p);
        b.swap(i, p);
        let pivot = a[i];
        for r in i + 1..k {
            let f = a[r][i] / pivot[i];
            for (x, p) in a[r][i..k].iter_mut().zip(&pivot[i..k]) {
                *x -= f * p;
            }
            b[r] -= f * b[i];
        }
    }
    let mut c = [0.0f64; K];
    for i in (0..k).rev() {
        let s: f64 = (i + 1..k).map(|j| a[i][j] * c[j]).sum();
        c[i] = (b[i] - s) / a[i][i];
    }
    c.iter().all(|v| v.is_finite()).then_some(c)
}

/// The smallest residual sum of squares of a line with one knee (`a + b·t + c·max(0, t − τ)`)
/// over knees at the window's times, keeping a few points on either side.
fn knee_rss(ts: &[f64], xs: &[f64]) -> Option<f64> {
    let n = ts.len();
    (3..n.saturating_sub(3))
        .filter_map(|k| {
            let tau = ts[k];
            fit(ts, xs, |t| [1.0, t, (t - tau).max(0.0), 0.0, 0.0, 0.0], 3).map(|f| f.1)
        })
        .min_by(f64::total_cmp)
}

/// The smallest `t ≥ 0` with `c2·t² + c1·t + c0 = 0` where the polynomial rises through
/// zero, or 0 if it is already at or above zero; `None` if it never gets there.
fn first_root(c2: f64, c1: f64, c0: f64) -> Option<f64> {
    if c0 >= 0.0 {
        return Some(0.0);
    }
    if c2.abs() < 1e-15 {
        return (c1 > 0.0).then(|| -c0 / c1);
    }
    let disc = c1 * c1 - 4.0 * c2 * c0;
    if disc < 0.0 {
        return None;
    }
    let sq = disc.sqrt();
    let roots = [(-c1 - sq) / (2.0 * c2), (-c1 + sq) / (2.0 * c2)];
    roots
        .into_iter()
        .filter(|r| *r >= 0.0)
        .min_by(f64::total_cmp)
}

/// The first `t` in `[0, limit]` (hours) where `f(t) ≥ 1`: scanned in steps of 6 minutes, then
/// bisected to a few seconds.
fn first_crossing(f: impl Fn(f64) -> f64, limit: f64) -> Option<f64> {
    if f(0.0) >= 1.0 {
        return Some(0.0);
    }
    let step = 0.1;
    let mut lo = 0.0;
    while lo < limit {
        let hi = lo + step;
        if f(hi) >= 1.0 {
            let (mut a, mut b) = (lo, hi);
            for _ in 0..12 {
                let m = 0.5 * (a + b);
                if f(m) >= 1.0 {
                    b = m;
                } else {
                    a = m;
                }
            }
            return Some(b);
        }
        lo = hi;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hours before now, every `step_h` over `span_h`, and `f` of them.
    fn window(span_h: f64, step_h: f64, f: impl Fn(f64) -> f64) -> (Vec<f64>, Vec<f64>) {
        let n = (span_h / step_h).round() as usize;
        let th: Vec<f64> = (0..n).map(|i| -span_h + (i + 1) as f64 * step_h).collect();
        let xf = th.iter().map(|&t| f(t)).collect();
        (th, xf)
    }

    /// A deterministic wiggle standing in for noise: ±`a`, no trend, no cycle.
    fn wiggle(t: f64, a: f64) -> f64 {
        a * ((t * 37.0).sin() + (t * 91.0).cos()) / 2.0
    }

    const HORIZON_S: f64 = 48.0 * 3600.0;

    /// The forecast is within 5% of the true time to exhaustion, `truth_h` hours.
    fn assert_within_5_percent(f: &ShapeForecast, truth_h: f64) {
        assert!(
            (f.tte_s / 3600.0 - truth_h).abs() / truth_h < 0.05,
            "forecast {} h, the capacity is reached in {truth_h} h",
            f.tte_s / 3600.0
        );
    }
    /// One-sided 99%.
    const Z: f64 = 2.326;

    /// An alarming scale forecasting `tte_s` at `slope_per_h`, whose latest bucket is the
    /// window's.
    fn alarm(tte_s: f64, slope_per_h: f64, th: &[f64], xf: &[f64]) -> Alarming {
        Alarming {
            tte_s,
            slope_per_h,
            latest_h: th[th.len() - 1],
            latest: xf[xf.len() - 1],
        }
    }

    #[test]
    fn roots_and_crossings_match_hand_computed_values() {
        // t² + 2t − 3 = (t + 3)(t − 1): the first non-negative root is 1.
        assert_eq!(first_root(1.0, 2.0, -3.0), Some(1.0));
        // 2t − 4: 2; already above: 0; falling: never; −t² − 1 never reaches 0.
        assert_eq!(first_root(0.0, 2.0, -4.0), Some(2.0));
        assert_eq!(first_root(1.0, 0.0, 0.5), Some(0.0));
        assert_eq!(first_root(0.0, -1.0, -1.0), None);
        assert_eq!(first_root(-1.0, 0.0, -1.0), None);
        // 0.5 + t/10 reaches 1 at t = 5, found to within the bisection's precision.
        let t = first_crossing(|t| 0.5 + t / 10.0, 100.0).unwrap();
        assert!((t - 5.0).abs() < 1e-3, "{t}");
        assert_eq!(first_crossing(|_| 0.5, 100.0), None);
    }

    #[test]
    fn an_accelerating_window_is_forecast_by_its_parabola() {
        // 0.2 + 0.8·(u/20)² with u the hours since the start: exhausted at u = 20 h; now is
        // u = 14 h, seen over 12 h, so the truth is 6 h. The linear base says 10 h.
        let (th, xf) = window(12.0, 0.1875, |t| {
            let u = 14.0 + t;
            0.2 + 0.8 * (u / 20.0).powi(2) + wiggle(t, 0.003)
        });
        let f = forecast(
            &th,
            &xf,
            &alarm(10.0 * 3600.0, 0.05, &th, &xf),
            HORIZON_S,
            Z,
        );
        assert_eq!(f.model, ForecastModel::Accelerating);
        assert_within_5_percent(&f, 6.0);
    }

    #[test]
    fn a_daily_cycle_is_forecast_at_its_peak_once_half_a_day_is_seen() {
        // A trend of 1%/h under a cycle of amplitude 0.12, seen for 20 h.
        let w = 2.0 * std::f64::consts::PI / 24.0;
        let truth_curve = |t: f64| 0.45 + 0.01 * t + 0.12 * (w * t + 1.0).sin();
        let (th, xf) = window(20.0, 0.3125, |t| truth_curve(t) + wiggle(t, 0.003));
        let truth_h = first_crossing(truth_curve, 200.0).unwrap();
        let f = forecast(&th, &xf, &alarm(3.0 * 3600.0, 0.03, &th, &xf), HORIZON_S, Z);
        assert_eq!(f.model, ForecastModel::Daily);
        assert_within_5_percent(&f, truth_h);
        // The crossing is on the upper half of a cycle (the trend brings it before the top).
        let peak_phase = (w * truth_h + 1.0).sin();
        assert!(peak_phase > 0.5, "{peak_phase}");
        // Seen for 8 h only, the same series is not judged a cycle.
        let (th, xf) = window(8.0, 0.125, |t| truth_curve(t) + wiggle(t, 0.003));
        assert_ne!(
            forecast(&th, &xf, &alarm(3.0 * 3600.0, 0.03, &th, &xf), HORIZON_S, Z).model,
            ForecastModel::Daily
        );
    }

    #[test]
    fn a_skewed_daily_cycle_is_forecast_at_its_sharp_peak_once_most_of_a_day_is_seen() {
        // A trend of 0.5%/h under a cycle with a sharp evening peak (a sine and its second
        // harmonic), seen for 30 h; the peak is higher and earlier than a sine's.
        let w = 2.0 * std::f64::consts::PI / 24.0;
        let cycle = |t: f64| {
            let x = w * t + 2.0;
            0.1 * (x.sin() + 0.4 * (2.0 * x).sin()) / 1.4
        };
        let truth_curve = |t: f64| 0.75 + 0.005 * t + cycle(t);
        let (th, xf) = window(30.0, 0.46875, |t| truth_curve(t) + wiggle(t, 0.003));
        let truth_h = first_crossing(truth_curve, 200.0).unwrap();
        let f = forecast(&th, &xf, &alarm(8.0 * 3600.0, 0.01, &th, &xf), HORIZON_S, Z);
        assert_eq!(f.model, ForecastModel::Daily);
        assert_within_5_percent(&f, truth_h);
        // The sine alone misses the sharp peak by more.
        let c = fit(
            &th,
            &xf,
            |t| {
                let (s, c) = (w * t).sin_cos();
                [1.0, t, c, s, 0.0, 0.0]
            },
            4,
        )
        .unwrap()
        .0;
        let sine_h = first_crossing(
            |t| c[0] + c[1] * t + c[2] * (w * t).cos() + c[3] * (w * t).sin(),
            200.0,
        )
        .unwrap();
        assert!(
            (sine_h - truth_h).abs() > 2.0 * (f.tte_s / 3600.0 - truth_h).abs(),
            "sine {sine_h} h, chosen {} h, truth {truth_h} h",
            f.tte_s / 3600.0
        );
    }

    #[test]
    fn the_line_is_forecast_from_the_latest_bucket_at_the_historys_slope() {
        // Hand-computed: 0.8 seen 0.5 h ago, rising 0.05/h: 0.825 now, 3.5 h to 1.
        let h = history_line(-0.5, 0.8, 0.05, 0.06).unwrap();
        assert!((h - 3.5).abs() < 1e-9, "{h}");
        // Already above the capacity: now.
        assert_eq!(history_line(0.0, 1.02, 0.05, 0.05), Some(0.0));
        // The alarming scale rises more than twice (or less than half) as fast, or nothing
        // rises: its own forecast stands.
        assert_eq!(history_line(-0.5, 0.8, 0.05, 0.11), None);
        assert_eq!(history_line(-0.5, 0.8, 0.05, 0.02), None);
        assert_eq!(history_line(-0.5, 0.8, 0.0, 0.05), None);
        assert_eq!(history_line(-0.5, 0.8, -0.01, 0.05), None);
    }

    #[test]
    fn a_line_and_a_staircase_are_forecast_by_the_historys_slope_from_their_latest_level() {
        let base = 7.0 * 3600.0;
        // A steady leak: 0.6 now, 0.02/h; 20 h to the capacity (the alarming scale said 7 h).
        let (th, xf) = window(16.0, 0.25, |t| 0.6 + 0.02 * t);
        let f = forecast(&th, &xf, &alarm(base, 0.025, &th, &xf), HORIZON_S, Z);
        assert_eq!(f.model, ForecastModel::Linear);
        assert!((f.tte_s / 3600.0 - 20.0).abs() < 1e-6, "{f:?}");
        // With noise, within 5%.
        let (th, xf) = window(16.0, 0.25, |t| 0.6 + 0.02 * t + wiggle(t, 0.01));
        let f = forecast(&th, &xf, &alarm(base, 0.025, &th, &xf), HORIZON_S, Z);
        assert_eq!(f.model, ForecastModel::Linear);
        assert!((f.tte_s / 3600.0 - 20.0).abs() < 1.0, "{f:?}");
        // A staircase, a step of 0.03 every 1.5 h (0.02/h), now on its step at 0.9: the mean
        // rate takes 5 h for the last 0.1.
        let (th, xf) = window(16.0, 0.25, |t| 0.6 + 0.03 * ((t + 16.0) / 1.5).floor());
        let f = forecast(&th, &xf, &alarm(base, 0.02, &th, &xf), HORIZON_S, Z);
        assert_eq!(f.model, ForecastModel::Linear);
        assert!((f.tte_s / 3600.0 - 5.0).abs() < 0.05, "{f:?}");
        // The alarming scale rises 5 times as fast (a leak that sped up lately): its forecast.
        assert_eq!(
            forecast(&th, &xf, &alarm(base, 0.1, &th, &xf), HORIZON_S, Z).tte_s,
            base
        );
    }

    #[test]
    fn a_staircase_whose_bursts_came_closer_lately_is_not_read_as_a_parabola() {
        // Steps of 0.04 at 15.9, 12.9, 9.9, 7.4, 5.4, 3.4, 1.9 and 0.9 h ago: the parabola
        // explains 61% of what the line leaves (and has the lower BIC), short of 80%. The line:
        // 0.82 now, rising 0.018/h over the history, 10.0 h to the capacity.
        let steps = [-15.9, -12.9, -9.9, -7.4, -5.4, -3.4, -1.9, -0.9];
        let (th, xf) = window(16.0, 0.25, |t| {
            0.5 + 0.04 * steps.iter().filter(|&&s| t >= s).count() as f64
        });
        let f = forecast(
            &th,
            &xf,
            &alarm(5.0 * 3600.0, 0.025, &th, &xf),
            HORIZON_S,
            Z,
        );
        assert_eq!(f.model, ForecastModel::Linear);
        assert!((f.tte_s / 3600.0 - 10.0).abs() < 0.05, "{f:?}");
    }

    #[test]
    fn a_knee_goes_on_from_the_alarming_scales_latest_bucket_a_cycle_or_few_buckets_keep_its_forecast(
    ) {
        let base = 7.0 * 3600.0;
        // Flat, then a leak from 5 h ago: the knee. Its forecast is the alarming scale's slope
        // from that scale's latest bucket: 0.68 a quarter of an hour ago at 0.08/h, 0.70 now,
        // 3.75 h to the capacity.
        let (th, xf) = window(16.0, 0.25, |t| {
            0.3 + 0.08 * (t + 5.0).max(0.0) + wiggle(t, 0.003)
        });
        let alarming = Alarming {
            tte_s: base,
            slope_per_h: 0.08,
            latest_h: -0.25,
            latest: 0.68,
        };
        let f = forecast(&th, &xf, &alarming, HORIZON_S, Z);
        assert_eq!(f.model, ForecastModel::Onset);
        assert!((f.tte_s / 3600.0 - 3.75).abs() < 1e-9, "{f:?}");
        // A healthy cycle seen for 30 h: the cycle explains it and never reaches the capacity.
        let w = 2.0 * std::f64::consts::PI / 24.0;
        let (th, xf) = window(30.0, 0.5, |t| 0.5 + 0.15 * (w * t).sin() + wiggle(t, 0.003));
        let f = forecast(&th, &xf, &alarm(base, 0.08, &th, &xf), HORIZON_S, Z);
        assert!(f.cycle_only && f.tte_s == base, "{f:?}");
        // The same cycle seen for 11 h (a rising half, not yet half a day): it holds no alarm
        // back, so a detection is never later than the line's.
        let (th, xf) = window(11.0, 0.25, |t| {
            0.5 + 0.15 * (w * t).sin() + wiggle(t, 0.003)
        });
        let f = forecast(&th, &xf, &alarm(base, 0.08, &th, &xf), HORIZON_S, Z);
        assert!(!f.cycle_only, "{f:?}");
        // Too few buckets: nothing but the base.
        let (th, xf) = window(2.0, 0.25, |t| 0.2 + 0.1 * (t + 2.0).powi(2));
        assert_eq!(
            forecast(&th, &xf, &alarm(base, 0.08, &th, &xf), HORIZON_S, Z).model,
            ForecastModel::Linear
        );
    }

    #[test]
    fn the_inverse_gaussian_matches_hand_computed_values() {
        // m = 1, λ = 1 at t = 1: Φ(0) + e²·Φ(−2) = 0.5 + 7.389 × 0.02275 = 0.6681.
        assert!((inverse_gaussian_cdf(1.0, 1.0, 1.0) - 0.6681).abs() < 1e-3);
        assert_eq!(inverse_gaussian_cdf(0.0, 1.0, 1.0), 0.0);
        // A narrow one (2λ/m = 800): the tail term is e^800 × Φ(−40), which the Mills ratio
        // keeps: 1/40 × (1 − 1/40² + 3/40⁴) / √(2π) = 0.0099673, so F(1) = 0.5099673.
        assert!((inverse_gaussian_cdf(1.0, 1.0, 400.0) - 0.509_967_3).abs() < 1e-6);
        assert!(inverse_gaussian_cdf(1.2, 1.0, 400.0) > 0.99);
        // Non-decreasing in t for every shape, the range where the tail's digits matter
        // (2λ/m from 20 to 40) included.
        for l in [0.5, 10.0, 16.0, 20.0, 30.0, 100.0, 400.0, 5000.0] {
            let mut last = 0.0;
            for i in 1..=400 {
                let f = inverse_gaussian_cdf(f64::from(i) * 0.01, 1.0, l);
                assert!(
                    f >= last - 1e-12 && f.is_finite(),
                    "λ = {l}, t = {i}: {f} < {last}"
                );
                last = f;
            }
        }
    }

    #[test]
    fn the_mills_ratio_matches_tabulated_values() {
        // Φ(−3) / φ(3) = 0.0013499 / 0.0044318; Φ(−10) / φ(10) = 7.6199e-24 / 7.6946e-23.
        assert!(
            (mills_ratio(3.0) - 0.304_590).abs() < 2e-5,
            "{}",
            mills_ratio(3.0)
        );
        assert!(
            (mills_ratio(10.0) - 0.099_029).abs() < 1e-5,
            "{}",
            mills_ratio(10.0)
        );
    }

    #[test]
    fn a_random_staircase_widens_the_interval_and_smooth_shapes_do_not() {
        let z = 2.326; // one-sided 99%
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut unit = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let (th, _) = window(32.0, 0.5, |_| 0.0);
        let narrow = |f: Option<(f64, f64)>, tte: f64, share: f64| {
            if let Some((low, high)) = f {
                assert!(
                    low > (1.0 - share) * tte && high < (1.0 + share) * tte,
                    "{low} {tte} {high}"
                );
            }
        };
        // A smooth leak under measurement noise (±0.01, independent from bucket to bucket):
        // the noise is no randomness of the growth.
        let xf: Vec<f64> = th
            .iter()
            .map(|t| 0.6 + 0.01 * t + 0.02 * (unit() - 0.5))
            .collect();
        narrow(
            first_passage(&th, &xf, 40.0 * 3600.0, z),
            40.0 * 3600.0,
            0.1,
        );
        // A knee (flat for a day, then 0.04/h for 8 h) under ±0.3% of noise.
        let xf: Vec<f64> = th
            .iter()
            .map(|t| 0.3 + 0.04 * (t + 8.0).max(0.0) + 0.006 * (unit() - 0.5))
            .collect();
        let tte = (1.0 - xf[63]) / 0.04 * 3600.0;
        narrow(first_passage(&th, &xf, tte, z), tte, 0.2);
        // A healthy daily cycle, forecast by a line that happens to alarm: its own turns are
        // no randomness either.
        let w = 2.0 * std::f64::consts::PI / 24.0;
        let xf: Vec<f64> = th
            .iter()
            .map(|t| 0.5 + 0.15 * (w * t).sin() + 0.006 * (unit() - 0.5))
            .collect();
        narrow(first_passage(&th, &xf, 7.0 * 3600.0, z), 7.0 * 3600.0, 0.25);
        // A regular staircase (a step of 0.02 every hour, from 0.3 to 0.94): the crossing may
        // come half a step early or late, symmetrically, and is not a random walk's skewed one.
        let xf: Vec<f64> = th.iter().map(|t| 0.3 + 0.02 * (t + 32.0).floor()).collect();
        let tte = 3.0 * 3600.0;
        let (low, high) = first_passage(&th, &xf, tte, z).expect("a scatter about the trend");
        assert!(
            ((high - tte) - (tte - low)).abs() < 0.01 * tte,
            "{low} {high}"
        );
        // A random one: exponential bursts of mean 0.02 at random half-hours, one an hour on
        // average, from 0.2: about 8 bursts are left, whose moments and sizes leave the
        // exhaustion open by more than a third either way, the late side more.
        let mut xf = Vec::new();
        let mut level = 0.2f64;
        for _ in 0..64 {
            if unit() < 0.5 {
                level += -0.02 * unit().max(1e-12).ln();
            }
            xf.push(level);
        }
        assert!(
            xf[63] < 0.95,
            "the staircase must not have run out: {}",
            xf[63]
        );
        let tte = (1.0 - xf[63]) / 0.02 * 3600.0;
        let (low, high) = first_passage(&th, &xf, tte, z).expect("a random staircase");
        assert!(low < 0.67 * tte && high > 1.33 * tte, "{low} {tte} {high}");
        assert!(high - tte > tte - low && low > 0.0 && high.is_finite());
    }
}
