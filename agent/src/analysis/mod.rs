//! The causal-chain engine: one engine for the live agent, an offline
//! database and (through each agent) the fleet, so the same data always
//! gives the same answer.
//!
//! [`explain`] loads each node's events ([`dataset`]), applies the rules
//! ([`rules`]: tail latency with a concurrent cause, throughput drops, OOM
//! kills, input-pipeline starvation: [`input`]) and returns per-node
//! reports whose chains ([`chain`]) are sorted
//! by severity. Each node is analysed over its own first to last event
//! within the window asked for (the whole database without one), so a
//! merged database gives the same chains as its parts, and a window larger
//! than the recording does not dilute rates and shares.
//!
//! Nodes are compared by [`compare`], on typed figures ([`NodeOps`]): a
//! multi-node database's reports and the fleet's answers go through the
//! same function, which names the straggler ([`straggler`]), orders
//! every chain (severity, then the straggler's, then score) and groups the
//! conditions seen on every node into common findings ([`common_mode`]).

pub mod attribution;
pub mod chain;
pub mod collectives;
pub mod common_mode;
pub mod dataset;
mod describe;
pub mod evidence;
pub mod findings;
pub mod input;
pub mod nccl_data;
pub mod rules;
pub mod sampled;
mod spans;
pub mod stats;
pub mod straggler;

use ingero_api::{NodeOps, OpSummary};
use rusqlite::Connection;
use serde::Serialize;

use crate::timewin::Window;
use chain::Chain;
use common_mode::CommonFinding;
use evidence::Evidence;
use ingero_api::Severity;
use stats::OpStats;
use straggler::{NodeFigures, Verdict};

/// What the engine found on one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Node name (empty for a database without a `node` column).
    pub node: String,
    /// Rank of the traced process on the node (`events.rank`), when known.
    pub rank: Option<i64>,
    /// The job's world size (`events.world_size`), when known.
    pub world_size: Option<i64>,
    /// The span analysed, Unix ns: the node's first to last event within
    /// the window asked for (the whole database without one).
    pub window: Window,
    /// Events of the node in the window, of every source.
    pub events: u64,
    /// The causal chains found on the node: most severe first, then by score.
    pub chains: Vec<Chain>,
    /// Duration statistics of every CUDA runtime and driver operation.
    pub ops: Vec<OpStats>,
    /// Node-wide evidence over the window (for comparing nodes).
    pub evidence: Evidence,
    /// Operations whose stored events are a sample ([`sampled`]): their
    /// `ops` count and total time come from `event_aggregates`.
    pub sampled: Vec<sampled::Sampled>,
}

impl NodeReport {
    /// The node's figures as the API carries them (`/api/v1/ops`).
    #[must_use]
    pub fn node_ops(&self) -> NodeOps {
        NodeOps {
            node: self.node.clone(),
            rank: self.rank,
            world_size: self.world_size,
            events: self.events,
            window: self.window,
            ops: self.ops.iter().map(OpStats::summary).collect(),
            evidence: self.evidence.clone(),
        }
    }
}

impl OpStats {
    /// The statistics in the API's units (µs, ms).
    #[must_use]
    pub fn summary(&self) -> OpSummary {
        OpSummary {
            name: self.name.clone(),
            source: self.source,
            op: self.op,
            count: self.count,
            p50_us: self.p50_ns as f64 / 1e3,
            p95_us: self.p95_ns as f64 / 1e3,
            p99_us: self.p99_ns as f64 / 1e3,
            max_us: self.max_ns as f64 / 1e3,
            total_ms: self.total_ns as f64 / 1e6,
        }
    }
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
            let evidence = evidence::evidence(&d, d.window.from, d.window.to);
            let (mut chains, ops) = rules::chains(&d, &evidence, &names, detected_at);
            sort_chains(&mut chains, None);
            NodeReport {
                sampled: d.sampled.values().copied().collect(),
                evidence,
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

/// Nodes side by side: their figures, the straggler if one stands out,
/// and every chain in report order.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// One entry per node, in the order given.
    pub figures: Vec<NodeFigures>,
    /// The node that holds the others back, and why.
    pub verdict: Option<Verdict>,
    /// Most severe first; within a severity the straggler's first, then
    /// by score, then by id.
    pub chains: Vec<Chain>,
    /// What the NCCL collectives say (lateness, straggler, hangs); `None`
    /// when no collective was traced.
    pub collectives: Option<findings::CollectiveFindings>,
    /// Conditions seen on every node, each said once
    /// ([`common_mode::find`]); their chains stay in `chains`.
    pub common: Vec<CommonFinding>,
}

impl Comparison {
    /// Whether two or more nodes had data to compare (a window): only then
    /// do cross-node verdicts, severity caps and quiet LOW chains apply.
    #[must_use]
    pub fn compares_nodes(&self) -> bool {
        self.figures.iter().filter(|f| f.window_ns > 0).count() >= 2
    }

    /// The straggler's node, whichever evidence named it (collectives first).
    #[must_use]
    pub fn straggler_node(&self) -> Option<&str> {
        self.collectives
            .as_ref()
            .and_then(|c| c.lateness.straggler.as_ref())
            .map(|s| s.rank.node.as_str())
            .or(self.verdict.as_ref().map(|v| v.node.as_str()))
    }

    /// The host stress that stands out on the straggler, whichever
    /// evidence named it, strongest first; empty without a straggler.
    #[must_use]
    pub fn straggler_causes(&self) -> Vec<straggler::Cause> {
        match (
            self.collectives
                .as_ref()
                .and_then(|c| c.lateness.straggler.as_ref()),
            &self.verdict,
        ) {
            (Some(cv), _) => straggler::causes_of(&self.figures, &cv.rank.node),
            (None, Some(v)) => v.causes.clone(),
            (None, None) => Vec::new(),
        }
    }

