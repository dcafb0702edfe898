//! Input-pipeline starvation: the GPU waiting for data.
//!
//! The commonest slowdown of a training job is a GPU with nothing to run
//! because its next batch is not ready: the training thread launches a
//! step's kernels in a burst, then sleeps until the DataLoader's worker
//! processes deliver the next batch, while those workers are busy reading
//! and decoding it. From what the tracer records:
//!
//! - *the waits*: off-CPU spans of a kernel-launching thread in which it
//!   was blocked (`sched_switch` with the thread not runnable, `arg0 = 0`),
//!   between its first and last launch, minus the time it spent inside
//!   any CUDA runtime, driver or NCCL call (blocking in a synchronize or a
//!   collective is waiting for the GPU or the peers, not for input);
//! - *the gaps*: stretches between consecutive launches of that thread
//!   holding at least [`INPUT_GAP_MIN_WAIT_NS`] of waiting: time the GPU
//!   was issued no work;
//! - *the workers*: processes a traced process created (fork events) that
//!   make no CUDA call, and their children; what their threads did (on a
//!   CPU between their recorded switches, runnable but waiting for a CPU,
//!   blocked), how busy they were while the rank waited, and their block
//!   reads.
//!
//! [`evidence`] measures these for the rank thread that waited most. The
//! waits are *for input* ([`starved`]) when that rank's own workers were
//! busy during them (on a CPU, waiting for one, or with a block read in
//! flight: at least [`MIN_WORKERS_BUSY`] worker threads on average) or its
//! own block reads were in flight during [`MIN_OWN_READ`] of them (a
//! training thread loading its data itself). Waits for anything else (a
//! checkpoint writer's lock, a CPU-side barrier) are not starvation.
//! [`chain`] makes a chain of it when the waits take at least
//! [`MIN_INPUT_WAIT`] of the node's window (HIGH from [`HIGH_INPUT_WAIT`]),
//! with fixes ordered by what held the workers back (CPU, storage,
//! decoding).
//!
//! Needs the preemption flag of `sched_switch` (this tracer's databases):
//! without it a wait cannot be told from a preemption, and no wait is found.
//! Nothing is measured either when the CUDA calls stored are a sample
//! ([`super::sampled`]): the calls left out would pass for waits.

use std::collections::{HashMap, HashSet};

use agent_common::catalog::{OpKind, op_kind, source};
pub use ingero_api::InputEvidence;

use super::{
    chain::{Chain, Severity, TimelineEntry},
    dataset::{NodeData, op_name},
    describe::mib,
    rules::{
        HIGH_INPUT_WAIT, INPUT_GAP_MIN_WAIT_NS, MIN_INPUT_WAIT, MIN_OWN_READ, MIN_SAMPLES, MIN_WORKERS_BUSY,
    },
    spans::Coverage,
};
use crate::units::format_ns;

/// Worker processes of the node: created by a traced process (fork
/// events) and making no CUDA call.
#[must_use]
pub fn workers(d: &NodeData) -> HashSet<u32> {
    let ranks: HashSet<u32> = d.calls.values().flatten().map(|c| c.pid).collect();
    d.children
        .iter()
        .copied()
        .filter(|p| !ranks.contains(p))
        .collect()
}

/// The workers of `all` that descend from process `pid`.
fn workers_of(d: &NodeData, all: &HashSet<u32>, pid: u32) -> HashSet<u32> {
    all.iter()
        .copied()
        .filter(|w| {
            let mut at = *w;
            // Bounded: a corrupt fork record could make a cycle.
            for _ in 0..64 {
                match d.parents.get(&at) {
                    Some(p) if *p == pid => return true,
                    Some(p) => at = *p,
                    None => return false,
                }
            }
            false
        })
        .collect()
}

/// The waits of one kernel-launching thread.
struct ThreadWaits {
    pid: u32,
    tid: u32,
    /// Launch calls, by start.
    launches: Vec<(i64, i64)>,
    /// The waits: blocked, between launches, outside any call.
    waits: Coverage,
}

