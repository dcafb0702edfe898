//! The words of a chain: for each [`Cause`](super::evidence::Cause), the
//! phrase of the summary, the timeline entry, the root-cause sentence and
//! the fixes ([`CauseText`]), plus the size and name formatting they share.
//!
//! Text only: nothing here measures or decides whether a cause is present
//! (the rules choose which causes to describe, strongest first); the words
//! follow the evidence already measured (writes or reads, heavy or not).
//! The output is what users, the API and the fleet see and what tests
//! match on, so changing a sentence changes the output. Task names go
//! through [`NodeData::task_name`], which sanitises them. A chain lists the
//! [`fixes`] of its two strongest causes, at most five.

use agent_common::catalog::source;

use super::{
    chain::TimelineEntry,
    dataset::NodeData,
    evidence::{CpuEvidence, IoEvidence, MemEvidence},
    rules::STRONG_CAUSE,
};
use crate::units::format_ns;

/// Words, timeline entry, root-cause sentence and fixes of one cause.
pub(super) struct CauseText {
    pub(super) phrase: String,
    pub(super) timeline: TimelineEntry,
    pub(super) root_cause: String,
    pub(super) fixes: Vec<String>,
}

/// CPU contention. `hit_share`: the share of the slow `op_name` calls
/// whose caller was preempted (tails only).
pub(super) fn describe_cpu(
    d: &NodeData,
    e: &CpuEvidence,
    op_name: &str,
    hit_share: Option<f64>,
) -> CauseText {
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

/// Block I/O, with checkpoint fixes for writes and data-loading fixes for
/// reads. `preempting`: the op and the share of its slow calls during
/// which I/O tasks preempted the caller, when that counts.
pub(super) fn describe_io(
    d: &NodeData,
    e: &IoEvidence,
    strength: f64,
    preempting: Option<(&str, f64)>,
) -> CauseText {
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

/// Memory pressure.
pub(super) fn describe_mem(e: &MemEvidence) -> CauseText {
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

/// The fixes of the two strongest causes, at most five.
pub(super) fn fixes(texts: &[CauseText]) -> Vec<String> {
    texts
        .iter()
        .take(2)
        .flat_map(|t| t.fixes.iter().take(3).cloned())
        .take(5)
        .collect()
}

/// `512 MiB`, `2.0 GiB`.
pub(super) fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// `4 B`, `64 KiB`, `256 MiB`.
pub(super) fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// `99 1032`: task ids for a shell command.
fn pid_list(items: &[(u32, usize)]) -> String {
    items
        .iter()
        .map(|(p, _)| p.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The timeline layer of an op of source `src`.
pub(super) fn layer_of(src: u8) -> &'static str {
    if src == source::DRIVER { "DRIVER" } else { "CUDA" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_in_binary_units() {
        assert_eq!(mib(3 << 30), "3.0 GiB");
        assert_eq!(mib(256 << 20), "256 MiB");
        assert_eq!(size(4), "4 B");
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(256 << 20), "256 MiB");
        assert_eq!(pid_list(&[(99, 3), (7, 1)]), "99 7");
    }
}
