//! Duration statistics of CUDA operations, and which calls of an
//! operation are comparable with each other.
//!
//! Percentiles are nearest-rank over the sorted durations (a recorded
//! value, never an interpolation), so p50/p95/p99 are durations of real
//! calls. Copies and allocations are compared within their most common
//! size class (a power of two, [`comparable`]): a few large copies among
//! many small ones are not a latency tail. [`OpStats`] is serialised as is
//! into reports (`ops`).

use std::collections::HashMap;

use super::dataset::Call;

/// Duration statistics of one operation.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct OpStats {
    /// Source of the operation (`events.source`: CUDA runtime or driver).
    pub source: u8,
    /// Operation within its source (`events.op`).
    pub op: u8,
    /// Display name of the operation (`cudaMemcpy`, `cuLaunchKernel`).
    pub name: String,
    /// Calls measured.
    pub count: usize,
    /// Median call duration, ns.
    pub p50_ns: i64,
    /// 95th-percentile call duration, ns.
    pub p95_ns: i64,
    /// 99th-percentile call duration, ns.
    pub p99_ns: i64,
    /// Longest call, ns.
    pub max_ns: i64,
    /// Time in the calls altogether, ns.
    pub total_ns: i64,
}

impl OpStats {
    /// p99 over p50, the size of the tail; 0 when the p50 is 0.
    #[must_use]
    pub fn tail_ratio(&self) -> f64 {
        if self.p50_ns > 0 {
            self.p99_ns as f64 / self.p50_ns as f64
        } else {
            0.0
        }
    }
}

/// Nearest-rank percentile of sorted values.
#[must_use]
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Duration statistics of the `calls` of one operation.
#[must_use]
pub fn op_stats(src: u8, op: u8, name: &str, calls: &[Call]) -> OpStats {
    let mut d: Vec<i64> = calls.iter().map(Call::duration).collect();
    d.sort_unstable();
    OpStats {
        source: src,
        op,
        name: name.to_owned(),
        count: d.len(),
        p50_ns: percentile(&d, 50.0),
        p95_ns: percentile(&d, 95.0),
        p99_ns: percentile(&d, 99.0),
        max_ns: d.last().copied().unwrap_or(0),
        total_ns: d.iter().sum(),
    }
}

/// The calls comparable with each other: for sized operations, those in
/// the most common power-of-two size class (and that class's lower bound).
#[must_use]
pub fn comparable(calls: &[Call]) -> (Vec<Call>, Option<u64>) {
    if calls.iter().all(|c| c.bytes == 0) {
        return (calls.to_vec(), None);
    }
    let class = |b: u64| 64 - b.leading_zeros();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for c in calls {
        *counts.entry(class(c.bytes)).or_default() += 1;
    }
    let modal = counts
        .into_iter()
        .max_by_key(|(k, n)| (*n, *k))
        .map_or(0, |(k, _)| k);
    let same: Vec<Call> = calls
        .iter()
        .copied()
        .filter(|c| class(c.bytes) == modal)
        .collect();
    (same, Some(if modal == 0 { 0 } else { 1u64 << (modal - 1) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
