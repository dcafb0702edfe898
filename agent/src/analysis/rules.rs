//! The rules that turn one node's events into causal chains, and the
//! thresholds they and the cause strengths ([`super::evidence`]) use.
//!
//! **Tail latency.** A CUDA runtime or driver operation with at least
//! [`MIN_SAMPLES`] calls whose p99 is at least [`TAIL_RATIO`] times its p50,
//! and at least [`MIN_TAIL_GAP_NS`] above it, has a tail (copies and
//! allocations compared within their size class, see [`super::stats`]).
//! The tail is explained only by causes seen in the same window, measured
//! against the op's slow calls: those at or above both its p95 and
//! [`TAIL_RATIO`] times its p50 (the outliers, however few). The causes
//! (CPU contention, block I/O, memory pressure) and their strengths are
//! defined in [`super::evidence`]; a cause counts when its strength is at
//! least [`MIN_CAUSE_STRENGTH`], and a tail without one is not a chain.
//!
//! **Throughput drop.** An op whose calls per second fall below
//! [`DROP_RATIO`] of its median rate for at least [`DROP_MIN_SECONDS`]
//! consecutive seconds (not counting its first and last second), while a
//! cause is present in those seconds. Not raised for ops with a tail chain,
//! nor for ops whose stored events are a sample ([`super::sampled`]).
//!
//! **OOM kill.** Any OOM kill on the node is a HIGH chain of its own.
//!
//! **Input-pipeline starvation** ([`super::input`]): the kernel-launching
//! thread that waited most spent at least [`MIN_INPUT_WAIT`] of the window
//! blocked outside any CUDA or NCCL call between its launches, while its
//! rank's worker processes were busy (at least [`MIN_WORKERS_BUSY`] worker
//! threads on average) or its own block reads were in flight
//! ([`MIN_OWN_READ`] of the waits). MEDIUM, HIGH from [`HIGH_INPUT_WAIT`].
//!
//! **Severity** of a tail ([`severity`]) combines the size of the effect
//! and of the cause: HIGH when p99/p50 is at least [`HIGH_RATIO`] and the
//! strongest cause at least [`STRONG_CAUSE`]; MEDIUM when one of the two
//! holds together with a weaker form of the other ([`MEDIUM_CAUSE`]); LOW
//! otherwise. Either way the time the tail costs (beyond the p50, over the
//! op's span) must be at least [`HIGH_IMPACT`] for HIGH and
//! [`MEDIUM_IMPACT`] for MEDIUM: a rare tail is LOW however strong its
//! cause. Severity also follows the impact on the node: a tail whose slow
//! calls cost less than [`MIN_WINDOW_IMPACT`] of the node's whole window
//! is LOW ([`tail_severity`]), whatever its ratio. A chain's score (impact, or the size of a drop, times the cause
//! strength) orders chains within a severity.
//!
//! The rules only find chains, in no particular order; the caller orders
//! each list once (`super::sort_chains`). The node-wide evidence is
//! computed once by the caller and passed in.

use std::collections::{HashMap, HashSet};

use super::{
    attribution::{self, Job},
    chain::{Chain, Severity, TimelineEntry},
    dataset::{Call, NodeData, op_name},
    describe::{CauseText, describe_cpu, describe_io, describe_mem, fixes, layer_of, mib, size},
    evidence::{Cause, Evidence, evidence, io_issuers, period_strengths, strengths},
    spans::preempted_share,
    stats::{OpStats, comparable, op_stats},
};
use crate::units::format_ns;

