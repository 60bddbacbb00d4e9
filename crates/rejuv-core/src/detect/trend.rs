//! Predictive detection on one resource series: is it trending towards exhaustion, and when
//! will it get there?
//!
//! The controller feeds every sample of every exhaustible resource (memory, swap, fds, threads,
//! instance RSS) and of health latency to a [`SeriesDetector`]; [`super::detector`] turns its
//! [`TrendVerdict`] into a judgement with an explanation such as "instance-rss will be
//! exhausted in about 5h40m (leak of 210 MB/h, confidence 99%)".
//!
//! # How it decides
//!
//! 1. **Several time scales.** The series is kept at a few resolutions at once: the longest
//!    window ([`TrendConfig::window`], 32 h by default) and windows a quarter as long, down to
//!    [`TrendConfig::min_window`]. Each scale keeps [`TrendConfig::points`] buckets, and a
//!    bucket holds the *maximum* of the samples that fell in it (exhaustion happens at the
//!    peaks of a sawtooth, not at its mean). Short scales see a runaway leak within minutes;
//!    long ones see a slow leak through a daily cycle. Because windows are durations, the same
//!    code serves 10 s samples over days and 1 s samples in a one-minute demo. A window is a
//!    duration also when samples are missing: buckets older than the window leave it.
//! 2. **Streaming Mann-Kendall** per scale: `S = Σ_{i<j} sign(x_j − x_i)` is updated in
//!    O(points) when a bucket closes (add the newest, drop the oldest), together with the tie
//!    term of the variance, so integer series (fds, threads) get the tie-corrected variance
//!    `Var(S) = [n(n−1)(2n+5) − Σ t(t−1)(2t+5)] / 18`.
//! 3. **Autocorrelation correction (Hamed & Rao 1998).** Server metrics are strongly
//!    autocorrelated (a wander, a batch job, a daily cycle), and raw Mann-Kendall then reports
//!    trends that are not there. Only when the raw test is already significant (the cheap path
//!    is the common one) the series is detrended with Sen's slope, the autocorrelation of the
//!    ranks of the residuals is computed at every lag, and the significant lags inflate the
//!    variance by `n/n* = 1 + 2/(n(n−1)(n−2)) Σ_k (n−k)(n−k−1)(n−k−2) ρ_k` (never below 1).
//!    We chose Hamed–Rao over Yue–Wang's lag-1 effective sample size because the aging
//!    look-alikes are not AR(1): a daily cycle or a batch plateau leaves correlation at long
//!    lags that a lag-1 model misses; and over pre-whitening because pre-whitening removes part
//!    of a real trend when the window is short. Bucketing (the maximum per bucket) already
//!    thins the high-frequency correlation of 10 s samples.
//! 4. **Sen's slope, only when needed**, on the bucketed window (`points` is small, so the
//!    O(points²) pairwise slopes with a linear-time selection cost a few microseconds and run
//!    only when the test is significant). Its confidence bounds come from the ranks
//!    `(N ∓ z·√Var*(S))/2` of the pairwise slopes, with the corrected variance.
//! 5. **Forecast.** The forecast uses the slope of the *recent half* of the window and a robust
//!    level (median of `x_i − b·t_i`, moved to now), so a cache that is warming up towards a
//!    plateau, or a daily cycle past its steepest point, forecasts a distant exhaustion, while
//!    an accelerating leak is not judged by its slow past. The interval of the time to
//!    exhaustion comes from the slope's confidence bounds. When the window is full, its older
//!    half flat and its recent half rising well above it (a leak that started inside the
//!    window, a *knee*), the recent half's bounds are inflated by the recent half's own
//!    autocorrelation, not the whole window's (whose bend says nothing of the noise around
//!    the rise), and the step veto of rule 6 measures the rise by the recent half: a runaway
//!    leak is then caught with about three minutes more to spare. A window that is not full
//!    has no older half to judge by, and on windows longer than 2 hours a flat half then a
//!    rising one is as likely the night and morning of a daily cycle.
//! 6. **Alarm rule.** A scale alarms only when its trend is significant at
//!    [`TrendConfig::confidence`] after the correction, the forecast time to exhaustion is
//!    within [`TrendConfig::horizon`], and it is no further ahead than
//!    [`TrendConfig::max_extrapolation`] times the time span the scale has actually observed:
//!    a trend seen for 20 minutes says nothing about the next 10 hours (this is what keeps the
//!    rising half of a daily cycle, or a warm-up, from being extrapolated into an alarm).
//!    The alarm must then **persist** for [`TrendConfig::min_evaluations`] consecutive
//!    evaluations of that scale and [`TrendConfig::min_persistence`] of time before the
//!    series is judged unstable.
//! 7. **Forecast consistency.** A wide, slow wander (an Ornstein–Uhlenbeck-like level with a
//!    correlation time of hours) or the rising half of a daily cycle seen for the first time
//!    looks, inside one window, exactly like a leak: significant, steady, and its projected
//!    exhaustion moment even stays put for hours while it rises. What gives it away is that
//!    it turns: the forecast stops coming true. So before an unstable judgement
//!    - the alarm must hold for [`PERSIST_SHARE`] of its own forecast time to exhaustion (a
//!      forecast of 5 h must survive an hour; one of 10 minutes, two: imminent exhaustion
//!      keeps its fast path, [`required_persistence_ms`]), and
//!    - the most recent data must bear the forecast out: the next shorter scale's
//!      least-squares slope must be at least [`RECENT_SHARE`] of the forecast's slope
//!      ([`recent_backs`]). A wander that has flattened at its peak, or a cycle near its top,
//!      fails this; a leak, whose latest stretch rises as fast as its window, passes.
//!
//!    - a shorter scale's alarm must take the series higher than it has been before that
//!      scale's window, as far back as the longest scale holds: a server steady near its
//!      limit wanders up to levels it has held for hours and come back from, and a short
//!      window's rise to one of them forecasts an exhaustion that its own past contradicts.
//!      A leak takes the series to new heights; the longest scale is not held back this way.
//!
//!    We also tried requiring the projected exhaustion moment to stay put over the
//!    persistence span: it does not separate the kinds (the wander's moment stays put while
//!    it rises, and a bursty leak's jumps about), see bench/RESULTS.md.
//!
//! 8. **The shape of the leak** ([`super::shape`]). Whether a series alarms, and when, is
//!    decided by rules 1–7 on the linear forecast; the time to exhaustion the alarm reports
//!    is then forecast again, at each evaluation of an alarming scale, from the longest scale
//!    holding enough buckets, with the model that history supports: a parabola for an
//!    accelerating leak, a trend under a 24 h cycle (exhaustion at a *peak*) once 10 hours
//!    have been seen (with its second harmonic from 20 hours), a knee for a leak that
//!    started inside the window (the alarming scale's slope then, from that scale's latest
//!    bucket), or the line (the history's slope from the latest bucket's level, when it
//!    agrees with the alarming scale's). [`Forecast::model`] names it; the forecast's
//!    interval is scaled with it. The alarm's persistence (rule 7) stays measured against the
//!    linear forecast, so the models change no judgement but one: when, over half a day or
//!    more, the daily cycle explains the history best and its peaks never reach the capacity
//!    ([`shape::ShapeForecast::cycle_only`]), the rise is the cycle's and the alarm is not
//!    borne out, as with rule 7's recent slope (a healthy cycle alarming in its second day).
//!    The forecast's interval, first the slope's confidence bounds, is then widened by what
//!    no better rate removes ([`shape::first_passage`]): a growth that is itself random (a
//!    staircase of bursts) and the scatter of the peaks about the trend. On the trace suites
//!    the real exhaustion fell inside it for about half of the bursty leaks before, three
//!    quarters or more after (bench/RESULTS.md); no alarm depends on it.
//! 9. **A forecast counts from now.** A scale is evaluated when one of its buckets closes
//!    (every 30 minutes on the 32 h scale); a verdict in between reports the latest forecast
//!    with the time elapsed since its evaluation taken off ([`Forecast::aged`]), so the
//!    moment of exhaustion it names stays put instead of moving later with every sample.
//!
//! [`SeriesDetector::reset`] forgets everything, as after a rejuvenation.
//!
//! # Guarantees
//! - Memory per series is bounded by the config: `12 × points × scales` bytes plus about
//!   1.2 KB of fixed state, 4.3 KB for the defaults (4 scales of 64 points;
//!   [`SeriesDetector::memory_bytes`]; a test asserts ≤ 8 KB). Evaluation buffers are one set
//!   per thread, not per series.
//! - A sample costs O(1) unless it closes a bucket; closing a bucket costs O(points) for the
//!   Mann-Kendall update. The O(points²) robust path (Sen's slopes, Hamed–Rao) runs only when
//!   the raw test is significant *and* an O(points) least-squares pre-check says the trend
//!   could reach the capacity within the alarm's limit; on the shortest scales it runs at most
//!   every `min_window / 16`. `detector-bench` measures about 2 million series-updates per
//!   second on one core for a healthy fleet (bench/RESULTS.md).
//! - Nothing looks ahead: every verdict depends only on samples already observed.

