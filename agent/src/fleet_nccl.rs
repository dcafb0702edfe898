//! The fleet's NCCL answers as the engine's input: every answering
//! agent's collective calls, communicators and thread activity, with each
//! node's clock offset and its error bound from the fleet's clock
//! exchanges. Shared by `ingero explain --nodes` and the MCP tools, so both
//! hand the engine the same figures; the engine judges them
//! ([`crate::analysis::findings`]).

use ingero_fleet::{NodeAnswer, NodeExplain};

use crate::analysis::{collectives::NodeClock, findings::NcclInput};

/// The NCCL side of a fleet explain: every answering agent's collective
/// calls, communicators and thread activity, each node's clock offset with
/// its error bound, judged at the latest "now" the agents gave (a live
/// agent's clock, a stored database's last event), moved onto this
/// machine's clock. `None` when no agent traced a collective.
#[must_use]
pub fn nccl_input(answers: &[NodeAnswer<NodeExplain>], hang_after: std::time::Duration) -> Option<NcclInput> {
    let mut input = NcclInput {
        now_ns: i64::MIN,
        hang_after_ns: i64::try_from(hang_after.as_nanos()).unwrap_or(i64::MAX),
        ..NcclInput::default()
    };
    for a in answers {
        let Ok(NodeExplain {
            collectives: Ok(c), ..
        }) = &a.result
        else {
            continue;
        };
        let clock = a
            .clock
            .map(|e| NodeClock::from_agent_offset(e.offset_ns, e.error_ns))
            .unwrap_or_default();
        // A merged database served by one agent holds several nodes: all
        // were read through that agent's clock.
        for node in c
            .calls
            .iter()
            .map(|x| &x.node)
            .chain(c.members.iter().map(|m| &m.node))
        {
            input.clocks.entry(node.clone()).or_insert(clock);
        }
        let offset = a.clock.map_or(0, |e| e.offset_ns);
        input.now_ns = input.now_ns.max(c.now_ns.saturating_sub(offset));
        input.calls.extend(c.calls.iter().cloned());
        input.members.extend(c.members.iter().cloned());
        input.activity.extend(c.activity.iter().cloned());
    }
    (!input.calls.is_empty() || !input.members.is_empty()).then_some(input)
}
