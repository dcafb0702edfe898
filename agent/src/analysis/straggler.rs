//! Which node holds the job back, from per-node figures side by side.
//!
//! In a synchronous data-parallel job every rank waits for the slowest one
//! in each all-reduce, so a straggler does not show as a slower step (all
//! ranks step together) but as the one node that hardly waits: its peers
//! spend the time blocked in a synchronize call while it is still busy.
//! The verdict therefore rests on the share of time each node spends in
//! synchronize calls, and then names the host stress that is an outlier on
//! that node (CPU preemption of its traced threads, block I/O, memory
//! allocation, a launch-latency tail, a starved input pipeline; the last,
//! when it stands out, is named first: the reads and CPU use that may
//! stand out with it are its workers').
//!
//! Every comparison is robust, node against the *others*: the distance of
//! a node's value from the others' median, in units of the others' median
//! absolute deviation (scaled by 1.4826 to estimate a standard deviation,
//! floored so a quiet fleet with identical figures does not divide by zero).
//! A score of 3.5 or more is an outlier (Iglewicz and Hoaglin's threshold),
//! and the difference must also matter in absolute terms. Averages, and
//! averages of per-node percentiles, are never used.
//!
//! Invariants (property-tested): the verdict does not depend on the order
//! of the nodes; identical nodes have no straggler; scaling every node's
//! window by the same factor changes nothing.

use agent_common::catalog::{OpKind, op_kind, source};
use ingero_api::{NodeOps, OpSummary};
use serde::Serialize;

/// A robust score at or above this is an outlier.
pub const OUTLIER_SCORE: f64 = 3.5;
/// A straggler's peers wait at least this share of the time...
pub const MIN_PEER_WAIT: f64 = 0.05;
/// ...and at least this many times longer than it does.
pub const MIN_WAIT_RATIO: f64 = 1.25;
/// A stress signal names a cause only at this multiple of the peers' median.
pub const MIN_STRESS_RATIO: f64 = 2.0;

/// The figures of one node over its window (from `/api/v1/ops` or the
/// local engine's report: the same [`NodeOps`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeFigures {
    /// Node name.
    pub node: String,
    /// Its rank in the job, when known.
    pub rank: Option<i64>,
    /// Events analysed on the node.
    pub events: u64,
    /// Length of the node's window, ns; a node with none is left out of the
    /// comparison.
    pub window_ns: i64,
    /// Time in synchronize calls (driver or runtime, not both), ns.
    pub sync_ns: i64,
    /// The synchronize call that took most of it.
    pub sync_op: Option<String>,
    /// Time the traced threads were preempted while runnable, ns.
    pub preempted_ns: i64,
    /// Time the node's block devices were busy, ns.
    pub io_busy_ns: i64,
    /// Bytes written by block I/O requests in the window.
    pub io_write_bytes: u64,
    /// Bytes of pages allocated by the traced processes in the window.
    pub alloc_bytes: u64,
    /// OOM kills on the node in the window.
    pub oom_kills: u64,
    /// Time its launching thread waited for input (blocked between kernel
    /// launches outside any CUDA call while its workers were busy), ns;
    /// 0 when its waits were not for input ([`super::input::starved`]).
    pub input_wait_ns: i64,
    /// The most frequent kernel-launch call: (name, p50 ns, p99 ns, count).
    pub launch: Option<(String, i64, i64, u64)>,
}

