//! Every agent's chains and figures, fetched together for a fleet explain.
//!
//! Each agent runs the causal-chain engine on its own data
//! (`/api/v1/chains`, `/api/v1/ops`). The client's part is only to fetch
//! them, learn the node's name, and move every instant of the chains onto
//! this machine's clock by the agent's estimated offset, so chains from
//! different nodes line up. Collective calls (`/api/v1/collectives`) stay on
//! each agent's clock: matching them across ranks needs the offset's error
//! bound too, which the engine applies. Comparing the nodes (the straggler verdict) is
//! the engine's work, not the client's.

use ingero_api::{
    Chain, ChainsAnswer, ChainsEndpoint, CollectivesAnswer, CollectivesEndpoint, NodeOps, OpsAnswer,
    OpsEndpoint, Since,
};

use crate::{Fleet, NodeAnswer};

/// What one agent said to a fleet explain.
#[derive(Debug, Clone)]
pub struct NodeExplain {
    /// Its chains, on this machine's clock.
    pub chains: ChainsAnswer,
    /// Its figures (one entry per node its database holds).
    pub ops: OpsAnswer,
    /// Its NCCL collective calls, on the agent's own clock (the analysis
    /// moves them with the offset and its error bound); `Err` with the
    /// reason when the agent could not give them (an agent older than the
    /// endpoint, an answer past the size cap): explain goes on without.
    pub collectives: Result<CollectivesAnswer, String>,
}

impl Fleet {
    /// Asks every agent for its chains and figures over `since` (the
    /// agents' default when `None`).
    pub async fn explain(&self, since: Option<Since>) -> Vec<NodeAnswer<NodeExplain>> {
        let answers = self
            .run(move |client| async move {
                let (chains, ops, collectives) = tokio::join!(
                    client.get::<ChainsEndpoint>(since),
                    client.get::<OpsEndpoint>(since),
                    client.get::<CollectivesEndpoint>(since)
                );
                Ok((chains?, ops?, collectives.map_err(|e| e.to_string())))
            })
            .await;
        let mut answers = answers
            .into_iter()
            .map(|a| {
                let offset = a.clock.map_or(0, |c| c.offset_ns);
                let result = a.result.map(|(mut chains, ops, collectives)| {
                    for c in &mut chains.chains {
                        c.shift_clock(offset);
                    }
                    NodeExplain {
                        chains,
                        ops,
                        collectives,
                    }
                });
                let node = a
                    .node
                    .or_else(|| result.as_ref().ok()?.ops.nodes.first().map(|n| n.node.clone()));
                NodeAnswer {
                    address: a.address,
                    node,
                    result,
                    clock: a.clock,
                    elapsed_ms: a.elapsed_ms,
                }
            })
            .collect::<Vec<_>>();
        crate::refuse_duplicate_nodes(&mut answers);
        answers
    }
}

/// Every answering agent's node figures; a node reported by several
/// agents (one serving a merged database, another that node's own) is
/// taken once, from the first.
#[must_use]
pub fn node_ops(answers: &[NodeAnswer<NodeExplain>]) -> Vec<NodeOps> {
    let mut seen = std::collections::HashSet::new();
    answers
        .iter()
        .filter_map(|a| a.result.as_ref().ok())
        .flat_map(|v| v.ops.nodes.iter().cloned())
        .filter(|n| seen.insert(n.node.clone()))
        .collect()
}

/// Every answering agent's chains.
#[must_use]
pub fn chains(answers: &[NodeAnswer<NodeExplain>]) -> Vec<Chain> {
    answers
        .iter()
        .filter_map(|a| a.result.as_ref().ok())
        .flat_map(|v| v.chains.chains.iter().cloned())
        .collect()
}
