//! Latency histograms of bounded memory, so a long load run at a high rate keeps a fixed
//! footprint instead of one sample per request: an [`hdrhistogram`] with three significant
//! digits (a reported percentile is at most 0.1 % above the true value).
//!
//! Values are recorded in microseconds. The wrapper adds what the load report needs on top:
//! the exact maximum (the crate reports the top of the maximum's bucket), percentiles never
//! above it, and 0 for an empty histogram.

/// Significant decimal digits the histogram keeps.
const SIGFIG: u8 = 3;

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    inner: hdrhistogram::Histogram<u64>,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            // Auto-resizing: it grows to the largest value recorded.
            inner: hdrhistogram::Histogram::new(SIGFIG).expect("3 significant digits are valid"),
            max: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn record(&mut self, v: u64) {
        if self.inner.record(v).is_err() {
            // Beyond what it can grow to (near u64::MAX): counted in its top bucket.
            self.inner.saturating_record(v);
        }
        self.max = self.max.max(v);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        if self.inner.add(&other.inner).is_err() {
            // Only when growing past u64 range fails: add the other's values one bucket at a time.
            for v in other.inner.iter_recorded() {
                self.inner
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.max = self.max.max(other.max);
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Nearest-rank percentile (`p` in 0..=100): the highest value of the bucket holding the
    /// sample of rank ⌈p/100 · n⌉, never above the exact maximum. 0 when empty.
    pub(crate) fn percentile(&self, p: f64) -> u64 {
        if self.inner.is_empty() {
            return 0;
        }
        // The crate's quantile 0 is the lowest value of the first bucket; rank 1 is its top.
        let q = (p / 100.0).clamp(f64::MIN_POSITIVE, 1.0);
        self.inner.value_at_quantile(q).min(self.max)
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_series_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (p, exact) in [(50.0, 5_000u64), (99.0, 9_900), (100.0, 10_000), (0.0, 1)] {
            let got = h.percentile(p);
            assert!(
                got >= exact && got as f64 <= exact as f64 * (1.0 + 1.0 / 1000.0) + 1.0,
                "p{p}: got {got}, exact {exact}"
            );
        }
        assert_eq!(h.max(), 10_000);
    }

    #[test]
    fn extreme_values_are_kept() {
        let mut h = Histogram::default();
        h.record(0);
        h.record(u64::MAX);
        h.record(1 << 63);
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), u64::MAX);
        assert_eq!(h.percentile(0.0), 0);
        assert!(h.percentile(100.0) >= 1 << 63);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.percentile(50.0), 20);
        assert_eq!(Histogram::default().percentile(99.0), 0);
    }
}