impl NodeFigures {
    /// The figures of one node, from its operations and evidence.
    #[must_use]
    pub fn from_node(n: &NodeOps) -> Self {
        let total_ns = |o: &OpSummary| (o.total_ms * 1e6) as i64;
        let is_runtime = |o: &OpSummary| o.source == source::CUDA;
        // Runtime calls enter the driver: count one layer, the bigger.
        let syncs: Vec<&OpSummary> = n
            .ops
            .iter()
            .filter(|o| op_kind(o.source, o.op) == OpKind::Synchronize)
            .collect();
        let layer = |runtime: bool| {
            syncs
                .iter()
                .filter(|o| is_runtime(o) == runtime)
                .map(|o| total_ns(o))
                .sum::<i64>()
        };
        let use_runtime = layer(true) > layer(false);
        let sync_ns = layer(use_runtime);
        let sync_op = syncs
            .iter()
            .filter(|o| is_runtime(o) == use_runtime)
            .max_by_key(|o| total_ns(o))
            .map(|o| o.name.clone());
        let launch = n
            .ops
            .iter()
            .filter(|o| op_kind(o.source, o.op) == OpKind::Launch)
            .max_by_key(|o| (o.count, !is_runtime(o)))
            .map(|o| {
                (
                    o.name.clone(),
                    (o.p50_us * 1e3) as i64,
                    (o.p99_us * 1e3) as i64,
                    o.count as u64,
                )
            });
        let ev = &n.evidence;
        Self {
            node: n.node.clone(),
            rank: n.rank,
            events: n.events,
            window_ns: (n.window.to - n.window.from).max(0),
            sync_ns,
            sync_op,
            preempted_ns: ev.cpu.preempted_ns,
            io_busy_ns: ev.io.busy_ns,
            io_write_bytes: ev.io.write_bytes,
            alloc_bytes: ev.mem.alloc_bytes,
            oom_kills: ev.mem.oom_kills as u64,
            input_wait_ns: super::input::starved_wait_ns(&ev.input),
            launch,
        }
    }

    fn per_window(&self, x: f64) -> f64 {
        if self.window_ns > 0 {
            x / self.window_ns as f64
        } else {
            0.0
        }
    }

    /// Seconds waited in synchronize calls per second of window.
    #[must_use]
    pub fn wait_share(&self) -> f64 {
        self.per_window(self.sync_ns as f64)
    }

    /// The value of one stress signal.
    #[must_use]
    pub fn signal(&self, s: Stress) -> f64 {
        match s {
            Stress::Cpu => self.per_window(self.preempted_ns as f64),
            Stress::Io => self.per_window(self.io_busy_ns as f64),
            Stress::Write => self.per_window(self.io_write_bytes as f64 * 1e9),
            Stress::Memory => self.per_window(self.alloc_bytes as f64 * 1e9),
            Stress::Input => self.per_window(self.input_wait_ns as f64),
            Stress::LaunchTail => self
                .launch
                .as_ref()
                .map_or(0.0, |(_, p50, p99, _)| *p99 as f64 / (*p50).max(1) as f64),
        }
    }
}

/// Host stress that can make a node the straggler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stress {
    /// Share of the time the traced threads were preempted while runnable.
    Cpu,
    /// Share of the time the block devices were busy.
    Io,
    /// Bytes written per second.
    Write,
    /// Bytes of pages allocated per second by the traced processes.
    Memory,
    /// p99 / p50 of the kernel-launch call.
    LaunchTail,
    /// Share of the time the launching thread waited for input (a starved
    /// input pipeline).
    Input,
}

impl Stress {
    /// Every stress signal, in the order that breaks ties between causes.
    pub const ALL: [Self; 6] = [
        Self::Cpu,
        Self::Io,
        Self::Write,
        Self::Memory,
        Self::LaunchTail,
        Self::Input,
    ];

    /// Below this a value is too small to be a cause, whatever its score.
    fn floor(self) -> f64 {
        match self {
            Self::Cpu | Self::Io => 0.02,
            Self::Input => 0.05,
            Self::Write => 1024.0 * 1024.0,
            Self::Memory => 256.0 * 1024.0 * 1024.0,
            Self::LaunchTail => 3.0,
        }
    }

    /// The smallest spread a comparison assumes.
    fn min_scale(self) -> f64 {
        match self {
            Self::Cpu | Self::Io => 0.005,
            Self::Input => 0.01,
            Self::Write | Self::Memory => 256.0 * 1024.0,
            Self::LaunchTail => 0.25,
        }
    }