use super::level::Level;
use super::shape::{self, ForecastModel};
use super::stats::{
    hamed_rao_inflation, median_in_place, normal_cdf, normal_quantile, pair_slopes, sen_from_pairs,
    sens_slope, MkWindow, SenEstimate,
};
use crate::config::{TrendConfig, MAX_SCALES};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A window whose older half rises (or falls) at most this share of its recent half's slope
/// is flat before a knee...
const KNEE_FLAT: f64 = 0.2;
/// ...when its recent half rises by this many times the older half's range, on a window no
/// longer than this: over hours, a flat half and a rising half are as much the night and the
/// morning of a daily cycle as the start of a leak.
const KNEE_RISE: f64 = 4.0;
const KNEE_MAX_WINDOW: Duration = Duration::from_secs(2 * 3600);
/// The recent half's slope must be at least this fraction of the older half's.
const DECELERATION_VETO: f64 = 0.7;
/// See [`assess_window`]: the least-squares pre-check's margin.
const OLS_MARGIN: f64 = 2.0;
/// Forecast with the recent half's slope where it is steeper than the window's.
const FORECAST_RECENT_WHEN_FASTER: bool = true;
/// No rise over an eighth of the window may exceed this share of the window's whole rise.
const STEP_SHARE: f64 = 0.5;
/// An alarm must hold for this share of its own forecast time to exhaustion (rule 7).
pub const PERSIST_SHARE: f64 = 0.2;
/// The next shorter scale must rise at least at this share of the forecast's slope (rule 7).
pub const RECENT_SHARE: f64 = 0.8;

/// How a bucket summarizes the samples that fall in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// The maximum: for exhaustible resources, which run out at their peaks.
    Max,
    /// The mean: for latency, whose single slow checks are noise.
    Mean,
}

/// A forecast made by one scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// The window of the scale that made it, seconds.
    pub window_s: f64,
    /// The time span the scale has observed, seconds.
    pub span_s: f64,
    /// Sen's slope used for the forecast, per second.
    pub slope_per_s: f64,
    /// Confidence bounds of that slope, per second.
    pub slope_low_per_s: f64,
    pub slope_high_per_s: f64,
    /// Estimated current level (robust to noise).
    pub level: f64,
    /// The exhaustion level.
    pub capacity: f64,
    /// Forecast seconds until `level` reaches `capacity`.
    pub tte_s: f64,
    /// Interval of the forecast; `tte_high_s` is `None` when the slope's lower bound is not
    /// positive (exhaustion might never come).
    pub tte_low_s: f64,
    pub tte_high_s: Option<f64>,
    /// One-sided confidence of an upward trend after the autocorrelation correction.
    pub confidence: f64,
    /// The variance inflation of the correction (1 = none).
    pub variance_inflation: f64,
    /// Whether the growth has not slowed down (or would reach the capacity even slowing down
    /// at its pace) and does not come from a single jump.
    pub steady: bool,
    /// The model of the time to exhaustion (rule 8): `linear` is the slope above, extrapolated.
    #[serde(default)]
    pub model: ForecastModel,
}

impl Forecast {
    /// The same forecast `elapsed_ms` after it was made: its times to exhaustion count from
    /// now (never below zero); its slope and level stay those of its evaluation.
    pub fn aged(&self, elapsed_ms: u64) -> Forecast {
        let dt = elapsed_ms as f64 / 1000.0;
        Forecast {
            tte_s: (self.tte_s - dt).max(0.0),
            tte_low_s: (self.tte_low_s - dt).max(0.0),
            tte_high_s: self.tte_high_s.map(|h| (h - dt).max(0.0)),
            ..self.clone()
        }
    }
}

/// What the series detector says after a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendVerdict {
    /// `Suspect`: some scale alarms, not yet for long enough; `Unstable`: it persisted.
    pub level: Level,
    /// The most urgent forecast among the alarming scales.
    pub forecast: Option<Forecast>,
}

/// One time scale of a series.
#[derive(Debug, Clone)]
struct Scale {
    window: Duration,
    bucket_ms: u64,
    points: u32,
    mk: MkWindow,
    /// The bucket being filled: its index and summary.
    cur: Option<u64>,
    cur_max: f64,
    cur_sum: f64,
    cur_n: u32,
    /// Bucket closes between two robust evaluations (1 but on the shortest scales), and how
    /// many closes remain until the next one.
    eval_every: u32,
    eval_wait: u32,
    /// Whether the alarm condition held at the last evaluation, and since when.
    firing: bool,
    streak: u32,
    streak_since_ms: u64,
    last: Option<Forecast>,
    /// Whether the next shorter scale's recent data bore out the last alarm (rule 7).
    backed: bool,
    /// The linear time to exhaustion of the last forecast, seconds: what the alarm's
    /// persistence is judged by (rule 7), whatever model refines the forecast (rule 8).
    linear_tte_s: f64,
    /// When the last forecast was made: a verdict between two evaluations counts its times
    /// to exhaustion from then.
    evaluated_ms: u64,
}

