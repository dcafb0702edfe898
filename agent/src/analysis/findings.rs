//! The job-level verdicts of a comparison: the straggler named from
//! collective arrival order when NCCL calls were traced (the direct
//! evidence), from synchronize waits otherwise, and the hung collectives.
//!
//! Invariant: when both kinds of evidence name a straggler and they
//! disagree, the lines say so (the collective verdict first, then a note
//! naming the other node); when collectives were matched but single out no
//! rank, a synchronize-wait verdict carries a note saying that too. The
//! two never contradict each other silently.

use std::collections::HashMap;

use ingero_api::{CollectiveCall, CommMember, RankActivity};
use serde::Serialize;

use super::{
    collectives::{self, Hang, LatenessReport, NodeClock},
    straggler::{self, NodeFigures, Verdict},
};

/// The NCCL side of a comparison: every node's collective calls and
/// communicators, how to move each node's clock onto the reference one,
/// and the instant to judge hangs at.
#[derive(Debug, Clone, Default)]
pub struct NcclInput {
    /// Collective calls of every node, on each node's own clock.
    pub calls: Vec<CollectiveCall>,
    /// Communicator members of every node.
    pub members: Vec<CommMember>,
    /// What the ranks' threads are doing now (live agents only).
    pub activity: Vec<RankActivity>,
    /// Each node's clock against the reference clock; nodes not listed
    /// are taken as on it.
    pub clocks: HashMap<String, NodeClock>,
    /// "Now" on the reference clock: this machine's clock for live agents,
    /// the end of the recording for a database.
    pub now_ns: i64,
    /// A collective entered by some ranks and not others for this long is hung.
    pub hang_after_ns: i64,
}

/// What the collectives say about the job.
#[derive(Debug, Clone, Serialize)]
pub struct CollectiveFindings {
    /// Collectives seen by at least two ranks.
    pub matched: usize,
    /// Per-rank lateness and the straggler, if one stands out.
    pub lateness: LatenessReport,
    /// Hung collectives, longest wait first.
    pub hangs: Vec<Hang>,
    /// For each hang, what its missing ranks' threads are doing (live only).
    pub missing_activity: Vec<Vec<String>>,
}

/// Matches the calls across ranks and judges them; `None` without any call.
#[must_use]
pub fn collective_findings(input: &NcclInput) -> Option<CollectiveFindings> {
    if input.calls.is_empty() && input.members.is_empty() {
        return None;
    }
    let matched = collectives::arrivals(&input.calls, &input.clocks);
    let lateness = collectives::lateness(&matched);
    let hangs = collectives::hangs(
        &input.calls,
        &input.members,
        &input.clocks,
        input.now_ns,
        input.hang_after_ns,
    );
    let missing_activity = hangs
        .iter()
        .map(|h| collectives::describe_missing(h, &input.activity))
        .collect();
    Some(CollectiveFindings {
        matched: matched.len(),
        lateness,
        hangs,
        missing_activity,
    })
}

/// The straggler lines of a comparison, most direct evidence first; empty
/// when neither kind of evidence names a straggler.
#[must_use]
pub fn straggler_lines(
    figures: &[NodeFigures],
    verdict: Option<&Verdict>,
    collectives: Option<&CollectiveFindings>,
) -> Vec<String> {
    let mut lines = Vec::new();
    let from_collectives = collectives.and_then(|c| c.lateness.straggler.as_ref());
    match (from_collectives, verdict) {
        (Some(cv), sync) => {
            let causes = straggler::causes_of(figures, &cv.rank.node);
            lines.push(format!("{}{}", cv.headline(), straggler::causes_text(&causes)));
            if let Some(v) = sync.filter(|v| v.node != cv.rank.node) {
                lines.push(format!(
                    "note: synchronize waits point at {} instead (waits {:.1}% vs {:.1}% for its peers); the collectives' arrival order is the direct evidence",
                    v.node,
                    v.wait_share * 100.0,
                    v.peers_wait_share * 100.0
                ));
            }
        }
        (None, Some(v)) => {
            lines.push(v.headline());
            if let Some(c) = collectives.filter(|c| c.matched > 0) {
                lines.push(format!(
                    "note: {} collective(s) were matched across ranks and no rank arrives last markedly more often than the others; this verdict rests on synchronize waits alone",
                    c.matched
                ));
            }
        }
        (None, None) => {}
    }
    lines
}
