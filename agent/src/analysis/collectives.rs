//! Matching NCCL collectives across ranks: who arrives last, and who never
//! arrives.
//!
//! NCCL requires all ranks of a communicator to issue their collectives in
//! the same order, so `(comm_id, seq)` names one collective on every rank.
//! [`arrivals`] groups the calls of all ranks by that key and moves each
//! entry time onto one reference clock with its node's [`NodeClock`]; the
//! rank that enters last holds everybody else in the collective, and its
//! *margin* over the second-latest is the time it alone cost. A lateness
//! smaller than the clock error bounds is not evidence: the last rank is
//! *certain* only when it entered after every other rank by more than
//! their two nodes' error bounds (two ranks of one node share its clock,
//! so its error cancels between them). Ranks that disagree on the op or
//! size of one `(comm, seq)` are flagged (an order mismatch: the match is
//! wrong, or the job is) and such collectives are left out of lateness.
//!
//! [`lateness`] sums that up per rank and communicator and names a
//! straggler only when three things hold together: the rank is last far
//! more often than its fair share (a binomial z-score, a minimum count and
//! a minimum share), the time it held the others back is an outlier against
//! theirs (the robust score of [`super::straggler`]), and its median margin
//! stands above the noise (the clock bounds, the peers' own margins, and an
//! absolute floor). [`hangs`] finds, per communicator, the newest
//! collective some ranks entered long ago and others never did. No bus
//! bandwidth is derived: the host-side time of an asynchronous NCCL call
//! is only its enqueueing, not the transfer.
//!
//! Invariants (property-tested): the results do not depend on the order of
//! the calls; identical ranks have no straggler; moving one node's clock
//! together with its [`NodeClock`] offset changes nothing; a rank late by
//! far more than the noise on most collectives is named.

mod hang;
mod late;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use ingero_api::CollectiveCall;
use serde::Serialize;

pub use hang::{Hang, HangRank, describe_missing, hangs};
pub use late::{CollectiveVerdict, CommLateness, LatenessReport, RankLateness, lateness};

/// A node's clock against the reference clock (the fleet client's).
///
/// `node clock + offset_ns = reference clock`, within `± error_ns`. Note
/// the sign: the fleet's clock estimate is the agent's clock *minus* ours,
/// so it converts with [`NodeClock::from_agent_offset`]. A node absent
/// from the map is taken to be on the reference clock exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeClock {
    /// Add to the node's times to get reference times, ns.
    pub offset_ns: i64,
    /// Half-width of the bound on the offset, ns.
    pub error_ns: i64,
}

impl NodeClock {
    /// From an offset measured as the agent's clock minus the reference
    /// clock (the fleet's `ClockEstimate`), with its error bound.
    #[must_use]
    pub fn from_agent_offset(agent_minus_reference_ns: i64, error_ns: i64) -> Self {
        Self {
            offset_ns: agent_minus_reference_ns.saturating_neg(),
            error_ns: error_ns.max(0),
        }
    }

    fn of(clocks: &HashMap<String, NodeClock>, node: &str) -> Self {
        clocks.get(node).copied().unwrap_or_default()
    }
}

/// A rank: a process on a node, with its job and communicator ranks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rank {
    /// Node the rank runs on.
    pub node: String,
    /// Its process id.
    pub pid: u32,
    /// Its rank in the job, when known.
    pub world_rank: Option<i64>,
    /// Its rank within the communicator, when known.
    pub comm_rank: Option<i64>,
}

impl Rank {
    fn of(c: &CollectiveCall) -> Self {
        Self {
            node: c.node.clone(),
            pid: c.pid,
            world_rank: c.world_rank,
            comm_rank: c.comm_rank,
        }
    }

    /// What identifies the rank: `(node, pid)`.
    #[must_use]
    pub fn key(&self) -> (&str, u32) {
        (&self.node, self.pid)
    }

    /// `rank 2`, else `comm rank 2`, else `pid 4242`.
    #[must_use]
    pub fn name(&self) -> String {
        match (self.world_rank, self.comm_rank) {
            (Some(r), _) => format!("rank {r}"),
            (None, Some(r)) => format!("comm rank {r}"),
            (None, None) => format!("pid {}", self.pid),
        }
    }
}