    /// The cause class the signal points to, as the headline names it ("CPU",
    /// "I/O", "memory", "launch latency", "input starvation").
    #[must_use]
    pub fn class(self) -> &'static str {
        match self {
            Self::Cpu => "CPU",
            Self::Io | Self::Write => "I/O",
            Self::Memory => "memory",
            Self::LaunchTail => "launch latency",
            Self::Input => "input starvation",
        }
    }

    /// The value as a person reads it.
    #[must_use]
    pub fn format(self, v: f64) -> String {
        match self {
            Self::Cpu | Self::Io | Self::Input => format!("{:.1}%", v * 100.0),
            Self::Write | Self::Memory => format!("{:.1} MiB/s", v / (1024.0 * 1024.0)),
            Self::LaunchTail => format!("{v:.1}x"),
        }
    }

    /// Which causes are named first, whatever their scores (lower first).
    /// A starved input pipeline leads: the block reads and CPU use that may
    /// stand out with it are its workers'. A launch-latency tail comes
    /// last: it is what preemption, I/O or memory stalls do to the
    /// launching thread, a symptom, and is the cause only when nothing
    /// else stands out.
    fn precedence(self) -> u8 {
        match self {
            Self::Input => 0,
            Self::Cpu | Self::Io | Self::Write | Self::Memory => 1,
            Self::LaunchTail => 2,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Cpu => "its threads preempted",
            Self::Io => "block devices busy",
            Self::Write => "written",
            Self::Memory => "pages allocated",
            Self::LaunchTail => "launch p99/p50",
            Self::Input => "its training thread waited for input",
        }
    }
}

/// The median of `v` (NaN-free input), `0` when empty.
#[must_use]
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        f64::midpoint(s[m - 1], s[m])
    }
}

/// Median absolute deviation from the median.
#[must_use]
pub fn mad(v: &[f64]) -> f64 {
    let m = median(v);
    median(&v.iter().map(|x| (x - m).abs()).collect::<Vec<_>>())
}

/// How far `x` lies above `others`, robustly: `(x - median) / scale`.
#[must_use]
pub fn robust_score(x: f64, others: &[f64], min_scale: f64) -> f64 {
    let m = median(others);
    let scale = (1.4826 * mad(others)).max(0.05 * m.abs()).max(min_scale);
    (x - m) / scale
}

/// One outlying stress signal of the straggler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cause {
    /// The stress signal that stands out.
    pub stress: Stress,
    /// The straggler's value of the signal (unit of the signal, see `Stress`).
    pub value: f64,
    /// The other nodes' median value of the signal.
    pub peers_median: f64,
    /// How far above its peers the value lies (robust score, at least
    /// [`OUTLIER_SCORE`]).
    pub score: f64,
}

/// The straggler and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Name of the straggler node.
    pub node: String,
    /// Its rank in the job, when known.
    pub rank: Option<i64>,
    /// Its share of time in synchronize calls (0 to 1).
    pub wait_share: f64,
    /// The other nodes' median share of time in synchronize calls.
    pub peers_wait_share: f64,
    /// The synchronize call its peers wait in.
    pub peers_sync_op: Option<String>,
    /// How far below its peers it waits (robust score).
    pub score: f64,
    /// Outlying stress, strongest first; empty if none stands out.
    pub causes: Vec<Cause>,
    /// Nodes compared.
    pub nodes: usize,
}

impl Verdict {
    /// One line: the node, the waiting that gives it away, the causes.
    #[must_use]
    pub fn headline(&self) -> String {
        let rank = self.rank.map_or(String::new(), |r| format!(" (rank {r})"));
        let sync = self.peers_sync_op.as_deref().unwrap_or("synchronize calls");
        let mut s = format!(
            "STRAGGLER {}{rank}: waits {:.1}% of the time while its {} peer(s) wait {:.1}% (median) in {sync}",
            self.node,
            self.wait_share * 100.0,
            self.nodes - 1,
            self.peers_wait_share * 100.0,
        );
        s.push_str(&causes_text(&self.causes));
        s
    }
}

/// `; I/O: written 386 MiB/s vs 0; CPU: ...`, or what to look at when no
/// host stress stands out: the end of a straggler's headline.
#[must_use]
pub fn causes_text(causes: &[Cause]) -> String {
    if causes.is_empty() {
        return "; no host stress stands out on it (look at its GPU work and input pipeline)".to_owned();
    }
    let causes: Vec<String> = causes
        .iter()
        .map(|c| {
            format!(
                "{}: {} {} vs {}",
                c.stress.class(),
                c.stress.describe(),
                c.stress.format(c.value),
                c.stress.format(c.peers_median)
            )
        })
        .collect();
    format!("; {}", causes.join("; "))
}

