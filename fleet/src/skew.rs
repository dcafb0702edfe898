//! Clock offset of an agent relative to this machine, NTP style.
//!
//! One exchange gives four times: we send at `t0`, the agent receives at
//! `t1` and answers at `t2` (its clock), we receive at `t3` (ours). With
//! the agent's clock ahead of ours by `o` and one-way delays `d1, d2 >= 0`:
//! `t1 = t0 + d1 + o` and `t3 = t2 - o + d2`, so whatever the delays,
//! `t2 - t3 <= o <= t1 - t0`. That interval is `theta ± delta/2`, with
//! `theta` the classic NTP offset and `delta` the round trip minus the
//! agent's own time: half the round trip is the error bound.
//!
//! Several exchanges are made; the ones with the lowest round trips are the
//! least disturbed, so the estimate intersects their intervals (each holds
//! the true offset, so their intersection does too, and it is never wider
//! than the best one). If the intervals do not meet (a clock stepped
//! between exchanges), the single lowest-delay exchange is used.
//!
//! Invariant (property-tested): with non-negative delays and a steady
//! clock, the true offset lies within `offset_ns ± error_ns`, and
//! `error_ns` is at most half the lowest round trip.

use serde::Serialize;

use crate::client::TimeSample;

/// An agent's clock offset: its clock minus ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockEstimate {
    /// The agent's clock minus ours, ns (positive: the agent is ahead).
    pub offset_ns: i64,
    /// The true offset is within `offset_ns ± error_ns`.
    pub error_ns: i64,
    /// Lowest round trip seen (excluding the agent's own time), ns.
    pub min_delay_ns: i64,
    /// Exchanges made (the successful ones).
    pub samples: usize,
    /// How many of them the estimate rests on: the lowest-delay half, or 1
    /// when their intervals did not meet.
    pub used: usize,
}

impl TimeSample {
    /// Round trip minus the agent's own time.
    #[must_use]
    pub fn delay(&self) -> i64 {
        ((self.t3 - self.t0) - (self.t2 - self.t1)).max(0)
    }

    /// The interval that holds the offset: `[t2 - t3, t1 - t0]`.
    #[must_use]
    pub fn bounds(&self) -> (i64, i64) {
        let (lo, hi) = (self.t2 - self.t3, self.t1 - self.t0);
        // lo > hi would need a negative delay (the agent's own time longer
        // than our round trip), which steady clocks cannot give; keep the
        // interval well-formed anyway.
        if lo <= hi { (lo, hi) } else { (hi, lo) }
    }
}

/// The share of exchanges (lowest round trips first) the estimate uses.
const KEEP_FRACTION: f64 = 0.5;

/// The offset from a set of exchanges; `None` without any.
#[must_use]
pub fn estimate(samples: &[TimeSample]) -> Option<ClockEstimate> {
    let mut by_delay: Vec<&TimeSample> = samples.iter().collect();
    by_delay.sort_by_key(|s| s.delay());
    let best = *by_delay.first()?;
    let keep = ((samples.len() as f64 * KEEP_FRACTION).ceil() as usize).max(1);
    let kept = &by_delay[..keep];
    let lo = kept.iter().map(|s| s.bounds().0).max()?;
    let hi = kept.iter().map(|s| s.bounds().1).min()?;
    let (lo, hi, used) = if lo <= hi {
        (lo, hi, keep)
    } else {
        let (l, h) = best.bounds();
        (l, h, 1)
    };
    Some(ClockEstimate {
        // Midpoint without overflow.
        offset_ns: lo + (hi - lo) / 2,
        error_ns: (hi - lo + 1) / 2,
        min_delay_ns: best.delay(),
        samples: samples.len(),
        used,
    })
}

/// `+1.25 s`, `-340 µs`: an offset for people.
#[must_use]
pub fn format_offset(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    let a = ns.unsigned_abs() as f64;
    if a >= 1e9 {
        format!("{sign}{:.2} s", a / 1e9)
    } else if a >= 1e6 {
        format!("{sign}{:.1} ms", a / 1e6)
    } else {
        format!("{sign}{:.0} µs", a / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One exchange with true offset `o`, delays `d1`, `d2` and agent time `s`.
    fn exchange(t0: i64, o: i64, d1: i64, d2: i64, s: i64) -> TimeSample {
        let t1 = t0 + d1 + o;
        let t2 = t1 + s;
        TimeSample {
            t0,
            t1,
            t2,
            t3: t2 - o + d2,
        }
    }

    #[test]
    fn symmetric_delays_give_the_exact_offset() {
        let e = estimate(&[exchange(1_000, 250_000, 40, 40, 10)]).expect("one sample");
        assert_eq!(e.offset_ns, 250_000);
        assert_eq!(e.error_ns, 40);
        assert_eq!(e.min_delay_ns, 80);
    }

    #[test]
    fn lowest_delay_exchanges_bound_the_estimate() {
        // One exchange crossed a congested link one way: its midpoint is
        // off by 5 ms, but the quiet ones pin the offset.
        let samples = [
            exchange(0, -2_000_000, 10_000_000, 50_000, 20_000),
            exchange(20_000_000, -2_000_000, 60_000, 40_000, 20_000),
            exchange(40_000_000, -2_000_000, 45_000, 55_000, 20_000),
            exchange(60_000_000, -2_000_000, 50_000, 52_000, 20_000),
        ];
        let e = estimate(&samples).expect("samples");
        assert!((e.offset_ns + 2_000_000).abs() <= e.error_ns, "{e:?}");
        assert!(e.error_ns <= 50_000, "{e:?}");
        assert_eq!(e.used, 2);
    }

    #[test]
    fn a_stepped_clock_falls_back_to_the_best_exchange() {
        let samples = [
            exchange(0, 0, 100, 100, 10),
            exchange(1_000_000, 5_000_000, 300, 300, 10),
        ];
        let e = estimate(&samples).expect("samples");
        assert_eq!((e.offset_ns, e.error_ns, e.used), (0, 100, 1));
        assert_eq!(estimate(&[]), None);
    }

    #[test]
    fn offsets_read_like_a_person_would_write_them() {
        assert_eq!(format_offset(1_250_000_000), "+1.25 s");
        assert_eq!(format_offset(-340_000), "-340 µs");
        assert_eq!(format_offset(12_300_000), "+12.3 ms");
    }

    proptest! {
        #[test]
        fn the_true_offset_is_always_within_the_bound(
            o in -10_000_000_000i64..10_000_000_000,
            exchanges in prop::collection::vec((0i64..50_000_000, 0i64..50_000_000, 0i64..5_000_000), 1..12),
        ) {
            let mut t0 = 1_700_000_000_000_000_000i64;
            let samples: Vec<TimeSample> = exchanges
                .iter()
                .map(|&(d1, d2, s)| {
                    let x = exchange(t0, o, d1, d2, s);
                    t0 = x.t3 + 1_000;
                    x
                })
                .collect();
            let e = estimate(&samples).expect("at least one sample");
            prop_assert!((e.offset_ns - o).abs() <= e.error_ns, "{:?} vs {}", e, o);
            let best = samples.iter().map(TimeSample::delay).min().unwrap_or(0);
            prop_assert!(e.error_ns <= best / 2 + 1, "{:?}, best delay {}", e, best);
        }
    }
}
