//! What an agent holds (`/api/v1/overview`): counts, span, its last
//! session and, while tracing, live counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The answer of `/api/v1/overview`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverviewAnswer {
    /// The agent's node name.
    pub node: String,
    /// Rank of the last session, when known.
    pub rank: Option<i64>,
    /// World size of the last session, when known.
    pub world_size: Option<i64>,
    /// Events stored.
    pub events: i64,
    /// Events stored per source name (`cuda`, `driver`, `host`, `io`).
    pub events_by_source: BTreeMap<String, i64>,
    /// Oldest event, Unix ns.
    pub first_event: Option<i64>,
    /// Newest event, Unix ns.
    pub last_event: Option<i64>,
    /// Rows of `causal_chains`.
    pub chains_stored: i64,
    /// Rows of `sessions`.
    pub sessions: i64,
    /// Events dropped over all sessions.
    pub dropped: i64,
    /// The newest session.
    pub session: Option<SessionInfo>,
    /// Whether the agent is tracing now, and its counters if so.
    pub live: LiveInfo,
}

/// A row of `sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: i64,
    /// Node name.
    pub node: String,
    /// Unix ns.
    pub started_at: i64,
    /// Unix ns (0 while running).
    pub stopped_at: i64,
    /// Events stored by the session.
    pub events_stored: i64,
    /// Events the session could not deliver.
    pub events_dropped: i64,
    /// Global rank of the traced job, when known.
    pub rank: Option<i64>,
    /// Local rank, when known.
    pub local_rank: Option<i64>,
    /// World size, when known.
    pub world_size: Option<i64>,
    /// Host name.
    pub hostname: String,
}

/// Live counters of a tracing agent (`tracing: false` and nothing else
/// for a stored database).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveInfo {
    /// Whether the agent is tracing now.
    pub tracing: bool,
    /// The session being recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<i64>,
    /// Events committed to the database so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_committed: Option<u64>,
    /// Events that could not be delivered so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_dropped: Option<u64>,
}
