//! Evidence of the causes the rules can name, and how strongly each is
//! present.
//!
//! [`evidence`] gathers node-wide facts over a window (preemptions, block
//! requests, page allocations, swap, OOM kills). Over a node's whole window
//! it is computed once ([`super::explain`]) and handed to the rules and to
//! the report. Its JSON shape is an interface: the `evidence` of `/api/v1/ops` and of `ingero explain
//! --json`, which the fleet's straggler comparison reads (`cpu.preempted_ns`,
//! `io.busy_ns`, `io.write_bytes`, `mem.alloc_bytes`, ...). Rename no field.
//!
//! [`strengths`] turns evidence into a strength in [0, 1] per [`Cause`] for
//! a latency tail, measured against the op's slow calls (see
//! [`super::rules`]):
//!
//! - *CPU contention* (direct evidence only): the share of slow calls
//!   during which their own thread was switched out while still runnable
//!   (preempted), or the share of the slow calls' time during which threads
//!   of the calling process were preempted (a synchronize waits on other
//!   threads), whichever is larger. Needs at least [`MIN_PREEMPTIONS`]
//!   preemptions. The preempting tasks are named by their share of the
//!   preempted time ([`super::attribution`]; `top_preemptors` here counts
//!   preemptions, for the API). Off-CPU time spent *waiting* (a peer's
//!   all-reduce, a sleep) is not contention.
//! - *Block I/O*: the share of slow calls that overlapped a request of the
//!   node's traced processes; volume alone (time in flight against
//!   [`IO_FULL_SHARE`] of the window, bytes against [`IO_FULL_BYTES`], peak
//!   latency against [`IO_FULL_PEAK_NS`]) counts at [`CONTEXT_WEIGHT`]. Needs
//!   at least [`MIN_IO_REQUESTS`] requests. Writes and reads get different
//!   fixes (checkpoints vs data loading).
//! - *Memory pressure*: OOM kills or swap activity (full strength), or
//!   page allocations by traced processes of at least [`MIN_MEM_BYTES`]
//!   (bytes against [`MEM_FULL_BYTES`], at [`CONTEXT_WEIGHT`]).
//!
//! The preemptions counted are those of the traced threads outside the
//! job's worker processes (children of traced processes that make no CUDA
//! call, see [`super::input`]): a DataLoader worker waiting for a CPU is
//! a figure of the input pipeline (`input`), not CPU contention of the
//! threads making CUDA calls.
//!
//! Preemption is split by who preempted: by a thread that issues block I/O
//! on the node (a checkpoint writer, say), or by a kernel I/O thread
//! (`kworker`, `jbd2`, `kblockd`, `ksoftirqd`) while the node has block I/O,
//! it is evidence of the I/O cause; by anything else, of CPU contention.
//! [`period_strengths`] rates a period (a throughput drop) by volume alone,
//! at full weight. A cause counts when its strength is at least
//! [`MIN_CAUSE_STRENGTH`] ([`Strengths::ranked`]).

use std::collections::{HashMap, HashSet};

use super::{
    dataset::{Call, NodeData},
    rules::{
        CONTEXT_WEIGHT, CPU_FULL_SHARE, IO_FULL_BYTES, IO_FULL_PEAK_NS, IO_FULL_SHARE, MEM_FULL_BYTES,
        MIN_CAUSE_STRENGTH, MIN_IO_REQUESTS, MIN_MEM_BYTES, MIN_PREEMPTIONS,
    },
    spans::{io_hit_share, preempted_share, union_ns},
};

/// A class of cause the rules can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// CPU contention: the calling threads, or other threads of their
    /// process, preempted while runnable by tasks that do no I/O work.
    Cpu,
    /// Block I/O on the node: requests overlapping the slow calls, I/O
    /// volume, or preemption by I/O issuers and kernel I/O threads.
    Io,
    /// Memory pressure: OOM kills, swap activity or heavy page allocation by
    /// traced processes.
    Memory,
}

pub use ingero_api::{CpuEvidence, Evidence, InputEvidence, IoEvidence, MemEvidence};

