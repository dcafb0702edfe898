//! The rules that turn one node's events into causal chains.
//!
//! **Tail latency.** A CUDA runtime or driver operation with at least
//! [`MIN_SAMPLES`] calls whose p99 is at least [`TAIL_RATIO`] times its p50,
//! and at least [`MIN_TAIL_GAP_NS`] above it, has a tail. The tail is
//! explained only by causes seen in the same window, measured against the
//! op's slow calls: those at or above both its p95 and [`TAIL_RATIO`] times
//! its p50 (the outliers, however few):
//!
//! - *CPU contention* (direct evidence only): the share of slow calls
//!   during which their own thread was switched out while still runnable
//!   (preempted), or the share of the slow calls' time during which threads
//!   of the calling process were preempted (a synchronize waits on other
//!   threads), whichever is larger. Needs at least [`MIN_PREEMPTIONS`]
//!   preemptions. The preempting tasks are named. Off-CPU time spent
//!   *waiting* (a peer's all-reduce, a sleep) is not contention.
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
//! A cause counts when its strength is at least [`MIN_CAUSE_STRENGTH`].
//! Preemption is split by who preempted: by a thread that issues block I/O
//! on the node (a checkpoint writer, say), or by a kernel I/O thread
//! (`kworker`, `jbd2`, `kblockd`, `ksoftirqd`) while the node has block I/O,
//! it is evidence of the I/O cause; by anything else, of CPU contention.
//! Copies and allocations are compared within their most common size class
//! (a power of two): a few large copies among many small ones are not a
//! latency tail.
//!
//! **Throughput drop.** An op whose calls per second fall below
//! [`DROP_RATIO`] of its median rate for at least [`DROP_MIN_SECONDS`]
//! consecutive seconds (not counting its first and last second), while a
//! cause is present in those seconds. Not raised for ops with a tail chain.
//!
//! **OOM kill.** Any OOM kill on the node is a HIGH chain of its own.
//!
//! **Severity** combines the size of the effect and of the cause:
//! HIGH when p99/p50 is at least [`HIGH_RATIO`] and the strongest cause at
//! least [`STRONG_CAUSE`]; MEDIUM when one of the two holds together with a
//! weaker form of the other ([`MEDIUM_CAUSE`]); LOW otherwise. Within a
//! severity, chains are ordered by `ln(p99/p50) x cause strength`.

use std::collections::HashMap;

use agent_common::catalog::source;

use super::{
    chain::{Chain, Severity, TimelineEntry},
    dataset::{Call, NodeData, OffCpu},
};
use crate::units::format_ns;

pub const MIN_SAMPLES: usize = 20;
pub const TAIL_RATIO: f64 = 3.0;
pub const MIN_TAIL_GAP_NS: i64 = 50_000;
pub const HIGH_RATIO: f64 = 10.0;
pub const HIGH_IMPACT: f64 = 0.01;
pub const MEDIUM_IMPACT: f64 = 0.002;
pub const STRONG_CAUSE: f64 = 0.5;
pub const MEDIUM_CAUSE: f64 = 0.2;
pub const MIN_CAUSE_STRENGTH: f64 = 0.05;
pub const MIN_PREEMPTIONS: usize = 5;
pub const CPU_FULL_SHARE: f64 = 0.2;
pub const CONTEXT_WEIGHT: f64 = 0.4;
pub const MIN_IO_REQUESTS: usize = 5;
pub const IO_FULL_SHARE: f64 = 0.2;
pub const IO_FULL_BYTES: u64 = 1 << 30;
pub const IO_FULL_PEAK_NS: i64 = 50_000_000;
pub const MIN_MEM_BYTES: u64 = 1 << 30;
pub const MEM_FULL_BYTES: u64 = 4 << 30;
pub const DROP_RATIO: f64 = 0.6;
pub const DROP_MIN_SECONDS: usize = 2;

/// Duration statistics of one operation.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct OpStats {
    pub source: u8,
    pub op: u8,
    pub name: String,
    pub count: usize,
    pub p50_ns: i64,
    pub p95_ns: i64,
    pub p99_ns: i64,
    pub max_ns: i64,
    pub total_ns: i64,
}

impl OpStats {
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

/// Total length of the union of `[start, end]` spans sorted by start.
fn union_ns(spans: impl Iterator<Item = (i64, i64)>) -> i64 {
    let mut total = 0;
    let mut current: Option<(i64, i64)> = None;
    for (s, e) in spans {
        match current {
            Some((cs, ce)) if s <= ce => current = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                current = Some((s, e));
            }
            None => current = Some((s, e)),
        }
    }
    total + current.map_or(0, |(s, e)| e - s)
}

/// Spans sorted by start, answering "does any span overlap [s, e]?".
#[derive(Debug, Default)]
struct SpanIndex {
    starts: Vec<i64>,
    /// Latest end among the spans up to each position.
    max_end: Vec<i64>,
}

impl SpanIndex {
    fn new(mut spans: Vec<(i64, i64)>) -> Self {
        spans.sort_unstable();
        let mut max_end = Vec::with_capacity(spans.len());
        let mut m = i64::MIN;
        for (_, e) in &spans {
            m = m.max(*e);
            max_end.push(m);
        }
        Self {
            starts: spans.into_iter().map(|(s, _)| s).collect(),
            max_end,
        }
    }

