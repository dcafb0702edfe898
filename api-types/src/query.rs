//! SQL over the agent's database (`POST /api/v1/query`): the request and
//! its answer. The agent runs the statement read-only, under a deadline
//! and a row cap; a client pages past the cap with `LIMIT/OFFSET`. The
//! answer is streamed as its rows are read, so a failure after the first
//! rows ends it with an `error` field instead of an error status.

use serde::{Deserialize, Serialize};

use crate::Since;

/// Most rows one query answer carries.
pub const MAX_ROWS: usize = 50_000;

/// What `POST /api/v1/query` takes. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One read-only SQL statement.
    pub sql: String,
    /// Rows at most (capped by the agent's own limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Deadline in ms (capped by the agent's own deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Only the last stretch of recorded data (`events` is filtered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
}

/// The rows of one statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryAnswer {
    /// The answering agent's node name.
    pub node: String,
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows of JSON scalars (null, integer, real, text; blobs as hex text).
    pub rows: Vec<Vec<serde_json::Value>>,
    /// More rows existed than the limit allowed, or than the agent's cap on
    /// the bytes of an answer (`agent.max_answer_size`) let through.
    pub truncated: bool,
    /// Time the statement took on the agent.
    #[serde(default)]
    pub elapsed_ms: f64,
    /// Why the answer ends early although rows were already sent (its
    /// deadline passed, the agent is stopping, a later row failed): the
    /// status was 200 by then, so the reason ends the answer, with
    /// `truncated` true. A client must not take such rows for the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