/// Parameters derived once from a [`TrendConfig`].
#[derive(Debug, Clone)]
struct Params {
    z_one_sided: f64,
    z_two_sided: f64,
    confidence: f64,
    horizon_s: f64,
    max_extrapolation: f64,
    min_points: usize,
    min_evaluations: u32,
    min_persistence_ms: u64,
}

/// The online trend detector of one series.
#[derive(Debug, Clone)]
pub struct SeriesDetector {
    params: Params,
    scales: Vec<Scale>,
    capacity: f64,
    aggregate: Aggregate,
    origin_ms: Option<u64>,
    last_ms: u64,
}

impl SeriesDetector {
    /// A detector of a series that is exhausted at `capacity`. `cfg` should be valid
    /// ([`TrendConfig::validate`]); out-of-range values are clamped.
    pub fn new(cfg: &TrendConfig, capacity: f64, aggregate: Aggregate) -> Self {
        let points = cfg.points.clamp(8, 256);
        let confidence = cfg.confidence.clamp(0.5 + 1e-9, 1.0 - 1e-9);
        let params = Params {
            z_one_sided: normal_quantile(confidence),
            z_two_sided: normal_quantile(1.0 - (1.0 - confidence) / 2.0),
            confidence,
            horizon_s: cfg.horizon.as_secs_f64(),
            max_extrapolation: cfg.max_extrapolation,
            min_points: (points / 4).max(8),
            min_evaluations: cfg.min_evaluations.max(1),
            min_persistence_ms: cfg.min_persistence.as_millis() as u64,
        };
        let scales = cfg
            .scales()
            .into_iter()
            .map(|w| Scale {
                window: w,
                bucket_ms: ((w.as_millis() as u64) / points as u64).max(1),
                points: points as u32,
                mk: MkWindow::new(points),
                cur: None,
                cur_max: f64::NEG_INFINITY,
                cur_sum: 0.0,
                cur_n: 0,
                eval_every: eval_every(cfg, w, points),
                eval_wait: 0,
                firing: false,
                streak: 0,
                streak_since_ms: 0,
                last: None,
                backed: true,
                linear_tte_s: f64::INFINITY,
                evaluated_ms: 0,
            })
            .collect();
        Self {
            params,
            scales,
            capacity,
            aggregate,
            origin_ms: None,
            last_ms: 0,
        }
    }

    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Changes the exhaustion level (e.g. a reconfigured limit); history is kept.
    pub fn set_capacity(&mut self, capacity: f64) {
        self.capacity = capacity;
    }

    /// Forgets all history, as after a rejuvenation.
    pub fn reset(&mut self) {
        for s in &mut self.scales {
            s.mk.clear();
            s.cur = None;
            s.cur_max = f64::NEG_INFINITY;
            s.cur_sum = 0.0;
            s.cur_n = 0;
            s.eval_wait = 0;
            s.firing = false;
            s.streak = 0;
            s.last = None;
            s.backed = true;
            s.linear_tte_s = f64::INFINITY;
            s.evaluated_ms = 0;
        }
        self.origin_ms = None;
        self.last_ms = 0;
    }

    /// Bytes this detector holds, on the stack and the heap.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.scales.capacity() * std::mem::size_of::<Scale>()
            + self.scales.iter().map(|s| s.mk.heap_bytes()).sum::<usize>()
    }

    /// The windows of the scales, longest first.
    pub fn windows(&self) -> Vec<Duration> {
        self.scales.iter().map(|s| s.window).collect()
    }

    /// The latest forecast of every scale that made one (significant upward trend), longest
    /// window first, alarming or not.
    pub fn forecasts(&self) -> impl Iterator<Item = &Forecast> {
        self.scales.iter().filter_map(|s| s.last.as_ref())
    }

    /// Feeds one value observed at `t_ms` (any monotonic or wall-clock milliseconds).
    /// Values that are not finite, and samples older than the last one, are ignored.
    pub fn observe(&mut self, t_ms: u64, value: f64) -> TrendVerdict {
        if value.is_finite() && (self.origin_ms.is_none() || t_ms >= self.last_ms) {
            let origin = *self.origin_ms.get_or_insert(t_ms);
            self.last_ms = t_ms;
            let rel = t_ms - origin;
            let mut closed = [false; MAX_SCALES];
            for (i, sc) in self.scales.iter_mut().enumerate() {
                let b = rel / sc.bucket_ms;
                match sc.cur {
                    Some(cur) if cur == b => {}
                    Some(cur) => {
                        let v = match self.aggregate {
                            Aggregate::Max => sc.cur_max,
                            Aggregate::Mean => sc.cur_sum / f64::from(sc.cur_n.max(1)),
                        };
                        let t = u32::try_from(cur).unwrap_or(u32::MAX);
                        // The window is a duration: after a gap in the samples, buckets
                        // older than `points` bucket lengths leave it.
                        sc.mk.evict_before(t.saturating_sub(sc.points - 1));
                        sc.mk.push(t, v);
                        sc.cur = Some(b);
                        sc.cur_max = f64::NEG_INFINITY;
                        sc.cur_sum = 0.0;
                        sc.cur_n = 0;
                        closed[i] = true;
                    }
                    None => sc.cur = Some(b),
                }
                sc.cur_max = sc.cur_max.max(value);
                sc.cur_sum += value;
                sc.cur_n += 1;
            }
            // Judged once every scale holds its closed buckets, so that an alarm can be
            // checked against the next shorter scale's most recent data.
            for i in (0..self.scales.len()).filter(|&i| closed[i]) {
                let (head, tail) = self.scales.split_at_mut(i + 1);
                // The evaluation's "now" is the end of the bucket just closed.
                let judged = evaluate(
                    &mut head[i],
                    tail.first(),
                    &self.params,
                    self.capacity,
                    t_ms,
                );
                if judged && self.scales[i].firing {
                    self.refine(i, rel);
                    // Rule 7: a shorter scale's rise must reach a level the series has not
                    // held before.
                    if i > 0 && self.scales[i].backed && !self.new_level(i) {
                        self.scales[i].backed = false;
                    }
                }
            }
        }
        self.verdict(t_ms)
    }

    /// Whether scale `i`'s window reaches higher than anything the longest scale holds from
    /// before that window began (rule 7): a series that has already been this high and came
    /// back without running out is wandering within its own range.
    fn new_level(&self, i: usize) -> bool {
        let long = &self.scales[0];
        let sc = &self.scales[i];
        let Some((t_first, _)) = sc.mk.time_range() else {
            return true;
        };
        let start_ms = u64::from(t_first) * sc.bucket_ms;
        BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            let Buffers { ts, xs, .. } = &mut *b;
            sc.mk.ordered(ts, xs);
            let window_max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            long.mk.ordered(ts, xs);
            let past_max = ts
                .iter()
                .zip(xs.iter())
                .filter(|(t, _)| (**t as u64 + 1) * long.bucket_ms <= start_ms)
                .map(|(_, x)| *x)
                .fold(f64::NEG_INFINITY, f64::max);
            window_max > past_max
        })
    }

    /// Rule 8: the forecast of alarming scale `i` gets the time to exhaustion of the model
    /// that the longest history held supports best ([`shape::forecast`]). `rel_ms` is now,
    /// relative to the first sample.
    fn refine(&mut self, i: usize, rel_ms: u64) {
        let min_points = self.params.min_points.max(shape::MIN_POINTS);
        let Some(long) = self.scales.iter().find(|s| s.mk.len() >= min_points) else {
            return;
        };
        let Some(f) = self.scales[i].last.as_ref() else {
            return;
        };
        let bucket_s = long.bucket_ms as f64 / 1000.0;
        let now_s = rel_ms as f64 / 1000.0;
        // Hours before now of a bucket's end, where its maximum is placed.
        let hours_ago = |t: f64, bucket_s: f64| ((t + 1.0) * bucket_s - now_s).min(0.0) / 3600.0;
        let alarming = &self.scales[i];
        let Some((t_latest, latest)) = alarming.mk.newest() else {
            return;
        };
        let base = shape::Alarming {
            tte_s: f.tte_s,
            slope_per_h: f.slope_per_s * 3600.0 / self.capacity,
            latest_h: hours_ago(f64::from(t_latest), alarming.bucket_ms as f64 / 1000.0),
            latest: latest / self.capacity,
        };
        let chosen = BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            let Buffers { ts, xs, .. } = &mut *b;
            long.mk.ordered(ts, xs);
            if self.capacity.is_nan() || self.capacity <= 0.0 {
                return None;
            }
            // Hours before now and fractions of capacity. A bucket's value is its maximum,
            // placed at the bucket's end.
            for t in ts.iter_mut() {
                *t = hours_ago(*t, bucket_s);
            }
            for x in xs.iter_mut() {
                *x /= self.capacity;
            }
            Some(shape::forecast(
                ts,
                xs,
                &base,
                self.params.horizon_s,
                self.params.z_one_sided,
            ))
        });
        let Some(chosen) = chosen else {
            return;
        };
        // The history is a cycle whose peaks stay below the capacity: the rise is the cycle's,
        // and the alarm is not borne out (like rule 7's recent slope).
        if chosen.cycle_only {
            self.scales[i].backed = false;
        }
        let f = self.scales[i].last.as_mut().expect("checked above");
        if chosen.tte_s != f.tte_s && f.tte_s > 0.0 {
            // The interval keeps its width relative to the forecast.
            let k = chosen.tte_s / f.tte_s;
            f.tte_low_s *= k;
            f.tte_high_s = f.tte_high_s.map(|h| h * k);
            f.tte_s = chosen.tte_s;
        }
        // A growth that is itself random (bursts) leaves the moment open beyond its rate.
        if let Some((low, high)) = chosen.spread_s {
            f.tte_low_s = f.tte_low_s.min(low);
            f.tte_high_s = f.tte_high_s.map(|h| h.max(high));
        }
        f.model = chosen.model;
    }

    /// The verdict at `now_ms` from the latest evaluation of every scale.
    fn verdict(&self, now_ms: u64) -> TrendVerdict {
        let mut level = Level::Stable;
        let mut best: Option<(&Forecast, u64)> = None;
        for sc in self.scales.iter().filter(|s| s.firing) {
            let f = sc.last.as_ref().expect("a firing scale has a forecast");
            let persistent = sc.streak >= self.params.min_evaluations
                && now_ms.saturating_sub(sc.streak_since_ms)
                    >= required_persistence_ms(sc.linear_tte_s, self.params.min_persistence_ms)
                && sc.backed;
            let l = if persistent {
                Level::Unstable
            } else {
                Level::Suspect
            };
            // Among equals, the longest window (scales are longest first): it has seen most.
            if l > level {
                level = l;
                best = Some((f, sc.evaluated_ms));
            }
        }
        TrendVerdict {
            level,
            forecast: best.map(|(f, at_ms)| f.aged(now_ms.saturating_sub(at_ms))),
        }
    }
}

