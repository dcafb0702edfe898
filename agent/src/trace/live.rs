//! The one-line-per-second summary `ingero trace` prints on stderr.

use std::time::Duration;

use super::pipeline::SourceCounts;
use crate::units::format_count;

/// `[00:05] cuda 12/s  driver 3.4k/s  host 210/s  io 0/s | 18,221 stored | 0 dropped | 3 procs`
#[must_use]
pub fn summary_line(
    elapsed: Duration,
    per_sec: SourceCounts,
    stored: u64,
    dropped: u64,
    processes: usize,
) -> String {
    let secs = elapsed.as_secs();
    // NCCL shows once a process uses it: most single-GPU jobs never do.
    let nccl = if per_sec.nccl > 0 {
        format!("  nccl {}/s", format_count(per_sec.nccl as f64))
    } else {
        String::new()
    };
    format!(
        "[{:02}:{:02}] cuda {}/s  driver {}/s  host {}/s  io {}/s{nccl} | {} stored | {} dropped | {} traced process{}",
        secs / 60,
        secs % 60,
        format_count(per_sec.cuda as f64),
        format_count(per_sec.driver as f64),
        format_count(per_sec.host as f64),
        format_count(per_sec.io as f64),
        group_digits(stored),
        group_digits(dropped),
        processes,
        if processes == 1 { "" } else { "es" },
    )
}

/// `1234567` as `1,234,567`.
#[must_use]
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_rates_totals_and_drops() {
        let line = summary_line(
            Duration::from_secs(65),
            SourceCounts {
                cuda: 12,
                driver: 3400,
                host: 210,
                io: 0,
                nccl: 0,
            },
            18_221,
            0,
            3,
        );
        assert_eq!(
            line,
            "[01:05] cuda 12/s  driver 3.4k/s  host 210/s  io 0/s | 18,221 stored | 0 dropped | 3 traced processes"
        );
        assert_eq!(group_digits(1_000), "1,000");
        assert_eq!(group_digits(999), "999");
    }
}

/// Counters the tracer updates once a second (the metrics: with every batch), for whoever shows them
/// (the API's overview and metrics while tracing).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Events read per source: cuda, driver, host, io.
    pub events: [std::sync::atomic::AtomicU64; 4],
    /// Events committed to the database.
    pub committed: std::sync::atomic::AtomicU64,
    /// The session being recorded.
    pub session_id: std::sync::atomic::AtomicI64,
    /// Drop counters per probe, as the kernel counts them.
    pub drops: std::sync::Mutex<Vec<crate::store::writer::DropCount>>,
    /// The traced-work metrics, as the pipeline last published them
    /// (with every batch, not once a second).
    pub metrics: std::sync::Arc<crate::metrics::Published>,
}

impl LiveStats {
    /// Adds the last second's events and sets the committed count.
    pub fn publish(&self, counts: SourceCounts, committed: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        for (i, n) in [counts.cuda, counts.driver, counts.host, counts.io]
            .into_iter()
            .enumerate()
        {
            self.events[i].fetch_add(n, Relaxed);
        }
        self.committed.store(committed, Relaxed);
    }
}