/// The waits of every thread with at least [`MIN_SAMPLES`] kernel
/// launches between `from` and `to`.
fn thread_waits(d: &NodeData, from: i64, to: i64) -> Vec<ThreadWaits> {
    let within = |s: i64, e: i64| e >= from && s <= to;
    let mut launches: HashMap<u32, (u32, Vec<(i64, i64)>)> = HashMap::new();
    for (&(src, op), calls) in &d.calls {
        if op_kind(src, op) == OpKind::Launch {
            for c in calls.iter().filter(|c| within(c.start, c.end)) {
                launches
                    .entry(c.tid)
                    .or_insert_with(|| (c.pid, Vec::new()))
                    .1
                    .push((c.start, c.end));
            }
        }
    }
    launches.retain(|_, (_, l)| l.len() >= MIN_SAMPLES);
    let mut in_call: HashMap<u32, Vec<(i64, i64)>> = HashMap::new();
    for c in d.calls.values().flatten().chain(&d.nccl_calls) {
        if launches.contains_key(&c.tid) && within(c.start, c.end) {
            in_call.entry(c.tid).or_default().push((c.start, c.end));
        }
    }
    let mut blocked: HashMap<u32, Vec<(i64, i64)>> = HashMap::new();
    for o in &d.off_cpu {
        if o.preempted == Some(false) && launches.contains_key(&o.tid) && within(o.start, o.end) {
            blocked.entry(o.tid).or_default().push((o.start, o.end));
        }
    }
    let mut out: Vec<ThreadWaits> = launches
        .into_iter()
        .map(|(tid, (pid, mut l))| {
            l.sort_unstable();
            let first = l[0].0.max(from);
            let last = l.iter().map(|x| x.1).max().unwrap_or(first).min(to);
            let calls = Coverage::new(in_call.remove(&tid).unwrap_or_default());
            let pieces: Vec<(i64, i64)> = blocked
                .remove(&tid)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(s, e)| {
                    let (s, e) = (s.max(first), e.min(last));
                    (s < e).then(|| calls.uncovered(s, e))
                })
                .flatten()
                .collect();
            ThreadWaits {
                pid,
                tid,
                launches: l,
                waits: Coverage::new(pieces),
            }
        })
        .collect();
    out.sort_by_key(|w| w.tid);
    out
}

/// Input-pipeline evidence between `from` and `to`: the waits of the
/// kernel-launching thread that waited most, and what its rank's workers
/// did (every worker of the node when no thread waited).
#[must_use]
pub fn evidence(d: &NodeData, from: i64, to: i64) -> InputEvidence {
    // Launches or calls missing from a sample would pass for gaps and waits.
    if d.sampled
        .keys()
        .any(|(src, _)| *src == source::CUDA || *src == source::DRIVER)
    {
        return InputEvidence::default();
    }
    let all_workers = workers(d);
    let waits = thread_waits(d, from, to);
    let top = waits.iter().max_by_key(|w| w.waits.total());
    let empty = Coverage::default();
    let (mut e, wait_cov, workers) = match top.filter(|w| w.waits.total() > 0) {
        Some(w) => {
            let mut e = InputEvidence {
                pid: w.pid,
                tid: w.tid,
                wait_ns: w.waits.total(),
                ..InputEvidence::default()
            };
            gaps(w, &mut e);
            (e, &w.waits, workers_of(d, &all_workers, w.pid))
        }
        None => (InputEvidence::default(), &empty, all_workers),
    };
    worker_figures(d, &workers, wait_cov, from, to, &mut e);
    // The rank's own reads while it waited: a training thread loading data.
    let own: Vec<(i64, i64)> =
        d.io.iter()
            .filter(|i| i.read && i.pid == e.pid && e.wait_ns > 0 && wait_cov.covered(i.start, i.end) > 0)
            .map(|i| {
                e.reads += 1;
                e.read_bytes += i.bytes;
                (i.start, i.end)
            })
            .collect();
    e.own_read_ns = wait_cov.overlap(&Coverage::new(own));
    e
}

/// The launch gaps of `w` holding waits.
fn gaps(w: &ThreadWaits, e: &mut InputEvidence) {
    let mut run_end = i64::MIN;
    for (s, end) in &w.launches {
        if run_end != i64::MIN && *s > run_end {
            let waited = w.waits.covered(run_end, *s);
            if waited >= INPUT_GAP_MIN_WAIT_NS {
                e.gaps += 1;
                e.gap_ns += s - run_end;
                e.longest_gap_ns = e.longest_gap_ns.max(s - run_end);
            }
        }
        run_end = run_end.max(*end);
    }
}

