//! Who took the CPU from the traced threads, and how much of the preempted
//! time each took: the facts behind "mostly by X", "spread over N tasks"
//! and "by the job's own processes".
//!
//! A preempted off-CPU span (`sched_switch`, still runnable when switched
//! out) names the task that took the CPU (`arg1`, a thread id; its name is
//! in `process_names`). [`during`] weighs each span by the time it overlaps
//! the slow calls of the same process (a span counts once, with its
//! largest overlap), [`over`] by its time within a period; either way the
//! tasks come out by preempted time, most first, never by number of
//! preemptions (two short preemptions by a passing `apt-cache` weigh
//! little against seconds taken by a sibling rank).
//!
//! Each preempting task gets an [`Origin`], from what the recording tells
//! about the node's own job ([`Job`]):
//!
//! - the ingero agent itself: a task named as the agent's threads are
//!   ([`AGENT_TASK_NAMES`]; nothing records the agent's pid);
//! - a thread of the preempted process itself;
//! - a sibling rank: another traced process that makes CUDA calls, or a
//!   task named as the traced ranks' calling threads are (ranks traced by
//!   another agent, as on a simulated cluster sharing one machine);
//! - a worker: a traced process that makes no CUDA calls, or a child a
//!   traced process created (DataLoader workers);
//! - outside the job: anything else (a noisy neighbour, a kernel thread).
//!
//! Shares are of the total preempted time attributed, in [0, 1]; an empty
//! attribution (no span names its preemptor, as in databases of other
//! tracers) has none.

use std::collections::{HashMap, HashSet};

use super::dataset::{Call, NodeData};

/// Task names of the ingero agent's own threads: the main thread, the
/// database writer and the async runtime's workers (named `ingero-rt` by
/// [`crate::runtime`]). Tokio's default worker names (`tokio-rt-worker`)
/// are not among them: other daemons use them too (a recorded sample shows
/// one with pid 75 preempting a rank), so recordings made before the
/// workers were named count those as outside the job.
pub const AGENT_TASK_NAMES: &[&str] = &[
    "ingero",
    "ingero-writer",
    "ingero-rt",
    "ingero-otlp",
    "ingero-chains",
];

/// Where a preempting task comes from, as far as the recording tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Another thread of the preempted process.
    SameProcess,
    /// Another rank of the job on the node.
    SiblingRank,
    /// A worker process of the job (a traced process without CUDA calls,
    /// or a child of a traced process): DataLoader workers.
    Worker,
    /// The ingero agent itself.
    Agent,
    /// Not part of the job: a noisy neighbour, a kernel thread.
    Outside,
}

impl Origin {
    /// Part of the job (the agent counts: it runs for the job).
    #[must_use]
    pub fn is_own(self) -> bool {
        self != Self::Outside
    }

    /// The group's name in a sentence.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::SameProcess => "other threads of the rank",
            Self::SiblingRank => "sibling ranks",
            Self::Worker => "worker processes (DataLoader)",
            Self::Agent => "the ingero agent",
            Self::Outside => "tasks outside the job",
        }
    }
}

/// One preempting task and the preempted time it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemptor {
    /// Thread id of the task that took the CPU.
    pub tid: u32,
    /// Preempted time attributed to it, ns.
    pub ns: i64,
    /// Preemptions attributed to it.
    pub count: usize,
    /// Where it comes from.
    pub origin: Origin,
}

/// The preempted time of some calls or a period, by preempting task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// Every preempting task, most time first (then by thread id).
    pub tasks: Vec<Preemptor>,
    /// Total preempted time attributed, ns.
    pub total_ns: i64,
}

impl Attribution {
    /// Builds an attribution from `(preemptor, origin, ns)` pieces.
    #[must_use]
    pub fn from_pieces(pieces: impl IntoIterator<Item = (u32, Origin, i64)>) -> Self {
        let mut by_task: HashMap<(u32, Origin), (i64, usize)> = HashMap::new();
        for (tid, origin, ns) in pieces {
            let e = by_task.entry((tid, origin)).or_default();
            e.0 += ns;
            e.1 += 1;
        }
        let mut tasks: Vec<Preemptor> = by_task
            .into_iter()
            .map(|((tid, origin), (ns, count))| Preemptor {
                tid,
                ns,
                count,
                origin,
            })
            .collect();
        tasks.sort_by(|a, b| b.ns.cmp(&a.ns).then(a.tid.cmp(&b.tid)));
        Self {
            total_ns: tasks.iter().map(|t| t.ns).sum(),
            tasks,
        }
    }

