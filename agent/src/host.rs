//! Facts about this machine (for `sessions` and `ingero check`) and
//! periodic samples of node-wide resource use (`system_snapshots`), all
//! read from `/proc` and `/etc`.

use crate::store::writer::SystemSnapshot;

/// Static facts recorded once per session.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostFacts {
    /// The machine's host name.
    pub hostname: String,
    /// Kernel release (`/proc/sys/kernel/osrelease`, as `uname -r`).
    pub kernel: String,
    /// Distribution name: `PRETTY_NAME` of `/etc/os-release`, empty if absent.
    pub os_release: String,
    /// CPU model name: the first `model name` of `/proc/cpuinfo`, empty if absent.
    pub cpu_model: String,
    /// CPUs available to this process (at least 1).
    pub cpu_cores: i64,
    /// Total memory (`MemTotal`) in MiB; 0 if unreadable.
    pub mem_total_mb: i64,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Value of `key:` in a `/proc/meminfo`-style text, first number only.
fn field_u64(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Reads this machine's facts; a fact that cannot be read is left empty (or 0).
#[must_use]
pub fn facts() -> HostFacts {
    let cpuinfo = read("/proc/cpuinfo");
    let os = read("/etc/os-release");
    HostFacts {
        hostname: crate::config::hostname(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        os_release: os
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default(),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default(),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
        mem_total_mb: field_u64(&read("/proc/meminfo"), "MemTotal").map_or(0, |kb| (kb / 1024) as i64),
    }
}

/// Turns successive readings of `/proc` counters into snapshots.
#[derive(Debug, Default)]
pub struct SnapshotSampler {
    /// (busy, total) jiffies of the previous reading.
    cpu: Option<(u64, u64)>,
    /// (pswpin, pswpout) of the previous reading.
    swap: Option<(u64, u64)>,
}

impl SnapshotSampler {
    /// A snapshot stamped `timestamp`; rates are since the previous call.
    pub fn sample(&mut self, timestamp: i64) -> SystemSnapshot {
        let stat = read("/proc/stat");
        let cpu_now = stat.lines().next().map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total.saturating_sub(idle), total)
        });
        let cpu_pct = match (self.cpu, cpu_now) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        };
        self.cpu = cpu_now;

        let mem = read("/proc/meminfo");
        let total = field_u64(&mem, "MemTotal").unwrap_or(0);
        let avail = field_u64(&mem, "MemAvailable").unwrap_or(0);
        let swap_used = field_u64(&mem, "SwapTotal")
            .unwrap_or(0)
            .saturating_sub(field_u64(&mem, "SwapFree").unwrap_or(0));

        let vmstat = read("/proc/vmstat");
        let vm = |k: &str| {
            vmstat
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let swap_now = (vm("pswpin"), vm("pswpout"));
        let (swap_in, swap_out) = self.swap.map_or((0, 0), |(i, o)| {
            (swap_now.0.saturating_sub(i), swap_now.1.saturating_sub(o))
        });
        self.swap = Some(swap_now);

        SystemSnapshot {
            timestamp,
            cpu_pct,
            mem_pct: if total > 0 {
                100.0 * (total - avail.min(total)) as f64 / total as f64
            } else {
                0.0
            },
            mem_avail_mb: (avail / 1024) as i64,
            swap_mb: (swap_used / 1024) as i64,
            load_avg: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            swap_in: swap_in as i64,
            swap_out: swap_out as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_describe_this_machine() {
        let f = facts();
        assert!(!f.kernel.is_empty());
        assert!(f.cpu_cores >= 1);
        assert!(f.mem_total_mb > 0);
    }

    #[test]
    fn snapshots_measure_cpu_between_samples() {
        let mut s = SnapshotSampler::default();
        let first = s.sample(1);
        assert!(first.cpu_pct.abs() < f64::EPSILON, "no rate on the first sample");
        let end = std::time::Instant::now() + std::time::Duration::from_millis(60);
        while std::time::Instant::now() < end {
            std::hint::black_box(0);
        }
        let second = s.sample(2);
        assert!(second.cpu_pct > 0.0, "a busy loop shows as CPU use");
        assert!(second.mem_pct > 0.0 && second.mem_pct <= 100.0);
    }

    #[test]
    fn meminfo_fields_parse() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(field_u64(text, "MemTotal"), Some(24_000_000));
        assert_eq!(field_u64(text, "MemAvailable"), Some(12_000_000));
        assert_eq!(field_u64(text, "Mem"), None);
    }
}
