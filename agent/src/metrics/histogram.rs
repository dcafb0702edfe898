//! A fixed-bucket latency histogram in integer nanoseconds.
//!
//! The bucket upper bounds are powers of two microseconds, from 1 µs
//! (2^0) to 8.388608 s (2^23), plus the implicit `+Inf`: 24 finite bounds,
//! so any estimate read from them (Prometheus' `histogram_quantile`) is
//! within a factor of two of the true value between 1 µs and 8 s. CUDA
//! calls range from a sub-microsecond launch to a multi-second
//! synchronize; block I/O requests from tens of microseconds to seconds,
//! so one set of bounds serves both.
//!
//! Invariants: a value lands in the first bucket whose bound is `>=` it
//! (Prometheus' `le`), computed with integer arithmetic only, so the
//! database path and the live path put the same duration in the same
//! bucket; counts are per bucket (not cumulative) and the exposition makes
//! them cumulative.

/// Number of finite bucket bounds.
pub const BUCKETS: usize = 24;

/// Upper bound of finite bucket `i`, in nanoseconds: `1 µs << i`.
#[must_use]
pub const fn bound_ns(i: usize) -> u64 {
    1_000 << i
}

/// Index of the bucket holding `ns`: the first `i` with
/// `ns <= bound_ns(i)`, or [`BUCKETS`] for the `+Inf` bucket.
#[must_use]
pub fn bucket_of(ns: u64) -> usize {
    // ns <= 1000 * 2^i  <=>  ceil(ns / 1000) <= 2^i (2^i is an integer).
    let micros = ns.div_ceil(1_000);
    let i = if micros <= 1 {
        0
    } else {
        (u64::BITS - (micros - 1).leading_zeros()) as usize
    };
    i.min(BUCKETS)
}

/// Counts per bucket, their total and the sum of the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Values per bucket; the last one is `+Inf` (above every bound).
    pub counts: [u64; BUCKETS + 1],
    /// Values observed.
    pub count: u64,
    /// Sum of the values, nanoseconds (saturates rather than wraps).
    pub sum_ns: u64,
}

impl Histogram {
    /// Adds one value.
    pub fn observe(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Cumulative counts (`le` buckets), the last being `+Inf` (= `count`).
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().scan(0u64, |acc, c| {
            *acc += c;
            Some(*acc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(ns: u64) -> usize {
        (0..BUCKETS).find(|&i| ns <= bound_ns(i)).unwrap_or(BUCKETS)
    }

    #[test]
    fn buckets_match_the_definition_at_and_around_every_bound() {
        let mut probes = vec![0, 1, 999, 1_000, 1_001, u64::MAX];
        for i in 0..BUCKETS {
            let b = bound_ns(i);
            probes.extend([b - 1, b, b + 1]);
        }
        for ns in probes {
            assert_eq!(bucket_of(ns), linear(ns), "{ns} ns");
        }
        assert_eq!(
            bound_ns(BUCKETS - 1),
            8_388_608_000,
            "the last bound is about 8 s"
        );
    }

    #[test]
    fn cumulative_counts_end_at_the_total() {
        let mut h = Histogram::default();
        for ns in [500, 1_500, 1_600, 20_000_000_000] {
            h.observe(ns);
        }
        let c: Vec<u64> = h.cumulative().collect();
        assert_eq!(c[0], 1, "<= 1 us");
        assert_eq!(c[1], 3, "<= 2 us");
        assert_eq!(c[BUCKETS - 1], 3, "20 s is above every bound");
        assert_eq!(c[BUCKETS], 4);
        assert_eq!((h.count, h.sum_ns), (4, 20_000_003_600));
    }
}
