//! The causal-chain engine: one engine for the live agent, an offline
//! database and (through each agent) the fleet, so the same data always
//! gives the same answer.
//!
//! [`explain`] loads each node's events ([`dataset`]), applies the rules
//! ([`rules`]: tail latency with a concurrent cause, throughput drops, OOM
//! kills) and returns per-node reports whose chains ([`chain`]) are sorted
//! by severity. Without an explicit window each node is analysed over its
//! own first to last event, so a merged database gives the same chains as
//! its parts. With several nodes, the nodes are also compared
//! ([`straggler`]) the way the fleet compares agents, and the straggler's
//! chains come first within a severity.

pub mod chain;
pub mod dataset;
pub mod rules;

use rusqlite::Connection;
use serde::Serialize;

use crate::timewin::Window;
use chain::Chain;
use ingero_fleet::straggler::{NodeFigures, Verdict};
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

/// A node's operations, window and evidence as JSON: the `nodes[]` entries
/// of `/api/v1/ops`, which the straggler comparison reads.
#[must_use]
pub fn ops_json(r: &NodeReport) -> serde_json::Value {
    serde_json::json!({
        "node": r.node,
        "rank": r.rank,
        "world_size": r.world_size,
        "events": r.events,
        "window": r.window,
        "ops": r.ops.iter().map(|o| serde_json::json!({
            "name": o.name, "source": o.source, "op": o.op, "count": o.count,
            "p50_us": o.p50_ns as f64 / 1e3, "p95_us": o.p95_ns as f64 / 1e3,
            "p99_us": o.p99_ns as f64 / 1e3, "max_us": o.max_ns as f64 / 1e3,
            "total_ms": o.total_ns as f64 / 1e6,
        })).collect::<Vec<_>>(),
        "evidence": r.evidence,
    })
}

/// The straggler among the nodes of a multi-node database (see
/// [`ingero_fleet::straggler`]; the fleet compares agents the same way).
#[must_use]
pub fn straggler(reports: &[NodeReport]) -> Option<Verdict> {
    let figures: Vec<NodeFigures> = reports
        .iter()
        .flat_map(|r| NodeFigures::from_ops(&serde_json::json!({ "nodes": [ops_json(r)] })))
        .collect();
    ingero_fleet::straggler::find(&figures)
}

/// Orders chains: most severe first; within a severity, the straggler's
/// chains first (they are what holds the job back), then by score.
pub fn sort_chains(chains: &mut [Chain], straggler: Option<&str>) {
    let on = |c: &Chain| straggler == Some(c.node.as_str());
    chains.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(on(b).cmp(&on(a)))
            .then(b.score.total_cmp(&a.score))
            .then(a.id.cmp(&b.id))
    });
}

/// Every chain of every node, in [`sort_chains`] order.
#[must_use]
pub fn all_chains(reports: &[NodeReport]) -> Vec<Chain> {
    let mut chains: Vec<Chain> = reports.iter().flat_map(|r| r.chains.iter().cloned()).collect();
    let verdict = straggler(reports);
    sort_chains(&mut chains, verdict.as_ref().map(|v| v.node.as_str()));
    chains
}