/// How many bucket closes apart a scale is judged: at least `min_window / 16` apart, so the
/// shortest scales, whose buckets are a couple of samples, do not pay for the robust path at
/// every other sample. Every other scale is judged at every close.
fn eval_every(cfg: &TrendConfig, window: Duration, points: usize) -> u32 {
    let bucket = window.as_secs_f64() / points as f64;
    let spacing = cfg.min_window.as_secs_f64() / 16.0;
    if bucket <= 0.0 {
        return 1;
    }
    ((spacing / bucket).ceil() as u32).clamp(1, 16)
}

/// Judges a scale after one of its buckets closed; false when it was not its turn.
fn evaluate(
    sc: &mut Scale,
    shorter: Option<&Scale>,
    p: &Params,
    capacity: f64,
    now_ms: u64,
) -> bool {
    if sc.eval_wait > 0 {
        sc.eval_wait -= 1;
        return false;
    }
    sc.eval_wait = sc.eval_every - 1;
    let forecast = assess(sc, p, capacity);
    let alarm = forecast.as_ref().is_some_and(|f| {
        // The slow end of the forecast interval must be inside the limits: a trend whose
        // slope might be near zero forecasts nothing.
        let tte = f.tte_high_s.unwrap_or(f64::INFINITY);
        f.steady && tte <= p.horizon_s && tte <= p.max_extrapolation * f.span_s
    });
    if alarm {
        if !sc.firing {
            sc.streak = 0;
            sc.streak_since_ms = now_ms;
        }
        sc.streak += 1;
    } else {
        sc.streak = 0;
    }
    sc.firing = alarm;
    sc.linear_tte_s = forecast.as_ref().map_or(f64::INFINITY, |f| f.tte_s);
    sc.evaluated_ms = now_ms;
    // The forecast must agree with the most recent data: the next shorter scale must still
    // rise at a good part of the forecast's rate (see the module overview, rule 7).
    sc.backed = match (&forecast, shorter) {
        (Some(f), Some(short)) if alarm => {
            recent_backs(recent_slope_per_s(short, p.min_points), f.slope_per_s)
        }
        _ => true,
    };
    sc.last = forecast;
    true
}

/// The least-squares slope (per second) of a scale's bucketed window: how fast the most recent
/// data rise. Least squares and not Sen's slope, because the median of the pairwise slopes of
/// a bursty leak is zero between two bursts, while a least-squares line follows each burst.
/// `None` while the scale holds fewer than `min_points` buckets (it cannot say anything yet).
fn recent_slope_per_s(sc: &Scale, min_points: usize) -> Option<f64> {
    if sc.mk.len() < min_points {
        return None;
    }
    let bucket_s = sc.bucket_ms as f64 / 1000.0;
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        let Buffers { ts, xs, .. } = &mut *b;
        sc.mk.ordered(ts, xs);
        Some(ols_slope(ts, xs) / bucket_s)
    })
}

/// Whether the recent slope backs an alarm whose forecast rises at `forecast_slope_per_s`:
/// it must be at least [`RECENT_SHARE`] of it. With no recent slope (too little data) the
/// alarm stands on its own.
pub fn recent_backs(recent_slope_per_s: Option<f64>, forecast_slope_per_s: f64) -> bool {
    recent_slope_per_s.is_none_or(|r| r >= RECENT_SHARE * forecast_slope_per_s)
}

