//! NCCL collectives on the wire (`/api/v1/collectives`): every collective
//! call each traced rank made, the communicators the ranks joined, and what
//! their threads are doing now, so a client can match the same collective
//! across ranks and find the rank that arrives last or never arrives.
//!
//! NCCL requires every rank of a communicator to issue its collectives in
//! the same order, so `(comm_id, seq)` names one collective on all ranks.
//! Invariants: times are Unix ns on the answering node's clock (the client
//! moves them onto its own with the node's clock offset); a rank is the
//! process `(node, pid)`; `calls` are oldest first and, when `truncated`,
//! the newest are the ones kept.

use serde::{Deserialize, Serialize};

use crate::Endpoint;

/// `GET /api/v1/collectives?since=5m`: the node's collective calls,
/// communicator members and live thread activity.
#[derive(Debug, Clone, Copy)]
pub struct CollectivesEndpoint;
impl Endpoint for CollectivesEndpoint {
    const PATH: &'static str = "/api/v1/collectives";
    type Answer = CollectivesAnswer;
}

/// One rank's call of one collective (host side: the call into NCCL, which
/// enqueues the work on a stream and usually returns before it is done).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectiveCall {
    /// Node the rank runs on.
    pub node: String,
    /// Process id of the rank on its node.
    pub pid: u32,
    /// The process's rank in the job (torchrun `RANK`), when known.
    pub world_rank: Option<i64>,
    /// Stable id of the communicator, the same on all its ranks: 16 hex digits.
    pub comm_id: String,
    /// The rank's index within the communicator, when known.
    pub comm_rank: Option<i64>,
    /// Number of ranks in the communicator, when known.
    pub comm_size: Option<i64>,
    /// Per-communicator sequence number of the call, in call order: the
    /// same collective has the same number on every rank.
    pub seq: u64,
    /// The NCCL function (`ncclAllReduce`, `ncclAllGather`, ...).
    pub op: String,
    /// Payload bytes: the call's count argument times the datatype size
    /// (per rank for all-gather, reduce-scatter and all-to-all, as NCCL
    /// counts them).
    pub bytes: u64,
    /// When the call was entered, Unix ns on the node's clock.
    pub entry_ns: i64,
    /// How long the call took on the host, ns.
    pub duration_ns: i64,
    /// What the call returned (`ncclResult_t`, 0 is success).
    pub ret: i32,
}

/// A rank that joined a communicator (from its init or split call), even
/// if it never issued a collective on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommMember {
    /// Node the rank runs on.
    pub node: String,
    /// Process id of the rank on its node.
    pub pid: u32,
    /// The process's rank in the job (torchrun `RANK`), when known.
    pub world_rank: Option<i64>,
    /// Stable id of the communicator, the same on all its ranks: 16 hex digits.
    pub comm_id: String,
    /// The rank's index within the communicator, when known.
    pub comm_rank: Option<i64>,
    /// Number of ranks in the communicator, when known.
    pub comm_size: Option<i64>,
    /// When the rank joined, Unix ns on the node's clock.
    pub created_ns: i64,
}

/// What one traced thread of a rank is doing now (live agents only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadState {
    /// Thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub name: String,
    /// `running`, `preempted`, `sleeping`, `uninterruptible I/O`, `stopped`
    /// or `gone`.
    pub state: String,
    /// When it went off-CPU, Unix ns on the node's clock, if known.
    pub since_ns: Option<i64>,
    /// Name of the last CUDA or NCCL call it made, if any.
    pub last_call: Option<String>,
    /// When that call returned, Unix ns on the node's clock.
    pub last_call_ns: Option<i64>,
}

/// The traced threads of one rank, as the agent sees them now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankActivity {
    /// Node the rank runs on.
    pub node: String,
    /// Process id of the rank on its node.
    pub pid: u32,
    /// The process's rank in the job (torchrun `RANK`), when known.
    pub world_rank: Option<i64>,
    /// Its traced threads, by thread id.
    pub threads: Vec<ThreadState>,
}

/// The answer of [`CollectivesEndpoint`], per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectivesAnswer {
    /// The answering agent's node name.
    pub node: String,
    /// The node's clock when it answered, Unix ns (what "hung for how long"
    /// is measured against).
    pub now_ns: i64,
    /// Collective calls in the window, oldest first.
    pub calls: Vec<CollectiveCall>,
    /// Communicator memberships of the node's ranks.
    pub members: Vec<CommMember>,
    /// Live thread activity of the node's ranks (empty from a stored database).
    pub activity: Vec<RankActivity>,
    /// Whether `calls` were capped (the newest kept).
    pub truncated: bool,
}
