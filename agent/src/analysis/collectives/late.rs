//! Lateness per rank and communicator, and the rank that holds the others
//! back at collectives (the straggler).
//!
//! Only collectives whose ranks agree on op and size count, and a rank is
//! last only where it is certainly last (see [`super::Collective`]). A
//! rank's fair share of lasts is the sum over its collectives of `1/k`
//! (`k` ranks seen there); its count of lasts is compared with that share
//! by a binomial z-score (variance the sum of `p(1-p)`). The time it held
//! the others back is the sum of its margins where it was last.
//!
//! A straggler needs all of: at least [`MIN_LAST`] lasts; a z-score of at
//! least [`MIN_Z`]; a share of lasts of at least [`MIN_SHARE_RATIO`] times
//! its fair share (or halfway from it to always, whichever is lower, so two
//! ranks can have one); held-back time that is an outlier against its
//! peers' (robust score at least [`OUTLIER_SCORE`], spread floored at
//! [`HELD_BACK_MIN_SCALE_NS`])
//! and at least [`MIN_HELD_BACK_SHARE`] of the communicator's span;
//! and a median margin at least [`MARGIN_NOISE_RATIO`] times the noise, the
//! larger of [`MIN_MARGIN_NS`] (host-side entry jitter) and the median
//! clock bound of its own lasts. Its peers' margins are not noise: a rank
//! that is late on most collectives by a little holds the job back as
//! surely as one late on a few by a lot, which the held-back test weighs. Of several
//! candidates (one per communicator at most), the one that held the others
//! back longest is named.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Collective, Rank, duration, pair_bound, plural, short_comm};
use crate::analysis::{
    stats::percentile,
    straggler::{OUTLIER_SCORE, median, robust_score},
};

/// Fewest certain lasts of a straggler.
pub const MIN_LAST: usize = 5;
/// Smallest binomial z-score of a straggler's count of lasts.
pub const MIN_Z: f64 = 3.0;
/// A straggler is last at least this many times as often as chance would
/// make it. An effect-size floor beside [`MIN_Z`], which alone would name a
/// rank last a little more often than its peers once there are enough
/// collectives; the held-back test weighs by how much. At 2, a rank last
/// 47% of the time among 4 (1.9x chance, z 4.1) that held its peers back 3x
/// longer than any other was missed on this shared 2-core machine.
pub const MIN_SHARE_RATIO: f64 = 1.5;
/// A straggler's median margin is at least this multiple of the noise.
pub const MARGIN_NOISE_RATIO: f64 = 2.0;
/// A straggler held its peers back at least this share of the
/// communicator's span (first to last arrival): below it the job would
/// hardly go faster without it (severity follows impact).
pub const MIN_HELD_BACK_SHARE: f64 = 0.01;
/// The smallest noise assumed, ns (50 µs): host-side entry jitter.
pub const MIN_MARGIN_NS: i64 = 50_000;
/// The smallest spread of held-back times a comparison assumes, ns (1 ms).
pub const HELD_BACK_MIN_SCALE_NS: f64 = 1e6;

/// How late one rank was on one communicator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankLateness {
    /// The rank.
    #[serde(flatten)]
    pub rank: Rank,
    /// The communicator.
    pub comm_id: String,
    /// Collectives it took part in (compared ones only).
    pub collectives: usize,
    /// Times it was certainly last.
    pub last: usize,
    /// Times it would be last by chance (sum of `1/k`).
    pub expected_last: f64,
    /// `(last - expected) / sd`: how far above chance it is last.
    pub z: f64,
    /// Median margin when it was last, ns (0 if never).
    pub margin_p50_ns: i64,
    /// 90th-percentile margin when it was last, ns.
    pub margin_p90_ns: i64,
    /// Sum of its margins when last: the time it held the others back, ns.
    pub held_back_ns: i64,
    /// Median clock error bound of its lasts (against the second-latest), ns.
    pub bound_p50_ns: i64,
}

/// What one communicator's collectives show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommLateness {
    /// The communicator.
    pub comm_id: String,
    /// Ranks seen in its compared collectives.
    pub ranks: usize,
    /// Collectives compared (ranks agree on op and size).
    pub collectives: usize,
    /// Of those, the ones with a certain last rank.
    pub certain: usize,
    /// Collectives left out because ranks disagreed on op or size.
    pub mismatched: usize,
    /// The op of all its compared collectives, when they share one.
    pub op: Option<String>,
}