/// How long an alarm whose forecast is `tte_s` seconds must hold before the series is judged
/// unstable, in milliseconds: [`PERSIST_SHARE`] of the forecast, and never less than
/// `min_persistence_ms`.
pub fn required_persistence_ms(tte_s: f64, min_persistence_ms: u64) -> u64 {
    let share = (PERSIST_SHARE * tte_s.max(0.0) * 1000.0).min(u64::MAX as f64) as u64;
    share.max(min_persistence_ms)
}

/// Reused buffers of the evaluation: the window in order, and pairwise slopes. One set per
/// thread, so a series costs no memory for them and an evaluation allocates nothing.
struct Buffers {
    ts: Vec<f64>,
    xs: Vec<f64>,
    pairs: Vec<f64>,
    resid: Vec<f64>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = const {
        std::cell::RefCell::new(Buffers {
            ts: Vec::new(),
            xs: Vec::new(),
            pairs: Vec::new(),
            resid: Vec::new(),
        })
    };
}

/// The forecast of a scale whose trend is significantly upward, or `None`.
fn assess(sc: &Scale, p: &Params, capacity: f64) -> Option<Forecast> {
    let n = sc.mk.len();
    if n < p.min_points || sc.mk.s() <= 0 {
        return None;
    }
    let var = sc.mk.variance();
    if var <= 0.0 {
        return None;
    }
    // The cheap raw test first: the correction only ever lowers Z.
    let s = sc.mk.s() as f64;
    if (s - 1.0) / var.sqrt() < p.z_one_sided {
        return None;
    }
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        let Buffers {
            ts,
            xs,
            pairs,
            resid,
        } = &mut *b;
        sc.mk.ordered(ts, xs);
        assess_window(sc, p, capacity, s, var, ts, xs, pairs, resid)
    })
}

/// Least-squares slope of `(ts, xs)`, O(n).
fn ols_slope(ts: &[f64], xs: &[f64]) -> f64 {
    let n = ts.len() as f64;
    let mt = ts.iter().sum::<f64>() / n;
    let mx = xs.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (t, x) in ts.iter().zip(xs) {
        sxy += (t - mt) * (x - mx);
        sxx += (t - mt) * (t - mt);
    }
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// The forecast of a scale whose raw test passed, from its window in order `(ts, xs)`:
/// `None` unless the trend could matter, stays significant after the correction and forecasts
/// a finite exhaustion. `pairs` and `resid` are reused buffers.
#[allow(clippy::too_many_arguments)]
fn assess_window(
    sc: &Scale,
    p: &Params,
    capacity: f64,
    s: f64,
    var: f64,
    ts: &[f64],
    xs: &[f64],
    pairs: &mut Vec<f64>,
    resid: &mut Vec<f64>,
) -> Option<Forecast> {
    let bucket_s = sc.bucket_ms as f64 / 1000.0;
    let (t_first, t_last) = sc.mk.time_range()?;
    let span_s = (f64::from(t_last - t_first) + 1.0) * bucket_s;
    if !could_reach(p, capacity, span_s, bucket_s, ts, xs) {
        return None;
    }
    pair_slopes(ts, xs, pairs);
    let b0 = sen_from_pairs(pairs, 0.0, 0.0)?.slope;
    resid.clear();
    resid.extend(ts.iter().zip(xs).map(|(t, x)| x - b0 * t));
    let inflation = hamed_rao_inflation(resid, p.z_two_sided);
    let z = (s - 1.0) / (var * inflation).sqrt();
    let confidence = normal_cdf(z);
    if confidence < p.confidence {
        return None;
    }
    // A knee is told from the first rise of a cycle only against a whole window of history,
    // and on a window shorter than a cycle's night.
    let fill = Fill {
        full: span_s >= 0.75 * sc.window.as_secs_f64(),
        short: sc.window <= KNEE_MAX_WINDOW,
    };
    let slopes = window_slopes(p, var, inflation, fill, ts, xs, pairs)?;
    let est = slopes.forecast();
    let b = est.slope;
    // A robust level from the recent half, moved to now (the end of the newest bucket).
    let h = xs.len() / 2;
    let t_now = f64::from(t_last) + 1.0;
    let mut level_resid: Vec<f64> = ts[h..]
        .iter()
        .zip(&xs[h..])
        .map(|(t, x)| x - b * t)
        .collect();
    let level = median_in_place(&mut level_resid) + b * t_now;
    let room = (capacity - level).max(0.0);
    let tte = |slope: f64| (slope > 0.0).then(|| room / slope * bucket_s);
    let tte_s = tte(b).unwrap_or(f64::INFINITY);
    if !tte_s.is_finite() {
        return None;
    }
    Some(Forecast {
        window_s: sc.window.as_secs_f64(),
        span_s,
        slope_per_s: b / bucket_s,
        slope_low_per_s: est.low / bucket_s,
        slope_high_per_s: est.high / bucket_s,
        level,
        capacity,
        tte_s,
        tte_low_s: tte(est.high).unwrap_or(tte_s),
        tte_high_s: tte(est.low),
        confidence,
        variance_inflation: inflation,
        steady: slopes.steady(ts, xs, capacity - level),
        model: ForecastModel::Linear,
    })
}

/// An O(n) pre-check that keeps the O(n²) robust path for trends that might matter: healthy
/// series are autocorrelated, so the raw test passes often. False when even `OLS_MARGIN`
/// times the least-squares slope would not bring the highest value seen to the capacity
/// within the alarm's limit. (A mismatch between the two estimators only ever postpones an
/// alarm to a later bucket.)
fn could_reach(
    p: &Params,
    capacity: f64,
    span_s: f64,
    bucket_s: f64,
    ts: &[f64],
    xs: &[f64],
) -> bool {
    let limit_s = p.horizon_s.min(p.max_extrapolation * span_s);
    let room_min = capacity - xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    !(room_min > 0.0 && ols_slope(ts, xs) * OLS_MARGIN * limit_s / bucket_s < room_min)
}

/// Sen's slopes of a window (bucket units): the whole window's and the recent half's with
/// their bounds, and the older half's.
struct Slopes {
    full: SenEstimate,
    recent: SenEstimate,
    older: f64,
    /// The older half is flat and the recent half rises well above it: a leak that started
    /// inside the window, observed for the recent half only.
    knee: bool,
    /// The window is full (its halves are halves of the whole window).
    whole_window: bool,
}

/// How much of its window a scale has seen, and how long the window is, for the rules that
/// judge a window by its halves.
#[derive(Debug, Clone, Copy)]
struct Fill {
    /// The window is full: its halves are halves of the whole window.
    full: bool,
    /// The window is no longer than [`KNEE_MAX_WINDOW`].
    short: bool,
}

/// The slopes of `(ts, xs)`, whose pairwise slopes are in `pairs` (reused afterwards), with
/// the bounds from the Mann-Kendall variance `var` inflated by `inflation`.
fn window_slopes(
    p: &Params,
    var: f64,
    inflation: f64,
    fill: Fill,
    ts: &[f64],
    xs: &[f64],
    pairs: &mut Vec<f64>,
) -> Option<Slopes> {
    let zc = p.z_two_sided;
    let full = sen_from_pairs(pairs, var * inflation, zc)?;
    let h = xs.len() / 2;
    let (rt, rx) = (&ts[h..], &xs[h..]);
    let m = rt.len() as f64;
    // The recent half's interval comes from its own autocorrelation: the whole window's
    // holds the bend of a leak that started inside it, which says nothing of the noise
    // around the recent rise.
    let older = sens_slope(&ts[..h], &xs[..h], 0.0, 0.0, pairs)?.slope;
    // The recent half's pairwise slopes, made once: their median now, their bounds below.
    pair_slopes(rt, rx, pairs);
    if pairs.is_empty() {
        return None;
    }
    let b_recent = median_in_place(pairs);
    let (lo, hi) = xs[..h]
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, u), &x| {
            (l.min(x), u.max(x))
        });
    let recent_rise = b_recent * (rt[rt.len() - 1] - rt[0]);
    let knee = fill.short
        && fill.full
        && older.abs() <= KNEE_FLAT * b_recent
        && recent_rise >= KNEE_RISE * (hi - lo);
    let inflation_recent = if knee {
        let resid: Vec<f64> = rt.iter().zip(rx).map(|(t, x)| x - b_recent * t).collect();
        hamed_rao_inflation(&resid, zc)
    } else {
        inflation
    };
    let var_h = m * (m - 1.0) * (2.0 * m + 5.0) / 18.0 * inflation_recent;
    let recent = sen_from_pairs(pairs, var_h, zc)?;
    Some(Slopes {
        full,
        recent,
        older,
        knee,
        whole_window: fill.full,
    })
}

