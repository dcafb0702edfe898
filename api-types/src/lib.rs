//! The wire contract of the ingero agent API: one typed request or answer
//! per endpoint, shared by the agent's handlers, the fleet client and the
//! MCP server, so the two ends cannot drift apart.
//!
//! Every endpoint is a type implementing [`Endpoint`]: its path and the
//! type of its answer. The JSON shape of each answer is pinned by snapshot
//! tests (`tests/snapshots/*.json`): a change to the contract shows as a
//! diff there. Fields are only ever added (old clients ignore them);
//! renaming or removing one is a new API version.
//!
//! Invariants: times are Unix nanoseconds (`i64`) on the answering agent's
//! clock; durations in answers carry their unit in the field name
//! (`p99_us`, `total_ms`, `busy_ns`); an error is always [`ErrorAnswer`].

#![warn(missing_docs)]

mod chain;
mod collectives;
mod duration;
mod ops;
mod overview;
mod query;
mod time;
mod window;

pub use chain::{Chain, Severity, TimelineEntry};
pub use collectives::{
    CollectiveCall, CollectivesAnswer, CollectivesEndpoint, CommMember, RankActivity, ThreadState,
};
pub use duration::parse_duration;
pub use ops::{CpuEvidence, Evidence, InputEvidence, IoEvidence, MemEvidence, NodeOps, OpSummary, OpsAnswer};
pub use overview::{LiveInfo, OverviewAnswer, SessionInfo};
pub use query::{MAX_ROWS, QueryAnswer, QueryRequest};
pub use time::TimeAnswer;
pub use window::{Since, Span, Window};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// An endpoint of the agent API: where it is and what it answers.
pub trait Endpoint {
    /// Path on the agent, e.g. `/api/v1/chains`.
    const PATH: &'static str;
    /// The JSON body of a successful answer.
    type Answer: Serialize + DeserializeOwned;
}

/// `GET /api/v1/time`: the agent's receive and send times, for clock offsets.
#[derive(Debug, Clone, Copy)]
pub struct TimeEndpoint;
impl Endpoint for TimeEndpoint {
    const PATH: &'static str = "/api/v1/time";
    type Answer = TimeAnswer;
}

/// `POST /api/v1/query` with a [`QueryRequest`]: columns and rows.
#[derive(Debug, Clone, Copy)]
pub struct QueryEndpoint;
impl Endpoint for QueryEndpoint {
    const PATH: &'static str = "/api/v1/query";
    type Answer = QueryAnswer;
}

/// `GET /api/v1/chains?since=5m`: the causal chains the agent's engine finds.
#[derive(Debug, Clone, Copy)]
pub struct ChainsEndpoint;
impl Endpoint for ChainsEndpoint {
    const PATH: &'static str = "/api/v1/chains";
    type Answer = ChainsAnswer;
}

/// `GET /api/v1/ops?since=5m`: per-op statistics and host evidence per node.
#[derive(Debug, Clone, Copy)]
pub struct OpsEndpoint;
impl Endpoint for OpsEndpoint {
    const PATH: &'static str = "/api/v1/ops";
    type Answer = OpsAnswer;
}

/// `GET /api/v1/overview`: what the agent holds and whether it is tracing.
#[derive(Debug, Clone, Copy)]
pub struct OverviewEndpoint;
impl Endpoint for OverviewEndpoint {
    const PATH: &'static str = "/api/v1/overview";
    type Answer = OverviewAnswer;
}

/// `GET /healthz`: `ok` as plain text (not JSON).
pub const HEALTHZ_PATH: &str = "/healthz";
/// `GET /metrics`: Prometheus text exposition format (not JSON).
pub const METRICS_PATH: &str = "/metrics";

/// The answer of [`ChainsEndpoint`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainsAnswer {
    /// The answering agent's node name.
    pub node: String,
    /// First and last instant analysed (absent when there was no data).
    pub window: Span,
    /// Events analysed.
    pub events: u64,
    /// Most severe first; within a severity, the straggler's first.
    pub chains: Vec<Chain>,
}

/// Every error answer, whatever the endpoint and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// One sentence: what went wrong and, where it helps, what to do.
    pub error: String,
}