/// Fewest calls of an op (of its size class, for a tail) before the tail
/// and throughput-drop rules look at it.
pub const MIN_SAMPLES: usize = 20;
/// p99/p50 at or above which an op has a tail; a call at or above this
/// multiple of the p50 (and the p95) is one of the slow calls.
pub const TAIL_RATIO: f64 = 3.0;
/// Smallest p99 - p50 of a tail, ns (50 µs): a tail of fast calls must
/// also cost time.
pub const MIN_TAIL_GAP_NS: i64 = 50_000;
/// p99/p50 at or above which a tail counts as large in [`severity`].
pub const HIGH_RATIO: f64 = 10.0;
/// Smallest impact of a HIGH tail: time of its slow calls beyond the p50,
/// as a share of the op's span from first call to last (1%).
pub const HIGH_IMPACT: f64 = 0.01;
/// Smallest impact (as for [`HIGH_IMPACT`]) of a MEDIUM tail (0.2%).
pub const MEDIUM_IMPACT: f64 = 0.002;
/// Smallest cost of a tail's slow calls (their time beyond the p50) as a
/// share of the node's whole window (1%) for it to be more than LOW: a
/// tail of an op the node rarely spends time in is LOW whatever its ratio
/// and cause ([`tail_severity`]).
pub const MIN_WINDOW_IMPACT: f64 = 0.01;
/// Strength of a strong cause: a HIGH tail and a HIGH throughput drop need
/// one, and with one any tail of at least [`MEDIUM_IMPACT`] is MEDIUM.
pub const STRONG_CAUSE: f64 = 0.5;
/// Cause strength that makes a large tail (p99/p50 at least [`HIGH_RATIO`])
/// MEDIUM, and the least of a MEDIUM throughput drop.
pub const MEDIUM_CAUSE: f64 = 0.2;
/// Weakest strength at which a cause counts at all (`Strengths::ranked`).
pub const MIN_CAUSE_STRENGTH: f64 = 0.05;
/// Share of the preempted time a task (or the job's own processes) must
/// take, strictly more than, to be named as mostly responsible for CPU
/// contention; below it the words say how spread the time is.
pub const MOSTLY_SHARE: f64 = 0.5;
/// Fewest preemptions of traced threads in the window (or a drop's period)
/// before CPU contention can be a cause.
pub const MIN_PREEMPTIONS: usize = 5;
/// Share of a throughput drop's period spent preempted (summed over
/// threads) at which CPU contention has full strength.
pub const CPU_FULL_SHARE: f64 = 0.2;
/// Weight of volume-only evidence (I/O volume, page allocations without
/// swap or OOM kill) in a tail's cause strengths.
pub const CONTEXT_WEIGHT: f64 = 0.4;
/// Fewest block I/O requests in the window (or a drop's period) before I/O
/// can be a cause, and on the node before preemption by kernel I/O threads
/// counts as I/O.
pub const MIN_IO_REQUESTS: usize = 5;
/// Share of the window (or period) with a request in flight at which I/O
/// volume has full strength.
pub const IO_FULL_SHARE: f64 = 0.2;
/// Bytes read and written (1 GiB) at which I/O volume has full strength.
pub const IO_FULL_BYTES: u64 = 1 << 30;
/// Latency of the longest request, ns (50 ms), at which I/O volume has
/// full strength.
pub const IO_FULL_PEAK_NS: i64 = 50_000_000;
/// Fewest bytes of page allocations (1 GiB) that count as memory pressure
/// without swap or an OOM kill.
pub const MIN_MEM_BYTES: u64 = 1 << 30;
/// Bytes of page allocations (4 GiB) at which memory pressure from
/// allocations alone has full strength.
pub const MEM_FULL_BYTES: u64 = 4 << 30;
/// A second is slow when the op's calls in it fall below this share of
/// its median calls per second.
pub const DROP_RATIO: f64 = 0.6;
/// Fewest consecutive slow seconds that make a throughput drop.
pub const DROP_MIN_SECONDS: usize = 2;
/// Share of the node's window a kernel-launching thread must spend waiting
/// for input (blocked outside any CUDA or NCCL call, between launches) for
/// input-pipeline starvation to be a chain (10%).
pub const MIN_INPUT_WAIT: f64 = 0.10;
/// Share of the window spent waiting for input from which that chain is HIGH (25%).
pub const HIGH_INPUT_WAIT: f64 = 0.25;
/// Worker threads busy (on a CPU, runnable, or with a block read in flight),
/// on average over the rank's waits, for the waits to be waits for the
/// workers (half a worker thread).
pub const MIN_WORKERS_BUSY: f64 = 0.5;
/// Share of the rank's waits during which its own block reads were in
/// flight for the waits to be its own data loading (50%).
pub const MIN_OWN_READ: f64 = 0.5;
/// Waiting within one gap between kernel launches that makes it a gap the
/// GPU was starved in (1 ms).
pub const INPUT_GAP_MIN_WAIT_NS: i64 = 1_000_000;