impl Slopes {
    /// The slope the forecast uses: the window's, or the recent half's where growth is
    /// speeding up (an accelerating or newly started leak is judged by its present rate, not
    /// its past).
    fn forecast(&self) -> SenEstimate {
        if FORECAST_RECENT_WHEN_FASTER && self.recent.slope > self.full.slope {
            self.recent
        } else {
            self.full
        }
    }

    /// Whether the growth has not slowed down (a warm-up nearing its plateau, a daily cycle
    /// past its steepest point), or has but would still cover `room` (what is left to the
    /// capacity) slowing down at that pace, and does not come from one jump (a batch job
    /// starting).
    fn steady(&self, ts: &[f64], xs: &[f64], room: f64) -> bool {
        let n = xs.len();
        let ratio = self.recent.slope / self.older;
        // A growth slowing down by `ratio` every half window adds, if it goes on slowing so,
        // `ratio / (1 − ratio)` times the recent half's rise: a leak whose bursts came early
        // still exhausts, a warm-up levels off below the capacity. Judged on a full window
        // only: the halves of a window still filling are minutes of a warm-up's start.
        let recent_rise = self.recent.slope * (ts[n - 1] - ts[n / 2]);
        let plateau_rise = recent_rise * ratio / (1.0 - ratio);
        let not_slowing = self.recent.slope >= DECELERATION_VETO * self.older
            || (self.whole_window && ratio > 0.0 && plateau_rise >= room);
        let mut rise = self.full.slope * (ts[n - 1] - ts[0]);
        if self.knee {
            // The whole window's slope underestimates a rise that fills half of it.
            rise = rise.max(recent_rise);
        }
        let k = (n / 8).max(1);
        let max_jump = xs.windows(k + 1).map(|w| w[k] - w[0]).fold(0.0, f64::max);
        not_slowing && max_jump <= STEP_SHARE * rise
    }
}

