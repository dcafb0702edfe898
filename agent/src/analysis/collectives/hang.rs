//! Hung collectives: per communicator, the newest collective that some
//! ranks entered and others did not, long enough ago.
//!
//! The members of a communicator are the ranks that joined it (init or
//! split calls) and the ranks seen calling on it. With `K` the highest
//! sequence number any of them entered, the ranks at `K` wait there (NCCL
//! cannot finish it without everybody) and the others are missing. Members
//! the communicator's size promises but no node reported are *unseen*
//! (their agent did not answer). It is a hang when someone is missing or
//! unseen and the earliest entry into `K` is older than the threshold even
//! allowing for that node's clock error; a job that ended normally (all
//! members at the same last collective) or a rank that merely lags is none.
//! With only unseen members missing the hang is not `confirmed`: the job
//! may have ended while a node's agent was down.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ingero_api::{CollectiveCall, CommMember, RankActivity};
use serde::Serialize;

use super::{NodeClock, Rank, bytes, duration, short_comm};

/// Ranks listed by name in a headline; the rest are counted.
const HEADLINE_RANKS: usize = 4;
/// Communicator sizes above this are not listed rank by rank.
const MAX_LISTED_SIZE: i64 = 1 << 16;

/// A member of a hung communicator and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HangRank {
    /// The rank.
    #[serde(flatten)]
    pub rank: Rank,
    /// The highest sequence number it entered on the communicator, if any.
    pub last_seq: Option<u64>,
    /// When it entered that one, Unix ns on the reference clock.
    pub last_entry_ns: Option<i64>,
    /// Its node's clock offset used (node clock + offset = reference), ns.
    pub clock_offset_ns: i64,
}

/// A collective some ranks wait in while others never arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hang {
    /// The communicator.
    pub comm_id: String,
    /// The collective's sequence number.
    pub seq: u64,
    /// Its op, as most waiting ranks called it.
    pub op: String,
    /// Its payload, bytes.
    pub bytes: u64,
    /// The communicator's size, when reported.
    pub comm_size: Option<i64>,
    /// Ranks in the communicator: its size, or the members seen if more.
    pub ranks: usize,
    /// The earliest entry into the collective, Unix ns on the reference clock.
    pub since_ns: i64,
    /// The reference clock's now, as given.
    pub now_ns: i64,
    /// `now_ns - since_ns`.
    pub waited_ns: i64,
    /// The ranks that entered it, earliest first.
    pub waiting: Vec<HangRank>,
    /// Known members that did not, by rank.
    pub missing: Vec<HangRank>,
    /// Members the size promises that no node reported.
    pub unseen: usize,
    /// Their communicator ranks, when every seen member's is known.
    pub unseen_comm_ranks: Vec<i64>,
    /// Whether a known member is missing (not only unseen ones).
    pub confirmed: bool,
}

impl Hang {
    /// One line: which collective, who waits how long, who never arrived.
    #[must_use]
    pub fn headline(&self) -> String {
        let waiting = match self.waiting.len() {
            1 => "1 rank waits".to_owned(),
            n => format!("{n} ranks wait"),
        };
        let mut absent: Vec<String> = self
            .missing
            .iter()
            .take(HEADLINE_RANKS)
            .map(|m| {
                let last = m.last_seq.map_or_else(
                    || "no collective on this comm".to_owned(),
                    |s| format!("last entered #{s}"),
                );
                format!("{} ({}) never arrived ({last})", m.rank.name(), m.rank.node)
            })
            .collect();
        if self.missing.len() > HEADLINE_RANKS {
            absent.push(format!(
                "{} more never arrived",
                self.missing.len() - HEADLINE_RANKS
            ));
        }
        if self.unseen > 0 {
            let which = if self.unseen_comm_ranks.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = self.unseen_comm_ranks.iter().map(i64::to_string).collect();
                format!(" (comm rank {})", list.join(", "))
            };
            absent.push(format!(
                "{} rank(s) never seen{which}: no node reported them, is their agent answering?",
                self.unseen
            ));
        }
        format!(
            "{} {} #{} on comm {} ({} ranks, {}): {waiting} since {}; {}",
            if self.confirmed { "HANG" } else { "POSSIBLE HANG" },
            self.op,
            self.seq,
            short_comm(&self.comm_id),
            self.ranks,
            bytes(self.bytes),
            duration(self.waited_ns),
            absent.join("; "),
        )
    }
}