fn top<K: Copy + Eq + std::hash::Hash + Ord, V: Copy + Ord + std::ops::AddAssign + Default>(
    items: impl Iterator<Item = (K, V)>,
    n: usize,
) -> Vec<(K, V)> {
    let mut totals: HashMap<K, V> = HashMap::new();
    for (k, v) in items {
        *totals.entry(k).or_default() += v;
    }
    let mut v: Vec<(K, V)> = totals.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Evidence of each cause class between `from` and `to`.
#[must_use]
pub fn evidence(d: &NodeData, from: i64, to: i64) -> Evidence {
    let within = |s: i64, e: i64| e >= from && s <= to;
    // Worker processes waiting for a CPU are the input pipeline's business
    // (see `input`), not contention of the threads making CUDA calls.
    let workers = super::input::workers(d);
    let preempted: Vec<_> = d
        .off_cpu
        .iter()
        .filter(|o| o.preempted != Some(false) && within(o.start, o.end) && !workers.contains(&o.pid))
        .collect();
    let io: Vec<_> = d.io.iter().filter(|i| within(i.start, i.end)).collect();
    Evidence {
        cpu: CpuEvidence {
            preemptions: preempted.len(),
            preempted_ns: preempted.iter().map(|o| o.end.min(to) - o.start.max(from)).sum(),
            top_preemptors: top(
                preempted
                    .iter()
                    .filter(|o| o.preemptor != 0)
                    .map(|o| (o.preemptor, 1usize)),
                3,
            ),
        },
        io: IoEvidence {
            requests: io.len(),
            read_bytes: io.iter().filter(|i| !i.write).map(|i| i.bytes).sum(),
            write_bytes: io.iter().filter(|i| i.write).map(|i| i.bytes).sum(),
            busy_ns: union_ns(io.iter().map(|i| (i.start.max(from), i.end.min(to)))),
            peak_ns: io.iter().map(|i| i.end - i.start).max().unwrap_or(0),
            top_issuers: top(io.iter().map(|i| (i.tid, i.bytes)), 3),
        },
        mem: MemEvidence {
            alloc_bytes: d
                .page_allocs
                .iter()
                .filter(|p| p.ts >= from && p.ts <= to)
                .map(|p| p.bytes)
                .sum(),
            swap_pages: d
                .snapshots
                .iter()
                .filter(|s| s.ts >= from && s.ts <= to)
                .map(|s| s.swap_in + s.swap_out)
                .sum(),
            oom_kills: d.oom_kills.iter().filter(|k| k.ts >= from && k.ts <= to).count(),
        },
        input: super::input::evidence(d, from, to),
    }
}

/// How strongly each cause class is present, in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Strengths {
    /// Strength of CPU contention.
    pub cpu: f64,
    /// Strength of block I/O.
    pub io: f64,
    /// Strength of memory pressure.
    pub mem: f64,
}

impl Strengths {
    /// The strength of the strongest cause, whether or not it counts.
    #[must_use]
    pub fn max(&self) -> f64 {
        self.cpu.max(self.io).max(self.mem)
    }

    /// The strength of one cause.
    #[must_use]
    pub fn of(&self, cause: Cause) -> f64 {
        match cause {
            Cause::Cpu => self.cpu,
            Cause::Io => self.io,
            Cause::Memory => self.mem,
        }
    }