/// The severity of a tail: its p99/p50, the strength of its strongest
/// cause and its impact (see the module doc).
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

/// The severity of a tail on a node: [`severity`], but LOW whenever the
/// slow calls cost less than [`MIN_WINDOW_IMPACT`] of the node's window
/// (`window_share`).
#[must_use]
pub fn tail_severity(tail_ratio: f64, cause: f64, impact: f64, window_share: f64) -> Severity {
    if window_share < MIN_WINDOW_IMPACT {
        Severity::Low
    } else {
        severity(tail_ratio, cause, impact)
    }
}

/// Chains of one node, in the order found: tails (by op), throughput
/// drops, OOM kills, input starvation; and the duration statistics of every op. `evidence`
/// is the node's evidence over its whole window,
/// `evidence(d, d.window.from, d.window.to)`.
#[must_use]
pub fn chains(
    d: &NodeData,
    evidence: &Evidence,
    names: &HashMap<(u8, u8), String>,
    detected_at: i64,
) -> (Vec<Chain>, Vec<OpStats>) {
    let issuers = io_issuers(d);
    let mut stats = Vec::new();
    let mut out = Vec::new();
    let mut tail_ops = Vec::new();
    for (&(src, op), calls) in &d.calls {
        let name = op_name(names, src, op);
        let mut stat = op_stats(src, op, &name, calls);
        // A sample's percentiles stand; its count and time are the aggregates'.
        if let Some(sampled) = d.sampled.get(&(src, op)) {
            stat.count = usize::try_from(sampled.counted).unwrap_or(usize::MAX);
            stat.total_ns = sampled.total_ns;
        }
        stats.push(stat);
        if let Some(chain) = tail_chain(d, evidence, &issuers, (src, op), &name, calls, detected_at) {
            tail_ops.push((src, op));
            out.push(chain);
        }
    }
    for (&(src, op), calls) in &d.calls {
        // Rates from a sample of the calls would be the sample's.
        if tail_ops.contains(&(src, op)) || d.sampled.contains_key(&(src, op)) {
            continue;
        }
        if let Some(chain) = throughput_drop(d, names, src, op, calls, detected_at) {
            out.push(chain);
        }
    }
    if evidence.mem.oom_kills > 0 {
        out.push(oom_chain(d, detected_at));
    }
    if let Some(chain) = super::input::chain(d, &evidence.input, names, detected_at) {
        out.push(chain);
    }
    (out, stats)
}