/// What the `workers`' threads did between `from` and `to`, and how busy
/// they were during the waits `wait_cov`.
fn worker_figures(
    d: &NodeData,
    workers: &HashSet<u32>,
    wait_cov: &Coverage,
    from: i64,
    to: i64,
    e: &mut InputEvidence,
) {
    let clip = |s: i64, t: i64| (s.max(from), t.min(to));
    let mut reads: HashMap<u32, Vec<(i64, i64)>> = HashMap::new();
    for i in d.io.iter().filter(|i| i.read && workers.contains(&i.pid)) {
        let (s, t) = clip(i.start, i.end);
        if s <= t {
            e.reads += 1;
            e.read_bytes += i.bytes;
            reads.entry(i.pid).or_default().push((s, t));
        }
    }
    let reads: HashMap<u32, Coverage> = reads.into_iter().map(|(p, v)| (p, Coverage::new(v))).collect();
    let mut threads: HashMap<u32, (u32, Vec<&super::dataset::OffCpu>)> = HashMap::new();
    for o in d.off_cpu.iter().filter(|o| workers.contains(&o.pid)) {
        threads
            .entry(o.tid)
            .or_insert_with(|| (o.pid, Vec::new()))
            .1
            .push(o);
    }
    let mut active: HashSet<u32> = reads.keys().copied().collect();
    let no_reads = Coverage::default();
    for (pid, spans) in threads.values() {
        let spans: Vec<(i64, i64, Option<bool>)> = spans
            .iter()
            .map(|o| {
                let (s, t) = clip(o.start, o.end);
                (s, t, o.preempted)
            })
            .filter(|(s, t, _)| s < t)
            .collect();
        let (Some(first), Some(last)) = (spans.first(), spans.iter().map(|x| x.1).max()) else {
            continue;
        };
        active.insert(*pid);
        let mut idle = Vec::new();
        let mut prev_end = first.0;
        for &(s, t, preempted) in &spans {
            e.worker_cpu_ns += (s - prev_end).max(0);
            prev_end = prev_end.max(t);
            match preempted {
                Some(true) => e.worker_runnable_ns += t - s,
                Some(false) => {
                    e.worker_blocked_ns += t - s;
                    // Blocked with a read of its process in flight is busy reading.
                    idle.extend(reads.get(pid).unwrap_or(&no_reads).uncovered(s, t));
                }
                None => {}
            }
        }
        let lifetime = wait_cov.covered(first.0, last);
        e.worker_busy_ns += lifetime - wait_cov.overlap(&Coverage::new(idle));
    }
    e.workers = active.len();
}

/// Whether the waits of `e` were waits for input: the rank's workers were
/// busy during them, or its own reads were in flight.
#[must_use]
pub fn starved(e: &InputEvidence) -> bool {
    e.wait_ns > 0
        && (e.worker_busy_ns as f64 >= MIN_WORKERS_BUSY * e.wait_ns as f64
            || e.own_read_ns as f64 >= MIN_OWN_READ * e.wait_ns as f64)
}

/// The waiting of `e` that counts as waiting for input, ns (0 unless [`starved`]).
#[must_use]
pub fn starved_wait_ns(e: &InputEvidence) -> i64 {
    if starved(e) { e.wait_ns } else { 0 }
}

/// What held the workers back, which orders the fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// The training thread read its data itself.
    OwnReads,
    /// The workers were runnable but waiting for a CPU.
    Cpu,
    /// The workers were mostly blocked, with reads.
    Storage,
    /// The workers were mostly on a CPU: decoding.
    Decoding,
}

fn limit(e: &InputEvidence) -> Limit {
    if e.worker_busy_ns < e.own_read_ns || e.workers == 0 {
        Limit::OwnReads
    } else if 2 * e.worker_runnable_ns >= e.worker_cpu_ns {
        Limit::Cpu
    } else if e.reads > 0 && e.worker_blocked_ns >= e.worker_cpu_ns {
        Limit::Storage
    } else {
        Limit::Decoding
    }
}