/// One rank's arrival at a collective.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arrival {
    /// Who arrived.
    #[serde(flatten)]
    pub rank: Rank,
    /// When it entered the call, Unix ns on the reference clock.
    pub entry_ns: i64,
    /// The error bound of its node's clock, ns.
    pub error_ns: i64,
    /// How long the call took on the host, ns.
    pub duration_ns: i64,
    /// What the call returned (`ncclResult_t`).
    pub ret: i32,
}

/// A rank whose call does not match the collective's op and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    /// The rank.
    #[serde(flatten)]
    pub rank: Rank,
    /// The op it called at this sequence number.
    pub op: String,
    /// The bytes it passed.
    pub bytes: u64,
}

/// One collective, as every rank that was seen entering it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Collective {
    /// The communicator.
    pub comm_id: String,
    /// Its sequence number on the communicator.
    pub seq: u64,
    /// The op most ranks called (`ncclAllReduce`).
    pub op: String,
    /// The payload most ranks passed, bytes.
    pub bytes: u64,
    /// The communicator's size, when a rank reported it.
    pub comm_size: Option<i64>,
    /// One per rank (its earliest entry if it was recorded twice), earliest
    /// first; at least two.
    pub arrivals: Vec<Arrival>,
    /// The last rank to arrive (the last of `arrivals`).
    pub last: Rank,
    /// Last entry minus first, ns.
    pub spread_ns: i64,
    /// Last entry minus the second-latest, ns: what the last rank alone cost.
    pub margin_ns: i64,
    /// Whether the last rank entered after every other by more than the
    /// error bounds of their clocks.
    pub last_certain: bool,
    /// Ranks whose op or size differ from the collective's (an order
    /// mismatch); empty when all agree.
    pub mismatch: Vec<Disagreement>,
}

/// The bound on how wrong the difference of two entry times can be: the
/// sum of the two nodes' error bounds, or none on one node.
fn pair_bound(a: &Arrival, b: &Arrival) -> i64 {
    if a.rank.node == b.rank.node {
        0
    } else {
        a.error_ns.saturating_add(b.error_ns)
    }
}

/// Groups `calls` into collectives by `(comm_id, seq)`, with entries on the
/// reference clock; only those seen by at least two ranks, ordered by
/// communicator then sequence number.
#[must_use]
pub fn arrivals(calls: &[CollectiveCall], clocks: &HashMap<String, NodeClock>) -> Vec<Collective> {
    let mut groups: BTreeMap<(&str, u64), Vec<&CollectiveCall>> = BTreeMap::new();
    for c in calls {
        groups.entry((&c.comm_id, c.seq)).or_default().push(c);
    }
    groups
        .into_iter()
        .filter_map(|((comm_id, seq), group)| collective(comm_id, seq, &group, clocks))
        .collect()
}

fn collective(
    comm_id: &str,
    seq: u64,
    group: &[&CollectiveCall],
    clocks: &HashMap<String, NodeClock>,
) -> Option<Collective> {
    let mut calls: Vec<(Arrival, &CollectiveCall)> = group
        .iter()
        .map(|c| {
            let clock = NodeClock::of(clocks, &c.node);
            let a = Arrival {
                rank: Rank::of(c),
                entry_ns: c.entry_ns.saturating_add(clock.offset_ns),
                error_ns: clock.error_ns.max(0),
                duration_ns: c.duration_ns,
                ret: c.ret,
            };
            (a, *c)
        })
        .collect();
    // One arrival per rank, its earliest; every tie broken on content so
    // the input order never matters.
    let content = |(a, c): &(Arrival, &CollectiveCall)| {
        (
            a.entry_ns,
            c.op.clone(),
            c.bytes,
            a.duration_ns,
            a.ret,
            a.rank.world_rank,
            a.rank.comm_rank,
        )
    };
    calls.sort_by(|x, y| {
        x.0.rank
            .key()
            .cmp(&y.0.rank.key())
            .then_with(|| content(x).cmp(&content(y)))
    });
    calls.dedup_by(|later, first| later.0.rank.key() == first.0.rank.key());
    if calls.len() < 2 {
        return None;
    }
    calls.sort_by(|x, y| (x.0.entry_ns, x.0.rank.key()).cmp(&(y.0.entry_ns, y.0.rank.key())));

    // The op and size most ranks called; ties go to the smallest.
    let mut votes: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for (_, c) in &calls {
        *votes.entry((&c.op, c.bytes)).or_default() += 1;
    }
    let ((op, bytes), _) = votes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, n)| (*k, *n))?;
    let mismatch = calls
        .iter()
        .filter(|(_, c)| (c.op.as_str(), c.bytes) != (op, bytes))
        .map(|(a, c)| Disagreement {
            rank: a.rank.clone(),
            op: c.op.clone(),
            bytes: c.bytes,
        })
        .collect();
    let comm_size = calls.iter().filter_map(|(_, c)| c.comm_size).max();
    let (op, bytes) = (op.to_owned(), bytes);
    let arrivals: Vec<Arrival> = calls.into_iter().map(|(a, _)| a).collect();
    let (first, last) = (&arrivals[0], &arrivals[arrivals.len() - 1]);
    let second = &arrivals[arrivals.len() - 2];
    let last_certain = arrivals[..arrivals.len() - 1]
        .iter()
        .all(|a| last.entry_ns.saturating_sub(a.entry_ns) > pair_bound(last, a));
    Some(Collective {
        comm_id: comm_id.to_owned(),
        seq,
        op,
        bytes,
        comm_size,
        last: last.rank.clone(),
        spread_ns: last.entry_ns.saturating_sub(first.entry_ns),
        margin_ns: last.entry_ns.saturating_sub(second.entry_ns),
        last_certain,
        mismatch,
        arrivals,
    })
}