    fn overlaps(&self, s: i64, e: i64) -> bool {
        let i = self.starts.partition_point(|start| *start <= e);
        i > 0 && self.max_end[i - 1] >= s
    }
}

/// Disjoint, sorted spans with prefix sums: how much of `[s, e]` they cover.
#[derive(Debug, Default)]
struct Coverage {
    starts: Vec<i64>,
    ends: Vec<i64>,
    /// Total length of the spans before each position.
    prefix: Vec<i64>,
}

impl Coverage {
    fn new(mut spans: Vec<(i64, i64)>) -> Self {
        spans.sort_unstable();
        let mut c = Self::default();
        for (s, e) in spans {
            match c.ends.last_mut() {
                Some(last) if s <= *last => *last = (*last).max(e),
                _ => {
                    c.starts.push(s);
                    c.ends.push(e);
                }
            }
        }
        let mut total = 0;
        c.prefix.push(0);
        for (s, e) in c.starts.iter().zip(&c.ends) {
            total += e - s;
            c.prefix.push(total);
        }
        c
    }

    fn covered(&self, s: i64, e: i64) -> i64 {
        let i = self.ends.partition_point(|end| *end <= s);
        let j = self.starts.partition_point(|start| *start < e);
        if i >= j {
            return 0;
        }
        let full = self.prefix[j] - self.prefix[i];
        full - (s - self.starts[i]).max(0) - (self.ends[j - 1] - e).max(0)
    }
}

/// Off-CPU spans where the task was preempted by a task `by` accepts,
/// grouped by `key` (the process or the thread).
fn preempted_spans(
    d: &NodeData,
    by: &dyn Fn(u32) -> bool,
    key: fn(&OffCpu) -> u32,
) -> HashMap<u32, Vec<(i64, i64)>> {
    let mut spans: HashMap<u32, Vec<(i64, i64)>> = HashMap::new();
    for o in d
        .off_cpu
        .iter()
        .filter(|o| o.preempted != Some(false) && by(o.preemptor))
    {
        spans.entry(key(o)).or_default().push((o.start, o.end));
    }
    spans
}

/// Share of the slow calls' time during which threads of the calling
/// process were preempted by a task `by` accepts.
fn process_preempted_share(d: &NodeData, slow: &[Call], by: &dyn Fn(u32) -> bool) -> f64 {
    let cover: HashMap<u32, Coverage> = preempted_spans(d, by, |o| o.pid)
        .into_iter()
        .map(|(p, v)| (p, Coverage::new(v)))
        .collect();
    let total: i64 = slow.iter().map(Call::duration).sum();
    let covered: i64 = slow
        .iter()
        .map(|c| {
            cover
                .get(&c.pid)
                .map_or(0, |cv| cv.covered(c.start, c.end).min(c.duration()))
        })
        .sum();
    if total > 0 {
        covered as f64 / total as f64
    } else {
        0.0
    }
}

/// The tasks that preempted the callers during the slow calls, most first.
fn slow_call_preemptors(d: &NodeData, slow: &[Call]) -> Vec<(u32, usize)> {
    let mut by_thread: HashMap<u32, Vec<(i64, i64, u32)>> = HashMap::new();
    for o in d
        .off_cpu
        .iter()
        .filter(|o| o.preempted != Some(false) && o.preemptor != 0)
    {
        by_thread
            .entry(o.tid)
            .or_default()
            .push((o.start, o.end, o.preemptor));
    }
    let mut hits = Vec::new();
    for c in slow {
        if let Some(spans) = by_thread.get(&c.tid) {
            let i = spans.partition_point(|(s, _, _)| *s <= c.end);
            hits.extend(
                spans[..i]
                    .iter()
                    .rev()
                    .take_while(|(_, e, _)| *e >= c.start)
                    .map(|(_, _, p)| (*p, 1usize)),
            );
        }
    }
    top(hits.into_iter(), 3)
}

/// Share of `slow` calls during which their own thread was preempted by
/// a task `by` accepts.
fn cpu_hit_share(d: &NodeData, slow: &[Call], by: &dyn Fn(u32) -> bool) -> f64 {
    let index: HashMap<u32, SpanIndex> = preempted_spans(d, by, |o| o.tid)
        .into_iter()
        .map(|(t, v)| (t, SpanIndex::new(v)))
        .collect();
    let hits = slow
        .iter()
        .filter(|c| index.get(&c.tid).is_some_and(|i| i.overlaps(c.start, c.end)))
        .count();
    share(hits, slow.len())
}

/// Share of `slow` calls that overlapped a block request of the node.
fn io_hit_share(d: &NodeData, slow: &[Call]) -> f64 {
    let index = SpanIndex::new(d.io.iter().map(|i| (i.start, i.end)).collect());
    share(
        slow.iter().filter(|c| index.overlaps(c.start, c.end)).count(),
        slow.len(),
    )
}

fn share(hits: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { hits as f64 / of as f64 }
}

pub use ingero_api::{CpuEvidence, Evidence, IoEvidence, MemEvidence};

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
    let preempted: Vec<_> = d
        .off_cpu
        .iter()
        .filter(|o| o.preempted != Some(false) && within(o.start, o.end))
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
    }
}

/// How strongly each cause class is present, in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Strengths {
    pub cpu: f64,
    pub io: f64,
    pub mem: f64,
}

