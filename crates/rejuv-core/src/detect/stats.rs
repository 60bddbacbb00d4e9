//! The statistics of the trend detector, each a plain function of a window of values: the
//! streaming Mann-Kendall window ([`MkWindow`]) and its batch reference, Sen's slope with its
//! confidence bounds, Hamed & Rao's autocorrelation correction, ranks and medians, and the
//! normal distribution. [`super::trend`] explains how they combine into a forecast.

/// A sliding window with a streaming Mann-Kendall statistic.
///
/// Values and their times (in bucket units) are kept in a fixed ring. `S` and the tie term of
/// its variance are updated in O(len) when a value is added or the oldest dropped.
#[derive(Debug, Clone)]
pub struct MkWindow {
    xs: Vec<f64>,
    ts: Vec<u32>,
    /// Index of the oldest element.
    start: usize,
    len: usize,
    s: i64,
    /// Σ t(t−1)(2t+5) over the groups of tied values.
    ties: i64,
}

/// The tie term `t(t−1)(2t+5)` of a group of `t` equal values.
pub fn tie_term(t: i64) -> i64 {
    t * (t - 1) * (2 * t + 5)
}

fn sign(d: f64) -> i64 {
    if d > 0.0 {
        1
    } else if d < 0.0 {
        -1
    } else {
        0
    }
}

impl MkWindow {
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            xs: vec![0.0; cap],
            ts: vec![0; cap],
            start: 0,
            len: 0,
            s: 0,
            ties: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn cap(&self) -> usize {
        self.xs.len()
    }

    fn idx(&self, k: usize) -> usize {
        (self.start + k) % self.cap()
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
        self.s = 0;
        self.ties = 0;
    }

    /// The Mann-Kendall statistic of the window.
    pub fn s(&self) -> i64 {
        self.s
    }

    /// `Var(S)` with the tie correction.
    pub fn variance(&self) -> f64 {
        let n = self.len as i64;
        (n * (n - 1) * (2 * n + 5) - self.ties) as f64 / 18.0
    }

    /// The values in time order, as the two contiguous parts of the ring (no division per
    /// element in the O(len) loops).
    fn parts(&self) -> (&[f64], &[f64]) {
        let end = self.start + self.len;
        if end <= self.cap() {
            (&self.xs[self.start..end], &[])
        } else {
            (&self.xs[self.start..], &self.xs[..end - self.cap()])
        }
    }

    /// Drops the oldest value, if any.
    pub fn pop_oldest(&mut self) {
        if self.len == 0 {
            return;
        }
        let old = self.xs[self.start];
        let (mut ds, mut eq) = (0i64, 0i64);
        let (a, b) = self.parts();
        for &v in a[1..].iter().chain(b) {
            let d = sign(v - old);
            ds += d;
            eq += i64::from(d == 0);
        }
        self.s -= ds;
        // The old value's group shrinks from eq+1 to eq.
        self.ties += tie_term(eq) - tie_term(eq + 1);
        self.start = (self.start + 1) % self.cap();
        self.len -= 1;
    }

    /// Appends `x` at time `t`, dropping the oldest value when full.
    pub fn push(&mut self, t: u32, x: f64) {
        if self.len == self.cap() {
            self.pop_oldest();
        }
        let (mut ds, mut eq) = (0i64, 0i64);
        let (a, b) = self.parts();
        for &v in a.iter().chain(b) {
            let d = sign(x - v);
            ds += d;
            eq += i64::from(d == 0);
        }
        self.s += ds;
        self.ties += tie_term(eq + 1) - tie_term(eq);
        let i = self.idx(self.len);
        self.xs[i] = x;
        self.ts[i] = t;
        self.len += 1;
    }

    /// Drops the values older than `t_min`.
    pub fn evict_before(&mut self, t_min: u32) {
        while self.len > 0 && self.ts[self.start] < t_min {
            self.pop_oldest();
        }
    }

    /// The window in time order, into the given buffers.
    pub fn ordered(&self, ts: &mut Vec<f64>, xs: &mut Vec<f64>) {
        ts.clear();
        xs.clear();
        for k in 0..self.len {
            let i = self.idx(k);
            ts.push(f64::from(self.ts[i]));
            xs.push(self.xs[i]);
        }
    }

    /// The newest bucket's time and value, if any.
    pub fn newest(&self) -> Option<(u32, f64)> {
        (self.len > 0).then(|| {
            let i = self.idx(self.len - 1);
            (self.ts[i], self.xs[i])
        })
    }

