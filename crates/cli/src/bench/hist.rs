//! A log-linear histogram of microsecond values (HDR-like): exact below 128 µs, then 64
//! sub-buckets per power of two, so any recorded value is within 1.6 % of its bucket's
//! midpoint. Fixed size, mergeable, O(1) record.

use serde::Serialize;

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS; // 64
const LINEAR: u64 = SUB * 2; // values below are exact
const BUCKETS: usize = (LINEAR + (64 - SUB_BITS as u64 - 1) * SUB) as usize;

/// Counts of microsecond values.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= 7
    let shift = msb - SUB_BITS;
    let mantissa = v >> shift; // in [64, 128)
    (LINEAR + u64::from(shift - 1) * SUB + (mantissa - SUB)) as usize
}

/// The midpoint of bucket `i`.
fn value_of(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let shift = (i - LINEAR) / SUB + 1;
    let mantissa = (i - LINEAR) % SUB + SUB;
    (mantissa << shift) + (1u64 << shift) / 2
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, micros: u64) {
        if let Some(c) = self.counts.get_mut(index(micros)) {
            *c += 1;
        }
        self.total += 1;
        self.sum += u128::from(micros);
        self.min = self.min.min(micros);
        self.max = self.max.max(micros);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1); the exact max for `q == 1`.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Summary in milliseconds, or `None` when empty.
    pub fn summary_ms(&self) -> Option<Summary> {
        if self.total == 0 {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Summary {
            count: self.total,
            min: ms(self.min),
            mean: self.sum as f64 / self.total as f64 / 1000.0,
            p50: ms(self.quantile(0.50)),
            p90: ms(self.quantile(0.90)),
            p99: ms(self.quantile(0.99)),
            max: ms(self.max),
        })
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= last, "{v}");
            last = i;
            let mid = value_of(i) as f64;
            assert!(
                (mid - v as f64).abs() <= v as f64 * 0.016 + 0.5,
                "{v} -> {mid}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_run() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 100);
        }
        let s = h.summary_ms().unwrap_or_else(|| unreachable!());
        assert_eq!(s.count, 10_000);
        assert!((s.p50 - 500.0).abs() < 8.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 16.0, "{s:?}");
        assert_eq!(s.max, 1000.0);
        assert_eq!(s.min, 0.1);
        let mut other = Histogram::default();
        other.record(5_000_000);
        h.merge(&other);
        assert_eq!(h.quantile(1.0), 5_000_000);
        assert!(Histogram::default().summary_ms().is_none());
    }
}