struct Member<'a> {
    rank: Rank,
    last: Option<&'a CollectiveCall>,
}

/// The hung collectives of every communicator in `calls` and `members`,
/// longest wait first. `now_ns` is on the reference clock; a hang is an
/// entry older than `threshold_ns`.
#[must_use]
pub fn hangs(
    calls: &[CollectiveCall],
    members: &[CommMember],
    clocks: &HashMap<String, NodeClock>,
    now_ns: i64,
    threshold_ns: i64,
) -> Vec<Hang> {
    type Comm<'a> = (BTreeMap<(&'a str, u32), Member<'a>>, Option<i64>);
    let mut comms: BTreeMap<&str, Comm> = BTreeMap::new();
    for m in members {
        let (ranks, size) = comms.entry(&m.comm_id).or_default();
        *size = (*size).max(m.comm_size);
        let member = ranks.entry((&m.node, m.pid)).or_insert_with(|| Member {
            rank: Rank {
                node: m.node.clone(),
                pid: m.pid,
                world_rank: None,
                comm_rank: None,
            },
            last: None,
        });
        member.rank.world_rank = member.rank.world_rank.max(m.world_rank);
        member.rank.comm_rank = member.rank.comm_rank.max(m.comm_rank);
    }
    let reference = |c: &CollectiveCall| {
        c.entry_ns
            .saturating_add(NodeClock::of(clocks, &c.node).offset_ns)
    };
    for c in calls {
        let (ranks, size) = comms.entry(&c.comm_id).or_default();
        *size = (*size).max(c.comm_size);
        let member = ranks.entry((&c.node, c.pid)).or_insert_with(|| Member {
            rank: Rank::of(c),
            last: None,
        });
        member.rank.world_rank = member.rank.world_rank.max(c.world_rank);
        member.rank.comm_rank = member.rank.comm_rank.max(c.comm_rank);
        // The highest sequence number; of repeats, the earliest entry.
        let newer = member.last.is_none_or(|l| {
            (c.seq, std::cmp::Reverse(reference(c)), &c.op, c.bytes)
                > (l.seq, std::cmp::Reverse(reference(l)), &l.op, l.bytes)
        });
        if newer {
            member.last = Some(c);
        }
    }

    let mut found: Vec<Hang> = comms
        .into_iter()
        .filter_map(|(comm_id, (ranks, size))| {
            hang(
                comm_id,
                &ranks.into_values().collect::<Vec<_>>(),
                size,
                clocks,
                now_ns,
                threshold_ns,
            )
        })
        .collect();
    found.sort_by(|a, b| {
        b.waited_ns
            .cmp(&a.waited_ns)
            .then_with(|| a.comm_id.cmp(&b.comm_id))
    });
    found
}