/// The rank that holds the others back, and the figures that say so.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectiveVerdict {
    /// The straggler.
    #[serde(flatten)]
    pub rank: Rank,
    /// The communicator it was found on.
    pub comm_id: String,
    /// The op of all the communicator's collectives, when they share one.
    pub op: Option<String>,
    /// Ranks on the communicator.
    pub ranks: usize,
    /// Collectives it took part in.
    pub collectives: usize,
    /// Times it was certainly last.
    pub last: usize,
    /// `last / collectives`.
    pub share_last: f64,
    /// Its fair share of lasts (about `1 / ranks`).
    pub expected_share: f64,
    /// Binomial z-score of its count of lasts.
    pub z: f64,
    /// Median margin when last, ns.
    pub margin_p50_ns: i64,
    /// 90th-percentile margin when last, ns.
    pub margin_p90_ns: i64,
    /// Time it held the others back, ns.
    pub held_back_ns: i64,
    /// How far its held-back time lies above its peers' (robust score).
    pub score: f64,
    /// The peers' median share of lasts.
    pub peers_share_last: f64,
    /// The peers' median margin when they were last, ns (0 if never).
    pub peers_margin_p50_ns: i64,
    /// The peers' median held-back time, ns.
    pub peers_held_back_ns: i64,
    /// The noise its median margin was held against, ns.
    pub noise_ns: i64,
}

impl CollectiveVerdict {
    /// One line: who, how often last against chance, by how much.
    #[must_use]
    pub fn headline(&self) -> String {
        format!(
            "STRAGGLER {} ({}): last at {} of {} {} ({:.0}% vs {:.0}% expected), late by {} median (p90 {}); \
             held {} peer(s) back {} in all on comm {}",
            self.rank.node,
            self.rank.name(),
            self.last,
            self.collectives,
            plural(self.op.as_deref()),
            self.share_last * 100.0,
            self.expected_share * 100.0,
            duration(self.margin_p50_ns),
            duration(self.margin_p90_ns),
            self.ranks - 1,
            duration(self.held_back_ns),
            short_comm(&self.comm_id),
        )
    }
}

/// Lateness per communicator and rank, and the straggler if one stands out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatenessReport {
    /// One per communicator, by id.
    pub comms: Vec<CommLateness>,
    /// One per rank and communicator, by communicator then `(node, pid)`.
    pub ranks: Vec<RankLateness>,
    /// The rank that holds the others back, if one does.
    pub straggler: Option<CollectiveVerdict>,
}

#[derive(Default)]
struct Acc {
    rank: Option<Rank>,
    collectives: usize,
    /// Collectives taken part in, by the number of ranks seen there.
    by_size: BTreeMap<usize, usize>,
    margins: Vec<i64>,
    bounds: Vec<i64>,
}

#[derive(Default)]
struct CommAcc<'a> {
    collectives: usize,
    certain: usize,
    mismatched: usize,
    ops: BTreeMap<&'a str, usize>,
    ranks: BTreeMap<(&'a str, u32), Acc>,
    /// Earliest and latest arrival on the reference clock.
    first: Option<i64>,
    end: i64,
}

/// Lateness of every rank on every communicator of `collectives` (from
/// [`super::arrivals`]).
#[must_use]
pub fn lateness(collectives: &[Collective]) -> LatenessReport {
    let mut comms: BTreeMap<&str, CommAcc> = BTreeMap::new();
    for c in collectives {
        let comm = comms.entry(&c.comm_id).or_default();
        if !c.mismatch.is_empty() {
            comm.mismatched += 1;
            continue;
        }
        comm.collectives += 1;
        *comm.ops.entry(&c.op).or_default() += 1;
        for a in &c.arrivals {
            comm.first = Some(comm.first.map_or(a.entry_ns, |f: i64| f.min(a.entry_ns)));
            comm.end = comm.end.max(a.entry_ns);
        }
        let k = c.arrivals.len();
        for a in &c.arrivals {
            let acc = comm.ranks.entry(a.rank.key()).or_default();
            let rank = acc.rank.get_or_insert_with(|| a.rank.clone());
            // Known beats unknown; should ranks ever disagree, the larger
            // wins, whatever the order of the collectives.
            rank.world_rank = rank.world_rank.max(a.rank.world_rank);
            rank.comm_rank = rank.comm_rank.max(a.rank.comm_rank);
            acc.collectives += 1;
            *acc.by_size.entry(k).or_default() += 1;
        }
        if c.last_certain
            && let [.., second, last] = c.arrivals.as_slice()
        {
            comm.certain += 1;
            let acc = comm.ranks.entry(last.rank.key()).or_default();
            acc.margins.push(c.margin_ns);
            acc.bounds.push(pair_bound(last, second));
        }
    }

    let mut report = LatenessReport {
        comms: Vec::new(),
        ranks: Vec::new(),
        straggler: None,
    };
    for (comm_id, comm) in comms {
        let op = match comm.ops.keys().collect::<Vec<_>>().as_slice() {
            [op] => Some((**op).to_owned()),
            _ => None,
        };
        report.comms.push(CommLateness {
            comm_id: comm_id.to_owned(),
            ranks: comm.ranks.len(),
            collectives: comm.collectives,
            certain: comm.certain,
            mismatched: comm.mismatched,
            op: op.clone(),
        });
        let ranks: Vec<RankLateness> = comm
            .ranks
            .into_values()
            .filter_map(|acc| rank_lateness(comm_id, acc))
            .collect();
        let span = comm.first.map_or(0, |f| comm.end.saturating_sub(f));
        if let Some(v) = verdict(&ranks, op.as_deref(), span)
            && report.straggler.as_ref().is_none_or(|best| stronger(&v, best))
        {
            report.straggler = Some(v);
        }
        report.ranks.extend(ranks);
    }
    report
}