    /// The oldest and newest times, if any.
    pub fn time_range(&self) -> Option<(u32, u32)> {
        (self.len > 0).then(|| (self.ts[self.start], self.ts[self.idx(self.len - 1)]))
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.xs.capacity() * std::mem::size_of::<f64>()
            + self.ts.capacity() * std::mem::size_of::<u32>()
    }
}

/// Mann-Kendall `S` of a series, by definition (O(n²)); the reference for the streaming one.
pub fn mk_s(xs: &[f64]) -> i64 {
    let mut s = 0;
    for i in 0..xs.len() {
        for j in i + 1..xs.len() {
            s += sign(xs[j] - xs[i]);
        }
    }
    s
}

/// `Var(S)` of a series with the tie correction, by definition.
pub fn mk_variance(xs: &[f64]) -> f64 {
    let n = xs.len() as i64;
    let mut sorted: Vec<f64> = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut ties = 0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j] == sorted[i] {
            j += 1;
        }
        ties += tie_term((j - i) as i64);
        i = j;
    }
    (n * (n - 1) * (2 * n + 5) - ties) as f64 / 18.0
}

/// Sen's slope with its confidence bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SenEstimate {
    pub slope: f64,
    pub low: f64,
    pub high: f64,
}

/// Sen's slope of `(ts, xs)` (the median of the pairwise slopes), with the bounds at ranks
/// `(N ∓ z·√var_s)/2`. Pairs with equal times are skipped. `scratch` is reused between calls.
///
/// O(n²) to list the pairs, O(n²) expected for the selections; `None` with fewer than one pair.
pub fn sens_slope(
    ts: &[f64],
    xs: &[f64],
    var_s: f64,
    z: f64,
    scratch: &mut Vec<f64>,
) -> Option<SenEstimate> {
    pair_slopes(ts, xs, scratch);
    sen_from_pairs(scratch, var_s, z)
}

/// Every pairwise slope `(x_j − x_i)/(t_j − t_i)`, `i < j`, skipping equal times, into `out`.
pub fn pair_slopes(ts: &[f64], xs: &[f64], out: &mut Vec<f64>) {
    out.clear();
    for i in 0..xs.len() {
        for j in i + 1..xs.len() {
            let dt = ts[j] - ts[i];
            if dt != 0.0 {
                out.push((xs[j] - xs[i]) / dt);
            }
        }
    }
}

/// Sen's slope and bounds from the pairwise slopes (in any order; they are reordered).
pub fn sen_from_pairs(pairs: &mut [f64], var_s: f64, z: f64) -> Option<SenEstimate> {
    let n = pairs.len();
    if n == 0 {
        return None;
    }
    let med = median_in_place(pairs);
    if var_s <= 0.0 || z <= 0.0 {
        return Some(SenEstimate {
            slope: med,
            low: med,
            high: med,
        });
    }
    let c = z * var_s.sqrt();
    // 1-based ranks M1 = (N − C)/2 and M2 = (N + C)/2 + 1, clamped into the list.
    let m1 = (((n as f64 - c) / 2.0).floor() as i64).clamp(1, n as i64) as usize - 1;
    let m2 = (((n as f64 + c) / 2.0).ceil() as i64 + 1).clamp(1, n as i64) as usize - 1;
    let (_, low, _) = pairs.select_nth_unstable_by(m1, f64::total_cmp);
    let low = *low;
    let (_, high, _) = pairs.select_nth_unstable_by(m2, f64::total_cmp);
    let high = *high;
    Some(SenEstimate {
        slope: med,
        low: low.min(med),
        high: high.max(med),
    })
}

/// The median of `v` (mean of the two middle values for an even length). Reorders `v`.
pub fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    assert!(n > 0, "median of nothing");
    let (_, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        hi
    } else {
        let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo + hi) / 2.0
    }
}

/// Hamed & Rao's variance inflation `n/n*` for the residuals `r` (detrended series): from the
/// autocorrelation of their ranks at every lag, keeping only lags significant at the two-sided
/// normal quantile `z`. Never below 1: negative correlation does not make us bolder.
pub fn hamed_rao_inflation(r: &[f64], z: f64) -> f64 {
    let n = r.len();
    if n < 3 {
        return 1.0;
    }
    let ranks = ranks(r);
    let mean = (n as f64 + 1.0) / 2.0;
    let d: Vec<f64> = ranks.iter().map(|x| x - mean).collect();
    let denom: f64 = d.iter().map(|x| x * x).sum();
    if denom <= 0.0 {
        return 1.0;
    }
    let bound = z / (n as f64).sqrt();
    let nf = n as f64;
    let mut acc = 0.0;
    for k in 1..n - 2 {
        let num: f64 = (0..n - k).map(|i| d[i] * d[i + k]).sum();
        let rho = num / denom;
        if rho.abs() > bound {
            let kf = k as f64;
            acc += (nf - kf) * (nf - kf - 1.0) * (nf - kf - 2.0) * rho;
        }
    }
    (1.0 + 2.0 * acc / (nf * (nf - 1.0) * (nf - 2.0))).max(1.0)
}