    /// No preempted time attributed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total_ns <= 0
    }

    /// Share of the preempted time taken by tasks whose origin `pick` accepts.
    #[must_use]
    pub fn share(&self, pick: impl Fn(Origin) -> bool) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let ns: i64 = self.tasks.iter().filter(|t| pick(t.origin)).map(|t| t.ns).sum();
        ns as f64 / self.total_ns as f64
    }

    /// Share of the preempted time taken by the job's own processes.
    #[must_use]
    pub fn own_share(&self) -> f64 {
        self.share(Origin::is_own)
    }

    /// The task that took the most time, and its share.
    #[must_use]
    pub fn largest(&self) -> Option<(&Preemptor, f64)> {
        let t = self.tasks.first().filter(|_| !self.is_empty())?;
        Some((t, t.ns as f64 / self.total_ns as f64))
    }

    /// The job's own groups that took time, largest share first.
    #[must_use]
    pub fn own_groups(&self) -> Vec<(Origin, f64)> {
        let mut v: Vec<(Origin, f64)> = [
            Origin::SiblingRank,
            Origin::Worker,
            Origin::Agent,
            Origin::SameProcess,
        ]
        .into_iter()
        .map(|o| (o, self.share(|x| x == o)))
        .filter(|(_, s)| *s > 0.0)
        .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// What the recording tells about the node's own job.
#[derive(Debug, Default)]
pub struct Job {
    /// Process of every traced thread seen (thread id to process id).
    process_of: HashMap<u32, u32>,
    /// Processes that make CUDA calls: the ranks.
    ranks: HashSet<u32>,
    /// Names of the ranks' calling threads.
    rank_names: HashSet<String>,
}

impl Job {
    /// The job as recorded on node `d`.
    #[must_use]
    pub fn of(d: &NodeData) -> Self {
        let mut job = Self::default();
        for c in d.calls.values().flatten() {
            job.process_of.insert(c.tid, c.pid);
            job.ranks.insert(c.pid);
            if let Some(name) = d.names.get(&c.tid) {
                job.rank_names.insert(name.clone());
            }
        }
        for o in &d.off_cpu {
            job.process_of.insert(o.tid, o.pid);
        }
        for i in &d.io {
            job.process_of.insert(i.tid, i.pid);
        }
        for child in &d.children {
            job.process_of.entry(*child).or_insert(*child);
        }
        job
    }

    /// The origin of `preemptor` taking the CPU from a thread of process
    /// `victim`.
    #[must_use]
    pub fn origin(&self, d: &NodeData, victim: u32, preemptor: u32) -> Origin {
        let name = d.names.get(&preemptor).map(String::as_str);
        if name.is_some_and(|n| AGENT_TASK_NAMES.contains(&n)) {
            return Origin::Agent;
        }
        match self.process_of.get(&preemptor) {
            Some(p) if *p == victim => Origin::SameProcess,
            Some(p) if self.ranks.contains(p) => Origin::SiblingRank,
            Some(_) => Origin::Worker,
            None if name.is_some_and(|n| self.rank_names.contains(n)) => Origin::SiblingRank,
            None => Origin::Outside,
        }
    }
}

/// The preempted time overlapping the `slow` calls: every preempted span
/// of a thread of a calling process, by a task `by` accepts, weighed by
/// its largest overlap with one of that process's slow calls.
#[must_use]
pub fn during(d: &NodeData, job: &Job, slow: &[Call], by: &dyn Fn(u32) -> bool) -> Attribution {
    // Spans per process, in start order, with the latest end so far.
    let mut spans: HashMap<u32, Vec<(usize, i64)>> = HashMap::new();
    for (i, o) in d.off_cpu.iter().enumerate() {
        if o.preempted != Some(false) && o.preemptor != 0 && by(o.preemptor) {
            let list = spans.entry(o.pid).or_default();
            let max_end = list.last().map_or(o.end, |(_, m)| (*m).max(o.end));
            list.push((i, max_end));
        }
    }
    let mut overlap: HashMap<usize, i64> = HashMap::new();
    for c in slow {
        let Some(list) = spans.get(&c.pid) else {
            continue;
        };
        let n = list.partition_point(|(i, _)| d.off_cpu[*i].start <= c.end);
        for (i, max_end) in list[..n].iter().rev() {
            if *max_end < c.start {
                break;
            }
            let o = &d.off_cpu[*i];
            let ov = o.end.min(c.end) - o.start.max(c.start);
            if ov > 0 {
                let e = overlap.entry(*i).or_default();
                *e = (*e).max(ov);
            }
        }
    }
    Attribution::from_pieces(overlap.into_iter().map(|(i, ns)| {
        let o = &d.off_cpu[i];
        (o.preemptor, job.origin(d, o.pid, o.preemptor), ns)
    }))
}

/// The preempted time of the node's traced threads between `from` and `to`,
/// by tasks `by` accepts.
#[must_use]
pub fn over(d: &NodeData, job: &Job, from: i64, to: i64, by: &dyn Fn(u32) -> bool) -> Attribution {
    Attribution::from_pieces(
        d.off_cpu
            .iter()
            .filter(|o| o.preempted != Some(false) && o.preemptor != 0 && by(o.preemptor))
            .filter(|o| o.end >= from && o.start <= to)
            .map(|o| {
                (
                    o.preemptor,
                    job.origin(d, o.pid, o.preemptor),
                    o.end.min(to) - o.start.max(from),
                )
            })
            .filter(|(_, _, ns)| *ns > 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::dataset::OffCpu;
    use agent_common::catalog::{driver_op, source};

    fn call(pid: u32, tid: u32, start: i64, end: i64) -> Call {
        Call {
            pid,
            tid,
            start,
            end,
            bytes: 0,
        }
    }

    fn span(pid: u32, tid: u32, start: i64, end: i64, by: u32) -> OffCpu {
        OffCpu {
            pid,
            tid,
            start,
            end,
            preempted: Some(true),
            preemptor: by,
        }
    }

    /// Rank 1 (thread 7) and rank 2 (thread 20) make calls; process 30 was
    /// forked by a rank; 40 is named as the agent, 50 as a rank's caller.
    fn node() -> NodeData {
        let mut d = NodeData::default();
        d.calls.insert(
            (source::DRIVER, driver_op::LAUNCH_KERNEL),
            vec![call(1, 7, 0, 100), call(2, 20, 0, 100)],
        );
        d.off_cpu.push(span(1, 8, 0, 1, 99));
        d.children.insert(30);
        for (tid, name) in [
            (7, "python"),
            (20, "python"),
            (40, "ingero-rt"),
            (50, "python"),
            (99, "cron"),
        ] {
            d.names.insert(tid, name.into());
        }
        d
    }

    #[test]
    fn origins_follow_what_the_recording_knows_of_the_job() {
        let d = node();
        let job = Job::of(&d);
        assert_eq!(job.origin(&d, 1, 8), Origin::SameProcess);
        assert_eq!(job.origin(&d, 1, 20), Origin::SiblingRank);
        assert_eq!(job.origin(&d, 1, 30), Origin::Worker);
        assert_eq!(job.origin(&d, 1, 40), Origin::Agent);
        assert_eq!(
            job.origin(&d, 1, 50),
            Origin::SiblingRank,
            "untraced, named as the ranks"
        );
        assert_eq!(job.origin(&d, 1, 99), Origin::Outside);
        assert_eq!(job.origin(&d, 1, 12345), Origin::Outside, "unknown");
    }

    #[test]
    fn time_not_counts_decides_and_each_span_counts_once() {
        let mut d = node();
        d.off_cpu.clear();
        // Two long preemptions by the sibling, twenty short ones by cron,
        // all within the one slow call of thread 7.
        d.off_cpu.push(span(1, 7, 10, 40, 20));
        d.off_cpu.push(span(1, 7, 50, 80, 20));
        for k in 0..20 {
            d.off_cpu.push(span(1, 7, 80 + k, 81 + k, 99));
        }
        // Outside every slow call: not counted.
        d.off_cpu.push(span(1, 7, 500, 900, 99));
        d.off_cpu.sort_by_key(|o| o.start);
        let job = Job::of(&d);
        let slow = [call(1, 7, 0, 100), call(1, 7, 0, 100)];
        let a = during(&d, &job, &slow, &|_| true);
        assert_eq!(a.total_ns, 80, "the repeated call does not count twice");
        let (top, share) = a.largest().expect("a preemptor");
        assert_eq!((top.tid, top.count, top.origin), (20, 2, Origin::SiblingRank));
        assert!((share - 0.75).abs() < 1e-9, "{share}");
        assert!((a.own_share() - 0.75).abs() < 1e-9);
        assert_eq!(a.own_groups(), vec![(Origin::SiblingRank, 0.75)]);
        let only_cron = during(&d, &job, &slow, &|t| t == 99);
        assert_eq!(only_cron.total_ns, 20);
        let period = over(&d, &job, 0, 600, &|_| true);
        assert_eq!(period.total_ns, 80 + 100, "clipped to the period");
        assert!(Attribution::default().largest().is_none());
    }
}
