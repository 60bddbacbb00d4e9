//! A log-linear latency histogram (HDR-like) with bounded memory, so a long load run at a high
//! rate keeps a fixed footprint instead of one sample per request.
//!
//! Values are recorded in microseconds. Values below 64 are exact; above, every power-of-two
//! range is split into 64 equal sub-buckets, so a reported percentile is at most 1/64 (≈1.6 %)
//! above the true value. The maximum is kept exactly.

/// Sub-buckets per power of two, as a bit count (2^6 = 64).
const SUB_BITS: u32 = 6;
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Exact buckets 0..64, then 64 per power of two from 2^6 to 2^63.
const BUCKETS: usize = (SUB_COUNT as usize) * (64 - SUB_BITS as usize + 1);

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB_COUNT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    // (v >> shift) is in [64, 128): the top SUB_BITS bits below the leading one.
    ((msb - SUB_BITS + 1) as usize) * SUB_COUNT as usize + ((v >> shift) - SUB_COUNT) as usize
}

/// Highest value that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let sub = SUB_COUNT as usize;
    if i < sub {
        return i as u64;
    }
    let group = (i / sub) as u32; // >= 1
    let shift = group - 1;
    let top = (i % sub) as u64 + SUB_COUNT;
    // Bucket covers [top << shift, (top + 1) << shift).
    ((top + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Nearest-rank percentile (`p` in 0..=100): the highest value of the bucket holding the
    /// sample of rank ⌈p/100 · n⌉, never above the exact maximum. 0 when empty.
    pub(crate) fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64)
            .ceil()
            .clamp(1.0, self.total as f64) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_contains_it() {
        let mut v = 0u64;
        let mut values = vec![u64::MAX, u64::MAX - 1, 1 << 63];
        while v < 10_000_000 {
            values.push(v);
            v = v * 3 / 2 + 1;
        }
        for v in values {
            let i = index(v);
            assert!(i < BUCKETS, "index {i} of {v} out of range");
            assert!(
                upper_bound(i) >= v,
                "bucket {i} upper {} < {v}",
                upper_bound(i)
            );
            let lower = if i == 0 { 0 } else { upper_bound(i - 1) + 1 };
            assert!(lower <= v, "bucket {i} lower {lower} > {v}");
            // Relative width bound: 1/64.
            assert!(
                (upper_bound(i) - v) as f64 <= v as f64 / 64.0 + 1.0,
                "bucket too wide at {v}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_uniform_series_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (p, exact) in [(50.0, 5_000u64), (99.0, 9_900), (100.0, 10_000), (0.0, 1)] {
            let got = h.percentile(p);
            assert!(
                got >= exact && got as f64 <= exact as f64 * (1.0 + 1.0 / 64.0) + 1.0,
                "p{p}: got {got}, exact {exact}"
            );
        }
        assert_eq!(h.max(), 10_000);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.total, 3);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.percentile(50.0), 20);
        assert_eq!(Histogram::default().percentile(99.0), 0);
    }
}