/// A short human duration: `45s`, `12m`, `5h40m`, `2d3h`.
pub fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "never".into();
    }
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => {
            let m = (s % 3600) / 60;
            if m == 0 {
                format!("{}h", s / 3600)
            } else {
                format!("{}h{:02}m", s / 3600, m)
            }
        }
        _ => {
            let h = (s % 86_400) / 3600;
            if h == 0 {
                format!("{}d", s / 86_400)
            } else {
                format!("{}d{}h", s / 86_400, h)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn normal(rng: &mut StdRng) -> f64 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn memory_per_series_is_at_most_8_kb() {
        let cfg = TrendConfig::default();
        let d = SeriesDetector::new(&cfg, 1.0, Aggregate::Max);
        let scales = cfg.scales().len();
        let by_hand = std::mem::size_of::<SeriesDetector>()
            + scales * std::mem::size_of::<Scale>()
            + scales * cfg.points * (std::mem::size_of::<f64>() + std::mem::size_of::<u32>());
        assert_eq!(d.memory_bytes(), by_hand);
        assert!(d.memory_bytes() <= 8 * 1024, "{} bytes", d.memory_bytes());
        // Filling the windows does not grow it.
        let mut d = d;
        for i in 0..20_000u64 {
            d.observe(i * 10_000, (i % 17) as f64 / 100.0);
        }
        assert_eq!(d.memory_bytes(), by_hand);
    }

    /// Feeds `f(t_s)` every `step_s` for `len_s`; returns the first unstable verdict's time
    /// and forecast.
    fn run(
        cfg: &TrendConfig,
        step_s: f64,
        len_s: f64,
        f: impl Fn(f64, &mut StdRng) -> f64,
    ) -> Option<(f64, Forecast)> {
        let mut d = SeriesDetector::new(cfg, 1.0, Aggregate::Max);
        let mut rng = StdRng::seed_from_u64(1);
        let mut t = 0.0;
        while t < len_s {
            let v = d.observe((t * 1000.0) as u64, f(t, &mut rng));
            if v.level == Level::Unstable {
                return Some((t, v.forecast.expect("an unstable verdict has a forecast")));
            }
            t += step_s;
        }
        None
    }

    #[test]
    fn a_linear_leak_is_caught_early_with_a_good_forecast() {
        // From 30% to exhaustion in 10 h, 1% noise, 10 s samples.
        let cfg = TrendConfig::default();
        let (t, f) = run(&cfg, 10.0, 36_000.0, |t, r| {
            0.3 + 0.7 * t / 36_000.0 + 0.01 * normal(r)
        })
        .expect("the leak is caught");
        let truth = 36_000.0 - t;
        assert!(
            truth > 2.0 * 3600.0,
            "caught only {truth}s before exhaustion"
        );
        // The forecast follows the peaks (bucket maxima), which reach the capacity a little
        // before the mean line that `truth` measures.
        assert!(
            (f.tte_s - truth).abs() / truth < 0.15,
            "forecast {} vs {truth}",
            f.tte_s
        );
        assert!(f.tte_s < truth);
        assert!(f.tte_low_s <= f.tte_s && f.tte_high_s.is_none_or(|h| h >= f.tte_s));
        assert!(f.confidence >= cfg.confidence);
    }

    #[test]
    fn a_runaway_leak_after_hours_of_flat_is_caught_ten_minutes_ahead() {
        // Flat at 35% (1% noise) for 3 h, then from 35% to exhaustion in 25 minutes, 10 s
        // samples: only the shortest (30 min) scale can see it in time, and half its window
        // is still the flat past. The recent half's interval comes from its own noise (the
        // whole window's bend would inflate it), so the alarm holds with ≥ 10 minutes left.
        let cfg = TrendConfig::default();
        let onset = 3.0 * 3600.0;
        let ramp = 25.0 * 60.0;
        let (t, f) = run(&cfg, 10.0, onset + ramp, |t, r| {
            0.35 + 0.65 * ((t - onset) / ramp).max(0.0) + 0.01 * normal(r)
        })
        .expect("the runaway is caught");
        let truth = onset + ramp - t;
        assert!(truth >= 600.0, "caught only {truth}s before exhaustion");
        assert!(
            (f.tte_s - truth).abs() / truth < 0.15,
            "forecast {} vs {truth}",
            f.tte_s
        );
        // The same rise in one jump (a batch job starting) is a step, not a leak.
        assert!(run(&cfg, 10.0, onset + 4.0 * 3600.0, |t, r| {
            let level = if t < onset { 0.35 } else { 0.75 };
            level + 0.01 * normal(r)
        })
        .is_none());
    }

    #[test]
    fn a_short_rise_to_a_level_held_before_is_not_a_leak() {
        // Steady near the limit: 96% for 10 h with an hour at 97.5% in the middle, down to
        // 94% for an hour, then a steady 30 min rise back to 97.5% that holds there. The
        // 30 min scale sees a rise that forecasts exhaustion within the hour, to a level the
        // series held hours ago and came back from.
        let cfg = TrendConfig::default();
        let h = 3600.0;
        let shape = |top: f64| {
            move |t: f64, r: &mut StdRng| {
                let x = if t < 5.0 * h {
                    0.96
                } else if t < 6.0 * h {
                    0.975
                } else if t < 10.0 * h {
                    0.96
                } else if t < 11.0 * h {
                    0.94
                } else {
                    0.94 + (top - 0.94) * ((t - 11.0 * h) / 1800.0).min(1.0)
                };
                x + 0.001 * normal(r)
            }
        };
        assert!(run(&cfg, 10.0, 12.0 * h, shape(0.975)).is_none());
        // The same rise taken higher than the series has ever been is caught.
        assert!(run(&cfg, 10.0, 12.0 * h, shape(0.995)).is_some());
    }

    #[test]
    fn an_aged_forecast_counts_from_now() {
        let f = Forecast {
            window_s: 8.0 * 3600.0,
            span_s: 8.0 * 3600.0,
            slope_per_s: 1e-5,
            slope_low_per_s: 5e-6,
            slope_high_per_s: 2e-5,
            level: 0.9,
            capacity: 1.0,
            tte_s: 3600.0,
            tte_low_s: 1800.0,
            tte_high_s: Some(7200.0),
            confidence: 0.99,
            variance_inflation: 1.0,
            steady: true,
            model: ForecastModel::Linear,
        };
        let g = f.aged(600_000);
        assert_eq!(
            (g.tte_s, g.tte_low_s, g.tte_high_s),
            (3000.0, 1200.0, Some(6600.0))
        );
        assert_eq!((g.level, g.slope_per_s), (f.level, f.slope_per_s));
        let g = f.aged(2_000_000);
        assert_eq!((g.tte_s, g.tte_low_s), (1600.0, 0.0));
        assert_eq!(f.aged(0), f);
    }

    #[test]
    fn between_two_evaluations_the_forecast_counts_down_with_the_clock() {
        // A linear leak, from 30% to exhaustion in 10 h; once it is unstable, two verdicts 10 s
        // apart from the same evaluation (same slope and level) name the same moment.
        let cfg = TrendConfig::default();
        let mut d = SeriesDetector::new(&cfg, 1.0, Aggregate::Max);
        let mut rng = StdRng::seed_from_u64(7);
        let mut prev: Option<Forecast> = None;
        let mut same_evaluation = 0;
        for i in 0..3600u64 {
            let t = i as f64 * 10.0;
            let v = d.observe(
                i * 10_000,
                0.3 + 0.7 * t / 36_000.0 + 0.01 * normal(&mut rng),
            );
            let Some(f) = v.forecast.filter(|_| v.level == Level::Unstable) else {
                prev = None;
                continue;
            };
            if let Some(p) = prev.as_ref().filter(|p| {
                (p.window_s, p.slope_per_s, p.level) == (f.window_s, f.slope_per_s, f.level)
                    && p.tte_s > 10.0
            }) {
                assert!(
                    (p.tte_s - f.tte_s - 10.0).abs() < 1e-6,
                    "{} then {}",
                    p.tte_s,
                    f.tte_s
                );
                same_evaluation += 1;
            }
            prev = Some(f);
        }
        assert!(same_evaluation > 100, "{same_evaluation}");
    }

    #[test]
    fn a_slowing_growth_is_steady_only_when_it_still_reaches_the_capacity() {
        // 32 buckets; the older half rises 1 per bucket, the recent half 0.5: slowing by half
        // every half window adds 0.5 × 15 × 0.5 / (1 − 0.5) = 7.5 more.
        let est = |slope: f64| SenEstimate {
            slope,
            low: slope,
            high: slope,
        };
        let slopes = Slopes {
            full: est(0.75),
            recent: est(0.5),
            older: 1.0,
            knee: false,
            whole_window: true,
        };
        let ts: Vec<f64> = (0..32).map(f64::from).collect();
        let xs: Vec<f64> = ts
            .iter()
            .map(|t| {
                if *t < 16.0 {
                    *t
                } else {
                    16.0 + 0.5 * (t - 16.0)
                }
            })
            .collect();
        assert!(
            slopes.steady(&ts, &xs, 7.0),
            "a leak whose bursts came early"
        );
        assert!(
            !slopes.steady(&ts, &xs, 8.0),
            "a warm-up levelling off below the capacity"
        );
        // A window not yet full is not judged by how it slows down (a warm-up's first
        // minutes).
        let partial = Slopes {
            whole_window: false,
            ..slopes
        };
        assert!(!partial.steady(&ts, &xs, 7.0));
        // Not slowing down (recent ≥ 0.7 × older) is steady at any distance.
        let even = Slopes {
            recent: est(0.7),
            ..slopes
        };
        assert!(even.steady(&ts, &ts, 1e9));
        // A recent half that does not rise never is.
        let flat = Slopes {
            recent: est(0.0),
            ..slopes
        };
        assert!(!flat.steady(&ts, &xs, 0.1));
    }

    #[test]
    fn forecast_consistency_rules_match_hand_computed_values() {
        // Least squares through (0,1) (1,3) (2,2) (3,5): t̄ = 1.5, x̄ = 2.75,
        // Sxy = 2.625 − 0.125 − 0.375 + 3.375 = 5.5, Sxx = 5, slope 1.1.
        assert!((ols_slope(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 5.0]) - 1.1).abs() < 1e-12);
        assert_eq!(ols_slope(&[2.0, 2.0], &[1.0, 5.0]), 0.0);
        // The recent slope must be at least RECENT_SHARE (0.8) of the forecast's.
        assert!(recent_backs(None, 1.0));
        assert!(recent_backs(Some(0.8), 1.0));
        assert!(recent_backs(Some(2.0), 1.0));
        assert!(!recent_backs(Some(0.79), 1.0));
        assert!(!recent_backs(Some(-0.1), 1.0));
        // PERSIST_SHARE (a fifth) of the forecast, never below the configured minimum.
        assert_eq!(required_persistence_ms(5.0 * 3600.0, 60_000), 3_600_000);
        assert_eq!(required_persistence_ms(600.0, 60_000), 120_000);
        assert_eq!(required_persistence_ms(120.0, 60_000), 60_000);
        assert_eq!(required_persistence_ms(f64::INFINITY, 0), u64::MAX);
    }

    #[test]
    fn noise_a_plateau_and_a_near_limit_server_are_not_alarms() {
        let cfg = TrendConfig::default();
        let day = 86_400.0;
        assert!(run(&cfg, 10.0, day, |_, r| 0.5 + 0.01 * normal(r)).is_none());
        // A cache warming up to 70% with a 1 h time constant.
        assert!(run(&cfg, 10.0, day, |t, r| 0.7 - 0.6 * (-t / 3600.0).exp()
            + 0.005 * normal(r))
        .is_none());
        assert!(run(&cfg, 10.0, day, |_, r| 0.95 + 0.005 * normal(r)).is_none());
    }

    #[test]
    fn scaled_config_serves_a_one_minute_demo_with_1s_samples() {
        let cfg = TrendConfig::scaled(Duration::from_secs(60));
        assert!(cfg.validate("policy.trend").is_empty());
        assert_eq!(cfg.window, Duration::from_secs(60));
        // A service leaking from 20% to exhaustion in 90 s.
        let (t, f) = run(&cfg, 1.0, 90.0, |t, r| {
            0.2 + 0.8 * t / 90.0 + 0.005 * normal(r)
        })
        .expect("the demo leak is caught");
        assert!(t < 80.0, "caught at {t}s");
        assert!(f.tte_s > 0.0);
        // A service warming up to a plateau within 20 s is left alone for five minutes.
        assert!(run(&cfg, 1.0, 300.0, |t, r| 0.6 - 0.5 * (-t / 8.0).exp()
            + 0.003 * normal(r))
        .is_none());
    }

    #[test]
    fn reset_forgets_the_trend() {
        let cfg = TrendConfig::scaled(Duration::from_secs(60));
        let mut d = SeriesDetector::new(&cfg, 1.0, Aggregate::Max);
        let mut level = Level::Stable;
        for i in 0..90u64 {
            level = d.observe(i * 1000, 0.2 + 0.8 * i as f64 / 90.0).level;
        }
        assert_eq!(level, Level::Unstable);
        d.reset();
        assert_eq!(d.forecasts().count(), 0);
        for i in 0..30u64 {
            let v = d.observe(100_000 + i * 1000, 0.2);
            assert_eq!(v.level, Level::Stable);
        }
    }

    /// Feeds `f(t_s)` every 10 s until `len_s` and returns every verdict with its time.
    fn verdicts(len_s: f64, f: impl Fn(f64, &mut StdRng) -> f64) -> Vec<(f64, TrendVerdict)> {
        let cfg = TrendConfig::default();
        let mut d = SeriesDetector::new(&cfg, 1.0, Aggregate::Max);
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        let mut t = 0.0;
        while t < len_s {
            out.push((t, d.observe((t * 1000.0) as u64, f(t, &mut rng))));
            t += 10.0;
        }
        out
    }

    /// The first time `f` (without noise) reaches 1, by 10 s steps.
    fn exhaustion_s(f: impl Fn(f64) -> f64) -> f64 {
        (0..)
            .map(|i| i as f64 * 10.0)
            .find(|t| f(*t) >= 1.0)
            .unwrap()
    }

    #[test]
    fn a_quadratic_leak_is_forecast_within_15_percent() {
        // From 25% to exhaustion in 16 h along a parabola, 0.5% noise.
        let curve = |t: f64| 0.25 + 0.75 * (t / 57_600.0).powi(2);
        let truth_at = exhaustion_s(curve);
        let (t, f) = run(&TrendConfig::default(), 10.0, 57_600.0, |t, r| {
            curve(t) + 0.005 * normal(r)
        })
        .expect("the leak is caught");
        assert_eq!(f.model, ForecastModel::Accelerating);
        let truth = truth_at - t;
        assert!(
            (f.tte_s - truth).abs() / truth < 0.15,
            "caught at {:.1} h: forecast {:.2} h, truth {:.2} h",
            t / 3600.0,
            f.tte_s / 3600.0,
            truth / 3600.0
        );
        assert!(f.tte_low_s <= f.tte_s && f.tte_high_s.is_none_or(|h| h >= f.tte_s));
    }

    #[test]
    fn a_leak_under_a_daily_cycle_is_forecast_at_the_peak_that_reaches_capacity() {
        // 0.8%/h under a cycle of amplitude 0.1, 0.3% noise; exhausted after 64 h, near a
        // peak of the cycle.
        let day = 86_400.0;
        let w = 2.0 * std::f64::consts::PI / day;
        let curve = |t: f64| 0.4 + 0.008 * t / 3600.0 + 0.1 * (w * t + 3.0).sin();
        let truth_at = exhaustion_s(curve);
        assert!((w * truth_at + 3.0).sin() > 0.8, "exhausts near a peak");
        let vs = verdicts(truth_at, |t, r| curve(t) + 0.003 * normal(r));
        // Once a day has been seen, every alarm up to 3 h before the end forecasts that peak
        // (closer, the noise on the peaks weighs more than the model).
        let late: Vec<_> = vs
            .iter()
            .filter(|(t, _)| *t >= day && *t <= truth_at - 3.0 * 3600.0)
            .filter(|(_, v)| v.level == Level::Unstable)
            .collect();
        assert!(!late.is_empty(), "the leak alarms in its second day");
        for (t, v) in late.iter().step_by(60) {
            let f = v.forecast.as_ref().unwrap();
            let truth = truth_at - t;
            assert_eq!(f.model, ForecastModel::Daily, "at {:.1} h", t / 3600.0);
            assert!(
                (f.tte_s - truth).abs() / truth < 0.15,
                "at {:.1} h: forecast {:.2} h, truth {:.2} h",
                t / 3600.0,
                f.tte_s / 3600.0,
                truth / 3600.0
            );
        }
    }

    #[test]
    fn a_flat_daily_cycle_raises_no_alarm() {
        let w = 2.0 * std::f64::consts::PI / 86_400.0;
        for (phase, amp) in [(0.0, 0.12), (2.0, 0.16), (4.0, 0.08)] {
            let vs = verdicts(3.0 * 86_400.0, |t, r| {
                0.5 + amp * (w * t + phase).sin() + 0.005 * normal(r)
            });
            assert!(
                vs.iter().all(|(_, v)| v.level != Level::Unstable),
                "phase {phase}, amplitude {amp}"
            );
        }
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(fmt_duration(45.0), "45s");
        assert_eq!(fmt_duration(12.0 * 60.0), "12m");
        assert_eq!(fmt_duration(5.0 * 3600.0 + 40.0 * 60.0), "5h40m");
        assert_eq!(fmt_duration(2.0 * 86_400.0 + 3.0 * 3600.0), "2d3h");
    }
}
