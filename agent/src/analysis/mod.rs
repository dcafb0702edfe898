//! The causal-chain engine: one engine for the live agent, an offline
//! database and (through each agent) the fleet, so the same data always
//! gives the same answer.
//!
//! [`explain`] loads each node's events ([`dataset`]), applies the rules
//! ([`rules`]: tail latency with a concurrent cause, throughput drops, OOM
//! kills) and returns per-node reports whose chains ([`chain`]) are sorted
//! by severity. Without an explicit window each node is analysed over its
//! own first to last event, so a merged database gives the same chains as
//! its parts.

pub mod chain;
pub mod dataset;
pub mod rules;

use rusqlite::Connection;
use serde::Serialize;

use crate::timewin::Window;
use chain::Chain;
use rules::{Evidence, OpStats};

/// What the engine found on one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub rank: Option<i64>,
    pub world_size: Option<i64>,
    pub window: Window,
    pub events: u64,
    pub chains: Vec<Chain>,
    /// Duration statistics of every CUDA runtime and driver operation.
    pub ops: Vec<OpStats>,
    /// Node-wide evidence over the window (for comparing nodes).
    pub evidence: Evidence,
}

/// Runs the rules on every node of the database.
pub fn explain(
    conn: &Connection,
    window: Option<Window>,
    detected_at: i64,
) -> rusqlite::Result<Vec<NodeReport>> {
    let names = dataset::op_names(conn)?;
    Ok(dataset::load(conn, window)?
        .into_iter()
        .map(|d| {
            let (chains, ops) = rules::chains(&d, &names, detected_at);
            NodeReport {
                evidence: rules::evidence(&d, d.window.from, d.window.to),
                node: d.node,
                rank: d.rank,
                world_size: d.world_size,
                window: d.window,
                events: d.events,
                chains,
                ops,
            }
        })
        .collect())
}

/// Every chain of every node, most severe first.
#[must_use]
pub fn all_chains(reports: &[NodeReport]) -> Vec<Chain> {
    let mut chains: Vec<Chain> = reports.iter().flat_map(|r| r.chains.iter().cloned()).collect();
    chains.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.score.total_cmp(&a.score))
            .then(a.id.cmp(&b.id))
    });
    chains
}
