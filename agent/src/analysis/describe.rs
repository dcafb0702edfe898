//! The words of a chain: for each [`Cause`](super::evidence::Cause), the
//! phrase of the summary, the timeline entry, the root-cause sentence and
//! the fixes ([`CauseText`]), plus the size and name formatting they share.
//!
//! Text only: nothing here measures or decides whether a cause is present
//! (the rules choose which causes to describe, strongest first); the words
//! follow the evidence already measured (writes or reads, heavy or not,
//! who took the CPU: [`super::attribution`]).
//! The output is what users, the API and the fleet see and what tests
//! match on, so changing a sentence changes the output. Task names go
//! through [`NodeData::task_name`], which sanitises them. A chain lists the
//! [`fixes`] of its two strongest causes, at most five.

use agent_common::catalog::source;

use super::{
    attribution::{Attribution, Origin},
    chain::TimelineEntry,
    dataset::NodeData,
    evidence::{CpuEvidence, IoEvidence, MemEvidence},
    rules::{MOSTLY_SHARE, STRONG_CAUSE},
};
use crate::units::format_ns;

/// Words, timeline entry, root-cause sentence and fixes of one cause.
pub(super) struct CauseText {
    pub(super) phrase: String,
    pub(super) timeline: TimelineEntry,
    pub(super) root_cause: String,
    pub(super) fixes: Vec<String>,
}

/// CPU contention. `who`: the preempted time by preempting task (during
/// the slow calls for a tail, over the period for a drop); `hit_share`:
/// the share of the slow `op_name` calls whose caller was preempted (tails
/// only).
///
/// The root cause says whose the contention is: *within the job* when the
/// job's own processes (sibling ranks, their workers, the agent) took most
/// of the preempted time, *from outside the job* otherwise, each with its
/// own fixes. A task is said to be "mostly" responsible only when it took
/// more than [`MOSTLY_SHARE`] of the time; otherwise the sentence says how
/// spread the time is and names the largest share.
pub(super) fn describe_cpu(
    d: &NodeData,
    e: &CpuEvidence,
    who: &Attribution,
    op_name: &str,
    hit_share: Option<f64>,
) -> CauseText {
    let hit = hit_share.map_or(String::new(), |h| {
        format!(
            "; the calling process was preempted during {:.0}% of the slowest {op_name} calls",
            h * 100.0
        )
    });
    let by = if who.is_empty() {
        String::new()
    } else {
        let top: Vec<String> = who
            .tasks
            .iter()
            .take(3)
            .map(|t| {
                format!(
                    "{} {}",
                    d.task_name(t.tid),
                    pct(t.ns as f64 / who.total_ns as f64)
                )
            })
            .collect();
        format!(
            "; preempted by {} of {} ({} task{})",
            top.join(", "),
            format_ns(who.total_ns as f64),
            who.tasks.len(),
            if who.tasks.len() == 1 { "" } else { "s" }
        )
    };
    let base = format!(
        "threads making CUDA calls were preempted {} times ({} runnable but off-CPU)",
        e.preemptions,
        format_ns(e.preempted_ns as f64)
    );
    let own = who.own_share();
    let (root_cause, fixes) = if who.is_empty() {
        (format!("CPU contention: {base}"), cpu_fixes_unknown())
    } else if is_most(own) {
        (
            format!(
                "CPU contention within the job: {base}, {} of the preempted time by the job's own processes ({}); {}",
                pct(own),
                own_groups(who),
                who_words(d, who)
            ),
            cpu_fixes_own(who),
        )
    } else {
        let also = if own >= 0.2 {
            format!("; {} by the job's own processes ({})", pct(own), own_groups(who))
        } else {
            String::new()
        };
        (
            format!(
                "CPU contention from outside the job: {base}, {}{also}",
                who_words(d, who)
            ),
            cpu_fixes_outside(who),
        )
    };
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
        root_cause,
        fixes,
    }
}

/// `mostly by X (64% of the preempted time)`, or `spread over 37 tasks;
/// the largest, X, 12%`.
fn who_words(d: &NodeData, who: &Attribution) -> String {
    match who.largest() {
        None => String::new(),
        Some((t, share)) if is_most(share) => format!(
            "mostly by {} ({} of the preempted time)",
            d.task_name(t.tid),
            pct(share)
        ),
        Some((t, share)) => format!(
            "spread over {} tasks; the largest, {}, {}",
            who.tasks.len(),
            d.task_name(t.tid),
            pct(share)
        ),
    }
}

