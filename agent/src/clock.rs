//! Kernel timestamps to wall-clock time.
//!
//! eBPF timestamps are `CLOCK_MONOTONIC`; the store keeps Unix nanoseconds.
//! The offset `REALTIME - MONOTONIC` is sampled as mono/real/mono, keeping
//! the tightest of several tries, and re-sampled periodically during a run
//! because NTP steps and slews move `CLOCK_REALTIME`.

use std::time::{Duration, Instant};

/// How often the offset is re-sampled.
pub const RESAMPLE_EVERY: Duration = Duration::from_secs(10);

fn now(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; the clocks used always exist.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// `CLOCK_MONOTONIC` now, in ns: the eBPF programs' time base.
#[must_use]
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC) as u64
}

/// `CLOCK_REALTIME` now, in Unix ns.
#[must_use]
pub fn unix_ns() -> i64 {
    now(libc::CLOCK_REALTIME)
}

/// Samples `REALTIME - MONOTONIC`, returning (offset, uncertainty) in ns.
#[must_use]
pub fn sample_offset() -> (i64, i64) {
    (0..7)
        .map(|_| {
            let m1 = now(libc::CLOCK_MONOTONIC);
            let r = now(libc::CLOCK_REALTIME);
            let m2 = now(libc::CLOCK_MONOTONIC);
            (r - (m1 + (m2 - m1) / 2), m2 - m1)
        })
        .min_by_key(|(_, spread)| *spread)
        .unwrap_or((0, i64::MAX))
}

/// Converts monotonic timestamps to Unix ns with a periodically refreshed
/// offset.
#[derive(Debug)]
pub struct WallClock {
    offset_ns: i64,
    sampled: Instant,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl WallClock {
    /// A converter with the offset sampled now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            offset_ns: sample_offset().0,
            sampled: Instant::now(),
        }
    }

    /// Re-samples the offset if it is older than [`RESAMPLE_EVERY`].
    pub fn refresh(&mut self) {
        if self.sampled.elapsed() >= RESAMPLE_EVERY {
            self.offset_ns = sample_offset().0;
            self.sampled = Instant::now();
        }
    }

    /// The current `REALTIME - MONOTONIC` offset in ns: add it to a monotonic
    /// timestamp to get Unix ns.
    #[must_use]
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns
    }

    /// A `CLOCK_MONOTONIC` timestamp (ns, as the eBPF programs stamp events)
    /// as Unix ns, with the current offset.
    #[must_use]
    pub fn to_unix(&self, monotonic_ns: u64) -> i64 {
        monotonic_ns as i64 + self.offset_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_monotonic_time_matches_the_wall_clock() {
        let clock = WallClock::new();
        let converted = clock.to_unix(monotonic_ns());
        let wall = unix_ns();
        assert!(
            (wall - converted).abs() < 1_000_000,
            "off by {} ns",
            wall - converted
        );
    }

    #[test]
    fn offset_is_sampled_tightly() {
        let (_, spread) = sample_offset();
        assert!(spread < 100_000, "mono/real/mono spread {spread} ns");
    }
}