/// The tail-latency rule for the calls of one op: a chain when the
/// comparable calls have a tail and a cause is present. `issuers` are the
/// node's I/O tasks ([`io_issuers`]).
fn tail_chain(
    d: &NodeData,
    evidence: &Evidence,
    issuers: &HashSet<u32>,
    (src, op): (u8, u8),
    name: &str,
    all_calls: &[Call],
    detected_at: i64,
) -> Option<Chain> {
    let window_ns = (d.window.to - d.window.from).max(1);
    let (calls, size_class) = comparable(all_calls);
    let calls = &calls;
    let s = op_stats(src, op, name, calls);
    let ratio = s.tail_ratio();
    if s.count < MIN_SAMPLES || ratio < TAIL_RATIO || s.p99_ns - s.p50_ns < MIN_TAIL_GAP_NS {
        return None;
    }
    let threshold = s.p95_ns.max((TAIL_RATIO * s.p50_ns as f64) as i64);
    let slow: Vec<Call> = calls
        .iter()
        .copied()
        .filter(|c| c.duration() >= threshold)
        .collect();
    let strength = strengths(d, evidence, &slow, window_ns);
    let causes = strength.ranked();
    if causes.is_empty() {
        return None;
    }
    let io_preemption = preempted_share(d, &slow, &|t| issuers.contains(&t));
    let cpu_hit = Some(preempted_share(d, &slow, &|t| !issuers.contains(&t)));
    let job = Job::of(d);
    let not_io = |t: u32| !issuers.contains(&t);
    let mut who = attribution::during(d, &job, &slow, &not_io);
    if who.is_empty() {
        who = attribution::over(d, &job, d.window.from, d.window.to, &not_io);
    }
    let texts: Vec<CauseText> = causes
        .iter()
        .map(|&(cause, st)| match cause {
            Cause::Cpu => describe_cpu(d, &evidence.cpu, &who, name, cpu_hit),
            Cause::Io => describe_io(
                d,
                &evidence.io,
                st,
                (io_preemption >= MIN_CAUSE_STRENGTH).then_some((name, io_preemption)),
            ),
            Cause::Memory => describe_mem(&evidence.mem),
        })
        .collect();
    let excess: i64 = slow.iter().map(|c| (c.duration() - s.p50_ns).max(0)).sum();
    let span = calls.iter().map(|c| c.end).max().unwrap_or(0) - calls.first().map_or(0, |c| c.start);
    let impact = excess as f64 / span.max(1) as f64;
    let sev = tail_severity(ratio, strength.max(), impact, excess as f64 / window_ns as f64);
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
    let over = d.sampled.get(&(src, op)).map_or_else(
        || format!("{} calls", s.count),
        |x| format!("{} stored calls (a sample of the {} counted)", s.count, x.counted),
    );
    timeline.push(TimelineEntry {
        layer: layer_of(src).into(),
        op: name.to_owned(),
        detail: format!(
            "p99={} ({ratio:.1}x p50={}) over {over}, max {}",
            format_ns(s.p99_ns as f64),
            format_ns(s.p50_ns as f64),
            format_ns(s.max_ns as f64)
        ),
        dur_us: s.p99_ns / 1000,
    });
    let root_cause = texts[0].root_cause.clone();
    let also: Vec<String> = texts[1..].iter().map(|t| t.root_cause.clone()).collect();
    Some(Chain {
        id: format!("{}:tail-{name}@{}", d.node, d.window.from / 1_000_000_000),
        node: d.node.clone(),
        severity: sev,
        score: impact * strength.max(),
        summary,
        root_cause,
        explanation: format!(
            "{name} has a long tail on {}: p99 {} is {ratio:.1}x its p50 {} over {over}. {}{}",
            d.node,
            format_ns(s.p99_ns as f64),
            format_ns(s.p50_ns as f64),
            texts[0].root_cause,
            if also.is_empty() {
                String::new()
            } else {
                format!(". Also: {}", also.join(". "))
            }
        ),
        recommendations: fixes(&texts),
        cuda_op: name.to_owned(),
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
    })
}

/// The throughput-drop rule for the calls of one op.
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
    let causes = strength.ranked();
    let (cause, st) = *causes.first()?;
    let low_rate = inner[s..e].iter().sum::<usize>() as f64 / (e - s) as f64;
    let name = op_name(names, src, op);
    let text = match cause {
        Cause::Cpu => describe_cpu(
            d,
            &ev.cpu,
            &attribution::over(d, &Job::of(d), from, to, &|_| true),
            &name,
            None,
        ),
        Cause::Io => describe_io(d, &ev.io, st, None),
        Cause::Memory => describe_mem(&ev.mem),
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

/// The OOM-kill rule: one HIGH chain for all the node's kills.
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
mod tests;