    /// The straggler lines (see [`findings::straggler_lines`]).
    #[must_use]
    pub fn straggler_lines(&self) -> Vec<String> {
        findings::straggler_lines(&self.figures, self.verdict.as_ref(), self.collectives.as_ref())
    }

    /// The hung collectives, if any.
    #[must_use]
    pub fn hangs(&self) -> &[collectives::Hang] {
        self.collectives.as_ref().map_or(&[], |c| c.hangs.as_slice())
    }

    /// The chains no common finding stands for, in report order: what is
    /// specific to a node.
    #[must_use]
    pub fn specific(&self) -> Vec<&Chain> {
        self.chains
            .iter()
            .filter(|c| !self.common.iter().any(|f| f.covers(&c.id)))
            .collect()
    }
}

/// Compares `nodes` and orders `chains` (from any of them), with what the
/// NCCL collectives say when they were traced: the one cross-node analysis
/// behind local, merged and fleet explain.
#[must_use]
pub fn compare(nodes: &[NodeOps], mut chains: Vec<Chain>, nccl: Option<&findings::NcclInput>) -> Comparison {
    let figures: Vec<NodeFigures> = nodes.iter().map(NodeFigures::from_node).collect();
    let verdict = straggler::find(&figures);
    let collectives = nccl.and_then(findings::collective_findings);
    let mut comparison = Comparison {
        figures,
        verdict,
        chains: Vec::new(),
        collectives,
        common: Vec::new(),
    };
    let straggler = comparison.straggler_node().map(str::to_owned);
    sort_chains(&mut chains, straggler.as_deref());
    let names: Vec<String> = nodes.iter().map(|n| n.node.clone()).collect();
    comparison.common = common_mode::find(&chains, &names);
    // A straggler sets the pace; without one, a job whose nodes all wait
    // is balanced (see `pace_severity`).
    if comparison.compares_nodes()
        && (straggler.is_some() || straggler::every_node_waits(&comparison.figures))
    {
        pace_severity(&mut chains, straggler.as_deref(), &comparison.common);
        sort_chains(&mut chains, straggler.as_deref());
    }
    comparison.chains = chains;
    comparison
}

/// [`compare`] over the reports of one database, with its NCCL tables
/// (`nccl`: read with [`nccl_data::load`]).
#[must_use]
pub fn compare_reports(reports: &[NodeReport], nccl: Option<&findings::NcclInput>) -> Comparison {
    let nodes: Vec<NodeOps> = reports.iter().map(NodeReport::node_ops).collect();
    compare(
        &nodes,
        reports.iter().flat_map(|r| r.chains.iter().cloned()).collect(),
        nccl,
    )
}

/// The NCCL input of a database: its collectives over `window` (all
/// without one), judged at the end of the recording (a database has no
/// "now"), every node on its own clock.
pub fn database_nccl(
    conn: &Connection,
    window: Option<crate::timewin::Window>,
    hang_after_ns: i64,
) -> rusqlite::Result<Option<findings::NcclInput>> {
    let data = nccl_data::load(conn, window, nccl_data::MAX_CALLS)?;
    if data.calls.is_empty() && data.members.is_empty() {
        return Ok(None);
    }
    let end: Option<i64> = conn.query_row("SELECT max(timestamp) FROM events", [], |r| r.get(0))?;
    Ok(Some(findings::NcclInput {
        calls: data.calls,
        members: data.members,
        now_ns: window.map_or(end.unwrap_or(0), |w| w.to.min(end.unwrap_or(w.to))),
        hang_after_ns,
        ..findings::NcclInput::default()
    }))
}

/// Severity follows impact across nodes: once a straggler is named, only
/// it can have a HIGH chain, since the other nodes' slow calls are absorbed
/// in the time they wait for it anyway. In a balanced job (no straggler,
/// and [`straggler::every_node_waits`]) no node
/// has one: what is slow on one node only did not make it set the pace.
/// Without either (one node, or nodes that never wait) nothing is capped.
/// Each capped node keeps its strongest chain at MEDIUM at most and its
/// others at LOW (they are mostly one condition seen through several
/// calls); `--all` and `--json` still show every chain. A condition seen on
/// every node (a common finding) keeps its severity: it holds back the
/// node that sets the pace too.
fn pace_severity(chains: &mut [Chain], straggler: Option<&str>, common: &[CommonFinding]) {
    let mut order: Vec<usize> = (0..chains.len()).collect();
    order.sort_by(|&a, &b| {
        chains[b]
            .severity
            .cmp(&chains[a].severity)
            .then(chains[b].score.total_cmp(&chains[a].score))
            .then(chains[a].id.cmp(&chains[b].id))
    });
    let mut kept: std::collections::HashSet<String> = std::collections::HashSet::new();
    for i in order {
        let c = &mut chains[i];
        if straggler == Some(c.node.as_str()) || common.iter().any(|f| f.covers(&c.id)) {
            continue;
        }
        let first = kept.insert(c.node.clone());
        let cap = if first { Severity::Medium } else { Severity::Low };
        if c.severity > cap {
            c.severity = cap;
        }
    }
}

/// Orders chains: most severe first; within a severity, the straggler's
/// chains first (they are what holds the job back), then by score.
fn sort_chains(chains: &mut [Chain], straggler: Option<&str>) {
    let on = |c: &Chain| straggler == Some(c.node.as_str());
    chains.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(on(b).cmp(&on(a)))
            .then(b.score.total_cmp(&a.score))
            .then(a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests;