/// The fixes for a starved input pipeline, most useful first.
fn fixes(e: &InputEvidence, window_ns: i64) -> Vec<String> {
    let cores = |ns: i64| ns as f64 / window_ns.max(1) as f64;
    let workers = format!(
        "Raise DataLoader num_workers while cores are spare, so more batches are decoded at once (the workers used {:.2} CPUs here)",
        cores(e.worker_cpu_ns)
    );
    let prefetch = "Raise prefetch_factor (batches prepared ahead per worker) and set persistent_workers=True (workers kept between epochs, no restart stall)".to_owned();
    let pin = "Set pin_memory=True and copy with non_blocking=True, so host-to-device copies overlap compute"
        .to_owned();
    let storage =
        "Read the dataset from faster or local storage (local NVMe, /dev/shm), in larger sequential shards"
            .to_owned();
    let cache = "Cache decoded samples (decode once, store ready tensors or a preprocessed format), so workers stop repeating CPU-heavy decoding".to_owned();
    match limit(e) {
        Limit::OwnReads => vec![
            "Load data in DataLoader worker processes (num_workers > 0) instead of the training thread"
                .to_owned(),
            storage,
            prefetch,
            pin,
            cache,
        ],
        Limit::Cpu => vec![
            format!(
                "Give the workers cores of their own: they were runnable but waiting for a CPU {:.2} CPUs' worth (fewer busy processes than cores; taskset/numactl so ranks and workers do not share)",
                cores(e.worker_runnable_ns)
            ),
            cache,
            prefetch,
            pin,
            workers,
        ],
        Limit::Storage => vec![storage, workers, prefetch, cache, pin],
        Limit::Decoding => vec![workers, cache, prefetch, pin, storage],
    }
}