    /// The causes present, strongest first; ties go to the more specific
    /// class (memory, then I/O, then CPU): they often explain why the CPU
    /// was busy.
    #[must_use]
    pub fn ranked(&self) -> Vec<(Cause, f64)> {
        let mut v: Vec<(Cause, f64)> = [Cause::Memory, Cause::Io, Cause::Cpu]
            .into_iter()
            .map(|c| (c, self.of(c)))
            .filter(|(_, x)| *x >= MIN_CAUSE_STRENGTH)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// Strength of I/O volume alone over `period_ns`, in [0, 1].
fn io_volume(e: &IoEvidence, period_ns: i64) -> f64 {
    [
        (e.busy_ns as f64 / period_ns.max(1) as f64 / IO_FULL_SHARE).min(1.0),
        ((e.read_bytes + e.write_bytes) as f64 / IO_FULL_BYTES as f64).min(1.0),
        (e.peak_ns as f64 / IO_FULL_PEAK_NS as f64).min(1.0),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

/// Strength of memory evidence, in [0, 1].
fn mem_volume(e: &MemEvidence) -> f64 {
    if e.oom_kills > 0 || e.swap_pages > 0 {
        1.0
    } else if e.alloc_bytes >= MIN_MEM_BYTES {
        (e.alloc_bytes as f64 / MEM_FULL_BYTES as f64).min(1.0)
    } else {
        0.0
    }
}

/// Kernel threads that do block and filesystem I/O work.
const KERNEL_IO_THREADS: &[&str] = &["kworker", "jbd2", "kblockd", "ksoftirqd"];

/// Tasks whose CPU use is I/O work: threads that issued block I/O on the
/// node, and kernel I/O threads when the node has block I/O.
pub(super) fn io_issuers(d: &NodeData) -> HashSet<u32> {
    let mut set: HashSet<u32> = d.io.iter().map(|i| i.tid).collect();
    if d.io.len() >= MIN_IO_REQUESTS {
        set.extend(
            d.names
                .iter()
                .filter(|(_, name)| KERNEL_IO_THREADS.iter().any(|k| name.starts_with(k)))
                .map(|(tid, _)| *tid),
        );
    }
    set
}

/// Cause strengths for a tail made of the `slow` calls.
#[must_use]
pub fn strengths(d: &NodeData, e: &Evidence, slow: &[Call], window_ns: i64) -> Strengths {
    let issuers = io_issuers(d);
    let cpu = if e.cpu.preemptions >= MIN_PREEMPTIONS {
        preempted_share(d, slow, &|t| !issuers.contains(&t))
    } else {
        0.0
    };
    let io = if e.io.requests >= MIN_IO_REQUESTS {
        io_hit_share(d, slow)
            .max(CONTEXT_WEIGHT * io_volume(&e.io, window_ns))
            .max(preempted_share(d, slow, &|t| issuers.contains(&t)))
    } else {
        0.0
    };
    let mem = mem_volume(&e.mem);
    Strengths {
        cpu,
        io,
        mem: if e.mem.oom_kills > 0 || e.mem.swap_pages > 0 {
            mem
        } else {
            CONTEXT_WEIGHT * mem
        },
    }
}

/// Cause strengths over a period (throughput drops): volumes at full weight.
#[must_use]
pub fn period_strengths(e: &Evidence, period_ns: i64) -> Strengths {
    Strengths {
        cpu: if e.cpu.preemptions >= MIN_PREEMPTIONS {
            (e.cpu.preempted_ns as f64 / period_ns.max(1) as f64 / CPU_FULL_SHARE).min(1.0)
        } else {
            0.0
        },
        io: if e.io.requests >= MIN_IO_REQUESTS {
            io_volume(&e.io, period_ns)
        } else {
            0.0
        },
        mem: mem_volume(&e.mem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_keeps_the_json_shape_the_fleet_reads() {
        let e = Evidence {
            cpu: CpuEvidence {
                preemptions: 1,
                preempted_ns: 2,
                top_preemptors: vec![(3, 4)],
            },
            io: IoEvidence {
                requests: 5,
                read_bytes: 6,
                write_bytes: 7,
                busy_ns: 8,
                peak_ns: 9,
                top_issuers: vec![(10, 11)],
            },
            mem: MemEvidence {
                alloc_bytes: 12,
                swap_pages: 13,
                oom_kills: 14,
            },
            input: InputEvidence {
                wait_ns: 15,
                workers: 16,
                ..InputEvidence::default()
            },
        };
        assert_eq!(
            serde_json::to_string(&e).expect("evidence serialises"),
            concat!(
                r#"{"cpu":{"preemptions":1,"preempted_ns":2,"top_preemptors":[[3,4]]},"#,
                r#""io":{"requests":5,"read_bytes":6,"write_bytes":7,"busy_ns":8,"peak_ns":9,"top_issuers":[[10,11]]},"#,
                r#""mem":{"alloc_bytes":12,"swap_pages":13,"oom_kills":14},"#,
                r#""input":{"pid":0,"tid":0,"wait_ns":15,"gaps":0,"gap_ns":0,"longest_gap_ns":0,"workers":16,"#,
                r#""worker_cpu_ns":0,"worker_runnable_ns":0,"worker_blocked_ns":0,"worker_busy_ns":0,"#,
                r#""own_read_ns":0,"reads":0,"read_bytes":0}}"#
            )
        );
    }

    #[test]
    #[expect(clippy::float_cmp, reason = "strengths are copied, not computed: exact")]
    fn causes_rank_strongest_first_and_ties_go_to_the_more_specific() {
        let s = Strengths {
            cpu: 0.5,
            io: 0.5,
            mem: 0.5,
        };
        assert_eq!(
            s.ranked(),
            vec![(Cause::Memory, 0.5), (Cause::Io, 0.5), (Cause::Cpu, 0.5)]
        );
        let s = Strengths {
            cpu: 0.9,
            io: 0.3,
            mem: MIN_CAUSE_STRENGTH / 2.0,
        };
        assert_eq!(s.ranked(), vec![(Cause::Cpu, 0.9), (Cause::Io, 0.3)]);
        assert_eq!(s.of(Cause::Io), 0.3);
    }
}