/// The host stress that stands out on `node` against the other nodes
/// (strongest first): the causes named for a straggler, whichever
/// evidence named it.
#[must_use]
pub fn causes_of(nodes: &[NodeFigures], node: &str) -> Vec<Cause> {
    let nodes: Vec<&NodeFigures> = nodes.iter().filter(|n| n.window_ns > 0).collect();
    match nodes.iter().position(|n| n.node == node) {
        Some(i) if nodes.len() >= 2 => stress_of(&nodes, i),
        _ => Vec::new(),
    }
}

/// The outlying stress of `nodes[i]`, strongest first.
fn stress_of(nodes: &[&NodeFigures], i: usize) -> Vec<Cause> {
    let others = |values: &[f64]| -> Vec<f64> {
        values
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| *v)
            .collect()
    };
    let mut causes: Vec<Cause> = Stress::ALL
        .iter()
        .filter_map(|&stress| {
            let values: Vec<f64> = nodes.iter().map(|n| n.signal(stress)).collect();
            let rest = others(&values);
            let peers_median = median(&rest);
            let score = robust_score(values[i], &rest, stress.min_scale());
            (score >= OUTLIER_SCORE
                && values[i] >= stress.floor()
                && values[i] >= MIN_STRESS_RATIO * peers_median)
                .then_some(Cause {
                    stress,
                    value: values[i],
                    peers_median,
                    score,
                })
        })
        .collect();
    causes.sort_by(|a, b| {
        a.stress
            .precedence()
            .cmp(&b.stress.precedence())
            .then(b.score.total_cmp(&a.score))
            .then((a.stress as u8).cmp(&(b.stress as u8)))
    });
    causes
}

/// Whether every node waits for the others: at least two have a window and
/// each spends at least [`MIN_PEER_WAIT`] of it in synchronize calls. With
/// no straggler standing out ([`find`]), such a job is *balanced*: no node
/// sets the pace, and a slowdown seen on one node only is absorbed in the
/// time it waits for the others anyway.
#[must_use]
pub fn every_node_waits(nodes: &[NodeFigures]) -> bool {
    let with_data: Vec<&NodeFigures> = nodes.iter().filter(|n| n.window_ns > 0).collect();
    with_data.len() >= 2 && with_data.iter().all(|n| n.wait_share() >= MIN_PEER_WAIT)
}

/// The straggler among `nodes`, if one stands out.
#[must_use]
pub fn find(nodes: &[NodeFigures]) -> Option<Verdict> {
    let nodes: Vec<&NodeFigures> = nodes.iter().filter(|n| n.window_ns > 0).collect();
    if nodes.len() < 2 {
        return None;
    }
    let waits: Vec<f64> = nodes.iter().map(|n| n.wait_share()).collect();
    let others = |values: &[f64], i: usize| -> Vec<f64> {
        values
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| *v)
            .collect()
    };
    // Lowest waiting relative to the others (a positive score: waits less).
    let mut best: Option<(usize, f64, f64)> = None;
    for i in 0..nodes.len() {
        let rest = others(&waits, i);
        let peers = median(&rest);
        let score = -robust_score(waits[i], &rest, 0.01);
        let stands_out =
            score >= OUTLIER_SCORE && peers >= MIN_PEER_WAIT && peers >= MIN_WAIT_RATIO * waits[i];
        // Ties break on the node name, so the order of the input is irrelevant.
        #[expect(clippy::float_cmp, reason = "an exact tie of scores computed the same way")]
        let better = best.is_none_or(|(b, s, _)| score > s || (score == s && nodes[i].node < nodes[b].node));
        if stands_out && better {
            best = Some((i, score, peers));
        }
    }
    let (i, score, peers_wait) = best?;
    let causes = stress_of(&nodes, i);
    // The call the peers wait in: the most common among them.
    let mut sync_ops: Vec<&str> = nodes
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, n)| n.sync_op.as_deref())
        .collect();
    sync_ops.sort_unstable();
    let peers_sync_op = sync_ops
        .iter()
        .max_by_key(|op| {
            (
                sync_ops.iter().filter(|o| o == op).count(),
                std::cmp::Reverse(**op),
            )
        })
        .map(|s| (*s).to_owned());
    Some(Verdict {
        node: nodes[i].node.clone(),
        rank: nodes[i].rank,
        wait_share: waits[i],
        peers_wait_share: peers_wait,
        peers_sync_op,
        score,
        causes,
        nodes: nodes.len(),
    })
}

#[cfg(test)]
mod tests;