/// The input-starvation rule: a chain when the node's most-waiting
/// launch thread waited for input at least [`MIN_INPUT_WAIT`] of the window.
#[must_use]
pub fn chain(
    d: &NodeData,
    e: &InputEvidence,
    names: &HashMap<(u8, u8), String>,
    detected_at: i64,
) -> Option<Chain> {
    let window_ns = (d.window.to - d.window.from).max(1);
    let share = e.wait_ns as f64 / window_ns as f64;
    if !starved(e) || share < MIN_INPUT_WAIT {
        return None;
    }
    let pct = |ns: i64| format!("{:.0}%", ns as f64 / window_ns as f64 * 100.0);
    let cpus = |ns: i64| format!("{:.2}", ns as f64 / window_ns as f64);
    let thread = d.task_name(e.tid);
    let op = launch_op(d, e.tid, names);
    let rate = e.read_bytes as f64 / (1u64 << 20) as f64 / (window_ns as f64 / 1e9);
    let reads = if e.reads > 0 {
        format!(
            "read {} in {} requests ({rate:.1} MiB/s)",
            mib(e.read_bytes),
            e.reads
        )
    } else {
        "no block reads".to_owned()
    };
    let busy = e.worker_busy_ns as f64 / e.wait_ns as f64;
    let worker_names = worker_names(d, e);
    let gaps = format!(
        "{} gaps between its kernel launches (longest {}; {} of the time in such gaps)",
        e.gaps,
        format_ns(e.longest_gap_ns as f64),
        pct(e.gap_ns)
    );
    let (who, doing) = if limit(e) == Limit::OwnReads {
        (
            "its own block reads".to_owned(),
            format!(
                "its own reads were in flight for {:.0}% of the waits ({reads}): the training thread loads its data itself",
                e.own_read_ns as f64 / e.wait_ns as f64 * 100.0
            ),
        )
    } else {
        (
            format!(
                "{} worker process{}",
                e.workers,
                if e.workers == 1 { "" } else { "es" }
            ),
            format!(
                "its {} worker process{} ({worker_names}) were busy meanwhile ({busy:.1} worker threads on average): on a CPU {} CPUs' worth, runnable but waiting for a CPU {}, blocked {}; {reads}",
                e.workers,
                if e.workers == 1 { "" } else { "es" },
                cpus(e.worker_cpu_ns),
                cpus(e.worker_runnable_ns),
                cpus(e.worker_blocked_ns),
            ),
        )
    };
    let root_cause = format!(
        "Input pipeline starvation: {thread} issued no GPU work for {} ({} of the {} analysed), blocked outside any CUDA call in {gaps}; {doing}",
        format_ns(e.wait_ns as f64),
        pct(e.wait_ns),
        format_ns(window_ns as f64),
    );
    let mut timeline = vec![TimelineEntry {
        layer: "HOST".into(),
        op: "sched_switch".into(),
        detail: format!(
            "{thread} blocked {} outside CUDA calls between kernel launches ({} of the time), in {} gaps (longest {})",
            format_ns(e.wait_ns as f64),
            pct(e.wait_ns),
            e.gaps,
            format_ns(e.longest_gap_ns as f64)
        ),
        dur_us: e.wait_ns / 1000,
    }];
    if e.workers > 0 {
        timeline.push(TimelineEntry {
            layer: "HOST".into(),
            op: "workers".into(),
            detail: format!(
                "{} worker process{} ({worker_names}): on a CPU {}, runnable but off-CPU {}, blocked {}; {busy:.1} busy on average while the rank waited",
                e.workers,
                if e.workers == 1 { "" } else { "es" },
                format_ns(e.worker_cpu_ns as f64),
                format_ns(e.worker_runnable_ns as f64),
                format_ns(e.worker_blocked_ns as f64),
            ),
            dur_us: e.worker_cpu_ns / 1000,
        });
    }
    if e.reads > 0 {
        timeline.push(TimelineEntry {
            layer: "IO".into(),
            op: "block_read".into(),
            detail: format!(
                "{} read requests, {} ({rate:.1} MiB/s)",
                e.reads,
                mib(e.read_bytes)
            ),
            dur_us: 0,
        });
    }
    timeline.push(TimelineEntry {
        layer: if op.1 == source::CUDA { "CUDA" } else { "DRIVER" }.into(),
        op: op.0.clone(),
        detail: format!(
            "launches in bursts: {} gaps holding input waits, {} in all ({} of the time)",
            e.gaps,
            format_ns(e.gap_ns as f64),
            pct(e.gap_ns)
        ),
        dur_us: e.gap_ns / 1000,
    });
    Some(Chain {
        id: format!("{}:input-starvation@{}", d.node, d.window.from / 1_000_000_000),
        node: d.node.clone(),
        severity: if share >= HIGH_INPUT_WAIT {
            Severity::High
        } else {
            Severity::Medium
        },
        score: share,
        summary: format!(
            "input pipeline starvation: {thread} waited for data {} of the time between kernel launches, on {who}",
            pct(e.wait_ns)
        ),
        explanation: format!(
            "Kernel launches on {} come in bursts: between them {thread} slept outside any CUDA call {} of the time, so the GPU was issued no work while the next batch was prepared. {}",
            d.node,
            pct(e.wait_ns),
            root_cause
        ),
        root_cause,
        recommendations: fixes(e, window_ns),
        cuda_op: op.0,
        p99_us: 0.0,
        p50_us: 0.0,
        tail_ratio: 0.0,
        timeline,
        detected_at,
        window: d.window,
        peak_at: d.window.from,
    })
}

/// The name and source of the launch op thread `tid` called most.
fn launch_op(d: &NodeData, tid: u32, names: &HashMap<(u8, u8), String>) -> (String, u8) {
    d.calls
        .iter()
        .filter(|((src, op), _)| op_kind(*src, *op) == OpKind::Launch)
        .map(|(&(src, op), calls)| (calls.iter().filter(|c| c.tid == tid).count(), src, op))
        .max_by_key(|(n, src, _)| (*n, *src == source::DRIVER))
        .map_or(("kernel launches".to_owned(), source::DRIVER), |(_, src, op)| {
            (op_name(names, src, op), src)
        })
}

/// `pt_data_worker (812), pt_data_worker (813)`, at most three named.
fn worker_names(d: &NodeData, e: &InputEvidence) -> String {
    let all = workers(d);
    let mut pids: Vec<u32> = workers_of(d, &all, e.pid).into_iter().collect();
    pids.sort_unstable();
    let mut named: Vec<String> = pids.iter().take(3).map(|p| d.task_name(*p)).collect();
    if pids.len() > 3 {
        named.push(format!("{} more", pids.len() - 3));
    }
    named.join(", ")
}

#[cfg(test)]
mod tests;