fn hang(
    comm_id: &str,
    members: &[Member],
    comm_size: Option<i64>,
    clocks: &HashMap<String, NodeClock>,
    now_ns: i64,
    threshold_ns: i64,
) -> Option<Hang> {
    let seq = members.iter().filter_map(|m| m.last).map(|c| c.seq).max()?;
    let clock = |r: &Rank| NodeClock::of(clocks, &r.node);
    let entry = |m: &Member| {
        m.last
            .map(|c| c.entry_ns.saturating_add(clock(&m.rank).offset_ns))
    };
    let seen = members.len();
    let unseen = comm_size.map_or(0, |s| usize::try_from(s).unwrap_or(0).saturating_sub(seen));
    let (mut waiting, mut missing): (Vec<&Member>, Vec<&Member>) =
        members.iter().partition(|m| m.last.is_some_and(|c| c.seq == seq));
    if missing.is_empty() && unseen == 0 {
        return None;
    }
    waiting.sort_by_key(|m| (entry(m), m.rank.key()));
    let first = waiting.first()?;
    let since_ns = entry(first)?;
    let waited_ns = now_ns.saturating_sub(since_ns);
    if waited_ns.saturating_sub(clock(&first.rank).error_ns) <= threshold_ns {
        return None;
    }

    // The op and size most waiting ranks called; ties go to the smallest.
    let mut votes: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for c in waiting.iter().filter_map(|m| m.last) {
        *votes.entry((&c.op, c.bytes)).or_default() += 1;
    }
    let (op, bytes) = votes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| *k)?;

    let unseen_comm_ranks = match comm_size {
        Some(size) if unseen > 0 && size <= MAX_LISTED_SIZE => {
            let known: Option<BTreeSet<i64>> = members.iter().map(|m| m.rank.comm_rank).collect();
            known.map_or_else(Vec::new, |known| {
                (0..size).filter(|r| !known.contains(r)).collect()
            })
        }
        _ => Vec::new(),
    };
    missing.sort_by(|a, b| {
        (a.rank.world_rank, a.rank.comm_rank, a.rank.key()).cmp(&(
            b.rank.world_rank,
            b.rank.comm_rank,
            b.rank.key(),
        ))
    });
    let describe = |m: &&Member| HangRank {
        rank: m.rank.clone(),
        last_seq: m.last.map(|c| c.seq),
        last_entry_ns: entry(m),
        clock_offset_ns: clock(&m.rank).offset_ns,
    };
    Some(Hang {
        comm_id: comm_id.to_owned(),
        seq,
        op: op.to_owned(),
        bytes,
        comm_size,
        ranks: usize::try_from(comm_size.unwrap_or(0)).unwrap_or(0).max(seen),
        since_ns,
        now_ns,
        waited_ns,
        confirmed: !missing.is_empty(),
        waiting: waiting.iter().map(describe).collect(),
        missing: missing.iter().map(describe).collect(),
        unseen,
        unseen_comm_ranks,
    })
}

/// One line per thread of each missing rank, saying what it is doing now
/// (from the agents' live `activity`), and one per group of unseen ranks.
#[must_use]
pub fn describe_missing(hang: &Hang, activity: &[RankActivity]) -> Vec<String> {
    let mut lines = Vec::new();
    for m in &hang.missing {
        let who = format!("{} ({}, pid {})", m.rank.name(), m.rank.node, m.rank.pid);
        // Node clock to the reference clock, then how long before now.
        let ago = |ns: i64| {
            duration(
                hang.now_ns
                    .saturating_sub(ns.saturating_add(m.clock_offset_ns))
                    .max(0),
            )
        };
        let Some(a) = activity
            .iter()
            .find(|a| a.node == m.rank.node && a.pid == m.rank.pid)
        else {
            lines.push(format!(
                "{who}: no thread activity reported (a stored database, or its agent does not trace the process)"
            ));
            continue;
        };
        if a.threads.is_empty() {
            lines.push(format!("{who}: no traced thread reported"));
        }
        let mut threads: Vec<_> = a.threads.iter().collect();
        threads.sort_by_key(|t| t.tid);
        for t in threads {
            let mut line = format!("{who}: thread {} {} {}", t.tid, t.name, t.state);
            if t.state == "gone" {
                line.push_str(" (it has exited)");
            } else if let Some(since) = t.since_ns
                && t.state != "running"
            {
                line.push_str(&format!(" for {}", ago(since)));
            }
            match (&t.last_call, t.last_call_ns) {
                (Some(call), Some(at)) => {
                    line.push_str(&format!("; last call {call} returned {} ago", ago(at)));
                }
                (Some(call), None) => line.push_str(&format!("; last call {call}")),
                (None, _) => line.push_str("; no CUDA or NCCL call seen"),
            }
            lines.push(line);
        }
    }
    if hang.unseen > 0 {
        let which = if hang.unseen_comm_ranks.is_empty() {
            format!("{} rank(s) of the communicator", hang.unseen)
        } else {
            let list: Vec<String> = hang.unseen_comm_ranks.iter().map(i64::to_string).collect();
            format!("comm rank {}", list.join(", "))
        };
        lines.push(format!(
            "{which}: never seen, no node reported it (its agent is not answering or not running)"
        ));
    }
    lines
}