fn rank_lateness(comm_id: &str, mut acc: Acc) -> Option<RankLateness> {
    let rank = acc.rank?;
    let (mut expected, mut variance) = (0.0, 0.0);
    for (&k, &n) in &acc.by_size {
        let p = 1.0 / k as f64;
        expected += n as f64 * p;
        variance += n as f64 * p * (1.0 - p);
    }
    let last = acc.margins.len();
    let z = if variance > 0.0 {
        (last as f64 - expected) / variance.sqrt()
    } else {
        0.0
    };
    acc.margins.sort_unstable();
    acc.bounds.sort_unstable();
    Some(RankLateness {
        rank,
        comm_id: comm_id.to_owned(),
        collectives: acc.collectives,
        last,
        expected_last: expected,
        z,
        margin_p50_ns: percentile(&acc.margins, 50.0),
        margin_p90_ns: percentile(&acc.margins, 90.0),
        held_back_ns: acc.margins.iter().fold(0i64, |s, m| s.saturating_add(*m)),
        bound_p50_ns: percentile(&acc.bounds, 50.0),
    })
}

/// The straggler among the ranks of one communicator.
fn verdict(ranks: &[RankLateness], op: Option<&str>, span_ns: i64) -> Option<CollectiveVerdict> {
    if ranks.len() < 2 {
        return None;
    }
    let peers_of = |i: usize| {
        ranks
            .iter()
            .enumerate()
            .filter(move |(j, _)| *j != i)
            .map(|(_, r)| r)
    };
    let share = |r: &RankLateness| r.last as f64 / r.collectives.max(1) as f64;
    let mut best: Option<CollectiveVerdict> = None;
    for (i, r) in ranks.iter().enumerate() {
        let expected_share = r.expected_last / r.collectives.max(1) as f64;
        let min_share = (MIN_SHARE_RATIO * expected_share).min(f64::midpoint(1.0, expected_share));
        let held: Vec<f64> = peers_of(i).map(|p| p.held_back_ns as f64).collect();
        let score = robust_score(r.held_back_ns as f64, &held, HELD_BACK_MIN_SCALE_NS);
        let peer_margins: Vec<f64> = peers_of(i)
            .filter(|p| p.last > 0)
            .map(|p| p.margin_p50_ns as f64)
            .collect();
        let peers_margin = median(&peer_margins) as i64;
        let noise = MIN_MARGIN_NS.max(r.bound_p50_ns);
        let stands_out = r.last >= MIN_LAST
            && r.z >= MIN_Z
            && share(r) >= min_share
            && score >= OUTLIER_SCORE
            && r.held_back_ns as f64 >= MIN_HELD_BACK_SHARE * span_ns as f64
            && r.margin_p50_ns as f64 >= MARGIN_NOISE_RATIO * noise as f64;
        if !stands_out {
            continue;
        }
        let v = CollectiveVerdict {
            rank: r.rank.clone(),
            comm_id: r.comm_id.clone(),
            op: op.map(str::to_owned),
            ranks: ranks.len(),
            collectives: r.collectives,
            last: r.last,
            share_last: share(r),
            expected_share,
            z: r.z,
            margin_p50_ns: r.margin_p50_ns,
            margin_p90_ns: r.margin_p90_ns,
            held_back_ns: r.held_back_ns,
            score,
            peers_share_last: median(&peers_of(i).map(share).collect::<Vec<_>>()),
            peers_margin_p50_ns: peers_margin,
            peers_held_back_ns: median(&held) as i64,
            noise_ns: noise,
        };
        if best.as_ref().is_none_or(|b| stronger(&v, b)) {
            best = Some(v);
        }
    }
    best
}

/// Whether `a` is the stronger verdict: more time held back, then a higher
/// z-score, then the smaller `(comm, node, pid)` so that ties are stable.
fn stronger(a: &CollectiveVerdict, b: &CollectiveVerdict) -> bool {
    a.held_back_ns
        .cmp(&b.held_back_ns)
        .then(a.z.total_cmp(&b.z))
        .then_with(|| (&b.comm_id, b.rank.key()).cmp(&(&a.comm_id, a.rank.key())))
        .is_gt()
}