impl Strengths {
    #[must_use]
    pub fn max(&self) -> f64 {
        self.cpu.max(self.io).max(self.mem)
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
fn io_issuers(d: &NodeData) -> std::collections::HashSet<u32> {
    let mut set: std::collections::HashSet<u32> = d.io.iter().map(|i| i.tid).collect();
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

/// Share of the slow calls during which the caller (or its process) was
/// preempted by a task `by` accepts.
fn preempted_share(d: &NodeData, slow: &[Call], by: &dyn Fn(u32) -> bool) -> f64 {
    cpu_hit_share(d, slow, by).max(process_preempted_share(d, slow, by))
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

#[must_use]
pub fn severity(tail_ratio: f64, cause: f64, impact: f64) -> Severity {
    if tail_ratio >= HIGH_RATIO && cause >= STRONG_CAUSE && impact >= HIGH_IMPACT {
        Severity::High
    } else if ((tail_ratio >= HIGH_RATIO && cause >= MEDIUM_CAUSE) || cause >= STRONG_CAUSE)
        && impact >= MEDIUM_IMPACT
    {
        Severity::Medium
    } else {
        Severity::Low
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The causes present, strongest first; ties go to the more specific
/// class (memory, then I/O, then CPU): they often explain why the CPU was
/// busy.
fn ranked_causes(s: Strengths) -> Vec<(&'static str, f64)> {
    let mut v: Vec<(&'static str, f64)> = [("mem", s.mem), ("io", s.io), ("cpu", s.cpu)]
        .into_iter()
        .filter(|(_, x)| *x >= MIN_CAUSE_STRENGTH)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// Words, timeline entry, root-cause sentence and fixes of one cause.
struct CauseText {
    phrase: String,
    timeline: TimelineEntry,
    root_cause: String,
    fixes: Vec<String>,
}

fn describe_cpu(d: &NodeData, e: &CpuEvidence, op_name: &str, hit_share: Option<f64>) -> CauseText {
    let preemptors = e.top_preemptors.clone();
    let who: Vec<String> = preemptors
        .iter()
        .map(|(pid, n)| format!("{} ({n}x)", d.task_name(*pid)))
        .collect();
    let by = if who.is_empty() {
        String::new()
    } else {
        format!("; preempted by {}", who.join(", "))
    };
    let hit = hit_share.map_or(String::new(), |h| {
        format!(
            "; the calling process was preempted during {:.0}% of the slowest {op_name} calls",
            h * 100.0
        )
    });
    let names: Vec<String> = preemptors.iter().map(|(pid, _)| d.task_name(*pid)).collect();
    let mut fixes = vec![
        "Pin the training processes to dedicated cores (taskset -c / numactl --physcpubind) and keep other work off them".to_owned(),
    ];
    if !names.is_empty() {
        fixes.push(format!(
            "Move or renice the preempting tasks: renice +19 -p {}",
            pid_list(&preemptors)
        ));
    }
    fixes.push(
        "Leave cores free for the CUDA launch threads: fewer DataLoader workers than spare cores".to_owned(),
    );
    CauseText {
        phrase: format!("{} sched_switch events", e.preemptions),
        timeline: TimelineEntry {
            layer: "HOST".into(),
            op: "sched_switch".into(),
            detail: format!(
                "{} preemptions of the calling threads, {} runnable but off-CPU{hit}{by}",
                e.preemptions,
                format_ns(e.preempted_ns as f64)
            ),
            dur_us: e.preempted_ns / 1000,
        },
        root_cause: format!(
            "CPU contention: threads making CUDA calls were preempted {} times ({} runnable but off-CPU){}",
            e.preemptions,
            format_ns(e.preempted_ns as f64),
            if names.is_empty() {
                String::new()
            } else {
                format!(", mostly by {}", names.join(", "))
            }
        ),
        fixes,
    }
}

/// The fixes of the two strongest causes, at most five.
fn fixes(texts: &[CauseText]) -> Vec<String> {
    texts
        .iter()
        .take(2)
        .flat_map(|t| t.fixes.iter().take(3).cloned())
        .take(5)
        .collect()
}

/// `4 B`, `64 KiB`, `256 MiB`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn pid_list(items: &[(u32, usize)]) -> String {
    items
        .iter()
        .map(|(p, _)| p.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe_io(d: &NodeData, e: &IoEvidence, strength: f64, preempting: Option<(&str, f64)>) -> CauseText {
    let writes = e.write_bytes >= e.read_bytes;
    let who: Vec<String> = e
        .top_issuers
        .iter()
        .map(|(pid, b)| format!("{} ({})", d.task_name(*pid), mib(*b)))
        .collect();
    let fixes = if writes {
        vec![
            "Checkpoint asynchronously (e.g. torch.distributed.checkpoint.async_save) or less often"
                .to_owned(),
            "Write checkpoints to a separate local NVMe disk, or stage them in /dev/shm and copy out of band"
                .to_owned(),
            "Lower the writer's I/O and CPU priority: ionice -c3, nice -n 19".to_owned(),
        ]
    } else {
        vec![
            "Pre-load or cache the dataset in /dev/shm or on local NVMe".to_owned(),
            "Raise DataLoader prefetch_factor / num_workers so reads overlap compute".to_owned(),
            "Read larger sequential chunks (sharded, streaming formats)".to_owned(),
        ]
    };
    CauseText {
        phrase: if strength >= STRONG_CAUSE {
            "heavy block I/O".into()
        } else {
            "block I/O".into()
        },
        timeline: TimelineEntry {
            layer: "IO".into(),
            op: format!("block_{}", if writes { "write" } else { "read" }),
            detail: format!(
                "{} requests, {} written, {} read, {} in flight, peak {}{}",
                e.requests,
                mib(e.write_bytes),
                mib(e.read_bytes),
                format_ns(e.busy_ns as f64),
                format_ns(e.peak_ns as f64),
                if who.is_empty() {
                    String::new()
                } else {
                    format!("; by {}", who.join(", "))
                }
            ),
            dur_us: e.busy_ns / 1000,
        },
        root_cause: format!(
            "Block I/O: {} {} ({}, peak {}) during the slow calls{}{}",
            e.requests,
            if writes {
                "write requests (checkpoint-like)"
            } else {
                "read requests (data loading)"
            },
            mib(e.write_bytes + e.read_bytes),
            format_ns(e.peak_ns as f64),
            if who.is_empty() {
                String::new()
            } else {
                format!(", from {}", who.join(", "))
            },
            preempting.map_or(String::new(), |(op, share)| format!(
                "; the I/O thread also preempted the callers during {:.0}% of the slowest {op} calls",
                share * 100.0
            ))
        ),
        fixes,
    }
}

fn describe_mem(e: &MemEvidence) -> CauseText {
    let mut parts = vec![format!("{} of page allocations", mib(e.alloc_bytes))];
    if e.swap_pages > 0 {
        parts.push(format!("{} pages swapped", e.swap_pages));
    }
    if e.oom_kills > 0 {
        parts.push(format!("{} OOM kill(s)", e.oom_kills));
    }
    CauseText {
        phrase: "memory pressure".into(),
        timeline: TimelineEntry {
            layer: "MEM".into(),
            op: "mm_page_alloc".into(),
            detail: parts.join(", "),
            dur_us: 0,
        },
        root_cause: format!("Memory pressure: {} by the traced processes", parts.join(", ")),
        fixes: vec![
            "Reuse host buffers (pinned memory pools) instead of allocating per step".to_owned(),
            "Lower DataLoader prefetch_factor / num_workers to cut host memory churn".to_owned(),
            "Keep headroom: no swap on training nodes; find other memory-heavy processes".to_owned(),
        ],
    }
}

fn layer_of(src: u8) -> &'static str {
    if src == source::DRIVER { "DRIVER" } else { "CUDA" }
}

/// Chains of one node, most severe first.
#[must_use]
pub fn chains(
    d: &NodeData,
    names: &HashMap<(u8, u8), String>,
    detected_at: i64,
) -> (Vec<Chain>, Vec<OpStats>) {
    let window_ns = (d.window.to - d.window.from).max(1);
    let node_evidence = evidence(d, d.window.from, d.window.to);
    let mut stats = Vec::new();
    let mut out = Vec::new();
    let mut tail_ops = Vec::new();
    for (&(src, op), all_calls) in &d.calls {
        let name = super::dataset::op_name(names, src, op);
        stats.push(op_stats(src, op, &name, all_calls));
        let (calls, size_class) = comparable(all_calls);
        let calls = &calls;
        let s = op_stats(src, op, &name, calls);
        let ratio = s.tail_ratio();
        if s.count < MIN_SAMPLES || ratio < TAIL_RATIO || s.p99_ns - s.p50_ns < MIN_TAIL_GAP_NS {
            continue;
        }
        let threshold = s.p95_ns.max((TAIL_RATIO * s.p50_ns as f64) as i64);
        let slow: Vec<Call> = calls
            .iter()
            .copied()
            .filter(|c| c.duration() >= threshold)
            .collect();
        let strength = strengths(d, &node_evidence, &slow, window_ns);
        let direct = slow_call_preemptors(d, &slow);
        let issuers = io_issuers(d);
        let io_preemption = preempted_share(d, &slow, &|t| issuers.contains(&t));
        let causes = ranked_causes(strength);
        if causes.is_empty() {
            continue;
        }
        tail_ops.push((src, op));
        let cpu_hit = Some(preempted_share(d, &slow, &|t| !issuers.contains(&t)));
        let mut cpu_evidence = node_evidence.cpu.clone();
        let foreign: Vec<(u32, usize)> = direct.into_iter().filter(|(t, _)| !issuers.contains(t)).collect();
        if !foreign.is_empty() {
            cpu_evidence.top_preemptors = foreign;
        }
        let texts: Vec<CauseText> = causes
            .iter()
            .map(|(class, st)| match *class {
                "cpu" => describe_cpu(d, &cpu_evidence, &name, cpu_hit),
                "io" => describe_io(
                    d,
                    &node_evidence.io,
                    *st,
                    (io_preemption >= MIN_CAUSE_STRENGTH).then_some((name.as_str(), io_preemption)),
                ),
                _ => describe_mem(&node_evidence.mem),
            })
            .collect();
        let excess: i64 = slow.iter().map(|c| (c.duration() - s.p50_ns).max(0)).sum();
        let span = calls.iter().map(|c| c.end).max().unwrap_or(0) - calls.first().map_or(0, |c| c.start);
        let impact = excess as f64 / span.max(1) as f64;
        let sev = severity(ratio, strength.max(), impact);
        let sized = size_class.map_or(String::new(), |b| {
            format!(" ({}..{})", size(b), size(b.max(1) * 2))
        });
        let summary = format!(
            "{name}{sized} p99={} ({ratio:.1}x p50) - {}",
            format_ns(s.p99_ns as f64),
            texts
                .iter()
                .map(|t| t.phrase.as_str())
                .collect::<Vec<_>>()
                .join(" + ")
        );
        let mut timeline: Vec<TimelineEntry> = texts.iter().map(|t| t.timeline.clone()).collect();
        if let Some(peak) = d
            .snapshots
            .iter()
            .map(|s| s.cpu_pct)
            .reduce(f64::max)
            .filter(|p| *p >= 80.0)
        {
            timeline.insert(
                0,
                TimelineEntry {
                    layer: "SYSTEM".into(),
                    op: "cpu".into(),
                    detail: format!("CPU {peak:.0}% busy at peak"),
                    dur_us: 0,
                },
            );
        }
        timeline.push(TimelineEntry {
            layer: layer_of(src).into(),
            op: name.clone(),
            detail: format!(
                "p99={} ({ratio:.1}x p50={}) over {} calls, max {}",
                format_ns(s.p99_ns as f64),
                format_ns(s.p50_ns as f64),
                s.count,
                format_ns(s.max_ns as f64)
            ),
            dur_us: s.p99_ns / 1000,
        });
        let root_cause = texts[0].root_cause.clone();
        let also: Vec<String> = texts[1..].iter().map(|t| t.root_cause.clone()).collect();
        out.push(Chain {
            id: format!("{}:tail-{name}@{}", d.node, d.window.from / 1_000_000_000),
            node: d.node.clone(),
            severity: sev,
            score: impact * strength.max(),
            summary,
            root_cause,
            explanation: format!(
                "{name} has a long tail on {}: p99 {} is {ratio:.1}x its p50 {} over {} calls. {}{}",
                d.node,
                format_ns(s.p99_ns as f64),
                format_ns(s.p50_ns as f64),
                s.count,
                texts[0].root_cause,
                if also.is_empty() {
                    String::new()
                } else {
                    format!(". Also: {}", also.join(". "))
                }
            ),
            recommendations: fixes(&texts),
            cuda_op: name,
            p99_us: s.p99_ns as f64 / 1e3,
            p50_us: s.p50_ns as f64 / 1e3,
            tail_ratio: ratio,
            timeline,
            detected_at,
            window: d.window,
            peak_at: slow
                .iter()
                .max_by_key(|c| c.duration())
                .map_or(d.window.to, |c| c.end),
        });
    }
    for (&(src, op), calls) in &d.calls {
        if tail_ops.contains(&(src, op)) {
            continue;
        }
        if let Some(chain) = throughput_drop(d, names, src, op, calls, detected_at) {
            out.push(chain);
        }
    }
    if node_evidence.mem.oom_kills > 0 {
        out.push(oom_chain(d, detected_at));
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.score.total_cmp(&a.score))
            .then(a.id.cmp(&b.id))
    });
    (out, stats)
}

fn throughput_drop(
    d: &NodeData,
    names: &HashMap<(u8, u8), String>,
    src: u8,
    op: u8,
    calls: &[Call],
    detected_at: i64,
) -> Option<Chain> {
    const SECOND: i64 = 1_000_000_000;
    if calls.len() < MIN_SAMPLES {
        return None;
    }
    let first = calls.first()?.end;
    let last = calls.iter().map(|c| c.end).max()?;
    let buckets = ((last - first) / SECOND + 1) as usize;
    if buckets < DROP_MIN_SECONDS + 2 {
        return None;
    }
    let mut rate = vec![0usize; buckets];
    for c in calls {
        rate[((c.end - first) / SECOND) as usize] += 1;
    }
    let inner = &rate[1..buckets - 1];
    let mut sorted = inner.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2] as f64;
    if median < 10.0 {
        return None;
    }
    // The longest run of slow seconds.
    let (mut best, mut run_start) = (None::<(usize, usize)>, None);
    for (i, r) in inner
        .iter()
        .enumerate()
        .chain(std::iter::once((inner.len(), &usize::MAX)))
    {
        let low = (*r as f64) < DROP_RATIO * median;
        match (low, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                if i - s >= DROP_MIN_SECONDS && best.is_none_or(|(bs, be)| i - s > be - bs) {
                    best = Some((s, i));
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let (s, e) = best?;
    let from = first + (s as i64 + 1) * SECOND;
    let to = first + (e as i64 + 1) * SECOND;
    let ev = evidence(d, from, to);
    let strength = period_strengths(&ev, to - from);
    let causes = ranked_causes(strength);
    let (class, st) = *causes.first()?;
    let low_rate = inner[s..e].iter().sum::<usize>() as f64 / (e - s) as f64;
    let name = super::dataset::op_name(names, src, op);
    let text = match class {
        "cpu" => describe_cpu(d, &ev.cpu, &name, None),
        "io" => describe_io(d, &ev.io, st, None),
        _ => describe_mem(&ev.mem),
    };
    let drop = 1.0 - low_rate / median;
    let sev = if drop >= 0.7 && st >= STRONG_CAUSE {
        Severity::High
    } else if st >= MEDIUM_CAUSE {
        Severity::Medium
    } else {
        Severity::Low
    };
    Some(Chain {
        id: format!("{}:drop-{name}@{}", d.node, from / SECOND),
        node: d.node.clone(),
        severity: sev,
        score: drop * st,
        summary: format!(
            "{name} throughput -{:.0}% ({low_rate:.0}/s vs {median:.0}/s) for {}s - {}",
            drop * 100.0,
            e - s,
            text.phrase
        ),
        root_cause: text.root_cause.clone(),
        explanation: format!(
            "{name} fell to {low_rate:.0} calls/s for {} s on {} (median {median:.0}/s) while: {}",
            e - s,
            d.node,
            text.root_cause
        ),
        recommendations: text.fixes.clone(),
        cuda_op: name.clone(),
        p99_us: 0.0,
        p50_us: 0.0,
        tail_ratio: 0.0,
        timeline: vec![
            text.timeline,
            TimelineEntry {
                layer: layer_of(src).into(),
                op: name,
                detail: format!("{low_rate:.0} calls/s for {} s, median {median:.0}/s", e - s),
                dur_us: (to - from) / 1000,
            },
        ],
        detected_at,
        window: crate::timewin::Window { from, to },
        peak_at: from,
    })
}

fn oom_chain(d: &NodeData, detected_at: i64) -> Chain {
    let kills: Vec<String> = d
        .oom_kills
        .iter()
        .map(|k| format!("{} (RSS {})", d.task_name(k.victim), mib(k.rss_bytes)))
        .collect();
    Chain {
        id: format!("{}:oom@{}", d.node, d.window.from / 1_000_000_000),
        node: d.node.clone(),
        severity: Severity::High,
        score: f64::MAX,
        summary: format!("OOM killer ended {}", kills.join(", ")),
        root_cause: format!("Out of memory: the kernel killed {}", kills.join(", ")),
        explanation: format!("The OOM killer ran {} time(s) on {}.", d.oom_kills.len(), d.node),
        recommendations: vec![
            "Lower the host memory footprint: batch size, DataLoader workers and prefetch, pinned buffers"
                .to_owned(),
            "Check for other memory-heavy processes on the node".to_owned(),
        ],
        cuda_op: String::new(),
        p99_us: 0.0,
        p50_us: 0.0,
        tail_ratio: 0.0,
        timeline: vec![TimelineEntry {
            layer: "MEM".into(),
            op: "oom_kill".into(),
            detail: kills.join(", "),
            dur_us: 0,
        }],
        detected_at,
        window: d.window,
        peak_at: d.oom_kills.first().map_or(d.window.to, |k| k.ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::dataset::{Io, OffCpu, OomKill, PageAllocs},
        timewin::Window,
    };
    use agent_common::catalog::driver_op;

    const LAUNCH: (u8, u8) = (source::DRIVER, driver_op::LAUNCH_KERNEL);
    const MS: i64 = 1_000_000;

    /// 200 launches of 10 us every 5 ms on thread 7 of pid 1; the ones in
    /// `slow` take `slow_ns` instead.
    fn node(slow: &[usize], slow_ns: i64) -> NodeData {
        node_with(10_000, slow, slow_ns)
    }

    /// As [`node`], with calls of `base_ns` (under 5 ms).
    fn node_with(base_ns: i64, slow: &[usize], slow_ns: i64) -> NodeData {
        let calls = (0..200)
            .map(|i| {
                let start = i as i64 * 5 * MS;
                let dur = if slow.contains(&i) { slow_ns } else { base_ns };
                Call {
                    pid: 1,
                    tid: 7,
                    start,
                    end: start + dur,
                    bytes: 0,
                }
            })
            .collect();
        NodeData {
            node: "n1".into(),
            calls: [(LAUNCH, calls)].into_iter().collect(),
            window: Window {
                from: 0,
                to: 1000 * MS,
            },
            ..NodeData::default()
        }
    }

    fn slow_set() -> Vec<usize> {
        (0..200).step_by(20).collect() // 10 slow calls: 5%
    }

    /// A preemption of thread 7 inside each slow call.
    fn preempt_slow_calls(d: &mut NodeData, preempted: bool, by: u32) {
        for i in slow_set() {
            let start = i as i64 * 5 * MS + 1_000;
            d.off_cpu.push(OffCpu {
                pid: 1,
                tid: 7,
                start,
                end: start + MS,
                preempted: Some(preempted),
                preemptor: by,
            });
        }
    }

    fn run(d: &NodeData) -> Vec<Chain> {
        chains(d, &HashMap::new(), 0).0
    }

    #[test]
    fn a_tail_with_preemption_of_the_calling_thread_is_high_cpu_contention() {
        let mut d = node(&slow_set(), 2 * MS);
        preempt_slow_calls(&mut d, true, 99);
        d.names.insert(99, "cpu-hog".into());
        let c = run(&d);
        assert_eq!(c.len(), 1, "{c:#?}");
        assert_eq!(c[0].severity, Severity::High, "{c:#?}");
        assert!(
            c[0].summary
                .starts_with("cuLaunchKernel p99=2.00ms (200.0x p50) - 10 sched_switch events"),
            "{}",
            c[0].summary
        );
        assert!(
            c[0].root_cause.starts_with("CPU contention"),
            "{}",
            c[0].root_cause
        );
        assert!(
            c[0].root_cause.contains("cpu-hog (99)"),
            "names the preemptor: {}",
            c[0].root_cause
        );
        assert!(
            c[0].recommendations
                .iter()
                .any(|f| f.contains("renice +19 -p 99"))
        );
        assert_eq!(c[0].id, "n1:tail-cuLaunchKernel@0");
    }

    #[test]
    fn a_tail_without_a_concurrent_cause_is_not_a_chain() {
        assert!(run(&node(&slow_set(), 2 * MS)).is_empty());
    }

    #[test]
    fn waiting_off_cpu_is_not_contention() {
        let mut d = node(&slow_set(), 2 * MS);
        preempt_slow_calls(&mut d, false, 99);
        assert!(
            run(&d).is_empty(),
            "voluntary sleeps during the calls explain nothing"
        );
    }

    #[test]
    fn too_few_samples_or_a_small_tail_do_not_fire() {
        let mut d = node(&slow_set(), 2 * MS);
        preempt_slow_calls(&mut d, true, 99);
        if let Some(c) = d.calls.get_mut(&LAUNCH) {
            c.truncate(MIN_SAMPLES - 1);
        }
        assert!(run(&d).is_empty(), "fewer than MIN_SAMPLES calls");
        let mut d = node(&slow_set(), 25_000); // 2.5x
        preempt_slow_calls(&mut d, true, 99);
        assert!(run(&d).is_empty(), "p99/p50 below TAIL_RATIO");
    }

    #[test]
    fn a_moderate_tail_with_a_strong_cause_is_medium() {
        let mut d = node_with(200_000, &slow_set(), 1_200_000); // 6x
        preempt_slow_calls(&mut d, true, 99);
        let c = run(&d);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].severity, Severity::Medium);
        assert_eq!(severity(12.0, 0.3, 0.05), Severity::Medium);
        assert_eq!(severity(12.0, 0.1, 0.05), Severity::Low);
        assert_eq!(severity(4.0, 0.3, 0.05), Severity::Low);
    }

    #[test]
    fn a_rare_tail_is_low_however_strong_its_cause() {
        // One slow call in 200 (0.2 ms beyond the median over a second).
        let mut d = node(&[100, 101, 102], 100_000);
        for i in [100, 101, 102] {
            let start = i as i64 * 5 * MS;
            d.off_cpu.push(OffCpu {
                pid: 1,
                tid: 7,
                start,
                end: start + 50_000,
                preempted: Some(true),
                preemptor: 99,
            });
        }
        for i in 0..5 {
            d.off_cpu.push(OffCpu {
                pid: 1,
                tid: 7,
                start: i,
                end: i + 1,
                preempted: Some(true),
                preemptor: 99,
            });
        }
        let c = run(&d);
        assert_eq!(c.len(), 1, "{c:#?}");
        assert_eq!(
            c[0].severity,
            Severity::Low,
            "0.03% of the span lost: not worth a page"
        );
        assert_eq!(severity(200.0, 1.0, 0.0003), Severity::Low);
    }

    #[test]
    fn block_io_during_the_slow_calls_is_the_cause_and_writes_get_checkpoint_fixes() {
        let mut d = node(&slow_set(), 2 * MS);
        block_io(
            &mut d,
            slow_set().into_iter().map(|i| i as i64 * 5 * MS),
            3 * MS,
            8 << 20,
            true,
        );
        d.names.insert(8, "ckpt-writer".into());
        let c = run(&d);
        assert_eq!(c.len(), 1, "{c:#?}");
        assert!(c[0].summary.contains("block I/O"), "{}", c[0].summary);
        assert!(
            c[0].root_cause
                .starts_with("Block I/O: 10 write requests (checkpoint-like)"),
            "{}",
            c[0].root_cause
        );
        assert!(c[0].root_cause.contains("ckpt-writer (8)"));
        assert!(c[0].recommendations[0].contains("Checkpoint asynchronously"));
    }

    #[test]
    fn reads_get_data_loading_fixes() {
        let mut d = node(&slow_set(), 2 * MS);
        block_io(
            &mut d,
            slow_set().into_iter().map(|i| i as i64 * 5 * MS),
            3 * MS,
            8 << 20,
            false,
        );
        let c = run(&d);
        assert!(
            c[0].root_cause.contains("read requests (data loading)"),
            "{}",
            c[0].root_cause
        );
        assert!(c[0].recommendations[0].contains("/dev/shm"));
    }

    /// Block requests by thread 8, one starting at each of `starts`.
    fn block_io(d: &mut NodeData, starts: impl IntoIterator<Item = i64>, len: i64, bytes: u64, write: bool) {
        for start in starts {
            d.io.push(Io {
                pid: 1,
                tid: 8,
                start,
                end: start + len,
                bytes,
                write,
            });
        }
    }

    /// `n` 1 MiB writes of 100 us by thread 8, one every `every` ns.
    fn checkpoint_writes(d: &mut NodeData, n: i64, every: i64) {
        block_io(d, (0..n).map(|i| i * every), 100_000, 1 << 20, true);
    }

    #[test]
    fn a_preempting_thread_that_writes_makes_block_io_the_root_cause() {
        let mut d = node(&slow_set(), 2 * MS);
        preempt_slow_calls(&mut d, true, 8);
        checkpoint_writes(&mut d, 40, 25 * MS);
        let c = run(&d);
        assert!(c[0].root_cause.starts_with("Block I/O"), "{}", c[0].root_cause);
        assert!(
            c[0].root_cause
                .contains("the I/O thread also preempted the callers"),
            "{}",
            c[0].root_cause
        );
    }

    #[test]
    fn kernel_io_threads_preempting_during_io_count_as_io() {
        let mut d = node(&slow_set(), 2 * MS);
        preempt_slow_calls(&mut d, true, 41);
        d.names.insert(41, "kworker/1:1".into());
        let c = run(&d);
        assert!(
            c[0].root_cause.starts_with("CPU contention"),
            "no I/O on the node: {}",
            c[0].root_cause
        );
        checkpoint_writes(&mut d, 10, 100 * MS);
        let c = run(&d);
        assert!(
            c[0].root_cause.starts_with("Block I/O"),
            "with I/O: {}",
            c[0].root_cause
        );
    }

    #[test]
    fn memory_volume_alone_supports_at_most_a_medium_chain() {
        let mut d = node(&slow_set(), 2 * MS);
        d.page_allocs.push(PageAllocs {
            ts: 10 * MS,
            bytes: 512 << 20,
        });
        assert!(run(&d).is_empty(), "below MIN_MEM_BYTES");
        d.page_allocs[0].bytes = 2 << 30;
        let c = run(&d);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].root_cause.starts_with("Memory pressure: 2.0 GiB"),
            "{}",
            c[0].root_cause
        );
        assert_eq!(c[0].severity, Severity::Medium);
        d.page_allocs[0].bytes = 64 << 30;
        assert_eq!(
            run(&d)[0].severity,
            Severity::Medium,
            "volume alone never makes a HIGH chain"
        );
        d.oom_kills.push(OomKill {
            ts: MS,
            victim: 1,
            rss_bytes: 0,
        });
        assert!(
            run(&d).iter().any(|c| c.severity == Severity::High),
            "an OOM kill does"
        );
    }

    #[test]
    fn copies_are_compared_within_their_size_class() {
        let calls: Vec<Call> = (0..200)
            .map(|i| {
                let start = i as i64 * 5 * MS;
                // Every 20th copy moves 256 MiB and takes 20 ms; the rest 4 bytes in 3 us.
                let (bytes, dur) = if i % 20 == 0 {
                    (256 << 20, 20 * MS)
                } else {
                    (4, 3_000)
                };
                Call {
                    pid: 1,
                    tid: 7,
                    start,
                    end: start + dur,
                    bytes,
                }
            })
            .collect();
        let mut d = NodeData {
            node: "n1".into(),
            calls: [((source::DRIVER, driver_op::MEMCPY_DTOH), calls)]
                .into_iter()
                .collect(),
            window: Window {
                from: 0,
                to: 1000 * MS,
            },
            ..NodeData::default()
        };
        preempt_slow_calls(&mut d, true, 99);
        assert!(run(&d).is_empty(), "big copies are not a tail of small ones");
    }

    #[test]
    fn an_oom_kill_is_a_high_chain_of_its_own() {
        let mut d = node(&[], 0);
        d.oom_kills.push(OomKill {
            ts: 5 * MS,
            victim: 42,
            rss_bytes: 3 << 30,
        });
        d.names.insert(42, "python".into());
        let c = run(&d);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].severity, Severity::High);
        assert!(
            c[0].summary.contains("python (42)") && c[0].summary.contains("3.0 GiB"),
            "{}",
            c[0].summary
        );
        assert_eq!(c[0].peak_at, 5 * MS);
    }

    #[test]
    fn a_throughput_drop_with_io_in_the_same_seconds_fires() {
        const S: i64 = 1_000_000_000;
        // 100 calls/s for 12 s, except 10/s during seconds 5..8 (with I/O).
        let mut calls = Vec::new();
        for sec in 0..12i64 {
            let n = if (5..8).contains(&sec) { 10 } else { 100 };
            for k in 0..n {
                let start = sec * S + k * (S / n);
                calls.push(Call {
                    pid: 1,
                    tid: 7,
                    start,
                    end: start + 10_000,
                    bytes: 0,
                });
            }
        }
        let mut d = NodeData {
            node: "n1".into(),
            calls: [(LAUNCH, calls)].into_iter().collect(),
            window: Window { from: 0, to: 12 * S },
            ..NodeData::default()
        };
        for k in 0..30 {
            let start = 5 * S + k * 100 * MS;
            d.io.push(Io {
                pid: 1,
                tid: 8,
                start,
                end: start + 60 * MS,
                bytes: 32 << 20,
                write: true,
            });
        }
        let c = run(&d);
        assert_eq!(c.len(), 1, "{c:#?}");
        assert!(c[0].id.starts_with("n1:drop-cuLaunchKernel@"), "{}", c[0].id);
        assert!(c[0].summary.contains("throughput -90%"), "{}", c[0].summary);
        assert!(c[0].root_cause.starts_with("Block I/O"));
        d.io.clear();
        assert!(run(&d).is_empty(), "a drop without a cause is not a chain");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn coverage_measures_overlap_exactly() {
        let c = Coverage::new(vec![(0, 10), (5, 20), (30, 40)]);
        assert_eq!(c.covered(0, 100), 30);
        assert_eq!(c.covered(15, 35), 10);
        assert_eq!(c.covered(20, 30), 0);
        assert_eq!(c.covered(38, 39), 1);
    }
}