/// `sibling ranks 71%, the ingero agent 6%`.
fn own_groups(who: &Attribution) -> String {
    who.own_groups()
        .iter()
        .map(|(o, s)| format!("{} {}", o.label(), pct(*s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fixes when the job's own processes take the CPU from its launch threads.
fn cpu_fixes_own(who: &Attribution) -> Vec<String> {
    let mut fixes = Vec::new();
    if who.own_groups().first().is_some_and(|(o, _)| *o == Origin::Agent) {
        fixes.push(
            "Keep the ingero agent off the training cores: start it under taskset -c <a spare core>, or at nice 19"
                .to_owned(),
        );
    }
    fixes.extend([
        "Run fewer busy processes than cores: ranks plus DataLoader workers on the node must leave each rank's launch thread a core (fewer ranks per node, or fewer workers)".to_owned(),
        "Pin each rank and its workers to cores of their own (taskset -c / numactl --physcpubind per rank), so ranks stop preempting each other".to_owned(),
        "Lower DataLoader num_workers: workers beyond the spare cores compete with the ranks".to_owned(),
    ]);
    fixes
}

/// Fixes when tasks outside the job take the CPU.
fn cpu_fixes_outside(who: &Attribution) -> Vec<String> {
    let outside: Vec<String> = who
        .tasks
        .iter()
        .filter(|t| !t.origin.is_own())
        .take(5)
        .map(|t| t.tid.to_string())
        .collect();
    let mut fixes = Vec::new();
    if !outside.is_empty() {
        fixes.push(format!(
            "Move the interfering tasks off the training cores, or renice them: renice +19 -p {}",
            outside.join(" ")
        ));
    }
    fixes.extend([
        "Confine other work with a cgroup: a cpuset away from the training cores, or a CPU quota (systemd-run -p CPUQuota=...)".to_owned(),
        "Pin the training processes to dedicated cores (taskset -c / numactl --physcpubind) and keep other work off them".to_owned(),
    ]);
    fixes
}

/// Fixes when nothing says who preempted the launch threads.
fn cpu_fixes_unknown() -> Vec<String> {
    vec![
        "Pin the training processes to dedicated cores (taskset -c / numactl --physcpubind) and keep other work off them".to_owned(),
        "Leave cores free for the CUDA launch threads: fewer DataLoader workers than spare cores".to_owned(),
    ]
}

/// More than [`MOSTLY_SHARE`], and printed so (`50%` never reads as "mostly").
fn is_most(share: f64) -> bool {
    share > MOSTLY_SHARE && (share * 100.0).round() > MOSTLY_SHARE * 100.0
}

/// `64%`, or `<1%` for a small share that is not nothing.
fn pct(share: f64) -> String {
    if share > 0.0 && share < 0.005 {
        "<1%".to_owned()
    } else {
        format!("{:.0}%", share * 100.0)
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
    }

    const MS: i64 = 1_000_000;

    fn evidence() -> CpuEvidence {
        CpuEvidence {
            preemptions: 1875,
            preempted_ns: 2_810 * MS,
            top_preemptors: Vec::new(),
        }
    }

    fn node(names: &[(u32, &str)]) -> NodeData {
        let mut d = NodeData::default();
        for (tid, name) in names {
            d.names.insert(*tid, (*name).to_owned());
        }
        d
    }

    fn words(d: &NodeData, pieces: Vec<(u32, Origin, i64)>) -> CauseText {
        describe_cpu(
            d,
            &evidence(),
            &Attribution::from_pieces(pieces),
            "cuLaunchKernel",
            Some(0.8),
        )
    }

    #[test]
    fn a_task_is_mostly_responsible_only_for_most_of_the_preempted_time() {
        let d = node(&[(6600, "cpu-hog"), (12, "kworker/0:1")]);
        let t = words(
            &d,
            vec![(6600, Origin::Outside, 900 * MS), (12, Origin::Outside, 100 * MS)],
        );
        assert!(
            t.root_cause.starts_with(
                "CPU contention from outside the job: threads making CUDA calls were preempted 1875 times (2.81s runnable but off-CPU)"
            ),
            "{}",
            t.root_cause
        );
        assert!(
            t.root_cause
                .ends_with(", mostly by cpu-hog (6600) (90% of the preempted time)"),
            "{}",
            t.root_cause
        );
        assert!(
            t.timeline
                .detail
                .ends_with("preempted by cpu-hog (6600) 90%, kworker/0:1 (12) 10% of 1.00s (2 tasks)"),
            "{}",
            t.timeline.detail
        );
        assert_eq!(
            t.fixes[0],
            "Move the interfering tasks off the training cores, or renice them: renice +19 -p 6600 12"
        );

        // Half is not most.
        let t = words(
            &d,
            vec![(6600, Origin::Outside, 500 * MS), (12, Origin::Outside, 500 * MS)],
        );
        assert!(!t.root_cause.contains("mostly"), "{}", t.root_cause);
        assert!(
            t.root_cause
                .ends_with("spread over 2 tasks; the largest, kworker/0:1 (12), 50%"),
            "ties go to the lower task id: {}",
            t.root_cause
        );
    }

    #[test]
    fn preemption_spread_over_many_tasks_says_how_spread() {
        let mut names = vec![(15019, "apt-cache")];
        names.extend((1..=36).map(|i| (i, "worker")));
        let d = node(&names);
        let mut pieces = vec![(15019, Origin::Outside, 120 * MS)];
        pieces.extend((1..=36).map(|i| (i, Origin::Outside, 880 * MS / 36)));
        let t = words(&d, pieces);
        assert!(!t.root_cause.contains("mostly"), "{}", t.root_cause);
        assert!(
            t.root_cause
                .ends_with("spread over 37 tasks; the largest, apt-cache (15019), 12%"),
            "{}",
            t.root_cause
        );
    }

    #[test]
    fn the_jobs_own_processes_are_named_as_such_with_their_own_fixes() {
        let d = node(&[(201, "python"), (202, "python"), (300, "ingero-rt"), (9, "cron")]);
        let t = words(
            &d,
            vec![
                (201, Origin::SiblingRank, 400 * MS),
                (202, Origin::SiblingRank, 300 * MS),
                (300, Origin::Agent, 200 * MS),
                (9, Origin::Outside, 100 * MS),
            ],
        );
        assert!(
            t.root_cause.starts_with("CPU contention within the job: "),
            "{}",
            t.root_cause
        );
        assert!(
            t.root_cause.contains(
                "90% of the preempted time by the job's own processes (sibling ranks 70%, the ingero agent 20%); spread over 4 tasks; the largest, python (201), 40%"
            ),
            "{}",
            t.root_cause
        );
        assert!(
            t.fixes[0].starts_with("Run fewer busy processes than cores"),
            "{:?}",
            t.fixes
        );
        assert!(t.fixes.iter().any(|f| f.starts_with("Pin each rank")));
        assert!(
            !t.fixes.iter().any(|f| f.contains("renice")),
            "the job is not a neighbour to renice: {:?}",
            t.fixes
        );

        // Mostly the agent: its own fix comes first.
        let t = words(
            &d,
            vec![
                (300, Origin::Agent, 800 * MS),
                (201, Origin::SiblingRank, 200 * MS),
            ],
        );
        assert!(
            t.root_cause.contains("(the ingero agent 80%, sibling ranks 20%); mostly by ingero-rt (300) (80% of the preempted time)"),
            "{}",
            t.root_cause
        );
        assert!(t.fixes[0].starts_with("Keep the ingero agent off the training cores"));

        // Outside interference with a notable share of the job's own.
        let t = words(
            &d,
            vec![(9, Origin::Outside, 700 * MS), (202, Origin::Worker, 300 * MS)],
        );
        assert!(
            t.root_cause.ends_with(
                "mostly by cron (9) (70% of the preempted time); 30% by the job's own processes (worker processes (DataLoader) 30%)"
            ),
            "{}",
            t.root_cause
        );
        assert_eq!(
            t.fixes[0], "Move the interfering tasks off the training cores, or renice them: renice +19 -p 9",
            "only the outside tasks are reniced"
        );
    }

    #[test]
    fn without_named_preemptors_the_words_claim_no_one() {
        let t = words(&NodeData::default(), Vec::new());
        assert_eq!(
            t.root_cause,
            "CPU contention: threads making CUDA calls were preempted 1875 times (2.81s runnable but off-CPU)"
        );
        assert!(t.fixes[0].starts_with("Pin the training processes"));
    }
}