/// Ranks 1..=n with ties given their average rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = r;
        }
        i = j + 1;
    }
    out
}

/// The standard normal distribution function Φ(z) (Abramowitz & Stegun 26.2.17, |error| <
/// 7.5e-8).
pub fn normal_cdf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    if z < 0.0 {
        return 1.0 - normal_cdf(-z);
    }
    if z > 9.0 {
        return 1.0;
    }
    let t = 1.0 / (1.0 + 0.231_641_9 * z);
    let poly = t
        * (0.319_381_530
            + t * (-0.356_563_782
                + t * (1.781_477_937 + t * (-1.821_255_978 + t * 1.330_274_429))));
    1.0 - (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * poly
}

/// The standard normal quantile Φ⁻¹(p) (Acklam's rational approximation, one Newton step).
pub fn normal_quantile(p: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0, "quantile of {p}");
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let pl = 0.02425;
    let x = if p < pl {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - pl {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    // One Newton step on Φ(x) − p.
    let e = normal_cdf(x) - p;
    let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    if pdf > 0.0 {
        x - e / pdf
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn normal(rng: &mut StdRng) -> f64 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn mann_kendall_s_and_variance_match_hand_computed_values() {
        // No ties: every pair increases.
        assert_eq!(mk_s(&[1.0, 2.0, 3.0]), 3);
        assert!((mk_variance(&[1.0, 2.0, 3.0]) - 3.0 * 2.0 * 11.0 / 18.0).abs() < 1e-12);
        // One tie group of 2: S = 5, Var = (4·3·13 − 2·1·9)/18.
        let x = [1.0, 2.0, 2.0, 3.0];
        assert_eq!(mk_s(&x), 5);
        assert!((mk_variance(&x) - (156.0 - 18.0) / 18.0).abs() < 1e-12);
        // A tie group of 3 in a falling series: S = −7, Var = (5·4·15 − 3·2·11)/18 = 13.
        let x = [5.0, 3.0, 3.0, 3.0, 1.0];
        assert_eq!(mk_s(&x), -7);
        assert!((mk_variance(&x) - 13.0).abs() < 1e-12);
        // The streaming window agrees on the same series.
        let mut w = MkWindow::new(8);
        for (i, v) in x.iter().enumerate() {
            w.push(i as u32, *v);
        }
        assert_eq!(w.s(), -7);
        assert!((w.variance() - 13.0).abs() < 1e-12);
    }

    #[test]
    fn normal_distribution_matches_tables() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-2.326_348) - 0.01).abs() < 1e-6);
        for p in [0.001, 0.01, 0.05, 0.5, 0.9, 0.99, 0.999] {
            assert!((normal_cdf(normal_quantile(p)) - p).abs() < 1e-7, "{p}");
        }
        assert!((normal_quantile(0.99) - 2.326_348).abs() < 1e-5);
    }

    #[test]
    fn sen_slope_of_a_line_is_its_slope() {
        let ts: Vec<f64> = (0..20).map(f64::from).collect();
        let xs: Vec<f64> = ts.iter().map(|t| 3.0 + 0.5 * t).collect();
        let e = sens_slope(&ts, &xs, mk_variance(&xs), 1.96, &mut Vec::new()).unwrap();
        assert_eq!((e.slope, e.low, e.high), (0.5, 0.5, 0.5));
    }

    /// The naive reference: every pairwise slope, sorted.
    fn naive_slopes(ts: &[f64], xs: &[f64]) -> Vec<f64> {
        let mut v = Vec::new();
        for i in 0..xs.len() {
            for j in i + 1..xs.len() {
                if ts[j] != ts[i] {
                    v.push((xs[j] - xs[i]) / (ts[j] - ts[i]));
                }
            }
        }
        v.sort_by(f64::total_cmp);
        v
    }

    proptest! {
        #[test]
        fn sen_slope_matches_the_naive_reference(
            pts in proptest::collection::vec((0u32..1000, -1e6f64..1e6), 2..60),
            var_s in 0.0f64..5000.0,
        ) {
            let mut pts = pts;
            pts.sort_by_key(|p| p.0);
            let ts: Vec<f64> = pts.iter().map(|p| f64::from(p.0)).collect();
            let xs: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let v = naive_slopes(&ts, &xs);
            let got = sens_slope(&ts, &xs, var_s, 1.96, &mut Vec::new());
            if v.is_empty() {
                prop_assert!(got.is_none());
            } else {
                let n = v.len();
                let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
                let got = got.unwrap();
                prop_assert!((got.slope - med).abs() <= 1e-9 * med.abs().max(1.0));
                let c = 1.96 * var_s.sqrt();
                let m1 = (((n as f64 - c) / 2.0).floor() as i64).clamp(1, n as i64) as usize;
                let m2 = (((n as f64 + c) / 2.0).ceil() as i64 + 1).clamp(1, n as i64) as usize;
                prop_assert_eq!(got.low, v[m1 - 1].min(got.slope));
                prop_assert_eq!(got.high, v[m2 - 1].max(got.slope));
            }
        }

        #[test]
        fn streaming_mann_kendall_equals_batch_recomputation(
            pts in proptest::collection::vec((0u8..6, 1u32..4), 1..120),
            cap in 2usize..40,
        ) {
            // Small integers make many ties; time steps of 1..3 make gaps that evict by time.
            let mut w = MkWindow::new(cap);
            let mut all: Vec<(u32, f64)> = Vec::new();
            let mut t = 0u32;
            for (x, dt) in &pts {
                t += dt;
                let t_min = t.saturating_sub(cap as u32 - 1);
                w.evict_before(t_min);
                w.push(t, f64::from(*x));
                all.push((t, f64::from(*x)));
                let kept: Vec<(u32, f64)> = all.iter().copied().filter(|p| p.0 >= t_min).collect();
                let kept = &kept[kept.len().saturating_sub(cap)..];
                let window: Vec<f64> = kept.iter().map(|p| p.1).collect();
                let (mut ts, mut ord) = (Vec::new(), Vec::new());
                w.ordered(&mut ts, &mut ord);
                prop_assert_eq!(&ord, &window);
                prop_assert_eq!(w.s(), mk_s(&window));
                prop_assert!((w.variance() - mk_variance(&window)).abs() < 1e-9);
                prop_assert_eq!(w.time_range(), Some((kept[0].0, t)));
            }
        }
    }

    #[test]
    fn false_positive_rate_under_iid_noise_is_about_alpha() {
        // 2000 seeded windows of 64 iid normal values, one-sided test at α = 5%.
        let z = normal_quantile(0.95);
        let mut rng = StdRng::seed_from_u64(42);
        let (mut raw, mut corrected) = (0, 0);
        let runs = 2000;
        for _ in 0..runs {
            let xs: Vec<f64> = (0..64).map(|_| normal(&mut rng)).collect();
            let ts: Vec<f64> = (0..64).map(f64::from).collect();
            let s = mk_s(&xs) as f64;
            let var = mk_variance(&xs);
            if (s - 1.0) / var.sqrt() >= z {
                raw += 1;
                let b = sens_slope(&ts, &xs, 0.0, 0.0, &mut Vec::new())
                    .unwrap()
                    .slope;
                let r: Vec<f64> = ts.iter().zip(&xs).map(|(t, x)| x - b * t).collect();
                let infl = hamed_rao_inflation(&r, normal_quantile(0.975));
                if (s - 1.0) / (var * infl).sqrt() >= z {
                    corrected += 1;
                }
            }
        }
        let rate = f64::from(raw) / f64::from(runs);
        assert!(
            (0.03..=0.07).contains(&rate),
            "raw false-positive rate {rate}"
        );
        let rate_c = f64::from(corrected) / f64::from(runs);
        assert!(
            rate_c <= rate && rate_c >= 0.02,
            "corrected false-positive rate {rate_c}"
        );
    }

    #[test]
    fn hamed_rao_inflates_for_autocorrelated_residuals_only() {
        let mut rng = StdRng::seed_from_u64(7);
        let iid: Vec<f64> = (0..64).map(|_| normal(&mut rng)).collect();
        let mut x = 0.0;
        let ar: Vec<f64> = (0..64)
            .map(|_| {
                x = 0.9 * x + normal(&mut rng);
                x
            })
            .collect();
        let z = normal_quantile(0.975);
        assert!(hamed_rao_inflation(&iid, z) < 1.5);
        assert!(
            hamed_rao_inflation(&ar, z) > 2.0,
            "{}",
            hamed_rao_inflation(&ar, z)
        );
    }
}