/// The collectives named in words (`all-reduces`) in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `ncclAllReduce`.
    AllReduce,
    /// `ncclAllGather`.
    AllGather,
    /// `ncclReduceScatter`.
    ReduceScatter,
    /// `ncclAlltoAll`.
    AllToAll,
    /// `ncclBroadcast` (and the older `ncclBcast`).
    Broadcast,
    /// `ncclReduce`.
    Reduce,
}

impl Kind {
    /// The kind of an NCCL function name, whatever its case.
    #[must_use]
    pub fn of(op: &str) -> Option<Self> {
        let name = op.to_ascii_lowercase();
        Some(match name.strip_prefix("nccl").unwrap_or(&name) {
            "allreduce" => Self::AllReduce,
            "allgather" => Self::AllGather,
            "reducescatter" => Self::ReduceScatter,
            "alltoall" => Self::AllToAll,
            "broadcast" | "bcast" => Self::Broadcast,
            "reduce" => Self::Reduce,
            _ => return None,
        })
    }

    /// `all-reduce`, `all-gather`, ...
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllReduce => "all-reduce",
            Self::AllGather => "all-gather",
            Self::ReduceScatter => "reduce-scatter",
            Self::AllToAll => "all-to-all",
            Self::Broadcast => "broadcast",
            Self::Reduce => "reduce",
        }
    }
}

/// `850 ns`, `12.4 µs`, `12.4 ms`, `1.2 s`, `41 s`, `12 min`.
fn duration(ns: i64) -> String {
    let x = ns as f64;
    match ns.unsigned_abs() {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", x / 1e6),
        1_000_000_000..10_000_000_000 => format!("{:.1} s", x / 1e9),
        10_000_000_000..120_000_000_000 => format!("{:.0} s", x / 1e9),
        _ => format!("{:.0} min", x / 60e9),
    }
}

/// `512 B`, `1.5 KiB`, `64.0 MiB`, `2.0 GiB`.
fn bytes(b: u64) -> String {
    let x = b as f64;
    match b {
        0..1024 => format!("{b} B"),
        1024..0x10_0000 => format!("{:.1} KiB", x / 1024.0),
        0x10_0000..0x4000_0000 => format!("{:.1} MiB", x / f64::from(1u32 << 20)),
        _ => format!("{:.1} GiB", x / f64::from(1u32 << 30)),
    }
}

/// `all-reduces` for `ncclAllReduce`, else `collectives`.
fn plural(op: Option<&str>) -> String {
    op.and_then(Kind::of)
        .map_or_else(|| "collectives".to_owned(), |k| format!("{}s", k.as_str()))
}

/// The first four digits of a communicator id and an ellipsis: `3f2a…`.
fn short_comm(comm_id: &str) -> String {
    let head: String = comm_id.chars().take(4).collect();
    if head.len() < comm_id.len() {
        format!("{head}…")
    } else {
        head
    }
}
